"""`--replace`: the proof, in the restore's own transaction and before its commit, that no row which
is not this tenant's changed. Any doubt rolls everything back.

1. The transaction's write counters (`pg_stat_xact_user_tables`: rows inserted, updated and deleted
   by this backend in this transaction, cascades and triggers included, whatever their table) are
   read once before anything is written and once at the end. Where the difference equals, table by
   table, what the restore's own statements reported (their row counts) nothing else was written:
   its DELETE and UPDATE statements select this tenant's rows only and what it inserts was checked
   to be this tenant's (.replace_sets) — proven exactly, at the cost of two small catalog reads.
2. A table with writes the restore did not make itself (an ON DELETE action, a trigger, a rule), or
   every table when `track_counts` is off, is checked row by row: in the database as it was (a
   second session on the transaction's exported snapshot) and as it is now, the rows that are not
   this tenant's are counted, and none of the row versions this transaction wrote (`age(xmin) <= 0`,
   subtransactions included) may be one of them. Equal counts and no such version: no row of
   another tenant was inserted, changed or deleted. Any other outcome, or a table that cannot be
   read, rolls back.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from ..errors import RestoreError
from .replace_plan import Plan
from .result import pg_message

COUNTERS_SQL = """
SELECT s.relid, s.n_tup_ins, s.n_tup_upd, s.n_tup_del
  FROM pg_stat_xact_user_tables s JOIN pg_class c ON c.oid = s.relid
 WHERE c.relpersistence <> 't'
"""

Connect = Callable[[], AbstractContextManager]


def _read(cur) -> dict[int, tuple[int, int, int]]:
    cur.execute(COUNTERS_SQL)
    return {row[0]: tuple(int(v) for v in row[1:]) for row in cur.fetchall()}


class Proof:
    """Started in the restore's transaction, after its locks and before its first write."""

    def __init__(self, cur):
        cur.execute("SELECT pg_export_snapshot(), current_setting('track_counts')::boolean")
        self.snapshot, self.tracked = cur.fetchone()
        self.baseline = _read(cur)
        self.expected: dict[int, tuple[int, int, int]] = {}

    def expect(self, oid: int, inserted: int = 0, updated: int = 0, deleted: int = 0) -> None:
        ins, upd, dele = self.expected.get(oid, (0, 0, 0))
        self.expected[oid] = (ins + inserted, upd + updated, dele + deleted)

    def unexplained(self, cur) -> dict[int, tuple[int, int, int]]:
        """oid -> (inserted, updated, deleted) beyond what the restore's statements reported."""
        now = _read(cur)
        out = {}
        for oid in set(now) | set(self.expected):
            base = self.baseline.get(oid, (0, 0, 0))
            delta = tuple(n - b for n, b in zip(now.get(oid, base), base, strict=True))
            extra = tuple(d - e for d, e in zip(delta, self.expected.get(oid, (0, 0, 0)), strict=True))
            if any(extra):
                out[oid] = extra
        return out

    def verify(self, cur, plan: Plan, connect_twin: Connect) -> list[str]:
        """Raise RestoreError unless no row outside this tenant's changed; returns notes for the result
        (tables written by triggers or actions, found to hold only this tenant's rows)."""
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred checks run now, inside the proof
        if self.tracked:
            suspects = self.unexplained(cur)
            if not suspects:
                return []
        else:
            suspects = {oid: None for oid in plan.tables}
        unknown = sorted(str(oid) for oid in suspects if oid not in plan.tables)
        if unknown:
            raise RestoreError(
                "rows were written in relations the restore cannot check (oids " + ", ".join(unknown) + ")"
            )
        problems, notes = [], []
        try:
            with connect_twin() as twin:
                twin.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
                with twin.cursor() as tcur:
                    tcur.execute("SET TRANSACTION SNAPSHOT %s", (self.snapshot,))
                    tcur.execute("SET LOCAL row_security = off")
                    for oid, extra in sorted(suspects.items(), key=lambda kv: plan.tables[kv[0]].qualified):
                        table = plan.tables[oid]
                        other = plan.not_ours(oid, "t")
                        count = sql.SQL("SELECT count(*) FROM ONLY {} t WHERE {}").format(table.ident, other)
                        tcur.execute(count)
                        before = tcur.fetchone()[0]
                        cur.execute(count)
                        after = cur.fetchone()[0]
                        cur.execute(
                            sql.SQL("SELECT count(*) FROM ONLY {} t WHERE age(t.xmin) <= 0 AND {}").format(
                                table.ident, other
                            )
                        )
                        written = cur.fetchone()[0]
                        if before != after or written:
                            problems.append(
                                f"{table.qualified}: rows that are not this tenant's {before} before, {after} after, "
                                f"{written} written by the restore"
                            )
                        elif extra is not None:
                            ins, upd, dele = extra
                            notes.append(
                                f"{table.qualified}: {ins} inserted, {upd} updated, {dele} deleted by triggers or "
                                "foreign-key actions, all of them this tenant's rows (checked)"
                            )
                twin.rollback()
        except psycopg2.Error as exc:
            raise RestoreError(f"cannot prove that no other tenant's rows changed: {pg_message(exc)}") from None
        if problems:
            raise RestoreError(
                "rows that are not this tenant's changed during the restore (triggers or foreign-key actions): "
                + "; ".join(problems)
            )
        return notes
