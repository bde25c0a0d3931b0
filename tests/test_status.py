"""Staleness is reported by name (issue: weekly run): `tenant-backup status` from the locations alone,
and the STALE_BACKUP alert of the Dagster sensor, for every tenant the registry returns."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import CLI
from dagster import build_sensor_context, instance_for_test

from backup_assets.core.archive.manifest import Manifest
from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.maintenance import alerts
from backup_assets.core.maintenance.catalog import CatalogEntry
from backup_assets.core.maintenance.status import decide
from backup_assets.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def _entry(tenant, location, days_old, *, sha="ab" * 32, backup=None):
    created = (NOW - timedelta(days=days_old)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    backup = backup or (NOW - timedelta(days=days_old)).strftime("%Y%m%dT%H%M%SZ") + "-00000000"
    manifest = Manifest.from_dict({"created_at": created, "archive": {"sha256": sha}})
    return CatalogEntry(tenant, backup, created, {location: manifest})


def test_decide_names_each_stale_missing_and_unknown_copy():
    entries = [_entry("t1", "local", 1), _entry("t1", "r2", 9), _entry("t1", "r2", 2.5), _entry("t2", "local", 10)]
    records = {
        ("local", "t1", entries[0].backup_id): {
            "sha256": "ab" * 32,
            "ok": True,
            "deep": True,
            "verified_at": "2026-12-05T12:00:00+00:00",
        },
        ("r2", "t1", entries[2].backup_id): {"sha256": "cd" * 32, "ok": True},
    }  # other bytes: not this copy
    report = decide(
        ["t1", "t2", "t3"],
        ["local", "r2", "b2"],
        entries,
        now=NOW,
        max_age_days=8,
        unreadable={"b2": "connection refused"},
        verifications=records,
    )
    state = {(c.tenant_id, c.location): c for c in report.copies}
    assert state[("t1", "local")].state == "ok" and state[("t1", "local")].verified == "ok"
    assert state[("t1", "r2")].state == "ok" and state[("t1", "r2")].age_days == 2.5  # the newest one counts
    assert state[("t1", "r2")].verified == "never"
    assert state[("t2", "local")].state == "stale" and "10.0 days old" in state[("t2", "local")].reason
    assert state[("t2", "r2")].state == "stale" and state[("t3", "local")].state == "stale"
    assert {c.state for c in report.copies if c.location == "b2"} == {"unknown"}
    line = report.stale_line()
    assert "t2@local" in line and "t2@r2" in line and "t3@local" in line and "t1@" not in line


def _cli(args, env, cwd):
    return CLI.run(args, env, cwd)


@pytest.fixture
def env(sample_db, tmp_path):
    return {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": generate_entry("st1"),
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
    }


def test_status_names_a_tenant_without_a_recent_backup_until_it_has_one(env, sample_tenants, tmp_path):
    active = sorted(t.id for t in sample_tenants if t.status == "ACTIVE")
    first, *rest = active
    before = _cli(["status"], env, tmp_path)
    assert before.returncode == 1
    assert all(f"{t}@local" in before.stderr for t in active) and "Traceback" not in before.stderr

    done = _cli(["backup", *[arg for t in rest for arg in ("--tenant", t)], "--workers", "1"], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    partial = _cli(["status", "--json"], env, tmp_path)
    assert partial.returncode == 1
    report = json.loads(partial.stdout)
    by_tenant = {c["tenant_id"]: c for c in report["copies"]}
    assert by_tenant[first]["state"] == "stale" and f"{first}@local" in partial.stderr
    for tenant in rest:  # the backup's copy checks recorded their verification beside the copy
        assert by_tenant[tenant]["state"] == "ok" and by_tenant[tenant]["verified"] == "ok"
        assert by_tenant[tenant]["verified_deep"] is True
    assert set(report["tenants"]) == set(active)  # the registry's active tenants, the suspended one not

    assert _cli(["backup", "--tenant", first, "--workers", "1"], env, tmp_path).returncode == 0
    after = _cli(["status"], env, tmp_path)
    assert after.returncode == 0, after.stderr
    assert all(t in after.stdout for t in active)
    aged = _cli(["status", "--max-age", "0.000001"], env, tmp_path)  # everything is older than that
    assert aged.returncode == 1 and all(f"{t}@local" in aged.stderr for t in active)
    bad = _cli(["status", "--max-age", "-1"], env, tmp_path)
    assert bad.returncode == 2 and "--max-age" in bad.stderr


def test_the_sensor_raises_stale_backup_once_per_stale_copy(env, sample_tenants, tmp_path):
    from backup_assets.defs.build import build_definitions

    active = sorted(t.id for t in sample_tenants if t.status == "ACTIVE")
    settings = Settings.from_env(env)
    with instance_for_test() as instance:
        defs = build_definitions(settings)
        sensor = defs.resolve_sensor_def("stale_backup_alerts")
        resources = {"backup": defs.resources["backup"]}
        context = build_sensor_context(instance=instance, resources=resources)
        first = sensor(context)
        raised = [a for a in alerts.read_alerts(settings) if a["kind"] == alerts.STALE_BACKUP]
        assert sorted(a["tenant_id"] for a in raised) == active
        assert all(a["location"] == "local" and "no complete backup" in a["message"] for a in raised)
        again = sensor(build_sensor_context(instance=instance, resources=resources, cursor=first.cursor))
        assert len([a for a in alerts.read_alerts(settings) if a["kind"] == alerts.STALE_BACKUP]) == len(active)
        assert again.cursor == first.cursor  # the same stale copies: not alerted twice in a row
