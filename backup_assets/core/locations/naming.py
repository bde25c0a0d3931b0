"""Object names inside a backup's folder, and what a backup id is (core/locations/base.py: the layout)."""

from __future__ import annotations

import re
import threading

from ..archive.manifest import BACKUP_ID_RE
from ..errors import InvalidBackupId

LEGACY_ARCHIVE_NAME = "archive.tbk"  # the fixed name of copies written before content-named archives
ARCHIVE_NAME = LEGACY_ARCHIVE_NAME  # (kept for importers; the archive's name is archive_name(sha256))
ARCHIVE_RE = re.compile(r"archive(-[0-9a-f]{16})?\.tbk")  # every name an archive of ours may have
MANIFEST_NAME = "manifest.json"
VERIFIED_NAME = "verified.json"  # optional: the last verification of this copy (core/maintenance/status.py)
CHUNK = 1024 * 1024  # streaming buffer: memory use does not grow with the archive
# BACKUP_ID_RE (core/archive/manifest.py): letters, digits, '.', '_', '-'; starts alphanumeric; no '..'
# (checked separately). Enough for timestamps and ULIDs/UUIDs, never a path separator.


def archive_name(sha256: str | None) -> str:
    """The archive's object name for a manifest stating sha256 (the legacy fixed name without one)."""
    return f"archive-{sha256[:16].lower()}.tbk" if sha256 else LEGACY_ARCHIVE_NAME


def validate_backup_id(raw: str) -> str:
    """The id as given, or InvalidBackupId (bad input, exit code 2: not a storage failure)."""
    if not isinstance(raw, str) or not BACKUP_ID_RE.fullmatch(raw) or ".." in raw:
        raise InvalidBackupId(f"invalid backup id {raw!r}: expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}} without '..'")
    return raw


# -- backup ids minted by this process ---------------------------------------------------------------
# A put lists the backup's folder first (base.py: the archive its manifest names is superseded; an
# object already under the archive's name is hashed before it is replaced). For a backup id this
# process minted (core/archive/export.py) and has never put to that location, the folder cannot hold
# anything: ids are unique without coordination (a timestamp and 32 random bits), and nothing else
# writes under an id before its first put. Every later put of the id to that location in this process (a
# retry, a location re-run), and every put in another process (a re-execution, a redelivered task),
# lists as before. Forgetting (the bound below) only makes a put list again.
_MINTED: dict[tuple[str, str], set[str]] = {}  # (tenant, backup id) -> locations a put of it began in
_MINTED_MAX = 4096
_minted_lock = threading.Lock()


def minted_here(tenant_id: str, backup_id: str) -> None:
    """Note a backup id this process has just minted for a new archive (no location holds it yet)."""
    with _minted_lock:
        if len(_MINTED) >= _MINTED_MAX:
            _MINTED.clear()
        _MINTED[(tenant_id, backup_id)] = set()


def first_put(where: str, tenant_id: str, backup_id: str) -> bool:
    """Whether this is the first put of a backup id minted here to the location `where` (its folder
    then holds nothing); records the put as begun, so the answer is True once at most."""
    with _minted_lock:
        begun = _MINTED.get((tenant_id, backup_id))
        if begun is None or where in begun:
            return False
        begun.add(where)
        return True
