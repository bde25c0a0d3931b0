"""Issue 18.5: concurrent `tenant-backup backup` commands on a brand-new DAGSTER_HOME (reported:
sqlite "table secondary_indexes already exists"), and backup ids with `..` refused as bad input
(exit 2, reported: 8). Real CLI subprocesses."""

from __future__ import annotations

import pytest
from conftest import CLI, EXIT

from backup_assets.core.codec.keyring import generate_entry

KEYS = generate_entry("first1")


def test_concurrent_backups_on_a_new_dagster_home(sample_db, sample_tenants, pg_server_dsn, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()  # brand new: no storage yet
    env = {
        "DAGSTER_HOME": str(home),
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": pg_server_dsn,
        "TENANT_BACKUP_RETRIES": "0",
    }
    tenants = [t for t in sample_tenants if t.status in ("ACTIVE", "SUSPENDED")]
    procs = [CLI.spawn(["-q", "backup", "--tenant", t.id, "--workers", "1", "--force"], env, tmp_path) for t in tenants]
    results = [(p.communicate(timeout=600), p.returncode) for p in procs]
    for (out, err), code in results:
        assert code == 0, f"exit {code}\n{out}\n{err}"
        assert "already exists" not in err and "Traceback" not in err, err
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:  # every run recorded in the one instance
        assert len(instance.get_runs()) == len(tenants)


@pytest.mark.parametrize("bad", ["a..b", "..", "20260101T000000Z-aa..bb", "../etc"])
def test_backup_ids_with_dots_are_bad_input(sample_db, sample_tenants, tmp_path, bad):
    tenant = sample_tenants[0].id
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
    }
    for args in (
        ["verify", "--tenant", tenant, "--backup", bad],
        ["restore", "--tenant", tenant, "--location", "local", "--backup", bad, "--target-dsn", sample_db.admin_dsn],
        ["restore", "--tenant", tenant, "--location", "auto", "--backup", bad, "--target-dsn", sample_db.admin_dsn],
    ):
        assert "invalid backup id" in CLI.error(CLI.run(args, env, tmp_path), EXIT["config"]), args
