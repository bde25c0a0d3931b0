"""`tenant-backup prune | rebuild | keys rewrap`: changing what the storage locations hold.

Thin: parse, call backup_assets.core.maintenance.{retention,rebuild,rotation}, print. Registered
with `@command` (cli/_command.py), like every command.
"""

from __future__ import annotations

from ..core.errors import NotFound, StorageError
from ._command import arg, command
from ._progress import Counter
from .ops import locations_for, work_dir_of

# ---------------------------------------------------------------------------------------------- prune


@command(
    "prune",
    help="delete backups past each location's retention (never the newest verified one of a "
    "tenant; at least TENANT_BACKUP_KEEP_MIN kept), then what no manifest refers to and nothing "
    "touched for TENANT_BACKUP_GC_GRACE_S (garbage: superseded archives, leftovers of killed writes)",
    args=[
        arg(
            "--dry-run",
            action="store_true",
            help="print what would be deleted and collected, with sizes; delete nothing",
        ),
        arg("--location", metavar="L", help="only this location; default: all configured"),
    ],
)
def cmd_prune(args, out) -> int:
    from ..core.maintenance.gc import grace_period
    from ..core.maintenance.retention import prune_location

    keep_min = out.settings.keep_min
    grace = grace_period(out.settings.variables)
    keyring = out.settings.keyring()  # every manifest is authenticated before its age is believed
    locations = locations_for(out, args.location)
    verb = "would delete" if args.dry_run else "deleted"
    doc = {"dry_run": bool(args.dry_run), "keep_min": keep_min, "locations": {}}

    def stamp(moment):
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None

    def prune_one(name, loc, emit) -> tuple[bool, bool]:
        """Prune one location; every line it prints goes through emit(kind, text). (failed, refused)"""
        entry = doc["locations"][name]

        def on_delete(location, d):
            emit(
                "text",
                f"{verb} {location:5} {d.tenant_id} {d.backup_id} (created {stamp(d.created_at) or '?'}: {d.reason})",
            )

        def on_garbage(g):
            size = "? bytes" if g.size is None else f"{g.size} bytes"
            emit(
                "text", f"{'would collect' if args.dry_run else 'collected'} {g.location:5} {g.uri} ({g.what}, {size})"
            )

        try:
            report = prune_location(
                loc,
                keyring=keyring,
                keep_min=keep_min,
                dry_run=args.dry_run,
                on_delete=on_delete,
                grace=grace,
                on_garbage=on_garbage,
            )
        except StorageError as exc:  # this location unreachable: the others are still pruned
            emit("warn", f"FAIL {name:5} prune: {exc}")
            entry["errors"].append(str(exc))
            return True, False
        for err in report.errors:
            emit("warn", f"FAIL {name:5} {err}")
        for line in report.refused:
            emit("warn", f"tenant-backup: error: {name}: {line}")
        for line in report.warnings:
            emit("warn", f"tenant-backup: warning: {name}: {line}")
        for ref in report.incomplete:
            emit(
                "text",
                f"{'would remove' if args.dry_run else 'removed'} {name:5} {ref.tenant_id} {ref.backup_id}"
                " (incomplete: no manifest, left by a failed upload)",
            )
        kept = sum(1 for d in report.decisions if not d.delete)
        entry.update(
            kept=kept,
            errors=list(report.errors),
            refused=list(report.refused),
            incomplete=[{"tenant_id": r.tenant_id, "backup_id": r.backup_id} for r in report.incomplete],
            garbage=[{"uri": g.uri, "what": g.what, "size": g.size} for g in report.garbage],
            deleted=[
                {
                    "tenant_id": d.tenant_id,
                    "backup_id": d.backup_id,
                    "created_at": stamp(d.created_at),
                    "reason": d.reason,
                }
                for d in report.deleted
            ],
        )
        collected = sum(g.size or 0 for g in report.garbage)
        emit(
            "text",
            f"{name}: {len(report.deleted)} {verb}, {kept} kept (retention {loc.retention_days} days, "
            f"keep at least {keep_min} per tenant); {len(report.garbage)} unreferenced objects "
            f"({collected} bytes) {'would be collected' if args.dry_run else 'collected'}",
        )
        return bool(report.errors or report.refused), bool(report.refused)

    failed = refused = False
    for name, loc in locations.items():  # in the configured order (the JSON document's too)
        doc["locations"][name] = {
            "retention_days": loc.retention_days,
            "deleted": [],
            "kept": 0,
            "errors": [],
            "refused": [],
            "incomplete": [],
            "garbage": [],
        }
    # Every location is pruned at once (each its own endpoint and its own deletions); what each prints
    # is printed here, location after location in the configured order, the first one as it happens.
    for one_failed, one_refused in _each_at_once(out, prune_one, list(locations.items())):
        failed |= one_failed
        refused |= one_refused
    doc["gc_grace_s"] = int(grace.total_seconds())
    doc["ok"] = not failed
    out.emit(doc)
    return 6 if refused else 1 if failed else 0


def _each_at_once(out, fn, items: list[tuple[str, object]]):
    """fn(name, item, emit) for every item, each in a thread of its own; yields their results in the
    order of `items`, and prints what each emitted (emit("text" | "warn", line)) in that order too,
    from this thread only: the first item's lines as they come, the next's once the first is done."""
    import queue
    import threading

    done = object()
    queues = [queue.SimpleQueue() for _ in items]
    results: list = [None] * len(items)

    def run(i, name, item):
        try:
            results[i] = fn(name, item, lambda kind, text: queues[i].put((kind, text)))
        except BaseException as exc:  # noqa: BLE001 - raised again in the printing thread
            results[i] = exc
        finally:
            queues[i].put(done)

    threads = [threading.Thread(target=run, args=(i, n, it), daemon=True) for i, (n, it) in enumerate(items)]
    for thread in threads:
        thread.start()
    failure = None
    for i, thread in enumerate(threads):
        while (line := queues[i].get()) is not done:
            (out.text if line[0] == "text" else out.warn)(line[1])
        thread.join()
        if isinstance(results[i], BaseException):
            failure = failure or results[i]  # raised once every other item is done and printed
        else:
            yield results[i]
    if failure is not None:
        raise failure


# -------------------------------------------------------------------------------------------- rebuild


@command(
    "rebuild",
    help="copy into a location the backups it should hold (its retention) from the other locations; never deletes",
    args=[
        arg("--location", metavar="L", help="the location to fill (a configured location's name)"),
        arg(
            "--from",
            dest="sources",
            metavar="L1,L2",
            help="locations to copy from, in order of preference (default: the other configured ones)",
        ),
        arg("--repair", action="store_true", help="also re-read the copies it holds and replace damaged ones"),
        arg("--dry-run", action="store_true", help="print what would be copied, copy nothing"),
        arg(
            "--index",
            action="store_true",
            help="instead, rebuild the index of --location (default: every configured one) from its manifests",
        ),
    ],
)
def cmd_rebuild(args, out) -> int:
    from ..core.maintenance.rebuild import rebuild_location

    if args.index:  # docs/STORAGE.md "The index"
        from ._index import rebuild_indexes

        return rebuild_indexes(args, out)
    if not args.location:
        from ..core.errors import ConfigError

        raise ConfigError("rebuild needs --location L (or --index)")

    keep_min = out.settings.keep_min
    target = out.settings.locations([args.location])[args.location.strip().lower()]
    names = [n.strip() for n in args.sources.split(",")] if args.sources else out.settings.location_names
    sources = out.settings.locations([n for n in names if n.strip().lower() != target.name])
    if not sources:
        raise NotFound(f"no other location to rebuild {target.name} from (use --from)")

    with Counter(out, f"rebuilding {target.name}", total=None, unit="backups") as bar:

        def progress(o):
            bar.advance(o.status != "failed")
            out.text(f"{o.status:10} {target.name:5} {o.tenant_id} {o.backup_id}: {o.message}")

        outcomes, errors = rebuild_location(
            target,
            sources,
            keyring=out.settings.keyring(),
            keep_min=keep_min,
            dry_run=args.dry_run,
            repair=args.repair,
            work_dir=work_dir_of(out),
            progress=progress,
        )
    for err in errors:
        out.warn(f"tenant-backup: warning: {err}")
    done = sum(1 for o in outcomes if o.status != "failed")
    failed = len(outcomes) - done
    out.text(
        f"{target.name}: {done} {'would be copied' if args.dry_run else 'copied'}, {failed} failed "
        f"(from {', '.join(sources)}; retention {target.retention_days} days, at least {keep_min} per tenant)"
    )
    out.emit(
        {
            "location": target.name,
            "sources": list(sources),
            "dry_run": bool(args.dry_run),
            "repair": bool(args.repair),
            "keep_min": keep_min,
            "retention_days": target.retention_days,
            "copied": done,
            "failed": failed,
            "errors": list(errors),
            "ok": not (failed or errors),
            "backups": [
                {"tenant_id": o.tenant_id, "backup_id": o.backup_id, "status": o.status, "message": o.message}
                for o in outcomes
            ],
        }
    )
    return 6 if any(o.refused for o in outcomes) else 1 if failed or errors else 0


# ---------------------------------------------------------------------------------------- keys rewrap


@command(
    "keys rewrap",
    help="re-wrap every stored archive's data key under the active (first) key of "
    "TENANT_BACKUP_KEYS, then verify with that key only",
    args=[
        arg("--location", metavar="L", help="only this location; default: all configured"),
        arg(
            "--show-skipped",
            dest="verbose_skips",
            action="store_true",
            help="also print backups already under the active key",
        ),
    ],
)
def cmd_keys_rewrap(args, out) -> int:
    from ..core.maintenance.rotation import rewrap_locations

    keyring = out.settings.keyring()
    locations = locations_for(out, args.location)
    out.note(f"re-wrapping data keys under the active key {keyring.active.id!r} in {', '.join(locations)}")

    with Counter(out, "re-wrapping", total=None, unit="copies") as bar:

        def progress(o):
            bar.advance(o.status != "failed")
            if o.status != "skipped" or args.verbose_skips:
                out.text(f"{o.status:9} {o.location:5} {o.tenant_id} {o.backup_id}: {o.message}")

        outcomes = rewrap_locations(locations, keyring, work_dir=work_dir_of(out), progress=progress)
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("rewrapped", "sealed", "skipped", "failed")}
    sealed = f"{counts['sealed']} manifests sealed, " if counts["sealed"] else ""
    out.text(
        f"{counts['rewrapped']} re-wrapped, {sealed}{counts['skipped']} already under {keyring.active.id!r},"
        f" {counts['failed']} failed"
    )
    out.emit(
        {
            "active_key": keyring.active.id,
            "locations": list(locations),
            **counts,
            "ok": not counts["failed"],
            "copies": [
                {
                    "location": o.location,
                    "tenant_id": o.tenant_id,
                    "backup_id": o.backup_id,
                    "status": o.status,
                    "message": o.message,
                }
                for o in outcomes
            ],
        }
    )
    return 6 if any(o.refused for o in outcomes) else 1 if counts["failed"] else 0
