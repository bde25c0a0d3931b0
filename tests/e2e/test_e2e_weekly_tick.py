"""The daemon's own weekly tick, in both modes (issue: weekly run). The cron is set so that the tick
comes within the test (every minute; run keys per ISO week make it fire once): no "test schedule"
shortcut. Batch mode: one driver run backs every active tenant up. Per-tenant mode: the daemon
launches one queued run per tenant through the QueuedRunCoordinator, every one succeeds, and the
one-run-per-tenant limit holds against a second run of a tenant queued at the same time. Both
stacks also show the STALE_BACKUP alert the staleness sensor raises before the backups exist."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from backup_assets.testing.dagster_stack import ASSETS, CHECKS, DagsterStack

pytestmark = pytest.mark.e2e

TICK = {"TENANT_BACKUP_CRON": "* * * * *", "TENANT_BACKUP_STALE_CHECK_S": "5"}


@pytest.fixture
def tick_stack(request):
    directory = Path(tempfile.mkdtemp(prefix="tenant-backup-tick-"))
    os.chmod(directory, 0o755)
    saved = dict(os.environ)
    stack = DagsterStack(directory, extra_env={**TICK, "TENANT_BACKUP_WEEKLY_MODE": request.param})
    try:
        yield stack.start()
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)
        if not os.environ.get("E2E_KEEP"):
            shutil.rmtree(directory, ignore_errors=True)


def _tags(run) -> dict:
    return {t["key"]: t["value"] for t in run["tags"]}


def _assert_backed_up(stack, tenant_id):
    for asset in ASSETS:
        assert stack.materializations(asset, [tenant_id]), f"{asset} not materialized for {tenant_id}"
    checks = stack.latest_checks(tenant_id)
    assert set(checks) == {(a, c) for a, cs in CHECKS.items() for c in cs}
    assert all(v["status"] == "SUCCEEDED" for v in checks.values()), checks


def _stale_alerts_raised(stack):
    stack.wait_for_alert(lambda a: a["kind"] == "STALE_BACKUP", timeout=120)
    stale = {(a["tenant_id"], a["location"]) for a in stack.alerts() if a["kind"] == "STALE_BACKUP"}
    assert {(t, loc) for t in stack.active_tenants for loc in ("local", "r2", "b2")} <= stale


@pytest.mark.parametrize("tick_stack", ["batch"], indirect=True)
def test_the_daemons_tick_runs_the_batch_over_every_active_tenant(tick_stack):
    stack = tick_stack
    _stale_alerts_raised(stack)  # nothing is backed up yet: every active tenant x location is stale
    runs = stack.wait_for_runs(
        lambda rs: bool(rs) and all(r["status"] in ("SUCCESS", "FAILURE") for r in rs),
        job="weekly_batch_job",
        timeout=240,
    )
    assert len(runs) == 1 and runs[0]["status"] == "SUCCESS", stack.run_logs(runs[0]["runId"])[-20:]
    tags = _tags(runs[0])
    assert tags["dagster/schedule_name"] == "weekly_tenant_backup_batch" and tags["dagster/run_key"].startswith(
        "weekly:"
    )
    tenant_runs = stack.runs(job="tenant_backup")
    assert {_tags(r)["dagster/partition"] for r in tenant_runs} == set(stack.active_tenants)
    assert all(_tags(r)["tenant_backup/batch"] == runs[0]["runId"] for r in tenant_runs)
    for tenant_id in stack.active_tenants:
        _assert_backed_up(stack, tenant_id)


@pytest.mark.parametrize("tick_stack", ["per_tenant"], indirect=True)
def test_the_daemons_tick_queues_one_run_per_tenant(tick_stack):
    stack = tick_stack
    _stale_alerts_raised(stack)
    first = stack.active_tenants[0]
    # A second backup of one tenant, queued while the tick's runs are: the queue must not run both at once.
    stack.add_partitions(stack.active_tenants)
    extra = stack.launch_run(
        "tenant_backup",
        partition=first,
        tags={"tenant_backup/tenant": first},
        run_config={"execution": {"config": {"in_process": {}}}},
    )

    def all_done(runs):
        scheduled = [r for r in runs if _tags(r).get("dagster/schedule_name") == "weekly_tenant_backup"]
        return len(scheduled) == len(stack.active_tenants) and all(
            r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs
        )

    runs = stack.wait_for_runs(all_done, job="tenant_backup", timeout=420)
    scheduled = [r for r in runs if _tags(r).get("dagster/schedule_name") == "weekly_tenant_backup"]
    assert sorted(_tags(r)["dagster/partition"] for r in scheduled) == sorted(stack.active_tenants)
    assert all(r["status"] == "SUCCESS" for r in runs), [(r["runId"], r["status"]) for r in runs]
    for run in runs:  # through the queue: each was enqueued, then launched by the coordinator
        types = {e["__typename"] for e in stack.run_logs(run["runId"])}
        assert {"RunEnqueuedEvent", "RunStartingEvent"} <= types, ", ".join(sorted(types))
    both = [r for r in stack.runs(job="tenant_backup") if _tags(r)["dagster/partition"] == first]
    assert {r["runId"] for r in both} >= {extra} and len(both) == 2
    (a_start, a_end), (b_start, b_end) = sorted((r["startTime"], r["endTime"]) for r in both)
    assert a_end <= b_start, "two runs of one tenant ran at the same time"
    for tenant_id in stack.active_tenants:
        _assert_backed_up(stack, tenant_id)
