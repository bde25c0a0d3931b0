"""python -m backup_assets.sample (--dsn ADMIN_DSN | --embedded DIR) [--dbname N] [--tenants N] [--rows R] [--large-mb M]

Creates (drops first) and fills a sample database; prints the tenant ids and the backup role's DSN.
With --embedded, starts (or reuses) an embedded PostgreSQL in DIR and leaves it running, makes an
empty database beside the sample (a target for `tenant-backup restore`), and writes DIR/sample.env
for `set -a; . DIR/sample.env; set +a`:

    TENANT_BACKUP_SOURCE_DSN     the backup role on the sample database
    TENANT_BACKUP_TENANTS_QUERY  the registry query, with the tenants' display names
    TENANT_BACKUP_SHARED_TABLES  the sample's shared lookup table, declared shared
    TENANT_BACKUP_SCRATCH_DSN    the server's superuser: restore drills make their scratch databases there
    SAMPLE_TENANT                the first ACTIVE tenant's id
    SAMPLE_OWNER_DSN             the owner role on the sample database (a `restore --replace` target)
    SAMPLE_EMPTY_DSN             the empty database (a restore target; made anew on every run)

`--embedded DIR --stop` stops that server.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .generate import add_large_tenant, add_tenants, create_sample_database, populate_default

EMPTY_DB = "tenants_restore"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backup_assets.sample", description=__doc__.splitlines()[2])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--dsn", help="superuser libpq URI of the server")
    where.add_argument("--embedded", metavar="DIR", help="start an embedded PostgreSQL in DIR (left running)")
    ap.add_argument("--stop", action="store_true", help="with --embedded: stop that server, and nothing else")
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

    if args.stop:
        if not args.embedded:
            ap.error("--stop goes with --embedded DIR")
        from ..core.embedded_pg import stop_embedded

        data_dir = Path(args.embedded).resolve() / "pg"
        stopped = stop_embedded(data_dir)
        print(f"{'stopped the' if stopped else 'no'} embedded PostgreSQL in {data_dir}", file=sys.stderr)
        return 0

    started = time.monotonic()
    dsn = args.dsn
    if args.embedded:
        from ..core.embedded_pg import start_embedded

        Path(args.embedded).mkdir(parents=True, exist_ok=True)
        dsn = start_embedded(Path(args.embedded) / "pg", cleanup=None).admin_dsn()
        print(
            f"embedded PostgreSQL left running in {Path(args.embedded).resolve() / 'pg'}; stop it with:"
            f" python -m backup_assets.sample --embedded {args.embedded} --stop",
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
    if args.embedded:
        env_file = _write_env(Path(args.embedded), dsn, db, tenants)
        print(f"settings for tenant-backup: set -a; . {env_file}; set +a", file=sys.stderr)
    print(f"{len(tenants)} tenants in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def _write_env(directory: Path, server_dsn: str, db, tenants) -> Path:
    """DIR/sample.env (see the module's docstring), with an empty restore target made anew."""
    from contextlib import closing

    import psycopg2
    from psycopg2 import sql

    from ..core.embedded_pg import dsn_for

    with closing(psycopg2.connect(server_dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(EMPTY_DB)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMPTY_DB)))
    values = {
        **db.settings(),  # source, registry query, the shared lookup table declared shared
        "TENANT_BACKUP_SCRATCH_DSN": server_dsn,
        "SAMPLE_TENANT": next((t.id for t in tenants if t.status == "ACTIVE"), ""),
        "SAMPLE_OWNER_DSN": db.owner_dsn,
        "SAMPLE_EMPTY_DSN": dsn_for(server_dsn, dbname=EMPTY_DB),
    }
    path = directory.resolve() / "sample.env"
    path.write_text(
        "# python -m backup_assets.sample --embedded: the sample's settings (set -a; . THIS_FILE; set +a)\n"
        + "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
    )
    return path


if __name__ == "__main__":
    sys.exit(main())
