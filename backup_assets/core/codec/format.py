"""Archive file format v1: header || Tink AES-GCM-HKDF streaming ciphertext of one zstd frame.

The byte layout is specified in docs/FORMAT.md (keep the two in step; tests/independent_decoder.py
is written from the spec alone and must keep decoding what this module writes).

    preamble  = MAGIC (8) || version u16be || fixed_len u32be || fixed header (canonical JSON)
    key block = block_len u16be || key_id_len u8 || key_id || wrap_nonce (12) || wrapped data key (48)
    payload   = streaming AEAD (key = data key, associated data = preamble) of zstd(raw dump)

The payload is bound to the preamble but not to the key block, so rotating master keys rewrites
only the key block and copies the payload byte for byte (`rewrap_archive`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ArchiveError
from . import aead as streaming_aead
from .keyring import KEY_ID_PATTERN, Keyring, MasterKey

MAGIC = b"\x89TNTBKP\n"  # 0x89 catches 7-bit channels, \n catches newline translation (as PNG does)
FORMAT_VERSION = 1
CODEC = "zstd"
CIPHER = "AES256_GCM_HKDF_1MB"
SEGMENT_SIZE = streaming_aead.SEGMENT_SIZE
DATA_KEY_SIZE = 32
WRAP_NONCE_SIZE = 12
WRAPPED_KEY_SIZE = DATA_KEY_SIZE + 16  # AES-GCM ciphertext + tag
MAX_FIXED_HEADER = 65536
FIXED_FIELDS = ("backup_id", "cipher", "codec", "created_at", "segment_size", "tenant_id")
MAX_ID_LEN = 128
_PREFIX = struct.Struct(">HI")  # version, fixed header length
_KEY_ID_RE = re.compile(KEY_ID_PATTERN + r"\Z")
_CREATED_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\Z")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_IO_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveHeader:
    tenant_id: str
    backup_id: str
    created_at: str
    codec: str
    cipher: str
    segment_size: int
    key_id: str
    format_version: int = FORMAT_VERSION
    preamble: bytes = field(default=b"", repr=False)  # magic..fixed header: the payload's associated data
    wrap_nonce: bytes = field(default=b"", repr=False)
    wrapped_key: bytes = field(default=b"", repr=False)
    header_size: int = 0  # bytes before the payload (preamble + key block)


@dataclass(frozen=True)
class EncodeStats:
    raw_bytes: int
    compressed_bytes: int
    archive_bytes: int
    sha256: str  # hex, over every byte of the archive file


@dataclass(frozen=True)
class DecodeStats:
    raw_bytes: int
    archive_bytes: int
    sha256: str  # hex, over every byte of the archive file as read


# ---------------------------------------------------------------- header


def canonical_json(obj: dict) -> bytes:
    """Sorted keys, no whitespace, ASCII only (non-ASCII as \\uXXXX): one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _normalize_created_at(value) -> str:
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"created_at {value!r} is not ISO-8601") from None
    if not isinstance(value, _dt.datetime) or value.utcoffset() is None:
        raise ValueError("created_at must be a timezone-aware datetime or ISO-8601 string with offset")
    if value.utcoffset() != _dt.timedelta(0):
        value = value.astimezone(_dt.timezone.utc)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return value.strftime(fmt)


def _check_id(name: str, value) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LEN or not value.isprintable():
        raise ArchiveError(f"archive header: {name} must be a printable string of 1..{MAX_ID_LEN} characters")
    return value


def _parse_fixed(raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ArchiveError("archive header: fixed header is not ASCII JSON") from None
    if not isinstance(obj, dict) or tuple(sorted(obj)) != FIXED_FIELDS:
        raise ArchiveError(f"archive header: fixed header must hold exactly the fields {', '.join(FIXED_FIELDS)}")
    if canonical_json(obj) != raw:
        raise ArchiveError("archive header: fixed header is not canonical JSON")
    for name in ("tenant_id", "backup_id"):
        _check_id(name, obj[name])
    if not isinstance(obj["created_at"], str) or not _CREATED_RE.match(obj["created_at"]):
        raise ArchiveError("archive header: created_at is not an ISO-8601 UTC timestamp")
    if obj["codec"] != CODEC:
        raise ArchiveError(f"archive header: unsupported codec {obj['codec']!r} (expected {CODEC!r})")
    if obj["cipher"] != CIPHER:
        raise ArchiveError(f"archive header: unsupported cipher {obj['cipher']!r} (expected {CIPHER!r})")
    if type(obj["segment_size"]) is not int or obj["segment_size"] != SEGMENT_SIZE:
        raise ArchiveError(
            f"archive header: unsupported segment_size {obj['segment_size']!r} (expected {SEGMENT_SIZE})"
        )
    return obj


def _read_n(read: Callable[[int], bytes], n: int, what: str) -> bytes:
    data = streaming_aead.read_exact(read, n)
    if len(data) != n:
        raise ArchiveError(f"archive truncated: {what} is {len(data)} of {n} bytes")
    return data


def _read_header(read: Callable[[int], bytes]) -> ArchiveHeader:
    magic = streaming_aead.read_exact(read, len(MAGIC))
    if magic != MAGIC:
        if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
            raise ArchiveError(f"archive truncated: magic is {len(magic)} of {len(MAGIC)} bytes")
        raise ArchiveError("not a tenant-backup archive (bad magic bytes)")
    prefix = _read_n(read, _PREFIX.size, "header prefix")
    version, fixed_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise ArchiveError(f"unsupported archive format version {version} (this build reads {FORMAT_VERSION})")
    if not 2 <= fixed_len <= MAX_FIXED_HEADER:
        raise ArchiveError(f"archive header: fixed header length {fixed_len} out of range")
    fixed = _read_n(read, fixed_len, "fixed header")
    obj = _parse_fixed(fixed)
    (block_len,) = struct.unpack(">H", _read_n(read, 2, "key block length"))
    block = _read_n(read, block_len, "key block")
    id_len = block[0] if block else 0
    if not 1 <= id_len <= 64 or block_len != 1 + id_len + WRAP_NONCE_SIZE + WRAPPED_KEY_SIZE:
        raise ArchiveError(f"archive header: malformed key block ({block_len} bytes)")
    key_id_raw = block[1 : 1 + id_len]
    try:
        key_id = key_id_raw.decode("ascii")
    except UnicodeDecodeError:
        key_id = ""
    if not _KEY_ID_RE.match(key_id):
        raise ArchiveError("archive header: malformed key id in key block")
    nonce = block[1 + id_len : 1 + id_len + WRAP_NONCE_SIZE]
    wrapped = block[1 + id_len + WRAP_NONCE_SIZE :]
    preamble = MAGIC + prefix + fixed
    return ArchiveHeader(
        tenant_id=obj["tenant_id"],
        backup_id=obj["backup_id"],
        created_at=obj["created_at"],
        codec=obj["codec"],
        cipher=obj["cipher"],
        segment_size=obj["segment_size"],
        key_id=key_id,
        format_version=version,
        preamble=preamble,
        wrap_nonce=nonce,
        wrapped_key=wrapped,
        header_size=len(preamble) + 2 + block_len,
    )


def _wrap_aad(preamble: bytes, key_id: str) -> bytes:
    kid = key_id.encode("ascii")
    return preamble + bytes([len(kid)]) + kid


def _key_block(preamble: bytes, master: MasterKey, data_key: bytes) -> tuple[bytes, bytes, bytes]:
    nonce = os.urandom(WRAP_NONCE_SIZE)
    wrapped = AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(preamble, master.id))
    kid = master.id.encode("ascii")
    body = bytes([len(kid)]) + kid + nonce + wrapped
    return struct.pack(">H", len(body)) + body, nonce, wrapped


def _unwrap(header: ArchiveHeader, keyring: Keyring) -> bytes:
    master = keyring.get(header.key_id)  # ArchiveError naming the key id when absent
    try:
        return AESGCM(master.key).decrypt(
            header.wrap_nonce, header.wrapped_key, _wrap_aad(header.preamble, header.key_id)
        )
    except InvalidTag:
        raise ArchiveError(
            f"archive header failed authentication with master key {header.key_id!r}: "
            "the header or key block was altered, or that key id holds a different key"
        ) from None


def read_header(inp: BinaryIO) -> ArchiveHeader:
    """Parse (not authenticate: no key needed) the header; leaves `inp` at the start of the payload."""
    return _read_header(inp.read)


# ---------------------------------------------------------------- encode


class _HashingWriter:
    __slots__ = ("_write", "_sha", "count")

    def __init__(self, write):
        self._write = write
        self._sha = hashlib.sha256()
        self.count = 0

    def __call__(self, data) -> None:
        self._sha.update(data)
        self.count += len(data)
        self._write(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def encode_archive(
    read_raw: Callable[[int], bytes],
    out: BinaryIO,
    *,
    tenant_id: str,
    backup_id: str,
    created_at,
    keyring: Keyring,
    zstd_level: int = 1,
    zstd_threads: int = -1,
    chunk_size: int = 1 << 20,
) -> tuple[ArchiveHeader, EncodeStats]:
    """Stream raw dump bytes (`read_raw(n)` until b"") into an archive written to `out`.

    Memory stays bounded (a few MiB plus zstd's worker buffers) whatever the input size. `created_at`
    is a timezone-aware datetime or ISO-8601 string; it is stored normalized to UTC (`...Z`).
    """
    try:
        created = _normalize_created_at(created_at)
    except ValueError as exc:
        raise ArchiveError(f"cannot encode archive: {exc}") from None
    fixed_obj = {
        "backup_id": _check_id("backup_id", backup_id),
        "cipher": CIPHER,
        "codec": CODEC,
        "created_at": created,
        "segment_size": SEGMENT_SIZE,
        "tenant_id": _check_id("tenant_id", tenant_id),
    }
    fixed = canonical_json(fixed_obj)
    preamble = MAGIC + _PREFIX.pack(FORMAT_VERSION, len(fixed)) + fixed
    master = keyring.active
    data_key = os.urandom(DATA_KEY_SIZE)  # fresh per archive: one archive's key never opens another
    key_block, nonce, wrapped = _key_block(preamble, master, data_key)

    sink = _HashingWriter(out.write)
    sink(preamble)
    sink(key_block)
    enc = streaming_aead.SegmentEncryptor(sink, data_key, preamble)
    # stream_writer and compressobj measured within noise of each other (bench/codec.py --compare);
    # stream_writer hands output on in bounded pieces. With threads, zstd compresses in its own
    # worker threads, outside the GIL, while this thread reads, encrypts and hashes.
    sized = _CountingWriter(enc)
    cctx = zstandard.ZstdCompressor(level=zstd_level, threads=zstd_threads, write_checksum=True)
    raw = 0
    # No `with`/close(): closing ends a frame again, which would append a second, empty frame.
    zw = cctx.stream_writer(sized, closefd=False)
    while True:
        chunk = read_raw(chunk_size)
        if not chunk:
            break
        raw += len(chunk)
        zw.write(chunk)
    zw.flush(zstandard.FLUSH_FRAME)
    compressed = sized.count
    enc.close()
    header = ArchiveHeader(
        tenant_id=fixed_obj["tenant_id"],
        backup_id=fixed_obj["backup_id"],
        created_at=created,
        codec=CODEC,
        cipher=CIPHER,
        segment_size=SEGMENT_SIZE,
        key_id=master.id,
        preamble=preamble,
        wrap_nonce=nonce,
        wrapped_key=wrapped,
        header_size=len(preamble) + len(key_block),
    )
    return header, EncodeStats(raw, compressed, sink.count, sink.hexdigest())


# ---------------------------------------------------------------- decode


class _ZstdFrameChecker:
    """Follows one zstd frame's block structure (RFC 8878 §3.1.1) as its bytes pass.

    python-zstandard's streaming decoders end silently on a truncated frame; this proves the frame
    is complete and nothing follows it, at the cost of a few operations per 128 KiB block.
    """

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4
        self._hdr = bytearray()
        self._skip = 0
        self._checksum = False
        self._last = False

    def _goto(self, state: str, need: int) -> None:
        self._state, self._need = state, need
        self._hdr.clear()

    def feed(self, data) -> None:
        mv = memoryview(data)
        pos, n = 0, len(mv)
        while pos < n:
            if self._state == "done":
                raise ArchiveError("payload has data after the end of the zstd frame")
            if self._state == "body":
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
                if not self._skip:
                    self._after_block()
                continue
            take = min(self._need - len(self._hdr), n - pos)
            self._hdr += mv[pos : pos + take]
            pos += take
            if len(self._hdr) == self._need:
                self._step(bytes(self._hdr))

    def _step(self, h: bytes) -> None:
        if self._state == "magic":
            if h != _ZSTD_MAGIC:
                raise ArchiveError("payload is not a zstd frame (bad zstd magic)")
            self._goto("fhd", 1)
        elif self._state == "fhd":
            d = h[0]
            if d & 0x08:
                raise ArchiveError("payload zstd frame header has the reserved bit set")
            single = (d >> 5) & 1
            self._checksum = bool((d >> 2) & 1)
            rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + ((1 if single else 0), 2, 4, 8)[d >> 6]
            if rest:
                self._goto("fhrest", rest)
            else:
                self._goto("block", 3)
        elif self._state == "fhrest":
            self._goto("block", 3)
        elif self._state == "block":
            v = int.from_bytes(h, "little")
            self._last = bool(v & 1)
            btype = (v >> 1) & 3
            if btype == 3:
                raise ArchiveError("payload zstd frame has a reserved block type")
            self._skip = 1 if btype == 1 else v >> 3  # RLE blocks carry one byte
            self._goto("body", 0)
            if not self._skip:
                self._after_block()
        elif self._state == "checksum":
            self._goto("done", 0)

    def _after_block(self) -> None:
        if not self._last:
            self._goto("block", 3)
        elif self._checksum:
            self._goto("checksum", 4)
        else:
            self._goto("done", 0)

    def finish(self) -> None:
        if self._state != "done":
            raise ArchiveError("payload zstd frame is incomplete (archive was truncated before it was encrypted?)")


class _CountingWriter:
    def __init__(self, out: BinaryIO):
        self._out = out
        self.count = 0

    def write(self, data) -> int:
        self._out.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            flush()


def decode_archive(
    inp: BinaryIO,
    out: BinaryIO,
    *,
    keyring: Keyring,
    expect_tenant_id: str | None = None,
) -> tuple[ArchiveHeader, DecodeStats]:
    """Verify and decrypt an archive, writing the raw dump bytes to `out` as they are authenticated.

    Success is only known when this returns: it raises ArchiveError on anything wrong (bad magic,
    unknown version, truncation anywhere, tampering, reordering, trailing bytes, missing or wrong
    key, tenant mismatch, incomplete zstd frame) possibly AFTER part of the output was written.
    The CALLER must therefore write to a temporary file and delete it on error, renaming it into
    place only after a normal return. Nothing is written before the header has been authenticated
    (key unwrapped) and the tenant checked.
    """
    sha = hashlib.sha256()
    count = 0

    def read(n: int) -> bytes:
        nonlocal count
        data = inp.read(n)
        if data:
            sha.update(data)
            count += len(data)
        return data

    header = _read_header(read)
    data_key = _unwrap(header, keyring)  # authenticates magic, version, fixed header, key id
    if expect_tenant_id is not None and header.tenant_id != expect_tenant_id:
        raise ArchiveError(f"archive belongs to tenant {header.tenant_id!r}, expected {expect_tenant_id!r}")
    counter = _CountingWriter(out)
    frame = _ZstdFrameChecker()
    # stream_writer decompresses in bounded write_size pieces; decompressobj would return a
    # whole call's output at once (1 MiB of highly compressible input can become GiBs).
    writer = zstandard.ZstdDecompressor().stream_writer(counter, write_size=_IO_CHUNK, closefd=False)
    try:
        for plain in streaming_aead.decrypt_stream(read, data_key, header.preamble, segment_size=header.segment_size):
            frame.feed(plain)
            writer.write(plain)
        frame.finish()
        writer.flush()
    except zstandard.ZstdError as exc:
        raise ArchiveError(f"payload zstd frame is corrupt: {exc}") from None
    return header, DecodeStats(counter.count, count, sha.hexdigest())


# ---------------------------------------------------------------- key rotation


def rewrap_archive(inp: BinaryIO, out: BinaryIO, *, keyring: Keyring) -> ArchiveHeader:
    """Copy an archive, re-wrapping its data key under `keyring.active`; the payload is copied as is.

    The old key id must still be in `keyring` (to unwrap). The payload is not decrypted; run
    decode_archive on the result to verify it end to end. Same temp-file rule as decode_archive.
    """
    old = _read_header(inp.read)
    data_key = _unwrap(old, keyring)
    master = keyring.active
    key_block, nonce, wrapped = _key_block(old.preamble, master, data_key)
    new = ArchiveHeader(
        tenant_id=old.tenant_id,
        backup_id=old.backup_id,
        created_at=old.created_at,
        codec=old.codec,
        cipher=old.cipher,
        segment_size=old.segment_size,
        key_id=master.id,
        format_version=old.format_version,
        preamble=old.preamble,
        wrap_nonce=nonce,
        wrapped_key=wrapped,
        header_size=len(old.preamble) + len(key_block),
    )
    if _unwrap(new, keyring) != data_key:  # belt and braces before the old block is gone
        raise ArchiveError("re-wrapped data key does not verify")
    out.write(old.preamble)
    out.write(key_block)
    while True:
        chunk = inp.read(_IO_CHUNK)
        if not chunk:
            break
        out.write(chunk)
    return new
