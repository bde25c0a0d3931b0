"""Staleness: for every tenant the registry returns and every location, the newest complete backup,
its age and its last verification — from the locations alone (no Dagster database).

`decide` is the pure rule; `gather` reads the locations and calls it. A tenant is *stale* in a
location when that location holds no complete backup of it younger than the max age (default 8
days: a weekly backup plus a day's slack; TENANT_BACKUP_MAX_AGE_DAYS). A location that cannot be
listed makes every tenant *unknown* there: reported, never counted as fresh.

Verification is recorded where the copy lives, so that it too is readable without Dagster: each
verification of a copy (the backup's copy checks, `tenant-backup verify`, the daily verify job)
writes a small `verified.json` beside its manifest (`record_verification`): when, how (checksum
only, or deep), the outcome, and the SHA-256 it checked. A record whose SHA-256 is not the
manifest's (the archive was re-written since, e.g. by `keys rewrap`) does not count.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping

from ..archive.manifest import Manifest
from ..archive.seal import read_manifest, unsealed_summary
from ..codec.keyring import Keyring
from ..errors import ArchiveError, TenantBackupError
from ..locations import Location
from .catalog import CatalogEntry, MissingCopy, missing_copies, parse_created_at
from .copy_check import Verification

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_DAYS = 8.0


# ------------------------------------------------------------------------------------ verification


# ------------------------------------------------------------------------------------------ decide


@dataclass
class CopyStatus:
    tenant_id: str
    location: str
    state: str  # "ok" | "stale" | "unknown" (location could not be listed)
    backup_id: str | None = None  # newest complete backup in this location
    created_at: str | None = None
    age_days: float | None = None
    verified: str = "never"  # "ok" | "failed" | "never" (no record for these bytes)
    verified_at: str | None = None
    verified_deep: bool | None = None
    reason: str = ""  # why stale / unknown, one line
    tenant_name: str | None = None  # the registry's display name, when its query returns one
    drill_major: int | None = None  # the PostgreSQL major its restore drill proved (None: not recorded)
    drill_note: str = ""  # set when that is not the source's own major: what was and was not proven

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class StatusReport:
    max_age_days: float
    now: str
    locations: list[str]
    tenants: list[str]
    copies: list[CopyStatus]
    unreadable: dict[str, str]  # location -> why it could not be listed
    warnings: list[str]  # single manifests that could not be read
    names: dict[str, str] = field(default_factory=dict)  # tenant -> display name (registry's 2nd column)
    # Newest manifests that failed authentication (core/archive/seal.py), one line each: those copies
    # count as no backup (stale), and the command exits with the archive-error code (6).
    refused: list[str] = field(default_factory=list)
    # Backups a location should hold by its retention but does not (catalog.missing_copies): failures,
    # each naming the location and the fix (`tenant-backup rebuild --location L`).
    missing: list[MissingCopy] = field(default_factory=list)

    @property
    def stale(self) -> list[CopyStatus]:
        return [c for c in self.copies if c.state == "stale"]

    @property
    def unknown(self) -> list[CopyStatus]:
        return [c for c in self.copies if c.state == "unknown"]

    def stale_line(self) -> str:
        """One line naming every stale tenant × location (what the CLI prints on stderr)."""
        names = ", ".join(
            f"{c.tenant_id}@{c.location}" + (f" ({c.tenant_name})" if c.tenant_name else "") for c in self.stale
        )
        return f"{len(self.stale)} tenant × location without a backup younger than {self.max_age_days:g} days: {names}"

    @property
    def drilled_elsewhere(self) -> list[CopyStatus]:
        """Copies whose restore was proven only on another PostgreSQL major than the source's."""
        return [c for c in self.copies if c.drill_note]

    def as_dict(self) -> dict:
        return {
            "max_age_days": self.max_age_days,
            "now": self.now,
            "locations": self.locations,
            "tenants": self.tenants,
            "tenant_names": self.names,
            "stale": len(self.stale),
            "unknown": len(self.unknown),
            "unreadable_locations": self.unreadable,
            "warnings": self.warnings,
            "refused": self.refused,
            "missing": [m.as_dict() for m in self.missing],
            "copies": [c.as_dict() for c in self.copies],
        }


def _verification(record: dict | None, manifest: Manifest) -> tuple[str, str | None, bool | None]:
    found = Verification.from_dict(record)
    if found is None or not found.counts_for(manifest):
        return "never", None, None  # none, or a record of other bytes (re-written since): not this copy's
    return ("ok" if found.ok is True else "failed"), found.verified_at, bool(found.deep)


def _drill(manifest: Manifest) -> tuple[int | None, str]:
    drill = manifest.drill
    if drill is None:
        return None, ""
    if drill.matches_source is False:
        return (
            drill.server_major,
            f"restore proven on PostgreSQL {drill.server_major} only, not the source's {drill.source_major}",
        )
    return drill.server_major, ""


def decide(
    tenants: Iterable[str],
    locations: Iterable[str],
    entries: list[CatalogEntry],
    *,
    now: datetime,
    max_age_days: float,
    unreadable: Mapping[str, str] | None = None,
    warnings: Iterable[str] = (),
    verifications: Mapping[tuple[str, str, str], dict] | None = None,
    names: Mapping[str, str] | None = None,
    refused: Mapping[tuple[str, str], str] | None = None,
    missing: Iterable[MissingCopy] = (),
) -> StatusReport:
    """The pure rule. `entries`: the newest complete backup per tenant and location (one manifest
    each); `unreadable`: location -> why it could not be listed (its tenants are unknown there);
    `verifications`: (location, tenant, backup) -> its verified.json record; `names`: tenant ->
    display name (shown, never decisive)."""
    tenants, locations = sorted(set(tenants)), list(locations)
    verifications = verifications or {}
    unreadable = dict(unreadable or {})
    newest: dict[tuple[str, str], CatalogEntry] = {}
    for entry in entries:
        for name in entry.manifests:
            known = newest.get((entry.tenant_id, name))
            if known is None or entry.backup_id > known.backup_id:
                newest[(entry.tenant_id, name)] = entry
    copies = []
    for tenant in tenants:
        for name in locations:
            if name in unreadable:
                copies.append(CopyStatus(tenant, name, "unknown", reason=f"location not listable: {unreadable[name]}"))
                continue
            entry = newest.get((tenant, name))
            if entry is None and (tenant, name) in (refused or {}):
                copies.append(CopyStatus(tenant, name, "stale", reason=(refused or {})[(tenant, name)]))
                continue
            if entry is None:
                copies.append(CopyStatus(tenant, name, "stale", reason="no complete backup in this location"))
                continue
            created = parse_created_at(entry.created_at)
            age = (now - created).total_seconds() / 86400 if created is not None else None
            verified, verified_at, deep = _verification(
                verifications.get((name, tenant, entry.backup_id)), entry.manifests[name]
            )
            status = CopyStatus(
                tenant,
                name,
                "ok",
                entry.backup_id,
                entry.created_at,
                round(age, 3) if age is not None else None,
                verified,
                verified_at,
                deep,
            )
            status.drill_major, status.drill_note = _drill(entry.manifests[name])
            if age is None:  # no trustworthy time: it cannot prove freshness
                status.state, status.reason = "stale", f"backup {entry.backup_id} has no valid created_at"
            elif age >= max_age_days:
                status.state, status.reason = "stale", f"newest backup {entry.backup_id} is {age:.1f} days old"
            copies.append(status)
    names = {t: n for t, n in (names or {}).items() if t in tenants and n}
    for status in copies:
        status.tenant_name = names.get(status.tenant_id)
    return StatusReport(
        max_age_days,
        now.astimezone(timezone.utc).isoformat(timespec="seconds"),
        locations,
        tenants,
        copies,
        unreadable,
        list(warnings),
        names,
        sorted((refused or {}).values()),
        list(missing),
    )


# ------------------------------------------------------------------------------------------ gather


def gather(
    tenants: Iterable[str],
    locations: Mapping[str, Location],
    *,
    keyring: Keyring,
    max_age_days: float,
    now: datetime | None = None,
    names: Mapping[str, str] | None = None,
) -> StatusReport:
    """One listing per location, then for each tenant only its newest backup there: its manifest,
    authenticated under `keyring` before any use (core/archive/seal.py), and its verification record
    (a thousand tenants cost a listing and two small reads each). A newest manifest that fails
    authentication counts as no backup there (stale) and is named in `refused`."""
    tenants = sorted(set(tenants))
    wanted = set(tenants)
    entries: list[CatalogEntry] = []
    unreadable: dict[str, str] = {}
    warnings: list[str] = []
    verifications: dict[tuple[str, str, str], dict] = {}
    refused: dict[tuple[str, str], str] = {}
    unsealed: list[str] = []  # said once, with the count
    listings: dict[str, list[tuple[str, str]]] = {}  # for the missing copies
    for name, loc in locations.items():
        try:
            refs = loc.list()
        except TenantBackupError as exc:
            unreadable[name] = str(exc)
            continue
        listings[name] = [(r.tenant_id, r.backup_id) for r in refs]
        newest: dict[str, str] = {}
        for ref in refs:
            if ref.tenant_id in wanted and ref.backup_id > newest.get(ref.tenant_id, ""):
                newest[ref.tenant_id] = ref.backup_id
        for tenant_id, backup_id in sorted(newest.items()):
            try:
                authentic, sealed = read_manifest(loc, tenant_id, backup_id, keyring)
            except ArchiveError as exc:  # edited, or not this backup's: no backup there, and said so
                refused[(tenant_id, name)] = f"newest backup {backup_id}: {exc}"
                continue
            except TenantBackupError as exc:  # counted as no backup there: stale, so somebody looks
                warnings.append(f"{name}: {tenant_id}/{backup_id}: cannot read manifest: {exc}")
                continue
            if not sealed:
                unsealed.append(f"{name}: {tenant_id}/{backup_id}")
            entries.append(CatalogEntry(tenant_id, backup_id, authentic.created_at, {name: authentic}))
            try:
                record = loc.get_verified(tenant_id, backup_id)
            except TenantBackupError as exc:  # unreadable record: shown as never verified
                warnings.append(f"{name}: {tenant_id}/{backup_id}: verification record: {exc}")
                continue
            if record is not None:
                verifications[(name, tenant_id, backup_id)] = record
    if unsealed:
        warnings.append(unsealed_summary(unsealed))
    now = now or datetime.now(timezone.utc)
    missing = missing_copies(listings, {n: locations[n].retention_days for n in listings}, now=now, tenants=wanted)
    return decide(
        tenants,
        list(locations),
        entries,
        now=now,
        max_age_days=max_age_days,
        unreadable=unreadable,
        warnings=warnings,
        verifications=verifications,
        names=names,
        refused=refused,
        missing=missing,
    )
