"""All configuration: one `Settings`, parsed from environment variables (and a `.env` file in the
working directory) at an edge — the code location (definitions.py), the CLI's main, the demo — and
passed down. Nothing below the edges reads `os.environ` for configuration (the one other reader is
core/source/session.py, which builds a client program's environment from the process's on purpose).

The variables are listed in README.md ("Configuration") and docs/DEPLOYMENT.md; each general one is
declared once in core/options.py (OPTIONS), each location kind's in its module (core/locations/
registry.py), and Settings keeps exactly those (TENANT_BACKUP_* and every registered kind's). Only what
a command needs is required: `export` needs a source DSN and keys, not storage settings — so the
source, the keyring and the locations are parsed when first asked for (and then kept: the keyring is
parsed once), the plain scalars and the tenant id rule up front. A process parses one environment
once: `Settings.of` gives back the Settings already built for the same variables.
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
from .options import DEFAULT_TENANTS_QUERY, DEFAULT_UI_URL, OPTIONS, PREFIX, Option  # noqa: F401 - re-exported
from .source.tenant_ids import TenantIds, tenant_ids, tenant_ids_from_env
from .values import duration_setting, int_setting, optional_setting

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
# Custom settings must be qualified (prefix.name), which also keeps them out of PGOPTIONS syntax trouble.
_SETTING_RE = re.compile(rf"{_IDENT}\.{_IDENT}")
_COLUMN_RE = re.compile(_IDENT)
_TABLE_RE = re.compile(rf"(?:{_IDENT}\.)?{_IDENT}")


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

    def __post_init__(self) -> None:
        tenant_ids(self.tenant_id_pattern)  # a pattern that does not compile: ConfigError now

    @property
    def registry_dsn(self) -> str:
        return self.tenants_dsn or self.dsn

    @property
    def tenant_ids(self) -> TenantIds:
        """What a tenant id is (TENANT_BACKUP_TENANT_ID_PATTERN, else UUIDs), compiled once."""
        return tenant_ids(self.tenant_id_pattern)

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
            tenant_id_pattern=tenant_ids_from_env(env).pattern,
            connect_timeout=timeout,
            lock_wait_timeout=env.get("TENANT_BACKUP_LOCK_WAIT_TIMEOUT", "60s"),
        )


WEEKLY_MODES = ("batch", "per_tenant")


_OPTIONS = {o.var: o for o in OPTIONS}

# Settings objects of this process by their variables: a Settings is parsed once per process (the
# Dagster resource gets back the one the code location built: Settings.of).
_BUILT: dict[tuple, "Settings"] = {}


@dataclass(frozen=True)
class Settings:
    """Every setting tenant-backup has, from one environment snapshot. Frozen and hashable (clients
    built from it can be cached per Settings). Holds no parsed secret when pickled (the keyring is
    parsed again where it is used)."""

    variables: tuple[tuple[str, str], ...] = ()  # TENANT_BACKUP_* and every location kind's variables
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
    # What a tenant id is, compiled once: a bad TENANT_BACKUP_TENANT_ID_PATTERN is a ConfigError here.
    tenant_ids: TenantIds = field(init=False, compare=False)

    def __post_init__(self) -> None:
        env = dict(self.variables)
        work = optional_setting(env, "TENANT_BACKUP_WORK_DIR")
        alerts = optional_setting(env, "TENANT_BACKUP_ALERTS_FILE")
        mode = _OPTIONS["TENANT_BACKUP_WEEKLY_MODE"].value(env)
        if mode not in WEEKLY_MODES:
            raise ConfigError(f"TENANT_BACKUP_WEEKLY_MODE={mode!r}: use one of {', '.join(WEEKLY_MODES)}")
        scratch = optional_setting(env, "TENANT_BACKUP_SCRATCH_DSN")
        if scratch:
            from .source.session import parse_dsn

            parse_dsn(scratch)  # ConfigError on a malformed string, before any drill runs
        rule = tenant_ids_from_env(env)
        values = {o.attr: o.value(env) for o in OPTIONS if o.attr}
        values.update(
            {
                "work_dir": work or str(Path(tempfile.gettempdir()) / "tenant-backup-work"),
                # Alerts go to a file only when one is configured or the work directory is chosen explicitly.
                "alerts_file": alerts or (str(Path(work) / "alerts.jsonl") if work else None),
                "ui_url": _OPTIONS["TENANT_BACKUP_UI_URL"].value(env).rstrip("/"),
                "weekly_mode": mode,
                "restore_lock_timeout": duration_setting(env, "TENANT_BACKUP_RESTORE_LOCK_TIMEOUT", "10s"),
                "scratch_dsn": scratch,
                "scratch_pg_bin": tuple(
                    d for d in (optional_setting(env, "TENANT_BACKUP_SCRATCH_PG_BIN") or "").split(os.pathsep) if d
                ),
                "workers": int_setting(env, "TENANT_BACKUP_WORKERS", (os.cpu_count() or 1) + 1),
                "tenant_id_pattern": rule.pattern,
                "tenant_ids": rule,
            }
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __getstate__(self) -> dict:  # the fields only: no parsed keyring, no client travels
        return {f: getattr(self, f) for f in ("variables", "from_process")}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "variables", state["variables"])
        object.__setattr__(self, "from_process", state["from_process"])
        self.__post_init__()

    @classmethod
    def of(cls, variables: tuple[tuple[str, str], ...], from_process: frozenset[str] | None = None) -> "Settings":
        """The Settings of these variables, parsed once per process. `from_process` None: whichever
        one of these variables an edge built (the Dagster resource's way back to it)."""
        key = (variables, from_process)
        found = _BUILT.get(key)
        if found is None:
            found = cls(variables, from_process or frozenset())
            _BUILT.setdefault((variables, found.from_process), found)
            _BUILT.setdefault((variables, None), found)
        return _BUILT.get(key, found)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str) -> "Settings":
        """The edges' one read of the process environment (`environ` given: that mapping instead);
        `overrides` replace single variables (e.g. TENANT_BACKUP_SOURCE_DSN=...)."""
        env = os.environ if environ is None else environ
        theirs = kind_variables()  # every location kind's own variables (core/locations/registry.py)
        kept = {k: v for k, v in env.items() if k.startswith(PREFIX) or k in theirs}
        kept.update(overrides)
        process = frozenset(k for k in kept if environ is None and k not in overrides)
        return cls.of(tuple(sorted(kept.items())), process)

    def with_values(self, **overrides: str) -> "Settings":
        return Settings.of(
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
        """The master keys (TENANT_BACKUP_KEYS or TENANT_BACKUP_KEYS_FILE), checked as they are parsed:
        parsed once (a ConfigError is raised again on every call)."""
        return self._keyring

    @cached_property
    def _keyring(self):
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

        return locations_from_env(names, self.environ, retry=retry, tenant_ids_rule=self.tenant_ids)

    def cluster_settings(self) -> dict[str, str]:
        """The non-secret settings a batch's driver and its Dask workers must agree on, by name
        (source, registry, tenant column and setting, locations, retention, the active key's id and
        check value): core/cluster.py. Every other setting is each worker's own."""
        from .cluster import cluster_settings

        return cluster_settings(self)

    def apply_process_wide(self) -> None:
        """The one setting that is process-wide by nature — where the PostgreSQL programs are
        (TENANT_BACKUP_PG_BIN) — set once, at the edge (the CLI's main, the code location, a batch
        worker); applying the same value again changes nothing."""
        global _APPLIED
        if _APPLIED == (self.pg_bin,):
            return
        from .source import pgbin

        pgbin.configure(self.pg_bin)
        _APPLIED = (self.pg_bin,)


_APPLIED: tuple | None = None  # what apply_process_wide last set in this process


def kind_variables() -> frozenset[str]:
    """The variables the registered location kinds read (core/locations/registry.py)."""
    from .locations.registry import variables

    return variables()
