"""All configuration: one `Settings`, parsed from environment variables (and a `.env` file in the
working directory) at an edge — the code location (definitions.py), the CLI's main, the demo — and
passed down. Nothing below the edges reads `os.environ` for configuration (the one other reader is
core/source/session.py, which builds a client program's environment from the process's on purpose).

The variables are listed in README.md ("Configuration") and docs/DEPLOYMENT.md. Only what a command
needs is required: `export` needs a source DSN and keys, not storage settings — so the source, the
keyring and the locations are parsed when first asked for, the plain scalars up front.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
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
    def from_env(cls, env: Mapping[str, str]) -> "SourceSettings":
        dsn = env.get("TENANT_BACKUP_SOURCE_DSN", "").strip()
        if not dsn:
            raise ConfigError(
                "TENANT_BACKUP_SOURCE_DSN is not set (libpq URI of the source database, as the backup role)"
            )
        column = env.get("TENANT_BACKUP_TENANT_COLUMN", "tenant_id").strip()
        if not _COLUMN_RE.fullmatch(column):
            raise ConfigError(f"TENANT_BACKUP_TENANT_COLUMN={column!r} is not a column name")
        setting = env.get("TENANT_BACKUP_TENANT_SETTING", "app.current_tenant").strip()
        if not _SETTING_RE.fullmatch(setting):
            raise ConfigError(f"TENANT_BACKUP_TENANT_SETTING={setting!r} is not a custom setting name (prefix.name)")
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


# The variables a Settings snapshot keeps (secrets among them; Settings never prints its values).
_PREFIXES = ("TENANT_BACKUP_", "R2_", "B2_")
_DURATION_RE = re.compile(r"\d+\s*(ms|s|min|h)?\Z")
WEEKLY_MODES = ("batch", "per_tenant")
DEFAULT_UI_URL = "http://127.0.0.1:3000"


def _float_setting(env: Mapping[str, str], var: str, default: float) -> float:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{var} must be > 0, got {raw!r}")
    return value


def _duration_setting(env: Mapping[str, str], var: str, default: str) -> str:
    """A PostgreSQL duration (`10s`, `500ms`, `2min`; a bare number is milliseconds, as in PostgreSQL)."""
    value = env.get(var, "").strip() or default
    if not _DURATION_RE.match(value):
        raise ConfigError(f"{var}={value!r} is not a duration such as 10s, 500ms or 2min")
    return value


def _optional(env: Mapping[str, str], var: str) -> str | None:
    return env.get(var, "").strip() or None


def _bool_setting(env: Mapping[str, str], var: str) -> bool:
    raw = env.get(var, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{var} must be 1/true/yes or 0/false/no, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Every setting tenant-backup has, from one environment snapshot. Frozen and hashable (clients
    built from it can be cached per Settings), picklable (a batch worker gets its driver's)."""

    variables: tuple[tuple[str, str], ...] = ()  # the TENANT_BACKUP_*, R2_*, B2_* variables in effect
    # Those whose value is the process environment's (the Dagster layer passes such secrets as EnvVar).
    from_process: frozenset[str] = frozenset()
    work_dir: str = field(init=False)
    alerts_file: str | None = field(init=False)
    alert_webhook: str | None = field(init=False)
    ui_url: str = field(init=False)
    weekly_cron: str = field(init=False)
    weekly_mode: str = field(init=False)
    prune_cron: str = field(init=False)
    verify_cron: str = field(init=False)
    timezone: str = field(init=False)
    retries: int = field(init=False)
    retry_delay_s: int = field(init=False)
    registry_sync_s: int = field(init=False)
    stale_check_s: int = field(init=False)
    max_age_days: float = field(init=False)
    keep_min: int = field(init=False)
    restore_lock_timeout: str = field(init=False)
    scratch_dsn: str | None = field(init=False)
    scratch_idle_s: int = field(init=False)
    scratch_pg_bin: tuple[str, ...] = field(init=False)  # server programs for a scratch server of the source's major
    workers: int = field(init=False)
    dask_scheduler: str | None = field(init=False)
    # Plain tcp:// to a scheduler that is not on loopback (core/cluster.py); refused unless set.
    dask_allow_plaintext: bool = field(init=False)
    worker_loss_retries: int = field(init=False)
    run_timeout_s: int = field(init=False)
    pg_bin: str | None = field(init=False)
    tenant_id_pattern: str | None = field(init=False)

    def __post_init__(self) -> None:
        env = dict(self.variables)
        work = _optional(env, "TENANT_BACKUP_WORK_DIR")
        alerts = _optional(env, "TENANT_BACKUP_ALERTS_FILE")
        mode = env.get("TENANT_BACKUP_WEEKLY_MODE", "").strip() or "batch"
        if mode not in WEEKLY_MODES:
            raise ConfigError(f"TENANT_BACKUP_WEEKLY_MODE={mode!r}: use one of {', '.join(WEEKLY_MODES)}")
        scratch = _optional(env, "TENANT_BACKUP_SCRATCH_DSN")
        if scratch:
            from .source.session import parse_dsn

            parse_dsn(scratch)  # ConfigError on a malformed string, before any drill runs
        values = {
            "work_dir": work or str(Path(tempfile.gettempdir()) / "tenant-backup-work"),
            # Alerts go to a file only when one is configured or the work directory is chosen explicitly.
            "alerts_file": alerts or (str(Path(work) / "alerts.jsonl") if work else None),
            "alert_webhook": _optional(env, "TENANT_BACKUP_ALERT_WEBHOOK"),
            "ui_url": (_optional(env, "TENANT_BACKUP_UI_URL") or DEFAULT_UI_URL).rstrip("/"),
            "weekly_cron": _optional(env, "TENANT_BACKUP_CRON") or "0 3 * * 0",  # Sunday 03:00
            "weekly_mode": mode,
            "prune_cron": _optional(env, "TENANT_BACKUP_PRUNE_CRON") or "0 4 * * *",
            "verify_cron": _optional(env, "TENANT_BACKUP_VERIFY_CRON") or "0 5 * * *",
            "timezone": _optional(env, "TENANT_BACKUP_TIMEZONE") or "UTC",
            "retries": int_setting(env, "TENANT_BACKUP_RETRIES", 3, minimum=0),
            "retry_delay_s": int_setting(env, "TENANT_BACKUP_RETRY_DELAY_S", 300, minimum=0),
            "registry_sync_s": int_setting(env, "TENANT_BACKUP_REGISTRY_SYNC_S", 300),
            "stale_check_s": int_setting(env, "TENANT_BACKUP_STALE_CHECK_S", 24 * 3600),
            # 8 days: a weekly backup plus a day's slack.
            "max_age_days": _float_setting(env, "TENANT_BACKUP_MAX_AGE_DAYS", 8.0),
            # At least 1: 0 would let prune empty a tenant whose backups stopped.
            "keep_min": int_setting(env, "TENANT_BACKUP_KEEP_MIN", 2, minimum=1),
            "restore_lock_timeout": _duration_setting(env, "TENANT_BACKUP_RESTORE_LOCK_TIMEOUT", "10s"),
            "scratch_dsn": scratch,
            "scratch_idle_s": int_setting(env, "TENANT_BACKUP_SCRATCH_IDLE_S", 600),
            "scratch_pg_bin": tuple(
                d for d in (_optional(env, "TENANT_BACKUP_SCRATCH_PG_BIN") or "").split(os.pathsep) if d
            ),
            "workers": int_setting(env, "TENANT_BACKUP_WORKERS", (os.cpu_count() or 1) + 1),
            "dask_scheduler": _optional(env, "TENANT_BACKUP_DASK_SCHEDULER"),
            "dask_allow_plaintext": _bool_setting(env, "TENANT_BACKUP_DASK_ALLOW_PLAINTEXT"),
            "worker_loss_retries": int_setting(env, "TENANT_BACKUP_WORKER_LOSS_RETRIES", 3, minimum=1),
            "run_timeout_s": int_setting(env, "TENANT_BACKUP_RUN_TIMEOUT_S", 6 * 3600),
            "pg_bin": _optional(env, "TENANT_BACKUP_PG_BIN"),
            "tenant_id_pattern": env.get("TENANT_BACKUP_TENANT_ID_PATTERN") or None,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str) -> "Settings":
        """The edges' one read of the process environment (`environ` given: that mapping instead);
        `overrides` replace single variables (e.g. TENANT_BACKUP_SOURCE_DSN=...)."""
        env = os.environ if environ is None else environ
        kept = {k: v for k, v in env.items() if k.startswith(_PREFIXES)}
        kept.update(overrides)
        process = frozenset(k for k in kept if environ is None and k not in overrides)
        return cls(tuple(sorted(kept.items())), process)

    def with_values(self, **overrides: str) -> "Settings":
        return Settings(
            tuple(sorted({**dict(self.variables), **overrides}.items())), self.from_process - set(overrides)
        )

    def __repr__(self) -> str:  # values may be secrets
        return f"Settings({', '.join(k for k, _ in self.variables)})"

    def get(self, name: str, default: str = "") -> str:
        """One raw variable (for the few settings that name another variable, e.g. a password's)."""
        return dict(self.variables).get(name, default)

    @property
    def environ(self) -> dict[str, str]:
        return dict(self.variables)

    @cached_property
    def source(self) -> SourceSettings:
        """The source database: TENANT_BACKUP_SOURCE_DSN required (ConfigError naming it)."""
        return SourceSettings.from_env(self.environ)

    def keyring(self):
        """The master keys (TENANT_BACKUP_KEYS or TENANT_BACKUP_KEYS_FILE), checked as they are parsed."""
        from .codec.keyring import Keyring

        return Keyring.from_env(self.environ)

    @cached_property
    def location_names(self) -> list[str]:
        from .locations.config import location_names

        return location_names(self.environ)

    def locations(self, names: list[str] | None = None, *, retry: bool = True) -> dict:
        """name -> Location for `names` (default: TENANT_BACKUP_LOCATIONS), each fully configured or a
        ConfigError naming every missing variable."""
        from .locations.config import locations_from_env

        return locations_from_env(names, self.environ, retry=retry)

    def cluster_settings(self) -> dict[str, str]:
        """The non-secret settings a batch's driver and its Dask workers must agree on, by name
        (source, registry, tenant column and setting, locations, retention, the active key's id and
        check value): core/cluster.py. Every other setting is each worker's own."""
        from .cluster import cluster_settings

        return cluster_settings(self)

    def apply_process_wide(self) -> None:
        """The one setting that is process-wide by nature — where the PostgreSQL programs are
        (TENANT_BACKUP_PG_BIN) — set once at the edge."""
        from .source import pgbin

        pgbin.configure(self.pg_bin)
