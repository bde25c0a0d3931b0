"""Assembles the Definitions from one Settings (core/settings.py).

Everything is checked when the code location loads: a listed storage location with missing
settings, or a missing source DSN or keyring, is a load error naming the variables — never a
silently skipped location. Schedules and sensors whose timing is configurable are built here from
the settings, not at import time.
"""

from __future__ import annotations

from typing import Mapping

from dagster import Definitions

from ..core.settings import Settings
from .automation.staleness import build_staleness_sensor
from .automation.triggers import (
    backup_failure_alerts,
    build_registry_sensor,
    build_weekly_per_tenant_schedule,
    tenant_backup_job,
)
from .automation.weekly_batch import build_weekly_batch_schedule, weekly_batch_job
from .backup.assets import build_archive_asset, build_location_asset
from .backup.copy_checks import build_location_checks
from .operations.jobs import build_operation_schedules, prune_job, restore_tenant_job, verify_share_job
from .resources import BackupResource, LocationIOManager, StagingIOManager


def build_definitions(settings: Settings | Mapping[str, str] | None = None) -> Definitions:
    """`settings` (an environment mapping is parsed as one; None: this process's environment)."""
    if not isinstance(settings, Settings):
        settings = Settings.from_env(settings)
    settings.apply_process_wide()
    _ = settings.source  # raises ConfigError naming what is missing or malformed
    settings.keyring()
    names = settings.location_names
    settings.locations(names)

    assets = [build_archive_asset(settings)] + [build_location_asset(name, settings) for name in names]
    checks = [check for name in names for check in build_location_checks(name)]
    backup = BackupResource.from_settings(settings)
    resources = {
        "backup": backup,
        "staging_io_manager": StagingIOManager(work_dir=settings.work_dir),
        **{f"{name}_io_manager": LocationIOManager(location=name, backup=backup) for name in names},
    }
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[tenant_backup_job, weekly_batch_job, restore_tenant_job, prune_job, verify_share_job],
        schedules=[
            build_weekly_per_tenant_schedule(settings),
            build_weekly_batch_schedule(settings),
            *build_operation_schedules(settings),
        ],
        sensors=[build_registry_sensor(settings), backup_failure_alerts, build_staleness_sensor(settings)],
        resources=resources,
    )
