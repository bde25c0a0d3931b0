"""One backup of a tenant at a time, whoever starts it (UI, backfill, CLI, the daemon, a batch), and
no run left "in progress" after its process died.

Dagster's run queue limits only the runs it launches; in-process runs (the batch, `tenant-backup
backup`) do not pass through it. So every tenant_backup run checks the instance itself, in its first
step (`claim_tenant`): of the runs of that tenant executing now, the oldest (creation time, then run
id) goes on and every other stops before touching anything. Both sides of a race see each other
(each is STARTED before its first step), and agree on the winner.

A run whose process is gone would block its tenant forever, so `orphan_reason` recognises one: an
in-process run is tagged with its process (host, pid, start time) and its Dask worker; on this host
a dead pid says it, a batch knows its live workers, and any run past TENANT_BACKUP_RUN_TIMEOUT_S
(6 h, run monitoring's max runtime) is dead by definition. Such a run is marked failed with the
reason, which raises the usual BACKUP_FAILURE alert.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

JOB_NAME = "tenant_backup"
TENANT_TAG = "tenant_backup/tenant"  # one backup per tenant at a time (also dagster.yaml's queue limit)
BATCH_TAG = "tenant_backup/batch"  # the batch (driver run id) a run belongs to
PROCESS_TAG = "tenant_backup/process"  # host/pid/start time of the process executing an in-process run
WORKER_TAG = "tenant_backup/dask_worker"  # Dask worker address of a batch run
SKIPPED_TAG = "tenant_backup/skipped"  # set on a run that stopped because another run had the tenant
PARTITION_TAG = "dagster/partition"  # every run of a tenant partition has it, from the UI, backfills or a job
EXECUTING = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)


def process_identity(pid: int | None = None) -> str:
    """host/pid/start-time: a pid alone may be reused by another process after a crash."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_ticks(pid)}"


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()  # starttime, in clock ticks since boot
    except (OSError, IndexError):
        return "?"


def _process_gone(identity: str) -> str | None:
    host, _, rest = identity.partition("/")
    pid, _, ticks = rest.partition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return None  # another machine's process: cannot be checked from here
    if not os.path.exists(f"/proc/{pid}") or (ticks not in ("", "?") and _start_ticks(int(pid)) != ticks):
        return f"its process {pid} on {host} is gone (killed, out of memory?)"
    return None


DEFAULT_RUN_TIMEOUT_S = 6 * 3600  # TENANT_BACKUP_RUN_TIMEOUT_S (Settings.run_timeout_s)


def orphan_reason(
    record,
    *,
    live_workers: set[str] | None = None,
    live_batches: set[str] | None = None,
    now: float | None = None,
    timeout_s: int = DEFAULT_RUN_TIMEOUT_S,
) -> str | None:
    """Why an executing run is in fact dead, or None if it may be alive."""
    tags = record.dagster_run.tags
    if tags.get(PROCESS_TAG):
        reason = _process_gone(tags[PROCESS_TAG])
        if reason:
            return reason
    if live_workers is not None and tags.get(WORKER_TAG) and tags[WORKER_TAG] not in live_workers:
        return f"its Dask worker {tags[WORKER_TAG]} died (killed, out of memory?)"
    if live_batches is not None and tags.get(BATCH_TAG) and tags[BATCH_TAG] not in live_batches:
        return f"its batch {tags[BATCH_TAG]} is over"
    started = record.start_time or record.create_timestamp.timestamp()
    age = (now or time.time()) - started
    if age > timeout_s:
        return f"it has been running for {age / 3600:.1f} h, past TENANT_BACKUP_RUN_TIMEOUT_S"
    return None


def executing_runs(instance: DagsterInstance, tenant_id: str) -> list:
    """Runs of this tenant's partition executing now: the tenant_backup job and asset backfills alike."""
    return list(instance.get_run_records(RunsFilter(statuses=list(EXECUTING), tags={PARTITION_TAG: tenant_id})))


def fail_orphan(instance: DagsterInstance, record, reason: str, *, log=None) -> None:
    message = f"marked failed by tenant-backup: {reason}; the tenant's backup is run again"
    instance.report_run_failed(record.dagster_run, message)
    if log is not None:
        log(f"run {record.dagster_run.run_id} of tenant {record.dagster_run.tags.get(TENANT_TAG)}: {message}")


@dataclass(frozen=True)
class Holder:
    """The live run that has the tenant."""

    run_id: str
    since: float

    def describe(self) -> str:
        return f"run {self.run_id} (started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.since))} UTC)"


def live_holder(
    instance: DagsterInstance,
    tenant_id: str,
    *,
    exclude: str | None = None,
    live_workers: set[str] | None = None,
    live_batches: set[str] | None = None,
    log=None,
    timeout_s: int = DEFAULT_RUN_TIMEOUT_S,
) -> Holder | None:
    """The oldest live run executing this tenant's backup (orphans are marked failed on the way)."""
    live = []
    for record in executing_runs(instance, tenant_id):
        if record.dagster_run.run_id == exclude:
            continue
        reason = orphan_reason(record, live_workers=live_workers, live_batches=live_batches, timeout_s=timeout_s)
        if reason:
            fail_orphan(instance, record, reason, log=log)
            continue
        live.append(record)
    if not live:
        return None
    oldest = min(live, key=_order)
    return Holder(oldest.dagster_run.run_id, oldest.start_time or oldest.create_timestamp.timestamp())


def _order(record) -> tuple:
    return (record.create_timestamp.timestamp(), record.dagster_run.run_id)


class TenantBusy(Exception):
    """Another live run has the tenant: this one stops before touching anything."""


def claim_tenant(
    instance: DagsterInstance, run_id: str, tenant_id: str, *, log=None, timeout_s: int = DEFAULT_RUN_TIMEOUT_S
) -> None:
    """Called first in every tenant_backup run: returns if this run is the tenant's only live run or
    the oldest of them; otherwise tags it skipped and raises TenantBusy naming the holder."""
    mine = instance.get_run_record_by_id(run_id)
    if mine is None:
        return  # not a stored run (cannot race with anything)
    others = []
    for record in executing_runs(instance, tenant_id):
        if record.dagster_run.run_id == run_id:
            continue
        reason = orphan_reason(record, timeout_s=timeout_s)
        if reason:
            fail_orphan(instance, record, reason, log=log)
            continue
        others.append(record)
    older = [r for r in others if _order(r) < _order(mine)]
    if older:
        holder = min(older, key=_order)
        instance.add_run_tags(run_id, {SKIPPED_TAG: f"in-progress:{holder.dagster_run.run_id}"})
        since = holder.start_time or holder.create_timestamp.timestamp()
        raise TenantBusy(
            f"tenant {tenant_id} is being backed up by {Holder(holder.dagster_run.run_id, since).describe()}:"
            " this run stops without touching anything"
        )
