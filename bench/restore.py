"""Restore benchmark: tenant-backup's restore into an empty database vs plain `pg_restore` of the same dump.

    python bench/restore.py [--size 350] [--dsn SUPERUSER_DSN] [--replace]

Uses the large sample tenant bench/export.py builds and caches (bench/out/tenants.json, database
bench_export on the embedded server under bench/out/pg; built here if missing), exports it once into
a local location under bench/out/restore/ (cached), decrypts that archive to a plain dump file
(not timed), then in one run, each into a fresh database on the same server:
  plain  `pg_restore -d DB dump` (the floor: the dump already decrypted on disk, single job);
  ours   restore_tenant(location="local") — download from the location with re-hashing, full
         verification (decrypt + pg_restore --list), streamed decrypt into
         `pg_restore --single-transaction`, row counts checked against the manifest.
--replace also times `--replace` of the same tenant in the source database (it deletes and reloads
its rows in one transaction; the data ends up as it was). Target (issue 5): ours <= 1.5 x plain.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"


def _admin(dsn: str, statement: str) -> None:
    with closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=350, help="tenant size in MiB of raw dump (default 350)")
    parser.add_argument("--dsn", help="superuser DSN of a server to use instead of the embedded one")
    parser.add_argument("--replace", action="store_true", help="also time --replace in the source database")
    args = parser.parse_args()

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

    results: dict[str, dict] = {}
    # plain pg_restore
    name = f"bench_restore_plain_{secrets.token_hex(3)}"
    _admin(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        session = PgSession.from_dsn(dsn_for(server_dsn, dbname=name))
        conninfo, env = session.conninfo(), session.child_env()
        t0 = time.perf_counter()
        subprocess.run([pg_program("pg_restore"), f"--dbname={conninfo}", str(plain_dump)], env=env, check=True)
        results["plain"] = {"wall_s": time.perf_counter() - t0}
    finally:
        _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # ours
    name = f"bench_restore_ours_{secrets.token_hex(3)}"
    _admin(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        t0 = time.perf_counter()
        result = restore_tenant(
            tenant_id,
            locations=locs,
            location="local",
            backup=backup_id,
            target_dsn=dsn_for(server_dsn, dbname=name),
            keyring=keyring,
            work_dir=work,
            report=lambda m: print(m, file=sys.stderr),
        )
        results["ours"] = {"wall_s": time.perf_counter() - t0, **{k: round(v, 2) for k, v in result.timings.items()}}
    finally:
        _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    if args.replace:
        t0 = time.perf_counter()
        result = restore_tenant(
            tenant_id,
            locations=locs,
            location="local",
            backup=backup_id,
            target_dsn=db.owner_dsn,
            keyring=keyring,
            replace=True,
            work_dir=work,
            report=lambda m: print(m, file=sys.stderr),
        )
        results["ours --replace"] = {
            "wall_s": time.perf_counter() - t0,
            **{k: round(v, 2) for k, v in result.timings.items()},
        }

    plain = results["plain"]["wall_s"]
    print(
        f"tenant {tenant_id}: raw dump {raw_mib:.0f} MiB, archive {manifest.archive.size / (1 << 20):.0f} MiB, "
        f"{manifest.total_rows} rows"
    )
    print(f"{'approach':16} {'wall s':>7} {'MiB/s':>6} {'vs plain':>8}  breakdown")
    for approach, r in results.items():
        extra = ", ".join(f"{k}={v}" for k, v in r.items() if k != "wall_s")
        print(f"{approach:16} {r['wall_s']:7.2f} {raw_mib / r['wall_s']:6.0f} {r['wall_s'] / plain:7.2f}x  {extra}")
    print("target: ours <= 1.5x plain pg_restore of the same dump (one run each; machine shared)")
    (OUT / "restore-results.json").write_text(json.dumps({"raw_dump_mib": raw_mib, **results}, indent=2))


if __name__ == "__main__":
    main()
