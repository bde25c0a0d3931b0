"""python -m backup_assets.sample (--dsn ADMIN_DSN | --embedded DIR) [--dbname N] [--tenants N] [--rows R] [--large-mb M]

Creates (drops first) and fills a sample database; prints the tenant ids and the backup role's DSN.
With --embedded, starts (or reuses) an embedded PostgreSQL in DIR and leaves it running.
"""

from __future__ import annotations

import argparse
import sys
import time

from .generate import add_large_tenant, add_tenants, create_sample_database, populate_default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backup_assets.sample", description=__doc__.splitlines()[2])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--dsn", help="superuser libpq URI of the server")
    where.add_argument("--embedded", metavar="DIR", help="start an embedded PostgreSQL in DIR (left running)")
    ap.add_argument("--dbname", default="tenants_sample")
    ap.add_argument(
        "--tenants",
        type=int,
        default=None,
        help="number of ACTIVE tenants (default: the demo's 20 ACTIVE + 1 SUSPENDED + 1 PENDING_DELETION)",
    )
    ap.add_argument("--rows", type=int, default=50, help="approximate sales per tenant")
    ap.add_argument("--large-mb", type=int, default=0, help="also add one tenant whose raw dump is about M MiB")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    started = time.monotonic()
    dsn = args.dsn
    if args.embedded:
        from pathlib import Path

        from ..core.embedded_pg import start_embedded

        Path(args.embedded).mkdir(parents=True, exist_ok=True)
        dsn = start_embedded(Path(args.embedded) / "pg", cleanup=None).admin_dsn()
        print(
            f"embedded PostgreSQL left running; stop it with: pg_ctl -D {Path(args.embedded).resolve() / 'pg'} stop"
            " (as user embedded_postgres when root)",
            file=sys.stderr,
        )
    db = create_sample_database(dsn, args.dbname)
    if args.tenants is None:
        tenants = populate_default(db, rows=args.rows)
    else:
        tenants = add_tenants(db, args.tenants, rows=args.rows, seed=args.seed)
    if args.large_mb:
        tenants.append(add_large_tenant(db, args.large_mb, seed=args.seed))
    for t in tenants:
        print(f"{t.id}\t{t.status}\t{t.name}")
    print(f"backup DSN: {db.backup_dsn}")
    print(f"owner DSN: {db.owner_dsn}")
    print(f"{len(tenants)} tenants in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
