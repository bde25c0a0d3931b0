"""Restore drill: restore one archive into a throw-away database and prove it is the tenant's data.

    CREATE DATABASE tb_drill_<utc>_<hex> TEMPLATE template0   (on the scratch server)
    archive ─decode_archive (streamed)─▶ pg_restore --single-transaction ... -d scratch   (stdin pipe)
    count(*) per table == manifest.tables                       (counts_match)
    no row whose tenant column is not the tenant                (isolated)
    DROP DATABASE ... WITH (FORCE)                              (always, unless keep=True)

pg_restore (chosen for the scratch server's major: core/archive/into_server.py) restores a custom-format archive from a pipe (checked with pg_restore 18; our archives
are written by pg_dump to a pipe, so they carry no data offsets and pg_restore reads them in order
anyway). No temporary file: the decrypted dump never touches the disk. Every byte pg_restore sees
has been authenticated; if a later segment fails, pg_restore is killed and its single transaction
never commits.

The restoring role needs CREATEDB on the scratch server (superuser is not needed): the restore runs
with --no-owner --no-acl (the source's roles need not exist there), so the scratch role owns every
restored table. Its owner-bypass of RLS is what lets the checks see every row; tables restored with
FORCE ROW LEVEL SECURITY are switched to NO FORCE first, and the checks run with row_security=off,
so a policy can never silently filter a count (it would be an error instead).

Never raises for a drill FAILURE (bad archive, failed restore, wrong counts, foreign rows): those
give DrillResult(ok=False). Raises for usage and environment errors: missing archive file or
malformed manifest (ArchiveError), scratch server unreachable (DatabaseUnreachable), scratch
database cannot be created (ScratchDatabaseError).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from ..archive.into_server import stream_into_pg_restore
from ..archive.manifest import DEFAULT_TENANT_COLUMN, DrillRecord, Manifest
from ..archive.pipe import STDERR_LIMIT
from ..codec.keyring import Keyring
from ..errors import ArchiveError, one_line
from ..source.pgbin import major_of
from ..source.session import connect
from .scratch import ScratchPool
from .scratch_db import (  # noqa: F401 - SCRATCH_PREFIX, scratch_database_name, drop_stale_...: re-exported
    SCRATCH_PREFIX,
    create_scratch_database,
    drop_scratch_database,
    drop_stale_scratch_databases,
    scratch_database_name,
)

log = logging.getLogger(__name__)

SCRATCH_DSN_ENV = "TENANT_BACKUP_SCRATCH_DSN"


@dataclass
class DrillResult:
    ok: bool
    counts_match: bool
    isolated: bool
    mismatches: dict[str, tuple[int, int | None]]  # table -> (manifest rows, restored rows; None: table missing)
    foreign_rows: dict[str, int]  # table -> rows whose tenant column is not the tenant
    restored_tables: int  # ordinary tables in the scratch database after the restore
    duration_s: float
    message: str  # one line: "ok: ..." or every failure, "; "-separated
    scratch_database: str = ""
    dropped: bool = False  # False with keep=True, or when the DROP failed (named in the message)
    checksum_ok: bool | None = None  # SHA-256 and size of the file as read, vs the manifest
    sha256: str | None = None  # SHA-256 of the bytes restored: what the drill proved
    tenant_column: str = DEFAULT_TENANT_COLUMN
    timings: dict[str, float] = field(default_factory=dict)  # create_s, restore_s, check_s, drop_s
    restore_failed: bool = False  # pg_restore itself failed on good bytes (not the archive's fault?)
    server_major: int | None = None  # the scratch server's PostgreSQL major: what the drill proved
    source_major: int | None = None  # the source's, from the manifest

    @property
    def matches_source(self) -> bool | None:
        """Whether the drill proved a restore into the source's own major (None: source unknown)."""
        if self.source_major is None or self.server_major is None:
            return None
        return self.server_major == self.source_major

    def major_note(self) -> str:
        """'' when the drill ran on the source's major; otherwise what it did prove, and how to fix it."""
        if self.matches_source is not False:
            return ""
        return (
            f"proved on a PostgreSQL {self.server_major} scratch server, not the source's {self.source_major}:"
            f" give the drill a {self.source_major} server (TENANT_BACKUP_SCRATCH_DSN or"
            " TENANT_BACKUP_SCRATCH_PG_BIN; docs/COMPATIBILITY.md)"
        )

    def drill_record(self) -> DrillRecord:
        """What the manifest records of the drill (Manifest.drill): with the SHA-256 of the bytes it
        restored, so that a copy's check knows which bytes the drill proved (Manifest.drill_proved)."""
        return DrillRecord(
            server_major=self.server_major,
            source_major=self.source_major,
            matches_source=self.matches_source,
            ok=self.ok,
            sha256=self.sha256 if self.checksum_ok else None,
        )

    def as_metadata(self) -> dict:
        """Flat JSON-able dict (for Dagster check metadata, logs, the CLI)."""
        return {
            "ok": self.ok,
            "counts_match": self.counts_match,
            "isolated": self.isolated,
            "mismatches": {k: list(v) for k, v in self.mismatches.items()},
            "foreign_rows": dict(self.foreign_rows),
            "restored_tables": self.restored_tables,
            "checksum_ok": self.checksum_ok,
            "scratch_database": self.scratch_database,
            "dropped": self.dropped,
            "message": self.message,
            "drill_server_major": self.server_major,
            "source_major": self.source_major,
            "drill_matches_source": self.matches_source,
            "duration_s": round(self.duration_s, 3),
            **{k: round(v, 3) for k, v in self.timings.items()},
        }


def restore_drill(
    archive_path: Path,
    manifest: Manifest,
    keyring: Keyring,
    scratch: "str | ScratchPool",
    *,
    tenant_column: str | None = None,
    keep: bool = False,
    strategy: str | None = "WAL_LOG",
    connect_timeout: int = 10,
) -> DrillResult:
    """Restore `archive_path` into a scratch database and check it against `manifest`.

    scratch: the admin DSN of the scratch server (a database is created for the drill and dropped
    after it), or a ScratchPool (core/checks/scratch.py: one database reused, emptied after each drill and
    proven empty before the next; a failed restore in a reused database is tried once more in a
    fresh one, so reuse can never fail a drill).
    tenant_column: the column whose value must be the tenant id in every restored table that has
    it; default: the manifest's source.tenant_column (what the export used), else "tenant_id".
    strategy: CREATE DATABASE ... STRATEGY (PostgreSQL 15+; ignored before). WAL_LOG (the default)
    avoids the two checkpoints FILE_COPY forces, which is what costs on a busy server.
    """
    started = time.monotonic()
    archive_path = Path(archive_path)
    want_sha, want_size = manifest.checksum()
    tenant_id, tables = manifest.tenant_id, manifest.tables
    if not tenant_id:
        raise ArchiveError("manifest lacks tenant_id")
    if tables is None:
        raise ArchiveError("manifest lacks tables (the per-table row counts)")
    if not archive_path.is_file():
        raise ArchiveError(f"archive {archive_path} does not exist")
    if tenant_column is None:
        tenant_column = manifest.tenant_column
    if strategy is not None and strategy.upper() not in ("WAL_LOG", "FILE_COPY"):
        raise ValueError(f"strategy must be WAL_LOG or FILE_COPY, not {strategy!r}")
    args = (archive_path, manifest, keyring, tenant_id, tables, tenant_column, want_sha, want_size, connect_timeout)

    if not isinstance(scratch, str):  # a pool
        with scratch.lease() as (name, fresh):
            result, failures = _drill_in(scratch.admin_dsn, name, scratch.server_version(), *args)
            result.timings["reused"] = float(not fresh)
        if not fresh and result.restore_failed:
            log.warning(
                "restore drill in reused scratch database %s failed (%s): once more in a fresh one",
                name,
                "; ".join(failures),
            )
            scratch.discard()
            with scratch.lease() as (name, _fresh):
                result, failures = _drill_in(scratch.admin_dsn, name, scratch.server_version(), *args)
        result.dropped = True  # emptied: nothing of the tenant stays
        return _finish(result, failures, started, tables, tenant_column, archive_path, tenant_id, keep=False)

    with connect(scratch, timeout=connect_timeout, application_name="tenant-backup-drill") as admin:
        admin.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
        t0 = time.monotonic()
        name = create_scratch_database(admin, strategy)
        created_s = time.monotonic() - t0
        drop_failure = None
        try:
            result, failures = _drill_in(scratch, name, admin.server_version, *args)
        finally:
            if keep:
                log.info("restore drill: scratch database %s kept", name)
            else:
                t0 = time.monotonic()
                try:
                    drop_scratch_database(admin, name)
                    dropped = True
                except psycopg2.Error as exc:
                    dropped = False
                    drop_failure = f"scratch database {name} could NOT be dropped: {one_line(exc, STDERR_LIMIT)}"
                    log.error("restore drill: dropping %s failed: %s", name, exc)
                drop_s = time.monotonic() - t0
    result.timings.update({"create_s": created_s, **({} if keep else {"drop_s": drop_s})})
    result.dropped = not keep and dropped
    result = _finish(result, failures, started, tables, tenant_column, archive_path, tenant_id, keep=keep)
    if drop_failure:  # reported, but says nothing about the archive: it does not fail the drill
        result.message += "; " + drop_failure
    return result


def _drill_in(
    admin_dsn: str,
    name: str,
    server_version: int,
    archive_path,
    manifest,
    keyring,
    tenant_id,
    tables,
    tenant_column,
    want_sha,
    want_size,
    connect_timeout,
) -> tuple[DrillResult, list[str]]:
    """Restore and check in the (empty) database `name`."""
    result = DrillResult(
        ok=False,
        counts_match=False,
        isolated=False,
        mismatches={},
        foreign_rows={},
        restored_tables=0,
        duration_s=0.0,
        message="",
        scratch_database=name,
        tenant_column=tenant_column,
        timings={},
        server_major=major_of(server_version),
        source_major=major_of(manifest.server_version),
    )
    failures: list[str] = []
    scratch_dsn = psycopg2.extensions.make_dsn(admin_dsn, dbname=name)
    t0 = time.monotonic()
    restored, sha, size, restore_failure = stream_into_pg_restore(
        archive_path,
        keyring,
        tenant_id,
        scratch_dsn,
        target_version=server_version,
        dump_version=manifest.pg_dump_version,
    )
    result.timings["restore_s"] = time.monotonic() - t0
    result.checksum_ok = sha == want_sha and size == want_size
    result.sha256 = sha
    if not result.checksum_ok:
        failures.append(
            f"checksum mismatch: SHA-256 {sha} ({size} bytes), manifest says {want_sha} ({want_size} bytes)"
        )
    if restore_failure:
        failures.append(restore_failure)
        result.restore_failed = result.checksum_ok and restore_failure.startswith("pg_restore failed")
    if restored:
        t0 = time.monotonic()
        try:
            _check(result, failures, scratch_dsn, manifest, tables, tenant_id, tenant_column, connect_timeout)
        except psycopg2.Error as exc:
            failures.append(f"checking the restored database failed: {one_line(exc, STDERR_LIMIT)}")
        result.timings["check_s"] = time.monotonic() - t0
    return result, failures


def _finish(
    result: DrillResult,
    failures: list[str],
    started: float,
    tables: dict,
    tenant_column: str,
    archive_path,
    tenant_id: str,
    *,
    keep: bool,
) -> DrillResult:
    result.ok = not failures and result.counts_match and result.isolated and bool(result.checksum_ok)
    result.duration_s = time.monotonic() - started
    name = result.scratch_database
    if result.ok:
        result.message = (
            f"ok: restored {result.restored_tables} tables into {name}"
            f" on PostgreSQL {result.server_major}{' (kept)' if keep else ''};"
            f" row counts of {len(tables)} tables match the manifest;"
            f" no row of another tenant in column {tenant_column}"
        )
        if result.major_note():
            result.message += "; " + result.major_note()
    else:
        result.message = "; ".join(failures) or "restore drill failed"
    log.info("restore drill of %s (tenant %s): %s (%.3fs)", archive_path, tenant_id, result.message, result.duration_s)
    return result


# ------------------------------------------------------------------------------------- steps


_TABLES_SQL = """
SELECT n.nspname, c.relname, c.relforcerowsecurity,
       EXISTS (SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
 ORDER BY 1, 2
"""


def _check(
    result: DrillResult,
    failures: list[str],
    scratch_dsn: str,
    manifest: Manifest,
    tables: dict,
    tenant_id: str,
    tenant_column: str,
    timeout: int,
) -> None:
    with connect(scratch_dsn, timeout=timeout, application_name="tenant-backup-drill") as conn:
        with conn.cursor() as cur:
            # An error, never a silently filtered count, should a policy still apply.
            cur.execute("SET LOCAL row_security = off")
            cur.execute(_TABLES_SQL, (tenant_column,))
            restored = cur.fetchall()
            for schema, name, forced, _ in restored:
                if forced:  # owner-bypass needs NO FORCE; this is our own scratch copy
                    cur.execute(
                        sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(sql.Identifier(schema, name))
                    )
            result.restored_tables = len(restored)

            parts = []
            params: list = []
            for schema, name, _, has_col in restored:
                ident = sql.Identifier(schema, name)
                if has_col:
                    parts.append(
                        sql.SQL(
                            "SELECT %s, count(*), count(*) FILTER (WHERE {}::text IS DISTINCT FROM %s) FROM {}"
                        ).format(sql.Identifier(tenant_column), ident)
                    )
                    params += [f"{schema}.{name}", tenant_id]
                else:
                    parts.append(sql.SQL("SELECT %s, count(*), NULL::bigint FROM {}").format(ident))
                    params.append(f"{schema}.{name}")
            counted: dict[str, tuple[int, int | None]] = {}
            if parts:
                cur.execute(sql.SQL(" UNION ALL ").join(parts), params)
                counted = {row[0]: (int(row[1]), row[2]) for row in cur.fetchall()}
        conn.rollback()

    for table, expected in sorted(tables.items()):
        actual = counted.get(table, (None, None))[0]
        if actual != expected:
            result.mismatches[table] = (expected, actual)
    result.counts_match = not result.mismatches
    if result.mismatches:
        detail = ", ".join(
            f"{t}: manifest {e}, restored {'missing' if a is None else a}" for t, (e, a) in result.mismatches.items()
        )
        failures.append(f"row counts differ from the manifest in {len(result.mismatches)} table(s): {detail}")

    result.foreign_rows = {t: int(f) for t, (_, f) in sorted(counted.items()) if f}
    with_column = {t for t, (_, f) in counted.items() if f is not None}
    # Fail closed when the check would be vacuous: every table the export called a tenant table must
    # carry the column here (a wrong tenant_column would otherwise check nothing at all).
    declared = set(manifest.kinds.of("tenant"))
    unchecked = sorted(declared - with_column)
    result.isolated = not result.foreign_rows and not unchecked and bool(with_column)
    if result.foreign_rows:
        detail = ", ".join(f"{t}: {n} rows" for t, n in result.foreign_rows.items())
        failures.append(f"isolation failed: rows whose {tenant_column} is not {tenant_id} in {detail}")
    if unchecked:
        failures.append(
            f"isolation not proven: tenant table(s) without column {tenant_column} after the restore: "
            + ", ".join(unchecked)
        )
    elif not with_column:
        failures.append(f"isolation not proven: no restored table has the column {tenant_column}")
