"""The index of a location: every backup it holds (tenant, backup id, time, size, digest, key id,
verification state), readable in a few requests per thousand tenants (docs/STORAGE.md, "The index").

    index/log/<tenant>/<backup>/<event>      one object per event, written by IndexingLocation as a
                                             put / put_manifest / put_verified / delete succeeds (a delete:
                                             before it); the NAME holds the event, so a listing reads them
    index/packs/<generation>/all-<i>         every backup's merged state, written by `compact`
    index/packs/<generation>/latest-<i>      each tenant's newest backup only: what `status` reads
    index/dirty/<id>                         "changed without the index" (no keyring to write an entry)

Concurrent writers never lose each other's entries: each writes objects of its own name; compaction
writes a new generation first and then deletes only what it read. Readers merge every generation and
log entry they find (the later event of a kind wins), so two compactions at once lose nothing either.

Trust: every entry and pack is authenticated (core/locations/index_format.py); one that fails is
ignored and reported, a pack that fails makes the index *unusable* (readers fall back to the
manifests; `rebuild --index` rewrites it). An index is *complete* once a reconcile (compact with the
location's listing) checked it against the manifests listed: before that, a backup it lacks may
exist, so it cannot tell "stale". Entries are hints a reader cross-checks where it lists anyway
(`list`, `prune`); an authenticated manifest read later wins over the index.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..archive.manifest import ArchiveInfo, DrillRecord, Manifest
from ..codec.keyring import Keyring
from ..errors import NotFound, TenantBackupError, TransientStorageError
from . import index_format as fmt
from .base import Location
from .index_format import DELETED, PUT, REFUSED, VERIFIED, Event, IndexFormatError, PutInfo, VerifiedInfo

log = logging.getLogger(__name__)

ALL, LATEST = "all", "latest"
PART_ROWS = 20_000  # rows per pack object (~1.5 MB of JSON, ~0.4 MB compressed)
TOMBSTONE_DAYS = 30  # a deleted backup's tombstone is kept this long in the packs
READ_CONCURRENCY = 16
VERIFIED_FIELDS = (
    "verified_at",
    "ok",
    "deep",
    "sha256",
)  # of a verification record (verified.json)  # objects read at once per location when they must be read one by one


# ------------------------------------------------------------------------------------ storage access


def _innermost(loc: Location):
    while hasattr(loc, "inner") and not hasattr(type(loc), "_list"):
        loc = loc.inner
    return loc


def _retry(loc: Location, fn: Callable, what: str):
    """fn(innermost location), retried on TransientStorageError like RetryingLocation does."""
    attempts = getattr(loc, "attempts", None) or getattr(getattr(loc, "inner", None), "attempts", None) or 3
    inner = _innermost(loc)
    for attempt in range(1, attempts + 1):
        try:
            return fn(inner)
        except TransientStorageError as exc:
            if attempt == attempts:
                raise TransientStorageError(f"{inner.name}: {what} failed after {attempt} attempts: {exc}") from None
            time.sleep(random.uniform(0, min(4.0, 0.5 * 2 ** (attempt - 1))))


def scope_of(loc: Location) -> str:
    return f"{loc.name}:{getattr(_innermost(loc), 'prefix', '') or ''}"


def index_root(loc: Location) -> str:
    prefix = getattr(_innermost(loc), "prefix", "") or ""
    return f"{prefix}/index/" if prefix else "index/"


def read_many(fn: Callable, items: Iterable, *, workers: int = READ_CONCURRENCY, progress=None) -> list:
    """[fn(item) …] with at most `workers` at once (the storage clients' own retries and timeouts
    apply to each); `progress(n)` after each item. Results in the order of `items`."""
    items = list(items)
    if not items:
        return []

    def one(item):
        try:
            return fn(item)
        finally:
            if progress is not None:
                progress(1)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="index") as pool:
        return list(pool.map(one, items))


# ------------------------------------------------------------------------------------ merged state


def _created_us(value) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1_000_000)


def _iso(us: int | None, *, seconds: bool = False) -> str | None:
    if us is None:
        return None
    moment = datetime.fromtimestamp(us / 1_000_000, timezone.utc)
    if seconds:
        return moment.isoformat(timespec="seconds")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def put_info(manifest: Manifest, sealed: bool) -> PutInfo:
    sha, size = manifest.stated_checksum()
    drill = manifest.drill
    majors = (drill.server_major, drill.source_major, drill.matches_source) if drill is not None else None
    return PutInfo(
        _created_us(manifest.created_at),
        size,
        sha,
        manifest.key_id,
        sealed,
        majors,
        manifest.total_rows if manifest.tables is not None else None,
    )


def verified_info(record: dict | None) -> VerifiedInfo | None:
    """verified.json's fields the index keeps (core/maintenance/copy_check.py Verification, whose JSON
    this is: a verification record, not a manifest)."""
    if not isinstance(record, dict):
        return None
    at, ok, deep, digest = (record.get(name) for name in VERIFIED_FIELDS)
    at = _created_us(at)
    return VerifiedInfo(
        at // 1_000_000 if at is not None else None,
        ok if isinstance(ok, bool) else None,
        deep if isinstance(deep, bool) else None,
        digest.lower() if isinstance(digest, str) else None,
    )


@dataclass
class BackupState:
    put: tuple | None = None  # (at, PutInfo)
    verified: tuple | None = None  # (at, VerifiedInfo)
    deleted: int | None = None  # at
    refused: tuple | None = None  # (at, reason)

    def apply(self, event: Event) -> None:
        if event.kind == PUT and (self.put is None or event.at > self.put[0]):
            self.put = (event.at, PutInfo.of(event.fields))
        elif event.kind == VERIFIED and (self.verified is None or event.at > self.verified[0]):
            self.verified = (event.at, VerifiedInfo.of(event.fields))
        elif event.kind == DELETED and (self.deleted is None or event.at > self.deleted):
            self.deleted = event.at
        elif event.kind == REFUSED and (self.refused is None or event.at > self.refused[0]):
            self.refused = (event.at, event.fields[0] if event.fields else "refused")

    def merge(self, other: "BackupState") -> None:
        if other.put is not None and (self.put is None or other.put[0] > self.put[0]):
            self.put = other.put
        if other.verified is not None and (self.verified is None or other.verified[0] > self.verified[0]):
            self.verified = other.verified
        if other.deleted is not None and (self.deleted is None or other.deleted > self.deleted):
            self.deleted = other.deleted
        if other.refused is not None and (self.refused is None or other.refused[0] > self.refused[0]):
            self.refused = other.refused

    @property
    def written(self) -> int | None:
        """When it was last stored (put or found refused); None: never."""
        times = [x[0] for x in (self.put, self.refused) if x is not None]
        return max(times) if times else None

    @property
    def live(self) -> bool:
        return _alive(self.written, self.deleted)

    def row(self, tenant_id: str, backup_id: str) -> list:
        return [
            tenant_id,
            backup_id,
            [self.put[0], list(self.put[1].as_fields())] if self.put else None,
            [self.verified[0], list(self.verified[1].as_fields())] if self.verified else None,
            self.deleted,
            list(self.refused) if self.refused else None,
        ]

    @classmethod
    def from_row(cls, row: list) -> tuple[tuple[str, str], "BackupState"]:
        t, b, put, ver, deleted, refused = row
        return (str(t), str(b)), cls(
            (int(put[0]), PutInfo.of(put[1])) if put else None,
            (int(ver[0]), VerifiedInfo.of(ver[1])) if ver else None,
            int(deleted) if deleted is not None else None,
            (int(refused[0]), str(refused[1])) if refused else None,
        )


@dataclass(frozen=True)
class IndexedBackup:
    """One live backup as the index knows it (authenticated by the index, derived from its sealed
    manifest when it was stored)."""

    location: str
    tenant_id: str
    backup_id: str
    info: PutInfo | None  # None: refused
    verified: VerifiedInfo | None  # only a verification of these bytes
    refused: str | None = None
    stored_at: datetime | None = None

    @property
    def created_at(self) -> str | None:
        return _iso(self.info.created_us) if self.info else None

    def manifest(self) -> Manifest:
        """A partial Manifest of what the index holds (ids, created_at, archive size/sha256/key_id,
        drill majors): what status and the catalog read from a manifest, without a request."""
        info = self.info or PutInfo(None, None, None, None, False, None, None)
        drill = None
        if info.drill:
            server, source, matches = info.drill
            drill = DrillRecord(server_major=server, source_major=source, matches_source=matches)
        return Manifest(
            tenant_id=self.tenant_id,
            backup_id=self.backup_id,
            created_at=self.created_at,
            archive=ArchiveInfo(size=info.size, sha256=info.sha256, key_id=info.key_id),
            drill=drill,
        )

    def verification_record(self) -> dict | None:
        """The fields of its verified.json that status reads (copy_check.Verification)."""
        v = self.verified
        if v is None:
            return None
        at = _iso(v.verified_at * 1_000_000, seconds=True) if v.verified_at is not None else None
        return {"sha256": v.sha256, "ok": v.ok, "deep": v.deep, "verified_at": at, "by": "index"}


@dataclass
class IndexView:
    location: str
    states: dict = field(default_factory=dict)  # (tenant, backup) -> BackupState
    complete_as_of: int | None = None  # ns of the newest reconcile any generation carries
    generations: list = field(default_factory=list)
    damaged: list = field(default_factory=list)  # packs that failed: the index is unusable
    ignored: list = field(default_factory=list)  # log entries that failed authentication
    dirty: list = field(default_factory=list)  # keys of dirty markers
    log_keys: list = field(default_factory=list)
    pack_keys: list = field(default_factory=list)
    requests: int = 0
    latest_only: bool = False
    # (tenant, backup) of live backups read lean (read_index pairs=True): no state kept for them
    pairs: list = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Whether a reader may take the index's word for what the location holds."""
        return self.complete_as_of is not None and not self.damaged and not self.dirty

    def why_unusable(self) -> str:
        if self.damaged:
            return f"index damaged ({'; '.join(self.damaged[:3])}): run `tenant-backup rebuild --index`"
        if self.dirty:
            return "index out of date (changed without a keyring): run `tenant-backup rebuild --index`"
        if self.complete_as_of is None:
            return "no complete index yet: run `tenant-backup rebuild --index`"
        return ""

    def apply(self, key: tuple[str, str], state: BackupState) -> None:
        known = self.states.get(key)
        if known is None:
            self.states[key] = state
        else:
            known.merge(state)

    def backup(self, tenant_id: str, backup_id: str) -> IndexedBackup | None:
        state = self.states.get((tenant_id, backup_id))
        if state is None or not state.live:
            return None
        info = state.put[1] if state.put and (state.refused is None or state.put[0] > state.refused[0]) else None
        refused = None if info is not None else state.refused[1]
        verified = state.verified[1] if state.verified else None
        if verified is not None and (info is None or not info.sha256 or verified.sha256 != info.sha256.lower()):
            verified = None  # a record of other bytes (re-written since): not this copy's
        stored = datetime.fromtimestamp(state.written / 1e9, timezone.utc)
        return IndexedBackup(self.location, tenant_id, backup_id, info, verified, refused, stored)

    def backups(self, tenant_id: str | None = None) -> list[IndexedBackup]:
        out = [
            self.backup(t, b) for (t, b), s in self.states.items() if s.live and (tenant_id is None or t == tenant_id)
        ]
        return sorted(out, key=lambda x: (x.tenant_id, x.backup_id))

    def live_keys(self) -> list[tuple[str, str]]:
        """(tenant, backup) of every live backup: what judging missing copies needs of each row."""
        return [key for key, s in self.states.items() if s.live] + self.pairs

    def newest(self) -> dict[str, IndexedBackup]:
        """tenant -> its newest live backup (by backup id, which starts with its UTC time)."""
        best: dict[str, str] = {}
        for (t, b), s in self.states.items():
            if s.live and b > best.get(t, ""):
                best[t] = b
        return {t: self.backup(t, b) for t, b in best.items()}


# ------------------------------------------------------------------------------------------- reading


def _parse_key(root: str, key: str):
    rest = key[len(root) :].split("/")
    if len(rest) == 4 and rest[0] == "log":
        return ("log", rest[1], rest[2], rest[3])
    if len(rest) == 3 and rest[0] == "packs":
        kind, _, part = rest[2].partition("-")
        if kind in (ALL, LATEST) and part.isdigit():
            return ("pack", rest[1], kind, int(part))
    if len(rest) == 2 and rest[0] == "dirty":
        return ("dirty",)
    return None


def read_index(
    loc: Location,
    keyring: Keyring,
    *,
    latest_only: bool = False,
    pairs: bool = False,
    workers: int = READ_CONCURRENCY,
) -> IndexView:
    """The index as stored: one listing of index/, the packs (only the `latest` ones when
    `latest_only` and there is one generation), and log entries too long for a name.
    `pairs` (what status reads: each tenant's newest, and which backups are live to judge missing
    copies): with one generation, the `latest` packs in full and of the `all` rows only the live
    (tenant, backup) pairs (view.pairs), except for tenants a log entry or a `latest` row touches,
    which are merged in full — a year of weekly backups per tenant held as pairs, not as states.
    Packs are decoded a batch at a time, so memory holds a few packs' rows, not every pack's.
    TenantBackupError when the location cannot be listed."""
    root, scope = index_root(loc), scope_of(loc)
    view = IndexView(loc.name, latest_only=latest_only)
    keys = _retry(loc, lambda inner: [k for k, _ in inner._list(root)], "index listing")
    view.requests += 1 + len(keys) // 1000
    packs: dict[str, dict[str, dict[int, str]]] = {}
    bodies = []
    for key in keys:
        parsed = _parse_key(root, key)
        if parsed is None:
            continue
        if parsed[0] == "log":
            view.log_keys.append(key)
            _, t, b, name = parsed
            if f"{fmt.SEP}body{fmt.SEP}" in name:
                bodies.append((key, t, b))
                continue
            try:
                event = fmt.parse_log_name(t, b, name, scope, keyring)
            except IndexFormatError as exc:
                view.ignored.append(str(exc))
                continue
            view.apply((t, b), _state_of(event))
        elif parsed[0] == "pack":
            view.pack_keys.append(key)
            packs.setdefault(parsed[1], {}).setdefault(parsed[2], {})[parsed[3]] = key
        else:
            view.dirty.append(key)
    view.generations = sorted(packs)
    one = len(packs) == 1
    kinds = [LATEST] if latest_only and one else [LATEST, ALL] if pairs and one else [ALL]
    wanted = [
        (gen, kind, parts) for kind in kinds for gen, by_kind in packs.items() for parts in [by_kind.get(kind, {})]
    ]
    for gen, kind, parts in wanted:
        if not parts:
            view.damaged.append(f"generation {gen} has no {kind} pack")
    jobs = [(gen, kind, n, key, len(parts)) for gen, kind, parts in wanted for n, key in sorted(parts.items())]
    view.requests += len(jobs) + len(bodies)
    for outcome in read_many(lambda job: _load_body(loc, job, scope, keyring), bodies, workers=workers):
        if isinstance(outcome, str):
            view.ignored.append(outcome)
        else:
            view.apply((outcome.tenant_id, outcome.backup_id), _state_of(outcome))
    touched = {t for t, _ in view.states}  # tenants the log speaks of: merged in full
    for start in range(0, len(jobs), workers):  # `latest` before `all`: its rows are states first
        for outcome in read_many(lambda job: _load_pack(loc, job, scope, keyring), jobs[start : start + workers]):
            if isinstance(outcome, str):
                view.damaged.append(outcome)
                continue
            header, rows = outcome
            if header.complete_as_of is not None:
                view.complete_as_of = max(view.complete_as_of or 0, header.complete_as_of)
            lean = pairs and header.kind == ALL
            for row in rows:
                if lean and row[0] not in touched and (row[0], row[1]) not in view.states:
                    if _live_row(row):
                        view.pairs.append((row[0], row[1]))
                    continue
                key, state = BackupState.from_row(row)
                view.apply(key, state)
    return view


def _alive(written: int | None, deleted: int | None) -> bool:
    """Stored (put or found refused) and not deleted since: the one rule of a live backup."""
    return written is not None and (deleted is None or written > deleted)


def _live_row(row: list) -> bool:
    """BackupState.from_row(row).live, without building the state."""
    times = [int(x[0]) for x in (row[2], row[5]) if x]  # [t, b, put, verified, deleted, refused]
    return _alive(max(times) if times else None, int(row[4]) if row[4] is not None else None)


def _state_of(event: Event) -> BackupState:
    state = BackupState()
    state.apply(event)
    return state


def _load_pack(loc: Location, job, scope: str, keyring: Keyring):
    gen, kind, n, key, have = job
    try:
        data = _retry(loc, lambda inner: inner._get_bytes(key), "index pack read")
        header, rows = fmt.decode_pack(data, scope, keyring, key)
        if header.generation != gen or header.kind != kind or header.part != n or header.parts != have:
            raise IndexFormatError(f"{key}: part {header.part} of {header.parts}, {have} found")
        return header, rows
    except (IndexFormatError, TenantBackupError, ValueError, TypeError) as exc:
        return f"pack {exc}"


def _load_body(loc: Location, job, scope: str, keyring: Keyring):
    key, t, b = job
    try:
        return fmt.parse_log_body(
            t, b, _retry(loc, lambda inner: inner._get_bytes(key), "index entry read"), scope, keyring
        )
    except NotFound:
        return "entry gone"
    except (IndexFormatError, TenantBackupError) as exc:
        return f"entry {exc}"


# ------------------------------------------------------------------------------------------- writing


def write_event(loc: Location, event: Event, keyring: Keyring) -> None:
    """Store one event as a log entry (its own object: concurrent writers never collide)."""
    scope = scope_of(loc)
    base = f"{index_root(loc)}log/{event.tenant_id}/{event.backup_id}/"
    name = fmt.log_name(event, scope, keyring)
    body = b""
    if name is None:
        name, body = fmt.body_of(event, scope, keyring)
    # Its name is new (the event's time and MAC): written as a new object, except by a retry (the first
    # attempt may have stored it: B2 then removes the older version).
    attempts: list[int] = []

    def write(inner) -> None:
        attempts.append(1)
        (inner._put_new_bytes if len(attempts) == 1 else inner._put_bytes)(base + name, body)

    _retry(loc, write, "index entry write")


def mark_dirty(loc: Location) -> None:
    key = f"{index_root(loc)}dirty/{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    _retry(loc, lambda inner: inner._put_bytes(key, b"changed without the index's key"), "index mark")


def index_hints(loc: Location, keyring: Keyring | None) -> IndexView | None:
    """The location's index for a reader that lists the location anyway (list, prune): its entries are
    authenticated hints for the backups the listing shows (no manifest read for those), whether or not
    the index is complete; None when there is no keyring, no index kind, or it cannot be read (the
    reader then reads manifests, as before)."""
    if keyring is None or not hasattr(type(_innermost(loc)), "_list"):
        return None
    try:
        return read_index(loc, keyring)
    except TenantBackupError as exc:
        log.warning("%s: index not read (%s): manifests are read one by one", loc.name, exc)
        return None
