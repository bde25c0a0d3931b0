"""pg_dump of one tenant under row-level security, streamed, plus in-snapshot row counts.

The dump and the counts read the same exported snapshot on twin sessions (core/source/session.py: one session
definition), and `prove_dump` holds the counts against the rows the dump stream really carried
(core/dump/stream.py), so the manifest's row counts are exactly the rows in the archive. The count
query also re-proves isolation on the data itself: any row of a tenant table whose tenant column is
not this tenant aborts the dump.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading

import psycopg2
from psycopg2 import sql

from ..errors import DumpFailed, SafetyCheckFailed, first_error, one_line
from ..source.pgbin import PgClients
from ..source.preflight import EXCLUDED, RLS_CHILD, SHARED, TENANT, DumpPlan
from ..source.session import PgSession
from .stream import DumpContents, copy_text

_STDERR_LIMIT = 4000


def dump_options(major: int) -> list[str]:
    """What keeps other tenants' bytes out of the dump, spelled for pg_dump `major` (13-18)."""
    # Large objects have no tenant and no RLS: they would leak every tenant's blobs. Before 16 the
    # option is --no-blobs (since 10); 16 renamed it --no-large-objects.
    options = ["--no-large-objects" if major >= 16 else "--no-blobs"]
    if major >= 18:
        # Planner statistics hold other tenants' most common values: never dumped, whatever this
        # pg_dump's default (the stream reader refuses them too). Before 18 pg_dump has none to dump.
        options.append("--no-statistics")
    return options


class PgDump:
    """A running `pg_dump -Fc -Z0 --enable-row-security` as `session` (the tenant setting in its
    options, nothing inherited); read() streams it."""

    def __init__(
        self,
        session: PgSession,
        *,
        clients: PgClients,
        snapshot: str | None,
        plan: DumpPlan,
        lock_wait_timeout: str = "60s",
    ):
        args = [
            clients.program("pg_dump"),
            "--format=custom",
            "--compress=0",  # we compress once, faster, in the stream
            "--enable-row-security",
            *dump_options(clients.major),
            f"--lock-wait-timeout={lock_wait_timeout}",
        ]
        if snapshot:
            args.append(f"--snapshot={snapshot}")
        for table in plan.of_kind(EXCLUDED):
            args.append("--exclude-table-data=" + _pattern(table.schema, table.name))
        args.append(f"--dbname={session.conninfo()}")
        self._session = session
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._stderr, env=session.child_env(), bufsize=0
        )
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
        """pg_dump's first error line (then the rest), scrubbed of the password, on one line."""
        self._stderr.seek(0)
        text = self._stderr.read(_STDERR_LIMIT).decode("utf-8", "replace")
        return self._session.scrub(first_error(text))

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
                            sql.SQL(
                                "SELECT count(*), count(*) FILTER (WHERE {col} IS DISTINCT FROM CAST(%s AS {typ}))"
                                " FROM {t}"
                            ).format(col=sql.Identifier(self.column), typ=sql.SQL(table.tenant_type), t=ident),
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
                raise DumpFailed(f"counting rows failed: {one_line(self.error)}")
            raise self.error
        if self.leaks:
            detail = ", ".join(f"{name}: {n} rows" for name, n in sorted(self.leaks.items()))
            raise SafetyCheckFailed(
                f"isolation check failed: as tenant {self.tenant_id} the backup role sees other tenants' rows ({detail});"
                " fix the RLS policies"
            )
        return dict(self.counts)


def tenant_values(conn, plan: DumpPlan, tenant_id: str) -> dict[str, bytes]:
    """Per tenant table, the tenant id as COPY writes it in that table's tenant column: the id cast to
    the column's type and printed by the server (a bigint id "0042" is written 42)."""
    by_type: dict[str, bytes] = {}
    values = {}
    with conn.cursor() as cur:
        for table in plan.of_kind(TENANT):
            if table.tenant_type not in by_type:
                cur.execute(
                    sql.SQL("SELECT CAST(CAST(%s AS {typ}) AS text)").format(typ=sql.SQL(table.tenant_type)),
                    (tenant_id,),
                )
                by_type[table.tenant_type] = copy_text(cur.fetchone()[0])
            values[table.qualified] = by_type[table.tenant_type]
    return values


def prove_dump(counts: dict[str, int], contents: DumpContents, tenant_id: str) -> None:
    """The rows pg_dump wrote must be the rows counted in its snapshot, table by table, and every
    tenant value checked in the stream must be the tenant's. SafetyCheckFailed naming each table
    otherwise: the archive is then never written."""
    dumped = contents.rows()
    problems = []
    for table, rows in sorted(dumped.items()):
        counted = counts.get(table)
        if counted is None:
            if rows:  # e.g. created after the pre-flight read the catalog: its RLS was never checked
                problems.append(f"{table}: {rows} rows in the dump, a table the pre-flight did not check")
        elif rows != counted:
            problems.append(f"{table}: {rows} rows in the dump, {counted} of this tenant in the snapshot")
    for table, counted in sorted(counts.items()):
        if table not in dumped and counted:
            problems.append(f"{table}: no data in the dump, {counted} rows of this tenant in the snapshot")
    for table, tally in sorted(contents.tables.items()):
        if tally.foreign:
            sample = (tally.sample or b"").decode("utf-8", "replace")[:80]
            problems.append(f"{table}: {tally.foreign} rows whose tenant column is not {tenant_id} (e.g. {sample!r})")
    if problems:
        raise SafetyCheckFailed(
            f"isolation check failed: the dump pg_dump wrote is not what the proof counted as tenant {tenant_id}"
            f" ({'; '.join(problems)}); pg_dump's session saw other rows than the proof's: check the RLS policies"
            " for settings or roles that differ between sessions. Nothing was written"
        )
