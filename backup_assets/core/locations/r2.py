"""Cloudflare R2 location over the S3 API (boto3).

R2 traps (DESIGN §6): boto3 >= 1.36 sends checksum headers R2 rejects -> checksums only "when
required"; multipart parts are 5 MiB..5 GiB and every non-final part must have the same size -> a
fixed part size. Our SHA-256 goes in object metadata (x-amz-meta-sha256) so stat() needs no download.
Every request has bounded connect/read timeouts and bounded botocore retries, so a dead endpoint is
a clear error in seconds; RetryingLocation adds whole-operation retries on top.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from ..errors import NotFound, PermanentStorageError, StorageError, TransientStorageError
from .base import CHUNK, ObjectLocation

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
DEFAULT_PART = 16 * MiB
DEFAULT_THRESHOLD = 64 * MiB

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
              "RequestTimeout", "RequestTimeTooSkewed", "Throttling", "ThrottlingException"}
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Unauthorized",
         "InvalidToken", "ExpiredToken"}


class _FileSlice(io.RawIOBase):
    """A seekable window onto a file: one part streamed from disk, re-readable for botocore retries."""

    def __init__(self, path: Path, offset: int, length: int):
        super().__init__()
        self._f = open(path, "rb")
        self._off, self._len, self._pos = offset, length, 0
        self._f.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        remaining = self._len - self._pos
        if n is None or n < 0 or n > remaining:
            n = remaining
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, min(self._len, base + pos))
        self._f.seek(self._off + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._len

    def close(self) -> None:
        self._f.close()
        super().close()


class R2Location(ObjectLocation):
    name = "r2"

    def __init__(self, endpoint_url: str, access_key_id: str, secret_access_key: str, bucket: str, *,
                 prefix: str = "", retention_days: int = 365, part_size: int = DEFAULT_PART,
                 multipart_threshold: int = DEFAULT_THRESHOLD, concurrency: int = 4,
                 connect_timeout: float = 5, read_timeout: float = 60, max_attempts: int = 3,
                 region: str = "auto"):
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
        self._s3 = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=region, aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key, config=cfg)

    def _key_uri(self, key: str) -> str:
        return f"r2://{self.bucket}/{key}"

    # -- error classification ----------------------------------------------------------------------
    def _err(self, exc: Exception, key: str | None) -> StorageError:
        from botocore import exceptions as bx

        what = self._key_uri(key) if key else f"r2://{self.bucket}"
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                return PermanentStorageError(f"r2: bucket {self.bucket!r} does not exist at {self.endpoint_url}")
            if code in _NOT_FOUND:
                return NotFound(f"{what}: not found")
            if code in _AUTH:
                return PermanentStorageError(
                    f"r2: credentials rejected by {self.endpoint_url} ({code}): check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY")
            if code in _TRANSIENT or status >= 500 or status == 429:
                return TransientStorageError(f"{what}: server error {code or status}")
            msg = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
            return PermanentStorageError(f"{what}: {code or status}: {msg}")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return PermanentStorageError("r2: no credentials: set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY")
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            return TransientStorageError(f"r2: cannot connect to {self.endpoint_url}")
        if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectionClosedError, bx.ResponseStreamingError,
                            bx.IncompleteReadError, bx.HTTPClientError, ConnectionError, TimeoutError)):
            return TransientStorageError(f"{what}: connection to {self.endpoint_url} failed ({type(exc).__name__})")
        if isinstance(exc, StorageError):
            return exc
        try:
            from urllib3.exceptions import HTTPError as U3Error

            if isinstance(exc, U3Error):
                return TransientStorageError(f"{what}: connection failed ({type(exc).__name__})")
        except ImportError:  # pragma: no cover
            pass
        return PermanentStorageError(" ".join(f"{what}: {type(exc).__name__}: {exc}".split()))

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
                    f"r2: bucket {self.bucket!r} does not exist at {self.endpoint_url}") from None
            raise err from None

    # -- primitives --------------------------------------------------------------------------------
    def _put_file(self, key: str, path: Path, size: int, sha256: str) -> None:
        meta = {"sha256": sha256}
        if size < self.multipart_threshold:
            with _FileSlice(path, 0, size) as body:
                self._call(key, self._s3.put_object, Key=key, Body=body, ContentLength=size, Metadata=meta,
                           ContentType="application/octet-stream")
            return
        upload_id = self._call(key, self._s3.create_multipart_upload, Key=key, Metadata=meta,
                               ContentType="application/octet-stream")["UploadId"]
        ps = self.part_size
        ranges = [(n, off, min(ps, size - off)) for n, off in enumerate(range(0, size, ps), start=1)]

        def upload(r):
            n, off, length = r
            with _FileSlice(path, off, length) as body:
                resp = self._call(key, self._s3.upload_part, Key=key, UploadId=upload_id, PartNumber=n,
                                  Body=body, ContentLength=length)
            return {"PartNumber": n, "ETag": resp["ETag"]}

        try:
            # Parts stream from disk; the pool bounds how many are in flight (memory stays flat).
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="r2-part") as pool:
                parts = list(pool.map(upload, ranges))
            self._call(key, self._s3.complete_multipart_upload, Key=key, UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            try:  # best effort: R2 also expires abandoned uploads, and delete() aborts leftovers
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass
            raise

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
        return int(resp["ContentLength"]), resp.get("Metadata", {}).get("sha256")

    def _iter_chunks(self, key: str) -> Iterator[bytes]:
        body = self._call(key, self._s3.get_object, Key=key)["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                yield chunk
        except Exception as exc:
            raise self._err(exc, key) from None
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
        prefix = self.archive_key(tenant_id, backup_id)
        try:
            resp = self._s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
            for up in resp.get("Uploads", []):
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
        except Exception as exc:
            err = self._err(exc, prefix)
            if not isinstance(err, NotFound):
                raise err from None
