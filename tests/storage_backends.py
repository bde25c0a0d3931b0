"""The backends of the storage conformance suite (restic's internal/backend/test model).

One suite (tests/test_storage_conformance.py), and per backend one object that brings what the suite
needs: a factory for its Location and the fault hooks. Every hook a remote backend offers goes through
that backend's own test server over HTTP — the storage protocol itself (S3 API, B2 native API, driven
by boto3 / b2sdk) or the server's control endpoints (/__faults__, /__parts__) — never through the
server's Python objects, so the same hooks work against a server in another process.

A hook a backend cannot offer raises Unsupported with the reason; the suite skips on it. Only faults
that truly cannot exist are unsupported (local disk has no server, network or credentials).
"""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from pathlib import Path

from backup_assets.core.locations.b2 import B2Location
from backup_assets.core.locations.local import LocalLocation
from backup_assets.core.locations.r2 import R2Location

MiB = 1024 * 1024


class Unsupported(Exception):
    """This fault cannot exist for this backend (the message says why)."""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, method: str = "GET", body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Backend:
    kind = "?"
    scheme = "?"
    part_size: int | None = None  # multipart part size the factory configures (None: no parts)
    equal_parts = False  # the store requires every non-final part to be the same size (R2)

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path

    # -- factory --------------------------------------------------------------------------------
    def make(self, **over):
        raise NotImplementedError

    def writer_code(self) -> str:
        """Python source that builds the same Location in another process, as `loc`."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The kind's variables that point it at this backend's store (what its registered factory reads)."""
        from backup_assets.testing.location_doubles import kind_env

        return kind_env(self.kind, self.server, self.bucket)

    # -- faults ---------------------------------------------------------------------------------
    _NO_SERVER = "local disk has no server, network or credentials between the client and the store"

    def unreachable(self):
        """A Location whose endpoint refuses connections."""
        raise Unsupported(self._NO_SERVER)

    def wrong_credentials(self):
        raise Unsupported(self._NO_SERVER)

    def missing_bucket(self):
        raise Unsupported(self._NO_SERVER)

    def set_faults(self, **faults) -> None:
        """fail / drop / flip / down / after / match, as the test servers take them (servers.py)."""
        raise Unsupported(self._NO_SERVER)

    def clear_faults(self) -> None:
        pass

    def injected(self) -> int:
        raise Unsupported(self._NO_SERVER)

    def upload_match(self, loc, t: str, b: str) -> str:
        """Fault filter hitting the archive's upload requests."""
        raise Unsupported(self._NO_SERVER)

    def corrupt_at_rest(self, loc, t: str, b: str) -> None:
        """Change one byte of the stored archive, keeping its stored metadata (bit rot)."""
        raise NotImplementedError

    # -- what the store holds -------------------------------------------------------------------
    def versions(self, loc, key: str) -> int:
        """How many versions of key the store holds."""
        raise NotImplementedError

    def leftovers(self, loc, t: str, b: str) -> int:
        """Unfinished uploads of the archive (temp files, multipart uploads, unfinished large files)."""
        raise NotImplementedError

    def part_sizes(self, loc, t: str, b: str) -> list[list[int]]:
        """Per upload of the archive, the sizes of the parts the server received."""
        raise Unsupported("local disk writes one file: no parts")


class LocalBackend(Backend):
    kind, scheme = "local", "file://"

    def env(self) -> dict[str, str]:
        return {"TENANT_BACKUP_LOCAL_DIR": str(self.tmp / "store")}

    def make(self, *, root=None, **over):
        return LocalLocation(root or self.tmp / "store", **over)

    def writer_code(self) -> str:
        return f"from backup_assets.core.locations.local import LocalLocation; loc = LocalLocation({str(self.tmp / 'store')!r})"

    def _dir(self, loc, t, b) -> Path:
        return Path(loc.root) / loc.backup_prefix(t, b)

    def corrupt_at_rest(self, loc, t, b) -> None:
        p = Path(loc.root) / loc.archive_key(t, b)
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 1
        p.write_bytes(bytes(data))

    def versions(self, loc, key) -> int:
        return int((Path(loc.root) / key).exists())

    def leftovers(self, loc, t, b) -> int:
        d = self._dir(loc, t, b)
        return len(list(d.glob(".archive*.tbk.*.tmp"))) if d.is_dir() else 0


class R2Backend(Backend):
    """Cloudflare R2 over the S3 API, against the moto-backed loopback S3 server."""

    kind, scheme = "r2", "r2://"
    part_size = 5 * MiB
    equal_parts = True

    def __init__(self, tmp_path, server):
        super().__init__(tmp_path)
        self.server = server
        self.url = server.url
        self.bucket = "t-" + uuid.uuid4().hex[:12]
        self._client().create_bucket(Bucket=self.bucket)
        self.clear_faults()

    def _client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.server.access_key,
            aws_secret_access_key=self.server.secret_key,
            config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"),
        )

    def make(self, *, bucket=None, key=None, url=None, **over):
        kw = dict(
            part_size=self.part_size,
            multipart_threshold=self.part_size,
            max_attempts=2,
            connect_timeout=2,
            read_timeout=10,
        )
        kw.update(over)
        return R2Location(
            url or self.url, key or self.server.access_key, self.server.secret_key, bucket or self.bucket, **kw
        )

    def writer_code(self) -> str:
        return (
            "from backup_assets.core.locations.r2 import R2Location; "
            f"loc = R2Location({self.url!r}, {self.server.access_key!r}, {self.server.secret_key!r}, {self.bucket!r}, "
            f"part_size={self.part_size}, multipart_threshold={self.part_size})"
        )

    def unreachable(self):
        return self.make(url=f"http://127.0.0.1:{closed_port()}")

    def wrong_credentials(self):
        return self.make(key="wrong-key-id")

    def missing_bucket(self):
        return self.make(bucket="no-such-bucket-" + uuid.uuid4().hex[:6])

    def set_faults(self, **faults) -> None:
        http_json(self.url + "/__faults__", "POST", faults)

    def clear_faults(self) -> None:
        http_json(self.url + "/__faults__", "DELETE")

    def injected(self) -> int:
        return http_json(self.url + "/__faults__")["injected"]

    def upload_match(self, loc, t, b) -> str:
        return f"{t}/{b}/archive"

    def corrupt_at_rest(self, loc, t, b) -> None:
        c, key = self._client(), loc.archive_key(t, b)
        obj = c.get_object(Bucket=self.bucket, Key=key)
        data = bytearray(obj["Body"].read())
        data[len(data) // 2] ^= 1
        c.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])

    def versions(self, loc, key) -> int:
        resp = self._client().list_object_versions(Bucket=self.bucket, Prefix=key)
        return sum(1 for v in resp.get("Versions", []) if v["Key"] == key)

    def leftovers(self, loc, t, b) -> int:
        key = loc.backup_prefix(t, b)
        return len(self._client().list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", []))

    def part_sizes(self, loc, t, b) -> list[list[int]]:
        key = loc.backup_prefix(t, b)
        got = http_json(self.url + "/__parts__?contains=" + urllib.request.quote(f"/{self.bucket}/{key}"))
        return [rec["sizes"] for rec in got.values() if rec["key"].startswith(key)]

    def checksum_headers(self) -> dict:
        return http_json(self.url + "/__checksums__")


class B2Backend(Backend):
    """Backblaze B2 over its native API, against the RawSimulator-backed loopback B2 server."""

    kind, scheme = "b2", "b2://"
    part_size = 5 * 1000 * 1000  # the server's recommended (and minimum) part size

    def __init__(self, tmp_path, server):
        super().__init__(tmp_path)
        self.server = server
        self.url = server.url
        self.bucket = "t-" + uuid.uuid4().hex[:12]
        server.create_bucket(self.bucket)  # no b2_create_bucket on the wire: the double's set-up call
        self.clear_faults()
        self._bucket_api = None

    def _api_bucket(self):
        """b2sdk's own client (public API) against the server: the hooks' view of the store."""
        if self._bucket_api is None:
            from b2sdk.v2 import B2Api, InMemoryAccountInfo

            api = B2Api(InMemoryAccountInfo())
            api.authorize_account(
                realm=self.url, application_key_id=self.server.key_id, application_key=self.server.key
            )
            self._bucket_api = api.get_bucket_by_name(self.bucket)
        return self._bucket_api

    def make(self, *, bucket=None, key=None, url=None, **over):
        kw = dict(tries=2, connect_timeout=2, read_timeout=10)
        kw.update(over)
        return B2Location(
            key or self.server.key_id, self.server.key, bucket or self.bucket, realm=url or self.url, **kw
        )

    def writer_code(self) -> str:
        return (
            "from backup_assets.core.locations.b2 import B2Location; "
            f"loc = B2Location({self.server.key_id!r}, {self.server.key!r}, {self.bucket!r}, realm={self.url!r})"
        )

    def unreachable(self):
        return self.make(url=f"http://127.0.0.1:{closed_port()}")

    def wrong_credentials(self):
        return self.make(key="wrong-key-id")

    def missing_bucket(self):
        return self.make(bucket="no-such-bucket-" + uuid.uuid4().hex[:6])

    def set_faults(self, **faults) -> None:
        http_json(self.url + "/__faults__", "POST", faults)

    def clear_faults(self) -> None:
        http_json(self.url + "/__faults__", "DELETE")

    def injected(self) -> int:
        return http_json(self.url + "/__faults__")["injected"]

    def upload_match(self, loc, t, b) -> str:
        return "/__b2up/"  # B2 upload URLs carry no file name

    def corrupt_at_rest(self, loc, t, b) -> None:
        # B2 never changes a stored version in place; what a reader then gets is the newest version:
        # one with a byte changed and the original file info (sha256) is bit rot as far as get() can tell.
        import io

        bucket, key = self._api_bucket(), loc.archive_key(t, b)
        info = bucket.get_file_info_by_name(key)
        buf = io.BytesIO()
        bucket.download_file_by_name(key).save(buf)
        data = bytearray(buf.getvalue())
        data[len(data) // 2] ^= 1
        bucket.upload_bytes(bytes(data), key, file_info=dict(info.file_info))

    def versions(self, loc, key) -> int:
        return sum(1 for v in self._api_bucket().list_file_versions(key) if v.file_name == key)

    def leftovers(self, loc, t, b) -> int:
        key = loc.backup_prefix(t, b)
        return sum(1 for f in self._api_bucket().list_unfinished_large_files(prefix=key) if f.file_name.startswith(key))

    def part_sizes(self, loc, t, b) -> list[list[int]]:
        key = loc.backup_prefix(t, b)
        got = http_json(self.url + "/__parts__?contains=" + urllib.request.quote(key))
        return [rec["sizes"] for rec in got.values() if rec["key"].startswith(key)]


def backend_for(kind: str, tmp_path: Path, request):
    """The backend of `kind` ("local", "r2", "b2"), the remote ones on the module's s3_server / b2_server."""
    if kind == "local":
        return LocalBackend(tmp_path)
    if kind == "r2":
        return R2Backend(tmp_path, request.getfixturevalue("s3_server"))
    return B2Backend(tmp_path, request.getfixturevalue("b2_server"))
