"""Create and fill the sample multi-tenant database (schema.sql), server-side and deterministically.

Every table is filled by ONE `INSERT ... SELECT ... generate_series` per call, for all the tenants of
that call at once; Python only computes tenant ids and per-tenant counts. Values come from
`hashint8extended(n, seed)`, so the same calls on an empty database give the same content.

Test oracles: `tenant_row_counts` counts a tenant's rows as the owner with explicit WHERE clauses,
independently of RLS, so tests can compare it with what a dump or the backup role sees.

Why this module is long: it is mostly SQL, one statement per sample table, kept beside the Python
that parameterises it so a table's generator reads in one place.
"""

from __future__ import annotations

import uuid
from contextlib import closing
from dataclasses import dataclass
from importlib import resources

import psycopg2
from psycopg2 import sql

from backup_assets.core.embedded_pg import dsn_for

__all__ = [
    "SampleDatabase",
    "TenantInfo",
    "TENANT_TABLES",
    "CHILD_TABLES",
    "SHARED_TABLES",
    "REGISTRY_TABLE",
    "TENANT_SETTING",
    "canary_for",
    "create_sample_database",
    "add_tenants",
    "add_large_tenant",
    "populate_default",
    "tenant_row_counts",
    "list_tenants",
]

TENANT_SETTING = "app.current_tenant"
REGISTRY_TABLE = "public.tenants"
# Tables with a tenant_id column (strict RLS policy on it).
TENANT_TABLES = tuple(
    f"public.{t}"
    for t in (
        "branches",
        "terminals",
        "inventory_categories",
        "inventory_items",
        "loyalty_tiers",
        "customers",
        "sales",
        "sale_items",
        "loyalty_transactions",
        "repair_orders",
        "suppliers",
        "purchase_orders",
        "purchase_order_items",
        "pricing_rules",
        "notifications",
        "tenant_settings",
    )
)
# Child tables without a tenant column, filtered through their parent: table -> (fk column, parent).
CHILD_TABLES = {"public.repair_order_photos": ("repair_order_id", "public.repair_orders")}
# No tenant column, no RLS: dumped whole with every tenant (declared so: SampleDatabase.settings).
SHARED_TABLES = ("public.metal_types",)
# The registry query of the sample's configuration: the active tenants with their display names.
NAMED_TENANTS_QUERY = "SELECT id::text, name FROM tenants WHERE status = 'ACTIVE' ORDER BY name"

STATUSES = ("ACTIVE", "SUSPENDED", "PENDING_DELETION")
_ID_NAMESPACE = uuid.UUID("5b0e1c3a-8f7d-4e52-9a41-2f6c0d9e7b13")

# Raw `pg_dump -Fc -Z0` bytes per unit of `rows` (one sale and its proportional share of every
# other table), measured on this generator; add_large_tenant divides its target by it.
_DUMP_BYTES_PER_ROW = 1614
_DUMP_FIXED_BYTES = 64 * 1024  # schema, registry row, shared lookup data


@dataclass(frozen=True)
class SampleDatabase:
    dbname: str
    admin_dsn: str  # superuser, this database
    owner_dsn: str  # app_owner, this database
    backup_dsn: str  # tenant_backup, this database

    def settings(self) -> dict[str, str]:
        """The sample's configuration for tenant-backup: its source (the backup role), the registry
        query with display names, and its shared lookup table declared shared (TENANT_BACKUP_SHARED_TABLES:
        dumped whole into every archive on purpose, so a backup says so once, as information)."""
        return {
            "TENANT_BACKUP_SOURCE_DSN": self.backup_dsn,
            "TENANT_BACKUP_TENANTS_QUERY": NAMED_TENANTS_QUERY,
            "TENANT_BACKUP_SHARED_TABLES": ",".join(SHARED_TABLES),
        }


@dataclass(frozen=True)
class TenantInfo:
    id: str  # canonical lower-case uuid string
    name: str
    status: str


def canary_for(tenant_id: str) -> str:
    """The string planted in several text columns of every row set of that tenant."""
    return f"canary-{tenant_id}"


def _schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def _connect(dsn: str, *, autocommit: bool = False):
    # Used with contextlib.closing, never `with conn:` (psycopg2 2.9 opens a transaction there even
    # in autocommit mode, which CREATE/DROP DATABASE refuse).
    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    return conn


def _ensure_role(cur, role: str, attrs: str, password: str | None) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    # ALTER too: a pre-existing role must not keep SUPERUSER/BYPASSRLS by accident.
    cur.execute(sql.SQL(f"{verb} ROLE {{}} {attrs}").format(sql.Identifier(role)))
    if password is not None:
        cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role)), (password,))


def create_sample_database(
    server_admin_dsn: str,
    dbname: str = "tenants_sample",
    *,
    owner_role: str = "app_owner",
    backup_role: str = "tenant_backup",
    drop_existing: bool = True,
    owner_password: str | None = None,
    backup_password: str | None = None,
) -> SampleDatabase:
    """Create `dbname` (dropping it first if `drop_existing`, else failing if it exists) with the
    sample schema and the shared lookup data, no tenants. Roles are cluster-wide: created if
    missing, their attributes (re)asserted if present."""
    with closing(_connect(server_admin_dsn, autocommit=True)) as conn, conn.cursor() as cur:
        _ensure_role(cur, owner_role, "LOGIN NOSUPERUSER NOBYPASSRLS", owner_password)
        _ensure_role(cur, backup_role, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE", backup_password)
        if drop_existing:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        # Owned by the owner role: it then owns schema public (pg_database_owner) and may create in it.
        cur.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(dbname), sql.Identifier(owner_role)
            )
        )

    admin_dsn = dsn_for(server_admin_dsn, dbname=dbname)
    conn = _connect(admin_dsn)
    try:
        with conn.cursor() as cur:
            # Build as the owner so it owns every table and sequence, exactly like an app's migrations.
            cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner_role)))
            cur.execute(_schema_sql())
            b = sql.Identifier(backup_role)
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(b))
            cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(b))
            cur.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(b))
            # Tables a test adds later (as the owner) stay readable by the backup role.
            cur.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(b))
            cur.execute(
                sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}").format(b)
            )
            cur.execute("RESET ROLE")
        conn.commit()
    finally:
        conn.close()

    return SampleDatabase(
        dbname=dbname,
        admin_dsn=admin_dsn,
        owner_dsn=dsn_for(server_admin_dsn, user=owner_role, password=owner_password, dbname=dbname),
        backup_dsn=dsn_for(server_admin_dsn, user=backup_role, password=backup_password, dbname=dbname),
    )


# --- generation ----------------------------------------------------------------------------------

_WORDS_ADJ = ["Golden", "Silver", "Royal", "Crystal", "Diamond", "Emerald", "Ruby", "Sapphire", "Pearl", "Amber"]
_WORDS_NOUN = ["Crown", "Lotus", "Star", "Heritage", "Moon", "Orchid", "Falcon", "Harbor", "Meadow", "Atlas"]


def _counts(rows: int) -> dict[str, int]:
    """Per-tenant row counts of the parent tables for `rows` sales; children are drawn per parent."""
    r = max(1, int(rows))
    branches = 2 + r // 20000
    return {
        "n_branches": branches,
        "n_terminals": 2 * branches,
        "n_categories": 8,
        "n_items": max(10, r // 2),
        "n_tiers": 4,
        "n_customers": max(5, r // 2),
        "n_sales": r,
        "n_repairs": max(2, r // 10),
        "n_suppliers": 3 + r // 5000,
        "n_pos": max(2, r // 20),
        "n_rules": 5,
        "n_notifications": max(3, r // 2),
    }


# pg_temp helpers: inlined SQL functions, gone with the session, never part of the sample schema.
_HELPERS = r"""
CREATE FUNCTION pg_temp.rnd(n bigint, seed bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $f$ SELECT hashint8extended(n, seed) & 9223372036854775807 $f$;
CREATE FUNCTION pg_temp.pick(arr text[], n bigint, seed bigint) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $f$ SELECT arr[1 + (hashint8extended(n, seed) & 9223372036854775807) % cardinality(arr)] $f$;
CREATE FUNCTION pg_temp.lorem(n bigint, seed bigint, minlen int, spread int) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $f$ SELECT substr(
        'Hand-finished band with a high-polish exterior and comfort-fit interior. Prong setting '
        'holds a brilliant-cut centre stone, flanked by pave accents along the shoulders. Hallmarked '
        'and assayed; certificate of authenticity included. Customer reports a loose claw on the '
        'setting and light scratches on the shank; clean, polish, re-tip prongs and check all stones. '
        'Engraving on the inside reads a date and initials, to be preserved during resizing. Chain '
        'links stretched near the clasp; replace the jump ring and the lobster clasp with matching metal. '
        'Vintage piece, filigree work, handle with care, photograph before and after the repair. ',
        1 + ((hashint8extended(n, seed) & 9223372036854775807) % 200)::int,
        minlen + ((hashint8extended(n, seed + 7) & 9223372036854775807) % greatest(spread, 1))::int) $f$;
"""


def _fill_sql() -> list[str]:
    """One statement per table, over all rows of the temp table _gen (the tenants of this call).

    Parents are inserted with RETURNING into _m_<table>(tenant_id, rn, id) so children can pick
    their parent as `rn = 1 + rnd % count`, a plain join instead of per-row subqueries.
    """
    ts = "timestamptz '2024-01-01 00:00:00+00' + interval '1 second' * (pg_temp.rnd({n}, t.seed + {salt}) % 63072000)"

    def mapped(table: str, insert: str) -> str:
        return f"""
            WITH ins AS ({insert} RETURNING tenant_id, id)
            INSERT INTO _m_{table} (tenant_id, rn, id)
            SELECT tenant_id, row_number() OVER (PARTITION BY tenant_id ORDER BY id), id FROM ins"""

    def pick(table: str, alias: str, count: str, n: str, salt: int) -> str:
        return (
            f"JOIN _m_{table} {alias} ON {alias}.tenant_id = t.id "
            f"AND {alias}.rn = 1 + pg_temp.rnd({n}, t.seed + {salt}) % t.{count}"
        )

    stmts: list[str] = []
    for table in (
        "branches",
        "terminals",
        "inventory_categories",
        "inventory_items",
        "loyalty_tiers",
        "customers",
        "sales",
        "repair_orders",
        "suppliers",
        "purchase_orders",
    ):
        stmts.append(
            f"CREATE TEMP TABLE _m_{table} (tenant_id uuid, rn bigint, id bigint, "
            f"PRIMARY KEY (tenant_id, rn)) ON COMMIT DROP"
        )

    stmts.append(
        mapped(
            "branches",
            f"""
        INSERT INTO branches (tenant_id, name, address, phone, opened_at, is_active)
        SELECT t.id, t.name || ' - ' || pg_temp.pick(ARRAY['Downtown','Mall','Airport','Old Town','Harbour','Station'], g, t.seed + 1) || ' ' || g,
               g || ' ' || pg_temp.pick(ARRAY['High Street','Market Square','Queen Road','Elm Avenue'], g, t.seed + 2),
               '+1-555-' || lpad((pg_temp.rnd(g, t.seed + 3) % 10000)::text, 4, '0'),
               {ts.format(n="g", salt=4)}, g % 7 <> 0
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_branches) g ORDER BY t.ord, g""",
        )
    )

    stmts.append(
        mapped(
            "terminals",
            f"""
        INSERT INTO terminals (tenant_id, branch_id, code, config, last_seen_at)
        SELECT t.id, b.id, 'POS-' || g,
               jsonb_build_object('printer', pg_temp.pick(ARRAY['epson-tm30','star-tsp100'], g, t.seed + 11),
                                  'drawer', g % 2 = 0, 'firmware', '2.' || (g % 9)),
               {ts.format(n="g", salt=12)}
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_terminals) g
        JOIN _m_branches b ON b.tenant_id = t.id AND b.rn = 1 + (g - 1) % t.n_branches
        ORDER BY t.ord, g""",
        )
    )

    stmts.append(
        mapped(
            "inventory_categories",
            """
        INSERT INTO inventory_categories (tenant_id, name, description)
        SELECT t.id, (ARRAY['Rings','Necklaces','Bracelets','Earrings','Watches','Pendants','Brooches','Anklets'])[1 + (g - 1) % 8]
                     || CASE WHEN g > 8 THEN ' ' || g ELSE '' END,
               'Category ' || g || ' of ' || t.name
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_categories) g ORDER BY t.ord, g""",
        )
    )

    stmts.append(
        mapped(
            "inventory_items",
            f"""
        INSERT INTO inventory_items (tenant_id, category_id, branch_id, metal_code, sku, name, description,
                                     weight_grams, cost, price, quantity, attributes, created_at)
        SELECT t.id, c.id, b.id,
               pg_temp.pick(ARRAY['AU24','AU22','AU18','AU14','AG925','PT950','PD950','TI'], g, t.seed + 21),
               'SKU-' || lpad(g::text, 7, '0'),
               pg_temp.pick(ARRAY['Solitaire','Eternity','Tennis','Cuban','Rope','Halo','Signet','Cluster'], g, t.seed + 22)
                 || ' ' || pg_temp.pick(ARRAY['ring','chain','bracelet','stud','pendant','bangle'], g, t.seed + 23),
               pg_temp.lorem(g, t.seed + 24, 60, 180),
               (pg_temp.rnd(g, t.seed + 25) % 50000) / 1000.0,
               (pg_temp.rnd(g, t.seed + 26) % 500000) / 100.0,
               (pg_temp.rnd(g, t.seed + 26) % 500000) / 100.0 * 1.8,
               (pg_temp.rnd(g, t.seed + 27) % 12)::int,
               jsonb_build_object('stone', pg_temp.pick(ARRAY['diamond','ruby','sapphire','emerald','none'], g, t.seed + 28),
                                  'carat', (pg_temp.rnd(g, t.seed + 29) % 300) / 100.0,
                                  'size', 4 + pg_temp.rnd(g, t.seed + 30) % 10),
               {ts.format(n="g", salt=31)}
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_items) g
        {pick("inventory_categories", "c", "n_categories", "g", 32)}
        {pick("branches", "b", "n_branches", "g", 33)}
        ORDER BY t.ord, g""",
        )
    )

    stmts.append(
        mapped(
            "loyalty_tiers",
            """
        INSERT INTO loyalty_tiers (tenant_id, name, min_points, discount_pct)
        SELECT t.id, (ARRAY['Bronze','Silver','Gold','Platinum'])[1 + (g - 1) % 4] || CASE WHEN g > 4 THEN ' ' || g ELSE '' END,
               (g - 1) * 1000, (g - 1) * 2.5
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_tiers) g ORDER BY t.ord, g""",
        )
    )

    stmts.append(
        mapped(
            "customers",
            f"""
        INSERT INTO customers (tenant_id, tier_id, first_name, last_name, email, phone, birthday, points, notes, created_at)
        SELECT t.id, lt.id,
               pg_temp.pick(ARRAY['Ava','Noah','Mia','Liam','Zara','Omar','Priya','Chen','Lucia','Kofi','Ines','Yuki'], g, t.seed + 41),
               pg_temp.pick(ARRAY['Smith','Patel','Garcia','Nguyen','Okafor','Rossi','Kim','Haddad','Silva','Novak'], g, t.seed + 42),
               'customer' || g || '@t' || left(t.id::text, 8) || '.example.com',
               '+1-555-' || lpad((pg_temp.rnd(g, t.seed + 43) % 10000)::text, 4, '0'),
               date '1950-01-01' + (pg_temp.rnd(g, t.seed + 44) % 20000)::int,
               (pg_temp.rnd(g, t.seed + 45) % 5000)::int,
               'Prefers ' || pg_temp.pick(ARRAY['yellow gold','white gold','platinum','silver'], g, t.seed + 46)
                 || '; ring size ' || (4 + pg_temp.rnd(g, t.seed + 47) % 10) || '. ' || t.canary,
               {ts.format(n="g", salt=48)}
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_customers) g
        {pick("loyalty_tiers", "lt", "n_tiers", "g", 49)}
        ORDER BY t.ord, g""",
        )
    )

    # A quarter of the sales are walk-ins without a customer (nullable FK, like real POS data).
    stmts.append(
        mapped(
            "sales",
            f"""
        INSERT INTO sales (tenant_id, branch_id, terminal_id, customer_id, sale_number, subtotal, tax, total,
                           payment_method, status, created_at)
        SELECT t.id, b.id, tm.id, CASE WHEN g % 4 <> 0 THEN cu.id END,
               'S-' || lpad(g::text, 8, '0'),
               s.sub, round(s.sub * 0.08, 2), s.sub + round(s.sub * 0.08, 2),
               pg_temp.pick(ARRAY['card','cash','transfer','layaway'], g, t.seed + 51),
               pg_temp.pick(ARRAY['COMPLETED','COMPLETED','COMPLETED','REFUNDED','VOID'], g, t.seed + 52),
               {ts.format(n="g", salt=53)}
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_sales) g
        CROSS JOIN LATERAL (SELECT (pg_temp.rnd(g, t.seed + 54) % 1000000) / 100.0 AS sub) s
        {pick("branches", "b", "n_branches", "g", 55)}
        {pick("terminals", "tm", "n_terminals", "g", 56)}
        {pick("customers", "cu", "n_customers", "g", 57)}
        ORDER BY t.ord, g""",
        )
    )

    # 1-4 lines per sale.
    stmts.append("""
        INSERT INTO sale_items (tenant_id, sale_id, item_id, quantity, unit_price, discount)
        SELECT t.id, s.id, i.id, 1 + (pg_temp.rnd(s.rn * 8 + k, t.seed + 61) % 3)::int,
               (pg_temp.rnd(s.rn * 8 + k, t.seed + 62) % 500000) / 100.0,
               CASE WHEN k = 1 THEN (pg_temp.rnd(s.rn, t.seed + 63) % 5000) / 100.0 ELSE 0 END
        FROM _gen t JOIN _m_sales s ON s.tenant_id = t.id
        CROSS JOIN LATERAL generate_series(1, 1 + (pg_temp.rnd(s.rn, t.seed + 64) % 4)::int) k
        JOIN _m_inventory_items i ON i.tenant_id = t.id AND i.rn = 1 + pg_temp.rnd(s.rn * 8 + k, t.seed + 65) % t.n_items
        ORDER BY t.ord, s.rn, k""")

    stmts.append("""
        INSERT INTO loyalty_transactions (tenant_id, customer_id, sale_id, points, kind, created_at)
        SELECT x.tenant_id, x.customer_id, x.id, (x.total / 10)::int,
               CASE WHEN x.status = 'REFUNDED' THEN 'reversal' ELSE 'earn' END, x.created_at
        FROM _gen t JOIN _m_sales s ON s.tenant_id = t.id JOIN sales x ON x.id = s.id
        WHERE x.customer_id IS NOT NULL
        ORDER BY t.ord, s.rn""")

    stmts.append(
        mapped(
            "repair_orders",
            f"""
        INSERT INTO repair_orders (tenant_id, branch_id, customer_id, order_number, description, status,
                                   estimated_cost, received_at, due_at)
        SELECT t.id, b.id, cu.id, 'R-' || lpad(g::text, 7, '0'),
               pg_temp.lorem(g, t.seed + 71, 80, 220),
               pg_temp.pick(ARRAY['RECEIVED','IN_PROGRESS','READY','COLLECTED'], g, t.seed + 72),
               (pg_temp.rnd(g, t.seed + 73) % 50000) / 100.0,
               {ts.format(n="g", salt=74)},
               {ts.format(n="g", salt=74)} + interval '14 days'
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_repairs) g
        {pick("branches", "b", "n_branches", "g", 75)}
        {pick("customers", "cu", "n_customers", "g", 76)}
        ORDER BY t.ord, g""",
        )
    )

    # 1-2 photos per repair order; the image is incompressible bytes (like a JPEG), 0.5-4 KiB.
    stmts.append(f"""
        INSERT INTO repair_order_photos (repair_order_id, caption, content_type, image, taken_at)
        SELECT r.id, 'Photo ' || k || ' of repair ' || r.rn || ' (' || pg_temp.pick(ARRAY['before','after','detail'], r.rn * 4 + k, t.seed + 81) || ') ' || t.canary,
               'image/jpeg',
               (SELECT string_agg(sha256(int8send(t.seed) || int8send(r.rn * 4 + k) || int4send(j)), ''::bytea)
                  FROM generate_series(1, 16 + (pg_temp.rnd(r.rn * 4 + k, t.seed + 82) % 113)::int) j),
               {ts.format(n="r.rn * 4 + k", salt=83)}
        FROM _gen t JOIN _m_repair_orders r ON r.tenant_id = t.id
        CROSS JOIN LATERAL generate_series(1, 1 + (pg_temp.rnd(r.rn, t.seed + 84) % 2)::int) k
        ORDER BY t.ord, r.rn, k""")

    stmts.append(
        mapped(
            "suppliers",
            """
        INSERT INTO suppliers (tenant_id, name, contact_email, phone, address, notes)
        SELECT t.id, pg_temp.pick(ARRAY['Aurum','Argent','Lumen','Gemline','Carat','Bullion'], g, t.seed + 91) || ' Supply ' || g,
               'orders' || g || '@supplier.example.com',
               '+44-20-' || lpad((pg_temp.rnd(g, t.seed + 92) % 100000000)::text, 8, '0'),
               g || ' Hatton Garden, London',
               'Net 30; minimum order ' || (pg_temp.rnd(g, t.seed + 93) % 5000) || ' GBP'
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_suppliers) g ORDER BY t.ord, g""",
        )
    )

    stmts.append(
        mapped(
            "purchase_orders",
            f"""
        INSERT INTO purchase_orders (tenant_id, supplier_id, branch_id, po_number, status, total, ordered_at, expected_at)
        SELECT t.id, su.id, b.id, 'PO-' || lpad(g::text, 6, '0'),
               pg_temp.pick(ARRAY['DRAFT','SENT','RECEIVED','CANCELLED'], g, t.seed + 101),
               (pg_temp.rnd(g, t.seed + 102) % 10000000) / 100.0,
               {ts.format(n="g", salt=103)}, {ts.format(n="g", salt=103)} + interval '21 days'
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_pos) g
        {pick("suppliers", "su", "n_suppliers", "g", 104)}
        {pick("branches", "b", "n_branches", "g", 105)}
        ORDER BY t.ord, g""",
        )
    )

    stmts.append("""
        INSERT INTO purchase_order_items (tenant_id, purchase_order_id, item_id, quantity, unit_cost)
        SELECT t.id, p.id, i.id, 1 + (pg_temp.rnd(p.rn * 4 + k, t.seed + 111) % 20)::int,
               (pg_temp.rnd(p.rn * 4 + k, t.seed + 112) % 300000) / 100.0
        FROM _gen t JOIN _m_purchase_orders p ON p.tenant_id = t.id
        CROSS JOIN generate_series(1, 3) k
        JOIN _m_inventory_items i ON i.tenant_id = t.id AND i.rn = 1 + pg_temp.rnd(p.rn * 4 + k, t.seed + 113) % t.n_items
        ORDER BY t.ord, p.rn, k""")

    stmts.append("""
        INSERT INTO pricing_rules (tenant_id, name, metal_code, category_id, markup_pct, rule, priority, valid_from, valid_to)
        SELECT t.id, 'Rule ' || g,
               CASE WHEN g % 2 = 1 THEN pg_temp.pick(ARRAY['AU24','AU22','AU18','AG925','PT950'], g, t.seed + 121) END,
               CASE WHEN g % 2 = 0 THEN c.id END,
               10 + (pg_temp.rnd(g, t.seed + 122) % 9000) / 100.0,
               jsonb_build_object('round_to', 5, 'min_margin', 0.15, 'applies', pg_temp.pick(ARRAY['retail','wholesale'], g, t.seed + 123)),
               g, date '2024-01-01' + g, CASE WHEN g % 3 = 0 THEN date '2026-12-31' END
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_rules) g
        JOIN _m_inventory_categories c ON c.tenant_id = t.id AND c.rn = 1 + (g - 1) % t.n_categories
        ORDER BY t.ord, g""")

    stmts.append(f"""
        INSERT INTO notifications (tenant_id, recipient, channel, subject, body, payload, created_at, read_at)
        SELECT t.id, 'staff' || (g % 17) || '@t' || left(t.id::text, 8) || '.example.com',
               pg_temp.pick(ARRAY['email','sms','in_app'], g, t.seed + 131),
               pg_temp.pick(ARRAY['Low stock','Repair ready','Gold price update','Purchase order received','Daily summary'], g, t.seed + 132),
               'Notification ' || g || ' for ' || t.name || ': ' || pg_temp.lorem(g, t.seed + 133, 40, 160) || ' ' || t.canary,
               jsonb_build_object('ref', g, 'priority', pg_temp.rnd(g, t.seed + 134) % 3),
               {ts.format(n="g", salt=135)},
               CASE WHEN g % 3 <> 0 THEN {ts.format(n="g", salt=135)} + interval '2 hours' END
        FROM _gen t CROSS JOIN LATERAL generate_series(1, t.n_notifications) g
        ORDER BY t.ord, g""")

    stmts.append("""
        INSERT INTO tenant_settings (tenant_id, key, value, updated_at)
        SELECT t.id, s.key, replace(s.value, '$CANARY', t.canary), timestamptz '2024-01-01 00:00:00+00'
        FROM _gen t CROSS JOIN (VALUES
            ('canary', '$CANARY'), ('currency', 'USD'), ('timezone', 'Europe/London'), ('tax_rate', '0.08'),
            ('receipt_footer', 'Thank you for shopping with us. $CANARY'), ('locale', 'en_GB'),
            ('gold_price_source', 'lbma'), ('low_stock_threshold', '2'), ('loyalty_enabled', 'true'),
            ('invoice_prefix', 'INV-')) AS s(key, value)
        ORDER BY t.ord, s.key""")
    return stmts


_FILL_SQL: list[str] | None = None


def _generate(db: SampleDatabase, tenants: list[TenantInfo], first_index: int, rows: int, seed: int) -> None:
    global _FILL_SQL
    if _FILL_SQL is None:
        _FILL_SQL = _fill_sql()
    counts = _counts(rows)
    conn = _connect(db.owner_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")  # bulk load; the database is throw-away
            cur.execute("SET LOCAL work_mem = '256MB'")
            cur.execute(_HELPERS)
            cur.execute(
                "INSERT INTO tenants (id, name, status, created_at) "
                "SELECT id, name, status, timestamptz '2024-01-01 00:00:00+00' + interval '1 hour' * ord "
                "FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::int[]) AS x(id, name, status, ord)",
                (
                    [t.id for t in tenants],
                    [t.name for t in tenants],
                    [t.status for t in tenants],
                    # created_at follows creation order across calls, so the registry lists in that order.
                    list(range(first_index, first_index + len(tenants))),
                ),
            )
            cols = ", ".join(f"{k} int" for k in counts)
            cur.execute(
                f"CREATE TEMP TABLE _gen (ord int, id uuid, name text, canary text, seed bigint, {cols}) ON COMMIT DROP"
            )
            cur.execute(
                f"INSERT INTO _gen SELECT ord, id, name, 'canary-' || id::text, "
                f"hashtextextended(id::text, %s), {', '.join(['%s'] * len(counts))} "
                f"FROM unnest(%s::uuid[], %s::text[]) WITH ORDINALITY AS x(id, name, ord)",
                (seed, *counts.values(), [t.id for t in tenants], [t.name for t in tenants]),
            )
            for stmt in _FILL_SQL:
                cur.execute(stmt)
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            # Fresh statistics: RLS-filtered scans of the backup role plan with them.
            cur.execute("ANALYZE")
    finally:
        conn.close()


def _existing_tenant_count(db: SampleDatabase) -> int:
    with closing(_connect(db.owner_dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tenants")
        n = cur.fetchone()[0]
    return n


def _new_tenants(
    db: SampleDatabase, count: int, status: str, seed: int, label: str = ""
) -> tuple[list[TenantInfo], int]:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    start = _existing_tenant_count(db)
    out = []
    for i in range(start, start + count):
        # Deterministic: same seed and same call sequence on a fresh database -> same ids.
        tid = str(uuid.uuid5(_ID_NAMESPACE, f"{seed}:{i}"))
        h = uuid.UUID(tid).int
        name = f"{_WORDS_ADJ[h % 10]} {_WORDS_NOUN[(h // 10) % 10]} Jewellers{label} #{i + 1}"
        out.append(TenantInfo(id=tid, name=name, status=status))
    return out, start


def add_tenants(
    db: SampleDatabase, count: int, *, rows: int = 50, status: str = "ACTIVE", seed: int = 0
) -> list[TenantInfo]:
    """Add `count` tenants with about `rows` sales each (other tables proportional)."""
    if count <= 0:
        return []
    tenants, first = _new_tenants(db, count, status, seed)
    _generate(db, tenants, first, rows, seed)
    return tenants


def add_large_tenant(db: SampleDatabase, target_mb: int, *, status: str = "ACTIVE", seed: int = 0) -> TenantInfo:
    """Add one tenant whose raw `pg_dump -Fc -Z0` (tenant-scoped) is about `target_mb` MiB."""
    rows = max(1, int((target_mb * 1024 * 1024 - _DUMP_FIXED_BYTES) / _DUMP_BYTES_PER_ROW))
    (tenant,), first = _new_tenants(db, 1, status, seed, label=" (large)")
    _generate(db, [tenant], first, rows, seed)
    return tenant


def populate_default(
    db: SampleDatabase, *, active: int = 20, suspended: int = 1, pending_deletion: int = 1, rows: int = 50
) -> list[TenantInfo]:
    """The demo's data: mostly ACTIVE tenants plus the statuses a backup must skip."""
    out = add_tenants(db, active, rows=rows, status="ACTIVE")
    out += add_tenants(db, suspended, rows=rows, status="SUSPENDED")
    out += add_tenants(db, pending_deletion, rows=rows, status="PENDING_DELETION")
    return out


def list_tenants(db: SampleDatabase) -> list[TenantInfo]:
    """All tenants of the registry, in creation order (read as the owner, RLS not applied)."""
    with closing(_connect(db.owner_dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text, name, status FROM tenants ORDER BY created_at, id")
        rows = cur.fetchall()
    return [TenantInfo(*r) for r in rows]


def tenant_row_counts(db: SampleDatabase, tenant_id: str) -> dict[str, int]:
    """ "schema.table" -> number of rows belonging to `tenant_id`, counted as the owner (RLS does not
    apply) with explicit predicates: the oracle to compare dumps and RLS views against.
    Includes the child table (through its parent) and the registry row; excludes shared tables."""
    tid = str(uuid.UUID(tenant_id))
    parts = [
        sql.SQL("SELECT {}, count(*) FROM {} WHERE tenant_id = %(t)s").format(
            sql.Literal(t), sql.Identifier(*t.split("."))
        )
        for t in TENANT_TABLES
    ]
    for child, (fk, parent) in CHILD_TABLES.items():
        parts.append(
            sql.SQL("SELECT {}, count(*) FROM {} c JOIN {} p ON p.id = c.{} WHERE p.tenant_id = %(t)s").format(
                sql.Literal(child),
                sql.Identifier(*child.split(".")),
                sql.Identifier(*parent.split(".")),
                sql.Identifier(fk),
            )
        )
    parts.append(
        sql.SQL("SELECT {}, count(*) FROM {} WHERE id = %(t)s").format(
            sql.Literal(REGISTRY_TABLE), sql.Identifier(*REGISTRY_TABLE.split("."))
        )
    )
    with closing(_connect(db.owner_dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL(" UNION ALL ").join(parts), {"t": tid})
        result = {name: int(n) for name, n in cur.fetchall()}
    return result
