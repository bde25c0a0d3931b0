"""Issue 20, the rules without a cluster: what a batch's driver and workers must agree on and how it is
compared (core/cluster.py), what a worker must hold itself, the scheduler address policy, and the
refusals that need no cluster at all (a scheduler without a PostgreSQL instance, a worker without
its configuration) — each one line naming what is missing."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from backup_assets.core.cluster import (
    SECRET_VARIABLES,
    WorkerRefused,
    check_address,
    check_tls,
    compare,
    configuration_problems,
)
from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.errors import ConfigError
from backup_assets.core.settings import Settings
from backup_assets.defs.resources import SECRETS
from backup_assets.defs.runs.batch import back_up_tenants, cluster_spec
from backup_assets.defs.runs.in_process import WorkerSide, accept, open_worker_instance

ROOT = Path(__file__).resolve().parent.parent
KEY = generate_entry("k1")
SECRET_VALUES = {
    "TENANT_BACKUP_SOURCE_DSN": "postgresql://backup:s3cret-pw@db.internal:5432/app",
    "TENANT_BACKUP_TENANTS_DSN": "postgresql://registry:other-pw@db.internal:5432/app",
    "TENANT_BACKUP_KEYS": KEY,
    "TENANT_BACKUP_SCRATCH_DSN": "postgresql://scratch:scratch-pw@scratch:5432/postgres",
    "TENANT_BACKUP_ALERT_WEBHOOK": "https://hooks.example/T0KEN",
    "R2_ACCESS_KEY_ID": "R2-KEY-ID-CANARY",
    "R2_SECRET_ACCESS_KEY": "R2-SECRET-CANARY",
    "B2_APPLICATION_KEY_ID": "B2-KEY-ID-CANARY",
    "B2_APPLICATION_KEY": "B2-KEY-CANARY",
}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **SECRET_VALUES,
        "TENANT_BACKUP_LOCATIONS": "local,r2,b2",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "R2_ENDPOINT_URL": "https://account.r2.example",
        "R2_BUCKET": "backups",
        "B2_BUCKET": "backups-b2",
    }
    env.update(extra)
    return env


def _needles() -> list[bytes]:
    key = KEY.partition(":")[2]
    values = [v for k, v in SECRET_VALUES.items() if k not in ("TENANT_BACKUP_KEYS",)]
    words = ["s3cret-pw", "other-pw", "scratch-pw", "T0KEN", key, *values]
    return [w.encode() for w in words] + [base64.b64decode(key)]


# ------------------------------------------------------------------------------- shared settings


def test_the_shared_settings_hold_no_secret_and_agree_on_defaults(tmp_path):
    settings = Settings.from_env(_env(tmp_path))
    shared = settings.cluster_settings()
    assert shared["TENANT_BACKUP_SOURCE_DSN"] == "backup@db.internal:5432/app"
    assert shared["TENANT_BACKUP_LOCATIONS"] == "local,r2,b2" and shared["R2_BUCKET"] == "backups"
    assert shared["active key"].startswith("k1:") and shared["TENANT_BACKUP_RETENTION_R2_DAYS"] == "365"
    blob = repr(shared).encode()
    assert not [n for n in _needles() if n in blob]
    # A default and the same value set explicitly agree; a per-machine setting is not compared.
    explicit = Settings.from_env(
        _env(
            tmp_path,
            TENANT_BACKUP_TENANT_COLUMN="tenant_id",
            TENANT_BACKUP_RETENTION_LOCAL_DAYS="30",
            TENANT_BACKUP_WORK_DIR="/elsewhere",
            TENANT_BACKUP_SCRATCH_PG_BIN="/usr/lib/postgresql/16/bin",
            TENANT_BACKUP_PG_BIN="/opt/pg/bin",
            TENANT_BACKUP_SCRATCH_DSN="postgresql://other@scratch-2/postgres",
        )
    )
    assert compare(shared, explicit.cluster_settings(), explicit.keyring().ids) == []


def test_every_secret_of_the_dagster_resource_is_a_secret_here():
    assert set(SECRETS.values()) <= SECRET_VARIABLES


def test_a_differing_setting_is_named_with_both_values(tmp_path):
    driver = Settings.from_env(_env(tmp_path)).cluster_settings()
    worker = Settings.from_env(_env(tmp_path, TENANT_BACKUP_TENANT_COLUMN="org_id", R2_BUCKET="other"))
    problems = compare(driver, worker.cluster_settings(), worker.keyring().ids)
    assert problems == [
        "R2_BUCKET differs from the driver's (this worker: 'other', the driver: 'backups')",
        "TENANT_BACKUP_TENANT_COLUMN differs from the driver's (this worker: 'org_id', the driver: 'tenant_id')",
    ]


def test_the_active_key_is_compared_by_id_and_check_value(tmp_path):
    driver = Settings.from_env(_env(tmp_path)).cluster_settings()
    other = generate_entry("k0")

    def problems(keys: str) -> list[str]:
        worker = Settings.from_env(_env(tmp_path, TENANT_BACKUP_KEYS=keys))
        return compare(driver, worker.cluster_settings(), worker.keyring().ids)

    keys = "TENANT_BACKUP_KEYS / TENANT_BACKUP_KEYS_FILE"
    assert problems(other) == [f"its keyring ({keys}) lacks the active key id 'k1' (it holds k0)"]
    assert problems(f"{other},{KEY}") == ["its keyring's active (first) key is 'k0', the driver's is 'k1'"]
    impostor = "k1:" + generate_entry("x").partition(":")[2]
    assert problems(impostor) == [f"its key 'k1' is not the driver's key of that id ({keys})"]
    assert problems(f"{KEY},{other}") == []  # an older key besides the active one is fine


def test_a_task_carries_no_secret(tmp_path):
    settings = Settings.from_env(_env(tmp_path))
    with instance_for_test() as instance:
        spec = cluster_spec(instance, settings)
        blob = pickle.dumps(spec)
        assert spec.instance and not [n for n in _needles() if n in blob]
        assert str(tmp_path / "work").encode() not in blob  # nor the driver's work directory
        # The token is the instance's own: the same on every read.
        assert cluster_spec(instance, settings).instance == spec.instance


# ------------------------------------------------------------------------------ a worker's own


def test_a_worker_names_everything_it_lacks_at_once(tmp_path):
    env = {"TENANT_BACKUP_LOCATIONS": "local,r2", "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work")}
    assert configuration_problems(Settings.from_env(env)).line() == (
        "not set: TENANT_BACKUP_SOURCE_DSN, TENANT_BACKUP_KEYS (or TENANT_BACKUP_KEYS_FILE),"
        " TENANT_BACKUP_LOCAL_DIR, R2_ENDPOINT_URL, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET"
    )
    keys = tmp_path / "keys"
    keys.write_text(KEY)
    keys.chmod(0o644)
    blocked = tmp_path / "file"
    blocked.write_text("")
    broken = {**_env(tmp_path), "TENANT_BACKUP_KEYS": "", "TENANT_BACKUP_KEYS_FILE": str(keys)}
    broken["TENANT_BACKUP_WORK_DIR"] = str(blocked / "work")
    line = configuration_problems(Settings.from_env(broken)).line()
    assert "TENANT_BACKUP_KEYS_FILE" in line and "readable" in line
    assert f"TENANT_BACKUP_WORK_DIR {blocked / 'work'} is not writable" in line


def test_a_worker_refuses_a_task_in_one_line(tmp_path):
    driver = Settings.from_env(_env(tmp_path))
    mine = Settings.from_env(_env(tmp_path, TENANT_BACKUP_KEYS=generate_entry("k0")))
    with instance_for_test() as instance, instance_for_test() as its_own:
        spec = cluster_spec(instance, driver)
        side = WorkerSide(mine, mine.cluster_settings(), mine.keyring().ids, None, its_own, None)
        with pytest.raises(WorkerRefused) as refused:
            accept(side, spec, "tls://10.0.0.7:40000")
    line = str(refused.value)
    assert line.startswith("worker tls://10.0.0.7:40000 on ") and "\n" not in line
    assert "lacks the active key id 'k1'" in line and "is not the driver's (" in line
    assert pickle.loads(pickle.dumps(refused.value)).worker == "tls://10.0.0.7:40000"


def test_the_worker_instance_names_the_variable_its_dagster_yaml_lacks(tmp_path, monkeypatch):
    """The issue's "Errors whilst loading configuration for {'postgres_url': Field(<…" case."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    problems = configuration_problems(Settings.from_env(_env(tmp_path)))
    assert open_worker_instance(Settings.from_env(_env(tmp_path)), problems) is None
    assert problems.line() == "not set: DAGSTER_PG_URL (named by DAGSTER_HOME/dagster.yaml)"
    # A SQLite DAGSTER_HOME is the worker's alone: refused.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    problems = configuration_problems(Settings.from_env(_env(tmp_path)))
    open_worker_instance(Settings.from_env(_env(tmp_path)), problems)
    assert "stores runs in SqliteRunStorage" in problems.line()


# ------------------------------------------------------------------------------------ transport


@pytest.mark.parametrize(
    "address",
    ["tls://scheduler:8786", "tcp://127.0.0.1:8786", "tcp://localhost:8786", "tcp://[::1]:8786", "127.0.0.2:8786"],
)
def test_tls_anywhere_and_plain_tcp_on_loopback_are_allowed(address):
    check_address(address, allow_plaintext=False, variable="TENANT_BACKUP_DASK_SCHEDULER")


@pytest.mark.parametrize("address", ["tcp://10.1.2.3:8786", "10.1.2.3:8786", "ws://scheduler.example:8786"])
def test_plain_tcp_to_the_network_needs_an_explicit_opt_in(address):
    with pytest.raises(ConfigError, match="set TENANT_BACKUP_DASK_ALLOW_PLAINTEXT=1 to allow it"):
        check_address(address, allow_plaintext=False, variable="TENANT_BACKUP_DASK_SCHEDULER")
    allowed = Settings.from_env({"TENANT_BACKUP_DASK_ALLOW_PLAINTEXT": "yes"}).dask_allow_plaintext
    check_address(address, allow_plaintext=allowed, variable="TENANT_BACKUP_DASK_SCHEDULER")
    with pytest.raises(ConfigError, match="TENANT_BACKUP_DASK_ALLOW_PLAINTEXT must be"):
        Settings.from_env({"TENANT_BACKUP_DASK_ALLOW_PLAINTEXT": "maybe"})


def test_tls_without_dask_certificates_names_the_settings(tmp_path):
    from distributed import Security

    with pytest.raises(ConfigError) as missing:
        check_tls(Security(), "client", "tls://scheduler:8786")
    assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in str(missing.value)
    assert "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT" in str(missing.value)
    gone = str(tmp_path / "gone.pem")
    with pytest.raises(ConfigError, match="cannot read"):
        check_tls(Security(tls_ca_file=gone, tls_client_cert=gone, tls_client_key=gone), "client", "tls://s:8786")


# ----------------------------------------------------------------------- refusals of a whole batch


def test_a_scheduler_without_a_postgresql_instance_is_a_configuration_error(tmp_path):
    settings = Settings.from_env(_env(tmp_path, TENANT_BACKUP_DASK_SCHEDULER="tls://scheduler:8786"))
    with pytest.raises(ConfigError, match="an in-memory instance"):
        back_up_tenants(None, DagsterInstance.ephemeral(), ["t"], settings=settings)
    with instance_for_test() as sqlite:
        with pytest.raises(ConfigError, match="needs a Dagster instance its workers can write to.*SqliteRunStorage"):
            back_up_tenants(None, sqlite, ["t"], settings=settings)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_", "DAGSTER_"))}
    base = {k: v for k, v in base.items() if not k.startswith("DASK_")}
    return subprocess.run(
        [sys.executable, "-m", "backup_assets.cli", *args],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_backup_with_a_scheduler_and_no_shared_instance_exits_2(sample_db, tmp_path):
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEY,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_DASK_SCHEDULER": "tls://127.0.0.1:1",
    }
    result = _cli(["backup", "--all"], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "tenant-backup: error: TENANT_BACKUP_DASK_SCHEDULER=tls://127.0.0.1:1 needs a Dagster instance its"
            " workers can write to, and this one is an in-memory instance (DAGSTER_HOME is not set)"
        )
    )
    assert not (tmp_path / "local").exists()  # nothing ran in-process instead


def test_the_worker_command_names_every_missing_variable_in_one_line(tmp_path):
    result = _cli(["worker", "tls://scheduler.example:8786", "--check"], {"HOME": str(tmp_path)}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == (
        "tenant-backup: error: this worker cannot start: not set: TENANT_BACKUP_SOURCE_DSN, TENANT_BACKUP_KEYS"
        " (or TENANT_BACKUP_KEYS_FILE), TENANT_BACKUP_LOCAL_DIR, R2_ENDPOINT_URL, R2_ACCESS_KEY_ID,"
        " R2_SECRET_ACCESS_KEY, R2_BUCKET, B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY, B2_BUCKET, DAGSTER_PG_URL (the"
        " Dagster instance's PostgreSQL database); tls://scheduler.example:8786: Dask's TLS configuration lacks"
        " distributed.comm.tls.ca-file (DASK_DISTRIBUTED__COMM__TLS__CA_FILE), distributed.comm.tls.worker.cert"
        " (DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT) (docs/DEPLOYMENT.md, certificates)"
    )


def test_a_local_cluster_still_runs_on_a_sqlite_dagster_home(sample_db, sample_tenants, tmp_path):
    """The local cluster's workers are the driver's children on one machine: its SQLite instance is theirs."""
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEY,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
        "TENANT_BACKUP_RETRIES": "0",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    result = _cli(["backup", "--all", "--workers", "2"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    active = {t.id for t in sample_tenants if t.status == "ACTIVE"}
    assert {p.name for p in (tmp_path / "local" / "tenants").iterdir()} == active
