"""TEST DOUBLE: a loopback S3 endpoint (stand-in for Cloudflare R2) with fault injection.

moto's S3 served by werkzeug, like moto's ThreadedMotoServer, but with a WSGI middleware in front
that injects faults (see servers.py), checks the access key id, and records, per multipart upload,
the bytes of every part it actually received and stored (counted off the request body, kept only when
moto answered 2xx), so tests can assert R2's rule "all non-final parts the same size"; and the
checksum headers clients sent (R2 rejects the ones boto3 >= 1.36 sends by default).
    GET /__parts__[?contains=S]   {upload id: {"key": ..., "sizes": [part 1, part 2, ...]}}
    GET /__checksums__            {"requests": N, "with_checksum_headers": ["METHOD /path: header", ...]}
moto answers every multipart upload's `Initiated` as 2010-11-10 (a constant in moto's responses): the
middleware records when each CreateMultipartUpload was answered and puts that time into
ListMultipartUploads, so garbage collection's grace period can be tested against it.
moto does not validate checksums and keeps no real durability: verification is by re-reading.
Only the access key id is checked (not the SigV4 signature): enough to test "wrong credentials".
Buckets keep their key names sorted, so ListObjectsV2 costs O(page + log n), not O(bucket) as moto's
own (see `_install_sorted_listing`; its answers are moto's, item for item).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from urllib.parse import parse_qs

from .faults import Faults, check_loopback, flip_byte

_XML = "application/xml"


def _s3_error(status: int, code: str, message: str):
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    ).encode()
    reason = {
        403: "Forbidden",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }.get(status, "Error")
    return f"{status} {reason}", [("Content-Type", _XML), ("Content-Length", str(len(body)))], body


def _kill_connection(environ) -> None:
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _dead(environ, start_response):
    """Cut the connection; the response werkzeug then fails to write is dropped quietly."""
    _kill_connection(environ)
    start_response("500 Connection Dropped", [("Content-Length", "0")])
    return []


def _drain(environ) -> None:
    n = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            break
        n -= len(chunk)


class _FaultMiddleware:
    def __init__(self, app, server: "S3Server"):
        self.app = app
        self.server = server

    def __call__(self, environ, start_response):
        faults = self.server.faults
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        qs = environ.get("QUERY_STRING", "")
        if path.rstrip("/") in ("/__faults__", "/__parts__", "/__checksums__"):
            _n = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(_n) if _n else b""
            if path.startswith("/__parts__"):
                contains = parse_qs(qs).get("contains", [""])[0]
                status, payload = 200, self.server.parts(contains)
            elif path.startswith("/__checksums__"):
                status, payload = 200, self.server.checksum_headers()
            else:
                status, payload = faults.handle_control(method, body)
            data = json.dumps(payload).encode()
            start_response(f"{status} X", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]

        desc = f"{method} {path}?{qs}"
        has_body_in = int(environ.get("CONTENT_LENGTH") or 0) > 0
        fault = faults.decide(desc, has_body_out=(method == "GET"))
        if fault == "down":
            return _dead(environ, start_response)
        if fault == "fail":
            _drain(environ)  # keep the keep-alive stream in sync
            code = "InternalError" if faults.status == 500 else "ServiceUnavailable"
            status, headers, body = _s3_error(faults.status, code, "injected fault")
            start_response(status, headers)
            return [body]
        if fault == "drop" and has_body_in:
            n = int(environ["CONTENT_LENGTH"])
            environ["wsgi.input"].read(n // 2)
            return _dead(environ, start_response)

        if self.server.access_key is not None:
            auth = environ.get("HTTP_AUTHORIZATION", "")
            key_id = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else None
            if key_id != self.server.access_key:
                _drain(environ)
                status, headers, body = _s3_error(
                    403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
                )
                start_response(status, headers)
                return [body]

        self.server._note_checksums(desc, environ)
        params = parse_qs(qs)
        if method == "PUT" and "partNumber" in params and "uploadId" in params:
            return self._part(environ, start_response, params["uploadId"][0], path, int(params["partNumber"][0]))

        if fault in ("drop", "flip"):
            return self._mangle(fault, environ, start_response)
        if "uploads" in parse_qs(qs, keep_blank_values=True) and method in ("POST", "GET"):
            return self._uploads(environ, start_response, method)
        return self.app(environ, start_response)

    def _uploads(self, environ, start_response, method: str):
        """CreateMultipartUpload: note when; ListMultipartUploads: answer those times as Initiated."""
        got = {}

        def sr(st, headers, exc_info=None):
            got["status"], got["headers"] = st, headers
            return lambda data: None

        body = b"".join(self.app(environ, sr))
        if got.get("status", "").startswith("2"):
            text = body.decode()
            if method == "POST":
                for upload_id in re.findall(r"<UploadId>([^<]+)</UploadId>", text):
                    self.server._initiated[upload_id] = time.time()
            else:

                def initiated(m):
                    when = self.server._initiated.get(m.group(2))
                    if when is None:
                        return m.group(0)
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(when))
                    return re.sub(r"<Initiated>[^<]*</Initiated>", f"<Initiated>{stamp}</Initiated>", m.group(0))

                text = re.sub(r"<Upload>(.*?<UploadId>([^<]+)</UploadId>.*?)</Upload>", initiated, text, flags=re.S)
                body = text.encode()
        headers = [(k, v) for k, v in got.get("headers", []) if k.lower() != "content-length"]
        start_response(got.get("status", "500 X"), [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _part(self, environ, start_response, upload_id: str, path: str, number: int):
        """UploadPart through moto, counting the body bytes moto reads; recorded once moto stored it."""
        counted = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = counted
        status = {}

        def sr(st, headers, exc_info=None):
            status["code"] = st
            return start_response(st, headers, exc_info)

        result = self.app(environ, sr)
        if status.get("code", "").startswith("2"):
            self.server._record_part(upload_id, path, number, counted.n)
        return result

    def _mangle(self, fault, environ, start_response):
        captured = {}

        def sr(status, headers, exc_info=None):
            captured["status"] = status
            return start_response(status, headers, exc_info)

        result = self.app(environ, sr)

        def gen():
            sent = 0
            try:
                for chunk in result:
                    if not chunk:
                        continue
                    ok = captured.get("status", "").startswith(("200", "206"))
                    if fault == "flip" and ok and sent == 0:
                        chunk = flip_byte(chunk)
                    if fault == "drop" and ok:
                        yield chunk[: max(1, len(chunk) // 2)]
                        _kill_connection(environ)
                        return
                    sent += len(chunk)
                    yield chunk
            finally:
                if hasattr(result, "close"):
                    result.close()

        return gen()


class _CountingInput:
    def __init__(self, stream):
        self._s, self.n = stream, 0

    def read(self, *a):
        data = self._s.read(*a)
        self.n += len(data)
        return data

    def readline(self, *a):
        data = self._s.readline(*a)
        self.n += len(data)
        return data

    def __iter__(self):
        return iter(self.readline, b"")


class S3Server:
    """Loopback S3 endpoint. `with S3Server() as s: s.create_bucket("b"); s.url` ..."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, access_key: str | None = "testing", secret_key: str = "testing"
    ):
        self.host = check_loopback(host)
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.faults = Faults()
        self._parts: dict[str, dict] = {}
        self._parts_lock = threading.Lock()
        self._initiated: dict[str, float] = {}  # multipart upload id -> when it was created
        self._checksum_requests = 0
        self._checksum_seen: list[str] = []
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "S3Server":
        # Keep objects in memory (like the B2 double): moto otherwise spills every object above ~5 MiB
        # to a temporary file and copies it back, which made this double, not the client, the
        # bottleneck of large uploads. Read by moto when a key is stored, so setting it here works.
        os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(4 << 30))
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        _install_sorted_listing()
        _cache_moto_modules()

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args, **kwargs):  # tests and the demo need no access log
                pass

        app = _FaultMiddleware(DomainDispatcherApplication(create_backend_app), self)
        self._server = make_server(self.host, self.port, app, threaded=True, request_handler=QuietHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key or "testing",
            aws_secret_access_key=self.secret_key,
            config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _record_part(self, upload_id: str, path: str, number: int, size: int) -> None:
        with self._parts_lock:
            rec = self._parts.setdefault(upload_id, {"path": path, "parts": {}})
            rec["parts"][number] = size

    def part_sizes(self, path_contains: str = "") -> dict[str, list[int]]:
        """upload id -> sizes of its parts in part-number order (last stored attempt of each part)."""
        return {uid: rec["sizes"] for uid, rec in self.parts(path_contains).items()}

    def parts(self, path_contains: str = "") -> dict[str, dict]:
        """upload id -> {"key": object key, "sizes": [...]}: what GET /__parts__ answers."""
        with self._parts_lock:
            return {
                uid: {
                    "key": rec["path"].lstrip("/").split("/", 1)[-1],
                    "sizes": [rec["parts"][n] for n in sorted(rec["parts"])],
                }
                for uid, rec in self._parts.items()
                if path_contains in rec["path"]
            }

    _CHECKSUM_HEADERS = ("HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM", "HTTP_X_AMZ_TRAILER")

    def _note_checksums(self, desc: str, environ) -> None:
        found = [k for k in environ if k.startswith("HTTP_X_AMZ_CHECKSUM_") or k in self._CHECKSUM_HEADERS]
        if "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", ""):
            found.append("HTTP_CONTENT_ENCODING=aws-chunked")
        with self._parts_lock:
            self._checksum_requests += 1
            if found:
                self._checksum_seen.append(f"{desc.split('?')[0]}: {','.join(sorted(found))}")

    def checksum_headers(self) -> dict:
        """Requests seen, and those that carried checksum headers R2 rejects (GET /__checksums__)."""
        with self._parts_lock:
            return {"requests": self._checksum_requests, "with_checksum_headers": self._checksum_seen[-50:]}


# ------------------------------------------------------------------ listings that scale with the page
#
# moto lists a bucket by walking every key it holds and sorting them (ListObjectsV2 is O(bucket) per
# page), so at ~100,000 objects a paginated listing is quadratic and this double, not the client,
# dominates every benchmark. The key store below keeps its names sorted as they are added and removed,
# and ListObjectsV2 walks from the page's start (bisect) to its end: O(page + log n). The answer is
# the one moto gives, item for item (tests/test_storage_conformance.py compares them): keys and
# CommonPrefixes merged in name order, delete markers left out, items after StartAfter or the
# continuation token's name (a CommonPrefix is after it when its own name is), MaxKeys, and a
# continuation token moto itself resolves (the md5 of the page's last name, kept in
# `_pagination_tokens`).


def _sorted_key_store_class():
    import bisect

    from moto.s3.utils import _VersionedKeyStore

    class _SortedKeyStore(_VersionedKeyStore):
        """moto's key store, with its names also kept in a sorted list (`names`)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.names = sorted(dict.keys(self))
            self._names_lock = threading.Lock()

        def _added(self, key) -> None:
            with self._names_lock:
                i = bisect.bisect_left(self.names, key)
                if i == len(self.names) or self.names[i] != key:
                    self.names.insert(i, key)

        def _removed(self, key) -> None:
            with self._names_lock:
                i = bisect.bisect_left(self.names, key)
                if i < len(self.names) and self.names[i] == key:
                    del self.names[i]

        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            self._added(key)

        def setlist(self, key, list_):
            super().setlist(key, list_)
            self._added(key)

        def setdefault(self, key, default=None):
            out = dict.setdefault(self, key, default)
            self._added(key)
            return out

        def update(self, *a, **kw):
            for k, v in dict(*a, **kw).items():
                self[k] = v

        def pop(self, key, *default):
            if default and not dict.__contains__(self, key):
                return default[0]
            out = super().pop(key)
            self._removed(key)
            return out

        def popitem(self):
            key, value = dict.popitem(self)
            self._removed(key)
            return key, value

        def __delitem__(self, key):
            dict.__delitem__(self, key)
            self._removed(key)

        def clear(self):
            dict.clear(self)
            with self._names_lock:
                self.names.clear()

        def __reduce__(self):  # copy/deepcopy/pickle: a plain rebuild (the names follow the items)
            return (type(self), (dict(self),))

    return _SortedKeyStore


def _after(s: str) -> str:
    """The least string greater than every string that starts with `s` (s non-empty)."""
    return s[:-1] + chr(ord(s[-1]) + 1)


def _list_v2_page(backend, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
    """ListObjectsV2 over the sorted names: moto's own answer, walking only the page."""
    import bisect

    from moto.s3.models import FakeDeleteMarker

    store = bucket.keys
    prefix = prefix or ""
    limit = None
    if continuation_token or start_after:
        limit = backend._pagination_tokens.get(continuation_token) if continuation_token else start_after
    names = store.names  # sorted; changed in place by writers, so read under its lock
    with store._names_lock:
        i = bisect.bisect_left(names, prefix)
        if limit is not None:
            i = max(i, bisect.bisect_right(names, limit))
    page: list = []
    want = max_keys + 1  # one more than a page: is it truncated?
    while max_keys and len(page) < want:
        with store._names_lock:
            if i >= len(names):
                break
            name = names[i]
        if not name.startswith(prefix):
            break
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            folder = prefix + rest.split(delimiter)[0] + delimiter
            if limit is None or folder > limit:
                page.append(folder)
            with store._names_lock:
                i = bisect.bisect_left(names, _after(folder))
            continue
        i += 1
        key = dict.get(store, name)
        if not key or isinstance(key[-1], FakeDeleteMarker):
            continue  # removed meanwhile, or its newest version is a delete marker
        if limit is not None and name <= limit:
            continue
        page.append(key[-1])
    return backend._truncate_result(page, max_keys)


def _cache_moto_modules() -> None:
    """moto's dispatcher asks, on every request, whether the host names one of its modules, and
    answers by listing and stat-ing its package directory (~180 stat calls a request: most of this
    double's CPU per request). The directory does not change while the server runs: list it once."""
    from moto import backends

    if getattr(backends, "_tenant_backup_cached", False):
        return
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    backends._tenant_backup_cached = True


def _install_sorted_listing() -> None:
    """Make every moto bucket created from now on keep sorted names, and ListObjectsV2 use them."""
    import moto.s3.models as models

    if getattr(models, "_tenant_backup_sorted", False):
        return
    store_class = _sorted_key_store_class()
    original_v2 = models.S3Backend.list_objects_v2

    def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        if not isinstance(bucket.keys, store_class) or isinstance(bucket, models.FakeTableStorageBucket):
            return original_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        return _list_v2_page(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)

    models._VersionedKeyStore = store_class  # FakeBucket.__init__ looks the name up in this module
    models.S3Backend.list_objects_v2 = list_objects_v2
    models.S3Backend._original_list_objects_v2 = original_v2  # the conformance test compares the two
    models._tenant_backup_sorted = True
