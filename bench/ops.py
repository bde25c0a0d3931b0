"""Operations at many tenants (issue 23): status, list, prune --dry-run, verify --all --subset 1/28 and
the staleness sensor's read, at N tenants x K stored backups each, in three locations (local disk, the
loopback S3 server for R2 and the b2sdk-backed B2 server, each double in a process of its own), with
the requests each cloud location served and the peak memory of the process that ran each operation.

    python bench/ops.py [--tenants 1000 10000] [--backups 3] [--workers 16] [--writers 4] [--registry 10000]
                        [--skip rebuild_index,...]
    python bench/ops.py --tenants 10000 --hold   # then, after a change of the read path:
    python bench/ops.py --attach bench/out/ops/ops-N-*/state.json --ops status,sensor,list,prune_dry_run

The backups: `backup_assets/testing/backups.py make_backup` — for every (tenant, backup id) its own
archive of the real format (a header naming that tenant and backup id, a fresh data key wrapped by the
keyring, zstd, AES-256-GCM) and a sealed manifest describing it, stored through the configured
locations (so the index hook runs as in production). Every object passes verify (checksum) and
decrypts; the payload is a stand-in of a dump (tenants without rows), not pg_dump output, so
`verify --deep` is not measured here. Backups are 0, 7, 14… days old: nothing is past retention, so
prune --dry-run measures planning (what it reads), not deletion.

The backups are stored by `--writers` processes at once (each every n-th tenant, with its own
storage clients: one process's GIL was the limit). `--attach` measures operations again against the
doubles of a scale still up (`--hold`: the driver keeps them up after measuring, until SIGTERM), e.g.
after a change of the read path, without storing everything again; `python <another checkout>/bench/ops.py
--attach` measures that checkout's code against the same doubles (interleave the two for a comparison).

Each operation runs in a process of its own (its peak RSS is that process's VmHWM; the baseline, a
process doing nothing, is printed beside it: the imports' share), with its wall clock, its CPU seconds
and the doubles' CPU seconds meanwhile (on a shared, loaded machine the wall clock is mostly the wait
for a core; the CPU seconds are what the operation costs). Request counts come from the servers
(S3: GET /__checksums__ "requests"; B2: GET /__requests__). `--registry N` also measures adding N new
tenant partitions in one registry-sensor tick on a PostgreSQL-backed Dagster instance: the sensor's
batched add vs the daemon's per-key check it replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backup_assets.core.codec.keyring import Keyring, generate_entry  # noqa: E402
from backup_assets.core.locations import locations_from_env  # noqa: E402
from backup_assets.core.locations.index import read_many  # noqa: E402
from backup_assets.core.locations.index_compact import compact  # noqa: E402
from backup_assets.testing.backups import backup_id_at, make_backup  # noqa: E402
from backup_assets.testing.location_doubles import LocationDoubles  # noqa: E402

OUT = ROOT / "bench" / "out" / "ops"


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def requests_served(env: dict) -> dict[str, int]:
    return {
        "r2": _json(env["R2_ENDPOINT_URL"] + "/__checksums__")["requests"],
        "b2": _json(env["B2_REALM"] + "/__requests__")["requests"],
    }  # a location not in --locations serves none


def run_op(op: str, state: Path) -> tuple[object, float, float]:
    """(result, seconds, peak RSS MiB) of operation `op`, run in a fresh process of its own (this
    script with --op; a fork of a process holding storage clients' threads can deadlock)."""
    proc = subprocess.Popen([sys.executable, __file__, "--op", op, "--state", str(state)], stdout=subprocess.PIPE)
    data = proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{op} failed (exit {proc.returncode})")
    result = json.loads(data)
    run_op.cpu_s = result["ok"].get("cpu_s")
    return result["ok"]["value"], result["seconds"], result["ok"]["vmhwm_mib"]


def populate(
    locs, keyring, items, ages: list[int], workers, tmp: Path, *, verified: bool = False, now: datetime | None = None
) -> float:
    """Store, for every (n, tenant) of `items`, one backup per age (days) in every location, through
    the configured locations (the index hook runs); `verified`: also record a verification of each
    copy, as the backup's copy checks do (one more index entry per copy). n fixes the backup's id and
    time, so shards stored by different processes make the same backups one process would."""
    now = now or datetime.now(timezone.utc)
    started = time.perf_counter()

    def one(item):
        n, tenant = item
        path = tmp / f"{n}.tbk"
        for age in ages:
            created = now - timedelta(days=age, minutes=n % 600)
            backup = backup_id_at(created, n * 64 + age)
            manifest = make_backup(keyring, tenant, backup, created, path)
            for loc in locs.values():
                loc.put(tenant, backup, path, manifest)
                if verified:
                    record = {"sha256": manifest.stated_checksum()[0], "ok": True, "deep": False}
                    loc.put_verified(tenant, backup, {**record, "verified_at": now.isoformat(), "by": "bench"})
        path.unlink(missing_ok=True)

    done = [0]

    def progress(_):
        done[0] += 1
        if done[0] % 1000 == 0:
            print(f"  {done[0]} tenants stored in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    read_many(one, list(items), workers=workers, progress=progress)
    return time.perf_counter() - started


def store(state: Path, ages: list[int], writers: int, *, verified: bool = False) -> float:
    """populate() by `writers` processes at once, each storing every writers-th tenant with its own
    storage clients (one process's GIL, not the doubles, was what limited storing)."""
    now = datetime.now(timezone.utc).isoformat()
    started = time.perf_counter()
    spec = json.dumps({"ages": ages, "verified": verified, "now": now, "writers": writers})
    procs = [
        subprocess.Popen([sys.executable, __file__, "--store", spec, "--shard", str(i), "--state", str(state)])
        for i in range(writers)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"a writer failed (exit codes {codes})")
    return time.perf_counter() - started


def store_child(spec: str, shard: int, state_path: Path) -> int:
    spec_ = json.loads(spec)
    state = json.loads(state_path.read_text())
    locs = locations_from_env(state["locations"], state["env"])
    keyring = Keyring.parse(state["env"]["TENANT_BACKUP_KEYS"])
    tenants = json.loads(Path(state["tenants"]).read_text())
    items = list(enumerate(tenants))[shard :: spec_["writers"]]
    tmp = Path(state["tenants"]).parent / f"writer-{shard}"
    tmp.mkdir(exist_ok=True)
    workers = max(4, state["workers"] // spec_["writers"])
    now = datetime.fromisoformat(spec_["now"])
    populate(locs, keyring, items, spec_["ages"], workers, tmp, verified=spec_["verified"], now=now)
    return 0


# ------------------------------------------------------------------------------------------ the ops


def _status_counts(report) -> dict:
    return {"stale": len(report.stale), "unknown": len(report.unknown), "copies": len(report.copies)}


def op_status(locs, keyring, tenants, workers, *, sensor: bool = False):
    from backup_assets.core.maintenance.index_status import SENSOR_SCAN_LIMIT, gather_indexed

    scan = {"scan_up_to": SENSOR_SCAN_LIMIT, "missing": False} if sensor else {}  # as the sensor reads
    out = gather_indexed(tenants, locs, keyring=keyring, max_age_days=8, **scan)
    return {**_status_counts(out.report), "scanned": out.scanned}


def op_old_status(locs, keyring, tenants, workers):
    from backup_assets.core.maintenance.status import gather

    return _status_counts(gather(tenants, locs, keyring=keyring, max_age_days=8))


def op_list(locs, keyring, tenants, workers):
    from backup_assets.core.maintenance.catalog import collect

    entries, errors = collect(locs, keyring=keyring)
    return {"backups": len(entries), "errors": len(errors)}


def op_prune(locs, keyring, tenants, workers):
    from backup_assets.core.maintenance.retention import prune_location

    # as `tenant-backup prune` does: every location at once
    done = read_many(lambda loc: prune_location(loc, keyring=keyring, keep_min=2, dry_run=True), list(locs.values()))
    reports = dict(zip(locs, done, strict=True))
    return {n: {"would_delete": len(r.deleted), "errors": len(r.errors)} for n, r in reports.items()}


def op_verify(locs, keyring, tenants, workers):
    from backup_assets.core.maintenance.catalog import share_of
    from backup_assets.core.maintenance.copy_check import verify_copy

    selected = [
        (loc, r) for name, loc in locs.items() for r in loc.list() if share_of(name, r.tenant_id, r.backup_id, 28) == 0
    ]
    checks = read_many(
        lambda item: verify_copy(item[0], item[1].tenant_id, item[1].backup_id, keyring=keyring, record="bench"),
        selected,
        workers=4,
    )
    return {"copies": len(checks), "bad": sum(1 for c in checks if not c.ok)}


def op_compact(locs, keyring, tenants, workers, *, full: bool = False):
    return [compact(loc, keyring, full=full, workers=workers).line() for loc in locs.values()]


OPS = {
    "noop": lambda *a: "-",
    "status": op_status,
    "sensor": lambda *a: op_status(*a, sensor=True),
    "status_old_scan": op_old_status,
    "list": op_list,
    "prune_dry_run": op_prune,
    "verify_subset": op_verify,
    "index_job": op_compact,
    "rebuild_index": lambda *a: op_compact(*a, full=True),
}


def child(op: str, state_path: Path) -> int:
    state = json.loads(state_path.read_text())
    locs = locations_from_env(state["locations"], state["env"])
    keyring = Keyring.parse(state["env"]["TENANT_BACKUP_KEYS"])
    tenants = json.loads(Path(state["tenants"]).read_text())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime  # the imports and the clients' set-up excluded, as from the wall clock
    started = time.perf_counter()
    result = OPS[op](locs, keyring, tenants, state["workers"])
    seconds = time.perf_counter() - started
    # VmHWM: this address space's peak RSS (ru_maxrss would include the parent's pages before exec).
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    peak = int(hwm.split()[1])
    # CPU seconds of this process (user + system): on a loaded machine the wall clock mostly says how
    # long the process waited for a core; this says what it cost (the doubles' CPU not included).
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = round(usage.ru_utime + usage.ru_stime - cpu_before, 2)
    print(f"    ({op}: {cpu} CPU s in {seconds:.2f} s)", file=sys.stderr)
    ok = {"value": result, "vmhwm_mib": round(peak / 1024, 1), "cpu_s": cpu}
    print(json.dumps({"ok": ok, "seconds": seconds}, default=str))
    return 0


def measure_op(figures: dict, env: dict, state: Path, label: str, op: str, skip=()) -> None:
    """Run `op` in a process of its own; figures[label]: its seconds, peak RSS and requests served."""
    if op in skip:
        figures[label] = "not measured (--skip)"
        print(f"  {label:34} skipped", file=sys.stderr)
        return
    pids = json.loads(state.read_text()).get("server_pids", {})
    before, cpu_before = requests_served(env), {k: cpu_of(pid) for k, pid in pids.items()}
    result, seconds, rss = run_op(op, state)
    after = requests_served(env)
    requests = {k: after[k] - before[k] for k in after}
    servers_cpu = {k: round(cpu_of(pid) - cpu_before[k], 2) for k, pid in pids.items()}
    figures[label] = {"seconds": round(seconds, 2), "cpu_s": run_op.cpu_s, "peak_rss_mib": round(rss, 1)}
    figures[label]["requests"] = requests
    figures[label]["servers_cpu_s"] = servers_cpu
    figures[label]["result"] = result
    print(
        f"  {label:34} {seconds:7.2f} s (CPU {run_op.cpu_s} s; doubles {servers_cpu}) {rss:6.0f} MiB"
        f"  requests {requests}  {result}",
        file=sys.stderr,
    )


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def attach(state: Path, ops: list[str]) -> dict:
    """Measure `ops` again against the doubles of a run still up (its state.json): e.g. after a code
    change, without storing everything again. Its results go to results-attached.json beside it."""
    env = json.loads(state.read_text())["env"]
    figures: dict = {"state": str(state)}
    for op in ops:
        measure_op(figures, env, state, op, op)
    out = state.parent / "results-attached.json"
    previous = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*previous, figures], indent=2, default=str))
    return figures


def hold(state: Path) -> None:
    """Keep the doubles up for `--attach` until SIGTERM or SIGINT (then they are stopped as usual)."""
    import signal

    def stop(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"holding the doubles for --attach {state}; SIGTERM {os.getpid()} to stop them", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def run_scale(
    n: int, backups: int, workers: int, names: list[str], writers: int = 4, skip=(), keep: bool = False
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"ops-{n}-", dir=OUT))
    doubles = LocationDoubles("ops", processes=True)
    try:
        keys = generate_entry("bench")
        env = {**doubles.env, "TENANT_BACKUP_KEYS": keys, "TENANT_BACKUP_LOCAL_DIR": str(tmp / "local")}
        tenants = [str(uuid.UUID(int=(i + 1) * 0x9E3779B97F4A7C15 % (1 << 128))) for i in range(n)]
        (tmp / "tenants.json").write_text(json.dumps(tenants))
        state = tmp / "state.json"
        state.write_text(
            json.dumps(
                {
                    "env": env,
                    "tenants": str(tmp / "tenants.json"),
                    "workers": workers,
                    "locations": names,
                    "server_pids": {k: p.pid for k, p in zip(("r2", "b2"), doubles.processes, strict=True)},
                }
            )
        )
        figures: dict = {"tenants": n, "backups_per_tenant": backups, "locations": names}

        def measure(label, op):
            measure_op(figures, env, state, label, op, skip)

        print(f"{n} tenants x {backups} backups x {names}: storing the older ones…", file=sys.stderr)
        figures["writers"] = writers
        figures["store_older_s"] = round(store(state, [7 * j for j in range(1, backups)], writers), 1)
        measure("noop (baseline process)", "noop")
        measure("index job, first (reconcile)", "index_job")
        print("  … and this week's backup with its verification (as a weekly run leaves them)", file=sys.stderr)
        figures["store_week_s"] = round(store(state, [0], writers, verified=True), 1)
        measure("status (a week's log entries)", "status")
        measure("sensor read (idem)", "sensor")
        measure("index job (compact + reconcile)", "index_job")
        measure("status", "status")
        measure("sensor read", "sensor")
        measure("list", "list")
        measure("prune --dry-run", "prune_dry_run")
        measure("verify --all --subset 1/28", "verify_subset")
        measure("rebuild --index", "rebuild_index")
        if n <= 1000:  # before the index: a manifest and a verified.json per tenant and location
            measure("status, the old scan", "status_old_scan")
        if keep:
            (OUT / f"results-{n}.json").write_text(json.dumps(figures, indent=2, default=str))
            hold(state)
        return figures
    finally:
        doubles.stop()
        for proc in doubles.processes:
            proc.terminate()


def registry_sync(n: int) -> dict:
    """Adding n new partitions: the daemon's per-key check (what a request did) vs the sensor's batches."""
    from dagster import DagsterInstance

    from backup_assets.core.embedded_pg import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="ops-registry-", dir=OUT))
    server = start_embedded(tmp / "pg")
    try:
        import psycopg2

        conn = psycopg2.connect(server.admin_dsn())
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE dagster")
        conn.close()
        socket_dir = server.socket_dir
        (tmp / "home").mkdir()
        url = f"postgresql+psycopg2://postgres@/dagster?host={socket_dir}"
        (tmp / "home" / "dagster.yaml").write_text(f'storage:\n  postgres:\n    postgres_url: "{url}"\n')
        out = {}
        with DagsterInstance.from_config(str(tmp / "home")) as instance:
            keys = [str(uuid.uuid4()) for _ in range(n)]
            started = time.perf_counter()
            for start in range(0, n, 1000):
                instance.add_dynamic_partitions("tenants", keys[start : start + 1000])
            out["batched_add_s"] = round(time.perf_counter() - started, 2)
            others = [str(uuid.uuid4()) for _ in range(min(n, 2000))]
            started = time.perf_counter()
            missing = [k for k in others if not instance.has_dynamic_partition("tenants", k)]
            instance.add_dynamic_partitions("tenants", missing)
            per_key = (time.perf_counter() - started) / len(others)
            out["per_key_check_ms"] = round(per_key * 1000, 2)
            out[f"per_key_check_{n}_s"] = round(per_key * n, 1)
        print(f"  registry sync, {n} new partitions: {out}")
        return out
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--backups", type=int, default=3)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument(
        "--locations",
        default="local,r2,b2",
        help="which of local,r2,b2 (the B2 simulator slows with every file it holds)",
    )
    parser.add_argument("--registry", type=int, default=10000)
    parser.add_argument("--writers", type=int, default=4, help="processes storing the backups at once")
    parser.add_argument("--skip", default="", help="operations not to measure, e.g. verify_subset,rebuild_index")
    parser.add_argument(
        "--hold", action="store_true", help="after measuring, keep the doubles up for --attach until SIGTERM"
    )
    parser.add_argument("--attach", type=Path, help="a running scale's state.json: measure --ops against it")
    parser.add_argument("--ops", default="status,sensor,list,prune_dry_run", help="with --attach")
    parser.add_argument("--store", help=argparse.SUPPRESS)  # one writer of store(), in its own process
    parser.add_argument("--shard", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--op", choices=sorted(OPS), help=argparse.SUPPRESS)  # one operation, in its own process
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.op:
        return child(args.op, args.state)
    if args.store:
        return store_child(args.store, args.shard, args.state)
    if args.attach:
        print(json.dumps(attach(args.attach, args.ops.split(",")), indent=2, default=str))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"registry": registry_sync(args.registry) if args.registry else None, "scales": []}
    for n in args.tenants:
        results["scales"].append(
            run_scale(
                n, args.backups, args.workers, args.locations.split(","), args.writers, args.skip.split(","), args.hold
            )
        )
        (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    print(
        f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
