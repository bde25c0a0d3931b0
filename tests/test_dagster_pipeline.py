"""Real Dagster runs: a tenant partition materialized into all three locations with its checks,
one location down failing alone, the weekly schedule and the registry sensor."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from dagster import DagsterInstance, build_schedule_context, build_sensor_context, instance_for_test
from dagster_env import backup_environment

from backup_assets.core.maintenance import alerts
from backup_assets.core.settings import Settings

warnings.filterwarnings("ignore", category=Warning, module="dagster")


@pytest.fixture
def env(sample_db, s3_server, b2_server, tmp_path, pg_server_dsn):
    return backup_environment(sample_db, s3_server, b2_server, tmp_path, pg_server_dsn)


@contextmanager
def definitions(env):
    from backup_assets.defs.build import build_definitions

    yield build_definitions(Settings.from_env(env))


def locations_from_env(env, names=None):
    return Settings.from_env(env).locations(names)


def _run(defs, instance: DagsterInstance, tenant_id: str):
    instance.add_dynamic_partitions("tenants", [tenant_id])
    job = defs.resolve_job_def("tenant_backup")
    return job.execute_in_process(
        partition_key=tenant_id, instance=instance, raise_on_error=False, tags={"tenant_backup/tenant": tenant_id}
    )


def _materialized(result) -> set[str]:
    return {e.asset_key.path[-1] for e in result.get_asset_materialization_events() if e.asset_key is not None}


def _checks(result) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def test_partition_materialized_in_every_location_with_checks(env, sample_tenants):
    tenant = sample_tenants[0]
    with instance_for_test() as instance, definitions(env) as defs:
        result = _run(defs, instance, tenant.id)
        assert result.success
        assert _materialized(result) == {"tenant_archive", "local_copy", "r2_copy", "b2_copy"}
        checks = _checks(result)
        assert checks == {
            ("tenant_archive", "isolation"): True,
            ("tenant_archive", "restore_drill"): True,
            ("local_copy", "checksum"): True,
            ("local_copy", "integrity"): True,
            ("r2_copy", "checksum"): True,
            ("r2_copy", "integrity"): True,
            ("b2_copy", "checksum"): True,
            ("b2_copy", "integrity"): True,
        }
        # Check results are recorded for this partition.
        evaluations = result.get_asset_check_evaluations()
        assert {e.partition for e in evaluations} == {tenant.id}
        # Each copy hashes equal to the archive the drill restored: integrity proven by that identity.
        integrity = {e.asset_key.path[-1]: e.metadata for e in evaluations if e.check_name == "integrity"}
        assert {a: m["integrity_by"].value for a, m in integrity.items()} == {
            "local_copy": "identity",
            "r2_copy": "identity",
            "b2_copy": "identity",
        }
        archive = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "tenant_archive")
        metadata = archive.materialization.metadata
        assert metadata["raw_bytes"].value > metadata["archive_bytes"].value > 0
        assert metadata["tenant_id"].value == tenant.id
    stored = {name: loc.list(tenant.id) for name, loc in locations_from_env(env).items()}
    assert all(len(refs) == 1 for refs in stored.values()), stored
    assert len({refs[0].backup_id for refs in stored.values()}) == 1


def test_without_the_drills_record_a_copy_is_decoded(env, sample_tenants):
    """No identity with the archive the drill restored (here: the checks are not told): the full decode runs."""
    from backup_assets.defs.backup import copy_checks

    verify_copy = copy_checks.verify_copy
    tenant = sample_tenants[2]
    with (
        instance_for_test() as instance,
        definitions(env) as defs,
        mock.patch.object(copy_checks, "verify_copy", lambda *a, **kw: verify_copy(*a, **{**kw, "drilled": None})),
    ):
        result = _run(defs, instance, tenant.id)
        assert result.success
        integrity = [e for e in result.get_asset_check_evaluations() if e.check_name == "integrity"]
        assert len(integrity) == 3 and all(e.passed for e in integrity)
        assert {e.metadata["integrity_by"].value for e in integrity} == {"decode"}
        assert all(e.metadata["toc_entries"].value > 0 for e in integrity)


def test_a_location_never_ships_an_archive_its_checks_did_not_prove(env, sample_tenants):
    """A location run alone (a re-run, a backfill of one asset) loads the staged archive: without
    the record of its drill it refuses, fail closed, instead of shipping unproven bytes."""
    from dagster import AssetKey

    tenant = sample_tenants[1]
    with instance_for_test() as instance, definitions(env) as defs:
        assert _run(defs, instance, tenant.id).success
        staged = Path(env["TENANT_BACKUP_WORK_DIR"]) / "staging" / tenant.id / "latest.json"
        handle = json.loads(staged.read_text())
        del handle["manifest"]["drill"]  # the record of its restore drill
        staged.write_text(json.dumps(handle))
        before = {name: len(loc.list(tenant.id)) for name, loc in locations_from_env(env).items()}
        alone = defs.resolve_job_def("tenant_backup").execute_in_process(
            partition_key=tenant.id, instance=instance, raise_on_error=False, asset_selection=[AssetKey("r2_copy")]
        )
        assert not alone.success
        failure = next(e for e in alone.all_events if e.event_type_value == "STEP_FAILURE")
        assert "not proven by its isolation check and restore drill" in failure.event_specific_data.error.message
        assert {name: len(loc.list(tenant.id)) for name, loc in locations_from_env(env).items()} == before


def test_r2_down_fails_only_r2_then_rerun_fills_the_gap(env, sample_tenants, s3_server):
    tenant = sample_tenants[1]
    with instance_for_test() as instance, definitions(env) as defs:
        s3_server.faults.set(down=True)
        try:
            result = _run(defs, instance, tenant.id)
        finally:
            s3_server.faults.clear()
        assert not result.success
        assert _materialized(result) == {"tenant_archive", "local_copy", "b2_copy"}
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert "r2: put failed" in failure.event_specific_data.error.message
        # The step raised the alert naming the location; the run-failure sensor (evaluated here as a
        # deployment would) does not raise it a second time.
        from dagster import DagsterEventType, build_run_status_sensor_context

        from backup_assets.defs.automation.triggers import backup_failure_alerts

        failure = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE)
        context = build_run_status_sensor_context(
            sensor_name="backup_failure_alerts",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"backup": defs.resources["backup"]},
        )
        backup_failure_alerts(context.for_run_failure())
        recorded = [a for a in alerts.read_alerts(Settings.from_env(env)) if a["kind"] == alerts.BACKUP_FAILURE]
        assert [(a["location"], a["tenant_id"]) for a in recorded] == [("r2", tenant.id)], recorded

        # Re-run only the failed location for that partition: the archive is loaded from staging.
        job = defs.resolve_job_def("tenant_backup")
        from dagster import AssetKey

        rerun = job.execute_in_process(
            partition_key=tenant.id, instance=instance, asset_selection=[AssetKey("r2_copy")]
        )
        assert rerun.success
    r2 = locations_from_env(env, ["r2"])["r2"].list(tenant.id)
    local = locations_from_env(env, ["local"])["local"].list(tenant.id)
    assert [r.backup_id for r in r2] == [r.backup_id for r in local]


def test_schedule_asks_for_every_active_tenant_and_no_other(env, sample_tenants):
    active = sorted(t.id for t in sample_tenants if t.status == "ACTIVE")
    with instance_for_test() as instance, definitions(env) as defs:
        instance.add_dynamic_partitions("tenants", [t.id for t in sample_tenants])
        tick = dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.timezone.utc)  # a Sunday
        assert tick.weekday() == 6
        context = build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick,
            resources={"backup": defs.resources["backup"]},
            repository_def=defs.get_repository_def(),
        )
        weekly_tenant_backup = defs.resolve_schedule_def("weekly_tenant_backup")
        requests = list(weekly_tenant_backup.evaluate_tick(context).run_requests)
        assert sorted(r.partition_key for r in requests) == active
        assert len({r.run_key for r in requests}) == len(active)
        assert weekly_tenant_backup.cron_schedule == "0 3 * * 0"
        assert weekly_tenant_backup.execution_timezone == "UTC"


def test_registry_sensor_adds_and_removes_partitions(env, sample_tenants):
    active = sorted(t.id for t in sample_tenants if t.status == "ACTIVE")
    gone = "00000000-0000-4000-8000-00000000dead"
    with instance_for_test() as instance, definitions(env) as defs:
        instance.add_dynamic_partitions("tenants", [active[0], gone])
        context = build_sensor_context(instance=instance, resources={"backup": defs.resources["backup"]})
        result = defs.resolve_sensor_def("tenant_registry_sync")(context)
        requests = result.dynamic_partitions_requests
        added = [k for r in requests if type(r).__name__ == "AddDynamicPartitionsRequest" for k in r.partition_keys]
        removed = [
            k for r in requests if type(r).__name__ == "DeleteDynamicPartitionsRequest" for k in r.partition_keys
        ]
        # Added by the sensor itself, in batches (one query per key when left to the daemon's request).
        assert added == [] and sorted(instance.get_dynamic_partitions("tenants")) == sorted([*active, gone])
        assert removed == [gone]


def test_missing_location_setting_is_a_startup_error_naming_it(env):
    from backup_assets.core.errors import ConfigError
    from backup_assets.defs.build import build_definitions

    broken = {k: v for k, v in env.items() if k != "R2_BUCKET"}
    with pytest.raises(ConfigError) as err:
        build_definitions(broken)
    assert "R2_BUCKET" in str(err.value)
