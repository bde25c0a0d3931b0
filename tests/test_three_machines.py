"""Issue 20, as if on three machines: a Dask scheduler, and two `tenant-backup worker` processes, each
with its own HOME, TMPDIR, work directory and environment — its own secrets (one its keyring in a
variable, the other in its own key file), its own Dagster database URL, its own certificate — talk
TLS with certificates made here; `tenant-backup backup --all` drives a batch from a fourth "machine".

Every tenant is backed up; worker b is SIGKILLed (its whole process group: the machine dies) inside a
tenant's run, which costs only that tenant's re-run, on worker c; nothing is written under the
driver's paths by a worker; and no task the scheduler received carries a secret or a driver's path
(a scheduler preload records every task graph as it arrives: tests/dask_payload_recorder.py).

Real PostgreSQL (the sample database, Dagster's storage), the loopback S3 server standing in for R2."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import admin_exec
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef
from dask_cluster import (
    ROOT,
    files_under,
    log_of,
    make_authority,
    make_machine,
    start_process,
    start_scheduler,
    stop,
    tls_env,
)

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.embedded_pg import dsn_for
from backup_assets.core.locations import locations_from_env
from backup_assets.defs.runs.guard import WORKER_TAG
from backup_assets.sample.generate import add_tenants, create_sample_database
from backup_assets.testing.s3_server import S3Server

TENANTS = 8


def _observer(tmp_path: Path, url: str) -> DagsterInstance:
    home = tmp_path / "observer"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f'storage:\n  postgres:\n    postgres_url: "{url}"\ntelemetry:\n  enabled: false\n'
    )
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _runs(instance: DagsterInstance, status=None) -> list:
    statuses = [status] if status else None
    return list(instance.get_runs(RunsFilter(job_name="tenant_backup", statuses=statuses)))


def test_a_batch_over_tls_on_three_machines_survives_a_killed_worker(pg_server_dsn, dagster_pg_url, tmp_path):
    started = time.monotonic()
    db = create_sample_database(pg_server_dsn, f"three_{secrets.token_hex(3)}")
    procs: list[subprocess.Popen] = []
    s3 = S3Server(access_key=f"AK{secrets.token_hex(8)}", secret_key=secrets.token_urlsafe(24)).start()
    try:
        tenants = [t.id for t in add_tenants(db, TENANTS, rows=5)]
        bucket = f"tb-{secrets.token_hex(4)}"
        s3.create_bucket(bucket)
        password = secrets.token_urlsafe(18)  # the server trusts the socket: a canary that must not travel
        entry = generate_entry("k1")
        key_b64 = entry.partition(":")[2]
        pki = make_authority(tmp_path / "pki")
        shared_storage = tmp_path / "shared-storage"  # the local location, on a filesystem all machines mount
        common = {
            "TENANT_BACKUP_SOURCE_DSN": dsn_for(db.backup_dsn, password=password),
            "TENANT_BACKUP_LOCATIONS": "local,r2",
            "TENANT_BACKUP_LOCAL_DIR": str(shared_storage),
            "R2_ENDPOINT_URL": s3.url,
            "R2_ACCESS_KEY_ID": s3.access_key,
            "R2_SECRET_ACCESS_KEY": s3.secret_key,
            "R2_BUCKET": bucket,
            "TENANT_BACKUP_RETRIES": "0",
            "TENANT_BACKUP_STORAGE_ATTEMPTS": "2",
            "DAGSTER_PG_URL": dagster_pg_url,
        }
        sched_machine, driver, b, c = (make_machine(tmp_path, n) for n in ("s", "a", "b", "c"))

        scheduler, address = start_scheduler(sched_machine, pki, record_to=tmp_path / "payloads")
        procs.append(scheduler)
        cert_b, cert_c = pki.issue("worker-b"), pki.issue("worker-c")
        # b: its keyring in a variable, its certificate on the command line.
        env_b = b.env(**common, TENANT_BACKUP_KEYS=entry, TENANT_BACKUP_SCRATCH_DSN=db.admin_dsn)
        argv_b = [sys.executable, "-m", "backup_assets.cli", "worker", address, "--nworkers", "1", "--name", "b"]
        argv_b += ["--tls-ca-file", pki.ca_file, "--tls-cert", cert_b[0], "--tls-key", cert_b[1]]
        # c: its keyring in its own key file, its certificate in Dask's configuration.
        keys_file = c.home / "tenant-backup.keys"
        keys_file.write_text(f"# c's own copy of the keyring\n{entry}\n")
        keys_file.chmod(0o600)
        env_c = c.env(**common, **tls_env(pki, "worker", cert_c), TENANT_BACKUP_KEYS_FILE=str(keys_file))
        env_c["TENANT_BACKUP_SCRATCH_DSN"] = db.admin_dsn
        argv_c = [sys.executable, "-m", "backup_assets.cli", "worker", address, "--nworkers", "1", "--name", "c"]
        worker_b = start_process(b, argv_b, env_b, "worker")
        worker_c = start_process(c, argv_c, env_c, "worker")
        procs += [worker_b, worker_c]

        # The driver: its own DAGSTER_HOME (the project's dagster.yaml: PostgreSQL from DAGSTER_PG_URL).
        dagster_home = driver.root / "dagster_home"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        env_a = driver.env(**common, **tls_env(pki, "client", pki.issue("driver")))
        env_a.update(
            {"DAGSTER_HOME": str(dagster_home), "TENANT_BACKUP_KEYS": entry, "TENANT_BACKUP_DASK_SCHEDULER": address}
        )
        instance = _observer(tmp_path, dagster_pg_url)
        names = _wait_for_workers(address, pki, {"b", "c"}, [(b, worker_b), (c, worker_c)])
        driver_files = files_under(driver.home, driver.tmp, driver.work, dagster_home)

        batch = start_process(driver, [sys.executable, "-m", "backup_assets.cli", "backup", "--all"], env_a, "backup")
        procs.append(batch)
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and batch.poll() is None and time.monotonic() < deadline:
            done = len(_runs(instance, DagsterRunStatus.SUCCESS))
            on_b = [r for r in _runs(instance, DagsterRunStatus.STARTED) if r.tags.get(WORKER_TAG) == names["b"]]
            if done >= 2 and on_b:
                time.sleep(0.1)  # inside the run (results of b's earlier tenants fetched by now)
                if instance.get_run_by_id(on_b[0].run_id).status != DagsterRunStatus.STARTED:
                    continue  # a short run ended meanwhile: kill b inside its next one
                # Every process of b at once: a Dask worker process may sit outside b's process group,
                # and one that outlives its nanny can finish a short run before it notices.
                tree = psutil.Process(worker_b.pid)
                doomed = [tree, *tree.children(recursive=True)]
                os.killpg(worker_b.pid, signal.SIGKILL)
                for proc in doomed:
                    try:
                        proc.kill()
                    except psutil.NoSuchProcess:
                        pass
                killed = on_b[0]
            time.sleep(0.1)
        assert killed is not None, "no run was seen executing on worker b\n" + log_of(driver, "backup")[-3000:]
        code = batch.wait(timeout=180)
        output = log_of(driver, "backup")
        assert code == 0, output[-4000:] + log_of(c, "worker")[-3000:]

        # Every tenant backed up, in both locations.
        locations = locations_from_env(["local", "r2"], env_b)
        for name, location in locations.items():
            assert {ref.tenant_id for ref in location.list()} == set(tenants), name
        # The killed tenant's run: failed, saying why; its tenant ran again, on c. No other tenant twice.
        assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE
        runs = _runs(instance)
        by_tenant: dict[str, list] = {}
        for run in runs:
            by_tenant.setdefault(run.tags["dagster/partition"], []).append(run)
        tenant = killed.tags["dagster/partition"]
        again = [r for r in by_tenant[tenant] if r.status == DagsterRunStatus.SUCCESS]
        if again:  # killed mid-tenant: backed up again, on c, once
            assert [r.tags[WORKER_TAG] for r in again] == [names["c"]]
        else:  # killed after its last materialization: the redelivered task returns it as done, no duplicate
            stored = {
                e.dagster_event.asset_key.path[-1]
                for e in instance.all_logs(killed.run_id)
                if e.dagster_event is not None and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
            }
            assert stored == {"tenant_archive", "local_copy", "r2_copy"}, stored
        others = {t: [r.status for r in rs] for t, rs in by_tenant.items() if t != tenant}
        assert others == {t: [DagsterRunStatus.SUCCESS] for t in tenants if t != tenant}
        workers_used = {r.tags[WORKER_TAG] for r in runs}
        assert workers_used == {names["b"], names["c"]}

        # Each worker staged under its own work directory; nothing of a worker under the driver's paths.
        assert files_under(driver.home, driver.tmp, driver.work, dagster_home) - driver_files <= {
            str(dagster_home / ".tenant-backup-instance.lock")
        }
        for machine, address_ in ((b, names["b"]), (c, names["c"])):
            ran = {r.tags["dagster/partition"] for r in runs if r.tags[WORKER_TAG] == address_}
            staged = {p.name for p in (machine.work / "staging").iterdir()}
            assert ran <= staged, (machine.name, ran, staged)

        # No task carried a secret or a path of the driver's; the recording did see the tasks.
        recorded = [p.read_bytes() for p in (tmp_path / "payloads").glob("*.bin")]
        everything = b"".join(recorded)
        assert all(t.encode() in everything for t in tenants) and b"TENANT_BACKUP_LOCATIONS" in everything
        forbidden = {
            "the keyring": key_b64.encode(),
            "the master key": base64.b64decode(key_b64),
            "the source password": password.encode(),
            "the R2 secret": s3.secret_key.encode(),
            "the R2 key id": s3.access_key.encode(),
            "the driver's DAGSTER_HOME": str(dagster_home).encode(),
            "the driver's work dir": str(driver.work).encode(),
            "the driver's home": str(driver.home).encode(),
        }
        leaks = [what for what, needle in forbidden.items() if any(needle in blob for blob in recorded)]
        assert not leaks, f"found in the tasks the scheduler received: {leaks}"
        assert "tls://" in address and time.monotonic() - started < 90, time.monotonic() - started
    finally:
        stop(*procs)
        s3.stop()
        admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')


def _wait_for_workers(address: str, pki, wanted: set[str], workers) -> dict[str, str]:
    """name -> address of the workers once all `wanted` have joined (a client with its own certificate)."""
    from distributed import Client, Security

    cert = pki.issue("observer")
    security = Security(
        tls_ca_file=pki.ca_file, tls_client_cert=cert[0], tls_client_key=cert[1], require_encryption=True
    )
    deadline = time.monotonic() + 60
    with Client(address, security=security, timeout="20s") as client:
        while time.monotonic() < deadline:
            info = client.scheduler_info(n_workers=-1)["workers"]
            names = {w["name"]: addr for addr, w in info.items()}
            if wanted <= set(names):
                return names
            for machine, proc in workers:
                assert proc.poll() is None, log_of(machine, "worker")[-3000:]
            time.sleep(0.2)
    raise AssertionError("workers did not join: " + " | ".join(log_of(m, "worker")[-1500:] for m, _ in workers))
