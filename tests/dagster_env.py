"""Environment for real Dagster runs in tests: the sample database, a keyring, a local directory, the
loopback S3 (R2) and B2 servers, a work directory. Returned as a dict of environment variables."""

from __future__ import annotations

import uuid
from pathlib import Path

from backup_assets.core.codec.keyring import generate_entry


def backup_environment(sample_db, s3_server, b2_server, tmp_path: Path, scratch_dsn: str) -> dict[str, str]:
    bucket = f"tb-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    b2_server.create_bucket(bucket)
    return {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": generate_entry("dagster1"),
        "TENANT_BACKUP_LOCATIONS": "local,r2,b2",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": scratch_dsn,
        "R2_ENDPOINT_URL": s3_server.url,
        "R2_ACCESS_KEY_ID": s3_server.access_key or "testing",
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET": bucket,
        "B2_APPLICATION_KEY_ID": b2_server.key_id,
        "B2_APPLICATION_KEY": b2_server.key,
        "B2_BUCKET": bucket,
        "B2_REALM": b2_server.url,
        # Tests must not wait 5 minutes between retries, nor retry a down server for long.
        "TENANT_BACKUP_RETRIES": "1",
        "TENANT_BACKUP_RETRY_DELAY_S": "0",
        "TENANT_BACKUP_STORAGE_ATTEMPTS": "2",
    }
