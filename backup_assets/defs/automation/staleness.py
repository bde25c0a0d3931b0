"""The staleness sensor: a STALE_BACKUP alert per tenant × location without a backup younger than the
max age (core/maintenance/status.py, the same decision as `tenant-backup status`), through core.alerts.emit.

Thin: the registry and the locations are read by the core; the sensor only remembers, in its cursor,
what it already alerted on (tenant × location → newest backup id), so the same stale copy is not
alerted twice in a row; it alerts again once that copy was fresh in between, or its newest backup
changed and is still stale.
"""

import json

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ...core.maintenance import alerts
from ...core.maintenance.status import gather
from ...core.settings import Settings
from ...core.source.tenants import list_tenants
from ..resources import BackupResource

UNREADABLE = "*"  # the cursor's tenant for "this location could not be listed"


def build_staleness_sensor(settings: Settings):
    return sensor(
        name="stale_backup_alerts",
        minimum_interval_seconds=settings.stale_check_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="STALE_BACKUP alert for each active tenant × location whose newest backup is older than "
        "TENANT_BACKUP_MAX_AGE_DAYS (8), or missing; read from the locations alone (log, alerts file, "
        "webhook).",
    )(stale_backup_alerts)


def stale_backup_alerts(context: SensorEvaluationContext, backup: BackupResource):
    settings = backup.get_settings()
    report = gather(
        list_tenants(settings.source),
        {n: backup.location(n) for n in settings.location_names},
        keyring=backup.keyring(),  # a manifest that fails authentication counts as no backup (stale)
        max_age_days=settings.max_age_days,
    )
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
    summary = (
        f"{len(report.stale)} stale tenant × location of {len(report.copies)}, "
        f"{len(report.unreadable)} locations unreadable; {new} new alerts"
    )
    context.log.info(summary)
    return SensorResult(skip_reason=SkipReason(summary), cursor=json.dumps(now_stale, sort_keys=True))
