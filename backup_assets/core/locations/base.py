"""The storage interface every location implements, and the shared logic behind it.

Modelled on restic's backend: a small interface whose contract is stated here, one conformance
suite (tests/test_storage_conformance.py) that every location must pass, errors classified as
NotFound / TransientStorageError / PermanentStorageError / CorruptObject so that retrying is a
wrapper (retry.py) rather than code repeated in each backend.

Layout in every location (under an optional prefix):
    tenants/<tenant_id>/<backup_id>/archive.tbk
    tenants/<tenant_id>/<backup_id>/manifest.json     <- written LAST: its presence marks "complete"

Contract of the public methods (Location):
- put(tenant_id, backup_id, archive_path, manifest: Manifest) -> StoredObject
    Streams the archive (never whole in memory), then writes manifest.json (Manifest.to_json: the
    stored bytes). The archive's SHA-256 is computed from the file (beside the upload when the
    manifest states archive.sha256 and archive.size, before it otherwise); a mismatch with the manifest raises PermanentStorageError and removes the
    uploaded archive before any manifest is written, so nothing lists as complete. The SHA-256 is kept
    in the object's metadata so stat() can answer without reading the object. Overwriting an existing
    backup id replaces it (idempotent retry of the same put). If put fails, the backup does not list
    as complete.
- get(tenant_id, backup_id, dest_path) -> StoredObject
    Streams the archive to dest_path (via a temporary file + rename: a failed get leaves no partial
    dest_path), re-hashing on the way; a size or SHA-256 mismatch with the stored metadata raises
    CorruptObject. A missing archive or manifest raises NotFound.
- verify(tenant_id, backup_id, *, known_complete=False) -> StoredObject: like get() but discards the
    bytes. known_complete: the caller has just read the manifest (saves a request per copy check).
- get_manifest(tenant_id, backup_id) -> Manifest: NotFound if absent; CorruptObject if not JSON;
    ArchiveError (core/archive/manifest.py, the one parser) if not a manifest this version reads.
    Not authenticated here: readers go through core/archive/seal.py read_manifest.
- put_manifest(tenant_id, backup_id, manifest: Manifest): replace the manifest of a complete backup (NotFound
    otherwise) whose archive.sha256/size are the stored object's (PermanentStorageError otherwise):
    re-sealing (`verify --seal`, core/maintenance/sealing.py) rewrites the manifest, never the archive.
- stat(tenant_id, backup_id) -> StoredObject: size and SHA-256 from stored metadata, no download.
    NotFound unless the backup is complete (manifest present).
- list(tenant_id=None) -> list[BackupRef]: complete backups only (manifest present), sorted.
- incomplete(older_than) -> list[BackupRef]: what failed puts left (an archive, a local location's
    checksum sidecar, a verification record) without a manifest, none of it written after
    `older_than`; prune removes them with delete() (core/maintenance/retention.py).
- delete(tenant_id, backup_id): removes the manifest first (so the backup stops listing as complete
    at once), then the archive; every version where the store keeps versions (B2); deleting a
    missing backup is not an error (idempotent).
- uri(tenant_id, backup_id) -> str: where the archive lives, for humans and metadata.
- put_verified(tenant_id, backup_id, record, *, known_complete=False) / get_verified(tenant_id,
    backup_id) -> dict | None: the last verification of a copy, a small JSON beside the manifest
    (verified.json, core/maintenance/status.py), replaced by each put_verified; NotFound from put_verified unless
    the backup is complete (not asked again when known_complete);
    get_verified returns None when there is none (or it is not a JSON object). delete removes it.
Ids are validated before any path or key is built: tenant ids with validate_tenant_id, backup ids
with BACKUP_ID_RE (InvalidBackupId, exit code 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..archive.manifest import BACKUP_ID_RE, Manifest
from ..errors import ArchiveError, CorruptObject, InvalidBackupId, NotFound, PermanentStorageError, StorageError
from ..files import sha256_file  # noqa: F401 - re-exported (core.locations.sha256_file)
from ..source.tenant_ids import UUIDS, TenantIds

ARCHIVE_NAME = "archive.tbk"
MANIFEST_NAME = "manifest.json"
VERIFIED_NAME = "verified.json"  # optional: the last verification of this copy (core/maintenance/status.py)
CHUNK = 1024 * 1024  # streaming buffer: memory use does not grow with the archive
# BACKUP_ID_RE (core/archive/manifest.py): letters, digits, '.', '_', '-'; starts alphanumeric; no '..'
# (checked separately). Enough for timestamps and ULIDs/UUIDs, never a path separator.


def validate_backup_id(raw: str) -> str:
    """The id as given, or InvalidBackupId (bad input, exit code 2: not a storage failure)."""
    if not isinstance(raw, str) or not BACKUP_ID_RE.fullmatch(raw) or ".." in raw:
        raise InvalidBackupId(f"invalid backup id {raw!r}: expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}} without '..'")
    return raw


@dataclass(frozen=True)
class StoredObject:
    location: str
    tenant_id: str
    backup_id: str
    uri: str
    size: int
    sha256: str
    path: Path | None = None  # set by get(): where the archive was written


@dataclass(frozen=True)
class BackupRef:
    location: str
    tenant_id: str
    backup_id: str
    uri: str
    stored_at: datetime | None = None  # when the manifest was written (retention uses it)


def _stored_bytes(manifest: Manifest) -> bytes:
    """What a location writes as manifest.json: Manifest.to_json (docs/MANIFEST.md)."""
    if not isinstance(manifest, Manifest):
        raise PermanentStorageError(f"not a manifest: a {type(manifest).__name__} (core/archive/manifest.py Manifest)")
    try:
        return manifest.to_json().encode()
    except (TypeError, ValueError) as exc:
        raise PermanentStorageError(f"manifest is not JSON-serialisable: {exc}") from None


class _BackgroundHash:
    """SHA-256 and size of a file, computed in a thread (hashlib releases the GIL on large buffers)."""

    def __init__(self, path: Path):
        import threading

        self._path, self._value, self._error = path, None, None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = sha256_file(self._path)
        except OSError as exc:
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple[str, int]:
        self._thread.join()
        if self._error is not None:
            raise PermanentStorageError(f"cannot read archive {self._path}: {self._error.strerror}") from None
        return self._value


class Location(ABC):
    """The interface (see module docstring for the contract)."""

    name: str
    retention_days: int

    @abstractmethod
    def put(self, tenant_id: str, backup_id: str, archive_path: Path, manifest: Manifest) -> StoredObject: ...

    @abstractmethod
    def get(self, tenant_id: str, backup_id: str, dest_path: Path) -> StoredObject: ...

    @abstractmethod
    def verify(self, tenant_id: str, backup_id: str, *, known_complete: bool = False) -> StoredObject: ...

    @abstractmethod
    def get_manifest(self, tenant_id: str, backup_id: str) -> Manifest: ...

    @abstractmethod
    def put_manifest(self, tenant_id: str, backup_id: str, manifest: Manifest) -> None: ...

    @abstractmethod
    def stat(self, tenant_id: str, backup_id: str) -> StoredObject: ...

    @abstractmethod
    def list(self, tenant_id: str | None = None) -> list[BackupRef]: ...

    @abstractmethod
    def incomplete(self, older_than: datetime) -> list[BackupRef]: ...

    @abstractmethod
    def delete(self, tenant_id: str, backup_id: str) -> None: ...

    @abstractmethod
    def uri(self, tenant_id: str, backup_id: str) -> str: ...

    @abstractmethod
    def put_verified(self, tenant_id: str, backup_id: str, record: dict, *, known_complete: bool = False) -> None: ...

    @abstractmethod
    def get_verified(self, tenant_id: str, backup_id: str) -> dict | None: ...


class ObjectLocation(Location):
    """Implements the contract on top of a few key-level primitives that each backend provides.

    Primitives raise NotFound for a missing key and the classified StorageError subclasses otherwise.
    """

    name = "?"
    # What a tenant id is (settings.tenant_ids: TENANT_BACKUP_TENANT_ID_PATTERN, else UUIDs); set by
    # core/locations/config.py.
    tenant_ids: TenantIds = UUIDS

    def __init__(self, *, prefix: str = "", retention_days: int = 30):
        prefix = prefix.strip("/")
        if prefix and (".." in prefix.split("/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", prefix)):
            raise StorageError(f"invalid storage prefix {prefix!r}")
        self.prefix = prefix
        self.retention_days = retention_days

    # -- primitives -------------------------------------------------------------------------------
    @abstractmethod
    def _put_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        """Store the file at key (streamed), with sha256 in metadata. Replaces an existing key."""

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def _head(self, key: str) -> tuple[int, str | None]:
        """(size, sha256 from metadata or None)."""

    @abstractmethod
    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        """Stream the object's bytes."""

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[tuple[str, datetime | None]]:
        """Keys under prefix (the full key) with their modification time."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove key (all versions); a missing key is fine."""

    @abstractmethod
    def _key_uri(self, key: str) -> str: ...

    # -- keys -------------------------------------------------------------------------------------
    def _root(self) -> str:
        return f"{self.prefix}/tenants/" if self.prefix else "tenants/"

    def _dir(self, tenant_id: str, backup_id: str) -> str:
        return f"{self._root()}{self.tenant_ids.validate(tenant_id)}/{validate_backup_id(backup_id)}/"

    def archive_key(self, tenant_id: str, backup_id: str) -> str:
        return self._dir(tenant_id, backup_id) + ARCHIVE_NAME

    def manifest_key(self, tenant_id: str, backup_id: str) -> str:
        return self._dir(tenant_id, backup_id) + MANIFEST_NAME

    # -- contract ---------------------------------------------------------------------------------
    def uri(self, tenant_id: str, backup_id: str) -> str:
        return self._key_uri(self.archive_key(tenant_id, backup_id))

    def put(self, tenant_id: str, backup_id: str, archive_path: Path, manifest: Manifest) -> StoredObject:
        tenant_id = self.tenant_ids.validate(tenant_id)
        akey, mkey = self.archive_key(tenant_id, backup_id), self.manifest_key(tenant_id, backup_id)
        archive_path = Path(archive_path)
        manifest_bytes = _stored_bytes(manifest)
        exp_sha, exp_size = manifest.stated_checksum()
        hasher = _BackgroundHash(archive_path)
        if exp_sha is None or exp_size is None:
            sha, size = hasher.result()  # nothing to go by: hash first, then upload
        else:
            # The manifest says what the file must be: upload under that checksum while the file is
            # hashed beside the upload (one pass less over a large archive), and check before the
            # manifest is written; a mismatch removes the archive, so nothing lists as complete.
            sha, size = exp_sha, exp_size
        if hasher.done() and (sha, size) != hasher.result():
            raise PermanentStorageError(
                f"archive {archive_path} does not match its manifest (sha256/size differ): not stored"
            )
        # No delete of an old manifest first (one request less per put, times thousands of tenants):
        # a backup id names one export's bytes, so a retried put rewrites the same archive; should
        # other bytes ever be put under an existing id and the put die half-way, the old manifest
        # does not match the new archive, and restore and verify refuse that copy (checksum).
        try:
            self._put_file(akey, archive_path, size, sha)
        finally:
            actual = hasher.result()
        if actual != (sha, size):
            self._delete(akey)
            raise PermanentStorageError(
                f"archive {archive_path} does not match its manifest (sha256/size differ): not stored"
            )
        # Re-check the file did not change while we streamed it (the upload would not match sha).
        if archive_path.stat().st_size != size:
            self._delete(akey)
            raise PermanentStorageError(f"archive {archive_path} changed while being stored")
        self._put_bytes(mkey, manifest_bytes)  # last: now the backup lists as complete
        return StoredObject(self.name, tenant_id, backup_id, self._key_uri(akey), size, sha)

    def _require_complete(self, tenant_id: str, backup_id: str) -> None:
        self._head(self.manifest_key(tenant_id, backup_id))  # raises NotFound

    def stat(self, tenant_id: str, backup_id: str) -> StoredObject:
        tenant_id = self.tenant_ids.validate(tenant_id)
        self._require_complete(tenant_id, backup_id)
        return self._stat_archive(tenant_id, backup_id)

    def _stat_archive(self, tenant_id: str, backup_id: str) -> StoredObject:
        akey = self.archive_key(tenant_id, backup_id)
        size, sha = self._head(akey)
        if not sha:
            raise CorruptObject(f"{self._key_uri(akey)} has no sha256 metadata")
        return StoredObject(self.name, tenant_id, backup_id, self._key_uri(akey), size, sha)

    def get_manifest(self, tenant_id: str, backup_id: str) -> Manifest:
        tenant_id = self.tenant_ids.validate(tenant_id)
        mkey = self.manifest_key(tenant_id, backup_id)
        data = self._get_bytes(mkey)
        try:
            value = json.loads(data)
        except ValueError:
            raise CorruptObject(f"{self._key_uri(mkey)} is not valid JSON") from None
        if not isinstance(value, dict):
            raise CorruptObject(f"{self._key_uri(mkey)} is not a JSON object")
        try:
            return Manifest.from_dict(value)
        except ArchiveError as exc:
            raise ArchiveError(f"{self._key_uri(mkey)}: {exc}") from None

    def put_manifest(self, tenant_id: str, backup_id: str, manifest: Manifest) -> None:
        tenant_id = self.tenant_ids.validate(tenant_id)
        data = _stored_bytes(manifest)
        st = self.stat(tenant_id, backup_id)  # NotFound unless complete
        if (st.sha256.lower(), st.size) != manifest.stated_checksum():
            raise PermanentStorageError(f"{st.uri}: the manifest does not describe the stored archive: not stored")
        self._put_bytes(self.manifest_key(tenant_id, backup_id), data)

    def _stream_checked(self, tenant_id: str, backup_id: str, sink, *, known_complete: bool = False) -> StoredObject:
        st = (
            self._stat_archive(self.tenant_ids.validate(tenant_id), backup_id)
            if known_complete
            else self.stat(tenant_id, backup_id)
        )
        h = hashlib.sha256()
        n = 0
        for chunk in self._iter_chunks(self.archive_key(st.tenant_id, backup_id)):
            h.update(chunk)
            n += len(chunk)
            if sink is not None:
                sink.write(chunk)
        if n != st.size or h.hexdigest() != st.sha256:
            raise CorruptObject(
                f"{st.uri}: stored object does not match its sha256/size "
                f"(got {n} bytes, sha256 {h.hexdigest()[:16]}…, expected {st.size} bytes, {st.sha256[:16]}…)"
            )
        return st

    def get(self, tenant_id: str, backup_id: str, dest_path: Path) -> StoredObject:
        dest_path = Path(dest_path)
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest_path.name}.", suffix=".part", dir=dest_path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                st = self._stream_checked(tenant_id, backup_id, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return StoredObject(st.location, st.tenant_id, st.backup_id, st.uri, st.size, st.sha256, dest_path)

    def verify(self, tenant_id: str, backup_id: str, *, known_complete: bool = False) -> StoredObject:
        return self._stream_checked(tenant_id, backup_id, None, known_complete=known_complete)

    def list(self, tenant_id: str | None = None) -> list[BackupRef]:
        prefix = self._root() + (self.tenant_ids.validate(tenant_id) + "/" if tenant_id is not None else "")
        out = []
        root = self._root()
        for key, mtime in self._list(prefix):
            parts = key[len(root) :].split("/")
            if len(parts) != 3 or parts[2] != MANIFEST_NAME:
                continue
            t, b = parts[0], parts[1]
            try:  # foreign or malformed keys under the prefix are ignored, not trusted
                self.tenant_ids.validate(t)
                validate_backup_id(b)
            except Exception:
                continue
            out.append(BackupRef(self.name, t, b, self._key_uri(root + f"{t}/{b}/{ARCHIVE_NAME}"), mtime))
        out.sort(key=lambda r: (r.tenant_id, r.backup_id))
        return out

    def incomplete(self, older_than: datetime) -> list[BackupRef]:
        root = self._root()
        # (tenant, backup) -> [has a manifest, newest modification time, a time unknown]
        found: dict[tuple[str, str], list] = {}
        for key, mtime in self._list(root):
            parts = key[len(root) :].split("/")
            if len(parts) != 3:
                continue
            t, b, name = parts
            try:  # foreign or malformed keys under the prefix are not ours to delete
                self.tenant_ids.validate(t)
                validate_backup_id(b)
            except Exception:
                continue
            entry = found.setdefault((t, b), [False, None, False])
            entry[0] |= name == MANIFEST_NAME
            if mtime is None:
                entry[2] = True  # never delete on a guess
            elif entry[1] is None or mtime > entry[1]:
                entry[1] = mtime
        return [
            BackupRef(self.name, t, b, self._key_uri(root + f"{t}/{b}/{ARCHIVE_NAME}"), newest)
            for (t, b), (complete, newest, unknown) in sorted(found.items())
            if not complete and not unknown and newest is not None and newest < older_than
        ]

    def delete(self, tenant_id: str, backup_id: str) -> None:
        tenant_id = self.tenant_ids.validate(tenant_id)
        self._delete(self.manifest_key(tenant_id, backup_id))  # first: stops listing as complete
        self._delete(self._dir(tenant_id, backup_id) + VERIFIED_NAME)
        self._delete(self.archive_key(tenant_id, backup_id))

    def put_verified(self, tenant_id: str, backup_id: str, record: dict, *, known_complete: bool = False) -> None:
        """Replace the copy's verification record (only for a complete backup: NotFound otherwise)."""
        tenant_id = self.tenant_ids.validate(tenant_id)
        if not known_complete:
            self._require_complete(tenant_id, backup_id)
        self._put_bytes(self._dir(tenant_id, backup_id) + VERIFIED_NAME, json.dumps(record, sort_keys=True).encode())

    def get_verified(self, tenant_id: str, backup_id: str) -> dict | None:
        """The copy's verification record, or None (never verified, or an unreadable record)."""
        try:
            value = json.loads(
                self._get_bytes(self._dir(self.tenant_ids.validate(tenant_id), backup_id) + VERIFIED_NAME)
            )
        except (NotFound, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._key_uri(self._root())}>"
