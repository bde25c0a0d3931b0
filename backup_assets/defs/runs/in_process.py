"""The worker side of a batch (run_chunk_in_worker, the Dask task): a worker's own configuration,
secrets, paths and instance, checked against the driver's before it takes a task; what it runs:
defs/runs/tenant_runs.py (runs in this process, summarized per tenant); many tenants at once:
defs/runs/batch.py.
"""

import logging
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance, RunsFilter
from dagster._core.instance.ref import InstanceRef

from ...core.cluster import ClusterSpec, Problems, WorkerRefused, compare, configuration_problems
from ...core.errors import ConfigError, DatabaseUnreachable, first_line
from ...core.settings import Settings
from .guard import (
    BATCH_TAG,
    executing_runs,
)
from .instance import instance_from_ref, runner_instance, tune_for_runner
from .tenant_runs import (  # noqa: F401 - also imported from here (the CLI, the demo, tests)
    CHUNK_TAG,
    TenantOutcome,
    back_up_chunk,
    back_up_one,
    job_assets,
    run_range,
    run_tenant,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------- the worker side of a batch
#
# A Dask worker runs tenants for a driver that may be on another machine. It reads its own
# configuration (its environment and key file: Settings.from_env), opens its own Dagster instance
# (DAGSTER_HOME, or DAGSTER_PG_URL alone with its local files under its own work directory), and
# takes a task only when the settings the cluster must agree on and the instance are the driver's
# (core/cluster.py). The driver sends no secret and none of its paths.

CLUSTER_TOKEN_KEY = "tenant_backup/cluster_instance"  # in the instance's key-value store
_MISSING_ENV = re.compile(r'environment variable "([A-Za-z_][A-Za-z0-9_]*)" which is not set')


def instance_label(instance: DagsterInstance) -> str:
    """An instance's storage for messages, never with a password: `PostgreSQL user@host:port/db`."""
    url = getattr(instance.run_storage, "postgres_url", None)
    if url:
        try:
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            host = parsed.host or parsed.query.get("host") or "localhost"
            port = f":{parsed.port}" if parsed.port else ""
            return f"PostgreSQL {parsed.username or '?'}@{host}{port}/{parsed.database or '?'}"
        except Exception:  # noqa: BLE001 - a label only
            return "PostgreSQL"
    if instance.is_ephemeral:
        return "an in-memory instance (DAGSTER_HOME is not set)"
    return f"{type(instance.run_storage).__name__} under {instance.root_directory}"


def is_shared_storage(instance: DagsterInstance) -> bool:
    """Runs and events in PostgreSQL: an instance workers on other machines can write to."""
    if instance.is_ephemeral:
        return False
    storages = (instance.run_storage, instance.event_log_storage)
    return all(type(s).__module__.startswith("dagster_postgres") for s in storages)


def cluster_token(instance: DagsterInstance, *, create: bool) -> str | None:
    """A random token kept in the instance itself: a worker that reads the driver's token from its own
    instance writes where the driver reads (no database URL or password needs to travel)."""
    storage = instance.run_storage
    token = storage.get_cursor_values({CLUSTER_TOKEN_KEY}).get(CLUSTER_TOKEN_KEY)
    if token or not create:
        return token
    storage.set_cursor_values({CLUSTER_TOKEN_KEY: uuid.uuid4().hex})
    return storage.get_cursor_values({CLUSTER_TOKEN_KEY})[CLUSTER_TOKEN_KEY]


def open_worker_instance(
    settings: Settings, problems: Problems, *, require_postgres: bool = True
) -> DagsterInstance | None:
    """This worker's own Dagster instance: its DAGSTER_HOME, else one from DAGSTER_PG_URL alone whose
    local files go under this worker's work directory. `require_postgres`: a worker on another
    machine (tenant-backup worker, the preload) needs the shared PostgreSQL instance; a local
    cluster's worker shares its driver's DAGSTER_HOME, whatever its storage (the cluster token tells
    a wrong one). What is missing or wrong goes into `problems`; an unreachable database raises
    DatabaseUnreachable (worth retrying)."""
    from dagster import EnvVar
    from dagster._core.instance.config import is_dagster_home_set

    url = EnvVar("DAGSTER_PG_URL").get_value() or ""
    try:
        if is_dagster_home_set():
            instance = DagsterInstance.get()
            if require_postgres and not is_shared_storage(instance):
                problems.invalid.append(
                    f"this worker's DAGSTER_HOME instance stores runs in {instance_label(instance)}: a worker"
                    " writes into the cluster's PostgreSQL instance (set DAGSTER_PG_URL and unset DAGSTER_HOME,"
                    " or give DAGSTER_HOME the PostgreSQL dagster.yaml)"
                )
                return None
            home, instance = instance, runner_instance(instance)
            home.dispose()
        elif not url.strip():
            problems.missing.append("DAGSTER_PG_URL (the Dagster instance's PostgreSQL database)")
            return None
        elif not url.startswith("postgresql+psycopg2://"):
            problems.invalid.append("DAGSTER_PG_URL must be a postgresql+psycopg2:// URL (docs/ARCHITECTURE.md)")
            return None
        else:
            base = Path(settings.work_dir) / "dagster"
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
            storage = {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
            ref = InstanceRef.from_dir(str(base), overrides={"storage": storage, "telemetry": {"enabled": False}})
            instance = tune_for_runner(instance_from_ref(ref))
        cluster_token(instance, create=False)  # reaches the database
        return instance
    except Exception as exc:  # noqa: BLE001 - said in one line, below
        line = first_line(exc) or type(exc).__name__
        password = _url_password(url)
        if password:
            line = line.replace(password, "***")
        missing = _MISSING_ENV.search(str(exc))
        if missing:
            problems.missing.append(f"{missing.group(1)} (named by DAGSTER_HOME/dagster.yaml)")
        elif "OperationalError" in type(exc).__name__ or "OperationalError" in line:
            raise DatabaseUnreachable(f"this worker's Dagster database is unreachable: {line}") from None
        else:
            problems.invalid.append(f"this worker's Dagster instance: {line}")
        return None


def _url_password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password if url else None
    except Exception:  # noqa: BLE001
        return None


@dataclass
class WorkerSide:
    """What a worker process holds for its tasks, built once from its own configuration."""

    settings: Settings
    shared: dict[str, str]
    key_ids: tuple[str, ...]
    defs: object
    instance: DagsterInstance
    token: str | None
    accepted: set = field(default_factory=set)  # ClusterSpecs already compared and accepted


_WORKER: dict = {}
_WORKER_LOCK = threading.Lock()


def load_worker_side(*, require_postgres: bool = False) -> tuple[WorkerSide | None, Problems]:
    """This process's whole configuration, checked at once: every missing variable and every other
    problem (source, keyring, locations, work directory, Dagster instance: open_worker_instance)."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return None, Problems([], [str(exc)])
    problems = configuration_problems(settings)
    instance = open_worker_instance(settings, problems, require_postgres=require_postgres)
    if problems or instance is None:
        return None, problems
    try:
        shared = settings.cluster_settings()
        from ..backup.definitions import backup_definitions

        settings.apply_process_wide()  # this worker process's edge
        defs = backup_definitions(settings)
    except ConfigError as exc:
        return None, Problems([], [str(exc)])
    keys = settings.keyring().ids
    return WorkerSide(settings, shared, keys, defs, instance, cluster_token(instance, create=False)), problems


def refusal(address: str, line: str) -> WorkerRefused:
    return WorkerRefused(f"worker {address} on {socket.gethostname()} refused the task: {line}", address)


def worker_side(address: str) -> WorkerSide:
    """This worker process's WorkerSide, or WorkerRefused naming everything that is missing. A
    configuration problem is remembered (the environment does not change); an unreachable database
    is tried again with the next task."""
    with _WORKER_LOCK:
        if "side" in _WORKER:
            return _WORKER["side"]
        if "refused" in _WORKER:
            raise refusal(address, _WORKER["refused"])
        try:
            side, problems = load_worker_side()
        except DatabaseUnreachable as exc:
            raise refusal(address, str(exc)) from None
        if side is None:
            _WORKER["refused"] = problems.line()
            raise refusal(address, _WORKER["refused"])
        _WORKER["side"] = side
        return side


def prepare_worker_side() -> tuple[str, bool]:
    """Load this process's WorkerSide ahead of its first task (a Dask preload at worker start):
    ("", _) when ready; else the problems in one line and whether they are this worker's own
    configuration (remembered, as worker_side does) rather than an unreachable database."""
    with _WORKER_LOCK:
        if "side" in _WORKER:
            return "", False
        if "refused" in _WORKER:
            return _WORKER["refused"], True
        try:
            side, problems = load_worker_side(require_postgres=True)
        except DatabaseUnreachable as exc:
            return str(exc), False
        if side is None:
            _WORKER["refused"] = problems.line()
            return _WORKER["refused"], True
        _WORKER["side"] = side
        return "", False


def accept(side: WorkerSide, spec: ClusterSpec, address: str) -> None:
    """Take the driver's task only if the settings the cluster must agree on and the instance are
    the driver's; WorkerRefused naming every difference otherwise."""
    if spec in side.accepted:
        return
    problems = compare(dict(spec.shared), side.shared, side.key_ids)
    if side.token != spec.instance:
        side.token = cluster_token(side.instance, create=False)  # the driver may have just made it
    if side.token != spec.instance:
        problems.append(
            f"its Dagster instance ({instance_label(side.instance)}) is not the driver's ({spec.instance_label})"
        )
    if problems:
        raise refusal(address, "; ".join(problems))
    side.accepted.add(spec)


def run_chunk_in_worker(
    tenant_ids: list[str], labels: dict, *, force: bool, batch_id: str, log_level: str, cluster: ClusterSpec
) -> list[TenantOutcome]:
    """The Dask task of a batch (importable, so workers on other machines can run it): a stretch of
    tenants in runs of many partitions (back_up_chunk), with this worker's own settings, secrets,
    paths and instance, once they agree with the driver's `cluster`."""
    from distributed import get_client, get_worker

    address = get_worker().address
    side = worker_side(address)
    accept(side, cluster, address)
    live_workers = None
    redelivered = side.instance.get_run_records(
        RunsFilter(tags={BATCH_TAG: batch_id, CHUNK_TAG: tenant_ids[0]}), limit=1
    )
    if redelivered or any(executing_runs(side.instance, t) for t in tenant_ids[:1]):
        live_workers = set(get_client().scheduler_info(n_workers=-1)["workers"])
    return back_up_chunk(
        side.defs,
        side.instance,
        tenant_ids,
        force=force,
        batch_id=batch_id,
        labels=labels,
        log_level=log_level,
        worker=address,
        live_workers=live_workers,
        timeout_s=side.settings.run_timeout_s,
    )
