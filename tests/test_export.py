"""Export end to end on real PostgreSQL with real pg_dump/pg_restore: isolation, round trip, failures."""

from __future__ import annotations

import subprocess

import psycopg2
import pytest
from variant_db import CRM_ENV, CRM_SCHEMA, variant_db

from backup_assets.core.archive.decrypt import decrypt_to_file
from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.embedded_pg import dsn_for
from backup_assets.core.errors import DumpFailed, SafetyCheckFailed, UnknownTenant
from backup_assets.core.settings import SourceSettings
from backup_assets.core.source.pgbin import pg_program
from backup_assets.sample.generate import tenant_row_counts


def _settings(dsn: str, **env) -> SourceSettings:
    return SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": dsn, **env})


def _data_sql(dump_path) -> str:
    """The dump's data as SQL text, for grepping canaries."""
    out = subprocess.run(
        [pg_program("pg_restore"), "--data-only", "-f", "-", str(dump_path)], capture_output=True, text=True, check=True
    )
    return out.stdout


def _export_and_decrypt(settings, keyring, tenant_id, tmp_path, **options):
    archive = tmp_path / f"{tenant_id}.tbk"
    manifest = export_tenant(settings, keyring, tenant_id, archive, ExportOptions(**options))
    dump = tmp_path / f"{tenant_id}.dump"
    decrypt_to_file(archive, dump, keyring, expect_tenant_id=tenant_id, expect_sha256=manifest.archive.sha256)
    return archive, manifest, dump


def test_isolation_canaries_across_tenants(sample_db, sample_tenants, keyring, tmp_path):
    settings = _settings(sample_db.backup_dsn)
    active = [t for t in sample_tenants if t.status == "ACTIVE"][:2]
    suspended = next(t for t in sample_tenants if t.status == "SUSPENDED")
    chosen = active + [suspended]
    for tenant in chosen:
        _, manifest, dump = _export_and_decrypt(settings, keyring, tenant.id, tmp_path, force=tenant.status != "ACTIVE")
        text = _data_sql(dump)
        assert f"canary-{tenant.id}" in text
        for other in sample_tenants:
            if other.id != tenant.id:
                assert f"canary-{other.id}" not in text, f"{other.id}'s rows leaked into {tenant.id}'s dump"
                assert other.id not in text, f"{other.id} appears in {tenant.id}'s dump"
        assert manifest.tenant_id == tenant.id
        assert manifest.registry_listed is (tenant.status == "ACTIVE")


def test_round_trip_restores_the_tenant_row_counts(sample_db, sample_tenants, keyring, tmp_path, pg_server_dsn):
    settings = _settings(sample_db.backup_dsn)
    tenant = next(t for t in sample_tenants if t.status == "ACTIVE")
    archive, manifest, dump = _export_and_decrypt(settings, keyring, tenant.id, tmp_path)
    expected = tenant_row_counts(sample_db, tenant.id)
    assert {k: v for k, v in manifest.tables.items() if k in expected} == expected
    assert manifest.tables["public.metal_types"] > 0  # the shared lookup table is dumped whole
    assert manifest.table_kinds.shared == ["public.metal_types"]
    assert manifest.raw_size > manifest.archive.size > 0
    assert manifest.archive.size == archive.stat().st_size

    target = "restore_" + tenant.id.replace("-", "")[:12]
    admin = psycopg2.connect(pg_server_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {target}")
    try:
        target_dsn = dsn_for(pg_server_dsn, dbname=target)
        subprocess.run(
            [pg_program("pg_restore"), "--exit-on-error", "-d", target_dsn, str(dump)], check=True, capture_output=True
        )
        restored = {}
        with psycopg2.connect(target_dsn) as conn, conn.cursor() as cur:
            for table in manifest.tables:
                schema, name = table.split(".")
                cur.execute(f'SELECT count(*) FROM "{schema}"."{name}"')
                restored[table] = cur.fetchone()[0]
        conn.close()
        assert restored == manifest.tables
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
        admin.close()


def test_unknown_or_inactive_tenant_refused_without_force(sample_db, sample_tenants, keyring, tmp_path):
    settings = _settings(sample_db.backup_dsn)
    pending = next(t for t in sample_tenants if t.status == "PENDING_DELETION")
    out = tmp_path / "x.tbk"
    with pytest.raises(UnknownTenant):
        export_tenant(settings, keyring, pending.id, out)
    with pytest.raises(UnknownTenant):
        export_tenant(settings, keyring, "00000000-0000-4000-8000-000000000000", out)
    assert list(tmp_path.iterdir()) == []


def test_setting_the_policies_do_not_read_fails_closed(sample_db, sample_tenants, keyring, tmp_path):
    # Wrong TENANT_BACKUP_TENANT_SETTING: the sample's strict policies error; nothing is written.
    settings = _settings(sample_db.backup_dsn, TENANT_BACKUP_TENANT_SETTING="app.other_name")
    tenant = next(t for t in sample_tenants if t.status == "ACTIVE")
    with pytest.raises((DumpFailed, SafetyCheckFailed)) as err:
        export_tenant(settings, keyring, tenant.id, tmp_path / "x.tbk")
    assert "app.current_tenant" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_other_schema_names_round_trip(pg_server_dsn, keyring, tmp_path):
    with variant_db(pg_server_dsn) as db:
        db.run(CRM_SCHEMA)
        settings = _settings(db.backup_dsn, **CRM_ENV)
        _, manifest, dump = _export_and_decrypt(settings, keyring, "2", tmp_path)
        assert manifest.tables == {
            "crm.orgs": 1,
            "crm.accounts": 10,
            "crm.contacts": 10,
            "crm.contact_notes": 10,
            "crm.countries": 2,
        }
        text = _data_sql(dump)
        assert "canary-2" in text and "canary-1" not in text and "canary-3" not in text


def test_permissive_policy_leak_is_caught_on_the_data(pg_server_dsn, keyring, tmp_path):
    # RLS enabled with a policy, so the catalog check passes, but the policy lets every row through:
    # the in-snapshot count of foreign rows catches it and nothing is written.
    with variant_db(pg_server_dsn) as db:
        db.run(CRM_SCHEMA)
        db.run("DROP POLICY p ON crm.contacts; CREATE POLICY p ON crm.contacts USING (true)")
        settings = _settings(db.backup_dsn, **CRM_ENV)
        with pytest.raises(SafetyCheckFailed) as err:
            export_tenant(settings, keyring, "1", tmp_path / "leak.tbk")
        assert "crm.contacts: 20 rows" in str(err.value)
        assert list(tmp_path.iterdir()) == []


def test_pg_dump_failure_carries_its_stderr(pg_server_dsn, keyring, tmp_path):
    with variant_db(pg_server_dsn) as db:
        db.run(CRM_SCHEMA)
        db.run("REVOKE SELECT ON crm.countries FROM {backup}")
        settings = _settings(db.backup_dsn, **CRM_ENV)
        with pytest.raises(DumpFailed) as err:
            export_tenant(settings, keyring, "1", tmp_path / "x.tbk")
        assert "permission denied" in str(err.value) and "countries" in str(err.value)
        assert list(tmp_path.iterdir()) == []
