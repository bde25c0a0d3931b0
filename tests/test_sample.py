"""The sample database and the embedded-server harness, against real PostgreSQL.

These facts are what the backup code and its tests rely on: strict RLS per tenant, a child table
filtered through its parent, a shared lookup table, a registry that lists all tenants only without
a tenant setting, an unprivileged backup role, canaries, and row-count oracles that match RLS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

from backup_assets.core.embedded_pg import dsn_for
from backup_assets.core.source.pgbin import pg_program
from backup_assets.sample.generate import (
    CHILD_TABLES,
    REGISTRY_TABLE,
    SHARED_TABLES,
    TENANT_TABLES,
    add_large_tenant,
    add_tenants,
    canary_for,
    create_sample_database,
    tenant_row_counts,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_TABLES = set(TENANT_TABLES) | set(CHILD_TABLES) | set(SHARED_TABLES) | {REGISTRY_TABLE}


def _query(dsn, sql, params=None, *, tenant=None):
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        if tenant is not None:
            cur.execute("SELECT set_config('app.current_tenant', %s, false)", (tenant,))
        cur.execute(sql, params)
        return cur.fetchall()


def _count_as_backup(db, table, tenant):
    return _query(db.backup_dsn, f"SELECT count(*) FROM {table}", tenant=tenant)[0][0]


def test_schema_tables_owner_and_rls(sample_db):
    rows = _query(
        sample_db.admin_dsn,
        """
        SELECT n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner), c.relrowsecurity, c.relforcerowsecurity,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname = 'public'""",
    )
    tables = {name: (owner, rls, force, has_tenant) for name, owner, rls, force, has_tenant in rows}
    assert set(tables) == ALL_TABLES
    assert len(TENANT_TABLES) == 16
    for name, (owner, rls, force, has_tenant) in tables.items():
        assert owner == "app_owner", name
        assert not force, name  # the owner loads data; the backup role is not the owner
        assert rls == (name not in SHARED_TABLES), name
        assert has_tenant == (name in TENANT_TABLES), name
    # Sequences exist (serial and identity) and belong to the owner.
    seqs = _query(
        sample_db.admin_dsn, "SELECT sequencename, sequenceowner FROM pg_sequences WHERE schemaname = 'public'"
    )
    assert len(seqs) == 16 and {o for _, o in seqs} == {"app_owner"}
    # The shared lookup table references nothing; tenant tables reference it.
    fks = _query(
        sample_db.admin_dsn,
        """
        SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint WHERE contype = 'f'""",
    )
    assert not [f for f in fks if f[0] == "metal_types"]
    assert ("inventory_items", "metal_types") in fks
    assert ("sale_items", "sales") in fks and ("repair_order_photos", "repair_orders") in fks


def test_backup_role_is_unprivileged(sample_db):
    ((superuser, bypass),) = _query(
        sample_db.admin_dsn, "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'tenant_backup'"
    )
    assert (superuser, bypass) == (False, False)
    assert _query(sample_db.backup_dsn, "SELECT current_user")[0][0] == "tenant_backup"
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        _query(sample_db.backup_dsn, "DELETE FROM metal_types")


def test_rls_isolates_each_tenant(sample_db, sample_tenants):
    for tenant in sample_tenants:
        expected = tenant_row_counts(sample_db, tenant.id)
        assert set(expected) == ALL_TABLES - set(SHARED_TABLES)
        seen = {t: _count_as_backup(sample_db, t, tenant.id) for t in expected}
        assert seen == expected, tenant
        assert all(n > 0 for n in expected.values())
        assert expected[REGISTRY_TABLE] == 1
        # Nothing of another tenant leaks through, including the child table (via its parent).
        for table in TENANT_TABLES:
            other = _query(
                sample_db.backup_dsn,
                f"SELECT count(*) FROM {table} WHERE tenant_id <> %s",
                (tenant.id,),
                tenant=tenant.id,
            )[0][0]
            assert other == 0, table
        photos_parents = _query(
            sample_db.backup_dsn,
            """
            SELECT DISTINCT r.tenant_id::text FROM repair_order_photos p
            JOIN repair_orders r ON r.id = p.repair_order_id""",
            tenant=tenant.id,
        )
        assert photos_parents == [(tenant.id,)]
        assert _query(sample_db.backup_dsn, "SELECT id::text, status FROM tenants", tenant=tenant.id) == [
            (tenant.id, tenant.status)
        ]
    # Shared lookup data is visible whole, whatever the tenant.
    assert _count_as_backup(sample_db, "metal_types", sample_tenants[0].id) == 8


def test_without_tenant_setting_tenant_tables_fail_and_registry_lists_all(sample_db, sample_tenants):
    for table in sorted(set(TENANT_TABLES) | set(CHILD_TABLES)):
        with pytest.raises(psycopg2.errors.UndefinedObject, match="app.current_tenant"):
            _query(sample_db.backup_dsn, f"SELECT count(*) FROM {table}")
    listed = _query(sample_db.backup_dsn, "SELECT id::text, status FROM tenants ORDER BY created_at")
    assert listed == [(t.id, t.status) for t in sample_tenants]
    # An emptied setting (SET then RESET in one session) also lists all; tenant tables still fail.
    with closing(psycopg2.connect(sample_db.backup_dsn)) as conn, conn.cursor() as cur:
        cur.execute("SET app.current_tenant = %s", (sample_tenants[0].id,))
        cur.execute("RESET app.current_tenant")
        cur.execute("SELECT count(*) FROM tenants")
        assert cur.fetchone()[0] == len(sample_tenants)
        with pytest.raises(psycopg2.errors.InvalidTextRepresentation):
            cur.execute("SELECT count(*) FROM sales")


def test_canaries_present_and_isolated(sample_db, sample_tenants):
    columns = [
        ("customers", "notes"),
        ("notifications", "body"),
        ("tenant_settings", "value"),
        ("repair_order_photos", "caption"),
    ]
    for tenant in sample_tenants:
        mine = canary_for(tenant.id)
        for table, column in columns:
            rows = _query(
                sample_db.backup_dsn,
                f"SELECT count(*) FILTER (WHERE {column} LIKE %s), "
                f"count(*) FILTER (WHERE {column} LIKE 'canary-%%' AND {column} NOT LIKE %s) FROM {table}",
                (f"%{mine}%", f"%{mine}%"),
                tenant=tenant.id,
            )
            ((hits, foreign),) = rows
            assert hits > 0 and foreign == 0, (table, column)


def test_tenant_dump_under_rls_holds_only_its_canary(sample_db, sample_tenants, tmp_path):
    """The sample does what it is for: pg_dump as the backup role with the setting sees one tenant;
    without the setting the strict policies make the dump fail rather than come out empty."""
    tenant, others = sample_tenants[0], sample_tenants[1:]
    env = dict(os.environ, PGOPTIONS=f"-c app.current_tenant={tenant.id}")
    dump = subprocess.run(
        [pg_program("pg_dump"), "--enable-row-security", "-Fp", "-d", sample_db.backup_dsn],
        env=env,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert canary_for(tenant.id) in dump
    for other in others:
        assert other.id not in dump and canary_for(other.id) not in dump
    env.pop("PGOPTIONS")
    failed = subprocess.run(
        [
            pg_program("pg_dump"),
            "--enable-row-security",
            "-Fc",
            "-Z0",
            "-d",
            sample_db.backup_dsn,
            "-f",
            str(tmp_path / "x.dump"),
        ],
        env=env,
        capture_output=True,
    )
    assert failed.returncode != 0 and b"app.current_tenant" in failed.stderr


def test_generation_is_deterministic_and_large_tenant_is_sized(pg_server_dsn, tmp_path):
    digests = []
    for name in ("det_a", "det_b"):
        db = create_sample_database(pg_server_dsn, f"{name}_{os.getpid()}")
        try:
            ids = [t.id for t in add_tenants(db, 2, rows=15, seed=7)]
            digest = _query(
                db.owner_dsn,
                """
                SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
                    SELECT s::text AS x FROM sales s UNION ALL SELECT c::text FROM customers c
                    UNION ALL SELECT p.image::text FROM repair_order_photos p) q""",
            )[0][0]
            digests.append((ids, digest))
            if name == "det_b":
                big = add_large_tenant(db, 8)
                env = dict(os.environ, PGOPTIONS=f"-c app.current_tenant={big.id}")
                out = tmp_path / "big.dump"
                subprocess.run(
                    [pg_program("pg_dump"), "--enable-row-security", "-Fc", "-Z0", "-f", str(out), "-d", db.backup_dsn],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                assert 0.8 * 8 * 2**20 <= out.stat().st_size <= 1.2 * 8 * 2**20
        finally:
            with closing(psycopg2.connect(pg_server_dsn)) as conn:
                conn.autocommit = True
                conn.cursor().execute(f"DROP DATABASE IF EXISTS {db.dbname} WITH (FORCE)")
    assert digests[0] == digests[1]


def test_fresh_db_is_empty_and_usable(fresh_db):
    dsn = fresh_db("restore_target", owner="app_owner")
    assert _query(dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert _query(dsn, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()") == [
        ("app_owner",)
    ]


def test_server_under_pytest_basetemp_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another user")
    from backup_assets.core.embedded_pg import start_embedded

    with pytest.raises(ValueError, match="pytest"):
        start_embedded(tmp_path / "pgdata")


def test_dsn_for_rewrites_uris_and_keyword_dsns():
    base = "postgresql://postgres:@/postgres?host=/tmp/some%20dir&sslmode=disable"
    assert (
        dsn_for(base, user="tenant_backup", dbname="db1")
        == "postgresql://tenant_backup@/db1?host=/tmp/some%20dir&sslmode=disable"
    )  # libpq: no '+' for space
    pw = dsn_for(base, user="u", password="p@:/ss", dbname="d")
    assert psycopg2.extensions.parse_dsn(pw) == {
        "user": "u",
        "password": "p@:/ss",
        "dbname": "d",
        "host": "/tmp/some dir",
        "sslmode": "disable",
    }
    # A password is dropped when the user changes without a new one.
    assert "secret" not in dsn_for("postgresql://a:secret@h:5433/x", user="b")
    kv = dsn_for("host=/tmp dbname=x user=a password=s", user="b", dbname="y")
    assert psycopg2.extensions.parse_dsn(kv) == {"host": "/tmp", "dbname": "y", "user": "b"}


def test_command_line_creates_a_database(pg_server_dsn):
    name = f"cli_sample_{os.getpid()}"
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "backup_assets.sample",
                "--dsn",
                pg_server_dsn,
                "--dbname",
                name,
                "--tenants",
                "2",
                "--rows",
                "5",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
        ).stdout  # the package is not necessarily pip-installed
        lines = out.splitlines()
        assert len([line for line in lines if "\tACTIVE\t" in line]) == 2
        backup_dsn = next(line.split(": ", 1)[1] for line in lines if line.startswith("backup DSN: "))
        assert _query(backup_dsn, "SELECT count(*) FROM tenants") == [(2,)]
    finally:
        with closing(psycopg2.connect(pg_server_dsn)) as conn:
            conn.autocommit = True
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
