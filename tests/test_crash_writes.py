"""Kill tests of the crash-consistent storage writes (issue 24; docs/STORAGE.md, "Crash consistency").

A real process (tests/crash_runner.py: a Location put, or the tenant-backup command itself) SIGKILLs
itself at a named step of the write (core/crashpoints.py, installed by testing/faults.py kill_at: no
timing), against a local directory, the loopback S3 server (R2) and the loopback B2 server. After each
kill: the backup lists and verifies, holding its old bytes or its new ones, never anything else; one
re-run completes it; the garbage collection (grace period 0: the writer is dead) then leaves exactly
the objects the manifest names, and the default grace period (a day) touches nothing of the young
leftovers before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_assets.core.archive.manifest import Manifest
from backup_assets.core.locations import RetryingLocation, sha256_file
from backup_assets.core.maintenance.gc import collect_garbage
from backup_assets.testing.b2_server import B2Server
from backup_assets.testing.s3_server import S3Server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from storage_backends import LocalBackend, backend_for  # noqa: E402

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "crash_runner.py"
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def s3_server():
    with S3Server() as s:
        yield s


@pytest.fixture(scope="module")
def b2_server():
    with B2Server(recommended_part_size=5 * 1000 * 1000, min_part_size=5 * 1000 * 1000) as s:
        yield s


def crash_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_BACKUP_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def killed_put(be, t: str, b: str, path: Path, manifest: Manifest, point: str, nth: int) -> None:
    code = (
        "import sys; from pathlib import Path; from backup_assets.core.archive.manifest import Manifest; "
        f"{be.writer_code()}; loc.put({t!r}, {b!r}, Path(sys.argv[1]), Manifest.from_json(sys.argv[2]))"
    )
    p = subprocess.run(
        [sys.executable, str(RUNNER), point, str(nth), "put", code, str(path), manifest.to_json()],
        cwd=ROOT,
        env=crash_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == KILLED, f"{point}#{nth} never reached (exit {p.returncode}): {p.stderr[-1500:]}"


def make_archive(tmp: Path, size: int) -> tuple[Path, Manifest]:
    p = tmp / f"{uuid.uuid4().hex}.tbk"
    p.write_bytes(os.urandom(size))
    sha, n = sha256_file(p)
    return p, Manifest.from_dict({"archive": {"sha256": sha, "size": n}, "tables": {"orders": 3}})


def store_objects(be, loc, t: str) -> set[str]:
    """Every object of tenant t the store holds, its leftovers included: names relative to the
    tenant's folder; unfinished uploads as 'upload:<key>', older versions as 'version:<key>'."""
    prefix = f"{loc._root()}{t}/"
    if be.kind == "local":
        base = Path(loc.root) / prefix
        return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} if base.is_dir() else set()
    if be.kind == "r2":
        c = be._client()
        keys = {o["Key"] for o in c.list_objects_v2(Bucket=be.bucket, Prefix=prefix).get("Contents", [])}
        ups = {
            "upload:" + u["Key"] for u in c.list_multipart_uploads(Bucket=be.bucket, Prefix=prefix).get("Uploads", [])
        }
        return {k[len(prefix) :] for k in keys} | {u.replace(prefix, "") for u in ups}
    bucket = be._api_bucket()
    names, out = set(), set()
    for fv, _ in bucket.ls(prefix, latest_only=False, recursive=True):
        name = fv.file_name[len(prefix) :]
        out.add(("version:" + name) if name in names else name)
        names.add(name)
    out |= {"upload:" + f.file_name[len(prefix) :] for f in bucket.list_unfinished_large_files(prefix=prefix)}
    return out


# The steps of one put that overwrites a backup with other bytes (what a re-wrap does), per location:
# (point, nth, the copy that must be there after the kill: "old" or "new").
PUT_POINTS = {
    "local": [
        ("local.archive_temp", 1, "old"),
        ("local.sidecar", 1, "old"),
        ("put.archive", 1, "old"),
        ("put.manifest", 1, "new"),
    ],
    "r2": [("upload.progress", 1, "old"), ("put.archive", 1, "old"), ("put.manifest", 1, "new")],
    "b2": [
        ("upload.progress", 1, "old"),
        ("put.archive", 1, "old"),
        # The new manifest uploaded, its older version not yet deleted (the new archive's name held nothing:
        # no versions to remove after it, so this is the put's first removal of older versions).
        ("b2.old_versions", 1, "new"),
        ("put.manifest", 1, "new"),
    ],
}


@pytest.mark.parametrize(
    "kind,point,nth,expect", [(k, *p) for k, points in PUT_POINTS.items() for p in points], ids=lambda v: str(v)
)
def test_a_put_killed_at_every_step_leaves_a_whole_copy(kind, point, nth, expect, tmp_path, request):
    be = backend_for(kind, tmp_path, request)
    raw = be.make()
    loc = RetryingLocation(raw, attempts=2, base_delay=0.05)
    t, b = str(uuid.uuid4()), "20260101T030000Z"
    big = 11 * MiB if point == "upload.progress" else 300_000  # multipart / large file: an upload open
    old_path, old_m = make_archive(tmp_path, big)
    new_path, new_m = make_archive(tmp_path, big)
    loc.put(t, b, old_path, old_m)

    killed_put(be, t, b, new_path, new_m, point, nth)

    # The copy is whole: the old one or the new one, as the step says; it lists, stats and verifies.
    want_path, want_m = (old_path, old_m) if expect == "old" else (new_path, new_m)
    assert [r.backup_id for r in loc.list(t)] == [b]
    assert loc.get_manifest(t, b) == want_m
    assert loc.verify(t, b).sha256 == want_m.archive.sha256
    assert loc.get(t, b, tmp_path / "got.tbk").path.read_bytes() == want_path.read_bytes()
    # What the dead writer left is young: the default grace period (a day) touches none of it.
    assert loc.garbage(datetime.now(timezone.utc) - timedelta(days=1)) == []

    # One re-run completes it; the collection (grace 0: the writer is dead) leaves only the new copy.
    loc.put(t, b, new_path, new_m)
    collect_garbage(loc, grace=timedelta(0))
    assert loc.get(t, b, tmp_path / "got2.tbk").path.read_bytes() == new_path.read_bytes()
    name = f"archive-{new_m.archive.sha256[:16]}.tbk"
    expected = {f"{b}/manifest.json", f"{b}/{name}"} | ({f"{b}/{name}.sha256"} if kind == "local" else set())
    assert store_objects(be, raw, t) == expected
    assert loc.garbage(datetime.now(timezone.utc) + timedelta(days=1)) == []


def test_legacy_copies_still_read_and_are_replaced_by_a_rewrite(tmp_path, request):
    """Backups stored before content-named archives (`archive.tbk`, and the local sidecar beside it)
    list, stat, verify and download; a re-put (what a re-wrap does) moves them to the new layout."""
    for kind in ("local", "r2", "b2"):
        be = backend_for(kind, tmp_path / kind, request) if kind != "local" else LocalBackend(tmp_path / kind)
        (tmp_path / kind).mkdir(exist_ok=True)
        raw = be.make()
        t, b = str(uuid.uuid4()), "b-legacy"
        path, m = make_archive(tmp_path / kind, 50_000)
        raw.put(t, b, path, m)
        d = raw.backup_prefix(t, b)
        new_key, legacy_key = raw.archive_key(t, b, m.archive.sha256), d + "archive.tbk"
        # Rename the stored archive to the old fixed name, as an older tenant-backup wrote it.
        raw._put_file(legacy_key, path, m.archive.size, m.archive.sha256)
        raw._delete(new_key)
        assert raw.archive_key(t, b) == legacy_key
        assert raw.verify(t, b).uri.endswith("/archive.tbk")
        assert raw.get(t, b, tmp_path / kind / "o").path.read_bytes() == path.read_bytes()
        assert raw.garbage(datetime.now(timezone.utc) + timedelta(days=1)) == []  # the only archive: kept
        new_path, new_m = make_archive(tmp_path / kind, 60_000)
        raw.put(t, b, new_path, new_m)
        assert raw.archive_key(t, b) == raw.archive_key(t, b, new_m.archive.sha256)
        names = store_objects(be, raw, t)
        assert not any("archive.tbk" in n for n in names), names
