"""Pre-flight safety check: prove that a dump as this role can only hold one tenant's rows.

Fails closed (SafetyCheckFailed) naming every offending table or the role. Checked on the live
catalog before each dump, so a table added since the last run cannot slip through:

- the role is not a superuser and has no BYPASSRLS (both always see every row);
- every table with the tenant column has RLS enabled, and forced where the role owns it (an owner
  bypasses its own table's policies unless FORCE ROW LEVEL SECURITY);
- every RLS table has a permissive SELECT policy that applies to the role (otherwise its dump is
  silently empty);
- a table with neither tenant column nor RLS is "shared" and dumped whole; refused when it
  references a tenant table or the tenant column references it (the registry), unless declared in
  TENANT_BACKUP_SHARED_TABLES or TENANT_BACKUP_EXCLUDE_TABLES.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SafetyCheckFailed
from ..settings import SourceSettings

TENANT = "tenant"  # has the tenant column, filtered by RLS
RLS_CHILD = "rls_child"  # no tenant column, filtered by its own RLS policy (e.g. through a parent)
SHARED = "shared"  # no tenant column, no RLS: dumped whole
EXCLUDED = "excluded"  # operator-declared: schema dumped, rows not


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    kind: str
    tenant_type: str | None = None  # SQL type of the tenant column (format_type), for typed comparisons

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class DumpPlan:
    role: str
    server_version: str
    database: str
    tables: tuple[TableInfo, ...]
    large_objects: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def of_kind(self, kind: str) -> list[TableInfo]:
        return [t for t in self.tables if t.kind == kind]


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_get_userbyid(c.relowner) AS owner,
       pg_has_role(current_user, c.relowner, 'USAGE') AS acts_as_owner,
       a.attnum AS tenant_attnum,
       format_type(a.atttypid, a.atttypmod) AS tenant_type,
       EXISTS (
         SELECT 1 FROM pg_policy p
          WHERE p.polrelid = c.oid AND p.polpermissive AND p.polcmd IN ('r', '*')
            AND (p.polroles = '{0}'::oid[]
                 OR EXISTS (SELECT 1 FROM unnest(p.polroles) r WHERE pg_has_role(current_user, r, 'USAGE')))
       ) AS has_select_policy,
       i.inhparent::regclass::text AS partition_of,
       (SELECT pg_get_expr(p.polqual, p.polrelid) FROM pg_policy p
         WHERE p.polrelid = i.inhparent AND p.polcmd IN ('r', '*') AND p.polqual IS NOT NULL
         ORDER BY p.polname LIMIT 1) AS parent_policy
  FROM pg_class c
  LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %(column)s AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
   -- tables that belong to an extension are not dumped as data by pg_dump
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY n.nspname, c.relname
"""

_FKEYS_SQL = """
SELECT conrelid, confrelid, conkey FROM pg_constraint WHERE contype = 'f'
"""


def inspect_source(conn, settings: SourceSettings) -> DumpPlan:
    """Classify every table and refuse what cannot be proven isolated. Read-only."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_user, r.rolsuper, r.rolbypassrls, current_setting('server_version'), current_database()"
            " FROM pg_roles r WHERE r.rolname = current_user"
        )
        role, is_super, bypass, server_version, database = cur.fetchone()
        problems: list[str] = []
        if is_super:
            problems.append(
                f"role {role} is a superuser: superusers bypass row-level security; use a dedicated backup role"
            )
        if bypass:
            problems.append(f"role {role} has BYPASSRLS: it sees every tenant's rows; use a role without it")
        if problems:
            raise SafetyCheckFailed("; ".join(problems))

        cur.execute(_TABLES_SQL, {"column": settings.tenant_column})
        rows = cur.fetchall()
        cur.execute(_FKEYS_SQL)
        fkeys = cur.fetchall()
        cur.execute("SELECT count(*) FROM pg_largeobject_metadata")
        large_objects = cur.fetchone()[0]

    shared_declared = set(settings.shared_tables)
    excluded = set(settings.exclude_tables)
    by_oid: dict[int, tuple] = {}
    tenant_oids: set[int] = set()
    rls_oids: set[int] = set()
    tenant_attnum: dict[int, int] = {}
    for oid, schema, name, rls, force, owner, acts_as_owner, attnum, _type, has_policy, parent, qual in rows:
        qualified = f"{schema}.{name}"
        by_oid[oid] = (schema, name)
        if qualified in excluded:
            continue
        if attnum is not None:
            tenant_oids.add(oid)
            tenant_attnum[oid] = attnum
            if qualified in shared_declared:
                problems.append(
                    f"table {qualified} has the tenant column {settings.tenant_column}: it cannot be declared shared"
                )
            if not rls:
                problems.append(
                    f"table {qualified} has the tenant column {settings.tenant_column} but row-level security is not enabled"
                    + (_partition_advice(schema, name, parent, qual) if parent else "")
                )
                continue
        if rls:
            rls_oids.add(oid)
            if acts_as_owner and not force:
                problems.append(
                    f"table {qualified} is owned by {owner}, whose privileges role {role} has, and RLS is not forced"
                    " (owners bypass their own policies: ALTER TABLE ... FORCE ROW LEVEL SECURITY, or use a non-owner role)"
                )
            if not has_policy:
                problems.append(
                    f"table {qualified} has row-level security but no SELECT policy applies to role {role}:"
                    " its dump would be silently empty (add a policy or exclude the table)"
                )

    protected = tenant_oids | rls_oids
    tables: list[TableInfo] = []
    for oid, schema, name, _rls, _force, _owner, _acts, _attnum, tenant_type, *_ in rows:
        qualified = f"{schema}.{name}"
        if qualified in excluded:
            tables.append(TableInfo(schema, name, EXCLUDED))
        elif oid in tenant_oids:
            tables.append(TableInfo(schema, name, TENANT, tenant_type))
        elif oid in rls_oids:
            tables.append(TableInfo(schema, name, RLS_CHILD))
        else:
            if qualified not in shared_declared:
                reason = _unsafe_shared_reason(oid, fkeys, protected, tenant_attnum, by_oid, settings.tenant_column)
                if reason:
                    problems.append(
                        f"table {qualified} has no tenant column and no row-level security and {reason};"
                        " it would be dumped whole: enable RLS on it, or declare it in"
                        " TENANT_BACKUP_SHARED_TABLES or TENANT_BACKUP_EXCLUDE_TABLES"
                    )
            tables.append(TableInfo(schema, name, SHARED))

    known = {t.qualified for t in tables}
    for declared, variable in (
        (shared_declared, "TENANT_BACKUP_SHARED_TABLES"),
        (excluded, "TENANT_BACKUP_EXCLUDE_TABLES"),
    ):
        for missing in sorted(declared - known):
            problems.append(f"{variable} names {missing}, which is not a table in database {database}")

    if problems:
        raise SafetyCheckFailed("pre-flight check refused the dump: " + "; ".join(problems))

    notes = []
    if large_objects:
        notes.append(f"{large_objects} large objects are not backed up: they have no tenant and no row-level security")
    return DumpPlan(
        role=role,
        server_version=server_version,
        database=database,
        tables=tuple(tables),
        large_objects=large_objects,
        notes=tuple(notes),
    )


def _partition_advice(schema: str, name: str, parent: str, qual: str | None) -> str:
    """What to run when a partition lacks the row-level security its parent has: pg_dump reads each
    partition's rows from the partition itself, where the parent's policies do not apply."""
    table = '"{}"."{}"'.format(schema.replace('"', '""'), name.replace('"', '""'))
    policy = f"CREATE POLICY tenant_isolation ON {table} USING ({qual or '<the parent policy expression>'});"
    return (
        f" (it is a partition of {parent}: the parent's row-level security does not apply when pg_dump reads"
        f" the partition; enable it and the policy on every partition: ALTER TABLE {table} ENABLE ROW LEVEL"
        f" SECURITY; {policy})"
    )


def _unsafe_shared_reason(oid, fkeys, protected, tenant_attnum, by_oid, column) -> str | None:
    for conrelid, confrelid, conkey in fkeys:
        if conrelid == oid and confrelid in protected:
            schema, name = by_oid.get(confrelid, ("?", "?"))
            return f"references tenant table {schema}.{name}"
        if confrelid == oid and conrelid in tenant_attnum and tenant_attnum[conrelid] in (conkey or []):
            schema, name = by_oid.get(conrelid, ("?", "?"))
            return f"is referenced by the tenant column of {schema}.{name} (a tenant registry)"
    return None
