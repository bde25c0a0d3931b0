"""Cloudflare R2 location over the S3 API (boto3).

R2 traps (docs/ARCHITECTURE.md, "Verified traps"): boto3 >= 1.36 sends checksum headers R2 rejects -> checksums only "when
required"; multipart parts are 5 MiB..5 GiB and every non-final part must have the same size -> a
fixed part size. Our SHA-256 goes in object metadata (x-amz-meta-sha256) so stat() needs no download.
Every request has bounded connect/read timeouts and bounded botocore retries, so a dead endpoint is
a clear error in seconds; RetryingLocation adds whole-operation retries on top.

Transfers use boto3's managed transfer (s3transfer: upload_file / download_fileobj) with one
TransferConfig: a fixed part size (s3transfer cuts every part but the last at exactly that size, and
only ever doubles it for files beyond 10,000 parts, still one size per upload), parts in flight
bounded, parts streamed from disk (upload_file reads each part from the file, never the whole
archive), the classic (pure-Python) transfer client so that the client configuration above applies,
and an interrupted multipart upload aborted by s3transfer itself.

Downloads stay one streamed GetObject, re-hashed as the bytes arrive, not download_fileobj: the pinned
s3transfer (0.19) always splits a download into ranged GETs of multipart_chunksize, and into a
non-seekable target (what an in-order re-hash needs) it hangs once an object has more chunks than
max_in_memory_download_chunks (10): reproduced here, 11 x 5 MiB never returns (docs/STORAGE.md). A
seekable target (download_file) would work but means hashing the file after it is written, one more
pass over every restore and verification.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .. import crashpoints
from ..errors import NotFound, PermanentStorageError, StorageError, TransientStorageError, one_line
from .base import CHUNK, ObjectLocation
from .garbage import Garbage
from .registry import LocationKind, LocationSettings, Variable

MiB = 1024 * 1024
SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the archive's SHA-256, so stat() needs no download
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
DEFAULT_PART = 16 * MiB
DEFAULT_THRESHOLD = 64 * MiB

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_TRANSIENT = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "PreconditionFailed",
    "412",
}  # 412: the object changed under a ranged download: read again
_AUTH = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "Unauthorized",
    "InvalidToken",
    "ExpiredToken",
}

Progress = Callable[[str, int], None]  # (key, bytes since the last call; negative when a part is re-sent)


def _timestamp(value):
    """A response's timestamp: ISO 8601 (what listings send, one per object) by datetime.fromisoformat;
    anything else (HTTP dates in headers, epoch numbers) by botocore's own parser. botocore's default
    parses each with dateutil: ~70 % of the CPU of listing a large bucket (bench/ops.py profile)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:  # a naive one: botocore's rules decide
            return parsed
    from botocore.utils import parse_timestamp  # here, not per listed object: this runs once per object

    return parse_timestamp(value)


class R2Location(ObjectLocation):
    name = "r2"

    def __init__(
        self,
        endpoint_url: str,
        access_key_id: str,
        secret_access_key: str,
        bucket: str,
        *,
        prefix: str = "",
        retention_days: int = 365,
        part_size: int = DEFAULT_PART,
        multipart_threshold: int = DEFAULT_THRESHOLD,
        concurrency: int = 4,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        max_attempts: int = 3,
        region: str = "auto",
        progress: Progress | None = None,
    ):
        super().__init__(prefix=prefix, retention_days=retention_days)
        if not MIN_PART <= part_size <= MAX_PART:
            raise StorageError(f"r2: part size {part_size} outside R2's 5 MiB..5 GiB")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.bucket = bucket
        self.part_size = part_size
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.concurrency = max(1, concurrency)
        import boto3
        from botocore.config import Config

        cfg = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=self.concurrency + 2,
            s3={"addressing_style": "path"},
        )
        import botocore.session

        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
        self._s3 = boto3.session.Session(botocore_session=core).client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=cfg,
        )
        from boto3.s3.transfer import TransferConfig

        self.progress = progress
        self._transfer = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=part_size,  # R2: every non-final part this size
            max_concurrency=self.concurrency,  # parts in flight, up and down
            num_download_attempts=max_attempts,  # re-reads of a part whose body broke off mid-stream
            use_threads=True,
            preferred_transfer_client="classic",  # never the CRT client: it ignores the Config above
        )

    def _key_uri(self, key: str) -> str:
        return f"r2://{self.bucket}/{key}"

    # -- error classification ----------------------------------------------------------------------
    def _err(self, exc: Exception, key: str | None) -> StorageError:
        from boto3 import exceptions as b3x
        from botocore import exceptions as bx
        from s3transfer import exceptions as stx

        what = self._key_uri(key) if key else f"r2://{self.bucket}"
        # The managed transfer wraps the real cause: S3UploadFailedError (raised while handling the
        # ClientError) and RetriesExceededError (the last streaming error) carry no code of their own.
        if isinstance(exc, b3x.S3UploadFailedError) and exc.__context__ is not None:
            exc = exc.__context__
        if isinstance(exc, (b3x.RetriesExceededError, stx.RetriesExceededError)) and exc.last_exception:
            exc = exc.last_exception
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                return PermanentStorageError(f"r2: bucket {self.bucket!r} does not exist at {self.endpoint_url}")
            if code in _NOT_FOUND:
                return NotFound(f"{what}: not found")
            if code in _AUTH:
                return PermanentStorageError(
                    f"r2: credentials rejected by {self.endpoint_url} ({code}): check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY"
                )
            if code in _TRANSIENT or status >= 500 or status == 429:
                return TransientStorageError(f"{what}: server error {code or status}")
            msg = one_line(exc.response.get("Error", {}).get("Message", ""))
            return PermanentStorageError(f"{what}: {code or status}: {msg}")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return PermanentStorageError("r2: no credentials: set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY")
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            return TransientStorageError(f"r2: cannot connect to {self.endpoint_url}")
        if isinstance(
            exc,
            (
                bx.ReadTimeoutError,
                bx.ConnectionClosedError,
                bx.ResponseStreamingError,
                bx.IncompleteReadError,
                bx.HTTPClientError,
                ConnectionError,
                TimeoutError,
            ),
        ):
            return TransientStorageError(f"{what}: connection to {self.endpoint_url} failed ({type(exc).__name__})")
        if isinstance(exc, StorageError):
            return exc
        try:
            from urllib3.exceptions import HTTPError as U3Error

            if isinstance(exc, U3Error):
                return TransientStorageError(f"{what}: connection failed ({type(exc).__name__})")
        except ImportError:  # pragma: no cover
            pass
        return PermanentStorageError(one_line(f"{what}: {type(exc).__name__}: {exc}"))

    def _call(self, key: str | None, fn, **kw):
        try:
            return fn(Bucket=self.bucket, **kw)
        except Exception as exc:
            err = self._err(exc, key)
            if isinstance(err, NotFound) and key is not None:
                self._check_bucket()  # a HEAD 404 does not say whether the key or the bucket is missing
            raise err from None

    def _check_bucket(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            err = self._err(exc, None)
            if isinstance(err, NotFound):
                raise PermanentStorageError(
                    f"r2: bucket {self.bucket!r} does not exist at {self.endpoint_url}"
                ) from None
            raise err from None

    # -- primitives --------------------------------------------------------------------------------
    def _callback(self, key: str):
        report = self.progress
        if crashpoints.armed():  # a kill test: stop the process with the upload open
            if report is None:
                return lambda n: crashpoints.reached("upload.progress")
            return lambda n: (crashpoints.reached("upload.progress"), report(key, n))
        if report is None:
            return None
        return lambda n: report(key, n)

    def _put_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        # Below the threshold one PutObject, above it a multipart upload; either way streamed from the
        # file. s3transfer aborts a multipart upload that fails; a killed process leaves one behind,
        # which never looks complete (no manifest) and which delete() (or R2's expiry) removes.
        self._call(
            key,
            lambda Bucket, **kw: self._s3.upload_file(str(path), Bucket, key, **kw),
            ExtraArgs={"Metadata": {SHA256_METADATA: sha256}, "ContentType": "application/octet-stream"},
            Config=self._transfer,
            Callback=self._callback(key),
        )

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, self._s3.put_object, Key=key, Body=data, ContentType="application/json")

    def _get_bytes(self, key: str) -> bytes:
        resp = self._call(key, self._s3.get_object, Key=key)
        try:
            return resp["Body"].read()
        except Exception as exc:
            raise self._err(exc, key) from None

    def _head(self, key: str) -> tuple[int, str | None]:
        resp = self._call(key, self._s3.head_object, Key=key)
        return int(resp["ContentLength"]), resp.get("Metadata", {}).get(SHA256_METADATA)

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        body = self._call(key, self._s3.get_object, Key=key)["Body"]
        try:
            yield from self._chunks(key, body)
        finally:
            body.close()

    def _chunks(self, key: str, body) -> Iterator[bytes]:
        try:
            for chunk in body.iter_chunks(CHUNK):
                yield chunk
        except Exception as exc:
            raise self._err(exc, key) from None

    @contextmanager
    def _opened(self, key: str):
        """One GetObject: its response carries what a HeadObject would (size, metadata)."""
        resp = self._call(key, self._s3.get_object, Key=key)
        body = resp["Body"]
        try:
            yield int(resp["ContentLength"]), resp.get("Metadata", {}).get(SHA256_METADATA), self._chunks(key, body)
        finally:
            body.close()

    def _list(self, prefix: str) -> Iterator[tuple[str, datetime | None]]:
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"], obj.get("LastModified")
        except Exception as exc:
            raise self._err(exc, None) from None

    def _delete(self, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)  # S3 answers 204 for a missing key too
        except Exception as exc:
            err = self._err(exc, key)
            if not isinstance(err, NotFound):
                raise err from None

    def delete(self, tenant_id: str, backup_id: str) -> None:
        super().delete(tenant_id, backup_id)
        # Abort multipart uploads an interrupted put left behind (they cost storage until expiry).
        for up in self._uploads(self.backup_prefix(tenant_id, backup_id)):
            self.remove_garbage(up)

    def _uploads(self, prefix: str) -> list[Garbage]:
        """Multipart uploads under prefix (never completed, never aborted), with the bytes of their parts."""
        out = []
        try:
            for page in self._s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
                for up in page.get("Uploads", []):
                    parts = self._s3.list_parts(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    size = sum(int(p.get("Size", 0)) for p in parts.get("Parts", []))
                    out.append(
                        Garbage(
                            self.name,
                            up["Key"],
                            self._key_uri(up["Key"]),
                            size,
                            up.get("Initiated"),
                            "unfinished upload",
                            up["UploadId"],
                        )
                    )
        except Exception as exc:
            err = self._err(exc, prefix)
            if not isinstance(err, NotFound):
                raise err from None
        return out

    def _unfinished(self, survey=None):
        return iter(self._uploads(self._root()))

    def remove_garbage(self, item: Garbage) -> None:
        if item.what != "unfinished upload":
            return super().remove_garbage(item)
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=item.key, UploadId=item.handle)
        except Exception as exc:
            err = self._err(exc, item.key)
            if not isinstance(err, NotFound):  # NoSuchUpload: aborted already
                raise err from None


def _build(settings: LocationSettings) -> R2Location:
    part = settings["TENANT_BACKUP_R2_PART_SIZE_MB"] * MiB
    return R2Location(
        settings["R2_ENDPOINT_URL"],
        settings["R2_ACCESS_KEY_ID"],
        settings["R2_SECRET_ACCESS_KEY"],
        settings["R2_BUCKET"],
        prefix=settings.prefix,
        retention_days=settings.retention_days,
        part_size=part,
        multipart_threshold=settings["TENANT_BACKUP_R2_MULTIPART_THRESHOLD_MB"] * MiB,
        concurrency=settings["TENANT_BACKUP_R2_CONCURRENCY"],
    )


KIND = LocationKind(
    name="r2",
    display_name="Cloudflare R2",
    description="an R2 bucket over the S3 API (boto3)",
    variables=(
        Variable("R2_ENDPOINT_URL", "`https://<account-id>.r2.cloudflarestorage.com`", required=True),
        Variable("R2_ACCESS_KEY_ID", "R2 API token: S3 access key id", required=True, secret=True),
        Variable("R2_SECRET_ACCESS_KEY", "R2 API token: S3 secret access key", required=True, secret=True),
        Variable("R2_BUCKET", "bucket name", required=True),
        Variable("TENANT_BACKUP_R2_PART_SIZE_MB", "multipart part size (5…5120)", default=16, type=int, minimum=5),
        Variable(
            "TENANT_BACKUP_R2_MULTIPART_THRESHOLD_MB",
            "archives at least this big use multipart",
            default=64,
            type=int,
            minimum=5,
        ),
        # 2: 16 MiB parts keep a link busy; more threads only contend for a small machine's cores
        # (bench/storage.py measured 4 slower than 2 here).
        Variable("TENANT_BACKUP_R2_CONCURRENCY", "parts in flight", default=2, type=int, minimum=1),
    ),
    retention_days=365,
    build=_build,
    restore_order=20,
    ui_kind="s3",
    short_name="R2",
)
