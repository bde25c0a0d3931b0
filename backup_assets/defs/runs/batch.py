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

What a task carries: the tenant, the batch and a ClusterSpec (core/cluster.py) — the non-secret
settings the cluster must agree on and a token of the Dagster instance. No secret, no path, no
instance reference: each worker reads its own configuration and opens its own instance
(defs/runs/in_process.py, run_in_worker) and refuses a task it cannot serve in one line; the task
then goes to another worker. The local cluster talks TLS with a one-off certificate; a scheduler
elsewhere is reached over tls:// with Dask's TLS configuration (plain tcp:// only on loopback, or
with TENANT_BACKUP_DASK_ALLOW_PLAINTEXT), and only with a PostgreSQL-backed instance.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from dagster import DagsterInstance

from ...core.cluster import ClusterSpec, ClusterUnreachable, WorkerRefused, check_address, check_tls
from ...core.errors import ConfigError, first_line
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
from .in_process import (
    TenantOutcome,
    cluster_token,
    instance_label,
    is_shared_storage,
    run_in_worker,
    run_tenant,
)
from .instance import runner_instance

REFUSALS_PER_TENANT = 3  # workers that may refuse one tenant's task before it fails with their reason

log = logging.getLogger(__name__)


def new_batch_id() -> str:
    return f"batch-{uuid.uuid4().hex[:12]}"


@dataclass
class BatchResult:
    outcomes: list[TenantOutcome]
    refused: dict[str, str] = field(default_factory=dict)  # worker address -> why it refused tasks

    def refused_line(self) -> str:
        return f"{len(self.refused)} Dask workers refused tasks, which other workers ran: " + " | ".join(
            self.refused.values()
        )

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
    scheduler = scheduler if scheduler is not None else settings.dask_scheduler
    if scheduler:
        require_shared_instance(instance, scheduler)
    known = set(instance.get_dynamic_partitions(TENANTS))
    new = [t for t in tenant_ids if t not in known]
    if new:
        instance.add_dynamic_partitions(TENANTS, new)
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
    refused: dict[str, str] = {}
    outcomes = _on_dask(
        instance,
        tenant_ids,
        force=force,
        progress=progress,
        log_level=log_level,
        workers=workers,
        batch_id=batch_id,
        scheduler=scheduler,
        settings=settings,
        refused=refused,
    )
    return BatchResult(outcomes, refused)


def require_shared_instance(instance: DagsterInstance, scheduler: str) -> None:
    """Workers on other machines write their runs into the driver's instance: it must be one they can
    reach (PostgreSQL), never a silent in-process run instead."""
    if not is_shared_storage(instance):
        raise ConfigError(
            f"TENANT_BACKUP_DASK_SCHEDULER={scheduler} needs a Dagster instance its workers can write to, and this"
            f" one is {instance_label(instance)}: set DAGSTER_HOME to a directory whose dagster.yaml stores runs"
            " in PostgreSQL (DAGSTER_PG_URL, the project's dagster.yaml), or unset TENANT_BACKUP_DASK_SCHEDULER"
            " to use a local cluster"
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


def cluster_spec(instance: DagsterInstance, settings: Settings) -> ClusterSpec:
    """What every task carries besides its tenant: nothing secret (core/cluster.py)."""
    shared = tuple(sorted(settings.cluster_settings().items()))
    return ClusterSpec(shared, cluster_token(instance, create=True), instance_label(instance))


def connect(scheduler: str | None, settings: Settings, cluster=None):
    """A Client of the local `cluster`, or of the scheduler at `scheduler`: over tls:// with Dask's
    TLS configuration (CA, this process's certificate and key), or plain tcp:// on loopback (or opted
    in). A refused certificate or an unreachable scheduler: ClusterUnreachable in one line."""
    from distributed import Client, Security

    if cluster is not None:
        return Client(cluster, timeout="60s")
    variable = "TENANT_BACKUP_DASK_SCHEDULER"
    scheme = check_address(scheduler, allow_plaintext=settings.dask_allow_plaintext, variable=variable)
    security = Security()
    if scheme in ("tls", "wss"):
        check_tls(security, "client", scheduler)
    try:
        return Client(scheduler, security=security, timeout="60s")
    except (OSError, TimeoutError, TypeError) as exc:
        raise ClusterUnreachable(f"cannot use the Dask scheduler at {scheduler}: {first_line(exc)}") from None


def _on_dask(
    instance, tenant_ids, *, force, progress, log_level, workers, batch_id, scheduler, settings: Settings, refused
) -> list[TenantOutcome]:
    import dask
    from distributed import KilledWorker, LocalCluster, Security, as_completed

    losses = settings.worker_loss_retries
    spec = cluster_spec(instance, settings)
    outcomes: dict[str, TenantOutcome] = {}
    # allowed-failures: a local cluster's (a remote scheduler has its own); nframes 0: no source code
    # of ours travels with the graph.
    config = {"distributed.scheduler.allowed-failures": losses, "distributed.diagnostics.computations.nframes": 0}
    with dask.config.set(config):
        cluster = (
            None
            if scheduler
            else LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                # TLS with a certificate made for this cluster: another local user cannot reach it.
                security=Security.temporary(),
                # This process's children: they get the driver's configuration (process start, not a task).
                env=settings.environ,
            )
        )
        try:
            with connect(scheduler, settings, cluster) as client:
                options = dict(pure=False, force=force, batch_id=batch_id, log_level=log_level, cluster=spec)
                keys = [f"backup-{batch_id}-{t}" for t in tenant_ids]
                by_key = dict(zip(keys, tenant_ids, strict=True))
                attempts: dict[str, int] = {}
                tasks = as_completed(client.map(run_in_worker, tenant_ids, key=keys, **options))
                for future in tasks:
                    tenant_id = by_key[future.key]
                    try:
                        # Released once read: a worker that dies later holding this result must not
                        # make Dask run the tenant again for a future nobody holds.
                        outcome = _result(future)
                    except KilledWorker:
                        outcome = TenantOutcome(
                            tenant_id,
                            "",
                            error=f"its worker died {losses} times while backing"
                            " it up (killed, out of memory?): given up",
                        )
                    except WorkerRefused as exc:
                        again = _refused(client, exc, tenant_id, attempts, refused)
                        if again:
                            key = f"backup-{batch_id}-{tenant_id}-{attempts[tenant_id]}"
                            by_key[key] = tenant_id
                            tasks.add(client.submit(run_in_worker, tenant_id, key=key, **options, **again))
                            continue
                        outcome = TenantOutcome(tenant_id, "", error=str(exc))
                    except Exception as exc:  # noqa: BLE001 - reported for this tenant, the batch goes on
                        outcome = TenantOutcome(tenant_id, "", error=first_line(exc) or type(exc).__name__)
                    outcomes[tenant_id] = outcome
                    if progress:
                        progress(len(outcomes), len(tenant_ids), outcome)
        finally:
            if cluster is not None:
                cluster.close()
    _sweep(instance, tenant_ids, batch_id)
    if refused and all(o.error in refused.values() for o in outcomes.values()):
        raise ConfigError("no Dask worker took this batch's tasks: " + " | ".join(refused.values()))
    return [outcomes[t] for t in tenant_ids]


def _result(future):
    try:
        return future.result()
    finally:
        future.release()


def _refused(client, exc: WorkerRefused, tenant_id: str, attempts: dict, refused: dict) -> dict | None:
    """A worker refused a tenant's task (its configuration): named once, and the task is given to the
    workers that have not refused (restrictions, not a new cluster), unless none is left or the tenant
    was refused REFUSALS_PER_TENANT times. Returns the submit options of the next attempt, or None."""
    if exc.worker not in refused:
        refused[exc.worker] = str(exc)
        log.warning(str(exc))
    attempts[tenant_id] = attempts.get(tenant_id, 0) + 1
    others = [w for w in client.scheduler_info(n_workers=-1)["workers"] if w not in refused]
    if not others or attempts[tenant_id] >= REFUSALS_PER_TENANT:
        return None
    return {"workers": others, "allow_other_workers": True}


def _sweep(instance, tenant_ids, batch_id) -> None:
    """Every task is done: a run of this batch still executing belongs to a worker that died after
    starting it (its tenant was re-run, or given up): marked failed with the reason."""
    for tenant_id in tenant_ids:
        for record in executing_runs(instance, tenant_id):
            if record.dagster_run.tags.get(BATCH_TAG) == batch_id:
                worker = record.dagster_run.tags.get(WORKER_TAG, "?")
                fail_orphan(instance, record, f"its Dask worker {worker} died during the run", log=log.warning)
