"""Connections to PostgreSQL: one definition of a session, shared by our own connections and by the
client programs (pg_dump, pg_restore) we start.

A libpq session is defined by everything libpq reads, not only the connection string: an inherited
`PGOPTIONS` can switch a permissive "bypass" policy on, `PGSERVICE` can point at other parameters,
`PGDATABASE`/`PGHOST` at another database. So:

- `PgSession` holds the explicit libpq parameters (from the DSN, plus application_name and
  connect_timeout), the password, and the session settings we send (`-c name=value` in the
  `options` parameter). Our own connection and every child program connect with the same
  `conninfo()`: the isolation proof's counting session is pg_dump's twin.
- A child's environment is built from scratch (`child_env`): PATH, HOME, locale and temp-dir
  basics, the password, and only the libpq variables that authenticate or secure the transport
  (`AUTH_VARS`). No secret of ours (keyring, storage credentials) ever reaches a child.
- libpq inside this process reads the process environment too, so the variables that change a
  session (`SESSION_VARS`) are removed from it (`guard_process_environment`, with a warning naming
  them) before any connection is opened.

docs/SECURITY.md lists the variables read and passed on.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping

import psycopg2
import psycopg2.extensions

from ..errors import ConfigError, DatabaseUnreachable, one_line

log = logging.getLogger(__name__)

# libpq variables that change which server, database or role a connection reaches, or what its
# session sees (https://www.postgresql.org/docs/current/libpq-envars.html). Never honoured.
SESSION_VARS = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGCLIENTENCODING",
    "PGDATESTYLE",
    "PGTZ",
    "PGGEQO",
    "PGMINPROTOCOLVERSION",
    "PGMAXPROTOCOLVERSION",
    "PGLOCALEDIR",
)
# libpq variables that only authenticate or secure the transport: honoured, and passed to children.
AUTH_VARS = (
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGSSLNEGOTIATION",
    "PGSSLCOMPRESSION",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCERTMODE",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGREQUIREPEER",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
    "PGGSSENCMODE",
    "PGGSSLIB",
    "PGGSSDELEGATION",
    "PGKRBSRVNAME",
    "PGCONNECT_TIMEOUT",
)
# What any program needs to run at all, and what only changes its messages' language.
BASE_VARS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT")

_warned: set[str] = set()


def guard_process_environment(environ=None) -> list[str]:
    """Remove the session-changing libpq variables from this process's environment (libpq in
    psycopg2 would read them for every parameter the DSN leaves out). Returns the names removed;
    each is logged once. Called before every connection and early by the command and the code location."""
    env = os.environ if environ is None else environ
    removed = [name for name in SESSION_VARS if name in env]
    for name in removed:
        del env[name]
        if name not in _warned:
            _warned.add(name)
            log.warning(
                "%s is set in the environment and ignored: tenant-backup connects with the"
                " parameters of its DSN settings only (a libpq variable would change the session)",
                name,
            )
    return removed


def parse_dsn(dsn: str) -> dict[str, str]:
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        # libpq's message never quotes the string (it may hold a password)
        raise ConfigError(f"invalid connection string: {str(exc).strip()}") from None


def describe(dsn: str) -> str:
    """A connection string for messages: never the password."""
    return PgSession.from_dsn(dsn).describe()


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries (for warnings about passwords on command lines), or None."""
    return parse_dsn(dsn).get("password") or None


def session_options(settings: Mapping[str, str]) -> str:
    """`-c name=value` options for libpq's `options` parameter.

    Values reach here validated (tenant ids, setting names); spaces and backslashes are escaped
    as libpq requires anyway.
    """
    parts = []
    for name, value in settings.items():
        escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
        parts.append(f"-c {name}={escaped}")
    return " ".join(parts)


@dataclass(frozen=True)
class PgSession:
    """Everything that defines a session: explicit libpq parameters, password, session settings."""

    params: tuple[tuple[str, str], ...]  # from the DSN, without the password
    settings: tuple[tuple[str, str], ...] = ()
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_dsn(
        cls,
        dsn: str,
        settings: Mapping[str, str] | None = None,
        *,
        password: str | None = None,
        application_name: str = "tenant-backup",
        connect_timeout: int = 10,
    ) -> "PgSession":
        """`password` (e.g. from a variable named on the command line) is used when the DSN has none.
        application_name and connect_timeout apply unless the DSN sets them."""
        params = parse_dsn(dsn)
        dsn_pw = params.pop("password", None)
        params.setdefault("application_name", application_name)
        params.setdefault("connect_timeout", str(connect_timeout))
        return cls(tuple(params.items()), tuple((settings or {}).items()), dsn_pw or password)

    def with_settings(self, settings: Mapping[str, str]) -> "PgSession":
        return replace(self, settings=tuple({**dict(self.settings), **settings}.items()))

    def with_database(self, dbname: str) -> "PgSession":
        return replace(self, params=tuple({**dict(self.params), "dbname": dbname}.items()))

    @property
    def dbname(self) -> str | None:
        return dict(self.params).get("dbname")

    def conninfo(self) -> str:
        """The connection string (no password) our connection and a child program both use. Options
        the DSN itself sets come first; ours follow, so ours win for the same setting."""
        params = dict(self.params)
        ours = session_options(dict(self.settings))
        if ours:
            params["options"] = f"{params['options']} {ours}" if params.get("options") else ours
        return psycopg2.extensions.make_dsn(**params)

    def child_env(self) -> dict[str, str]:
        """The environment of a child program connecting as this session, built from scratch."""
        env = child_env()
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    @contextmanager
    def connect(self) -> Iterator[psycopg2.extensions.connection]:
        guard_process_environment()
        try:
            conn = psycopg2.connect(self.conninfo(), **({"password": self.password} if self.password else {}))
        except psycopg2.OperationalError as exc:
            raise DatabaseUnreachable(f"cannot connect to {self.describe()}: {self.scrub(str(exc))}") from None
        try:
            yield conn
        finally:
            conn.close()

    def scrub(self, text: str) -> str:
        """One line, the password (if any) replaced: for messages quoting libpq or a child."""
        line = one_line(text)
        return line.replace(self.password, "***") if self.password else line

    def describe(self) -> str:
        params = dict(self.params)
        where = f"{params.get('user', '?')}@{params.get('host') or 'localhost'}"
        if params.get("port"):
            where += f":{params['port']}"
        return f"{where}/{params.get('dbname', '?')}"


def child_env(environ: Mapping[str, str] | None = None, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Environment for a PostgreSQL client program, from scratch: basics, locale, and the libpq
    variables that only authenticate (AUTH_VARS), plus the `extra` names asked for. Nothing else of
    ours is inherited. (This module reads the process environment on purpose: what a child gets is
    decided here, not by configuration — core/settings.py.)"""
    env = os.environ if environ is None else environ
    keep = {name: env[name] for name in (*BASE_VARS, *AUTH_VARS, *extra) if name in env}
    keep.update({name: value for name, value in env.items() if name.startswith("LC_")})
    keep.setdefault("PATH", os.defpath)
    return keep


@contextmanager
def connect(
    dsn: str, *, timeout: int = 10, settings: Mapping[str, str] | None = None, application_name: str = "tenant-backup"
) -> Iterator[psycopg2.extensions.connection]:
    session = PgSession.from_dsn(dsn, settings, application_name=application_name, connect_timeout=timeout)
    with session.connect() as conn:
        yield conn
