"""Isolation proof on an archive itself: every row of every table that has the tenant column holds
this tenant's id. Independent of the database that produced it (the asset check runs it on the
archive as written), streamed: archive → decrypt → pg_restore --data-only → COPY rows scanned.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..archive.pipe import ArchivePipe
from ..codec.keyring import Keyring
from ..dump.copytext import CopyStatementError, parse_copy_statement
from ..errors import ArchiveError
from ..source.pgbin import for_archive

_NULL = "\\N"


@dataclass
class IsolationReport:
    tenant_id: str
    rows: dict[str, int] = field(default_factory=dict)  # schema.table -> rows in the dump
    checked_tables: list[str] = field(default_factory=list)  # tables that carry the tenant column
    foreign_rows: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)  # table -> one offending tenant value

    @property
    def isolated(self) -> bool:
        return not self.foreign_rows


def parse_copy_header(line: str) -> tuple[str, list[str]]:
    """`COPY schema.table (c1, c2) FROM stdin;` → ("schema.table", ["c1", "c2"])."""
    try:
        schema, table, columns = parse_copy_statement(line)
    except CopyStatementError:
        raise ArchiveError(f"unexpected COPY statement in dump: {line[:200]}") from None
    return f"{schema}.{table}", columns


def scan_dump_lines(lines, tenant_id: str, tenant_column: str) -> IsolationReport:
    """Scan pg_restore's SQL text output (an iterable of str lines)."""
    report = IsolationReport(tenant_id)
    table, index = None, None
    for line in lines:
        if table is None:
            if line.startswith("COPY ") and line.rstrip().endswith("FROM stdin;"):
                table, columns = parse_copy_header(line.rstrip("\n"))
                report.rows[table] = 0
                index = columns.index(tenant_column) if tenant_column in columns else None
                if index is not None:
                    report.checked_tables.append(table)
            continue
        if line == "\\.\n" or line == "\\.":
            table, index = None, None
            continue
        report.rows[table] += 1
        if index is not None:
            fields = line.rstrip("\n").split("\t")
            value = fields[index] if index < len(fields) else _NULL
            if value != tenant_id:
                report.foreign_rows[table] = report.foreign_rows.get(table, 0) + 1
                report.samples.setdefault(table, value)
    if table is not None:
        raise ArchiveError(f"dump ends inside the data of {table}")
    return report


def scan_archive(
    archive: Path,
    keyring: Keyring,
    *,
    tenant_id: str,
    tenant_column: str = "tenant_id",
    dump_version: str | None = None,
) -> IsolationReport:
    """Decrypt `archive` and scan every COPY row; never holds more than a line in memory.

    An archive that fails to decode is reported by its own error (ArchiveError), whatever the scan
    of the shortened output (pg_restore is killed at once) raised. dump_version: the pg_dump that wrote
    it (the manifest's), so that a pg_restore that reads it is chosen."""
    with archive.open("rb") as source:
        pipe = ArchivePipe(
            [for_archive(dump_version).program("pg_restore"), "--data-only", "--file=-"],
            source,
            keyring,
            expect_tenant_id=tenant_id,
            stdout=subprocess.PIPE,
            name="isolation-feed",
        )
        try:
            with pipe:
                lines = (raw.decode("utf-8", "replace") for raw in pipe.stdout)
                report = scan_dump_lines(lines, tenant_id, tenant_column)
        except ArchiveError:
            if pipe.outcome is None or pipe.outcome.decode_error is None:
                raise
    outcome = pipe.outcome
    if outcome.decode_error is not None:
        raise outcome.decode_error
    if outcome.code != 0:
        raise ArchiveError(f"pg_restore could not read the archive's dump (exit {outcome.code}): {outcome.stderr}")
    return report
