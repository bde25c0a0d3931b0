"""Operations as Dagster jobs: restore one tenant, prune (daily), verify a rotating share of the
stored copies (daily, so every copy is re-read within VERIFY_CYCLE_DAYS). Thin: each op calls the
core function the CLI calls, and works from the storage locations alone."""

import os
from datetime import date
from pathlib import Path

from dagster import (
    Config,
    DefaultScheduleStatus,
    Failure,
    OpExecutionContext,
    Out,
    RunRequest,
    ScheduleEvaluationContext,
    job,
    op,
    schedule,
)
from pydantic import Field

from ...core.leftovers import clean_leftovers
from ...core.maintenance import alerts
from ...core.maintenance.catalog import VERIFY_CYCLE_DAYS, share_of
from ...core.maintenance.copy_check import verify_copy
from ...core.maintenance.gc import grace_period
from ...core.maintenance.retention import prune_location
from ...core.restore import restore_tenant
from ...core.settings import Settings
from ..resources import BackupResource


class RestoreConfig(Config):
    tenant_id: str = Field(description="the tenant to restore")
    location: str = Field(
        "auto",
        description="a configured location, or auto (the configured ones in their kinds' order; skips bad copies)",
    )
    backup_id: str = Field("latest", description="a backup id, or latest")
    target_dsn_env: str = Field(
        "TENANT_BACKUP_RESTORE_TARGET_DSN",
        description="name of the environment variable holding the target database's DSN (kept out of run config)",
    )
    replace: bool = Field(False, description="restore into a live database, replacing only this tenant's rows")
    dry_run: bool = Field(True, description="print the plan and change nothing (set false to restore)")


@op(description="Restore one tenant from the storage locations into the target database.")
def restore_tenant_op(context: OpExecutionContext, config: RestoreConfig, backup: BackupResource) -> None:
    # A secret read where it is used, by the name the run config gives (kept out of run config itself).
    target = os.environ.get(config.target_dsn_env, "").strip()
    if not target:
        raise Failure(f"{config.target_dsn_env} is not set: it must hold the target database's DSN")
    settings = backup.get_settings()
    result = restore_tenant(
        config.tenant_id,
        locations={n: backup.location(n) for n in settings.location_names},
        location=config.location,
        target_dsn=target,
        keyring=backup.keyring(),
        backup=config.backup_id,
        replace=config.replace,
        dry_run=config.dry_run,
        lock_timeout=settings.restore_lock_timeout,
        tenant_id_pattern=settings.tenant_id_pattern,
        work_dir=Path(backup.scratch_files_dir()),  # under TENANT_BACKUP_WORK_DIR, like the CLI's
        report=context.log.info,
    )
    for table, outcome in sorted(result.tables.items()):
        context.log.info(f"{table}: {vars(outcome)}")
    context.log.info(
        f"{'planned' if result.dry_run else 'restored'} tenant {result.tenant_id} from "
        f"{result.location} backup {result.backup_id} into {result.target}"
    )


@job(description="Restore one tenant (config: tenant, location, backup, target DSN variable, replace, dry run).")
def restore_tenant_job():
    restore_tenant_op()


@op(
    description="Delete backups past each location's retention; never a tenant's newest verified one, "
    "at least TENANT_BACKUP_KEEP_MIN per tenant."
)
def prune_op(context: OpExecutionContext, backup: BackupResource) -> None:
    settings = backup.get_settings()
    keep_min, grace = settings.keep_min, grace_period(settings.variables)
    failed = []
    for name in backup.location_names():
        report = prune_location(
            backup.location(name),
            keyring=backup.keyring(),  # manifests are authenticated before their ages are believed
            keep_min=keep_min,
            grace=grace,
            on_delete=lambda loc, d: context.log.info(f"{loc}: deleted {d}"),
        )
        context.log.info(f"{name}: {len(report.deleted)} backups deleted, {len(report.errors)} errors")
        failed += [f"{name}: {e}" for e in report.errors + report.refused]
    if failed:
        raise Failure(f"{len(failed)} deletions failed: " + "; ".join(failed[:5]))


@job(description="Apply the retention of every location.")
def prune_job():
    prune_op()


def verify_bucket(location_name: str, tenant_id: str, backup_id: str) -> int:
    """The day of the cycle on which this copy is re-read: stable, and spread evenly (the same
    selection as `tenant-backup verify --all --subset n/28`: core/maintenance/catalog.share_of)."""
    return share_of(location_name, tenant_id, backup_id, VERIFY_CYCLE_DAYS)


class VerifyShareConfig(Config):
    day: int = Field(-1, description=f"which share to re-read, 0..{VERIFY_CYCLE_DAYS - 1}; -1 = today's")


@op(
    description=f"Re-read today's share (1/{VERIFY_CYCLE_DAYS}) of every location's copies: checksum, "
    "decrypt, decompress, pg_restore --list. Failures raise INTEGRITY_FAILURE alerts. First removes what "
    "dead runs left: temporary folders, scratch databases of killed drills.",
    out=Out(None),
)
def verify_share_op(context: OpExecutionContext, config: VerifyShareConfig, backup: BackupResource) -> None:
    today = config.day if config.day >= 0 else date.today().toordinal() % VERIFY_CYCLE_DAYS
    keyring = backup.keyring()
    settings = backup.get_settings()
    # The periodic clean-up (docs/RUNBOOK.md "After a crash"): temporary folders of dead runs under
    # TENANT_BACKUP_WORK_DIR, and scratch databases of dead drills on the scratch server.
    collected = clean_leftovers(settings, report=context.log.warning)
    context.log.info(collected.line())
    checked, failures = 0, []
    for name in settings.location_names:
        loc = backup.location(name)
        for ref in loc.list():
            if verify_bucket(name, ref.tenant_id, ref.backup_id) != today:
                continue
            result = verify_copy(  # recorded beside the copy: read by `status`
                loc,
                ref.tenant_id,
                ref.backup_id,
                keyring=keyring,
                deep=True,
                work_dir=backup.scratch_files_dir(),
                record="verify_share_job",
            )
            checked += 1
            if not result.ok:
                failures.append(result)
                alerts.emit(
                    alerts.Alert(
                        alerts.INTEGRITY_FAILURE,
                        "critical",
                        ref.tenant_id,
                        name,
                        f"scheduled verify of {ref.backup_id}: {result.message}",
                    ),
                    settings,
                )
    context.log.info(f"{checked} copies re-read today (day {today} of {VERIFY_CYCLE_DAYS}), {len(failures)} failed")
    if failures:
        raise Failure(
            f"{len(failures)} stored copies failed verification: "
            + "; ".join(f"{f.location} {f.tenant_id}/{f.backup_id}: {f.message}" for f in failures[:5])
        )


@job(description=f"Re-check a rotating share of the stored copies, so each is re-read every {VERIFY_CYCLE_DAYS} days.")
def verify_share_job():
    verify_share_op()


def _daily(context: ScheduleEvaluationContext):
    return RunRequest()


def build_operation_schedules(settings: Settings) -> list:
    """daily_prune (TENANT_BACKUP_PRUNE_CRON) and daily_verify (TENANT_BACKUP_VERIFY_CRON)."""
    return [
        schedule(
            name=name,
            job=job_def,
            cron_schedule=cron,
            execution_timezone=settings.timezone,
            default_status=DefaultScheduleStatus.RUNNING,
        )(_daily)
        for name, job_def, cron in (
            ("daily_prune", prune_job, settings.prune_cron),
            ("daily_verify", verify_share_job, settings.verify_cron),
        )
    ]
