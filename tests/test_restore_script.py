"""The reader of pg_restore's script output (core/restore/script.py): every COPY block's bytes exactly,
whatever sizes the pipe delivers them in, in time linear in the script's size."""

from __future__ import annotations

import io
import random
import time

import pytest

from backup_assets.core.errors import RestoreError
from backup_assets.core.restore.script import CHUNK, ScriptReader


class Trickle(io.RawIOBase):
    """A pipe that hands out at most `pieces` bytes per read (random sizes up to it)."""

    def __init__(self, data: bytes, pieces: int, seed: int = 0):
        self._data, self._pos, self._pieces, self._rng = data, 0, pieces, random.Random(seed)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        size = min(n if n >= 0 else len(self._data), self._rng.randint(1, self._pieces))
        out = self._data[self._pos : self._pos + size]
        self._pos += len(out)
        return out


def _script(blocks: list[list[bytes]]) -> bytes:
    out = [b"SET statement_timeout = 0;", b""]
    for n, rows in enumerate(blocks):
        out += [f"-- Data for Name: t{n}; Type: TABLE DATA; Schema: public; Owner: o".encode(), b""]
        out += [f"COPY public.t{n} (a, b) FROM stdin;".encode(), *rows, b"\\.", b""]
    out.append(b"SELECT pg_catalog.setval('s', 1, true);")
    return b"\n".join(out) + b"\n"


def _read_all(reader: ScriptReader) -> list[bytes]:
    blocks = []
    while (line := reader.readline()) is not None:
        if line.startswith(b"COPY "):
            block, data = reader.block(), []
            while piece := block.read(CHUNK):
                data.append(piece)
            blocks.append(b"".join(data))
    return blocks


@pytest.mark.parametrize("pieces", [1, 7, 4096, 65536, 3 * CHUNK])
def test_every_block_exactly_whatever_the_pipe_delivers(pieces):
    rng = random.Random(pieces)
    blocks = [
        [f"{i}\t{'x' * rng.randint(0, 300)}\\\\.\\n".encode() for i in range(rng.randint(0, 400))] for _ in range(6)
    ]
    got = _read_all(ScriptReader(Trickle(_script(blocks), pieces)))
    assert got == [b"".join(row + b"\n" for row in rows) for rows in blocks]


def test_a_block_cut_short_is_an_error():
    data = _script([[b"1\ta", b"2\tb"]])
    cut = data[: data.index(b"\\.")] + b"3\tpartial"
    reader = ScriptReader(Trickle(cut, 100))
    with pytest.raises(RestoreError, match="ended inside a COPY block"):
        _read_all(reader)


def test_linear_in_the_size_of_the_script():
    rows = [f"{i}\t{'y' * 100}".encode() for i in range(200_000)]  # ~21 MiB in one block
    data = _script([rows])
    t0 = time.perf_counter()
    (block,) = _read_all(ScriptReader(Trickle(data, 65536)))  # a pipe's 64 KiB reads
    elapsed = time.perf_counter() - t0
    assert len(block) == sum(len(r) + 1 for r in rows)
    assert elapsed < 2.0, f"{elapsed:.2f}s for 21 MiB"
