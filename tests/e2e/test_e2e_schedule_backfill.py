"""End to end as operators run it: the weekly schedule ticked by hand and a one-tenant backfill
(GraphQL and CLI), executed by dagster-daemon on a Postgres-backed instance, read back through GraphQL."""

from __future__ import annotations

import sys
import time

import pytest

from backup_assets.testing.dagster_stack import ASSETS, CHECKS, IN_PROCESS

pytestmark = pytest.mark.e2e


def _assert_backed_up(stack, tenant_id):
    for asset in ASSETS:
        assert stack.materializations(asset, [tenant_id]), f"{asset} not materialized for {tenant_id}"
    checks = stack.latest_checks(tenant_id)
    expected = {(a, c) for a, cs in CHECKS.items() for c in cs}
    assert set(checks) == expected, f"checks missing for {tenant_id}: {expected - set(checks)}"
    failed = {k: v for k, v in checks.items() if v["status"] != "SUCCEEDED"}
    assert not failed, f"checks not passed for {tenant_id}: {failed}"


def test_weekly_schedule_tick_backs_up_every_active_tenant(e2e_stack):
    stack = e2e_stack
    # The operator's "Test schedule → Launch run": the code server evaluates the default (batch)
    # schedule; the run it requests goes to the queue, and the daemon dequeues and launches it.
    requests = stack.schedule_dry_run("weekly_tenant_backup_batch")
    assert len(requests) == 1 and requests[0]["runKey"].startswith("weekly:")
    tags = {t["key"]: t["value"] for t in requests[0]["tags"]}
    tags["dagster/schedule_name"] = "weekly_tenant_backup_batch"
    driver = stack.launch_run("weekly_batch_job", tags=tags)
    run = stack.wait_for_run(driver, timeout=240)
    assert run["status"] == "SUCCESS", stack.run_logs(driver)[-20:]

    # One tenant_backup run per active tenant, recorded in the instance like the daemon's own.
    tenant_runs = stack.runs(job="tenant_backup")
    by_tenant = {r["runId"]: {t["key"]: t["value"] for t in r["tags"]}.get("dagster/partition") for r in tenant_runs}
    assert set(stack.active_tenants) <= set(by_tenant.values())
    for tenant_id in stack.active_tenants:
        _assert_backed_up(stack, tenant_id)
    for tenant_id in stack.inactive_tenants:  # the suspended tenant: nothing at all
        assert tenant_id not in by_tenant.values()
        for asset in ASSETS:
            assert not stack.materializations(asset, [tenant_id])
        assert not stack.latest_checks(tenant_id)
    # The per-tenant schedule, evaluated the same way, asks for exactly the active tenants.
    per_tenant = stack.schedule_dry_run("weekly_tenant_backup")
    asked = sorted({t["key"]: t["value"] for t in r["tags"]}["dagster/partition"] for r in per_tenant)
    assert asked == sorted(stack.active_tenants)


def _counts(stack):
    return {asset: {p: len(v) for p, v in stack.materialized_partitions(asset).items()} for asset in ASSETS}


def test_backfill_of_one_tenant_through_graphql(e2e_stack):
    stack = e2e_stack
    target, *others = stack.active_tenants
    stack.add_partitions(stack.active_tenants)  # idempotent: the registry sensor normally does it
    before = _counts(stack)
    backfill_id = stack.launch_backfill(list(ASSETS), [target], run_config=IN_PROCESS)
    bf = stack.wait_for_backfill(backfill_id)
    assert bf["runs"] and all(r["status"] == "SUCCESS" for r in bf["runs"]), bf
    after = _counts(stack)
    for asset in ASSETS:
        assert after[asset].get(target, 0) == before[asset].get(target, 0) + 1, asset
        for other in others + stack.inactive_tenants:
            assert after[asset].get(other, 0) == before[asset].get(other, 0), (asset, other)
    _assert_backed_up(stack, target)


def test_backfill_of_every_partition_through_graphql_is_one_run_of_many(e2e_stack):
    """What a Dagster user does at thousands of tenants: select every partition in the UI and launch a
    backfill. The backfill policy makes it a few runs of many partitions (here all in one), each tenant
    still with its own materializations and check results per partition."""
    stack = e2e_stack
    tenants = list(stack.active_tenants)
    stack.add_partitions(tenants)
    before = _counts(stack)
    backfill_id = stack.launch_backfill(list(ASSETS), tenants, run_config=IN_PROCESS)
    bf = stack.wait_for_backfill(backfill_id)
    runs = bf["runs"]
    # Fewer runs than tenants (one per stretch of the partitions' order the selection covers).
    assert 1 <= len(runs) < len(tenants) and all(r["status"] == "SUCCESS" for r in runs), bf
    ranged = [r for r in runs if "dagster/asset_partition_range_start" in {t["key"] for t in r["tags"]}]
    assert ranged, bf
    for run in runs:
        steps = stack.run_steps(run["runId"])
        assert list(steps) == ["back_up"], steps  # one step: every asset and check of its tenants
    after = _counts(stack)
    for asset in ASSETS:
        for tenant in tenants:
            assert after[asset].get(tenant, 0) == before[asset].get(tenant, 0) + 1, (asset, tenant)
    for tenant in tenants:
        _assert_backed_up(stack, tenant)
        # The check results of this partition come from that run, not from an earlier one.
        for (asset, check), execution in stack.latest_checks(tenant).items():
            assert execution["runId"] in {r["runId"] for r in runs}, (asset, check, tenant)


def test_backfill_of_one_tenant_through_the_cli(e2e_stack):
    stack = e2e_stack
    *others, target = stack.active_tenants
    stack.add_partitions(stack.active_tenants)
    before = _counts(stack)
    started = time.time()
    # What an operator types: materialize one tenant's partition on the instance ($DAGSTER_HOME).
    stack.cli(
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "backup_assets.definitions",
        "--select",
        ",".join(ASSETS),
        "--partition",
        target,
        timeout=240,
    )
    after = _counts(stack)
    for asset in ASSETS:
        assert after[asset].get(target, 0) == before[asset].get(target, 0) + 1, asset
        for other in others + stack.inactive_tenants:
            assert after[asset].get(other, 0) == before[asset].get(other, 0), (asset, other)
    newest = stack.materializations("tenant_archive", [target])[0]
    assert float(newest["timestamp"]) / 1000 >= started - 1
    _assert_backed_up(stack, target)
