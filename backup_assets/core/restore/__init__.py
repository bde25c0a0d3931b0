"""Restore one tenant from a storage location: into an empty database, or in place (`replace`).

Modules: select (choosing a copy), into_empty, replace_plan (planning --replace), replace_load
(executing it), replace_sets (which rows go, the cross-tenant reference check), replace_proof (no
other tenant's row changed), script (reading pg_restore's script output), result (RestoreResult),
interrupt (a killed or interrupted restore lets go at once), workdir (the work folder), run
(restore_tenant). The pipe archive → pg_restore is core.archive.pipe.ArchivePipe.

Works from the locations alone (archive + manifest), never from Dagster's database.

    choose a copy   location "auto": the configured locations in their kinds' order (local first:
                    core/locations/registry.py restore_order); a copy that is
                    missing, fails its stored checksum (CorruptObject) or does not decrypt and
                    match its manifest (verify_archive, deep) is skipped and the next one tried
    empty target    refuse if a table already exists in one of the dump's schemas; stream the
                    archive (decrypted on the fly) into `pg_restore --single-transaction`
                    (archive.into_server.stream_into_pg_restore); check the row counts against the manifest
    replace         ONE transaction (REPEATABLE READ) with a lock timeout on a live database holding
                    other tenants: pg_restore --data-only -f - of the stream is parsed and every COPY
                    block of a tenant / rls_child table is loaded into a temporary table; this
                    tenant's rows are matched with the backup's by primary key (replace_plan,
                    replace_sets): rows that must go are deleted children first (FK graph of the
                    target), kept rows updated where they differ, the backup's other rows inserted
                    parents first; a row outside this tenant's that references a deleted row refuses
                    the restore before anything is written; the dump's SEQUENCE SET entries are
                    ignored (global values) and every sequence owned by a restored column moved
                    forward past max(column); before the commit, replace_proof proves that no row
                    outside this tenant's changed. Shared and excluded tables are never touched. Any
                    error rolls everything back.

Replace needs a role that writes under row-level security without being filtered (superuser,
BYPASSRLS, or the tables' owner without FORCE ROW LEVEL SECURITY): `COPY FROM` is refused under
RLS and a policy-filtered DELETE would silently miss rows. That is checked before anything runs,
and `row_security = off` makes any policy that would still apply an error instead of a filter.

Which rows are "this tenant's" in the target:
- tenant tables (manifest table_kinds "tenant"): `WHERE <tenant column> = <id>`;
- the registry (the table the tenant column references, with or without a tenant column of its
  own): the tenant's row is kept as it is in the target (its status may have changed since the
  backup) and inserted only when missing;
- other rls_child tables (no tenant column): rows whose foreign key points at a row of this tenant
  in a parent table (followed up through further rls_child parents). One without such a path is
  refused: there is no way to tell its tenant's rows.
"""

from __future__ import annotations

from .replace_load import DEFAULT_LOCK_TIMEOUT, LOCK_TIMEOUT_ENV
from .result import RestoreResult, TableOutcome
from .run import restore_tenant
from .select import SourceCopy, fetch_backup

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "LOCK_TIMEOUT_ENV",
    "RestoreResult",
    "SourceCopy",
    "TableOutcome",
    "fetch_backup",
    "restore_tenant",
]
