"""pg_dump of one tenant under row-level security, streamed, plus in-snapshot row counts.

The dump and the counts read the same exported snapshot, so the manifest's row counts are exactly
the rows in the archive. The count query also re-proves isolation on the data itself: any row of a
tenant table whose tenant column is not this tenant aborts the dump.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from functools import lru_cache

import psycopg2
from psycopg2 import sql

from .errors import DumpFailed, SafetyCheckFailed
from .pg import client_env
from .pgbin import pg_program
from .preflight import EXCLUDED, RLS_CHILD, SHARED, TENANT, DumpPlan

_STDERR_LIMIT = 4000


@lru_cache(maxsize=None)
def pg_dump_version() -> str:
    out = subprocess.run([pg_program("pg_dump"), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


class PgDump:
    """A running `pg_dump -Fc -Z0 --enable-row-security` scoped to one tenant; read() streams it."""

    def __init__(self, dsn: str, *, tenant_setting: str, tenant_id: str, snapshot: str | None,
                 plan: DumpPlan, lock_wait_timeout: str = "60s"):
        conninfo, env = client_env(dsn, {tenant_setting: tenant_id})
        args = [
            pg_program("pg_dump"),
            "--format=custom",
            "--compress=0",  # we compress once, faster, in the stream
            "--enable-row-security",
            # large objects have no tenant and no RLS: they would leak every tenant's blobs
            "--no-large-objects",
            f"--lock-wait-timeout={lock_wait_timeout}",
        ]
        if snapshot:
            args.append(f"--snapshot={snapshot}")
        for table in plan.of_kind(EXCLUDED):
            args.append("--exclude-table-data=" + _pattern(table.schema, table.name))
        args.append(f"--dbname={conninfo}")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, env=env, bufsize=0)
        _widen_pipe(self.proc.stdout.fileno())

    def read(self, size: int) -> bytes:
        return self.proc.stdout.read(size)

    def finish(self) -> None:
        """Wait for pg_dump; DumpFailed with its stderr if it did not succeed."""
        self.proc.stdout.close()
        code = self.proc.wait()
        if code != 0:
            raise DumpFailed(f"pg_dump failed (exit {code}): {self.stderr() or 'no message'}")
        self._stderr.close()

    def stderr(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read(_STDERR_LIMIT).decode("utf-8", "replace")
        return " ".join(text.split())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        self._stderr.close()


def _widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """A 1 MiB pipe instead of Linux's 64 KiB: fewer, larger reads and fewer stalls of pg_dump."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default
        pass


def _pattern(schema: str, name: str) -> str:
    # pg_dump patterns: double quotes make names literal (case, dots, wildcards).
    return '"{}"."{}"'.format(schema.replace('"', '""'), name.replace('"', '""'))


class RowCounter(threading.Thread):
    """Counts this tenant's rows per table in the dump's snapshot, and the rows of other tenants
    that RLS let through (must be zero). Runs beside pg_dump on the snapshot-holding connection."""

    def __init__(self, conn, plan: DumpPlan, *, tenant_column: str, tenant_id: str):
        super().__init__(name="row-counter", daemon=True)
        self.conn, self.plan, self.column, self.tenant_id = conn, plan, tenant_column, tenant_id
        self.counts: dict[str, int] = {}
        self.leaks: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                for table in self.plan.tables:
                    ident = sql.Identifier(table.schema, table.name)
                    if table.kind == TENANT:
                        # The id is cast once to the column's type (from the catalog), not the column
                        # to text per row: this scan runs beside pg_dump on the same two cores.
                        cur.execute(
                            sql.SQL("SELECT count(*), count(*) FILTER (WHERE {col} IS DISTINCT FROM CAST(%s AS {typ}))"
                                    " FROM {t}").format(col=sql.Identifier(self.column), typ=sql.SQL(table.tenant_type),
                                                        t=ident),
                            (self.tenant_id,),
                        )
                        total, foreign = cur.fetchone()
                        if foreign:
                            self.leaks[table.qualified] = foreign
                    elif table.kind in (RLS_CHILD, SHARED):
                        cur.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=ident))
                        total = cur.fetchone()[0]
                    else:
                        continue
                    self.counts[table.qualified] = total
        except BaseException as exc:  # reported by the caller, which owns the failure
            self.error = exc

    def result(self) -> dict[str, int]:
        self.join()
        if self.error is not None:
            if isinstance(self.error, psycopg2.Error):
                reason = " ".join(str(self.error).split())
                raise DumpFailed(f"counting rows failed: {reason}")
            raise self.error
        if self.leaks:
            detail = ", ".join(f"{name}: {n} rows" for name, n in sorted(self.leaks.items()))
            raise SafetyCheckFailed(
                f"isolation check failed: as tenant {self.tenant_id} the backup role sees other tenants' rows ({detail});"
                " fix the RLS policies"
            )
        return dict(self.counts)
