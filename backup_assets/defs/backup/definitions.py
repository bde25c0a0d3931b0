"""The tenant_backup job with what it runs: the archive asset, one asset and pair of checks per
configured location, all in one step (defs/backup/assets.py) (iterating the registry of location kinds, core/locations/registry.py), and
the resources. `backup_definitions` is what a run of one tenant needs (the batch driver and its Dask
workers run it in process); defs/build.py adds the schedules, sensors and operations around it.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from ...core.settings import Settings
from ..resources import BackupResource, LocationIOManager, StagingIOManager
from ..runs.guard import JOB_NAME
from .assets import GROUP, build_backup_asset

tenant_backup_job = define_asset_job(
    JOB_NAME,
    selection=AssetSelection.groups(GROUP),  # the assets with their checks
    description="Back up one tenant: archive, every configured location, every check.",
    # The daemon's run retries (dagster.yaml run_retries) are for a run whose process died: a failed
    # step already had the retries its error allows (none for a permanent one, defs/failures.py).
    tags={"dagster/retry_on_asset_or_op_failure": "false"},
)


def for_dagster(settings: Settings) -> Settings:
    """The Settings the Dagster layer runs with: the work directory explicit (staging, scratch files
    and the alerts file live there), so the resource gives back this very object (Settings.of)."""
    if settings.get("TENANT_BACKUP_WORK_DIR").strip():
        return settings
    return settings.with_values(TENANT_BACKUP_WORK_DIR=settings.work_dir)


def check_configuration(settings: Settings) -> None:
    """Everything a backup needs, checked when the definitions load: a ConfigError naming what is
    missing or malformed (the source, the keyring, every listed location's variables)."""
    _ = settings.source
    settings.keyring()
    settings.locations(settings.location_names)


def backup_parts(settings: Settings) -> dict:
    """The tenant_backup job, its assets and checks for every configured location, and the resources:
    Definitions' arguments (defs/build.py adds the rest)."""
    settings = for_dagster(settings)
    check_configuration(settings)
    names = settings.location_names
    backup = BackupResource.from_settings(settings)
    return {
        "assets": [build_backup_asset(settings)],
        "jobs": [tenant_backup_job],
        "resources": {
            "backup": backup,
            "staging_io_manager": StagingIOManager(work_dir=settings.work_dir),
            **{f"{name}_io_manager": LocationIOManager(location=name, backup=backup) for name in names},
        },
    }


def backup_definitions(settings: Settings) -> Definitions:
    """What one tenant's run needs (the batch driver and its workers run it in process)."""
    return Definitions(**backup_parts(settings))
