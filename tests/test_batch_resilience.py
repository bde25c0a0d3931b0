"""The weekly run never silently misses a tenant (issue: weekly run): a worker killed with SIGKILL
mid-batch costs only the re-run of its tenant and its run is marked failed; a tenant another live
run is backing up is not backed up twice at once, and its staged files are left alone.

Real PostgreSQL (the sample database and Dagster's storage), real Dask worker processes, real
`tenant-backup backup` and `dagster asset materialize` processes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg2
from conftest import CLI, admin_exec
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.locations import locations_from_env
from backup_assets.defs.runs.guard import PROCESS_TAG, SKIPPED_TAG
from backup_assets.sample.generate import add_tenants, create_sample_database

ROOT = Path(__file__).resolve().parent.parent


def _instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _env(db, home: Path, tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_", "DAGSTER_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "DAGSTER_HOME": str(home),
            "TENANT_BACKUP_SOURCE_DSN": db.backup_dsn,
            "TENANT_BACKUP_KEYS": generate_entry("batch1"),
            "TENANT_BACKUP_LOCATIONS": "local",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "TENANT_BACKUP_SCRATCH_DSN": db.admin_dsn,
            "TENANT_BACKUP_RETRIES": "0",
        }
    )
    env.update(extra)
    return env


def _failure_message(instance: DagsterInstance, run_id: str) -> str:
    events = instance.all_logs(run_id)
    return " ".join(e.message or "" for e in events if e.dagster_event and e.dagster_event.is_failure)


def test_a_worker_killed_mid_batch_costs_only_the_rerun_of_its_tenant(pg_server_dsn, pg_dagster_home, tmp_path):
    db = create_sample_database(pg_server_dsn, f"batch_{secrets.token_hex(3)}")
    try:
        tenants = [t.id for t in add_tenants(db, 32, rows=5)]
        env = _env(db, pg_dagster_home, tmp_path)
        proc = CLI.spawn(["backup", "--all", "--workers", "2"], env, ROOT)
        output: list[str] = []
        readers = [
            threading.Thread(target=lambda s=s: output.append(s.read()), daemon=True)
            for s in (proc.stdout, proc.stderr)
        ]
        for reader in readers:
            reader.start()
        instance = _instance(pg_dagster_home)
        killed = None
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            done = instance.get_runs_count(RunsFilter(job_name="tenant_backup", statuses=[DagsterRunStatus.SUCCESS]))
            running = instance.get_run_records(
                RunsFilter(job_name="tenant_backup", statuses=[DagsterRunStatus.STARTED])
            )
            if done >= 4 and running:  # mid-batch, while a worker is inside a tenant's run
                record = running[0]
                pid = int(record.dagster_run.tags[PROCESS_TAG].split("/")[1])
                os.kill(pid, signal.SIGKILL)
                killed = record.dagster_run
            time.sleep(0.2)
        assert killed is not None, "no run was seen executing: " + "\n".join(output)[-3000:]
        code = proc.wait(timeout=600)
        for reader in readers:
            reader.join(timeout=10)
        text = "\n".join(output)
        assert code == 0, text[-3000:]

        # Every tenant backed up by the end of that same batch, the killed one included: none missing,
        # and none backed up twice (a task whose finished result died with the worker is redelivered;
        # it finds its tenant's successful run of this batch and returns it).
        local = locations_from_env(["local"], env)["local"]
        assert {ref.tenant_id for ref in local.list()} == set(tenants)
        # One finished backup per tenant: exactly one local_copy materialization each.
        copies = Counter(
            r.partition_key
            for r in instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey("local_copy")), limit=1000
            ).records
        )
        assert set(copies) == set(tenants), set(tenants) - set(copies)
        assert {t: n for t, n in copies.items() if n > 1} == {}, copies
        # In the location: every tenant once; at most the tenant whose put the kill interrupted may also
        # hold what that dead run stored before its materialization was recorded.
        stored = Counter(ref.tenant_id for ref in local.list())
        assert len([t for t, n in stored.items() if n > 1]) <= 1, stored
        # The dead worker's run: marked failed, saying why; no run of the batch is left executing.
        run = instance.get_run_by_id(killed.run_id)
        assert run.status == DagsterRunStatus.FAILURE
        message = _failure_message(instance, killed.run_id)
        assert "gone" in message or "died" in message, message
        assert not instance.get_runs(RunsFilter(job_name="tenant_backup", statuses=[DagsterRunStatus.STARTED]))
        # Runs of many partitions: far fewer runs than tenants.
        assert len(instance.get_runs(RunsFilter(job_name="tenant_backup"))) < len(tenants) // 2
    finally:
        admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')


# A gate on one tenant's rows: while the test holds advisory lock 4242, reading that tenant's branches
# waits (a restrictive policy: it can only ever take rows away, never add any).
GATE = """
CREATE FUNCTION public.tb_test_gate(tenant uuid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF tenant::text = '{busy}' THEN
        PERFORM pg_advisory_lock_shared(4242);
        PERFORM pg_advisory_unlock_shared(4242);
    END IF;
    RETURN true;
END $$;
CREATE POLICY gate ON public.branches AS RESTRICTIVE FOR SELECT USING (public.tb_test_gate(tenant_id));
"""


def test_a_tenant_being_backed_up_elsewhere_is_not_backed_up_twice(pg_server_dsn, pg_dagster_home, tmp_path):
    db = create_sample_database(pg_server_dsn, f"overlap_{secrets.token_hex(3)}")
    blocker = psycopg2.connect(db.owner_dsn)
    try:
        active = [t.id for t in add_tenants(db, 3, rows=5)]
        busy = active[0]
        env = _env(db, pg_dagster_home, tmp_path)
        blocker.autocommit = True
        with blocker.cursor() as cur:
            cur.execute(GATE.replace("{busy}", busy))
            cur.execute("SELECT pg_advisory_lock(4242)")  # the first backup of `busy` stays inside its dump
        first = CLI.spawn(["backup", "--tenant", busy, "--workers", "1"], env, ROOT)
        instance = _instance(pg_dagster_home)
        staging = tmp_path / "work" / "staging" / busy
        pending = None
        deadline = time.monotonic() + 120
        while pending is None and time.monotonic() < deadline:
            staged = list(staging.glob("pending-*")) if staging.exists() else []
            pending = staged[0] if staged else None
            time.sleep(0.2)
        assert pending is not None, "the first backup never started its dump"
        holder = instance.get_runs(RunsFilter(job_name="tenant_backup", statuses=[DagsterRunStatus.STARTED]))
        assert [r.tags["dagster/partition"] for r in holder] == [busy]

        # A batch over every active tenant: the busy one is not started, the others are backed up.
        batch = CLI.run(["backup", "--all", "--workers", "1"], env, ROOT, timeout=300)
        assert batch.returncode == 0, batch.stdout + batch.stderr
        assert f"{busy} (in progress in run {holder[0].run_id}" in batch.stderr
        # A run started straight from Dagster (what the UI and backfills do) stops in its first step,
        # without touching the staged files of the run that has the tenant.
        direct = subprocess.run(
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
                busy,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert direct.returncode != 0
        assert f"is being backed up by run {holder[0].run_id}" in direct.stdout + direct.stderr
        assert pending.exists(), "another run's staged file was removed"
        stopped = [
            r for r in instance.get_runs(RunsFilter(tags={"dagster/partition": busy})) if r.run_id != holder[0].run_id
        ]
        assert stopped and all(r.tags.get(SKIPPED_TAG) == f"in-progress:{holder[0].run_id}" for r in stopped)

        with blocker.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(4242)")
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
        local = locations_from_env(["local"], env)["local"]
        assert {ref.tenant_id for ref in local.list()} == set(active)
        assert len(local.list(busy)) == 1  # backed up once, by the run that had it
    finally:
        blocker.close()
        admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')
