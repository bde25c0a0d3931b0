"""Planning `--replace`: read the target's catalog and decide, before anything is written, which
tables are touched, in which order (parents first), which rows are this tenant's in each (see the
package docstring), and how each table is replaced. Refuses (RestoreRefused) naming every problem.

How a table is replaced (`Table.mode`):
- merge: tables with a primary key (and no unique index that cannot be compared column by column:
  expressions, predicates, NULLS NOT DISTINCT, exclusion constraints). Rows are matched with the
  backup's by primary key: a row whose key and referenced columns come back is updated in place when
  it differs (an unchanged row is not written at all), the others are deleted and the backup's
  missing rows inserted (.replace_sets decides which). Keys that stay never fire a foreign key's
  ON DELETE check, so a referencing table without an index costs nothing.
- replace: every other table: this tenant's rows deleted, the backup's inserted.
- registry: the tenant registry row, kept as the target has it, inserted only when missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg2 import sql

from ..archive.manifest import Manifest
from ..errors import RestoreRefused
from .result import RestoreResult

ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


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
    can_update: bool
    tenant_type: str | None  # format_type of the tenant column, None without it
    reltuples: float = 0.0  # the planner's estimate of its rows
    kind: str | None = None  # the manifest's table kind, None for a table the backup does not know
    pk: list[str] = field(default_factory=list)
    unique_keys: list[list[str]] = field(default_factory=list)  # plain-column unique keys but the primary key
    complex_unique: bool = False  # a unique / exclusion index that rows cannot be compared on column by column
    identity_always: list[str] = field(default_factory=list)  # GENERATED ALWAYS identity columns
    mode: str = ""  # touched tables: merge, replace or registry (module docstring)

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
    name: str = ""
    child_schema: str = ""
    child_name: str = ""
    indexed: bool = True  # an index of the child starts with its columns (the ON DELETE check uses it)
    child_rows: float = 0.0  # the planner's estimate of the child's rows
    child_readable: bool = True  # the restoring role may SELECT the child (to check its references)

    @property
    def child_qualified(self) -> str:
        return f"{self.child_schema}.{self.child_name}"

    @property
    def child_ident(self) -> sql.Identifier:
        return sql.Identifier(self.child_schema, self.child_name)

    @property
    def action(self) -> str:
        return ON_DELETE.get(self.on_delete, self.on_delete)


_CATALOG_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_has_role(current_user, c.relowner, 'USAGE'),
       has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),
       has_table_privilege(c.oid, 'DELETE'), has_table_privilege(c.oid, 'UPDATE'),
       format_type(a.atttypid, a.atttypmod), greatest(c.reltuples, 0)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
"""

# An int2vector's text is "1 2 3": as an array it is one-based like any other.
_KEYS = "string_to_array({}::text, ' ')::int2[]"

_FKEYS_SQL = f"""
SELECT con.conrelid, con.confrelid,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, i)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(num, i)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.i),
       con.confdeltype, con.conname, cn.nspname, cc.relname,
       EXISTS (SELECT 1 FROM pg_index i
                WHERE i.indrelid = con.conrelid AND i.indpred IS NULL
                  AND (SELECT array_agg(x ORDER BY x) FROM unnest(({_KEYS.format("i.indkey")})[1:cardinality(con.conkey)]) x)
                    = (SELECT array_agg(x ORDER BY x) FROM unnest(con.conkey) x)),
       greatest(cc.reltuples, 0), has_table_privilege(con.conrelid, 'SELECT')
  FROM pg_constraint con
  JOIN pg_class cc ON cc.oid = con.conrelid
  JOIN pg_namespace cn ON cn.oid = cc.relnamespace
 WHERE con.contype = 'f'
"""

_INDEXES_SQL = f"""
SELECT i.indrelid, i.indisprimary,
       i.indisexclusion OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL OR {{nulls_not_distinct}},
       ARRAY(SELECT a.attname::text FROM unnest({_KEYS.format("i.indkey")}) WITH ORDINALITY k(num, o)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num
              WHERE k.o <= i.indnkeyatts ORDER BY k.o)
  FROM pg_index i
 WHERE i.indisunique OR i.indisexclusion
"""

_IDENTITY_SQL = """
SELECT attrelid, array_agg(attname::text ORDER BY attnum) FROM pg_attribute
 WHERE attidentity = 'a' AND attnum > 0 AND NOT attisdropped GROUP BY attrelid
"""


@dataclass
class Plan:
    order: list[Table]  # touched tables, parents first
    registry: dict[int, str]  # oid -> key column, of registry tables (insert-if-missing, never delete)
    predicates: dict[int, sql.Composable]  # oid -> WHERE condition on alias "t" selecting this tenant's rows
    by_name: dict[str, Table]
    tables: dict[int, Table] = field(default_factory=dict)  # every table of the target
    fkeys: list[FKey] = field(default_factory=list)
    tenant_id: str = ""
    column: str = ""

    def touched(self, oid: int) -> bool:
        return any(t.oid == oid for t in self.order)

    def predicate(self, oid: int, alias: str = "t") -> sql.Composable:
        """This tenant's rows of a touched table, on `alias`."""
        return _predicate(self, oid, alias, frozenset())

    def not_ours(self, oid: int, alias: str = "t") -> sql.Composable:
        """Rows of table `oid` that are not this tenant's: another tenant's, or any row of a table
        without tenant column that the restore does not replace (a shared table, one outside the backup)."""
        table = self.tables[oid]
        a = sql.Identifier(alias)
        if table.tenant_type and (table.kind == "tenant" or not self.touched(oid)):
            return sql.SQL("{}.{} IS DISTINCT FROM {}::{}").format(
                a, sql.Identifier(self.column), sql.Literal(self.tenant_id), sql.SQL(table.tenant_type)
            )
        if oid in self.registry:
            return sql.SQL("{}.{}::text IS DISTINCT FROM {}").format(
                a, sql.Identifier(self.registry[oid]), sql.Literal(self.tenant_id)
            )
        if self.touched(oid):
            return sql.SQL("({}) IS NOT TRUE").format(self.predicate(oid, alias))
        return sql.SQL("true")


def _predicate(plan: Plan, oid: int, alias: str, seen: frozenset) -> sql.Composable | None:
    table = plan.tables[oid]
    a = sql.Identifier(alias)
    literal = sql.Literal(plan.tenant_id)
    if table.tenant_type and table.kind == "tenant":
        return sql.SQL("{}.{} = {}::{}").format(a, sql.Identifier(plan.column), literal, sql.SQL(table.tenant_type))
    if oid in plan.registry:
        return sql.SQL("{}.{}::text = {}").format(a, sql.Identifier(plan.registry[oid]), literal)
    ors = []
    for fk in plan.fkeys:
        if fk.child != oid or not plan.touched(fk.parent) or fk.parent in seen or fk.parent == oid:
            continue
        inner_alias = f"{alias}_p{len(seen)}"
        inner = _predicate(plan, fk.parent, inner_alias, seen | {oid})
        if inner is None:
            continue
        join = sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(inner_alias), sql.Identifier(pc), a, sql.Identifier(cc))
            for pc, cc in zip(fk.parent_cols, fk.child_cols, strict=True)
        )
        ors.append(
            sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {} AND {})").format(
                plan.tables[fk.parent].ident, sql.Identifier(inner_alias), join, inner
            )
        )
    if not ors:
        return None
    return sql.SQL("({})").format(sql.SQL(" OR ").join(ors))


def _read_catalog(conn, column: str) -> tuple[tuple, dict[int, Table], list[FKey]]:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        who = cur.fetchone()
        cur.execute(_CATALOG_SQL, (column,))
        tables = {row[0]: Table(*row) for row in cur.fetchall()}
        cur.execute(_FKEYS_SQL)
        fkeys = [FKey(*row) for row in cur.fetchall()]
        nnd = "i.indnullsnotdistinct" if conn.server_version >= 150000 else "false"
        cur.execute(_INDEXES_SQL.replace("{nulls_not_distinct}", nnd))
        for relid, primary, complex_, cols in cur.fetchall():
            table = tables.get(relid)
            if table is None:
                continue
            if primary:
                table.pk = list(cols)
            elif complex_ or not cols:
                table.complex_unique = True
            else:
                table.unique_keys.append(list(cols))
        cur.execute(_IDENTITY_SQL)
        for relid, cols in cur.fetchall():
            if relid in tables:
                tables[relid].identity_always = list(cols)
    return who, tables, fkeys


def plan_replace(conn, manifest: Manifest, tenant_id: str, column: str, result: RestoreResult) -> Plan:
    """Read the target's catalog and decide, before anything is written, how each table is replaced.
    Raises RestoreRefused naming every problem."""
    kinds = manifest.kinds.kind_of()
    (role, is_super, bypass), tables, fkeys = _read_catalog(conn, column)
    by_name = {t.qualified: t for t in tables.values()}
    for table in tables.values():
        table.kind = kinds.get(table.qualified)
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

    plan = Plan(_parents_first(touched, fkeys, result), registry, {}, by_name, tables, fkeys, tenant_id, column)
    unscoped = []
    for oid, table in touched.items():
        pred = _predicate(plan, oid, "t", frozenset())
        if pred is None:
            unscoped.append(table.qualified)
        else:
            plan.predicates[oid] = pred
        if oid in registry:
            table.mode = "registry"
        elif table.pk and not table.complex_unique and table.can_update:
            table.mode = "merge"
        else:
            table.mode = "replace"
    if unscoped:
        problems.append(
            f"cannot tell this tenant's rows in {', '.join(sorted(unscoped))}: no tenant column and no foreign key "
            "to a table of the tenant"
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
    return plan


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
