"""Reading pg_restore's SQL script output (`pg_restore --data-only -f -`): lines outside COPY blocks,
and each COPY block's data as a file-like in large pieces (fed to COPY FROM STDIN).

Linear in the script's size: the buffer is a bytearray consumed from the front, and a COPY block's
terminator is searched for only in the bytes not searched yet (a pipe delivers 64 KiB at a time;
re-scanning the whole buffer after each read made the 151 MiB sample tenant's load spend over a
second in `find`)."""

from __future__ import annotations

import re
from typing import BinaryIO

from ..errors import RestoreError

CHUNK = 1 << 20
_END = b"\n\\.\n"


class ScriptReader:
    """Reads pg_restore's SQL script output: lines outside COPY blocks, data blocks in large pieces."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._buf = bytearray()
        self._eof = False
        try:  # fewer, larger reads from the pipe (Linux; best effort)
            import fcntl

            fcntl.fcntl(raw.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
        except (ImportError, OSError, AttributeError, ValueError):
            pass

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
        scanned = 0
        while True:
            i = self._buf.find(b"\n", scanned)
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                return line
            scanned = len(self._buf)
            if not self._fill():
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                return None

    def block(self) -> "CopyBlock":
        return CopyBlock(self)


class CopyBlock:
    """File-like over one COPY data block (text format): whole lines up to the `\\.` line, which is
    consumed. Data lines never are `\\.` (COPY escapes backslashes), so the terminator is exact."""

    def __init__(self, reader: ScriptReader):
        self._r = reader
        self._scanned = 0  # bytes of the reader's buffer already searched for the terminator
        self.done = False
        self.bytes = 0

    def _take(self, n: int) -> bytes:
        buf = self._r._buf
        out = bytes(buf[:n])
        del buf[:n]
        self._scanned = 0
        self.bytes += n
        return out

    def read(self, n: int = -1) -> bytes:
        r = self._r
        while not self.done:
            buf = r._buf
            if buf.startswith(b"\\.\n") or (r._eof and buf in (b"\\.", b"\\.\n")):
                del buf[:3]
                self.done = True
                break
            i = buf.find(_END, max(0, self._scanned - len(_END) + 1))
            if i >= 0:
                return self._take(i + 1)  # the data up to the terminator line; next call ends the block
            self._scanned = len(buf)
            if len(buf) >= CHUNK or r._eof:
                k = buf.rfind(b"\n")
                if k >= 0:
                    return self._take(k + 1)
            if not r._fill() and r._eof and buf.rfind(b"\n") < 0:
                raise RestoreError("pg_restore output ended inside a COPY block")
        return b""

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


DATA_COMMENT = re.compile(r"-- Data for Name: (.*); Type: TABLE DATA; Schema: (.*); Owner: ")
