"""Restore, prune and verify as Dagster jobs, run for real (in-process) against the locations."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import psycopg2
import pytest
from dagster import instance_for_test

from backup_assets.core.archive.manifest import ArchiveInfo, Manifest, new_backup_id
from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.maintenance import alerts
from backup_assets.core.settings import Settings
from backup_assets.defs.build import build_definitions
from backup_assets.defs.operations.jobs import VERIFY_CYCLE_DAYS, verify_bucket
from backup_assets.defs.runs.in_process import run_tenant


@pytest.fixture
def env(sample_db, tmp_path):
    values = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": generate_entry("ops1"),
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
        "TENANT_BACKUP_RETRIES": "0",
    }
    return values


def _backed_up(env, instance, tenant_id):
    defs = build_definitions(Settings.from_env(env))
    instance.add_dynamic_partitions("tenants", [tenant_id])
    outcome = run_tenant(defs, instance, tenant_id)
    assert outcome.ok, outcome
    return defs


def test_restore_job_into_an_empty_database(env, sample_tenants, fresh_db):
    tenant = sample_tenants[0]
    target = fresh_db("restorejob")
    with instance_for_test() as instance, mock.patch.dict(os.environ, {"RESTORE_TARGET": target}):
        defs = _backed_up(env, instance, tenant.id)
        job = defs.resolve_job_def("restore_tenant_job")
        config = {
            "ops": {
                "restore_tenant_op": {
                    "config": {"tenant_id": tenant.id, "target_dsn_env": "RESTORE_TARGET", "dry_run": False}
                }
            }
        }
        result = job.execute_in_process(run_config=config, instance=instance)
        assert result.success
    manifest = next(iter(Settings.from_env(env).locations(["local"])["local"].list(tenant.id)))
    stored = Settings.from_env(env).locations(["local"])["local"].get_manifest(tenant.id, manifest.backup_id)
    with psycopg2.connect(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.sales")
        assert cur.fetchone()[0] == stored.tables["public.sales"]
    conn.close()


def test_restore_job_without_the_target_variable_fails_clearly(env, sample_tenants):
    with instance_for_test() as instance:
        defs = build_definitions(Settings.from_env(env))
        job = defs.resolve_job_def("restore_tenant_job")
        config = {
            "ops": {
                "restore_tenant_op": {
                    "config": {"tenant_id": sample_tenants[0].id, "target_dsn_env": "NOT_SET_ANYWHERE"}
                }
            }
        }
        result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "NOT_SET_ANYWHERE" in failure.event_specific_data.error.message


def _put_backup(loc, tenant_id, created: datetime, tmp_path) -> str:
    backup_id = new_backup_id(created)
    data = os.urandom(1000)
    path = tmp_path / f"{backup_id}.tbk"
    path.write_bytes(data)
    manifest = Manifest(
        tenant_id=tenant_id,
        backup_id=backup_id,
        created_at=created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        archive=ArchiveInfo(sha256=hashlib.sha256(data).hexdigest(), size=len(data), key_id="x"),
        tables={},
    )
    loc.put(tenant_id, backup_id, path, manifest)
    return backup_id


def test_prune_job_applies_retention(env, sample_tenants, tmp_path):
    tenant = sample_tenants[0].id
    now = datetime.now(timezone.utc)
    env = {**env, "TENANT_BACKUP_RETENTION_LOCAL_DAYS": "30", "TENANT_BACKUP_KEEP_MIN": "1"}
    loc = Settings.from_env(env).locations(["local"])["local"]
    old = _put_backup(loc, tenant, now - timedelta(days=90), tmp_path)
    older = _put_backup(loc, tenant, now - timedelta(days=120), tmp_path)
    recent = _put_backup(loc, tenant, now - timedelta(days=3), tmp_path)
    with instance_for_test() as instance:
        result = (
            build_definitions(Settings.from_env(env)).resolve_job_def("prune_job").execute_in_process(instance=instance)
        )
        assert result.success
    assert [r.backup_id for r in loc.list(tenant)] == [recent]
    assert old != recent and older != recent


def test_verify_job_rereads_its_share_and_alerts_on_a_flipped_byte(env, sample_tenants):
    tenant = sample_tenants[1].id
    with instance_for_test() as instance:
        defs = _backed_up(env, instance, tenant)
        loc = Settings.from_env(env).locations(["local"])["local"]
        ref = loc.list(tenant)[0]
        day = verify_bucket("local", tenant, ref.backup_id)
        assert 0 <= day < VERIFY_CYCLE_DAYS
        job = defs.resolve_job_def("verify_share_job")
        config = {"ops": {"verify_share_op": {"config": {"day": day}}}}
        assert job.execute_in_process(run_config=config, instance=instance).success

        archive = next(
            p for p in Path(env["TENANT_BACKUP_LOCAL_DIR"]).rglob("archive-*.tbk") if ref.backup_id in str(p)
        )
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0x01
        archive.write_bytes(bytes(data))
        result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
        assert not result.success
        recorded = [a for a in alerts.read_alerts(Settings.from_env(env)) if a["kind"] == alerts.INTEGRITY_FAILURE]
        assert any(a["tenant_id"] == tenant and a["location"] == "local" for a in recorded), recorded
        # Another day's share does not touch this copy.
        other = {"ops": {"verify_share_op": {"config": {"day": (day + 1) % VERIFY_CYCLE_DAYS}}}}
        assert job.execute_in_process(run_config=other, instance=instance).success


def test_verify_buckets_spread_over_the_cycle():
    days = [verify_bucket("r2", f"00000000-0000-4000-8000-{i:012d}", "20261125T000000Z-00000000") for i in range(2800)]
    counts = [days.count(d) for d in range(VERIFY_CYCLE_DAYS)]
    assert min(counts) > 50 and max(counts) < 150  # ~100 each


def test_weekly_batch_job_backs_up_every_active_tenant(env, sample_tenants):
    import datetime as dt

    from dagster import build_schedule_context

    active = sorted(t.id for t in sample_tenants if t.status == "ACTIVE")
    with instance_for_test() as instance:
        defs = build_definitions(Settings.from_env({**env, "TENANT_BACKUP_WORKERS": "1"}))
        result = defs.resolve_job_def("weekly_batch_job").execute_in_process(instance=instance)
        assert result.success
        assert sorted(instance.get_dynamic_partitions("tenants")) == active
        backed_up = {r.tenant_id for r in Settings.from_env(env).locations(["local"])["local"].list()}
        assert backed_up == set(active)
        # One recorded run per tenant, besides the driver run.
        assert len(instance.get_runs()) == len(active) + 1
        tick = dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.timezone.utc)
        request = (
            defs.resolve_schedule_def("weekly_tenant_backup_batch")
            .evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=tick))
            .run_requests[0]
        )
        assert request.run_key == "weekly:2026-W48"


def test_next_run_removes_what_a_killed_run_left_in_staging(env, sample_tenants):
    tenant = sample_tenants[2].id
    staging = Path(env["TENANT_BACKUP_WORK_DIR"]) / "staging" / tenant
    staging.mkdir(parents=True)
    leftovers = [staging / "pending-deadbeef.tbk.tmp-0a1b2c3d", staging / "pending-deadbeef.tbk"]
    for path in leftovers:
        path.write_bytes(b"half an archive")
    with instance_for_test() as instance:
        _backed_up(env, instance, tenant)
    assert not any(path.exists() for path in leftovers)
    assert len(list(staging.glob("*.tbk"))) == 1  # the new, complete archive
