"""A backup a location should hold by its retention but does not is a failure of `verify --all` and
`status` naming the location and `tenant-backup rebuild --location L` as the fix (issue 24, item 5):
the rule itself (core/maintenance/catalog.py missing_copies, fed listings alone), and the commands
against a local directory and the loopback S3 server (R2) with real archives."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from conftest import CLI
from test_verify_all import KEYS, small_archive

from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.locations import locations_from_env
from backup_assets.core.maintenance.catalog import missing_copies
from backup_assets.testing.s3_server import S3Server

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
RETENTION = {"local": 30, "r2": 365, "b2": 365}


def bid(days: float) -> str:
    return new_backup_id(NOW - timedelta(days=days))


def test_the_rule():
    t1, t2 = "tenant-1", "tenant-2"
    a, b, c, d, e, first_b2 = bid(2), bid(40), bid(20), bid(5), bid(0.01), bid(10)
    listings = {
        "local": [(t1, a), (t1, c), (t2, d), (t1, e)],
        "r2": [(t1, a), (t1, b), (t1, c), (t2, d), (t2, "not-a-dated-id")],
        "b2": [(t2, first_b2)],  # b2's oldest backup is 10 days old: it was added then
    }
    found = missing_copies(listings, RETENTION, now=NOW)
    assert [(m.location, m.tenant_id, m.backup_id) for m in found] == [
        ("b2", t1, a),  # 2 and 5 days old: b2 held backups then, and keeps them a year
        ("b2", t2, d),
        ("local", t2, first_b2),  # 10 days old, in b2 alone: local keeps 30 days, r2 a year
        ("r2", t2, first_b2),
    ]
    # Not flagged: c (20 days) predates b2's first backup (b2 was not configured then); b (40 days)
    # is past local's 30-day retention; e (minutes old) may still be on its way; an undated id.
    assert not {m.backup_id for m in found} & {b, c, e, "not-a-dated-id"}
    m = found[0]
    assert m.fix == "tenant-backup rebuild --location b2"
    assert "b2" in m.message and m.fix in m.message and "local, r2" in m.message
    assert m.as_dict()["held_by"] == ["local", "r2"] and m.as_dict()["fix"] == m.fix
    assert [m.tenant_id for m in missing_copies(listings, RETENTION, now=NOW, tenants=[t1])] == [t1]
    # A location left out (it could not be listed) is judged nowhere and holds nothing for the others.
    del listings["b2"]
    assert missing_copies(listings, RETENTION, now=NOW) == []
    # An empty location judges nothing (status calls it stale).
    assert missing_copies({**listings, "b2": []}, RETENTION, now=NOW) == []


@pytest.fixture
def stored(tmp_path, sample_db, sample_tenants):
    """Two backups of each of two registry tenants, in local and R2; then one R2 copy lost (what a
    backup killed during its R2 upload leaves)."""
    tenants = [t.id for t in sample_tenants if t.status == "ACTIVE"][:2]
    with S3Server() as s3:
        bucket = "missing-copies"
        s3.create_bucket(bucket)
        env = {
            "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
            "TENANT_BACKUP_KEYS": KEYS,
            "TENANT_BACKUP_LOCATIONS": "local,r2",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "R2_ENDPOINT_URL": s3.url,
            "R2_ACCESS_KEY_ID": s3.access_key or "testing",
            "R2_SECRET_ACCESS_KEY": s3.secret_key,
            "R2_BUCKET": bucket,
            "TENANT_BACKUP_STORAGE_ATTEMPTS": "1",
        }
        locs = locations_from_env(None, env)
        now = datetime.now(timezone.utc)
        backups = []
        for tenant in tenants:
            for age in (1, 3):
                path, manifest = small_archive(tmp_path, tenant, now - timedelta(days=age))
                for loc in locs.values():
                    loc.put(tenant, manifest["backup_id"], path, Manifest.from_dict(manifest))
                backups.append((tenant, manifest["backup_id"]))
        lost = backups[0]
        locs["r2"].delete(*lost)
        yield env, locs, lost


def test_verify_all_and_status_name_the_missing_copy_and_rebuild_puts_it_back(stored):
    env, locs, (tenant, backup) = stored

    result = CLI.run(["verify", "--all"], env)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tenant-backup: error:")]
    assert len(errors) == 1 and f"r2/{tenant}/{backup}" in errors[0], result.stderr
    assert "tenant-backup rebuild --location r2" in errors[0]
    assert "MISSING" in result.stdout and "tenant-backup rebuild --location r2" in result.stdout

    document = json.loads(CLI.run(["verify", "--all", "--json"], env).stdout)
    assert document["failed"] == 0 and document["checked"] == 7  # every stored copy is fine...
    [missing] = document["missing"]  # ...but one is not stored
    assert (missing["location"], missing["tenant_id"], missing["backup_id"]) == ("r2", tenant, backup)
    assert missing["held_by"] == ["local"] and missing["fix"] == "tenant-backup rebuild --location r2"

    status = CLI.run(["status"], env)
    assert status.returncode == 1, status.stderr
    assert any(
        line.startswith("tenant-backup: error: r2:") and backup in line and "rebuild --location r2" in line
        for line in status.stderr.splitlines()
    ), status.stderr
    report = json.loads(CLI.run(["status", "--json"], env).stdout)
    assert [(m["location"], m["tenant_id"], m["backup_id"]) for m in report["missing"]] == [("r2", tenant, backup)]
    # Staleness alone would not say it: in r2 that tenant still has a backup younger than the max age.
    assert [c["state"] for c in report["copies"] if c["tenant_id"] == tenant] == ["ok", "ok"]

    rebuilt = CLI.run(["rebuild", "--location", "r2"], env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert CLI.run(["verify", "--all"], env).returncode == 0
    assert json.loads(CLI.run(["status", "--json"], env).stdout)["missing"] == []


def test_backup_time_reads_what_strptime_read():
    """The sliced parser (status judges every backup an index holds) against the strptime it replaced."""
    from datetime import datetime, timezone

    from backup_assets.core.maintenance.catalog import backup_time

    def by_strptime(backup_id: str):
        try:
            return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return None

    ids = [
        "20260101T030000Z",
        "20261206T235959Z-0000abcd",
        "20240229T120000Z",
        "20260229T120000Z",  # no such day
        "20261301T030000Z",
        "20260101T250000Z",
        "20260101T030060Z",
        "20260101T030000X-1",
        "20260101-030000Z",
        "2026010aT030000Z",
        "manual-1",
        "b1",
    ]
    for backup_id in ids:
        assert backup_time(backup_id) == by_strptime(backup_id), backup_id
    assert backup_time("20261206T235959Z-0000abcd") == datetime(2026, 12, 6, 23, 59, 59, tzinfo=timezone.utc)
