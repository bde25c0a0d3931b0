"""Issue 19.4: one copy check. `tenant-backup verify --deep` and the Dagster copy checks are the same
check (core/maintenance/copy_check.py verify_copy) and fail alike: a copy whose manifest sits under
another tenant's path, and a copy holding another tenant's rows. Both record the same thing beside the
copy (verified.json, read by `status`). The location IO manager loads the backup the asset's
materialization stored, not the location's newest."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from conftest import CLI, EXIT
from dagster import AssetCheckKey, AssetKey, build_input_context, instance_for_test

from backup_assets.core.codec.format import encode_archive
from backup_assets.core.settings import Settings
from backup_assets.core.source.pgbin import pg_program
from backup_assets.defs.build import build_definitions
from backup_assets.defs.resources import stored_backup_id
from backup_assets.defs.runs.in_process import run_tenant

warnings.filterwarnings("ignore", category=Warning, module="dagster")


@pytest.fixture(scope="module")
def site(sample_db, sample_tenants, pg_server_dsn, keys, tmp_path_factory):
    """Two tenants backed up through Dagster into a local location: (env, defs, instance, {tenant: outcome})."""
    root = tmp_path_factory.mktemp("copycheck")
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": keys,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(root / "local"),
        "TENANT_BACKUP_WORK_DIR": str(root / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": pg_server_dsn,
        "TENANT_BACKUP_RETRIES": "0",
    }
    defs = build_definitions(Settings.from_env(env))
    a, b = (t.id for t in sample_tenants[:2])
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [a, b])
        outcomes = {t: run_tenant(defs, instance, t) for t in (a, b)}
        assert all(o.ok for o in outcomes.values()), outcomes
        yield env, defs, instance, outcomes


def _stored(env, tenant: str) -> Path:
    [folder] = (Path(env["TENANT_BACKUP_LOCAL_DIR"]) / "tenants" / tenant).iterdir()
    return folder


def _dagster_checks(defs, instance, tenant: str) -> dict[str, tuple[bool, str]]:
    """The local copy's two checks alone, as a re-run of them: check -> (passed, message)."""
    keys = {AssetCheckKey(AssetKey("local_copy"), name) for name in ("checksum", "integrity")}
    job = defs.resolve_job_def("tenant_backup").get_subset(asset_selection=set(), asset_check_selection=keys)
    result = job.execute_in_process(partition_key=tenant, instance=instance, raise_on_error=False)
    return {e.check_name: (e.passed, str(e.metadata["message"].value)) for e in result.get_asset_check_evaluations()}


def _verify_deep(env, tenant: str, backup_id: str):
    return CLI.run(["verify", "--tenant", tenant, "--backup", backup_id, "--deep", "--json"], env)


@pytest.fixture
def replaced(site):
    """Swap the files of tenant B's stored copy for others (restored after the test)."""
    env, _defs, _instance, outcomes = site
    b = list(outcomes)[1]
    folder = _stored(env, b)
    saved = folder.parent / ".saved"
    shutil.copytree(folder, saved)
    yield b, folder
    shutil.rmtree(folder)
    saved.rename(folder)


def test_both_pass_on_good_copies_and_record_the_same_thing(site):
    env, defs, instance, outcomes = site
    tenant = list(outcomes)[0]
    folder = _stored(env, tenant)
    checks = _dagster_checks(defs, instance, tenant)
    assert checks["checksum"][0] and checks["integrity"][0], checks
    by_dagster = json.loads((folder / "verified.json").read_text())
    result = _verify_deep(env, tenant, folder.name)
    assert result.returncode == 0, result.stderr
    by_cli = json.loads((folder / "verified.json").read_text())
    same = ("tenant_id", "backup_id", "location", "sha256", "ok", "deep")
    assert [by_dagster[k] for k in same] == [by_cli[k] for k in same] and by_cli["deep"] is True
    assert (by_dagster["by"], by_cli["by"]) == ("local_copy checks", "tenant-backup verify --deep")


def test_a_manifest_under_another_tenant_s_path_fails_both(site, replaced):
    env, defs, instance, outcomes = site
    a = list(outcomes)[0]
    b, folder = replaced
    other = _stored(env, a)
    for f in other.iterdir():  # A's copy (manifest, archive, sidecar), authentic, under B's path
        shutil.copy(f, folder / f.name)
    result = _verify_deep(env, b, folder.name)
    assert result.returncode == EXIT["archive"], result.stderr
    assert f"describes tenant '{a}'" in result.stderr + result.stdout
    checks = _dagster_checks(defs, instance, b)
    assert checks["checksum"] == (False, checks["checksum"][1]) and f"describes tenant '{a}'" in checks["checksum"][1]
    assert checks["integrity"][0] is False


def test_a_copy_holding_another_tenant_s_rows_fails_both(site, replaced, sample_db, keyring, tmp_path):
    """B's copy replaced by an archive of every tenant's rows of B's tables (a dump that bypassed row-level
    security), under B's ids and a manifest sealed with the keyring: authentic and checksum-correct,
    and still refused by both, the rows being scanned."""
    from backup_assets.core.locations.local import LocalLocation

    env, defs, instance, _ = site
    b, folder = replaced
    loc = LocalLocation(env["TENANT_BACKUP_LOCAL_DIR"])
    manifest = loc.get_manifest(b, folder.name)
    tables = [arg for table in sorted(manifest.tables) for arg in ("--table", table)]
    dump = subprocess.Popen(
        [pg_program("pg_dump"), "--format=custom", "--compress=0", f"--dbname={sample_db.admin_dsn}", *tables],
        stdout=subprocess.PIPE,
    )
    archive = tmp_path / "leaky.tbk"
    with archive.open("wb") as out:
        header, stats = encode_archive(
            dump.stdout.read, out, tenant_id=b, backup_id=folder.name, created_at=manifest.created_at, keyring=keyring
        )
    assert dump.wait() == 0
    leaky = manifest.with_archive(size=stats.archive_bytes, sha256=stats.sha256, key_id=header.key_id)
    leaky = leaky.copy(raw_size=stats.raw_bytes).with_seal(keyring)
    loc.put(b, folder.name, archive, leaky)

    result = _verify_deep(env, b, folder.name)
    assert result.returncode == EXIT["failed"], result.stderr
    [copy] = json.loads(result.stdout)["copies"]
    assert copy["state"] == "failed" and "rows of other tenants" in copy["message"], copy
    checks = _dagster_checks(defs, instance, b)
    assert checks["checksum"][0] is True  # the bytes are the manifest's
    assert checks["integrity"][0] is False and "rows of other tenants" in checks["integrity"][1], checks


def test_the_location_io_manager_loads_this_run_s_backup(site):
    env, defs, instance, outcomes = site
    tenant = list(outcomes)[0]
    first = outcomes[tenant]
    second = run_tenant(defs, instance, tenant)  # a newer backup of the same tenant
    assert second.ok, second
    key = AssetKey("local_copy")
    bids = {stored_backup_id(instance, key, tenant, run) for run in (first.run_id, second.run_id)}
    assert len(bids) == 2  # each run's own backup, not the location's newest for both
    assert stored_backup_id(instance, key, tenant, None) == stored_backup_id(instance, key, tenant, second.run_id)
    manager = defs.resources["local_io_manager"]
    context = build_input_context(
        asset_key=key, partition_key=tenant, instance=instance, resources={"backup": defs.resources["backup"]}
    )
    handle = manager.load_input(context)
    assert (handle.tenant_id, handle.backup_id) == (tenant, stored_backup_id(instance, key, tenant, None))
    assert handle.manifest.backup_id == handle.backup_id
