"""A tenant's backup as Dagster runs executed in this process (no process start-up per run: that
costs seconds, times thousands of tenants), recorded in the instance and summarized per tenant: one
tenant's run (run_tenant, back_up_one) or a run of many tenant partitions (run_range: what a backfill
under the backfill policy launches; back_up_chunk: a batch task's tenants, skipping those another
live run has and those a redelivered task's earlier run already backed up)."""

import logging
from dataclasses import dataclass, field

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from ...core.errors import first_line
from ...core.locations import registry
from ..backup.assets import FAILED_TENANTS, FORCE_TAG, LISTED_TAG, TENANT_NAME_TAG
from ..failures import step_failure_line
from .guard import (
    BATCH_TAG,
    DEFAULT_RUN_TIMEOUT_S,
    JOB_NAME,
    PROCESS_TAG,
    TENANT_TAG,
    WORKER_TAG,
    fail_orphan,
    live_holder,
    orphan_reason,
    process_identity,
)

log = logging.getLogger(__name__)
RANGE_START = "dagster/asset_partition_range_start"  # a run of many partitions: what a backfill tags it with
RANGE_END = "dagster/asset_partition_range_end"


@dataclass
class TenantOutcome:
    tenant_id: str
    run_id: str
    steps: dict[str, str] = field(default_factory=dict)  # asset -> ok | failed | skipped
    checks: dict[str, bool] = field(default_factory=dict)  # "asset:check" -> passed
    error: str = ""
    shared: dict[str, int] = field(default_factory=dict)  # tables dumped whole -> rows (archive metadata)
    skipped: str = ""  # not started: why (another live run has the tenant)

    @property
    def ok(self) -> bool:
        return (
            not self.skipped
            and all(v == "ok" for v in self.steps.values())
            and all(self.checks.values())
            and not self.error
        )

    @property
    def failed(self) -> bool:
        return not self.ok and not self.skipped

    @property
    def reason(self) -> str:
        """Why a failed tenant failed, on one line: its first failed step's error (what failed, not
        Dagster's retry wrapper), else the checks that did not pass, else the steps that did not run."""
        if self.error:
            return self.error
        checks = [name for name, passed in self.checks.items() if not passed]
        if checks:
            return "check failed: " + ", ".join(checks)
        steps = [name for name, state in self.steps.items() if state != "ok"]
        return "not materialized: " + ", ".join(steps) if steps else "failed"


def job_assets(defs) -> list[str]:
    """The job's assets in lineage order: the archive, then the locations."""
    names = {key.path[-1] for key in defs.resolve_all_asset_keys()}
    order = ["tenant_archive", *(f"{kind.name}_copy" for kind in registry.kinds())]
    return [name for name in order if name in names]


def run_tenant(
    defs,
    instance: DagsterInstance,
    tenant_id: str,
    *,
    force: bool = False,
    log_level: str = "WARNING",
    tags: dict[str, str] | None = None,
) -> TenantOutcome:
    """One run of the tenant_backup job for one tenant partition, summarized."""
    job = defs.resolve_job_def(JOB_NAME)
    tags = {**(tags or {}), TENANT_TAG: tenant_id}
    if force:
        tags[FORCE_TAG] = "true"
    result = job.execute_in_process(
        partition_key=tenant_id,
        instance=instance,
        raise_on_error=False,
        tags=tags,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    return summarize(defs, tenant_id, result.run_id, result.all_events, result.success)


def run_range(
    defs,
    instance: DagsterInstance,
    tenant_ids: list[str],
    *,
    force: bool = False,
    log_level: str = "WARNING",
    tags: dict[str, str] | None = None,
) -> list[TenantOutcome]:
    """One run of the tenant_backup job over a range of tenant partitions (contiguous in the
    partitions' order: what a backfill under the backfill policy launches), summarized per tenant."""
    if len(tenant_ids) == 1:
        return [run_tenant(defs, instance, tenant_ids[0], force=force, log_level=log_level, tags=tags)]
    job = defs.resolve_job_def(JOB_NAME)
    tags = {**(tags or {}), RANGE_START: tenant_ids[0], RANGE_END: tenant_ids[-1]}
    if force:
        tags[FORCE_TAG] = "true"
    result = job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags=tags,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    return outcomes_of_range(defs, tenant_ids, result.run_id, result.all_events, result.success)


def outcomes_of_range(defs, tenant_ids: list[str], run_id: str, events, success: bool) -> list[TenantOutcome]:
    """Each tenant's outcome in a run of many partitions: its own materializations and check results;
    what failed, from the step's Failure (its per-tenant lines, defs/backup/assets.py)."""
    by_partition: dict[str, list] = {t: [] for t in tenant_ids}
    failed_lines: dict[str, str] = {}
    run_error = ""
    for event in events:
        if event.event_type in (DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION):
            partition = (
                event.partition
                if event.event_type == DagsterEventType.ASSET_MATERIALIZATION
                else event.asset_check_evaluation_data.partition
            )
            if partition in by_partition:
                by_partition[partition].append(event)
        elif event.event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE) and not run_error:
            run_error = step_failure_line(event)
            user = getattr(event.event_specific_data, "user_failure_data", None)
            entry = (getattr(user, "metadata", None) or {}).get(FAILED_TENANTS)
            failed_lines = dict(getattr(entry, "value", None) or {})
    outcomes = []
    for tenant_id in tenant_ids:
        outcome = summarize(defs, tenant_id, run_id, by_partition[tenant_id], success or tenant_id not in failed_lines)
        if tenant_id in failed_lines:
            outcome.error = failed_lines[tenant_id]
        elif not success and not failed_lines:  # the run failed outside the tenants' work: all of them
            outcome.error = run_error or "run failed"
        outcomes.append(outcome)
    return outcomes


def summarize(defs, tenant_id: str, run_id: str, events, success: bool) -> TenantOutcome:
    """A tenant run's outcome from its events (DagsterEvents): what was materialized, every check's
    result, and the first failure's one line."""
    outcome = TenantOutcome(tenant_id, run_id)
    materialized = [e for e in events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION]
    done = {e.asset_key.path[-1] for e in materialized if e.asset_key}
    for name in job_assets(defs):  # one step backs up every asset: one not materialized in a failed run failed
        outcome.steps[name] = "ok" if name in done else "skipped" if success else "failed"
    for event in materialized:
        metadata = event.step_materialization_data.materialization.metadata
        shared = metadata.get("shared_tables")
        if shared is not None and isinstance(getattr(shared, "value", None), dict):
            outcome.shared = dict(shared.value)
    for event in events:
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.asset_check_evaluation_data
            outcome.checks[f"{evaluation.asset_key.path[-1]}:{evaluation.check_name}"] = evaluation.passed
    # The first failed step's error, as the one line that says what failed: the cause under Dagster's
    # retry wrapper ("Exceeded max_retries of N"), never the wrapper itself (defs/failures.py).
    failures = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    if failures:
        outcome.error = step_failure_line(failures[0])
    elif not success:  # the run failed outside any step (resources, the executor)
        failure = next((e for e in events if e.event_type == DagsterEventType.RUN_FAILURE), None)
        outcome.error = step_failure_line(failure) if failure is not None else "run failed"
    return outcome


def back_up_one(
    defs,
    instance: DagsterInstance,
    tenant_id: str,
    *,
    force: bool,
    batch_id: str,
    label: str | None = None,
    log_level: str = "WARNING",
    worker: str | None = None,
    live_workers=None,
    timeout_s: int = DEFAULT_RUN_TIMEOUT_S,
) -> TenantOutcome:
    """One tenant's run, unless another live run has the tenant (then: skipped, naming it)."""
    holder = live_holder(instance, tenant_id, live_workers=live_workers, log=log.warning, timeout_s=timeout_s)
    if holder is not None:
        return TenantOutcome(tenant_id, "", skipped=f"in progress in {holder.describe()}")
    tags = {BATCH_TAG: batch_id, PROCESS_TAG: process_identity()}
    if label is not None:  # the batch's registry read listed the tenant (registry_labels): not read again
        tags[LISTED_TAG] = "true"
        if label:
            tags[TENANT_NAME_TAG] = label
    if worker:
        tags[WORKER_TAG] = worker
    try:
        return run_tenant(defs, instance, tenant_id, force=force, log_level=log_level, tags=tags)
    except Exception as exc:  # a crash of the run machinery itself: reported for this tenant
        return TenantOutcome(tenant_id, "", error=first_line(exc) or type(exc).__name__)


CHUNK_TAG = "tenant_backup/chunk"  # a batch's runs of one task: its first tenant


def back_up_chunk(
    defs,
    instance: DagsterInstance,
    tenant_ids: list[str],
    *,
    force: bool,
    batch_id: str,
    labels: dict[str, str] | None = None,
    log_level: str = "WARNING",
    worker: str | None = None,
    live_workers=None,
    timeout_s: int = DEFAULT_RUN_TIMEOUT_S,
) -> list[TenantOutcome]:
    """A batch's tenants (contiguous in the partitions' order) in runs of many partitions. A tenant
    another live run has is skipped, naming it; when this task is a redelivery (its worker died: an
    earlier run of this batch's task exists), a tenant that run already backed up is returned as it
    was, not backed up again, and the dead run is marked failed. The rest: one run per contiguous
    stretch."""
    labels = labels or {}
    chunk = tenant_ids[0]
    outcomes: dict[str, TenantOutcome] = {}
    earlier = [
        r
        for r in instance.get_run_records(RunsFilter(tags={BATCH_TAG: batch_id, CHUNK_TAG: chunk}))
        if r.dagster_run.job_name == JOB_NAME
    ]
    for record in earlier:  # a redelivery: the dead worker's run is over
        if record.dagster_run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
            reason = orphan_reason(record, live_workers=live_workers, timeout_s=timeout_s)
            fail_orphan(instance, record, reason or f"its Dask worker died: task {chunk} redelivered", log=log.warning)
    earlier_ids = {r.dagster_run.run_id for r in earlier}
    todo: list[str | None] = []
    for tenant_id in tenant_ids:
        done = done_in_runs(defs, instance, tenant_id, earlier_ids) if earlier_ids else None
        if done is not None:
            outcomes[tenant_id] = done
            todo.append(None)
            continue
        holder = live_holder(instance, tenant_id, live_workers=live_workers, log=log.warning, timeout_s=timeout_s)
        if holder is not None:
            outcomes[tenant_id] = TenantOutcome(tenant_id, "", skipped=f"in progress in {holder.describe()}")
            todo.append(None)
            continue
        todo.append(tenant_id)
    tags = {BATCH_TAG: batch_id, CHUNK_TAG: chunk, PROCESS_TAG: process_identity()}
    if worker:
        tags[WORKER_TAG] = worker
    for stretch in _stretches(todo):
        run_tags = dict(tags)
        label = labels.get(stretch[0]) if len(stretch) == 1 else None
        if label is not None:  # the batch's registry read listed the tenant: not read again
            run_tags[LISTED_TAG] = "true"
            if label:
                run_tags[TENANT_NAME_TAG] = label
        try:
            for outcome in run_range(defs, instance, stretch, force=force, log_level=log_level, tags=run_tags):
                outcomes[outcome.tenant_id] = outcome
        except Exception as exc:  # a crash of the run machinery itself: reported for these tenants
            for tenant_id in stretch:
                outcomes[tenant_id] = TenantOutcome(tenant_id, "", error=first_line(exc) or type(exc).__name__)
    return [outcomes[t] for t in tenant_ids]


def _stretches(todo: list[str | None]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for tenant_id in todo:
        if tenant_id is None:
            out.append([])
        else:
            out[-1].append(tenant_id)
    return [s for s in out if s]


def done_in_runs(defs, instance: DagsterInstance, tenant_id: str, run_ids: set[str]) -> TenantOutcome | None:
    """The tenant's outcome in one of `run_ids` (a dead worker's runs of this task) if every asset
    was materialized there: that backup is finished, it is not made again."""
    from dagster import AssetKey, AssetRecordsFilter

    found = None
    for name in job_assets(defs):
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(name), asset_partitions=[tenant_id]), limit=1
        ).records
        if not records or records[0].run_id not in run_ids:
            return None
        found = records[0].run_id
    kinds = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
    events = [e.dagster_event for e in instance.all_logs(found, of_type=kinds) if e.dagster_event]
    return outcomes_of_range(defs, [tenant_id], found, events, True)[0]
