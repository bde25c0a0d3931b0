"""The isolation proof is about the session pg_dump really used (issue: session and secrets).

A database as real applications ship them: besides the tenant policy, a second permissive policy
read from a setting (`app.bypass_rls`). An inherited PGOPTIONS / PGSERVICE that would switch it on
cannot produce a leaky archive, and a policy under which pg_dump's session sees other rows than the
proof's is refused by the export itself, before any location sees the archive."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import CLI
from variant_db import variant_db

from backup_assets.core.archive.decrypt import decrypt_to_file
from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.errors import SafetyCheckFailed
from backup_assets.core.locations import locations_from_env
from backup_assets.core.settings import SourceSettings
from backup_assets.core.source.pgbin import pg_program
from backup_assets.core.source.session import PgSession
from backup_assets.testing.b2_server import B2Server
from backup_assets.testing.s3_server import S3Server

ROOT = Path(__file__).resolve().parent.parent
A = "0a0a0a0a-0000-4000-8000-00000000000a"
B = "0b0b0b0b-0000-4000-8000-00000000000b"
A_ROWS, B_ROWS = 5, 7

SCHEMA = f"""
CREATE TABLE tenants (id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'ACTIVE');
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY registry ON tenants USING (id::text = current_setting('app.current_tenant', true)
                                        OR coalesce(current_setting('app.current_tenant', true), '') = '');
CREATE TABLE orders (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES tenants(id), item text NOT NULL);
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON orders USING (tenant_id = current_setting('app.current_tenant', true)::uuid);
-- what real applications ship: a second permissive policy, switched on by a setting
CREATE POLICY bypass_rls_policy ON orders USING (current_setting('app.bypass_rls', true) = 'on');
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{backup}};
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {{backup}};
INSERT INTO tenants (id) VALUES ('{A}'), ('{B}');
INSERT INTO orders (tenant_id, item) SELECT '{A}', 'item-of-a-' || g FROM generate_series(1, {A_ROWS}) g;
INSERT INTO orders (tenant_id, item) SELECT '{B}', 'item-of-b-' || g FROM generate_series(1, {B_ROWS}) g;
"""
# pg_dump sets synchronize_seqscans to off in its own session: under this policy pg_dump's session
# sees every row while any other session sees its tenant's only.
SESSION_DIFFERENCE = (
    "CREATE POLICY differs_between_sessions ON orders FOR SELECT"
    " USING (current_setting('synchronize_seqscans') = 'off')"
)


@pytest.fixture
def db(pg_server_dsn):
    with variant_db(pg_server_dsn) as made:
        made.run(SCHEMA)
        yield made


@pytest.fixture(scope="module")
def keys() -> str:
    return generate_entry("iso1")


def _data_text(archive: Path, keys: str, tmp_path: Path) -> str:
    dump = tmp_path / "out.dump"
    decrypt_to_file(archive, dump, Keyring.parse(keys))
    return subprocess.run(
        [pg_program("pg_restore"), "--data-only", "-f", "-", str(dump)], capture_output=True, text=True, check=True
    ).stdout


def _cli(args, env, cwd):
    return CLI.run(args, env, cwd, without=("PG",))


def test_control_an_inherited_pgoptions_turns_the_bypass_on_for_a_plain_pg_dump(db, tmp_path):
    """The trap is real: pg_dump run with the inherited environment dumps every tenant's rows."""
    env = {
        **PgSession.from_dsn(db.backup_dsn).child_env(),
        "PGOPTIONS": f"-c app.current_tenant={A} -c app.bypass_rls=on",
    }
    dump = subprocess.run(
        [pg_program("pg_dump"), "-Fc", "-Z0", "--enable-row-security", f"--dbname={db.backup_dsn}"],
        capture_output=True,
        env=env,
        check=True,
    ).stdout
    text = subprocess.run(
        [pg_program("pg_restore"), "--data-only", "-f", "-"], input=dump, capture_output=True, check=True
    ).stdout.decode()
    assert "item-of-b-" in text


@pytest.mark.parametrize("variable", ["PGOPTIONS", "PGSERVICE"])
def test_export_ignores_an_inherited_session_variable(db, keys, tmp_path, variable):
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(f"[bypass]\noptions=-c app.bypass_rls=on -c app.current_tenant={B}\n")
    inherited = (
        {"PGOPTIONS": "-c app.bypass_rls=on"}
        if variable == "PGOPTIONS"
        else {"PGSERVICE": "bypass", "PGSERVICEFILE": str(service_file)}
    )
    archive = tmp_path / "a.tbk"
    result = _cli(
        ["export", "--tenant", A, "--out", str(archive)],
        {"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn, "TENANT_BACKUP_KEYS": keys, **inherited},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"{variable} is set in the environment and ignored" in result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["tables"]["public.orders"] == A_ROWS
    assert manifest["isolation"]["dump_rows_counted"] == A_ROWS + 1  # the orders and the registry row
    text = _data_text(archive, keys, tmp_path)
    assert text.count("item-of-a-") == A_ROWS and "item-of-b-" not in text and B not in text


def test_a_policy_under_which_pg_dump_sees_more_is_refused_by_the_export(db, keys, tmp_path):
    db.run(SESSION_DIFFERENCE)
    out = tmp_path / "a.tbk"
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn})
    with pytest.raises(
        SafetyCheckFailed, match=rf"public\.orders: {A_ROWS + B_ROWS} rows in the dump, {A_ROWS} of this tenant"
    ):
        export_tenant(settings, Keyring.parse(keys), A, out, ExportOptions())
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_a_permissive_policy_letting_rows_through_is_refused(db, keys, tmp_path):
    db.run("CREATE POLICY everyone ON orders FOR SELECT USING (true)")
    result = _cli(
        ["export", "--tenant", A, "--out", str(tmp_path / "a.tbk"), "--check-rows"],
        {"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn, "TENANT_BACKUP_KEYS": keys},
        tmp_path,
    )
    assert result.returncode == 4 and "public.orders" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a.tbk").exists()


def test_backup_refuses_it_before_any_location_sees_the_archive(db, keys, tmp_path):
    db.run(SESSION_DIFFERENCE)
    with S3Server() as s3, B2Server() as b2:
        s3.create_bucket("iso")
        b2.create_bucket("iso")
        env = {
            "DAGSTER_HOME": str(tmp_path / "dagster"),
            "TENANT_BACKUP_SOURCE_DSN": db.backup_dsn,
            "TENANT_BACKUP_KEYS": keys,
            "TENANT_BACKUP_LOCATIONS": "local,r2,b2",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "TENANT_BACKUP_SCRATCH_DSN": db.admin_dsn,
            "R2_ENDPOINT_URL": s3.url,
            "R2_ACCESS_KEY_ID": s3.access_key or "testing",
            "R2_SECRET_ACCESS_KEY": s3.secret_key,
            "R2_BUCKET": "iso",
            "B2_APPLICATION_KEY_ID": b2.key_id,
            "B2_APPLICATION_KEY": b2.key,
            "B2_BUCKET": "iso",
            "B2_REALM": b2.url,
            "TENANT_BACKUP_RETRIES": "0",
        }
        (tmp_path / "dagster").mkdir()
        result = _cli(["backup", "--tenant", A, "--workers", "1"], env, tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "isolation check failed" in result.stdout + result.stderr
        locations = locations_from_env(["local", "r2", "b2"], env)
        assert {name: loc.list() for name, loc in locations.items()} == {"local": [], "r2": [], "b2": []}
    staged = list((tmp_path / "work" / "staging").rglob("*.tbk")) if (tmp_path / "work" / "staging").exists() else []
    assert staged == []  # not even staged for a re-run of one location
