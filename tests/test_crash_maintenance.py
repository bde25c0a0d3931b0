"""Kill tests of `keys rewrap` and `prune` (issue 24): the real command in a real process
(tests/crash_runner.py) SIGKILLs itself at a named step (core/crashpoints.py), over a local directory,
the loopback S3 server (R2) and the loopback B2 server, or over the local directory alone.

After each kill and ONE re-run of the same command: every pre-existing backup lists in every location,
verifies deep with the active key alone and decrypts to the very dump it held; nothing needs a manual
repair; and after the garbage collection (`prune` with TENANT_BACKUP_GC_GRACE_S=0: the dead run is
over) no storage object of the dead run remains: each backup folder holds its manifest, the archive
the manifest names (and its local sidecar) and its verification record, nothing else, and no
unfinished upload or older version is left anywhere.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_assets.cli import main as cli_main
from backup_assets.core.archive.decrypt import decrypt_to_file
from backup_assets.core.archive.export import export_tenant
from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.codec.format import decode_archive, encode_archive
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.maintenance.copy_check import verify_copy
from backup_assets.core.settings import Settings, SourceSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CLI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "crash_runner.py"
OLD_KEY = generate_entry("old1")
NEW_KEY = generate_entry("new2")
NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def exports(sample_db, sample_tenants, tmp_path_factory):
    """Two real archives (pg_dump inside: deep verification restores their TOC) under the old key, and
    the plain dumps they decrypt to."""
    tmp = tmp_path_factory.mktemp("exports")
    out = []
    for i, tenant in enumerate(sample_tenants[:2]):
        path = tmp / f"exp{i}.tbk"
        manifest = export_tenant(SourceSettings(dsn=sample_db.backup_dsn), Keyring.parse(OLD_KEY), tenant.id, path)
        dump = tmp / f"exp{i}.dump"
        decrypt_to_file(path, dump, Keyring.parse(OLD_KEY))
        out.append((path, manifest, dump.read_bytes()))
    return out


def site_env(tmp_path, s3_server, b2_server, names: str) -> dict[str, str]:
    bucket = f"crash-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    b2_server.create_bucket(bucket)
    return {
        "TENANT_BACKUP_KEYS": f"{NEW_KEY},{OLD_KEY}",
        "TENANT_BACKUP_LOCATIONS": names,
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "R2_ENDPOINT_URL": s3_server.url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET": bucket,
        "B2_APPLICATION_KEY_ID": b2_server.key_id,
        "B2_APPLICATION_KEY": b2_server.key,
        "B2_BUCKET": bucket,
        "B2_REALM": b2_server.url,
    }


def use(env: dict[str, str], monkeypatch, **over) -> dict:
    for k in [k for k in os.environ if k.startswith("TENANT_BACKUP_")]:
        monkeypatch.delenv(k)
    for k, v in {**env, **over}.items():
        monkeypatch.setenv(k, v)
    return Settings.from_env().locations()


def killed(env: dict[str, str], point: str, nth: int, *args: str, **over) -> None:
    p = subprocess.run(
        [sys.executable, str(RUNNER), point, str(nth), "cli", *args],
        env=CLI.environment({**env, **over}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == -signal.SIGKILL, f"{point}#{nth} never reached (exit {p.returncode}): {p.stderr[-2000:]}"


def folder_objects(loc, tenant: str, backup: str) -> set[str]:
    """Every object of one backup's folder, and every leftover of the whole location (any tenant)."""
    raw = loc.inner
    names = {key.rsplit("/", 1)[1] for key, _ in raw._list(raw.backup_prefix(tenant, backup))}
    names |= {f"leftover:{g.what}:{g.key}" for g in raw._unfinished()}
    if raw.name == "local":  # hidden files are not listed by _list: look at the folder itself
        names |= {p.name for p in (Path(raw.root) / raw.backup_prefix(tenant, backup)).iterdir() if p.name[0] == "."}
    return names


def assert_whole_after_gc(locs, exports, tmp_path) -> None:
    """Every backup: lists, verifies deep with the new key alone, decrypts to its dump; and holds
    nothing but what its manifest names (garbage collected)."""
    only_new = Keyring.parse(NEW_KEY)
    for name, loc in locs.items():
        listed = {(r.tenant_id, r.backup_id) for r in loc.list()}
        for i, (_path, m, dump) in enumerate(exports):
            assert (m.tenant_id, m.backup_id) in listed, f"{name}: {m.backup_id} does not list"
            check = verify_copy(loc, m.tenant_id, m.backup_id, keyring=only_new, deep=True, work_dir=tmp_path)
            assert check.ok, f"{name}: {check.message}"
            got = loc.get(m.tenant_id, m.backup_id, tmp_path / f"{name}-{i}.tbk").path
            decrypt_to_file(got, tmp_path / f"{name}-{i}.dump", only_new)
            assert (tmp_path / f"{name}-{i}.dump").read_bytes() == dump
            stored = loc.get_manifest(m.tenant_id, m.backup_id)
            sha = stored.checksum()[0]
            assert stored.key_id == "new2"
            archive = f"archive-{sha[:16]}.tbk"
            allowed = {"manifest.json", "verified.json", archive} | (
                {archive + ".sha256"} if name == "local" else set()
            )
            assert folder_objects(loc, m.tenant_id, m.backup_id) <= allowed, name
            assert {"manifest.json", archive} <= folder_objects(loc, m.tenant_id, m.backup_id)
        assert loc.garbage(NOW + timedelta(days=1)) == []


# keys rewrap: 2 backups x (local, r2, b2), copies stored in that order per backup; or local alone.
REWRAP_KILLS = [
    ("local,r2,b2", "put.archive", 2),  # backup 1: local done, r2's new archive stored, its manifest old
    ("local,r2,b2", "put.manifest", 3),  # backup 1: b2's manifest switched, its old archive not deleted
    ("local,r2,b2", "b2.old_versions", 2),  # backup 1: b2's new manifest uploaded, the older version kept
    ("local,r2,b2", "rewrap.copy", 3),  # backup 1 done everywhere, backup 2 not begun
    ("local", "local.sidecar", 1),  # the reported case: the new sidecar written, the archive not renamed
    ("local", "put.manifest", 1),
    ("local", "rewrap.copy", 1),
]


@pytest.mark.parametrize("names,point,nth", REWRAP_KILLS, ids=lambda v: str(v))
def test_a_killed_rewrap_is_completed_by_one_rerun(
    names, point, nth, exports, tmp_path, s3_server, b2_server, monkeypatch
):
    env = site_env(tmp_path, s3_server, b2_server, names)
    locs = use(env, monkeypatch)
    for path, m, _dump in exports:
        for loc in locs.values():
            loc.put(m.tenant_id, m.backup_id, path, m)

    killed(env, point, nth, "keys", "rewrap")

    # Straight after the kill: every copy is whole (old key or new), nothing refuses to read.
    for loc in locs.values():
        for _path, m, _dump in exports:
            assert verify_copy(loc, m.tenant_id, m.backup_id, keyring=Keyring.parse(env["TENANT_BACKUP_KEYS"])).ok
    assert cli_main(["keys", "rewrap"]) == 0  # the one re-run
    use(env, monkeypatch, TENANT_BACKUP_GC_GRACE_S="0", TENANT_BACKUP_KEYS=NEW_KEY)
    assert cli_main(["prune"]) == 0
    assert_whole_after_gc(locs, exports, tmp_path)


def test_a_copy_stranded_by_an_older_rewrap_is_rewrapped_from_its_own_bytes(
    exports, tmp_path, s3_server, b2_server, monkeypatch
):
    """The state issue 24 reported (an older tenant-backup: `archive.tbk` holds the old bytes, intact and
    as the manifest says, its sidecar the digest of a re-wrap that never landed): rewrap completes it."""
    env = site_env(tmp_path, s3_server, b2_server, "local")
    locs = use(env, monkeypatch)
    path, m, _dump = exports[0]
    locs["local"].put(m.tenant_id, m.backup_id, path, m)
    folder = Path(env["TENANT_BACKUP_LOCAL_DIR"]) / "tenants" / m.tenant_id / m.backup_id
    named = folder / f"archive-{m.archive.sha256[:16]}.tbk"
    named.rename(folder / "archive.tbk")
    (folder / (named.name + ".sha256")).unlink()
    (folder / "archive.tbk.sha256").write_text("f" * 64 + "\n")
    assert not verify_copy(locs["local"], m.tenant_id, m.backup_id, keyring=Keyring.parse(OLD_KEY)).ok
    assert cli_main(["keys", "rewrap"]) == 0
    use(env, monkeypatch, TENANT_BACKUP_GC_GRACE_S="0", TENANT_BACKUP_KEYS=NEW_KEY)
    assert cli_main(["prune"]) == 0
    assert_whole_after_gc(locs, exports[:1], tmp_path)


def test_no_intact_copy_names_the_repair(exports, tmp_path, s3_server, b2_server, monkeypatch, capsys):
    env = site_env(tmp_path, s3_server, b2_server, "local")
    locs = use(env, monkeypatch)
    path, m, _dump = exports[0]
    locs["local"].put(m.tenant_id, m.backup_id, path, m)
    archive = next((Path(env["TENANT_BACKUP_LOCAL_DIR"]) / "tenants" / m.tenant_id / m.backup_id).glob("*.tbk"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    archive.write_bytes(bytes(data))
    assert cli_main(["keys", "rewrap"]) == 1
    assert "tenant-backup rebuild --location local --repair" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ prune


def aged_archive(tmp: Path, tenant: str, days: int) -> tuple[Path, Manifest, bytes]:
    created = NOW - timedelta(days=days)
    bid = new_backup_id(created)
    path, payload = tmp / f"{bid}.tbk", os.urandom(2000)
    with path.open("wb") as out:
        header, stats = encode_archive(
            io.BytesIO(payload).read,
            out,
            tenant_id=tenant,
            backup_id=bid,
            created_at=created,
            keyring=Keyring.parse(NEW_KEY),
        )
    archive = {"size": stats.archive_bytes, "sha256": stats.sha256, "key_id": header.key_id}
    created_at = created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    m = Manifest.from_dict(
        {
            "manifest_version": 1,
            "tenant_id": tenant,
            "backup_id": bid,
            "created_at": created_at,
            "archive": archive,
            "tables": {},
        }
    )
    return path, m, payload


@pytest.mark.parametrize("point,nth", [("prune.delete", 3), ("gc.remove", 2)], ids=str)
def test_a_killed_prune_ends_at_its_plan_after_one_rerun(point, nth, tmp_path, s3_server, b2_server, monkeypatch):
    env = site_env(tmp_path, s3_server, b2_server, "local,r2,b2")
    env.update(TENANT_BACKUP_KEYS=NEW_KEY, TENANT_BACKUP_RETENTION_R2_DAYS="30", TENANT_BACKUP_RETENTION_B2_DAYS="30")
    locs = use(env, monkeypatch, TENANT_BACKUP_GC_GRACE_S="0")
    t = str(uuid.uuid4())
    made = {d: aged_archive(tmp_path, t, d) for d in (100, 200, 300, 400)}
    for path, m, _ in made.values():
        for loc in locs.values():
            loc.put(t, m.backup_id, path, m)
    for loc in locs.values():  # what killed writes left: a folder without manifest, a superseded archive
        raw = loc.inner
        raw._put_bytes(raw.backup_prefix(t, "orphan-1") + "archive-0123456789abcdef.tbk", b"x" * 1000)
        raw._put_bytes(raw.backup_prefix(t, made[100][1].backup_id) + "archive-fedcba9876543210.tbk", b"y" * 700)
    s3_server.client().create_multipart_upload(Bucket=env["R2_BUCKET"], Key=f"tenants/{t}/orphan-2/archive-00.tbk")
    kept = {made[100][1].backup_id, made[200][1].backup_id}  # TENANT_BACKUP_KEEP_MIN=2 (retention 30 days)

    killed(env, point, nth, "prune", TENANT_BACKUP_GC_GRACE_S="0")
    assert cli_main(["prune"]) == 0  # the one re-run

    for name, loc in locs.items():
        assert {r.backup_id for r in loc.list(t)} == kept, name
        for bid in kept:
            m = next(v[1] for v in made.values() if v[1].backup_id == bid)
            assert verify_copy(loc, t, bid, keyring=Keyring.parse(NEW_KEY)).ok
            got = loc.get(t, bid, tmp_path / f"{name}-{bid}.tbk").path
            out = io.BytesIO()
            with got.open("rb") as f:
                decode_archive(f, out, keyring=Keyring.parse(NEW_KEY))
            assert out.getvalue() == next(v[2] for v in made.values() if v[1].backup_id == bid)
            assert folder_objects(loc, t, bid) <= {
                "manifest.json",
                "verified.json",
                f"archive-{m.archive.sha256[:16]}.tbk",
                f"archive-{m.archive.sha256[:16]}.tbk.sha256",
            }
        assert loc.garbage(NOW + timedelta(days=1)) == [], name
