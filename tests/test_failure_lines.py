"""A failure names its root cause, and a permanent one is not retried (issue: "FAILED Exceeded
max_retries of 0").

Real `tenant-backup backup` processes, real Dagster runs recorded in a DAGSTER_HOME, the session's
real PostgreSQL: a pg_dump that refuses an option (a TENANT_BACKUP_PG_BIN holding a pg_dump script),
a full local location and a full work directory (a 1 MiB tmpfs, mounted as root). Retries are
configured (3, a few seconds apart) and each step must have been attempted exactly once.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest
from conftest import CLI
from dagster import (
    DagsterEventType,
    DagsterInstance,
    RunsFilter,
    build_run_status_sensor_context,
    instance_for_test,
)
from dagster._core.instance.ref import InstanceRef
from dagster_env import backup_environment

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.maintenance import alerts
from backup_assets.core.settings import Settings
from backup_assets.core.source.pgbin import pg_program
from backup_assets.defs.backup.assets import STEP
from backup_assets.defs.failures import step_failure_line
from backup_assets.defs.runs.guard import TENANT_TAG
from backup_assets.testing.b2_server import B2Server
from backup_assets.testing.s3_server import S3Server

warnings.filterwarnings("ignore", category=Warning, module="dagster")

ROOT = Path(__file__).resolve().parent.parent
REFUSED = "pg_dump: error: unrecognized option '--bogus'"
WRAPPER = "Exceeded max_retries"


def _env(sample_db, tmp_path: Path, home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_", "DAGSTER_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "DAGSTER_HOME": str(home),
            "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
            "TENANT_BACKUP_KEYS": generate_entry("fail1"),
            "TENANT_BACKUP_LOCATIONS": "local",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
            # Retries on, a short delay: a retried permanent error would show as a second attempt.
            "TENANT_BACKUP_RETRIES": "3",
            "TENANT_BACKUP_RETRY_DELAY_S": "2",
        }
    )
    env.update(extra)
    home.mkdir(parents=True, exist_ok=True)
    return env


def _backup(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return CLI.run(["backup", *args], env, ROOT, timeout=600)


@pytest.fixture
def refusing_pg_bin(tmp_path) -> Path:
    """A TENANT_BACKUP_PG_BIN whose pg_dump answers --version like pg_dump 18 and refuses anything else,
    as a pg_dump that does not know an option we pass would; pg_restore is the real one.

    It refuses after a second, not at once: when pg_dump fails while the export's in-snapshot row
    count is still running, core/archive/export.py cancels the count and then reports the count's
    "canceling statement due to user request" instead of pg_dump's error (a race in the core, not
    in the layer these tests are about)."""
    directory = tmp_path / "pg_bin"
    directory.mkdir()
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 18.1"; exit 0; fi\n'
        f'echo started >> "{directory}/calls"\n'  # each dump attempt leaves one line
        "sleep 1\n"
        f'echo "{REFUSED}" >&2\n'
        'echo "pg_dump: hint: Try \\"pg_dump --help\\" for more information." >&2\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    real = Path(pg_program("pg_restore")).parent
    for name in ("pg_restore", "psql"):
        if (real / name).exists():
            (directory / name).symlink_to(real / name)
    return directory


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 1 MiB tmpfs, filled to the last byte (as root; skipped where mounting is not permitted)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.decode(errors='replace').strip()}")
    try:
        mount.chmod(0o777)
        with open(mount / "filler", "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _dumps(pg_bin: Path) -> int:
    """How many times the refusing pg_dump was started to dump (not asked its version)."""
    calls = pg_bin / "calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def _instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _attempts(instance: DagsterInstance, run_id: str, step: str) -> tuple[int, int]:
    """(times the step started, retries it asked for) in the run's event log."""
    started = retried = 0
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key != step:
            continue
        if event.event_type in (DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED):
            started += 1
        elif event.event_type == DagsterEventType.STEP_UP_FOR_RETRY:
            retried += 1
    return started, retried


def _tenant_run(instance: DagsterInstance, tenant_id: str):
    runs = instance.get_runs(RunsFilter(job_name="tenant_backup", tags={TENANT_TAG: tenant_id}))
    assert len(runs) == 1, runs
    return runs[0]


def _row(stdout: str, tenant_id: str) -> str:
    rows = [line for line in stdout.splitlines() if tenant_id in line]
    assert len(rows) == 1, stdout
    return rows[0]


def test_a_refused_pg_dump_option_is_named_and_not_retried(sample_db, sample_tenants, tmp_path, refusing_pg_bin):
    home = tmp_path / "dagster_home"
    env = _env(sample_db, tmp_path, home, TENANT_BACKUP_PG_BIN=str(refusing_pg_bin))
    tenant = sample_tenants[0].id
    result = _backup(["--tenant", tenant, "--workers", "1"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # README, "Exit codes": backup exits 1 when any tenant failed
    assert WRAPPER not in output and "Traceback" not in output, output
    # The tenant × asset table: its row says FAILED and what failed, pg_dump's own error line.
    row = _row(result.stdout, tenant)
    assert "FAILED" in row and REFUSED in row, row
    # The one error line on stderr names the tenant and the same cause.
    errors = [line for line in result.stderr.splitlines() if line.startswith("tenant-backup: error:")]
    assert len(errors) == 1 and tenant in errors[0] and REFUSED in errors[0], result.stderr
    # Attempted once, although 3 retries are configured.
    instance = _instance(home)
    run = _tenant_run(instance, tenant)
    assert _attempts(instance, run.run_id, STEP) == (1, 0)  # no Dagster step retry
    assert _dumps(refusing_pg_bin) == 1  # and no retry inside the step
    assert "retries)" not in row, row
    assert not (tmp_path / "local").exists() or not any((tmp_path / "local").rglob("*.tbk"))


def test_a_batch_names_each_tenants_cause_and_the_alert_does_too(
    sample_db, sample_tenants, tmp_path, refusing_pg_bin, pg_dagster_home
):
    env = _env(sample_db, tmp_path, pg_dagster_home, TENANT_BACKUP_PG_BIN=str(refusing_pg_bin))
    active = sorted(t.id for t in sample_tenants if t.status == "ACTIVE")
    # `--all` on two Dask worker processes: the outcome travels back from a worker.
    result = _backup(["--all", "--workers", "2", "--json"], env)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert WRAPPER not in result.stdout + result.stderr, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["failed"] == len(active) and document["ok"] == 0
    tenants = {t["tenant_id"]: t for t in document["tenants"]}
    assert sorted(tenants) == active
    for outcome in tenants.values():
        assert outcome["state"] == "failed" and REFUSED in outcome["error"], outcome
        assert "\n" not in outcome["error"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tenant-backup: error:")]
    assert len(errors) == 1, result.stderr
    assert f"{len(active)} of {len(active)} tenant backups failed" in errors[0]
    assert all(f"{t} (" in errors[0] for t in active) and errors[0].count(REFUSED) == len(active)

    instance = _instance(pg_dagster_home)
    for run_id in {outcome["run_id"] for outcome in tenants.values()}:
        assert _attempts(instance, run_id, STEP) == (1, 0), run_id
    assert _dumps(refusing_pg_bin) == len(active)  # each tenant's dump started once, none retried

    # The step raised each tenant's BACKUP_FAILURE alert itself, naming the same cause; the run-failure
    # sensor, called for one of those runs, does not raise it again.
    from backup_assets.defs.automation.triggers import backup_failure_alerts
    from backup_assets.defs.build import build_definitions

    # The sensor runs no PostgreSQL program: this process keeps its own (TENANT_BACKUP_PG_BIN is process-wide).
    settings = Settings.from_env({k: v for k, v in env.items() if k != "TENANT_BACKUP_PG_BIN"})

    def failure_alerts() -> list[dict]:
        return [a for a in alerts.read_alerts(settings) if a["kind"] == alerts.BACKUP_FAILURE]

    recorded = failure_alerts()
    assert sorted(a["tenant_id"] for a in recorded) == active, recorded
    for alert in recorded:
        assert alert["message"].startswith("tenant_archive: ") and REFUSED in alert["message"], alert
        assert WRAPPER not in alert["message"] and "\n" not in alert["message"], alert
    run = instance.get_run_by_id(tenants[active[0]]["run_id"])
    failure = next(
        r.dagster_event for r in instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE) if r.dagster_event
    )
    context = build_run_status_sensor_context(
        sensor_name="backup_failure_alerts",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=run,
        resources={"backup": build_definitions(settings).resources["backup"]},
    )
    backup_failure_alerts(context.for_run_failure())
    assert failure_alerts() == recorded  # not alerted twice


@pytest.mark.parametrize("full", ["local location", "work directory"])
def test_a_full_disk_is_named_and_not_retried(sample_db, sample_tenants, tmp_path, full_tmpfs, full):
    home = tmp_path / "dagster_home"
    where = {"local location": "TENANT_BACKUP_LOCAL_DIR", "work directory": "TENANT_BACKUP_WORK_DIR"}[full]
    env = _env(sample_db, tmp_path, home, **{where: str(full_tmpfs / "dir")})
    tenant = sample_tenants[1].id
    result = _backup(["--tenant", tenant, "--workers", "1"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert WRAPPER not in output and "Traceback" not in output, output
    row = _row(result.stdout, tenant)
    # "no space left on device: <the file being written>", on the disk that is full.
    assert f"FAILED no space left on device: {full_tmpfs}/dir/" in row, row
    instance = _instance(home)
    run = _tenant_run(instance, tenant)
    assert _attempts(instance, run.run_id, STEP) == (1, 0)  # no Dagster step retry
    assert "retries)" not in row, row  # and none inside the step (a transient error says "(after N retries)")
    if full == "local location":  # the archive itself was made, proven and staged: only the copy failed
        assert "ok" in row.split("FAILED")[0]


def test_a_transient_error_is_retried_and_keeps_its_message(sample_db, sample_tenants, tmp_path, pg_server_dsn):
    """R2 down through the weekly batch job: each tenant's r2_copy is retried (TENANT_BACKUP_RETRIES=1)
    and then reported by what failed, with the retries it had, not as "Exceeded max_retries of 1"."""
    from backup_assets.defs.build import build_definitions

    active = sorted(t.id for t in sample_tenants if t.status == "ACTIVE")
    with S3Server() as s3_server, B2Server() as b2_server, instance_for_test() as instance:
        env = backup_environment(sample_db, s3_server, b2_server, tmp_path, pg_server_dsn)
        defs = build_definitions(Settings.from_env({**env, "TENANT_BACKUP_WORKERS": "1"}))
        s3_server.faults.set(down=True)
        try:
            result = defs.resolve_job_def("weekly_batch_job").execute_in_process(
                instance=instance, raise_on_error=False
            )
        finally:
            s3_server.faults.clear()
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
        line = step_failure_line(failure)
        assert line.startswith(f"{len(active)} of {len(active)} tenant backups failed: "), line
        assert WRAPPER not in line and "\n" not in line and "r2: put failed" in line, line
        message = failure.event_specific_data.error.message  # the whole line (error_line shortens it)
        assert all(f"{t} (r2: put failed" in message for t in active) and WRAPPER not in message, message
        assert message.count("(after 1 retries)") == len(active), message
        for tenant_id in active:
            run = _tenant_run(instance, tenant_id)
            assert _attempts(instance, run.run_id, STEP) == (1, 0)  # retried inside the step, per tenant
