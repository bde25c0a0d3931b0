"""The manifest's seal: an HMAC over the fields restore, verify, prune and status act on, under a key
derived from the master key that wraps the archive's data key (docs/MANIFEST.md, "The seal").

Anyone who can write to a bucket can edit a manifest.json; without the keyring they cannot make a
seal that verifies. `seal_manifest` makes one (export, `keys rewrap`, `verify --seal`),
`check_seal` verifies one before any use (`Manifest.with_seal` / `Manifest.verify_seal` are the
entry points; this module holds the definition so that it can be read, and re-implemented, alone):

    seal_key = HKDF-SHA256(IKM = master key named by archive.key_id, salt = none, info = INFO, L = 32)
    mac      = HMAC-SHA256(seal_key, sealed_bytes(manifest))
    seal     = {"alg": "HMAC-SHA256", "key_id": archive.key_id, "mac": hex(mac), "version": 1}

`sealed_bytes` is the canonical JSON (sorted keys, no whitespace, ASCII) of SEALED_FIELDS as the
manifest holds them, null for a field it lacks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..codec.keyring import Keyring
from ..errors import ArchiveError, ManifestNotAuthentic

# `manifest` below is a core/archive/manifest.py Manifest (not imported: manifest.py imports this module).

SEAL_VERSION = 1
SEAL_ALG = "HMAC-SHA256"
INFO = b"tenant-backup manifest seal v1"
# What the seal covers (version 1): top-level fields, and the three archive fields that keys rewrap
# changes (it re-seals). Not covered, so that they can change after the backup without a key:
# archive.file/codec/cipher/segment_size/zstd_level, registry_listed, compressed_size,
# compression_ratio, isolation, notes, timings, drill, and fields of others.
SEALED_FIELDS = (
    "manifest_version",
    "tenant_id",
    "backup_id",
    "created_at",
    "raw_size",
    "tables",
    "table_kinds",
    "source",
    "pg_dump_version",
)
SEALED_ARCHIVE_FIELDS = ("sha256", "size", "key_id")

UNSEALED_HINT = (
    "re-seal it with `tenant-backup keys rewrap` or `tenant-backup verify --tenant ID --backup BID --deep --seal`"
)


def sealed_document(manifest) -> dict[str, Any]:
    """The fields the seal covers, as the manifest holds them (null when absent)."""
    return manifest.sealed_document(SEALED_FIELDS, SEALED_ARCHIVE_FIELDS)


def sealed_bytes(manifest) -> bytes:
    """Canonical JSON of sealed_document: what the MAC is computed over."""
    try:
        text = json.dumps(
            sealed_document(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"manifest cannot be sealed: {exc}") from None
    return text.encode("ascii")


def seal_key(master_key: bytes) -> bytes:
    """The 32-byte HMAC key of a master key: its own use, never the key that wraps data keys."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(master_key)


def compute_mac(manifest, master_key: bytes) -> str:
    return hmac.new(seal_key(master_key), sealed_bytes(manifest), hashlib.sha256).hexdigest()


def seal_manifest(manifest, keyring: Keyring) -> dict[str, Any]:
    """The seal of `manifest`, made with the master key its archive.key_id names (which must be in
    `keyring`): the key that wraps the archive's data key seals what is said about the archive."""
    key_id = manifest.key_id
    if not key_id:
        raise ArchiveError("manifest cannot be sealed: it names no archive.key_id")
    master = keyring.get(key_id)  # ArchiveError naming the key id when absent
    return {"alg": SEAL_ALG, "key_id": key_id, "mac": compute_mac(manifest, master.key), "version": SEAL_VERSION}


def check_seal(manifest, keyring: Keyring, *, where: str = "manifest") -> bool:
    """True when the manifest is sealed and its seal verifies under `keyring`; False when it carries
    no seal at all (written before manifests were sealed: the caller warns, or refuses); otherwise
    ManifestNotAuthentic (exit code 6) saying why. Constant-time comparison."""
    seal = manifest.seal
    if seal is None and "seal" not in manifest.nulls:
        return False

    def refuse(why: str) -> ManifestNotAuthentic:
        return ManifestNotAuthentic(f"{where}: manifest fails authentication ({why}): refused")

    if seal is None:
        raise refuse("its seal is not an object")
    if seal.version != SEAL_VERSION or seal.alg != SEAL_ALG:
        raise refuse(f"unknown seal version/alg {seal.version!r}/{seal.alg!r}")
    key_id, mac = seal.key_id, seal.mac
    if not isinstance(key_id, str) or not isinstance(mac, str):
        raise refuse("its seal lacks key_id or mac")
    if key_id != manifest.key_id:
        raise refuse(f"sealed with key {key_id!r}, but archive.key_id says {manifest.key_id!r}")
    if key_id not in keyring:
        raise refuse(f"sealed with key {key_id!r}, which is not in the keyring ({', '.join(keyring.ids)})")
    want = compute_mac(manifest, keyring.get(key_id).key)
    if not hmac.compare_digest(want.encode(), mac.lower().encode("ascii", "replace")):
        raise refuse(
            f"a sealed field was changed since key {key_id!r} sealed it, or the keyring's {key_id!r} is another key"
        )
    return True


def unsealed_warning(where: str) -> str:
    """The warning every command gives for a manifest without a seal."""
    return (
        f"{where}: manifest is not sealed (written before tenant-backup authenticated its manifests):"
        f" its fields are not authenticated; {UNSEALED_HINT}"
    )


def unsealed_summary(wheres: list[str]) -> str:
    """One warning for many manifests without a seal (a command reading many says it once, with the
    count, not once per tenant)."""
    if len(wheres) == 1:
        return unsealed_warning(wheres[0])
    return (
        f"{len(wheres)} manifests are not sealed (written before tenant-backup authenticated its manifests):"
        f" their fields are not authenticated; {UNSEALED_HINT}: {', '.join(wheres)}"
    )


def read_manifest(loc, tenant_id: str, backup_id: str, keyring: Keyring) -> tuple:
    """A stored manifest, authenticated before any use: (manifest, sealed). `loc` is a Location
    (core/locations/base.py). ManifestNotAuthentic when its seal does not verify, ArchiveError when it
    is not a manifest or describes another tenant or backup than the one it is stored as; sealed is
    False for a manifest written before manifests were sealed (the caller warns, or refuses)."""
    where = loc.uri(tenant_id, backup_id)
    manifest = loc.get_manifest(tenant_id, backup_id)
    sealed = manifest.verify_seal(keyring, where=where)
    manifest.check_identity(tenant_id, backup_id, where)
    return manifest, sealed
