"""Compaction and reconcile of a location's index (core/locations/index.py; docs/STORAGE.md, "The index").

`compact(loc, keyring)` packs what the index holds (every generation and log entry it reads) into one
new generation, then deletes exactly what it read: log entries written meanwhile stay, and are read
beside the new packs. With `reconcile=True` (the default) it also lists the location's manifests and
checks the index against them, so that the new generation is *complete* (`complete_as_of`):
- a listed backup the index lacks (written without the index, or its entry failed): its manifest is
  read and authenticated (core/archive/seal.py read_manifest), and its verified.json, concurrently;
  a manifest that fails authentication is recorded as refused (status shows it stale, with why);
- a backup the index holds but the listing does not (deleted without the tool): dropped;
- a tombstone newer than a listed manifest wins (a delete in progress), so a reconcile never revives
  what is being deleted.
`full=True` (`tenant-backup rebuild --index`) re-reads every listed manifest and keeps nothing of the
old index but its tombstones: what to do when the index is damaged, or its key was lost.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..archive.seal import read_manifest
from ..codec.keyring import Keyring
from ..errors import ArchiveError, NotFound, TenantBackupError
from . import index_format as fmt
from .base import Location
from .index import (
    ALL,
    LATEST,
    PART_ROWS,
    READ_CONCURRENCY,
    TOMBSTONE_DAYS,
    BackupState,
    IndexView,
    _retry,
    index_root,
    put_info,
    read_index,
    read_many,
    scope_of,
    verified_info,
)
from .index_format import PUT, REFUSED, VERIFIED, Event

DAY_NS = 86_400 * 10**9


@dataclass
class CompactReport:
    location: str
    generation: str = ""
    backups: int = 0  # live backups in the new generation
    tenants: int = 0
    complete: bool = False
    log_entries: int = 0  # log entries packed (and deleted)
    packs_replaced: int = 0
    manifests_read: int = 0
    dropped: int = 0  # in the index, no longer listed: deleted without the tool
    refused: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # manifests that could not be read now
    ignored: list = field(default_factory=list)  # index objects that failed authentication
    seconds: float = 0.0

    def line(self) -> str:
        parts = [
            f"{self.location}: index generation {self.generation}: {self.backups} backups of {self.tenants} tenants",
            "complete" if self.complete else "NOT complete (no reconcile)",
            f"{self.log_entries} log entries packed",
            f"{self.manifests_read} manifests read",
        ]
        if self.dropped:
            parts.append(f"{self.dropped} backups no longer listed dropped")
        if self.refused:
            parts.append(f"{len(self.refused)} manifests refused")
        if self.ignored:
            parts.append(f"{len(self.ignored)} index objects failed authentication and were ignored")
        if self.errors:
            parts.append(f"{len(self.errors)} manifests unreadable")
        return "; ".join(parts) + f" ({self.seconds:.1f} s)"


def _read_backup(loc: Location, keyring: Keyring, item) -> list:
    """Events of one listed backup read from its manifest (and verified.json); [] if gone."""
    tenant_id, backup_id, at = item
    try:
        manifest, sealed = read_manifest(loc, tenant_id, backup_id, keyring)
    except NotFound:
        return []  # deleted since the listing
    except ArchiveError as exc:  # not authentic, or not this backup's: refused, said so
        return [Event(REFUSED, tenant_id, backup_id, at, (str(exc)[:300],))]
    except TenantBackupError as exc:
        return [str(exc)]
    events = [Event(PUT, tenant_id, backup_id, at, put_info(manifest, sealed).as_fields())]
    try:
        info = verified_info(loc.get_verified(tenant_id, backup_id))
    except TenantBackupError:
        info = None
    if info is not None:
        when = info.verified_at * 10**9 if info.verified_at is not None else at
        events.append(Event(VERIFIED, tenant_id, backup_id, when, info.as_fields()))
    return events


def _delete_all(loc: Location, keys: list[str]) -> list[str]:
    failed = []
    for key in keys:
        try:
            _retry(loc, lambda inner: inner._delete(key), "index cleanup")  # noqa: B023 - called at once
        except (TenantBackupError, OSError) as exc:
            failed.append(f"{key}: not removed ({exc})")
    return failed


def pack_objects(
    loc: Location, keyring: Keyring, rows: list, latest: list, complete_as_of: int | None
) -> tuple[str, list[tuple[str, bytes]]]:
    """(generation, [(key, bytes)]) of a new generation holding `rows` (every backup's, sorted) and
    `latest` (each tenant's newest), PART_ROWS rows per pack object; not written yet."""
    generation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    base = f"{index_root(loc)}packs/{generation}/"
    scope = scope_of(loc)
    objects = []
    for kind, kind_rows in ((ALL, rows), (LATEST, latest)):
        chunks = [kind_rows[i : i + PART_ROWS] for i in range(0, len(kind_rows), PART_ROWS)] or [[]]
        for n, chunk in enumerate(chunks):
            header = fmt.PackHeader(scope, generation, kind, n, len(chunks), complete_as_of, len(chunk))
            objects.append((f"{base}{kind}-{n:05d}", fmt.encode_pack(header, chunk, keyring)))
    return generation, objects


def compact(
    loc: Location,
    keyring: Keyring,
    *,
    reconcile: bool = True,
    full: bool = False,
    workers: int = READ_CONCURRENCY,
    progress=None,
) -> CompactReport:
    """One new generation of `loc`'s index (module docstring). TenantBackupError when the location
    cannot be listed or the new packs cannot be written (then nothing of the old index is deleted)."""
    started = time.monotonic()
    report = CompactReport(loc.name)
    view = read_index(loc, keyring, workers=workers)  # first: what is written after stays for the next one
    report.ignored = list(view.ignored)
    if full:
        kept = IndexView(loc.name)
        for key, state in view.states.items():
            if state.deleted is not None:
                kept.apply(key, BackupState(deleted=state.deleted))
        states = kept.states
    else:
        states = view.states
    complete_as_of = view.complete_as_of if view.usable else None
    listing_ns = time.time_ns()
    if reconcile:
        refs = loc.list()
        listed = {(r.tenant_id, r.backup_id): r for r in refs}
        to_read = []
        for key, ref in listed.items():
            at = int(ref.stored_at.timestamp() * 1e9) if ref.stored_at else 0
            state = states.get(key)
            if full or state is None or not state.live:
                if state is not None and state.deleted is not None and state.deleted > at:
                    continue  # a delete in progress (its tombstone is newer than the manifest)
                to_read.append((key[0], key[1], at))
        results = read_many(lambda item: _read_backup(loc, keyring, item), to_read, workers=workers, progress=progress)
        report.manifests_read = len(to_read)
        for item, events in zip(to_read, results, strict=True):
            for event in events:
                if isinstance(event, str):
                    report.errors.append(f"{item[0]}/{item[1]}: {event}")
                    continue
                if event.kind == REFUSED:
                    report.refused.append(f"{item[0]}/{item[1]}: {event.fields[0]}")
                state = states.setdefault((event.tenant_id, event.backup_id), BackupState())
                state.apply(event)
        for key, state in states.items():
            if state.live and key not in listed and (state.written or 0) < listing_ns:
                state.deleted = listing_ns - 1  # its manifest is gone: deleted without the tool
                report.dropped += 1
        complete_as_of = listing_ns
    horizon = time.time_ns() - TOMBSTONE_DAYS * DAY_NS
    rows, newest = [], {}
    for (t, b), state in sorted(states.items()):
        if not state.live:
            if state.deleted is None or state.deleted < horizon or (state.written is None and reconcile):
                continue  # an old tombstone, or a verification of nothing listed
        else:
            newest[t] = (t, b) if b > newest.get(t, ("", ""))[1] else newest[t]
            report.backups += 1
        rows.append(state.row(t, b))
    report.tenants = len(newest)
    latest = [states[key].row(*key) for key in sorted(newest.values())]
    generation, objects = pack_objects(loc, keyring, rows, latest, complete_as_of)
    read_many(
        lambda obj: _retry(loc, lambda inner: inner._put_bytes(obj[0], obj[1]), "index pack write"),
        objects,
        workers=workers,
    )
    # The new generation is stored: now (and only now) what it replaces goes.
    # A key left behind (a failed delete) is read again and merged the same way: harmless, so said only.
    consumed = view.log_keys + view.pack_keys + (view.dirty if reconcile else [])
    by_folder: dict[str, list[str]] = {}
    for key in consumed:  # one folder's keys by one thread: a folder emptied is removed once
        by_folder.setdefault(key.rpartition("/")[0], []).append(key)
    failed = read_many(lambda keys: _delete_all(loc, keys), list(by_folder.values()), workers=workers)
    report.errors += [line for lines in failed for line in lines]
    report.generation = generation
    report.complete = complete_as_of is not None and (reconcile or not view.dirty)
    report.log_entries = len(view.log_keys)
    report.packs_replaced = len(view.pack_keys)
    report.seconds = time.monotonic() - started
    return report
