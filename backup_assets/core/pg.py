"""Connections to PostgreSQL: one place for timeouts, session settings and error wording."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import psycopg2
import psycopg2.extensions

from .errors import ConfigError, DatabaseUnreachable


def parse_dsn(dsn: str) -> dict[str, str]:
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise ConfigError(f"invalid connection string: {str(exc).strip()}") from None


def describe(dsn: str) -> str:
    """A connection string for messages: never the password."""
    params = parse_dsn(dsn)
    host = params.get("host") or "localhost"
    where = f"{params.get('user', '?')}@{host}"
    if params.get("port"):
        where += f":{params['port']}"
    return f"{where}/{params.get('dbname', '?')}"


def session_options(settings: dict[str, str]) -> str:
    """`-c name=value` options for libpq (PGOPTIONS or the `options` parameter).

    Values reach here validated (tenant ids, setting names); spaces and backslashes are escaped
    as libpq requires anyway.
    """
    parts = []
    for name, value in settings.items():
        escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
        parts.append(f"-c {name}={escaped}")
    return " ".join(parts)


def client_env(dsn: str, settings: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Connection string and environment for pg_dump/pg_restore/psql.

    The password moves to PGPASSWORD so it does not show in the process list.
    """
    params = parse_dsn(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = password
    if settings:
        existing = env.get("PGOPTIONS", "")
        env["PGOPTIONS"] = (existing + " " + session_options(settings)).strip()
    return psycopg2.extensions.make_dsn(**params), env


@contextmanager
def connect(dsn: str, *, timeout: int = 10, settings: dict[str, str] | None = None,
            application_name: str = "tenant-backup") -> Iterator[psycopg2.extensions.connection]:
    kwargs: dict[str, object] = {"connect_timeout": timeout, "application_name": application_name}
    if settings:
        kwargs["options"] = session_options(settings)
    try:
        conn = psycopg2.connect(dsn, **kwargs)
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise DatabaseUnreachable(f"cannot connect to {describe(dsn)}: {reason}") from None
    try:
        yield conn
    finally:
        conn.close()
