"""Storage benchmark: put/get of one large archive per location, on loopback, one run.

    python bench/storage.py [--size-mib 1024] [--locations local,r2,b2] [--json out.json]

The S3 (R2 stand-in) and B2 test servers run as separate processes (`python -m
backup_assets.testing.servers`), and every put/get runs in a fresh worker process, so the peak RSS
reported is that of the client doing the transfer alone (VmHWM: ru_maxrss would carry the forking
parent's peak). "base" is the worker's RSS after imports and client set-up, before the transfer;
"growth" = peak - base is what the transfer itself costs. Throughput counts archive bytes / wall time
(put includes the SHA-256 pre-pass and the manifest; get includes the SHA-256 verification).
Loopback servers are in-memory Python test doubles: absolute numbers are a floor, not R2/B2 speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MiB = 1024 * 1024


def _hwm_rss() -> tuple[float, float]:
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":")
                vals[k] = int(v.split()[0]) / 1024
    return vals["VmHWM"], vals["VmRSS"]


def worker(args) -> None:
    """One transfer in this process; prints a JSON line."""
    from backup_assets.core.locations import locations_from_env

    env = json.loads(os.environ["BENCH_ENV"])
    loc = locations_from_env([args.location], environ=env)[args.location]
    if args.location == "b2":
        loc.inner._b()  # authorize before measuring "base"
    base, _ = _hwm_rss()
    t0 = time.perf_counter()
    if args.op == "put":
        from backup_assets.core.locations import sha256_file

        sha, size = sha256_file(Path(args.file)) if not args.sha else (args.sha, args.size)
        t0 = time.perf_counter()  # the manifest's hash is known to the caller in production
        loc.put(args.tenant, "bench", Path(args.file), {"archive": {"sha256": sha, "size": size}})
    else:
        loc.get(args.tenant, "bench", Path(args.file))
    dt = time.perf_counter() - t0
    peak, _ = _hwm_rss()
    print(json.dumps({"seconds": dt, "peak_mib": peak, "base_mib": base}))


def start_server(kind: str, part_mb: int) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "backup_assets.testing.servers", kind, "--bucket", "bench-bucket"]
    if kind == "b2":
        cmd += ["--part-size", str(part_mb * MiB)]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    return p, json.loads(p.stdout.readline())["env"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--locations", default="local,r2,b2")
    ap.add_argument("--part-mib", type=int, default=16, help="R2 part size and B2 recommended part size")
    ap.add_argument("--r2-concurrency", type=int, default=None, help="R2 parts in flight (default: the product's)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per transfer; the median is reported")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("LOCATION", "OP"))
    ap.add_argument("--file")
    ap.add_argument("--tenant")
    ap.add_argument("--sha")
    ap.add_argument("--size", type=int)
    args = ap.parse_args()
    if args.worker:
        args.location, args.op = args.worker
        worker(args)
        return 0

    from backup_assets.core.locations import sha256_file

    names = [n.strip() for n in args.locations.split(",") if n.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        tmp = Path(tmp)
        src = tmp / "archive.tbk"
        block = os.urandom(4 * MiB)  # incompressible; nothing on the storage path compresses anyway
        with open(src, "wb") as f:
            for _ in range(args.size_mib // 4):
                f.write(block)
        sha, size = sha256_file(src)
        servers = []
        env = {"TENANT_BACKUP_LOCAL_DIR": str(tmp / "local"), "TENANT_BACKUP_R2_PART_SIZE_MB": str(args.part_mib)}
        if args.r2_concurrency:
            env["TENANT_BACKUP_R2_CONCURRENCY"] = str(args.r2_concurrency)
        try:
            for n, kind in (("r2", "s3"), ("b2", "b2")):
                if n in names:
                    p, e = start_server(kind, args.part_mib)
                    servers.append(p)
                    env.update(e)
            for n in names:
                tenant = str(uuid.uuid4())
                row = {"location": n, "size_mib": size / MiB}
                for op, path in (("put", src), ("get", tmp / f"back-{n}.tbk")):
                    runs = []
                    for _ in range(args.repeat):
                        if op == "put":  # a fresh key each time: an overwrite costs the doubles extra work
                            tenant = str(uuid.uuid4())
                        out = subprocess.run(
                            [sys.executable, __file__, "--worker", n, op, "--file", str(path), "--tenant", tenant,
                             "--sha", sha, "--size", str(size)],
                            cwd=REPO, env=dict(os.environ, BENCH_ENV=json.dumps(env)), capture_output=True, text=True)
                        if out.returncode:
                            print(out.stderr, file=sys.stderr)
                            raise SystemExit(f"{n} {op} failed")
                        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                        if op == "get":
                            assert sha256_file(path)[0] == sha
                            path.unlink()
                    runs.sort(key=lambda r: r["seconds"])
                    r = runs[len(runs) // 2]  # the median run
                    peak = max(x["peak_mib"] for x in runs)
                    row[op] = {"MB_s": size / 1e6 / r["seconds"], "seconds": r["seconds"],
                               "MB_s_all": [round(size / 1e6 / x["seconds"], 1) for x in runs],
                               "peak_rss_mib": peak, "base_rss_mib": r["base_mib"],
                               "growth_mib": peak - r["base_mib"]}
                results.append(row)
                print(f"{n:5s} put {row['put']['MB_s']:7.1f} MB/s {row['put']['MB_s_all']}  peak {row['put']['peak_rss_mib']:6.1f} MiB "
                      f"(+{row['put']['growth_mib']:5.1f})   get {row['get']['MB_s']:7.1f} MB/s  "
                      f"peak {row['get']['peak_rss_mib']:6.1f} MiB (+{row['get']['growth_mib']:5.1f})", flush=True)
        finally:
            for p in servers:
                p.terminate()
                p.wait(30)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
