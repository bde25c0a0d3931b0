"""A second archive decoder, written from docs/FORMAT.md only (imports nothing from backup_assets).

If the reference implementation drifts from the spec, the test decoding its output with this one
fails. Simplicity over efficiency: it uses zstd's decompressobj, whose output per call is unbounded
(fine for test-sized archives).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct

import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = bytes.fromhex("89544E54424B500A")
S = 1048576
FIELDS = {"backup_id", "cipher", "codec", "created_at", "segment_size", "tenant_id"}


class DecodeError(Exception):
    pass


def parse_keys(text: str) -> dict[str, bytes]:
    keys = {}
    for entry in text.split(","):
        kid, _, b64 = entry.strip().partition(":")
        keys[kid] = base64.b64decode(b64, validate=True)
    return keys


def decode(data: bytes, keys: dict[str, bytes], expect_tenant: str | None = None) -> tuple[dict, bytes]:
    """Returns (fixed header dict + key_id, raw dump bytes) or raises DecodeError."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise DecodeError("truncated header")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    if take(8) != MAGIC:  # step 1
        raise DecodeError("bad magic")
    (version,) = struct.unpack(">H", take(2))  # step 2
    if version != 1:
        raise DecodeError("version")
    (fixed_len,) = struct.unpack(">I", take(4))  # step 3
    if not 2 <= fixed_len <= 65536:
        raise DecodeError("fixed_len")
    fixed = take(fixed_len)
    preamble = data[:pos]
    hdr = json.loads(fixed.decode("ascii"))  # step 4
    if set(hdr) != FIELDS:
        raise DecodeError("fields")
    if json.dumps(hdr, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii") != fixed:
        raise DecodeError("not canonical")
    if hdr["codec"] != "zstd" or hdr["cipher"] != "AES256_GCM_HKDF_1MB" or hdr["segment_size"] != S:
        raise DecodeError("unsupported parameters")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z", hdr["created_at"]):
        raise DecodeError("created_at")
    (k,) = struct.unpack(">H", take(2))  # step 5
    block = take(k)
    n = block[0]
    if not 1 <= n <= 64 or k != 1 + n + 12 + 48:
        raise DecodeError("key block")
    key_id = block[1 : 1 + n].decode("ascii")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key_id):
        raise DecodeError("key id")
    wrap_nonce, wrapped = block[1 + n : 13 + n], block[13 + n :]
    if key_id not in keys:  # step 6
        raise DecodeError(f"unknown key {key_id}")
    wrap_aad = preamble + bytes([n]) + block[1 : 1 + n]
    data_key = AESGCM(keys[key_id]).decrypt(wrap_nonce, wrapped, wrap_aad)  # step 7 (raises InvalidTag)
    if expect_tenant is not None and hdr["tenant_id"] != expect_tenant:  # step 8
        raise DecodeError("tenant mismatch")

    # step 9: Tink AES-GCM-HKDF streaming payload
    payload = data[pos:]
    if len(payload) < 40 or payload[0] != 40:
        raise DecodeError("tink header")
    salt, prefix = payload[1:33], payload[33:40]
    seg_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=preamble).derive(data_key)
    aead = AESGCM(seg_key)
    body = payload[40:]
    segments = []
    start, size = 0, S - 40
    while True:
        seg = body[start : start + size]
        start += len(seg)
        last = start >= len(body)
        if len(seg) < 16:
            raise DecodeError("truncated segment")
        i = len(segments)
        nonce = prefix + struct.pack(">I", i) + (b"\x01" if last else b"\x00")
        segments.append(aead.decrypt(nonce, seg, None))
        if last:
            break
        size = S
    dobj = zstandard.ZstdDecompressor().decompressobj()
    raw = dobj.decompress(b"".join(segments))
    if not dobj.eof:  # step 10
        raise DecodeError("incomplete zstd frame")
    if dobj.unused_data:
        raise DecodeError("data after the zstd frame")
    hdr = dict(hdr, key_id=key_id, sha256=hashlib.sha256(data).hexdigest())
    return hdr, raw
