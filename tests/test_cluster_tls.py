"""Issue 20: an encrypted, authenticated cluster, and workers refused in one line.

A `dask scheduler` over TLS with certificates made here (tests/dask_cluster.py): a client or a worker
with a certificate of another CA, or none, is refused, and so is plain tcp:// to its port. Workers
that joined with a valid certificate but cannot serve the batch — a plain `dask worker` without any
configuration of ours, a `tenant-backup worker` whose keyring lacks the active key id and whose
retention differs — refuse its tasks: the batch exits 2 with one line naming every missing variable
and every differing setting; with a good worker in the cluster as well, that worker backs every
tenant up and the refusals are named as warnings."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dask
import distributed  # noqa: F401 - its configuration defaults, before dask.config.set below
import pytest
from dask_cluster import ROOT, log_of, make_authority, make_machine, start_process, start_scheduler, stop, tls_env

from backup_assets.core.cluster import ClusterUnreachable
from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.errors import ConfigError
from backup_assets.core.locations import locations_from_env
from backup_assets.core.settings import Settings
from backup_assets.defs.runs.batch import connect


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A TLS scheduler, its CA and a CA nobody trusts."""
    base = tmp_path_factory.mktemp("cluster")
    pki, rogue = make_authority(base / "pki"), make_authority(base / "rogue", "rogue CA")
    machine = make_machine(base, "s")
    proc, address = start_scheduler(machine, pki)
    try:
        yield {"base": base, "pki": pki, "rogue": rogue, "address": address}
    finally:
        stop(proc)


def _tls_config(authority, cert) -> dict:
    return {
        "distributed.comm.tls.ca-file": authority.ca_file,
        "distributed.comm.tls.client.cert": cert[0],
        "distributed.comm.tls.client.key": cert[1],
    }


def _workers(cluster) -> dict:
    cert = cluster["pki"].issue("observer")
    with dask.config.set(_tls_config(cluster["pki"], cert)):
        with connect(cluster["address"], Settings.from_env({})) as client:
            return client.scheduler_info(n_workers=-1)["workers"]


def test_a_client_or_worker_without_a_valid_certificate_is_refused(cluster):
    address, pki, rogue = cluster["address"], cluster["pki"], cluster["rogue"]
    settings = Settings.from_env({"TENANT_BACKUP_DASK_SCHEDULER": address})
    # A driver with the cluster's CA and its own certificate gets in.
    with dask.config.set(_tls_config(pki, pki.issue("driver"))), connect(address, settings) as client:
        assert client.scheduler_info()["address"] == address
    # A certificate of another CA: refused by the scheduler, in one line.
    with dask.config.set(_tls_config(rogue, rogue.issue("intruder"))):
        with pytest.raises(ClusterUnreachable, match=f"cannot use the Dask scheduler at {address}: TLS") as refused:
            connect(address, settings)
    assert "\n" not in str(refused.value)
    # No certificate at all: refused before connecting, naming Dask's settings and their variables.
    with pytest.raises(ConfigError) as unconfigured:
        connect(address, settings)
    assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in str(unconfigured.value)
    assert "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT" in str(unconfigured.value)
    # Plain tcp:// to the TLS port (loopback, so our own rule lets it try): the scheduler hangs up.
    with pytest.raises(ClusterUnreachable):
        connect(address.replace("tls://", "tcp://"), settings)

    # Workers: one with a rogue certificate, one with none; neither ever joins.
    base = cluster["base"]
    intruders = []
    for name, flags in (
        (
            "rogue",
            ["--tls-ca-file", rogue.ca_file, "--tls-cert", rogue.issue("w")[0], "--tls-key", rogue.issue("w")[1]],
        ),
        ("bare", []),
    ):
        machine = make_machine(base, f"intruder-{name}")
        argv = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--name", name]
        argv += ["--death-timeout", "4", "--no-dashboard", *flags]
        intruders.append((machine, start_process(machine, argv, machine.env(), "worker")))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.poll() is None for _, p in intruders):
            assert not {w["name"] for w in _workers(cluster).values()} & {"rogue", "bare"}
            time.sleep(0.5)
        for machine, proc in intruders:
            assert proc.poll() not in (None, 0), log_of(machine, "worker")[-2000:]
    finally:
        stop(*(p for _, p in intruders))
    assert "TLS" in log_of(make_machine(base, "intruder-rogue"), "worker")
    assert "ssl_context" in log_of(make_machine(base, "intruder-bare"), "worker")


@pytest.fixture
def dagster_home(dagster_pg_url, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return home, dagster_pg_url


def test_workers_that_cannot_serve_the_batch_refuse_it_in_one_line(cluster, sample_db, dagster_home, tmp_path):
    address, pki = cluster["address"], cluster["pki"]
    home, url = dagster_home
    entry = generate_entry("k2")
    common = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "shared-storage"),
        "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
        "TENANT_BACKUP_RETRIES": "0",
        "DAGSTER_PG_URL": url,
    }
    base = tmp_path / "machines"
    procs: list[subprocess.Popen] = []
    try:
        # x: Dask's own worker with a valid certificate and nothing of ours (the issue's "unreadable" case).
        x = make_machine(base, "x")
        argv_x = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--name", "x"]
        env_x = x.env(**tls_env(pki, "worker", pki.issue("x")))
        env_x.pop("TENANT_BACKUP_WORK_DIR")
        procs.append(start_process(x, argv_x + ["--no-dashboard"], env_x, "worker"))
        # y: complete for itself (its start check passes), but an older keyring and another retention.
        y = make_machine(base, "y")
        env_y = y.env(**common, **tls_env(pki, "worker", pki.issue("y")))
        env_y.update({"TENANT_BACKUP_KEYS": generate_entry("old"), "TENANT_BACKUP_RETENTION_LOCAL_DAYS": "7"})
        argv_y = [sys.executable, "-m", "backup_assets.cli", "worker", address, "--nworkers", "1", "--name", "y"]
        procs.append(start_process(y, argv_y, env_y, "worker"))
        _wait_for(cluster, {"x", "y"}, [(x, procs[0]), (y, procs[1])])

        driver = make_machine(base, "driver")
        env = driver.env(**common, **tls_env(pki, "client", pki.issue("driver")))
        env.update({"DAGSTER_HOME": str(home), "TENANT_BACKUP_KEYS": entry, "TENANT_BACKUP_DASK_SCHEDULER": address})
        refused = _backup(env)
        assert refused.returncode == 2, refused.stderr[-3000:]
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith("tenant-backup: error: no Dask worker took this batch's tasks: worker tls://")
        missing = "not set: TENANT_BACKUP_SOURCE_DSN, TENANT_BACKUP_KEYS (or TENANT_BACKUP_KEYS_FILE)"
        assert missing in line and "DAGSTER_PG_URL" in line and "on x" not in line
        assert "its keyring (TENANT_BACKUP_KEYS / TENANT_BACKUP_KEYS_FILE) lacks the active key id 'k2'" in line
        assert (
            "TENANT_BACKUP_RETENTION_LOCAL_DAYS differs from the driver's (this worker: '7', the driver: '30')" in line
        )
        assert "Field(" not in refused.stderr and "Traceback" not in refused.stderr

        # A worker that can serve it joins: it backs every tenant up; the refusals are warnings.
        z = make_machine(base, "z")
        env_z = z.env(**common, **tls_env(pki, "worker", pki.issue("z")), TENANT_BACKUP_KEYS=entry)
        argv_z = [sys.executable, "-m", "backup_assets.cli", "worker", address, "--nworkers", "1", "--name", "z"]
        procs.append(start_process(z, argv_z, env_z, "worker"))
        _wait_for(cluster, {"x", "y", "z"}, [(z, procs[2])])
        done = _backup(env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (
            "refused the task: not set: TENANT_BACKUP_SOURCE_DSN" in done.stderr
            or "lacks the active key" in done.stderr
        )
        local = locations_from_env(["local"], common)["local"]
        assert len({ref.tenant_id for ref in local.list()}) == 3  # the sample's active tenants
        assert (z.work / "staging").is_dir() and not (y.work / "staging").exists()
    finally:
        stop(*procs)


def _backup(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backup_assets.cli", "backup", "--all"],
        cwd=Path(env["HOME"]).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _wait_for(cluster, names: set[str], started) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if names <= {w["name"] for w in _workers(cluster).values()}:
            return
        for machine, proc in started:
            assert proc.poll() is None, log_of(machine, "worker")[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"workers {names} did not join")
