"""Export one tenant: pre-flight → pg_dump under RLS → zstd → AES-256-GCM → SHA-256 → file.

One pass, bounded memory: pg_dump's stdout is pulled in 1 MiB chunks, followed by the dump stream
reader (rows per table, core/dump/stream.py) and through the codec straight into a temporary file
that is renamed only once everything (pg_dump's exit, the isolation counts against the rows the
stream carried, the fsync) succeeded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

import psycopg2

from ..codec.format import encode_archive
from ..codec.keyring import Keyring
from ..dump.pgdump import PgDump, RowCounter, prove_dump, tenant_values
from ..dump.stream import DumpStreamReader
from ..errors import DumpFailed, SafetyCheckFailed, one_line
from ..files import atomic_output, check_output_path, local_write_error
from ..locations.memory import minted_here
from ..settings import SourceSettings
from ..source import pgbin
from ..source.preflight import EXCLUDED, RLS_CHILD, SHARED, TENANT, DumpPlan, inspect_source
from ..source.session import PgSession
from ..source.tenants import require_known_tenant
from .manifest import MANIFEST_VERSION, ArchiveInfo, Manifest, SourceInfo, TableKinds, new_backup_id

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, float], None]  # raw bytes dumped so far, seconds elapsed


@dataclass(frozen=True)
class ExportOptions:
    zstd_level: int = 1  # bench/export.py: faster than 3 and no larger on pg_dump output
    # zstd in the reading thread: on 2 cores shared with pg_dump and its backend, worker threads
    # cost more than they overlap (bench/export.py: 3.43 s vs 4.18 s for 354 MiB, median of 7).
    zstd_threads: int = 0
    force: bool = False  # export a tenant the registry does not return (e.g. SUSPENDED)
    # The caller read the registry for a batch and found the tenant listed: no second read per tenant
    # (None: read it here).
    listed: bool | None = None
    # Also compare every row's tenant value in the dump stream (the row counts are always held
    # against the snapshot's): docs/BENCHMARKS.md has its cost.
    check_rows: bool = False
    warn_shared: bool = True  # log the shared tables (the Dagster asset reports them in its own log)
    progress: ProgressFn | None = None
    progress_interval: float = 2.0


def export_tenant(
    settings: SourceSettings, keyring: Keyring, tenant_id: str, out_path: Path, options: ExportOptions = ExportOptions()
) -> Manifest:
    """Write the tenant's archive to out_path atomically and return its manifest, sealed
    (core/archive/manifest.py; `to_json()` is what a location stores and `export` prints)."""
    tenant_id = settings.tenant_ids.validate(tenant_id)
    out_path = check_output_path(Path(out_path))
    _ = keyring.active  # no key, no backup: fail before touching the database
    started = time.monotonic()
    listed = options.listed or require_known_tenant(settings, tenant_id, force=options.force)

    created = datetime.now(timezone.utc)
    backup_id = new_backup_id(created)
    minted_here(tenant_id, backup_id)  # its first put to each location need not list its folder
    # pg_dump and the counting connection are twins: same parameters, same options, nothing inherited.
    session = PgSession.from_dsn(
        settings.dsn, {settings.tenant_setting: tenant_id}, connect_timeout=settings.connect_timeout
    )
    with session.connect() as conn:
        # A pg_dump of this server's major or newer, or one line saying which to install: before any work.
        clients = pgbin.for_dump(conn.server_version)
        conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        with conn.cursor() as cur:
            # The setting must reach the session as passed (a pooler may drop startup options).
            cur.execute("SELECT current_setting(%s, true)", (settings.tenant_setting,))
            seen = cur.fetchone()[0]
            if seen != tenant_id:
                raise SafetyCheckFailed(
                    f"the setting {settings.tenant_setting} did not reach the session (got {seen!r});"
                    " connect directly to PostgreSQL, not through a pooler that drops startup options"
                )
        plan = inspect_source(conn, settings)
        for note in plan.notes:
            log.warning("%s", note)
        reader = DumpStreamReader(
            tenant_values(conn, plan, tenant_id) if options.check_rows else None, tenant_column=settings.tenant_column
        )
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
        preflight_s = time.monotonic() - started

        dump_started = time.monotonic()
        dump = PgDump(
            session, clients=clients, snapshot=snapshot, plan=plan, lock_wait_timeout=settings.lock_wait_timeout
        )
        counter = RowCounter(conn, plan, tenant_column=settings.tenant_column, tenant_id=tenant_id)
        counter.start()
        try:
            with atomic_output(out_path) as handle:
                header, stats = encode_archive(
                    _with_progress(_followed(dump.read, reader), options, dump_started),
                    handle,
                    tenant_id=tenant_id,
                    backup_id=backup_id,
                    created_at=_iso(created),
                    keyring=keyring,
                    zstd_level=options.zstd_level,
                    zstd_threads=options.zstd_threads,
                )
                dump.finish()
                counts = counter.result()
                # Inside atomic_output: a dump that is not what the proof counted is never renamed into place.
                contents = reader.finish()
                prove_dump(counts, contents, tenant_id)
        except BaseException as exc:
            dump.kill()
            cancelled = counter.is_alive()
            if cancelled:
                conn.cancel()  # stop a long count before the connection closes under it
            counter.join(timeout=10)
            # A count that failed on its own (not by our cancel) aborted the snapshot's transaction first:
            # its error is the cause. One we cancelled would hide pg_dump's own message.
            if isinstance(exc, DumpFailed) and isinstance(counter.error, psycopg2.Error) and not cancelled:
                raise DumpFailed(f"reading as tenant {tenant_id} failed: {one_line(counter.error)}") from None
            # Writing the archive failed (no space left on device, read-only, quota): one line naming
            # the file, LocalWriteError (exit code 8); atomic_output removed the partial file.
            disk = local_write_error(exc, out_path) if isinstance(exc, OSError) else None
            if disk is not None:
                raise disk from None
            raise
        conn.rollback()
    finished = time.monotonic()
    shared = shared_tables(plan, counts)
    if shared and options.warn_shared:
        warn, line = shared_line(shared, settings.shared_tables)
        (log.warning if warn else log.info)("tenant %s: %s", tenant_id, line)

    manifest = Manifest(
        manifest_version=MANIFEST_VERSION,
        tenant_id=tenant_id,
        backup_id=backup_id,
        created_at=_iso(created),
        registry_listed=listed,
        archive=ArchiveInfo(
            file=out_path.name,
            size=stats.archive_bytes,
            sha256=stats.sha256,
            key_id=header.key_id,
            codec=header.codec,
            zstd_level=options.zstd_level,
            cipher=header.cipher,
            segment_size=header.segment_size,
        ),
        raw_size=stats.raw_bytes,
        compressed_size=stats.compressed_bytes,
        compression_ratio=round(stats.raw_bytes / stats.compressed_bytes, 3) if stats.compressed_bytes else None,
        tables=counts,
        # How the rows were proven to be this tenant's (docs/ISOLATION.md).
        isolation={
            "dump_rows_counted": sum(contents.rows().values()),  # each equal to the snapshot's, per table
            "tenant_values_checked": sum(t.checked for t in contents.tables.values()),
        },
        table_kinds=TableKinds(
            **{kind: [t.qualified for t in plan.of_kind(kind)] for kind in (TENANT, RLS_CHILD, SHARED, EXCLUDED)}
        ),
        source=_source_info(settings, plan),
        pg_dump_version=f"pg_dump (PostgreSQL) {clients.version}",
        notes=list(plan.notes),
        timings={
            "preflight_s": round(preflight_s, 3),
            "dump_s": round(finished - dump_started, 3),
            "total_s": round(finished - started, 3),
        },
        nulls=frozenset({"compression_ratio"}),  # null when nothing was compressed: written as null
    )
    log.info(
        "tenant %s exported: %d raw bytes -> %d archive bytes in %.2fs",
        tenant_id,
        stats.raw_bytes,
        stats.archive_bytes,
        finished - started,
    )
    return manifest.validate().with_seal(keyring)  # sealed: docs/MANIFEST.md, "The seal"


def shared_tables(plan: DumpPlan, counts: dict[str, int]) -> dict[str, int]:
    """Tables dumped whole (no tenant column, no RLS) → their row counts."""
    return {t.qualified: counts.get(t.qualified, 0) for t in plan.of_kind(SHARED)}


def shared_line(shared: Mapping[str, int], declared: Iterable[str], archives: int = 1) -> tuple[bool, str]:
    """(whether it is a warning, the one line) saying which tables went whole, with every tenant's rows,
    into `archives` archives: said once (per export, per run, per batch with the count), a warning for a
    table nobody declared shared (TENANT_BACKUP_SHARED_TABLES), information for declared ones."""
    declared = set(declared)
    undeclared = sorted(t for t in shared if t not in declared)
    into = "the archive" if archives == 1 else f"{archives} archives"
    tables = ", ".join(f"{name} ({rows} rows)" for name, rows in sorted(shared.items()))
    if not undeclared:
        return False, f"shared tables, declared in TENANT_BACKUP_SHARED_TABLES, went whole into {into}: {tables}"
    return True, (
        f"shared tables (no tenant column, no row-level security) went WHOLE into {into}: {tables};"
        f" not declared in TENANT_BACKUP_SHARED_TABLES: {', '.join(undeclared)}; if one holds people or other"
        " tenants' data, give it a policy (docs/ISOLATION.md#shared-tables)"
    )


def _followed(read: Callable[[int], bytes], reader: DumpStreamReader) -> Callable[[int], bytes]:
    def follow(size: int) -> bytes:
        chunk = read(size)
        reader.feed(chunk)
        return chunk

    return follow


def _source_info(settings: SourceSettings, plan: DumpPlan) -> SourceInfo:
    return SourceInfo(
        database=plan.database,
        server_version=plan.server_version,
        role=plan.role,
        tenant_column=settings.tenant_column,
        tenant_setting=settings.tenant_setting,
    )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _with_progress(read: Callable[[int], bytes], options: ExportOptions, started: float) -> Callable[[int], bytes]:
    if options.progress is None:
        return read
    total = 0
    next_report = started + options.progress_interval

    def reader(size: int) -> bytes:
        nonlocal total, next_report
        chunk = read(size)
        total += len(chunk)
        now = time.monotonic()
        if now >= next_report or not chunk:
            options.progress(total, now - started)
            next_report = now + options.progress_interval
        return chunk

    return reader
