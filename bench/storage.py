"""Storage benchmark: put/get of one large archive per location, on loopback, several runs.

    python bench/storage.py [--size-mib 1024] [--locations local,r2,b2] [--repeat 3] [--json out.json]
    python bench/storage.py --locations r2 --r2-impl old=/tmp/r2_old.py --r2-impl new= --repeat 5

Runs are interleaved: run 1 of every location (and every --r2-impl variant), then run 2, ..., so a
noisy neighbour on a shared machine spreads over all variants instead of landing on one. Each run puts
to a fresh key, gets it back and deletes it (the in-memory doubles would otherwise hold every copy).
--r2-impl NAME=PATH benchmarks another R2Location implementation file (e.g. the previous r2.py copied
out of the tree) under NAME; an empty PATH is the one in the tree.

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
    if args.location == "r2" and args.impl_path:
        # Another implementation file stands in for core/locations/r2.py (its relative imports resolve
        # inside the package), loaded before locations_from_env imports ".r2".
        import importlib.util

        name = "backup_assets.core.locations.r2"
        spec = importlib.util.spec_from_file_location(name, args.impl_path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    loc = locations_from_env([args.location], environ=env)[args.location]
    if args.location == "b2":
        loc.inner._b()  # authorize before measuring "base"
    base, _ = _hwm_rss()
    t0 = time.perf_counter()
    if args.op == "put":
        from backup_assets.core.archive.manifest import Manifest
        from backup_assets.core.locations import sha256_file

        sha, size = sha256_file(Path(args.file)) if not args.sha else (args.sha, args.size)
        t0 = time.perf_counter()  # the manifest's hash is known to the caller in production
        manifest = Manifest.from_dict({"archive": {"sha256": sha, "size": size}})
        loc.put(args.tenant, "bench", Path(args.file), manifest)
    elif args.op == "get":
        loc.get(args.tenant, "bench", Path(args.file))
    else:
        loc.delete(args.tenant, "bench")
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
    ap.add_argument(
        "--r2-impl",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="benchmark this R2Location file as variant NAME (empty PATH: the tree's); repeatable",
    )
    ap.add_argument("--impl-path", default="", help=argparse.SUPPRESS)
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
            variants = []  # (label, location, implementation file or "")
            for n in names:
                if n == "r2" and args.r2_impl:
                    for spec in args.r2_impl:
                        label, _, path = spec.partition("=")
                        variants.append((f"r2:{label}", n, str(Path(path).resolve()) if path else ""))
                else:
                    variants.append((n, n, ""))
            runs = {label: {"put": [], "get": []} for label, _, _ in variants}
            for i in range(args.repeat):
                for label, n, impl in variants:  # interleaved: run i of every variant, then run i+1
                    tenant, back = str(uuid.uuid4()), tmp / f"back-{n}.tbk"
                    for op, path in (("put", src), ("get", back), ("delete", back)):
                        out = subprocess.run(
                            [
                                sys.executable,
                                __file__,
                                "--worker",
                                n,
                                op,
                                "--file",
                                str(path),
                                "--tenant",
                                tenant,
                                "--sha",
                                sha,
                                "--size",
                                str(size),
                                "--impl-path",
                                impl,
                            ],
                            cwd=REPO,
                            env=dict(os.environ, BENCH_ENV=json.dumps(env)),
                            capture_output=True,
                            text=True,
                        )
                        if out.returncode:
                            print(out.stderr, file=sys.stderr)
                            raise SystemExit(f"{label} {op} failed")
                        if op == "delete":
                            continue
                        r = json.loads(out.stdout.strip().splitlines()[-1])
                        runs[label][op].append(r)
                        if op == "get":
                            assert sha256_file(path)[0] == sha
                            path.unlink()
                        print(
                            f"  run {i + 1} {label:8s} {op} {size / 1e6 / r['seconds']:7.1f} MB/s "
                            f"peak {r['peak_mib']:6.1f} MiB (base {r['base_mib']:5.1f})",
                            flush=True,
                        )
            for label, _, impl in variants:
                row = {"location": label, "size_mib": size / MiB, "impl": impl or "tree"}
                for op in ("put", "get"):
                    rs = sorted(runs[label][op], key=lambda x: x["seconds"])
                    r = rs[len(rs) // 2]  # the median run
                    peaks = [x["peak_mib"] for x in runs[label][op]]
                    row[op] = {
                        "MB_s": size / 1e6 / r["seconds"],
                        "seconds": r["seconds"],
                        "MB_s_all": [round(size / 1e6 / x["seconds"], 1) for x in runs[label][op]],
                        "peak_rss_mib": sorted(peaks)[len(peaks) // 2],
                        "peak_rss_mib_all": [round(x, 1) for x in peaks],
                        "base_rss_mib": r["base_mib"],
                        "growth_mib": sorted(x["peak_mib"] - x["base_mib"] for x in rs)[len(rs) // 2],
                    }
                results.append(row)
                print(
                    f"{label:8s} put {row['put']['MB_s']:7.1f} MB/s {row['put']['MB_s_all']}  peak {row['put']['peak_rss_mib']:6.1f} MiB "
                    f"(+{row['put']['growth_mib']:5.1f}) {row['put']['peak_rss_mib_all']}   get {row['get']['MB_s']:7.1f} MB/s "
                    f"{row['get']['MB_s_all']}  peak {row['get']['peak_rss_mib']:6.1f} MiB (+{row['get']['growth_mib']:5.1f}) "
                    f"{row['get']['peak_rss_mib_all']}",
                    flush=True,
                )
        finally:
            for p in servers:
                p.terminate()
                p.wait(30)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
