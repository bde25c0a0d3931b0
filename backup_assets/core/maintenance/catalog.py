"""What the storage locations hold, read from their manifests alone (no Dagster database), and
checks of single stored copies.

A backup (tenant id + backup id) is usually stored in several locations; `collect` merges them into
one entry per backup with the locations holding it; `share_of` is the rotating verify's selection.
Checking one copy is core/maintenance/copy_check.py.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping

from ..archive.manifest import BACKUP_ID_RE, Manifest
from ..errors import NotFound, TenantBackupError
from ..locations import Location

log = logging.getLogger(__name__)


def parse_created_at(value) -> datetime | None:
    """A manifest's created_at as an aware UTC datetime; None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # not what we write; read as UTC rather than local time
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@dataclass
class CatalogEntry:
    tenant_id: str
    backup_id: str
    created_at: str | None
    manifests: dict[str, Manifest] = field(default_factory=dict)  # location name -> its manifest
    rows: int | None = None  # total rows, when the manifests came from an index (which keeps only that)

    @property
    def locations(self) -> list[str]:
        return list(self.manifests)

    def _agreed(self, values: list):
        distinct = list(dict.fromkeys(values))
        return distinct[0] if len(distinct) == 1 else distinct  # copies disagree: show every value

    @property
    def size(self):
        return self._agreed([m.archive.size if m.archive else None for m in self.manifests.values()])

    @property
    def key_id(self):
        return self._agreed([m.key_id for m in self.manifests.values()])

    @property
    def total_rows(self) -> int | None:
        for m in self.manifests.values():
            if m.tables is not None:
                return m.total_rows
        return self.rows

    def as_dict(self) -> dict:
        return {
            "tenant_id": self.tenant_id,
            "backup_id": self.backup_id,
            "created_at": self.created_at,
            "locations": self.locations,
            "size": self.size,
            "key_id": self.key_id,
            "total_rows": self.total_rows,
        }


@dataclass
class CollectError:
    location: str
    message: str


def collect(
    locations: dict[str, Location], tenant_id: str | None = None, *, keyring=None, progress=None
) -> tuple[list[CatalogEntry], list[CollectError]]:
    """Every complete backup in `locations`, one entry per (tenant, backup), newest first.

    A location that cannot be listed, or a manifest that cannot be read, is returned as an error and
    the rest is still collected: one unreachable location must not hide the others' backups. The
    listing says what exists; with `keyring`, what the location's index holds of a listed backup is
    taken from it (core/locations/index.py: authenticated, no request), and the other manifests are
    read concurrently (`progress(n)` as they arrive). The locations are read concurrently too.
    """
    from ..locations.index import index_hints, read_many

    entries: dict[tuple[str, str], CatalogEntry] = {}
    errors: list[CollectError] = []

    def read(item):
        loc, ref = item
        try:
            return loc.get_manifest(ref.tenant_id, ref.backup_id)
        except NotFound:
            return None  # deleted between list and read (a concurrent prune)
        except TenantBackupError as exc:
            return exc

    def gather(item):
        """One location: its listing, what its index holds of it, the other manifests read."""
        name, loc = item
        try:
            refs = loc.list(tenant_id)
        except TenantBackupError as exc:
            return [], [CollectError(name, f"cannot list: {exc}")]
        hints = index_hints(loc, keyring)
        found, unread, failed = [], [], []
        for ref in refs:
            hit = hints.backup(ref.tenant_id, ref.backup_id) if hints is not None else None
            if hit is not None and hit.info is not None:
                found.append((ref, hit.manifest(), hit.info.rows))
            else:
                unread.append(ref)
        manifests = read_many(read, [(loc, ref) for ref in unread], progress=progress)
        for ref, manifest in zip(unread, manifests, strict=True):
            if isinstance(manifest, TenantBackupError):
                failed.append(CollectError(name, f"{ref.tenant_id}/{ref.backup_id}: cannot read manifest: {manifest}"))
            elif manifest is not None:
                found.append((ref, manifest, None))
        return sorted(found, key=lambda x: (x[0].tenant_id, x[0].backup_id)), failed

    # The locations are read at once (each its own endpoint: their round trips overlap), then merged
    # in their configured order, as one after the other would.
    for name, (found, failed) in zip(locations, read_many(gather, list(locations.items())), strict=True):
        errors.extend(failed)
        for ref, manifest, rows in found:
            key = (ref.tenant_id, ref.backup_id)
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = CatalogEntry(ref.tenant_id, ref.backup_id, manifest.created_at)
            entry.manifests[name] = manifest
            if entry.rows is None:
                entry.rows = rows
    return sort_newest_first(list(entries.values())), errors


def _age_key(created_at: str | None, backup_id: str):
    moment = parse_created_at(created_at)
    # Unknown time sorts as oldest; the backup id (which starts with its UTC time) breaks ties.
    return (moment or datetime.min.replace(tzinfo=timezone.utc), backup_id)


def sort_newest_first(entries: list[CatalogEntry]) -> list[CatalogEntry]:
    return sorted(entries, key=lambda e: _age_key(e.created_at, e.backup_id), reverse=True)


# ------------------------------------------------------------------------------------ verify shares

VERIFY_CYCLE_DAYS = 28  # the daily verify job re-reads every copy once in this many days


def share_of(location_name: str, tenant_id: str, backup_id: str, shares: int = VERIFY_CYCLE_DAYS) -> int:
    """Which of `shares` shares (0 … shares-1) this stored copy falls in: stable, and spread evenly.

    The one selection of a rotating verify: the daily Dagster job re-reads share `today % 28`
    (defs/operations/jobs.py `verify_bucket`), `tenant-backup verify --all --subset n/t` share n-1
    of t (so `--subset n/28` is exactly day n-1 of the job's cycle)."""
    if shares < 1:
        raise ValueError(f"shares must be >= 1, got {shares}")
    digest = hashlib.sha256(f"{location_name}/{tenant_id}/{backup_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % shares


def parse_subset(text: str) -> tuple[int, int]:
    """`n/t` (1 <= n <= t) -> (share index n-1, t); ConfigError otherwise."""
    from ..errors import ConfigError

    try:
        n, t = (int(part) for part in text.strip().split("/"))
    except ValueError:
        raise ConfigError(f"--subset {text!r}: expected n/t, e.g. 1/7 (share n of t)") from None
    if not 1 <= n <= t:
        raise ConfigError(f"--subset {text!r}: need 1 <= n <= t")
    return n - 1, t


# ---------------------------------------------------------------------------------- missing copies

MISSING_GRACE = timedelta(hours=1)  # a backup this young may still be on its way to a location


def backup_time(backup_id: str) -> datetime | None:
    """The UTC time a backup id starts with (core/archive/manifest.py new_backup_id); None if none."""
    if not isinstance(backup_id, str) or not BACKUP_ID_RE.fullmatch(backup_id):
        return None
    stamp = backup_id[:16]  # YYYYmmddTHHMMSSZ; sliced, not strptime: status judges every backup held
    if len(stamp) != 16 or stamp[8] != "T" or stamp[15] != "Z" or not (stamp[:8] + stamp[9:15]).isdigit():
        return None
    try:
        return datetime(
            int(stamp[0:4]),
            int(stamp[4:6]),
            int(stamp[6:8]),
            int(stamp[9:11]),
            int(stamp[11:13]),
            int(stamp[13:15]),
            tzinfo=timezone.utc,
        )
    except ValueError:
        return None


@dataclass
class MissingCopy:
    """A backup a location should hold by its retention but does not."""

    location: str
    tenant_id: str
    backup_id: str
    held_by: list[str]  # the locations that do hold it
    retention_days: int

    @property
    def fix(self) -> str:
        return f"tenant-backup rebuild --location {self.location}"

    @property
    def message(self) -> str:
        return (
            f"missing: backup {self.backup_id} is in {', '.join(self.held_by)} but not in {self.location},"
            f" which should hold it ({self.retention_days}-day retention); fix: {self.fix}"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "message": self.message, "fix": self.fix}


def missing_copies(
    listings: Mapping[str, Iterable[tuple[str, str]]],
    retention_days: Mapping[str, int],
    *,
    now: datetime | None = None,
    grace: timedelta = MISSING_GRACE,
    tenants: Iterable[str] | None = None,
) -> list[MissingCopy]:
    """The pure rule, from listings alone (location -> its (tenant id, backup id) pairs; a location
    that could not be listed is left out by the caller, so nothing is judged there): a backup is
    missing in location L when another listed location holds it, it is younger than L's retention,
    older than `grace` (a running backup may still be writing L), and not older than the oldest backup
    L holds of any tenant (L existed then: a location added later is not blamed for what came
    before it, and an empty location judges nothing — `status` calls that stale). `tenants`: only these.
    Sorted by location, tenant, backup."""
    now = now or datetime.now(timezone.utc)
    wanted = set(tenants) if tenants is not None else None
    held: dict[str, set[tuple[str, str]]] = {name: set(pairs) for name, pairs in listings.items()}
    everywhere: dict[tuple[str, str], list[str]] = {}
    for name, pairs in held.items():
        for pair in pairs:
            everywhere.setdefault(pair, []).append(name)
    made_at = {b: backup_time(b) for _, b in everywhere}  # once per backup id, not per location
    missing = []
    for name, pairs in held.items():
        times = [t for t in (made_at[b] for _, b in pairs) if t is not None]
        if not times:
            continue
        since, days = min(times), retention_days[name]
        for (tenant_id, backup_id), holders in everywhere.items():
            if name in holders or (wanted is not None and tenant_id not in wanted):
                continue
            made = made_at[backup_id]
            if made is None or made < since or now - made < grace or now - made >= timedelta(days=days):
                continue
            missing.append(MissingCopy(name, tenant_id, backup_id, sorted(holders), days))
    return sorted(missing, key=lambda m: (m.location, m.tenant_id, m.backup_id))
