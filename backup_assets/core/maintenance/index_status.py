"""Staleness from the locations' indexes (core/locations/index.py): the same decision as
core/maintenance/status.py `decide`, fed by one listing of index/ and the `latest` packs per location
instead of a manifest and a verified.json per tenant — a few requests per thousand tenants.

A location whose index is not usable (missing, damaged, out of date: never trusted) is either scanned
the old way (`fallback=True`, what `tenant-backup status` does: slow, correct) or reported as
*unknown* with the reason (what the staleness sensor does past SENSOR_SCAN_LIMIT tenants: it must
finish, and it launches the index job that rebuilds it; a small deployment is scanned in seconds). `maintenance_due` says whether a location's index wants a
compaction (many log entries, or its last reconcile is old).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping

from ..codec.keyring import Keyring
from ..errors import TenantBackupError
from ..locations import Location
from ..locations.index import IndexView, read_index
from ..locations.indexing import supports_index
from .catalog import CatalogEntry, missing_copies
from .status import StatusReport, decide, gather

LOG_ENTRIES_DUE = 5_000  # log entries after which a compaction is due
SENSOR_SCAN_LIMIT = 100  # tenants a sensor tick may still scan one by one (a few seconds) when an index is unusable
RECONCILE_DUE_S = 86_400  # a day after its last reconcile, the index is reconciled again


@dataclass
class IndexedStatus:
    report: StatusReport
    views: dict[str, IndexView] = field(default_factory=dict)
    scanned: list[str] = field(default_factory=list)  # locations read the old way (index unusable)

    def maintenance_due(self, *, now_ns: int | None = None) -> dict[str, str]:
        """location -> why its index wants the index job now."""
        now_ns = now_ns or time.time_ns()
        due = {}
        for name, view in self.views.items():
            if not view.usable:
                due[name] = view.why_unusable()
            elif len(view.log_keys) > LOG_ENTRIES_DUE:
                due[name] = f"{len(view.log_keys)} index log entries"
            elif now_ns - (view.complete_as_of or 0) > RECONCILE_DUE_S * 10**9:
                due[name] = "last reconcile over a day ago"
        return due


def gather_indexed(
    tenants: Iterable[str],
    locations: Mapping[str, Location],
    *,
    keyring: Keyring,
    max_age_days: float,
    now: datetime | None = None,
    names: Mapping[str, str] | None = None,
    fallback: bool = True,
    scan_up_to: int | None = None,
    missing: bool = True,
) -> IndexedStatus:
    """`fallback`: scan a location whose index is unusable the old way (else: unknown there), when
    there are at most `scan_up_to` tenants (None: whatever their number). `missing`: judge the missing
    copies too (every backup of the index: its `all` packs); without, only each tenant's newest is
    read (the `latest` packs: what the sensor needs, a pack per 20,000 tenants)."""
    tenants = sorted(set(tenants))
    fallback = fallback and (scan_up_to is None or len(tenants) <= scan_up_to)
    wanted = set(tenants)
    entries: list[CatalogEntry] = []
    verifications: dict[tuple[str, str, str], dict] = {}
    unreadable: dict[str, str] = {}
    refused: dict[tuple[str, str], str] = {}
    unsealed: list[str] = []
    listings: dict[str, list[tuple[str, str]]] = {}  # for the missing copies (catalog.missing_copies)
    out = IndexedStatus(report=None)  # type: ignore[arg-type]
    for name, loc in locations.items():
        if not supports_index(loc):
            out.scanned.append(name)
            continue
        try:
            view = read_index(loc, keyring, latest_only=not missing, pairs=missing)
        except TenantBackupError as exc:
            unreadable[name] = str(exc)
            continue
        out.views[name] = view
        if not view.usable:
            if fallback:
                out.scanned.append(name)
            else:
                unreadable[name] = view.why_unusable()
            continue
        if missing:
            listings[name] = view.live_keys()
        for tenant_id, backup in view.newest().items():
            if tenant_id not in wanted:
                continue
            if backup.info is None:
                refused[(tenant_id, name)] = f"newest backup {backup.backup_id}: {backup.refused}"
                continue
            if not backup.info.sealed:
                unsealed.append(f"{name}: {tenant_id}/{backup.backup_id}")
            entries.append(CatalogEntry(tenant_id, backup.backup_id, backup.created_at, {name: backup.manifest()}))
            record = backup.verification_record()
            if record is not None:
                verifications[(name, tenant_id, backup.backup_id)] = record
    now = now or datetime.now(timezone.utc)
    warnings = []
    if unsealed:
        from ..archive.seal import unsealed_summary

        warnings.append(unsealed_summary(unsealed))
    indexed = [n for n in locations if n not in out.scanned]
    report = decide(
        tenants,
        indexed,
        entries,
        now=now,
        max_age_days=max_age_days,
        unreadable=unreadable,
        warnings=warnings,
        verifications=verifications,
        names=names,
        refused=refused,
        missing=missing_copies(listings, {n: locations[n].retention_days for n in listings}, now=now, tenants=wanted),
    )
    if out.scanned:  # the old way, for those alone, and one report of every location in their order
        scanned = gather(
            tenants,
            {n: locations[n] for n in out.scanned},
            keyring=keyring,
            max_age_days=max_age_days,
            now=now,
            names=names,
        )
        order = {n: i for i, n in enumerate(locations)}
        report.copies = sorted(
            report.copies + scanned.copies, key=lambda c: (c.tenant_id, order.get(c.location, len(order)))
        )
        report.locations = list(locations)
        report.unreadable.update(scanned.unreadable)
        report.warnings += scanned.warnings
        report.refused = sorted(report.refused + scanned.refused)
        report.missing += scanned.missing  # judged within the scanned ones only; said where each was
    out.report = report
    return out
