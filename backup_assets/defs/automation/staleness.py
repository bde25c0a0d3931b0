"""The staleness sensor: a STALE_BACKUP alert per tenant × location without a backup younger than the
max age (core/maintenance/status.py, the same decision as `tenant-backup status`), through core.alerts.emit.

It reads the locations' indexes (core/maintenance/index_status.py: a listing and a pack or two per
location, whatever the tenant count), never a scan per tenant that could outlive the sensor's deadline.
A location whose index is not usable is reported as unknown (alerted, never taken as fresh), and the
sensor launches the index job (defs/automation/index_job.py) that rebuilds it; so it does when an index
holds many log entries or was last reconciled over a day ago.

Thin: the registry and the locations are read by the core; the sensor only remembers, in its cursor,
what it already alerted on (tenant × location → newest backup id), so the same stale copy is not
alerted twice in a row; it alerts again once that copy was fresh in between, or its newest backup
changed and is still stale.
"""

import json
import time

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ...core.maintenance import alerts
from ...core.maintenance.index_status import SENSOR_SCAN_LIMIT, gather_indexed
from ...core.settings import Settings
from ...core.source.tenants import list_tenants
from ..resources import BackupResource
from .index_job import index_maintenance_job

UNREADABLE = "*"  # the cursor's tenant for "this location could not be listed"


def build_staleness_sensor(settings: Settings):
    return sensor(
        name="stale_backup_alerts",
        minimum_interval_seconds=settings.stale_check_s,
        default_status=DefaultSensorStatus.RUNNING,
        job=index_maintenance_job,
        description="STALE_BACKUP alert for each active tenant × location whose newest backup is older than "
        "TENANT_BACKUP_MAX_AGE_DAYS (8), or missing; read from the locations alone (log, alerts file, "
        "webhook); launches the index job when a location's index is unusable or due.",
    )(stale_backup_alerts)


def stale_backup_alerts(context: SensorEvaluationContext, backup: BackupResource):
    settings = backup.get_settings()
    started = time.monotonic()
    indexed = gather_indexed(
        list_tenants(settings.source),
        {n: backup.location(n) for n in settings.location_names},
        keyring=backup.keyring(),  # an index or manifest that fails authentication proves nothing (stale)
        max_age_days=settings.max_age_days,
        # An unusable index: unknown there (alerted) past a few tenants, and the index job is launched.
        scan_up_to=SENSOR_SCAN_LIMIT,
        missing=False,  # each tenant's newest only (the latest packs); status and verify --all name missing copies
    )
    report = indexed.report
    alerted = json.loads(context.cursor) if context.cursor else {}
    now_stale: dict[str, str] = {}
    new = 0
    base = settings.ui_url
    for name, message in report.unreadable.items():  # never hidden: its tenants' state is unknown
        key = f"{UNREADABLE}@{name}"
        now_stale[key] = "unreadable"
        if alerted.get(key) != "unreadable":
            new += 1
            alerts.emit(
                alerts.Alert(
                    alerts.STALE_BACKUP,
                    "critical",
                    None,
                    name,
                    f"location {name} could not be listed: backup age unknown for "
                    f"{len(report.tenants)} tenants ({message})",
                ),
                settings,
            )
    for copy in report.stale:
        key = f"{copy.tenant_id}@{copy.location}"
        now_stale[key] = copy.backup_id or ""
        if key in alerted and alerted[key] == now_stale[key]:
            continue  # alerted on this very state at the previous evaluation
        new += 1
        alerts.emit(
            alerts.Alert(
                alerts.STALE_BACKUP,
                "critical",
                copy.tenant_id,
                copy.location,
                f"no backup younger than {report.max_age_days:g} days: {copy.reason}",
                f"{base}/assets/tenant_archive?view=partitions&partition={copy.tenant_id}",
            ),
            settings,
        )
    due = indexed.maintenance_due()
    summary = (
        f"{len(report.stale)} stale tenant × location of {len(report.copies)}, "
        f"{len(report.unreadable)} locations unreadable; {new} new alerts; read from the indexes in "
        f"{time.monotonic() - started:.1f} s"
    )
    context.log.info(summary)
    cursor = json.dumps(now_stale, sort_keys=True)
    if due:
        why = "; ".join(f"{n}: {reason}" for n, reason in sorted(due.items()))
        context.log.info(f"index job launched: {why}")
        hour = int(time.time() // 3600)  # at most one launch an hour for the same locations
        run = RunRequest(run_key=f"index:{','.join(sorted(due))}:{hour}", tags={"tenant_backup/index": why[:200]})
        return SensorResult(run_requests=[run], cursor=cursor)
    return SensorResult(skip_reason=SkipReason(summary), cursor=cursor)
