"""Verify an archive against its manifest: checksum, and (deep) decrypt + pg_restore --list.

`verify_archive` reads the archive file ONCE: the bytes are hashed as they are read, decrypted and
decompressed segment by segment (`decode_archive`) and piped straight into `pg_restore --list`
reading stdin. Nothing is held in memory as a whole and nothing is written to disk.

pg_restore accepts a custom-format archive on a pipe for --list (verified with pg_restore 18): it
reads the header and the table of contents, prints the list and exits without reading the data
blocks, so the pipe breaks early. From then on the decoded bytes are discarded, but decoding goes on
to the end of the file: every segment must still authenticate and the zstd frame must end properly,
and the SHA-256 must cover the whole file.

Failures of the archive (wrong size or checksum, tampering, truncation, wrong or missing key, a TOC
that does not match the manifest) never raise: they give `VerifyResult(ok=False, message=...)`.
Usage errors raise: a missing archive file or a manifest without `archive.sha256`/`archive.size`
is `ArchiveError`; pg_restore that cannot be found is `ConfigError`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..archive.manifest import Manifest
from ..archive.pipe import ArchivePipe, HashingReader
from ..codec.keyring import Keyring
from ..errors import ArchiveError
from ..files import sha256_file
from ..source.pgbin import for_archive

log = logging.getLogger(__name__)

# Names of the entries in VerifyResult.checks, in the order they run.
CHECK_CHECKSUM = "checksum"  # size and SHA-256 of the file equal the manifest's
CHECK_DECRYPT = "decrypt"  # every segment authenticated with the keyring, the zstd frame is complete
CHECK_HEADER = "header"  # the authenticated header names the manifest's tenant, backup, key, time; raw size
CHECK_TOC = "toc"  # pg_restore --list read the decoded stream and exited 0
CHECK_TABLE_DATA = "table_data"  # the TABLE DATA entries are exactly the manifest's tables (but excluded ones)


@dataclass
class VerifyResult:
    ok: bool
    checks: dict[str, bool]  # only the checks that ran; see CHECK_* above
    sha256: str  # of the file as read now (hex)
    size: int  # bytes of the file as read now
    toc_entries: int | None = None  # entries pg_restore --list printed (deep only)
    table_data_entries: int | None = None  # of which TABLE DATA
    message: str = ""  # one line: "ok: ..." or every failed check and why, "; "-separated
    duration_s: float = 0.0
    failures: list[str] = field(default_factory=list)  # the message's parts, one per failure

    def as_metadata(self) -> dict:
        """Flat JSON-able dict (for Dagster check metadata, logs, the CLI)."""
        return {
            "ok": self.ok,
            **{f"check_{k}": v for k, v in self.checks.items()},
            "sha256": self.sha256,
            "size": self.size,
            "toc_entries": self.toc_entries,
            "table_data_entries": self.table_data_entries,
            "message": self.message,
            "duration_s": round(self.duration_s, 3),
        }


def parse_toc_list(text: str) -> list[tuple[str, str]]:
    """`pg_restore --list` output → [(description, rest)] for each entry line.

    An entry line is `dumpId; tableoid oid DESC namespace tag owner`; DESC may hold spaces
    ("TABLE DATA", "FK CONSTRAINT"), so the description is returned together with the rest and
    callers match prefixes (see `_has_table_data`)."""
    entries = []
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        head, sep, tail = line.partition("; ")
        if not sep or not head.strip().isdigit():
            continue
        parts = tail.split(" ", 2)  # tableoid, oid, "DESC namespace tag owner"
        if len(parts) == 3:
            entries.append((parts[0] + " " + parts[1], parts[2]))
    return entries


def _table_data_keys(entries: list[tuple[str, str]]) -> list[str]:
    """For each TABLE DATA entry: 'namespace tag owner' (owner may be absent with --no-owner dumps)."""
    return [rest[len("TABLE DATA ") :] for _, rest in entries if rest.startswith("TABLE DATA ")]


def _has_table_data(qualified: str, keys: list[str]) -> bool:
    # The manifest names tables "schema.table"; either part may itself contain a dot, so try every
    # split. pg_restore prints "schema table owner" for the entry.
    pieces = qualified.split(".")
    for i in range(1, len(pieces)):
        schema, name = ".".join(pieces[:i]), ".".join(pieces[i:])
        prefix = f"{schema} {name}"
        if any(k == prefix or k.startswith(prefix + " ") for k in keys):
            return True
    return False


def verify_archive(archive_path: Path, manifest: Manifest, keyring: Keyring, *, deep: bool = True) -> VerifyResult:
    """Check the archive file against its manifest; see the module docstring.

    Shallow (deep=False): size and SHA-256 only (no key needed, nothing decrypted).
    Deep: also decrypt and decompress the whole archive with `keyring`, check the authenticated
    header against the manifest (tenant id, backup id, key id, created_at) and the decoded size
    against manifest.raw_size, run `pg_restore --list` on the stream, and require a TABLE DATA entry
    for every table in manifest.tables (but those listed under table_kinds.excluded) and none for a
    table it does not list: a restore loads exactly the manifest's tables.
    """
    started = time.monotonic()
    archive_path = Path(archive_path)
    want_sha, want_size = manifest.checksum()
    if not archive_path.is_file():
        raise ArchiveError(f"archive {archive_path} does not exist")

    checks: dict[str, bool] = {}
    failures: list[str] = []
    toc_entries = table_data_entries = None

    if not deep:
        sha, size = sha256_file(archive_path)
    else:
        with archive_path.open("rb") as handle:
            reader = HashingReader(handle)
            outcome = _deep_pass(reader, manifest, keyring, archive_path.parent)
            reader.drain()  # after a decode failure: finish the checksum over the whole file
        sha, size = reader.hexdigest(), reader.count
        checks.update(outcome.checks)
        failures.extend(outcome.failures)
        toc_entries, table_data_entries = outcome.toc_entries, outcome.table_data_entries

    checksum_failures = []
    if size != want_size:
        checksum_failures.append(f"size {size} bytes, manifest says {want_size}")
    if sha != want_sha:
        checksum_failures.append(f"SHA-256 {sha}, manifest says {want_sha}")
    checks = {CHECK_CHECKSUM: not checksum_failures, **checks}
    if checksum_failures:
        failures.insert(0, "checksum mismatch: " + ", ".join(checksum_failures))

    ok = not failures
    if ok:
        what = "size and SHA-256 match the manifest"
        if deep:
            what += (
                f"; decrypted and decompressed with key {manifest.key_id or '?'!r}; "
                f"pg_restore --list read {toc_entries} TOC entries, {table_data_entries} TABLE DATA"
            )
        message = f"ok: {what}"
    else:
        message = "; ".join(failures)
    result = VerifyResult(
        ok=ok,
        checks=checks,
        sha256=sha,
        size=size,
        toc_entries=toc_entries,
        table_data_entries=table_data_entries,
        message=message,
        duration_s=time.monotonic() - started,
        failures=failures,
    )
    log.info("verify %s: %s (%.3fs)", archive_path, message, result.duration_s)
    return result


@dataclass
class _DeepOutcome:
    checks: dict[str, bool]
    failures: list[str]
    toc_entries: int | None = None
    table_data_entries: int | None = None


def _deep_pass(reader: HashingReader, manifest: Manifest, keyring: Keyring, scratch_dir: Path) -> _DeepOutcome:
    checks: dict[str, bool] = {}
    failures: list[str] = []
    # Beside the archive (the work directory it was staged in), not the system's temp directory.
    with tempfile.TemporaryFile(dir=scratch_dir) as out_file:
        # wait_timeout: pg_restore --list exits once its stdin is closed; never hang a check anyway.
        with ArchivePipe(
            [for_archive(manifest.pg_dump_version).program("pg_restore"), "--list"],
            reader,
            keyring,
            stdout=out_file,
            wait_timeout=60,
            name="verify-decode",
        ) as pipe:
            pass
        outcome = pipe.outcome
        if outcome.decode_error is not None:
            if not isinstance(outcome.decode_error, ArchiveError):
                raise outcome.decode_error
            checks[CHECK_DECRYPT] = False
            failures.append(f"decrypt failed: {outcome.decode_error}")
            return _DeepOutcome(checks, failures)
        header, stats, code = outcome.header, outcome.stats, outcome.code
        checks[CHECK_DECRYPT] = True

        header_failures = []
        for label, got, want in (
            ("tenant id", header.tenant_id, manifest.tenant_id),
            ("backup id", header.backup_id, manifest.backup_id),
            ("key id", header.key_id, manifest.key_id if manifest.key_id is not None else header.key_id),
        ):
            if got != want:
                header_failures.append(f"{label} {got!r}, manifest says {want!r}")
        if manifest.created_at is not None and _instant(header.created_at) != _instant(manifest.created_at):
            header_failures.append(f"created at {header.created_at!r}, manifest says {manifest.created_at!r}")
        raw_size = manifest.raw_size
        if raw_size is not None and raw_size != stats.raw_bytes:
            header_failures.append(f"decoded dump is {stats.raw_bytes} bytes, manifest says raw_size {raw_size}")
        checks[CHECK_HEADER] = not header_failures
        if header_failures:
            failures.append("archive does not match its manifest: " + ", ".join(header_failures))

        out_file.seek(0)
        listing = out_file.read().decode("utf-8", "replace")

    if code != 0:
        checks[CHECK_TOC] = False
        failures.append(outcome.child_failure("pg_restore --list"))
        return _DeepOutcome(checks, failures)
    entries = parse_toc_list(listing)
    keys = _table_data_keys(entries)
    checks[CHECK_TOC] = bool(entries)
    if not entries:
        failures.append("pg_restore --list printed no TOC entries")
    excluded = set(manifest.kinds.of("excluded"))
    missing = sorted(t for t in (manifest.tables or {}) if t not in excluded and not _has_table_data(t, keys))
    # And nothing more: table data the manifest does not list would be restored unaccounted for.
    listed = list(manifest.tables or {})
    unlisted = sorted(k for k in keys if not any(_has_table_data(t, [k]) for t in listed))
    checks[CHECK_TABLE_DATA] = not missing and not unlisted
    if missing:
        failures.append(
            f"no TABLE DATA entry in the archive for {len(missing)} table(s) of the manifest: " + ", ".join(missing)
        )
    if unlisted:
        failures.append(
            f"the archive holds table data the manifest does not list ({len(unlisted)}): "
            + ", ".join(" ".join(k.split(" ")[:2]) for k in unlisted)
        )
    return _DeepOutcome(checks, failures, toc_entries=len(entries), table_data_entries=len(keys))


def _instant(value: str | None) -> datetime | None:
    """An ISO-8601 UTC time (`…Z`) as an aware datetime; None when it is not one."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
