"""Local-disk location: files 0600, directories 0700, every write atomic and durable.

Write = temporary file in the same directory + fsync(file) + rename + fsync(directory), so after a
crash a key is either absent or whole. The archive's SHA-256 is kept in a sidecar file
(`archive-<16 hex>.tbk.sha256`) because extended attributes are not available on every filesystem;
both are named after the archive's digest, so a sidecar never describes other bytes than its archive's
name says (the crash of issue 24: a new digest beside the old archive). Hidden temporary files a killed
write left are garbage once older than the grace period (_unfinished).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .. import crashpoints
from ..errors import LocalWriteError, NotFound, PermanentStorageError, TenantBackupError, TransientStorageError
from ..files import PERMANENT_ERRNOS, fsync_dir, os_error_line
from .base import CHUNK, ObjectLocation
from .garbage import Garbage
from .registry import LocationKind, LocationSettings, Variable

_SIDE = ".sha256"


def _oserror(exc: OSError, what: str):
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what}: not found")
    # A full disk, a quota, a read-only mount stay until someone acts: not retried, named as such.
    if exc.errno in PERMANENT_ERRNOS:
        return LocalWriteError(f"{os_error_line(exc, what)}")
    # An I/O hiccup can clear up.
    if exc.errno in (errno.EIO, errno.EAGAIN, errno.EINTR):
        return TransientStorageError(f"{what}: {exc.strerror}")
    return PermanentStorageError(f"{what}: {exc.strerror or exc}")


class LocalLocation(ObjectLocation):
    name = "local"

    def __init__(self, root: str | Path, *, prefix: str = "", retention_days: int = 30):
        super().__init__(prefix=prefix, retention_days=retention_days)
        self.root = Path(root).expanduser().absolute()

    def _path(self, key: str) -> Path:
        return self.root / key

    def _key_uri(self, key: str) -> str:
        return self._path(key).as_uri() if key else self.root.as_uri()

    def _mkdirs(self, d: Path) -> None:
        # mkdir(mode=) is subject to the umask; chmod makes 0700 exact for the dirs we create.
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            try:
                p.mkdir(mode=0o700)
            except FileExistsError:
                continue  # a concurrent put for the same tenant created it
            os.chmod(p, 0o700)
            fsync_dir(p.parent)

    def _write_temp(self, key: str, writer) -> str:
        """The bytes `writer` writes, in a hidden temporary file beside the key's path, fsynced: its
        path. Nothing is left behind when it fails."""
        dest = self._path(key)
        try:
            self._mkdirs(dest.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        except OSError as exc:
            raise _oserror(exc, self._key_uri(key)) from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as exc:
            _unlink(tmp)
            if isinstance(exc, OSError):
                raise _oserror(exc, self._key_uri(key)) from None
            raise
        return tmp

    def _commit(self, tmp: str, key: str) -> None:
        """Rename a _write_temp file into place and make the rename durable."""
        dest = self._path(key)
        try:
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException as exc:
            _unlink(tmp)
            if isinstance(exc, OSError):
                raise _oserror(exc, self._key_uri(key)) from None
            raise

    def _atomic_write(self, key: str, writer) -> None:
        self._commit(self._write_temp(key, writer), key)

    def _put_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        def copy(f):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, CHUNK)

        # The archive's bytes first, under a hidden temporary name; then its checksum sidecar; then
        # the archive's rename. An archive never stands without its checksum (stat() would fail),
        # and a failed attempt (a full disk) leaves no sidecar behind: one without its archive never
        # lists, so nothing would ever remove it.
        side = self._path(key + _SIDE)
        try:
            previous = side.read_bytes()  # a retried put of the same backup id replaces its own
        except OSError:
            previous = None
        try:
            tmp = self._write_temp(key, copy)
        except BaseException:
            _remove_if_empty(side.parent)
            raise
        crashpoints.reached("local.archive_temp")
        try:
            self._atomic_write(key + _SIDE, lambda f: f.write(f"{sha256}\n".encode()))
            crashpoints.reached("local.sidecar")
            self._commit(tmp, key)
        except BaseException:
            _unlink(tmp)
            if not self._path(key).exists():
                if previous is None:
                    _unlink(side)
                else:
                    try:
                        self._atomic_write(key + _SIDE, lambda f: f.write(previous))
                    except TenantBackupError:
                        _unlink(side)  # no sidecar rather than a wrong one: stat() then refuses the copy
            _remove_if_empty(side.parent)
            raise

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def _get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise _oserror(exc, self._key_uri(key)) from None

    def _head(self, key: str) -> tuple[int, str | None]:
        p = self._path(key)
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise _oserror(exc, self._key_uri(key)) from None
        try:
            sha = (self.root / (key + _SIDE)).read_text().strip() or None
        except FileNotFoundError:
            sha = None
        return size, sha

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")
        except OSError as exc:
            raise _oserror(exc, self._key_uri(key)) from None
        with f:
            while chunk := f.read(CHUNK):
                yield chunk

    def _list(self, prefix: str) -> Iterator[tuple[str, datetime | None]]:
        base = self._path(prefix.rstrip("/")) if prefix.endswith("/") else self._path(prefix)
        if not base.is_dir():
            return
        # os.scandir and string keys: a listing of every backup (status, list, prune) visits each
        # object once, and a Path per object cost most of it at 10,000 tenants (bench/ops.py).
        skip = len(str(self.root)) + 1
        folders = [str(base)]
        while folders:
            try:
                entries = os.scandir(folders.pop())
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed meanwhile (a concurrent prune)
            with entries:
                for entry in entries:
                    if entry.is_dir():  # as os.walk: a link to a folder is not followed
                        if not entry.is_symlink():
                            folders.append(entry.path)
                        continue
                    if entry.name.startswith("."):
                        continue  # temporary files of writes in progress (or interrupted ones)
                    key = entry.path[skip:]
                    if key.startswith(prefix):
                        try:
                            mtime = datetime.fromtimestamp(entry.stat().st_mtime, timezone.utc)
                        except FileNotFoundError:
                            continue
                        yield key, mtime

    def delete(self, tenant_id: str, backup_id: str) -> None:
        super().delete(tenant_id, backup_id)
        # Hidden temporary files of killed writes of this backup (any archive name), then the folder.
        d = self._path(self.backup_prefix(tenant_id, backup_id))
        if d.is_dir():
            for leftover in d.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
            _remove_if_empty(d)

    def _unfinished(self, survey=None) -> Iterator[Garbage]:
        """Hidden temporary files of killed writes in the backup folders (tenants/<t>/<b>/.*.tmp)."""
        base = self._path(self._root().rstrip("/"))
        if not base.is_dir():
            return
        for tmp in base.glob("*/*/.*.tmp"):
            try:
                st = tmp.stat()
            except FileNotFoundError:
                continue
            key = tmp.relative_to(self.root).as_posix()
            when = datetime.fromtimestamp(st.st_mtime, timezone.utc)
            yield Garbage(self.name, key, self._key_uri(key), st.st_size, when, "temporary file")

    def _delete(self, key: str) -> None:
        p = self._path(key)
        for q in (p, self.root / (key + _SIDE)):
            try:
                q.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _oserror(exc, self._key_uri(key)) from None
        # Drop temporaries left by an interrupted write of this key, and the backup dir once empty.
        d = p.parent
        if not d.is_dir():
            return
        for leftover in d.glob(f".{p.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
        try:
            d.rmdir()  # fails while the other file of the backup is still there: fine
            fsync_dir(d.parent)
        except OSError:
            fsync_dir(d)


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_if_empty(directory: Path) -> None:
    """The backup's folder, when a failed put left it empty (a tenant's folder stays)."""
    try:
        directory.rmdir()
    except OSError:
        pass


def _build(settings: LocationSettings) -> LocalLocation:
    return LocalLocation(
        settings["TENANT_BACKUP_LOCAL_DIR"], prefix=settings.prefix, retention_days=settings.retention_days
    )


KIND = LocationKind(
    name="local",
    display_name="Local disk",
    description="a directory on this machine (another disk than the database's)",
    variables=(Variable("TENANT_BACKUP_LOCAL_DIR", "local root directory (created 0700; files 0600)", required=True),),
    retention_days=30,
    build=_build,
    restore_order=10,
    ui_kind="local",
)
