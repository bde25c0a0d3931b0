"""The archive's own checks, run in the tenant's step (one restore into a scratch database serves both):
isolation (every row of a table with the tenant column is this tenant's) and the restore drill (row
counts equal the manifest's). Both blocking: an archive that fails them is not materialized at all,
so no location ever receives it; one that passes carries the drill's record in its manifest
(Manifest.drill, with the SHA-256 it restored), which the location assets require
(defs/backup/assets.py) and the copy checks rely on (core/maintenance/copy_check.py)."""

from pathlib import Path

from dagster import AssetCheckSpec, MetadataValue

from ...core.archive.manifest import DrillRecord
from ...core.checks.drill import restore_drill
from ...core.errors import TenantBackupError
from ...core.source.pgbin import major_of
from .check_results import partitioned_checks_preview
from .partitions import tenants_partitions

ARCHIVE_ASSET = "tenant_archive"


def archive_check_specs() -> list[AssetCheckSpec]:
    with partitioned_checks_preview():
        return [
            AssetCheckSpec(
                "isolation",
                asset=ARCHIVE_ASSET,
                partitions_def=tenants_partitions,
                blocking=True,
                description="Restored into a scratch database, every row of every table with the tenant "
                "column is this tenant's.",
            ),
            AssetCheckSpec(
                "restore_drill",
                asset=ARCHIVE_ASSET,
                partitions_def=tenants_partitions,
                blocking=True,
                description="Restored into a scratch database (TENANT_BACKUP_SCRATCH_DSN or an embedded "
                "server), the row counts equal the manifest's and no other tenant's row is there.",
            ),
        ]


def archive_check_results(archive, backup) -> tuple[list[dict], bool, DrillRecord | None]:
    """(the two checks' outcomes: check_result's arguments, whether both passed, the drill's record
    for the manifest) for the staged archive `archive`. The drill runs on a scratch server of the
    source's major where one can be had, and its metadata says which major it proved
    (drill_server_major)."""
    settings = backup.source_settings()
    source_major = major_of(archive.manifest.server_version)
    try:
        archive.manifest.verify_seal(backup.keyring(), where=f"archive {archive.backup_id}")
        result = restore_drill(
            Path(archive.path),
            archive.manifest,
            backup.keyring(),
            backup.scratch_pool(source_major),
            tenant_column=settings.tenant_column,
        )
    except TenantBackupError as exc:  # the drill could not run (scratch server down...): not proven
        return (
            [
                dict(
                    check="isolation",
                    passed=False,
                    message=f"not checked: {exc}",
                    metadata={},
                ),
                dict(check="restore_drill", passed=False, message=str(exc), metadata={}),
            ],
            False,
            None,
        )
    isolation = (
        "no row of another tenant in any table with the tenant column"
        if result.isolated
        else f"rows of other tenants: {result.foreign_rows}"
    )
    return (
        [
            dict(
                check="isolation",
                passed=result.isolated,
                message=isolation,
                metadata={"foreign_rows": MetadataValue.int(sum(result.foreign_rows.values()))},
            ),
            dict(
                check="restore_drill",
                passed=result.ok,
                message=result.message,
                metadata={
                    "restored_tables": MetadataValue.int(result.restored_tables),
                    "sha256": archive.sha256,
                    "drill_seconds": MetadataValue.float(round(result.duration_s, 3)),
                    # Which PostgreSQL the restore was proven on, and whether it is the source's own.
                    "drill_server_major": MetadataValue.int(result.server_major or 0),
                    "source_major": MetadataValue.int(result.source_major or 0),
                    "drill_matches_source": MetadataValue.bool(bool(result.matches_source)),
                },
            ),
        ],
        result.ok and result.isolated,
        result.drill_record(),
    )
