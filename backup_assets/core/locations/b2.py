"""Backblaze B2 location via b2sdk (native API).

B2 requires SHA-1 (b2sdk computes it, per part for large files); our SHA-256 goes in the file info
(`sha256`) so stat() needs no download. Above the large-file threshold b2sdk uses the large-file API
(b2_start_large_file / b2_upload_part / b2_finish_large_file), reading parts from disk as streams.
B2 keeps versions: delete() removes every version of both files, and cancels unfinished large
files an interrupted put left behind.

b2sdk's own HTTP retries are generous (20 tries with growing sleeps for data); they are bounded here
(tries, connect/read timeouts) so that a dead endpoint is a clear error in seconds and the
RetryingLocation wrapper is the one place that retries whole operations.

Only b2sdk's public API (b2sdk.v2) is used. b2sdk has no setting for its HTTP retry count, so the
bound is one override of a public method: B2Http.request(), through which every HTTP call of b2sdk
passes, gets its try_count capped (B2Api.SESSION_CLASS -> B2Session.B2HTTP_CLASS -> our B2Http
subclass, the documented way to swap the HTTP layer); the timeouts are B2Http's class constants and
uploads' own retry loop is UploadManager.MAX_UPLOAD_ATTEMPTS. What that relies on (the signature of
request(), that every call goes through it, the constants) is pinned by
tests/test_b2_sdk_contract.py: it fails with a message naming what changed when b2sdk is upgraded
(docs/STORAGE.md, "Upgrading b2sdk").
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .. import crashpoints
from ..errors import CorruptObject, NotFound, PermanentStorageError, StorageError, TransientStorageError, one_line
from .base import CHUNK, ObjectLocation
from .garbage import Folder, Garbage, Survey, folder_key
from .registry import LocationKind, LocationSettings, Variable

SHA256_INFO = "sha256"


def _line(msg: str) -> str:
    """User-facing errors are one line (b2sdk joins retried exceptions with newlines)."""
    return one_line(msg)


def _bounded_api_class(tries: int, connect_timeout: float, read_timeout: float):
    """A b2sdk.v2.B2Api whose HTTP layer makes at most `tries` attempts per request, with our timeouts."""
    from b2sdk.v2 import B2Api, B2Http, B2Session

    class BoundedB2Http(B2Http):
        CONNECTION_TIMEOUT = connect_timeout
        TIMEOUT = read_timeout
        TIMEOUT_FOR_UPLOAD = read_timeout
        # b2sdk sends every JSON API call (b2_authorize_account, b2_list_*, ...) with the server-side
        # copy timeout, 20 minutes by default; we never copy server-side.
        TIMEOUT_FOR_COPY = read_timeout

        def request(self, method, url, headers, data=None, try_count=B2Http.TRY_COUNT_DATA, params=None, **kw):
            # b2sdk passes 5 (API calls, HEAD) or 20 (data) tries, sleeping 1 s, 1.5 s, 2.25 s, ...
            # between them: capped, a dead endpoint fails in seconds, not minutes.
            return super().request(method, url, headers, data, max(1, min(try_count, tries)), params, **kw)

    class BoundedB2Session(B2Session):
        B2HTTP_CLASS = staticmethod(BoundedB2Http)

    class BoundedB2Api(B2Api):
        SESSION_CLASS = staticmethod(BoundedB2Session)

    for cls in (BoundedB2Http, BoundedB2Session, BoundedB2Api):
        cls.__module__ = __name__
    return BoundedB2Api


def _uploaded(ms: int | None) -> datetime | None:
    """B2's upload timestamp (ms since the epoch) as an aware datetime; None when B2 gives none."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc) if ms else None


class B2Location(ObjectLocation):
    name = "b2"

    def __init__(
        self,
        key_id: str,
        key: str,
        bucket: str,
        *,
        realm: str = "production",
        prefix: str = "",
        retention_days: int = 365,
        part_size: int | None = None,
        upload_workers: int = 4,
        tries: int = 3,
        connect_timeout: float = 5,
        read_timeout: float = 60,
    ):
        super().__init__(prefix=prefix, retention_days=retention_days)
        self.bucket_name = bucket
        self.realm = realm or "production"
        self.part_size = part_size
        self._key_id, self._key = key_id, key
        self._api_cls = _bounded_api_class(tries, connect_timeout, read_timeout)
        self._upload_workers = upload_workers
        self._tries = tries
        self._bucket = None  # authorized lazily: constructing a location does no network I/O
        self._lock = threading.Lock()

    def _key_uri(self, key: str) -> str:
        return f"b2://{self.bucket_name}/{key}"

    # -- connection & errors -----------------------------------------------------------------------
    def _b(self):
        if self._bucket is not None:
            return self._bucket
        with self._lock:  # concurrent first uses (one thread per tenant) authorize once
            return self._authorize()

    def _authorize(self):
        if self._bucket is None:
            from b2sdk.v2 import InMemoryAccountInfo

            api = self._api_cls(InMemoryAccountInfo(), max_upload_workers=self._upload_workers, max_download_workers=2)
            api.services.upload_manager.MAX_UPLOAD_ATTEMPTS = self._tries  # each with HTTP try_count 1
            try:
                api.authorize_account(realm=self.realm, application_key_id=self._key_id, application_key=self._key)
                self._bucket = api.get_bucket_by_name(self.bucket_name)
            except Exception as exc:
                raise self._err(exc, None) from None
        return self._bucket

    def _err(self, exc: Exception, key: str | None) -> StorageError:
        from b2sdk.v2 import exception as e

        what = self._key_uri(key) if key else f"b2://{self.bucket_name}"
        if isinstance(exc, StorageError):
            return exc
        # v2's BucketIdNotFound is a v2-only subclass; b2sdk raises the base, exported as v3BucketIdNotFound.
        if isinstance(exc, (e.NonExistentBucket, e.v3BucketIdNotFound)):
            return PermanentStorageError(f"b2: bucket {self.bucket_name!r} does not exist (realm {self.realm})")
        if isinstance(exc, e.FileNotPresent):
            return NotFound(f"{what}: not found")
        if isinstance(exc, (e.Unauthorized, e.AccessDenied)):
            return PermanentStorageError(
                f"b2: credentials rejected by {self.realm}: check B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY"
            )
        if isinstance(exc, (e.ChecksumMismatch, e.FileSha1Mismatch, e.TruncatedOutput)):
            return CorruptObject(f"{what}: {exc}")
        if isinstance(exc, e.MaxRetriesExceeded):
            last = exc.exception_info_list[-1] if getattr(exc, "exception_info_list", None) else exc
            return TransientStorageError(_line(f"{what}: upload failed after {self._tries} attempts ({last})"))
        if isinstance(exc, e.AlreadyFailed):  # a sibling part failed first; that failure is the cause
            return TransientStorageError(_line(f"{what}: large-file upload failed ({exc})"))
        if isinstance(exc, e.B2ConnectionError):
            return TransientStorageError(f"b2: cannot connect to {self.realm}")
        if isinstance(
            exc,
            (
                e.ServiceError,
                e.TooManyRequests,
                e.RequestTimeout,
                e.B2RequestTimeout,
                e.UnknownError,
                e.ConnectionReset,
                e.PartSha1Mismatch,
            ),
        ):
            return TransientStorageError(_line(f"{what}: {exc}"))
        try:
            import requests

            if isinstance(exc, requests.RequestException):
                return TransientStorageError(f"{what}: connection failed ({type(exc).__name__})")
        except ImportError:  # pragma: no cover
            pass
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return TransientStorageError(f"{what}: connection failed ({type(exc).__name__})")
        if isinstance(exc, e.B2Error):
            return PermanentStorageError(_line(f"{what}: {exc}"))
        return PermanentStorageError(_line(f"{what}: {type(exc).__name__}: {exc}"))

    def _run(self, key: str | None, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as exc:
            raise self._err(exc, key) from None

    # -- primitives --------------------------------------------------------------------------------
    def _put_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        self._upload_file(key, path, sha256)
        # Older versions of this name (an earlier put of the same backup id) must not linger.
        crashpoints.reached("b2.old_versions")
        self._delete_versions(key, keep_newest=True)

    def _put_new_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        self._upload_file(key, path, sha256)  # a name that held nothing: no older version to list

    def _upload_file(self, key: str, path: Path, sha256: str) -> None:
        b = self._b()
        kw = {"min_part_size": self.part_size} if self.part_size else {}
        if crashpoints.armed():  # a kill test: stop the process with the upload open
            kw["progress_listener"] = _crash_listener()
        self._run(
            key,
            b.upload_local_file,
            str(path),
            key,
            content_type="application/octet-stream",
            file_info={SHA256_INFO: sha256},
            **kw,
        )

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._put_new_bytes(key, data)
        crashpoints.reached("b2.old_versions")
        self._delete_versions(key, keep_newest=True)

    def _put_new_bytes(self, key: str, data: bytes) -> None:
        self._run(key, self._b().upload_bytes, data, key, content_type="application/json")

    def _get_bytes(self, key: str) -> bytes:
        return b"".join(self._iter_chunks(key))

    def _head(self, key: str) -> tuple[int, str | None]:
        b = self._b()
        v = self._run(key, b.get_file_info_by_name, key)
        return int(v.size), (v.file_info or {}).get(SHA256_INFO)

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        with self._opened(key) as (_size, _sha, chunks):
            yield from chunks

    def _chunks(self, key: str, resp) -> Iterator[bytes]:
        try:
            for chunk in resp.iter_content(CHUNK):
                yield chunk
        except Exception as exc:
            raise self._err(exc, key) from None

    @contextmanager
    def _opened(self, key: str):
        """One download: its response carries what get_file_info_by_name would (size, file info)."""
        b = self._b()
        dl = self._run(key, b.download_file_by_name, key)
        resp = dl.response
        try:
            version = dl.download_version
            sha = (version.file_info or {}).get(SHA256_INFO)
            yield int(version.size), sha, self._chunks(key, resp)
        finally:
            resp.close()

    def _list(self, prefix: str) -> Iterator[tuple[str, datetime | None]]:
        b = self._b()
        try:
            for fv, _folder in b.ls(prefix, recursive=True):
                ts = _uploaded(fv.upload_timestamp)
                yield fv.file_name, ts
        except Exception as exc:
            raise self._err(exc, None) from None

    def _versions(self, key: str):
        b = self._b()
        try:
            return [v for v in b.list_file_versions(key) if v.file_name == key]
        except Exception as exc:
            raise self._err(exc, key) from None

    def _delete_versions(self, key: str, keep_newest: bool = False) -> None:
        versions = self._versions(key)  # newest first
        if keep_newest:
            versions = versions[1:]
        for v in versions:
            try:
                self._b().delete_file_version(v.id_, v.file_name)
            except Exception as exc:
                err = self._err(exc, key)
                if not isinstance(err, NotFound):  # deleted concurrently: fine
                    raise err from None

    def _delete(self, key: str) -> None:
        self._delete_versions(key)

    def delete(self, tenant_id: str, backup_id: str) -> None:
        super().delete(tenant_id, backup_id)
        # Unfinished large files (an interrupted put) are invisible to listings but cost storage.
        for uf in self._large_files(self.backup_prefix(tenant_id, backup_id)):
            self.remove_garbage(uf)

    def _large_files(self, prefix: str) -> list[Garbage]:
        """Unfinished large files under prefix, with when they were started and their parts' bytes.
        The raw call (B2Session, public in b2sdk.v2): b2sdk's UnfinishedLargeFile drops uploadTimestamp."""
        b = self._b()
        out, start = [], None
        try:
            while True:
                resp = b.api.session.list_unfinished_large_files(b.id_, start_file_id=start, prefix=prefix)
                for f in resp.get("files", []):
                    size = sum(int(part.content_length) for part in b.list_parts(f["fileId"]))
                    when = _uploaded(f.get("uploadTimestamp"))
                    name = f["fileName"]
                    out.append(
                        Garbage(self.name, name, self._key_uri(name), size, when, "unfinished upload", f["fileId"])
                    )
                start = resp.get("nextFileId")
                if not start:
                    return out
        except Exception as exc:
            err = self._err(exc, prefix)
            if isinstance(err, NotFound):
                return out
            raise err from None

    def survey(self) -> Survey:
        """One listing of every version (b2_list_file_versions, newest first per name): the backup
        folders from each name's newest, and the older versions beside them (a put killed between
        its upload and the removal of the older versions), where a listing of names and then one of
        versions would read the whole bucket twice. A "start" entry is an unfinished large file,
        not a version (_large_files); a name whose newest is "hide" is not listed, as by b2_list_file_names."""
        b = self._b()
        found: dict[tuple[str, str], Folder] = {}
        older: list[Garbage] = []
        seen: set[str] = set()
        try:
            for fv, _folder in b.ls(self._root(), latest_only=False, recursive=True):
                if fv.action == "start":
                    continue
                ts = _uploaded(fv.upload_timestamp)
                if fv.file_name in seen:
                    uri = self._key_uri(fv.file_name)
                    older.append(Garbage(self.name, fv.file_name, uri, int(fv.size or 0), ts, "older version", fv.id_))
                    continue
                seen.add(fv.file_name)
                where = folder_key(self, fv.file_name) if fv.action == "upload" else None
                if where is not None:
                    found.setdefault(where[:2], Folder()).names[where[2]] = ts
        except Exception as exc:
            raise self._err(exc, None) from None
        return Survey(self.name, found, older)

    def _unfinished(self, survey: Survey | None = None):
        """Unfinished large files, and the older versions of names (from `survey`'s listing)."""
        yield from self._large_files(self._root())
        if survey is None or survey.older is None:
            survey = self.survey()
        yield from survey.older

    def remove_garbage(self, item: Garbage) -> None:
        if item.what not in ("unfinished upload", "older version"):
            return super().remove_garbage(item)
        b = self._b()
        try:
            if item.what == "unfinished upload":
                b.cancel_large_file(item.handle)
            else:
                b.delete_file_version(item.handle, item.key)
        except Exception as exc:
            err = self._err(exc, item.key)
            if not isinstance(err, NotFound):  # gone already
                raise err from None


def _crash_listener():
    """A b2sdk progress listener reporting upload progress to core/crashpoints.py (kill tests only)."""
    from b2sdk.v2 import AbstractProgressListener

    class CrashListener(AbstractProgressListener):
        def set_total_bytes(self, total_byte_count):
            pass

        def bytes_completed(self, byte_count):
            crashpoints.reached("upload.progress")

    return CrashListener()


def _build(settings: LocationSettings) -> B2Location:
    part_mb = settings["TENANT_BACKUP_B2_PART_SIZE_MB"]
    return B2Location(
        settings["B2_APPLICATION_KEY_ID"],
        settings["B2_APPLICATION_KEY"],
        settings["B2_BUCKET"],
        realm=settings["B2_REALM"],
        prefix=settings.prefix,
        retention_days=settings.retention_days,
        part_size=part_mb * 1024 * 1024 or None,
    )


KIND = LocationKind(
    name="b2",
    display_name="Backblaze B2",
    description="a B2 bucket over the native API (b2sdk)",
    variables=(
        Variable("B2_APPLICATION_KEY_ID", "B2 application key id", required=True, secret=True),
        Variable("B2_APPLICATION_KEY", "B2 application key", required=True, secret=True),
        Variable("B2_BUCKET", "bucket name", required=True),
        Variable(
            "B2_REALM",
            "B2 realm: `production`, or a URL (the loopback test server)",
            default="production",
            locates=True,
        ),
        Variable(
            "TENANT_BACKUP_B2_PART_SIZE_MB",
            "large-file minimum part size (0: B2's recommendation)",
            default=0,
            type=int,
            minimum=0,
        ),
    ),
    retention_days=365,
    build=_build,
    restore_order=30,
    ui_kind="backblaze",
    short_name="B2",
)
