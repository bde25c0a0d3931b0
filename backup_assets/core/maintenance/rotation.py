"""Key rotation in the locations: re-wrap every stored archive's data key under the active master key.

Per backup: download a copy (re-hashed), `rewrap_archive` (payload copied byte for byte, new key
block), deep-verify the new file with a keyring holding ONLY the active key (decrypt, decompress,
pg_restore --list), then put it back with the manifest's archive size/sha256/key_id updated and
re-read the stored object (its bytes must hash to the verified file's SHA-256). The same re-wrapped
file goes to every location whose copy was byte-identical, so the copies stay identical. Backups whose
manifest already names the active key are skipped, so a second run does nothing. A failed backup is
reported and the others go on.

Crash consistency (issue 24) comes from Location.put's protocol (core/locations/base.py): the
re-wrapped archive is stored under a new name (its digest's), the manifest is switched last, and only
then is the old archive deleted. Killed at any instant, each copy is its old self (old manifest, old
archive, under the old key) or its new self; what the dead run wrote and no manifest names is garbage
for prune's collection. The re-run is the recovery: copies still under an old key are re-wrapped,
those done are skipped; there is no intent record to replay because no copy is ever half-done. A copy
of an older version whose stored metadata disagrees with its manifest although its bytes match the
manifest (the local sidecar written before the rename, issue 24) is read as its manifest describes it
and re-wrapped like the others. When no copy of a backup reads intact the message names the repair:
`tenant-backup rebuild --location L --repair` (cli/maintenance.py).

Manifests are authenticated first (their seal, core/archive/seal.py): one that fails is refused
("failed", refused) and its archive left as it is. The re-written manifest is sealed with the active
key. A manifest without a seal (written before manifests were sealed) is sealed only after the full
deep proof of `verify --deep` (copy_check.scan_against_manifest: the archive's rows against the
manifest's tables, counts and tenant column): under an old key as part of its re-wrap, under the
active key alone ("sealed", the archive untouched).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import crashpoints
from ..archive.manifest import Manifest
from ..archive.seal import read_manifest
from ..checks.verify import verify_archive
from ..codec.format import rewrap_archive
from ..codec.keyring import Keyring
from ..errors import ArchiveError, CorruptObject, NotFound, TenantBackupError
from ..files import sha256_file
from ..locations import Location
from ..workdir import work_folder
from .copy_check import scan_against_manifest, verify_copy

log = logging.getLogger(__name__)


@dataclass
class RewrapOutcome:
    location: str
    tenant_id: str
    backup_id: str
    status: str  # "rewrapped", "sealed" (manifest sealed, archive untouched), "skipped" or "failed"
    message: str
    refused: bool = False  # the manifest failed authentication (exit code 6)


def _put_back(loc: Location, tenant_id: str, backup_id: str, path: Path, manifest: Manifest) -> None:
    """Store and re-read: the stored bytes must be the verified file."""
    sha, size = manifest.checksum()
    loc.put(tenant_id, backup_id, path, manifest)
    st = loc.verify(tenant_id, backup_id)  # re-reads every byte vs the stored metadata
    if (st.sha256.lower(), st.size) != (sha, size):
        raise ArchiveError(f"{st.uri}: stored object is not the re-wrapped archive")


def rewrap_locations(
    locations: dict[str, Location],
    keyring: Keyring,
    *,
    work_dir: Path | None = None,
    progress: Callable[[RewrapOutcome], None] | None = None,
) -> list[RewrapOutcome]:
    active = keyring.active
    only_active = Keyring([active])  # the proof that the old key is no longer needed
    outcomes: list[RewrapOutcome] = []

    def report(o: RewrapOutcome) -> None:
        outcomes.append(o)
        # debug: the caller prints outcomes (progress); the log would repeat every line on stderr
        log.debug("%s %s/%s: %s: %s", o.location, o.tenant_id, o.backup_id, o.status, o.message)
        if progress is not None:
            progress(o)

    # (tenant, backup) -> [(location, manifest)] of the copies still under an old key.
    todo: dict[tuple[str, str], list[tuple[Location, Manifest]]] = {}
    unsealed: set[tuple[str, str, str]] = set()  # (location, tenant, backup) of manifests without a seal
    for name, loc in locations.items():
        try:
            refs = loc.list()
        except TenantBackupError as exc:
            report(RewrapOutcome(name, "-", "-", "failed", f"cannot list the location: {exc}"))
            continue
        for ref in refs:
            try:
                manifest, sealed = read_manifest(loc, ref.tenant_id, ref.backup_id, keyring)
            except NotFound:
                continue
            except ArchiveError as exc:
                report(RewrapOutcome(name, ref.tenant_id, ref.backup_id, "failed", str(exc), refused=True))
                continue
            except TenantBackupError as exc:
                report(RewrapOutcome(name, ref.tenant_id, ref.backup_id, "failed", f"cannot read manifest: {exc}"))
                continue
            if not sealed:
                unsealed.add((name, ref.tenant_id, ref.backup_id))
            if manifest.key_id == active.id and not sealed:
                check = verify_copy(
                    loc, ref.tenant_id, ref.backup_id, keyring=keyring, deep=True, work_dir=work_dir, seal=True
                )
                report(
                    RewrapOutcome(
                        name,
                        ref.tenant_id,
                        ref.backup_id,
                        "sealed" if check.ok else "failed",
                        f"manifest sealed with the active key {active.id!r} after a deep verify"
                        if check.ok
                        else f"not sealed: {check.message}",
                        refused=check.refused,
                    )
                )
                continue
            if manifest.key_id == active.id:
                report(
                    RewrapOutcome(
                        name, ref.tenant_id, ref.backup_id, "skipped", f"already under the active key {active.id!r}"
                    )
                )
                continue
            todo.setdefault((ref.tenant_id, ref.backup_id), []).append((loc, manifest))

    for (tenant_id, backup_id), copies in sorted(todo.items()):
        while copies:
            loc, manifest = copies.pop(0)
            try:
                manifest.check_identity(tenant_id, backup_id)
                old_sha, _ = manifest.checksum()
            except TenantBackupError as exc:
                report(RewrapOutcome(loc.name, tenant_id, backup_id, "failed", str(exc)))
                continue

            # Other copies with the same bytes take the same re-wrapped file (no second download).
            def same_bytes(m: Manifest, old_sha: str = old_sha) -> bool:
                return m.archive is not None and str(m.archive.sha256 or "").lower() == old_sha

            targets = [(loc, manifest)] + [c for c in copies if same_bytes(c[1])]
            copies = [c for c in copies if not same_bytes(c[1])]
            try:
                with work_folder(work_dir, "tb-rewrap-") as tmp:
                    old_path, new_path = Path(tmp) / "old.tbk", Path(tmp) / "new.tbk"
                    _download_any(targets, tenant_id, backup_id, old_path)
                    with old_path.open("rb") as inp, new_path.open("wb") as out:
                        header = rewrap_archive(inp, out, keyring=keyring)
                    if header.tenant_id != tenant_id or header.backup_id != backup_id:
                        raise ArchiveError(f"archive holds tenant {header.tenant_id!r} backup {header.backup_id!r}")
                    new_sha, new_size = sha256_file(new_path)
                    new_fields = {"size": new_size, "sha256": new_sha, "key_id": active.id}
                    check = verify_archive(new_path, manifest.with_archive(**new_fields), only_active, deep=True)
                    if not check.ok:
                        raise ArchiveError(
                            f"re-wrapped archive does not verify with only key {active.id!r}: {check.message}"
                        )
                    for tloc, tmanifest in targets:
                        new_manifest = tmanifest.with_archive(**new_fields).with_seal(only_active)
                        if (tloc.name, tenant_id, backup_id) in unsealed:
                            # Never seal what was not proven: the archive's rows against its tables.
                            failure, _rows = scan_against_manifest(new_path, new_manifest, only_active)
                            if failure:
                                report(RewrapOutcome(tloc.name, tenant_id, backup_id, "failed", failure))
                                continue
                        try:
                            _put_back(tloc, tenant_id, backup_id, new_path, new_manifest)
                        except TenantBackupError as exc:
                            report(
                                RewrapOutcome(
                                    tloc.name,
                                    tenant_id,
                                    backup_id,
                                    "failed",
                                    f"storing the re-wrapped archive failed: {exc}"
                                    + _restore_original(tloc, tenant_id, backup_id, old_path, tmanifest),
                                )
                            )
                            continue
                        crashpoints.reached("rewrap.copy")
                        report(
                            RewrapOutcome(
                                tloc.name,
                                tenant_id,
                                backup_id,
                                "rewrapped",
                                f"key {tmanifest.key_id!r} -> {active.id!r}, verified with only "
                                f"{active.id!r}; sha256 {new_sha[:16]}…",
                            )
                        )
            except TenantBackupError as exc:
                for tloc, _ in targets:
                    report(RewrapOutcome(tloc.name, tenant_id, backup_id, "failed", str(exc)))
    return outcomes


def _download_any(targets: list[tuple[Location, Manifest]], tenant_id: str, backup_id: str, dest: Path) -> None:
    """The first identical copy that downloads intact (get re-hashes: a damaged copy raises). A copy
    whose stored metadata disagrees with its manifest is read against the manifest: its own bytes."""
    problems = []
    for loc, manifest in targets:
        try:
            loc.get(tenant_id, backup_id, dest)
            return
        except CorruptObject as exc:
            try:
                loc.get(tenant_id, backup_id, dest, expect=manifest.checksum())
                return
            except TenantBackupError:
                problems.append(f"{loc.name}: {exc}")
        except TenantBackupError as exc:
            problems.append(f"{loc.name}: {exc}")
    fixes = "; ".join(f"tenant-backup rebuild --location {loc.name} --repair" for loc, _ in targets)
    raise ArchiveError(
        f"no intact copy to re-wrap ({'; '.join(problems)}): repair it from another location with {fixes}"
    )


def _restore_original(loc: Location, tenant_id: str, backup_id: str, old_path: Path, manifest: Manifest) -> str:
    """A put that failed before its manifest switch left the copy as it was; one that failed after it
    (the re-read of the stored archive) leaves a new manifest: put the original back."""
    try:
        if loc.get_manifest(tenant_id, backup_id).stated_checksum() == manifest.stated_checksum():
            return "; the copy is unchanged (still under the old key)"
        loc.put(tenant_id, backup_id, old_path, manifest)
        return "; the original copy was put back (still under the old key)"
    except TenantBackupError as exc:
        return (
            f"; putting the original back failed too ({exc}): repair this copy with "
            f"tenant-backup rebuild --location {loc.name} --repair"
        )
