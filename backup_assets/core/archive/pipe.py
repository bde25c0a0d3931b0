"""Archive → decode_archive → a PostgreSQL client program's stdin: the one pipe.

verify (`pg_restore --list`), the restore drill and restore into an empty database
(`pg_restore --single-transaction -d ...`), the isolation scan and `restore --replace`
(`pg_restore --data-only -f -`) all run a child that reads the decoded dump on its stdin. They do
it through `ArchivePipe`:

    with ArchivePipe(args, source, keyring, expect_tenant_id=..., stdout=subprocess.PIPE) as pipe:
        ... read pipe.stdout (or nothing) ...
    outcome = pipe.outcome   # header, stats, decode_error, exit code, stderr (one line)

- The archive is decoded in a thread, segment by segment, straight into the child's stdin: memory
  stays bounded whatever the archive's size, and the decoded dump never touches the disk.
- Fail closed: when decoding fails (tampering, truncation, wrong key or tenant) the child is
  killed BEFORE its stdin reaches EOF, so it never sees a complete (committable) stream. When the
  body of the `with` raises, the child is killed and decoding stops.
- A child that closes its stdin early (`pg_restore --list` reads only the TOC) is not an error:
  the rest is decoded and discarded, so every segment is still authenticated and a hashing source
  still covers the whole file.
- The child's stderr goes to a temporary file; `outcome.stderr` is its first bytes on one line,
  passed through `scrub` (e.g. a session's password remover).

`decode_error` is not raised: callers turn it into their own result or error.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import IO, BinaryIO, Callable, Sequence

from ..codec.format import ArchiveHeader, DecodeStats, decode_archive
from ..codec.keyring import Keyring
from ..errors import first_error, one_line
from ..source.session import child_env

IO_CHUNK = 1 << 20
STDERR_LIMIT = 2000


class HashingReader:
    """Wraps a binary file: hashes and counts every byte read through it."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        if data:
            self._sha.update(data)
            self.count += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the rest of the file."""
        while self.read(IO_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class PipeAborted(Exception):
    """Raised into decode_archive by an aborted PipeSink: the pipe's user gave up (not an archive error)."""


class PipeSink:
    """File-like sink feeding a child's stdin; once the child closed its end, the rest is dropped.
    After `abort()`, writing raises PipeAborted (stops the decoder)."""

    def __init__(self, pipe: BinaryIO | None):
        self._pipe = pipe
        self.closed_early = pipe is None
        self.aborted = False

    def write(self, data) -> int:
        if self.aborted:
            raise PipeAborted
        if not self.closed_early:
            view = memoryview(data)
            try:
                while view:
                    n = self._pipe.write(view)
                    view = view[n:] if n is not None else view[len(view) :]
            except (BrokenPipeError, ConnectionResetError, ValueError):  # ValueError: closed under us
                self.closed_early = True
        return len(data)

    def flush(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        if self._pipe is not None and not self._pipe.closed:
            try:
                self._pipe.close()
            except (BrokenPipeError, ConnectionResetError):
                pass


@dataclass
class PipeOutcome:
    header: ArchiveHeader | None  # None when decoding failed
    stats: DecodeStats | None
    decode_error: BaseException | None  # ArchiveError (the archive) or another error while decoding
    code: int  # the child's exit status (negative: killed by that signal)
    stderr: str  # the child's stderr, one line, at most STDERR_LIMIT characters, scrubbed

    @property
    def decoded(self) -> bool:
        return self.decode_error is None

    @property
    def ok(self) -> bool:
        return self.decode_error is None and self.code == 0

    def child_failure(self, what: str) -> str:
        """`<what> failed (exit N): <stderr>`, the uniform report of a failed child."""
        return f"{what} failed (exit {self.code}): {self.stderr or 'no message'}"


class ArchivePipe:
    """Runs `args` with the decoded archive read from `source` on its stdin; see the module docstring.

    stdout: subprocess.DEVNULL (default), subprocess.PIPE (then read `self.stdout` in the body) or a
    file. env: the child's environment (default child_env()). wait_timeout: seconds to wait for the
    child once its stdin is closed before it is killed (a check must never hang)."""

    def __init__(
        self,
        args: Sequence[str],
        source: BinaryIO,
        keyring: Keyring,
        *,
        expect_tenant_id: str | None = None,
        env: dict[str, str] | None = None,
        stdout: int | IO = subprocess.DEVNULL,
        scrub: Callable[[str], str] = one_line,
        wait_timeout: float | None = None,
        name: str = "archive-pipe",
    ):
        self._args = list(args)
        self._source = source
        self._keyring = keyring
        self._expect = expect_tenant_id
        self._env = child_env() if env is None else env
        self._stdout = stdout
        self._scrub = scrub
        self._wait_timeout = wait_timeout
        self._name = name
        self._result: tuple[ArchiveHeader, DecodeStats] | None = None
        self._decode_error: BaseException | None = None
        self.proc: subprocess.Popen | None = None
        self.outcome: PipeOutcome | None = None

    @property
    def stdout(self) -> BinaryIO:
        return self.proc.stdout

    def __enter__(self) -> "ArchivePipe":
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                self._args, stdin=subprocess.PIPE, stdout=self._stdout, stderr=self._err, env=self._env, bufsize=0
            )
        except BaseException:
            self._err.close()
            raise
        self._sink = PipeSink(self.proc.stdin)
        self._feeder = threading.Thread(target=self._feed, name=self._name, daemon=True)
        self._feeder.start()
        return self

    def _feed(self) -> None:
        try:
            self._result = decode_archive(
                self._source, self._sink, keyring=self._keyring, expect_tenant_id=self._expect
            )
        except PipeAborted:
            self._kill()
        except BaseException as exc:  # noqa: BLE001 - reported through the outcome
            self._decode_error = exc
            self._kill()  # before EOF reaches it: nothing of a bad archive may commit
        finally:
            self._sink.close()

    def _kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def __exit__(self, exc_type, exc, tb) -> bool:
        proc = self.proc
        try:
            if exc_type is not None:
                self._sink.abort()
                self._kill()
            if proc.stdout is not None:
                proc.stdout.close()  # a child still writing gets EPIPE rather than blocking us
            self._feeder.join()
            try:
                code = proc.wait(timeout=self._wait_timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                code = proc.wait()
            self._err.seek(0)
            # The child's first error line first: the cause, not the hints or progress printed before it.
            raw = self._err.read(STDERR_LIMIT * 2).decode("utf-8", "replace")
            stderr = self._scrub(first_error(raw))[:STDERR_LIMIT]
        finally:
            self._err.close()
        header, stats = self._result if self._result is not None else (None, None)
        self.outcome = PipeOutcome(header, stats, self._decode_error, code, stderr)
        return False
