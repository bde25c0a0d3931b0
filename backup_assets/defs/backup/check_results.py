"""What every check of ours reports: an AssetCheckEvaluation of its partition, and an INTEGRITY_FAILURE
alert when it fails.

An evaluation, not an AssetCheckResult: a result takes no partition, and in a run of many partitions
(the backfill policy, defs/backup/assets.py) it would be recorded without one. The evaluation names
its partition and the materialization it checked (the partition's latest, as Dagster does for a
result): without that target the UI does not count it as the partition's current result
(tests/test_partitioned_check_results.py)."""

import warnings
from contextlib import contextmanager

from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, AssetRecordsFilter, DagsterEventType
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


class RunMaterializations:
    """The materializations this run has stored so far, read incrementally (a cursor into the run's
    event log): one query answers the targets of every asset a tenant just materialized, where
    latest_materialization asks once per asset. What it returns is exactly the materialization the
    run yielded (its storage id, run id and timestamp), i.e. the partition's latest."""

    def __init__(self, instance, run_id: str):
        self._instance, self._run_id = instance, run_id
        self._cursor: str | None = None
        self._targets: dict[tuple[str, str], AssetCheckEvaluationTargetMaterializationData] = {}

    def read(self) -> None:
        """Take in the run's materializations stored since the last read (one query)."""
        conn = self._instance.get_records_for_run(
            self._run_id, cursor=self._cursor, of_type=DagsterEventType.ASSET_MATERIALIZATION
        )
        for record in conn.records:
            event = record.event_log_entry.dagster_event
            if event is None or event.asset_key is None:
                continue
            key = (event.asset_key.path[-1], event.partition)
            self._targets[key] = AssetCheckEvaluationTargetMaterializationData(
                storage_id=record.storage_id, run_id=self._run_id, timestamp=record.event_log_entry.timestamp
            )
        if conn.cursor:
            self._cursor = conn.cursor

    def target(self, asset: str, tenant_id: str):
        """The materialization of (asset, tenant) this run stored, taken in by read(); else the
        partition's latest (latest_materialization: a query)."""
        found = self._targets.pop((asset, tenant_id), None)
        return found or latest_materialization(self._instance, asset, tenant_id)


def run_url(settings: Settings, run_id: str) -> str:
    return f"{settings.ui_url}/runs/{run_id}"
