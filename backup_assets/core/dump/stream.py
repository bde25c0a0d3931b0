"""What a pg_dump custom-format stream really holds, read as it passes through the export.

The isolation proof counts each table's rows in pg_dump's snapshot on a session of our own. That
count proves something about the archive only if pg_dump's session saw the same rows, so the stream
pg_dump writes is followed here, byte for byte, and each table's COPY rows are counted (and, for
tables with the tenant column, every row's tenant value is compared with the tenant's). The export
fails when the two disagree: the proof is about the bytes written, not about a session that may
differ (docs/ISOLATION.md).

Layout followed (PostgreSQL's src/bin/pg_dump/pg_backup_archiver.c and pg_backup_custom.c, archive
versions 1.12 to 1.16, i.e. pg_dump 9.0 to 18), written to a pipe (no seeks, data in TOC order):

    "PGDMP" vmaj vmin vrev intSize offSize format  compression  timestamp  dbname  versions
    TOC: count, then per entry: dumpId hadDumper tableoid oid tag desc section defn dropStmt
         copyStmt namespace tablespace tableam relkind owner withOids deps... NULL  dataOffset
    data blocks: blockType(1=data) dumpId, then chunks `int length || bytes` ending with length 0

An int is a sign byte and intSize little-endian bytes; a string an int length (-1: NULL) and bytes.
With --compress=0 every chunk is COPY text: rows end with a newline (a newline inside a value is
written as the two characters `\\n`), and the block ends with the chunk `\\.\\n\\n\\n`.

Bounded memory: only the TOC is buffered; a chunk that crosses a read boundary is carried over
whole when small, otherwise streamed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import SafetyCheckFailed
from .copytext import CopyStatementError, copy_text, parse_copy_statement

__all__ = ["COPY_END", "DumpContents", "DumpStreamError", "DumpStreamReader", "TableTally", "TocEntry", "copy_text"]

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLOCK_DATA = 1
BLOCK_LARGE_OBJECTS = 3
COPY_END = b"\\.\n\n\n"  # pg_dump's end of a table's COPY data (dumpTableData_copy)
MIN_VERSION, MAX_VERSION = (1, 12), (1, 16)
_MAX_HEAD = 512 << 20  # header + TOC: a few KiB per table; beyond this the stream is not a dump
_CARRY_LIMIT = 4 << 20  # a chunk up to this size that crosses a read boundary is carried over whole
_STRETCH = 64 << 10  # rows are counted per stretch of this many bytes
_MAX_FIELD = 4096  # a tenant value longer than this is not the tenant's anyway
# TOC entries whose presence means bytes we cannot prove to be this tenant's: large objects have no
# tenant and no RLS; planner statistics hold other tenants' most common values.
_REFUSED_ENTRIES = ("BLOBS", "BLOB", "BLOB METADATA", "LARGE OBJECT", "STATISTICS DATA")


class DumpStreamError(SafetyCheckFailed):
    """The stream is not a dump this module can follow: isolation cannot be proven (fail closed)."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    namespace: str | None
    tag: str
    copy_stmt: str | None

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.tag}"


@dataclass
class TableTally:
    """What the stream held for one table."""

    table: str
    rows: int = 0
    tenant_index: int | None = None  # position of the tenant column in the COPY column list
    checked: int = 0  # rows whose tenant value was compared
    foreign: int = 0  # rows whose tenant value was not the tenant's
    sample: bytes | None = None  # one foreign value, for the message
    ended: bool = False  # the COPY end marker was seen


@dataclass
class DumpContents:
    version: tuple[int, int, int]
    entries: list[TocEntry]
    tables: dict[str, TableTally] = field(default_factory=dict)  # schema.table -> tally (data blocks)

    def rows(self) -> dict[str, int]:
        return {name: tally.rows for name, tally in self.tables.items()}


# ------------------------------------------------------------------------------------- the reader


class _NeedMore(Exception):
    pass


class DumpStreamReader:
    """Fed the bytes of a `pg_dump --format=custom --compress=0` stream in order (`feed`), then
    `finish()` returns what it held. `tenant_values` maps schema.table → the tenant's value as COPY
    writes it (see copy_text): those tables' rows are checked one by one in `tenant_column`."""

    def __init__(self, tenant_values: dict[str, bytes] | None = None, tenant_column: str = "tenant_id"):
        self._tenant_values = dict(tenant_values or {})
        self._tenant_column = tenant_column
        self._head = bytearray()
        self._hpos = 0
        self._parser: Iterator[None] | None = self._parse_head()
        self.contents: DumpContents | None = None
        self._by_id: dict[int, TocEntry] = {}
        self._int = struct.Struct("<BI")  # replaced once intSize is known
        self._isz = 4
        self._carry = b""  # a block header or chunk cut by the end of a read
        self._tally: TableTally | None = None  # table whose data block is open
        self._checker: _RowChecker | None = None  # its tenant values' checker, if any
        self._tail = b""  # the open block's last (up to 5) COPY data bytes: its end marker?
        self._left = 0  # bytes of the current chunk not yet seen (a chunk too large to carry)

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._parser is not None:
            self._head += data
            if len(self._head) > _MAX_HEAD:
                raise DumpStreamError("pg_dump's header and table of contents exceed 512 MiB: not a dump stream")
            try:
                next(self._parser)
                return  # needs more
            except StopIteration:
                pass
            data = bytes(self._head[self._hpos :])
            self._head = bytearray()
            self._parser = None
        p = 0
        if self._carry:  # complete the unit that crossed the boundary, never re-copying the whole read
            p = self._complete_carry(data)
            if self._carry:
                return
        self._data(data, p)

    def _complete_carry(self, data: bytes) -> int:
        """Take from `data` what completes the carried block header or chunk, process that unit
        alone, and return how much of `data` it used (all of it when still incomplete)."""
        step = 1 + self._isz
        unit, p = self._carry, 0
        while True:
            if self._tally is None:
                size = 1 + step  # a block header
            elif len(unit) < step:
                size = None  # the chunk length itself is incomplete
            else:
                sign, n = self._int.unpack_from(unit, 0)
                size = step + n if n <= _CARRY_LIMIT else step  # a large chunk's payload is streamed
            want = (size if size is not None else step) - len(unit)
            if want > 0:
                unit += data[p : p + want]
                p = min(len(data), p + want)
            if len(unit) < (size if size is not None else step):
                self._carry = unit
                return len(data)
            if size is not None:
                break
        self._carry = b""
        self._data(unit, 0)
        if self._carry:
            raise DumpStreamError("internal error: a completed unit of the dump stream was carried again")
        return p

    def finish(self) -> DumpContents:
        if self.contents is None or self._parser is not None:
            raise DumpStreamError("pg_dump's output ended inside its header or table of contents")
        if self._tally is not None or self._left or self._carry:
            where = self._tally.table if self._tally else "a data block header"
            raise DumpStreamError(f"pg_dump's output ended inside the data of {where}")
        return self.contents

    # -- header and TOC (incremental: a generator that waits for bytes) --------------------

    def _take(self, n: int) -> bytes:
        if len(self._head) - self._hpos < n:
            raise _NeedMore
        out = bytes(self._head[self._hpos : self._hpos + n])
        self._hpos += n
        return out

    def _read(self, n: int):  # generator helper: `value = yield from self._read(n)`
        while True:
            try:
                return self._take(n)
            except _NeedMore:
                yield

    def _read_int(self):
        raw = yield from self._read(1 + self._isz)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def _read_str(self):
        n = yield from self._read_int()
        if n < 0:
            return None
        raw = yield from self._read(n)
        return raw.decode("utf-8", "replace")

    def _parse_head(self):
        magic = yield from self._read(5)
        if magic != MAGIC:
            raise DumpStreamError("pg_dump's output does not start with PGDMP: not a custom-format dump")
        vmaj, vmin, vrev, isz, osz, fmt = yield from self._read(6)
        version = (vmaj, vmin, vrev)
        if not MIN_VERSION <= (vmaj, vmin) <= MAX_VERSION:
            raise DumpStreamError(
                f"pg_dump wrote archive version {vmaj}.{vmin}.{vrev}; this tenant-backup follows "
                f"{MIN_VERSION[0]}.{MIN_VERSION[1]} to {MAX_VERSION[0]}.{MAX_VERSION[1]} (pg_dump 9.0 to 18) "
                "and cannot prove isolation on it: use a pg_dump it knows (TENANT_BACKUP_PG_BIN)"
            )
        if fmt != FORMAT_CUSTOM or not 1 <= isz <= 8 or not 1 <= osz <= 16:
            raise DumpStreamError(f"unexpected pg_dump archive parameters (format {fmt}, int size {isz})")
        self._isz = isz
        self._int = struct.Struct(f"<B{ {1: 'B', 2: 'H', 4: 'I', 8: 'Q'}.get(isz, 'x') }")
        if (vmaj, vmin) >= (1, 15):
            compression = (yield from self._read(1))[0]
        else:
            compression = yield from self._read_int()
        if compression != 0:
            raise DumpStreamError("pg_dump compressed its data: the export runs it with --compress=0")
        for _ in range(7):  # creation time
            yield from self._read_int()
        yield from self._read_str()  # database name
        yield from self._read_str()  # server version
        yield from self._read_str()  # pg_dump version
        count = yield from self._read_int()
        entries = []
        for _ in range(count):
            dump_id = yield from self._read_int()
            yield from self._read_int()  # had a data dumper
            yield from self._read_str()  # tableoid
            yield from self._read_str()  # oid
            tag = yield from self._read_str()
            desc = yield from self._read_str()
            yield from self._read_int()  # section
            yield from self._read_str()  # defn
            yield from self._read_str()  # drop statement
            copy_stmt = yield from self._read_str()
            namespace = yield from self._read_str()
            yield from self._read_str()  # tablespace
            if (vmaj, vmin) >= (1, 14):
                yield from self._read_str()  # table access method
            if (vmaj, vmin) >= (1, 16):
                yield from self._read_int()  # relkind
            yield from self._read_str()  # owner
            yield from self._read_str()  # "false": WITH OIDS
            while (yield from self._read_str()) is not None:  # dependencies
                pass
            yield from self._read(1 + osz)  # data offset (unset when written to a pipe)
            if desc in _REFUSED_ENTRIES:
                raise DumpStreamError(
                    f"the dump holds a {desc} entry ({tag}): large objects and planner statistics cannot "
                    "be proven to be one tenant's (the export runs pg_dump with --no-large-objects"
                    " and --no-statistics)"
                )
            entry = TocEntry(dump_id, desc or "", namespace, tag or "", copy_stmt)
            entries.append(entry)
            self._by_id[dump_id] = entry
        self.contents = DumpContents(version, entries)

    # -- data blocks -------------------------------------------------------------------------

    def _open_block(self, dump_id: int) -> None:
        entry = self._by_id.get(dump_id)
        if entry is None:
            raise DumpStreamError(f"pg_dump wrote data for entry {dump_id}, which its table of contents lacks")
        if entry.desc != "TABLE DATA" or not entry.copy_stmt:
            raise DumpStreamError(
                f"pg_dump wrote data for a {entry.desc} entry ({entry.tag}): only COPY table data can be proven"
            )
        table = entry.qualified
        if table in self.contents.tables:
            raise DumpStreamError(f"pg_dump wrote the data of {table} twice")
        tally = TableTally(table)
        value = self._tenant_values.get(table)
        self._checker = None
        if value is not None:
            try:
                _, _, columns = parse_copy_statement(entry.copy_stmt)
            except CopyStatementError:
                raise DumpStreamError(f"unexpected COPY statement in the dump: {entry.copy_stmt[:200]!r}") from None
            if self._tenant_column not in columns:
                raise DumpStreamError(
                    f"the dump's COPY of {table} has no column {self._tenant_column}: its rows cannot be checked"
                )
            tally.tenant_index = columns.index(self._tenant_column)
            self._checker = _RowChecker(tally, value)
        self.contents.tables[table] = tally
        self._tally, self._tail = tally, b""

    def _close_block(self) -> None:
        tally = self._tally
        if self._tail != COPY_END:
            raise DumpStreamError(f"the data of {tally.table} does not end with COPY's end marker")
        tally.rows -= COPY_END.count(b"\n")  # counted with the rows until here
        tally.ended = True
        if self._checker is not None:
            self._checker.finish()
        self._tally = self._checker = None

    def _data(self, buf: bytes, p: int) -> None:
        """The hot loop: one iteration per chunk (pg_dump 18 writes a chunk per row). A table's rows
        are the newlines of its COPY data less the end marker's: counted per stretch of the buffer
        with one bytes.count (C speed), less the newline bytes inside chunk lengths."""
        end = len(buf)
        unpack = self._int.unpack_from
        step = 1 + self._isz
        nl_in_length = _NL_IN_LENGTH if self._isz == 4 else None
        if self._left:  # the rest of a chunk too large to carry
            take = min(self._left, end - p)
            self._payload(buf, p, p + take)
            self._left -= take
            p += take
            if self._left:
                return
        tally = self._tally
        region, length_nl = p, 0  # counting stretch [region, p) of the open block; newlines in lengths
        while True:
            if tally is None:
                if p == end:
                    return
                if end - p < 1 + step:
                    self._carry = buf[p:]
                    return
                block_type = buf[p]
                sign, dump_id = unpack(buf, p + 1)
                p += 1 + step
                if block_type != BLOCK_DATA or sign:
                    raise DumpStreamError(
                        f"unexpected block type {block_type} in pg_dump's data: only table"
                        " data can be proven (large objects are never dumped)"
                    )
                self._open_block(dump_id)
                tally = self._tally
                region, length_nl = p, 0
                continue
            if self._checker is None and nl_in_length is not None:
                # The common case, kept tight: whole chunks of 6 to 65535 bytes.
                limit, before = end - step, p
                while p <= limit:
                    sign, n = unpack(buf, p)
                    stop = p + step + n
                    if sign or n <= 5 or n > 0xFFFF or stop > end:
                        break
                    length_nl += nl_in_length[n]
                    p = stop
                    if p - region > _STRETCH:  # count while the stretch is still in the CPU cache
                        tally.rows += buf.count(b"\n", region, p) - length_nl
                        region, length_nl = p, 0
                if p != before:
                    self._tail = buf[p - 5 : p]  # the last chunk had more than 5 bytes
            if end - p < step:
                tally.rows += buf.count(b"\n", region, p) - length_nl
                self._carry = buf[p:]
                return
            sign, n = unpack(buf, p)
            if sign:
                raise DumpStreamError(f"negative chunk length in the data of {tally.table}")
            if n == 0:  # end of the block
                tally.rows += buf.count(b"\n", region, p) - length_nl
                p += step
                self._close_block()
                tally = None
                continue
            start = p + step
            stop = start + n
            if stop <= end:
                length_nl += buf.count(b"\n", p + 1, start)
                if self._checker is not None:
                    self._checker.feed(buf, start, stop)
                self._tail = (self._tail + buf[max(start, stop - 5) : stop])[-5:]
                p = stop
                continue
            tally.rows += buf.count(b"\n", region, p) - length_nl
            if n <= _CARRY_LIMIT:  # a small chunk across the read boundary: wait for the rest
                self._carry = buf[p:]
                return
            self._left = n  # a large one is followed piece by piece
            self._payload(buf, start, end)
            self._left -= end - start
            return

    def _payload(self, buf: bytes, start: int, stop: int) -> None:
        """A piece of a chunk too large to carry over whole."""
        if stop <= start:
            return
        self._tally.rows += buf.count(b"\n", start, stop)
        if self._checker is not None:
            self._checker.feed(buf, start, stop)
        self._tail = (self._tail + buf[max(start, stop - 5) : stop])[-5:]


class _RowChecker:
    """Compares the tenant value of every row of one table's COPY data, fed in pieces cut anywhere
    (a chunk per row is the fast case). After the end marker's line only empty lines may follow."""

    def __init__(self, tally: TableTally, value: bytes):
        self.tally, self.value, self.index = tally, value, tally.tenant_index
        self._tabs = 0  # tabs seen in the current row
        self._field = bytearray()  # the current row's tenant value so far (bounded)
        self._head = bytearray()  # the current row's first bytes: is it the end marker?
        self._length = 0  # bytes of the current row so far
        self._ended = False

    def feed(self, buf: bytes, start: int, stop: int) -> None:
        if self._length == 0 and not self._ended and buf.find(b"\n", start, stop) == stop - 1:
            self._whole_row(buf, start, stop - 1)  # one complete row: no state to keep
            return
        pos = start
        while pos < stop:
            nl = buf.find(b"\n", pos, stop)
            part_end = stop if nl < 0 else nl
            self._part(buf, pos, part_end)
            if nl < 0:
                return
            self._end_row()
            pos = nl + 1

    def _whole_row(self, buf: bytes, start: int, stop: int) -> None:
        if stop - start == 2 and buf[start:stop] == b"\\.":
            self._ended = True
            return
        pos = start
        for _ in range(self.index):
            pos = buf.find(b"\t", pos, stop) + 1
            if pos == 0:
                self._verdict(b"\\N")  # fewer fields than the COPY statement's columns
                return
        tab = buf.find(b"\t", pos, stop)
        field_end = stop if tab < 0 else tab
        if field_end - pos == len(self.value) and buf.startswith(self.value, pos):
            self.tally.checked += 1
        else:
            self._verdict(buf[pos:field_end][:_MAX_FIELD])

    def _part(self, buf: bytes, start: int, stop: int) -> None:
        """Bytes of the current row (no newline among them)."""
        if len(self._head) < 3:
            self._head += buf[start : min(stop, start + 3)]
        self._length += stop - start
        pos = start
        while pos < stop and self._tabs <= self.index:
            tab = buf.find(b"\t", pos, stop)
            piece_end = stop if tab < 0 else tab
            if self._tabs == self.index and len(self._field) <= _MAX_FIELD:
                self._field += buf[pos:piece_end][: _MAX_FIELD + 1]
            if tab < 0:
                return
            self._tabs += 1
            pos = tab + 1

    def _end_row(self) -> None:
        length, head, tabs, value = self._length, bytes(self._head), self._tabs, bytes(self._field)
        self._length, self._tabs = 0, 0
        self._head, self._field = bytearray(), bytearray()
        if self._ended:
            if length:
                raise DumpStreamError(f"data after COPY's end marker in {self.tally.table}")
            return
        if length == 2 and head == b"\\.":
            self._ended = True
            return
        if tabs < self.index:
            value = b"\\N"
        if value == self.value:
            self.tally.checked += 1
        else:
            self._verdict(value[:_MAX_FIELD])

    def _verdict(self, got: bytes) -> None:
        self.tally.checked += 1
        self.tally.foreign += 1
        if self.tally.sample is None:
            self.tally.sample = got

    def finish(self) -> None:
        if not self._ended or self._length:
            raise DumpStreamError(f"the data of {self.tally.table} does not end with COPY's end marker")


# How many of the two low bytes of a chunk length are a newline byte (they are counted with the rows).
_NL_IN_LENGTH = bytes((n & 0xFF == 10) + (n >> 8 == 10) for n in range(1 << 16))
