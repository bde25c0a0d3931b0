"""What every check of ours reports: an AssetCheckResult, and an INTEGRITY_FAILURE alert when it fails."""

import warnings
from contextlib import contextmanager

from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey

from ...core.maintenance import alerts
from ...core.settings import Settings


@contextmanager
def partitioned_checks_preview():
    """Partitioned asset checks are a preview feature in Dagster 1.13, used on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        yield


def check_result(
    context,
    *,
    asset: str,
    check: str,
    passed: bool,
    tenant_id: str,
    location: str | None,
    message: str,
    metadata: dict,
    settings: Settings,
) -> AssetCheckResult:
    if not passed:
        alerts.emit(
            alerts.Alert(
                alerts.INTEGRITY_FAILURE,
                "critical",
                tenant_id,
                location,
                f"{asset}.{check}: {message}",
                run_url(settings, context.run.run_id),
            ),
            settings,
        )
    return AssetCheckResult(
        asset_key=AssetKey(asset),
        check_name=check,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={"message": message, **metadata},
    )


def run_url(settings: Settings, run_id: str) -> str:
    return f"{settings.ui_url}/runs/{run_id}"
