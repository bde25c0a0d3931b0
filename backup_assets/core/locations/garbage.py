"""What no manifest refers to, in one location (ObjectLocation.garbage; docs/STORAGE.md, "Garbage").

The write protocol (base.py) stores new bytes under new names and switches the manifest last, so a
killed write leaves objects behind but never a broken copy. This module finds them:
- in a backup folder with a manifest: the archives other than the one it names (a re-wrap's or an
  overwrite's superseded archive, a new one a killed write never switched to); never the only archive
  beside a manifest, nothing when the manifest cannot be read or names nothing that is there;
- a backup folder without a manifest: everything in it (a put killed before its manifest);
- the store's own leftovers (ObjectLocation._unfinished): local hidden temporary files, R2 multipart
  uploads, B2 unfinished large files and older versions of a name.
Only what nothing touched after `older_than` (the grace period: a running put may still finish what
is younger) is garbage. Keys that are not tenants/<valid id>/<valid backup id>/<name> are not ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..errors import TenantBackupError
from .naming import ARCHIVE_RE as _ARCHIVE
from .naming import LEGACY_ARCHIVE_NAME, MANIFEST_NAME, archive_name, validate_backup_id

SIDECAR_SUFFIX = ".sha256"  # the local location's checksum sidecar of an archive (local.py)
# `loc` below: an ObjectLocation (base.py; its primitives _list, _head, _root, _key_uri, _size,
# _manifest_sha, _unfinished), not imported: base.py imports this module.


@dataclass(frozen=True)
class Garbage:
    """One stored object no manifest refers to (Location.garbage)."""

    location: str
    key: str  # the object's key (an unfinished upload: the key it was meant for)
    uri: str
    size: int | None  # bytes it holds (None: unknown)
    modified: datetime | None  # last written, or when the upload started
    what: str  # "superseded archive", "no manifest", "unfinished upload", "older version", "temporary file"
    handle: str = ""  # the store's id for it (upload id, file version id) where the key is not enough


@dataclass
class Folder:
    """One backup folder's objects: name -> modification time (None: unknown)."""

    names: dict[str, datetime | None] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return MANIFEST_NAME in self.names

    @property
    def unknown(self) -> bool:
        return any(m is None for m in self.names.values())

    @property
    def newest(self) -> datetime | None:
        times = [m for m in self.names.values() if m is not None]
        return max(times) if times else None


def folder_key(loc, key: str) -> tuple[str, str, str] | None:
    """(tenant, backup, name) of a key in a backup folder; None for foreign or malformed keys: not
    ours, never trusted nor deleted."""
    root = loc._root()
    parts = key[len(root) :].split("/") if key.startswith(root) else ()
    if len(parts) != 3:
        return None
    try:
        loc.tenant_ids.validate(parts[0])
        validate_backup_id(parts[1])
    except TenantBackupError:
        return None
    return parts[0], parts[1], parts[2]


def backup_keys(loc, prefix: str):
    """(tenant, backup, name, key, mtime) of every object in a backup folder under prefix."""
    for key, mtime in loc._list(prefix):
        found = folder_key(loc, key)
        if found is not None:
            yield *found, key, mtime


def folders(loc, prefix: str | None = None) -> dict[tuple[str, str], Folder]:
    found: dict[tuple[str, str], Folder] = {}
    for t, b, name, _key, mtime in backup_keys(loc, loc._root() if prefix is None else prefix):
        found.setdefault((t, b), Folder()).names[name] = mtime
    return found


@dataclass
class Survey:
    """One listing of a whole location, by backup folder (Location.survey): prune plans its deletions
    on it and then collects the garbage it shows, instead of listing the location twice (at 10,000
    tenants the listings were all of prune's time). `older`: the store's older versions of names,
    where the same listing shows them (B2's list of versions), else None."""

    location: str
    folders: dict[tuple[str, str], Folder]
    older: list[Garbage] | None = None

    def forget(self, tenant_id: str, backup_id: str) -> None:
        """A backup deleted since the survey: nothing of it is looked at again."""
        self.folders.pop((tenant_id, backup_id), None)


def _archives(folder: Folder) -> dict[str, datetime | None]:
    """Archive name -> newest time of it and its sidecar (a sidecar alone counts as its archive)."""
    out: dict[str, datetime | None] = {}
    for name, mtime in folder.names.items():
        base = name.removesuffix(SIDECAR_SUFFIX)
        if _ARCHIVE.fullmatch(base):
            old = out.get(base, mtime)
            out[base] = None if old is None or mtime is None else max(old, mtime)
    return out


def find_garbage(loc, older_than: datetime, survey: Survey | None = None) -> list[Garbage]:
    """The garbage `survey` shows (a survey of its own when None). A folder without a manifest in a
    survey taken earlier is listed again before it is called garbage: a put older than the grace may
    have written its manifest since (a fresh listing leaves the same window, only shorter)."""
    fresh = survey is None
    if survey is None:
        survey = loc.survey()
    out: list[Garbage] = []

    def add(key: str, modified: datetime | None, what: str) -> None:
        out.append(Garbage(loc.name, key, loc._key_uri(key), loc._size(key), modified, what))

    for (t, b), folder in sorted(survey.folders.items()):
        d = loc.backup_prefix(t, b)
        if not folder.complete and not fresh:
            folder = folders(loc, d).get((t, b)) or Folder()
            if not folder.names:
                continue  # gone meanwhile
        if not folder.complete:
            newest = folder.newest
            if not folder.unknown and newest is not None and newest < older_than:
                for name, mtime in sorted(_archives(folder).items()):
                    add(d + name, mtime, "no manifest")
                for name, mtime in sorted(folder.names.items()):
                    if not _ARCHIVE.fullmatch(name.removesuffix(SIDECAR_SUFFIX)):
                        add(d + name, mtime, "no manifest")
            continue
        archives = _archives(folder)
        if len(archives) < 2:
            continue  # never the only archive beside a manifest
        try:
            named = archive_name(loc._manifest_sha(t, b))
        except TenantBackupError:
            continue  # a manifest that cannot be read: nothing of its folder is touched
        if named not in archives:
            named = LEGACY_ARCHIVE_NAME
        if named not in archives:
            continue  # it names nothing that is there: a damaged copy, for rebuild --repair
        for name, mtime in sorted(archives.items()):
            if name != named and mtime is not None and mtime < older_than:
                add(d + name, mtime, "superseded archive")
    out.extend(g for g in loc._unfinished(survey) if g.modified is not None and g.modified < older_than)
    return out
