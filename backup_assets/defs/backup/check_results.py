"""What every check of ours reports: an AssetCheckResult, and an INTEGRITY_FAILURE alert when it fails."""

import os
import warnings
from contextlib import contextmanager

from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey

from ...core.maintenance import alerts


@contextmanager
def partitioned_checks_preview():
    """Partitioned asset checks are a preview feature in Dagster 1.13, used on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        yield


def check_result(context, *, asset: str, check: str, passed: bool, tenant_id: str, location: str | None,
                 message: str, metadata: dict) -> AssetCheckResult:
    if not passed:
        alerts.emit(alerts.Alert(alerts.INTEGRITY_FAILURE, "critical", tenant_id, location,
                                 f"{asset}.{check}: {message}", run_url(context.run.run_id)))
    return AssetCheckResult(asset_key=AssetKey(asset), check_name=check, passed=passed,
                            severity=AssetCheckSeverity.ERROR, metadata={"message": message, **metadata})


def run_url(run_id: str) -> str:
    base = os.environ.get("TENANT_BACKUP_UI_URL", "http://127.0.0.1:3000").rstrip("/")
    return f"{base}/runs/{run_id}"
