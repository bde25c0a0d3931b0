"""TEST SUPPORT: real, valid backups made without a database, for the index tests and bench/ops.py.

`make_backup` encodes `raw` (by default the empty tenant dump below; bench/ops.py passes a real
pg_dump of a tenant without rows) into an archive of the real format (core/codec/format.py: its own
header naming this tenant and backup id, its own data key wrapped by the keyring's active key, zstd,
AES-256-GCM segments) and a sealed manifest that describes it (sha256, size, tables, table kinds):
every object it makes passes verify (checksum), and decrypts. What it cannot claim: that the dump holds
this tenant's rows — the dump is of a tenant with none, which is what the tenants it stands for have.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

from ..core.archive.manifest import ArchiveInfo, Manifest, TableKinds
from ..core.codec.format import encode_archive
from ..core.codec.keyring import Keyring

EMPTY_DUMP = b"PGDMP" + bytes(64)  # stands in for a dump when only the archive's validity matters


def backup_id_at(moment: datetime, n: int) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ") + f"-{n & 0xFFFFFFFF:08x}"


def make_backup(
    keyring: Keyring,
    tenant_id: str,
    backup_id: str,
    created: datetime,
    dest: Path,
    *,
    raw: bytes = EMPTY_DUMP,
    tables: dict | None = None,
) -> Manifest:
    """Write the archive to `dest` and return its sealed manifest."""
    created = created.astimezone(timezone.utc)
    buf = io.BytesIO(raw)
    with open(dest, "wb") as out:
        header, stats = encode_archive(
            buf.read, out, tenant_id=tenant_id, backup_id=backup_id, created_at=created, keyring=keyring
        )
    tables = dict(tables if tables is not None else {"public.items": 0})
    manifest = Manifest(
        manifest_version=1,
        tenant_id=tenant_id,
        backup_id=backup_id,
        created_at=header.created_at,
        registry_listed=True,
        archive=ArchiveInfo(
            file=dest.name,
            size=stats.archive_bytes,
            sha256=stats.sha256,
            key_id=header.key_id,
            codec=header.codec,
            cipher=header.cipher,
            segment_size=header.segment_size,
        ),
        raw_size=stats.raw_bytes,
        tables=tables,
        table_kinds=TableKinds(tenant=sorted(tables), rls_child=[], shared=[], excluded=[]),
    )
    return manifest.with_seal(keyring)
