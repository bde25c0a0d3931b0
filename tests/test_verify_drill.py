"""verify_archive and restore_drill on real archives, real PostgreSQL and real pg_restore (no mocks)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
from psycopg2 import sql as psql
from variant_db import variant_db

from backup_assets.core.archive.export import export_tenant
from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.checks.drill import (
    SCRATCH_PREFIX,
    drop_stale_scratch_databases,
    restore_drill,
    scratch_database_name,
)
from backup_assets.core.checks.verify import verify_archive
from backup_assets.core.codec.format import encode_archive
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.embedded_pg import dsn_for
from backup_assets.core.errors import ArchiveError, ConfigError, ScratchDatabaseError
from backup_assets.core.settings import Settings, SourceSettings
from backup_assets.core.source.pgbin import pg_program
from backup_assets.core.source.session import PgSession
from backup_assets.sample.generate import tenant_row_counts


@pytest.fixture(scope="module")
def keyring():
    return Keyring.parse(generate_entry("drill1"))


@pytest.fixture(scope="module")
def exported(sample_db, sample_tenants, keyring, tmp_path_factory):
    """(tenant, archive path, manifest) of the first ACTIVE sample tenant, exported once."""
    tenant = next(t for t in sample_tenants if t.status == "ACTIVE")
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn})
    archive = tmp_path_factory.mktemp("verify_drill") / "tenant.tbk"
    manifest = export_tenant(settings, keyring, tenant.id, archive)
    return tenant, archive, manifest


def _copy(archive, tmp_path, name="copy.tbk"):
    target = tmp_path / name
    shutil.copyfile(archive, target)
    return target


def _flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def _databases(admin_dsn) -> set[str]:
    conn = psycopg2.connect(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ verify


def test_verify_ok(exported, keyring):
    _, archive, manifest = exported
    result = verify_archive(archive, manifest, keyring)
    assert result.ok, result.message
    assert result.checks == {"checksum": True, "decrypt": True, "header": True, "toc": True, "table_data": True}
    assert result.sha256 == manifest.archive.sha256 and result.size == manifest.archive.size
    assert result.table_data_entries == len(manifest.tables)
    assert result.toc_entries > result.table_data_entries
    assert result.message.startswith("ok:")
    shallow = verify_archive(archive, manifest, keyring, deep=False)
    assert shallow.ok and shallow.checks == {"checksum": True} and shallow.toc_entries is None


@pytest.mark.parametrize("where", ["payload", "last byte"])
def test_verify_detects_a_flipped_byte(exported, keyring, tmp_path, where):
    _, archive, manifest = exported
    bad = _copy(archive, tmp_path)
    _flip_byte(bad, manifest.archive.size // 2 if where == "payload" else manifest.archive.size - 1)
    result = verify_archive(bad, manifest, keyring)
    assert not result.ok
    assert result.checks["checksum"] is False and result.checks["decrypt"] is False
    assert result.message.startswith("checksum mismatch: SHA-256 ")
    assert "decrypt failed" in result.message and "authentication" in result.message
    assert result.size == manifest.archive.size  # the checksum covers the whole file despite the failure
    assert not verify_archive(bad, manifest, keyring, deep=False).ok  # the cheap check catches it too


def test_verify_detects_truncation(exported, keyring, tmp_path):
    _, archive, manifest = exported
    bad = _copy(archive, tmp_path)
    with open(bad, "r+b") as handle:
        handle.truncate(manifest.archive.size - 100)
    result = verify_archive(bad, manifest, keyring)
    assert not result.ok and not result.checks["checksum"] and not result.checks["decrypt"]
    assert f"size {manifest.archive.size - 100} bytes" in result.message


def test_verify_wrong_key_names_the_key_id(exported, tmp_path):
    _, archive, manifest = exported
    # Same id, other key bytes: the header does not authenticate.
    result = verify_archive(archive, manifest, Keyring.parse(generate_entry("drill1")))
    assert not result.ok
    assert result.checks == {"checksum": True, "decrypt": False}
    assert "decrypt failed" in result.message and "'drill1'" in result.message
    # Key id absent from the keyring.
    result = verify_archive(archive, manifest, Keyring.parse(generate_entry("other")))
    assert not result.ok and result.checks["decrypt"] is False
    assert "'drill1'" in result.message and "not in TENANT_BACKUP_KEYS" in result.message


def test_verify_manifest_that_does_not_match_the_toc(exported, keyring):
    _, archive, manifest = exported
    altered = copy.deepcopy(manifest)
    altered.tables["public.not_in_the_dump"] = 5
    result = verify_archive(archive, altered, keyring)
    assert not result.ok
    assert result.checks["checksum"] and result.checks["decrypt"] and result.checks["toc"]
    assert result.checks["table_data"] is False
    assert "no TABLE DATA entry" in result.message and "public.not_in_the_dump" in result.message
    # An excluded table is not expected to have data.
    altered.table_kinds.excluded = ["public.not_in_the_dump"]
    assert verify_archive(archive, altered, keyring).ok

    other = manifest.copy(tenant_id="00000000-0000-4000-8000-000000000000", backup_id=new_backup_id())
    result = verify_archive(archive, other, keyring)
    assert not result.ok and result.checks["header"] is False
    assert "tenant id" in result.message and "backup id" in result.message


def test_verify_usage_errors_raise(exported, keyring, tmp_path):
    _, _, manifest = exported
    with pytest.raises(ArchiveError, match="does not exist"):
        verify_archive(tmp_path / "missing.tbk", manifest, keyring)
    with pytest.raises(ArchiveError, match="archive.sha256"):
        verify_archive(tmp_path / "missing.tbk", Manifest.from_dict({"archive": {}}), keyring)


# ------------------------------------------------------------------------------------- drill


def test_drill_ok_counts_equal_the_source(exported, keyring, sample_db, pg_server_dsn):
    tenant, archive, manifest = exported
    result = restore_drill(archive, manifest, keyring, pg_server_dsn)
    assert result.ok, result.message
    assert result.counts_match and result.isolated and result.checksum_ok
    assert result.mismatches == {} and result.foreign_rows == {}
    assert result.restored_tables == len(manifest.tables)
    # The restored counts are the manifest's, and the manifest's are the source's (owner's view).
    expected = tenant_row_counts(sample_db, tenant.id)
    assert {t: n for t, n in manifest.tables.items() if t in expected} == expected
    assert result.scratch_database.startswith(SCRATCH_PREFIX)
    assert result.dropped and result.scratch_database not in _databases(pg_server_dsn)


def test_drill_detects_a_count_mismatch(exported, keyring, pg_server_dsn):
    _, archive, manifest = exported
    altered = copy.deepcopy(manifest)
    altered.tables["public.sales"] += 1
    altered.tables["public.never_restored"] = 0
    result = restore_drill(archive, altered, keyring, pg_server_dsn)
    assert not result.ok and not result.counts_match and result.isolated
    assert result.mismatches == {
        "public.sales": (manifest.tables["public.sales"] + 1, manifest.tables["public.sales"]),
        "public.never_restored": (0, None),
    }
    assert "public.sales: manifest" in result.message and "public.never_restored" in result.message
    assert result.dropped and result.scratch_database not in _databases(pg_server_dsn)


def test_drill_of_a_tampered_archive_restores_nothing(exported, keyring, pg_server_dsn, tmp_path):
    _, archive, manifest = exported
    bad = _copy(archive, tmp_path)
    _flip_byte(bad, manifest.archive.size - 1)  # in the (last) segment: it fails authentication
    result = restore_drill(bad, manifest, keyring, pg_server_dsn)
    assert not result.ok and result.checksum_ok is False
    assert "archive rejected" in result.message and "checksum mismatch" in result.message
    assert result.restored_tables == 0
    assert result.dropped and result.scratch_database not in _databases(pg_server_dsn)


def test_drill_refuses_an_archive_of_another_tenant(exported, keyring, pg_server_dsn):
    # The manifest names another tenant than the authenticated header: nothing is restored.
    _, archive, manifest = exported
    other = manifest.copy(tenant_id="00000000-0000-4000-8000-000000000000")
    result = restore_drill(archive, other, keyring, pg_server_dsn)
    assert not result.ok and not result.isolated and "belongs to tenant" in result.message
    assert result.scratch_database not in _databases(pg_server_dsn)


# A leaky source: `shop.lines` has RLS enabled but a policy that lets every tenant's rows through,
# `shop.orders` is correctly scoped and FORCEd. The export's own in-snapshot check would refuse to
# write such an archive, so the dump is taken here with pg_dump directly, exactly as the export
# runs it, and encoded with encode_archive: a real archive holding two tenants' rows.
_LEAKY_SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id serial PRIMARY KEY, org text NOT NULL, note text);
CREATE TABLE shop.lines (id serial PRIMARY KEY, org text NOT NULL, qty integer);
CREATE TABLE shop.units (code text PRIMARY KEY);
INSERT INTO shop.units VALUES ('kg'), ('pc');
INSERT INTO shop.orders (org, note) SELECT CASE WHEN g <= 3 THEN 'a' ELSE 'b' END, 'n' || g FROM generate_series(1, 5) g;
INSERT INTO shop.lines (org, qty) SELECT CASE WHEN g <= 4 THEN 'a' ELSE 'b' END, g FROM generate_series(1, 9) g;
ALTER TABLE shop.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE shop.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON shop.orders USING (org = current_setting('acme.org'));
ALTER TABLE shop.lines ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON shop.lines USING (true);
GRANT USAGE ON SCHEMA shop TO {backup};
GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {backup};
GRANT SELECT ON ALL SEQUENCES IN SCHEMA shop TO {backup};
"""


def _archive_of(db, keyring, path, *, tenant: str, tables: dict, kinds: dict, column: str) -> Manifest:
    """pg_dump the variant database as its backup role with `acme.org=<tenant>`, as the export
    does, encode it into a real archive at `path` and return a manifest for it."""
    session = PgSession.from_dsn(db.backup_dsn, {"acme.org": tenant})
    conninfo, env = session.conninfo(), session.child_env()
    with open(path, "wb") as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [pg_program("pg_dump"), "--format=custom", "--compress=0", "--enable-row-security", f"--dbname={conninfo}"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
        backup_id = new_backup_id()
        header, stats = encode_archive(
            proc.stdout.read,
            out,
            tenant_id=tenant,
            backup_id=backup_id,
            created_at="2026-11-25T03:00:00+00:00",
            keyring=keyring,
        )
        err.seek(0)
        assert proc.wait() == 0, err.read()
    return Manifest.from_dict(
        {
            "tenant_id": tenant,
            "backup_id": backup_id,
            "archive": {"size": stats.archive_bytes, "sha256": stats.sha256, "key_id": header.key_id},
            "raw_size": stats.raw_bytes,
            "tables": tables,
            "table_kinds": {"tenant": [], "rls_child": [], "shared": [], "excluded": [], **kinds},
            "source": {"tenant_column": column},
        }
    )


def _leaky_archive(db, keyring, path) -> Manifest:
    # What is really in the dump: 3 orders of tenant a, and all 9 lines (4 of a, 5 of b).
    return _archive_of(
        db,
        keyring,
        path,
        tenant="a",
        column="org",
        tables={"shop.orders": 3, "shop.lines": 9, "shop.units": 2},
        kinds={"tenant": ["shop.lines", "shop.orders"], "shared": ["shop.units"]},
    )


def test_drill_detects_foreign_rows_as_a_non_superuser(pg_server_dsn, keyring, tmp_path):
    role = "drill_" + os.urandom(4).hex()
    admin = psycopg2.connect(pg_server_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN CREATEDB")  # not superuser: owner-bypass and NO FORCE path
    try:
        with variant_db(pg_server_dsn) as db:
            db.run(_LEAKY_SCHEMA)
            archive = tmp_path / "leaky.tbk"
            manifest = _leaky_archive(db, keyring, archive)
        assert verify_archive(archive, manifest, keyring).ok  # a well-formed archive: only the drill sees the leak

        scratch = dsn_for(pg_server_dsn, user=role)
        result = restore_drill(archive, manifest, keyring, scratch)  # tenant column from the manifest: org
        assert not result.ok
        assert result.counts_match and result.checksum_ok
        assert not result.isolated and result.foreign_rows == {"shop.lines": 5}
        assert "isolation failed" in result.message and "shop.lines: 5 rows" in result.message
        assert result.tenant_column == "org"
        assert result.dropped and result.scratch_database not in _databases(pg_server_dsn)

        # The wrong tenant column would check nothing: fail closed rather than pass.
        result = restore_drill(archive, manifest, keyring, scratch, tenant_column="tenant_id")
        assert not result.ok and not result.isolated and "without column tenant_id" in result.message

        with admin.cursor() as cur:
            cur.execute(f"ALTER ROLE {role} NOCREATEDB")
        with pytest.raises(ScratchDatabaseError, match="CREATEDB"):
            restore_drill(archive, manifest, keyring, scratch)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def _drop(admin_dsn, name):
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(psql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psql.Identifier(name)))
    finally:
        conn.close()


def test_keep_and_stale_cleanup(exported, keyring, pg_server_dsn):
    _, archive, manifest = exported
    result = restore_drill(archive, manifest, keyring, pg_server_dsn, keep=True, strategy="FILE_COPY")
    # A leftover of a drill killed long ago (named as the drill names them, with an old timestamp).
    stale = scratch_database_name(datetime(2026, 1, 4, 3, 0, tzinfo=timezone.utc))
    conn = psycopg2.connect(pg_server_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(psql.SQL("CREATE DATABASE {}").format(psql.Identifier(stale)))
    conn.close()
    try:
        assert result.ok and not result.dropped
        assert result.scratch_database == result.scratch_database.lower()
        assert {result.scratch_database, stale} <= _databases(pg_server_dsn)
        # Only drills older than the limit (default 6 h) go: never one that may still be running.
        dropped = drop_stale_scratch_databases(pg_server_dsn)
        assert stale in dropped and result.scratch_database not in dropped
        assert result.scratch_database in _databases(pg_server_dsn)
    finally:
        _drop(pg_server_dsn, stale)
        _drop(pg_server_dsn, result.scratch_database)


def test_scratch_dsn_setting():
    assert Settings.from_env({}).scratch_dsn is None
    assert Settings.from_env({"TENANT_BACKUP_SCRATCH_DSN": "  "}).scratch_dsn is None
    dsn = "postgresql://drill@db.internal/postgres"
    assert Settings.from_env({"TENANT_BACKUP_SCRATCH_DSN": dsn}).scratch_dsn == dsn
    with pytest.raises(ConfigError):
        Settings.from_env({"TENANT_BACKUP_SCRATCH_DSN": "host=x nonsense"})


def test_drill_tampered_late_segment_commits_nothing(pg_server_dsn, keyring, tmp_path):
    # An archive of several 1 MiB segments, corrupted in its last one: pg_restore has already read
    # (and started restoring) the authenticated first megabytes when the bad segment turns up. It is
    # killed inside its single transaction: the kept scratch database must hold no table at all.
    with variant_db(pg_server_dsn) as db:
        db.run(
            "CREATE TABLE bulk (id integer PRIMARY KEY, org text NOT NULL, payload text);"
            "INSERT INTO bulk SELECT g, 'a', md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 60000) g;"
            "GRANT SELECT ON bulk TO {backup}"
        )
        archive = tmp_path / "bulk.tbk"
        manifest = _archive_of(
            db,
            keyring,
            archive,
            tenant="a",
            column="org",
            tables={"public.bulk": 60000},
            kinds={"tenant": ["public.bulk"]},
        )
    assert manifest.archive.size > 2 * (1 << 20)  # several segments
    assert restore_drill(archive, manifest, keyring, pg_server_dsn).ok
    _flip_byte(archive, manifest.archive.size - 10)
    result = restore_drill(archive, manifest, keyring, pg_server_dsn, keep=True)
    try:
        assert not result.ok and "archive rejected" in result.message and result.restored_tables == 0
        conn = psycopg2.connect(dsn_for(pg_server_dsn, dbname=result.scratch_database))
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_class WHERE relname = 'bulk'")
            assert cur.fetchone()[0] == 0
        conn.close()
    finally:
        _drop(pg_server_dsn, result.scratch_database)


# ------------------------------------------------------------------------------- scratch pool


def _relations(admin_dsn, name) -> int:
    conn = psycopg2.connect(dsn_for(admin_dsn, dbname=name))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_pool_reuses_one_database_emptied_after_every_drill(
    sample_db, sample_tenants, keyring, pg_server_dsn, tmp_path
):
    from backup_assets.core.checks.scratch import ScratchPool

    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn})
    before = _databases(pg_server_dsn)
    pool = ScratchPool(pg_server_dsn)
    try:
        names = []
        for tenant in [t for t in sample_tenants if t.status == "ACTIVE"][:2] * 2:
            archive = tmp_path / f"{tenant.id}.tbk"
            manifest = export_tenant(settings, keyring, tenant.id, archive)
            result = restore_drill(archive, manifest, keyring, pool)
            assert result.ok, result.message
            names.append(result.scratch_database)
            assert _relations(pg_server_dsn, result.scratch_database) == 0  # nothing of the tenant stays
        assert len(set(names)) == 1 and names[0] not in before  # one database, made once, reused
        # Leftovers the emptying cannot know about (a foreign server): the next drill gets a fresh database.
        admin = psycopg2.connect(dsn_for(pg_server_dsn, dbname=names[0]))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE FOREIGN DATA WRAPPER leftover_fdw")
        admin.close()
        archive = tmp_path / f"{sample_tenants[0].id}.tbk"
        manifest = export_tenant(settings, keyring, sample_tenants[0].id, archive)
        result = restore_drill(archive, manifest, keyring, pool)
        assert result.ok and result.scratch_database != names[0]
        assert names[0] not in _databases(pg_server_dsn)
        # A database another process holds is never dropped by the stale clean-up.
        assert result.scratch_database not in drop_stale_scratch_databases(pg_server_dsn, older_than=timedelta(0))
        assert result.scratch_database in _databases(pg_server_dsn)
    finally:
        pool.close()
    # Nothing this test made stays (the stale clean-up may also have dropped earlier tests' unheld leftovers).
    assert _databases(pg_server_dsn) - before == set()


def test_pool_retries_a_failed_restore_in_a_fresh_database(exported, keyring, pg_server_dsn, monkeypatch):
    from backup_assets.core.checks.scratch import ScratchPool

    _tenant, archive, manifest = exported
    pool = ScratchPool(pg_server_dsn)
    try:
        first = restore_drill(archive, manifest, keyring, pool)
        assert first.ok
        # A database that is not empty although it looks so (the emptying missed something): the
        # restore fails there, and the drill runs once more in a fresh database instead of failing.
        monkeypatch.setattr(ScratchPool, "_empty", lambda self, name: None)
        second = restore_drill(archive, manifest, keyring, pool)  # leaves the tables in place
        monkeypatch.setattr(ScratchPool, "_is_clean", lambda self, name: True)
        third = restore_drill(archive, manifest, keyring, pool)
        assert second.ok and third.ok, third.message
        assert third.scratch_database != first.scratch_database
    finally:
        monkeypatch.undo()
        pool.close()
