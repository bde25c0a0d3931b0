"""Object names inside a backup's folder, and what a backup id is (core/locations/base.py: the layout)."""

from __future__ import annotations

import re

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
