"""Rebuild a location (lost bucket, new disk) from the copies in the other locations.

Which backups: those the target would keep under its own retention (plan_prune over every backup any
location holds, with the target's retention_days and KEEP_MIN), so a rebuilt local disk gets the last
30 days (and at least KEEP_MIN per tenant), not a year. How: download a copy from a source (re-hashed
against the source's stored metadata), check it against the source's manifest, put it into the target
with that manifest (archive first, manifest last), re-read it there. A source copy that fails is
skipped for the next source. With repair=True, copies the target already holds are re-read first and
a damaged one is replaced. A source manifest is authenticated before it is copied (its seal,
core/archive/seal.py): one that fails is never copied (the copy is refused, exit code 6, unless
another source's passes); one without a seal is copied as it is, with a warning in the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..archive.manifest import Manifest
from ..archive.seal import UNSEALED_HINT
from ..codec.keyring import Keyring
from ..errors import ArchiveError, ManifestNotAuthentic, TenantBackupError
from ..files import sha256_file
from ..locations import Location
from ..workdir import work_folder
from .catalog import collect, parse_created_at
from .copy_check import verify_copy
from .retention import Candidate, plan_prune


@dataclass
class RebuildOutcome:
    tenant_id: str
    backup_id: str
    status: str  # "copied", "would copy", "failed"
    message: str
    refused: bool = False  # a source manifest failed authentication and no other source could be copied


def _copy_one(
    target: Location,
    sources: list[tuple[Location, Manifest]],
    tenant_id: str,
    backup_id: str,
    work_dir: Path | None,
    keyring: Keyring,
) -> str:
    problems = []
    refused = False
    for src, manifest in sources:
        try:
            try:
                sealed = manifest.verify_seal(keyring, where=src.uri(tenant_id, backup_id))
            except ManifestNotAuthentic:
                refused = True
                raise
            manifest.check_identity(tenant_id, backup_id)
            sha, size = manifest.checksum()
            with work_folder(work_dir, "tb-rebuild-") as tmp:
                path = Path(tmp) / "archive.tbk"
                src.get(tenant_id, backup_id, path)  # CorruptObject if the source copy is damaged
                if sha256_file(path) != (sha, size):
                    raise ArchiveError("copy does not match its manifest's sha256/size")
                target.put(tenant_id, backup_id, path, manifest)
            st = target.verify(tenant_id, backup_id)
            if (st.sha256.lower(), st.size) != (sha, size):
                raise ArchiveError(f"{st.uri}: stored object is not the copied archive")
            note = "" if sealed else f"; WARNING: manifest not sealed, {UNSEALED_HINT}"
            return f"from {src.name}, {size} bytes, sha256 {sha[:16]}…{note}"
        except TenantBackupError as exc:
            problems.append(f"{src.name}: {exc}")
    raise (ManifestNotAuthentic if refused else ArchiveError)("no source copy could be copied: " + "; ".join(problems))


def rebuild_location(
    target: Location,
    sources: dict[str, Location],
    *,
    keyring: Keyring,
    keep_min: int,
    now: datetime | None = None,
    dry_run: bool = False,
    repair: bool = False,
    work_dir: Path | None = None,
    progress: Callable[[RebuildOutcome], None] | None = None,
) -> tuple[list[RebuildOutcome], list[str]]:
    """(outcomes, errors reading the locations). Never deletes anything from the target."""
    now = now or datetime.now(timezone.utc)
    sources = {n: loc for n, loc in sources.items() if n != target.name}
    entries, errors = collect({target.name: target, **sources})
    errors = [f"{e.location}: {e.message}" for e in errors]
    decisions = plan_prune(
        [Candidate(e.tenant_id, e.backup_id, parse_created_at(e.created_at)) for e in entries],
        retention_days=target.retention_days,
        keep_min=keep_min,
        now=now,
    )
    wanted = {(d.tenant_id, d.backup_id) for d in decisions if not d.delete}
    outcomes: list[RebuildOutcome] = []
    for e in entries:
        if (e.tenant_id, e.backup_id) not in wanted:
            continue
        if target.name in e.manifests:
            if not repair:
                continue
            if verify_copy(target, e.tenant_id, e.backup_id, keyring=keyring).ok:
                continue  # else damaged, or its manifest fails authentication: replaced below
        held = [(sources[n], m) for n, m in e.manifests.items() if n in sources]
        if not held:
            o = RebuildOutcome(e.tenant_id, e.backup_id, "failed", "no other location holds it")
        elif dry_run:
            o = RebuildOutcome(e.tenant_id, e.backup_id, "would copy", f"from {held[0][0].name}")
        else:
            try:
                o = RebuildOutcome(
                    e.tenant_id,
                    e.backup_id,
                    "copied",
                    _copy_one(target, held, e.tenant_id, e.backup_id, work_dir, keyring),
                )
            except TenantBackupError as exc:
                o = RebuildOutcome(
                    e.tenant_id, e.backup_id, "failed", str(exc), refused=isinstance(exc, ManifestNotAuthentic)
                )
        outcomes.append(o)
        if progress is not None:
            progress(o)
    return outcomes, errors
