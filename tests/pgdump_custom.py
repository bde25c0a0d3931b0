"""A second, independent reading of pg_dump's custom format (written from PostgreSQL's
pg_backup_archiver.c, not from backup_assets.core.dump.stream) for the tests: split a real dump into
its head (header + TOC) and its data blocks, and write it back with the COPY data cut into chunks
another way, so the stream reader can be tried on layouts pg_dump 18 does not produce."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Dump:
    head: bytes  # magic .. end of the TOC, as pg_dump wrote it
    int_size: int
    blocks: list[tuple[int, bytes]]  # (dump id, the block's COPY data: every chunk joined)
    tags: dict[int, str]  # dump id -> "namespace.tag" of TABLE DATA entries


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        assert len(out) == n, "truncated"
        self.pos += n
        return out

    def int(self, size: int) -> int:
        raw = self.take(1 + size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def str(self, size: int) -> str | None:
        n = self.int(size)
        return None if n < 0 else self.take(n).decode()


def parse(data: bytes) -> Dump:
    r = _Reader(data)
    assert r.take(5) == b"PGDMP"
    vmaj, vmin, _rev, isz, osz, fmt = r.take(6)
    assert (vmaj, vmin) >= (1, 15) and fmt == 1, "written for pg_dump 16+ custom format"
    r.take(1)  # compression algorithm
    for _ in range(7):
        r.int(isz)
    for _ in range(3):
        r.str(isz)
    tags = {}
    for _ in range(r.int(isz)):
        dump_id = r.int(isz)
        r.int(isz)
        r.str(isz), r.str(isz)
        tag, desc = r.str(isz), r.str(isz)
        r.int(isz)
        r.str(isz), r.str(isz), r.str(isz)
        namespace = r.str(isz)
        r.str(isz), r.str(isz)
        if (vmaj, vmin) >= (1, 16):
            r.int(isz)
        r.str(isz), r.str(isz)
        while r.str(isz) is not None:
            pass
        r.take(1 + osz)
        if desc == "TABLE DATA":
            tags[dump_id] = f"{namespace}.{tag}"
    head = data[: r.pos]
    blocks = []
    while r.pos < len(data):
        assert r.take(1) == b"\x01"
        dump_id = r.int(isz)
        parts = []
        while True:
            n = r.int(isz)
            if n == 0:
                break
            parts.append(r.take(n))
        blocks.append((dump_id, b"".join(parts)))
    return Dump(head, isz, blocks, tags)


def _int(value: int, size: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(size, "little")


def write(dump: Dump, chunker) -> bytes:
    """The dump again, each block's data cut by `chunker(data) -> list[bytes]`."""
    out = [dump.head]
    for dump_id, data in dump.blocks:
        out.append(b"\x01" + _int(dump_id, dump.int_size))
        for piece in chunker(data):
            assert piece
            out.append(_int(len(piece), dump.int_size) + piece)
        out.append(_int(0, dump.int_size))
    return b"".join(out)


def per_row(data: bytes) -> list[bytes]:
    """pg_dump 18's own layout: a chunk per row, then the end marker."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]] if data else []


def fixed(size: int):
    """Chunks of `size` bytes whatever the row boundaries (rows cut across chunks)."""
    return lambda data: [data[i : i + size] for i in range(0, len(data), size)]


def replace_block(dump: Dump, table: str, data: bytes) -> Dump:
    """The same dump with `table`'s COPY data replaced."""
    ids = [i for i, t in dump.tags.items() if t == table]
    assert ids, table
    return Dump(dump.head, dump.int_size, [(i, data if i == ids[0] else d) for i, d in dump.blocks], dump.tags)
