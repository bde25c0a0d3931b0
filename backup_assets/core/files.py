"""File helpers: write-then-rename (a failure never leaves a file that looks complete under the final
name), fsync of a directory, SHA-256 of a file."""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import TenantBackupError

TEMP_MARK = ".tmp-"
CHUNK = 1 << 20  # streaming buffer: memory use does not grow with the file


def check_output_path(path: Path) -> Path:
    """Fail before any work if the output cannot be written: missing directory, or a directory."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TenantBackupError(f"output directory {parent} does not exist")
    if path.is_dir():
        raise TenantBackupError(f"output path {path} is a directory")
    if not os.access(parent, os.W_OK):
        raise TenantBackupError(f"output directory {parent} is not writable")
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
