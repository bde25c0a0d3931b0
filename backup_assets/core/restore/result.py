"""What a restore did, table by table: RestoreResult (the CLI prints it, jobs record it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import psycopg2

from ..errors import one_line

Report = Callable[[str], None]


@dataclass
class TableOutcome:
    kind: str  # tenant, rls_child, registry, shared, excluded
    manifest_rows: int
    deleted: int | None = None  # replace: rows of this tenant deleted (dry-run: that would be)
    inserted: int | None = None  # rows loaded (empty: restored count; replace: rows inserted)
    action: str = ""  # what replace does with the table
    updated: int | None = None  # replace: rows of this tenant kept and updated to the backup's values
    unchanged: int | None = None  # replace: rows of this tenant equal to the backup's, not written


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
            "tenant_id": self.tenant_id,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "location": self.location,
            "backup_id": self.backup_id,
            "uri": self.uri,
            "target": self.target,
            "tables": {t: vars(o) for t, o in self.tables.items()},
            "skipped": [list(s) for s in self.skipped],
            "sequences": [list(s) for s in self.sequences],
            "warnings": list(self.warnings),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def pg_message(exc: psycopg2.Error) -> str:
    """A PostgreSQL error on one line: its primary message and detail."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag else None
    detail = getattr(diag, "message_detail", None) if diag else None
    text = primary or str(exc)
    return one_line(text + (f" ({detail})" if detail else ""), 2000)
