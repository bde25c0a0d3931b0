"""Reading pg_restore's SQL script output (`pg_restore --data-only -f -`): lines outside COPY blocks,
and each COPY block's data as a file-like in large pieces (fed to COPY FROM STDIN)."""

from __future__ import annotations

import re
from typing import BinaryIO

from ..errors import RestoreError

CHUNK = 1 << 20


class ScriptReader:
    """Reads pg_restore's SQL script output: lines outside COPY blocks, data blocks in large pieces."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._buf = b""
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._raw.read(CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def readline(self) -> bytes | None:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 1 :]
                return line
            if not self._fill():
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line
                return None

    def block(self) -> "CopyBlock":
        return CopyBlock(self)


class CopyBlock:
    """File-like over one COPY data block (text format): whole lines up to the `\\.` line, which is
    consumed. Data lines never are `\\.` (COPY escapes backslashes), so the terminator is exact."""

    def __init__(self, reader: ScriptReader):
        self._r = reader
        self.done = False
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        r = self._r
        while not self.done:
            if r._buf.startswith(b"\\.\n") or (r._eof and r._buf in (b"\\.", b"\\.\n")):
                r._buf = r._buf[3:]
                self.done = True
                break
            i = r._buf.find(b"\n\\.\n")
            if i >= 0:
                out, r._buf = r._buf[: i + 1], r._buf[i + 1 :]
                self.bytes += len(out)
                return out
            k = r._buf.rfind(b"\n")
            if k >= 0 and (len(r._buf) >= CHUNK or r._eof):
                out, r._buf = r._buf[: k + 1], r._buf[k + 1 :]
                self.bytes += len(out)
                return out
            if not r._fill() and r._eof and r._buf.rfind(b"\n") < 0:
                raise RestoreError("pg_restore output ended inside a COPY block")
        return b""

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


DATA_COMMENT = re.compile(r"-- Data for Name: (.*); Type: TABLE DATA; Schema: (.*); Owner: ")
