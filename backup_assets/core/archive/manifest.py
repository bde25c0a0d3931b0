"""The manifest: JSON stored beside every copy of an archive (docs/MANIFEST.md)."""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timezone

MANIFEST_VERSION = 1
BACKUP_ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time, unique without coordination: 20261125T030000Z-1a2b3c4d."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def to_json(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"
