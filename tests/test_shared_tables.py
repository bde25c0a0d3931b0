"""Shared tables are a visible decision (issue: session and secrets).

A global `users` table (no tenant column, no RLS) linked to tenants through `tenant_users`: as is,
it goes whole into every tenant's archive, and the export says so with its row count. With the
recipe of docs/ISOLATION.md#shared-tables (an RLS policy for the backup role that filters through
the link table) the archive holds only the tenant's linked users, and restores into an empty database."""

from __future__ import annotations

import subprocess

import psycopg2
import pytest
from variant_db import variant_db

from backup_assets.core.archive.decrypt import decrypt_to_file
from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.locations import locations_from_env
from backup_assets.core.restore import restore_tenant
from backup_assets.core.settings import SourceSettings
from backup_assets.core.source.pgbin import pg_program

A = "1a1a1a1a-0000-4000-8000-00000000001a"
B = "1b1b1b1b-0000-4000-8000-00000000001b"

SCHEMA = f"""
CREATE TABLE tenants (id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'ACTIVE');
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY registry ON tenants USING (id::text = current_setting('app.current_tenant', true)
                                        OR coalesce(current_setting('app.current_tenant', true), '') = '');
-- people of every tenant, in one table
CREATE TABLE users (id integer PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE tenant_users (tenant_id uuid NOT NULL REFERENCES tenants(id), user_id integer NOT NULL REFERENCES users(id),
                           role text NOT NULL, PRIMARY KEY (tenant_id, user_id));
ALTER TABLE tenant_users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_users USING (tenant_id = current_setting('app.current_tenant', true)::uuid);
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{backup}};
INSERT INTO tenants (id) VALUES ('{A}'), ('{B}');
INSERT INTO users SELECT g, 'person' || g || '@example.com' FROM generate_series(1, 6) g;
-- A: people 1, 2, 3; B: people 3, 4, 5 (3 works for both); 6 belongs to nobody
INSERT INTO tenant_users VALUES ('{A}', 1, 'owner'), ('{A}', 2, 'staff'), ('{A}', 3, 'staff'),
                                ('{B}', 3, 'owner'), ('{B}', 4, 'staff'), ('{B}', 5, 'staff');
"""

# The recipe (docs/ISOLATION.md#shared-tables): the backup role sees the users linked to the tenant
# its session is set to; the application, as the owner, is not affected.
RECIPE = """
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_of_the_tenant ON users FOR SELECT TO {backup}
    USING (EXISTS (SELECT 1 FROM tenant_users tu
                    WHERE tu.user_id = users.id
                      AND tu.tenant_id = current_setting('app.current_tenant')::uuid));
"""


@pytest.fixture
def db(pg_server_dsn):
    with variant_db(pg_server_dsn) as made:
        made.run(SCHEMA)
        yield made


@pytest.fixture(scope="module")
def keyring():
    return Keyring.parse(generate_entry("shared1"))


def _emails(archive, keyring, tmp_path) -> set[str]:
    dump = tmp_path / "users.dump"
    decrypt_to_file(archive, dump, keyring)
    text = subprocess.run(
        [pg_program("pg_restore"), "--data-only", "--table=users", "-f", "-", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {word for line in text.splitlines() for word in line.split("\t") if word.endswith("@example.com")}


def test_a_global_users_table_goes_whole_and_is_warned_about(db, keyring, tmp_path, caplog):
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn})
    manifest = export_tenant(settings, keyring, A, tmp_path / "a.tbk", ExportOptions())
    assert manifest.table_kinds.shared == ["public.users"]
    assert manifest.tables["public.users"] == 6
    warning = next(r.getMessage() for r in caplog.records if "shared tables" in r.getMessage())
    assert "public.users (6 rows)" in warning and "docs/ISOLATION.md#shared-tables" in warning
    assert _emails(tmp_path / "a.tbk", keyring, tmp_path) == {f"person{i}@example.com" for i in range(1, 7)}


def test_the_recipe_keeps_only_the_tenants_people_and_restores(db, keyring, tmp_path, fresh_db):
    db.run(RECIPE)
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn})
    local = locations_from_env(["local"], {"TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local")})
    for tenant, people in ((A, {1, 2, 3}), (B, {3, 4, 5})):
        archive = tmp_path / f"{tenant}.tbk"
        manifest = export_tenant(settings, keyring, tenant, archive, ExportOptions(check_rows=True))
        assert manifest.table_kinds.shared == []
        assert "public.users" in manifest.table_kinds.rls_child
        assert manifest.tables["public.users"] == len(people)
        assert _emails(archive, keyring, tmp_path) == {f"person{i}@example.com" for i in people}
        local["local"].put(tenant, manifest.backup_id, archive, manifest)

    target = fresh_db("shared_restore")
    result = restore_tenant(A, locations=local, location="local", target_dsn=target, keyring=keyring)
    assert {t: o.inserted for t, o in result.tables.items()} == {
        "public.tenants": 1,
        "public.users": 3,
        "public.tenant_users": 3,
    }
    conn = psycopg2.connect(target)
    try:
        with conn.cursor() as cur:  # the foreign keys hold: every linked user came along
            cur.execute("SELECT count(*) FROM tenant_users tu JOIN users u ON u.id = tu.user_id")
            assert cur.fetchone()[0] == 3
            cur.execute("SELECT count(*) FROM users WHERE email = 'person4@example.com'")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()
