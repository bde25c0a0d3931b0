"""The long-lived runners' instance tuning (defs/runs/instance.py) hooks named Dagster methods: fail loudly
if the pinned Dagster renames or drops them, and show the cached answers are the database's."""

from __future__ import annotations

from unittest import mock

from dagster import instance_for_test

from backup_assets.defs.runs.instance import EVENT_STORAGE_SCHEMA_CHECKS, RUN_STORAGE_SCHEMA_CHECKS, tune_for_runner


def test_the_hooked_schema_checks_exist_and_are_answered_once():
    with instance_for_test() as instance:
        for storage, names in (
            (instance.run_storage, RUN_STORAGE_SCHEMA_CHECKS),
            (instance.event_log_storage, EVENT_STORAGE_SCHEMA_CHECKS),
        ):
            missing = [n for n in names if not callable(getattr(storage, n, None))]
            assert not missing, (
                f"Dagster {type(storage).__name__} no longer has {missing}: update defs/runs/instance.py"
            )
        before = (
            instance.run_storage.has_run_stats_index_cols(),
            instance.event_log_storage.has_table("event_logs"),
            instance.event_log_storage.has_table("no_such_table"),
        )
        tune_for_runner(instance)
        assert tune_for_runner(instance) is instance  # idempotent
        first = (
            instance.run_storage.has_run_stats_index_cols(),
            instance.event_log_storage.has_table("event_logs"),
            instance.event_log_storage.has_table("no_such_table"),
        )
        assert first == before == (True, True, False)
        with mock.patch("sqlalchemy.inspect", side_effect=AssertionError("asked the catalog again")):
            assert instance.run_storage.has_run_stats_index_cols() is True
            assert instance.event_log_storage.has_table("event_logs") is True
        instance.add_dynamic_partitions("tenants", ["t1"])  # and storage still works as before
        assert instance.get_dynamic_partitions("tenants") == ["t1"]


def test_the_runner_instance_shares_storage_without_compute_log_capture():
    from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager

    from backup_assets.defs.runs.instance import runner_instance

    with instance_for_test() as instance:
        runner = runner_instance(instance)
        assert isinstance(runner.compute_log_manager, NoOpComputeLogManager)
        runner.add_dynamic_partitions("tenants", ["t2"])
        assert instance.get_dynamic_partitions("tenants") == ["t2"]  # the same storage
