"""Export benchmark: raw `pg_dump -Fc -Z0` vs the seed's approach vs ours, side by side, one run.

    python bench/export.py [--sizes 100,350,1024] [--dsn SUPERUSER_DSN] [--keep]

For each size it builds (once, cached in the database) a sample tenant whose raw dump is about that
many MiB, then measures, each in its own child process so peak RSS is that approach's own:
  raw   pg_dump -Fc -Z0 --enable-row-security as the backup role, to a file (the floor), pg_dump alone;
  seed  pg_dump -Fc, then the whole file read into memory, gzip -9, Fernet, SHA-256 (the seed report's way);
  ours  tenant-backup's export (pre-flight, in-snapshot counts held against the rows of the dump
        stream, zstd, AES-256-GCM, SHA-256, fsync);
  ours+rows  the same, also checking every row's tenant value in the stream (export --check-rows).
Prints wall time, throughput (raw dump MiB / s), peak RSS of the approach's process tree and the
output size. Without --dsn it starts an embedded PostgreSQL under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"


def _measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run cmd; return (wall seconds, peak RSS in MB of the process tree, sampled every 20 ms)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed ({proc.returncode}): {' '.join(cmd[:4])}")
    return wall, peak / 1e6


def _one(approach: str, dsn: str, tenant_id: str, out: str) -> None:
    """Child-process body of one measured approach."""
    import logging

    logging.basicConfig(level=logging.ERROR)  # the export's warnings (shared tables) are not measured here
    from backup_assets.core.source.pgbin import pg_program
    from backup_assets.core.source.session import PgSession

    session = PgSession.from_dsn(dsn, {"app.current_tenant": tenant_id})
    conninfo, env = session.conninfo(), session.child_env()
    if approach == "seed":
        import gzip
        import hashlib

        from cryptography.fernet import Fernet

        plain = out + ".pgdump"
        subprocess.run(
            [pg_program("pg_dump"), "-Fc", "--enable-row-security", "-f", plain, f"--dbname={conninfo}"],
            env=env,
            check=True,
        )
        data = Path(plain).read_bytes()
        token = Fernet(Fernet.generate_key()).encrypt(gzip.compress(data, 9))
        hashlib.sha256(token).hexdigest()
        Path(out).write_bytes(token)
        os.unlink(plain)
    elif approach in ("ours", "ours+rows"):
        from backup_assets.core.archive.export import ExportOptions, export_tenant
        from backup_assets.core.codec.keyring import Keyring, generate_entry
        from backup_assets.core.settings import SourceSettings

        settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": dsn})
        manifest = export_tenant(
            settings,
            Keyring.parse(generate_entry("bench")),
            tenant_id,
            Path(out),
            ExportOptions(zstd_level=int(os.environ.get("BENCH_ZSTD_LEVEL", "1")), check_rows=approach == "ours+rows"),
        )
        Path(out + ".manifest.json").write_text(json.dumps(manifest))
    else:
        raise SystemExit(f"unknown approach {approach}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,350,1024", help="tenant sizes in MiB of raw dump")
    parser.add_argument("--dsn", help="superuser DSN of a server to use instead of an embedded one")
    parser.add_argument("--approaches", default="raw,seed,ours,ours+rows")
    parser.add_argument("--keep", action="store_true", help="keep the output files")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of raw and ours per size; the median is reported (seed runs once: it is slow)",
    )
    parser.add_argument("--zstd-level", type=int, default=None, help="zstd level of ours (default: the export default)")
    parser.add_argument("--one", nargs=4, metavar=("APPROACH", "DSN", "TENANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(*args.one)
        return

    from bench_db import large_tenants

    sizes = [int(s) for s in args.sizes.split(",")]
    db, tenants = large_tenants(OUT, sizes, args.dsn)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.zstd_level:
        env["BENCH_ZSTD_LEVEL"] = str(args.zstd_level)
    from backup_assets.core.archive.export import ExportOptions
    from backup_assets.core.source.pgbin import pg_program
    from backup_assets.core.source.session import PgSession

    env.setdefault("BENCH_ZSTD_LEVEL", str(ExportOptions().zstd_level))
    rows = []
    approaches = args.approaches.split(",")
    for size in sizes:
        tenant_id = tenants[size]
        runs: dict[str, list] = {a: [] for a in approaches}
        # Round-robin (raw, ours, raw, ours, ...): a slow minute of the machine hits every approach alike.
        for index in range(args.repeat):
            for approach in approaches:
                if approach == "seed" and index:
                    continue  # slow: once
                out = str(OUT / f"{approach}-{size}.out")
                if approach == "raw":  # pg_dump alone, no Python around it
                    session = PgSession.from_dsn(db.backup_dsn, {"app.current_tenant": tenant_id})
                    conninfo, dump_env = session.conninfo(), session.child_env()
                    cmd = [
                        pg_program("pg_dump"),
                        "-Fc",
                        "-Z0",
                        "--enable-row-security",
                        "-f",
                        out,
                        f"--dbname={conninfo}",
                    ]
                    runs[approach].append(_measure(cmd, dump_env) + (os.path.getsize(out),))
                else:
                    runs[approach].append(
                        _measure([sys.executable, __file__, "--one", approach, db.backup_dsn, tenant_id, out], env)
                        + (os.path.getsize(out),)
                    )
                if not args.keep:
                    os.unlink(out)
        results = {}
        for approach, measured in runs.items():
            walls = sorted(w for w, _, _ in measured)
            results[approach] = {
                "wall_s": walls[len(walls) // 2],
                "wall_all_s": [round(w, 2) for w, _, _ in measured],
                "peak_rss_mb": max(r for _, r, _ in measured),
                "bytes": measured[-1][2],
            }
        raw_mib = results["raw"]["bytes"] / (1 << 20) if "raw" in results else None
        for approach, r in results.items():
            r["mib_per_s"] = raw_mib / r["wall_s"] if raw_mib else None
            rows.append({"size": size, "approach": approach, "raw_dump_mib": raw_mib, **r})

    print(
        f"{'tenant':>8} {'approach':9} {'wall s':>7} {'MiB/s':>7} {'peak RSS MB':>11} {'output MiB':>10}  ratio vs raw / seed"
    )
    for row in rows:
        same = [r for r in rows if r["size"] == row["size"]]
        raw = next((r for r in same if r["approach"] == "raw"), None)
        seed = next((r for r in same if r["approach"] == "seed"), None)
        rel = ""
        if row["approach"].startswith("ours") and raw:
            rel = f"{row['wall_s'] / raw['wall_s']:.2f}x raw"
            if seed:
                rel += f", {row['wall_s'] / seed['wall_s']:.2f}x seed"
        print(
            f"{row['raw_dump_mib'] or 0:7.0f}M {row['approach']:9} {row['wall_s']:7.2f} {row['mib_per_s'] or 0:7.0f}"
            f" {row['peak_rss_mb']:11.0f} {row['bytes'] / (1 << 20):10.1f}  {rel}  runs: {row['wall_all_s']}"
        )
    print(
        f"zstd level of ours: {env['BENCH_ZSTD_LEVEL']}; wall = median of {args.repeat} runs (seed: 1);"
        " peak RSS = max over runs of the approach's process tree (ours and seed include their pg_dump child)"
    )
    (OUT / "export-results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
