"""Isolation proof on an archive itself: every row of every table that has the tenant column holds
this tenant's id. Independent of the database that produced it (the asset check runs it on the
archive as written), streamed: archive → decrypt → pg_restore --data-only → COPY rows scanned.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..codec.format import decode_archive
from ..errors import ArchiveError
from ..codec.keyring import Keyring
from ..source.session import child_env
from ..source.pgbin import pg_program

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


def split_identifiers(text: str) -> list[str]:
    """Split `a, "B c", d` (SQL identifiers, maybe quoted) into unquoted names."""
    names, current, quoted, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(text) and text[i + 1] == '"':
                    current.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch in ",.":
            names.append("".join(current).strip())
            names.append(ch)
            current = []
        else:
            current.append(ch)
        i += 1
    names.append("".join(current).strip())
    return names


def parse_copy_header(line: str) -> tuple[str, list[str]]:
    """`COPY schema.table (c1, c2) FROM stdin;` → ("schema.table", ["c1", "c2"])."""
    body = line[len("COPY "):]
    open_paren = _unquoted_index(body, "(")
    close_paren = body.rindex(")")
    target = [p for p in split_identifiers(body[:open_paren].strip()) if p != "."]
    columns = [p for p in split_identifiers(body[open_paren + 1:close_paren]) if p != ","]
    if len(target) != 2:
        raise ArchiveError(f"unexpected COPY statement in dump: {line[:200]}")
    return f"{target[0]}.{target[1]}", columns


def _unquoted_index(text: str, needle: str) -> int:
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == needle and not quoted:
            return i
    raise ArchiveError(f"unexpected COPY statement in dump: {text[:200]}")


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


def scan_archive(archive: Path, keyring: Keyring, *, tenant_id: str, tenant_column: str = "tenant_id") -> IsolationReport:
    """Decrypt `archive` and scan every COPY row; never holds more than a line in memory."""
    proc = subprocess.Popen([pg_program("pg_restore"), "--data-only", "--file=-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    feed_error: list[BaseException] = []

    def feed() -> None:
        try:
            with archive.open("rb") as source:
                decode_archive(source, proc.stdin, keyring=keyring, expect_tenant_id=tenant_id)
        except BaseException as exc:  # reported below, after pg_restore is reaped
            feed_error.append(exc)
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    feeder = threading.Thread(target=feed, name="isolation-feed", daemon=True)
    feeder.start()
    stderr_chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    drain.start()
    try:
        lines = (raw.decode("utf-8", "replace") for raw in proc.stdout)
        report = scan_dump_lines(lines, tenant_id, tenant_column)
    finally:
        proc.stdout.close()
        code = proc.wait()
        feeder.join()
        drain.join()
    if feed_error:
        raise feed_error[0]
    if code != 0:
        message = " ".join(b"".join(stderr_chunks).decode("utf-8", "replace").split())[:2000]
        raise ArchiveError(f"pg_restore could not read the archive's dump (exit {code}): {message}")
    return report
