"""Executing `--replace` in ONE transaction (REPEATABLE READ) with a lock timeout: lock the touched
tables, load the archive's rows of them into temporary tables (pg_restore --data-only, parsed by
.script), decide row by row what goes and check that nothing outside this tenant's rows is harmed
(.replace_sets), delete children first, update and insert parents first, check the counts, move
owned sequences forward, prove that no other tenant's row changed (.replace_proof), commit. Any
error, a failed proof or an interrupt rolls everything back. The dry run decides and counts the
same way, in a transaction that writes nothing but temporary tables, and is rolled back."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from contextlib import nullcontext

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from ..archive.pipe import ArchivePipe
from ..codec.keyring import Keyring
from ..dump.copytext import CopyStatementError, parse_copy_statement
from ..errors import ArchiveError, RestoreError, RestoreRefused, TenantBackupError
from ..source.pgbin import for_archive
from .interrupt import CancelOnInterrupt
from .replace_plan import Plan, Table, plan_replace
from .replace_proof import Connect, Proof
from .replace_sets import Replacement
from .result import Report, RestoreResult, pg_message
from .script import CHUNK, DATA_COMMENT, ScriptReader
from .select import SourceCopy

log = logging.getLogger(__name__)

LOCK_TIMEOUT_ENV = "TENANT_BACKUP_RESTORE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = "10s"
LOCK_TIMEOUT_RE = re.compile(r"\d+\s*(ms|s|min|h)?\Z")
WORK_MEM = "64MB"
TEMP_BUFFERS = "128MB"


OWNED_SEQUENCES_SQL = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(s.relname), a.attname
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = %s AND d.deptype IN ('a', 'i')
 ORDER BY 1
"""


ACTIONS = {
    "merge": "by primary key: changed rows updated, rows not in the backup deleted, missing ones inserted",
    "replace": "delete this tenant's rows, then load the backup's",
    "registry": "keep the target's row; insert the backup's if missing",
}


def replace_rows(
    conn,
    copy: SourceCopy,
    keyring: Keyring,
    result: RestoreResult,
    column: str,
    lock_timeout: str,
    dry_run: bool,
    report: Report,
    *,
    connect_twin: Connect | None = None,
    guard: CancelOnInterrupt | None = None,
) -> None:
    """Plan, then (dry run) decide and count, or replace, prove and commit; see the module docstring.
    connect_twin opens a second session on the target (the proof reads the database as it was there);
    guard: the run's CancelOnInterrupt (the commit is let finish)."""
    plan = plan_replace(conn, copy.manifest, copy.tenant_id, column, result)
    conn.rollback()
    for outcome in result.tables.values():
        if outcome.kind in ("shared", "excluded"):
            outcome.action = "untouched"
    # One snapshot for every decision and for the proof; a row of this tenant that another session
    # changes meanwhile makes the restore fail (serialization failure) rather than act on stale rows.
    conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ)
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (lock_timeout,))
            cur.execute("SET LOCAL row_security = off")  # a policy that still applies is an error, never a filter
            # Memory for this transaction's joins and temporary tables (set before the first temporary
            # table of the session): the backup's and the current rows are hashed table by table.
            cur.execute("SET LOCAL work_mem = %s", (WORK_MEM,))
            cur.execute("SET LOCAL temp_buffers = %s", (TEMP_BUFFERS,))
            proof = None
            t0 = time.monotonic()
            if not dry_run:
                # All locks first, before the snapshot: a busy table fails fast (lock_timeout) before any
                # work is done. ROW EXCLUSIVE is what DELETE/INSERT take anyway: other tenants keep writing.
                cur.execute(
                    sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(
                        sql.SQL(", ").join(t.ident for t in plan.order)
                    )
                )
                proof = Proof(cur)
            loaded = _load_temp_tables(cur, copy, keyring, plan)
            mismatches = [
                f"{name}: manifest {result.tables[name].manifest_rows}, archive {copied}"
                for name, (_t, _c, copied) in sorted(loaded.items())
                if copied != result.tables[name].manifest_rows
            ]
            if mismatches:
                raise RestoreError("row counts differ from the manifest: " + "; ".join(mismatches))
            result.timings["load_s"] = time.monotonic() - t0

            t0 = time.monotonic()
            rows = Replacement(cur, plan, loaded, result)
            rows.prepare()
            rows.check_references(dry_run)
            for warning in rows.slow_deletes():
                report(f"warning: {warning}")
                result.warnings.append(warning)
            result.timings["check_s"] = time.monotonic() - t0
            if dry_run:
                rows.count_updates()
                _outcomes(result, rows, dry_run=True)
                conn.rollback()
                return

            t0 = time.monotonic()
            rows.delete()
            result.timings["delete_s"] = time.monotonic() - t0
            t0 = time.monotonic()
            rows.write()
            result.timings["write_s"] = time.monotonic() - t0

            t0 = time.monotonic()
            rows.check_counts()
            result.sequences = _advance_sequences(cur, plan.order)
            for table_rows in rows.rows.values():
                proof.expect(table_rows.table.oid, table_rows.inserted, table_rows.updated, table_rows.deleted)
            for note in proof.verify(cur, plan, connect_twin or _no_twin):
                report(note)
                result.warnings.append(note)
            result.timings["verify_s"] = time.monotonic() - t0
            _outcomes(result, rows, dry_run=False)
        with guard.defer() if guard is not None else nullcontext():
            conn.commit()
    except psycopg2.Error as exc:
        _rollback(conn)
        if guard is not None and guard.interrupted:
            raise KeyboardInterrupt from None
        if isinstance(exc, psycopg2.errors.LockNotAvailable):
            raise RestoreError(
                f"--replace rolled back, nothing changed: a table is locked by another session "
                f"(lock timeout {lock_timeout}, {LOCK_TIMEOUT_ENV}): {pg_message(exc)}"
            ) from None
        if isinstance(exc, psycopg2.errors.SerializationFailure):
            raise RestoreError(
                "--replace rolled back, nothing changed: another session changed rows the restore reads or writes "
                f"while it ran (stop the application's writes for this tenant and retry): {pg_message(exc)}"
            ) from None
        raise RestoreError(f"--replace rolled back, nothing changed: {pg_message(exc)}") from None
    except BaseException as exc:
        _rollback(conn)
        if guard is not None and guard.interrupted:
            raise KeyboardInterrupt from None
        if isinstance(exc, RestoreRefused):
            raise  # already says "refused, nothing changed"
        if isinstance(exc, TenantBackupError):
            raise type(exc)(f"--replace rolled back, nothing changed: {exc}") from None
        raise


def _outcomes(result: RestoreResult, rows: Replacement, *, dry_run: bool) -> None:
    for table_rows in rows.rows.values():
        table = table_rows.table
        outcome = result.tables[table.qualified]
        outcome.kind = "registry" if table.mode == "registry" else outcome.kind
        outcome.action = ACTIONS[table.mode]
        if table.mode == "registry":
            outcome.deleted, outcome.updated = 0, 0
            outcome.inserted = None if dry_run else table_rows.inserted
            continue
        outcome.deleted = table_rows.doomed if dry_run else table_rows.deleted
        outcome.updated = table_rows.updated
        outcome.inserted = table_rows.copied - table_rows.kept if dry_run else table_rows.inserted
        outcome.unchanged = table_rows.kept - table_rows.updated


def _no_twin():
    raise RestoreError("no second session to prove the restore with")


def _rollback(conn) -> None:
    try:
        conn.rollback()
    except psycopg2.Error:
        pass  # a dead connection rolls back by itself


def _advance_sequences(cur, tables: list[Table]) -> list[tuple[str, int, int]]:
    """Move each sequence owned by a column of these tables to at least max(column), never backwards.

    setval is not transactional: should the transaction still roll back, a sequence stays moved
    forward, which is harmless (ids are skipped, never reused)."""
    moved = []
    for table in tables:
        cur.execute(OWNED_SEQUENCES_SQL, (table.oid,))
        for seq, col in cur.fetchall():
            cur.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(col), table.ident))
            top = cur.fetchone()[0]
            if top is None:
                continue
            # One statement: read the sequence and move it only forward (nextval would give last_value
            # itself when is_called is false, hence the -1).
            cur.execute(
                sql.SQL(
                    "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END, "
                    "CASE WHEN %s > (CASE WHEN is_called THEN last_value ELSE last_value - 1 END) "
                    "THEN setval(%s::regclass, %s, true) END FROM {}"
                ).format(sql.SQL(seq)),
                (top, seq, top),
            )
            before, after = cur.fetchone()
            if after is not None:
                moved.append((seq, int(before), int(after)))
    return moved


def _load_temp_tables(cur, copy: SourceCopy, keyring: Keyring, plan: Plan) -> dict[str, tuple]:
    """Stream the archive through `pg_restore --data-only -f -` and COPY the rows of every touched
    table into a temporary table (dropped at commit). Returns name -> (temp ident, columns, rows).

    A decoding failure kills pg_restore (ArchivePipe): the script ends early, and the archive's error
    is the one reported, whatever reading the truncated script raised."""
    args = [
        for_archive(copy.manifest.pg_dump_version).program("pg_restore"),
        "--data-only",
        "--no-owner",
        "--no-acl",
        "-f",
        "-",
    ]
    loaded: dict[str, tuple] = {}
    with open(copy.archive_path, "rb") as handle:
        pipe = ArchivePipe(
            args, handle, keyring, expect_tenant_id=copy.tenant_id, stdout=subprocess.PIPE, name="restore-decode"
        )
        try:
            with pipe:
                _copy_blocks(cur, ScriptReader(pipe.stdout), plan, loaded)
        except (RestoreError, psycopg2.Error):
            if pipe.outcome is None or pipe.outcome.decode_error is None:
                raise
    outcome = pipe.outcome
    if outcome.decode_error is not None:
        if isinstance(outcome.decode_error, ArchiveError):
            raise ArchiveError(f"archive rejected while loading: {outcome.decode_error}")
        raise outcome.decode_error
    if outcome.code != 0:
        raise RestoreError(outcome.child_failure("pg_restore --data-only"))
    return loaded


def _copy_blocks(cur, reader: ScriptReader, plan: Plan, loaded: dict[str, tuple]) -> None:
    kinds_wanted = {t.qualified for t in plan.order}
    current: str | None = None  # from the "-- Data for Name" comment before each COPY
    n = 0
    while True:
        raw_line = reader.readline()
        if raw_line is None:
            break
        line = raw_line.decode("utf-8", "replace")
        m = DATA_COMMENT.match(line)
        if m:
            current = f"{m.group(2)}.{m.group(1)}"
            continue
        if not line.startswith("COPY "):
            continue  # SET lines, comments, SEQUENCE SET (setval: global values, skipped)
        block = reader.block()
        try:
            schema, name, columns = parse_copy_statement(line)
        except CopyStatementError as exc:
            raise RestoreError(f"cannot read the dump's data: {exc}") from None
        qualified = f"{schema}.{name}"
        if qualified not in kinds_wanted:
            block.drain()  # shared / excluded / unknown: never touched in place
            continue
        if current is not None and current != qualified:
            log.warning("dump comment names %s, COPY line %s", current, qualified)
        table = plan.by_name[qualified]
        n += 1
        temp = sql.Identifier(f"tb_restore_{n}")
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        # The dump's columns only, with the target's types and none of its constraints (a column added
        # since the backup, NOT NULL, is filled by its default when the row is inserted).
        cur.execute(
            sql.SQL("CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                temp, cols if columns else sql.SQL("*"), table.ident
            )
        )
        cur.copy_expert(
            sql.SQL("COPY {} ({}) FROM STDIN").format(temp, cols).as_string(cur.connection), block, size=CHUNK
        )
        loaded[qualified] = (temp, columns, cur.rowcount)
        current = None
