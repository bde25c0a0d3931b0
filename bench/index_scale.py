"""The index's read path at a year of weekly backups (issue 23): `status` and the staleness sensor's
read from a location whose index holds N tenants x K backups (default 10,000 x 52: 520,000 rows).

    python bench/index_scale.py [--tenants 10000] [--backups 52] [--locations 3] [--repeat 3]
                                [--compare OTHER_CHECKOUT]

SYNTHETIC, and only the index: the packs are written as the index job writes them (the real format:
authenticated, zlib, 20,000 rows a part, an `all` and a `latest` pack set, by core/locations/index_compact.py
`pack_objects`, which the index job writes with), to local directories, with no archive or manifest behind them
— storing 520,000 real backups per location (bench/ops.py) would take hours here. What it measures is
what `status` and the sensor do with the index once read: decoding, merging and deciding. Each run is a
process of its own (peak RSS: its VmHWM; CPU: its own), the sensor's read and status interleaved;
`--compare DIR` runs each also with the backup_assets of another checkout (e.g. `git worktree add
/tmp/old <commit>`), interleaved with this one's, against the same index.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if "--code" in sys.argv:  # a child measuring another checkout's code (--compare)
    ROOT = Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
sys.path.insert(0, str(ROOT))

from backup_assets.core.codec.keyring import Keyring, generate_entry  # noqa: E402
from backup_assets.core.locations.index import BackupState  # noqa: E402
from backup_assets.core.locations.index_compact import pack_objects  # noqa: E402
from backup_assets.core.locations.index_format import PutInfo, VerifiedInfo  # noqa: E402
from backup_assets.core.locations.local import LocalLocation  # noqa: E402
from backup_assets.testing.backups import backup_id_at  # noqa: E402


def build(root: Path, name: str, tenants: list[str], backups: int, keyring: Keyring, now: datetime) -> None:
    """One location's index: every tenant's `backups` weekly backups, the newest verified."""
    loc = LocalLocation(root)
    loc.name = name
    rows, latest = [], []
    at = time.time_ns()
    for n, t in enumerate(tenants):
        for week in range(backups):
            created = now - timedelta(days=7 * week, minutes=n % 600)
            b = backup_id_at(created, n * 64 + week)
            info = PutInfo(int(created.timestamp() * 1e6), 4096, uuid.uuid4().hex * 2, "k1", True, (18, 16, False), 0)
            state = BackupState(put=(at, info))
            if week == 0:
                state.verified = (at, VerifiedInfo(int(now.timestamp()), True, False, info.sha256))
            rows.append((t, b, state))
        latest.append(max((r for r in rows[-backups:]), key=lambda r: r[1]))
    rows.sort(key=lambda r: (r[0], r[1]))
    latest.sort(key=lambda r: (r[0], r[1]))
    _generation, objects = pack_objects(
        loc, keyring, [s.row(t, b) for t, b, s in rows], [s.row(t, b) for t, b, s in latest], at
    )
    for key, data in objects:
        loc._put_bytes(key, data)


def child(spec: dict) -> dict:
    from backup_assets.core.maintenance.index_status import SENSOR_SCAN_LIMIT, gather_indexed

    keyring = Keyring.parse(spec["keys"])
    locs = {}
    for name, root in spec["roots"].items():
        loc = LocalLocation(root, retention_days=365)
        loc.name = name
        locs[name] = loc
    tenants = json.loads(Path(spec["tenants"]).read_text())
    cpu0, t0 = time.process_time(), time.perf_counter()
    if spec["op"] == "sensor":
        out = gather_indexed(
            tenants, locs, keyring=keyring, max_age_days=8, scan_up_to=SENSOR_SCAN_LIMIT, missing=False
        )
    else:
        out = gather_indexed(tenants, locs, keyring=keyring, max_age_days=8)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    report = out.report
    assert not out.scanned and not report.unreadable, (out.scanned, report.unreadable)
    return {
        "seconds": round(seconds, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": round(int(hwm.split()[1]) / 1024),
        "copies": len(report.copies),
        "stale": len(report.stale),
        "missing": len(report.missing),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10000)
    parser.add_argument("--backups", type=int, default=52)
    parser.add_argument("--locations", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another checkout whose code is measured too, interleaved")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="index-scale-"))
    keys = generate_entry("bench")
    keyring = Keyring.parse(keys)
    now = datetime.now(timezone.utc)
    tenants = [str(uuid.UUID(int=(i + 1) * 0x9E3779B97F4A7C15 % (1 << 128))) for i in range(args.tenants)]
    (tmp / "tenants.json").write_text(json.dumps(tenants))
    names = ["local", "r2", "b2"][: args.locations]
    roots = {name: str(tmp / name) for name in names}
    started = time.perf_counter()
    for name in names:
        build(Path(roots[name]), name, tenants, args.backups, keyring, now)
    print(
        f"{args.tenants} tenants x {args.backups} backups x {len(names)} locations: index written in "
        f"{time.perf_counter() - started:.0f} s ({tmp})",
        file=sys.stderr,
    )
    codes = {"this": ROOT} | ({f"compare ({args.compare})": args.compare} if args.compare else {})
    runs: dict[str, list[dict]] = {f"{op}, {code}": [] for op in ("sensor", "status") for code in codes}
    for _ in range(args.repeat):
        for label in runs:  # interleaved
            op, code = label.split(", ", 1)
            spec = {"keys": keys, "roots": roots, "tenants": str(tmp / "tenants.json"), "op": op}
            command = [sys.executable, __file__, "--child", json.dumps(spec), "--code", str(codes[code])]
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout)
            runs[label].append(result)
            print(f"  {label:40} {result}", file=sys.stderr)
    summary = {
        op: {
            "median_s": statistics.median(r["seconds"] for r in rs),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "runs": rs,
        }
        for op, rs in runs.items()
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
