"""A Dagster instance tuned for long-lived runners (the batch workers, `tenant-backup backup`, the
demo), which execute thousands of runs against one instance. The storage database is untouched;
only how this process talks to it changes.

- Pooled storage connections, as dagster-webserver does: dagster-postgres opens a connection per
  statement by default (fine for short run processes), and a runner spent ~30% of its time in
  connect().
- No capture of the process's stdout/stderr per run: Dagster's local compute log manager mirrors
  them through two `tail` processes per run (0.07 s of CPU per tenant, bench/weekly.py), and
  nothing of ours writes there: a backup's logs are Dagster events (context.log), pg_dump's and
  pg_restore's messages travel in our errors. Runs the daemon launches keep the instance's setting.
- Schema checks answered once per process: Dagster's SQL storages ask the database's catalog
  (SQLAlchemy reflection) whether a table or column exists before many reads and writes — several
  catalog queries per event, per run; half of a runner's CPU went to them (bench/weekly.py). The
  schema cannot lose a table or column under a running process (migrations only add), and a
  migration that adds one is seen on the next start. These are named Dagster methods: a test
  (tests/test_instance_tuning.py) fails loudly when the pinned Dagster renames or drops them.
"""

from __future__ import annotations

import fcntl
import functools
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import ConfigurableClassData

RUN_STORAGE_SCHEMA_CHECKS = (
    "has_run_stats_index_cols",
    "has_bulk_actions_selector_cols",
    "has_backfill_id_column",
    "has_bulk_action_job_name_column",
    "has_backfill_tags_table",
    "has_built_index",
)
EVENT_STORAGE_SCHEMA_CHECKS = ("has_table", "has_asset_key_col", "has_secondary_index")
_TUNED = "_tenant_backup_tuned"
NO_COMPUTE_LOGS = ConfigurableClassData("dagster._core.storage.noop_compute_log_manager", "NoOpComputeLogManager", "{}")


INIT_LOCK = ".tenant-backup-instance.lock"


def open_instance(dagster_home: str | None) -> DagsterInstance:
    """The instance of `dagster_home` (DAGSTER_HOME; ephemeral when None), opened under a lock file
    there: the first open of a brand-new DAGSTER_HOME creates Dagster's SQLite storages (tables,
    indexes, migrations), and two commands doing that at once crash ("table secondary_indexes already
    exists"). Inside the lock the storages are created and used once; later opens find them made and
    only wait for each other while an instance is being opened."""
    if not dagster_home:
        return DagsterInstance.ephemeral()
    home = Path(dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / INIT_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            instance = DagsterInstance.get()
            instance.get_runs(limit=1)  # run storage made and migrated
            instance.event_log_storage.get_asset_records([])  # event log storage and its index made
            instance.all_instigator_state()  # schedule storage made
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return instance


def runner_instance(instance: DagsterInstance) -> DagsterInstance:
    """The same storage as `instance`, without per-run stdout/stderr capture, tuned (tune_for_runner)."""
    if instance.is_ephemeral:
        return instance
    return tune_for_runner(instance_from_ref(instance.get_ref()))


def instance_from_ref(ref: InstanceRef) -> DagsterInstance:
    return DagsterInstance.from_ref(ref._replace(compute_logs_data=NO_COMPUTE_LOGS))


def tune_for_runner(instance: DagsterInstance) -> DagsterInstance:
    """Pool the storage connections and remember schema checks (see module docstring). Idempotent."""
    if instance.is_ephemeral or getattr(instance, _TUNED, False):
        return instance
    instance.optimize_for_webserver(statement_timeout=300_000, pool_recycle=3600, max_overflow=4)
    for storage, names in (
        (instance.run_storage, RUN_STORAGE_SCHEMA_CHECKS),
        (instance.event_log_storage, EVENT_STORAGE_SCHEMA_CHECKS),
    ):
        for name in names:
            method = getattr(storage, name, None)
            if callable(method):
                setattr(storage, name, functools.cache(method))
    setattr(instance, _TUNED, True)
    return instance
