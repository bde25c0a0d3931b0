"""File helpers: write-then-rename (a failure never leaves a file that looks complete under the final
name), fsync of a directory, SHA-256 of a file; an OS error that retrying cannot fix, as one line."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import LocalWriteError

TEMP_MARK = ".tmp-"
CHUNK = 1 << 20  # streaming buffer: memory use does not grow with the file


def check_output_path(path: Path) -> Path:
    """Fail before any work if the output cannot be written: missing directory, or a directory
    (LocalWriteError: a local file that cannot be written, exit code 8, as README "Exit codes" says)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise LocalWriteError(f"output directory {parent} does not exist")
    if path.is_dir():
        raise LocalWriteError(f"output path {path} is a directory")
    if not os.access(parent, os.W_OK):
        raise LocalWriteError(f"output directory {parent} is not writable")
    return path


def fsync_dir(directory: Path) -> None:
    """fsync a directory: a rename or a new file in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


@contextmanager
def atomic_output(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a temporary file beside `path`; on success fsync, rename over `path`, fsync the dir.

    On any exception the temporary file is removed and nothing appears under `path`.
    """
    path = check_output_path(path)
    temp = path.with_name(f"{path.name}{TEMP_MARK}{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
        raise


# Errors of writing a local file that stay until someone acts (frees space, remounts, fixes modes):
# retrying the step minutes later cannot help. EIO, EAGAIN, EINTR and the like are not here.
PERMANENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC",  # no space left on device
        "EDQUOT",  # disk quota exceeded
        "EROFS",  # read-only file system
        "EACCES",  # permission denied
        "EPERM",  # operation not permitted
        "EFBIG",  # file too large
        "ENAMETOOLONG",
        "ENOTDIR",
        "EISDIR",
    )
    if hasattr(errno, name)
)


def os_error_line(exc: OSError, path: object = None) -> str:
    """`no space left on device: /path/to/file`: the OS's reason, then the file (the error's own
    filename, else `path`)."""
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    reason = reason[:1].lower() + reason[1:]
    where = exc.filename if exc.filename is not None else path
    return f"{reason}: {os.fsdecode(where)}" if where is not None else reason


def permanent_os_error(exc: BaseException) -> OSError | None:
    """The OSError with a permanent errno (PERMANENT_ERRNOS) that `exc` is or was raised from or while
    handling (its __cause__ / __context__ chain: a storage error raised `from None` still keeps the
    OSError as its context), or None."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in PERMANENT_ERRNOS:
            return current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None


def local_write_error(exc: BaseException, path: object = None) -> LocalWriteError | None:
    """LocalWriteError(`<reason>: <file>`) when `exc` comes from an OS error retrying cannot fix
    (permanent_os_error); `path`: the file being written, when the OS error does not name it (a
    failed write() names no file). None otherwise."""
    cause = permanent_os_error(exc)
    return LocalWriteError(os_error_line(cause, path)) if cause is not None else None
