"""Archive codec and Tink-layout streaming AEAD: interop with tink, the independent decoder, every
failure mode, key rotation, bounded memory. Real crypto throughout."""

import io
import os
import struct
import subprocess
import sys
import textwrap

import independent_decoder  # tests/ is on sys.path (rootdir conftest, no package)
import pytest
import zstandard

from backup_assets.core.codec import aead as sa
from backup_assets.core.codec import format as af
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.errors import ArchiveError

S = sa.SEGMENT_SIZE
FIRST_PT = S - sa.HEADER_SIZE - sa.TAG_SIZE  # plaintext in segment 0
FULL_PT = S - sa.TAG_SIZE
SIZES = [0, 1, FIRST_PT - 1, FIRST_PT, FIRST_PT + 1, FIRST_PT + FULL_PT, 3 * S + 5]
TENANT = "3f1b2c4d-0000-4000-8000-00000000abcd"


# ---------------------------------------------------------------- tink interop


@pytest.fixture(scope="module")
def tink_for():
    pytest.importorskip("tink")
    from tink import proto_keyset_format, secret_key_access, streaming_aead
    from tink.proto import aes_gcm_hkdf_streaming_pb2 as pb
    from tink.proto import common_pb2, tink_pb2

    streaming_aead.register()

    def make(raw_key: bytes):
        key = pb.AesGcmHkdfStreamingKey(
            version=0,
            key_value=raw_key,
            params=pb.AesGcmHkdfStreamingParams(
                ciphertext_segment_size=S, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256
            ),
        )
        keyset = tink_pb2.Keyset(
            primary_key_id=1,
            key=[
                tink_pb2.Keyset.Key(
                    key_data=tink_pb2.KeyData(
                        type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
                        value=key.SerializeToString(),
                        key_material_type=tink_pb2.KeyData.SYMMETRIC,
                    ),
                    status=tink_pb2.ENABLED,
                    key_id=1,
                    output_prefix_type=tink_pb2.RAW,
                )
            ],
        )
        handle = proto_keyset_format.parse(keyset.SerializeToString(), secret_key_access.TOKEN)
        return handle.primitive(streaming_aead.StreamingAead)

    return make


class _KeepOpen(io.BytesIO):
    def close(self):  # tink closes the destination; keep the bytes readable
        pass


def tink_encrypt(prim, pt: bytes, ad: bytes) -> bytes:
    dst = _KeepOpen()
    with prim.new_encrypting_stream(dst, ad) as enc:
        enc.write(pt)
    return dst.getvalue()


def tink_decrypt(prim, ct: bytes, ad: bytes) -> bytes:
    with prim.new_decrypting_stream(io.BytesIO(ct), ad) as dec:
        return dec.read()


@pytest.mark.parametrize("n", SIZES)
def test_ours_to_tink_and_back(tink_for, n):
    key, ad, pt = os.urandom(32), b"assoc" + bytes([n % 256]), os.urandom(n)
    prim = tink_for(key)
    ours = sa.encrypt_bytes(pt, key, ad)
    assert tink_decrypt(prim, ours, ad) == pt
    theirs = tink_encrypt(prim, pt, ad)
    assert len(theirs) == len(ours)  # same segmentation
    assert sa.decrypt_bytes(theirs, key, ad) == pt


def test_small_writes_match_layout(tink_for):
    key, pt = os.urandom(32), os.urandom(2 * S + 77)
    chunks = []
    enc = sa.SegmentEncryptor(chunks.append, key, b"")
    for i in range(0, len(pt), 9999):
        enc.write(memoryview(pt)[i : i + 9999])
    enc.close()
    assert max(map(len, chunks)) <= S
    assert tink_decrypt(tink_for(key), b"".join(chunks), b"") == pt


def test_archive_payload_is_plain_tink(tink_for):
    kr = Keyring.parse(generate_entry("a"))
    raw = os.urandom(S) + b"row\t1\n" * 200000
    data, hdr, _ = _encode(raw, kr)
    data_key = af._unwrap(af.read_header(io.BytesIO(data)), kr)
    comp = tink_decrypt(tink_for(data_key), data[hdr.header_size :], hdr.preamble)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(comp) == raw


# ---------------------------------------------------------------- streaming AEAD failures


@pytest.fixture(scope="module")
def stream():
    key, ad, pt = os.urandom(32), b"ad", os.urandom(3 * S)
    return key, ad, pt, sa.encrypt_bytes(pt, key, ad)


def _segments(ct):
    """Split a Tink ciphertext into header and segments."""
    segs, pos, size = [], sa.HEADER_SIZE, S - sa.HEADER_SIZE
    while pos < len(ct):
        segs.append(ct[pos : pos + size])
        pos += size
        size = S
    return ct[: sa.HEADER_SIZE], segs


def test_stream_failures(stream):
    key, ad, pt, ct = stream
    head, segs = _segments(ct)
    bad = {
        "truncated at boundary": head + b"".join(segs[:-1]),
        "truncated mid segment": ct[: len(ct) - 100],
        "truncated header": ct[:20],
        "reordered": head + segs[1] + segs[0] + b"".join(segs[2:]),
        "duplicated": head + segs[0] + segs[1] + segs[1] + b"".join(segs[2:]),
        "bit flip": ct[:5000] + bytes([ct[5000] ^ 1]) + ct[5001:],
        "salt flip": ct[:3] + bytes([ct[3] ^ 0x80]) + ct[4:],
        "trailing bytes": ct + b"x",
        "trailing segment": ct + os.urandom(100),
    }
    for name, c in bad.items():
        with pytest.raises(ArchiveError):
            sa.decrypt_bytes(c, key, ad)
            pytest.fail(name)
    with pytest.raises(ArchiveError, match="not the final segment"):
        sa.decrypt_bytes(head + b"".join(segs[:-1]), key, ad)
    with pytest.raises(ArchiveError, match="authentication"):
        sa.decrypt_bytes(ct, os.urandom(32), ad)
    with pytest.raises(ArchiveError, match="authentication"):
        sa.decrypt_bytes(ct, key, b"other")
    assert sa.decrypt_bytes(ct, key, ad) == pt


# ---------------------------------------------------------------- archives


def _encode(raw: bytes, kr: Keyring, tenant=TENANT, **kw):
    out = io.BytesIO()
    hdr, st = af.encode_archive(
        io.BytesIO(raw).read,
        out,
        tenant_id=tenant,
        backup_id="b-1",
        created_at="2026-11-22T03:00:00+00:00",
        keyring=kr,
        **kw,
    )
    return out.getvalue(), hdr, st


def _decode(data: bytes, kr: Keyring, **kw):
    out = io.BytesIO()
    hdr, st = af.decode_archive(io.BytesIO(data), out, keyring=kr, **kw)
    return out.getvalue(), hdr, st


@pytest.fixture(scope="module")
def big(keyring):
    # Incompressible bytes so the payload spans several segments, then compressible COPY text.
    raw = os.urandom(2 * S + 12345) + b"1\tfoo\t2026-01-01\t\\N\n" * 50000
    data, hdr, st = _encode(raw, keyring)
    return raw, data, hdr, st


@pytest.mark.parametrize("raw", [b"", b"x", b"COPY t FROM stdin;\n" * 1000, os.urandom(FIRST_PT)])
def test_round_trip_and_independent_decoder(keyring, raw):
    data, hdr, st = _encode(raw, keyring)
    import hashlib

    assert st.raw_bytes == len(raw) and st.archive_bytes == len(data)
    assert st.sha256 == hashlib.sha256(data).hexdigest()
    back, hdr2, dst = _decode(data, keyring, expect_tenant_id=TENANT)
    assert back == raw and dst.raw_bytes == len(raw) and dst.sha256 == st.sha256
    assert hdr2.tenant_id == TENANT and hdr2.key_id == keyring.active.id and hdr2.created_at == "2026-11-22T03:00:00Z"
    assert af.read_header(io.BytesIO(data)) == hdr == hdr2
    fields, raw2 = independent_decoder.decode(data, {keyring.active.id: keyring.active.key}, TENANT)
    assert raw2 == raw and fields["backup_id"] == "b-1" and fields["sha256"] == st.sha256


def test_big_round_trip_both_decoders(keyring, big):
    raw, data, hdr, st = big
    assert st.compressed_bytes > 2 * S and len(data) > 2 * S  # three segments
    assert _decode(data, keyring)[0] == raw
    assert independent_decoder.decode(data, {keyring.active.id: keyring.active.key})[1] == raw


def test_fresh_data_key_and_salt_per_archive(keyring):
    a, ha, _ = _encode(b"same", keyring)
    b, hb, _ = _encode(b"same", keyring)
    assert ha.preamble == hb.preamble and ha.wrapped_key != hb.wrapped_key
    assert af._unwrap(ha, keyring) != af._unwrap(hb, keyring)
    assert a[ha.header_size :] != b[hb.header_size :]


def _expect(data, kr, match, **kw):
    with pytest.raises(ArchiveError, match=match):
        _decode(data, kr, **kw)


def test_bad_magic_and_version(keyring, big):
    data = big[1]
    _expect(b"PGDMP" + data[5:], keyring, "bad magic")
    _expect(b"", keyring, "truncated")
    _expect(data[:8] + struct.pack(">H", 2) + data[10:], keyring, "unsupported archive format version 2")


def test_truncation_anywhere(keyring, big):
    _, data, hdr, _ = big
    cuts = set(range(0, hdr.header_size + 60, 7)) | {hdr.header_size + 40}
    payload_start = hdr.header_size + sa.HEADER_SIZE
    for boundary in (payload_start + S - sa.HEADER_SIZE, payload_start + 2 * S - sa.HEADER_SIZE):
        cuts |= {boundary - 1, boundary, boundary + 1, boundary + 16}
    cuts |= {len(data) - 1, len(data) - 17}
    for cut in sorted(cuts):
        with pytest.raises(ArchiveError):
            _decode(data[:cut], keyring)
            pytest.fail(f"cut at {cut} decoded")


def test_reordered_and_duplicated_segments(keyring, big):
    _, data, hdr, _ = big
    head, payload = data[: hdr.header_size], data[hdr.header_size :]
    th, segs = _segments(payload)
    assert len(segs) >= 3
    _expect(head + th + segs[1] + segs[0] + b"".join(segs[2:]), keyring, "authentication")
    _expect(head + th + segs[0] + segs[0] + b"".join(segs[1:]), keyring, "authentication")
    _expect(head + th + b"".join(segs[:-1]), keyring, "truncated")


def test_bit_flips_everywhere(keyring, big):
    _, data, hdr, _ = big
    positions = list(range(0, hdr.header_size + 40)) + [
        hdr.header_size + 41,
        len(data) // 2,
        len(data) - 1,
        len(data) - 20,
    ]
    for p in positions:
        flipped = data[:p] + bytes([data[p] ^ 0x10]) + data[p + 1 :]
        with pytest.raises(ArchiveError):
            _decode(flipped, keyring)
            pytest.fail(f"flip at {p} decoded")


def test_header_tamper_detected_by_key_unwrap(keyring):
    data, hdr, _ = _encode(b"abc", keyring)
    # Same length, still canonical, valid-looking: only authentication can catch it.
    other = data.replace(TENANT.encode(), TENANT[:-1].encode() + b"e")
    _expect(other, keyring, f"failed authentication with master key '{keyring.active.id}'")


def test_trailing_garbage(keyring, big):
    _expect(big[1] + b"\0", keyring, "authentication")
    small, _, _ = _encode(b"tiny", keyring)
    _expect(small + os.urandom(S), keyring, "authentication")


def test_wrong_and_missing_key(keyring, big):
    data = big[1]
    wrong = Keyring([type(keyring.active)(keyring.active.id, os.urandom(32))])
    _expect(data, wrong, f"master key '{keyring.active.id}'")
    _expect(data, Keyring.parse(generate_entry("other")), f"'{keyring.active.id}' is not in TENANT_BACKUP_KEYS")


def test_tenant_mismatch(keyring):
    data, _, _ = _encode(b"abc", keyring)
    out = io.BytesIO()
    with pytest.raises(ArchiveError, match="belongs to tenant"):
        af.decode_archive(io.BytesIO(data), out, keyring=keyring, expect_tenant_id="someone-else")
    assert out.getvalue() == b""  # nothing written before the checks


def _archive_with_payload(plaintext: bytes, kr: Keyring) -> bytes:
    """A correctly encrypted archive around an arbitrary (bad) compressed stream."""
    data, hdr, _ = _encode(b"", kr)
    data_key = os.urandom(32)
    key_block, _, _ = af._key_block(hdr.preamble, kr.active, data_key)
    return hdr.preamble + key_block + sa.encrypt_bytes(plaintext, data_key, hdr.preamble)


def test_incomplete_or_extra_zstd(keyring):
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(5000))
    assert _decode(_archive_with_payload(frame, keyring), keyring)[0]  # the helper itself is sound
    _expect(_archive_with_payload(frame[:-4], keyring), keyring, "incomplete")
    _expect(_archive_with_payload(frame[:-1000], keyring), keyring, "incomplete")
    _expect(_archive_with_payload(frame + frame, keyring), keyring, "after the end of the zstd frame")
    _expect(_archive_with_payload(b"", keyring), keyring, "incomplete")
    _expect(_archive_with_payload(b"not zstd at all", keyring), keyring, "not a zstd frame")


def test_rewrap_drops_old_key_and_keeps_payload(keyring, big):
    raw, data, hdr, st = big
    new_entry = generate_entry("next")
    both = Keyring.parse(
        new_entry
        + ","
        + generate_entry("unused")
        + f",{keyring.active.id}:"
        + __import__("base64").b64encode(keyring.active.key).decode()
    )
    out = io.BytesIO()
    new_hdr = af.rewrap_archive(io.BytesIO(data), out, keyring=both)
    rewrapped = out.getvalue()
    assert new_hdr.key_id == "next" and new_hdr.preamble == hdr.preamble
    assert rewrapped[new_hdr.header_size :] == data[hdr.header_size :]  # payload byte for byte
    only_new = Keyring.parse(new_entry)
    back, h2, dst = _decode(rewrapped, only_new, expect_tenant_id=TENANT)
    assert back == raw and h2.key_id == "next" and dst.sha256 != st.sha256
    assert independent_decoder.decode(rewrapped, {"next": only_new.active.key})[1] == raw
    _expect(data, only_new, f"'{keyring.active.id}'")
    with pytest.raises(ArchiveError, match=f"'{keyring.active.id}'"):
        af.rewrap_archive(io.BytesIO(data), io.BytesIO(), keyring=only_new)


def test_created_at_normalized_to_utc(keyring):
    import datetime as dt

    out = io.BytesIO()
    hdr, _ = af.encode_archive(
        io.BytesIO(b"").read,
        out,
        tenant_id=TENANT,
        backup_id="b",
        created_at=dt.datetime(2026, 1, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        keyring=keyring,
    )
    assert hdr.created_at == "2026-01-01T03:00:00Z"
    with pytest.raises(ArchiveError):
        af.encode_archive(
            io.BytesIO(b"").read,
            io.BytesIO(),
            tenant_id=TENANT,
            backup_id="b",
            created_at="2026-01-01T00:00:00",
            keyring=keyring,
        )  # naive: ambiguous


# ---------------------------------------------------------------- bounded memory

_MEMORY_PROBE = textwrap.dedent(
    """
    import io, os, random, resource, sys
    from backup_assets.core.codec import format as af
    from backup_assets.core.codec.keyring import Keyring, generate_entry

    rnd = random.Random(1)
    # 8 MiB of varied COPY rows, cycled: beyond zstd's window, so not trivially compressible.
    pool = bytearray()
    i = 0
    while len(pool) < 8 << 20:
        i += 1
        pool += f"{i}\\t{rnd.getrandbits(64):x}\\tname {rnd.randint(0, 10**6)}\\t2026-01-{rnd.randint(1, 28):02d}\\n".encode()
    pool = memoryview(pool)

    def source(total, data):
        state = {"left": total, "pos": 0}
        def read(n):
            if state["left"] <= 0:
                return b""
            n = min(n, state["left"], len(data) - state["pos"])
            chunk = data[state["pos"]:state["pos"] + n]
            state["pos"] = (state["pos"] + n) % len(data)
            state["left"] -= n
            return chunk
        return read

    class Sink:
        n = 0
        def write(self, b):
            self.n += len(b)

    kr = Keyring.parse(generate_entry("m"))
    zeros = memoryview(bytes(1 << 20))
    path = sys.argv[1]
    import gc, psutil
    gc.collect()
    # Current RSS, not the peak so far: transient peaks from building the pool must not hide growth.
    base = psutil.Process().memory_info().rss
    for data in (pool, zeros):  # zeros: 1 MiB of payload inflates to ~all of it at once if unbounded
        with open(path, "wb") as f:
            af.encode_archive(source(200 << 20, data), f, tenant_id="t", backup_id="b",
                              created_at="2026-01-01T00:00:00Z", keyring=kr)
        with open(path, "rb") as f:
            _, st = af.decode_archive(f, Sink(), keyring=kr)
        assert st.raw_bytes == 200 << 20
    # VmHWM, not ru_maxrss: Linux carries the pre-exec peak of the forking process (here pytest,
    # holding earlier tests' archives) into ru_maxrss; VmHWM belongs to this process image alone.
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(int(hwm.split()[1]) * 1024 - base)
    """
)


def test_bounded_memory_200_mib(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "a.tbk")],
        capture_output=True,
        text=True,
        cwd=root,
        env=dict(os.environ, PYTHONPATH=root),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    growth = int(res.stdout.strip())
    print(f"peak RSS growth {growth / 2**20:.1f} MiB")
    assert growth < 64 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.1f} MiB"
