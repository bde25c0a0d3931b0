"""The weekly backup end to end over N sample tenants: every tenant through Dagster, all three
locations (local, loopback R2 and B2 test servers), every check — the code path of the weekly batch
job (backup_assets/defs/automation/weekly_batch.py): one tenant_backup run per tenant, in-process, in workers.

    python bench/weekly.py [--tenants 100] [--rows 20] [--mode batch|per_tenant] [--workers 3]
                           [--repeat 3] [--kill-after N] [--tuned]

Beside every batch, in the same process and interleaved with it (floor, batch, floor, batch, ...),
the floor: a raw `pg_dump -Fc` of the same tenants as the backup role (the tenant's setting in its
options, row security on), two at a time, to files. Every figure is printed as a ratio to the floor
of its own round; the medians come with every run.

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
import statistics
import subprocess
import sys
import tempfile
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


def _hold(directory: Path) -> None:
    """Hold `<directory>.lock` for this process's life; exit if another bench holds it."""
    import fcntl

    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = open(directory.with_name(directory.name + ".lock"), "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another bench/weekly.py is using {directory}: pass --out DIR")
    _hold.lock = lock


def _floor(ids: list[str], parallel: int = 2) -> float:
    """Seconds for `pg_dump -Fc` of every tenant as the backup role, `parallel` at a time: the floor."""
    from concurrent.futures import ThreadPoolExecutor

    from backup_assets.core.settings import Settings
    from backup_assets.core.source import pgbin
    from backup_assets.core.source.session import PgSession

    source = Settings.from_env().source
    with PgSession.from_dsn(source.dsn).connect() as conn:
        pg_dump = pgbin.for_dump(conn.server_version).program("pg_dump")
    with tempfile.TemporaryDirectory(prefix="floor-") as out:

        def dump(tenant_id: str) -> None:
            session = PgSession.from_dsn(source.dsn, {source.tenant_setting: tenant_id})
            argv = [pg_dump, "-Fc", "--enable-row-security", f"--file={out}/{tenant_id}.dump"]
            subprocess.run([*argv, f"--dbname={session.conninfo()}"], env=session.child_env(), check=True)

        started = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(dump, ids))
        return time.monotonic() - started


def _rss(pids) -> dict[int, int]:
    """Each process's RSS, by pid."""
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return out


def _workers() -> list[int]:
    """The Dask worker processes of this driver (its nannies' spawned children)."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(proc.pid)
    return out


def _busy_cpu_s() -> float:
    """Seconds of CPU the whole machine spent busy (all processes: workers, pg_dump, PostgreSQL, the
    test doubles), from /proc/stat: the figure to compare between two versions, steadier than wall time."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_by_kind(directory: Path) -> dict[str, float]:
    """CPU seconds so far of this bench's own processes by kind, children that were waited for
    included (pg_dump, pg_restore and the Dask workers once closed count with the driver; exited
    PostgreSQL backends with their postmaster). Only our PostgreSQL (its data under `directory`):
    other engineers' servers on the machine are not counted."""

    def total(proc) -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    out: dict[str, float] = {}
    me = psutil.Process()
    out["driver + workers (+pg_dump, pg_restore)"] = total(me)
    seen = {me.pid}
    for proc in me.children(recursive=True):
        seen.add(proc.pid)
        try:
            cmd = " ".join(proc.cmdline())
            kind = (
                "s3 double"
                if "testing.servers s3" in cmd
                else "b2 double"
                if "testing.servers b2" in cmd
                else "postgres"
                if proc.name() == "postgres"
                else "driver + workers (+pg_dump, pg_restore)"
            )
            out[kind] = out.get(kind, 0.0) + total(proc)
        except psutil.Error:
            continue
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.pid in seen or proc.info["name"] != "postgres":
                continue
            if str(directory) in " ".join(proc.info["cmdline"] or []):
                out["postgres"] = out.get("postgres", 0.0) + total(proc)
                for child in proc.children():
                    if child.pid not in seen:
                        out["postgres"] += total(child)
        except psutil.Error:
            continue
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


def _batch(args, ids) -> tuple[list, list, dict]:
    from dagster import DagsterInstance

    from backup_assets.core.settings import Settings
    from backup_assets.defs.build import build_definitions
    from backup_assets.defs.runs.batch import back_up_tenants

    settings = Settings.from_env()  # the demo stack's environment
    defs = build_definitions(settings)
    killed: list[str] = []
    memory: dict[int, dict[int, int]] = {}  # tenants done -> each worker's RSS then (by pid)

    def progress(index, total, outcome):
        if index in (min(100, total), total) or index % 250 == 0:
            memory[index] = _rss(_workers())

    with DagsterInstance.get() as instance:
        stop = threading.Event()
        if args.kill_after:
            threading.Thread(target=_killer, args=(instance, args.kill_after, killed, stop), daemon=True).start()
        outcomes = back_up_tenants(
            defs, instance, ids, settings=settings, workers=args.workers or None, progress=progress
        ).outcomes
        stop.set()
    return outcomes, killed, memory


def _backfill(stack, ids) -> dict:
    """A backfill of every asset of every tenant partition, launched through GraphQL as the UI's
    "Materialize all partitions" does (run config and executor: the job's defaults), executed by the
    daemon; timed from the launch to its last run finished."""
    from backup_assets.testing.dagster_stack import ASSETS

    stack.add_partitions([t for t in ids if t not in _partitions()])
    started = time.monotonic()
    backfill_id = stack.launch_backfill(list(ASSETS), ids)
    done = stack.wait_for_backfill(backfill_id, timeout=3600)
    wall = time.monotonic() - started
    latest = {asset: stack.materialized_partitions(asset) for asset in ASSETS}
    run_ids = {r["runId"] for r in done["runs"]}
    ok = sum(all(any(e["runId"] in run_ids for e in latest[asset].get(t, [])) for asset in ASSETS) for t in ids)
    return {"wall": wall, "runs": len(done["runs"]), "ok": ok}


def _partitions() -> set[str]:
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        return set(instance.get_dynamic_partitions("tenants"))


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


def _driver_peak(stop: threading.Event, peak: list[int]) -> None:
    me = psutil.Process()
    while not stop.wait(0.5):
        peak[0] = max(peak[0], me.memory_info().rss)


def _worst_growth(memory: dict[int, dict[int, int]]) -> float | None:
    """The largest relative growth of one worker's RSS between the first and the last sample (workers
    present in both: a restarted worker has a new pid)."""
    first, last = memory[min(memory)], memory[max(memory)]
    ratios = [last[pid] / first[pid] - 1 for pid in first if pid in last]
    return max(ratios) if ratios else None


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [" + ", ".join(f"{v:.2f}" for v in values) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rows", type=int, default=20, help="sales per sample tenant")
    parser.add_argument(
        "--mode",
        choices=("batch", "per_tenant", "backfill"),
        default="batch",
        help="backfill: on a stack with dagster-webserver and dagster-daemon, each round is the floor, the"
        " batch, and a backfill of every partition launched through GraphQL as the UI does",
    )
    parser.add_argument("--workers", type=int, default=None, help="batch: default as the weekly batch job (cores + 1)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (floor, batch), interleaved")
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
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "out" / "weekly",
        help="the stack's directory, emptied first (default bench/out/weekly); one bench per directory",
    )
    args = parser.parse_args()
    what = "per_tenant" if args.mode == "per_tenant" else "batch"  # the backfill mode's rounds time a batch too

    from backup_assets.core.settings import Settings
    from backup_assets.core.source.tenants import list_tenants
    from backup_assets.demo import DemoStack
    from backup_assets.sample.generate import add_tenants

    directory = args.out.resolve()
    _hold(directory)  # before emptying it: another bench's stack may live there
    shutil.rmtree(directory, ignore_errors=True)
    t0 = time.monotonic()
    populate = lambda db: add_tenants(db, args.tenants, rows=args.rows)  # noqa: E731
    if args.mode == "backfill":
        from backup_assets.testing.dagster_stack import DagsterStack

        workers = str(args.workers or (os.cpu_count() or 1) + 1)  # the weekly batch's default, not the stack's 2
        stack = DagsterStack(
            directory,
            active=args.tenants,
            suspended=0,
            rows=args.rows,
            extra_env={"TENANT_BACKUP_WORKERS": workers, "TENANT_BACKUP_RETRIES": "3"},
        ).start(tuned_storage=args.tuned)
    elif args.mode == "per_tenant":
        from backup_assets.testing.dagster_stack import DagsterStack

        args.repeat = 1
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
    n = len(ids)
    stop, peak, driver = threading.Event(), [0], [0]
    threading.Thread(target=_peak_rss, args=(stop, peak), daemon=True).start()
    threading.Thread(target=_driver_peak, args=(stop, driver), daemon=True).start()
    rounds: list[dict] = []
    missing = 0
    try:
        for index in range(args.repeat):
            floor_cpu_started = sum(_cpu_by_kind(directory).values())
            floor = _floor(ids)
            floor_cpu = sum(_cpu_by_kind(directory).values()) - floor_cpu_started
            print(f"round {index + 1}: floor {floor:.1f}s", file=sys.stderr)
            started, cpu_started, kinds_started = time.monotonic(), _busy_cpu_s(), _cpu_by_kind(directory)
            killed: list[str] = []
            memory: dict[int, int] = {}
            backfill = None
            if args.mode == "backfill":
                outcomes, killed, memory = _batch(args, ids)
                wall = time.monotonic() - started
                ok = sum(o.ok for o in outcomes)
                done_tenants = {o.tenant_id for o in outcomes if o.ok}
                # The batch's CPU, before the backfill's: the ratios below are the batch's.
                cpu = _busy_cpu_s() - cpu_started
                kinds = {k: v - kinds_started.get(k, 0.0) for k, v in _cpu_by_kind(directory).items()}
                backfill = _backfill(stack, ids)
                print(
                    f"round {index + 1}: backfill {backfill['wall']:.1f}s in {backfill['runs']} runs", file=sys.stderr
                )
                missing += n - backfill["ok"]
            elif args.mode == "batch":
                outcomes, killed, memory = _batch(args, ids)
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
                    r.dagster_run.tags.get(PARTITION) for r in records if r.dagster_run.status.value == "SUCCESS"
                }
            if backfill is None:
                cpu = _busy_cpu_s() - cpu_started
                kinds = {k: v - kinds_started.get(k, 0.0) for k, v in _cpu_by_kind(directory).items()}
            missing += n - len(done_tenants)
            rounds.append(
                dict(
                    backfill=backfill,
                    floor=floor,
                    floor_cpu=floor_cpu,
                    wall=wall,
                    cpu=cpu,
                    kinds=kinds,
                    ok=ok,
                    killed=killed,
                    memory=memory,
                )
            )
            print(f"round {index + 1}: {what} {wall:.1f}s ({wall / floor:.2f}x floor)", file=sys.stderr)
    finally:
        stop.set()
        stack.stop()
    workers = (
        f"workers: {args.workers or Settings.from_env().workers}"
        if args.mode != "per_tenant"
        else "one process per run"
    )
    storage = "TUNED (synchronous_commit=off)" if args.tuned else "default settings"
    print(f"mode: {args.mode}, Dagster storage: {storage}, {workers}, tenants: {n}, rounds: {len(rounds)}")
    for index, r in enumerate(rounds, 1):
        print(
            f"round {index}: floor {r['floor']:.1f}s, {what} {r['wall']:.1f}s = {r['wall'] / r['floor']:.2f}x floor"
            f" ({r['ok']} of {n} runs with every asset and check passing); CPU {r['cpu']:.1f}s busy"
            f" ({r['cpu'] / max(r['wall'], 1e-9):.2f} of {os.cpu_count()} cores), per tenant "
            + ", ".join(f"{k} {v / n:.3f}s" for k, v in sorted(r["kinds"].items(), key=lambda kv: -kv[1]))
        )
        if r["killed"]:
            print(f"  killed with SIGKILL mid-run: the worker inside run {r['killed'][0]}")
        if r["memory"]:
            print(
                "  workers' RSS after N tenants (sum): "
                + ", ".join(f"{k}: {sum(v.values()) / 1e6:.0f} MB" for k, v in r["memory"].items())
            )
            first, last = min(r["memory"]), max(r["memory"])
            for pid in sorted(r["memory"][first]):
                before, after = r["memory"][first][pid], r["memory"][last].get(pid)
                print(
                    f"  worker {pid}: RSS after {first} tenants {before / 1e6:.0f} MB, after {last}"
                    + (f" {after / 1e6:.0f} MB (ratio {after / before:.3f})" if after else " gone (restarted)")
                )
    if args.mode == "backfill":
        for index, r in enumerate(rounds, 1):
            b = r["backfill"]
            print(
                f"round {index}: GraphQL backfill of every partition {b['wall']:.1f}s in {b['runs']} runs"
                f" ({b['ok']} of {n} tenants with every asset and check), {b['wall'] / r['floor']:.2f}x floor,"
                f" {b['wall'] / r['wall']:.2f}x the batch"
            )
        print(f"RATIO backfill / floor (median [all]): {_med([r['backfill']['wall'] / r['floor'] for r in rounds])}")
        print(f"RATIO backfill / batch (median [all]): {_med([r['backfill']['wall'] / r['wall'] for r in rounds])}")
    ratios = [r["wall"] / r["floor"] for r in rounds]
    walls = [r["wall"] for r in rounds]
    print(f"floor s (median [all]): {_med([r['floor'] for r in rounds])}")
    print(f"{what} s (median [all]): {_med(walls)}; per tenant {statistics.median(walls) / n:.3f}s")
    print(f"RATIO {what} / floor (median [all]): {_med(ratios)}")
    own = [sum(r["kinds"].values()) / max(r["floor_cpu"], 1e-9) for r in rounds]
    print(
        "CPU of this bench's own processes (ours and our PostgreSQL; not the other load on the machine),"
        f" {what} / floor (median [all]): {_med(own)}"
    )
    # Issue 23: a worker's memory after 1,000 tenants within 10 % of after 100 — per worker, the largest growth.
    growth = [_worst_growth(r["memory"]) for r in rounds if len(r["memory"]) > 1]
    growth = [g for g in growth if g is not None]
    if growth:
        print(
            f"largest growth of one worker's RSS from {min(rounds[0]['memory'])} to {n} tenants: "
            + _med([g * 100 for g in growth])
            + " %"
        )
    print(f"peak RSS: driver {driver[0] / 1e6:.0f} MB; process tree (PostgreSQL excluded) {peak[0] / 1e6:.0f} MB")
    print(f"tenants not backed up with every check passing, over all rounds: {missing}")
    return 0 if missing == 0 else 1


PARTITION = "dagster/partition"

if __name__ == "__main__":
    sys.exit(main())
