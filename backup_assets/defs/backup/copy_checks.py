"""The partitioned asset checks of each <location>_copy (the archive's own checks run in its step:
defs/backup/archive_checks.py). Both from one download; a failure also raises an INTEGRITY_FAILURE alert.

- checksum (the stored bytes re-read and hashed, against the manifest) and
- integrity (downloaded, decrypted, decompressed, `pg_restore --list`; or, when the copy's bytes hash
  equal to the archive this tenant's restore drill restored, proven by that identity: no second decode).
"""

import tempfile
import time
from pathlib import Path

from dagster import (
    AssetCheckExecutionContext,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetIn,
    MetadataValue,
    multi_asset_check,
)

from ...core.archive.manifest import Manifest
from ...core.archive.seal import unsealed_warning
from ...core.checks.verify import VerifyResult, verify_archive
from ...core.errors import TenantBackupError
from ...core.maintenance.catalog import CopyCheck
from ...core.maintenance.status import record_verification
from ..resources import ArchiveHandle, BackupResource
from .archive_checks import ARCHIVE_ASSET
from .check_results import check_result as _result
from .check_results import partitioned_checks_preview
from .partitions import tenants_partitions


def build_location_checks(location: str) -> list[AssetChecksDefinition]:
    with partitioned_checks_preview():
        return _location_checks(location)


def _location_checks(location: str) -> list[AssetChecksDefinition]:
    asset_name = f"{location}_copy"
    specs = [
        AssetCheckSpec(
            "checksum",
            asset=asset_name,
            partitions_def=tenants_partitions,
            additional_deps=[ARCHIVE_ASSET],
            description=f"The copy in {location} re-read and hashed: size and SHA-256 equal the "
            "stored metadata's and the manifest's.",
        ),
        AssetCheckSpec(
            "integrity",
            asset=asset_name,
            partitions_def=tenants_partitions,
            additional_deps=[ARCHIVE_ASSET],
            description=f"The copy in {location} downloaded, decrypted, decompressed and read by "
            "`pg_restore --list`; every table of the manifest has its data entry.",
        ),
    ]

    # Both checks from one download, of the copy of the archive this run staged (not merely the
    # newest in the location). A check runs after the asset it checks: the copy is not loaded.
    @multi_asset_check(name=f"{asset_name}_checks", specs=specs, ins={"archive": AssetIn(ARCHIVE_ASSET)})
    def copy_checks(context: AssetCheckExecutionContext, archive: ArchiveHandle, backup: BackupResource):
        loc = backup.location(location)
        common = {
            "asset": asset_name,
            "tenant_id": archive.tenant_id,
            "location": location,
            "settings": backup.get_settings(),
        }
        where = {"backup_id": archive.backup_id, "uri": loc.uri(archive.tenant_id, archive.backup_id)}
        started = time.monotonic()
        unreadable = None
        try:
            manifest = loc.get_manifest(archive.tenant_id, archive.backup_id)
            # Before any use: a stored manifest whose seal fails is refused (core/archive/seal.py).
            if not Manifest.coerce(manifest).verify_seal(backup.keyring(), where=where["uri"]):
                context.log.warning(unsealed_warning(where["uri"]))
            proven = backup.proven(archive) if manifest == archive.manifest else None
            if proven is not None:
                # Re-read and hashed against the stored metadata (CorruptObject otherwise), not kept.
                stored = loc.verify(archive.tenant_id, archive.backup_id, known_complete=True)
        except TenantBackupError as exc:  # NotFound; CorruptObject: stored bytes differ from their metadata
            unreadable = exc
        if (
            unreadable is None
            and proven is not None
            and (stored.sha256, stored.size) == Manifest.coerce(manifest).checksum()
        ):
            # Integrity by identity: these bytes hash equal to the archive the restore drill
            # decrypted, decompressed and restored (in run `proven`): no second decode.
            how = f"identical (SHA-256) to the archive the restore drill restored in run {proven}"
            result = VerifyResult(ok=True, checks={"checksum": True}, sha256=stored.sha256, size=stored.size)
        elif unreadable is None:
            how = "decoded"
            with tempfile.TemporaryDirectory(prefix="tb-verify-", dir=backup.scratch_files_dir()) as tmp:
                path = Path(tmp) / "archive.tbk"
                try:
                    loc.get(archive.tenant_id, archive.backup_id, path)
                    result = verify_archive(path, manifest, backup.keyring(), deep=True)
                except TenantBackupError as exc:
                    unreadable = exc
        if unreadable is not None:
            yield _result(context, check="checksum", passed=False, message=str(unreadable), metadata=where, **common)
            yield _result(
                context,
                check="integrity",
                passed=False,
                message="not checked: copy unreadable",
                metadata=where,
                **common,
            )
            return
        downloaded = time.monotonic() - started
        checksum_ok = result.checks.get("checksum", False)
        yield _result(
            context,
            check="checksum",
            passed=checksum_ok,
            message="SHA-256 and size match the manifest" if checksum_ok else result.message,
            metadata={**where, "download_seconds": MetadataValue.float(round(downloaded, 3))},
            **common,
        )
        integrity_ok = all(result.checks.values()) and checksum_ok
        message = f"ok: {how}" if integrity_ok and how != "decoded" else result.message
        # Beside the copy, so `tenant-backup status` knows it was verified without Dagster's database.
        record_verification(
            loc,
            CopyCheck(location, archive.tenant_id, archive.backup_id, integrity_ok, message),
            sha256=Manifest.coerce(manifest).checksum()[0],
            deep=True,
            by=f"{asset_name} checks",
            known_complete=True,
        )
        yield _result(
            context,
            check="integrity",
            passed=integrity_ok,
            message=message,
            metadata={
                **where,
                "integrity_by": "identity" if how != "decoded" else "decode",
                "toc_entries": MetadataValue.int(result.toc_entries or 0),
            },
            **common,
        )

    return [copy_checks]
