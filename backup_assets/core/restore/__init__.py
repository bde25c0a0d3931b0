"""Restore one tenant from a storage location: into an empty database, or in place (`replace`).

Works from the locations alone (archive + manifest), never from Dagster's database.

    choose a copy   location "auto": local, then r2, then b2 (those configured); a copy that is
                    missing, fails its stored checksum (CorruptObject) or does not decrypt and
                    match its manifest (verify_archive, deep) is skipped and the next one tried
    empty target    refuse if a table already exists in one of the dump's schemas; stream the
                    archive (decrypted on the fly) into `pg_restore --single-transaction`
                    (drill.stream_into_pg_restore); check the row counts against the manifest
    replace         ONE transaction with a lock timeout on a live database holding other tenants:
                    pg_restore --data-only -f - of the stream is parsed and every COPY block of a
                    tenant / rls_child table is loaded into a temporary table; then this tenant's
                    rows are deleted children first (FK graph of the target), the temporary rows
                    inserted parents first, the dump's SEQUENCE SET entries ignored (global values),
                    and every sequence owned by a restored column moved forward past max(column).
                    Shared and excluded tables are never touched. Any error rolls everything back.

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

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from ..codec.format import decode_archive
from ..checks.drill import stream_into_pg_restore
from ..errors import (ArchiveError, ConfigError, NotFound, RestoreError, RestoreRefused, StorageError,
                     TenantBackupError)
from ..codec.keyring import Keyring
from ..source.session import child_env, connect, describe
from ..source.pgbin import pg_program
from ..locations.base import Location, validate_backup_id
from ..source.tenant_ids import validate_tenant_id
from ..checks.verify import _PipeSink, verify_archive

log = logging.getLogger(__name__)

LOCK_TIMEOUT_ENV = "TENANT_BACKUP_RESTORE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = "10s"
AUTO_ORDER = ("local", "r2", "b2")
_LOCK_TIMEOUT_RE = re.compile(r"\d+\s*(ms|s|min|h)?\Z")
_CHUNK = 1 << 20
_STDERR_LIMIT = 2000

Report = Callable[[str], None]


def lock_timeout_from_env(environ: Mapping[str, str] | None = None) -> str:
    """TENANT_BACKUP_RESTORE_LOCK_TIMEOUT: a PostgreSQL duration (`10s`, `500ms`, `2min`; a bare
    number is milliseconds, as in PostgreSQL). Default 10s."""
    env = os.environ if environ is None else environ
    value = (env.get(LOCK_TIMEOUT_ENV) or "").strip() or DEFAULT_LOCK_TIMEOUT
    if not _LOCK_TIMEOUT_RE.match(value):
        raise ConfigError(f"{LOCK_TIMEOUT_ENV}={value!r} is not a duration such as 10s, 500ms or 2min")
    return value


# ------------------------------------------------------------------------------ choosing a copy


@dataclass
class SourceCopy:
    location: str
    tenant_id: str
    backup_id: str
    uri: str
    manifest: dict
    archive_path: Path  # downloaded and verified
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (location, why) tried before it


def _pick_backup_id(loc: Location, tenant_id: str, backup: str | None) -> str:
    if backup in (None, "", "latest"):
        refs = loc.list(tenant_id)  # complete backups only (manifest present)
        if not refs:
            raise NotFound(f"no backup of tenant {tenant_id} in location {loc.name}")
        return max(ref.backup_id for ref in refs)  # backup ids start with their UTC time: they sort
    return validate_backup_id(backup)


def _check_manifest(manifest: dict, tenant_id: str, backup_id: str, where: str) -> None:
    if manifest.get("tenant_id") != tenant_id or manifest.get("backup_id") != backup_id:
        raise ArchiveError(f"{where}: manifest names tenant {manifest.get('tenant_id')!r} backup "
                           f"{manifest.get('backup_id')!r}, expected {tenant_id} {backup_id}")
    if not isinstance(manifest.get("tables"), dict) or not isinstance(manifest.get("table_kinds"), dict):
        raise ArchiveError(f"{where}: manifest lacks tables/table_kinds (not a tenant-backup manifest?)")


def fetch_backup(locations: Mapping[str, Location], tenant_id: str, location: str, backup: str | None,
                 keyring: Keyring, work_dir: Path, report: Report = log.info) -> SourceCopy:
    """Download and verify one copy of a backup into work_dir; see the module docstring for "auto".

    A named location that fails raises its error (NotFound, CorruptObject, ArchiveError, ...);
    "auto" raises NotFound naming every location tried and why it was skipped."""
    if location == "auto":
        names = [n for n in AUTO_ORDER if n in locations]
        if not names:
            raise ConfigError("no storage location configured (TENANT_BACKUP_LOCATIONS)")
    else:
        if location not in locations:
            raise ConfigError(f"storage location {location!r} is not configured "
                              f"(configured: {', '.join(locations) or 'none'})")
        names = [location]
    skipped: list[tuple[str, str]] = []
    for name in names:
        loc = locations[name]
        dest = work_dir / f"{name}.tbk"
        try:
            backup_id = _pick_backup_id(loc, tenant_id, backup)
            manifest = loc.get_manifest(tenant_id, backup_id)
            uri = loc.uri(tenant_id, backup_id)
            _check_manifest(manifest, tenant_id, backup_id, uri)
            loc.get(tenant_id, backup_id, dest)  # re-hashed: CorruptObject if the stored bytes changed
            # The stored checksum proves the bytes are the ones uploaded; this proves they decrypt
            # with our keyring and are the manifest's archive (a copy can be consistent but wrong).
            check = verify_archive(dest, manifest, keyring, deep=True)
            if not check.ok:
                raise ArchiveError(f"{uri}: {check.message}")
        except (StorageError, ArchiveError) as exc:
            dest.unlink(missing_ok=True)
            if location != "auto":
                raise
            reason = " ".join(str(exc).split())
            skipped.append((name, reason))
            report(f"skipping location {name}: {reason}")
            continue
        return SourceCopy(name, tenant_id, backup_id, uri, manifest, dest, skipped)
    raise NotFound(f"no usable copy of tenant {tenant_id}'s backup {backup or 'latest'} in "
                   + "; ".join(f"{n}: {why}" for n, why in skipped))


# ------------------------------------------------------------------------------------ results


@dataclass
class TableOutcome:
    kind: str  # tenant, rls_child, registry, shared, excluded
    manifest_rows: int
    deleted: int | None = None  # replace: rows of this tenant deleted (dry-run: that would be)
    inserted: int | None = None  # rows loaded (empty: restored count)
    action: str = ""  # what replace does with the table


@dataclass
class RestoreResult:
    tenant_id: str
    mode: str  # "empty" or "replace"
    dry_run: bool
    location: str
    backup_id: str
    uri: str
    target: str  # describe(target_dsn): never the password
    tables: dict[str, TableOutcome]
    skipped: list[tuple[str, str]]
    sequences: list[tuple[str, int, int]] = field(default_factory=list)  # (sequence, before, after) moved
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "tenant_id": self.tenant_id, "mode": self.mode, "dry_run": self.dry_run,
            "location": self.location, "backup_id": self.backup_id, "uri": self.uri, "target": self.target,
            "tables": {t: vars(o) for t, o in self.tables.items()},
            "skipped": [list(s) for s in self.skipped],
            "sequences": [list(s) for s in self.sequences],
            "warnings": list(self.warnings),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


# ----------------------------------------------------------------------------------- the entry


def restore_tenant(tenant_id: str, *, locations: Mapping[str, Location], location: str, target_dsn: str,
                   keyring: Keyring, backup: str | None = "latest", replace: bool = False,
                   dry_run: bool = False, lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
                   keep_owners: bool = False, work_dir: Path | None = None, connect_timeout: int = 10,
                   tenant_id_pattern: str | None = None, report: Report = log.info) -> RestoreResult:
    """Restore `tenant_id` from `location` ("auto" or a name) into `target_dsn`; see the module docstring.

    Raises TenantBackupError subclasses: RestoreRefused before anything is written, RestoreError
    when a restore failed (replace: rolled back entirely), storage / archive errors when no copy
    could be used."""
    tenant_id = validate_tenant_id(tenant_id, tenant_id_pattern)
    if not _LOCK_TIMEOUT_RE.match(lock_timeout or ""):
        raise ConfigError(f"lock timeout {lock_timeout!r} is not a duration such as 10s, 500ms or 2min")
    target = describe(target_dsn)
    started = time.monotonic()
    timings: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="tenant-restore-", dir=str(work_dir) if work_dir else None))
    os.chmod(work, 0o700)
    try:
        t0 = time.monotonic()
        copy = fetch_backup(locations, tenant_id, location, backup, keyring, work, report)
        timings["fetch_s"] = time.monotonic() - t0
        report(f"using location {copy.location}: backup {copy.backup_id} of tenant {tenant_id} ({copy.uri})")
        manifest = copy.manifest
        result = RestoreResult(tenant_id, "replace" if replace else "empty", dry_run, copy.location,
                               copy.backup_id, copy.uri, target, {}, copy.skipped, timings=timings)
        kinds = _kinds(manifest)
        for table, rows in sorted(manifest["tables"].items()):
            result.tables[table] = TableOutcome(kinds.get(table, "shared"), int(rows))
        column = (manifest.get("source") or {}).get("tenant_column") or "tenant_id"
        with connect(target_dsn, timeout=connect_timeout, application_name="tenant-backup-restore") as conn:
            if replace:
                _replace(conn, copy, keyring, result, column, lock_timeout, dry_run, report)
            else:
                _into_empty(conn, copy, keyring, result, target_dsn, keep_owners, dry_run, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total_s"] = time.monotonic() - started
    return result


def _kinds(manifest: dict) -> dict[str, str]:
    out = {}
    for kind, tables in (manifest.get("table_kinds") or {}).items():
        for table in tables or []:
            out[table] = kind
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:_STDERR_LIMIT]


def _pg_message(exc: psycopg2.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag else None
    detail = getattr(diag, "message_detail", None) if diag else None
    text = primary or str(exc)
    return _one_line(text + (f" ({detail})" if detail else ""))


# --------------------------------------------------------------------------- into an empty DB


def _dump_schemas(manifest: dict) -> set[str]:
    # "schema.table": either part may contain dots, so every split is a candidate schema.
    schemas = set()
    for table in manifest.get("tables") or {}:
        pieces = table.split(".")
        for i in range(1, len(pieces)):
            schemas.add(".".join(pieces[:i]))
    return schemas


def _into_empty(conn, copy: SourceCopy, keyring: Keyring, result: RestoreResult, target_dsn: str,
                keep_owners: bool, dry_run: bool, report: Report) -> None:
    schemas = sorted(_dump_schemas(copy.manifest))
    with conn.cursor() as cur:
        cur.execute("""
            SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s) ORDER BY 1""", (schemas,))
        existing = [row[0] for row in cur.fetchall()]
    conn.rollback()
    if existing:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise RestoreRefused(
            f"target {result.target} is not empty: {len(existing)} table(s) already in schema(s) "
            f"{', '.join(schemas)} ({shown}); restore into an empty database, or use --replace to "
            "replace this tenant's rows in a live database")
    for outcome in result.tables.values():
        outcome.action = "create and load"
    if dry_run:
        return
    t0 = time.monotonic()
    restored, _sha, _size, failure = stream_into_pg_restore(copy.archive_path, keyring, copy.tenant_id, target_dsn,
                                                            keep_owners=keep_owners, synchronous_commit="on")
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
        raise RestoreError(f"restored into {result.target} but row counts differ from the manifest: "
                           + "; ".join(mismatches))


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
        return counts, f"row counts not verified: {_pg_message(exc)}"
    return counts, None


def _ident(table: str, cur) -> sql.Composable | None:
    """sql for a manifest name "schema.table", resolved against the catalog (names may hold dots);
    None when no such table exists."""
    cur.execute("""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname || '.' || c.relname = %s AND c.relkind IN ('r', 'p')""", (table,))
    row = cur.fetchone()
    return None if row is None else sql.Identifier(*row)


# ------------------------------------------------------------------------------------ replace


@dataclass
class _Table:
    oid: int
    schema: str
    name: str
    rls: bool
    force: bool
    owner: bool  # current user has the owner's privileges (owner-bypass of RLS)
    can_select: bool
    can_insert: bool
    can_delete: bool
    tenant_type: str | None  # format_type of the tenant column, None without it

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass
class _FKey:
    child: int
    parent: int
    child_cols: list[str]
    parent_cols: list[str]
    on_delete: str  # a no action, r restrict, c cascade, n set null, d set default


_CATALOG_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_has_role(current_user, c.relowner, 'USAGE'),
       has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),
       has_table_privilege(c.oid, 'DELETE'),
       format_type(a.atttypid, a.atttypmod)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
"""

_FKEYS_SQL = """
SELECT con.conrelid, con.confrelid,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, i)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(num, i)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.i),
       con.confdeltype
  FROM pg_constraint con WHERE con.contype = 'f'
"""

_OWNED_SEQUENCES_SQL = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(s.relname), a.attname
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = %s AND d.deptype IN ('a', 'i')
 ORDER BY 1
"""


@dataclass
class _Plan:
    order: list[_Table]  # touched tables, parents first
    registry: dict[int, str]  # oid -> key column, of registry tables (insert-if-missing, never delete)
    predicates: dict[int, sql.Composable]  # oid -> WHERE condition on alias "t" selecting this tenant's rows
    by_name: dict[str, _Table]


def _plan_replace(conn, manifest: dict, tenant_id: str, column: str, result: RestoreResult) -> _Plan:
    """Read the target's catalog and decide, before anything is written, how each table is replaced.
    Raises RestoreRefused naming every problem."""
    kinds = _kinds(manifest)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        role, is_super, bypass = cur.fetchone()
        cur.execute(_CATALOG_SQL, (column,))
        tables = {row[0]: _Table(*row) for row in cur.fetchall()}
        cur.execute(_FKEYS_SQL)
        fkeys = [_FKey(*row) for row in cur.fetchall()]
    by_name = {t.qualified: t for t in tables.values()}
    problems: list[str] = []

    wanted = [name for name, kind in sorted(kinds.items()) if kind in ("tenant", "rls_child")]
    missing = [name for name in wanted if name not in by_name]
    if missing:
        problems.append(f"table(s) of the backup missing in the target: {', '.join(missing)}")
    touched = {by_name[name].oid: by_name[name] for name in wanted if name in by_name}

    filtered = [t.qualified for t in touched.values() if t.rls and not (is_super or bypass or (t.owner and not t.force))]
    if filtered:
        problems.append(
            f"role {role} would write under row-level security on {', '.join(sorted(filtered))}: --replace needs "
            "a superuser, a BYPASSRLS role, or the tables' owner without FORCE ROW LEVEL SECURITY "
            "(COPY FROM is refused under RLS and policies would filter the delete)")
    no_priv = [t.qualified for t in touched.values() if not (t.can_select and t.can_insert and t.can_delete)]
    if no_priv:
        problems.append(f"role {role} lacks SELECT/INSERT/DELETE on {', '.join(sorted(no_priv))}")

    # The registry: the table the tenant column of the tenant tables references.
    registry: dict[int, str] = {}
    for fk in fkeys:
        child = touched.get(fk.child)
        parent = touched.get(fk.parent)
        if (child and parent and child.tenant_type and fk.child_cols == [column] and len(fk.parent_cols) == 1
                and kinds.get(parent.qualified) in ("rls_child", "tenant")):
            registry[parent.oid] = fk.parent_cols[0]

    literal = sql.Literal(tenant_id)
    predicates: dict[int, sql.Composable] = {}

    def predicate(oid: int, alias: str, seen: frozenset) -> sql.Composable | None:
        table = touched[oid]
        a = sql.Identifier(alias)
        if table.tenant_type and kinds.get(table.qualified) == "tenant":
            return sql.SQL("{}.{} = {}::{}").format(a, sql.Identifier(column), literal, sql.SQL(table.tenant_type))
        if oid in registry:
            return sql.SQL("{}.{}::text = {}").format(a, sql.Identifier(registry[oid]), literal)
        ors = []
        for fk in fkeys:
            if fk.child != oid or fk.parent not in touched or fk.parent in seen or fk.parent == oid:
                continue
            inner_alias = f"p{len(seen)}"
            inner = predicate(fk.parent, inner_alias, seen | {oid})
            if inner is None:
                continue
            join = sql.SQL(" AND ").join(
                sql.SQL("{}.{} = {}.{}").format(sql.Identifier(inner_alias), sql.Identifier(pc), a, sql.Identifier(cc))
                for pc, cc in zip(fk.parent_cols, fk.child_cols))
            ors.append(sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {} AND {})").format(
                touched[fk.parent].ident, sql.Identifier(inner_alias), join, inner))
        if not ors:
            return None
        return sql.SQL("({})").format(sql.SQL(" OR ").join(ors))

    unscoped = []
    for oid, table in touched.items():
        pred = predicate(oid, "t", frozenset())
        if pred is None:
            unscoped.append(table.qualified)
        else:
            predicates[oid] = pred
    if unscoped:
        problems.append(
            f"cannot tell this tenant's rows in {', '.join(sorted(unscoped))}: no tenant column and no foreign key "
            "to a table of the tenant")

    # A table the backup does not hold, referencing one it replaces: deleting parents would cascade
    # into (or null out) rows nobody restores. NO ACTION/RESTRICT is left to fail (and roll back).
    cascading = sorted({f"{tables[fk.child].qualified} -> {touched[fk.parent].qualified}" for fk in fkeys
                        if fk.parent in touched and fk.child not in touched and fk.child in tables
                        and fk.on_delete in ("c", "n", "d")})
    if cascading:
        problems.append("table(s) outside the backup reference tables it replaces with ON DELETE CASCADE/SET NULL/"
                        "SET DEFAULT (their rows would change and not come back): " + ", ".join(cascading))
    if problems:
        raise RestoreRefused("--replace refused, nothing changed: " + "; ".join(problems))

    extra = sorted(t.qualified for t in tables.values()
                   if t.tenant_type and t.qualified not in kinds and t.oid not in touched)
    if extra:
        result.warnings.append(f"table(s) with column {column} not in the backup are left as they are: {', '.join(extra)}")

    return _Plan(_parents_first(touched, fkeys, result), registry, predicates, by_name)


def _parents_first(touched: dict[int, _Table], fkeys: list[_FKey], result: RestoreResult) -> list[_Table]:
    parents = {oid: {fk.parent for fk in fkeys if fk.child == oid and fk.parent in touched and fk.parent != oid}
               for oid in touched}
    order: list[_Table] = []
    done: set[int] = set()
    pending = sorted(touched, key=lambda o: touched[o].qualified)
    while pending:
        ready = [o for o in pending if parents[o] <= done]
        if not ready:  # a cycle of foreign keys: no order satisfies it; the constraints decide
            ready = [pending[0]]
            result.warnings.append(f"foreign-key cycle through {touched[pending[0]].qualified}: loaded in name order")
        for oid in ready:
            order.append(touched[oid])
            done.add(oid)
        pending = [o for o in pending if o not in done]
    return order


def _replace(conn, copy: SourceCopy, keyring: Keyring, result: RestoreResult, column: str, lock_timeout: str,
             dry_run: bool, report: Report) -> None:
    plan = _plan_replace(conn, copy.manifest, copy.tenant_id, column, result)
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
                    cur.execute(sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(table.ident, plan.predicates[table.oid]))
                    result.tables[table.qualified].deleted = cur.fetchone()[0]
                conn.rollback()
                return

            t0 = time.monotonic()
            # All locks first: a busy table fails fast (lock_timeout) before any work is done.
            # ROW EXCLUSIVE is what DELETE/INSERT take anyway: other tenants keep writing.
            cur.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(
                sql.SQL(", ").join(t.ident for t in plan.order)))
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
                        table.ident, cols, cols, temp_ident)
                    if table.oid in plan.registry:
                        key = sql.Identifier(plan.registry[table.oid])
                        stmt += sql.SQL(" WHERE NOT EXISTS (SELECT 1 FROM {} r WHERE r.{} = s.{})").format(
                            table.ident, key, key)
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
            raise RestoreError(f"--replace rolled back, nothing changed: a table is locked by another session "
                               f"(lock timeout {lock_timeout}, {LOCK_TIMEOUT_ENV}): {_pg_message(exc)}") from None
        raise RestoreError(f"--replace rolled back, nothing changed: {_pg_message(exc)}") from None
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


def _advance_sequences(cur, tables: list[_Table]) -> list[tuple[str, int, int]]:
    """Move each sequence owned by a column of these tables to at least max(column), never backwards.

    setval is not transactional: should the transaction still roll back, a sequence stays moved
    forward, which is harmless (ids are skipped, never reused)."""
    moved = []
    for table in tables:
        cur.execute(_OWNED_SEQUENCES_SQL, (table.oid,))
        for seq, col in cur.fetchall():
            cur.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(col), table.ident))
            top = cur.fetchone()[0]
            if top is None:
                continue
            # One statement: read the sequence and move it only forward (nextval would give last_value
            # itself when is_called is false, hence the -1).
            cur.execute(sql.SQL(
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END, "
                "CASE WHEN %s > (CASE WHEN is_called THEN last_value ELSE last_value - 1 END) "
                "THEN setval(%s::regclass, %s, true) END FROM {}").format(sql.SQL(seq)), (top, seq, top))
            before, after = cur.fetchone()
            if after is not None:
                moved.append((seq, int(before), int(after)))
    return moved


# ------------------------------------------------------------ pg_restore --data-only → temp tables


_IDENT_RE = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*')


def _parse_ident(text: str, pos: int) -> tuple[str, int]:
    m = _IDENT_RE.match(text, pos)
    if not m:
        raise ValueError(f"identifier expected at {pos}")
    token = m.group(0)
    name = token[1:-1].replace('""', '"') if token.startswith('"') else token
    return name, m.end()


def parse_copy_line(line: str) -> tuple[str, str, list[str]]:
    """`COPY schema.table (col, ...) FROM stdin;` as pg_dump writes it -> (schema, table, columns)."""
    if not line.startswith("COPY ") or not line.endswith(" FROM stdin;"):
        raise ValueError(f"not a COPY line: {line[:200]!r}")
    schema, pos = _parse_ident(line, 5)
    if line[pos:pos + 1] != ".":
        raise ValueError(f"unqualified COPY target: {line[:200]!r}")
    table, pos = _parse_ident(line, pos + 1)
    columns: list[str] = []
    rest = line[pos:len(line) - len(" FROM stdin;")]
    if rest.startswith(" ("):
        pos = 2
        while True:
            col, pos = _parse_ident(rest, pos)
            columns.append(col)
            if rest.startswith(", ", pos):
                pos += 2
            elif rest[pos:] == ")":
                break
            else:
                raise ValueError(f"malformed column list: {line[:200]!r}")
    elif rest:
        raise ValueError(f"malformed COPY line: {line[:200]!r}")
    return schema, table, columns


class _ScriptReader:
    """Reads pg_restore's SQL script output: lines outside COPY blocks, data blocks in large pieces."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._buf = b""
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._raw.read(_CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def readline(self) -> bytes | None:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 1:]
                return line
            if not self._fill():
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line
                return None

    def block(self) -> "_CopyBlock":
        return _CopyBlock(self)


class _CopyBlock:
    """File-like over one COPY data block (text format): whole lines up to the `\\.` line, which is
    consumed. Data lines never are `\\.` (COPY escapes backslashes), so the terminator is exact."""

    def __init__(self, reader: _ScriptReader):
        self._r = reader
        self.done = False
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        r = self._r
        while not self.done:
            if r._buf.startswith(b"\\.\n") or (r._eof and r._buf in (b"\\.", b"\\.\n")):
                r._buf = r._buf[3:]
                self.done = True
                break
            i = r._buf.find(b"\n\\.\n")
            if i >= 0:
                out, r._buf = r._buf[:i + 1], r._buf[i + 1:]
                self.bytes += len(out)
                return out
            k = r._buf.rfind(b"\n")
            if k >= 0 and (len(r._buf) >= _CHUNK or r._eof):
                out, r._buf = r._buf[:k + 1], r._buf[k + 1:]
                self.bytes += len(out)
                return out
            if not r._fill() and r._eof and r._buf.rfind(b"\n") < 0:
                raise RestoreError("pg_restore output ended inside a COPY block")
        return b""

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


_DATA_COMMENT = re.compile(r"-- Data for Name: (.*); Type: TABLE DATA; Schema: (.*); Owner: ")


def _load_temp_tables(cur, copy: SourceCopy, keyring: Keyring, plan: _Plan) -> dict[str, tuple]:
    """Stream the archive through `pg_restore --data-only -f -` and COPY the rows of every touched
    table into a temporary table (dropped at commit). Returns name -> (temp ident, columns, rows)."""
    args = [pg_program("pg_restore"), "--data-only", "--no-owner", "--no-acl", "-f", "-"]
    loaded: dict[str, tuple] = {}
    with open(copy.archive_path, "rb") as handle, tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file, bufsize=0,
                                env=child_env())
        sink = _PipeSink(proc.stdin)
        decode_error: list[BaseException] = []

        def feed() -> None:
            try:
                decode_archive(handle, sink, keyring=keyring, expect_tenant_id=copy.tenant_id)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                decode_error.append(exc)
                proc.kill()  # the main thread then sees a truncated script, and rolls back
            finally:
                sink.close()

        feeder = threading.Thread(target=feed, name="restore-decode", daemon=True)
        feeder.start()
        try:
            reader = _ScriptReader(proc.stdout)
            kinds_wanted = {t.qualified for t in plan.order}
            current: str | None = None  # from the "-- Data for Name" comment before each COPY
            n = 0
            while True:
                raw_line = reader.readline()
                if raw_line is None:
                    break
                line = raw_line.decode("utf-8", "replace")
                m = _DATA_COMMENT.match(line)
                if m:
                    current = f"{m.group(2)}.{m.group(1)}"
                    continue
                if not line.startswith("COPY "):
                    continue  # SET lines, comments, SEQUENCE SET (setval: global values, skipped)
                block = reader.block()
                try:
                    schema, name, columns = parse_copy_line(line)
                except ValueError as exc:
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
                cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN").format(temp, cols).as_string(cur.connection),
                                block, size=_CHUNK)
                loaded[qualified] = (temp, columns, cur.rowcount)
                current = None
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            code = proc.wait()
            feeder.join()
        if decode_error:
            exc = decode_error[0]
            if isinstance(exc, ArchiveError):
                raise ArchiveError(f"archive rejected while loading: {exc}")
            raise exc
        if code != 0:
            err_file.seek(0)
            stderr = _one_line(err_file.read(_STDERR_LIMIT * 2).decode("utf-8", "replace"))
            raise RestoreError(f"pg_restore --data-only failed (exit {code}): {stderr or 'no message'}")
    return loaded

