"""list / verify / prune / keys rewrap against real locations: a local directory, the loopback S3
server (R2) and the loopback B2 server; real archives (encode_archive, or export_tenant from the
sample database where a deep check needs a real pg_dump inside)."""

from __future__ import annotations

import io
import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_assets.cli import main as cli_main
from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.codec.format import decode_archive, encode_archive, read_header
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.maintenance.retention import Candidate, plan_prune
from backup_assets.core.settings import Settings

NOW = datetime.now(timezone.utc)
OLD_KEY = generate_entry("old1")
NEW_KEY = generate_entry("new2")


# ------------------------------------------------------------------------------------ pure decisions


def _c(tenant, days, verified=None, bid=None):
    created = None if days is None else NOW - timedelta(days=days)
    return Candidate(tenant, bid or new_backup_id(created or NOW), created, verified)


def _deleted(decisions):
    return {d.backup_id for d in decisions if d.delete}


def test_plan_keeps_within_retention_and_keep_min_deletes_the_rest():
    cs = [_c("t", d) for d in (1, 20, 40, 100, 400)]
    out = plan_prune(cs, retention_days=30, keep_min=2, now=NOW)
    assert _deleted(out) == {cs[2].backup_id, cs[3].backup_id, cs[4].backup_id}
    # keep_min counts per tenant, even when every backup is expired
    old = [_c("a", d) for d in (100, 200, 300)] + [_c("b", d) for d in (150,)]
    out = plan_prune(old, retention_days=30, keep_min=2, now=NOW)
    assert _deleted(out) == {old[2].backup_id}


def test_plan_keeps_the_newest_verified_even_past_keep_min():
    cs = [_c("t", 100, verified=False), _c("t", 200, verified=False), _c("t", 300, verified=True), _c("t", 400)]
    out = plan_prune(cs, retention_days=30, keep_min=1, now=NOW)
    assert _deleted(out) == {cs[1].backup_id, cs[3].backup_id}
    reasons = {d.backup_id: d.reason for d in out}
    assert "verifies" in reasons[cs[2].backup_id]


def test_plan_edge_cases():
    assert plan_prune([], retention_days=30, keep_min=2, now=NOW) == []
    unknown = [_c("t", None, bid="x1"), _c("t", 900), _c("t", 800), _c("t", 700)]
    out = plan_prune(unknown, retention_days=30, keep_min=1, now=NOW)
    assert "x1" not in _deleted(out)  # age unknown: never deleted on a guess
    assert _deleted(out) == {unknown[1].backup_id, unknown[2].backup_id}
    # exactly at the cutoff is expired; one second younger is kept
    edge = [
        _c("t", 1),
        Candidate("t", "b-edge", NOW - timedelta(days=30), None),
        Candidate("t", "b-young", NOW - timedelta(days=30) + timedelta(seconds=1), None),
    ]
    assert _deleted(plan_prune(edge, retention_days=30, keep_min=1, now=NOW)) == {"b-edge"}
    with pytest.raises(ValueError):
        plan_prune(edge, retention_days=30, keep_min=0, now=NOW)


# ----------------------------------------------------------------------------------- real locations


@pytest.fixture
def env(s3_server, b2_server, tmp_path, monkeypatch):
    bucket = f"ops-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    b2_server.create_bucket(bucket)
    s3_server.faults.clear()
    b2_server.faults.clear()
    values = {
        "TENANT_BACKUP_KEYS": OLD_KEY,
        "TENANT_BACKUP_LOCATIONS": "local,r2,b2",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "R2_ENDPOINT_URL": s3_server.url,
        "R2_ACCESS_KEY_ID": s3_server.access_key or "testing",
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET": bucket,
        "B2_APPLICATION_KEY_ID": b2_server.key_id,
        "B2_APPLICATION_KEY": b2_server.key,
        "B2_BUCKET": bucket,
        "B2_REALM": b2_server.url,
        "TENANT_BACKUP_STORAGE_ATTEMPTS": "1",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TENANT_BACKUP_KEEP_MIN", raising=False)
    yield {**values, "bucket": bucket}
    s3_server.faults.clear()
    b2_server.faults.clear()


def run(*argv: str) -> int:
    """The commands as the `tenant-backup` entry point runs them (cli.main: TenantBackupError -> its
    exit code), in this process so that capsys sees their output."""
    return cli_main(list(argv))


def small_archive(tmp: Path, tenant: str, created: datetime, keys: str = OLD_KEY) -> tuple[Path, dict]:
    """A real archive (random payload: enough for checksum paths, not for pg_restore)."""
    bid = new_backup_id(created)
    path = tmp / f"{bid}.tbk"
    payload = os.urandom(3000)
    with path.open("wb") as out:
        header, stats = encode_archive(
            io.BytesIO(payload).read,
            out,
            tenant_id=tenant,
            backup_id=bid,
            created_at=created,
            keyring=Keyring.parse(keys),
        )
    manifest = {
        "manifest_version": 1,
        "tenant_id": tenant,
        "backup_id": bid,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "archive": {"size": stats.archive_bytes, "sha256": stats.sha256, "key_id": header.key_id},
        "tables": {"public.orders": 7, "public.items": 5},
    }
    return path, manifest


def put(locs, names, path, manifest):
    for n in names:
        locs[n].put(manifest["tenant_id"], manifest["backup_id"], path, Manifest.from_dict(manifest))


def flip_local(env, tenant, bid):
    p = next((Path(env["TENANT_BACKUP_LOCAL_DIR"]) / "tenants" / tenant / bid).glob("archive-*.tbk"))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def test_list_merges_locations_newest_first(env, tmp_path, capsys, s3_server):
    locs = Settings.from_env().locations()
    t1, t2 = str(uuid.uuid4()), str(uuid.uuid4())
    a = small_archive(tmp_path, t1, NOW - timedelta(days=3))
    b = small_archive(tmp_path, t1, NOW - timedelta(days=1))
    c = small_archive(tmp_path, t2, NOW - timedelta(days=2))
    put(locs, ["local", "r2", "b2"], *a)
    put(locs, ["r2", "b2"], *b)
    put(locs, ["b2"], *c)
    capsys.readouterr()

    assert run("list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["backup_id"] for r in rows] == [b[1]["backup_id"], c[1]["backup_id"], a[1]["backup_id"]]
    by_id = {r["backup_id"]: r for r in rows}
    assert by_id[a[1]["backup_id"]]["locations"] == ["local", "r2", "b2"]
    assert by_id[b[1]["backup_id"]]["locations"] == ["r2", "b2"]
    row = by_id[c[1]["backup_id"]]
    assert (row["tenant_id"], row["locations"], row["size"], row["key_id"], row["total_rows"]) == (
        t2,
        ["b2"],
        c[1]["archive"]["size"],
        "old1",
        12,
    )
    assert row["created_at"] == c[1]["created_at"]

    assert run("list", "--tenant", t1, "--location", "r2") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["TENANT", "BACKUP", "CREATED"]
    assert len(table) == 3 and b[1]["backup_id"] in table[1] and a[1]["backup_id"] in table[2]

    assert run("list", "--tenant", "not-a-uuid") == 2

    s3_server.faults.set(down=True)  # one location unreachable: the others still list, exit non-zero
    assert run("list", "--json") == 8
    captured = capsys.readouterr()
    assert {r["backup_id"] for r in json.loads(captured.out)} == {
        a[1]["backup_id"],
        b[1]["backup_id"],
        c[1]["backup_id"],
    }
    assert "warning: r2: cannot list" in captured.err
    assert run("verify", "--tenant", t1) == 1
    assert "FAIL r2" in capsys.readouterr().out


def test_verify_ok_then_flipped_bytes_fail(env, tmp_path, capsys, s3_server):
    locs = Settings.from_env().locations()
    t = str(uuid.uuid4())
    path, man = small_archive(tmp_path, t, NOW)
    put(locs, ["local", "r2", "b2"], path, man)
    capsys.readouterr()
    assert run("verify", "--tenant", t) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("ok") for line in out)

    flip_local(env, t, man["backup_id"])  # bit rot at rest
    assert run("verify", "--tenant", t, "--backup", man["backup_id"]) == 1
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["local"].startswith("FAIL") and "does not match its sha256/size" in lines["local"]
    assert lines["r2"].startswith("ok") and lines["b2"].startswith("ok")

    s3_server.faults.set(flip=1, match=".tbk")  # a byte flipped on the way from R2
    assert run("verify", "--tenant", t, "--location", "r2") == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("FAIL r2") and "does not match" in line

    assert run("verify", "--tenant", t, "--backup", "20200101T000000Z-00000000") == 8


def _export(sample_db, tenant_id: str, out: Path, keys: str) -> dict:
    from backup_assets.core.archive.export import ExportOptions, export_tenant
    from backup_assets.core.settings import SourceSettings

    return export_tenant(
        SourceSettings(dsn=sample_db.backup_dsn), Keyring.parse(keys), tenant_id, out, ExportOptions(zstd_threads=0)
    ).to_dict()


def test_verify_deep_and_wrong_keyring(env, tmp_path, capsys, sample_db, sample_tenants, monkeypatch):
    locs = Settings.from_env().locations()
    t = sample_tenants[0].id
    man = _export(sample_db, t, tmp_path / "a.tbk", OLD_KEY)
    put(locs, ["local", "r2", "b2"], tmp_path / "a.tbk", man)
    capsys.readouterr()
    assert run("verify", "--tenant", t, "--deep") == 0
    out = capsys.readouterr().out
    assert out.count("pg_restore --list read") == 3, out

    monkeypatch.setenv("TENANT_BACKUP_KEYS", generate_entry("old1"))  # same id, different key
    # The manifest is authenticated first (its seal, under 'old1'): refused with the archive-error code,
    # deep or not.
    assert run("verify", "--tenant", t, "--deep", "--location", "b2") == 6
    line = capsys.readouterr().out.strip()
    assert line.startswith("FAIL b2") and "fails authentication" in line and "old1" in line
    assert run("verify", "--tenant", t, "--location", "b2") == 6


def test_prune_keeps_newest_and_keep_min_removes_expired_everywhere(env, tmp_path, capsys, b2_server):
    locs = Settings.from_env().locations()
    t1, t2 = str(uuid.uuid4()), str(uuid.uuid4())
    ages1 = {d: small_archive(tmp_path, t1, NOW - timedelta(days=d)) for d in (10, 40, 100, 200, 400)}
    ages2 = {d: small_archive(tmp_path, t2, NOW - timedelta(days=d)) for d in (420, 450, 500)}
    for p, m in [*ages1.values(), *ages2.values()]:
        put(locs, ["local", "r2", "b2"], p, m)

    def present():
        return {n: {r.backup_id for r in loc.list()} for n, loc in locs.items()}

    before = present()
    capsys.readouterr()
    assert run("prune", "--dry-run") == 0
    out = capsys.readouterr().out
    assert present() == before
    assert out.count("would delete") >= 6
    # The locations are pruned at once, but what each prints comes location after location, in the
    # configured order, each location's summary after its own lines.
    order = [line.split()[2] if line.startswith("would ") else line.split(":")[0] for line in out.splitlines()]
    firsts = list(dict.fromkeys(order))
    assert firsts == ["local", "r2", "b2"], order
    assert order == sorted(order, key=firsts.index), order
    for name in firsts:
        assert out.splitlines()[len(order) - 1 - order[::-1].index(name)].startswith(f"{name}: ")

    assert run("prune") == 0
    out = capsys.readouterr().out
    bid1 = {d: m["backup_id"] for d, (p, m) in ages1.items()}
    bid2 = {d: m["backup_id"] for d, (p, m) in ages2.items()}
    after = present()
    # local (30 days): the newest (within retention, verified) + KEEP_MIN=2 -> 10 and 40 days stay.
    assert after["local"] == {bid1[10], bid1[40], bid2[420], bid2[450]}
    for n in ("r2", "b2"):  # 365 days
        assert after[n] == {bid1[10], bid1[40], bid1[100], bid1[200], bid2[420], bid2[450]}
    assert f"deleted b2    {t1} {bid1[400]}" in out
    for tenant, m in ((t1, ages1[400][1]), (t2, ages2[500][1])):
        gone = m["backup_id"]
        for name in (f"archive-{m['archive']['sha256'][:16]}.tbk", "manifest.json"):
            assert b2_server.versions(env["bucket"], f"tenants/{tenant}/{gone}/{name}") == 0

    assert run("prune") == 0  # nothing more to do
    assert "0 deleted" in capsys.readouterr().out


def test_prune_a_corrupt_newest_is_not_the_newest_verified(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TENANT_BACKUP_KEEP_MIN", "1")
    locs = Settings.from_env().locations(["local"])
    t = str(uuid.uuid4())
    arcs = {d: small_archive(tmp_path, t, NOW - timedelta(days=d)) for d in (100, 200, 300)}
    for p, m in arcs.values():
        put(locs, ["local"], p, m)
    flip_local(env, t, arcs[100][1]["backup_id"])
    capsys.readouterr()
    assert run("prune", "--location", "local") == 0
    left = {r.backup_id for r in locs["local"].list()}
    # 100 days: kept as KEEP_MIN=1 newest; it fails its checksum, so 200 days is the newest verified.
    assert left == {arcs[100][1]["backup_id"], arcs[200][1]["backup_id"]}

    monkeypatch.setenv("TENANT_BACKUP_KEEP_MIN", "0")
    assert run("prune") == 2  # a config error, nothing deleted
    assert {r.backup_id for r in locs["local"].list()} == left


def _payload(path: Path) -> bytes:
    with path.open("rb") as f:
        h = read_header(f)
        f.seek(h.header_size)
        return f.read()


def test_keys_rewrap_moves_every_copy_to_the_new_key(env, tmp_path, capsys, sample_db, sample_tenants, monkeypatch):
    locs = Settings.from_env().locations()
    made = []
    for i, tenant in enumerate(sample_tenants[:2]):
        path = tmp_path / f"exp{i}.tbk"
        man = _export(sample_db, tenant.id, path, OLD_KEY)
        put(locs, ["local", "r2", "b2"], path, man)
        made.append((path, man))
    # A backup under a key no longer in the keyring: reported, the others go on.
    gone_path, gone_man = small_archive(tmp_path, str(uuid.uuid4()), NOW, keys=generate_entry("gone0"))
    put(locs, ["local"], gone_path, gone_man)

    monkeypatch.setenv("TENANT_BACKUP_KEYS", f"{NEW_KEY},{OLD_KEY}")
    capsys.readouterr()
    assert run("keys", "rewrap") == 1
    out = capsys.readouterr().out
    assert "6 re-wrapped, 0 already under 'new2', 1 failed" in out, out
    assert f"failed    local {gone_man['tenant_id']}" in out and "gone0" in out

    only_new = Keyring.parse(NEW_KEY)
    for path, man in made:
        old_payload = _payload(path)
        for name, loc in locs.items():
            stored = loc.get_manifest(man["tenant_id"], man["backup_id"]).to_dict()
            st = loc.stat(man["tenant_id"], man["backup_id"])
            assert stored["archive"]["key_id"] == "new2"
            assert (stored["archive"]["sha256"], stored["archive"]["size"]) == (st.sha256, st.size)
            assert stored["archive"]["sha256"] != man["archive"]["sha256"]
            assert stored["tables"] == man["tables"]  # everything else untouched
            got = loc.get(man["tenant_id"], man["backup_id"], tmp_path / f"got-{name}.tbk").path
            assert _payload(got) == old_payload  # payload bytes identical: only the key block changed
            with got.open("rb") as f:
                header, _ = decode_archive(f, io.BytesIO(), keyring=only_new)
            assert header.key_id == "new2"

    # The old key can go: deep verification with the new key alone passes.
    monkeypatch.setenv("TENANT_BACKUP_KEYS", NEW_KEY)
    assert run("verify", "--tenant", made[0][1]["tenant_id"], "--deep") == 0

    locs["local"].delete(gone_man["tenant_id"], gone_man["backup_id"])
    capsys.readouterr()
    assert run("keys", "rewrap") == 0  # idempotent
    assert "0 re-wrapped, 6 already under 'new2', 0 failed" in capsys.readouterr().out


def flip_r2(s3_server, bucket, tenant, bid):
    c = s3_server.client()
    key = next(o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=f"tenants/{tenant}/{bid}/archive")["Contents"])
    obj = c.get_object(Bucket=bucket, Key=key)
    data = bytearray(obj["Body"].read())
    data[len(data) // 2] ^= 0x01
    c.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])


def test_rebuild_a_lost_location_from_the_others(env, tmp_path, capsys, s3_server):
    locs = Settings.from_env().locations()
    t1, t2 = str(uuid.uuid4()), str(uuid.uuid4())
    a1 = {d: small_archive(tmp_path, t1, NOW - timedelta(days=d)) for d in (5, 20, 60, 200)}
    a2 = {d: small_archive(tmp_path, t2, NOW - timedelta(days=d)) for d in (300, 400, 500)}
    for p, m in [*a1.values(), *a2.values()]:
        put(locs, ["r2", "b2"], p, m)  # the local disk was lost
    flip_r2(s3_server, env["bucket"], t1, a1[5][1]["backup_id"])  # R2's copy is damaged: B2's is used
    capsys.readouterr()

    assert run("rebuild", "--location", "local", "--dry-run") == 0
    assert "4 would be copied" in capsys.readouterr().out
    assert locs["local"].list() == []

    assert run("rebuild", "--location", "local") == 0
    out = capsys.readouterr().out
    # local keeps 30 days, and at least KEEP_MIN=2 per tenant
    want = {a1[5][1]["backup_id"], a1[20][1]["backup_id"], a2[300][1]["backup_id"], a2[400][1]["backup_id"]}
    assert {r.backup_id for r in locs["local"].list()} == want
    assert f"copied     local {t1} {a1[5][1]['backup_id']}: from b2" in out
    assert run("verify", "--tenant", t1, "--location", "local") == 0
    assert locs["local"].get_manifest(t1, a1[5][1]["backup_id"]).to_dict() == a1[5][1]

    flip_local(env, t1, a1[20][1]["backup_id"])
    capsys.readouterr()
    assert run("rebuild", "--location", "local") == 0  # without --repair a damaged copy is left alone
    assert "0 copied" in capsys.readouterr().out
    assert run("rebuild", "--location", "local", "--repair") == 0
    assert "1 copied, 0 failed" in capsys.readouterr().out
    assert run("verify", "--tenant", t1, "--location", "local", "--backup", a1[20][1]["backup_id"]) == 0
