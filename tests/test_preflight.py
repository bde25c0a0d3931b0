"""The pre-flight check refuses every layout where isolation cannot be proven, naming the culprit,
and accepts layouts with names unlike the sample's."""

from __future__ import annotations

import pytest
from variant_db import CRM_ENV, CRM_SCHEMA, variant_db

from backup_assets.core.errors import SafetyCheckFailed
from backup_assets.core.settings import SourceSettings
from backup_assets.core.source.preflight import EXCLUDED, RLS_CHILD, SHARED, TENANT, inspect_source
from backup_assets.core.source.session import connect


def _plan(dsn: str, **env):
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": dsn, **CRM_ENV, **env})
    with connect(dsn) as conn:
        return inspect_source(conn, settings)


def _refused(dsn: str, **env) -> str:
    with pytest.raises(SafetyCheckFailed) as err:
        _plan(dsn, **env)
    return str(err.value)


@pytest.fixture
def crm(pg_server_dsn):
    with variant_db(pg_server_dsn) as db:
        db.run(CRM_SCHEMA)
        yield db


def test_accepts_other_names_and_classifies_tables(crm):
    plan = _plan(crm.backup_dsn)
    kinds = {t.qualified: t.kind for t in plan.tables}
    assert kinds == {
        "crm.orgs": TENANT,
        "crm.accounts": TENANT,
        "crm.contacts": TENANT,
        "crm.contact_notes": RLS_CHILD,
        "crm.countries": SHARED,
    }
    assert plan.role == crm.backup


def test_tenant_table_without_rls_is_refused(crm):
    crm.run(
        "CREATE TABLE crm.invoices (id serial PRIMARY KEY, org integer NOT NULL, total numeric);"
        "GRANT SELECT ON crm.invoices TO {backup}"
    )
    message = _refused(crm.backup_dsn)
    assert "crm.invoices" in message and "row-level security is not enabled" in message


def test_rls_without_policy_for_the_role_is_refused(crm):
    crm.run(
        "CREATE TABLE crm.audit (id serial, org integer NOT NULL);"
        "ALTER TABLE crm.audit ENABLE ROW LEVEL SECURITY; GRANT SELECT ON crm.audit TO {backup}"
    )
    message = _refused(crm.backup_dsn)
    assert "crm.audit" in message and "no SELECT policy" in message
    # The operator can exclude it explicitly.
    plan = _plan(crm.backup_dsn, TENANT_BACKUP_EXCLUDE_TABLES="crm.audit")
    assert {t.qualified: t.kind for t in plan.tables}["crm.audit"] == EXCLUDED


def test_owner_without_force_is_refused_and_force_accepted(crm):
    # Dumping as the table owner: owners bypass their own policies unless RLS is forced.
    message = _refused(crm.owner_dsn)
    assert "crm.accounts" in message and "not forced" in message and crm.owner in message
    crm.run(
        "ALTER TABLE crm.orgs FORCE ROW LEVEL SECURITY; ALTER TABLE crm.accounts FORCE ROW LEVEL SECURITY;"
        "ALTER TABLE crm.contacts FORCE ROW LEVEL SECURITY; ALTER TABLE crm.contact_notes FORCE ROW LEVEL SECURITY"
    )
    assert _plan(crm.owner_dsn).role == crm.owner


def test_member_of_owner_role_counts_as_owner(crm):
    crm.run("GRANT {owner} TO {backup}", as_owner=False)
    message = _refused(crm.backup_dsn)
    assert "not forced" in message


@pytest.mark.parametrize("attrs, expected", [("SUPERUSER", "superuser"), ("BYPASSRLS", "BYPASSRLS")])
def test_privileged_backup_role_is_refused(pg_server_dsn, attrs, expected):
    with variant_db(pg_server_dsn, backup_attrs=attrs) as db:
        db.run(CRM_SCHEMA)
        message = _refused(db.backup_dsn)
        assert expected in message and db.backup in message


def test_shared_table_referencing_a_tenant_table_is_refused(crm):
    crm.run(
        "CREATE TABLE crm.account_tags (account_id integer REFERENCES crm.accounts(id), tag text);"
        "GRANT SELECT ON crm.account_tags TO {backup}"
    )
    message = _refused(crm.backup_dsn)
    assert "crm.account_tags" in message and "references tenant table crm.accounts" in message
    plan = _plan(crm.backup_dsn, TENANT_BACKUP_SHARED_TABLES="crm.account_tags")
    assert {t.qualified: t.kind for t in plan.tables}["crm.account_tags"] == SHARED


def test_registry_without_rls_is_refused(crm):
    crm.run(
        "ALTER TABLE crm.accounts DROP CONSTRAINT accounts_org_fkey;"
        "CREATE TABLE crm.registry (id integer PRIMARY KEY, name text);"
        "INSERT INTO crm.registry SELECT org, title FROM crm.orgs;"
        "ALTER TABLE crm.accounts ADD FOREIGN KEY (org) REFERENCES crm.registry(id);"
        "GRANT SELECT ON crm.registry TO {backup}"
    )
    message = _refused(crm.backup_dsn)
    assert "crm.registry" in message and "tenant registry" in message
    plan = _plan(crm.backup_dsn, TENANT_BACKUP_EXCLUDE_TABLES="crm.registry")
    assert {t.qualified: t.kind for t in plan.tables}["crm.registry"] == EXCLUDED


def test_declared_table_that_does_not_exist_is_refused(crm):
    message = _refused(crm.backup_dsn, TENANT_BACKUP_SHARED_TABLES="crm.nope")
    assert "crm.nope" in message and "TENANT_BACKUP_SHARED_TABLES" in message


def test_sample_database_passes(sample_db):
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn})
    with connect(sample_db.backup_dsn) as conn:
        plan = inspect_source(conn, settings)
    kinds = {t.qualified: t.kind for t in plan.tables}
    assert kinds["public.repair_order_photos"] == RLS_CHILD
    assert kinds["public.metal_types"] == SHARED
    assert kinds["public.sales"] == TENANT
    assert kinds["public.tenants"] == RLS_CHILD
