"""What every check of ours reports: an AssetCheckEvaluation of its partition, and an INTEGRITY_FAILURE
alert when it fails.

An evaluation, not an AssetCheckResult: a result takes no partition, and in a run of many partitions
(the backfill policy, defs/backup/assets.py) it would be recorded without one. The evaluation names
its partition and the materialization it checked (the partition's latest, as Dagster does for a
result): without that target the UI does not count it as the partition's current result
(tests/test_partitioned_check_results.py)."""

import warnings
from contextlib import contextmanager

from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, AssetRecordsFilter
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

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
    blocking: bool = False,
    target=None,
) -> AssetCheckEvaluation:
    """`target`: the materialization checked (latest_materialization, looked up once per asset and
    tenant by the caller); looked up here when not given."""
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
    return AssetCheckEvaluation(
        asset_key=AssetKey(asset),
        check_name=check,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={"message": message, **metadata},
        partition=tenant_id,
        target_materialization_data=target or latest_materialization(context.instance, asset, tenant_id),
        blocking=blocking,
    )


def latest_materialization(instance, asset: str, tenant_id: str):
    """The partition's latest materialization (the one a check of it checks), or None."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[tenant_id]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.event_log_entry.run_id, timestamp=record.timestamp
    )


def run_url(settings: Settings, run_id: str) -> str:
    return f"{settings.ui_url}/runs/{run_id}"
