"""Partitioned asset checks. Each calls one core function and reports its result; a failure also
raises an INTEGRITY_FAILURE alert.

- on tenant_archive, from one restore into a scratch database: isolation (every row of a table with
  the tenant column is this tenant's) and the restore drill (row counts equal the manifest's) — both
  blocking: a leaky or unrestorable archive is not shipped to any location;
- on each <location>_copy: checksum (the stored bytes re-read and hashed, against the manifest) and
  integrity (downloaded, decrypted, decompressed, `pg_restore --list`).
"""

import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetChecksDefinition,
                     AssetCheckSpec, AssetIn, AssetKey, MetadataValue, multi_asset_check)

from ..core import alerts
from ..core.catalog import CopyCheck
from ..core.drill import restore_drill
from ..core.errors import TenantBackupError
from ..core.status import record_verification
from ..core.verify import verify_archive
from .assets import ARCHIVE_ASSET
from .partitions import tenants_partitions
from .resources import ArchiveHandle, BackupResource, StoredHandle
from .resources import location as storage_location


@contextmanager
def _partitioned_checks_preview():
    """Partitioned asset checks are a preview feature in Dagster 1.13, used on purpose (DESIGN §3)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        yield


def _result(context, *, asset: str, check: str, passed: bool, tenant_id: str, location: str | None,
            message: str, metadata: dict) -> AssetCheckResult:
    if not passed:
        alerts.emit(alerts.Alert(alerts.INTEGRITY_FAILURE, "critical", tenant_id, location,
                                 f"{asset}.{check}: {message}", _run_url(context.op_execution_context.run_id)))
    return AssetCheckResult(asset_key=AssetKey(asset), check_name=check, passed=passed,
                            severity=AssetCheckSeverity.ERROR, metadata={"message": message, **metadata})


def _run_url(run_id: str) -> str:
    base = os.environ.get("TENANT_BACKUP_UI_URL", "http://127.0.0.1:3000").rstrip("/")
    return f"{base}/runs/{run_id}"


def build_archive_checks() -> list[AssetChecksDefinition]:
    with _partitioned_checks_preview():
        return _archive_checks()


def build_location_checks(location: str) -> list[AssetChecksDefinition]:
    with _partitioned_checks_preview():
        return _location_checks(location)


def _archive_checks() -> list[AssetChecksDefinition]:
    specs = [
        AssetCheckSpec("isolation", asset=ARCHIVE_ASSET, partitions_def=tenants_partitions, blocking=True,
                       description="Restored into a scratch database, every row of every table with the tenant "
                                   "column is this tenant's."),
        AssetCheckSpec("restore_drill", asset=ARCHIVE_ASSET, partitions_def=tenants_partitions, blocking=True,
                       description="Restored into a scratch database (TENANT_BACKUP_SCRATCH_DSN or an embedded "
                                   "server), the row counts equal the manifest's and no other tenant's row is there."),
    ]

    # One restore serves both checks: a step costs Dagster events and a restore costs a database,
    # and thousands of tenants run every week.
    @multi_asset_check(name="tenant_archive_checks", specs=specs, ins={"archive": AssetIn(ARCHIVE_ASSET)})
    def archive_checks(context: AssetCheckExecutionContext, archive: ArchiveHandle, backup: BackupResource):
        settings = backup.source_settings()
        common = {"asset": ARCHIVE_ASSET, "tenant_id": archive.tenant_id, "location": None}
        try:
            result = restore_drill(Path(archive.path), archive.manifest, backup.keyring(), backup.scratch_admin_dsn(),
                                   tenant_column=settings.tenant_column)
        except TenantBackupError as exc:
            yield _result(context, check="isolation", passed=False, message=f"not checked: {exc}", metadata={},
                          **common)
            yield _result(context, check="restore_drill", passed=False, message=str(exc), metadata={}, **common)
            return
        isolation = ("no row of another tenant in any table with the tenant column" if result.isolated
                     else f"rows of other tenants: {result.foreign_rows}")
        yield _result(context, check="isolation", passed=result.isolated, message=isolation,
                      metadata={"foreign_rows": MetadataValue.int(sum(result.foreign_rows.values()))}, **common)
        yield _result(context, check="restore_drill", passed=result.ok, message=result.message,
                      metadata={"restored_tables": MetadataValue.int(result.restored_tables),
                                "drill_seconds": MetadataValue.float(round(result.duration_s, 3))}, **common)

    return [archive_checks]


def _location_checks(location: str) -> list[AssetChecksDefinition]:
    asset_name = f"{location}_copy"
    specs = [
        AssetCheckSpec("checksum", asset=asset_name, partitions_def=tenants_partitions,
                       description=f"The copy in {location} re-read and hashed: size and SHA-256 equal the "
                                   "stored metadata's and the manifest's."),
        AssetCheckSpec("integrity", asset=asset_name, partitions_def=tenants_partitions,
                       description=f"The copy in {location} downloaded, decrypted, decompressed and read by "
                                   "`pg_restore --list`; every table of the manifest has its data entry."),
    ]

    # Both checks from one download.
    @multi_asset_check(name=f"{asset_name}_checks", specs=specs, ins={"stored": AssetIn(asset_name)})
    def copy_checks(context: AssetCheckExecutionContext, stored: StoredHandle, backup: BackupResource):
        common = {"asset": asset_name, "tenant_id": stored.tenant_id, "location": location}
        where = {"backup_id": stored.backup_id, "uri": stored.uri}
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="tb-verify-", dir=backup.scratch_files_dir()) as tmp:
            path = Path(tmp) / "archive.tbk"
            try:
                storage_location(location).get(stored.tenant_id, stored.backup_id, path)
            except TenantBackupError as exc:  # CorruptObject: stored bytes differ from their metadata
                yield _result(context, check="checksum", passed=False, message=str(exc), metadata=where, **common)
                yield _result(context, check="integrity", passed=False, message="not checked: copy unreadable",
                              metadata=where, **common)
                return
            downloaded = time.monotonic() - started
            result = verify_archive(path, stored.manifest, backup.keyring(), deep=True)
        checksum_ok = result.checks.get("checksum", False)
        yield _result(context, check="checksum", passed=checksum_ok,
                      message="SHA-256 and size match the manifest" if checksum_ok else result.message,
                      metadata={**where, "download_seconds": MetadataValue.float(round(downloaded, 3))}, **common)
        integrity_ok = all(ok for name, ok in result.checks.items() if name != "checksum") and checksum_ok
        # Beside the copy, so `tenant-backup status` knows it was verified without Dagster's database.
        record_verification(storage_location(location), CopyCheck(location, stored.tenant_id, stored.backup_id,
                                                                  integrity_ok, result.message),
                            sha256=(stored.manifest.get("archive") or {}).get("sha256"), deep=True,
                            by=f"{asset_name} checks")
        yield _result(context, check="integrity", passed=integrity_ok, message=result.message,
                      metadata={**where, "toc_entries": MetadataValue.int(result.toc_entries or 0)}, **common)

    return [copy_checks]
