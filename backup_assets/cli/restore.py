"""`tenant-backup restore`: thin argparse front of core.restore.

Progress and the location used go to stderr (on a terminal: a download display with bytes, rate
and ETA, then the restore's stage); the plan / result table to stdout (`--json`: one JSON object).
Errors are TenantBackupError subclasses: cli.main prints them on one line with their exit code.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from ._command import Labels, arg, command
from ._progress import Transfer


def register(subparsers):
    """The restore command alone on a sub-parsers action (tests); `tenant-backup` gets it from the registry."""
    from ._command import COMMANDS, add_to

    return add_to(subparsers, COMMANDS["restore"])


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
        print(
            "tenant-backup: warning: --target-dsn holds a password, which other users can read in the process"
            " list; use PGPASSFILE / ~/.pgpass or --target-password-env VAR",
            file=sys.stderr,
        )
    if not password_env:
        return dsn
    value = os.environ.get(password_env)
    if not value:
        raise ConfigError(f"--target-password-env {password_env}: that variable is not set or empty")
    return psycopg2.extensions.make_dsn(dsn, password=value)


class _WatchedLocation:
    """A location whose downloads the display follows: Location.get writes `.<name>.*.part` beside
    its destination and renames it into place when whole; its size over the manifest's archive size
    is the progress. Everything else is the location itself."""

    def __init__(self, loc, bar: Transfer):
        self._loc, self._bar = loc, bar
        self._sizes: dict[tuple[str, str], int] = {}

    def __getattr__(self, name):
        return getattr(self._loc, name)

    def get_manifest(self, tenant_id, backup_id):
        manifest = self._loc.get_manifest(tenant_id, backup_id)
        size = manifest.stated_checksum()[1]
        if size is not None:
            self._sizes[(tenant_id, backup_id)] = size
        return manifest

    def get(self, tenant_id, backup_id, dest_path):
        dest = Path(dest_path)
        total = self._sizes.get((tenant_id, backup_id))
        self._bar.update(0, total=total, description=f"download from {self._loc.name}")
        done = threading.Event()

        def watch():
            while not done.wait(0.1):
                size = sum(p.stat().st_size for p in dest.parent.glob(f".{dest.name}.*.part") if p.is_file())
                self._bar.update(size)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            stored = self._loc.get(tenant_id, backup_id, dest_path)
        finally:
            done.set()
            watcher.join()
        if dest.exists():
            size = dest.stat().st_size
            self._bar.update(size, total=total or size, description=f"downloaded from {self._loc.name}")
        return stored


@command(
    "restore",
    help="restore one tenant from a storage location into an empty database, or in place (--replace)",
    description="Restore one tenant from its backup in a storage location (no Dagster database needed). "
    "Default: into an EMPTY database (schema and the tenant's data). --replace: replace the "
    "tenant's rows in a live database holding other tenants, in one transaction.",
    args=[
        arg("--tenant", required=True, metavar="ID", help="tenant id"),
        arg(
            "--location",
            required=True,
            metavar="L",
            help="a configured location, or auto (the configured locations in their kinds' order, local first:"
            " the first good copy)",
        ),
        arg(
            "--backup",
            default="latest",
            metavar="BID",
            help="backup id, or latest (the newest complete backup in that location; default)",
        ),
        arg(
            "--target-dsn",
            required=True,
            metavar="DSN",
            help="libpq URI of the target database (for --replace: an owner, BYPASSRLS or superuser role);"
            " keep the password out of it: PGPASSFILE / ~/.pgpass, or --target-password-env",
        ),
        arg(
            "--target-password-env",
            metavar="VAR",
            help="name of an environment variable holding the target role's password",
        ),
        arg(
            "--replace",
            action="store_true",
            help="replace this tenant's rows in a live database (other tenants untouched, all or nothing)",
        ),
        arg("--dry-run", action="store_true", help="print the plan, change nothing"),
        arg(
            "--keep-owners",
            action="store_true",
            help="empty-database restore: keep ownership and grants (the source's roles must exist)",
        ),
        arg(
            "--lock-timeout",
            metavar="DURATION",
            help="--replace: how long to wait for a table lock (default TENANT_BACKUP_RESTORE_LOCK_TIMEOUT or 10s)",
        ),
    ],
)
def cmd_restore(args, out) -> int:
    from ..core.restore import restore_tenant
    from ..core.source.tenant_ids import validate_tenant_id

    settings = out.settings
    tenant = validate_tenant_id(args.tenant, settings.tenant_ids)  # before anything is contacted
    target_dsn = target_dsn_from_args(args.target_dsn, args.target_password_env)
    location = args.location.strip().lower()
    lock_timeout = args.lock_timeout or settings.restore_lock_timeout
    keyring = settings.keyring()
    # Only the locations this restore can read: a named one need not be in TENANT_BACKUP_LOCATIONS.
    locations = settings.locations(settings.location_names if location == "auto" else [location])
    work_dir = settings.work_dir  # the restore's folder goes under it (owner-only, removed on exit)
    labels = Labels.best_effort(out)
    with Transfer(out, f"restore {labels.label(tenant)}") as bar:

        def say(message: str) -> None:
            bar.log(f"tenant-backup: {message}")  # above the display, or a plain stderr line
            bar.update(description=_stage(message))

        if bar.on:
            locations = {name: _WatchedLocation(loc, bar) for name, loc in locations.items()}
        result = restore_tenant(
            tenant,
            locations=locations,
            location=location,
            backup=args.backup,
            target_dsn=target_dsn,
            keyring=keyring,
            replace=args.replace,
            dry_run=args.dry_run,
            lock_timeout=lock_timeout,
            keep_owners=args.keep_owners,
            work_dir=work_dir,
            tenant_id_pattern=settings.tenant_id_pattern,  # non-UUID tenant ids restore too
            report=say,
        )
    if out.json:
        out.emit({**result.as_dict(), "tenant_name": labels.name(tenant)})
        return 0
    _print(result, labels)
    return 0


def _stage(message: str) -> str:
    if message.startswith("using location"):
        return "restoring (pg_restore)"
    if message.startswith("skipping"):
        return "next location"
    return message[:40]


def _print(result, labels: Labels) -> None:
    verb = "would restore" if result.dry_run else "restored"
    mode = "replacing its rows in" if result.mode == "replace" else "into empty database"
    name = labels.name(result.tenant_id)
    print(
        f"{'DRY RUN: ' if result.dry_run else ''}{verb} tenant {result.tenant_id}{f' ({name})' if name else ''} "
        f"backup {result.backup_id} "
        f"from {result.location} ({result.uri}) {mode} {result.target}"
    )
    replace = result.mode == "replace"
    head = f"{'table':40} {'kind':10} {'backup rows':>11}"
    if replace:
        verbs = ("deleted", "updated", "inserted") if not result.dry_run else ("to delete", "to update", "to insert")
        head += "".join(f" {v:>10}" for v in verbs) + f" {'unchanged':>10}  action"
    else:
        head += f" {'restored':>10}"
    print(head)
    for table, o in result.tables.items():
        line = f"{table:40} {o.kind:10} {o.manifest_rows:>11}"
        if replace:
            cells = (o.deleted, o.updated, o.inserted, o.unchanged)
            line += "".join(f" {'' if n is None else n:>10}" for n in cells) + f"  {o.action}"
        else:
            line += f" {'' if o.inserted is None else o.inserted:>10}"
        print(line)
    for seq, before, after in result.sequences:
        print(f"sequence {seq}: {before} -> {after}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    if not result.dry_run:
        print(f"done in {result.timings.get('total_s', 0):.1f}s")
