"""Many tenants' backups in one go (the weekly batch job, `tenant-backup backup --all`, the demo):
stretches of tenants contiguous in the partitions' order, each one tenant_backup run of a partition
range executed in-process by a worker (defs/runs/tenant_runs.py), recorded in the shared instance
exactly like a run a backfill launches, each tenant with its own materializations and check results.

The workers are Dask's (`distributed`): a LocalCluster of TENANT_BACKUP_WORKERS processes by
default, or the cluster whose scheduler is at TENANT_BACKUP_DASK_SCHEDULER (workers on other
machines, docs/DEPLOYMENT.md). Dask reschedules the task of a worker that died (SIGKILL, the OOM
killer) on another worker, at most TENANT_BACKUP_WORKER_LOSS_RETRIES times (Dask's
`allowed-failures`, default 3); the redelivered task marks the run the dead worker left STARTED as
failed, returns the tenants that run had finished and backs up only the others (no duplicate), and
every other task goes on. A tenant another live run is backing up (UI, backfill,
CLI, another batch) is not started again: it is reported as skipped, naming that run.

What a task carries: its tenants (with the batch's registry read of them), the batch and a ClusterSpec (core/cluster.py) — the non-secret
settings the cluster must agree on and a token of the Dagster instance. No secret, no path, no
instance reference: each worker reads its own configuration and opens its own instance
(defs/runs/in_process.py, run_chunk_in_worker) and refuses a task it cannot serve in one line; the task
then goes to another worker. The local cluster talks TLS with a one-off certificate; a scheduler
elsewhere is reached over tls:// with Dask's TLS configuration (plain tcp:// only on loopback, or
with TENANT_BACKUP_DASK_ALLOW_PLAINTEXT), and only with a PostgreSQL-backed instance.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from dagster import DagsterInstance, RunsFilter

from ...core.cluster import (
    ClusterSpec,
    ClusterUnreachable,
    WorkerRefused,
    check_address,
    check_tls,
    worker_dask_config,
)
from ...core.errors import ConfigError, first_line
from ...core.settings import Settings
from ..backup.assets import PARTITIONS_PER_RUN
from ..backup.partitions import TENANTS
from .guard import BATCH_TAG, EXECUTING, WORKER_TAG, fail_orphan
from .in_process import (
    TenantOutcome,
    back_up_chunk,
    cluster_token,
    instance_label,
    is_shared_storage,
    run_chunk_in_worker,
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
    labels = registry_labels(settings, tenant_ids)
    local = instance.is_ephemeral or (workers <= 1 and not scheduler) or len(tenant_ids) == 0
    chunks = stretches(tenant_ids, instance.get_dynamic_partitions(TENANTS), 1 if local else max(workers, 1))
    if local:
        instance = runner_instance(instance)
        outcomes = {}
        for chunk in chunks:
            for outcome in back_up_chunk(
                defs,
                instance,
                chunk,
                labels={t: labels[t] for t in chunk if t in labels},
                force=force,
                batch_id=batch_id,
                log_level=log_level,
                timeout_s=settings.run_timeout_s,
            ):
                outcomes[outcome.tenant_id] = outcome
                if progress:
                    progress(len(outcomes), len(tenant_ids), outcome)
        return BatchResult([outcomes[t] for t in tenant_ids])
    refused: dict[str, str] = {}
    outcomes = _on_dask(
        instance,
        tenant_ids,
        chunks,
        force=force,
        progress=progress,
        log_level=log_level,
        workers=workers,
        batch_id=batch_id,
        scheduler=scheduler,
        settings=settings,
        refused=refused,
        labels=labels,
    )
    return BatchResult(outcomes, refused)


TASKS_PER_WORKER = 4  # a batch's tasks per worker: balance at the end, little lost with a killed worker


def stretches(tenant_ids: list[str], order: list[str], workers: int) -> list[list[str]]:
    """The batch's tasks: stretches of tenants contiguous in the partitions' order (each one run of
    many partitions, as a backfill under the backfill policy runs them), about TASKS_PER_WORKER per
    worker, at most PARTITIONS_PER_RUN each. In the partitions' order, not the registry's."""
    position = {key: index for index, key in enumerate(order)}
    wanted = sorted(set(tenant_ids), key=lambda t: position.get(t, len(order)))
    size = max(1, min(PARTITIONS_PER_RUN, -(-len(wanted) // (workers * TASKS_PER_WORKER))))
    out: list[list[str]] = []
    for tenant_id in wanted:
        current = out[-1] if out else None
        if (
            current is not None
            and len(current) < size
            and tenant_id in position
            and position.get(current[-1]) == position[tenant_id] - 1
        ):
            current.append(tenant_id)
        else:
            out.append([tenant_id])
    return out


def registry_labels(settings: Settings, tenant_ids: list[str]) -> dict[str, str]:
    """The batch's one registry read (not one per tenant run): tenant -> its display name ("" when
    none) for every listed tenant; a tenant not listed (--force) is read by its own run."""
    from ...core.source.tenants import read_registry

    wanted = set(tenant_ids)
    return {r.id: r.name or "" for r in read_registry(settings.source) if r.id in wanted}


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


def cluster_config(losses: int) -> dict[str, object]:
    """Dask configuration of a batch (its nannies hand it to their workers): allowed-failures, a local
    cluster's (a remote scheduler has its own); nframes 0, no source code of ours travels with the graph;
    the workers' statistical profiler off (core/cluster.py worker_dask_config: its history grew a
    worker's memory with every tenant it backed up)."""
    return {
        "distributed.scheduler.allowed-failures": losses,
        "distributed.diagnostics.computations.nframes": 0,
        **worker_dask_config(),
    }


def _on_dask(
    instance,
    tenant_ids,
    chunks,
    *,
    force,
    progress,
    log_level,
    workers,
    batch_id,
    scheduler,
    settings: Settings,
    refused,
    labels: dict[str, str],
) -> list[TenantOutcome]:
    import dask
    from distributed import LocalCluster, Security

    spec = cluster_spec(instance, settings)
    outcomes: dict[str, TenantOutcome] = {}
    losses = settings.worker_loss_retries
    config = cluster_config(losses)
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
                # This process's children: they get the driver's configuration and instance (at process
                # start, not in a task).
                env={**settings.environ, **_home_of(instance)},
            )
        )
        try:
            with connect(scheduler, settings, cluster) as client:
                options = dict(pure=False, force=force, batch_id=batch_id, log_level=log_level, cluster=spec)
                tasks = _Tasks(client, options, batch_id, losses, refused, labels)
                tasks.map(chunks)
                for _chunk, chunk_outcomes in tasks.results():
                    for outcome in chunk_outcomes:
                        outcomes[outcome.tenant_id] = outcome
                        if progress:
                            progress(len(outcomes), len(tenant_ids), outcome)
        finally:
            if cluster is not None:
                # A worker still shutting its run machinery down is killed after 4 s: our own process, its
                # work done. Dask warns about it once per worker: nothing to act on, so not said.
                nanny = logging.getLogger("distributed.nanny")
                level = nanny.level
                nanny.setLevel(logging.ERROR)
                try:
                    cluster.close()
                finally:
                    nanny.setLevel(level)
    _sweep(instance, tenant_ids, batch_id)
    if refused and all(o.error in refused.values() for o in outcomes.values()):
        raise ConfigError("no Dask worker took this batch's tasks: " + " | ".join(refused.values()))
    return [outcomes[t] for t in tenant_ids]


class _Tasks:
    """The batch's tasks on the cluster, yielded as they complete. A task a worker refused (its own
    configuration, or one that differs from the driver's) goes again to the workers that have not
    refused — restricted to them, so a refusing worker does not take it back while they are busy —
    at most REFUSALS_PER_TENANT times; if the workers it is restricted to all leave (killed, and
    restarted under another address), it goes to the non-refusing workers there are then, or fails
    after STUCK_S without any. Each refusing worker is named once (log, BatchResult.refused)."""

    CHECK_S = 2.0
    STUCK_S = 60.0

    def __init__(self, client, options: dict, batch_id: str, losses: int, refused: dict[str, str], labels=None):
        from distributed import as_completed

        self.labels = labels or {}
        self.client, self.options, self.batch_id, self.losses, self.refused = client, options, batch_id, losses, refused
        self.completed = as_completed()
        self.tenant_of: dict[str, tuple] = {}  # task key -> its tenants (a chunk)
        self.restricted: dict[str, tuple[object, set[str]]] = {}  # task key -> (future, workers it may run on)
        self.attempts: dict[tuple, int] = {}  # chunk -> submissions
        self.stuck_since: float | None = None
        self.failed: list[tuple[str, TenantOutcome]] = []  # given up outside a result (stuck)

    def map(self, chunks: list[list[str]]) -> None:
        chunks = [tuple(c) for c in chunks]
        keys = [self._key(c) for c in chunks]
        labels = [self._labels(c) for c in chunks]
        self.completed.update(
            self.client.map(run_chunk_in_worker, [list(c) for c in chunks], labels, key=keys, **self.options)
        )

    def _labels(self, chunk: tuple) -> dict:
        return {t: self.labels[t] for t in chunk if t in self.labels}

    def _key(self, chunk: tuple) -> str:
        self.attempts[chunk] = self.attempts.get(chunk, 0) + 1
        n = self.attempts[chunk]
        key = f"backup-{self.batch_id}-{chunk[0]}-{len(chunk)}" + (f"-{n}" if n > 1 else "")
        self.tenant_of[key] = chunk
        return key

    def _submit(self, chunk: tuple, workers: set[str]) -> None:
        key = self._key(chunk)
        future = self.client.submit(
            run_chunk_in_worker, list(chunk), self._labels(chunk), key=key, workers=sorted(workers), **self.options
        )
        self.restricted[key] = (future, workers)
        self.completed.add(future)

    def results(self):
        import time

        next_check = time.monotonic() + self.CHECK_S
        while not self.completed.is_empty() or self.failed:
            while self.failed:
                yield self.failed.pop()
            batch = self.completed.next_batch(block=False)
            if not batch:
                time.sleep(0.05)
                if self.restricted and time.monotonic() >= next_check:
                    self._unstick()
                    next_check = time.monotonic() + self.CHECK_S
                continue
            for future in batch:
                chunk = self.tenant_of.pop(future.key, None)
                self.restricted.pop(future.key, None)
                if chunk is None:  # cancelled by _unstick, submitted again
                    continue
                outcomes = self._outcomes(future, chunk)
                if outcomes is not None:
                    yield chunk, outcomes

    def _outcomes(self, future, chunk: tuple) -> list[TenantOutcome] | None:
        from distributed import KilledWorker

        try:
            # Released once read: a worker that dies later holding this result must not make Dask
            # run the task again for a future nobody holds.
            return _result(future)
        except KilledWorker:
            reason = f"its worker died {self.losses} times while backing it up (killed, out of memory?): given up"
            return [TenantOutcome(t, "", error=reason) for t in chunk]
        except WorkerRefused as exc:
            if exc.worker not in self.refused:
                self.refused[exc.worker] = str(exc)
                log.warning(str(exc))
            others = self._eligible()
            if others and self.attempts[chunk] < REFUSALS_PER_TENANT:
                self._submit(chunk, others)
                return None
            return [TenantOutcome(t, "", error=str(exc)) for t in chunk]
        except Exception as exc:  # noqa: BLE001 - reported for these tenants, the batch goes on
            return [TenantOutcome(t, "", error=first_line(exc) or type(exc).__name__) for t in chunk]

    def _eligible(self) -> set[str]:
        return {w for w in self.client.scheduler_info(n_workers=-1)["workers"] if w not in self.refused}

    def _unstick(self) -> None:
        """Restricted tasks whose workers all left: to the eligible workers there are now."""
        import time

        eligible = self._eligible()
        stuck = [
            (k, f) for k, (f, allowed) in self.restricted.items() if f.status == "pending" and not allowed & eligible
        ]
        if not stuck or eligible:
            self.stuck_since = None
        elif self.stuck_since is None:
            self.stuck_since = time.monotonic()
        for key, future in stuck:
            if not eligible and time.monotonic() - self.stuck_since < self.STUCK_S:
                continue
            chunk = self.tenant_of.pop(key)
            del self.restricted[key]
            future.cancel()
            if eligible:
                self._submit(chunk, eligible)
            else:
                line = "no worker that accepts this batch is left: " + " | ".join(self.refused.values())
                self.failed.append((chunk, [TenantOutcome(t, "", error=line) for t in chunk]))


def _home_of(instance: DagsterInstance) -> dict[str, str]:
    root = getattr(instance, "root_directory", None)
    return {"DAGSTER_HOME": str(root)} if root and not instance.is_ephemeral else {}


def _result(future):
    try:
        return future.result()
    finally:
        future.release()


def _sweep(instance, tenant_ids, batch_id) -> None:
    """Every task is done: a run of this batch still executing belongs to a worker that died after
    starting it (its tenant was re-run, or given up): marked failed with the reason."""
    for record in instance.get_run_records(RunsFilter(tags={BATCH_TAG: batch_id}, statuses=list(EXECUTING))):
        worker = record.dagster_run.tags.get(WORKER_TAG, "?")
        fail_orphan(instance, record, f"its Dask worker {worker} died during the run", log=log.warning)
