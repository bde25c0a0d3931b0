"""Storage configuration from the environment (docs/STORAGE.md, "Configuration"): never a silent skip."""

from __future__ import annotations

import uuid

import pytest

from backup_assets.core.archive.manifest import Manifest
from backup_assets.core.errors import ConfigError
from backup_assets.core.locations import RetryingLocation, locations_from_env, sha256_file
from backup_assets.core.locations.b2 import B2Location
from backup_assets.core.locations.indexing import IndexingLocation
from backup_assets.core.locations.local import LocalLocation
from backup_assets.core.locations.r2 import R2Location

FULL = {
    "TENANT_BACKUP_LOCAL_DIR": "/tmp/x",
    "R2_ENDPOINT_URL": "http://127.0.0.1:1",
    "R2_ACCESS_KEY_ID": "k",
    "R2_SECRET_ACCESS_KEY": "s",
    "R2_BUCKET": "b",
    "B2_APPLICATION_KEY_ID": "k",
    "B2_APPLICATION_KEY": "s",
    "B2_BUCKET": "b",
}


def test_defaults_to_all_three_and_names_every_missing_variable():
    with pytest.raises(ConfigError) as ei:
        locations_from_env(None, environ={})
    msg = str(ei.value)
    for var in FULL:
        assert var in msg
    assert "\n" not in msg


def test_one_missing_variable_is_named():
    env = dict(FULL, R2_BUCKET="  ")
    with pytest.raises(ConfigError, match="R2_BUCKET") as ei:
        locations_from_env(None, environ=env)
    assert "B2_BUCKET" not in str(ei.value)


def test_the_error_names_the_smallest_fix():
    """Nothing configured: one local directory is enough; some configured: keep only those; locations
    a caller named (a --location option) are not second-guessed."""
    with pytest.raises(ConfigError) as ei:
        locations_from_env(None, environ={})
    assert "or, to begin with one local directory: TENANT_BACKUP_LOCATIONS=local and TENANT_BACKUP_LOCAL_DIR=" in str(
        ei.value
    )
    with pytest.raises(ConfigError) as ei:
        locations_from_env(None, environ={"TENANT_BACKUP_LOCAL_DIR": "/tmp/x"})
    assert str(ei.value).endswith("; or use only local: TENANT_BACKUP_LOCATIONS=local")
    with pytest.raises(ConfigError) as ei:
        locations_from_env(["r2"], environ={"TENANT_BACKUP_LOCAL_DIR": "/tmp/x"})
    assert "TENANT_BACKUP_LOCATIONS" not in str(ei.value)


def test_unlisted_locations_need_no_settings():
    locs = locations_from_env(None, environ={"TENANT_BACKUP_LOCATIONS": "local", "TENANT_BACKUP_LOCAL_DIR": "/tmp/x"})
    assert list(locs) == ["local"]
    assert locs["local"].name == "local" and locs["local"].retention_days == 30
    # Outermost the index keeper (core/locations/indexing.py), then the retrying wrapper, then the kind.
    assert isinstance(locs["local"], IndexingLocation) and isinstance(locs["local"].inner, RetryingLocation)
    assert isinstance(locs["local"].inner.inner, LocalLocation)


def test_unknown_or_duplicate_location_is_an_error():
    with pytest.raises(ConfigError, match="unknown storage location.*s3"):
        locations_from_env(None, environ=dict(FULL, TENANT_BACKUP_LOCATIONS="local,s3"))
    with pytest.raises(ConfigError, match="twice"):
        locations_from_env(None, environ=dict(FULL, TENANT_BACKUP_LOCATIONS="local,local"))
    with pytest.raises(ConfigError, match="unknown"):
        locations_from_env(["gcs"], environ=FULL)


def test_full_config_and_retention():
    locs = locations_from_env(None, environ=dict(FULL, TENANT_BACKUP_RETENTION_R2_DAYS="90"))
    assert list(locs) == ["local", "r2", "b2"]
    assert [locs[n].retention_days for n in locs] == [30, 90, 365]
    assert isinstance(locs["r2"].inner.inner, R2Location) and isinstance(locs["b2"].inner.inner, B2Location)
    assert locs["b2"].inner.inner.realm == "production"
    assert (
        locations_from_env(["b2"], environ=dict(FULL, B2_REALM="http://127.0.0.1:9"))["b2"].inner.realm
        == "http://127.0.0.1:9"
    )


@pytest.mark.parametrize(
    "var,value",
    [
        ("TENANT_BACKUP_RETENTION_LOCAL_DAYS", "x"),
        ("TENANT_BACKUP_RETENTION_B2_DAYS", "0"),
        ("TENANT_BACKUP_R2_PART_SIZE_MB", "4"),
    ],
)
def test_malformed_numbers_are_errors(var, value):
    with pytest.raises(ConfigError, match=var):
        locations_from_env(None, environ=dict(FULL, **{var: value}))


def test_configured_locations_work_end_to_end(tmp_path):
    from backup_assets.testing.b2_server import B2Server
    from backup_assets.testing.s3_server import S3Server

    with S3Server() as s3, B2Server() as b2:
        s3.create_bucket("cfg-bucket")
        b2.create_bucket("cfg-bucket")
        env = {
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "R2_ENDPOINT_URL": s3.url,
            "R2_ACCESS_KEY_ID": s3.access_key,
            "R2_SECRET_ACCESS_KEY": s3.secret_key,
            "R2_BUCKET": "cfg-bucket",
            "B2_REALM": b2.url,
            "B2_APPLICATION_KEY_ID": b2.key_id,
            "B2_APPLICATION_KEY": b2.key,
            "B2_BUCKET": "cfg-bucket",
            "TENANT_BACKUP_STORAGE_PREFIX": "ci",
        }
        arch = tmp_path / "a.tbk"
        arch.write_bytes(b"x" * 12345)
        sha, size = sha256_file(arch)
        t = str(uuid.uuid4())
        for name, loc in locations_from_env(None, environ=env).items():
            loc.put(t, "b1", arch, Manifest.from_dict({"archive": {"sha256": sha, "size": size}}))
            assert [(r.location, r.tenant_id) for r in loc.list()] == [(name, t)]
            assert loc.stat(t, "b1").sha256 == sha
            assert "/ci/tenants/" in loc.uri(t, "b1")
