"""One tenant again from the command line: Dagster's own `dagster asset materialize --partition`, and
`tenant-backup backup` refusing bad input before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import CLI, EXIT
from dagster import DagsterInstance

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.locations import locations_from_env

ROOT = Path(__file__).resolve().parent.parent


def _env(sample_db, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
            "TENANT_BACKUP_KEYS": generate_entry("cli"),
            "TENANT_BACKUP_LOCATIONS": "local",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
        }
    )
    env.update(extra)
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    return env


def test_dagster_asset_materialize_one_partition(sample_db, sample_tenants, tmp_path):
    env = _env(sample_db, tmp_path)
    tenant = sample_tenants[2].id
    os.environ["DAGSTER_HOME"], saved = env["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        with DagsterInstance.get() as instance:  # the registry sensor's job, done by hand here
            instance.add_dynamic_partitions("tenants", [tenant])
    finally:
        if saved is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = saved
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "backup_assets.definitions",
            "--select",
            "tenant_archive,local_copy",
            "--partition",
            tenant,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    refs = locations_from_env(["local"], env)["local"].list(tenant)
    assert len(refs) == 1
    # Only that tenant ran.
    assert {r.tenant_id for r in locations_from_env(["local"], env)["local"].list()} == {tenant}


def _backup(args, env):
    return CLI.run(["backup", *args], env, ROOT, timeout=300)


def test_backup_refuses_bad_ids_and_unlisted_tenants(sample_db, sample_tenants, tmp_path):
    env = _env(sample_db, tmp_path)
    bad = _backup(["--tenant", "1; DROP TABLE tenants"], env)
    assert "invalid tenant id" in CLI.error(bad, EXIT["config"])
    pending = next(t for t in sample_tenants if t.status == "PENDING_DELETION")
    refused = _backup(["--tenant", pending.id], env)
    assert "--force" in CLI.error(refused, EXIT["unknown tenant"])
    assert not (tmp_path / "local").exists()


def test_backup_with_a_listed_location_missing_its_settings(sample_db, sample_tenants, tmp_path):
    env = _env(sample_db, tmp_path, TENANT_BACKUP_LOCATIONS="local,r2")
    line = CLI.error(_backup(["--tenant", sample_tenants[0].id], env), EXIT["config"])
    assert "R2_ENDPOINT_URL" in line and "R2_BUCKET" in line


def test_backup_one_tenant_runs_only_configured_locations(sample_db, sample_tenants, tmp_path):
    env = _env(sample_db, tmp_path)
    tenant = sample_tenants[1].id
    result = _backup(["--tenant", tenant, "--workers", "1"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tenant_archive" in result.stdout and "local_copy" in result.stdout and "r2_copy" not in result.stdout
    assert tenant in result.stdout and "OK" in result.stdout
