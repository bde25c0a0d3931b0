"""Assembles the Definitions from the environment.

Configuration is read from the environment when the code location loads: a listed storage
location with missing settings, or a missing source DSN or keyring, is a load error naming the
variables — never a silently skipped location.
"""

from __future__ import annotations

import os
from typing import Mapping

from dagster import Definitions, EnvVar

from ..core.codec.keyring import FILE_VAR, Keyring
from ..core.settings import SourceSettings
from ..core.locations.config import location_names, locations_from_env
from .backup.assets import build_archive_asset, build_location_asset
from .automation.triggers import backup_failure_alerts, tenant_backup_job, tenant_registry_sync, weekly_tenant_backup
from .backup.copy_checks import build_location_checks
from .operations.jobs import daily_prune, daily_verify, prune_job, restore_tenant_job, verify_share_job
from .automation.weekly_batch import weekly_batch_job, weekly_tenant_backup_batch
from .resources import BackupResource, LocationIOManager, StagingIOManager, default_work_dir
from .automation.staleness import stale_backup_alerts


def build_definitions(environ: Mapping[str, str] | None = None) -> Definitions:
    env = os.environ if environ is None else environ
    SourceSettings.from_env(env)  # raises ConfigError naming what is missing or malformed
    Keyring.from_env(env)
    names = location_names(env)
    locations_from_env(names, env)
    work_dir = env.get("TENANT_BACKUP_WORK_DIR") or default_work_dir()

    assets = [build_archive_asset()] + [build_location_asset(name) for name in names]
    checks = [check for name in names for check in build_location_checks(name)]
    resources = {
        "backup": BackupResource(source_dsn=EnvVar("TENANT_BACKUP_SOURCE_DSN"), work_dir=work_dir,
                                 **({"master_keys_file": env[FILE_VAR].strip()} if (env.get(FILE_VAR) or "").strip()
                                    else {"master_keys": EnvVar("TENANT_BACKUP_KEYS")})),
        "staging_io_manager": StagingIOManager(work_dir=work_dir),
        **{f"{name}_io_manager": LocationIOManager(location=name) for name in names},
    }
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[tenant_backup_job, weekly_batch_job, restore_tenant_job, prune_job, verify_share_job],
        schedules=[weekly_tenant_backup, weekly_tenant_backup_batch, daily_prune, daily_verify],
        sensors=[tenant_registry_sync, backup_failure_alerts, stale_backup_alerts],
        resources=resources,
    )
