"""What the storage locations hold, read from their manifests alone (no Dagster database), and
checks of single stored copies.

A backup (tenant id + backup id) is usually stored in several locations; `collect` merges them into
one entry per backup with the locations holding it. `verify_copy` checks one copy: the manifest
against the stored object's metadata and its re-hashed bytes, and (deep) a full decrypt +
`pg_restore --list` of a downloaded copy.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..archive.manifest import Manifest
from ..archive.seal import UNSEALED_HINT, read_manifest
from ..checks.isolation import scan_archive
from ..checks.verify import verify_archive
from ..codec.keyring import Keyring
from ..errors import ArchiveError, NotFound, TenantBackupError
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
    manifests: dict[str, dict] = field(default_factory=dict)  # location name -> its manifest

    @property
    def locations(self) -> list[str]:
        return list(self.manifests)

    def _archive_values(self, key: str) -> list:
        values = []
        for m in self.manifests.values():
            v = (m.get("archive") or {}).get(key) if isinstance(m.get("archive"), dict) else None
            if v not in values:
                values.append(v)
        return values

    @property
    def size(self):
        values = self._archive_values("size")
        return values[0] if len(values) == 1 else values  # copies disagree: show every value

    @property
    def key_id(self):
        values = self._archive_values("key_id")
        return values[0] if len(values) == 1 else values

    @property
    def total_rows(self) -> int | None:
        for m in self.manifests.values():
            tables = m.get("tables")
            if isinstance(tables, dict):
                return sum(v for v in tables.values() if isinstance(v, int))
        return None

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
    locations: dict[str, Location], tenant_id: str | None = None
) -> tuple[list[CatalogEntry], list[CollectError]]:
    """Every complete backup in `locations`, one entry per (tenant, backup), newest first.

    A location that cannot be listed, or a manifest that cannot be read, is returned as an error and
    the rest is still collected: one unreachable location must not hide the others' backups.
    """
    entries: dict[tuple[str, str], CatalogEntry] = {}
    errors: list[CollectError] = []
    for name, loc in locations.items():
        try:
            refs = loc.list(tenant_id)
        except TenantBackupError as exc:
            errors.append(CollectError(name, f"cannot list: {exc}"))
            continue
        for ref in refs:
            try:
                manifest = loc.get_manifest(ref.tenant_id, ref.backup_id)
            except NotFound:
                continue  # deleted between list and read (a concurrent prune)
            except TenantBackupError as exc:
                errors.append(CollectError(name, f"{ref.tenant_id}/{ref.backup_id}: cannot read manifest: {exc}"))
                continue
            key = (ref.tenant_id, ref.backup_id)
            entry = entries.get(key)
            if entry is None:
                created = manifest.get("created_at") if isinstance(manifest.get("created_at"), str) else None
                entry = entries[key] = CatalogEntry(ref.tenant_id, ref.backup_id, created)
            entry.manifests[name] = manifest
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


# ------------------------------------------------------------------------------------------- verify


@dataclass
class CopyCheck:
    location: str
    tenant_id: str
    backup_id: str
    ok: bool
    message: str  # one line: "ok: ..." or why the copy failed
    # The manifest was refused before any use (its seal does not verify, or it is not this backup's
    # manifest): an ArchiveError, exit code 6 for the commands.
    refused: bool = False
    sealed: bool | None = None  # None: the manifest could not be read


def verify_copy(
    loc: Location,
    tenant_id: str,
    backup_id: str,
    *,
    keyring: Keyring,
    deep: bool = False,
    work_dir: Path | None = None,
    seal: bool = False,
) -> CopyCheck:
    """Check one stored copy; never raises for a bad copy (the result says why), only for usage errors.

    First the manifest, before any use: its seal verifies under `keyring` (core/archive/seal.py) and
    it describes this backup; refused (CopyCheck.refused) otherwise. A manifest without a seal (written
    before manifests were sealed) is checked with a warning in the message.
    Checksum: the manifest's sha256/size equal the stored object's metadata, and every stored byte
    re-hashes to it (Location.verify). Deep: download (re-hashed on the way) to a temporary directory
    under `work_dir` (owner-only, removed after) and run verify_archive(deep=True): decrypt with
    `keyring`, decompress, pg_restore --list, header and TOC vs manifest; then scan every COPY row
    (isolation.scan_archive): no other tenant's row, row counts = manifest's, and the tables carrying
    the tenant column are exactly the manifest's tenant tables (a tenant_column that names no column
    checks nothing, so it fails). `seal`: after a deep check that passed, seal an unsealed manifest
    (Location.put_manifest) with the key that wraps the archive's data key.
    """
    if seal and not deep:
        raise ValueError("sealing a manifest needs a deep verification first")
    name = loc.name
    try:
        manifest, sealed = read_manifest(loc, tenant_id, backup_id, keyring)
    except ArchiveError as exc:
        return CopyCheck(name, tenant_id, backup_id, False, str(exc), refused=True)
    except TenantBackupError as exc:
        return CopyCheck(name, tenant_id, backup_id, False, str(exc))
    warning = "" if sealed else "; WARNING: manifest not sealed, " + UNSEALED_HINT

    def result(ok: bool, message: str) -> CopyCheck:
        return CopyCheck(name, tenant_id, backup_id, ok, message + warning, sealed=sealed)

    try:
        want_sha, want_size = manifest.checksum()
        st = loc.stat(tenant_id, backup_id)
        if (st.sha256.lower(), st.size) != (want_sha, want_size):
            return result(
                False,
                f"stored object's metadata ({st.size} bytes, sha256 {st.sha256[:16]}…) differs from "
                f"the manifest ({want_size} bytes, sha256 {want_sha[:16]}…)",
            )
        if not deep:
            loc.verify(tenant_id, backup_id)
            return result(True, f"ok: {want_size} bytes re-read, SHA-256 matches the manifest")
        with tempfile.TemporaryDirectory(prefix="tb-verify-", dir=work_dir) as tmp:
            path = Path(tmp) / "archive.tbk"
            loc.get(tenant_id, backup_id, path)
            checked = verify_archive(path, manifest, keyring, deep=True)
            if not checked.ok:
                return result(False, checked.message)
            # Deep also proves isolation on the archive itself: every COPY row of a table with the
            # tenant column carries this tenant's id, and the rows add up to the manifest's.
            failure, rows = scan_against_manifest(path, manifest, keyring)
        if failure:
            return result(False, failure)
        message = f"{checked.message}; isolated: {rows} rows scanned"
        if seal and not sealed:
            loc.put_manifest(tenant_id, backup_id, manifest.with_seal(keyring).to_dict())
            sealed, warning = True, ""
            message += f"; manifest sealed with key {manifest.key_id!r}"
        return result(True, message)
    except TenantBackupError as exc:
        return result(False, str(exc))


def scan_against_manifest(path: Path, manifest: Manifest, keyring: Keyring) -> tuple[str | None, int]:
    """(why the archive's rows contradict the manifest, or None; rows scanned): every COPY row of a
    table with the tenant column is the manifest's tenant's, each table's rows equal the manifest's
    count, and the tables carrying manifest.tenant_column are exactly its tenant tables (a column that
    names nothing would check nothing)."""
    report = scan_archive(
        path,
        keyring,
        tenant_id=manifest.tenant_id,
        tenant_column=manifest.tenant_column,
        dump_version=manifest.pg_dump_version,
    )
    if not report.isolated:
        return f"rows of other tenants in the archive: {report.foreign_rows}", 0
    if report.rows != manifest.tables:
        return "rows in the archive differ from the manifest's", 0
    tenant_tables, with_column = set(manifest.kinds.of("tenant")), set(report.checked_tables)
    if tenant_tables != with_column:
        return (
            f"the tables with the tenant column {manifest.tenant_column!r} in the archive"
            f" ({', '.join(sorted(with_column)) or 'none'}) are not the manifest's tenant tables"
            f" ({', '.join(sorted(tenant_tables)) or 'none'})"
        ), 0
    return None, sum(report.rows.values())
