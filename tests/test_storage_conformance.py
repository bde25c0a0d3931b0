"""One conformance suite that every storage location must pass (restic's model, docs/STORAGE.md, "Conformance suite").

Like restic's internal/backend/test: the tests are written once against a backend object
(tests/storage_backends.py) that brings its own factory and fault hooks, implemented by that
backend's test server over HTTP (the storage protocol or the server's control endpoints). Real servers
on loopback (moto S3 for R2, the b2sdk-RawSimulator-backed B2 server), real clients, faults injected at
the servers. A fault a backend cannot have (local disk has no server) skips, saying why. Small part
sizes keep multipart paths fast.
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

from backup_assets.core.archive.manifest import Manifest
from backup_assets.core.errors import (
    CorruptObject,
    InvalidBackupId,
    InvalidTenantId,
    NotFound,
    PermanentStorageError,
    TransientStorageError,
)
from backup_assets.core.locations import RetryingLocation, registry, sha256_file
from backup_assets.core.locations.b2 import B2Location
from backup_assets.core.locations.local import LocalLocation
from backup_assets.core.locations.r2 import R2Location
from backup_assets.core.settings import Settings
from backup_assets.testing.b2_server import B2Server
from backup_assets.testing.s3_server import S3Server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from storage_backends import B2Backend, LocalBackend, R2Backend, Unsupported  # noqa: E402

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
# One backend harness per registered kind of location (core/locations/registry.py): a new kind without
# one fails test_every_kind_has_a_backend.
KINDS = [kind.name for kind in registry.kinds()]
BACKENDS = {"local": LocalBackend, "r2": R2Backend, "b2": B2Backend}
SERVERS = {"r2": "s3_server", "b2": "b2_server"}  # the backend's test server fixture


@pytest.fixture(scope="session")
def s3_server():
    with S3Server() as s:
        yield s


@pytest.fixture(scope="session")
def b2_server():
    # 5 MB parts: the large-file path is exercised by a ~11 MiB archive.
    with B2Server(recommended_part_size=5 * 1000 * 1000, min_part_size=5 * 1000 * 1000) as s:
        yield s


@pytest.fixture(params=KINDS)
def backend(request, tmp_path):
    kind = request.param
    if kind not in BACKENDS:
        pytest.fail(f"location kind {kind!r} has no backend harness in tests/storage_backends.py")
    servers = [request.getfixturevalue(SERVERS[kind])] if kind in SERVERS else []
    be = BACKENDS[kind](tmp_path, *servers)
    yield be
    be.clear_faults()


def test_the_kind_s_registered_factory_builds_the_location(u, tmp_path):
    """As restic runs its suite through each backend's registered factory: the registry builds, from the
    kind's variables alone, a location on the same store that reads what the suite's location wrote."""
    arch, man = make_archive(tmp_path, 1000)
    t = tid()
    u.loc.put(t, "b1", arch, man)
    kind = u.backend.kind
    built = Settings.from_env({"TENANT_BACKUP_LOCATIONS": kind, **u.backend.env()}).locations()[kind]
    inner = built
    while hasattr(inner, "inner"):  # the wrappers config.py puts around it (retries, the index)
        inner = inner.inner
    assert type(inner) is type(u.raw) and built.name == kind
    assert built.get_manifest(t, "b1").to_dict() == man.to_dict()
    assert built.verify(t, "b1").sha256 == man.archive.sha256


def test_every_kind_has_a_backend():
    """restic's model: every kind of location passes the one suite, through its backend harness."""
    assert set(KINDS) <= set(BACKENDS), f"kinds without a conformance backend: {set(KINDS) - set(BACKENDS)}"
    for kind in KINDS:
        be = BACKENDS[kind]
        assert be.kind == kind, be


class Under:
    """The location under test: raw (as built by the backend's factory) and wrapped in retries."""

    def __init__(self, backend):
        self.backend = backend
        self.raw = backend.make()
        self.loc = RetryingLocation(self.raw, attempts=3, base_delay=0.05)


@pytest.fixture
def u(backend):
    return Under(backend)


def hook(fn, *args, **kw):
    """Call a fault hook; skip the test (with the backend's reason) where the fault cannot exist."""
    try:
        return fn(*args, **kw)
    except Unsupported as exc:
        pytest.skip(str(exc))


def make_archive(tmp: Path, size: int, name: str | None = None) -> tuple[Path, Manifest]:
    p = tmp / (name or f"{uuid.uuid4().hex}.tbk")
    with open(p, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
    sha, n = sha256_file(p)
    return p, Manifest.from_dict({"archive": {"sha256": sha, "size": n}, "tables": {"orders": 3}, "note": "opaque"})


def tid() -> str:
    return str(uuid.uuid4())


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 70_000])
def test_round_trip_small(u, tmp_path, size):
    arch, man = make_archive(tmp_path, size)
    t = tid()
    put = u.loc.put(t, "20261125T030000Z", arch, man)
    assert (put.size, put.sha256) == (size, man.archive.sha256)
    assert put.uri.startswith(u.loc.uri(t, "20261125T030000Z")) and put.uri.startswith(u.backend.scheme)
    assert put.uri.endswith(f"/archive-{man.archive.sha256[:16]}.tbk")  # named by its digest (base.py)
    got = u.loc.get(t, "20261125T030000Z", tmp_path / "out" / "a.tbk")
    assert got.path.read_bytes() == arch.read_bytes()
    assert u.loc.get_manifest(t, "20261125T030000Z") == man
    st = u.loc.stat(t, "20261125T030000Z")
    assert (st.size, st.sha256) == (size, man.archive.sha256)
    assert u.loc.verify(t, "20261125T030000Z").sha256 == man.archive.sha256


def test_round_trip_multipart(u, tmp_path):
    arch, man = make_archive(tmp_path, 11 * MiB + 12345)
    t = tid()
    u.loc.put(t, "b-multi", arch, man)
    out = u.loc.get(t, "b-multi", tmp_path / "back.tbk")
    assert sha256_file(out.path) == (man.archive.sha256, man.archive.size)
    try:
        sizes = u.backend.part_sizes(u.raw, t, "b-multi")
    except Unsupported:
        return  # local disk: the round trip above is the whole test
    assert len(sizes) == 1 and len(sizes[0]) > 1, f"multipart / large-file API not used: {sizes}"
    assert sum(sizes[0]) == man.archive.size


def test_parts_arrive_equal_sized_at_the_server(u, tmp_path):
    """R2's rule, checked where it matters, at the server: every non-final part the same size."""
    be = u.backend
    hook(be.part_sizes, u.raw, tid(), "probe")  # skips where there are no parts
    if not be.equal_parts:
        pytest.skip(f"{be.kind} does not require equal-size parts")
    size = 3 * be.part_size + be.part_size // 2 + 7  # 3 full parts and a short last one
    arch, man = make_archive(tmp_path, size)
    t = tid()
    u.loc.put(t, "b-parts", arch, man)
    sizes = be.part_sizes(u.raw, t, "b-parts")
    assert len(sizes) == 1, f"one multipart upload expected, the server saw {len(sizes)}"
    *body, last = sizes[0]
    assert body and set(body) == {be.part_size}, f"R2 requires all non-final parts to be the same size: {sizes[0]}"
    assert 0 < last <= be.part_size
    assert sum(sizes[0]) == size
    if be.kind == "r2":  # 3 x 5 MiB + 2.5 MiB: exactly what the part size says
        assert sizes[0] == [5 * MiB] * 3 + [size - 15 * MiB]


def test_no_checksum_headers_r2_rejects(u, tmp_path, s3_server):
    """boto3 >= 1.36 sends CRC checksum headers by default; the R2 client must send none (docs/ARCHITECTURE.md, "Verified traps")."""
    be = u.backend
    if be.kind != "r2":
        pytest.skip("checksum headers are an S3-API matter (R2 only)")
    before = len(be.checksum_headers()["with_checksum_headers"])
    arch, man = make_archive(tmp_path, 2 * be.part_size + 10)
    t = tid()
    u.loc.put(t, "b1", arch, man)
    u.loc.get(t, "b1", tmp_path / "o.tbk")
    got = be.checksum_headers()
    assert got["with_checksum_headers"][before:] == [], got
    # The record is not blind: a boto3 client with its default checksum setting is seen.
    import boto3

    boto3.client(
        "s3",
        endpoint_url=be.url,
        region_name="us-east-1",
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    ).put_object(Bucket=be.bucket, Key="probe", Body=b"x")
    assert len(be.checksum_headers()["with_checksum_headers"]) > before


def test_upload_progress_is_reported(backend, tmp_path):
    if backend.kind != "r2":
        pytest.skip(f"{backend.kind} has no progress hook (R2Location(progress=...) only)")
    seen = []
    loc = backend.make(progress=lambda key, n: seen.append((key, n)))
    arch, man = make_archive(tmp_path, 2 * backend.part_size + 3)
    t = tid()
    loc.put(t, "b1", arch, man)
    assert {k for k, _ in seen} == {loc.archive_key(t, "b1", man.archive.sha256)}
    assert sum(n for _, n in seen) == man.archive.size


def test_verification_record_beside_a_complete_copy(u, tmp_path):
    """verified.json: only beside a complete backup, replaced by each write, gone with the backup."""
    arch, man = make_archive(tmp_path, 1000)
    t = tid()
    with pytest.raises(NotFound):
        u.loc.put_verified(t, "b1", {"ok": True})
    u.loc.put(t, "b1", arch, man)
    assert u.loc.get_verified(t, "b1") is None
    u.loc.put_verified(t, "b1", {"ok": True, "sha256": man.archive.sha256})
    u.loc.put_verified(t, "b1", {"ok": False, "sha256": man.archive.sha256})
    assert u.loc.get_verified(t, "b1") == {"ok": False, "sha256": man.archive.sha256}
    # A caller that has just read the manifest need not have completeness asked again.
    assert u.loc.verify(t, "b1", known_complete=True).sha256 == man.archive.sha256
    u.loc.put_verified(t, "b1", {"ok": True}, known_complete=True)
    assert u.loc.get_verified(t, "b1") == {"ok": True}
    assert [r.backup_id for r in u.loc.list(t)] == ["b1"]  # a record is not a backup
    u.loc.delete(t, "b1")
    assert u.loc.get_verified(t, "b1") is None and u.loc.list(t) == []


# -- list / stat / delete -----------------------------------------------------------------------
def test_list_stat_delete(u, tmp_path):
    a, b = sorted([tid(), tid()])
    arch, man = make_archive(tmp_path, 1000)
    for t, bid in [(a, "b1"), (a, "b2"), (b, "b1")]:
        u.loc.put(t, bid, arch, man)
    assert [(r.tenant_id, r.backup_id) for r in u.loc.list()] == [(a, "b1"), (a, "b2"), (b, "b1")]
    assert [(r.tenant_id, r.backup_id) for r in u.loc.list(b)] == [(b, "b1")]
    assert all(r.location == u.backend.kind and r.stored_at is not None for r in u.loc.list())
    u.loc.delete(a, "b1")
    u.loc.delete(a, "b1")  # idempotent
    u.loc.delete(tid(), "never-existed")
    assert [(r.tenant_id, r.backup_id) for r in u.loc.list()] == [(a, "b2"), (b, "b1")]
    with pytest.raises(NotFound):
        u.loc.stat(a, "b1")
    with pytest.raises(NotFound):
        u.loc.get(a, "b1", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert u.loc.list(tid()) == []


def test_overwrite_same_backup_id_keeps_one_copy(u, tmp_path):
    t = tid()
    a1, m1 = make_archive(tmp_path, 3000)
    a2, m2 = make_archive(tmp_path, 4000)
    u.loc.put(t, "b1", a1, m1)
    u.loc.put(t, "b1", a2, m2)
    assert u.loc.stat(t, "b1").sha256 == m2.archive.sha256
    assert u.loc.get(t, "b1", tmp_path / "o").path.read_bytes() == a2.read_bytes()
    be, akey, mkey = u.backend, u.raw.archive_key(t, "b1"), u.raw.manifest_key(t, "b1")
    assert be.versions(u.raw, akey) == 1 and be.versions(u.raw, mkey) == 1  # B2: older versions removed
    assert be.versions(u.raw, u.raw.archive_key(t, "b1", m1.archive.sha256)) == 0  # the superseded one: deleted
    u.loc.delete(t, "b1")
    assert be.versions(u.raw, akey) == 0
    assert be.versions(u.raw, mkey) == 0


class Spy:
    """Counts the calls of some of a location class's primitives (the calls still go through)."""

    def __init__(self, monkeypatch, cls, names):
        self.calls: list[tuple[str, tuple]] = []
        for name in names:
            original = getattr(cls, name)

            def spy(self_, *args, _name=name, _original=original, **kw):
                self.calls.append((_name, args))
                return _original(self_, *args, **kw)

            monkeypatch.setattr(cls, name, spy)

    def count(self, name: str) -> int:
        return sum(1 for called, _ in self.calls if called == name)


def test_first_put_of_an_id_minted_here_lists_nothing_a_retry_lists_and_supersedes(u, tmp_path, monkeypatch):
    """A backup id this process minted (core/archive/export.py) holds nothing anywhere before its first
    put: that put writes without listing the folder. Every later put of the id to the location (a retry,
    from this location object or another of the same store) lists, and supersedes as always; records and
    index entries of the id keep one version each (B2)."""
    from backup_assets.core.archive.manifest import new_backup_id
    from backup_assets.core.locations.memory import minted_here
    from backup_assets.core.locations.naming import VERIFIED_NAME

    spy = Spy(monkeypatch, type(u.raw), ["_list"])
    t, bid = tid(), new_backup_id()
    a1, m1 = make_archive(tmp_path, 3000)
    a2, m2 = make_archive(tmp_path, 4000)
    minted_here(t, bid)
    u.loc.put(t, bid, a1, m1)
    assert spy.count("_list") == 0
    u.loc.put_verified(t, bid, {"ok": True}, known_complete=True)
    u.loc.put(t, bid, a2, m2)  # a retry of the same id: it lists, and supersedes a1
    assert spy.calls == [("_list", (u.raw.backup_prefix(t, bid),))]
    assert u.loc.verify(t, bid).sha256 == m2.archive.sha256
    be, akey, mkey = u.backend, u.raw.archive_key(t, bid), u.raw.manifest_key(t, bid)
    assert be.versions(u.raw, akey) == 1 and be.versions(u.raw, mkey) == 1
    assert be.versions(u.raw, u.raw.archive_key(t, bid, m1.archive.sha256)) == 0  # superseded: deleted
    u.loc.put_verified(t, bid, {"ok": False}, known_complete=True)
    assert be.versions(u.raw, u.raw.backup_prefix(t, bid) + VERIFIED_NAME) == 1
    # Another location object of the same store: the id's first put there was begun already.
    other = RetryingLocation(u.backend.make(), attempts=3, base_delay=0.05)
    other.put(t, bid, a1, m1)
    assert spy.count("_list") == 2 and other.verify(t, bid).sha256 == m1.archive.sha256
    assert be.versions(u.raw, u.raw.archive_key(t, bid, m2.archive.sha256)) == 0
    # An id not minted here (another process's, a re-execution's) lists before its first put.
    u.loc.put(t, new_backup_id(), a1, m1)
    assert spy.count("_list") == 3


def test_a_verify_after_the_manifest_reads_the_archive_once(u, tmp_path, monkeypatch):
    """A copy check's reads (core/maintenance/copy_check.py): the manifest, then the archive it names
    in one read that also answers its size and metadata: no HEAD on R2 and B2 (local disk stats the
    file), no second read of the manifest."""
    arch, man = make_archive(tmp_path, 70_000)
    t = tid()
    u.loc.put(t, "b1", arch, man)
    spy = Spy(monkeypatch, type(u.raw), ["_head", "_get_bytes", "_iter_chunks", "_opened", "_list"])
    u.loc.get_manifest(t, "b1")
    st = u.loc.verify(t, "b1", known_complete=True)
    assert (st.size, st.sha256) == (70_000, man.archive.sha256)
    got = u.loc.get(t, "b1", tmp_path / "o.tbk", known_complete=True)
    assert got.path.read_bytes() == arch.read_bytes() and got.sha256 == man.archive.sha256
    archive = [name for name, args in spy.calls if args and str(args[0]).endswith(".tbk")]
    manifest = [name for name, args in spy.calls if args and args[0] == u.raw.manifest_key(t, "b1")]
    assert manifest.count("_get_bytes") == 1 and "_head" not in manifest and spy.count("_list") == 0
    assert archive.count("_opened") == 2  # the verify, the get
    if u.backend.kind != "local":
        assert archive == ["_opened", "_opened"]
    # Bit rot under unchanged metadata is still found by that one read.
    u.backend.corrupt_at_rest(u.raw, t, "b1")
    with pytest.raises(CorruptObject, match="does not match"):
        u.loc.verify(t, "b1", known_complete=True)


def test_manifest_mismatch_is_refused(u, tmp_path):
    arch, man = make_archive(tmp_path, 2000)
    t = tid()
    bad = man.with_archive(sha256="0" * 64)
    with pytest.raises(PermanentStorageError, match="does not match"):
        u.loc.put(t, "b1", arch, bad)
    assert u.loc.list(t) == []


def test_concurrent_puts_for_different_tenants(u, tmp_path):
    tenants = [tid() for _ in range(6)]
    archives = {t: make_archive(tmp_path, 50_000 + i) for i, t in enumerate(tenants)}
    errors = []

    def work(t):
        try:
            u.loc.put(t, "weekly", *archives[t])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in tenants]
    [th.start() for th in threads]
    [th.join(60) for th in threads]
    assert not errors
    assert sorted(r.tenant_id for r in u.loc.list()) == sorted(tenants)
    for t in tenants:
        assert u.loc.verify(t, "weekly").sha256 == archives[t][1].archive.sha256


# -- interruption and corruption ----------------------------------------------------------------
def _assert_not_complete_then_cleaned(u, t, arch, man):
    assert u.loc.list(t) == []
    with pytest.raises(NotFound):
        u.loc.stat(t, "b1")
    u.loc.delete(t, "b1")  # cleans up leftovers (temp files, multipart uploads, unfinished large files)
    assert u.backend.leftovers(u.raw, t, "b1") == 0
    if u.backend.kind == "local":
        assert not (Path(u.raw.root) / "tenants" / t / "b1").exists()
    # A fresh put of the same backup then succeeds.
    u.loc.put(t, "b1", arch, man)
    assert [r.backup_id for r in u.loc.list(t)] == ["b1"]


def test_writer_killed_mid_upload_is_not_listed_as_complete(u, tmp_path):
    """kill -9 of the writing process mid-archive: no manifest, nothing lists, delete() cleans up."""
    be = u.backend
    t = tid()
    arch, man = make_archive(tmp_path, 192 * MiB if be.kind == "local" else 64 * MiB)
    code = (
        "import sys; from pathlib import Path; from backup_assets.core.archive.manifest import Manifest; "
        f"{be.writer_code()}; loc.put({t!r}, 'b1', Path({str(arch)!r}), Manifest.from_json(sys.argv[1]))"
    )
    p = subprocess.Popen([sys.executable, "-c", code, man.to_json()], cwd=REPO)

    def mid_write() -> bool:
        if be.kind == "local":
            return be.leftovers(u.raw, t, "b1") > 0
        return any(len(s) >= 1 for s in be.part_sizes(u.raw, t, "b1"))  # a part stored, more to come

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None and not mid_write():
            time.sleep(0.002)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert be.leftovers(u.raw, t, "b1") > 0, "writer was not caught mid-write"
    _assert_not_complete_then_cleaned(u, t, arch, man)


def test_interrupted_upload_is_not_listed_as_complete(u, tmp_path):
    """The connection dies on every request after the first part: retries exhaust, nothing lists."""
    be = u.backend
    t = tid()
    arch, man = make_archive(tmp_path, 11 * MiB)
    match = hook(be.upload_match, u.raw, t, "b1")
    # Let the first part through, then every later request dies mid-body: retries exhaust.
    be.set_faults(drop=1000, after=2, match=match)
    with pytest.raises(TransientStorageError):
        u.loc.put(t, "b1", arch, man)
    be.clear_faults()
    _assert_not_complete_then_cleaned(u, t, arch, man)


def test_corrupted_stored_object_is_detected(u, tmp_path):
    arch, man = make_archive(tmp_path, 200_000)
    t = tid()
    u.loc.put(t, "b1", arch, man)
    u.backend.corrupt_at_rest(u.raw, t, "b1")
    with pytest.raises(CorruptObject, match="does not match"):
        u.loc.verify(t, "b1")
    with pytest.raises(CorruptObject):
        u.loc.get(t, "b1", tmp_path / "restore.tbk")
    assert not (tmp_path / "restore.tbk").exists(), "a corrupt download must not leave a file behind"
    assert u.loc.stat(t, "b1").sha256 == man.archive.sha256  # stat trusts metadata only


def test_byte_flipped_in_transit_is_detected(u, tmp_path):
    arch, man = make_archive(tmp_path, 3 * MiB)
    t = tid()
    hook(u.backend.set_faults)  # skips where there is no transit
    u.loc.put(t, "b1", arch, man)
    u.backend.set_faults(flip=1, match=".tbk")
    with pytest.raises(CorruptObject):
        u.loc.get(t, "b1", tmp_path / "o.tbk")
    assert u.backend.injected() >= 1
    u.loc.verify(t, "b1")  # the stored copy itself is fine


# -- clear, bounded errors ----------------------------------------------------------------------
def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg


def test_missing_object_is_not_found(u):
    t = tid()
    for call in (lambda: u.loc.stat(t, "nope"), lambda: u.loc.get_manifest(t, "nope"), lambda: u.loc.verify(t, "nope")):
        start = time.monotonic()
        with pytest.raises(NotFound) as ei:
            call()
        assert time.monotonic() - start < 5
        _one_line(ei.value)


def test_invalid_ids_are_refused_before_io(u, tmp_path):
    arch, man = make_archive(tmp_path, 10)
    with pytest.raises(InvalidTenantId):
        u.loc.put("../etc", "b1", arch, man)
    for bad in ("../x", "a/b", "", ".hidden", "a..b", "x" * 200):
        with pytest.raises(InvalidBackupId):  # bad input (exit code 2), not a storage failure
            u.loc.put(tid(), bad, arch, man)
    assert u.loc.list() == []


def test_missing_bucket(backend):
    loc = RetryingLocation(hook(backend.missing_bucket), attempts=3, base_delay=0.05)
    start = time.monotonic()
    with pytest.raises(PermanentStorageError, match="does not exist") as ei:
        loc.stat(tid(), "b1")
    assert time.monotonic() - start < 5
    _one_line(ei.value)


def test_wrong_credentials(backend):
    loc = RetryingLocation(hook(backend.wrong_credentials), attempts=3, base_delay=0.05)
    start = time.monotonic()
    with pytest.raises(PermanentStorageError, match="credentials") as ei:
        loc.list()
    assert time.monotonic() - start < 5
    _one_line(ei.value)


@pytest.mark.parametrize("how", ["refused", "closes"])
def test_server_down_is_a_clear_bounded_error(u, tmp_path, how):
    arch, man = make_archive(tmp_path, 1000)
    if how == "refused":
        loc = RetryingLocation(hook(u.backend.unreachable), attempts=3, base_delay=0.05)
    else:
        hook(u.backend.set_faults, down=True)
        loc = u.loc
    start = time.monotonic()
    with pytest.raises(TransientStorageError, match="after 3 attempts") as ei:
        loc.put(tid(), "b1", arch, man)
    elapsed = time.monotonic() - start
    u.backend.clear_faults()
    assert elapsed < 20, f"took {elapsed:.1f}s"
    _one_line(ei.value)


@pytest.mark.parametrize("status", [500, 503])
def test_transient_errors_are_retried_then_succeed(u, tmp_path, status):
    arch, man = make_archive(tmp_path, 7 * MiB)
    t = tid()
    hook(u.backend.set_faults, fail=3, status=status)
    u.loc.put(t, "b1", arch, man)
    assert u.backend.injected() == 3
    u.backend.set_faults(fail=2, status=status)
    assert u.loc.get(t, "b1", tmp_path / "o").sha256 == man.archive.sha256
    assert u.backend.injected() == 5


def test_connection_dropped_mid_body_is_retried(u, tmp_path):
    arch, man = make_archive(tmp_path, 7 * MiB)
    t = tid()
    match = hook(u.backend.upload_match, u.raw, t, "b1")
    u.backend.set_faults(drop=1, match=match)  # the first archive upload request dies half-way
    u.loc.put(t, "b1", arch, man)
    u.backend.set_faults(drop=1, match=".tbk")  # and the first download of it
    u.loc.get(t, "b1", tmp_path / "o")
    assert u.backend.injected() == 2
    assert sha256_file(tmp_path / "o")[0] == man.archive.sha256


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
    be = R2Backend(tmp_path, s3_server)
    loc = be.make(prefix="prod/eu")
    arch, man = make_archive(tmp_path, 10)
    t = tid()
    loc.put(t, "b1", arch, man)
    keys = [o["Key"] for o in be._client().list_objects_v2(Bucket=be.bucket)["Contents"]]
    name = f"archive-{man.archive.sha256[:16]}.tbk"
    assert sorted(keys) == [f"prod/eu/tenants/{t}/b1/{name}", f"prod/eu/tenants/{t}/b1/manifest.json"]
    assert [r.tenant_id for r in loc.list()] == [t]


# -- the servers from another process -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "b2"])
def test_server_cli_and_http_fault_control(kind, tmp_path):
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backup_assets.testing.servers",
            kind,
            "--bucket",
            "cli-bkt",
            "--part-size",
            str(5 * 1000 * 1000),
        ]
        if kind == "b2"
        else [sys.executable, "-m", "backup_assets.testing.servers", kind, "--bucket", "cli-bkt"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(p.stdout.readline())
        assert info["url"].startswith("http://127.0.0.1:")
        env = info["env"]
        if kind == "s3":
            loc = R2Location(
                env["R2_ENDPOINT_URL"],
                env["R2_ACCESS_KEY_ID"],
                env["R2_SECRET_ACCESS_KEY"],
                env["R2_BUCKET"],
                max_attempts=1,
            )
        else:
            loc = B2Location(
                env["B2_APPLICATION_KEY_ID"],
                env["B2_APPLICATION_KEY"],
                env["B2_BUCKET"],
                realm=env["B2_REALM"],
                tries=1,
            )
        loc = RetryingLocation(loc, attempts=3, base_delay=0.05)

        def ctl(method, body=None):
            req = urllib.request.Request(
                info["url"] + "/__faults__", method=method, data=json.dumps(body).encode() if body is not None else None
            )
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
        assert loc.stat(t, "b1").sha256 == man.archive.sha256
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


def test_servers_refuse_non_loopback():
    with pytest.raises(ValueError):
        S3Server(host="0.0.0.0")
    with pytest.raises(ValueError):
        B2Server(host="0.0.0.0")


# -- the doubles' listings at many keys (issue 23: they keep names sorted instead of sorting per page) --
def _many_names(n_tenants: int = 120) -> list[str]:
    names = []
    for t in range(n_tenants):
        for b in range(3):
            base = f"tenants/{t:04x}/2026120{b}T000000Z-{t:08x}"
            names += [f"{base}/archive-{t:016x}.tbk", f"{base}/manifest.json"]
            if b == 2:
                names.append(f"{base}/verified.json")
        names.append(f"tenants/{t:04x}.marker")  # sorts among the "folders" of tenants/
    names += ["index/log/a", "index/log/b", "index/pack-1", "index/", "top", "tenants/~last", "tenants/ä/x"]
    return names


def _s3_reference(names, prefix, delimiter, start_after):
    """What S3 (as moto models it) lists: names under prefix, rolled up at the delimiter, in order."""
    items = set()
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        items.add(prefix + rest.split(delimiter)[0] + delimiter if delimiter and delimiter in rest else name)
    return [i for i in sorted(items) if start_after is None or i > start_after]


def test_s3_double_lists_pages_across_many_keys_as_s3_does(s3_server):
    import random

    from moto.s3.models import S3Backend

    s3 = s3_server.client()
    bucket = f"many-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    names = _many_names(60)
    for name in names:
        s3.put_object(Bucket=bucket, Key=name, Body=b"x")
    gone = names[5::7]  # deleted keys must vanish from the sorted names too
    for name in gone:
        s3.delete_object(Bucket=bucket, Key=name)
    s3.put_object(Bucket=bucket, Key=names[5], Body=b"again")  # ... and come back when put again
    live = sorted(set(names) - set(gone) | {names[5]})
    rng = random.Random(23)
    cases = [("", None, None), ("", "/", None), ("tenants/", "/", None), ("tenants/", None, None)]
    cases += [("tenants/", "/", "tenants/0003"), ("tenants/0005/", "/", None), ("index/", None, "index/log/a")]
    cases += [("tenants/0", "/", "tenants/0007/"), ("nothing/", "/", None), ("tenants/", "/", "tenants/zzz")]
    cases += [(rng.choice(["", "tenants/", "tenants/00"]), rng.choice([None, "/", "-"]), None) for _ in range(4)]
    for prefix, delimiter, start_after in cases:
        for max_keys in (7, 100, 1000):
            kw = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
            kw.update({"Delimiter": delimiter} if delimiter else {})
            kw.update({"StartAfter": start_after} if start_after else {})
            got, pages = [], 0
            while True:
                page = s3.list_objects_v2(**kw)
                pages += 1
                items = [o["Key"] for o in page.get("Contents", [])] + [
                    p["Prefix"] for p in page.get("CommonPrefixes", [])
                ]
                assert page["KeyCount"] == len(items) <= max_keys
                assert page["IsTruncated"] == bool(page.get("NextContinuationToken"))
                got += sorted(items)
                if not page["IsTruncated"]:
                    break
                kw["ContinuationToken"] = page["NextContinuationToken"]
            want = _s3_reference(live, prefix, delimiter, start_after)
            assert got == want, (prefix, delimiter, start_after, max_keys)
            assert pages == max(1, -(-len(want) // max_keys))  # full pages but the last
    # and item for item what moto's own (whole-bucket) listing answers, page tokens included
    backend = next(b for b in _moto_s3_backends() if bucket in b.buckets)
    fake = backend.buckets[bucket]
    for prefix, delimiter, start_after in cases:
        for max_keys in (3, 50):
            mine = backend.list_objects_v2(fake, prefix, delimiter, None, start_after, max_keys)
            theirs = S3Backend._original_list_objects_v2(backend, fake, prefix, delimiter, None, start_after, max_keys)
            name = backend._get_name
            assert ([name(k) for k in mine[0]], mine[1:]) == ([name(k) for k in theirs[0]], theirs[1:])


def _moto_s3_backends():
    from moto.s3.models import s3_backends

    for account in s3_backends.values():
        yield from account.values()


def test_b2_double_lists_pages_across_many_files_as_the_simulator_does(b2_server):
    import hashlib
    import io

    from b2sdk.v2 import BucketSimulator

    sha1_x = hashlib.sha1(b"x").hexdigest()
    b2_server.create_bucket("many-files")
    with b2_server._httpd.lock:
        sim = b2_server.sim
        bucket = sim.bucket_name_to_bucket["many-files"]
        token = sim.authorize_account(b2_server.url, b2_server.key_id, b2_server.key)["authorizationToken"]
        names = _many_names(60)
        for i, name in enumerate(names):
            for _version in range(1 + (i % 3 == 0)):  # some names have two versions
                bucket.upload_file("u", token, name, 1, "b2/x-auto", sha1_x, {}, io.BytesIO(b"x"))
        for name in names[4::9]:
            bucket.hide_file(token, name)  # hidden: listed as versions, not as names
        for key in list(bucket.file_name_and_id_to_file)[::11]:
            bucket.delete_file_version(token, key[1], key[0])
        assert list(bucket.file_name_and_id_to_file._sorted) == sorted(bucket.file_name_and_id_to_file)
        starts = [None, "", "tenants/", "tenants/0003", names[10], names[40] + "~", "zzz"]
        for start in starts:
            for prefix in (None, "tenants/", "tenants/00", start if start else None):
                if prefix is not None and start is not None and not start.startswith(prefix):
                    continue
                for count in (1, 5, 100, 1000):
                    mine = bucket.list_file_names(token, start, count, prefix)
                    theirs = BucketSimulator.list_file_names(bucket, token, start, count, prefix)
                    assert mine == theirs, (start, prefix, count)
                    for start_id in (None, "", list(bucket.file_name_and_id_to_file)[7][1]):
                        mine = bucket.list_file_versions(token, start, start_id, count, prefix)
                        theirs = BucketSimulator.list_file_versions(bucket, token, start, start_id, count, prefix)
                        assert mine == theirs, (start, start_id, prefix, count)
        for name in (names[4], names[5], names[6], "missing"):
            try:
                theirs = BucketSimulator.get_file_info_by_name(bucket, token, name)
            except Exception as exc:  # noqa: BLE001 - the same exception either way
                theirs = type(exc)
            try:
                mine = bucket.get_file_info_by_name(token, name)
            except Exception as exc:  # noqa: BLE001
                mine = type(exc)
            assert mine == theirs, name
    # and through b2sdk over HTTP: ls pages (1,000 a page) walk every visible name once, in order
    from b2sdk.v2 import B2Api, InMemoryAccountInfo

    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(b2_server.url, b2_server.key_id, b2_server.key)
    listed = [fv.file_name for fv, _ in api.get_bucket_by_name("many-files").ls("tenants/", recursive=True)]
    with b2_server._httpd.lock:
        visible = sorted(
            {n for (n, _i), f in bucket.file_name_and_id_to_file.items() if n.startswith("tenants/")}
            & {
                f["fileName"]
                for f in BucketSimulator.list_file_names(bucket, token, "tenants/", 10**6, "tenants/")["files"]
            }
        )
    assert listed == visible and len(listed) > 400
