"""Secrets handled like the field's best tools (issue: session and secrets): no secret of ours in a
PostgreSQL child's environment, the keyring from an owner-only file, passwords kept off command
lines, and no password or key in any log, manifest, alert, Dagster record or error message."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

import psycopg2
import pytest
from conftest import CLI

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.embedded_pg import default_data_root, dsn_for
from backup_assets.core.source.pgbin import pg_bin_dir
from backup_assets.testing.b2_server import B2Server
from backup_assets.testing.s3_server import S3Server

ROOT = Path(__file__).resolve().parent.parent
AWS_CANARY = "aws-secret-canary-" + secrets.token_hex(6)
OUR_PREFIXES = ("TENANT_BACKUP_", "R2_", "B2_", "AWS_")


def _cli(args, env: dict, cwd: Path, timeout: int = 300):
    return CLI.run(args, env, cwd, timeout=timeout, without=("PG", "AWS_"))


@pytest.fixture(scope="module")
def servers():
    with S3Server() as s3, B2Server() as b2:
        s3.create_bucket("sec")
        b2.create_bucket("sec")
        yield s3, b2


def _storage_env(s3, b2, tmp_path: Path) -> dict:
    return {
        "TENANT_BACKUP_LOCATIONS": "local,r2,b2",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "R2_ENDPOINT_URL": s3.url,
        "R2_ACCESS_KEY_ID": s3.access_key or "testing",
        "R2_SECRET_ACCESS_KEY": s3.secret_key,
        "R2_BUCKET": "sec",
        "B2_APPLICATION_KEY_ID": b2.key_id,
        "B2_APPLICATION_KEY": b2.key,
        "B2_BUCKET": "sec",
        "B2_REALM": b2.url,
        "AWS_SECRET_ACCESS_KEY": AWS_CANARY,
        "AWS_SESSION_TOKEN": AWS_CANARY + "-token",
        "TENANT_BACKUP_RETRIES": "0",
    }


# --------------------------------------------------------------------------- child environments


def _recording_bin(tmp_path: Path) -> tuple[Path, Path]:
    """TENANT_BACKUP_PG_BIN of wrappers that record their environment, then run the real program."""
    real, wrappers, records = pg_bin_dir(), tmp_path / "pgbin", tmp_path / "records"
    wrappers.mkdir()
    records.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        script = wrappers / name
        script.write_text(f'#!/bin/sh\nenv > "{records}/{name}.$$.env"\nexec "{real}/{name}" "$@"\n')
        script.chmod(0o755)
    return wrappers, records


def test_no_secret_of_ours_reaches_a_postgres_child(sample_db, sample_tenants, servers, tmp_path, fresh_db):
    s3, b2 = servers
    wrappers, records = _recording_bin(tmp_path)
    keys = generate_entry("sec1")
    tenant = next(t for t in sample_tenants if t.status == "ACTIVE").id
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": keys,
        "TENANT_BACKUP_PG_BIN": str(wrappers),
        "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        **_storage_env(s3, b2, tmp_path),
    }
    (tmp_path / "dagster").mkdir()
    steps = [
        ["export", "--tenant", tenant, "--out", str(tmp_path / "t.tbk")],
        ["backup", "--tenant", tenant, "--workers", "1"],  # archive, three locations, drill and copy checks
        ["verify", "--tenant", tenant, "--location", "all", "--deep"],
        ["restore", "--tenant", tenant, "--location", "r2", "--target-dsn", fresh_db("sec_target")],
    ]
    for args in steps:
        result = _cli(args, env, tmp_path)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    secret_values = [keys.split(":", 1)[1], s3.secret_key, b2.key, AWS_CANARY]
    seen: dict[str, int] = {}
    for record in records.iterdir():
        program = record.name.split(".")[0]
        seen[program] = seen.get(program, 0) + 1
        text = record.read_text()
        names = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
        assert not {n for n in names if n.startswith(OUR_PREFIXES)}, (record.name, names)
        for value in secret_values:
            assert value not in text, record.name
        assert not {n for n in names if n in ("PGOPTIONS", "PGSERVICE", "PYTHONPATH", "DAGSTER_HOME")}
    # Not vacuous: pg_dump ran for the export and the backup; pg_restore for the drill, every copy
    # check, the deep verify of three copies and the restore.
    assert seen.get("pg_dump", 0) >= 2 and seen.get("pg_restore", 0) >= 8, seen


def test_the_embedded_scratch_server_gets_no_secret_and_stops_once_idle(monkeypatch):
    """The restore drills' default server: started with an environment from scratch, shared by the
    processes of one work directory, stopped by its keeper once nobody uses it."""
    from backup_assets.core.checks.scratch import embedded_scratch_dsn

    canary = "scratch-canary-" + secrets.token_hex(4)
    monkeypatch.setenv("TENANT_BACKUP_KEYS", canary)
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", canary)
    work = default_data_root() / "work"  # not under pytest's basetemp: the server runs as another user
    try:
        dsn = embedded_scratch_dsn(work, idle_s=2)
        assert embedded_scratch_dsn(work, idle_s=2) == dsn  # the running one is shared
        conn = psycopg2.connect(dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        pid = int((work / "scratch-pg" / "postmaster.pid").read_text().split()[0])
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        assert canary not in environ and "TENANT_BACKUP_" not in environ and "R2_" not in environ
        time.sleep(4)
        assert Path(f"/proc/{pid}").exists()  # a connected client keeps it up
        conn.close()
        for _ in range(40):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.5)
        assert not Path(f"/proc/{pid}").exists(), "the idle scratch server was not stopped"
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)


# --------------------------------------------------------------------------------- the key file


def test_keyring_from_an_owner_only_file(sample_db, sample_tenants, tmp_path):
    tenant = next(t for t in sample_tenants if t.status == "ACTIVE").id
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-12\n{generate_entry('new')}\n{generate_entry('old')}\n")
    key_file.chmod(0o600)
    env = {"TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn, "TENANT_BACKUP_KEYS_FILE": str(key_file)}
    done = _cli(["export", "--tenant", tenant, "--out", str(tmp_path / "a.tbk")], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["archive"]["key_id"] == "new"
    decrypted = _cli(["decrypt", str(tmp_path / "a.tbk"), "--out", str(tmp_path / "a.dump")], env, tmp_path)
    assert decrypted.returncode == 0, decrypted.stderr

    key_file.chmod(0o644)
    refused = _cli(["export", "--tenant", tenant, "--out", str(tmp_path / "b.tbk")], env, tmp_path)
    assert refused.returncode == 2 and "readable or writable by group or others" in refused.stderr
    assert "chmod 600" in refused.stderr and not (tmp_path / "b.tbk").exists()
    key_file.chmod(0o600)
    both = _cli(
        ["export", "--tenant", tenant, "--out", str(tmp_path / "c.tbk")],
        {**env, "TENANT_BACKUP_KEYS": generate_entry("x")},
        tmp_path,
    )
    assert both.returncode == 2 and "keep one" in both.stderr


# ------------------------------------------------------------------------- passwords and greps


@pytest.fixture
def password_roles(pg_server_dsn, sample_db):
    """Two roles that must give a password (scram-sha-256 in pg_hba.conf): a backup role like the
    sample's, and a restore target owner. Yields (backup role, its password, target role, password)."""
    conn = psycopg2.connect(pg_server_dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SHOW hba_file")
    hba = Path(cur.fetchone()[0])
    if not os.access(hba, os.W_OK):
        conn.close()
        pytest.skip("pg_hba.conf of the test server is not writable here")
    tag = secrets.token_hex(3)
    backup_role, target_role = f"tb_pw_backup_{tag}", f"tb_pw_target_{tag}"
    backup_pw, target_pw = "pw-canary-" + secrets.token_hex(8), "pw-canary-" + secrets.token_hex(8)
    original = hba.read_text()
    hba.write_text(f"local all {backup_role},{target_role} scram-sha-256\n" + original)
    cur.execute("SELECT pg_reload_conf()")
    cur.execute(f"CREATE ROLE {backup_role} LOGIN PASSWORD %s IN ROLE tenant_backup", (backup_pw,))
    cur.execute(f"CREATE ROLE {target_role} LOGIN CREATEDB PASSWORD %s", (target_pw,))
    try:
        yield backup_role, backup_pw, target_role, target_pw
    finally:
        hba.write_text(original)
        cur.execute("SELECT pg_reload_conf()")
        for db in _databases_owned(cur, target_role):
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        cur.execute(f"DROP ROLE IF EXISTS {backup_role}")
        cur.execute(f"DROP ROLE IF EXISTS {target_role}")
        conn.close()


def _databases_owned(cur, role: str) -> list[str]:
    cur.execute("SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = %s", (role,))
    return [r[0] for r in cur.fetchall()]


def _grep_tree(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n[:14]}…" for n in needles if n.encode() in data]
    return hits


def test_no_password_or_key_in_logs_manifests_alerts_dagster_or_errors(
    sample_db, sample_tenants, servers, tmp_path, pg_server_dsn, password_roles
):
    s3, b2 = servers
    backup_role, backup_pw, target_role, target_pw = password_roles
    tenant = next(t for t in sample_tenants if t.status == "ACTIVE").id
    keys = generate_entry("grep1")
    source = dsn_for(sample_db.backup_dsn, user=backup_role, password=backup_pw)
    env = {
        "TENANT_BACKUP_SOURCE_DSN": source,
        "TENANT_BACKUP_KEYS": keys,
        "TENANT_BACKUP_SCRATCH_DSN": sample_db.admin_dsn,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "TENANT_BACKUP_ALERT_WEBHOOK": "",
        **_storage_env(s3, b2, tmp_path),
    }
    (tmp_path / "dagster").mkdir()
    outputs = []

    def run(args, extra=None, expect=0):
        result = _cli(args, {**env, **(extra or {})}, tmp_path)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == expect, (args, result.stdout[-1500:], result.stderr[-1500:])
        return result

    run(["export", "--tenant", tenant, "--out", str(tmp_path / "t.tbk")])
    run(["backup", "--tenant", tenant, "--workers", "1"])
    s3.faults.set(flip=1, match=".tbk")  # the R2 copy check reads a flipped byte: an INTEGRITY_FAILURE alert
    run(["backup", "--tenant", tenant, "--workers", "1"], expect=1)
    s3.faults.clear()
    run(["verify", "--tenant", tenant, "--location", "all", "--deep"])
    run(["list", "--json"])
    # A copy flipped in the local location: the verify fails and says so, without a secret.
    archive = max((tmp_path / "local").rglob("archive-*.tbk"), key=lambda p: p.parent.name)  # the newest backup
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    archive.write_bytes(bytes(data))
    run(["verify", "--tenant", tenant, "--location", "local", "--deep"], expect=1)
    # A wrong password: the error names the role and the database, never the password tried.
    wrong = "pw-canary-wrong-" + secrets.token_hex(6)
    failed = run(
        ["export", "--tenant", tenant, "--out", str(tmp_path / "x.tbk")],
        {"TENANT_BACKUP_SOURCE_DSN": dsn_for(sample_db.backup_dsn, user=backup_role, password=wrong)},
        expect=7,
    )
    assert "password authentication failed" in failed.stderr and wrong not in failed.stderr

    # The restore target's password: from a variable named on the command line, from PGPASSFILE, and
    # (warned about) in the DSN itself.
    conn = psycopg2.connect(pg_server_dsn)
    conn.autocommit = True
    names = [f"sec_{secrets.token_hex(3)}" for _ in range(3)]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f'CREATE DATABASE "{name}" OWNER {target_role}')
    conn.close()
    bare = [dsn_for(pg_server_dsn, user=target_role, dbname=name) for name in names]
    without = run(["restore", "--tenant", tenant, "--location", "r2", "--target-dsn", bare[0]], expect=7)
    assert "no password supplied" in without.stderr or "password authentication failed" in without.stderr
    by_variable = run(
        [
            "restore",
            "--tenant",
            tenant,
            "--location",
            "r2",
            "--target-dsn",
            bare[0],
            "--target-password-env",
            "RESTORE_PW",
        ],
        {"RESTORE_PW": target_pw},
    )
    assert "warning" not in by_variable.stderr
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{target_role}:{target_pw}\n")
    passfile.chmod(0o600)
    run(["restore", "--tenant", tenant, "--location", "b2", "--target-dsn", bare[1]], {"PGPASSFILE": str(passfile)})
    inline = run(
        ["restore", "--tenant", tenant, "--location", "r2", "--target-dsn", dsn_for(bare[2], password=target_pw)]
    )
    assert "holds a password" in inline.stderr

    needles = [backup_pw, target_pw, wrong, keys.split(":", 1)[1], s3.secret_key, b2.key, AWS_CANARY]
    for index, text in enumerate(outputs):
        leaked = [n[:14] for n in needles if n in text]
        assert not leaked, (index, leaked)
    # Manifests and archives' metadata in every location, staging, alerts, Dagster's own records.
    assert _grep_tree(tmp_path / "local", needles) == []
    assert _grep_tree(tmp_path / "work", needles) == []
    assert _grep_tree(tmp_path / "dagster", needles) == []
    assert list((tmp_path / "dagster").rglob("*.db")), "no Dagster records were greped"
    assert "INTEGRITY_FAILURE" in (tmp_path / "work" / "alerts.jsonl").read_text()  # greped above, not empty
    for loc_name in ("r2", "b2"):
        from backup_assets.core.locations import locations_from_env

        loc = locations_from_env([loc_name], env)[loc_name]
        for ref in loc.list():
            text = loc.get_manifest(ref.tenant_id, ref.backup_id).to_json()
            assert not [n for n in needles if n in text], loc_name
