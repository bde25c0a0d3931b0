"""Tink's AES-GCM-HKDF streaming AEAD (key type AesGcmHkdfStreamingKey), ciphertext layout bit for bit.

Parameters are those of Tink's AES256_GCM_HKDF_1MB template: HKDF-SHA256, 32-byte derived key,
1 MiB ciphertext segments. Spec: https://developers.google.com/tink/streaming-aead/aes_gcm_hkdf_streaming

    ciphertext = header || segment_0 || ... || segment_n
    header     = header_len (1 byte, = 40) || salt (32) || nonce_prefix (7)
    key        = HKDF-SHA256(ikm=key, salt=salt, info=associated_data, L=32)
    segment_i  = AES-256-GCM(key, nonce_i, plaintext_i, aad="")   (ciphertext || 16-byte tag)
    nonce_i    = nonce_prefix || uint32_be(i) || (0x01 if last segment else 0x00)

Every segment but the last holds exactly segment_size bytes of ciphertext; the first holds
header_len fewer (the header shares its slot). The last segment may be short (even tag only, for
empty plaintext). Decryption finds the last segment by reaching end of input, so truncating at a
segment boundary fails: the new "last" segment was sealed with flag 0x00.

Tests check interoperability against the `tink` package in both directions.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import ArchiveError

KEY_SIZE = 32  # input key material and derived key size (AES-256)
SEGMENT_SIZE = 1 << 20  # ciphertext segment size of AES256_GCM_HKDF_1MB
NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
HEADER_SIZE = 1 + KEY_SIZE + NONCE_PREFIX_SIZE  # 40; salt size == derived key size in Tink
_MAX_SEGMENTS = 1 << 32  # the counter is 4 bytes


def derive_segment_key(key: bytes, salt: bytes, associated_data: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=associated_data).derive(key)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= _MAX_SEGMENTS:
        raise ArchiveError("stream too long: segment counter overflow")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise ValueError(f"streaming AEAD key must be {KEY_SIZE} bytes")


class SegmentEncryptor:
    """Push-style encryptor: `write(data)` any number of times, then `close()` exactly once.

    Holds at most one plaintext segment (< 1 MiB). A full segment is sealed only when more data
    arrives, because only `close()` knows which segment is last.
    """

    def __init__(
        self,
        dst_write: Callable[[bytes], object],
        key: bytes,
        associated_data: bytes,
        *,
        segment_size: int = SEGMENT_SIZE,
    ):
        _check_key(key)
        if segment_size <= HEADER_SIZE + TAG_SIZE:
            raise ValueError("segment_size too small")
        self._write = dst_write
        salt = os.urandom(KEY_SIZE)
        self._prefix = os.urandom(NONCE_PREFIX_SIZE)
        self._aead = AESGCM(derive_segment_key(bytes(key), salt, bytes(associated_data)))
        self._plain_size = segment_size - TAG_SIZE
        self._capacity = self._plain_size - HEADER_SIZE  # first segment shares its slot with the header
        self._buf = bytearray()
        self._index = 0
        self._closed = False
        self.ciphertext_bytes = HEADER_SIZE
        dst_write(bytes([HEADER_SIZE]) + salt + self._prefix)

    def _seal(self, data, last: bool) -> None:
        ct = self._aead.encrypt(_nonce(self._prefix, self._index, last), data, None)
        self._write(ct)
        self.ciphertext_bytes += len(ct)
        self._index += 1
        self._capacity = self._plain_size

    def write(self, data) -> int:
        if self._closed:
            raise ValueError("write to closed SegmentEncryptor")
        mv = memoryview(data).cast("B")
        n = len(mv)
        pos = 0
        while pos < n:
            if len(self._buf) == self._capacity:
                # Buffer full and more data follows: this segment is not the last.
                self._seal(self._buf, last=False)
                self._buf.clear()
            take = min(self._capacity - len(self._buf), n - pos)
            if not self._buf and take == self._capacity and n - pos > take:
                # Whole segment available in the caller's buffer with more after it: seal in place, no copy.
                self._seal(mv[pos : pos + take], last=False)
            else:
                self._buf += mv[pos : pos + take]
            pos += take
        return n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._seal(self._buf, last=True)
        self._buf = bytearray()


def read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    """Read n bytes unless EOF comes first (then fewer)."""
    first = read(n)
    if first is None:
        raise ArchiveError("non-blocking source returned no data")
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        chunk = read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def decrypt_stream(
    read: Callable[[int], bytes],
    key: bytes,
    associated_data: bytes,
    *,
    segment_size: int = SEGMENT_SIZE,
) -> Iterator[bytes]:
    """Pull-style decryptor: yields authenticated plaintext segments read from `read(n)` until EOF.

    Each yielded chunk is authenticated, but the stream as a whole is only proven complete when the
    generator finishes without raising (the last-segment flag is checked at EOF). Raises
    ArchiveError on truncation, reordering, corruption, extra bytes, wrong key or wrong associated
    data. Holds at most two ciphertext segments (one of look-ahead to know which is last).
    """
    _check_key(key)
    header = read_exact(read, HEADER_SIZE)
    if len(header) < HEADER_SIZE:
        raise ArchiveError(f"encrypted payload truncated: header is {len(header)} of {HEADER_SIZE} bytes")
    if header[0] != HEADER_SIZE:
        raise ArchiveError(f"encrypted payload: header length byte is {header[0]}, expected {HEADER_SIZE}")
    salt = header[1 : 1 + KEY_SIZE]
    prefix = header[1 + KEY_SIZE :]
    aead = AESGCM(derive_segment_key(bytes(key), salt, bytes(associated_data)))

    index = 0
    cur = read_exact(read, segment_size - HEADER_SIZE)
    full = segment_size - HEADER_SIZE
    while True:
        if len(cur) == full:
            nxt = read_exact(read, segment_size)
            last = not nxt
        else:
            nxt = b""
            last = True
        if len(cur) < TAG_SIZE:
            raise ArchiveError(f"encrypted payload truncated: segment {index} has {len(cur)} bytes, less than a tag")
        nonce = _nonce(prefix, index, last)
        try:
            plain = aead.decrypt(nonce, cur, None)
        except InvalidTag:
            if last and len(cur) == full and _opens(aead, prefix, index, cur, last=False):
                raise ArchiveError(
                    f"encrypted payload truncated: segment {index} is not the final segment and nothing follows it"
                ) from None
            raise ArchiveError(
                f"encrypted payload segment {index} failed authentication "
                "(corrupted, reordered, truncated or extended data, or wrong key / associated data)"
            ) from None
        if plain:
            yield plain
        if last:
            return
        index += 1
        cur = nxt
        full = segment_size


def _opens(aead: AESGCM, prefix: bytes, index: int, segment: bytes, *, last: bool) -> bool:
    try:
        aead.decrypt(_nonce(prefix, index, last), segment, None)
        return True
    except InvalidTag:
        return False


def encrypt_bytes(plaintext: bytes, key: bytes, associated_data: bytes, *, segment_size: int = SEGMENT_SIZE) -> bytes:
    """Whole-buffer convenience (tests, small data)."""
    out: list[bytes] = []
    enc = SegmentEncryptor(out.append, key, associated_data, segment_size=segment_size)
    enc.write(plaintext)
    enc.close()
    return b"".join(out)


def decrypt_bytes(ciphertext: bytes, key: bytes, associated_data: bytes, *, segment_size: int = SEGMENT_SIZE) -> bytes:
    import io

    src = io.BytesIO(ciphertext)
    return b"".join(decrypt_stream(src.read, key, associated_data, segment_size=segment_size))
