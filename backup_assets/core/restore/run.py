"""restore_tenant: fetch a verified copy, then restore into an empty database or replace in place."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

from ..codec.keyring import Keyring
from ..errors import ConfigError
from ..locations.base import Location
from ..source.session import connect, describe
from ..source.tenant_ids import validate_tenant_id
from .interrupt import CancelOnInterrupt, keepalive_dsn, let_go
from .into_empty import into_empty
from .replace_load import DEFAULT_LOCK_TIMEOUT, LOCK_TIMEOUT_RE, replace_rows
from .result import Report, RestoreResult, TableOutcome
from .select import fetch_backup
from .workdir import work_folder

log = logging.getLogger(__name__)


def restore_tenant(
    tenant_id: str,
    *,
    locations: Mapping[str, Location],
    location: str,
    target_dsn: str,
    keyring: Keyring,
    backup: str | None = "latest",
    replace: bool = False,
    dry_run: bool = False,
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
    keep_owners: bool = False,
    work_dir: Path | None = None,
    connect_timeout: int = 10,
    tenant_id_pattern: str | None = None,
    report: Report = log.info,
) -> RestoreResult:
    """Restore `tenant_id` from `location` ("auto" or a name) into `target_dsn`; see the module docstring.

    Raises TenantBackupError subclasses: RestoreRefused before anything is written, RestoreError
    when a restore failed (replace: rolled back entirely), storage / archive errors when no copy
    could be used."""
    tenant_id = validate_tenant_id(tenant_id, tenant_id_pattern)
    if not LOCK_TIMEOUT_RE.match(lock_timeout or ""):
        raise ConfigError(f"lock timeout {lock_timeout!r} is not a duration such as 10s, 500ms or 2min")
    target = describe(target_dsn)
    started = time.monotonic()
    timings: dict[str, float] = {}
    session_dsn = keepalive_dsn(target_dsn)

    def open_session():
        return connect(session_dsn, timeout=connect_timeout, application_name="tenant-backup-restore")

    with CancelOnInterrupt() as guard, work_folder(work_dir, report) as work:
        try:
            t0 = time.monotonic()
            copy = fetch_backup(locations, tenant_id, location, backup, keyring, work, report, require_seal=replace)
            timings["fetch_s"] = time.monotonic() - t0
            report(f"using location {copy.location}: backup {copy.backup_id} of tenant {tenant_id} ({copy.uri})")
            manifest = copy.manifest
            result = RestoreResult(
                tenant_id,
                "replace" if replace else "empty",
                dry_run,
                copy.location,
                copy.backup_id,
                copy.uri,
                target,
                {},
                copy.skipped,
                timings=timings,
            )
            kinds = manifest.kinds.kind_of()
            for table, rows in sorted(manifest.tables.items()):
                result.tables[table] = TableOutcome(kinds.get(table, "shared"), int(rows))
            column = manifest.tenant_column
            with open_session() as conn:
                guard.attach(conn)
                let_go(conn)
                if replace:
                    replace_rows(
                        conn,
                        copy,
                        keyring,
                        result,
                        column,
                        lock_timeout,
                        dry_run,
                        report,
                        connect_twin=open_session,
                        guard=guard,
                    )
                else:
                    into_empty(conn, copy, keyring, result, target_dsn, keep_owners, dry_run, report)
        except Exception:
            if guard.interrupted:  # whatever the cancel or the killed child made fail: an interrupt
                raise KeyboardInterrupt from None
            raise
    timings["total_s"] = time.monotonic() - started
    return result
