"""Retention: which backups a location may delete (`plan_prune`, pure) and doing it (`prune_location`).

Rules, per location and per tenant (ages from the manifest's created_at):
- a backup younger than the location's retention is kept;
- the newest backup that verifies (checksum) in that location is kept, whatever its age, so a tenant
  whose backups stopped never loses its last good copy;
- the KEEP_MIN newest backups are kept, whatever their age;
- a backup whose age is unknown (created_at missing or malformed) is kept: never delete on a guess;
- everything else is deleted.
Then the location's garbage is collected (core/maintenance/gc.py): what no manifest refers to (what
failed or killed puts, re-wraps and prunes left: archives without a manifest, superseded archives,
unfinished uploads), once nothing of it was written for the grace period (TENANT_BACKUP_GC_GRACE_S, a
day by default: no put takes that long between its archive and its manifest).
Manifests are authenticated before any use (their seal, core/archive/seal.py): when one of a tenant's
manifests in a location fails, nothing of that tenant is deleted there (its ages and the newest
verified backup cannot be trusted), and the report names it (`refused`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .. import crashpoints
from ..archive.seal import read_manifest, unsealed_summary
from ..codec.keyring import Keyring
from ..errors import ArchiveError, NotFound, TenantBackupError
from ..locations import BackupRef, Garbage, Location
from .catalog import parse_created_at
from .copy_check import verify_copy
from .gc import DEFAULT_GRACE, collect_garbage

log = logging.getLogger(__name__)

KEEP_MIN_VAR = "TENANT_BACKUP_KEEP_MIN"
DEFAULT_KEEP_MIN = 2


@dataclass(frozen=True)
class Candidate:
    tenant_id: str
    backup_id: str
    created_at: datetime | None  # aware UTC; None = unknown
    verified: bool | None = None  # checksum in this location: True/False, None = not checked


@dataclass(frozen=True)
class Decision:
    tenant_id: str
    backup_id: str
    created_at: datetime | None
    delete: bool
    reason: str


def _newest_first(items: Iterable[Candidate]) -> list[Candidate]:
    floor = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(items, key=lambda c: (c.created_at or floor, c.backup_id), reverse=True)


def plan_prune(candidates: Iterable[Candidate], *, retention_days: int, keep_min: int, now: datetime) -> list[Decision]:
    """One Decision per candidate (newest first within each tenant). Pure: no I/O, no clock."""
    if keep_min < 1:
        raise ValueError("keep_min must be >= 1")
    cutoff = now - timedelta(days=retention_days)
    by_tenant: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_tenant.setdefault(c.tenant_id, []).append(c)
    out: list[Decision] = []
    for tenant in sorted(by_tenant):
        ordered = _newest_first(by_tenant[tenant])
        newest_verified = next((c for c in ordered if c.verified is True), None)
        for rank, c in enumerate(ordered):
            if c.created_at is None:
                keep, reason = True, "age unknown (no valid created_at in its manifest)"
            elif c.created_at > cutoff:
                keep, reason = True, f"within retention ({retention_days} days)"
            elif c is newest_verified:
                keep, reason = True, "newest backup that verifies in this location"
            elif rank < keep_min:
                keep, reason = True, f"among the {keep_min} newest of the tenant ({KEEP_MIN_VAR})"
            else:
                age = (now - c.created_at).days
                keep, reason = False, f"{age} days old, retention {retention_days} days"
            out.append(Decision(c.tenant_id, c.backup_id, c.created_at, not keep, reason))
    return out


# ------------------------------------------------------------------------------------------ I/O side


@dataclass
class PruneReport:
    location: str
    decisions: list[Decision]
    deleted: list[Decision]
    errors: list[str]  # one line each; the other deletions went on
    dry_run: bool
    refused: list[str] = field(default_factory=list)  # manifests that failed authentication (exit code 6)
    warnings: list[str] = field(default_factory=list)  # manifests without a seal: one line, with the count
    incomplete: list[BackupRef] = field(default_factory=list)  # backup folders without a manifest removed
    garbage: list[Garbage] = field(default_factory=list)  # every unreferenced object removed (or would be)


def _checksum_ok(loc: Location, tenant_id: str, backup_id: str, keyring: Keyring) -> bool:
    """The copy verifies: its manifest authenticated, vs stored metadata, every stored byte re-hashed."""
    check = verify_copy(loc, tenant_id, backup_id, keyring=keyring)
    if not check.ok:
        log.warning("%s: %s/%s does not verify: %s", loc.name, tenant_id, backup_id, check.message)
    return check.ok


def prune_location(
    loc: Location,
    *,
    keyring: Keyring,
    keep_min: int,
    now: datetime | None = None,
    dry_run: bool = False,
    on_delete: Callable[[str, Decision], None] | None = None,
    grace: timedelta = DEFAULT_GRACE,
    on_garbage: Callable[[Garbage], None] | None = None,
) -> PruneReport:
    """Read the location's manifests, decide with plan_prune, delete (unless dry_run).

    Copies are only re-read (checksum) for tenants that have something to delete, newest first until
    one verifies: that is all plan_prune needs to know which is the newest verified backup.
    """
    now = now or datetime.now(timezone.utc)
    errors: list[str] = []
    refused: list[str] = []
    warnings: list[str] = []
    held: set[str] = set()  # tenants with a manifest that failed authentication: nothing of them deleted
    candidates: list[Candidate] = []
    unsealed: list[str] = []  # said once, with the count
    from ..locations.index import index_hints

    hints = index_hints(loc, keyring)  # the index's authenticated entries: no manifest read for those
    from_index: dict[tuple[str, str], datetime | None] = {}
    survey = loc.survey()  # one listing: the plan below and the garbage collection after it
    for ref in loc.list(survey=survey):
        hit = hints.backup(ref.tenant_id, ref.backup_id) if hints is not None else None
        if hit is not None and hit.info is not None:  # a refused one is read below (and held)
            created = from_index[(ref.tenant_id, ref.backup_id)] = parse_created_at(hit.created_at)
            if not hit.info.sealed:
                unsealed.append(f"{ref.tenant_id}/{ref.backup_id}")
            candidates.append(Candidate(ref.tenant_id, ref.backup_id, created))
            continue
        try:
            manifest, sealed = read_manifest(loc, ref.tenant_id, ref.backup_id, keyring)
            created = parse_created_at(manifest.created_at)
            if not sealed:
                unsealed.append(f"{ref.tenant_id}/{ref.backup_id}")
        except NotFound:
            continue
        except ArchiveError as exc:
            refused.append(f"{exc}; nothing of tenant {ref.tenant_id} is deleted in {loc.name}")
            held.add(ref.tenant_id)
            created = None
        except TenantBackupError as exc:
            errors.append(f"{ref.tenant_id}/{ref.backup_id}: cannot read manifest, kept: {exc}")
            created = None  # unknown age: plan_prune keeps it
        candidates.append(Candidate(ref.tenant_id, ref.backup_id, created))
    if unsealed:
        warnings.append(unsealed_summary(unsealed))

    def plan(items: list[Candidate]) -> list[Decision]:
        decided = plan_prune(items, retention_days=loc.retention_days, keep_min=keep_min, now=now)
        return [
            dataclasses.replace(d, delete=False, reason="kept: a manifest of this tenant fails authentication")
            if d.delete and d.tenant_id in held
            else d
            for d in decided
        ]

    decisions = plan(candidates)
    pending = {d.tenant_id for d in decisions if d.delete}
    if pending:
        checked: list[Candidate] = []
        for tenant in sorted({c.tenant_id for c in candidates}):
            ordered = _newest_first(c for c in candidates if c.tenant_id == tenant)
            if tenant in pending:
                found = False
                for c in ordered:
                    if found:
                        checked.append(c)
                        continue
                    ok = _checksum_ok(loc, c.tenant_id, c.backup_id, keyring)
                    found = ok
                    checked.append(Candidate(c.tenant_id, c.backup_id, c.created_at, ok))
            else:
                checked.extend(ordered)
        decisions = plan(checked)

    deleted: list[Decision] = []
    for d in decisions:
        if not d.delete:
            continue
        if (d.tenant_id, d.backup_id) in from_index:  # the manifest has the last word before a delete
            try:
                manifest, _ = read_manifest(loc, d.tenant_id, d.backup_id, keyring)
                agrees = parse_created_at(manifest.created_at) == from_index[(d.tenant_id, d.backup_id)]
            except TenantBackupError as exc:
                agrees, manifest = False, exc
            if not agrees:
                errors.append(
                    f"{d.tenant_id}/{d.backup_id}: kept: the index and the manifest disagree"
                    f" ({manifest if isinstance(manifest, Exception) else 'created_at'});"
                    " run `tenant-backup rebuild --index`"
                )
                continue
        if not dry_run:
            try:
                loc.delete(d.tenant_id, d.backup_id)
            except TenantBackupError as exc:
                errors.append(f"{d.tenant_id}/{d.backup_id}: delete failed: {exc}")
                continue
        if not dry_run:
            survey.forget(d.tenant_id, d.backup_id)
            crashpoints.reached("prune.delete")
        deleted.append(d)
        if on_delete is not None:
            on_delete(loc.name, d)
    gc = collect_garbage(loc, grace=grace, now=now, dry_run=dry_run, on_item=on_garbage, survey=survey)
    errors.extend(gc.errors)
    leftovers = sorted(
        {(g.key.split("/")[-3], g.key.split("/")[-2]) for g in gc.removed if g.what == "no manifest"},
    )
    incomplete = [BackupRef(loc.name, t, b, loc.uri(t, b)) for t, b in leftovers]
    return PruneReport(loc.name, decisions, deleted, errors, dry_run, refused, warnings, incomplete, gc.removed)
