"""Executing `--replace` in ONE transaction with a lock timeout: load the archive's rows of the touched
tables into temporary tables (pg_restore --data-only, parsed by .script), delete this tenant's rows
children first, insert parents first, move owned sequences forward. Any error rolls everything back."""

from __future__ import annotations

import logging
import re
import subprocess
import time

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from ..archive.pipe import ArchivePipe
from ..codec.keyring import Keyring
from ..dump.copytext import CopyStatementError, parse_copy_statement
from ..errors import ArchiveError, RestoreError, TenantBackupError
from ..source.pgbin import for_archive
from .replace_plan import Plan, Table, plan_replace
from .result import Report, RestoreResult, pg_message
from .script import CHUNK, DATA_COMMENT, ScriptReader
from .select import SourceCopy

log = logging.getLogger(__name__)

LOCK_TIMEOUT_ENV = "TENANT_BACKUP_RESTORE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = "10s"
LOCK_TIMEOUT_RE = re.compile(r"\d+\s*(ms|s|min|h)?\Z")


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


def replace_rows(
    conn,
    copy: SourceCopy,
    keyring: Keyring,
    result: RestoreResult,
    column: str,
    lock_timeout: str,
    dry_run: bool,
    report: Report,
) -> None:
    plan = plan_replace(conn, copy.manifest, copy.tenant_id, column, result)
    conn.rollback()
    for table in plan.order:
        outcome = result.tables[table.qualified]
        if table.oid in plan.registry:
            outcome.kind = "registry"
            outcome.action = "keep the target's row; insert the backup's if missing"
        else:
            outcome.action = "delete this tenant's rows, then load the backup's"
    for outcome in result.tables.values():
        if outcome.kind in ("shared", "excluded"):
            outcome.action = "untouched"

    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
            cur.execute("SET LOCAL row_security = off")  # a policy that still applies is an error, never a filter
            if dry_run:
                for table in plan.order:
                    if table.oid in plan.registry:
                        result.tables[table.qualified].deleted = 0
                        continue
                    cur.execute(
                        sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(table.ident, plan.predicates[table.oid])
                    )
                    result.tables[table.qualified].deleted = cur.fetchone()[0]
                conn.rollback()
                return

            t0 = time.monotonic()
            # All locks first: a busy table fails fast (lock_timeout) before any work is done.
            # ROW EXCLUSIVE is what DELETE/INSERT take anyway: other tenants keep writing.
            cur.execute(
                sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(sql.SQL(", ").join(t.ident for t in plan.order))
            )
            loaded = _load_temp_tables(cur, copy, keyring, plan)
            result.timings["load_s"] = time.monotonic() - t0

            t0 = time.monotonic()
            for table in reversed(plan.order):  # children first
                if table.oid in plan.registry:
                    result.tables[table.qualified].deleted = 0
                    continue
                cur.execute(sql.SQL("DELETE FROM {} t WHERE {}").format(table.ident, plan.predicates[table.oid]))
                result.tables[table.qualified].deleted = cur.rowcount
            result.timings["delete_s"] = time.monotonic() - t0

            t0 = time.monotonic()
            mismatches = []
            for table in plan.order:  # parents first
                outcome = result.tables[table.qualified]
                temp = loaded.get(table.qualified)
                if temp is None:
                    outcome.inserted = 0
                else:
                    temp_ident, columns, copied = temp
                    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                    stmt = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} s").format(
                        table.ident, cols, cols, temp_ident
                    )
                    if table.oid in plan.registry:
                        key = sql.Identifier(plan.registry[table.oid])
                        stmt += sql.SQL(" WHERE NOT EXISTS (SELECT 1 FROM {} r WHERE r.{} = s.{})").format(
                            table.ident, key, key
                        )
                    cur.execute(stmt)
                    outcome.inserted = cur.rowcount
                    if copied != outcome.manifest_rows:
                        mismatches.append(f"{table.qualified}: manifest {outcome.manifest_rows}, archive {copied}")
                if table.oid not in plan.registry and outcome.inserted != outcome.manifest_rows:
                    mismatches.append(f"{table.qualified}: manifest {outcome.manifest_rows}, loaded {outcome.inserted}")
            if mismatches:
                raise RestoreError("row counts differ from the manifest: " + "; ".join(sorted(set(mismatches))))
            result.timings["insert_s"] = time.monotonic() - t0

            t0 = time.monotonic()
            result.sequences = _advance_sequences(cur, plan.order)
            result.timings["sequences_s"] = time.monotonic() - t0
        conn.commit()
    except psycopg2.Error as exc:
        _rollback(conn)
        if isinstance(exc, psycopg2.errors.LockNotAvailable):
            raise RestoreError(
                f"--replace rolled back, nothing changed: a table is locked by another session "
                f"(lock timeout {lock_timeout}, {LOCK_TIMEOUT_ENV}): {pg_message(exc)}"
            ) from None
        raise RestoreError(f"--replace rolled back, nothing changed: {pg_message(exc)}") from None
    except BaseException as exc:
        _rollback(conn)
        if isinstance(exc, TenantBackupError):
            raise type(exc)(f"--replace rolled back, nothing changed: {exc}") from None
        raise


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
        cur.execute(sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(temp, table.ident))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        cur.copy_expert(
            sql.SQL("COPY {} ({}) FROM STDIN").format(temp, cols).as_string(cur.connection), block, size=CHUNK
        )
        loaded[qualified] = (temp, columns, cur.rowcount)
        current = None
