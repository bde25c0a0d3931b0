"""Configuration from environment variables (and a `.env` file in the working directory).

DESIGN §4 is the contract; names and defaults here must match it. Only what a command needs is
required: `export` needs a source DSN and keys, not storage settings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import ConfigError

DEFAULT_TENANTS_QUERY = "SELECT id::text FROM tenants WHERE status = 'ACTIVE'"

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
# Custom settings must be qualified (prefix.name), which also keeps them out of PGOPTIONS syntax trouble.
_SETTING_RE = re.compile(rf"{_IDENT}\.{_IDENT}")
_COLUMN_RE = re.compile(_IDENT)
_TABLE_RE = re.compile(rf"(?:{_IDENT}\.)?{_IDENT}")


def int_setting(environ: Mapping[str, str], var: str, default: int, minimum: int = 1) -> int:
    """An integer environment variable: its default when unset, a ConfigError naming it when malformed."""
    raw = environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{var} must be >= {minimum}, got {value}")
    return value


def load_dotenv_file(path: Path | None = None) -> None:
    """Read `.env` from the working directory; real environment variables win."""
    from dotenv import load_dotenv

    candidate = path or Path.cwd() / ".env"
    if candidate.is_file():
        load_dotenv(candidate, override=False)


def _split_tables(value: str, variable: str) -> tuple[str, ...]:
    names = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if not _TABLE_RE.fullmatch(item):
            raise ConfigError(f"{variable}: {item!r} is not a table name (table or schema.table)")
        names.append(item if "." in item else f"public.{item}")
    return tuple(names)


@dataclass(frozen=True)
class SourceSettings:
    """How to reach the source database and how tenants are scoped in it."""

    dsn: str
    tenant_column: str = "tenant_id"
    tenant_setting: str = "app.current_tenant"
    tenants_query: str = DEFAULT_TENANTS_QUERY
    tenants_dsn: str | None = None
    shared_tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    tenant_id_pattern: str | None = None
    connect_timeout: int = 10
    lock_wait_timeout: str = "60s"

    @property
    def registry_dsn(self) -> str:
        return self.tenants_dsn or self.dsn

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SourceSettings":
        env = os.environ if environ is None else environ
        dsn = env.get("TENANT_BACKUP_SOURCE_DSN", "").strip()
        if not dsn:
            raise ConfigError("TENANT_BACKUP_SOURCE_DSN is not set (libpq URI of the source database, as the backup role)")
        column = env.get("TENANT_BACKUP_TENANT_COLUMN", "tenant_id").strip()
        if not _COLUMN_RE.fullmatch(column):
            raise ConfigError(f"TENANT_BACKUP_TENANT_COLUMN={column!r} is not a column name")
        setting = env.get("TENANT_BACKUP_TENANT_SETTING", "app.current_tenant").strip()
        if not _SETTING_RE.fullmatch(setting):
            raise ConfigError(
                f"TENANT_BACKUP_TENANT_SETTING={setting!r} is not a custom setting name (prefix.name)"
            )
        query = env.get("TENANT_BACKUP_TENANTS_QUERY", "").strip() or DEFAULT_TENANTS_QUERY
        timeout = int_setting(env, "TENANT_BACKUP_CONNECT_TIMEOUT", 10)
        return cls(
            dsn=dsn,
            tenant_column=column,
            tenant_setting=setting,
            tenants_query=query,
            tenants_dsn=env.get("TENANT_BACKUP_TENANTS_DSN", "").strip() or None,
            shared_tables=_split_tables(env.get("TENANT_BACKUP_SHARED_TABLES", ""), "TENANT_BACKUP_SHARED_TABLES"),
            exclude_tables=_split_tables(env.get("TENANT_BACKUP_EXCLUDE_TABLES", ""), "TENANT_BACKUP_EXCLUDE_TABLES"),
            tenant_id_pattern=env.get("TENANT_BACKUP_TENANT_ID_PATTERN") or None,
            connect_timeout=timeout,
            lock_wait_timeout=env.get("TENANT_BACKUP_LOCK_WAIT_TIMEOUT", "60s"),
        )
