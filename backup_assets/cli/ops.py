"""`tenant-backup list | status | verify`: reading the storage locations alone (prune, rebuild and
keys rewrap, which change them, are in cli/maintenance.py).

Thin: parse, call backup_assets.core.maintenance.{catalog,status}, print.
Registered with `@command` (cli/_command.py). Handlers return exit codes and raise TenantBackupError
for errors (cli.main prints them on one line).
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..core.errors import ConfigError, NotFound
from ._command import Labels, arg, command, exclusive, table
from ._progress import Counter

VERIFY_CONCURRENCY = 4  # copies verify --all re-reads at once


def locations_for(out, which: str | None):
    """--location L → only L (only its variables are needed); none/"all" → TENANT_BACKUP_LOCATIONS."""
    if which is None or which.strip().lower() == "all":
        return out.settings.locations()
    return out.settings.locations([which])


def tenant_arg(out, raw: str | None) -> str | None:
    from ..core.source.tenant_ids import validate_tenant_id

    return validate_tenant_id(raw, out.settings.tenant_ids) if raw is not None else None


def size_text(value) -> str:
    if isinstance(value, int):
        return f"{value / (1 << 20):.2f} MiB" if value >= 1 << 20 else f"{value} B"
    return "/".join(str(v) for v in value) if isinstance(value, list) else "?"


def work_dir_of(out) -> str:
    """TENANT_BACKUP_WORK_DIR (default $TMPDIR/tenant-backup-work), made owner-only if new: where a
    command stages downloads (each in its own owner-only folder, removed when done). What killed runs
    left there is removed first (core/workdir.py clean_work_dir)."""
    from ..core.workdir import clean_work_dir, ensure_work_dir

    work_dir = str(ensure_work_dir(out.settings.work_dir))
    clean_work_dir(work_dir, report=lambda line: out.note(line))
    return work_dir


# ----------------------------------------------------------------------------------------------- list


@command(
    "list",
    help="backups found in the locations' manifests, newest first",
    args=[
        arg("--tenant", metavar="ID", help="only this tenant"),
        arg(
            "--location", metavar="L", help="only this location (a configured location's name); default: all configured"
        ),
    ],
)
def cmd_list(args, out) -> int:
    from ..core.maintenance.catalog import collect

    tenant = tenant_arg(out, args.tenant)
    try:  # with the keyring, what the locations' indexes hold is read from them (no request per backup)
        keyring = out.settings.keyring()
    except ConfigError:
        keyring = None
    with Counter(out, "reading manifests the indexes lack", total=None, unit="manifests") as bar:
        entries, errors = collect(
            locations_for(out, args.location), tenant, keyring=keyring, progress=lambda n: bar.advance(True)
        )
    for e in errors:
        out.warn(f"tenant-backup: warning: {e.location}: {e.message}")
    labels = Labels.best_effort(out)
    if out.json:
        out.emit([{**e.as_dict(), "tenant_name": labels.name(e.tenant_id)} for e in entries])
    else:
        rows = [("TENANT", "BACKUP", "CREATED", "LOCATIONS", "SIZE", "KEY", "ROWS")]
        for e in entries:
            key = e.key_id if not isinstance(e.key_id, list) else "/".join(map(str, e.key_id))
            rows.append(
                (
                    labels.label(e.tenant_id) if tenant is None else e.tenant_id,
                    e.backup_id,
                    e.created_at or "?",
                    ",".join(e.locations),
                    size_text(e.size),
                    str(key),
                    str(e.total_rows) if e.total_rows is not None else "?",
                )
            )
        table(rows, out)
        if not entries:
            out.note("(no backups found)")
    return 8 if errors else 0  # a location that could not be read: the list may be incomplete


# --------------------------------------------------------------------------------------------- status


@command(
    "status",
    help="per tenant (registry) and location: the newest backup, its age, its last "
    "verification; exit 1 naming every tenant without a recent one",
    args=[
        arg(
            "--max-age",
            type=float,
            metavar="DAYS",
            help="stale when the newest backup is this old (default TENANT_BACKUP_MAX_AGE_DAYS or 8)",
        ),
        arg("--location", metavar="L", help="only this location; default: all configured"),
    ],
)
def cmd_status(args, out) -> int:
    from ..core.maintenance.index_status import gather_indexed
    from ..core.source.tenants import display_label, read_registry

    max_age = args.max_age if args.max_age is not None else out.settings.max_age_days
    if not max_age > 0:
        raise ConfigError(f"--max-age must be > 0 days, got {max_age:g}")
    records = read_registry(out.settings.source)  # the registry says who must have backups
    names = {r.id: r.name for r in records if r.name}
    # From each location's index (a few requests per thousand tenants); a location whose index is not
    # usable is read the old way, a manifest per tenant, every one authenticated (and said so).
    indexed = gather_indexed(
        [r.id for r in records],
        locations_for(out, args.location),
        keyring=out.settings.keyring(),  # the index and every manifest read are authenticated
        max_age_days=max_age,
        names=names,
    )
    report = indexed.report
    for name in indexed.scanned:
        view = indexed.views.get(name)
        if view is not None:
            out.warn(f"tenant-backup: warning: {name}: {view.why_unusable()}; read manifest by manifest")
    for w in report.warnings:
        out.warn(f"tenant-backup: warning: {w}")
    if out.json:
        out.emit(report.as_dict())
    else:
        rows = [("TENANT", "LOCATION", "STATE", "NEWEST BACKUP", "AGE", "VERIFIED")]
        for c in report.copies:
            age = f"{c.age_days:.1f}d" if c.age_days is not None else "-"
            verified = (
                c.verified
                if c.verified_at is None
                else f"{c.verified} {c.verified_at}{' (deep)' if c.verified_deep else ''}"
            )
            rows.append(
                (
                    display_label(c.tenant_id, c.tenant_name),
                    c.location,
                    c.state.upper() if c.state != "ok" else "ok",
                    c.backup_id or "-",
                    age,
                    verified,
                )
            )
        table(rows, out)
        if not report.tenants:
            out.note("(the registry returns no tenant)")
    notes: dict[str, list[str]] = {}  # proven, but not on the version it would be restored into: said once
    for c in report.drilled_elsewhere:
        notes.setdefault(c.drill_note, []).append(f"{c.tenant_id}@{c.location}")
    for note, copies in notes.items():
        shown = ", ".join(copies[:10]) + (f" and {len(copies) - 10} more" if len(copies) > 10 else "")
        out.warn(f"tenant-backup: warning: {len(copies)} copies: {note} (docs/COMPATIBILITY.md): {shown}")
    for name, message in report.unreadable.items():  # never hidden: its tenants are unknown there
        out.warn(f"tenant-backup: error: location {name} could not be listed: {message}")
    for line in report.refused:
        out.warn(f"tenant-backup: error: {line}")
    if report.stale:
        out.warn(f"tenant-backup: stale: {report.stale_line()}")
    for m in report.missing:  # a copy a location should hold by its retention: rebuild is the fix
        out.warn(f"tenant-backup: error: {m.location}: {m.tenant_id} {m.message}")
    if report.refused:
        return 6  # a manifest failed authentication: the archive-error code, above staleness
    if report.stale or report.missing:
        return 1
    return 8 if report.unreadable else 0


# --------------------------------------------------------------------------------------------- verify


@command(
    "verify",
    help="re-check stored copies: one tenant's backup, or (--all) every copy or a rotating share "
    "of them (checksum; --deep: decrypt, decompress, pg_restore --list, row scan)",
    args=[
        exclusive(
            arg("--tenant", metavar="ID", help="one tenant's backup (with --backup)"),
            arg(
                "--all",
                action="store_true",
                help="every stored copy of every tenant in the locations (with --subset: one share of them)",
            ),
        ),
        arg("--location", default="all", metavar="L|all", help="one location or all configured (default)"),
        arg("--backup", default="latest", metavar="BID|latest", help="with --tenant: backup id (default: the newest)"),
        arg(
            "--subset",
            metavar="N/T",
            help="with --all: only share N of T (1 <= N <= T), the same stable selection as the daily verify job"
            " (--subset N/28 is day N-1 of its 28-day cycle)",
        ),
        arg(
            "--deep",
            action="store_true",
            help="also download, decrypt, decompress, pg_restore --list, and check every row is this tenant's",
        ),
        arg(
            "--seal",
            action="store_true",
            help="with --deep: seal a manifest written before manifests were sealed, once its copy passed"
            " (docs/MANIFEST.md)",
        ),
    ],
)
def cmd_verify(args, out) -> int:
    if args.seal and not args.deep:
        raise ConfigError("--seal needs --deep: a manifest is sealed only after its copy passed a deep verify")
    if args.all:
        return _verify_all(args, out)
    if args.subset:
        raise ConfigError("--subset needs --all")
    from ..core.locations import validate_backup_id
    from ..core.maintenance.catalog import collect, parse_created_at
    from ..core.maintenance.copy_check import verify_copy

    tenant = tenant_arg(out, args.tenant)
    if args.backup != "latest":
        validate_backup_id(args.backup)  # bad input (exit code 2) before any location is read
    locations = locations_for(out, args.location)
    keyring = out.settings.keyring()  # manifests are authenticated before use, deep or not
    work_dir = work_dir_of(out)
    entries, errors = collect(locations, tenant)
    for e in errors:
        out.warn(f"tenant-backup: warning: {e.location}: {e.message}")
    if args.backup == "latest":
        if not entries:
            raise NotFound(f"no backup of tenant {tenant} in {', '.join(locations)}")
        entry = entries[0]
    else:
        bid = validate_backup_id(args.backup)
        entry = next((e for e in entries if e.backup_id == bid), None)
        if entry is None:
            raise NotFound(f"backup {bid} of tenant {tenant} is in none of {', '.join(locations)}")
    labels = Labels.best_effort(out)
    if labels.name(tenant):
        out.note(f"tenant {labels.label(tenant)}: backup {entry.backup_id}")
    created = parse_created_at(entry.created_at)
    now = datetime.now(timezone.utc)
    failed = bool(errors)
    refused = False
    unreadable = {e.location: e.message for e in errors}
    copies = []

    def line(state: str, name: str, message: str) -> None:
        copies.append({"location": name, "state": state, "message": message})
        mark = {"ok": "ok  ", "expired": "-   "}.get(state, "FAIL")
        out.text(f"{mark} {name:5} {tenant} {entry.backup_id}: {message}")

    for name, loc in locations.items():
        if name not in entry.manifests and name in unreadable:
            line("unreadable", name, unreadable[name])
            continue
        if name not in entry.manifests:
            # Missing is a failure while the location should still hold it; past its retention, expected.
            expired = created is not None and (now - created).days >= loc.retention_days
            if expired:
                line("expired", name, f"not stored (past this location's {loc.retention_days}-day retention)")
            else:
                failed = True
                line("missing", name, "missing: no complete copy in this location")
            continue
        # Recorded beside the copy, for `status` (readable without Dagster); never fails the verify itself.
        check = verify_copy(
            loc,
            tenant,
            entry.backup_id,
            keyring=keyring,
            deep=args.deep,
            work_dir=work_dir,
            seal=args.seal,
            record="tenant-backup verify" + (" --deep" if args.deep else ""),
        )
        failed |= not check.ok
        refused |= check.refused
        line("ok" if check.ok else "failed", name, check.message)
    out.emit(
        {
            "tenant_id": tenant,
            "tenant_name": labels.name(tenant),
            "backup_id": entry.backup_id,
            "created_at": entry.created_at,
            "deep": bool(args.deep),
            "ok": not failed,
            "copies": copies,
        }
    )
    return 6 if refused else 1 if failed else 0


def _verify_all(args, out) -> int:
    """Every stored copy in the locations (or share n of t: catalog.share_of, as the daily job selects),
    re-read; a summary table; exit 1 naming every bad copy."""
    from ..core.errors import TenantBackupError
    from ..core.maintenance.catalog import missing_copies, parse_subset, share_of
    from ..core.maintenance.copy_check import verify_copy

    if args.backup != "latest":
        raise ConfigError("--backup needs --tenant (--all re-reads every stored backup)")
    share, shares = parse_subset(args.subset) if args.subset else (0, 1)
    locations = locations_for(out, args.location)
    keyring = out.settings.keyring()  # manifests are authenticated before use, deep or not
    work_dir = work_dir_of(out)
    selected, unreadable, listed, listings = [], {}, 0, {}
    for name, loc in locations.items():
        try:
            refs = loc.list()
        except TenantBackupError as exc:
            unreadable[name] = str(exc)
            out.warn(f"tenant-backup: error: location {name} could not be listed: {exc}")
            continue
        listed += len(refs)
        listings[name] = [(r.tenant_id, r.backup_id) for r in refs]
        selected += [(name, loc, r) for r in refs if share_of(name, r.tenant_id, r.backup_id, shares) == share]
    labels = Labels.best_effort(out)
    by = (
        "tenant-backup verify --all"
        + (f" --subset {share + 1}/{shares}" if args.subset else "")
        + (" --deep" if args.deep else "")
    )
    from ..core.locations.index import read_many

    with Counter(out, "verifying", total=len(selected), unit="copies") as bar:

        def one(item):
            name, loc, ref = item
            check = verify_copy(  # recorded beside the copy: read by `status`
                loc,
                ref.tenant_id,
                ref.backup_id,
                keyring=keyring,
                deep=args.deep,
                work_dir=work_dir,
                seal=args.seal,
                record=by,
            )
            bar.advance(check.ok)
            if not check.ok:
                bar.log(f"FAIL {name} {labels.label(ref.tenant_id)} {ref.backup_id}: {check.message}")
            return check

        # A few copies at once (each location's client bounds its own connections, retries, timeouts).
        results = read_many(one, selected, workers=VERIFY_CONCURRENCY)
    bad = [c for c in results if not c.ok]
    # Copies a location should hold by its retention but does not (the listings alone; every day,
    # whatever the share): verify cannot re-read them, rebuild can put them back.
    missing = missing_copies(listings, {n: locations[n].retention_days for n in listings})
    if out.json:
        out.emit(
            {
                "subset": f"{share + 1}/{shares}" if args.subset else None,
                "deep": bool(args.deep),
                "locations": list(locations),
                "listed": listed,
                "checked": len(results),
                "ok": len(results) - len(bad),
                "failed": len(bad),
                "unreadable_locations": unreadable,
                "missing": [{**m.as_dict(), "tenant_name": labels.name(m.tenant_id)} for m in missing],
                "copies": [
                    {
                        "location": c.location,
                        "tenant_id": c.tenant_id,
                        "tenant_name": labels.name(c.tenant_id),
                        "backup_id": c.backup_id,
                        "ok": c.ok,
                        "message": c.message,
                    }
                    for c in results
                ],
            }
        )
    else:
        rows = [("LOCATION", "TENANT", "BACKUP", "RESULT", "DETAIL")]
        for c in results:
            rows.append((c.location, labels.label(c.tenant_id), c.backup_id, "ok" if c.ok else "FAIL", c.message))
        for m in missing:
            rows.append((m.location, labels.label(m.tenant_id), m.backup_id, "MISSING", m.message))
        table(rows, out)
        per_location = {n: [c for c in results if c.location == n] for n in locations}
        summary = ", ".join(
            f"{n}: {sum(c.ok for c in cs)}/{len(cs)} ok" for n, cs in per_location.items() if n not in unreadable
        )
        share_text = f"share {share + 1}/{shares}: " if args.subset else ""
        out.text(
            f"{share_text}{len(results)} of {listed} stored copies re-read"
            f"{' (deep)' if args.deep else ''}; {summary or 'no location readable'}"
        )
    if bad:
        out.warn(
            f"tenant-backup: error: {len(bad)} of {len(results)} copies failed verification: "
            + "; ".join(f"{c.location}/{c.tenant_id}/{c.backup_id} ({c.message})" for c in bad)
        )
    if missing:
        out.warn(
            f"tenant-backup: error: {len(missing)} copies missing from a location that should hold them: "
            + "; ".join(f"{m.location}/{m.tenant_id}/{m.backup_id}" for m in missing)
            + "; fix: "
            + ", ".join(sorted({m.fix for m in missing}))
        )
    return 6 if any(c.refused for c in bad) else 1 if bad or unreadable or missing else 0
