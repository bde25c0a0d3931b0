"""The weekly per-tenant schedule of the tenant backup job (defs/backup/definitions.py) and the sensors (registry sync, failure
alerts). Schedules and sensors whose timing is configurable are built from the Settings
(build_definitions), not at import time."""

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    schedule,
    sensor,
)

from ...core.locations import registry
from ...core.maintenance import alerts
from ...core.settings import Settings
from ...core.source.tenants import list_tenants
from ..backup.assets import ALERTED
from ..backup.definitions import tenant_backup_job
from ..backup.partitions import TENANTS, tenants_partitions
from ..failures import step_failure_line
from ..resources import BackupResource
from ..runs.guard import JOB_NAME, SKIPPED_TAG, TENANT_TAG


def week_of(moment) -> str:
    iso = moment.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def weekly_status(settings: Settings, mode: str) -> DefaultScheduleStatus:
    """Exactly one of the two weekly schedules runs, chosen by TENANT_BACKUP_WEEKLY_MODE: batch (one
    driver run backs every tenant up in long-lived workers, no process start-up per tenant) or
    per_tenant (the daemon launches one run per tenant, e.g. one Kubernetes job each)."""
    return DefaultScheduleStatus.RUNNING if settings.weekly_mode == mode else DefaultScheduleStatus.STOPPED


def build_weekly_per_tenant_schedule(settings: Settings):
    return schedule(
        name="weekly_tenant_backup",
        cron_schedule=settings.weekly_cron,
        execution_timezone=settings.timezone,
        job=tenant_backup_job,
        default_status=weekly_status(settings, "per_tenant"),
        description="Every active tenant (registry ∩ partitions), one run each, once per ISO week "
        "(running when TENANT_BACKUP_WEEKLY_MODE=per_tenant).",
    )(weekly_tenant_backup)


def weekly_tenant_backup(context: ScheduleEvaluationContext, backup: BackupResource):
    active = set(list_tenants(backup.source_settings()))
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    missing = sorted(active - known)
    if missing:
        # Schedules cannot add partitions; the registry sensor will, and the next tick covers them.
        context.log.warning(
            f"{len(missing)} active tenants are not partitions yet (registry sensor pending): "
            + ", ".join(missing[:20])
        )
    week = week_of(context.scheduled_execution_time)
    for tenant_id in sorted(active & known):
        # Steps in the run's own process: a process per step costs seconds each, per tenant, per week.
        yield RunRequest(
            run_key=f"{tenant_id}:{week}",
            partition_key=tenant_id,
            tags={TENANT_TAG: tenant_id},
            run_config={"execution": {"config": {"in_process": {}}}},
        )


ADD_BATCH = 1_000  # partition keys per insert (and per IN list of the query for those already there)
LOGGED_KEYS = 50  # tenants named one by one in a tick's log; the rest counted


def build_registry_sensor(settings: Settings):
    return sensor(
        name="tenant_registry_sync",
        minimum_interval_seconds=settings.registry_sync_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Adds a partition for each tenant the registry query returns and removes those it no "
        "longer returns. Backups already stored are never deleted here.",
    )(tenant_registry_sync)


def tenant_registry_sync(context: SensorEvaluationContext, backup: BackupResource):
    wanted = set(list_tenants(backup.source_settings()))
    have = set(context.instance.get_dynamic_partitions(TENANTS))
    add, remove = sorted(wanted - have), sorted(have - wanted)
    if not add and not remove:
        return SkipReason(f"{len(have)} tenant partitions, in step with the registry")
    for tenant_id in add[:LOGGED_KEYS]:
        context.log.info(f"tenant {tenant_id} added to the registry: partition added")
    if len(add) > LOGGED_KEYS:
        context.log.info(f"… and {len(add) - LOGGED_KEYS} more tenants added to the registry: partitions added")
    for tenant_id in remove:
        context.log.info(f"tenant {tenant_id} no longer returned by the registry: partition removed (backups kept)")
    # New partitions are added here, in batches: one query for the keys already there and one insert per
    # batch (DagsterInstance.add_dynamic_partitions). Handed to the daemon as a request instead, each key
    # costs a query of its own (dagster 1.13 _handle_dynamic_partitions_requests: has_dynamic_partition
    # per key; 5-6 ms each on PostgreSQL, ~10 minutes for 100,000 tenants at first deployment).
    for start in range(0, len(add), ADD_BATCH):
        context.instance.add_dynamic_partitions(TENANTS, add[start : start + ADD_BATCH])
    if not remove:
        return SkipReason(f"{len(add)} tenant partitions added ({len(wanted)} in the registry)")
    return SensorResult(dynamic_partitions_requests=[tenants_partitions.build_delete_request(remove)])


def _alerted(event) -> bool:
    data = getattr(event, "event_specific_data", None)
    user = getattr(data, "user_failure_data", None)
    entry = (getattr(user, "metadata", None) or {}).get(ALERTED)
    return bool(getattr(entry, "value", entry))


def _location_of(step_key: str) -> str | None:
    """The storage location a failed step stored to (its asset is <location>_copy), or None."""
    return registry.kind_of_asset(step_key)


@run_failure_sensor(
    name="backup_failure_alerts",
    default_status=DefaultSensorStatus.RUNNING,
    description="BACKUP_FAILURE alert for each failed step of a failed backup run (log, alerts file, webhook).",
)
def backup_failure_alerts(context: RunFailureSensorContext, backup: BackupResource):
    run = context.dagster_run
    if run.job_name != JOB_NAME and not run.job_name.startswith("__ASSET_JOB"):
        return  # not a tenant backup (asset backfills from the UI run as __ASSET_JOB...)
    if run.tags.get(SKIPPED_TAG):  # stopped because another run is backing the tenant up: that one reports
        context.log.info(f"run {run.run_id} stopped: {run.tags[SKIPPED_TAG]}")
        return
    tenant_id = run.tags.get("dagster/partition")
    settings = backup.get_settings()
    base = settings.ui_url
    failures = context.get_step_failure_events()
    if not failures:
        alerts.emit(
            alerts.backup_failure(
                tenant_id, None, step_failure_line(context.failure_event), f"{base}/runs/{run.run_id}"
            ),
            settings,
        )
    for event in failures:
        if _alerted(event):  # the backup step raised each tenant's and location's alert itself
            continue
        # What failed, one line: the error under Dagster's retry wrapper, not "Exceeded max_retries of N".
        alerts.emit(
            alerts.backup_failure(
                tenant_id,
                _location_of(event.step_key or ""),
                f"{event.step_key}: {step_failure_line(event)}",
                f"{base}/runs/{run.run_id}",
            ),
            settings,
        )
