"""COPY's text format as pg_dump writes it: the COPY statement before each table's data, and values.

The one parser of `COPY schema.table (col, ...) FROM stdin;`: the dump stream reader (the TOC's copy
statements, core/dump/stream.py), the isolation scan and `restore --replace` (pg_restore's script
output) all read it here.
"""

from __future__ import annotations

import re

_IDENT_RE = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*')
_FROM_STDIN = " FROM stdin;"


class CopyStatementError(ValueError):
    """Not a COPY statement as pg_dump writes it."""


def _parse_ident(text: str, pos: int) -> tuple[str, int]:
    m = _IDENT_RE.match(text, pos)
    if not m:
        raise CopyStatementError(f"identifier expected at {pos}")
    token = m.group(0)
    name = token[1:-1].replace('""', '"') if token.startswith('"') else token
    return name, m.end()


def parse_copy_statement(line: str) -> tuple[str, str, list[str]]:
    """`COPY schema.table (col, "C 2") FROM stdin;` (a trailing newline allowed) → (schema, table,
    columns); no column list (a table without columns) → []. CopyStatementError otherwise."""
    text = line.strip()
    if not text.startswith("COPY ") or not text.endswith(_FROM_STDIN):
        raise CopyStatementError(f"not a COPY line: {line[:200]!r}")
    try:
        schema, pos = _parse_ident(text, 5)
        if text[pos : pos + 1] != ".":
            raise CopyStatementError(f"unqualified COPY target: {line[:200]!r}")
        table, pos = _parse_ident(text, pos + 1)
        columns: list[str] = []
        rest = text[pos : len(text) - len(_FROM_STDIN)]
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
                    raise CopyStatementError(f"malformed column list: {line[:200]!r}")
        elif rest.strip():
            raise CopyStatementError(f"malformed COPY line: {line[:200]!r}")
    except CopyStatementError as exc:
        if "COPY" in str(exc):
            raise
        raise CopyStatementError(f"malformed COPY line ({exc}): {line[:200]!r}") from None
    return schema, table, columns


def copy_text(value: str) -> bytes:
    """A value as COPY's text format writes it (backslash, tab, newline, carriage return escaped)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r").encode("utf-8")
