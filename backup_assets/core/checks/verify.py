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

import hashlib
import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..codec.format import decode_archive
from ..errors import ArchiveError
from ..codec.keyring import Keyring
from ..source.session import child_env
from ..source.pgbin import pg_program

log = logging.getLogger(__name__)

_IO_CHUNK = 1 << 20
_STDERR_LIMIT = 2000

# Names of the entries in VerifyResult.checks, in the order they run.
CHECK_CHECKSUM = "checksum"  # size and SHA-256 of the file equal the manifest's
CHECK_DECRYPT = "decrypt"  # every segment authenticated with the keyring, the zstd frame is complete
CHECK_HEADER = "header"  # the authenticated header names the manifest's tenant, backup and key; raw size matches
CHECK_TOC = "toc"  # pg_restore --list read the decoded stream and exited 0
CHECK_TABLE_DATA = "table_data"  # every table of the manifest (but excluded ones) has a TABLE DATA entry


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


def manifest_archive_fields(manifest: dict) -> tuple[str, int]:
    """(sha256, size) from manifest["archive"]; ArchiveError if the manifest lacks them."""
    archive = manifest.get("archive") if isinstance(manifest, dict) else None
    if not isinstance(archive, dict):
        raise ArchiveError("manifest has no 'archive' object (is this a tenant-backup manifest?)")
    sha, size = archive.get("sha256"), archive.get("size")
    if not isinstance(sha, str) or len(sha) != 64 or type(size) is not int:
        raise ArchiveError("manifest lacks archive.sha256 (64 hex digits) or archive.size (integer)")
    return sha.lower(), size


class _HashingReader:
    """Wraps a binary file: hashes and counts every byte read through it."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        if data:
            self._sha.update(data)
            self.count += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the rest of the file."""
        while self.read(_IO_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class _PipeSink:
    """File-like sink feeding a child's stdin; once the child closed its end, the rest is dropped."""

    def __init__(self, pipe: BinaryIO | None):
        self._pipe = pipe
        self.closed_early = pipe is None

    def write(self, data) -> int:
        if not self.closed_early:
            view = memoryview(data)
            try:
                while view:
                    n = self._pipe.write(view)
                    view = view[n:] if n is not None else view[len(view):]
            except (BrokenPipeError, ConnectionResetError):
                self.closed_early = True
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._pipe is not None and not self._pipe.closed:
            try:
                self._pipe.close()
            except (BrokenPipeError, ConnectionResetError):
                pass


def sha256_file(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as handle:
        while True:
            chunk = handle.read(_IO_CHUNK)
            if not chunk:
                break
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


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
    return [rest[len("TABLE DATA "):] for _, rest in entries if rest.startswith("TABLE DATA ")]


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


def _one_line(text: str, limit: int = _STDERR_LIMIT) -> str:
    return " ".join(text.split())[:limit]


def verify_archive(archive_path: Path, manifest: dict, keyring: Keyring, *, deep: bool = True) -> VerifyResult:
    """Check the archive file against its manifest; see the module docstring.

    Shallow (deep=False): size and SHA-256 only (no key needed, nothing decrypted).
    Deep: also decrypt and decompress the whole archive with `keyring`, check the authenticated
    header against the manifest (tenant id, backup id, key id) and the decoded size against
    manifest["raw_size"], run `pg_restore --list` on the stream, and require a TABLE DATA entry for
    every table in manifest["tables"] (but those listed under table_kinds["excluded"]).
    """
    started = time.monotonic()
    archive_path = Path(archive_path)
    want_sha, want_size = manifest_archive_fields(manifest)
    if not archive_path.is_file():
        raise ArchiveError(f"archive {archive_path} does not exist")

    checks: dict[str, bool] = {}
    failures: list[str] = []
    toc_entries = table_data_entries = None

    if not deep:
        sha, size = sha256_file(archive_path)
    else:
        with archive_path.open("rb") as handle:
            reader = _HashingReader(handle)
            outcome = _deep_pass(reader, manifest, keyring)
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
            what += (f"; decrypted and decompressed with key {manifest['archive'].get('key_id', '?')!r}; "
                     f"pg_restore --list read {toc_entries} TOC entries, {table_data_entries} TABLE DATA")
        message = f"ok: {what}"
    else:
        message = "; ".join(failures)
    result = VerifyResult(ok=ok, checks=checks, sha256=sha, size=size, toc_entries=toc_entries,
                          table_data_entries=table_data_entries, message=message,
                          duration_s=time.monotonic() - started, failures=failures)
    log.info("verify %s: %s (%.3fs)", archive_path, message, result.duration_s)
    return result


@dataclass
class _DeepOutcome:
    checks: dict[str, bool]
    failures: list[str]
    toc_entries: int | None = None
    table_data_entries: int | None = None


def _deep_pass(reader: _HashingReader, manifest: dict, keyring: Keyring) -> _DeepOutcome:
    checks: dict[str, bool] = {}
    failures: list[str] = []
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen([pg_program("pg_restore"), "--list"], stdin=subprocess.PIPE,
                                stdout=out_file, stderr=err_file, bufsize=0, env=child_env())
        sink = _PipeSink(proc.stdin)
        header = stats = None
        try:
            header, stats = decode_archive(reader, sink, keyring=keyring)
        except ArchiveError as exc:
            checks[CHECK_DECRYPT] = False
            failures.append(f"decrypt failed: {exc}")
        finally:
            sink.close()
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # cannot happen with stdin closed; never hang a check
                proc.kill()
                code = proc.wait()
        if header is None:
            return _DeepOutcome(checks, failures)
        checks[CHECK_DECRYPT] = True

        header_failures = []
        for label, got, want in (
            ("tenant id", header.tenant_id, manifest.get("tenant_id")),
            ("backup id", header.backup_id, manifest.get("backup_id")),
            ("key id", header.key_id, manifest["archive"].get("key_id", header.key_id)),
        ):
            if got != want:
                header_failures.append(f"{label} {got!r}, manifest says {want!r}")
        raw_size = manifest.get("raw_size")
        if isinstance(raw_size, int) and raw_size != stats.raw_bytes:
            header_failures.append(f"decoded dump is {stats.raw_bytes} bytes, manifest says raw_size {raw_size}")
        checks[CHECK_HEADER] = not header_failures
        if header_failures:
            failures.append("archive does not match its manifest: " + ", ".join(header_failures))

        out_file.seek(0)
        listing = out_file.read().decode("utf-8", "replace")
        err_file.seek(0)
        stderr = _one_line(err_file.read(_STDERR_LIMIT * 2).decode("utf-8", "replace"))

    if code != 0:
        checks[CHECK_TOC] = False
        failures.append(f"pg_restore --list failed (exit {code}): {stderr or 'no message'}")
        return _DeepOutcome(checks, failures)
    entries = parse_toc_list(listing)
    keys = _table_data_keys(entries)
    checks[CHECK_TOC] = bool(entries)
    if not entries:
        failures.append("pg_restore --list printed no TOC entries")
    excluded = set((manifest.get("table_kinds") or {}).get("excluded") or [])
    missing = sorted(t for t in (manifest.get("tables") or {}) if t not in excluded and not _has_table_data(t, keys))
    checks[CHECK_TABLE_DATA] = not missing
    if missing:
        failures.append(f"no TABLE DATA entry in the archive for {len(missing)} table(s) of the manifest: "
                        + ", ".join(missing))
    return _DeepOutcome(checks, failures, toc_entries=len(entries), table_data_entries=len(keys))
