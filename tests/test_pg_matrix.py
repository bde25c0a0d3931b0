"""Every PostgreSQL an operator runs: back up, prove and restore on real servers 13 to 18.

Per server major, on a schema the project has not seen (schema `crm`, tenant column `org`, setting
`acme.org`, integer tenant ids, a partitioned table with RLS on the parent and every partition), through
the `tenant-backup` command as a user runs it: export (no other tenant's canary in the dump), the Dagster
backup with every check and the restore drill (its manifest names the major it proved), `verify --deep`,
restore into an empty database of the same major, `restore --replace` into the source (other tenants'
rows untouched). Client programs both ways: the server's own where one exists (15 Debian, 16 pgserver,
18 the wheel) and the newest (pg_restore 18 into 13-16 goes through psql without the settings those
servers do not know). The archive made on 13 is also restored into 16 and 18 (the upgrade path).

Servers: backup_assets/testing/pg_servers.py (npm builds for 13/14/17 downloaded once and cached).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import psycopg2
import pytest
from pg_matrix import pg_servers  # noqa: F401
from variant_db import CRM_ENV, CRM_SCHEMA, variant_db
from variant_db import _exec as _exec  # one autocommit statement

from backup_assets.core.archive.manifest import Manifest
from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.embedded_pg import dsn_for
from backup_assets.core.locations import locations_from_env
from backup_assets.testing.pg_servers import client_bin_dirs

ROOT = Path(__file__).resolve().parent.parent

# Partitioned by time, RLS on the parent AND on every partition (pg_dump reads partitions directly).
PARTITIONED = """
CREATE TABLE crm.events (id bigint NOT NULL, org integer NOT NULL, at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE crm.events_2025 PARTITION OF crm.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE crm.events_2026 PARTITION OF crm.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
ALTER TABLE crm.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON crm.events USING (org = current_setting('acme.org')::integer);
ALTER TABLE crm.events_2025 ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON crm.events_2025 USING (org = current_setting('acme.org')::integer);
ALTER TABLE crm.events_2026 ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON crm.events_2026 USING (org = current_setting('acme.org')::integer);
INSERT INTO crm.events SELECT g, 1 + g % 3, DATE '2025-06-01' + (g * 7), 'event-canary-' || (1 + g % 3)
  FROM generate_series(1, 60) g;
GRANT SELECT ON ALL TABLES IN SCHEMA crm TO {backup};
"""
TENANT, OTHERS = "1", ("2", "3")

# (server major, client programs): "own" = the server's own client programs, "newest" = the wheel's 18,
# "all" = every client directory here (then the server's own major, else the lowest newer one is chosen),
# "auto" = TENANT_BACKUP_PG_BIN unset: found where distributions install them (Debian's 15 here).
CELLS = [
    (13, "newest"),
    (14, "all"),
    (15, "own"),
    (15, "newest"),
    (15, "auto"),
    (16, "own"),
    (16, "newest"),
    (17, "newest"),
    (18, "own"),
]


def _client_dirs(major: int, mode: str) -> str:
    dirs = client_bin_dirs()
    if mode == "own":
        return str(dirs[major])
    if mode == "newest":
        return str(dirs[max(dirs)])
    if mode == "auto":
        return ""
    return os.pathsep.join(str(d) for _, d in sorted(dirs.items()))


def _cli(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backup_assets.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _rows(dsn: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


_SNAPSHOT = """
SELECT 'accounts', org, count(*), string_agg(label, ',' ORDER BY id) FROM crm.accounts GROUP BY org
UNION ALL SELECT 'contacts', org, count(*), string_agg(email, ',' ORDER BY id) FROM crm.contacts GROUP BY org
UNION ALL SELECT 'events', org, count(*), string_agg(what || at, ',' ORDER BY id) FROM crm.events GROUP BY org
ORDER BY 1, 2
"""


@pytest.fixture
def work_root():
    # Outside pytest's basetemp: a scratch server started by the drill runs as another user when we are root.
    root = Path(tempfile.mkdtemp(prefix="tb-matrix-"))
    root.chmod(0o711)
    yield root
    # A drill's scratch keeper (started under the work dir) outlives the command: stop it and its server.
    keepers = [p for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or [])]
    for keeper in keepers:
        keeper.terminate()
    psutil.wait_procs(keepers, timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def _env(db, root: Path, clients: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_", "PG"))}
    env.update(CRM_ENV)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "DAGSTER_HOME": str(root / "dagster_home"),
            "TENANT_BACKUP_SOURCE_DSN": db.backup_dsn,
            "TENANT_BACKUP_KEYS": generate_entry("matrix"),
            "TENANT_BACKUP_LOCATIONS": "local",
            "TENANT_BACKUP_LOCAL_DIR": str(root / "local"),
            "TENANT_BACKUP_WORK_DIR": str(root / "work"),
            "TENANT_BACKUP_PG_BIN": clients,
            "TENANT_BACKUP_RETRIES": "0",
            "TENANT_BACKUP_SCRATCH_IDLE_S": "5",
        }
    )
    env.update(extra)
    (root / "dagster_home").mkdir(exist_ok=True)
    return env


@pytest.mark.parametrize("major,mode", CELLS, ids=[f"pg{m}-{c}" for m, c in CELLS])
def test_backup_prove_restore(pg_servers, work_root, major, mode):  # noqa: F811
    server = pg_servers(major)
    with variant_db(server.admin_dsn) as db:
        db.run(CRM_SCHEMA)
        db.run(PARTITIONED)
        clients = _client_dirs(major, mode)
        # The drill's scratch server: the source's own major, found three ways (see docs/COMPATIBILITY.md).
        if major == 13:  # server programs the operator names
            scratch = {"TENANT_BACKUP_SCRATCH_PG_BIN": str(server.install.bin_dir)}
        elif major == 15:  # Debian's postgresql-15, found where the distribution installs it
            scratch = {}
        else:  # a configured scratch server (here: the source's server itself)
            scratch = {"TENANT_BACKUP_SCRATCH_DSN": server.admin_dsn}
        env = _env(db, work_root, clients, **scratch)

        # Export: one tenant, no other tenant's canary in the dump, the pg_dump version recorded.
        out = work_root / "t1.tbk"
        manifest = Manifest.from_json(_ok(_cli(env, "export", "--tenant", TENANT, "--out", str(out))).stdout)
        assert manifest.source.server_version.startswith(f"{major}.")
        dumped_by = int(manifest.pg_dump_version.split(")")[1].split(".")[0])
        assert dumped_by == (
            major
            if mode in ("own", "auto")
            else 18
            if mode == "newest"
            else min(m for m in client_bin_dirs() if m >= major)
        )
        assert set(manifest.tables) >= {"crm.events_2025", "crm.events_2026", "crm.accounts"}
        assert manifest.tables["crm.events_2025"] + manifest.tables["crm.events_2026"] == 20
        _ok(_cli(env, "decrypt", str(out), "--out", str(work_root / "t1.dump")))
        script = subprocess.run(
            [
                str(Path((clients or str(client_bin_dirs()[18])).split(os.pathsep)[-1]) / "pg_restore"),
                "--data-only",
                "-f",
                "-",
                str(work_root / "t1.dump"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "canary-1" in script and "event-canary-1" in script
        for other in OTHERS:
            assert f"canary-{other}" not in script

        # The Dagster backup: archive, drill on the source's major, the local copy and its checks.
        backup = _ok(_cli(env, "backup", "--tenant", TENANT, "--workers", "1"))
        assert "OK" in backup.stdout
        local = locations_from_env(["local"], env)["local"]
        (ref,) = local.list(TENANT)
        drill = local.get_manifest(TENANT, ref.backup_id).drill
        assert (drill.server_major, drill.source_major, drill.matches_source, drill.ok) == (major, major, True, True)

        _ok(_cli(env, "verify", "--tenant", TENANT, "--location", "local", "--deep"))

        # Restore into an empty database of the same major.
        _exec(server.admin_dsn, "CREATE DATABASE restored_empty")
        try:
            empty = dsn_for(server.admin_dsn, dbname="restored_empty")
            # -v: the INFO line naming what was removed from pg_restore's preamble
            restored = _ok(_cli(env, "-v", "restore", "--tenant", TENANT, "--location", "local", "--target-dsn", empty))
            # pg_restore 17+ into 13-16: through psql, exactly the unknown setting removed; else direct.
            through_psql = "removed from pg_restore 18's preamble: SET transaction_timeout = 0;" in restored.stderr
            assert through_psql == (mode == "newest" and major < 17), restored.stderr[-2000:]
            got = _rows(empty, _SNAPSHOT)
            want = [r for r in _rows(db.admin_dsn, _SNAPSHOT) if r[1] == int(TENANT)]
            assert got == want
        finally:
            _exec(server.admin_dsn, "DROP DATABASE IF EXISTS restored_empty WITH (FORCE)")

        # Replace in the live source: the tenant's rows back as they were, every other tenant untouched.
        before = _rows(db.admin_dsn, _SNAPSHOT)
        db.run(
            f"DELETE FROM crm.events WHERE org = {TENANT}; UPDATE crm.accounts SET label = 'changed' WHERE org = {TENANT}"
        )
        _ok(_cli(env, "restore", "--tenant", TENANT, "--location", "local", "--target-dsn", db.admin_dsn, "--replace"))
        assert _rows(db.admin_dsn, _SNAPSHOT) == before

        if major == 13:  # the upgrade path: the archive made on 13, restored into 16 and 18
            for newer in (16, 18):
                target = pg_servers(newer)
                _exec(target.admin_dsn, "CREATE DATABASE upgraded")
                try:
                    dsn = dsn_for(target.admin_dsn, dbname="upgraded")
                    _ok(_cli(env, "restore", "--tenant", TENANT, "--location", "local", "--target-dsn", dsn))
                    assert _rows(dsn, _SNAPSHOT) == [r for r in before if r[1] == int(TENANT)]
                finally:
                    _exec(target.admin_dsn, "DROP DATABASE IF EXISTS upgraded WITH (FORCE)")


def test_missing_client_program_is_one_line_before_any_work(pg_servers, work_root):  # noqa: F811
    server = pg_servers(16)
    with variant_db(server.admin_dsn) as db:
        db.run(CRM_SCHEMA)
        env = _env(db, work_root, str(client_bin_dirs()[15]))  # pg_dump 15 cannot dump a 16 server
        out = work_root / "t.tbk"
        result = _cli(env, "export", "--tenant", TENANT, "--out", str(out))
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert f"source is PostgreSQL {server.version}; pg_dump 16 or newer is needed" in lines[0]
        assert "postgresql-client-16" in lines[0] and "TENANT_BACKUP_PG_BIN" in lines[0]
        assert not out.exists() and not list(work_root.glob("t.tbk*"))
        # Through Dagster the run fails on the same line, not on a retry wrapper's message.
        backup = _cli(env, "backup", "--tenant", TENANT, "--workers", "1")
        assert backup.returncode == 1
        assert "pg_dump 16 or newer is needed" in backup.stdout + backup.stderr
        assert "max_retries" not in backup.stdout + backup.stderr


def test_partition_without_rls_names_the_fix(pg_servers, work_root):  # noqa: F811
    server = pg_servers(18)
    with variant_db(server.admin_dsn) as db:
        db.run(CRM_SCHEMA)
        db.run(
            PARTITIONED.replace("ALTER TABLE crm.events_2026 ENABLE ROW LEVEL SECURITY;", "").replace(
                "CREATE POLICY p ON crm.events_2026 USING (org = current_setting('acme.org')::integer);", ""
            )
        )
        result = _cli(
            _env(db, work_root, _client_dirs(18, "own")),
            "export",
            "--tenant",
            TENANT,
            "--out",
            str(work_root / "p.tbk"),
        )
        assert result.returncode == 4, result.stderr
        assert "crm.events_2026" in result.stderr and "partition of crm.events" in result.stderr
        assert 'ALTER TABLE "crm"."events_2026" ENABLE ROW LEVEL SECURITY' in result.stderr
        assert 'CREATE POLICY tenant_isolation ON "crm"."events_2026" USING ((org = (current_setting' in result.stderr
