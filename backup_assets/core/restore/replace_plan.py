"""Planning `--replace`: read the target's catalog and decide, before anything is written, which
tables are touched, in which order (parents first), and which rows are this tenant's in each
(see the package docstring). Refuses (RestoreRefused) naming every problem."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from ..archive.manifest import Manifest
from ..errors import RestoreRefused
from .result import RestoreResult


@dataclass
class Table:
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
class FKey:
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


@dataclass
class Plan:
    order: list[Table]  # touched tables, parents first
    registry: dict[int, str]  # oid -> key column, of registry tables (insert-if-missing, never delete)
    predicates: dict[int, sql.Composable]  # oid -> WHERE condition on alias "t" selecting this tenant's rows
    by_name: dict[str, Table]


def plan_replace(conn, manifest: Manifest, tenant_id: str, column: str, result: RestoreResult) -> Plan:
    """Read the target's catalog and decide, before anything is written, how each table is replaced.
    Raises RestoreRefused naming every problem."""
    kinds = manifest.kinds.kind_of()
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        role, is_super, bypass = cur.fetchone()
        cur.execute(_CATALOG_SQL, (column,))
        tables = {row[0]: Table(*row) for row in cur.fetchall()}
        cur.execute(_FKEYS_SQL)
        fkeys = [FKey(*row) for row in cur.fetchall()]
    by_name = {t.qualified: t for t in tables.values()}
    problems: list[str] = []

    wanted = [name for name, kind in sorted(kinds.items()) if kind in ("tenant", "rls_child")]
    missing = [name for name in wanted if name not in by_name]
    if missing:
        problems.append(f"table(s) of the backup missing in the target: {', '.join(missing)}")
    touched = {by_name[name].oid: by_name[name] for name in wanted if name in by_name}

    filtered = [
        t.qualified for t in touched.values() if t.rls and not (is_super or bypass or (t.owner and not t.force))
    ]
    if filtered:
        problems.append(
            f"role {role} would write under row-level security on {', '.join(sorted(filtered))}: --replace needs "
            "a superuser, a BYPASSRLS role, or the tables' owner without FORCE ROW LEVEL SECURITY "
            "(COPY FROM is refused under RLS and policies would filter the delete)"
        )
    no_priv = [t.qualified for t in touched.values() if not (t.can_select and t.can_insert and t.can_delete)]
    if no_priv:
        problems.append(f"role {role} lacks SELECT/INSERT/DELETE on {', '.join(sorted(no_priv))}")

    # The registry: the table the tenant column of the tenant tables references.
    registry: dict[int, str] = {}
    for fk in fkeys:
        child = touched.get(fk.child)
        parent = touched.get(fk.parent)
        if (
            child
            and parent
            and child.tenant_type
            and fk.child_cols == [column]
            and len(fk.parent_cols) == 1
            and kinds.get(parent.qualified) in ("rls_child", "tenant")
        ):
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
                for pc, cc in zip(fk.parent_cols, fk.child_cols, strict=True)
            )
            ors.append(
                sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {} AND {})").format(
                    touched[fk.parent].ident, sql.Identifier(inner_alias), join, inner
                )
            )
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
            "to a table of the tenant"
        )

    # A table the backup does not hold, referencing one it replaces: deleting parents would cascade
    # into (or null out) rows nobody restores. NO ACTION/RESTRICT is left to fail (and roll back).
    cascading = sorted(
        {
            f"{tables[fk.child].qualified} -> {touched[fk.parent].qualified}"
            for fk in fkeys
            if fk.parent in touched
            and fk.child not in touched
            and fk.child in tables
            and fk.on_delete in ("c", "n", "d")
        }
    )
    if cascading:
        problems.append(
            "table(s) outside the backup reference tables it replaces with ON DELETE CASCADE/SET NULL/"
            "SET DEFAULT (their rows would change and not come back): " + ", ".join(cascading)
        )
    if problems:
        raise RestoreRefused("--replace refused, nothing changed: " + "; ".join(problems))

    extra = sorted(
        t.qualified for t in tables.values() if t.tenant_type and t.qualified not in kinds and t.oid not in touched
    )
    if extra:
        result.warnings.append(
            f"table(s) with column {column} not in the backup are left as they are: {', '.join(extra)}"
        )

    return Plan(_parents_first(touched, fkeys, result), registry, predicates, by_name)


def _parents_first(touched: dict[int, Table], fkeys: list[FKey], result: RestoreResult) -> list[Table]:
    parents = {
        oid: {fk.parent for fk in fkeys if fk.child == oid and fk.parent in touched and fk.parent != oid}
        for oid in touched
    }
    order: list[Table] = []
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
