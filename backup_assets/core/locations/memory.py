"""What this process knows a backup folder holds, so a write or a read need not ask the store first:
one bounded record per (location root, tenant, backup id), in one place (base.py reads and writes it).

- `minted` / `first_put`: a backup id this process minted (core/archive/export.py) holds nothing
  anywhere before its first put: ids are unique without coordination (a timestamp and 32 random
  bits) and nothing else writes under an id before its first put. So the first put of it to each
  location lists nothing; every later put (a retry, a location re-run) and every put in another
  process (a re-execution, a redelivered task) lists as before.
- `named`: the SHA-256 the backup's manifest named when this process last wrote or read it (a read
  of the archive right after its manifest need not read the manifest again: `known_complete`).
- `absent`: names this process's put found absent from the folder (`verified.json` is then written
  as a new object: on B2 without listing older versions of a name that has none).

Forgetting (the record least recently written beyond LIMIT, or a delete of the backup) only makes the
next write or read ask the store again; it is never wrong. What another process writes meanwhile is
not seen here, as before: a `named` that no longer holds is found by the read (base.py _locate
reads the manifest again when the archive it named is gone).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

LIMIT = 4096  # records kept: a batch worker's recent backups, not every backup it ever touched
UNKNOWN = "?"  # `named` before this process wrote or read the manifest


@dataclass
class Known:
    begun: bool = False  # a put of this backup to this location began in this process
    named: str | None = UNKNOWN  # the manifest's SHA-256 as last written or read here (None: states none)
    absent: set[str] = field(default_factory=set)


class FolderMemory:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._minted: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._known: OrderedDict[tuple[str, str, str], Known] = OrderedDict()
        self._lock = threading.Lock()

    def _bounded(self, table: OrderedDict, key, value):
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.limit:
            table.popitem(last=False)
        return value

    def minted(self, tenant_id: str, backup_id: str) -> None:
        """Note a backup id this process has just minted for a new archive (no location holds it yet)."""
        with self._lock:
            self._bounded(self._minted, (tenant_id, backup_id), None)

    def first_put(self, root: str, tenant_id: str, backup_id: str) -> bool:
        """Whether this is the first put of a backup id minted here to the location at `root` (its
        folder then holds nothing); records the put as begun, so the answer is True once at most."""
        with self._lock:
            if (tenant_id, backup_id) not in self._minted:
                return False
            known = self._known.get((root, tenant_id, backup_id))
            if known is not None and known.begun:
                return False
            known = known or Known()
            known.begun = True
            self._bounded(self._known, (root, tenant_id, backup_id), known)
            return True

    def named(self, root: str, tenant_id: str, backup_id: str) -> str | None:
        """The manifest's SHA-256 as last written or read here; UNKNOWN when not known."""
        with self._lock:
            known = self._known.get((root, tenant_id, backup_id))
            return known.named if known is not None else UNKNOWN

    def stored(self, root: str, tenant_id: str, backup_id: str, named: str | None, absent=None) -> None:
        """A manifest naming `named` was written (with `absent`: the names the put found absent) or read."""
        with self._lock:
            known = self._known.get((root, tenant_id, backup_id)) or Known()
            known.named = named
            if absent is not None:
                known.absent = set(absent)
            self._bounded(self._known, (root, tenant_id, backup_id), known)

    def take_absent(self, root: str, tenant_id: str, backup_id: str, name: str) -> bool:
        """Whether `name` was absent at this process's put and not written since; it is written now."""
        with self._lock:
            known = self._known.get((root, tenant_id, backup_id))
            if known is None or name not in known.absent:
                return False
            known.absent.discard(name)
            return True

    def forget(self, root: str, tenant_id: str, backup_id: str) -> None:
        """The backup is being deleted: what was known of its folder no longer holds (a put of the id
        after this lists its folder, wherever it goes: a delete that failed half-way may leave objects)."""
        with self._lock:
            self._known.pop((root, tenant_id, backup_id), None)
            self._minted.pop((tenant_id, backup_id), None)


MEMORY = FolderMemory()


def minted_here(tenant_id: str, backup_id: str) -> None:
    """MEMORY.minted: core/archive/export.py calls it for each backup id it mints."""
    MEMORY.minted(tenant_id, backup_id)
