"""The weekly backup as one driver run: every active tenant's partition run executed in-process by
long-lived worker processes (TENANT_BACKUP_WORKERS), recorded in the instance exactly like runs the
daemon launches. A run launched per tenant costs seconds of process start-up: at thousands of
tenants that, not the backups, is the weekly bill (docs/BENCHMARKS.md)."""

from dagster import Failure, OpExecutionContext, RunRequest, ScheduleEvaluationContext, job, op, schedule

from ...core.archive.export import shared_line
from ...core.settings import Settings
from ...core.source.tenants import list_tenants
from ..backup.definitions import backup_definitions
from ..backup.partitions import TENANTS
from ..failures import permanent_failures
from ..resources import BackupResource
from ..runs.batch import back_up_tenants
from .triggers import week_of, weekly_status


@op(description="Back up every tenant the registry returns: one tenant_backup run each, in worker processes.")
def back_up_active_tenants(context: OpExecutionContext, backup: BackupResource) -> None:
    with permanent_failures(local_files=False):  # a configuration or registry error, named
        settings = backup.get_settings()
        active = list_tenants(settings.source)
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    new = [t for t in active if t not in known]
    if new:  # an op may add partitions (a schedule may not): the registry sensor's job, done early
        context.instance.add_dynamic_partitions(TENANTS, new)
        context.log.info(f"{len(new)} new tenant partitions added")

    def progress(index, total, outcome):
        if not outcome.ok or index % 50 == 0 or index == total:
            state = (
                "ok" if outcome.ok else f"SKIPPED {outcome.skipped}" if outcome.skipped else f"FAILED {outcome.reason}"
            )
            context.log.info(f"[{index}/{total}] {outcome.tenant_id}: {state}")

    # A cluster that cannot take the batch (TENANT_BACKUP_DASK_SCHEDULER without a PostgreSQL instance,
    # TLS configuration, every worker refusing) fails the run in one line, not retried.
    with permanent_failures(local_files=False):
        result = back_up_tenants(
            backup_definitions(settings),
            context.instance,
            active,
            progress=progress,
            settings=settings,
            batch_id=context.run_id,
        )
    done = sum(o.ok for o in result.outcomes)
    context.log.info(f"{done}/{len(result.outcomes)} tenants backed up with every check passing")
    shared: dict[str, int] = {}
    for outcome in result.outcomes:
        for name, rows in outcome.shared.items():
            shared[name] = max(rows, shared.get(name, 0))
    if shared:  # once for the batch, with the count
        warn, line = shared_line(shared, settings.source.shared_tables, sum(bool(o.shared) for o in result.outcomes))
        (context.log.warning if warn else context.log.info)(line)
    if result.refused:
        context.log.warning(result.refused_line())
    if result.skipped:
        context.log.warning(result.skipped_line())
    if result.failed:  # each tenant's own run was already retried as its errors allowed
        raise Failure(result.failure_line(), allow_retries=False)


@job(description="The weekly backup of every active tenant in one driver run (see TENANT_BACKUP_WEEKLY_MODE).")
def weekly_batch_job():
    back_up_active_tenants()


def weekly_tenant_backup_batch(context: ScheduleEvaluationContext):
    return RunRequest(run_key=f"weekly:{week_of(context.scheduled_execution_time)}")


def build_weekly_batch_schedule(settings: Settings):
    return schedule(
        name="weekly_tenant_backup_batch",
        cron_schedule=settings.weekly_cron,
        execution_timezone=settings.timezone,
        job=weekly_batch_job,
        default_status=weekly_status(settings, "batch"),
        description="Every active tenant through one driver run, once per ISO week "
        "(running when TENANT_BACKUP_WEEKLY_MODE=batch, the default).",
    )(weekly_tenant_backup_batch)
