"""TEST DOUBLE: a loopback Backblaze B2 endpoint (native API) with fault injection.

No B2 emulator exists; b2sdk ships RawSimulator, an in-process model of the service whose methods
mirror the raw API calls. This module puts HTTP in front of it, so b2sdk runs its real HTTP code
against it from any process: `B2Api(...).authorize_account("production"-like realm=server.url, ...)`.

The server rewrites the URLs the simulator hands out (api, download, upload URLs) to its own, and
maps the simulator's exceptions to B2's JSON errors ({"status", "code", "message"}), which b2sdk
turns back into the same exception classes. Objects live in memory (a test double, not a store).

Why this module is long: the HTTP routes of the raw API, the fault injection and the sorted listings
that keep the simulator's answers item for item at 100,000s of files are one server: one place that
says how the double differs from b2sdk's simulator.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import Faults, check_loopback, flip_byte

CHUNK = 1024 * 1024
_SIM_UPLOAD = "https://upload.example.com/"
_CALL = re.compile(r"^/b2api/v\d+/(b2_[a-z_]+)$")


class _SortedFiles(dict):
    """A bucket's {(file name, file id): file}, its keys also kept sorted (`keys_from`)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._sorted = sorted(dict.keys(self))

    def __setitem__(self, key, value):
        if key not in self:
            bisect.insort(self._sorted, key)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        super().__delitem__(key)
        del self._sorted[bisect.bisect_left(self._sorted, key)]

    def pop(self, key, *default):
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *a, **kw):
        for k, v in dict(*a, **kw).items():
            self[k] = v

    def popitem(self):
        key, value = super().popitem()
        del self._sorted[bisect.bisect_left(self._sorted, key)]
        return key, value

    def clear(self):
        super().clear()
        self._sorted.clear()

    def __reduce__(self):
        return (type(self), (dict(self),))

    def keys_from(self, start):
        """The keys >= start, in order (the caller holds the server's lock: no change meanwhile)."""
        return _walk(self._sorted, start)


def _walk(keys: list, start):
    i = bisect.bisect_left(keys, start)
    while i < len(keys):
        yield keys[i]
        i += 1


def _make_simulator(recommended_part_size: int, min_part_size: int):
    from b2sdk.v2 import BucketSimulator, RawSimulator
    from b2sdk.v2.exception import FileNotPresent

    class _Bucket(BucketSimulator):
        # The highest file id: list_unfinished_large_files starts there (with the simulator's own,
        # smaller, first id it listed none of ours, so delete() never saw an unfinished large file).
        FIRST_FILE_ID = str(10**15 - 1)

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            # The simulator's counters are sized for unit tests (200 upload URLs, ~5000 uploads per
            # bucket); a long-running demo server needs unbounded ones. File ids count down so the
            # newest version sorts first, as B2 lists them; fixed width keeps string order = numeric.
            self.upload_url_counter = itertools.count()
            self.file_id_counter = itertools.count(10**15 - 1, -1)
            self.upload_timestamp_counter = _millis()

            # Its files, kept in (name, id) order as they come and go: the simulator sorts every file
            # the bucket holds on each listing page and on each download by name (O(n log n) a call,
            # which made storing 10,000 tenants' backups take hours). The listings below walk from
            # the page's start instead; their loops are the simulator's own, item for item.
            self.file_name_and_id_to_file = _SortedFiles(self.file_name_and_id_to_file)

        def get_file_info_by_name(self, account_auth_token, file_name):
            for name, _id in self.file_name_and_id_to_file.keys_from((file_name, "")):
                if name != file_name:
                    break
                file = self.file_name_and_id_to_file[(name, _id)]
                return file.as_download_headers(account_auth_token_or_none=account_auth_token)
            raise FileNotPresent(file_id_or_name=file_name, bucket_name=self.bucket_name)

        def list_file_names(self, account_auth_token, start_file_name=None, max_file_count=None, prefix=None):
            assert prefix is None or start_file_name is None or start_file_name.startswith(prefix), locals()
            start_file_name = start_file_name or ""
            max_file_count = max_file_count or 100
            result_files = []
            next_file_name = None
            prev_file_name = None
            for key in self.file_name_and_id_to_file.keys_from((start_file_name, "")):
                (file_name, file_id) = key
                assert file_id
                if start_file_name <= file_name and file_name != prev_file_name:
                    if prefix is not None and not file_name.startswith(prefix):
                        break
                    prev_file_name = file_name
                    file_sim = self.file_name_and_id_to_file[key]
                    if file_sim.is_visible():
                        result_files.append(file_sim.as_list_files_dict(account_auth_token))
                        if len(result_files) == max_file_count:
                            next_file_name = file_sim.name + " "
                            break
            return dict(files=result_files, nextFileName=next_file_name)

        def list_file_versions(
            self,
            account_auth_token,
            start_file_name=None,
            start_file_id=None,
            max_file_count=None,
            prefix=None,
        ):
            assert prefix is None or start_file_name is None or start_file_name.startswith(prefix), locals()
            start_file_name = start_file_name or ""
            start_file_id = start_file_id or ""
            max_file_count = max_file_count or 100
            result_files = []
            next_file_name = None
            next_file_id = None
            for key in self.file_name_and_id_to_file.keys_from((start_file_name, "")):
                (file_name, file_id) = key
                if (start_file_name < file_name) or (
                    start_file_name == file_name and (start_file_id == "" or int(start_file_id) <= int(file_id))
                ):
                    file_sim = self.file_name_and_id_to_file[key]
                    if prefix is not None and not file_name.startswith(prefix):
                        break
                    result_files.append(file_sim.as_list_files_dict(account_auth_token))
                    if len(result_files) == max_file_count:
                        next_file_name = file_sim.name
                        next_file_id = str(int(file_id) + 1)
                        break
            return dict(files=result_files, nextFileName=next_file_name, nextFileId=next_file_id)

        def _simulate_chunked_post(self, stream, content_length, *a, **kw):
            # The body was already read by the HTTP handler; the default re-reads it twice in 8 KiB
            # chunks to simulate retries, which is needlessly slow for large parts.
            return stream.read()

    class _Sim(RawSimulator):
        BUCKET_SIMULATOR_CLASS = _Bucket
        MIN_PART_SIZE = min_part_size

        def authorize_account(self, realm_url, application_key_id, application_key):
            res = super().authorize_account(realm_url, application_key_id, application_key)
            res["apiInfo"]["storageApi"]["recommendedPartSize"] = recommended_part_size
            res["apiInfo"]["storageApi"]["absoluteMinimumPartSize"] = min_part_size
            return res

    return _Sim()


def _millis():
    last = 0
    while True:
        last = max(last + 1, int(time.time() * 1000))
        yield last


def _b2_error(exc: BaseException) -> tuple[int, str, str]:
    from b2sdk.v2 import exception as e

    msg = str(exc) or type(exc).__name__
    if isinstance(exc, e.NonExistentBucket):
        return 400, "bad_bucket_id", msg
    if isinstance(exc, e.FileNotPresent):
        return 404, "not_found", msg
    if isinstance(exc, e.InvalidAuthToken):
        return 401, getattr(exc, "code", None) or "bad_auth_token", msg
    if isinstance(exc, e.Unauthorized):
        return 401, getattr(exc, "code", None) or "unauthorized", msg
    if isinstance(exc, e.MissingPart):
        return 400, "missing_part", msg
    if isinstance(exc, e.PartSha1Mismatch):
        return 400, "part_sha1_mismatch", msg
    if isinstance(exc, (e.FileSha1Mismatch, e.ChecksumMismatch)):
        return 400, "bad_request", f"checksum did not match data received: {msg}"
    if isinstance(exc, e.BadRequest):
        return 400, getattr(exc, "code", None) or "bad_request", msg
    if isinstance(exc, e.B2Error):
        return 400, "bad_request", msg
    if isinstance(exc, (KeyError, AssertionError, ValueError, TypeError)):
        return 400, "bad_request", f"bad request ({type(exc).__name__}: {exc})"
    return 500, "internal_error", f"{type(exc).__name__}: {exc}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as b2sdk's requests session expects
    server: "_HTTPServer"

    def log_message(self, *args):  # no access log on stderr
        pass

    # -- plumbing ------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        buf = bytearray()
        while len(buf) < n:
            chunk = self.rfile.read(min(CHUNK, n - len(buf)))
            if not chunk:
                raise ConnectionError("client closed mid-body")
            buf += chunk
        return bytes(buf)

    def _send_json(self, status: int, payload) -> None:
        data = json.dumps(payload, default=sorted).encode()  # the simulator returns some sets
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, status: int, code: str, message: str) -> None:
        self._send_json(status, {"status": status, "code": code, "message": message})

    def _kill(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _sim(self, fn, *args, **kw):
        with self.server.lock:  # RawSimulator is not thread-safe
            return fn(*args, **kw)

    # -- entry points --------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self) -> None:
        srv = self.server.owner
        path = urlsplit(self.path).path
        if path.rstrip("/") == "/__faults__":
            status, payload = srv.faults.handle_control(self.command, self._read_body())
            return self._send_json(status, payload)
        if path.rstrip("/") == "/__parts__":  # large files' parts as received: {file id: {"key", "sizes"}}
            self._read_body()
            contains = parse_qs(urlsplit(self.path).query).get("contains", [""])[0]
            return self._send_json(200, srv.parts(contains))
        if path.rstrip("/") == "/__requests__":  # requests served so far, by B2 call: {"requests": N, "by_call": {...}}
            self._read_body()
            return self._send_json(200, srv.request_counts())
        srv.count_request(path)
        fault = srv.faults.decide(f"{self.command} {self.path}", has_body_out=self.command == "GET")
        if fault == "down":
            return self._kill()
        if fault == "fail":
            self._read_body()
            return self._send_error(
                srv.faults.status,
                "service_unavailable" if srv.faults.status == 503 else "internal_error",
                "injected fault",
            )
        if fault == "drop" and int(self.headers.get("Content-Length") or 0) > 0:
            self.rfile.read(int(self.headers["Content-Length"]) // 2)
            return self._kill()
        try:
            if self.command == "POST" and path.startswith("/__b2up/"):
                return self._upload(path[len("/__b2up/") :])
            if self.command in ("GET", "HEAD") and (
                path.startswith("/file/") or path.endswith("b2_download_file_by_id")
            ):
                return self._download(fault)
            m = _CALL.match(path)
            if self.command == "POST" and m:
                return self._api_call(m.group(1))
            self._send_error(404, "not_found", f"no such endpoint: {self.command} {path}")
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - every failure must become a B2 JSON error
            self._send_error(*_b2_error(exc))

    def _api_call(self, name: str) -> None:
        srv = self.server.owner
        sim = srv.sim
        api = sim.API_URL
        body = self._read_body()
        p = json.loads(body or b"{}")
        tok = self.headers.get("Authorization", "")
        if name == "b2_authorize_account":
            try:
                key_id, key = base64.b64decode(tok.split(" ", 1)[1]).decode().split(":", 1)
            except Exception:  # noqa: BLE001
                return self._send_error(401, "bad_auth_token", "malformed Basic authorization")
            res = self._sim(sim.authorize_account, srv.url, key_id, key)
            res["apiInfo"]["storageApi"].update(apiUrl=srv.url, downloadUrl=srv.url, s3ApiUrl=srv.url)
            # b2sdk v1 style fields too, for older clients
            res.update(apiUrl=srv.url, downloadUrl=srv.url)
            return self._send_json(200, res)
        calls = {
            "b2_list_buckets": lambda: sim.list_buckets(
                api, tok, p.get("accountId"), p.get("bucketId"), p.get("bucketName")
            ),
            "b2_get_upload_url": lambda: sim.get_upload_url(api, tok, p["bucketId"]),
            "b2_get_upload_part_url": lambda: sim.get_upload_part_url(api, tok, p["fileId"]),
            "b2_start_large_file": lambda: sim.start_large_file(
                api, tok, p["bucketId"], p["fileName"], p.get("contentType", "b2/x-auto"), p.get("fileInfo") or {}
            ),
            "b2_finish_large_file": lambda: sim.finish_large_file(api, tok, p["fileId"], p["partSha1Array"]),
            "b2_cancel_large_file": lambda: sim.cancel_large_file(api, tok, p["fileId"]),
            "b2_list_file_names": lambda: sim.list_file_names(
                api, tok, p["bucketId"], p.get("startFileName"), p.get("maxFileCount"), p.get("prefix")
            ),
            "b2_list_file_versions": lambda: sim.list_file_versions(
                api,
                tok,
                p["bucketId"],
                p.get("startFileName"),
                p.get("startFileId"),
                p.get("maxFileCount"),
                p.get("prefix"),
            ),
            "b2_delete_file_version": lambda: sim.delete_file_version(api, tok, p["fileId"], p["fileName"]),
            "b2_get_file_info": lambda: sim.get_file_info_by_id(api, tok, p["fileId"]),
            "b2_hide_file": lambda: sim.hide_file(api, tok, p["bucketId"], p["fileName"]),
            "b2_list_parts": lambda: sim.list_parts(
                api, tok, p["fileId"], p.get("startPartNumber"), p.get("maxPartCount")
            ),
            "b2_list_unfinished_large_files": lambda: sim.list_unfinished_large_files(
                api, tok, p["bucketId"], p.get("startFileId"), p.get("maxFileCount"), p.get("namePrefix")
            ),
        }
        if name not in calls:
            return self._send_error(400, "bad_request", f"{name} is not supported by this test server")
        if tok not in sim.auth_token_to_key:
            return self._send_error(401, "bad_auth_token", "invalid authorization token")
        res = self._sim(calls[name])
        if name == "b2_start_large_file":
            srv._name_large_file(res["fileId"], res["fileName"])
        if name in ("b2_get_upload_url", "b2_get_upload_part_url"):
            # Same token as the simulator issued; only the URL is moved onto this server.
            res = dict(res, uploadUrl=srv.url + "/__b2up/" + res["uploadUrl"][len(_SIM_UPLOAD) :])
        self._send_json(200, res)

    def _upload(self, rest: str) -> None:
        import io

        srv = self.server.owner
        sim_url = _SIM_UPLOAD + rest
        tok = self.headers.get("Authorization", "")
        data = self._read_body()  # the simulator keeps bytes in memory anyway
        n = len(data)
        sha1 = self.headers.get("X-Bz-Content-Sha1", "")
        if rest.startswith("part/"):
            part = int(self.headers["X-Bz-Part-Number"])
            srv._record_part(rest.split("/")[1], part, n - (40 if sha1 == "hex_digits_at_end" else 0))
            res = self._sim(srv.sim.upload_part, sim_url, tok, part, n, sha1, io.BytesIO(data))
        else:
            info = {
                k[len("X-Bz-Info-") :]: unquote(v)
                for k, v in self.headers.items()
                if k.lower().startswith("x-bz-info-")
            }
            res = self._sim(
                srv.sim.upload_file,
                sim_url,
                tok,
                unquote(self.headers["X-Bz-File-Name"]),
                n,
                self.headers.get("Content-Type", "b2/x-auto"),
                sha1,
                info,
                io.BytesIO(data),
            )
        self._send_json(200, res)

    def _download(self, fault: str | None) -> None:
        srv = self.server.owner
        split = urlsplit(self.path)
        sim_url = srv.sim.DOWNLOAD_URL + split.path + (f"?{split.query}" if split.query else "")
        if split.path.endswith("b2_download_file_by_id"):
            fid = parse_qs(split.query).get("fileId", [""])[0]
            sim_url = srv.sim.DOWNLOAD_URL + f"/b2api/v3/b2_download_file_by_id?fileId={fid}"
            if fid not in srv.sim.file_id_to_bucket_id:
                return self._send_error(404, "not_found", f"file {fid} not found")
        rng = None
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "") or "")
        resp = self._sim(srv.sim.download_file_from_url, self.headers.get("Authorization"), sim_url)
        with resp as r:
            data = memoryview(r.data_bytes)
            headers = dict(r.headers)
        total = len(data)
        status = 200
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else total - 1, total - 1)
            if start >= total and total:
                return self._send_error(416, "range_not_satisfiable", "range not satisfiable")
            rng = (start, end)
            data = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        headers["content-length"] = str(len(data))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        del rng
        for off in range(0, len(data), CHUNK):
            chunk = bytes(data[off : off + CHUNK])
            if fault == "flip" and off == 0:
                chunk = flip_byte(chunk)
            if fault == "drop":
                self.wfile.write(chunk[: max(1, len(chunk) // 2)])
                return self._kill()
            self.wfile.write(chunk)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: "B2Server"
    lock: threading.Lock


class B2Server:
    """Loopback B2 endpoint. `with B2Server() as s: s.create_bucket("b"); s.url, s.key_id, s.key`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key_id: str | None = None,
        key: str | None = None,
        recommended_part_size: int = 100 * 1000 * 1000,
        min_part_size: int = 5 * 1000 * 1000,
    ):
        self.host = check_loopback(host)
        self.port = port
        self.faults = Faults()
        self.sim = _make_simulator(recommended_part_size, min_part_size)
        acct, master = self.sim.create_account()
        self.account_id = acct
        if key_id or key:
            # Re-register the master key under the requested id/secret.
            ks = self.sim.key_id_to_key.pop(acct)
            ks.application_key_id = key_id or acct
            ks.key = key or master
            self.sim.key_id_to_key[ks.application_key_id] = ks
        self.key_id = key_id or acct
        self.key = key or master
        self._parts: dict[str, dict[int, int]] = {}
        self._large_names: dict[str, str] = {}
        self._parts_lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def count_request(self, path: str) -> None:
        m = _CALL.match(path)
        name = m.group(1) if m else ("upload" if path.startswith("/__b2up/") else "download")
        with self._parts_lock:
            self._requests[name] = self._requests.get(name, 0) + 1

    def request_counts(self) -> dict:
        """Requests served (control paths excluded), in all and by B2 call: what GET /__requests__ answers."""
        with self._parts_lock:
            return {"requests": sum(self._requests.values()), "by_call": dict(self._requests)}

    def start(self) -> "B2Server":
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.owner = self
        self._httpd.lock = threading.Lock()
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="b2-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> "B2Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def create_bucket(self, name: str) -> str:
        """Create a private bucket (idempotent); returns its id."""
        lock = self._httpd.lock if self._httpd else threading.Lock()
        with lock:
            if name in self.sim.bucket_name_to_bucket:
                return self.sim.bucket_name_to_bucket[name].bucket_id
            auth = self.sim.authorize_account(self.url, self.key_id, self.key)
            return self.sim.create_bucket(
                self.sim.API_URL, auth["authorizationToken"], self.account_id, name, "allPrivate"
            )["bucketId"]

    def _record_part(self, file_id: str, number: int, size: int) -> None:
        with self._parts_lock:
            self._parts.setdefault(file_id, {})[number] = size

    def _name_large_file(self, file_id: str, name: str) -> None:
        with self._parts_lock:
            self._large_names[file_id] = name

    def part_sizes(self) -> dict[str, list[int]]:
        with self._parts_lock:
            return {fid: [p[n] for n in sorted(p)] for fid, p in self._parts.items()}

    def parts(self, name_contains: str = "") -> dict[str, dict]:
        """file id -> {"key": file name, "sizes": [part 1, ...]}: what GET /__parts__ answers."""
        with self._parts_lock:
            out = {}
            for fid, p in self._parts.items():
                name = self._large_names.get(fid, "")
                if name_contains in name:
                    out[fid] = {"key": name, "sizes": [p[n] for n in sorted(p)]}
            return out

    def versions(self, bucket: str, name: str) -> int:
        """How many versions of a file name the bucket holds (tests: delete removes every one)."""
        with self._httpd.lock:
            b = self.sim.bucket_name_to_bucket[bucket]
            return sum(1 for (n, _id) in b.file_name_and_id_to_file if n == name)
