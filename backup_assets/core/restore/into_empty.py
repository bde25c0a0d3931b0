"""Restore into an empty database: refuse if a table already exists in one of the dump's schemas,
stream the archive (decrypted on the fly) into `pg_restore --single-transaction`
(archive.into_server.stream_into_pg_restore), then check the row counts against the manifest."""

from __future__ import annotations

import time

import psycopg2
from psycopg2 import sql

from ..archive.into_server import stream_into_pg_restore
from ..archive.manifest import Manifest
from ..codec.keyring import Keyring
from ..errors import RestoreError, RestoreRefused
from .result import Report, RestoreResult, pg_message
from .select import SourceCopy


def _dump_schemas(manifest: Manifest) -> set[str]:
    # "schema.table": either part may contain dots, so every split is a candidate schema.
    schemas = set()
    for table in manifest.tables or {}:
        pieces = table.split(".")
        for i in range(1, len(pieces)):
            schemas.add(".".join(pieces[:i]))
    return schemas


def into_empty(
    conn,
    copy: SourceCopy,
    keyring: Keyring,
    result: RestoreResult,
    target_dsn: str,
    keep_owners: bool,
    dry_run: bool,
    report: Report,
) -> None:
    schemas = sorted(_dump_schemas(copy.manifest))
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s) ORDER BY 1""",
            (schemas,),
        )
        existing = [row[0] for row in cur.fetchall()]
    conn.rollback()
    if existing:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise RestoreRefused(
            f"target {result.target} is not empty: {len(existing)} table(s) already in schema(s) "
            f"{', '.join(schemas)} ({shown}); restore into an empty database, or use --replace to "
            "replace this tenant's rows in a live database"
        )
    for outcome in result.tables.values():
        outcome.action = "create and load"
    if dry_run:
        return
    t0 = time.monotonic()
    restored, _sha, _size, failure = stream_into_pg_restore(
        copy.archive_path,
        keyring,
        copy.tenant_id,
        target_dsn,
        target_version=conn.server_version,
        dump_version=copy.manifest.pg_dump_version,
        keep_owners=keep_owners,
        synchronous_commit="on",
    )
    result.timings["restore_s"] = time.monotonic() - t0
    if not restored:
        raise RestoreError(f"restore into {result.target} failed, its single transaction rolled back: {failure}")
    t0 = time.monotonic()
    counts, note = _count_tables(conn, [t for t, o in result.tables.items() if o.kind != "excluded"])
    result.timings["check_s"] = time.monotonic() - t0
    if note:
        result.warnings.append(note)
        report(f"warning: {note}")
        return
    mismatches = []
    for table, outcome in result.tables.items():
        if outcome.kind == "excluded":
            continue
        outcome.inserted = counts.get(table)
        if outcome.inserted != outcome.manifest_rows:
            mismatches.append(f"{table}: manifest {outcome.manifest_rows}, restored {outcome.inserted}")
    if mismatches:
        raise RestoreError(
            f"restored into {result.target} but row counts differ from the manifest: " + "; ".join(mismatches)
        )


def _count_tables(conn, tables: list[str]) -> tuple[dict[str, int], str | None]:
    counts: dict[str, int] = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL row_security = off")  # a policy must not filter a count silently
            for table in tables:
                ident = _ident(table, cur)
                if ident is None:
                    continue  # missing after the restore: reported as a mismatch
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
                counts[table] = cur.fetchone()[0]
        conn.rollback()
    except psycopg2.Error as exc:
        conn.rollback()
        return counts, f"row counts not verified: {pg_message(exc)}"
    return counts, None


def _ident(table: str, cur) -> sql.Composable | None:
    """sql for a manifest name "schema.table", resolved against the catalog (names may hold dots);
    None when no such table exists."""
    cur.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname || '.' || c.relname = %s AND c.relkind IN ('r', 'p')""",
        (table,),
    )
    row = cur.fetchone()
    return None if row is None else sql.Identifier(*row)
