"""Archive → plain pg_dump custom-format file, authenticated, written atomically."""

from __future__ import annotations

from pathlib import Path

from ..codec.format import ArchiveHeader, decode_archive
from ..codec.keyring import Keyring
from ..errors import ArchiveError
from ..files import atomic_output, local_write_error


def decrypt_to_file(
    archive: Path,
    out_path: Path,
    keyring: Keyring,
    *,
    expect_tenant_id: str | None = None,
    expect_sha256: str | None = None,
) -> ArchiveHeader:
    """Decrypt and decompress `archive` into `out_path`. Nothing appears at `out_path` unless every
    segment authenticated, the stream ended properly and (if given) the archive's SHA-256 matched."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist")
    try:
        with archive.open("rb") as source, atomic_output(Path(out_path)) as sink:
            header, stats = decode_archive(source, sink, keyring=keyring, expect_tenant_id=expect_tenant_id)
            if expect_sha256 and stats.sha256 != expect_sha256.lower():
                raise ArchiveError(
                    f"checksum mismatch for {archive}: SHA-256 {stats.sha256}, manifest says {expect_sha256}"
                )
    except OSError as exc:  # no space left on device, read-only, permission: one line naming the file
        disk = local_write_error(exc, out_path)
        if disk is None:
            raise
        raise disk from None
    return header
