"""A full disk says so, in one line (issue 18.5): `export --out` / `decrypt --out` onto a full
filesystem, the manifest on a full stdout; a local location's failed put leaves no checksum sidecar,
and prune removes what failed uploads left; `verify --deep` stages its copies under
TENANT_BACKUP_WORK_DIR, not the system's temp directory (here: a full one).

The full filesystems are small tmpfs mounts (we run as root in CI; skipped with the reason when
mounting is refused)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import CLI, EXIT

from backup_assets.core.archive.export import export_tenant
from backup_assets.core.archive.manifest import Manifest
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.errors import LocalWriteError
from backup_assets.core.locations.local import LocalLocation
from backup_assets.core.settings import SourceSettings

KEYS = generate_entry("disk1")


def _mount_tmpfs(where: Path, size: str = "1m") -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({done.stderr.decode(errors='replace').strip() or 'not root'})")


def _fill(where: Path, leave: int = 0) -> None:
    """Fill the filesystem at `where`, leaving about `leave` bytes free."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize - leave
    with open(where / ".filler", "wb") as f:
        block = b"\0" * 4096
        try:
            while free > 0:
                free -= f.write(block[: min(len(block), free)])
        except OSError:
            pass


@pytest.fixture
def full_fs(tmp_path):
    """A 1 MiB tmpfs, filled: nothing more fits."""
    where = tmp_path / "full"
    _mount_tmpfs(where)
    _fill(where)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs with about 32 KiB free: a checksum sidecar fits, an archive does not."""
    where = tmp_path / "small"
    _mount_tmpfs(where)
    _fill(where, leave=32 * 1024)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def env(sample_db):
    return {"TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn, "TENANT_BACKUP_KEYS": KEYS}


@pytest.fixture
def active(sample_tenants):
    return next(t for t in sample_tenants if t.status == "ACTIVE")


def _error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("tenant-backup: error:")]


def _visible(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if p.name != ".filler")


def test_export_onto_a_full_filesystem_is_one_line(env, active, full_fs, tmp_path):
    """Reported: a Python traceback and exit 1."""
    out = full_fs / "a.tbk"
    result = CLI.run(["export", "--tenant", active.id, "--out", str(out)], env, tmp_path)
    assert result.returncode == EXIT["storage"], result.stderr
    assert _error_lines(result) == [f"tenant-backup: error: no space left on device: {out}"], result.stderr
    assert result.stdout == ""
    assert _visible(full_fs) == []  # no partial archive, no temporary file


def test_decrypt_onto_a_full_filesystem_is_one_line(env, active, full_fs, tmp_path):
    assert CLI.run(["export", "--tenant", active.id, "--out", "a.tbk"], env, tmp_path).returncode == 0
    out = full_fs / "a.dump"
    result = CLI.run(["decrypt", "a.tbk", "--out", str(out)], env, tmp_path)
    assert result.returncode == EXIT["storage"], result.stderr
    assert _error_lines(result) == [f"tenant-backup: error: no space left on device: {out}"], result.stderr
    assert _visible(full_fs) == []


def test_the_manifest_onto_a_full_stdout_is_one_line(env, active, full_fs, tmp_path):
    with open(full_fs / "manifest.json", "w") as stdout:
        result = CLI.run(
            ["export", "--tenant", active.id, "--out", "a.tbk"], env, tmp_path, stdout=stdout, stderr=subprocess.PIPE
        )
    assert result.returncode == EXIT["storage"], result.stderr
    [line] = _error_lines(result)
    assert line.startswith("tenant-backup: error: no space left on device: standard output") and "a.tbk" in line


def _archive(tmp_path: Path, size: int = 200_000) -> tuple[Path, str]:
    path = tmp_path / "archive.bin"
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failed_local_put_leaves_no_checksum_sidecar(small_fs, tmp_path):
    """Reported: `archive.tbk.sha256` files of failed attempts stayed, and nothing removed them."""
    loc = LocalLocation(small_fs / "local")
    path, sha = _archive(tmp_path)
    tenant, bid = str(uuid.uuid4()), "20260101T000000Z-0000000a"
    with pytest.raises(LocalWriteError, match="no space left on device"):
        loc.put(
            tenant,
            bid,
            path,
            Manifest.from_dict({"tenant_id": tenant, "backup_id": bid, "archive": {"sha256": sha, "size": 200_000}}),
        )
    left = [p for p in (small_fs / "local").rglob("*") if p.is_file()]
    assert left == [], left
    assert not (small_fs / "local" / "tenants" / tenant / bid).exists()
    assert loc.garbage(datetime.now(timezone.utc) + timedelta(days=1)) == []  # nothing a collection would find


def test_prune_removes_what_failed_uploads_left(tmp_path, sample_db, active):
    """Leftovers of failed puts (a sidecar alone, an archive without its manifest) older than a day
    are removed by prune; a younger one (a put may be under way) and complete backups stay."""
    from backup_assets.core.archive.manifest import new_backup_id

    root = tmp_path / "local"
    loc = LocalLocation(root)
    archive = tmp_path / "a.tbk"
    manifest = export_tenant(SourceSettings(dsn=sample_db.backup_dsn), Keyring.parse(KEYS), active.id, archive)
    loc.put(active.id, manifest.backup_id, archive, manifest)
    old = (datetime.now(timezone.utc) - timedelta(days=2)).timestamp()
    leftovers = {}
    for name, files, when in (
        ("sidecar", ["archive.tbk.sha256"], old),
        ("archive", ["archive.tbk", "archive.tbk.sha256"], old),
        ("young", ["archive.tbk.sha256"], None),
    ):
        bid = new_backup_id()
        folder = root / "tenants" / active.id / bid
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).write_bytes(b"" if f.endswith(".sha256") else b"x" * 100)  # as a full disk left them
            if when is not None:
                os.utime(folder / f, (when, when))
        leftovers[name] = bid
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(root),
    }
    dry = CLI.run(["prune", "--dry-run", "--json"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr
    listed = {i["backup_id"] for i in json.loads(dry.stdout)["locations"]["local"]["incomplete"]}
    assert listed == {leftovers["sidecar"], leftovers["archive"]}
    assert all((root / "tenants" / active.id / b).exists() for b in leftovers.values())
    result = CLI.run(["prune"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"removed local {active.id} {leftovers['sidecar']} (incomplete" in result.stdout
    remaining = sorted(p.name for p in (root / "tenants" / active.id).iterdir())
    assert remaining == sorted([manifest.backup_id, leftovers["young"]])
    assert [r.backup_id for r in loc.list(active.id)] == [manifest.backup_id]


def test_verify_deep_stages_its_copy_under_the_work_dir(env, active, full_fs, tmp_path, sample_db):
    """Reported: `verify --tenant --deep` staged its copy in the system's temp directory; here that
    one is full, and the work directory is not."""
    root, work = tmp_path / "local", tmp_path / "work"
    archive = tmp_path / "a.tbk"
    manifest = export_tenant(SourceSettings(dsn=sample_db.backup_dsn), Keyring.parse(KEYS), active.id, archive)
    LocalLocation(root).put(active.id, manifest.backup_id, archive, manifest)
    env = dict(
        env,
        TENANT_BACKUP_LOCATIONS="local",
        TENANT_BACKUP_LOCAL_DIR=str(root),
        TENANT_BACKUP_WORK_DIR=str(work),
        TMPDIR=str(full_fs),
    )
    seen: set[str] = set()
    done = threading.Event()

    def watch():  # what the command stages in the work directory while it runs
        while not done.is_set():
            try:
                seen.update(e.name for e in os.scandir(work))
            except FileNotFoundError:
                pass
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = CLI.run(["verify", "--tenant", active.id, "--deep"], env, tmp_path)
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "isolated:" in result.stdout
    assert any(name.startswith("tb-verify-") for name in seen), seen
    assert (work.stat().st_mode & 0o777) == 0o700
    assert list(work.iterdir()) == []  # the staged copy removed on exit
    assert _visible(full_fs) == []
