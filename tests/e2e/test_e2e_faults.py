"""Faults met in production, on the real stack (webserver + daemon + Postgres-backed instance), each
ending with nothing lost: R2 down, a byte flipped in a stored copy, B2 answering 503, kill -9 mid-dump."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg2
import pytest

from backup_assets.core.embedded_pg import dsn_for
from backup_assets.defs.backup.assets import STEP
from backup_assets.defs.operations.jobs import verify_bucket
from backup_assets.testing.dagster_stack import IN_PROCESS, dump_processes, kill_tree

pytestmark = pytest.mark.e2e


def _backup(stack, tenant_id, **kw) -> tuple[str, dict]:
    stack.add_partitions([tenant_id])
    run_id = stack.launch_run("tenant_backup", run_config=IN_PROCESS, partition=tenant_id, **kw)
    return run_id, stack.wait_for_run(run_id, timeout=240)


def _latest(location, tenant_id):
    refs = location.list(tenant_id)
    return refs[-1].backup_id if refs else None


def test_r2_down_fails_only_r2_and_rerun_fills_the_gap(e2e_stack):
    stack = e2e_stack
    tenant = stack.active_tenants[0]
    stack.s3_faults(down=True)
    try:
        run_id, run = _backup(stack, tenant)
    finally:
        stack.s3_faults()  # R2 is back
    assert run["status"] == "FAILURE"
    # One step (back_up) holds every asset of the tenant: it fails, naming r2; every other asset of
    # the partition is materialized by that run, r2_copy is not.
    assert stack.run_steps(run_id) == {STEP: "FAILURE"}
    for asset in ("tenant_archive", "local_copy", "b2_copy", "r2_copy"):
        runs = {m["runId"] for m in stack.materializations(asset, [tenant])}
        assert (run_id in runs) == (asset != "r2_copy"), (asset, runs)
    # The daemon's run-failure sensor records the alert, naming the tenant and the location.
    stack.wait_for_alert(
        lambda a: (
            a["kind"] == "BACKUP_FAILURE"
            and a["tenant_id"] == tenant
            and a["location"] == "r2"
            and run_id in (a.get("run_url") or "")
        ),
        timeout=120,
    )
    locations = stack.locations()
    backup_id = _latest(locations["local"], tenant)
    assert _latest(locations["b2"], tenant) == backup_id
    assert _latest(locations["r2"], tenant) != backup_id

    # Re-execute from asset failure (the UI's "Re-execute > From asset failure"): only r2 and its checks
    # run, on the archive the failed run staged (the whole step, "From failure", would make a new backup).
    rerun = stack.reexecute(run_id, "FROM_ASSET_FAILURE")
    assert stack.wait_for_run(rerun)["status"] == "SUCCESS"
    for asset in ("tenant_archive", "local_copy", "b2_copy", "r2_copy"):
        runs = {m["runId"] for m in stack.materializations(asset, [tenant])}
        assert (rerun in runs) == (asset == "r2_copy"), (asset, runs)
    assert _latest(locations["r2"], tenant) == backup_id  # the same backup: nothing lost
    checks = stack.latest_checks(tenant)
    assert checks[("r2_copy", "checksum")]["status"] == "SUCCEEDED"
    assert checks[("r2_copy", "integrity")]["status"] == "SUCCEEDED"


def test_flipped_byte_fails_verify_alerts_and_restore_auto_uses_another_copy(e2e_stack):
    stack = e2e_stack
    tenant = stack.active_tenants[1]
    _, run = _backup(stack, tenant)
    assert run["status"] == "SUCCESS"
    local = stack.locations()["local"]
    backup_id = _latest(local, tenant)
    archive = next((Path(stack.env["TENANT_BACKUP_LOCAL_DIR"]) / "tenants" / tenant / backup_id).glob("archive-*.tbk"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))

    # The daily verify, run for the share (day) this copy falls in.
    day = verify_bucket("local", tenant, backup_id)
    verify = stack.launch_run(
        "verify_share_job", run_config={"ops": {"verify_share_op": {"config": {"day": day}}}, **IN_PROCESS}
    )
    assert stack.wait_for_run(verify)["status"] == "FAILURE"
    stack.wait_for_alert(
        lambda a: (
            a["kind"] == "INTEGRITY_FAILURE"
            and a["tenant_id"] == tenant
            and a["location"] == "local"
            and backup_id in a["message"]
        ),
        timeout=30,
    )
    # The copy's own asset checks, re-run alone: checksum fails with severity ERROR.
    check_run = stack.launch_run(
        "tenant_backup",
        run_config=IN_PROCESS,
        partition=tenant,
        assets=[],
        asset_checks=[("local_copy", "checksum"), ("local_copy", "integrity")],
    )
    stack.wait_for_run(check_run)
    checks = stack.latest_checks(tenant)
    checksum = checks[("local_copy", "checksum")]
    assert checksum["runId"] == check_run and checksum["status"] == "FAILED", checksum
    assert checksum["evaluation"]["severity"] == "ERROR"

    # restore --location auto skips the bad local copy and says where it restored from.
    name = f"restored_{tenant.replace('-', '')[:12]}_{int(time.time())}"
    conn = psycopg2.connect(stack.admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    proc = stack.cli(
        sys.executable,
        "-m",
        "backup_assets.cli",
        "restore",
        "--tenant",
        tenant,
        "--location",
        "auto",
        "--target-dsn",
        dsn_for(stack.admin_dsn, dbname=name),
    )
    said = proc.stdout + proc.stderr
    assert "from r2" in said or "from b2" in said, said
    assert "local" in proc.stderr  # the skipped copy is named
    from backup_assets.sample.generate import tenant_row_counts

    expected = tenant_row_counts(stack.db, tenant)
    conn = psycopg2.connect(dsn_for(stack.admin_dsn, dbname=name))
    try:
        with conn.cursor() as cur:
            for table, count in expected.items():
                schema, rel = table.split(".")
                cur.execute(f'SELECT count(*) FROM "{schema}"."{rel}"')
                assert cur.fetchone()[0] == count, table
    finally:
        conn.close()


def test_b2_503_is_retried_then_succeeds(e2e_stack):
    stack = e2e_stack
    tenant = stack.active_tenants[2]
    stack.b2_faults(fail=3, status=503)
    try:
        run_id, run = _backup(stack, tenant)
        state = stack.fault_state("b2")
    finally:
        stack.b2_faults()
    assert state["injected"] == 3, state
    assert run["status"] == "SUCCESS", stack.run_steps(run_id)
    locations = stack.locations()
    assert _latest(locations["b2"], tenant) == _latest(locations["local"], tenant) is not None
    checks = stack.latest_checks(tenant)
    assert checks[("b2_copy", "checksum")]["status"] == "SUCCEEDED"
    assert checks[("b2_copy", "integrity")]["status"] == "SUCCEEDED"


def _leftovers(stack, tenant_id) -> list[str]:
    staging = stack.work_dir / "staging" / tenant_id
    return sorted(p.name for p in staging.glob("*") if p.name.startswith("pending-") or ".tmp-" in p.name)


def test_kill_9_mid_dump_leaves_nothing_complete_and_next_run_succeeds(e2e_stack):
    import psutil

    from backup_assets.sample.generate import add_large_tenant

    stack = e2e_stack
    big = add_large_tenant(stack.db, 60)  # big enough that the dump runs for a while
    stack.tenants.append(big)  # it is in the registry now: later tests (the weekly tick) expect it
    stack.add_partitions([big.id])
    run_id = stack.launch_run("tenant_backup", run_config=IN_PROCESS, partition=big.id)
    killed, worker = False, None
    deadline = time.monotonic() + 180
    while not killed and time.monotonic() < deadline:
        if worker is None:  # the process running the step: pg_dump's parent
            for dump in dump_processes(big.id):
                try:
                    worker = dump.parent()
                except psutil.Error:
                    continue
                if worker is not None:
                    break
        # Kill while the archive's temporary file is being written (mid-dump, not the complete pending-*
        # file, which the step may rename into place before a signal sent on a loaded machine lands).
        if worker is not None and [n for n in _leftovers(stack, big.id) if ".tmp-" in n]:
            kill_tree(worker)  # the step's process and its pg_dump, at once
            killed = True
        time.sleep(0.01)
    assert killed, f"never saw pg_dump under the run worker of {run_id}: {stack.wait_for_run(run_id)}"
    # Run monitoring finds the dead worker and fails the run.
    run = stack.wait_for_run(run_id, timeout=120)
    assert run["status"] == "FAILURE", (worker, [e.get("message") for e in stack.run_logs(run_id)][-12:])
    for name, location in stack.locations().items():
        assert location.list(big.id) == [], f"{name} lists a backup of a killed run"
    stale = _leftovers(stack, big.id)
    assert stale, "the killed dump left no temporary file: the kill came too late to test cleanup"

    next_id, nxt = _backup(stack, big.id)
    assert nxt["status"] == "SUCCESS", stack.run_steps(next_id)
    for name, location in stack.locations().items():
        assert len(location.list(big.id)) == 1, name
    # tenant_archive removes its tenant's stale pending-*/temp files at start.
    assert not [n for n in _leftovers(stack, big.id) if n in stale]
