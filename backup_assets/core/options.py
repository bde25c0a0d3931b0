"""Every general setting, declared once: its variable, type, default, whether it is a secret
(`OPTIONS`). core/settings.py parses them into Settings, the Dagster resource shows each as a typed
field (defs/resources.py), core/cluster.py never sends the secrets. A location kind declares its own
variables in its module (core/locations/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .values import bool_setting, float_setting, int_setting, optional_setting

DEFAULT_TENANTS_QUERY = "SELECT id::text FROM tenants WHERE status = 'ACTIVE'"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
PREFIX = "TENANT_BACKUP_"  # every variable of ours starts with it, but a location kind's own (registry)


@dataclass(frozen=True)
class Option:
    """One general variable (a location kind declares its own: core/locations/registry.py): its name,
    its type, its default, whether it is a secret. Settings parses it (`attr`: the Settings attribute
    it becomes, parsed by `value`; None: parsed in Settings.__post_init__ or by SourceSettings / the
    keyring / the locations); the Dagster resource shows it as a typed field (defs/resources.py)."""

    var: str
    help: str
    type: type = str  # str, int, float or bool
    default: object = None
    attr: str | None = None
    secret: bool = False
    minimum: int = 1

    @property
    def field(self) -> str:
        """Its name as a field of the Dagster resource: the variable without TENANT_BACKUP_, lower case
        (the keyring's: master_keys, master_keys_file, as `keys` would shadow a mapping's method)."""
        name = self.var.removeprefix(PREFIX).lower()
        return f"master_{name}" if name.startswith("keys") else name

    def value(self, env: Mapping[str, str]):
        """Its value in `env` (its default when unset), checked: ConfigError naming it otherwise."""
        if self.type is int:
            return int_setting(env, self.var, self.default, minimum=self.minimum)
        if self.type is float:
            return float_setting(env, self.var, self.default)
        if self.type is bool:
            return bool_setting(env, self.var)
        return optional_setting(env, self.var) or self.default

    def typed(self, raw: str):
        """A set variable's value as its type (for the resource; Settings has already checked it)."""
        if self.type is bool:
            return bool_setting({self.var: raw}, self.var)
        return self.type(raw.strip()) if self.type in (int, float) else raw

    def text(self, value) -> str:
        """The variable's text for a typed value (the inverse of `typed`)."""
        if self.type is bool:
            return "1" if value else "0"
        if self.type is float:
            return repr(float(value)).removesuffix(".0")
        return str(value)


# Every general variable, once. A location kind's own variables are declared in its module.
OPTIONS: tuple[Option, ...] = (
    # the source (SourceSettings)
    Option("TENANT_BACKUP_SOURCE_DSN", "libpq URI of the source database, as the backup role", secret=True),
    Option("TENANT_BACKUP_TENANT_COLUMN", "tenant column in tenant-scoped tables", default="tenant_id"),
    Option("TENANT_BACKUP_TENANT_SETTING", "the setting the RLS policies read", default="app.current_tenant"),
    Option("TENANT_BACKUP_TENANTS_QUERY", "SQL returning the tenants to back up", default=DEFAULT_TENANTS_QUERY),
    Option("TENANT_BACKUP_TENANTS_DSN", "connection for the registry query (default: the source DSN)", secret=True),
    Option("TENANT_BACKUP_TENANT_ID_PATTERN", "regular expression for tenant ids (whole match); default UUIDs"),
    Option("TENANT_BACKUP_SHARED_TABLES", "schema.table,... dumped whole although they reference tenant tables"),
    Option("TENANT_BACKUP_EXCLUDE_TABLES", "schema.table,... whose rows are never dumped"),
    Option("TENANT_BACKUP_CONNECT_TIMEOUT", "seconds", type=int, default=10),
    Option("TENANT_BACKUP_LOCK_WAIT_TIMEOUT", "pg_dump --lock-wait-timeout", default="60s"),
    # the keyring
    Option("TENANT_BACKUP_KEYS", "keyring id:base64key[,...]: the first encrypts, all decrypt", secret=True),
    Option("TENANT_BACKUP_KEYS_FILE", "a file holding the keyring entries (owner-only)"),
    # storage (each location kind's own variables: core/locations/registry.py)
    Option("TENANT_BACKUP_LOCATIONS", "locations to write (default: every kind marked default)"),
    Option("TENANT_BACKUP_STORAGE_PREFIX", "key prefix in every location"),
    Option("TENANT_BACKUP_STORAGE_ATTEMPTS", "whole-operation attempts on transient storage errors", int, 3),
    # A day: no put takes that long between its first byte and its manifest (core/maintenance/gc.py).
    Option(
        "TENANT_BACKUP_GC_GRACE_S", "prune removes unreferenced storage objects older than this", int, 86400, minimum=0
    ),
    # the rest
    Option("TENANT_BACKUP_WORK_DIR", "staging, alerts file (default $TMPDIR/tenant-backup-work)"),
    Option("TENANT_BACKUP_ALERTS_FILE", "alerts as JSON lines (default <work dir>/alerts.jsonl when it is set)"),
    Option("TENANT_BACKUP_ALERT_WEBHOOK", "URL receiving each alert as a JSON POST", attr="alert_webhook", secret=True),
    Option("TENANT_BACKUP_UI_URL", "base of the run links in alerts", default=DEFAULT_UI_URL),
    Option("TENANT_BACKUP_CRON", "weekly schedule", default="0 3 * * 0", attr="weekly_cron"),
    Option("TENANT_BACKUP_WEEKLY_MODE", "batch or per_tenant", default="batch"),
    Option("TENANT_BACKUP_PRUNE_CRON", "daily prune", default="0 4 * * *", attr="prune_cron"),
    Option("TENANT_BACKUP_VERIFY_CRON", "daily verify", default="0 5 * * *", attr="verify_cron"),
    Option("TENANT_BACKUP_TIMEZONE", "of the schedules", default="UTC", attr="timezone"),
    Option("TENANT_BACKUP_RETRIES", "step retries (transient errors)", int, 3, "retries", minimum=0),
    Option("TENANT_BACKUP_RETRY_DELAY_S", "seconds between step retries", int, 300, "retry_delay_s", minimum=0),
    Option("TENANT_BACKUP_REGISTRY_SYNC_S", "registry sensor interval", int, 300, "registry_sync_s"),
    Option("TENANT_BACKUP_STALE_CHECK_S", "staleness sensor interval", int, 24 * 3600, "stale_check_s"),
    # 8 days: a weekly backup plus a day's slack.
    Option("TENANT_BACKUP_MAX_AGE_DAYS", "stale without a backup younger than this", float, 8.0, "max_age_days"),
    # At least 1: 0 would let prune empty a tenant whose backups stopped.
    Option("TENANT_BACKUP_KEEP_MIN", "prune keeps at least this many per tenant and location", int, 2, "keep_min"),
    Option("TENANT_BACKUP_RESTORE_LOCK_TIMEOUT", "lock timeout of restore --replace", default="10s"),
    Option("TENANT_BACKUP_SCRATCH_DSN", "a role that may CREATE DATABASE, for restore drills", secret=True),
    Option("TENANT_BACKUP_SCRATCH_IDLE_S", "the embedded scratch server stops after", int, 600, "scratch_idle_s"),
    Option("TENANT_BACKUP_SCRATCH_PG_BIN", "server programs of the source's major for the scratch server"),
    Option("TENANT_BACKUP_WORKERS", "Dask worker processes (default cores + 1)", int),
    Option("TENANT_BACKUP_DASK_SCHEDULER", "a Dask scheduler on other machines", attr="dask_scheduler"),
    Option("TENANT_BACKUP_DASK_ALLOW_PLAINTEXT", "plain tcp:// off loopback", bool, False, "dask_allow_plaintext"),
    Option("TENANT_BACKUP_WORKER_LOSS_RETRIES", "worker deaths a tenant survives", int, 3, "worker_loss_retries"),
    Option("TENANT_BACKUP_RUN_TIMEOUT_S", "when an executing run counts as dead", int, 6 * 3600, "run_timeout_s"),
    Option("TENANT_BACKUP_PG_BIN", "directories of pg_dump/pg_restore/psql", attr="pg_bin"),
)
