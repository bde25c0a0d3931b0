"""The `tenant-backup` command as a user runs it: exit codes, one-line errors, nothing written on failure."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import EXIT

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.source.pgbin import pg_program


@pytest.fixture
def env(sample_db, keys):
    return {"TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn, "TENANT_BACKUP_KEYS": keys}


@pytest.fixture
def active(sample_tenants):
    return next(t for t in sample_tenants if t.status == "ACTIVE")


def test_export_then_decrypt_gives_a_pg_restore_readable_dump(cli, env, active, tmp_path):
    result = cli.run(["export", "--tenant", active.id, "--out", "a.tbk"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["tenant_id"] == active.id and (tmp_path / "a.tbk").stat().st_size == manifest["archive"]["size"]
    result = cli.run(["decrypt", "a.tbk", "--out", "a.dump", "--sha256", manifest["archive"]["sha256"]], env, tmp_path)
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(
        [pg_program("pg_restore"), "--list", str(tmp_path / "a.dump")], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE DATA public sales" in listing


@pytest.mark.parametrize(
    "bad",
    ["not-a-uuid", "x'; DROP TABLE tenants; --", "../../etc/passwd", "00000000-0000-4000-8000-000000000000/..", ""],
)
def test_invalid_tenant_ids_are_rejected_before_use(cli, env, tmp_path, bad):
    result = cli.run(["export", "--tenant", bad, "--out", "x.tbk"], env, tmp_path)
    assert "invalid tenant id" in cli.error(result, EXIT["config"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "entry, expected",
    [
        (None, "TENANT_BACKUP_KEYS"),
        ("", "TENANT_BACKUP_KEYS"),
        ("k1:not-base64!!", "TENANT_BACKUP_KEYS"),
        ("k1:c2hvcnQ=", "TENANT_BACKUP_KEYS"),
    ],
)
def test_missing_or_malformed_keyring(cli, env, active, tmp_path, entry, expected):
    env = dict(env)
    if entry is None:
        env.pop("TENANT_BACKUP_KEYS")
    else:
        env["TENANT_BACKUP_KEYS"] = entry
    result = cli.run(["export", "--tenant", active.id, "--out", "x.tbk"], env, tmp_path)
    line = cli.error(result, EXIT["config"])
    assert expected in line
    assert "c2hvcnQ" not in line  # key material is never echoed
    assert list(tmp_path.iterdir()) == []


def test_unreachable_database(cli, keys, active, tmp_path):
    env = {
        "TENANT_BACKUP_SOURCE_DSN": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
        "TENANT_BACKUP_KEYS": keys,
    }
    line = cli.error(cli.run(["export", "--tenant", active.id, "--out", "x.tbk"], env, tmp_path), EXIT["unreachable"])
    assert "cannot connect" in line and "127.0.0.1" in line
    assert list(tmp_path.iterdir()) == []


def test_output_in_a_missing_directory(cli, env, active, tmp_path):
    line = cli.error(cli.run(["export", "--tenant", active.id, "--out", "nope/x.tbk"], env, tmp_path), EXIT["storage"])
    assert "does not exist" in line


def test_suspended_tenant_needs_force(cli, env, sample_tenants, tmp_path):
    suspended = next(t for t in sample_tenants if t.status == "SUSPENDED")
    line = cli.error(
        cli.run(["export", "--tenant", suspended.id, "--out", "s.tbk"], env, tmp_path), EXIT["unknown tenant"]
    )
    assert "--force" in line
    result = cli.run(["export", "--tenant", suspended.id, "--out", "s.tbk", "--force"], env, tmp_path)
    assert result.returncode == 0, result.stderr


def test_decrypt_with_the_wrong_key_writes_nothing(cli, keyring, env, active, tmp_path):
    assert cli.run(["export", "--tenant", active.id, "--out", "a.tbk"], env, tmp_path).returncode == 0
    other = dict(env, TENANT_BACKUP_KEYS=generate_entry("other"))
    line = cli.error(cli.run(["decrypt", "a.tbk", "--out", "a.dump"], other, tmp_path), EXIT["archive"])
    assert keyring.active.id in line  # names the key id it needs
    assert not (tmp_path / "a.dump").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tbk"]


def test_keys_generate_prints_a_usable_entry(cli, tmp_path):
    result = cli.run(["keys", "generate", "--id", "k2026"], {}, tmp_path)
    assert result.returncode == 0
    entry = result.stdout.strip()
    assert entry.startswith("k2026:")
    from backup_assets.core.codec.keyring import Keyring

    assert Keyring.parse(entry).active.id == "k2026"
