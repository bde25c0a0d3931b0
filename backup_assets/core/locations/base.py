"""The storage interface every location implements, and the shared logic behind it.

Why this module is long: the interface and the one write protocol every object store shares (named
archive, manifest last, superseded archive after; the reads that re-hash every byte) belong together:
split, each half would have to restate the other's invariants.

Modelled on restic's backend: a small interface whose contract is stated here, one conformance
suite (tests/test_storage_conformance.py) that every location must pass, errors classified as
NotFound / TransientStorageError / PermanentStorageError / CorruptObject so that retrying is a
wrapper (retry.py) rather than code repeated in each backend.

Layout in every location (under an optional prefix):
    tenants/<tenant_id>/<backup_id>/archive-<16 hex>.tbk   the archive, named by the first 16 hex digits
                                                          of the SHA-256 its manifest states
    tenants/<tenant_id>/<backup_id>/manifest.json          <- written LAST: its presence marks "complete"
                                                          and it is the one pointer to the archive
    tenants/<tenant_id>/<backup_id>/verified.json          the last verification of the copy (optional)
Copies written before this layout hold `archive.tbk` (LEGACY_ARCHIVE_NAME; also used for a manifest
that states no SHA-256): a manifest whose named archive is absent is read from `archive.tbk`.

Write protocol (crash consistency: at every instant a copy is its old complete self or its new one):
new bytes are always stored under a new name (the archive's name derives from its digest), the
manifest is written last (one atomic object write: the pointer switch), and only then is the archive
the previous manifest named deleted. A kill at any step leaves the old manifest naming the old archive,
or the new manifest naming the new archive, plus objects no manifest names; those are garbage, found
by garbage() and removed by prune's collection (core/maintenance/gc.py) after a grace period. Readers
trust only what the manifest names. The steps are core/crashpoints.py's named points.

Contract of the public methods (Location):
- put(tenant_id, backup_id, archive_path, manifest: Manifest) -> StoredObject
    Streams the archive (never whole in memory), then writes manifest.json (Manifest.to_json: the
    stored bytes). The archive's SHA-256 is computed from the file (beside the upload when the
    manifest states archive.sha256 and archive.size, before it otherwise); a mismatch with the manifest raises PermanentStorageError and removes the
    uploaded archive before any manifest is written, so nothing lists as complete. The SHA-256 is kept
    in the object's metadata so stat() can answer without reading the object. Overwriting an existing
    backup id replaces it (idempotent retry of the same put): the new archive under its own name, then
    the manifest, then the archive the old manifest named is deleted. A failed put leaves the backup as
    it was (absent, or the previous complete copy).
- get(tenant_id, backup_id, dest_path, *, expect=None, known_complete=False) -> StoredObject
    Streams the archive to dest_path (via a temporary file + rename: a failed get leaves no partial
    dest_path), re-hashing on the way; a size or SHA-256 mismatch with the stored metadata (with
    expect=(sha256, size): with those, e.g. the manifest's) raises CorruptObject. A missing archive or
    manifest raises NotFound. The size and metadata come with the read itself where the backend's read
    answers them (S3 GetObject, B2's download: one request, no HEAD). The StoredObject's size and
    sha256 are the stored metadata's, which the bytes were just proven to equal.
- verify(tenant_id, backup_id, *, known_complete=False) -> StoredObject: like get() but discards the
    bytes. known_complete (get too): the caller has just read the manifest through this location
    (the archive it names is read without reading it again).
- get_manifest(tenant_id, backup_id) -> Manifest: NotFound if absent; CorruptObject if not JSON;
    ArchiveError (core/archive/manifest.py, the one parser) if not a manifest this version reads.
    Not authenticated here: readers go through core/archive/seal.py read_manifest.
- put_manifest(tenant_id, backup_id, manifest: Manifest): replace the manifest of a complete backup (NotFound
    otherwise) whose archive.sha256/size are the stored object's (PermanentStorageError otherwise):
    re-sealing (`verify --seal`, core/maintenance/sealing.py) rewrites the manifest, never the archive.
- stat(tenant_id, backup_id) -> StoredObject: size and SHA-256 from stored metadata, no download.
    NotFound unless the backup is complete (manifest present).
- survey() -> Survey: one listing of everything the location holds, by backup folder (garbage.py).
- list(tenant_id=None, *, survey=None) -> list[BackupRef]: complete backups only (manifest present),
    sorted; with a survey, the ones it saw (no request: prune plans and collects from one listing).
- garbage(older_than, survey=None) -> list[Garbage]: every object no manifest refers to, none of it written (or,
    for an unfinished upload, started) after `older_than`: archives beside a manifest that names
    another one (superseded by a re-wrap or a killed overwrite), everything in a backup folder without
    a manifest, the store's unfinished uploads (local temporary files, R2 multipart uploads, B2
    unfinished large files) and B2's older versions of a name. Never the only archive beside a manifest,
    nothing in a folder whose manifest cannot be read, nothing outside tenants/<id>/<backup>/. With a
    survey taken earlier, from it (a folder without a manifest is listed again before it is garbage).
- remove_garbage(item: Garbage): delete (abort, cancel) that object; gone already is fine.
- delete(tenant_id, backup_id): removes the manifest first (so the backup stops listing as complete
    at once), then the archive; every version where the store keeps versions (B2); deleting a
    missing backup is not an error (idempotent).
- uri(tenant_id, backup_id) -> str: where the backup lives (its folder), for humans and metadata;
    no I/O. StoredObject.uri (put, get, stat, verify) names the archive object itself.
- archive_key(tenant_id, backup_id, sha256=None) -> str: the archive's key: the one a manifest stating
    sha256 names; without sha256, the one the stored manifest names (read, with the legacy fallback).
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .. import crashpoints
from ..archive.manifest import Manifest
from ..errors import ArchiveError, CorruptObject, NotFound, PermanentStorageError, StorageError
from ..files import sha256_file  # noqa: F401 - re-exported (core.locations.sha256_file)
from ..source.tenant_ids import UUIDS, TenantIds
from .garbage import Garbage, Survey, backup_keys, find_garbage, folders
from .memory import MEMORY, UNKNOWN
from .naming import (  # noqa: F401 - re-exported
    ARCHIVE_NAME,
    ARCHIVE_RE,
    CHUNK,
    LEGACY_ARCHIVE_NAME,
    MANIFEST_NAME,
    VERIFIED_NAME,
    archive_name,
    validate_backup_id,
)
from .upload import BackgroundHash, stored_bytes


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


class Location(ABC):
    """The interface (see module docstring for the contract)."""

    name: str
    retention_days: int

    @abstractmethod
    def put(self, tenant_id: str, backup_id: str, archive_path: Path, manifest: Manifest) -> StoredObject: ...

    @abstractmethod
    def get(
        self, tenant_id: str, backup_id: str, dest_path: Path, *, expect=None, known_complete: bool = False
    ) -> StoredObject: ...

    @abstractmethod
    def verify(self, tenant_id: str, backup_id: str, *, known_complete: bool = False) -> StoredObject: ...

    @abstractmethod
    def get_manifest(self, tenant_id: str, backup_id: str) -> Manifest: ...

    @abstractmethod
    def put_manifest(self, tenant_id: str, backup_id: str, manifest: Manifest) -> None: ...

    @abstractmethod
    def stat(self, tenant_id: str, backup_id: str) -> StoredObject: ...

    @abstractmethod
    def survey(self) -> Survey: ...

    @abstractmethod
    def list(self, tenant_id: str | None = None, *, survey: Survey | None = None) -> list[BackupRef]: ...

    @abstractmethod
    def garbage(self, older_than: datetime, survey: Survey | None = None) -> list[Garbage]: ...

    @abstractmethod
    def remove_garbage(self, item: Garbage) -> None: ...

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

    def _put_new_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        """_put_file for a key the caller knows holds no object (nothing older of that name to remove:
        B2 then skips its listing of the name's versions)."""
        self._put_file(key, path, size, sha256)

    def _put_new_bytes(self, key: str, data: bytes) -> None:
        """_put_bytes for a key the caller knows holds no object (see _put_new_file)."""
        self._put_bytes(key, data)

    @contextmanager
    def _opened(self, key: str):
        """(size, sha256 from metadata or None, the object's chunks): the metadata _head gives and the
        bytes _iter_chunks gives. A backend whose read answers both (S3 GetObject, B2's download) makes
        it one request; NotFound on entering for a missing key."""
        size, sha = self._head(key)
        yield size, sha, self._iter_chunks(key)

    @abstractmethod
    def _key_uri(self, key: str) -> str: ...

    # -- keys -------------------------------------------------------------------------------------
    def _root(self) -> str:
        return f"{self.prefix}/tenants/" if self.prefix else "tenants/"

    def _dir(self, tenant_id: str, backup_id: str) -> str:
        return f"{self._root()}{self.tenant_ids.validate(tenant_id)}/{validate_backup_id(backup_id)}/"

    def backup_prefix(self, tenant_id: str, backup_id: str) -> str:
        """The key prefix of one backup's objects (its folder)."""
        return self._dir(tenant_id, backup_id)

    def archive_key(self, tenant_id: str, backup_id: str, sha256: str | None = None) -> str:
        if sha256 is not None:
            return self._dir(tenant_id, backup_id) + archive_name(sha256)
        return self._located(self.tenant_ids.validate(tenant_id), backup_id)[0]

    def manifest_key(self, tenant_id: str, backup_id: str) -> str:
        return self._dir(tenant_id, backup_id) + MANIFEST_NAME

    def _manifest_sha(self, tenant_id: str, backup_id: str) -> str | None:
        """The SHA-256 the stored manifest states (NotFound without a manifest), remembered for a
        caller's known_complete read that follows."""
        return self.get_manifest(tenant_id, backup_id).stated_checksum()[0]

    def _located(self, tenant_id: str, backup_id: str, *, known: bool = False) -> tuple[str, int, str | None]:
        """(key, size, sha256 metadata) of the archive the manifest names (a HEAD: _locate)."""
        return self._locate(tenant_id, backup_id, self._head, known=known)

    def _open_archive(self, stack: ExitStack, tenant_id: str, backup_id: str, *, known: bool = False):
        """(key, size, sha256 metadata, chunks): the archive the manifest names opened for reading, in
        the same request where the backend can (_opened); the stream closed with `stack`."""
        return self._locate(tenant_id, backup_id, lambda key: stack.enter_context(self._opened(key)), known=known)

    def _locate(self, tenant_id: str, backup_id: str, probe, *, known: bool = False) -> tuple:
        """(key, *probe(key)) for the archive the manifest names: archive-<16 hex>.tbk, or archive.tbk for
        a copy written before content-named archives. known: use the manifest this object last read for
        the backup (read it again if that archive is gone meanwhile: a re-wrap switched it)."""
        d = self._dir(tenant_id, backup_id)
        sha = MEMORY.named(self._memory_root(), tenant_id, backup_id) if known else UNKNOWN
        fresh = sha == UNKNOWN
        if fresh:
            sha = self._manifest_sha(tenant_id, backup_id)
        for name in dict.fromkeys((archive_name(sha), LEGACY_ARCHIVE_NAME)):
            try:
                return (d + name, *probe(d + name))
            except NotFound:
                if name != LEGACY_ARCHIVE_NAME:
                    continue
                if fresh:
                    raise
        return self._locate(tenant_id, backup_id, probe)  # a re-wrap switched the manifest meanwhile

    def _memory_root(self) -> str:
        """This location's key in memory.py's record (its root's URI: one store, whichever object)."""
        return self._key_uri(self._root())

    # -- contract ---------------------------------------------------------------------------------
    def uri(self, tenant_id: str, backup_id: str) -> str:
        return self._key_uri(self._dir(tenant_id, backup_id))

    def _listing(self, prefix: str) -> set[str]:
        return {key[len(prefix) :] for key, _ in self._list(prefix)}

    def put(self, tenant_id: str, backup_id: str, archive_path: Path, manifest: Manifest) -> StoredObject:
        tenant_id = self.tenant_ids.validate(tenant_id)
        d, mkey = self._dir(tenant_id, backup_id), self.manifest_key(tenant_id, backup_id)
        archive_path = Path(archive_path)
        manifest_bytes = stored_bytes(manifest)
        exp_sha, exp_size = manifest.stated_checksum()
        akey = d + archive_name(exp_sha)
        # What the backup holds now (one listing): the archive its manifest names is deleted after the
        # new manifest is written, never before. Nothing, without asking, for the first put of a backup id
        # this process minted (memory.py first_put): no object can be under it yet.
        present = set() if MEMORY.first_put(self._memory_root(), tenant_id, backup_id) else self._listing(d)
        previous = self._previous_archive(tenant_id, backup_id, present)
        hasher = BackgroundHash(archive_path)
        if exp_sha is None or exp_size is None or akey[len(d) :] in present:
            # Nothing to go by, or an object of that name exists (a repair re-puts the same bytes over a
            # damaged copy): hash first, so that nothing but the stated bytes ever replaces it.
            sha, size = hasher.result()
        else:
            # The archive goes under a new name while the file is hashed beside the upload (one pass
            # less over a large archive), checked before the manifest is written; a mismatch removes it.
            sha, size = exp_sha, exp_size
        if (exp_sha is not None and exp_size is not None and hasher.done()) and (exp_sha, exp_size) != hasher.result():
            raise PermanentStorageError(
                f"archive {archive_path} does not match its manifest (sha256/size differ): not stored"
            )
        try:
            (self._put_file if akey[len(d) :] in present else self._put_new_file)(akey, archive_path, size, sha)
        finally:
            actual = hasher.result()
        if actual != (sha, size) or archive_path.stat().st_size != size:
            self._delete(akey)
            raise PermanentStorageError(
                f"archive {archive_path} does not match its manifest (sha256/size differ, or it changed "
                "while being stored): not stored"
            )
        crashpoints.reached("put.archive")
        # The pointer switch: now the backup is the new copy.
        (self._put_bytes if MANIFEST_NAME in present else self._put_new_bytes)(mkey, manifest_bytes)
        MEMORY.stored(self._memory_root(), tenant_id, backup_id, exp_sha, absent={VERIFIED_NAME} - present)
        crashpoints.reached("put.manifest")
        if previous is not None and previous != akey:
            try:
                self._delete(previous)  # superseded; if this fails, garbage collection removes it
            except StorageError:
                pass
        crashpoints.reached("put.done")
        return StoredObject(self.name, tenant_id, backup_id, self._key_uri(akey), size, sha)

    def _previous_archive(self, tenant_id: str, backup_id: str, present: set[str]) -> str | None:
        """The archive the stored manifest names (None: no manifest, or one that cannot be read: then
        what it named stays for garbage collection)."""
        if MANIFEST_NAME not in present:
            return None
        try:
            sha = self._manifest_sha(tenant_id, backup_id)
        except (NotFound, CorruptObject, ArchiveError):
            return None
        named = archive_name(sha)
        d = self._dir(tenant_id, backup_id)
        return d + named if named in present else d + LEGACY_ARCHIVE_NAME if LEGACY_ARCHIVE_NAME in present else None

    def _require_complete(self, tenant_id: str, backup_id: str) -> None:
        self._head(self.manifest_key(tenant_id, backup_id))  # raises NotFound

    def stat(self, tenant_id: str, backup_id: str) -> StoredObject:
        tenant_id = self.tenant_ids.validate(tenant_id)
        akey, size, sha = self._located(tenant_id, backup_id)
        return self._stored(tenant_id, backup_id, akey, size, sha)

    def _stored(self, tenant_id: str, backup_id: str, akey: str, size: int, sha: str | None) -> StoredObject:
        """The archive's StoredObject from its stored metadata (CorruptObject without a SHA-256)."""
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
            manifest = Manifest.from_dict(value)
        except ArchiveError as exc:
            raise ArchiveError(f"{self._key_uri(mkey)}: {exc}") from None
        MEMORY.stored(self._memory_root(), tenant_id, backup_id, manifest.stated_checksum()[0])
        return manifest

    def put_manifest(self, tenant_id: str, backup_id: str, manifest: Manifest) -> None:
        tenant_id = self.tenant_ids.validate(tenant_id)
        data = stored_bytes(manifest)
        st = self.stat(tenant_id, backup_id)  # NotFound unless complete
        if (st.sha256.lower(), st.size) != manifest.stated_checksum():
            raise PermanentStorageError(f"{st.uri}: the manifest does not describe the stored archive: not stored")
        self._put_bytes(self.manifest_key(tenant_id, backup_id), data)

    def _stream_checked(
        self, tenant_id: str, backup_id: str, sink, *, known_complete: bool = False, expect=None
    ) -> StoredObject:
        tenant_id = self.tenant_ids.validate(tenant_id)
        with ExitStack() as stack:
            # One request where the backend can: the read answers what a HEAD would (size, metadata).
            akey, size, meta, chunks = self._open_archive(stack, tenant_id, backup_id, known=known_complete)
            if expect is None:
                st = self._stored(tenant_id, backup_id, akey, size, meta)
            else:  # the bytes as the manifest describes them, whatever the stored metadata says
                st = StoredObject(self.name, tenant_id, backup_id, self._key_uri(akey), expect[1], expect[0])
            h = hashlib.sha256()
            n = 0
            for chunk in chunks:
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

    def get(
        self, tenant_id: str, backup_id: str, dest_path: Path, *, expect=None, known_complete: bool = False
    ) -> StoredObject:
        dest_path = Path(dest_path)
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest_path.name}.", suffix=".part", dir=dest_path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                st = self._stream_checked(tenant_id, backup_id, f, expect=expect, known_complete=known_complete)
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

    def survey(self) -> Survey:
        return Survey(self.name, folders(self))

    def list(self, tenant_id: str | None = None, *, survey: Survey | None = None) -> list[BackupRef]:
        root = self._root()
        if survey is None:  # the manifests alone, without a Folder per backup (list is 10,000s of them)
            prefix = root + (self.tenant_ids.validate(tenant_id) + "/" if tenant_id is not None else "")
            found = ((t, b, mtime) for t, b, name, _key, mtime in backup_keys(self, prefix) if name == MANIFEST_NAME)
        elif tenant_id is not None:
            raise ValueError("list: a survey is of every tenant")
        else:
            found = ((t, b, f.names[MANIFEST_NAME]) for (t, b), f in survey.folders.items() if f.complete)
        out = [BackupRef(self.name, t, b, self._key_uri(root + f"{t}/{b}/"), mtime) for t, b, mtime in found]
        out.sort(key=lambda r: (r.tenant_id, r.backup_id))
        return out

    def garbage(self, older_than: datetime, survey: Survey | None = None) -> list[Garbage]:
        return find_garbage(self, older_than, survey)

    def remove_garbage(self, item: Garbage) -> None:
        self._delete(item.key)  # a local archive's key removes its sidecar too (local.py)

    def _unfinished(self, survey: Survey | None = None) -> Iterator[Garbage]:
        """The store's unfinished uploads and hidden leftovers under the root (none by default);
        `survey`: the listing garbage() works from, where it shows some of them (B2's older versions)."""
        return iter(())

    def _size(self, key: str) -> int | None:
        try:
            return self._head(key)[0]
        except StorageError:
            return None

    def delete(self, tenant_id: str, backup_id: str) -> None:
        tenant_id = self.tenant_ids.validate(tenant_id)
        d = self._dir(tenant_id, backup_id)
        self._delete(self.manifest_key(tenant_id, backup_id))  # first: stops listing as complete
        MEMORY.forget(self._memory_root(), tenant_id, backup_id)
        self._delete(d + VERIFIED_NAME)
        for name in sorted(self._listing(d) | {LEGACY_ARCHIVE_NAME}):  # every archive of any name
            if ARCHIVE_RE.fullmatch(name):
                self._delete(d + name)

    def put_verified(self, tenant_id: str, backup_id: str, record: dict, *, known_complete: bool = False) -> None:
        """Replace the copy's verification record (only for a complete backup: NotFound otherwise)."""
        tenant_id = self.tenant_ids.validate(tenant_id)
        if not known_complete:
            self._require_complete(tenant_id, backup_id)
        new = MEMORY.take_absent(self._memory_root(), tenant_id, backup_id, VERIFIED_NAME)  # a new copy's first
        (self._put_new_bytes if new else self._put_bytes)(
            self._dir(tenant_id, backup_id) + VERIFIED_NAME, json.dumps(record, sort_keys=True).encode()
        )

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
