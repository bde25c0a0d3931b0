"""`--replace`, row by row: which of this tenant's rows go, which stay, which are written, and the
check that no row outside this tenant's is harmed — all decided on temporary tables before anything
of the target is written, in the transaction's one snapshot (REPEATABLE READ).

For every touched table (but the registry) the key columns of this tenant's current rows are copied
into a temporary table `tb_cur_N` with a flag `doomed`: the rows the restore deletes.
- replace tables: all of them;
- merge tables (replace_plan): a row whose primary key is not in the backup; one whose unique key
  value the backup gives to another row (it would clash with that row's insert); one whose columns
  that foreign keys reference (or a GENERATED ALWAYS identity column) differ in the backup; and,
  repeated to a fixed point, one that references a doomed row of a touched table (so children of
  deleted rows are deleted first, never left pointing at nothing). Deleting more rows than needed is
  always safe: they are inserted again from the backup. The other rows are kept: updated in place to
  the backup's values where they differ (their keys stay: no foreign key's ON DELETE check or action
  fires), not written at all where they are equal.

Before anything is deleted, every foreign key that references a touched table is followed back:
a row that is not this tenant's (another tenant's row in a tenant table, any row of a table the
restore does not replace) referencing a doomed row would be deleted (CASCADE), changed (SET NULL /
SET DEFAULT) or would make the delete fail (NO ACTION / RESTRICT): the restore is refused naming the
constraint, both tables and the count. The dry run does the same (and reports references into kept
rows, which the restore leaves alone, as warnings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg2 import sql

from ..errors import RestoreError, RestoreRefused
from .replace_plan import FKey, Plan, Table
from .result import RestoreResult

DOOMED = "tb_doomed"
CHANGED = "tb_changed"
SLOW_FK_ROWS = 10_000  # warn about an unindexed foreign key when a delete scans at least this x 1000 rows


@dataclass
class TableRows:
    table: Table
    backup: sql.Identifier | None  # temporary table holding the backup's rows (the dump's columns)
    columns: list[str]  # the dump's columns of this table
    copied: int  # rows in the backup
    current: sql.Identifier | None = None  # tb_cur_N (not for the registry)
    keys: list[str] = field(default_factory=list)  # columns of tb_cur_N besides the flag
    rows: int = 0  # this tenant's rows in the target, before
    doomed: int = 0
    changed: int = 0  # kept rows that differ from the backup's (the UPDATE's rows)
    deleted: int = 0
    updated: int = 0
    inserted: int = 0

    @property
    def kept(self) -> int:
        return self.rows - self.doomed


def _cols(alias: str, names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(n)) for n in names)


def _row(alias: str, names: list[str]) -> sql.Composable:
    return sql.SQL("ROW({})").format(_cols(alias, names))


def _equal(a: str, b: str, left: list[str], right: list[str] | None = None) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(a), sql.Identifier(x), sql.Identifier(b), sql.Identifier(y))
        for x, y in zip(left, right or left, strict=True)
    )


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


class Replacement:
    """The row sets of one `--replace`, on the cursor of its transaction (see the module docstring)."""

    def __init__(self, cur, plan: Plan, loaded: dict[str, tuple], result: RestoreResult):
        self.cur = cur
        self.plan = plan
        self.result = result
        self.rows: dict[int, TableRows] = {}
        for table in plan.order:
            temp, columns, copied = loaded.get(table.qualified, (None, [], 0))  # no COPY block: no rows
            self.rows[table.oid] = TableRows(table, temp, list(columns), copied)

    # ------------------------------------------------------------------ deciding
    def prepare(self) -> None:
        """Check the backup's rows, copy this tenant's current keys, decide the doomed rows."""
        self._check_backup_tenant()
        for n, rows in enumerate(self.rows.values(), 1):
            table = rows.table
            if table.mode == "registry":
                continue
            keys = self._key_columns(table)
            if table.mode == "merge" and not set(keys) <= set(rows.columns):
                table.mode = "replace"  # a key column the backup does not have: rows cannot be matched
            rows.keys = keys
            rows.current = sql.Identifier(f"tb_cur_{n}")
            select = [_cols("t", rows.keys)] if rows.keys else []
            if table.mode == "merge":
                # One join decides two things per current row: gone from the backup (doomed), and, if
                # not, whether it differs from the backup's row (changed: to be updated).
                gone = sql.SQL("s.{} IS NULL").format(sql.Identifier(table.pk[0]))
                source = sql.SQL("{} t LEFT JOIN {} s ON {}").format(
                    table.ident, rows.backup, _equal("t", "s", table.pk)
                )
                select += [
                    sql.SQL("{} AS {}").format(gone, sql.Identifier(DOOMED)),
                    sql.SQL("(NOT {} AND {}) AS {}").format(gone, self._differs(rows), sql.Identifier(CHANGED)),
                ]
            else:
                source = sql.SQL("{} t").format(table.ident)
                select += [
                    sql.SQL("true AS {}").format(sql.Identifier(DOOMED)),
                    sql.SQL("false AS {}").format(sql.Identifier(CHANGED)),
                ]
            self.cur.execute(
                sql.SQL("CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WHERE {}").format(
                    rows.current, sql.SQL(", ").join(select), source, self.plan.predicates[table.oid]
                )
            )
            rows.rows = self.cur.rowcount
            rows.doomed = rows.rows if table.mode == "replace" else self._count(rows, sql.Identifier(DOOMED))
        for rows in self.rows.values():
            if rows.table.mode == "merge":
                self._doom_merge(rows)
        self._close_over_references()
        for rows in self.rows.values():  # what the UPDATE will write: changed rows that stay
            if rows.table.mode == "merge" and rows.kept:
                rows.changed = self._count(
                    rows, sql.SQL("{} AND NOT {}").format(sql.Identifier(CHANGED), sql.Identifier(DOOMED))
                )

    def _count(self, rows: TableRows, condition: sql.Composable) -> int:
        self.cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(rows.current, condition))
        return self.cur.fetchone()[0]

    def _key_columns(self, table: Table) -> list[str]:
        names = list(table.pk)
        for key in table.unique_keys:
            names += key
        names += table.identity_always
        for fk in self.plan.fkeys:
            if fk.parent == table.oid:
                names += fk.parent_cols
            if fk.child == table.oid and self._doomable(fk.parent):
                names += fk.child_cols
        return _unique(names)

    def _doomable(self, oid: int) -> bool:
        rows = self.rows.get(oid)
        return rows is not None and rows.table.mode != "registry"

    def _check_backup_tenant(self) -> None:
        """Every backup row of a tenant table carries this tenant's id (the archive's own proof,
        re-checked where the restore acts on it)."""
        for rows in self.rows.values():
            table = rows.table
            if table.kind != "tenant" or not table.tenant_type or self.plan.column not in rows.columns:
                continue
            self.cur.execute(
                sql.SQL("SELECT count(*) FROM {} s WHERE {}").format(rows.backup, self.plan.not_ours(table.oid, "s"))
            )
            foreign = self.cur.fetchone()[0]
            if foreign:
                raise RestoreRefused(
                    f"--replace refused, nothing changed: the backup's {table.qualified} holds {foreign} row(s) of "
                    "another tenant"
                )

    def _doom(self, rows: TableRows, condition: sql.Composable) -> None:
        self.cur.execute(
            sql.SQL("UPDATE {} c SET {} = true WHERE NOT c.{} AND {}").format(
                rows.current, sql.Identifier(DOOMED), sql.Identifier(DOOMED), condition
            )
        )
        rows.doomed += self.cur.rowcount

    def _doom_merge(self, rows: TableRows) -> None:
        table, pk = rows.table, rows.table.pk
        # (Gone from the backup: decided when tb_cur_N was made.) A unique value the backup gives to another row.
        for key in table.unique_keys:
            self._doom(
                rows,
                sql.SQL("EXISTS (SELECT 1 FROM {} s WHERE {} AND {} IS DISTINCT FROM {})").format(
                    rows.backup, _equal("s", "c", key), _row("s", pk), _row("c", pk)
                ),
            )
        # Referenced columns (or an identity column that cannot be updated) that change.
        fixed = _unique(
            [c for fk in self.plan.fkeys if fk.parent == table.oid for c in fk.parent_cols] + table.identity_always
        )
        fixed = [c for c in fixed if c not in pk]
        if fixed:
            self._doom(
                rows,
                sql.SQL("EXISTS (SELECT 1 FROM {} s WHERE {} AND {} IS DISTINCT FROM {})").format(
                    rows.backup, _equal("s", "c", pk), _row("s", fixed), _row("c", fixed)
                ),
            )

    def _inner_fkeys(self) -> list[FKey]:
        return [fk for fk in self.plan.fkeys if self._doomable(fk.child) and self._doomable(fk.parent)]

    def _close_over_references(self) -> None:
        """A kept row referencing a doomed row of a touched table is doomed too, to a fixed point."""
        fkeys = [fk for fk in self._inner_fkeys() if self.rows[fk.child].table.mode == "merge"]
        changed = True
        while changed:
            changed = False
            for fk in fkeys:
                child, parent = self.rows[fk.child], self.rows[fk.parent]
                if not parent.doomed or child.kept == 0:
                    continue
                before = child.doomed
                self._doom(
                    child,
                    sql.SQL("EXISTS (SELECT 1 FROM {} p WHERE p.{} AND {})").format(
                        parent.current, sql.Identifier(DOOMED), _equal("p", "c", fk.parent_cols, fk.child_cols)
                    ),
                )
                changed |= child.doomed != before

    def check_references(self, dry_run: bool) -> None:
        """Refuse when a row that is not this tenant's references a row the restore deletes (module
        docstring). Dry run: also warn about such references into kept rows."""
        refused, kept = [], []
        for fk in self.plan.fkeys:
            parent = self.rows.get(fk.parent)
            if parent is None or parent.current is None or fk.child not in self.plan.tables:
                continue
            if not (parent.doomed or (dry_run and parent.rows)):
                continue
            if not fk.child_readable:
                if parent.doomed:
                    refused.append(
                        f"the restoring role cannot read {fk.child_qualified} (no SELECT privilege), whose rows may "
                        f"reference the {parent.doomed} row(s) of {parent.table.qualified} the restore deletes "
                        f"(constraint {fk.name}, ON DELETE {fk.action}): grant it SELECT on that table"
                    )
                continue
            only_doomed = sql.SQL(" AND p.{}").format(sql.Identifier(DOOMED)) if not dry_run else sql.SQL("")
            self.cur.execute(
                sql.SQL(
                    "SELECT count(*) FILTER (WHERE p.{}), count(*) FROM ONLY {} t JOIN {} p ON {}{} WHERE {}"
                ).format(
                    sql.Identifier(DOOMED),
                    fk.child_ident,
                    parent.current,
                    _equal("p", "t", fk.parent_cols, fk.child_cols),
                    only_doomed,
                    self.plan.not_ours(fk.child, "t"),
                )
            )
            harmed, referencing = self.cur.fetchone()
            what = (
                f"{{}} row(s) {self._whose(fk.child)} {fk.child_qualified} reference this tenant's rows of "
                f"{parent.table.qualified} (constraint {fk.name}, ON DELETE {fk.action})"
            )
            if harmed:
                refused.append(what.format(harmed) + " that the restore deletes")
            if referencing - harmed:
                kept.append(
                    what.format(referencing - harmed) + ": those rows are kept, the references left as they are"
                )
        if refused:
            raise RestoreRefused(
                "--replace refused, nothing changed: rows that are not this tenant's would be deleted, changed or "
                "block the delete through foreign keys: " + "; ".join(refused)
            )
        self.result.warnings.extend(kept)

    def _whose(self, oid: int) -> str:
        if oid in self.plan.registry:
            return "of the registry"
        if self.plan.touched(oid):
            return "of other tenants in"
        kind = self.plan.tables[oid].kind
        return f"of the {kind} table" if kind else "of the table outside the backup"

    def slow_deletes(self) -> list[str]:
        """Foreign keys whose ON DELETE check will scan the whole referencing table once per deleted
        row (no index on its columns), where that adds up: one warning each."""
        out = []
        for fk in self.plan.fkeys:
            parent = self.rows.get(fk.parent)
            if fk.indexed or parent is None or parent.table.mode == "registry":
                continue
            if parent.doomed * max(fk.child_rows, 1) < SLOW_FK_ROWS * 1000:
                continue
            cols = ", ".join(fk.child_cols)
            out.append(
                f"deleting {parent.doomed} row(s) of {parent.table.qualified} checks {fk.child_qualified} ({cols}) "
                f"once per row without an index ({fk.name}: a scan of ~{int(fk.child_rows)} rows each, which can take "
                f"minutes while the tables are locked); CREATE INDEX ON {fk.child_qualified} ({cols}) makes it fast"
            )
        return out

    # ------------------------------------------------------------------ counting (dry run)
    def count_updates(self) -> None:
        """Dry run: the kept rows that differ from the backup's (would be updated)."""
        for rows in self.rows.values():
            rows.updated = rows.changed

    def _differs(self, rows: TableRows) -> sql.Composable:
        """The current row differs from the backup's: compared by their binary images (`*<>`, exact:
        1.0 and 1.00 differ, NULLs are equal; no equality operator needed, e.g. for json)."""
        compared = [c for c in rows.columns if c not in rows.table.pk]
        if not compared:
            return sql.SQL("false")
        return sql.SQL("{}::record *<> {}::record").format(_row("t", compared), _row("s", compared))

    # ------------------------------------------------------------------ writing
    def delete(self) -> None:
        """Children first: the doomed rows."""
        for table in reversed(self.plan.order):
            rows = self.rows[table.oid]
            if table.mode == "registry" or not rows.doomed:
                continue
            if table.mode == "merge":
                self.cur.execute(
                    sql.SQL("DELETE FROM {} t USING {} c WHERE c.{} AND {}").format(
                        table.ident, rows.current, sql.Identifier(DOOMED), _equal("t", "c", table.pk)
                    )
                )
            else:
                self.cur.execute(
                    sql.SQL("DELETE FROM {} t WHERE {}").format(table.ident, self.plan.predicates[table.oid])
                )
            rows.deleted = self.cur.rowcount
            if rows.deleted != rows.doomed:
                raise RestoreError(
                    f"{table.qualified}: {rows.deleted} row(s) deleted where {rows.doomed} were planned "
                    "(changed by another session?)"
                )

    def write(self) -> None:
        """Parents first: kept rows updated where they differ, the backup's other rows inserted."""
        for table in self.plan.order:
            rows = self.rows[table.oid]
            if not rows.copied:
                continue
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in rows.columns)
            insert = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} s").format(
                table.ident, cols, _cols("s", rows.columns), rows.backup
            )
            if table.mode == "registry":
                key = self.plan.registry[table.oid]
                insert += sql.SQL(" WHERE NOT EXISTS (SELECT 1 FROM {} r WHERE r.{} = s.{})").format(
                    table.ident, sql.Identifier(key), sql.Identifier(key)
                )
            elif table.mode == "merge" and rows.kept:
                self._update(rows)
                if rows.kept == rows.copied:
                    continue  # every backup row matched a kept row: nothing to insert
                insert += sql.SQL(" WHERE NOT EXISTS (SELECT 1 FROM {} c WHERE NOT c.{} AND {})").format(
                    rows.current, sql.Identifier(DOOMED), _equal("c", "s", table.pk)
                )
            self.cur.execute(insert)
            rows.inserted = self.cur.rowcount

    def _update(self, rows: TableRows) -> None:
        table = rows.table
        assigned = [c for c in rows.columns if c not in table.pk and c not in table.identity_always]
        if not assigned or not rows.changed:
            return
        self.cur.execute(
            sql.SQL("UPDATE {} t SET ({}) = {} FROM {} c, {} s WHERE c.{} AND NOT c.{} AND {} AND {}").format(
                table.ident,
                sql.SQL(", ").join(sql.Identifier(c) for c in assigned),
                _row("s", assigned),
                rows.current,
                rows.backup,
                sql.Identifier(CHANGED),
                sql.Identifier(DOOMED),
                _equal("t", "c", table.pk),
                _equal("s", "c", table.pk),
            )
        )
        rows.updated = self.cur.rowcount
        if rows.updated != rows.changed:
            raise RestoreError(
                f"{table.qualified}: {rows.updated} row(s) updated where {rows.changed} were planned "
                "(changed by another session?)"
            )

    def check_counts(self) -> None:
        """This tenant's rows now are the backup's, table by table (the registry row aside)."""
        mismatches = []
        for table in self.plan.order:
            rows = self.rows[table.oid]
            if table.mode == "registry":
                continue
            self.cur.execute(
                sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(table.ident, self.plan.predicates[table.oid])
            )
            now = self.cur.fetchone()[0]
            if now != rows.copied or rows.kept + rows.inserted != rows.copied:
                mismatches.append(f"{table.qualified}: backup {rows.copied}, now {now}")
        if mismatches:
            raise RestoreError("this tenant's rows differ from the backup after loading: " + "; ".join(mismatches))
