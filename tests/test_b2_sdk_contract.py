"""What B2Location relies on in b2sdk beyond calling its API, checked against the pinned b2sdk.

backup_assets/core/locations/b2.py bounds b2sdk's HTTP retries by overriding one public method,
b2sdk.v2.B2Http.request(), and sets its timeouts through B2Http's class constants and upload attempts
through UploadManager.MAX_UPLOAD_ATTEMPTS. b2sdk documents none of these as a tuning interface, so an
upgrade may change them silently: these tests fail loudly, naming what changed (docs/STORAGE.md,
"Upgrading b2sdk"). Behaviour is checked on the wire, at the loopback B2 server: the number of
attempts it actually received for each kind of call.
"""

from __future__ import annotations

import inspect
import socket
import time
import uuid

import pytest

from backup_assets.core.errors import TransientStorageError
from backup_assets.core.locations.b2 import B2Location
from backup_assets.testing.b2_server import B2Server

UPGRADE = "see docs/STORAGE.md 'Upgrading b2sdk'"


def _version() -> str:
    from b2sdk.version import VERSION

    return VERSION


def test_hooked_b2sdk_names_exist_and_keep_their_shape():
    from b2sdk.v2 import B2Api, B2Http, B2Session, UploadManager

    params = list(inspect.signature(B2Http.request).parameters)
    expected = ["self", "method", "url", "headers", "data", "try_count", "params", "stream", "_timeout"]
    assert params == expected, (
        f"b2sdk {_version()}: B2Http.request() parameters are now {params}, were {expected}. "
        f"B2Location's override passes (method, url, headers, data, try_count, params, **kw) positionally: "
        f"adapt BoundedB2Http.request in core/locations/b2.py ({UPGRADE})"
    )
    for name in ("CONNECTION_TIMEOUT", "TIMEOUT", "TIMEOUT_FOR_UPLOAD", "TIMEOUT_FOR_COPY", "TRY_COUNT_DATA"):
        assert isinstance(getattr(B2Http, name, None), (int, float)), (
            f"b2sdk {_version()}: B2Http.{name} is gone: B2Location's timeouts/retry bound no longer apply ({UPGRADE})"
        )
    src = inspect.getsource(B2Http.request)
    assert "self.CONNECTION_TIMEOUT" in src and "self.TIMEOUT_FOR_UPLOAD" in src, (
        f"b2sdk {_version()}: B2Http.request() no longer reads CONNECTION_TIMEOUT / TIMEOUT_FOR_UPLOAD ({UPGRADE})"
    )
    src = inspect.getsource(B2Http.post_json_return_json)
    assert "self.TIMEOUT_FOR_COPY" in src, (
        f"b2sdk {_version()}: JSON API calls no longer use TIMEOUT_FOR_COPY as their read timeout: check "
        f"which constant they use now and set it in BoundedB2Http ({UPGRADE})"
    )
    assert hasattr(B2Session, "B2HTTP_CLASS"), (
        f"b2sdk {_version()}: B2Session.B2HTTP_CLASS is gone: the bounded B2Http is not used ({UPGRADE})"
    )
    assert hasattr(B2Api, "SESSION_CLASS"), f"b2sdk {_version()}: B2Api.SESSION_CLASS is gone ({UPGRADE})"
    assert isinstance(getattr(UploadManager, "MAX_UPLOAD_ATTEMPTS", None), int), (
        f"b2sdk {_version()}: UploadManager.MAX_UPLOAD_ATTEMPTS is gone: upload retries are unbounded ({UPGRADE})"
    )


@pytest.fixture(scope="module")
def b2():
    with B2Server(recommended_part_size=5 * 1000 * 1000, min_part_size=5 * 1000 * 1000) as s:
        yield s


TRIES = 2

# (what, fault filter on "METHOD /path?query", the call)
CALLS = [
    ("authorize (API call)", "b2_authorize_account", lambda loc, t: loc.list()),
    ("API call after authorize", "b2_list_file_names", lambda loc, t: loc.list()),
    ("HEAD", "HEAD /file/", lambda loc, t: loc.stat(t, "b1")),
    ("download GET", "GET /file/", lambda loc, t: loc.verify(t, "b1")),
    ("upload", "/__b2up/", None),
]


@pytest.mark.parametrize("what,match,call", CALLS, ids=[c[0] for c in CALLS])
def test_every_b2sdk_request_makes_at_most_tries_attempts(b2, tmp_path, what, match, call):
    bucket = "c-" + uuid.uuid4().hex[:12]
    b2.create_bucket(bucket)
    t = str(uuid.uuid4())
    arch = tmp_path / "a.tbk"
    arch.write_bytes(b"x" * 5000)
    from backup_assets.core.archive.manifest import Manifest
    from backup_assets.core.locations import sha256_file

    sha, size = sha256_file(arch)
    man = Manifest.from_dict({"archive": {"sha256": sha, "size": size}})
    setup = B2Location(b2.key_id, b2.key, bucket, realm=b2.url, tries=TRIES)
    setup.put(t, "b1", arch, man)
    loc = B2Location(b2.key_id, b2.key, bucket, realm=b2.url, tries=TRIES, connect_timeout=2, read_timeout=10)
    if match != "b2_authorize_account":
        loc._b()  # authorized: the fault hits the call under test only
    b2.faults.clear()
    b2.faults.set(fail=1000, status=503, match=match)
    start = time.monotonic()
    try:
        with pytest.raises(TransientStorageError):
            if call is None:
                loc.put(t, "b2", arch, man)
            else:
                call(loc, t)
        attempts = b2.faults.state()["injected"]
    finally:
        b2.faults.clear()
    assert attempts == TRIES, (
        f"b2sdk {_version()}: {what} reached the server {attempts} times, the bound is {TRIES}: "
        f"b2sdk no longer sends this call through B2Http.request() or UploadManager.MAX_UPLOAD_ATTEMPTS "
        f"({UPGRADE})"
    )
    assert time.monotonic() - start < 10


def test_read_timeout_applies_to_b2sdk_requests():
    """A server that accepts connections and never answers: our read timeout ends the first call
    (b2_authorize_account, a JSON API call), not b2sdk's 20-minute TIMEOUT_FOR_COPY."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        loc = B2Location("key-id", "key", "bucket", realm=url, tries=1, connect_timeout=1, read_timeout=1)
        start = time.monotonic()
        with pytest.raises(TransientStorageError):
            loc.list()
        elapsed = time.monotonic() - start
    assert elapsed < 5, (
        f"b2sdk {_version()}: a silent server took {elapsed:.1f}s with a 1 s read timeout: "
        f"B2Http no longer takes its timeouts from CONNECTION_TIMEOUT / TIMEOUT_FOR_COPY ({UPGRADE})"
    )


def test_b2_location_imports_no_private_b2sdk_module():
    import backup_assets.core.locations.b2 as mod

    src = inspect.getsource(mod)
    assert "b2sdk._internal" not in src and "_translate_and_retry" not in src
