"""The weekly backup end to end over N sample tenants: every tenant through Dagster, all three
locations (local, loopback R2 and B2 test servers), every check — the code path of the weekly batch
job (backup_assets/defs/automation/weekly_batch.py): one tenant_backup run per tenant, in-process, in workers.

    python bench/weekly.py [--tenants 100] [--rows 20] [--mode batch|per_tenant] [--workers 3]
                           [--kill-after N] [--tuned]

Runs on the demo stack (embedded PostgreSQL for the sample database and Dagster's storage) under
bench/out/weekly; prints wall time, time per tenant, the extrapolation to 1,000 tenants and the peak
memory of the whole process tree (workers, pg_dump, pg_restore, the S3/B2 test doubles; not the
PostgreSQL server). The test doubles run on the same two cores, which real R2 and B2 would not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _peak_rss(stop: threading.Event, peak: list[int]) -> None:
    me = psutil.Process()
    while not stop.wait(0.5):  # sampling costs CPU the measured work needs
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                if proc.name() != "postgres":
                    total += proc.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)


def _busy_cpu_s() -> float:
    """Seconds of CPU the whole machine spent busy (all processes: workers, pg_dump, PostgreSQL, the
    test doubles), from /proc/stat: the figure to compare between two versions, steadier than wall time."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of the long-lived processes by kind; each one's waited-for children (pg_dump,
    pg_restore under a worker; PostgreSQL backends under the postmaster) count with it."""
    out: dict[str, float] = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            t = proc.cpu_times()
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if proc.info["name"] == "postgres":
            kind = "postgres"
        elif "testing.servers s3" in cmd:
            kind = "s3 double"
        elif "testing.servers b2" in cmd:
            kind = "b2 double"
        elif "distributed" in cmd or "multiprocessing" in cmd:
            kind = "workers (+pg_dump, pg_restore)"
        elif "bench/weekly.py" in cmd:
            kind = "driver"
        else:
            continue
        out[kind] = out.get(kind, 0.0) + t.user + t.system + t.children_user + t.children_system
    return out


def _killer(instance, after: int, killed: list, stop: threading.Event) -> None:
    """SIGKILL the worker process inside a tenant's run once `after` tenants are done (what the OOM
    killer does); the run's process is in its tags (defs/runs/guard.py)."""
    from dagster import DagsterRunStatus, RunsFilter

    from backup_assets.defs.runs.guard import PROCESS_TAG

    while not stop.wait(0.2):
        done = instance.get_runs_count(RunsFilter(job_name="tenant_backup", statuses=[DagsterRunStatus.SUCCESS]))
        if done < after:
            continue
        for record in instance.get_run_records(
            RunsFilter(job_name="tenant_backup", statuses=[DagsterRunStatus.STARTED])
        ):
            tag = record.dagster_run.tags.get(PROCESS_TAG)
            if tag:
                os.kill(int(tag.split("/")[1]), signal.SIGKILL)
                killed.append(record.dagster_run.run_id)
                return


def _batch(args, ids) -> tuple[list, list]:
    from dagster import DagsterInstance

    from backup_assets.core.settings import Settings
    from backup_assets.defs.build import build_definitions
    from backup_assets.defs.runs.batch import back_up_tenants

    settings = Settings.from_env()  # the demo stack's environment
    defs = build_definitions(settings)
    killed: list[str] = []
    with DagsterInstance.get() as instance:
        stop = threading.Event()
        if args.kill_after:
            threading.Thread(target=_killer, args=(instance, args.kill_after, killed, stop), daemon=True).start()
        outcomes = back_up_tenants(defs, instance, ids, settings=settings, workers=args.workers or None).outcomes
        stop.set()
    return outcomes, killed


def _per_tenant(args, ids) -> list:
    """The daemon's weekly tick in per_tenant mode (cron every minute): one queued run per tenant,
    launched by the QueuedRunCoordinator, each in its own process; timed from the first run created
    to the last one finished."""
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("tenants", ids)
        deadline = time.monotonic() + 600 + 30 * len(ids)
        while time.monotonic() < deadline:
            records = instance.get_run_records(RunsFilter(job_name="tenant_backup"))
            if len(records) >= len(ids) and all(r.dagster_run.is_finished for r in records):
                break
            time.sleep(2)
        records = instance.get_run_records(RunsFilter(job_name="tenant_backup"))
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rows", type=int, default=20, help="sales per sample tenant")
    parser.add_argument("--mode", choices=("batch", "per_tenant"), default="batch")
    parser.add_argument("--workers", type=int, default=None, help="batch: default as the weekly batch job (cores + 1)")
    parser.add_argument(
        "--kill-after",
        type=int,
        default=0,
        metavar="N",
        help="batch: SIGKILL a worker inside a tenant's run once N tenants are done",
    )
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="Dagster's storage database with synchronous_commit=off (not production's default)",
    )
    args = parser.parse_args()

    from backup_assets.core.settings import Settings
    from backup_assets.core.source.tenants import list_tenants
    from backup_assets.demo import DemoStack
    from backup_assets.sample.generate import add_tenants

    directory = ROOT / "bench" / "out" / "weekly"
    shutil.rmtree(directory, ignore_errors=True)
    t0 = time.monotonic()
    populate = lambda db: add_tenants(db, args.tenants, rows=args.rows)  # noqa: E731
    if args.mode == "per_tenant":
        from backup_assets.testing.dagster_stack import DagsterStack

        stack = DagsterStack(
            directory,
            active=args.tenants,
            suspended=0,
            rows=args.rows,
            extra_env={"TENANT_BACKUP_WEEKLY_MODE": "per_tenant", "TENANT_BACKUP_CRON": "* * * * *"},
        ).start(tuned_storage=args.tuned)
    else:
        stack = DemoStack(directory, populate=populate, server_processes=True, tuned_storage=args.tuned)
    print(f"stack with {args.tenants} tenants ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    ids = list_tenants(Settings.from_env().source)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_peak_rss, args=(stop, peak), daemon=True)
    sampler.start()
    started, cpu_started, kinds_started = time.monotonic(), _busy_cpu_s(), _cpu_by_kind()
    killed: list[str] = []
    try:
        if args.mode == "batch":
            outcomes, killed = _batch(args, ids)
            wall = time.monotonic() - started
            ok = sum(o.ok for o in outcomes)
            done_tenants = {o.tenant_id for o in outcomes if o.ok}
        else:
            records = _per_tenant(args, ids)
            starts = [r.create_timestamp.timestamp() for r in records]
            ends = [r.end_time for r in records if r.end_time]
            wall = max(ends) - min(starts)
            ok = sum(r.dagster_run.status.value == "SUCCESS" for r in records)
            done_tenants = {
                r.dagster_run.tags.get("dagster/partition") for r in records if r.dagster_run.status.value == "SUCCESS"
            }
        cpu = _busy_cpu_s() - cpu_started
        kinds = {k: v - kinds_started.get(k, 0.0) for k, v in _cpu_by_kind().items()}
    finally:
        stop.set()
        sampler.join()
        stack.stop()
    n = len(ids)
    workers = (
        f"workers: {args.workers or Settings.from_env().workers}" if args.mode == "batch" else "one process per run"
    )
    print(
        f"mode: {args.mode}, Dagster storage: {'TUNED (synchronous_commit=off)' if args.tuned else 'default settings'}"
    )
    print(
        f"tenants: {n} ({ok} runs with every asset and check passing; {len(done_tenants)} tenants backed up), {workers}"
    )
    if killed:
        print(f"killed with SIGKILL mid-run: the worker inside run {killed[0]}")
    print(f"wall: {wall:.1f}s, per tenant: {wall / n:.2f}s, 1,000 tenants at this rate: {wall / n * 1000 / 60:.1f} min")
    print(
        f"CPU, whole machine: {cpu:.1f}s busy ({cpu / max(wall, 1e-9):.2f} of {os.cpu_count()} cores), "
        f"{cpu / n:.2f}s per tenant; of which "
        + ", ".join(f"{k} {v / n:.2f}s" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    )
    print(f"peak RSS of the process tree (PostgreSQL server excluded): {peak[0] / 1e6:.0f} MB")
    return 0 if len(done_tenants) == n else 1


if __name__ == "__main__":
    sys.exit(main())
