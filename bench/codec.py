"""Codec benchmark: encode/decode ~500 MiB of synthetic pg_dump-like COPY text.

    python bench/codec.py [--mib 500] [--levels 1,3]

Each configuration runs in its own subprocess so peak RSS (ru_maxrss) is its own. The input is a
32 MiB pool of generated COPY rows cycled in 1 MiB slices: larger than zstd's match window at these
levels, so repetition gives the compressor nothing for free, and generation costs no time inside
the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

POOL_MIB = 32
WORDS = (
    "alpha beta gamma delta invoice order shipped pending paid refund customer widget gadget "
    "premium basic annual monthly berlin paris london tokyo lisbon oslo rome madrid"
).split()


def make_pool(seed: int = 7) -> bytes:
    """COPY rows shaped like an orders table: sequential ids, a few foreign keys, increasing
    timestamps, short text. Built in batches so no transient list of all rows inflates peak RSS."""
    rnd = random.Random(seed)
    tenant = str(uuid.UUID(int=rnd.getrandbits(128)))
    customers = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(2000)]
    pool = bytearray(
        b"COPY public.orders (id, tenant_id, customer_id, title, email, created, amount, status, flag, data) FROM stdin;\n"
    )
    i = 0
    ts = 1_735_689_600  # 2025-01-01
    while len(pool) < POOL_MIB << 20:
        batch = []
        for _ in range(5000):
            i += 1
            ts += rnd.randint(0, 40)
            cust = rnd.randrange(len(customers))
            batch.append(
                "\t".join(
                    (
                        str(i),
                        tenant,
                        customers[cust],
                        " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 5))),
                        f"user{cust}@example{cust % 37}.com",
                        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + f".{rnd.randint(0, 999999):06d}+00",
                        f"{rnd.randint(0, 10**6) / 100:.2f}",
                        rnd.choice(("pending", "paid", "shipped", "refunded")),
                        rnd.choice(("t", "f", "\\N")),
                        json.dumps(
                            {"sku": rnd.randint(1000, 1200), "qty": rnd.randint(1, 9), "gift": rnd.random() < 0.1}
                        ),
                    )
                )
            )
        pool += ("\n".join(batch) + "\n").encode()
    pool += b"\\.\n"
    return pool  # not bytes(pool): a second 32 MiB copy would inflate the peak RSS figures


class Source:
    """read(n) over `total` bytes cycling through the pool; hands out memoryview slices (no copies)."""

    def __init__(self, pool: bytes, total: int):
        self.pool = memoryview(pool)
        self.left = total
        self.pos = 0

    def read(self, n: int):
        if self.left <= 0:
            return b""
        n = min(n, self.left, len(self.pool) - self.pos)
        chunk = self.pool[self.pos : self.pos + n]
        self.pos = (self.pos + n) % len(self.pool)
        self.left -= n
        return chunk


class NullSink:
    def __init__(self):
        self.count = 0

    def write(self, data):
        self.count += len(data)
        return len(data)

    def flush(self):
        pass


def rss_mib() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the forking parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def encode_compressobj(read_raw, out, *, level):
    """Alternative pipeline (zstd compressobj feeding the encryptor), for comparison only."""
    import zstandard

    from backup_assets.core.codec import aead as streaming_aead

    enc = streaming_aead.SegmentEncryptor(out.write, os.urandom(32), b"ad")
    cobj = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True).compressobj()
    while True:
        c = read_raw(1 << 20)
        if not c:
            break
        enc.write(cobj.compress(c))
    enc.write(cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
    enc.close()


def one(level: int, mode: str, mib: int) -> dict:
    from backup_assets.core.codec import format as af
    from backup_assets.core.codec.keyring import Keyring, generate_entry

    pool = make_pool()
    keyring = Keyring.parse(generate_entry("bench"))
    total = mib << 20
    base = rss_mib()
    result = {"level": level, "mode": mode, "raw_mib": mib, "baseline_rss_mib": round(base, 1)}
    if mode == "compressobj":
        sink = NullSink()
        t = time.perf_counter()
        encode_compressobj(Source(pool, total).read, sink, level=level)
        dt = time.perf_counter() - t
        result.update(
            encode_mb_s=round(total / dt / 1e6, 1),
            archive_mib=round(sink.count / 2**20, 1),
            peak_rss_mib=round(rss_mib(), 1),
        )
        return result
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.tbk")
        t = time.perf_counter()
        with open(path, "wb") as f:
            _, st = af.encode_archive(
                Source(pool, total).read,
                f,
                tenant_id="t",
                backup_id="b",
                created_at="2026-01-01T00:00:00Z",
                keyring=keyring,
                zstd_level=level,
            )
        enc_dt = time.perf_counter() - t
        enc_peak = rss_mib()
        t = time.perf_counter()
        with open(path, "rb") as f:
            _, dst = af.decode_archive(f, NullSink(), keyring=keyring)
        dec_dt = time.perf_counter() - t
        assert dst.raw_bytes == total and dst.sha256 == st.sha256
    result.update(
        encode_mb_s=round(total / enc_dt / 1e6, 1),
        decode_mb_s=round(total / dec_dt / 1e6, 1),
        archive_mib=round(st.archive_bytes / 2**20, 1),
        ratio=round(total / st.archive_bytes, 2),
        encode_peak_rss_mib=round(enc_peak, 1),
        peak_rss_mib=round(rss_mib(), 1),
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=500)
    ap.add_argument("--levels", default="1,3")
    ap.add_argument("--compare", action="store_true", help="also time the compressobj alternative")
    ap.add_argument("--one", nargs=2, metavar=("LEVEL", "MODE"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(int(a.one[0]), a.one[1], a.mib)))
        return
    print(
        f"{os.cpu_count()} CPUs; {a.mib} MiB synthetic COPY text; baseline RSS includes the {POOL_MIB} MiB input pool"
    )
    modes = ["encode_archive"] + (["compressobj"] if a.compare else [])
    for level in [int(x) for x in a.levels.split(",")]:
        for mode in modes:
            out = subprocess.run(
                [sys.executable, __file__, "--mib", str(a.mib), "--one", str(level), mode],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            print(out.strip())


if __name__ == "__main__":
    main()
