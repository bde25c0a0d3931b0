"""What a killed run leaves behind is removed by the next run (issue 24, items 2 and 4): real
`tenant-backup` processes killed with SIGKILL at a deterministic point (backup_assets/testing/faults.py
kill points), real PostgreSQL, real pg_restore. No mocks.

- `backup` killed right after its restore drill's pg_restore committed the tenant's rows: the scratch
  database stays with those rows; the next `backup` (the drill pool's start) drops it, but never a
  scratch database a live drill of another process holds, nor one a session is connected to.
- `rebuild` killed after downloading a copy into its tb-rebuild-* folder: the next command that uses
  the work directory removes the folder; a live process's folder stays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from conftest import CLI, ROOT, admin_exec

from backup_assets.core.checks.scratch_db import SCRATCH_PREFIX, create_scratch_database, drop_scratch_database
from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.embedded_pg import dsn_for
from backup_assets.core.leftovers import clean_leftovers
from backup_assets.core.settings import Settings
from backup_assets.core.workdir import work_folder

KILLED = -signal.SIGKILL


def _killed_at(point: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`tenant-backup ARGS` in a process of its own that SIGKILLs itself at kill point `point`."""
    code = (
        "import sys; from backup_assets.testing.faults import arm_kill_point; arm_kill_point(sys.argv[1]);"
        " from backup_assets.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, point, *args],
        env=CLI.environment(env),
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=600,
    )


def _drill_databases(admin_dsn: str) -> set[str]:
    conn = psycopg2.connect(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (SCRATCH_PREFIX,))
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def _rows(admin_dsn: str, name: str) -> int:
    """Rows in the tables of database `name` (what a drill restored there)."""
    conn = psycopg2.connect(dsn_for(admin_dsn, dbname=name))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT schemaname, relname FROM pg_stat_user_tables")
            total = 0
            for schema, table in cur.fetchall():
                cur.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
                total += cur.fetchone()[0]
            return total
    finally:
        conn.close()


@pytest.fixture
def env(sample_db, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    return {
        "DAGSTER_HOME": str(home),
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": generate_entry("crash1"),
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
        "TENANT_BACKUP_RETRIES": "0",
    }


def test_killed_drill_leaves_decrypted_rows_that_the_next_backup_drops(env, sample_db, sample_tenants):
    admin = sample_db.admin_dsn
    tenant = next(t.id for t in sample_tenants if t.status == "ACTIVE")
    before = _drill_databases(admin)

    killed = _killed_at("drill-restored", ["backup", "--tenant", tenant, "--workers", "1"], env)
    assert killed.returncode == KILLED, (killed.returncode, killed.stderr[-2000:])
    left = _drill_databases(admin) - before
    assert len(left) == 1, left  # the killed drill's database, with the tenant's decrypted rows in it
    dead = left.pop()
    assert _rows(admin, dead) > 0

    # Two scratch databases of live drills of other processes, which the clean-up must leave alone:
    # one whose drill holds its lock (as every drill does from before CREATE DATABASE), and one
    # without a lock but with a session in it (a drill of an older version, or a debugging session).
    holder = psycopg2.connect(admin)
    holder.autocommit = True
    held = create_scratch_database(holder)
    unlocked = f"{SCRATCH_PREFIX}20260101t000000z_0badc0de"
    admin_exec(admin, f'CREATE DATABASE "{unlocked}"')
    visitor = psycopg2.connect(dsn_for(admin, dbname=unlocked))
    try:
        again = CLI.run(["backup", "--tenant", tenant, "--workers", "1"], env, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        remaining = _drill_databases(admin)
        assert dead not in remaining  # dropped by the next run, before its own drill
        assert {held, unlocked} <= remaining  # never a database in use
        assert remaining - before - {held, unlocked} == set()  # the new run's own drill left nothing either
    finally:
        visitor.close()
        drop_scratch_database(holder, held)
        holder.close()
        admin_exec(admin, f'DROP DATABASE IF EXISTS "{unlocked}" WITH (FORCE)')
        for name in _drill_databases(admin) - before:
            admin_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_periodic_clean_up_of_the_configured_scratch_server(env, sample_db, tmp_path):
    """The daily verify job's clean-up (core/leftovers.py clean_leftovers): dead drills' databases on
    TENANT_BACKUP_SCRATCH_DSN and dead runs' folders under the work directory go; live ones stay."""
    admin = sample_db.admin_dsn
    # A real drill's database whose process died: created (and locked) by a process that is then killed.
    code = (
        "import os, signal, sys, psycopg2; from backup_assets.core.checks.scratch_db import create_scratch_database;"
        " c = psycopg2.connect(sys.argv[1]); c.autocommit = True; print(create_scratch_database(c), flush=True);"
        " os.kill(os.getpid(), signal.SIGKILL)"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, admin], env=CLI.environment({}), capture_output=True, text=True, timeout=60
    )
    assert child.returncode == KILLED, child.stderr
    dead = child.stdout.strip()
    holder = psycopg2.connect(admin)
    holder.autocommit = True
    live = create_scratch_database(holder)
    settings = Settings.from_env(env)
    work = Path(settings.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = work / "tmp" / "tb-verify-killed"
    stale.mkdir(parents=True)
    (stale / "owner.json").write_text(json.dumps({"pid": gone.pid, "start": None, "host": os.uname().nodename}))
    (stale / "archive.tbk").write_bytes(b"x" * 1000)
    try:
        with work_folder(work, "tb-rebuild-") as mine:  # this live process's: stays
            collected = clean_leftovers(settings)
            assert mine.exists()
        assert dead in collected.databases and live not in collected.databases, collected
        assert collected.folders == [stale] and not stale.exists()
        assert dead not in _drill_databases(admin) and live in _drill_databases(admin)
    finally:
        drop_scratch_database(holder, live)
        holder.close()
        admin_exec(admin, f'DROP DATABASE IF EXISTS "{dead}" WITH (FORCE)')


def test_killed_rebuild_leaves_a_folder_that_the_next_command_removes(tmp_path):
    from test_verify_all import KEYS, NOW, small_archive

    from backup_assets.core.archive.manifest import Manifest
    from backup_assets.core.locations import locations_from_env
    from backup_assets.testing.s3_server import S3Server

    with S3Server() as s3:
        bucket = "crash-rebuild"
        s3.create_bucket(bucket)
        env = {
            "TENANT_BACKUP_KEYS": KEYS,
            "TENANT_BACKUP_LOCATIONS": "local,r2",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "R2_ENDPOINT_URL": s3.url,
            "R2_ACCESS_KEY_ID": s3.access_key or "testing",
            "R2_SECRET_ACCESS_KEY": s3.secret_key,
            "R2_BUCKET": bucket,
            "TENANT_BACKUP_STORAGE_ATTEMPTS": "1",
        }
        local = locations_from_env(None, env)["local"]
        tenant = "6f0c2a4e-8f7b-4a59-9a51-3d2b1c0e9a77"
        path, manifest = small_archive(tmp_path, tenant, NOW)
        local.put(tenant, manifest["backup_id"], path, Manifest.from_dict(manifest))
        work = tmp_path / "work"

        killed = _killed_at("rebuild-downloaded", ["rebuild", "--location", "r2"], env)
        assert killed.returncode == KILLED, (killed.returncode, killed.stderr[-2000:])
        folders = list(work.glob("tb-rebuild-*"))
        assert len(folders) == 1 and (folders[0] / "archive.tbk").stat().st_size > 0, folders
        assert folders[0].stat().st_mode & 0o777 == 0o700  # owner-only, under TENANT_BACKUP_WORK_DIR

        again = CLI.run(["rebuild", "--location", "r2"], env)  # the re-run: removes it, then does the work
        assert again.returncode == 0, again.stderr[-2000:]
        assert "removed the temporary folder of a run that did not end" in again.stderr
        assert list(work.glob("tb-*")) == [] and list(work.glob("tenant-restore-*")) == []
        assert [r.backup_id for r in locations_from_env(None, env)["r2"].list(tenant)] == [manifest["backup_id"]]
