"""Restore one tenant (empty database and --replace) on real PostgreSQL, real pg_dump/pg_restore, real
archives in real locations (local disk; the loopback S3 server standing in for R2). No mocks.

Equality is a content hash per table: md5 of every row's text, ordered, computed as superuser with an
explicit tenant filter on the source (and on the live target for --replace)."""

from __future__ import annotations

import argparse
import os
import secrets
from contextlib import closing

import psycopg2
import pytest
from psycopg2 import sql
from variant_db import CRM_ENV, CRM_SCHEMA, variant_db

from backup_assets.cli.restore import register
from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.dump.copytext import parse_copy_statement as parse_copy_line
from backup_assets.core.embedded_pg import dsn_for
from backup_assets.core.errors import ConfigError, RestoreError, RestoreRefused, TenantBackupError
from backup_assets.core.locations import locations_from_env
from backup_assets.core.restore import restore_tenant
from backup_assets.core.settings import Settings, SourceSettings
from backup_assets.sample.generate import add_tenants, create_sample_database
from backup_assets.testing.s3_server import S3Server

KEYS = generate_entry("restore1")

# Tables of the sample schema without a tenant column, and how to find one tenant's rows in them.
_SPECIAL_FILTERS = {
    "public.tenants": "id = %(t)s",
    "public.repair_order_photos": "repair_order_id IN (SELECT id FROM public.repair_orders WHERE tenant_id = %(t)s)",
}


@pytest.fixture(scope="module")
def keyring():
    return Keyring.parse(KEYS)


def _exec(dsn, statement, params=None):
    with closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None


def _hashes(dsn, manifest, tenant_id=None, *, column="tenant_id", filters=None) -> dict[str, tuple[int, str]]:
    """table -> (rows, md5 of the rows' text in order), every table of the manifest but excluded ones.
    With tenant_id: only that tenant's rows (shared tables whole); without: every row."""
    filters = _SPECIAL_FILTERS if filters is None else filters
    kinds = {t: k for k, ts in manifest.table_kinds.to_dict().items() for t in ts}
    out = {}
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        for table in sorted(manifest.tables):
            kind = kinds.get(table)
            if kind == "excluded":
                continue
            where = sql.SQL("true")
            if tenant_id is not None and kind == "tenant":
                where = sql.SQL("{}::text = %(t)s").format(sql.Identifier(column))
            elif tenant_id is not None and kind == "rls_child":
                where = sql.SQL(filters[table])
            schema, name = table.split(".")
            cur.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), ''))"
                    " FROM {} x WHERE {}"
                ).format(sql.Identifier(schema, name), where),
                {"t": tenant_id},
            )
            out[table] = cur.fetchone()
    return out


def _locations(local_dir, **env):
    return locations_from_env(["local"], {"TENANT_BACKUP_LOCAL_DIR": str(local_dir), **env})


def _backup(db, tenant_id, keyring, locs, tmp_path) -> dict:
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn})
    archive = tmp_path / f"{tenant_id}.tbk"
    manifest = export_tenant(settings, keyring, tenant_id, archive, ExportOptions(force=True))
    for loc in locs.values():
        loc.put(tenant_id, manifest.backup_id, archive, manifest)
    archive.unlink()
    return manifest


def _seq_state(dsn) -> dict[str, tuple[int, int | None]]:
    """sequence -> (last_value, max of its owning column) for every owned sequence of schema public."""
    rows = _exec(
        dsn,
        """
        SELECT s.oid::regclass::text, t.oid::regclass::text, a.attname
          FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_class t ON t.oid = d.refobjid
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
         WHERE d.deptype IN ('a', 'i') AND d.classid = 'pg_class'::regclass""",
    )
    out = {}
    for seq, table, col in rows:
        last = _exec(dsn, f"SELECT last_value FROM {seq}")[0][0]
        top = _exec(dsn, f'SELECT max("{col}") FROM {table}')[0][0]
        out[seq] = (last, top)
    return out


# --------------------------------------------------------------------------- into an empty database


@pytest.fixture(scope="module")
def sample_backups(sample_db, sample_tenants, keyring, tmp_path_factory):
    """Every sample tenant backed up once into a local location (the shared sample_db is only read)."""
    local = tmp_path_factory.mktemp("restore_local")
    locs = _locations(local)
    work = tmp_path_factory.mktemp("restore_work")
    return locs, {t.id: _backup(sample_db, t.id, keyring, locs, work) for t in sample_tenants}


def test_every_sample_tenant_restores_into_an_empty_database(
    sample_db, sample_tenants, sample_backups, keyring, fresh_db
):
    locs, manifests = sample_backups
    for tenant in sample_tenants:
        manifest = manifests[tenant.id]
        target = fresh_db("restore_empty")
        result = restore_tenant(tenant.id, locations=locs, location="local", target_dsn=target, keyring=keyring)
        assert result.location == "local" and result.backup_id == manifest.backup_id
        assert {t: o.inserted for t, o in result.tables.items()} == manifest.tables
        source = _hashes(sample_db.admin_dsn, manifest, tenant.id)
        restored = _hashes(target, manifest)
        assert restored == source, f"tenant {tenant.id} ({tenant.status}) differs from its source"
        assert {t: n for t, (n, _) in restored.items()} == manifest.tables
        assert restored["public.sales"][0] > 0

    # The same restore again: the target is not empty any more, and nothing is touched.
    before = _hashes(target, manifest)
    with pytest.raises(RestoreRefused, match="is not empty.*--replace"):
        restore_tenant(tenant.id, locations=locs, location="local", target_dsn=target, keyring=keyring)
    assert _hashes(target, manifest) == before


def test_dry_run_into_an_empty_database_changes_nothing(sample_tenants, sample_backups, keyring, fresh_db):
    locs, manifests = sample_backups
    tenant = sample_tenants[0]
    target = fresh_db("restore_dry")
    result = restore_tenant(
        tenant.id, locations=locs, location="local", target_dsn=target, keyring=keyring, dry_run=True
    )
    assert result.dry_run and result.backup_id == manifests[tenant.id].backup_id
    assert {t: o.manifest_rows for t, o in result.tables.items()} == manifests[tenant.id].tables
    assert (
        _exec(target, "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")[0][
            0
        ]
        == 0
    )


# ------------------------------------------------------------------------------------- --replace


@pytest.fixture(scope="module")
def live(pg_server_dsn, keyring, tmp_path_factory):
    """A sample database of our own (this module damages it), 3 tenants, the first one backed up."""
    db = create_sample_database(pg_server_dsn, f"restore_live_{os.getpid()}_{secrets.token_hex(3)}")
    tenants = add_tenants(db, 3, rows=25, status="ACTIVE", seed=7)
    locs = _locations(tmp_path_factory.mktemp("live_local"))
    manifest = _backup(db, tenants[0].id, keyring, locs, tmp_path_factory.mktemp("live_work"))
    try:
        yield db, tenants, locs, manifest
    finally:
        _exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')


def _damage(db, tenant_id):
    """Delete, update and insert rows of one tenant (children of deleted rows included)."""
    _exec(
        db.admin_dsn,
        """
        DELETE FROM sale_items WHERE sale_id IN (SELECT id FROM sales WHERE tenant_id = %(t)s ORDER BY id LIMIT 3);
        DELETE FROM loyalty_transactions WHERE sale_id IN (SELECT id FROM sales WHERE tenant_id = %(t)s ORDER BY id LIMIT 3);
        DELETE FROM sales WHERE id IN (SELECT id FROM sales WHERE tenant_id = %(t)s ORDER BY id LIMIT 3);
        DELETE FROM repair_order_photos WHERE repair_order_id IN (SELECT id FROM repair_orders WHERE tenant_id = %(t)s);
        UPDATE customers SET first_name = 'DAMAGED', points = points + 1000 WHERE tenant_id = %(t)s;
        UPDATE tenant_settings SET value = 'junk' WHERE tenant_id = %(t)s;
        INSERT INTO notifications (tenant_id, recipient, channel, subject, body, created_at)
             SELECT %(t)s, 'junk', 'email', 'junk', 'junk', now() FROM generate_series(1, 5);
        INSERT INTO branches (tenant_id, name, opened_at) VALUES (%(t)s, 'junk branch', now());
        INSERT INTO repair_order_photos (repair_order_id, image, taken_at)
             SELECT id, '\\x00', now() FROM repair_orders WHERE tenant_id = %(t)s LIMIT 2;
    """,
        {"t": tenant_id},
    )


def test_replace_restores_a_damaged_tenant_and_leaves_the_others(live, keyring):
    db, tenants, locs, manifest = live
    victim, others = tenants[0].id, [t.id for t in tenants[1:]]
    original = _hashes(db.admin_dsn, manifest, victim)
    others_before = {t: _hashes(db.admin_dsn, manifest, t) for t in others}
    _damage(db, victim)
    damaged = _hashes(db.admin_dsn, manifest, victim)
    assert damaged != original
    # A sequence left behind the restored ids (as after a database restored from an older snapshot).
    _exec(db.admin_dsn, "SELECT setval('notifications_id_seq', 1)")
    seqs_before = _seq_state(db.admin_dsn)

    # Dry run first: the plan counts what would go, and nothing changes.
    plan = restore_tenant(
        victim, locations=locs, location="local", target_dsn=db.owner_dsn, keyring=keyring, replace=True, dry_run=True
    )
    assert plan.dry_run and plan.mode == "replace"
    _assert_row_accounting(plan, damaged, manifest)
    assert plan.tables["public.metal_types"].action == "untouched"
    assert plan.tables["public.tenants"].kind == "registry"
    assert _hashes(db.admin_dsn, manifest, victim) == damaged

    # As the tables' owner (not a superuser): owners bypass their own tables' RLS unless forced.
    result = restore_tenant(
        victim, locations=locs, location="local", target_dsn=db.owner_dsn, keyring=keyring, replace=True
    )
    assert _hashes(db.admin_dsn, manifest, victim) == original
    for t in others:
        assert _hashes(db.admin_dsn, manifest, t) == others_before[t], f"tenant {t} changed"
    _assert_row_accounting(result, damaged, manifest)
    assert result.tables["public.tenants"].inserted == 0  # the registry row is kept, not replaced
    assert result.tables["public.metal_types"].deleted is None  # shared: never touched

    seqs_after = _seq_state(db.admin_dsn)
    for seq, (last, top) in seqs_after.items():
        assert last >= seqs_before[seq][0], f"{seq} moved backwards"
        if top is not None:
            assert last >= top, f"{seq} at {last}, behind max {top}"
    assert "public.notifications_id_seq" in {s for s, _, _ in result.sequences}
    assert seqs_after["sales_id_seq"][0] == seqs_before["sales_id_seq"][0]  # was ahead: untouched
    # New rows still get fresh ids.
    _exec(
        db.admin_dsn,
        "INSERT INTO notifications (tenant_id, recipient, channel, subject, body, created_at)"
        " VALUES (%s, 'x', 'email', 'x', 'x', now())",
        (others[0],),
    )
    _exec(db.admin_dsn, "DELETE FROM notifications WHERE recipient = 'x' AND subject = 'x'")


def _assert_row_accounting(result, damaged, manifest):
    """Rows are matched by primary key: the damaged rows (and only they) are written."""
    for name, (rows_now, _) in damaged.items():
        o = result.tables[name]
        if o.kind in ("tenant", "rls_child"):
            assert o.unchanged + o.updated + o.deleted == rows_now, name
            assert o.unchanged + o.updated + o.inserted == manifest.tables[name], name
    assert (result.tables["public.sales"].deleted, result.tables["public.sales"].inserted) == (0, 3)
    assert result.tables["public.notifications"].deleted == 5  # the junk ones
    assert result.tables["public.repair_order_photos"].deleted == 2
    assert result.tables["public.customers"].updated == damaged["public.customers"][0]
    assert result.tables["public.inventory_items"].unchanged == manifest.tables["public.inventory_items"]


def test_replace_with_a_role_under_rls_is_refused(live, keyring, pg_server_dsn):
    db, tenants, locs, manifest = live
    role = "restorer_" + secrets.token_hex(4)
    _exec(pg_server_dsn, f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS")
    _exec(
        db.admin_dsn,
        f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
    )
    try:
        before = {t.id: _hashes(db.admin_dsn, manifest, t.id) for t in tenants}
        dsn = dsn_for(pg_server_dsn, user=role, dbname=db.dbname)
        for dry_run in (True, False):
            with pytest.raises(
                RestoreRefused,
                match=rf"role {role} would write under row-level security on "
                r".*public\.sales.*BYPASSRLS",
            ) as err:
                restore_tenant(
                    tenants[0].id,
                    locations=locs,
                    location="local",
                    target_dsn=dsn,
                    keyring=keyring,
                    replace=True,
                    dry_run=dry_run,
                )
            assert "\n" not in str(err.value) and "nothing changed" in str(err.value)
        assert {t.id: _hashes(db.admin_dsn, manifest, t.id) for t in tenants} == before
    finally:
        _exec(db.admin_dsn, f"DROP OWNED BY {role}")
        _exec(pg_server_dsn, f"DROP ROLE {role}")


def test_a_failure_mid_load_rolls_everything_back(live, keyring):
    db, tenants, locs, manifest = live
    victim, other = tenants[0].id, tenants[1].id
    # One of the victim's backed-up notification ids now belongs to another tenant: loading it
    # violates the primary key after the victim's rows were already deleted in the transaction.
    nid = _exec(db.admin_dsn, "SELECT max(id) FROM notifications WHERE tenant_id = %s", (victim,))[0][0]
    _exec(db.admin_dsn, "DELETE FROM notifications WHERE id = %s", (nid,))
    _exec(
        db.admin_dsn,
        "INSERT INTO notifications (id, tenant_id, recipient, channel, subject, body, created_at)"
        " VALUES (%s, %s, 'clash', 'email', 'clash', 'clash', now())",
        (nid, other),
    )
    _damage(db, victim)
    before = {t.id: _hashes(db.admin_dsn, manifest, t.id) for t in tenants}
    with pytest.raises(RestoreError, match=r"rolled back, nothing changed: duplicate key value .*notifications_pkey"):
        restore_tenant(victim, locations=locs, location="local", target_dsn=db.admin_dsn, keyring=keyring, replace=True)
    assert {t.id: _hashes(db.admin_dsn, manifest, t.id) for t in tenants} == before
    _exec(db.admin_dsn, "DELETE FROM notifications WHERE id = %s", (nid,))


def test_replace_gives_up_on_a_locked_table(live, keyring):
    db, tenants, locs, manifest = live
    holder = psycopg2.connect(db.admin_dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE")  # e.g. a migration in progress
        with pytest.raises(RestoreError, match=r"locked by another session \(lock timeout 300ms"):
            restore_tenant(
                tenants[0].id,
                locations=locs,
                location="local",
                target_dsn=db.admin_dsn,
                keyring=keyring,
                replace=True,
                lock_timeout="300ms",
            )
    finally:
        holder.rollback()
        holder.close()


def test_replace_on_another_schema(pg_server_dsn, keyring, tmp_path, monkeypatch):
    # Other schema, table, column and setting names, integer tenant ids; the registry crm.orgs is
    # referenced by accounts.org only, contact_notes reaches its tenant through contacts.
    filters = {"crm.contact_notes": "contact_id IN (SELECT id FROM crm.contacts WHERE org::text = %(t)s)"}
    with variant_db(pg_server_dsn) as db:
        db.run(CRM_SCHEMA)
        settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn, **CRM_ENV})
        locs = _locations(tmp_path / "local", **CRM_ENV)
        archive = tmp_path / "org1.tbk"
        manifest = export_tenant(settings, keyring, "1", archive)
        locs["local"].put("1", manifest.backup_id, archive, manifest)
        assert manifest.table_kinds.rls_child == ["crm.contact_notes"]  # crm.orgs has the column

        def state():
            return {t: _hashes(db.admin_dsn, manifest, t, column="org", filters=filters) for t in ("1", "2", "3")}

        before = state()
        db.run(
            "DELETE FROM crm.contact_notes WHERE contact_id IN (SELECT id FROM crm.contacts WHERE org = 1 LIMIT 3);"
            "UPDATE crm.accounts SET label = 'damaged' WHERE org = 1;"
            "INSERT INTO crm.contacts (org, email) VALUES (1, 'junk');"
            "INSERT INTO crm.contact_notes (contact_id, note) SELECT id, 'junk' FROM crm.contacts WHERE email = 'junk';"
            "UPDATE crm.orgs SET title = 'renamed since' WHERE org = 1"
        )
        damaged = state()
        assert damaged["1"] != before["1"]
        result = restore_tenant(
            "1",
            locations=locs,
            location="local",
            target_dsn=db.owner_dsn,
            keyring=keyring,
            replace=True,
            tenant_id_pattern=CRM_ENV["TENANT_BACKUP_TENANT_ID_PATTERN"],
        )
        after = state()
        assert after["2"] == before["2"] and after["3"] == before["3"]
        # Every table of org 1 is back, but the registry row, which is kept as the target has it.
        assert {t: h for t, h in after["1"].items() if t != "crm.orgs"} == {
            t: h for t, h in before["1"].items() if t != "crm.orgs"
        }
        assert after["1"]["crm.orgs"] == damaged["1"]["crm.orgs"]
        assert result.tables["crm.orgs"].kind == "registry" and result.tables["crm.countries"].action == "untouched"
        notes = result.tables["crm.contact_notes"]
        assert (notes.deleted, notes.inserted) == (1, 3)  # the junk contact's note; the 3 deleted since


# ------------------------------------------------------------------------- --location auto, CLI


def _cli(argv: list[str]) -> int:
    """What cli.main does around a handler: parse, run, one-line error and exit code."""
    parser = argparse.ArgumentParser(prog="tenant-backup")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TenantBackupError as exc:
        print(f"tenant-backup: error: {exc}", file=__import__("sys").stderr)
        return exc.exit_code


def test_corrupt_local_copy_makes_auto_use_r2(
    sample_db, sample_tenants, keyring, tmp_path, fresh_db, monkeypatch, capsys
):
    tenant = sample_tenants[1]
    with S3Server() as s3:
        bucket = f"tb-{secrets.token_hex(5)}"
        s3.create_bucket(bucket)
        env = {
            "TENANT_BACKUP_KEYS": KEYS,
            "TENANT_BACKUP_LOCATIONS": "local,r2",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "R2_ENDPOINT_URL": s3.url,
            "R2_ACCESS_KEY_ID": s3.access_key or "testing",
            "R2_SECRET_ACCESS_KEY": s3.secret_key,
            "R2_BUCKET": bucket,
            "TENANT_BACKUP_STORAGE_ATTEMPTS": "1",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        locs = locations_from_env(None, env)
        manifest = _backup(sample_db, tenant.id, keyring, locs, tmp_path)
        stored = next((tmp_path / "local" / "tenants" / tenant.id / manifest.backup_id).glob("archive-*.tbk"))
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0x01
        stored.write_bytes(bytes(data))

        target = fresh_db("restore_auto")
        code = _cli(["restore", "--tenant", tenant.id.upper(), "--location", "auto", "--target-dsn", target])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "skipping location local:" in err and "does not match its sha256" in err
        assert f"using location r2: backup {manifest.backup_id}" in err
        assert "from r2 (r2://" in out
        assert _hashes(target, manifest) == _hashes(sample_db.admin_dsn, manifest, tenant.id)

        # Naming the corrupt location: a one-line error, exit code of a storage failure.
        code = _cli(["restore", "--tenant", tenant.id, "--location", "local", "--target-dsn", fresh_db("x")])
        _, err = capsys.readouterr()
        assert code == 8 and err.count("\n") == 1 and "does not match its sha256" in err

        # Both copies bad: every location named, nothing restored.
        s3.faults.set(flip=5)
        code = _cli(
            ["restore", "--tenant", tenant.id, "--location", "auto", "--target-dsn", fresh_db("y"), "--dry-run"]
        )
        _, err = capsys.readouterr()
        s3.faults.clear()
        assert code == 8 and "no usable copy" in err.splitlines()[-1] and "r2:" in err.splitlines()[-1]


def test_cli_refuses_a_bad_tenant_id_and_hides_the_password(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TENANT_BACKUP_KEYS", KEYS)
    monkeypatch.setenv("TENANT_BACKUP_LOCAL_DIR", str(tmp_path))
    assert _cli(["restore", "--tenant", "x'; DROP", "--location", "local", "--target-dsn", "postgresql://a@b/c"]) == 2
    assert "invalid tenant id" in capsys.readouterr().err
    code = _cli(
        [
            "restore",
            "--tenant",
            "00000000-0000-4000-8000-000000000001",
            "--location",
            "local",
            "--target-dsn",
            "postgresql://u:s3cret@127.0.0.1:1/db",
        ]
    )
    err = capsys.readouterr().err
    assert code == 8 and "no backup of tenant" in err and "s3cret" not in err


def test_lock_timeout_setting():
    assert Settings.from_env({}).restore_lock_timeout == "10s"
    assert Settings.from_env({"TENANT_BACKUP_RESTORE_LOCK_TIMEOUT": "500ms"}).restore_lock_timeout == "500ms"
    with pytest.raises(ConfigError, match="TENANT_BACKUP_RESTORE_LOCK_TIMEOUT"):
        Settings.from_env({"TENANT_BACKUP_RESTORE_LOCK_TIMEOUT": "10s; DROP TABLE x"})


def test_parse_copy_line():
    assert parse_copy_line('COPY public.sales (id, "Tenant Id", "we""ird") FROM stdin;') == (
        "public",
        "sales",
        ["id", "Tenant Id", 'we"ird'],
    )
    assert parse_copy_line('COPY "My.Schema"."t" FROM stdin;') == ("My.Schema", "t", [])
    with pytest.raises(ValueError):
        parse_copy_line("COPY public.sales (id FROM stdin;")
