"""IndexingLocation: a Location that keeps its index (core/locations/index.py) as writes succeed.
config.py wraps every configured location in it (outside RetryingLocation)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..archive.manifest import Manifest
from ..codec.keyring import Keyring
from ..errors import ArchiveError, ConfigError, TenantBackupError
from .base import Location, StoredObject
from .index import mark_dirty, put_info, verified_info, write_event
from .index_format import DELETED, PUT, REFUSED, VERIFIED, Event

log = logging.getLogger(__name__)


def supports_index(loc: Location) -> bool:
    """Whether `loc` stores objects by key (every kind built on core/locations/base.py ObjectLocation)."""
    while not hasattr(type(loc), "_put_bytes") and hasattr(loc, "inner"):
        loc = loc.inner
    return hasattr(type(loc), "_put_bytes") and hasattr(type(loc), "_list")


class IndexingLocation(Location):
    """A Location that keeps its index: an entry after each put / put_manifest / put_verified that
    succeeded, and before each delete (a delete whose entry cannot be written does not happen).
    A put whose entry cannot be written stays stored: the index lacks it until the next reconcile, so
    status calls that tenant stale there (never the reverse)."""

    def __init__(self, inner: Location, keyring: Callable[[], Keyring]):
        self.inner = inner
        self._keyring_source = keyring
        self._keyring: Keyring | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def retention_days(self) -> int:  # type: ignore[override]
        return self.inner.retention_days

    def __getattr__(self, item):
        if item == "inner":
            raise AttributeError(item)
        return getattr(self.inner, item)

    def _keys(self) -> Keyring | None:
        if self._keyring is None:
            try:
                self._keyring = self._keyring_source()
            except ConfigError:
                return None
        return self._keyring

    def _after(self, event_of: Callable[[Keyring], Event]) -> None:
        keyring = self._keys()
        try:
            if keyring is None:
                return  # nothing lost: a backup the index lacks reads as stale until a reconcile
            write_event(self.inner, event_of(keyring), keyring)
        except (TenantBackupError, OSError) as exc:
            log.warning("%s: index entry not written (%s): the next reconcile adds it", self.name, exc)

    def _put_event(self, tenant_id: str, backup_id: str, manifest: Manifest, keyring: Keyring) -> Event:
        where = self.inner.uri(tenant_id, backup_id)
        try:
            sealed = manifest.verify_seal(keyring, where=where)
        except ArchiveError as exc:
            return Event(REFUSED, tenant_id, backup_id, time.time_ns(), (str(exc)[:300],))
        return Event(PUT, tenant_id, backup_id, time.time_ns(), put_info(manifest, sealed).as_fields())

    def put(self, tenant_id: str, backup_id: str, archive_path: Path, manifest: Manifest, **kw) -> StoredObject:
        stored = self.inner.put(tenant_id, backup_id, archive_path, manifest, **kw)
        self._after(lambda keys: self._put_event(stored.tenant_id, backup_id, manifest, keys))
        return stored

    def put_manifest(self, tenant_id: str, backup_id: str, manifest: Manifest, **kw) -> None:
        self.inner.put_manifest(tenant_id, backup_id, manifest, **kw)
        self._after(lambda keys: self._put_event(tenant_id, backup_id, manifest, keys))

    def put_verified(self, tenant_id: str, backup_id: str, record: dict, **kw) -> None:
        self.inner.put_verified(tenant_id, backup_id, record, **kw)
        info = verified_info(record)
        if info is not None:
            self._after(lambda keys: Event(VERIFIED, tenant_id, backup_id, time.time_ns(), info.as_fields()))

    def delete(self, tenant_id: str, backup_id: str, **kw) -> None:
        keyring = self._keys()
        if keyring is None:
            mark_dirty(self.inner)  # first: the index is not trusted until a reconcile
        else:  # first: the index never outlives a backup the tool deleted (raises: nothing deleted)
            write_event(self.inner, Event(DELETED, tenant_id, backup_id, time.time_ns()), keyring)
        self.inner.delete(tenant_id, backup_id, **kw)

    def __repr__(self) -> str:
        return f"<Indexed {self.inner!r}>"


def _forward(name: str):
    def method(self, *args, **kwargs):
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


# Every other method of the contract (reads, listings, garbage) goes to the wrapped location as it is,
# whatever its signature: the index only follows writes.
for _name in sorted(Location.__abstractmethods__ | {"uri", "get_verified", "put_verified"}):
    if _name not in IndexingLocation.__dict__:
        setattr(IndexingLocation, _name, _forward(_name))
IndexingLocation.__abstractmethods__ = frozenset()
