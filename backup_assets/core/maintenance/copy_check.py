"""The one check of a stored copy (`verify_copy`), and its record beside the copy (`verified.json`).

Every verification of a copy goes through `verify_copy` and records the same thing: `tenant-backup
verify` (one backup, or --all), the daily verify job, the Dagster copy checks of every backup
(defs/backup/copy_checks.py), prune (which keeps a tenant's newest verified backup), rebuild and
keys rewrap. What it remembers lives where the manifests live: the record of the last verification
is a small `verified.json` beside the copy's manifest (`Verification`, read by `status`), and the
restore drill that proved an archive is recorded in the manifest itself (Manifest.drill).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from ..archive.manifest import Manifest
from ..archive.seal import UNSEALED_HINT, read_manifest
from ..checks.isolation import scan_archive
from ..checks.verify import verify_archive
from ..codec.keyring import Keyring
from ..errors import ArchiveError, TenantBackupError
from ..locations import Location
from ..workdir import work_folder

log = logging.getLogger(__name__)

IDENTITY = "identity"  # CopyCheck.proof: the copy's bytes are the ones this run's restore drill restored


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
    checksum_ok: bool | None = None  # the stored bytes re-hashed equal the manifest's (None: not reached)
    deep: bool = False
    # How the archive was proven beyond its checksum: "decoded" (decrypted, pg_restore --list, rows
    # scanned), IDENTITY, or "" (checksum only, or not reached).
    proof: str = ""
    toc_entries: int | None = None  # pg_restore --list entries, when decoded
    sha256: str | None = None  # the manifest's archive SHA-256: what the check compared against


def verify_copy(
    loc: Location,
    tenant_id: str,
    backup_id: str,
    *,
    keyring: Keyring,
    deep: bool = False,
    work_dir: Path | None = None,
    seal: bool = False,
    drilled: Manifest | None = None,
    record: str | None = None,
) -> CopyCheck:
    """Check one stored copy; never raises for a bad copy (the result says why), only for usage errors.

    First the manifest, before any use: its seal verifies under `keyring` (core/archive/seal.py) and
    it describes this backup (a manifest stored under another tenant's or backup's path is refused);
    refused (CopyCheck.refused) otherwise. A manifest without a seal (written before manifests were
    sealed) is checked with a warning in the message.
    Checksum: the manifest's sha256/size equal the stored object's metadata, and every stored byte
    re-hashes to it (Location.verify / get: one read of the archive the manifest names, which answers
    the metadata too; the manifest is read once). Deep: download (re-hashed on the way) to a temporary
    directory under `work_dir` (owner-only, removed after) and run verify_archive(deep=True): decrypt
    with `keyring`, decompress, pg_restore --list, header and TOC vs manifest; then scan every COPY
    row (isolation.scan_archive): no other tenant's row, row counts = manifest's, and the tables
    carrying the tenant column are exactly the manifest's tenant tables (a tenant_column that names no
    column checks nothing, so it fails).
    `drilled`: the manifest of an archive a restore drill just proved (the backup's own run: the
    Dagster copy checks pass the archive they shipped); when the copy's manifest is that backup's and
    its stored bytes re-hash to exactly the drilled archive's SHA-256 (Manifest.drill_proved), the
    decode and row scan are the drill's (restored, counted, isolation checked on those very bytes):
    proof IDENTITY, not done twice.
    `seal`: after a deep check that passed, seal an unsealed manifest (Location.put_manifest) with the
    key that wraps the archive's data key.
    `record`: who checked ("tenant-backup verify --deep", "local_copy checks", ...): the outcome is
    written beside the copy (verified.json, `record_verification`), what `status` reads.
    """
    if seal and not deep:
        raise ValueError("sealing a manifest needs a deep verification first")
    check = _verify_copy(loc, tenant_id, backup_id, keyring, deep, work_dir, seal, drilled)
    if record is not None:
        # Known complete when its manifest was just read; what was compared: the manifest's SHA-256.
        record_verification(
            loc, check, sha256=check.sha256, deep=deep, by=record, known_complete=check.sealed is not None
        )
    return check


def _verify_copy(loc, tenant_id, backup_id, keyring, deep, work_dir, seal, drilled) -> CopyCheck:
    name = loc.name
    try:
        manifest, sealed = read_manifest(loc, tenant_id, backup_id, keyring)
    except ArchiveError as exc:
        return CopyCheck(name, tenant_id, backup_id, False, str(exc), refused=True, deep=deep)
    except TenantBackupError as exc:
        return CopyCheck(name, tenant_id, backup_id, False, str(exc), deep=deep)
    warning = "" if sealed else "; WARNING: manifest not sealed, " + UNSEALED_HINT
    sha = manifest.archive.sha256 if manifest.archive else None
    state: dict = {"checksum_ok": None, "proof": "", "toc_entries": None}

    def result(ok: bool, message: str) -> CopyCheck:
        return CopyCheck(
            name, tenant_id, backup_id, ok, message + warning, sealed=sealed, deep=deep, sha256=sha, **state
        )

    def differs(st) -> CopyCheck | None:
        """The stored object's metadata (which its bytes were just re-hashed equal to) vs the manifest."""
        if (st.sha256.lower(), st.size) == (want_sha, want_size):
            return None
        state["checksum_ok"] = False
        return result(
            False,
            f"stored object's metadata ({st.size} bytes, sha256 {st.sha256[:16]}…) differs from "
            f"the manifest ({want_size} bytes, sha256 {want_sha[:16]}…)",
        )

    try:
        want_sha, want_size = manifest.checksum()
        identity = (
            deep
            and drilled is not None
            and (drilled.tenant_id, drilled.backup_id) == (tenant_id, backup_id)
            and drilled.drill_proved(want_sha)
        )
        if not deep or identity:
            # One read of the archive the manifest just read names (known_complete): its size and
            # metadata come with it (no separate stat), every byte re-hashed equal to that metadata
            # (CorruptObject otherwise), then the metadata compared with the manifest.
            try:
                st = loc.verify(tenant_id, backup_id, known_complete=True)
            except TenantBackupError:
                state["checksum_ok"] = False
                raise
            if (failed := differs(st)) is not None:
                return failed
            state["checksum_ok"] = True
            if not deep:
                return result(True, f"ok: {want_size} bytes re-read, SHA-256 matches the manifest")
            state["proof"] = IDENTITY
            return result(
                True,
                f"ok: {want_size} bytes re-read, identical (SHA-256) to the archive the restore drill"
                " restored and checked for isolation",
            )
        with work_folder(work_dir, "tb-verify-") as tmp:
            path = Path(tmp) / "archive.tbk"
            try:
                st = loc.get(tenant_id, backup_id, path, known_complete=True)
            except TenantBackupError:
                state["checksum_ok"] = False
                raise
            if (failed := differs(st)) is not None:
                return failed
            state["checksum_ok"] = True
            checked = verify_archive(path, manifest, keyring, deep=True)
            state["proof"], state["toc_entries"] = "decoded", checked.toc_entries
            if not checked.ok:
                state["checksum_ok"] = checked.checks.get("checksum", False)
                return result(False, checked.message)
            # Deep also proves isolation on the archive itself: every COPY row of a table with the
            # tenant column carries this tenant's id, and the rows add up to the manifest's.
            failure, rows = scan_against_manifest(path, manifest, keyring)
        if failure:
            return result(False, failure)
        message = f"{checked.message}; isolated: {rows} rows scanned"
        if seal and not sealed:
            loc.put_manifest(tenant_id, backup_id, manifest.with_seal(keyring))
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


# ------------------------------------------------------------------------------------ the record


@dataclass(frozen=True)
class Verification:
    """verified.json, beside a copy's manifest: its last verification (Location.put_verified)."""

    tenant_id: str | None = None
    backup_id: str | None = None
    location: str | None = None
    sha256: str | None = None  # the archive's SHA-256 the check compared against (the manifest's)
    ok: bool | None = None
    deep: bool | None = None
    by: str | None = None  # which check: "tenant-backup verify --deep", "local_copy checks", ...
    message: str | None = None
    verified_at: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> "Verification | None":
        if not isinstance(raw, Mapping):
            return None
        return cls(**{f.name: raw.get(f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        return asdict(self)

    def counts_for(self, manifest: Manifest) -> bool:
        """Whether this record is of the manifest's archive (not of bytes re-written since)."""
        want = manifest.archive.sha256 if manifest.archive else None
        return isinstance(want, str) and str(self.sha256 or "").lower() == want.lower()


def verification_record(
    check: CopyCheck, *, sha256: str | None, deep: bool, by: str, now: datetime | None = None
) -> dict:
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return Verification(
        check.tenant_id,
        check.backup_id,
        check.location,
        sha256,
        check.ok,
        deep,
        by,
        check.message,
        at.isoformat(timespec="seconds"),
    ).to_dict()


def record_verification(
    loc: Location, check: CopyCheck, *, sha256: str | None = None, deep: bool, by: str, known_complete: bool = False
) -> bool:
    """Store the outcome of a copy's verification beside it. Never raises: a record that cannot be
    written only makes `status` show the copy as unverified. Returns whether it was written."""
    put = loc.put_verified
    try:
        if sha256 is None:  # the bytes the check compared against: the manifest's
            manifest = loc.get_manifest(check.tenant_id, check.backup_id)
            sha256 = manifest.archive.sha256 if manifest.archive else None
        put(
            check.tenant_id,
            check.backup_id,
            verification_record(check, sha256=sha256, deep=deep, by=by),
            known_complete=known_complete,
        )
        return True
    except TenantBackupError as exc:
        log.warning(
            "%s: could not record the verification of %s/%s: %s", check.location, check.tenant_id, check.backup_id, exc
        )
        return False
