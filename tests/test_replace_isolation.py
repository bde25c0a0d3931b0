"""`restore --replace` never harms a row that is not the restored tenant's (issue 18, items 1 and 6),
on real PostgreSQL, real archives and the real command. No mocks.

- A row of another tenant (or of a table outside the backup) that references a row the restore
  deletes: refused (exit 10) naming the constraint, both tables and the count, in the dry run too,
  nothing changed. One that references a row the restore keeps: left alone, the restore goes on.
- A trigger that changes another tenant's rows while the restore writes: caught by the proof in the
  restore's transaction, rolled back. A trigger writing only the tenant's own rows: allowed, noted.
- Rows are matched by primary key: clashing unique values, swapped ones, re-parented children,
  identity columns and tables without a primary key all come back exactly (a schema unlike the sample).
- No per-row foreign-key scan of an unindexed referencing table (the 379 s replace of the report);
  where one cannot be avoided, a warning names the index.
"""

from __future__ import annotations

import os
import secrets
import time

import pytest
from test_restore import KEYS, _backup, _exec, _hashes, _locations
from variant_db import CRM_ENV, CRM_SCHEMA, variant_db

from backup_assets.cli import main as cli_main
from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.codec.keyring import Keyring
from backup_assets.core.errors import RestoreError, RestoreRefused
from backup_assets.core.restore import restore_tenant
from backup_assets.core.settings import SourceSettings
from backup_assets.sample.generate import add_tenants, create_sample_database


@pytest.fixture(scope="module")
def keyring():
    return Keyring.parse(KEYS)


@pytest.fixture
def live(pg_server_dsn, keyring, tmp_path):
    """A sample database of this test's own, 3 tenants; the second (B) backed up."""
    db = create_sample_database(pg_server_dsn, f"replace_iso_{os.getpid()}_{secrets.token_hex(3)}")
    tenants = add_tenants(db, 3, rows=20, status="ACTIVE", seed=11)
    locs = _locations(tmp_path / "local")
    manifest = _backup(db, tenants[1].id, keyring, locs, tmp_path)
    try:
        yield db, [t.id for t in tenants], locs, manifest
    finally:
        _exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')


def _cli(monkeypatch, tmp_path, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setenv("TENANT_BACKUP_KEYS", KEYS)
    monkeypatch.setenv("TENANT_BACKUP_LOCATIONS", "local")
    monkeypatch.setenv("TENANT_BACKUP_LOCAL_DIR", str(tmp_path / "local"))
    monkeypatch.setenv("TENANT_BACKUP_WORK_DIR", str(tmp_path / "work"))
    code = cli_main(["restore", "--location", "local", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _state(db, tenants, manifest):
    return {t: _hashes(db.admin_dsn, manifest, t) for t in tenants}


def _new_sale(db, tenant) -> int:
    return _exec(
        db.admin_dsn,
        "INSERT INTO sales (tenant_id, branch_id, sale_number, subtotal, tax, total, payment_method, status, created_at)"
        " SELECT tenant_id, branch_id, 'NEW-SINCE-BACKUP', 1, 0, 1, 'cash', 'completed', now()"
        " FROM sales WHERE tenant_id = %s ORDER BY id LIMIT 1 RETURNING id",
        (tenant,),
    )[0][0]


def _cross_reference(db, tenant_a, sale_id, *, loyalty: bool = True) -> None:
    """Tenant A's sale item (and loyalty transaction) pointing at sale `sale_id` (another tenant's)."""
    _exec(
        db.admin_dsn,
        "INSERT INTO sale_items (tenant_id, sale_id, item_id, quantity, unit_price)"
        " SELECT %(a)s, %(s)s, id, 1, 1 FROM inventory_items WHERE tenant_id = %(a)s ORDER BY id LIMIT 1",
        {"a": tenant_a, "s": sale_id},
    )
    if loyalty:
        _exec(
            db.admin_dsn,
            "INSERT INTO loyalty_transactions (tenant_id, customer_id, sale_id, points, kind, created_at)"
            " SELECT %(a)s, id, %(s)s, 1, 'earn', now() FROM customers WHERE tenant_id = %(a)s ORDER BY id LIMIT 1",
            {"a": tenant_a, "s": sale_id},
        )


def test_a_reference_into_a_row_the_restore_deletes_is_refused(live, monkeypatch, tmp_path, capsys):
    db, (a, b, c), _locs, manifest = live
    doomed = _new_sale(db, b)  # created since the backup: the restore deletes it
    _cross_reference(db, a, doomed)
    before = _state(db, (a, b, c), manifest)
    for dry_run in (["--dry-run"], []):
        code, out, err = _cli(
            monkeypatch, tmp_path, capsys, "--tenant", b, "--target-dsn", db.owner_dsn, "--replace", *dry_run
        )
        assert code == 10, (out, err)
        line = err.strip().splitlines()[-1]
        assert line.startswith("tenant-backup: error: --replace refused, nothing changed: rows that are not this")
        assert "1 row(s) of other tenants in public.sale_items reference this tenant's rows of public.sales" in line
        assert "sale_items_sale_id_fkey, ON DELETE CASCADE" in line
        assert "1 row(s) of other tenants in public.loyalty_transactions" in line
        assert "loyalty_transactions_sale_id_fkey, ON DELETE NO ACTION" in line
    assert _state(db, (a, b, c), manifest) == before


def test_a_reference_from_a_table_outside_the_backup_is_refused(live, keyring):
    db, (a, b, c), locs, manifest = live
    doomed = _new_sale(db, b)
    # Tables added since the backup: one the restoring role reads, one it cannot.
    _exec(
        db.owner_dsn,
        "CREATE TABLE sale_notes (id serial PRIMARY KEY, sale_id bigint REFERENCES sales ON DELETE SET NULL, note text);"
        f"INSERT INTO sale_notes (sale_id, note) VALUES ({doomed}, 'keep me')",
    )
    _exec(db.admin_dsn, "CREATE TABLE secret_notes (sale_id bigint REFERENCES sales)")
    before = _state(db, (a, b, c), manifest)
    for dry_run in (True, False):
        with pytest.raises(RestoreRefused) as err:
            restore_tenant(
                b,
                locations=locs,
                location="local",
                target_dsn=db.owner_dsn,
                keyring=keyring,
                replace=True,
                dry_run=dry_run,
            )
        assert "1 row(s) of the table outside the backup public.sale_notes reference this tenant's rows" in str(
            err.value
        )
        assert "sale_notes_sale_id_fkey, ON DELETE SET NULL" in str(err.value)
        assert "cannot read public.secret_notes (no SELECT privilege)" in str(err.value)
    assert _state(db, (a, b, c), manifest) == before
    assert _exec(db.admin_dsn, "SELECT sale_id, note FROM sale_notes") == [(doomed, "keep me")]


def test_a_reference_into_a_row_the_restore_keeps_is_left_alone(live, monkeypatch, tmp_path, capsys, keyring):
    # The report: tenant A's sale item referencing one of tenant B's sales; `restore --tenant B
    # --replace` removed A's row through ON DELETE CASCADE and exited 0.
    db, (a, b, c), locs, manifest = live
    original_b = _hashes(db.admin_dsn, manifest, b)
    kept = _exec(db.admin_dsn, "SELECT min(id) FROM sales WHERE tenant_id = %s", (b,))[0][0]
    _cross_reference(db, a, kept, loyalty=False)
    _exec(db.admin_dsn, "UPDATE sales SET total = total + 1000 WHERE id = %s", (kept,))  # B damaged
    others = {t: _hashes(db.admin_dsn, manifest, t) for t in (a, c)}

    code, out, err = _cli(monkeypatch, tmp_path, capsys, "--tenant", b, "--target-dsn", db.owner_dsn, "--replace")
    assert code == 0, err
    assert _exec(db.admin_dsn, "SELECT count(*) FROM sale_items WHERE tenant_id = %s AND sale_id = %s", (a, kept)) == [
        (1,)
    ]
    assert {t: _hashes(db.admin_dsn, manifest, t) for t in (a, c)} == others
    assert _hashes(db.admin_dsn, manifest, b) == original_b

    # The dry run names such references (an application bug worth knowing about).
    plan = restore_tenant(
        b, locations=locs, location="local", target_dsn=db.owner_dsn, keyring=keyring, replace=True, dry_run=True
    )
    assert any(
        "1 row(s) of other tenants in public.sale_items reference this tenant's rows of public.sales" in w
        and "kept" in w
        for w in plan.warnings
    )
    assert plan.tables["public.sales"].deleted == 0 and plan.tables["public.sales"].updated == 0


def test_a_trigger_that_changes_another_tenant_is_rolled_back(live, keyring):
    db, (a, b, c), locs, manifest = live
    _exec(db.admin_dsn, "UPDATE customers SET notes = 'damaged' WHERE tenant_id = %s", (b,))
    _exec(
        db.admin_dsn,
        f"""
        CREATE FUNCTION touch_other() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF pg_trigger_depth() > 1 THEN RETURN NULL; END IF;
            UPDATE customers SET notes = 'touched by a trigger' WHERE tenant_id = '{c}';
            DELETE FROM notifications WHERE id = (SELECT min(id) FROM notifications WHERE tenant_id = '{a}');
            RETURN NULL;
        END $$;
        CREATE TRIGGER touch_other AFTER INSERT OR UPDATE OR DELETE ON customers
            FOR EACH STATEMENT EXECUTE FUNCTION touch_other();""",
    )
    before = _state(db, (a, b, c), manifest)
    with pytest.raises(
        RestoreError, match=r"rolled back, nothing changed: rows that are not this tenant's changed"
    ) as err:
        restore_tenant(b, locations=locs, location="local", target_dsn=db.owner_dsn, keyring=keyring, replace=True)
    assert "public.customers" in str(err.value) and "public.notifications" in str(err.value)
    assert not isinstance(err.value, RestoreRefused)
    assert _state(db, (a, b, c), manifest) == before


def test_without_write_counters_every_table_is_checked(live, keyring):
    # track_counts off: the transaction's counters say nothing, so every table is compared, as it was
    # (a second session on the exported snapshot) and as it is.
    db, (a, b, c), locs, manifest = live
    original_b = _hashes(db.admin_dsn, manifest, b)
    _exec(db.admin_dsn, f'ALTER DATABASE "{db.dbname}" SET track_counts = off')
    _exec(db.admin_dsn, "UPDATE customers SET notes = 'damaged' WHERE tenant_id = %s", (b,))
    _exec(
        db.admin_dsn,
        f"""
        CREATE FUNCTION touch_other() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE notifications SET subject = 'touched' WHERE tenant_id = '{c}'; RETURN NULL; END $$;
        CREATE TRIGGER touch_other AFTER UPDATE ON customers FOR EACH STATEMENT EXECUTE FUNCTION touch_other();""",
    )
    before = _state(db, (a, b, c), manifest)
    with pytest.raises(RestoreError, match=r"public\.notifications: rows that are not this tenant's") as err:
        restore_tenant(b, locations=locs, location="local", target_dsn=db.owner_dsn, keyring=keyring, replace=True)
    assert "public.customers" not in str(err.value)  # only this tenant's customers were written there
    assert _state(db, (a, b, c), manifest) == before
    _exec(db.admin_dsn, "DROP TRIGGER touch_other ON customers")
    result = restore_tenant(b, locations=locs, location="local", target_dsn=db.owner_dsn, keyring=keyring, replace=True)
    assert _hashes(db.admin_dsn, manifest, b) == original_b
    assert {t: _hashes(db.admin_dsn, manifest, t) for t in (a, c)} == {t: before[t] for t in (a, c)}
    assert result.tables["public.customers"].updated > 0


def test_a_trigger_that_writes_the_tenants_own_rows_is_allowed(live, keyring):
    db, (a, b, c), locs, manifest = live
    original_b = _hashes(db.admin_dsn, manifest, b)
    _exec(db.admin_dsn, "UPDATE customers SET notes = 'damaged' WHERE tenant_id = %s", (b,))
    _exec(
        db.owner_dsn,
        """
        CREATE TABLE restore_audit (tenant_id uuid NOT NULL, what text NOT NULL);
        CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO restore_audit VALUES (NEW.tenant_id, TG_OP); RETURN NULL; END $$;
        CREATE TRIGGER audit AFTER UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION audit();""",
    )
    others = {t: _hashes(db.admin_dsn, manifest, t) for t in (a, c)}
    result = restore_tenant(b, locations=locs, location="local", target_dsn=db.owner_dsn, keyring=keyring, replace=True)
    assert _hashes(db.admin_dsn, manifest, b) == original_b
    assert {t: _hashes(db.admin_dsn, manifest, t) for t in (a, c)} == others
    updated = result.tables["public.customers"].updated
    assert updated > 0
    assert _exec(db.admin_dsn, "SELECT count(*) FROM restore_audit WHERE tenant_id = %s", (b,)) == [(updated,)]
    assert any("public.restore_audit" in w and "this tenant's rows (checked)" in w for w in result.warnings)


def test_cross_tenant_reference_on_another_schema(pg_server_dsn, keyring, tmp_path):
    # Other schema, table, column and setting names; integer tenant ids.
    with variant_db(pg_server_dsn) as db:
        db.run(CRM_SCHEMA)
        settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn, **CRM_ENV})
        locs = _locations(tmp_path / "local", **CRM_ENV)
        archive = tmp_path / "org1.tbk"
        manifest = export_tenant(settings, keyring, "1", archive)
        locs["local"].put("1", manifest.backup_id, archive, manifest)
        db.run(
            "WITH a AS (INSERT INTO crm.accounts (org, label) VALUES (1, 'new since') RETURNING id)"
            " INSERT INTO crm.contacts (org, account_id, email) SELECT 2, id, 'org2@x' FROM a"
        )
        filters = {"crm.contact_notes": "contact_id IN (SELECT id FROM crm.contacts WHERE org::text = %(t)s)"}
        before = {t: _hashes(db.admin_dsn, manifest, t, column="org", filters=filters) for t in ("1", "2", "3")}
        for dry_run in (True, False):
            with pytest.raises(RestoreRefused) as err:
                restore_tenant(
                    "1",
                    locations=locs,
                    location="local",
                    target_dsn=db.owner_dsn,
                    keyring=keyring,
                    replace=True,
                    dry_run=dry_run,
                    tenant_id_pattern=CRM_ENV["TENANT_BACKUP_TENANT_ID_PATTERN"],
                )
            assert "1 row(s) of other tenants in crm.contacts reference this tenant's rows of crm.accounts" in str(
                err.value
            )
            assert "contacts_account_id_fkey, ON DELETE NO ACTION" in str(err.value)
        after = {t: _hashes(db.admin_dsn, manifest, t, column="org", filters=filters) for t in ("1", "2", "3")}
        assert after == before


# A schema unlike the sample's: tenant column `tid`, text tenant ids, setting `shop.tenant`.
SHOP_ENV = {
    "TENANT_BACKUP_TENANT_COLUMN": "tid",
    "TENANT_BACKUP_TENANT_SETTING": "shop.tenant",
    "TENANT_BACKUP_TENANTS_QUERY": "SELECT tid FROM shop.tenants",
    "TENANT_BACKUP_TENANT_ID_PATTERN": "[a-z]+",
}
SHOP_SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.tenants (tid text PRIMARY KEY);
ALTER TABLE shop.tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON shop.tenants USING (tid = current_setting('shop.tenant', true)
                                       OR coalesce(current_setting('shop.tenant', true), '') = '');
CREATE TABLE shop.people (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tid text NOT NULL REFERENCES shop.tenants,
                          email text NOT NULL, code text NOT NULL, UNIQUE (tid, email), UNIQUE (code));
CREATE TABLE shop.orders (id int PRIMARY KEY, tid text NOT NULL REFERENCES shop.tenants,
                          person_id int NOT NULL REFERENCES shop.people, ref text);
CREATE TABLE shop.lines (tid text NOT NULL, order_id int NOT NULL REFERENCES shop.orders ON DELETE CASCADE, qty int);
CREATE TABLE shop.tags (tid text NOT NULL, name text NOT NULL);
CREATE UNIQUE INDEX ON shop.tags (tid, lower(name));
DO $$ DECLARE t text; BEGIN
  FOREACH t IN ARRAY ARRAY['people', 'orders', 'lines', 'tags'] LOOP
    EXECUTE format('ALTER TABLE shop.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY p ON shop.%I USING (tid = current_setting(''shop.tenant''))', t);
  END LOOP; END $$;
GRANT USAGE ON SCHEMA shop TO {backup};
GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {backup};
GRANT SELECT ON ALL SEQUENCES IN SCHEMA shop TO {backup};
INSERT INTO shop.tenants VALUES ('acme'), ('bolt');
INSERT INTO shop.people (tid, email, code)
     SELECT t, t || g || '@x', t || '-' || g FROM unnest(ARRAY['acme', 'bolt']) t, generate_series(1, PEOPLE) g;
INSERT INTO shop.orders SELECT p.id, p.tid, p.id, 'r' || p.id FROM shop.people p;
INSERT INTO shop.lines SELECT o.tid, o.id, 1 FROM shop.orders o;
INSERT INTO shop.tags SELECT t, 'Tag' || g FROM unnest(ARRAY['acme', 'bolt']) t, generate_series(1, 3) g;
"""
SHOP_TABLES = ("shop.people", "shop.orders", "shop.lines", "shop.tags")


def _shop(pg_server_dsn, keyring, tmp_path, people: int):
    ctx = variant_db(pg_server_dsn)
    db = ctx.__enter__()
    try:
        db.run(SHOP_SCHEMA.replace("PEOPLE", str(people)))
        settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn, **SHOP_ENV})
        locs = _locations(tmp_path / "local", **SHOP_ENV)
        archive = tmp_path / "acme.tbk"
        manifest = export_tenant(settings, keyring, "acme", archive, ExportOptions())
        locs["local"].put("acme", manifest.backup_id, archive, manifest)
    except BaseException:
        ctx.__exit__(None, None, None)
        raise
    return ctx, db, locs, manifest


def _shop_state(db, manifest):
    return {t: _hashes(db.admin_dsn, manifest, t, column="tid", filters={}) for t in ("acme", "bolt")}


def _replace_acme(db, locs, keyring, **kw):
    return restore_tenant(
        "acme",
        locations=locs,
        location="local",
        target_dsn=db.owner_dsn,
        keyring=keyring,
        replace=True,
        tenant_id_pattern=SHOP_ENV["TENANT_BACKUP_TENANT_ID_PATTERN"],
        **kw,
    )


def test_rows_matched_by_key_come_back_exactly(pg_server_dsn, keyring, tmp_path):
    ctx, db, locs, manifest = _shop(pg_server_dsn, keyring, tmp_path, people=6)
    try:
        before = _shop_state(db, manifest)
        db.run(
            """
            -- person 1 deleted and re-created since: same email (a unique key), another id
            DELETE FROM shop.lines WHERE order_id = 1; DELETE FROM shop.orders WHERE id = 1;
            DELETE FROM shop.people WHERE id = 1;
            INSERT INTO shop.people (tid, email, code) VALUES ('acme', 'acme1@x', 'acme-1');
            -- persons 2 and 3 swapped their codes (a unique key)
            UPDATE shop.people SET code = 'tmp' WHERE id = 2;
            UPDATE shop.people SET code = 'acme-2' WHERE id = 3;
            UPDATE shop.people SET code = 'acme-3' WHERE id = 2;
            -- order 5 moved to a person created since (whom the restore deletes)
            INSERT INTO shop.people (tid, email, code) VALUES ('acme', 'new@x', 'acme-new');
            UPDATE shop.orders SET person_id = (SELECT id FROM shop.people WHERE email = 'new@x'), ref = 'moved'
             WHERE id = 5;
            -- a table without primary key and one with an expression unique index
            UPDATE shop.lines SET qty = 99 WHERE tid = 'acme';
            DELETE FROM shop.tags WHERE tid = 'acme' AND name = 'Tag1';
            INSERT INTO shop.tags VALUES ('acme', 'TAG2X');"""
        )
        assert _shop_state(db, manifest)["acme"] != before["acme"]
        dry = _replace_acme(db, locs, keyring, dry_run=True)
        result = _replace_acme(db, locs, keyring)
        assert _shop_state(db, manifest) == before
        people = result.tables["shop.people"]
        assert people.action.startswith("by primary key") and result.tables["shop.lines"].action.startswith("delete")
        # Deleted: the re-created person (13: email clash), 2 and 3 (swapped codes), new@x (not in the
        # backup); inserted from the backup: 1, 2, 3; 4, 5 and 6 untouched. Orders 2, 3 (their people go)
        # and 5 (its new person goes) are deleted and loaded again, 4 and 6 untouched.
        assert (people.deleted, people.updated, people.inserted, people.unchanged) == (4, 0, 3, 3)
        orders = result.tables["shop.orders"]
        assert (orders.deleted, orders.updated, orders.inserted, orders.unchanged) == (3, 0, 4, 2)
        assert (result.tables["shop.tags"].deleted, result.tables["shop.tags"].inserted) == (3, 3)
        for name in SHOP_TABLES:
            d, r = dry.tables[name], result.tables[name]
            assert (d.deleted, d.updated, d.inserted, d.unchanged) == (r.deleted, r.updated, r.inserted, r.unchanged)
    finally:
        ctx.__exit__(None, None, None)


def _seq_scans(dsn, table) -> int:
    return _exec(dsn, "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = %s::regclass", (table,))[0][0]


def test_replace_scans_an_unindexed_referencing_table_a_few_times_not_once_per_row(pg_server_dsn, keyring, tmp_path):
    # shop.orders.person_id has no index: deleting a person checks it with a scan of all orders.
    # The report: 368 s of a 379 s replace in such checks. Kept keys fire no check at all now.
    ctx, db, locs, manifest = _shop(pg_server_dsn, keyring, tmp_path, people=3000)
    try:
        before = _shop_state(db, manifest)
        db.run("UPDATE shop.people SET email = 'changed-' || email WHERE tid = 'acme' AND id % 10 = 0")
        scans = _seq_scans(db.admin_dsn, "shop.orders")
        t0 = time.monotonic()
        result = _replace_acme(db, locs, keyring)
        elapsed = time.monotonic() - t0
        assert _shop_state(db, manifest) == before
        deadline = time.monotonic() + 10  # the restore's session flushes its statistics when it ends
        while _seq_scans(db.admin_dsn, "shop.orders") == scans and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _seq_scans(db.admin_dsn, "shop.orders") - scans < 50, f"{elapsed:.1f}s"
        assert result.tables["shop.people"].updated == 300 and result.tables["shop.people"].deleted == 0
        assert not [w for w in result.warnings if "CREATE INDEX" in w]
    finally:
        ctx.__exit__(None, None, None)


def test_an_unavoidable_per_row_check_is_named_with_its_index(pg_server_dsn, keyring, tmp_path):
    # shop.tags has no primary key: its rows are all deleted and loaded again; a table referencing
    # it without an index would be scanned once per deleted tag.
    ctx, db, locs, manifest = _shop(pg_server_dsn, keyring, tmp_path, people=5)
    try:
        db.run(
            "ALTER TABLE shop.tags ADD COLUMN n int;"
            "INSERT INTO shop.tags SELECT 'acme', 'x' || g, g + 10 FROM generate_series(1, 2000) g;"
            "ALTER TABLE shop.tags ADD UNIQUE (n);"
            "CREATE TABLE shop.tag_uses (n int REFERENCES shop.tags (n));"
            "INSERT INTO shop.tag_uses SELECT NULL FROM generate_series(1, 6000);"
            "ANALYZE shop.tag_uses"
        )
        messages: list[str] = []
        result = _replace_acme(db, locs, keyring, report=messages.append)
        assert result.tables["shop.tags"].action.startswith("delete this tenant's rows")
        assert _exec(db.admin_dsn, "SELECT count(*) FROM shop.tags WHERE tid = 'acme'") == [(3,)]
        warning = [m for m in messages if "CREATE INDEX ON shop.tag_uses (n)" in m]
        assert warning and "deleting 2003 row(s) of shop.tags checks shop.tag_uses (n) once per row" in warning[0]
    finally:
        ctx.__exit__(None, None, None)
