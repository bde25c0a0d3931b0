"""Materialize tenant partitions through Dagster from Python (the `backup` and `demo` commands).

Each tenant is one Dagster run of the tenant_backup job, executed in-process (no process start-up
per run: that costs seconds, times thousands of tenants) and recorded in the instance
($DAGSTER_HOME, or an ephemeral one). With workers > 1, that many processes share the tenants.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from dagster import DagsterEventType, DagsterInstance

from .assets import FORCE_TAG
from .automation import JOB_NAME, TENANT_TAG
from .partitions import TENANTS


@dataclass
class TenantOutcome:
    tenant_id: str
    run_id: str
    steps: dict[str, str] = field(default_factory=dict)  # asset -> ok | failed | skipped
    checks: dict[str, bool] = field(default_factory=dict)  # "asset:check" -> passed
    error: str = ""
    shared: dict[str, int] = field(default_factory=dict)  # tables dumped whole -> rows (archive metadata)

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.steps.values()) and all(self.checks.values()) and not self.error


def default_workers() -> int:
    """TENANT_BACKUP_WORKERS, else cores + 1: a backup waits on the database and the storage part of
    the time (bench/weekly.py on 2 cores: 2 workers 0.71 s, 3 workers 0.58 s per tenant)."""
    raw = os.environ.get("TENANT_BACKUP_WORKERS", "").strip()
    return int(raw) if raw else (os.cpu_count() or 1) + 1


def job_assets(defs) -> list[str]:
    """The job's assets in lineage order: the archive, then the locations."""
    job = defs.resolve_job_def(JOB_NAME)
    names = {node.name for node in job.graph.node_defs}
    order = ["tenant_archive", "local_copy", "r2_copy", "b2_copy"]
    return [name for name in order if name in names]


def run_tenant(defs, instance: DagsterInstance, tenant_id: str, *, force: bool = False,
               log_level: str = "WARNING") -> TenantOutcome:
    """One run of the tenant_backup job for one tenant partition, summarized."""
    job = defs.resolve_job_def(JOB_NAME)
    tags = {TENANT_TAG: tenant_id}
    if force:
        tags[FORCE_TAG] = "true"
    result = job.execute_in_process(partition_key=tenant_id, instance=instance, raise_on_error=False, tags=tags,
                                    run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
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
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.event_specific_data.error if event.event_specific_data else None
            outcome.error = error.message.strip().splitlines()[0] if error and error.message else "step failed"
            break
    return outcome


def keep_connections(instance: DagsterInstance) -> DagsterInstance:
    """Pool the instance's storage connections, as dagster-webserver does. dagster-postgres opens a
    new connection for every statement by default (fine for short run processes); a long-lived
    runner of thousands of runs spent ~30% of its time in connect()."""
    if not instance.is_ephemeral:
        instance.optimize_for_webserver(statement_timeout=300_000, pool_recycle=3600, max_overflow=4)
    return instance


# -- worker processes ---------------------------------------------------------------------------
_worker_state: dict = {}


def _worker_init(environ: dict) -> None:
    os.environ.update(environ)
    from .build import build_definitions

    _worker_state["defs"] = build_definitions()
    _worker_state["instance"] = keep_connections(DagsterInstance.get() if os.environ.get("DAGSTER_HOME")
                                                 else DagsterInstance.ephemeral())


def _worker_run(tenant_id: str, force: bool, log_level: str) -> TenantOutcome:
    try:
        return run_tenant(_worker_state["defs"], _worker_state["instance"], tenant_id, force=force,
                          log_level=log_level)
    except Exception as exc:  # a crash of the run machinery itself: report it for this tenant
        return TenantOutcome(tenant_id, "", error=" ".join(str(exc).split())[:500] or type(exc).__name__)


def materialize_tenants(defs, instance: DagsterInstance, tenant_ids: list[str], *, force: bool = False,
                        progress=None, log_level: str = "WARNING", workers: int = 1) -> list[TenantOutcome]:
    """Back up every tenant (partitions are added first); outcomes in the order of tenant_ids."""
    known = set(instance.get_dynamic_partitions(TENANTS))
    new = [t for t in tenant_ids if t not in known]
    if new:
        instance.add_dynamic_partitions(TENANTS, new)
    outcomes: dict[str, TenantOutcome] = {}
    if workers <= 1 or len(tenant_ids) <= 1 or instance.is_ephemeral:
        # An ephemeral instance lives in this process only: its runs cannot be shared with workers.
        keep_connections(instance)
        for index, tenant_id in enumerate(tenant_ids, 1):
            outcomes[tenant_id] = run_tenant(defs, instance, tenant_id, force=force, log_level=log_level)
            if progress:
                progress(index, len(tenant_ids), outcomes[tenant_id])
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding DB connections
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(dict(os.environ),)) as pool:
            futures = [pool.submit(_worker_run, t, force, log_level) for t in tenant_ids]
            for index, future in enumerate(as_completed(futures), 1):
                outcome = future.result()
                outcomes[outcome.tenant_id] = outcome
                if progress:
                    progress(index, len(tenant_ids), outcome)
    return [outcomes[t] for t in tenant_ids]


def format_table(outcomes: list[TenantOutcome], assets: list[str]) -> str:
    """tenant × asset (with its checks) table, one line per tenant."""
    lines = [f"{'tenant':36}  " + "  ".join(f"{a:>16}" for a in assets) + "  result"]
    for outcome in outcomes:
        cells = []
        for asset_name in assets:
            checks = [ok for key, ok in outcome.checks.items() if key.startswith(asset_name + ":")]
            state = outcome.steps.get(asset_name, "-")
            if checks:
                state += f" {sum(checks)}/{len(checks)}✓"
            cells.append(f"{state:>16}")
        lines.append(f"{outcome.tenant_id:36}  " + "  ".join(cells) + ("  OK" if outcome.ok else f"  FAILED {outcome.error}"))
    return "\n".join(lines)
