"""The manifest is authenticated (issue 18.2): a stored manifest edited in any field restore, verify,
prune and status act on is refused by each of them with the archive-error exit code (6), real CLI
subprocesses against a real local location and the sample database; a manifest written before
manifests were sealed is read with a warning, never trusted by restore --replace, and re-sealed by
`verify --deep --seal` or `keys rewrap` after a deep proof."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import CLI

from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.archive.seal import seal_key, sealed_bytes
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.errors import ManifestNotAuthentic
from backup_assets.core.locations.local import LocalLocation
from backup_assets.core.settings import SourceSettings

ROOT = Path(__file__).resolve().parent.parent
KEYS = generate_entry("seal1")
NEW_KEYS = generate_entry("seal2")


@pytest.fixture(scope="module")
def tenant(sample_tenants):
    return next(t for t in sample_tenants if t.status == "ACTIVE")


@pytest.fixture(scope="module")
def exported(sample_db, tenant, tmp_path_factory):
    """(archive path, sealed manifest dict) of one sample tenant, exported once."""
    path = tmp_path_factory.mktemp("seal") / "tenant.tbk"
    manifest = export_tenant(SourceSettings(dsn=sample_db.backup_dsn), Keyring.parse(KEYS), tenant.id, path)
    return path, manifest.to_dict()  # edited below as the JSON a bucket holds


def _env(sample_db, tenant, root: Path, keys: str = KEYS) -> dict[str, str]:
    return {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        # status asks the registry who must have backups: only this tenant
        "TENANT_BACKUP_TENANTS_QUERY": f"SELECT id::text FROM tenants WHERE id = '{tenant.id}'",
        "TENANT_BACKUP_KEYS": keys,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(root / "local"),
        "TENANT_BACKUP_WORK_DIR": str(root / "work"),
    }


def cli(*commands: list[str], env, cwd) -> list[tuple[int, str, str]]:
    """Run the commands at once (each its own `tenant-backup` process): [(exit code, stdout, stderr)]."""
    procs = [CLI.spawn(args, env, cwd) for args in commands]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    return results


def _stored(root: Path, manifest: dict) -> Path:
    return root / "local" / "tenants" / manifest["tenant_id"] / manifest["backup_id"] / "manifest.json"


def _store(root: Path, exported) -> dict:
    path, manifest = exported
    LocalLocation(root / "local").put(manifest["tenant_id"], manifest["backup_id"], path, Manifest.from_dict(manifest))
    return copy.deepcopy(manifest)


def _write(root: Path, manifest: dict, edited: dict) -> None:
    _stored(root, manifest).write_text(json.dumps(edited, indent=2, sort_keys=True))


def _first_tenant_table(m: dict) -> str:
    return sorted(m["table_kinds"]["tenant"])[0]


def _drop_table(m: dict) -> None:
    """The reported case: one table gone from tables and table_kinds."""
    table = _first_tenant_table(m)
    del m["tables"][table]
    m["table_kinds"]["tenant"].remove(table)


def _move_kind(m: dict) -> None:
    table = _first_tenant_table(m)
    m["table_kinds"]["tenant"].remove(table)
    m["table_kinds"]["shared"].append(table)


EDITS = {
    "tenant_id": lambda m: m.update(tenant_id="00000000-0000-4000-8000-0000000000aa"),
    "backup_id": lambda m: m.update(backup_id=new_backup_id()),
    "created_at": lambda m: m.update(created_at="2020-01-01T00:00:00.000000Z"),
    "archive.sha256": lambda m: m["archive"].update(sha256="0" * 64),
    "archive.size": lambda m: m["archive"].update(size=m["archive"]["size"] + 1),
    "archive.key_id": lambda m: m["archive"].update(key_id="seal2"),
    "tables": _drop_table,
    "tables.rows": lambda m: m["tables"].update({_first_tenant_table(m): m["tables"][_first_tenant_table(m)] + 1}),
    "table_kinds": _move_kind,
    "source.tenant_column": lambda m: m["source"].update(tenant_column="no_such_column"),
    "source.tenant_setting": lambda m: m["source"].update(tenant_setting="app.another_tenant"),
    "raw_size": lambda m: m.update(raw_size=m["raw_size"] + 1),
    "pg_dump_version": lambda m: m.update(pg_dump_version="pg_dump (PostgreSQL) 13.0"),
}


@pytest.mark.parametrize("field", list(EDITS))
def test_an_edited_manifest_is_refused_by_every_command(field, exported, sample_db, tenant, tmp_path, fresh_db):
    manifest = _store(tmp_path, exported)
    edited = copy.deepcopy(manifest)
    EDITS[field](edited)
    assert edited != manifest
    _write(tmp_path, manifest, edited)
    env = _env(sample_db, tenant, tmp_path)
    target = fresh_db("sealtarget")
    results = cli(
        ["restore", "--tenant", tenant.id, "--location", "local", "--target-dsn", target],
        ["verify", "--tenant", tenant.id],
        ["prune"],
        ["status"],
        env=env,
        cwd=tmp_path,
    )
    for name, (code, out, err) in zip(("restore", "verify", "prune", "status"), results, strict=True):
        assert code == 6, f"{name} after editing {field}: exit {code}\n{out}\n{err}"
        assert "Traceback" not in err, err
        assert "fails authentication" in out + err or "describes tenant" in out + err, (name, out, err)
    # Nothing was restored, nothing pruned.
    assert _stored(tmp_path, manifest).exists()


def test_the_reported_case_restore_replace_of_a_half_manifest(exported, sample_db, tenant, tmp_path):
    """Reported: one table removed from tables and table_kinds, `restore --replace` exited 0 with the
    tenant half restored. Sealed: refused (6). Seal stripped too: refused as unsealed (6)."""
    manifest = _store(tmp_path, exported)
    edited = copy.deepcopy(manifest)
    _drop_table(edited)
    env = _env(sample_db, tenant, tmp_path)
    replace = ["restore", "--tenant", tenant.id, "--location", "local", "--replace", "--dry-run"]
    for variant in (edited, {k: v for k, v in edited.items() if k != "seal"}):
        _write(tmp_path, manifest, variant)
        [(code, out, err)] = cli([*replace, "--target-dsn", sample_db.admin_dsn], env=env, cwd=tmp_path)
        assert code == 6, (out, err)
        assert ("fails authentication" if "seal" in variant else "not sealed") in err
    # Into an empty database, the unsealed half manifest is refused too: the archive holds table data
    # the manifest does not list.
    [(code, out, err)] = cli(
        ["restore", "--tenant", tenant.id, "--location", "local", "--target-dsn", sample_db.admin_dsn],
        env=env,
        cwd=tmp_path,
    )
    assert code == 6 and "does not list" in err, (out, err)


def test_a_bogus_tenant_column_no_longer_verifies_by_checking_nothing(exported, sample_db, tenant, tmp_path):
    """Reported: source.tenant_column set to a column that does not exist, `verify --deep` said
    "isolated: N rows scanned". Sealed: refused. Unsealed: the deep check fails and nothing is sealed."""
    manifest = _store(tmp_path, exported)
    unsealed = {k: v for k, v in manifest.items() if k != "seal"}
    unsealed["source"] = dict(unsealed["source"], tenant_column="no_such_column")
    _write(tmp_path, manifest, unsealed)
    env = _env(sample_db, tenant, tmp_path)
    [(code, out, err)] = cli(["verify", "--tenant", tenant.id, "--deep", "--seal"], env=env, cwd=tmp_path)
    assert code == 1, (out, err)
    assert "not the manifest's tenant tables" in out and "isolated:" not in out
    assert "seal" not in json.loads(_stored(tmp_path, manifest).read_text())


def test_an_unsealed_manifest_warns_and_is_sealed_by_a_deep_verify(exported, sample_db, tenant, tmp_path):
    manifest = _store(tmp_path, exported)
    old = {k: v for k, v in manifest.items() if k != "seal"}  # as written before manifests were sealed
    _write(tmp_path, manifest, old)
    env = _env(sample_db, tenant, tmp_path)
    replace = ["restore", "--tenant", tenant.id, "--location", "local", "--replace", "--dry-run"]
    verify, prune, status, refused = cli(
        ["verify", "--tenant", tenant.id],
        ["prune"],
        ["status"],
        [*replace, "--target-dsn", sample_db.admin_dsn],
        env=env,
        cwd=tmp_path,
    )
    assert verify[0] == 0 and "WARNING: manifest not sealed" in verify[1], verify
    assert prune[0] == 0 and "is not sealed" in prune[2], prune
    assert status[0] == 0 and "is not sealed" in status[2], status
    assert refused[0] == 6 and "not sealed" in refused[2] and "--seal" in refused[2], refused

    assert cli(["verify", "--tenant", tenant.id, "--seal"], env=env, cwd=tmp_path)[0][0] == 2  # --seal needs --deep
    [(code, out, err)] = cli(["verify", "--tenant", tenant.id, "--deep", "--seal"], env=env, cwd=tmp_path)
    assert code == 0 and "manifest sealed with key 'seal1'" in out, (out, err)
    stored = json.loads(_stored(tmp_path, manifest).read_text())
    assert stored == manifest  # the very seal export made: same fields, same key
    [(code, out, err)] = cli([*replace, "--target-dsn", sample_db.admin_dsn], env=env, cwd=tmp_path)
    assert code == 0, (out, err)


def test_keys_rewrap_seals_unsealed_manifests(exported, sample_db, tenant, tmp_path):
    manifest = _store(tmp_path, exported)
    _write(tmp_path, manifest, {k: v for k, v in manifest.items() if k != "seal"})
    env = _env(sample_db, tenant, tmp_path)
    # Under the active key: the manifest is sealed after a deep proof, the archive untouched.
    [(code, out, err)] = cli(["keys", "rewrap"], env=env, cwd=tmp_path)
    assert code == 0 and "1 manifests sealed" in out, (out, err)
    assert json.loads(_stored(tmp_path, manifest).read_text()) == manifest
    # Under a new key: re-wrapped and sealed with the new key; the old key can go.
    _write(tmp_path, manifest, {k: v for k, v in manifest.items() if k != "seal"})
    [(code, out, err)] = cli(["keys", "rewrap"], env=dict(env, TENANT_BACKUP_KEYS=f"{NEW_KEYS},{KEYS}"), cwd=tmp_path)
    assert code == 0 and "1 re-wrapped" in out, (out, err)
    stored = json.loads(_stored(tmp_path, manifest).read_text())
    assert stored["seal"]["key_id"] == stored["archive"]["key_id"] == "seal2"
    new_only = dict(env, TENANT_BACKUP_KEYS=NEW_KEYS)
    [(code, out, err)] = cli(["verify", "--tenant", tenant.id, "--deep"], env=new_only, cwd=tmp_path)
    assert code == 0 and "WARNING" not in out, (out, err)


def test_keys_rewrap_refuses_an_edited_manifest_and_leaves_it(exported, sample_db, tenant, tmp_path):
    manifest = _store(tmp_path, exported)
    edited = copy.deepcopy(manifest)
    _drop_table(edited)
    _write(tmp_path, manifest, edited)
    env = dict(_env(sample_db, tenant, tmp_path), TENANT_BACKUP_KEYS=f"{NEW_KEYS},{KEYS}")
    [(code, out, err)] = cli(["keys", "rewrap"], env=env, cwd=tmp_path)
    assert code == 6 and "fails authentication" in out, (out, err)
    assert json.loads(_stored(tmp_path, manifest).read_text()) == edited  # not laundered under the new key


def test_the_seal_is_the_documented_hmac(exported):
    """docs/MANIFEST.md defines the seal well enough to re-implement it: HKDF-SHA256 of the master key,
    HMAC-SHA256 over the canonical JSON of the sealed fields."""
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    _, manifest = exported
    master = base64.b64decode(KEYS.split(":", 1)[1])
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tenant-backup manifest seal v1").derive(master)
    assert key == seal_key(master)
    fields = ("manifest_version", "tenant_id", "backup_id", "created_at", "raw_size", "tables", "table_kinds")
    doc = {name: manifest.get(name) for name in (*fields, "source", "pg_dump_version")}
    doc["archive"] = {k: manifest["archive"][k] for k in ("sha256", "size", "key_id")}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert canonical == sealed_bytes(Manifest.from_dict(manifest))
    assert manifest["seal"] == {
        "alg": "HMAC-SHA256",
        "key_id": "seal1",
        "mac": hmac.new(key, canonical, hashlib.sha256).hexdigest(),
        "version": 1,
    }
    # Fields outside the seal may change (a location's own, the file name, the drill's record).
    free = Manifest.from_dict({**manifest, "drill": {"ok": True}, "timings": {}, "mine": 1})
    assert free.with_archive(file="other.tbk").verify_seal(Keyring.parse(KEYS))
    with pytest.raises(ManifestNotAuthentic):
        Manifest.from_dict({**manifest, "seal": {**manifest["seal"], "mac": "0" * 64}}).verify_seal(Keyring.parse(KEYS))


def test_export_writes_a_sealed_manifest(sample_db, tenant, tmp_path):
    manifest = export_tenant(
        SourceSettings(dsn=sample_db.backup_dsn), Keyring.parse(KEYS), tenant.id, tmp_path / "a.tbk", ExportOptions()
    )
    assert manifest.verify_seal(Keyring.parse(KEYS)) is True


# ------------------------------------------------------------------------------------------ Dagster


@pytest.fixture(scope="module")
def dagster_backup(sample_db, tenant, pg_server_dsn, tmp_path_factory):
    """One real tenant_backup run into a local location: (defs, instance, env)."""
    import warnings

    from dagster import instance_for_test

    from backup_assets.core.settings import Settings
    from backup_assets.defs.build import build_definitions

    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    root = tmp_path_factory.mktemp("seal-dagster")
    env = {
        **_env(sample_db, tenant, root),
        "TENANT_BACKUP_SCRATCH_DSN": pg_server_dsn,
        "TENANT_BACKUP_RETRIES": "1",
        "TENANT_BACKUP_RETRY_DELAY_S": "0",
    }
    defs = build_definitions(Settings.from_env(env))
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [tenant.id])
        run = defs.resolve_job_def("tenant_backup").execute_in_process(
            partition_key=tenant.id, instance=instance, raise_on_error=False
        )
        assert run.success
        yield defs, instance, root


def _copy_checks(defs, instance, tenant_id: str) -> dict[str, tuple[bool, str]]:
    """The local copy's checks alone (no asset materialized): check -> (passed, message)."""
    from dagster import AssetCheckKey, AssetKey

    keys = {AssetCheckKey(AssetKey("local_copy"), name) for name in ("checksum", "integrity")}
    job = defs.resolve_job_def("tenant_backup").get_subset(asset_selection=set(), asset_check_selection=keys)
    result = job.execute_in_process(partition_key=tenant_id, instance=instance, raise_on_error=False)
    return {e.check_name: (e.passed, e.metadata["message"].value) for e in result.get_asset_check_evaluations()}


@pytest.mark.parametrize("field", list(EDITS))
def test_the_dagster_copy_check_refuses_an_edited_manifest(field, dagster_backup, tenant):
    defs, instance, root = dagster_backup
    [ref] = LocalLocation(root / "local").list(tenant.id)
    path = root / "local" / "tenants" / tenant.id / ref.backup_id / "manifest.json"
    original = path.read_text()
    before = _copy_checks(defs, instance, tenant.id)
    assert before["checksum"][0] and before["integrity"][0], before
    edited = json.loads(original)
    EDITS[field](edited)
    try:
        path.write_text(json.dumps(edited, indent=2, sort_keys=True))
        checks = _copy_checks(defs, instance, tenant.id)
    finally:
        path.write_text(original)
    assert checks["checksum"][0] is False and checks["integrity"][0] is False, checks
    assert "fails authentication" in checks["checksum"][1], checks
