"""Assembles the Definitions from one Settings (core/settings.py).

Everything is checked when the code location loads: a listed storage location with missing
settings, or a missing source DSN or keyring, is a load error naming the variables — never a
silently skipped location. Schedules and sensors whose timing is configurable are built here from
the settings, not at import time. The tenant_backup job and what it runs: defs/backup/definitions.py.
"""

from __future__ import annotations

import warnings
from typing import Mapping

from dagster import BetaWarning, Definitions

from ..core.settings import Settings
from .automation.index_job import index_maintenance_job
from .automation.staleness import build_staleness_sensor
from .automation.triggers import backup_failure_alerts, build_registry_sensor, build_weekly_per_tenant_schedule
from .automation.weekly_batch import build_weekly_batch_schedule, weekly_batch_job
from .backup.definitions import backup_parts
from .operations.jobs import build_operation_schedules, prune_job, restore_tenant_job, verify_share_job

# Dagster 1.13 itself passes `owners=[]` when it binds a sensor's target job (SensorDefinition.
# with_updated_jobs), which warns that the parameter is beta on every load: not something we use.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition", category=BetaWarning)


def build_definitions(settings: Settings | Mapping[str, str] | None = None) -> Definitions:
    """`settings` (an environment mapping is parsed as one; None: this process's environment). Process-wide
    effects (Settings.apply_process_wide) are the caller's, at its edge (definitions.py, the CLI)."""
    if not isinstance(settings, Settings):
        settings = Settings.from_env(settings)
    parts = backup_parts(settings)
    return Definitions(
        assets=parts["assets"],
        jobs=[*parts["jobs"], weekly_batch_job, restore_tenant_job, prune_job, verify_share_job, index_maintenance_job],
        schedules=[
            build_weekly_per_tenant_schedule(settings),
            build_weekly_batch_schedule(settings),
            *build_operation_schedules(settings),
        ],
        sensors=[build_registry_sensor(settings), backup_failure_alerts, build_staleness_sensor(settings)],
        resources=parts["resources"],
    )
