"""core.archive.manifest.Manifest: the one reader and writer of manifest JSON (docs/MANIFEST.md)."""

from __future__ import annotations

import json

import pytest

from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.errors import ArchiveError

BID = "20261125T030000Z-1a2b3c4d"
FULL = {
    "manifest_version": 1,
    "tenant_id": "7f3e1c2a-0b4d-4e5f-8a9b-0c1d2e3f4a5b",
    "backup_id": BID,
    "created_at": "2026-11-25T03:00:00.123456Z",
    "registry_listed": True,
    "archive": {
        "file": "a.tbk",
        "size": 1234,
        "sha256": "ab" * 32,
        "key_id": "k1",
        "codec": "zstd",
        "zstd_level": 1,
        "cipher": "AES256_GCM_HKDF_1MB",
        "segment_size": 1048576,
    },
    "raw_size": 5000,
    "compressed_size": 1200,
    "compression_ratio": 4.167,
    "tables": {"public.orders": 3, "public.metal_types": 8},
    "isolation": {"dump_rows_counted": 3, "tenant_values_checked": 0},
    "table_kinds": {"tenant": ["public.orders"], "rls_child": [], "shared": ["public.metal_types"], "excluded": []},
    "source": {
        "database": "shop",
        "server_version": "18.0",
        "role": "backup",
        "tenant_column": "org",
        "tenant_setting": "app.current_tenant",
    },
    "pg_dump_version": "pg_dump (PostgreSQL) 18.0",
    "notes": [],
    "timings": {"preflight_s": 0.1, "dump_s": 0.2, "total_s": 0.3},
}


def stored(d: dict) -> bytes:
    return json.dumps(d, sort_keys=True, indent=2).encode()  # what locations have always written


@pytest.mark.parametrize(
    "raw",
    [
        FULL,
        {**FULL, "compression_ratio": None, "r2": {"etag": "x"}},  # null kept, a location's own field kept
        {k: v for k, v in FULL.items() if k not in ("isolation", "registry_listed", "notes")},  # older manifests
        {"archive": {"sha256": "cd" * 32, "size": 1}, "tables": {"orders": 3}, "note": "opaque"},  # partial
    ],
)
def test_json_round_trips_byte_for_byte(raw):
    m = Manifest.from_json(stored(raw))
    assert m.to_dict() == raw
    assert m.to_json().encode() == stored(raw)


def test_typed_views():
    m = Manifest.from_dict(FULL).validate(tenant_id=FULL["tenant_id"], backup_id=BID)
    assert m.checksum() == ("ab" * 32, 1234) and m.key_id == "k1"
    assert m.tenant_column == "org" and Manifest().tenant_column == "tenant_id"
    assert m.kinds.kind_of() == {"public.orders": "tenant", "public.metal_types": "shared"}
    assert m.kinds.of("excluded") == [] and Manifest().kinds.of("tenant") == []
    new = m.with_archive(size=99, sha256="ef" * 32, key_id="k2")
    assert new.checksum() == ("ef" * 32, 99) and new.key_id == "k2" and new.archive.file == "a.tbk"
    assert m.checksum() == ("ab" * 32, 1234)  # the original is untouched


def test_wrong_types_and_missing_fields_are_archive_errors():
    with pytest.raises(ArchiveError, match="tables"):
        Manifest.from_dict({**FULL, "tables": {"public.orders": "3"}})
    with pytest.raises(ArchiveError, match="no 'archive' object"):
        Manifest.from_dict({**FULL, "archive": []})
    with pytest.raises(ArchiveError, match="not JSON"):
        Manifest.from_json(b"{")
    with pytest.raises(ArchiveError, match="archive.sha256"):
        Manifest.from_dict({"archive": {}}).checksum()
    with pytest.raises(ArchiveError, match="archive.sha256"):
        Manifest.from_dict({**FULL, "archive": {**FULL["archive"], "sha256": "xyz"}}).validate()
    with pytest.raises(ArchiveError, match="tables/table_kinds"):
        Manifest.from_dict({k: v for k, v in FULL.items() if k != "table_kinds"}).validate()
    with pytest.raises(ArchiveError, match="manifest_version 2"):
        Manifest.from_dict({**FULL, "manifest_version": 2}).validate()
    with pytest.raises(ArchiveError, match="but is stored as"):
        Manifest.from_dict(FULL).validate(tenant_id=FULL["tenant_id"], backup_id=new_backup_id())
    with pytest.raises(ArchiveError, match="backup_id"):
        Manifest.from_dict({**FULL, "backup_id": "../x"}).validate()


def test_a_newer_manifest_version_is_refused_when_parsed(tmp_path):
    """A manifest written by a newer tenant-backup (a schema this one does not know) is refused by the one
    parser, wherever it is read: never half-understood."""
    from backup_assets.core.locations.local import LocalLocation

    with pytest.raises(ArchiveError, match="manifest_version 2 is newer than this tenant-backup reads"):
        Manifest.from_dict({**FULL, "manifest_version": 2})
    loc = LocalLocation(tmp_path / "local")
    archive = tmp_path / "a.tbk"
    archive.write_bytes(b"x" * 10)
    import hashlib

    manifest = Manifest.from_dict({**FULL, "archive": {"sha256": hashlib.sha256(b"x" * 10).hexdigest(), "size": 10}})
    loc.put(FULL["tenant_id"], BID, archive, manifest)
    assert loc.get_manifest(FULL["tenant_id"], BID) == manifest  # typed both ways, the same JSON
    stored = tmp_path / "local" / "tenants" / FULL["tenant_id"] / BID / "manifest.json"
    assert stored.read_bytes() == manifest.to_json().encode()
    stored.write_text(json.dumps({**manifest.to_dict(), "manifest_version": 3}))
    with pytest.raises(ArchiveError, match=r"manifest\.json: manifest_version 3 is newer"):
        loc.get_manifest(FULL["tenant_id"], BID)
    assert not hasattr(Manifest, "coerce")  # one parser: nobody hands a dict in
