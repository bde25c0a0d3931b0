"""`tenant-backup list | status | verify | prune | rebuild | keys rewrap`: operations on the storage
locations alone.

Thin: parse, call backup_assets.core.{catalog,status,retention,rotation}, print. Wired into cli/ by
`register(subparsers)` and `register_keys(keys_subparsers)`. Handlers return exit codes and raise
TenantBackupError for errors (cli.main prints them on one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from ..core.errors import ConfigError, NotFound, StorageError


def _locations(which: str | None):
    """--location L → only L (only its variables are needed); none/"all" → TENANT_BACKUP_LOCATIONS."""
    from ..core.locations import locations_from_env

    if which is None or which.strip().lower() == "all":
        return locations_from_env()
    return locations_from_env([which])


def _tenant(raw: str | None) -> str | None:
    from ..core.source.tenant_ids import validate_tenant_id

    return validate_tenant_id(raw) if raw is not None else None


def _size(value) -> str:
    if isinstance(value, int):
        return f"{value / (1 << 20):.2f} MiB" if value >= 1 << 20 else f"{value} B"
    return "/".join(str(v) for v in value) if isinstance(value, list) else "?"


# ----------------------------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    from ..core.maintenance.catalog import collect

    tenant = _tenant(args.tenant)
    entries, errors = collect(_locations(args.location), tenant)
    for e in errors:
        print(f"tenant-backup: warning: {e.location}: {e.message}", file=sys.stderr)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
    else:
        rows = [("TENANT", "BACKUP", "CREATED", "LOCATIONS", "SIZE", "KEY", "ROWS")]
        for e in entries:
            key = e.key_id if not isinstance(e.key_id, list) else "/".join(map(str, e.key_id))
            rows.append((e.tenant_id, e.backup_id, e.created_at or "?", ",".join(e.locations), _size(e.size),
                         str(key), str(e.total_rows) if e.total_rows is not None else "?"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if not entries:
            print("(no backups found)", file=sys.stderr)
    return 8 if errors else 0  # a location that could not be read: the list may be incomplete


# --------------------------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from ..core.settings import SourceSettings
    from ..core.maintenance.status import gather, max_age_from_env
    from ..core.source.tenants import list_tenants

    max_age = args.max_age if args.max_age is not None else max_age_from_env()
    if not max_age > 0:
        raise ConfigError(f"--max-age must be > 0 days, got {max_age:g}")
    tenants = list_tenants(SourceSettings.from_env())  # the registry says who must have backups
    report = gather(tenants, _locations(args.location), max_age_days=max_age)
    for w in report.warnings:
        print(f"tenant-backup: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        rows = [("TENANT", "LOCATION", "STATE", "NEWEST BACKUP", "AGE", "VERIFIED")]
        for c in report.copies:
            age = f"{c.age_days:.1f}d" if c.age_days is not None else "-"
            verified = c.verified if c.verified_at is None else \
                f"{c.verified} {c.verified_at}{' (deep)' if c.verified_deep else ''}"
            rows.append((c.tenant_id, c.location, c.state.upper() if c.state != "ok" else "ok",
                         c.backup_id or "-", age, verified))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(col.ljust(w) for col, w in zip(r, widths)).rstrip())
        if not report.tenants:
            print("(the registry returns no tenant)", file=sys.stderr)
    for name, message in report.unreadable.items():  # never hidden: its tenants are unknown there
        print(f"tenant-backup: error: location {name} could not be listed: {message}", file=sys.stderr)
    if report.stale:
        print(f"tenant-backup: stale: {report.stale_line()}", file=sys.stderr)
        return 1
    return 8 if report.unreadable else 0


# --------------------------------------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace) -> int:
    from ..core.maintenance.catalog import collect, parse_created_at, verify_copy
    from ..core.codec.keyring import Keyring
    from ..core.maintenance.status import record_verification
    from ..core.locations import validate_backup_id

    tenant = _tenant(args.tenant)
    locations = _locations(args.location)
    keyring = Keyring.from_env() if args.deep else None
    entries, errors = collect(locations, tenant)
    for e in errors:
        print(f"tenant-backup: warning: {e.location}: {e.message}", file=sys.stderr)
    if args.backup == "latest":
        if not entries:
            raise NotFound(f"no backup of tenant {tenant} in {', '.join(locations)}")
        entry = entries[0]
    else:
        bid = validate_backup_id(args.backup)
        entry = next((e for e in entries if e.backup_id == bid), None)
        if entry is None:
            raise NotFound(f"backup {bid} of tenant {tenant} is in none of {', '.join(locations)}")
    created = parse_created_at(entry.created_at)
    now = datetime.now(timezone.utc)
    failed = bool(errors)
    unreadable = {e.location: e.message for e in errors}
    for name, loc in locations.items():
        if name not in entry.manifests and name in unreadable:
            print(f"FAIL {name:5} {tenant} {entry.backup_id}: {unreadable[name]}")
            continue
        if name not in entry.manifests:
            # Missing is a failure while the location should still hold it; past its retention, expected.
            expired = created is not None and (now - created).days >= loc.retention_days
            if expired:
                print(f"-    {name:5} {tenant} {entry.backup_id}: not stored (past this location's "
                      f"{loc.retention_days}-day retention)")
            else:
                failed = True
                print(f"FAIL {name:5} {tenant} {entry.backup_id}: missing: no complete copy in this location")
            continue
        check = verify_copy(loc, tenant, entry.backup_id, keyring=keyring, deep=args.deep)
        failed |= not check.ok
        # Beside the copy, for `status` (readable without Dagster); never fails the verify itself.
        record_verification(loc, check, sha256=(entry.manifests[name].get("archive") or {}).get("sha256"),
                            deep=args.deep, by="tenant-backup verify" + (" --deep" if args.deep else ""))
        print(f"{'ok  ' if check.ok else 'FAIL'} {name:5} {tenant} {entry.backup_id}: {check.message}", flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- prune


def cmd_prune(args: argparse.Namespace) -> int:
    from ..core.maintenance.retention import keep_min_from_env, prune_location

    keep_min = keep_min_from_env()
    locations = _locations(args.location)
    verb = "would delete" if args.dry_run else "deleted"

    def on_delete(location, d):
        created = d.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if d.created_at else "?"
        print(f"{verb} {location:5} {d.tenant_id} {d.backup_id} (created {created}: {d.reason})", flush=True)

    failed = False
    for name, loc in locations.items():
        try:
            report = prune_location(loc, keep_min=keep_min, dry_run=args.dry_run, on_delete=on_delete)
        except StorageError as exc:  # this location unreachable: the others are still pruned
            print(f"FAIL {name:5} prune: {exc}", file=sys.stderr)
            failed = True
            continue
        for err in report.errors:
            print(f"FAIL {name:5} {err}", file=sys.stderr)
        failed |= bool(report.errors)
        kept = sum(1 for d in report.decisions if not d.delete)
        print(f"{name}: {len(report.deleted)} {verb}, {kept} kept (retention {loc.retention_days} days, "
              f"keep at least {keep_min} per tenant)")
    return 1 if failed else 0


# -------------------------------------------------------------------------------------------- rebuild


def cmd_rebuild(args: argparse.Namespace) -> int:
    from ..core.maintenance.rebuild import rebuild_location
    from ..core.maintenance.retention import keep_min_from_env
    from ..core.locations import locations_from_env
    from ..core.locations.config import location_names

    keep_min = keep_min_from_env()
    target = locations_from_env([args.location])[args.location.strip().lower()]
    names = [n.strip() for n in args.sources.split(",")] if args.sources else location_names()
    sources = locations_from_env([n for n in names if n.strip().lower() != target.name])
    if not sources:
        raise NotFound(f"no other location to rebuild {target.name} from (use --from)")

    def progress(o):
        print(f"{o.status:10} {target.name:5} {o.tenant_id} {o.backup_id}: {o.message}", flush=True)

    outcomes, errors = rebuild_location(target, sources, keep_min=keep_min, dry_run=args.dry_run,
                                        repair=args.repair, progress=progress)
    for err in errors:
        print(f"tenant-backup: warning: {err}", file=sys.stderr)
    done = sum(1 for o in outcomes if o.status != "failed")
    failed = len(outcomes) - done
    print(f"{target.name}: {done} {'would be copied' if args.dry_run else 'copied'}, {failed} failed "
          f"(from {', '.join(sources)}; retention {target.retention_days} days, at least {keep_min} per tenant)")
    return 1 if failed or errors else 0


# ---------------------------------------------------------------------------------------- keys rewrap


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    from ..core.codec.keyring import Keyring
    from ..core.maintenance.rotation import rewrap_locations

    keyring = Keyring.from_env()
    locations = _locations(args.location)
    print(f"re-wrapping data keys under the active key {keyring.active.id!r} in {', '.join(locations)}",
          file=sys.stderr)

    def progress(o):
        if o.status != "skipped" or args.verbose_skips:
            print(f"{o.status:9} {o.location:5} {o.tenant_id} {o.backup_id}: {o.message}", flush=True)

    outcomes = rewrap_locations(locations, keyring, progress=progress)
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("rewrapped", "skipped", "failed")}
    print(f"{counts['rewrapped']} re-wrapped, {counts['skipped']} already under {keyring.active.id!r}, "
          f"{counts['failed']} failed")
    if counts["failed"]:
        return 1
    return 0


# ------------------------------------------------------------------------------------------- register


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="backups found in the locations' manifests, newest first")
    p.add_argument("--tenant", metavar="ID", help="only this tenant")
    p.add_argument("--location", metavar="L", help="only this location (local, r2, b2); default: all configured")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("status", help="per tenant (registry) and location: the newest backup, its age, its "
                                             "last verification; exit 1 naming every tenant without a recent one")
    p.add_argument("--max-age", type=float, metavar="DAYS",
                   help="stale when the newest backup is this old (default TENANT_BACKUP_MAX_AGE_DAYS or 8)")
    p.add_argument("--location", metavar="L", help="only this location; default: all configured")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("verify", help="re-check stored copies of a tenant's backup (checksum; --deep: decrypt, "
                                             "decompress, pg_restore --list)")
    p.add_argument("--tenant", required=True, metavar="ID")
    p.add_argument("--location", default="all", metavar="L|all", help="one location or all configured (default)")
    p.add_argument("--backup", default="latest", metavar="BID|latest", help="backup id (default: the newest)")
    p.add_argument("--deep", action="store_true",
                   help="also download, decrypt, decompress, pg_restore --list, and check every row is this tenant's")
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("prune", help="delete backups past each location's retention (never the newest "
                                            "verified one of a tenant; at least TENANT_BACKUP_KEEP_MIN kept)")
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    p.add_argument("--location", metavar="L", help="only this location; default: all configured")
    p.set_defaults(func=cmd_prune)

    p = subparsers.add_parser("rebuild", help="copy into a location the backups it should hold (its retention) "
                                              "from the other locations; never deletes")
    p.add_argument("--location", required=True, metavar="L", help="the location to fill (local, r2, b2)")
    p.add_argument("--from", dest="sources", metavar="L1,L2",
                   help="locations to copy from, in order of preference (default: the other configured ones)")
    p.add_argument("--repair", action="store_true", help="also re-read the copies it holds and replace damaged ones")
    p.add_argument("--dry-run", action="store_true", help="print what would be copied, copy nothing")
    p.set_defaults(func=cmd_rebuild)


def register_keys(keys_subparsers) -> None:
    p = keys_subparsers.add_parser("rewrap", help="re-wrap every stored archive's data key under the active "
                                                  "(first) key of TENANT_BACKUP_KEYS, then verify with that key only")
    p.add_argument("--location", metavar="L", help="only this location; default: all configured")
    p.add_argument("--show-skipped", dest="verbose_skips", action="store_true",
                   help="also print backups already under the active key")
    p.set_defaults(func=cmd_keys_rewrap)
