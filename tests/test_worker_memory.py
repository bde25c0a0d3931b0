"""Workers with flat memory (issue 23, item 4): what a tenant run left behind in a Dask worker was
Dask's statistical profiler — a call tree of the task thread's stack sampled every 10 ms, one kept per
second for the last 1,000 seconds, for the whole worker and per task key (a worker grew ~1.5 MB per
tenant it backed up; bench/weekly.py prints each worker's RSS). A batch's workers run without it.

Real Dask worker processes (a LocalCluster under the batch's configuration), a task with a deep stack."""

from __future__ import annotations

import logging
import time

import dask
import pytest
from distributed import Client, LocalCluster

from backup_assets.core.cluster import PROFILER, worker_dask_config
from backup_assets.defs.runs.batch import cluster_config


def _deep(depth: int, until: float) -> int:
    if depth:
        return _deep(depth - 1, until) + 1
    while time.monotonic() < until:  # a run's stack: deep, for a while
        sum(range(1000))
    return 0


def _task(seconds: float) -> int:
    return _deep(60, time.monotonic() + seconds)


def _profile_kept(dask_worker) -> dict:
    return {
        "enabled": bool(dask.config.get(PROFILER)),
        "sampling": "profile" in dask_worker.periodic_callbacks,
        "trees": len(dask_worker.profile_history) + len(dask_worker.profile_keys_history),
        "samples": dask_worker.profile_recent["count"] + sum(tree["count"] for _, tree in dask_worker.profile_history),
    }


def _run_task_on_a_worker(config: dict) -> dict:
    with dask.config.set(config):
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
            ) as cluster,
            Client(cluster) as client,
        ):
            assert client.submit(_task, 2.5, pure=False).result() == 60
            return next(iter(client.run(_profile_kept).values()))


def test_a_batch_worker_keeps_no_profile_of_its_tasks(monkeypatch):
    monkeypatch.delenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", raising=False)
    kept = _run_task_on_a_worker(cluster_config(3))
    assert kept == {"enabled": False, "sampling": False, "trees": 0, "samples": 0}


def test_dasks_default_keeps_a_profile_per_second(monkeypatch):
    """The contrast: what the test above would see with Dask's default (so it measures something)."""
    kept = _run_task_on_a_worker({})
    assert kept["enabled"] and kept["sampling"]
    assert kept["trees"] >= 1 and kept["samples"] > 0


@pytest.mark.parametrize("value", ["True", "False"])
def test_an_operators_own_profiler_setting_is_kept(monkeypatch, value):
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", value)
    assert worker_dask_config() == {}
    assert PROFILER not in cluster_config(3)
