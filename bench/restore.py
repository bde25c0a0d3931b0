"""Restore benchmark: restore into an empty database against `restore --replace` of the same tenant, and
plain `pg_restore` of the same dump as the floor.

    python bench/restore.py [--size 150] [--runs 3] [--dsn SUPERUSER_DSN] [--modes plain,empty,replace,changed]

Uses the large sample tenant bench/export.py builds and caches (bench/out/tenants.json, database
bench_export on the embedded server under bench/out/pg; built here if missing; --size 150 is the
~604k-row tenant of issue 18), exports it once into a local location under bench/out/restore/
(cached), decrypts that archive to a plain dump file (not timed), then runs the modes interleaved,
--runs times each (plain, empty, replace, changed, plain, empty, ...):
  plain    `pg_restore -d DB dump` into a fresh database (the floor: the dump already decrypted on
           disk, single job);
  empty    restore_tenant(location="local") into a fresh database — download with re-hashing, full
           verification (decrypt + pg_restore --list), streamed decrypt into `pg_restore
           --single-transaction`, row counts checked against the manifest;
  replace  restore_tenant(replace=True) of the tenant in the source database, whose rows equal the
           backup's (the common case: a few rows damaged among many);
  changed  the same after every row of the tenant was changed (not timed): every kept row is
           updated, the worst case for rows matched by key.
The schema is the sample's as it is: no index on e.g. loyalty_transactions.sale_id, which made the
replace of issue 18 take 379 s. Target (issue 18.6): replace <= 2 x empty. Prints every run, the
medians and the ratios; bench/out/restore-results.json keeps them.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
MODES = ("plain", "empty", "replace", "changed")

# One changed column per tenant table of the sample (the bench is about the sample's schema).
CHANGE_EVERY_ROW = {
    "branches": "name = name || '!'",
    "terminals": "code = code || '!'",
    "inventory_categories": "name = name || '!'",
    "inventory_items": "name = name || '!'",
    "loyalty_tiers": "name = name || '!'",
    "customers": "first_name = first_name || '!'",
    "sales": "sale_number = sale_number || '!'",
    "sale_items": "quantity = quantity + 1",
    "loyalty_transactions": "points = points + 1",
    "repair_orders": "description = description || '!'",
    "suppliers": "name = name || '!'",
    "purchase_orders": "po_number = po_number || '!'",
    "purchase_order_items": "quantity = quantity + 1",
    "pricing_rules": "name = name || '!'",
    "notifications": "subject = subject || '!'",
    "tenant_settings": "value = value || '!'",
}


def _admin(dsn: str, statement: str, params=None) -> list:
    with closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []


def _change_every_row(dsn: str, tenant_id: str) -> None:
    for table, change in CHANGE_EVERY_ROW.items():
        _admin(dsn, f"UPDATE {table} SET {change} WHERE tenant_id = %s", (tenant_id,))
    _admin(
        dsn,
        "UPDATE repair_order_photos p SET caption = coalesce(caption, '') || '!' FROM repair_orders r"
        " WHERE r.id = p.repair_order_id AND r.tenant_id = %s",
        (tenant_id,),
    )
    _admin(dsn, "VACUUM ANALYZE")  # as autovacuum would after such a change, before the restore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=150, help="tenant size in MiB of raw dump (default 150)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, interleaved (default 3)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--dsn", help="superuser DSN of a server to use instead of the embedded one")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: choose among {', '.join(MODES)}")

    from bench_db import large_tenants

    from backup_assets.core.archive.decrypt import decrypt_to_file
    from backup_assets.core.archive.export import export_tenant
    from backup_assets.core.codec.keyring import Keyring, generate_entry
    from backup_assets.core.embedded_pg import dsn_for
    from backup_assets.core.locations import locations_from_env
    from backup_assets.core.restore import restore_tenant
    from backup_assets.core.settings import SourceSettings
    from backup_assets.core.source.pgbin import pg_program
    from backup_assets.core.source.session import PgSession

    # The export bench's cache: same database, same tenants.
    db, tenants = large_tenants(OUT, [args.size], args.dsn)
    tenant_id = tenants[args.size]
    server_dsn = dsn_for(db.admin_dsn, dbname="postgres")

    work = OUT / "restore"
    work.mkdir(exist_ok=True)
    key_file = work / "keys"
    if not key_file.exists():
        key_file.write_text(generate_entry("benchrestore"))
        key_file.chmod(0o600)
    keyring = Keyring.parse(key_file.read_text().strip())
    locs = locations_from_env(["local"], {"TENANT_BACKUP_LOCAL_DIR": str(work / "local")})
    refs = locs["local"].list(tenant_id)
    if not refs:
        archive = work / "export.tbk"
        t0 = time.perf_counter()
        manifest = export_tenant(
            SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn}), keyring, tenant_id, archive
        )
        locs["local"].put(tenant_id, manifest.backup_id, archive, manifest)
        archive.unlink()
        print(f"exported the tenant in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        backup_id = manifest.backup_id
    else:
        backup_id = max(r.backup_id for r in refs)
    manifest = locs["local"].get_manifest(tenant_id, backup_id)
    plain_dump = work / f"{backup_id}.dump"
    if not plain_dump.exists():
        stored = work / "fetched.tbk"
        locs["local"].get(tenant_id, backup_id, stored)
        decrypt_to_file(stored, plain_dump, keyring, expect_tenant_id=tenant_id)
        stored.unlink()
    raw_mib = plain_dump.stat().st_size / (1 << 20)
    rows = manifest.total_rows

    def fresh_db(label: str) -> str:
        name = f"bench_restore_{label}_{secrets.token_hex(3)}"
        _admin(server_dsn, f'CREATE DATABASE "{name}"')
        return name

    def run_plain() -> dict:
        name = fresh_db("plain")
        try:
            session = PgSession.from_dsn(dsn_for(server_dsn, dbname=name))
            t0 = time.perf_counter()
            subprocess.run(
                [pg_program("pg_restore"), f"--dbname={session.conninfo()}", str(plain_dump)],
                env=session.child_env(),
                check=True,
            )
            return {"wall_s": time.perf_counter() - t0}
        finally:
            _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def run_ours(target_dsn: str, replace: bool) -> dict:
        t0 = time.perf_counter()
        result = restore_tenant(
            tenant_id,
            locations=locs,
            location="local",
            backup=backup_id,
            target_dsn=target_dsn,
            keyring=keyring,
            replace=replace,
            work_dir=work,
            report=lambda m: print(m, file=sys.stderr) if "warning" in m else None,
        )
        out = {"wall_s": time.perf_counter() - t0, **{k: round(v, 2) for k, v in result.timings.items()}}
        if replace:
            out["written"] = {
                k: sum(getattr(o, k) or 0 for o in result.tables.values()) for k in ("deleted", "updated", "inserted")
            }
        return out

    def run_empty() -> dict:
        name = fresh_db("empty")
        try:
            return run_ours(dsn_for(server_dsn, dbname=name), replace=False)
        finally:
            _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def run_changed() -> dict:
        t0 = time.perf_counter()
        _change_every_row(db.admin_dsn, tenant_id)
        print(f"changed every row of the tenant in {time.perf_counter() - t0:.1f}s (not timed)", file=sys.stderr)
        out = run_ours(db.owner_dsn, replace=True)
        left = _admin(
            db.admin_dsn, "SELECT count(*) FROM sales WHERE tenant_id = %s AND sale_number LIKE '%%!'", (tenant_id,)
        )
        assert left == [(0,)], f"the replace left changed rows: {left}"
        return out

    runners = {
        "plain": run_plain,
        "empty": run_empty,
        "replace": lambda: run_ours(db.owner_dsn, replace=True),
        "changed": run_changed,
    }
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(args.runs):
        for mode in modes:
            r = runners[mode]()
            results[mode].append(r)
            print(f"run {i + 1} {mode}: {r['wall_s']:.2f}s {r}", file=sys.stderr)

    medians = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in results.items()}
    print(
        f"tenant {tenant_id}: raw dump {raw_mib:.0f} MiB, archive {manifest.archive.size / (1 << 20):.0f} MiB, "
        f"{rows} rows; {args.runs} interleaved runs of each mode"
    )
    base = medians.get("empty")
    print(f"{'mode':8} {'median s':>8} {'vs empty':>8}  all runs (s)")
    for mode, rs in results.items():
        ratio = f"{medians[mode] / base:7.2f}x" if base else ""
        runs = " / ".join(f"{r['wall_s']:.2f}" for r in rs)
        print(f"{mode:8} {medians[mode]:8.2f} {ratio:>8}  {runs}")
    for mode, rs in results.items():
        last = {k: v for k, v in rs[-1].items() if k != "wall_s"}
        if last:
            print(f"{mode} breakdown (last run): {last}")
    print("target (issue 18.6): replace <= 2 x empty (machine shared: 2 cores)")
    (OUT / "restore-results.json").write_text(
        json.dumps({"raw_dump_mib": raw_mib, "rows": rows, "runs": results, "medians": medians}, indent=2)
    )


if __name__ == "__main__":
    main()
