"""One tenant's backup as one Dagster run of the tenant_backup job, executed in this process (no
process start-up per run: that costs seconds, times thousands of tenants) and recorded in the
instance; many tenants at once: defs/runs/batch.py.
"""

from dataclasses import dataclass, field

from dagster import DagsterEventType, DagsterInstance

from ..backup.assets import FORCE_TAG
from ..failures import step_failure_line
from .guard import JOB_NAME, TENANT_TAG


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
    job = defs.resolve_job_def(JOB_NAME)
    names = {node.name for node in job.graph.node_defs}
    order = ["tenant_archive", "local_copy", "r2_copy", "b2_copy"]
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
    outcome = TenantOutcome(tenant_id, result.run_id)
    failed = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE}
    done = {e.asset_key.path[-1] for e in result.get_asset_materialization_events() if e.asset_key}
    for name in job_assets(defs):
        outcome.steps[name] = "ok" if name in done else "failed" if name in failed else "skipped"
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata if event.materialization else {}
        shared = metadata.get("shared_tables")
        if shared is not None and isinstance(getattr(shared, "value", None), dict):
            outcome.shared = dict(shared.value)
    for evaluation in result.get_asset_check_evaluations():
        outcome.checks[f"{evaluation.asset_key.path[-1]}:{evaluation.check_name}"] = evaluation.passed
    # The first failed step's error, as the one line that says what failed: the cause under Dagster's
    # retry wrapper ("Exceeded max_retries of N"), never the wrapper itself (defs/failures.py).
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    if failures:
        outcome.error = step_failure_line(failures[0])
    elif not result.success:  # the run failed outside any step (resources, the executor)
        failure = next((e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE), None)
        outcome.error = step_failure_line(failure) if failure is not None else "run failed"
    return outcome
