"""Retrying wrapper around any Location (restic's model: retry once, in one place).

Only TransientStorageError is retried; NotFound, PermanentStorageError and CorruptObject go straight
through. Attempts and backoff are bounded, so the worst case time is known:
attempts x (backend's own bounded time) + sum of the sleeps.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from pathlib import Path

from ..archive.manifest import Manifest
from ..errors import TransientStorageError
from .base import BackupRef, Location, StoredObject
from .garbage import Garbage, Survey

log = logging.getLogger(__name__)


class RetryingLocation(Location):
    def __init__(
        self, inner: Location, *, attempts: int = 3, base_delay: float = 0.5, max_delay: float = 4.0, sleep=time.sleep
    ):
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def retention_days(self) -> int:  # type: ignore[override]
        return self.inner.retention_days

    def __getattr__(self, item):  # backend-specific extras (bucket, root, prefix, archive_key, ...)
        if item == "inner":  # not set yet (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(item)
        return getattr(self.inner, item)

    def _call(self, op: str, *args, **kwargs):
        for attempt in range(1, self.attempts + 1):
            try:
                return getattr(self.inner, op)(*args, **kwargs)
            except TransientStorageError as exc:
                if attempt == self.attempts:
                    raise TransientStorageError(
                        f"{self.inner.name}: {op} failed after {attempt} attempts: {exc}"
                    ) from None
                # Full jitter: concurrent tenants hitting the same outage do not retry in lockstep.
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
                log.warning(
                    "%s: %s failed (%s); retry %d/%d in %.1fs",
                    self.inner.name,
                    op,
                    exc,
                    attempt,
                    self.attempts - 1,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    def put(self, tenant_id: str, backup_id: str, archive_path: Path, manifest: Manifest) -> StoredObject:
        return self._call("put", tenant_id, backup_id, archive_path, manifest)

    def get(
        self, tenant_id: str, backup_id: str, dest_path: Path, *, expect=None, known_complete: bool = False
    ) -> StoredObject:
        return self._call("get", tenant_id, backup_id, dest_path, expect=expect, known_complete=known_complete)

    def verify(self, tenant_id: str, backup_id: str, *, known_complete: bool = False) -> StoredObject:
        return self._call("verify", tenant_id, backup_id, known_complete=known_complete)

    def get_manifest(self, tenant_id: str, backup_id: str) -> Manifest:
        return self._call("get_manifest", tenant_id, backup_id)

    def put_manifest(self, tenant_id: str, backup_id: str, manifest: Manifest) -> None:
        return self._call("put_manifest", tenant_id, backup_id, manifest)

    def stat(self, tenant_id: str, backup_id: str) -> StoredObject:
        return self._call("stat", tenant_id, backup_id)

    def survey(self) -> Survey:
        return self._call("survey")

    def list(self, tenant_id: str | None = None, *, survey: Survey | None = None) -> list[BackupRef]:
        return self._call("list", tenant_id, survey=survey)

    def garbage(self, older_than: datetime, survey: Survey | None = None) -> list[Garbage]:
        return self._call("garbage", older_than, survey)

    def remove_garbage(self, item: Garbage) -> None:
        return self._call("remove_garbage", item)

    def delete(self, tenant_id: str, backup_id: str) -> None:
        return self._call("delete", tenant_id, backup_id)

    def uri(self, tenant_id: str, backup_id: str) -> str:
        return self.inner.uri(tenant_id, backup_id)

    def put_verified(self, tenant_id: str, backup_id: str, record: dict, *, known_complete: bool = False) -> None:
        return self._call("put_verified", tenant_id, backup_id, record, known_complete=known_complete)

    def get_verified(self, tenant_id: str, backup_id: str) -> dict | None:
        return self._call("get_verified", tenant_id, backup_id)

    def __repr__(self) -> str:
        return f"<Retrying x{self.attempts} {self.inner!r}>"
