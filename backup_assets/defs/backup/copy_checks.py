"""The partitioned asset checks of each <location>_copy, run in the tenant's step right after the copy
is stored (the archive's own checks: defs/backup/archive_checks.py): checksum and integrity, both from the core's one copy check
(core/maintenance/copy_check.py verify_copy, deep), which `tenant-backup verify --deep` and the daily
verify job call too, recording the same thing beside the copy (verified.json, read by `status`).
A failure also raises an INTEGRITY_FAILURE alert.

- checksum: the copy's manifest authenticated (its seal) and describing this tenant and backup, the
  stored bytes re-read and hashed against it;
- integrity: downloaded, decrypted, decompressed, `pg_restore --list`, every row of a table with the
  tenant column this tenant's; or, when the copy's bytes hash equal to the archive this run's restore
  drill restored (its manifest's drill record), proven by that identity: no second decode.
"""

import time

from dagster import AssetCheckSpec, MetadataValue

from ...core.archive.seal import unsealed_warning
from ...core.maintenance.copy_check import IDENTITY, verify_copy
from ..resources import ArchiveHandle, BackupResource
from .archive_checks import ARCHIVE_ASSET
from .check_results import partitioned_checks_preview
from .partitions import tenants_partitions


def location_check_specs(location: str) -> list[AssetCheckSpec]:
    asset_name = f"{location}_copy"
    with partitioned_checks_preview():
        return [
            AssetCheckSpec(
                "checksum",
                asset=asset_name,
                partitions_def=tenants_partitions,
                additional_deps=[ARCHIVE_ASSET],
                description=f"The copy in {location}: its manifest authenticated and this backup's, the stored "
                "bytes re-read and hashed: size and SHA-256 equal the stored metadata's and the manifest's.",
            ),
            AssetCheckSpec(
                "integrity",
                asset=asset_name,
                partitions_def=tenants_partitions,
                additional_deps=[ARCHIVE_ASSET],
                description=f"The copy in {location} downloaded, decrypted, decompressed and read by "
                "`pg_restore --list` (every table of the manifest has its data entry), and every row of a "
                "table with the tenant column this tenant's; or identical to the archive the drill restored.",
            ),
        ]


def copy_check_outcomes(location: str, archive: ArchiveHandle, backup: BackupResource, warn) -> list[dict]:
    """Both checks of the copy of `archive` (the archive this run staged, not merely the newest in the
    location) from one verification: check_result's arguments."""
    loc = backup.location(location)
    where = {"backup_id": archive.backup_id, "uri": loc.uri(archive.tenant_id, archive.backup_id)}
    started = time.monotonic()
    check = verify_copy(
        loc,
        archive.tenant_id,
        archive.backup_id,
        keyring=backup.keyring(),
        deep=True,
        work_dir=backup.scratch_files_dir(),
        drilled=archive.manifest,
        record=f"{location}_copy checks",
    )
    if check.sealed is False:
        warn(unsealed_warning(where["uri"]))
    if check.checksum_ok is not True:  # not found, refused, or the stored bytes are not the manifest's
        return [
            dict(check="checksum", passed=False, message=check.message, metadata=where),
            dict(check="integrity", passed=False, message="not checked: copy unreadable", metadata=where),
        ]
    return [
        dict(
            check="checksum",
            passed=True,
            message="SHA-256 and size match the manifest",
            metadata={**where, "download_seconds": MetadataValue.float(round(time.monotonic() - started, 3))},
        ),
        dict(
            check="integrity",
            passed=check.ok,
            message=check.message,
            metadata={
                **where,
                "integrity_by": "identity" if check.proof == IDENTITY else "decode",
                "toc_entries": MetadataValue.int(check.toc_entries or 0),
            },
        ),
    ]
