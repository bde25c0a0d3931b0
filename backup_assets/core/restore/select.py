"""Choosing the copy to restore from: a named location, or "auto" (the configured locations in the
order their kinds declare: local, then the cloud stores); a copy that is missing, fails its stored checksum (CorruptObject) or does not decrypt
and match its manifest (verify_archive, deep) is skipped and the next one tried.

The manifest is authenticated before any use (its seal, core/archive/seal.py): one that fails is
refused (ManifestNotAuthentic, exit code 6; "auto" skips that copy); one without a seal (written
before manifests were sealed) is used with a warning, or refused when the caller requires a seal
(restore --replace: its DELETE conditions and row counts come from the manifest)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..archive.manifest import Manifest
from ..archive.seal import UNSEALED_HINT, read_manifest, unsealed_warning
from ..checks.verify import verify_archive
from ..codec.keyring import Keyring
from ..errors import ArchiveError, ConfigError, ManifestNotAuthentic, NotFound, StorageError, one_line
from ..locations import registry
from ..locations.base import Location, validate_backup_id
from .result import Report

log = logging.getLogger(__name__)


@dataclass
class SourceCopy:
    location: str
    tenant_id: str
    backup_id: str
    uri: str
    manifest: Manifest
    archive_path: Path  # downloaded and verified
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (location, why) tried before it


def _pick_backup_id(loc: Location, tenant_id: str, backup: str | None) -> str:
    if backup in (None, "", "latest"):
        refs = loc.list(tenant_id)  # complete backups only (manifest present)
        if not refs:
            raise NotFound(f"no backup of tenant {tenant_id} in location {loc.name}")
        return max(ref.backup_id for ref in refs)  # backup ids start with their UTC time: they sort
    return validate_backup_id(backup)


def fetch_backup(
    locations: Mapping[str, Location],
    tenant_id: str,
    location: str,
    backup: str | None,
    keyring: Keyring,
    work_dir: Path,
    report: Report = log.info,
    *,
    require_seal: bool = False,
) -> SourceCopy:
    """Download and verify one copy of a backup into work_dir; see the module docstring for "auto".

    A named location that fails raises its error (NotFound, CorruptObject, ArchiveError, ...);
    "auto" raises NotFound naming every location tried and why it was skipped (ManifestNotAuthentic
    when a manifest failed authentication there, so that the exit code says so).
    require_seal: refuse a manifest without a seal."""
    if location == "auto":
        names = registry.auto_order(locations)  # each kind declares its place (core/locations/registry.py)
        if not names:
            raise ConfigError("no storage location configured (TENANT_BACKUP_LOCATIONS)")
    else:
        if location not in locations:
            raise ConfigError(
                f"storage location {location!r} is not configured (configured: {', '.join(locations) or 'none'})"
            )
        names = [location]
    if backup not in (None, "", "latest"):
        validate_backup_id(backup)  # bad input before any location is asked (exit code 2)
    skipped: list[tuple[str, str]] = []
    refused = False
    for name in names:
        loc = locations[name]
        dest = work_dir / f"{name}.tbk"
        try:
            backup_id = _pick_backup_id(loc, tenant_id, backup)
            uri = loc.uri(tenant_id, backup_id)
            manifest, sealed = read_manifest(loc, tenant_id, backup_id, keyring)  # before any use
            manifest.validate(tenant_id=tenant_id, backup_id=backup_id, where=uri)
            if not sealed and require_seal:
                raise ManifestNotAuthentic(
                    f"{uri}: manifest is not sealed (written before tenant-backup authenticated its manifests):"
                    f" restore --replace does not act on an unauthenticated manifest; {UNSEALED_HINT}"
                    " (or restore into an empty database)"
                )
            if not sealed:
                report(f"warning: {unsealed_warning(uri)}")
            loc.get(tenant_id, backup_id, dest)  # re-hashed: CorruptObject if the stored bytes changed
            # The stored checksum proves the bytes are the ones uploaded; this proves they decrypt
            # with our keyring and are the manifest's archive (a copy can be consistent but wrong).
            check = verify_archive(dest, manifest, keyring, deep=True)
            if not check.ok:
                raise ArchiveError(f"{uri}: {check.message}")
        except (StorageError, ArchiveError) as exc:
            dest.unlink(missing_ok=True)
            if location != "auto":
                raise
            refused |= isinstance(exc, ManifestNotAuthentic)
            reason = one_line(exc)
            skipped.append((name, reason))
            report(f"skipping location {name}: {reason}")
            continue
        return SourceCopy(name, tenant_id, backup_id, uri, manifest, dest, skipped)
    raise (ManifestNotAuthentic if refused else NotFound)(
        f"no usable copy of tenant {tenant_id}'s backup {backup or 'latest'} in "
        + "; ".join(f"{n}: {why}" for n, why in skipped)
    )
