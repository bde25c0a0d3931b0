"""`tenant-backup restore`: thin argparse front of core.restore. `register(subparsers)` adds it.

Progress and the location used go to stderr; the plan / result table to stdout (`--json`: one JSON
object). Errors are TenantBackupError subclasses: cli.main prints them on one line with their exit code.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help="restore one tenant from a storage location into an empty database, or in place (--replace)",
        description="Restore one tenant from its backup in a storage location (no Dagster database needed). "
                    "Default: into an EMPTY database (schema and the tenant's data). --replace: replace the "
                    "tenant's rows in a live database holding other tenants, in one transaction.")
    p.add_argument("--tenant", required=True, metavar="ID", help="tenant id")
    p.add_argument("--location", required=True, metavar="L",
                   help="local, r2, b2, or auto (local, then r2, then b2: the first good copy)")
    p.add_argument("--backup", default="latest", metavar="BID",
                   help="backup id, or latest (the newest complete backup in that location; default)")
    p.add_argument("--target-dsn", required=True, metavar="DSN",
                   help="libpq URI of the target database (for --replace: an owner, BYPASSRLS or superuser role);"
                        " keep the password out of it: PGPASSFILE / ~/.pgpass, or --target-password-env")
    p.add_argument("--target-password-env", metavar="VAR",
                   help="name of an environment variable holding the target role's password")
    p.add_argument("--replace", action="store_true",
                   help="replace this tenant's rows in a live database (other tenants untouched, all or nothing)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--keep-owners", action="store_true",
                   help="empty-database restore: keep ownership and grants (the source's roles must exist)")
    p.add_argument("--lock-timeout", metavar="DURATION",
                   help="--replace: how long to wait for a table lock (default TENANT_BACKUP_RESTORE_LOCK_TIMEOUT or 10s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_restore)
    return p


def target_dsn_from_args(dsn: str, password_env: str | None) -> str:
    """The DSN to connect with: a password from the variable named on the command line (never the
    value itself on it), else what libpq finds (the DSN, PGPASSWORD, PGPASSFILE or ~/.pgpass). A
    password written in the DSN works but is warned about: command lines are visible to other users."""
    import os

    import psycopg2.extensions

    from ..core.errors import ConfigError
    from ..core.source.session import dsn_password, parse_dsn

    parse_dsn(dsn)  # ConfigError on a malformed string, without echoing it
    if dsn_password(dsn):
        print("tenant-backup: warning: --target-dsn holds a password, which other users can read in the process"
              " list; use PGPASSFILE / ~/.pgpass or --target-password-env VAR", file=sys.stderr)
    if not password_env:
        return dsn
    value = os.environ.get(password_env)
    if not value:
        raise ConfigError(f"--target-password-env {password_env}: that variable is not set or empty")
    return psycopg2.extensions.make_dsn(dsn, password=value)


def _say(message: str) -> None:
    print(f"tenant-backup: {message}", file=sys.stderr, flush=True)


def cmd_restore(args: argparse.Namespace) -> int:
    import os

    from ..core.codec.keyring import Keyring
    from ..core.restore import lock_timeout_from_env, restore_tenant
    from ..core.locations import locations_from_env
    from ..core.locations.config import location_names
    from ..core.source.tenant_ids import validate_tenant_id

    tenant = validate_tenant_id(args.tenant)  # before anything is configured or contacted
    target_dsn = target_dsn_from_args(args.target_dsn, args.target_password_env)
    location = args.location.strip().lower()
    lock_timeout = args.lock_timeout or lock_timeout_from_env()
    keyring = Keyring.from_env()
    # Only the locations this restore can read: a named one need not be in TENANT_BACKUP_LOCATIONS.
    locations = locations_from_env(location_names() if location == "auto" else [location])
    work_dir = os.environ.get("TENANT_BACKUP_WORK_DIR") or None
    if work_dir:
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
    result = restore_tenant(tenant, locations=locations, location=location, backup=args.backup,
                            target_dsn=target_dsn, keyring=keyring, replace=args.replace,
                            dry_run=args.dry_run, lock_timeout=lock_timeout, keep_owners=args.keep_owners,
                            work_dir=work_dir, report=_say)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
        return 0
    _print(result)
    return 0


def _print(result) -> None:
    verb = "would restore" if result.dry_run else "restored"
    mode = "replacing its rows in" if result.mode == "replace" else "into empty database"
    print(f"{'DRY RUN: ' if result.dry_run else ''}{verb} tenant {result.tenant_id} backup {result.backup_id} "
          f"from {result.location} ({result.uri}) {mode} {result.target}")
    replace = result.mode == "replace"
    head = f"{'table':40} {'kind':10} {'backup rows':>11}"
    if replace:
        head += f" {'deleted' if not result.dry_run else 'to delete':>10} {'loaded':>10}  action"
    else:
        head += f" {'restored':>10}"
    print(head)
    for table, o in result.tables.items():
        line = f"{table:40} {o.kind:10} {o.manifest_rows:>11}"
        if replace:
            line += f" {'' if o.deleted is None else o.deleted:>10} {'' if o.inserted is None else o.inserted:>10}  {o.action}"
        else:
            line += f" {'' if o.inserted is None else o.inserted:>10}"
        print(line)
    for seq, before, after in result.sequences:
        print(f"sequence {seq}: {before} -> {after}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    if not result.dry_run:
        print(f"done in {result.timings.get('total_s', 0):.1f}s")
