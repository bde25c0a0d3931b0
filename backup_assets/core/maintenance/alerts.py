"""Alerts: BACKUP_FAILURE, INTEGRITY_FAILURE and STALE_BACKUP, to the log, an alerts file and an optional webhook.

No Dagster here: the Dagster sensors and checks build an Alert and call emit().
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import first_line

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("tenant_backup.alerts")

BACKUP_FAILURE = "BACKUP_FAILURE"
INTEGRITY_FAILURE = "INTEGRITY_FAILURE"
STALE_BACKUP = (
    "STALE_BACKUP"  # a tenant has no backup younger than the max age in a location (core/maintenance/status.py)
)


@dataclass(frozen=True)
class Alert:
    kind: str  # BACKUP_FAILURE | INTEGRITY_FAILURE | STALE_BACKUP
    severity: str  # critical | warning
    tenant_id: str | None
    location: str | None
    message: str
    run_url: str | None = None
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def backup_failure(tenant_id: str | None, location: str | None, message: str, run_url: str | None) -> Alert:
    """A BACKUP_FAILURE alert: `message` names what failed, on one line (its first line; a child
    program's stderr or a traceback never spills into the alert)."""
    return Alert(BACKUP_FAILURE, "critical", tenant_id, location, first_line(message, 1000) or "backup failed", run_url)


def emit(alert: Alert, settings: "Settings") -> None:
    """Record an alert everywhere `settings` say (TENANT_BACKUP_ALERTS_FILE, or alerts.jsonl in an
    explicitly set work directory; TENANT_BACKUP_ALERT_WEBHOOK). Never raises: alerting must not
    mask the failure."""
    record = asdict(alert)
    log.error(
        "%s [%s] tenant=%s location=%s: %s %s",
        alert.kind,
        alert.severity,
        alert.tenant_id,
        alert.location,
        alert.message,
        alert.run_url or "",
    )
    path = Path(settings.alerts_file) if settings.alerts_file else None
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as exc:
            log.warning("could not append the alert to %s: %s", path, exc)
    webhook = settings.alert_webhook
    if webhook:
        request = urllib.request.Request(
            webhook, data=json.dumps(record).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("alert webhook %s failed: %s", webhook.split("?")[0], exc)


def read_alerts(settings: "Settings") -> list[dict]:
    path = Path(settings.alerts_file) if settings.alerts_file else None
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
