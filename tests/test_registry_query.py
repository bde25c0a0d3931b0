"""The operator's registry query runs as written (issue 18): `%`, `%%`, `%s`, comments and a trailing
semicolon mean what they mean to PostgreSQL, in the whole-registry read and in the one-tenant lookup
(is_listed, tenant_name) alike, and through the command."""

from __future__ import annotations

import json
import uuid

import psycopg2
import pytest
from conftest import CLI, EXIT

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.errors import ConfigError
from backup_assets.core.settings import SourceSettings
from backup_assets.core.source.tenants import is_listed, list_tenants, query_body, read_registry, tenant_name

NAMES = {
    "Silver Birch": "ACTIVE",
    "Silverline": "ACTIVE",
    "Gold %s Co": "ACTIVE",  # a literal %s in the data
    "50% Off": "ACTIVE",
    "Old Silver": "SUSPENDED",
    "semi;colon -- not a comment": "ACTIVE",
}


@pytest.fixture(scope="module")
def registry(pg_server_dsn):
    """A registry database: tenants(id, name, status) with the names above; name -> id."""
    name = f"registry_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(pg_server_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    from backup_assets.core.embedded_pg import dsn_for

    dsn = dsn_for(pg_server_dsn, dbname=name)
    ids = {n: str(uuid.uuid4()) for n in NAMES}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE tenants (id uuid PRIMARY KEY, name text NOT NULL, status text NOT NULL)")
        for n, status in NAMES.items():
            cur.execute("INSERT INTO tenants VALUES (%s, %s, %s)", (ids[n], n, status))
    yield dsn, ids
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _settings(dsn: str, query: str) -> SourceSettings:
    return SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": dsn, "TENANT_BACKUP_TENANTS_QUERY": query})


QUERIES = [
    # (query, names it returns)
    ("SELECT id::text FROM tenants WHERE name LIKE 'Silver%'", {"Silver Birch", "Silverline"}),
    ("SELECT id::text FROM tenants WHERE name LIKE '%Silver%' AND status = 'ACTIVE'", {"Silver Birch", "Silverline"}),
    ("SELECT id::text, name FROM tenants WHERE name LIKE '50%%'", {"50% Off"}),  # %% is two wildcards to SQL
    ("SELECT id::text, name FROM tenants WHERE name = 'Gold %s Co'", {"Gold %s Co"}),
    ("SELECT id::text, name, status FROM tenants WHERE name LIKE '%\\%%' ESCAPE '\\'", {"50% Off", "Gold %s Co"}),
    (
        "-- the active ones; not the others\n"
        "SELECT id::text /* the id; first */, name\n"
        "  FROM tenants /* /* nested */ ; */ WHERE status = 'ACTIVE' AND name <> 'semi;colon -- not a comment';"
        "  -- trailing comment ; with a semicolon\n",
        {"Silver Birch", "Silverline", "Gold %s Co", "50% Off"},
    ),
    ("SELECT id::text FROM tenants WHERE name LIKE $$%;%$$ ; /* done */", {"semi;colon -- not a comment"}),
    ("SELECT id::text AS \"the;id\" FROM tenants WHERE name = E'Old\\x20Silver';\n", {"Old Silver"}),
]


@pytest.mark.parametrize("query, expected", QUERIES, ids=range(len(QUERIES)))
def test_the_registry_query_runs_as_written(registry, query, expected):
    dsn, ids = registry
    settings = _settings(dsn, query)
    wanted = sorted(ids[n] for n in expected)
    assert list_tenants(settings) == wanted
    # The one-tenant lookup wraps the query: same answer, for a tenant it returns and one it does not.
    for name, tenant in ids.items():
        assert is_listed(settings, tenant) is (name in expected), (name, query)
    if "name" in query.split("FROM")[0]:
        first = sorted(expected)[0]
        assert tenant_name(settings, ids[first]) == first
        assert {r.name for r in read_registry(settings)} == expected


@pytest.mark.parametrize(
    "query, message",
    [
        ("SELECT id::text FROM tenants; SELECT 1", "more than one statement"),
        ("SELECT id::text FROM tenants WHERE name = 'open", "not closed"),
        ("SELECT id::text FROM tenants /* open", "not closed"),
        ("  -- only a comment\n ; ", "empty"),
    ],
)
def test_a_query_that_is_not_one_statement_is_a_config_error(registry, query, message):
    with pytest.raises(ConfigError, match=message):
        list_tenants(_settings(registry[0], query))


def test_query_body_keeps_the_statement_and_drops_what_follows_it():
    assert query_body("SELECT 1;  -- x\n/* y; */\n") == "SELECT 1"
    assert query_body("SELECT ';' -- c\n") == "SELECT ';'"
    assert query_body("SELECT $a$ ; $a$") == "SELECT $a$ ; $a$"


def test_export_with_a_percent_in_the_registry_query(sample_db, sample_tenants, tmp_path):
    """Reported: `LIKE 'Silver%'` in TENANT_BACKUP_TENANTS_QUERY → IndexError: tuple index out of range."""
    active = next(t for t in sample_tenants if t.status == "ACTIVE")
    query = "SELECT id::text, name FROM tenants WHERE name LIKE '%' AND status = 'ACTIVE' -- every active one\n;"
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": generate_entry("reg1"),
        "TENANT_BACKUP_TENANTS_QUERY": query,
    }
    result = CLI.run(["export", "--tenant", active.id, "--out", "a.tbk"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["registry_listed"] is True
    suspended = next(t for t in sample_tenants if t.status == "SUSPENDED")
    refused = CLI.run(["export", "--tenant", suspended.id, "--out", "s.tbk"], env, tmp_path)
    assert "--force" in CLI.error(refused, EXIT["unknown tenant"])
