"""A code location for tests/test_partitioned_check_results.py: one dynamically partitioned asset
with a partitioned check (the preview `AssetCheckSpec(partitions_def=...)` of Dagster 1.13) and a
backfill policy of many partitions per run. Its one step runs every partition of its run and reports
each one on its own: an `AssetMaterialization(partition=...)` and an
`AssetCheckEvaluation(partition=...)` per partition, no Output (which would materialize the whole
range alike). The partition "bad" fails its check and is not materialized; the step then fails,
after the others were reported."""

import warnings

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    AssetSpec,
    BackfillPolicy,
    Definitions,
    DynamicPartitionsDefinition,
    Failure,
    multi_asset,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

PROBE_PARTITIONS = DynamicPartitionsDefinition(name="probe_tenants")
ASSET = AssetKey("probe_archive")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CHECK = AssetCheckSpec("probe_check", asset=ASSET, partitions_def=PROBE_PARTITIONS)


@multi_asset(
    specs=[AssetSpec(ASSET, partitions_def=PROBE_PARTITIONS, skippable=True)],
    check_specs=[CHECK],
    partitions_def=PROBE_PARTITIONS,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=10),
    can_subset=True,  # the check's output optional: it is reported per partition, not as an output
)
def probe(context):
    failed = []
    for key in context.partition_keys:
        ok = key != "bad"
        target = None
        if ok:
            yield AssetMaterialization(ASSET, partition=key, metadata={"tenant": key})
            target = _stored(context.instance, key)
        else:
            failed.append(key)
        yield AssetCheckEvaluation(
            target_materialization_data=target,
            asset_key=ASSET,
            check_name="probe_check",
            passed=ok,
            partition=key,
            severity=AssetCheckSeverity.ERROR,
            metadata={"tenant": key},
        )
    if failed:
        raise Failure(f"failed: {failed}", allow_retries=False)


def _stored(instance, key):
    """The materialization just reported (stored before the step goes on): the check's target. Without
    it the check's partition status is not 'current' and shows as nothing."""
    record = instance.fetch_materializations(AssetRecordsFilter(asset_key=ASSET, asset_partitions=[key]), limit=1)
    (mat,) = record.records
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=mat.storage_id, run_id=mat.event_log_entry.run_id, timestamp=mat.timestamp
    )


defs = Definitions(assets=[probe])
