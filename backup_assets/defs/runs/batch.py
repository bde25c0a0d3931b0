"""Many tenants' backups in one go (the weekly batch job, `tenant-backup backup --all`, the demo):
each tenant one tenant_backup run executed in-process by a worker, recorded in the shared instance
exactly like a run the daemon launches.

The workers are Dask's (`distributed`): a LocalCluster of TENANT_BACKUP_WORKERS processes by
default, or the cluster whose scheduler is at TENANT_BACKUP_DASK_SCHEDULER (workers on other
machines, docs/DEPLOYMENT.md). Dask reschedules the task of a worker that died (SIGKILL, the OOM
killer) on another worker, at most TENANT_BACKUP_WORKER_LOSS_RETRIES times (Dask's
`allowed-failures`, default 3); the re-run marks the run the dead worker left STARTED as failed
(run_guard), and every other tenant goes on. A tenant another live run is backing up (UI, backfill,
CLI, another batch) is not started again: it is reported as skipped, naming that run.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from dagster import DagsterInstance

from ...core.errors import first_line
from ...core.settings import Settings
from ..backup.partitions import TENANTS
from .guard import (
    BATCH_TAG,
    DEFAULT_RUN_TIMEOUT_S,
    PROCESS_TAG,
    WORKER_TAG,
    executing_runs,
    fail_orphan,
    live_holder,
    process_identity,
)
from .in_process import TenantOutcome, run_tenant
from .instance import instance_from_ref, runner_instance, tune_for_runner

log = logging.getLogger(__name__)


def new_batch_id() -> str:
    return f"batch-{uuid.uuid4().hex[:12]}"


@dataclass
class BatchResult:
    outcomes: list[TenantOutcome]

    @property
    def failed(self) -> list[TenantOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def skipped(self) -> list[TenantOutcome]:
        return [o for o in self.outcomes if o.skipped]

    def failure_line(self) -> str:
        """One line naming every tenant that failed and what failed (no traceback, no retry wrapper)."""
        failed = self.failed
        return f"{len(failed)} of {len(self.outcomes)} tenant backups failed: " + ", ".join(
            f"{o.tenant_id} ({o.reason})" for o in failed
        )

    def skipped_line(self) -> str:
        return f"{len(self.skipped)} tenants not started, another live run is backing them up: " + ", ".join(
            f"{o.tenant_id} ({o.skipped})" for o in self.skipped
        )


def back_up_tenants(
    defs,
    instance: DagsterInstance,
    tenant_ids: list[str],
    *,
    settings: Settings,
    force: bool = False,
    progress=None,
    log_level: str = "WARNING",
    workers: int | None = None,
    batch_id: str | None = None,
    scheduler: str | None = None,
) -> BatchResult:
    """Back up every tenant (partitions are added first); outcomes in the order of tenant_ids.

    workers (default TENANT_BACKUP_WORKERS: cores + 1, as a backup waits on the database and the
    storage part of the time) <= 1, or an ephemeral instance (which lives in this process only): one
    after the other in this process. Otherwise on Dask workers (a LocalCluster, or the cluster of
    `scheduler`, default TENANT_BACKUP_DASK_SCHEDULER)."""
    workers = settings.workers if workers is None else workers
    batch_id = batch_id or new_batch_id()
    known = set(instance.get_dynamic_partitions(TENANTS))
    new = [t for t in tenant_ids if t not in known]
    if new:
        instance.add_dynamic_partitions(TENANTS, new)
    scheduler = scheduler if scheduler is not None else settings.dask_scheduler
    if instance.is_ephemeral or (workers <= 1 and not scheduler) or len(tenant_ids) == 0:
        instance = runner_instance(instance)
        outcomes = {}
        for index, tenant_id in enumerate(tenant_ids, 1):
            outcomes[tenant_id] = back_up_one(
                defs,
                instance,
                tenant_id,
                force=force,
                batch_id=batch_id,
                log_level=log_level,
                timeout_s=settings.run_timeout_s,
            )
            if progress:
                progress(index, len(tenant_ids), outcomes[tenant_id])
        return BatchResult([outcomes[t] for t in tenant_ids])
    return BatchResult(
        _on_dask(
            instance,
            tenant_ids,
            force=force,
            progress=progress,
            log_level=log_level,
            workers=workers,
            batch_id=batch_id,
            scheduler=scheduler,
            settings=settings,
        )
    )


def back_up_one(
    defs,
    instance: DagsterInstance,
    tenant_id: str,
    *,
    force: bool,
    batch_id: str,
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
    if worker:
        tags[WORKER_TAG] = worker
    try:
        return run_tenant(defs, instance, tenant_id, force=force, log_level=log_level, tags=tags)
    except Exception as exc:  # a crash of the run machinery itself: reported for this tenant
        return TenantOutcome(tenant_id, "", error=first_line(exc) or type(exc).__name__)


# ------------------------------------------------------------------------------------------- Dask


def _on_dask(
    instance, tenant_ids, *, force, progress, log_level, workers, batch_id, scheduler, settings: Settings
) -> list[TenantOutcome]:
    import dask
    from distributed import Client, KilledWorker, LocalCluster, as_completed

    losses = settings.worker_loss_retries
    outcomes: dict[str, TenantOutcome] = {}
    with dask.config.set({"distributed.scheduler.allowed-failures": losses}):
        cluster = (
            None
            if scheduler
            else LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        )
        try:
            with Client(scheduler or cluster, timeout="60s") as client:
                keys = [f"backup-{batch_id}-{t}" for t in tenant_ids]
                futures = client.map(
                    run_in_worker,
                    tenant_ids,
                    key=keys,
                    pure=False,
                    force=force,
                    batch_id=batch_id,
                    log_level=log_level,
                    instance_ref=instance.get_ref(),
                    settings=settings,
                )
                by_key = dict(zip(keys, tenant_ids, strict=True))
                for index, future in enumerate(as_completed(futures), 1):
                    tenant_id = by_key[future.key]
                    try:
                        outcome = future.result()
                    except KilledWorker:
                        outcome = TenantOutcome(
                            tenant_id,
                            "",
                            error=f"its worker died {losses} times while backing"
                            " it up (killed, out of memory?): given up",
                        )
                    except Exception as exc:  # noqa: BLE001 - reported for this tenant, the batch goes on
                        outcome = TenantOutcome(tenant_id, "", error=first_line(exc) or type(exc).__name__)
                    outcomes[tenant_id] = outcome
                    if progress:
                        progress(index, len(tenant_ids), outcome)
        finally:
            if cluster is not None:
                cluster.close()
    _sweep(instance, tenant_ids, batch_id)
    return [outcomes[t] for t in tenant_ids]


def _sweep(instance, tenant_ids, batch_id) -> None:
    """Every task is done: a run of this batch still executing belongs to a worker that died after
    starting it (its tenant was re-run, or given up): marked failed with the reason."""
    for tenant_id in tenant_ids:
        for record in executing_runs(instance, tenant_id):
            if record.dagster_run.tags.get(BATCH_TAG) == batch_id:
                worker = record.dagster_run.tags.get(WORKER_TAG, "?")
                fail_orphan(instance, record, f"its Dask worker {worker} died during the run", log=log.warning)


# Per worker process: the definitions and the instance, built once (a run costs a fraction of a second).
_worker_state: dict = {}


def run_in_worker(
    tenant_id: str, *, force: bool, batch_id: str, log_level: str, instance_ref, settings: Settings
) -> TenantOutcome:
    """The Dask task (importable, so workers on other machines can run it). `instance_ref`: the
    driver's instance, which the workers share (its storage is PostgreSQL in production);
    `settings`: the driver's (a worker reads no configuration of its own)."""
    from distributed import get_client, get_worker

    if _worker_state.get("settings") != settings:
        from ..build import build_definitions

        _worker_state["defs"] = build_definitions(settings)
        _worker_state["settings"] = settings
    if _worker_state.get("instance_ref") != instance_ref:
        _worker_state["instance"] = tune_for_runner(instance_from_ref(instance_ref))
        _worker_state["instance_ref"] = instance_ref
    instance = _worker_state["instance"]
    records = executing_runs(instance, tenant_id)
    live_workers = None
    if any(r.dagster_run.tags.get(BATCH_TAG) == batch_id for r in records):  # a retry after a worker died
        live_workers = set(get_client().scheduler_info(n_workers=-1)["workers"])
    return back_up_one(
        _worker_state["defs"],
        instance,
        tenant_id,
        force=force,
        batch_id=batch_id,
        log_level=log_level,
        worker=get_worker().address,
        live_workers=live_workers,
        timeout_s=settings.run_timeout_s,
    )
