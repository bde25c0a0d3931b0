"""One conformance suite that every storage location must pass (restic's model, DESIGN §8).

Real servers on loopback (moto S3 for R2, the b2sdk-RawSimulator-backed B2 server), real clients,
faults injected at the servers. Small part sizes keep multipart paths fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from backup_assets.core.errors import (CorruptObject, InvalidTenantId, NotFound, PermanentStorageError,
                                       StorageError, TransientStorageError)
from backup_assets.core.locations import RetryingLocation, sha256_file
from backup_assets.core.locations.b2 import B2Location
from backup_assets.core.locations.local import LocalLocation
from backup_assets.core.locations.r2 import R2Location
from backup_assets.testing.b2_server import B2Server
from backup_assets.testing.s3_server import S3Server

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
KINDS = ["local", "r2", "b2"]


@pytest.fixture(scope="session")
def s3_server():
    with S3Server() as s:
        yield s


@pytest.fixture(scope="session")
def b2_server():
    # 5 MB parts: the large-file path is exercised by a ~11 MiB archive.
    with B2Server(recommended_part_size=5 * 1000 * 1000, min_part_size=5 * 1000 * 1000) as s:
        yield s


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Harness:
    """One location under test plus the handles to break it."""

    def __init__(self, kind: str, tmp_path: Path, s3: S3Server | None, b2: B2Server | None):
        self.kind = kind
        self.tmp = tmp_path
        self.bucket = "t-" + uuid.uuid4().hex[:12]
        self.s3, self.b2 = s3, b2
        self.server = s3 if kind == "r2" else b2 if kind == "b2" else None
        if kind == "r2":
            s3.create_bucket(self.bucket)
        elif kind == "b2":
            b2.create_bucket(self.bucket)
        if self.server is not None:
            self.server.faults.clear()
        self.raw = self.make()
        self.loc = RetryingLocation(self.raw, attempts=3, base_delay=0.05)

    def upload_match(self, t: str, bid: str) -> str:
        """Fault filter hitting the archive's upload requests (B2 upload URLs carry no file name)."""
        return f"{t}/{bid}/archive.tbk" if self.kind == "r2" else "/__b2up/"

    @property
    def faults(self):
        return self.server.faults

    def make(self, *, bucket=None, key=None, url=None, root=None):
        bucket = bucket or self.bucket
        if self.kind == "local":
            return LocalLocation(root or self.tmp / "store")
        if self.kind == "r2":
            return R2Location(url or self.s3.url, key or self.s3.access_key, self.s3.secret_key, bucket,
                              part_size=5 * MiB, multipart_threshold=5 * MiB, max_attempts=2,
                              connect_timeout=2, read_timeout=10)
        return B2Location(key or self.b2.key_id, self.b2.key, bucket, realm=url or self.b2.url, tries=2,
                          connect_timeout=2, read_timeout=10)

    def corrupt_at_rest(self, tenant: str, backup: str) -> None:
        """Flip one byte of the stored archive, keeping its metadata (bit rot)."""
        key = self.raw.archive_key(tenant, backup)
        if self.kind == "local":
            p = self.raw.root / key
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 1
            p.write_bytes(bytes(data))
        elif self.kind == "r2":
            c = self.s3.client()
            obj = c.get_object(Bucket=self.bucket, Key=key)
            data = bytearray(obj["Body"].read())
            data[len(data) // 2] ^= 1
            c.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])
        else:
            with self.b2._httpd.lock:
                bucket = self.b2.sim.bucket_name_to_bucket[self.bucket]
                for (name, _fid), fs in bucket.file_name_and_id_to_file.items():
                    if name == key:
                        data = bytearray(fs.data_bytes)
                        data[len(data) // 2] ^= 1
                        fs.data_bytes = bytes(data)


@pytest.fixture(params=KINDS)
def h(request, tmp_path):
    kind = request.param
    s3 = request.getfixturevalue("s3_server") if kind == "r2" else None
    b2 = request.getfixturevalue("b2_server") if kind == "b2" else None
    harness = Harness(kind, tmp_path, s3, b2)
    yield harness
    if harness.server is not None:
        harness.server.faults.clear()


def remote_only(h: Harness) -> None:
    if h.kind == "local":
        pytest.skip("no server to break for the local location")


def make_archive(tmp: Path, size: int, name: str | None = None) -> tuple[Path, dict]:
    p = tmp / (name or f"{uuid.uuid4().hex}.tbk")
    with open(p, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
    sha, n = sha256_file(p)
    return p, {"archive": {"sha256": sha, "size": n}, "tables": {"orders": 3}, "note": "opaque to storage"}


def tid() -> str:
    return str(uuid.uuid4())


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 70_000])
def test_round_trip_small(h, tmp_path, size):
    arch, man = make_archive(tmp_path, size)
    t = tid()
    put = h.loc.put(t, "20261125T030000Z", arch, man)
    assert (put.size, put.sha256) == (size, man["archive"]["sha256"])
    assert put.uri == h.loc.uri(t, "20261125T030000Z") and put.uri.startswith({"local": "file://", "r2": "r2://", "b2": "b2://"}[h.kind])
    got = h.loc.get(t, "20261125T030000Z", tmp_path / "out" / "a.tbk")
    assert got.path.read_bytes() == arch.read_bytes()
    assert h.loc.get_manifest(t, "20261125T030000Z") == man
    st = h.loc.stat(t, "20261125T030000Z")
    assert (st.size, st.sha256) == (size, man["archive"]["sha256"])
    assert h.loc.verify(t, "20261125T030000Z").sha256 == man["archive"]["sha256"]


def test_round_trip_multipart(h, tmp_path):
    arch, man = make_archive(tmp_path, 11 * MiB + 12345)
    t = tid()
    h.loc.put(t, "b-multi", arch, man)
    out = h.loc.get(t, "b-multi", tmp_path / "back.tbk")
    assert sha256_file(out.path) == (man["archive"]["sha256"], man["archive"]["size"])
    if h.kind == "r2":
        sizes = list(h.s3.part_sizes(f"{t}/b-multi/archive.tbk").values())
        assert len(sizes) == 1 and len(sizes[0]) == 3
        *body, last = sizes[0]
        assert set(body) == {5 * MiB}, "R2 requires all non-final parts to be the same size"
        assert 0 < last <= 5 * MiB
        assert sum(sizes[0]) == man["archive"]["size"]
    if h.kind == "b2":
        file_id = h.b2.sim.bucket_name_to_bucket[h.bucket].file_name_and_id_to_file
        assert any(n.endswith(f"{t}/b-multi/archive.tbk") and len([p for p in fs.parts if p]) > 1
                   for (n, _), fs in file_id.items()), "large-file API not used"


def test_verification_record_beside_a_complete_copy(h, tmp_path):
    """verified.json: only beside a complete backup, replaced by each write, gone with the backup."""
    arch, man = make_archive(tmp_path, 1000)
    t = tid()
    with pytest.raises(NotFound):
        h.loc.put_verified(t, "b1", {"ok": True})
    h.loc.put(t, "b1", arch, man)
    assert h.loc.get_verified(t, "b1") is None
    h.loc.put_verified(t, "b1", {"ok": True, "sha256": man["archive"]["sha256"]})
    h.loc.put_verified(t, "b1", {"ok": False, "sha256": man["archive"]["sha256"]})
    assert h.loc.get_verified(t, "b1") == {"ok": False, "sha256": man["archive"]["sha256"]}
    # A caller that has just read the manifest need not have completeness asked again.
    assert h.loc.verify(t, "b1", known_complete=True).sha256 == man["archive"]["sha256"]
    h.loc.put_verified(t, "b1", {"ok": True}, known_complete=True)
    assert h.loc.get_verified(t, "b1") == {"ok": True}
    assert [r.backup_id for r in h.loc.list(t)] == ["b1"]  # a record is not a backup
    h.loc.delete(t, "b1")
    assert h.loc.get_verified(t, "b1") is None and h.loc.list(t) == []


# -- list / stat / delete -----------------------------------------------------------------------
def test_list_stat_delete(h, tmp_path):
    a, b = sorted([tid(), tid()])
    arch, man = make_archive(tmp_path, 1000)
    for t, bid in [(a, "b1"), (a, "b2"), (b, "b1")]:
        h.loc.put(t, bid, arch, man)
    assert [(r.tenant_id, r.backup_id) for r in h.loc.list()] == [(a, "b1"), (a, "b2"), (b, "b1")]
    assert [(r.tenant_id, r.backup_id) for r in h.loc.list(b)] == [(b, "b1")]
    assert all(r.location == h.kind and r.stored_at is not None for r in h.loc.list())
    h.loc.delete(a, "b1")
    h.loc.delete(a, "b1")  # idempotent
    h.loc.delete(tid(), "never-existed")
    assert [(r.tenant_id, r.backup_id) for r in h.loc.list()] == [(a, "b2"), (b, "b1")]
    with pytest.raises(NotFound):
        h.loc.stat(a, "b1")
    with pytest.raises(NotFound):
        h.loc.get(a, "b1", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert h.loc.list(tid()) == []


def test_overwrite_same_backup_id_keeps_one_copy(h, tmp_path):
    t = tid()
    a1, m1 = make_archive(tmp_path, 3000)
    a2, m2 = make_archive(tmp_path, 4000)
    h.loc.put(t, "b1", a1, m1)
    h.loc.put(t, "b1", a2, m2)
    assert h.loc.stat(t, "b1").sha256 == m2["archive"]["sha256"]
    assert h.loc.get(t, "b1", tmp_path / "o").path.read_bytes() == a2.read_bytes()
    if h.kind == "b2":
        assert h.b2.versions(h.bucket, h.raw.archive_key(t, "b1")) == 1
        h.loc.delete(t, "b1")
        assert h.b2.versions(h.bucket, h.raw.archive_key(t, "b1")) == 0
        assert h.b2.versions(h.bucket, h.raw.manifest_key(t, "b1")) == 0


def test_manifest_mismatch_is_refused(h, tmp_path):
    arch, man = make_archive(tmp_path, 2000)
    t = tid()
    bad = json.loads(json.dumps(man))
    bad["archive"]["sha256"] = "0" * 64
    with pytest.raises(PermanentStorageError, match="does not match"):
        h.loc.put(t, "b1", arch, bad)
    assert h.loc.list(t) == []


def test_concurrent_puts_for_different_tenants(h, tmp_path):
    tenants = [tid() for _ in range(6)]
    archives = {t: make_archive(tmp_path, 50_000 + i) for i, t in enumerate(tenants)}
    errors = []

    def work(t):
        try:
            h.loc.put(t, "weekly", *archives[t])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in tenants]
    [th.start() for th in threads]
    [th.join(60) for th in threads]
    assert not errors
    assert sorted(r.tenant_id for r in h.loc.list()) == sorted(tenants)
    for t in tenants:
        assert h.loc.verify(t, "weekly").sha256 == archives[t][1]["archive"]["sha256"]


# -- interruption and corruption ----------------------------------------------------------------
def test_interrupted_upload_is_not_listed_as_complete(h, tmp_path):
    t = tid()
    if h.kind == "local":
        # kill -9 a writer mid-copy: no manifest, no visible archive, only a dot-temp file at most.
        arch, man = make_archive(tmp_path, 192 * MiB)
        root = tmp_path / "store"
        code = ("import json,sys; from pathlib import Path; from backup_assets.core.locations.local import LocalLocation;"
                f"LocalLocation({str(root)!r}).put({t!r}, 'b1', Path({str(arch)!r}), json.loads(sys.argv[1]))")
        p = subprocess.Popen([sys.executable, "-c", code, json.dumps(man)], cwd=REPO)
        deadline = time.monotonic() + 30
        tdir = root / "tenants" / t / "b1"
        while time.monotonic() < deadline and not (tdir.is_dir() and any(tdir.glob(".archive.tbk.*.tmp"))):
            time.sleep(0.001)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert any(tdir.glob(".archive.tbk.*.tmp")), "writer was not caught mid-write"
    else:
        arch, man = make_archive(tmp_path, 11 * MiB)
        # Let the first part through, then every later request dies mid-body: retries exhaust.
        h.faults.set(drop=1000, after=2, match=h.upload_match(t, "b1"))
        with pytest.raises(TransientStorageError):
            h.loc.put(t, "b1", arch, man)
        h.faults.clear()
    assert h.loc.list(t) == []
    with pytest.raises(NotFound):
        h.loc.stat(t, "b1")
    h.loc.delete(t, "b1")  # cleans up leftovers (temp files, multipart uploads, unfinished large files)
    if h.kind == "local":
        assert not (tmp_path / "store" / "tenants" / t / "b1").exists()
    # A fresh put of the same backup then succeeds.
    h.loc.put(t, "b1", arch, man)
    assert [r.backup_id for r in h.loc.list(t)] == ["b1"]


def test_corrupted_stored_object_is_detected(h, tmp_path):
    arch, man = make_archive(tmp_path, 200_000)
    t = tid()
    h.loc.put(t, "b1", arch, man)
    h.corrupt_at_rest(t, "b1")
    with pytest.raises(CorruptObject, match="does not match"):
        h.loc.verify(t, "b1")
    with pytest.raises(CorruptObject):
        h.loc.get(t, "b1", tmp_path / "restore.tbk")
    assert not (tmp_path / "restore.tbk").exists(), "a corrupt download must not leave a file behind"
    assert h.loc.stat(t, "b1").sha256 == man["archive"]["sha256"]  # stat trusts metadata only


def test_byte_flipped_in_transit_is_detected(h, tmp_path):
    remote_only(h)
    arch, man = make_archive(tmp_path, 3 * MiB)
    t = tid()
    h.loc.put(t, "b1", arch, man)
    h.faults.set(flip=1, match="archive.tbk")
    with pytest.raises(CorruptObject):
        h.loc.get(t, "b1", tmp_path / "o.tbk")
    assert h.faults.state()["injected"] >= 1
    h.loc.verify(t, "b1")  # the stored copy itself is fine


# -- clear, bounded errors ----------------------------------------------------------------------
def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg


def test_missing_object_is_not_found(h):
    t = tid()
    for call in (lambda: h.loc.stat(t, "nope"), lambda: h.loc.get_manifest(t, "nope"),
                 lambda: h.loc.verify(t, "nope")):
        start = time.monotonic()
        with pytest.raises(NotFound) as ei:
            call()
        assert time.monotonic() - start < 5
        _one_line(ei.value)


def test_invalid_ids_are_refused_before_io(h, tmp_path):
    arch, man = make_archive(tmp_path, 10)
    with pytest.raises(InvalidTenantId):
        h.loc.put("../etc", "b1", arch, man)
    for bad in ("../x", "a/b", "", ".hidden", "a..b", "x" * 200):
        with pytest.raises(StorageError):
            h.loc.put(tid(), bad, arch, man)
    assert h.loc.list() == []


def test_missing_bucket(h):
    remote_only(h)
    loc = RetryingLocation(h.make(bucket="no-such-bucket-" + uuid.uuid4().hex[:6]), attempts=3, base_delay=0.05)
    start = time.monotonic()
    with pytest.raises(PermanentStorageError, match="does not exist") as ei:
        loc.stat(tid(), "b1")
    assert time.monotonic() - start < 5
    _one_line(ei.value)


def test_wrong_credentials(h):
    remote_only(h)
    loc = RetryingLocation(h.make(key="wrong-key-id"), attempts=3, base_delay=0.05)
    start = time.monotonic()
    with pytest.raises(PermanentStorageError, match="credentials") as ei:
        loc.list()
    assert time.monotonic() - start < 5
    _one_line(ei.value)


@pytest.mark.parametrize("how", ["refused", "closes"])
def test_server_down_is_a_clear_bounded_error(h, tmp_path, how):
    remote_only(h)
    arch, man = make_archive(tmp_path, 1000)
    if how == "refused":
        loc = RetryingLocation(h.make(url=f"http://127.0.0.1:{_closed_port()}"), attempts=3, base_delay=0.05)
    else:
        h.faults.set(down=True)
        loc = h.loc
    start = time.monotonic()
    with pytest.raises(TransientStorageError, match="after 3 attempts") as ei:
        loc.put(tid(), "b1", arch, man)
    elapsed = time.monotonic() - start
    h.faults.clear()
    assert elapsed < 20, f"took {elapsed:.1f}s"
    _one_line(ei.value)


@pytest.mark.parametrize("status", [500, 503])
def test_transient_errors_are_retried_then_succeed(h, tmp_path, status):
    remote_only(h)
    arch, man = make_archive(tmp_path, 7 * MiB)
    t = tid()
    h.faults.set(fail=3, status=status)
    h.loc.put(t, "b1", arch, man)
    assert h.faults.state()["injected"] == 3
    h.faults.set(fail=2, status=status)
    assert h.loc.get(t, "b1", tmp_path / "o").sha256 == man["archive"]["sha256"]
    assert h.faults.state()["injected"] == 5


def test_connection_dropped_mid_body_is_retried(h, tmp_path):
    remote_only(h)
    arch, man = make_archive(tmp_path, 7 * MiB)
    t = tid()
    h.faults.set(drop=1, match=h.upload_match(t, "b1"))  # the first archive upload request dies half-way
    h.loc.put(t, "b1", arch, man)
    h.faults.set(drop=1, match="archive.tbk")  # and the first download of it
    h.loc.get(t, "b1", tmp_path / "o")
    assert h.faults.state()["injected"] == 2
    assert sha256_file(tmp_path / "o")[0] == man["archive"]["sha256"]


# -- location specifics -------------------------------------------------------------------------
def test_local_permissions_and_no_temp_leftovers(tmp_path):
    loc = LocalLocation(tmp_path / "store")
    arch, man = make_archive(tmp_path, 1234)
    t = tid()
    loc.put(t, "b1", arch, man)
    d = tmp_path / "store" / "tenants" / t / "b1"
    for p in [tmp_path / "store" / "tenants", d.parent, d]:
        assert p.stat().st_mode & 0o777 == 0o700, p
    for f in d.iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
        assert not f.name.startswith(".")


def test_prefix_is_applied(s3_server, tmp_path):
    bucket = "t-" + uuid.uuid4().hex[:12]
    s3_server.create_bucket(bucket)
    loc = R2Location(s3_server.url, "testing", "testing", bucket, prefix="prod/eu")
    arch, man = make_archive(tmp_path, 10)
    t = tid()
    loc.put(t, "b1", arch, man)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == [f"prod/eu/tenants/{t}/b1/archive.tbk", f"prod/eu/tenants/{t}/b1/manifest.json"]
    assert [r.tenant_id for r in loc.list()] == [t]


# -- the servers from another process -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "b2"])
def test_server_cli_and_http_fault_control(kind, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "backup_assets.testing.servers", kind, "--bucket", "cli-bkt",
                          "--part-size", str(5 * 1000 * 1000)] if kind == "b2" else
                         [sys.executable, "-m", "backup_assets.testing.servers", kind, "--bucket", "cli-bkt"],
                         cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(p.stdout.readline())
        assert info["url"].startswith("http://127.0.0.1:")
        env = info["env"]
        if kind == "s3":
            loc = R2Location(env["R2_ENDPOINT_URL"], env["R2_ACCESS_KEY_ID"], env["R2_SECRET_ACCESS_KEY"],
                             env["R2_BUCKET"], max_attempts=1)
        else:
            loc = B2Location(env["B2_APPLICATION_KEY_ID"], env["B2_APPLICATION_KEY"], env["B2_BUCKET"],
                             realm=env["B2_REALM"], tries=1)
        loc = RetryingLocation(loc, attempts=3, base_delay=0.05)

        def ctl(method, body=None):
            req = urllib.request.Request(info["url"] + "/__faults__", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())

        arch, man = make_archive(tmp_path, 5000)
        t = tid()
        assert ctl("POST", {"fail": 2, "status": 503})["fail"] == 2
        loc.put(t, "b1", arch, man)
        assert ctl("GET")["injected"] == 2
        ctl("POST", {"down": True})
        with pytest.raises(TransientStorageError):
            loc.stat(t, "b1")
        ctl("DELETE")
        assert loc.stat(t, "b1").sha256 == man["archive"]["sha256"]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


def test_servers_refuse_non_loopback():
    with pytest.raises(ValueError):
        S3Server(host="0.0.0.0")
    with pytest.raises(ValueError):
        B2Server(host="0.0.0.0")
