"""A fourth kind of storage location, declared the way every kind is (core/locations/registry.py), for
tests/test_location_registry.py: an in-memory object store ("vault") of this process. A bucket named
`down` refuses every request (a permanent storage error), so a failing location can be tried too.

Everything a kind brings is here: its Location (the primitives of core/locations/base.py
ObjectLocation) and its `KIND`. Nothing under defs/ or cli/ names it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from backup_assets.core.errors import NotFound, PermanentStorageError
from backup_assets.core.locations.base import CHUNK, ObjectLocation
from backup_assets.core.locations.registry import LocationKind, LocationSettings, Variable

STORES: dict[str, dict[str, tuple[bytes, str | None, datetime]]] = {}  # bucket -> key -> (data, sha256, mtime)
_LOCK = threading.Lock()


class VaultLocation(ObjectLocation):
    name = "vault"

    def __init__(self, bucket: str, token: str, *, prefix: str = "", retention_days: int = 7):
        super().__init__(prefix=prefix, retention_days=retention_days)
        self.bucket, self._token = bucket, token
        with _LOCK:
            self._objects = STORES.setdefault(bucket, {})

    def _check(self) -> None:
        if self.bucket == "down":
            raise PermanentStorageError(f"vault://{self.bucket}: the vault refuses every request")

    def _put_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        self._check()
        self._objects[key] = (Path(path).read_bytes(), sha256, datetime.now(timezone.utc))

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._check()
        self._objects[key] = (data, hashlib.sha256(data).hexdigest(), datetime.now(timezone.utc))

    def _get_bytes(self, key: str) -> bytes:
        self._check()
        if key not in self._objects:
            raise NotFound(f"{self._key_uri(key)}: not found")
        return self._objects[key][0]

    def _head(self, key: str) -> tuple[int, str | None]:
        data = self._get_bytes(key)
        return len(data), self._objects[key][1]

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        data = self._get_bytes(key)
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]

    def _list(self, prefix: str) -> Iterator[tuple[str, datetime | None]]:
        self._check()
        for key, (_data, _sha, mtime) in sorted(self._objects.items()):
            if key.startswith(prefix):
                yield key, mtime

    def _delete(self, key: str) -> None:
        self._check()
        self._objects.pop(key, None)

    def _key_uri(self, key: str) -> str:
        return f"vault://{self.bucket}/{key}"


def _build(settings: LocationSettings) -> VaultLocation:
    return VaultLocation(
        settings["VAULT_BUCKET"],
        settings["VAULT_TOKEN"],
        prefix=settings.prefix,
        retention_days=settings.retention_days,
    )


KIND = LocationKind(
    name="vault",
    display_name="In-memory vault (a test's)",
    description="an in-memory object store of this process",
    variables=(
        Variable("VAULT_BUCKET", "the vault's bucket", required=True),
        Variable("VAULT_TOKEN", "the vault's access token", required=True, secret=True),
    ),
    retention_days=7,
    build=_build,
    restore_order=5,  # before the local disk: `restore --location auto` tries it first
    ui_kind="memory",
    default=False,
)
