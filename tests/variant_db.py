"""Small databases with schemas unlike the sample's (other schema, table, column and setting
names), built per test to exercise the pre-flight check and the dump on unseen layouts."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2

from backup_assets.core.embedded_pg import dsn_for


@dataclass
class VariantDB:
    admin_dsn: str
    owner: str
    backup: str
    owner_dsn: str
    backup_dsn: str

    def run(self, sql: str, *, as_owner: bool = True) -> None:
        conn = psycopg2.connect(self.owner_dsn if as_owner else self.admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql.replace("{owner}", self.owner).replace("{backup}", self.backup))
        finally:
            conn.close()


def _exec(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def variant_db(server_admin_dsn: str, *, backup_attrs: str = "NOSUPERUSER NOBYPASSRLS"):
    tag = secrets.token_hex(4)
    name, owner, backup = f"variant_{tag}", f"owner_{tag}", f"backup_{tag}"
    _exec(server_admin_dsn, f"CREATE ROLE {owner} LOGIN; CREATE ROLE {backup} LOGIN {backup_attrs}")
    _exec(server_admin_dsn, f"CREATE DATABASE {name} OWNER {owner}")
    admin = dsn_for(server_admin_dsn, dbname=name)
    _exec(admin, f"GRANT ALL ON SCHEMA public TO {owner}")
    db = VariantDB(
        admin,
        owner,
        backup,
        dsn_for(server_admin_dsn, user=owner, dbname=name),
        dsn_for(server_admin_dsn, user=backup, dbname=name),
    )
    try:
        yield db
    finally:
        _exec(server_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        _exec(server_admin_dsn, f"DROP ROLE IF EXISTS {backup}; DROP ROLE IF EXISTS {owner}")


# A CRM-like layout: schema `crm`, tenant column `org`, setting `acme.org`, integer tenant ids.
CRM_SCHEMA = """
CREATE SCHEMA crm;
CREATE TABLE crm.orgs (org integer PRIMARY KEY, title text, active boolean NOT NULL DEFAULT true);
CREATE TABLE crm.accounts (id serial PRIMARY KEY, org integer NOT NULL REFERENCES crm.orgs(org), label text);
CREATE TABLE crm.contacts (id serial PRIMARY KEY, org integer NOT NULL, account_id integer REFERENCES crm.accounts(id), email text);
CREATE TABLE crm.contact_notes (id serial PRIMARY KEY, contact_id integer NOT NULL REFERENCES crm.contacts(id), note text);
CREATE TABLE crm.countries (code text PRIMARY KEY, name text);
ALTER TABLE crm.orgs ENABLE ROW LEVEL SECURITY;
CREATE POLICY orgs_self ON crm.orgs USING (org::text = current_setting('acme.org', true)
                                           OR coalesce(current_setting('acme.org', true), '') = '');
ALTER TABLE crm.accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON crm.accounts USING (org = current_setting('acme.org')::integer);
ALTER TABLE crm.contacts ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON crm.contacts USING (org = current_setting('acme.org')::integer);
ALTER TABLE crm.contact_notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON crm.contact_notes USING (EXISTS (SELECT 1 FROM crm.contacts c WHERE c.id = contact_id));
GRANT USAGE ON SCHEMA crm TO {backup};
GRANT SELECT ON ALL TABLES IN SCHEMA crm TO {backup};
GRANT SELECT ON ALL SEQUENCES IN SCHEMA crm TO {backup};
INSERT INTO crm.countries VALUES ('FR', 'France'), ('JP', 'Japan');
INSERT INTO crm.orgs SELECT g, 'org ' || g FROM generate_series(1, 3) g;
INSERT INTO crm.accounts (org, label) SELECT 1 + g % 3, 'acct-canary-' || (1 + g % 3) FROM generate_series(1, 30) g;
INSERT INTO crm.contacts (org, account_id, email)
     SELECT a.org, a.id, 'c' || a.id || '@canary-' || a.org FROM crm.accounts a;
INSERT INTO crm.contact_notes (contact_id, note) SELECT c.id, 'note-canary-' || c.org FROM crm.contacts c;
"""

CRM_ENV = {
    "TENANT_BACKUP_TENANT_COLUMN": "org",
    "TENANT_BACKUP_TENANT_SETTING": "acme.org",
    "TENANT_BACKUP_TENANTS_QUERY": "SELECT org FROM crm.orgs WHERE active",
    "TENANT_BACKUP_TENANT_ID_PATTERN": "[0-9]+",
}
