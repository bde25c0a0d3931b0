"""`tenant-backup backup`: tenants backed up through Dagster (every location, every check); the batch
display (run_batch, tenant_table) the demo uses too (the `demo` command: cli/demo.py)."""

from __future__ import annotations

import os

from ._command import Labels, arg, command, exclusive
from ._progress import Counter


def outcome_state(outcome) -> str:
    return "ok" if outcome.ok else "skipped" if outcome.skipped else "failed"


def outcome_dict(outcome, labels: Labels) -> dict:
    return {
        "tenant_id": outcome.tenant_id,
        "tenant_name": labels.name(outcome.tenant_id),
        "state": outcome_state(outcome),
        "ok": outcome.ok,
        "run_id": outcome.run_id or None,
        "steps": dict(outcome.steps),
        "checks": dict(outcome.checks),
        "error": (outcome.reason if outcome.failed else outcome.error) or None,
        "skipped": outcome.skipped or None,
        "shared_tables": dict(outcome.shared),
    }


def batch_document(outcomes, labels: Labels, **extra) -> dict:
    shared: dict[str, int] = {}
    for outcome in outcomes:
        for name, rows in outcome.shared.items():
            shared[name] = max(rows, shared.get(name, 0))
    states = [outcome_state(o) for o in outcomes]
    return {
        **extra,
        "total": len(outcomes),
        "ok": states.count("ok"),
        "failed": states.count("failed"),
        "skipped": states.count("skipped"),
        "shared_tables": shared,
        "tenants": [outcome_dict(o, labels) for o in outcomes],
    }


def tenant_table(outcomes, assets: list[str], labels: Labels) -> str:
    """tenant × asset (with its checks) table, one line per tenant, the tenant by its label."""
    names = [labels.label(o.tenant_id) for o in outcomes]
    width = max([len("tenant"), *map(len, names)])
    lines = [f"{'tenant':{width}}  " + "  ".join(f"{a:>16}" for a in assets) + "  result"]
    for name, outcome in zip(names, outcomes, strict=True):
        cells = []
        for asset_name in assets:
            checks = [ok for key, ok in outcome.checks.items() if key.startswith(asset_name + ":")]
            state = outcome.steps.get(asset_name, "-")
            if checks:
                state += f" {sum(checks)}/{len(checks)}✓"
            cells.append(f"{state:>16}")
        result = "OK" if outcome.ok else f"SKIPPED {outcome.skipped}" if outcome.skipped else f"FAILED {outcome.reason}"
        lines.append(f"{name:{width}}  " + "  ".join(cells) + "  " + result)
    return "\n".join(lines)


def run_batch(
    defs,
    instance,
    tenant_ids: list[str],
    out,
    labels: Labels,
    *,
    settings,
    force: bool = False,
    workers: int | None = None,
    log_level: str = "WARNING",
):
    """back_up_tenants with a tenants-done display (or, without a terminal, one stderr line per tenant);
    log_level: of the runs' console lines."""
    from ..defs.runs.batch import back_up_tenants

    with Counter(out, "backing up", total=len(tenant_ids), unit="tenants") as bar:

        def progress(index, total, outcome):
            bar.advance(outcome.ok or bool(outcome.skipped))
            state = (
                "ok"
                if outcome.ok
                else f"SKIPPED ({outcome.skipped})"
                if outcome.skipped
                else f"FAILED ({outcome.reason})"
            )
            if not bar.on or not outcome.ok:  # on a terminal the bar says the rest
                bar.log(f"  [{index}/{total}] {labels.label(outcome.tenant_id)}: {state}")

        return back_up_tenants(
            defs,
            instance,
            tenant_ids,
            settings=settings,
            force=force,
            progress=progress,
            workers=workers,
            log_level=log_level,
        )


@command(
    "backup",
    help="back up tenants through Dagster: every configured location and every check",
    args=[
        exclusive(
            arg("--tenant", action="append", metavar="ID", help="a tenant id (repeatable)"),
            arg("--all", action="store_true", help="every tenant TENANT_BACKUP_TENANTS_QUERY returns"),
        ),
        arg("--force", action="store_true", help="back up tenants the registry query does not return"),
        arg(
            "--workers",
            type=int,
            default=None,
            metavar="N",
            help="tenants backed up at once, each worker a process running one tenant's run at a time "
            "(needs DAGSTER_HOME; default TENANT_BACKUP_WORKERS, else cores + 1)",
        ),
    ],
)
def cmd_backup(args, out) -> int:
    from ..core.archive.export import shared_line
    from ..core.errors import UnknownTenant
    from ..core.leftovers import clean_leftovers
    from ..core.source.tenant_ids import validate_tenant_id
    from ..core.source.tenants import read_registry

    settings = out.settings.source
    records = read_registry(settings)
    # What killed runs left (work folders, scratch databases with decrypted rows) goes first.
    clean_leftovers(out.settings, out.note)
    registry = [r.id for r in records]
    labels = Labels({r.id: r.name for r in records if r.name})
    if args.all:
        tenant_ids = registry
    else:
        tenant_ids = list(dict.fromkeys(validate_tenant_id(t, settings.tenant_ids) for t in args.tenant))
        unknown = [t for t in tenant_ids if t not in registry]
        if unknown and not args.force:
            raise UnknownTenant(
                f"not returned by TENANT_BACKUP_TENANTS_QUERY: {', '.join(unknown)}; use --force to back them up anyway"
            )
    if not tenant_ids:
        out.note("no tenants to back up")
        out.emit(batch_document([], labels))
        return 0

    from ..defs.build import build_definitions
    from ..defs.runs.in_process import job_assets
    from ..defs.runs.instance import open_instance

    defs = build_definitions(out.settings)
    instance = open_instance(os.environ.get("DAGSTER_HOME"))  # a new DAGSTER_HOME is made once, under a lock
    result = run_batch(
        defs, instance, tenant_ids, out, labels, settings=out.settings, force=args.force, workers=args.workers
    )
    outcomes = result.outcomes
    out.text(tenant_table(outcomes, job_assets(defs), labels))
    out.emit(batch_document(outcomes, labels))
    shared = batch_document(outcomes, labels)["shared_tables"]
    if shared:  # once for the batch, with the count (each tenant's run leaves it to the batch)
        warn, line = shared_line(shared, settings.shared_tables, sum(bool(o.shared) for o in outcomes))
        if warn:
            out.warn(f"tenant-backup: warning: {line}")
        else:
            out.note(line)
    if result.skipped:
        out.warn(f"tenant-backup: warning: {result.skipped_line()}")
    if result.failed:
        out.warn(f"tenant-backup: error: {result.failure_line()}")
        return 1
    return 0
