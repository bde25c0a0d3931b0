"""Alerts: BACKUP_FAILURE, INTEGRITY_FAILURE and STALE_BACKUP, to the log, an alerts file and an optional webhook.

No Dagster here: the Dagster sensors and checks build an Alert and call emit().
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("tenant_backup.alerts")

BACKUP_FAILURE = "BACKUP_FAILURE"
INTEGRITY_FAILURE = "INTEGRITY_FAILURE"
STALE_BACKUP = "STALE_BACKUP"  # a tenant has no backup younger than the max age in a location (core/maintenance/status.py)


@dataclass(frozen=True)
class Alert:
    kind: str  # BACKUP_FAILURE | INTEGRITY_FAILURE | STALE_BACKUP
    severity: str  # critical | warning
    tenant_id: str | None
    location: str | None
    message: str
    run_url: str | None = None
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def alerts_file(environ=os.environ) -> Path | None:
    raw = environ.get("TENANT_BACKUP_ALERTS_FILE", "").strip()
    if raw:
        return Path(raw)
    work = environ.get("TENANT_BACKUP_WORK_DIR", "").strip()
    return Path(work) / "alerts.jsonl" if work else None


def emit(alert: Alert, environ=os.environ) -> None:
    """Record an alert everywhere configured. Never raises: alerting must not mask the failure."""
    record = asdict(alert)
    log.error("%s [%s] tenant=%s location=%s: %s %s", alert.kind, alert.severity, alert.tenant_id,
              alert.location, alert.message, alert.run_url or "")
    path = alerts_file(environ)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as exc:
            log.warning("could not append the alert to %s: %s", path, exc)
    webhook = environ.get("TENANT_BACKUP_ALERT_WEBHOOK", "").strip()
    if webhook:
        request = urllib.request.Request(webhook, data=json.dumps(record).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("alert webhook %s failed: %s", webhook.split("?")[0], exc)


def read_alerts(environ=os.environ) -> list[dict]:
    path = alerts_file(environ)
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
