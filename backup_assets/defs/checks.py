"""Partitioned asset checks. Each calls one core function and reports its result; a failure also
raises an INTEGRITY_FAILURE alert.

- on tenant_archive: isolation (every row of a tenant-column table is this tenant's) and the restore
  drill (restore into a scratch database, row counts equal the manifest) — both blocking: a leaky or
  unrestorable archive is not shipped to any location;
- on each <location>_copy: checksum (the stored bytes re-read and hashed, against the manifest) and
  integrity (downloaded, decrypted, decompressed, `pg_restore --list`).
"""


import tempfile
from contextlib import contextmanager
import time
import warnings
from pathlib import Path

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetChecksDefinition, MetadataValue, asset_check

from ..core import alerts
from ..core.drill import restore_drill
from ..core.errors import TenantBackupError
from ..core.isolation import scan_archive
from ..core.storage import locations_from_env
from ..core.verify import verify_archive
from .assets import ARCHIVE_ASSET
from .partitions import tenants_partitions
from .resources import ArchiveHandle, BackupResource, StoredHandle



@contextmanager
def _partitioned_checks_preview():
    """Partitioned asset checks are a preview feature in Dagster 1.13, used on purpose (DESIGN §3)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        yield


def _result(context: AssetCheckExecutionContext, *, passed: bool, tenant_id: str, location: str | None,
            message: str, metadata: dict) -> AssetCheckResult:
    if not passed:
        alerts.emit(alerts.Alert(alerts.INTEGRITY_FAILURE, "critical", tenant_id, location,
                                 f"{context.check_specs[0].name}: {message}", _run_url(context.run_id)))
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR,
                            metadata={"message": message, **metadata})


def _run_url(run_id: str) -> str:
    import os

    base = os.environ.get("TENANT_BACKUP_UI_URL", "http://127.0.0.1:3000").rstrip("/")
    return f"{base}/runs/{run_id}"


def build_archive_checks() -> list[AssetChecksDefinition]:
    with _partitioned_checks_preview():
        return _archive_checks()


def build_location_checks(location: str) -> list[AssetChecksDefinition]:
    with _partitioned_checks_preview():
        return _location_checks(location)


def _archive_checks() -> list[AssetChecksDefinition]:
    @asset_check(asset=ARCHIVE_ASSET, name="isolation", partitions_def=tenants_partitions, blocking=True,
                 description="Every row of every table with the tenant column in the archive is this tenant's.")
    def isolation(context: AssetCheckExecutionContext, tenant_archive: ArchiveHandle,
                  backup: BackupResource) -> AssetCheckResult:
        settings = backup.source_settings()
        try:
            report = scan_archive(Path(tenant_archive.path), backup.keyring(), tenant_id=tenant_archive.tenant_id,
                                  tenant_column=settings.tenant_column)
        except TenantBackupError as exc:
            return _result(context, passed=False, tenant_id=tenant_archive.tenant_id, location=None,
                           message=str(exc), metadata={})
        counts_match = report.rows == tenant_archive.manifest["tables"]
        passed = report.isolated and counts_match
        message = ("isolated" if report.isolated else f"rows of other tenants in {report.foreign_rows}")
        if not counts_match:
            message += "; rows in the archive differ from the manifest"
        return _result(context, passed=passed, tenant_id=tenant_archive.tenant_id, location=None, message=message,
                       metadata={"tables_checked": MetadataValue.int(len(report.checked_tables)),
                                 "foreign_rows": MetadataValue.int(sum(report.foreign_rows.values())),
                                 "rows_scanned": MetadataValue.int(sum(report.rows.values()))})

    @asset_check(asset=ARCHIVE_ASSET, name="restore_drill", partitions_def=tenants_partitions, blocking=True,
                 description="Restored into a scratch database (TENANT_BACKUP_SCRATCH_DSN or an embedded server), "
                             "the row counts equal the manifest's.")
    def drill(context: AssetCheckExecutionContext, tenant_archive: ArchiveHandle,
              backup: BackupResource) -> AssetCheckResult:
        settings = backup.source_settings()
        try:
            result = restore_drill(Path(tenant_archive.path), tenant_archive.manifest, backup.keyring(),
                                   backup.scratch_admin_dsn(), tenant_column=settings.tenant_column)
        except TenantBackupError as exc:
            return _result(context, passed=False, tenant_id=tenant_archive.tenant_id, location=None,
                           message=str(exc), metadata={})
        return _result(context, passed=result.ok, tenant_id=tenant_archive.tenant_id, location=None,
                       message=result.message,
                       metadata={"restored_tables": MetadataValue.int(result.restored_tables),
                                 "drill_seconds": MetadataValue.float(round(result.duration_s, 3))})

    return [isolation, drill]


def _location_checks(location: str) -> list[AssetChecksDefinition]:
    asset_name = f"{location}_copy"

    @asset_check(asset=asset_name, name="checksum", partitions_def=tenants_partitions,
                 description=f"The copy in {location} re-read and hashed: size and SHA-256 equal the manifest's.")
    def checksum(context: AssetCheckExecutionContext, stored: StoredHandle) -> AssetCheckResult:
        started = time.monotonic()
        expected = stored.manifest["archive"]
        try:
            obj = locations_from_env([location])[location].verify(stored.tenant_id, stored.backup_id)
            passed = obj.sha256 == expected["sha256"] and obj.size == expected["size"]
            message = "SHA-256 and size match the manifest" if passed else (
                f"stored copy has SHA-256 {obj.sha256} / {obj.size} bytes, manifest says "
                f"{expected['sha256']} / {expected['size']}")
        except TenantBackupError as exc:
            passed, message = False, str(exc)
        return _result(context, passed=passed, tenant_id=stored.tenant_id, location=location, message=message,
                       metadata={"backup_id": stored.backup_id, "uri": stored.uri,
                                 "verify_seconds": MetadataValue.float(round(time.monotonic() - started, 3))})

    @asset_check(asset=asset_name, name="integrity", partitions_def=tenants_partitions,
                 description=f"The copy in {location} downloaded, decrypted, decompressed and read by "
                             "`pg_restore --list`; every table of the manifest has its data entry.")
    def integrity(context: AssetCheckExecutionContext, stored: StoredHandle, backup: BackupResource) -> AssetCheckResult:
        with tempfile.TemporaryDirectory(prefix="tb-integrity-", dir=backup.scratch_files_dir()) as tmp:
            path = Path(tmp) / "archive.tbk"
            try:
                locations_from_env([location])[location].get(stored.tenant_id, stored.backup_id, path)
                result = verify_archive(path, stored.manifest, backup.keyring(), deep=True)
                passed, message = result.ok, result.message
                extra = {"toc_entries": MetadataValue.int(result.toc_entries)}
            except TenantBackupError as exc:
                passed, message, extra = False, str(exc), {}
        return _result(context, passed=passed, tenant_id=stored.tenant_id, location=location, message=message,
                       metadata={"backup_id": stored.backup_id, **extra})

    return [checksum, integrity]
