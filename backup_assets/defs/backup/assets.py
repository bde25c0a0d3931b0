"""The assets of a tenant partition: its archive, fanned out to one asset per storage location.

tenant_archive ──► <location>_copy for every configured location (one per kind in the registry of
location kinds: local_copy, ...). All of them, with their checks, are ONE step (`back_up`, a
multi-asset) that runs every partition of its run: a run of one tenant (the UI, `dagster asset
materialize --partition`, the per-tenant schedule) or of many (a backfill under the backfill policy,
the weekly batch): Dagster's own guidance at many partitions (docs/BENCHMARKS.md). Per tenant the
step reports what an operator looks at, each under the tenant's partition: one materialization per
asset and one evaluation per check (defs/backup/check_results.py) — no step, input or output events
per asset. A failing location fails alone (its copy not materialized, its BACKUP_FAILURE alert; the
others are stored), a failing tenant fails alone (the others of the run are reported), and the step
fails at the end naming them; a location is re-run or backfilled alone by selecting its asset (the
staged archive is loaded). The archive's isolation check and restore drill run before any location
(defs/backup/archive_checks.py); a location ships only an archive they proved.
"""

import dataclasses
import os
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    DagsterRunStatus,
    Failure,
    MetadataValue,
    multi_asset,
)

from ...core.archive.export import ExportOptions, export_tenant, shared_line
from ...core.archive.manifest import Manifest
from ...core.files import TEMP_MARK
from ...core.locations import registry
from ...core.maintenance import alerts
from ...core.settings import Settings
from ..failures import exception_line, permanent_failure, permanent_failures
from ..resources import ArchiveHandle, BackupResource, load_staged, stage_handle, store_copy
from ..runs.guard import BATCH_TAG, TenantBusy, claim_tenant
from .archive_checks import ARCHIVE_ASSET, archive_check_results, archive_check_specs
from .check_results import RunMaterializations, check_result, latest_materialization, run_url
from .copy_checks import copy_check_outcomes, location_check_specs
from .partitions import tenants_partitions

GROUP = "tenant_backup"
FORCE_TAG = "tenant_backup/force"  # run tag: back up a tenant the registry does not return
TENANT_NAME_TAG = "tenant_backup/tenant_name"  # run tag: the registry's display name (its query's 2nd column)
LISTED_TAG = "tenant_backup/listed"  # run tag: the batch read the registry and found the tenant listed
STEP = "back_up"  # the one step of the tenant_backup job
# A backfill of N tenants runs as ceil(N / PARTITIONS_PER_RUN) runs (BackfillPolicy.multi_run): few
# enough that process start-up does not count, enough that the run queue (max_concurrent_runs)
# executes several at once on the cores.
PARTITIONS_PER_RUN = 50
ALERTED = "tenant_backup/alerted"  # metadata of the step's Failure: its BACKUP_FAILURE alerts are raised
FAILED_TENANTS = "failed_tenants"  # metadata of the step's Failure: each failed tenant's one line


def shared_rows(manifest: Manifest) -> dict[str, int]:
    """The shared tables (dumped whole into every tenant's archive) with their row counts."""
    return {name: (manifest.tables or {}).get(name, 0) for name in manifest.kinds.shared or []}


def archive_metadata(manifest: Manifest) -> dict:
    """Numbers as numeric metadata, so the UI plots them over time."""
    tables = manifest.tables or {}
    return {
        "tenant_id": manifest.tenant_id,
        "backup_id": manifest.backup_id,
        "key_id": manifest.archive.key_id,
        "sha256": manifest.archive.sha256,
        "raw_bytes": MetadataValue.int(manifest.raw_size),
        "compressed_bytes": MetadataValue.int(manifest.compressed_size),
        "archive_bytes": MetadataValue.int(manifest.archive.size),
        "compression_ratio": MetadataValue.float(float(manifest.compression_ratio or 0.0)),
        "duration_seconds": MetadataValue.float(float((manifest.timings or {}).get("total_s", 0.0))),
        "rows_total": MetadataValue.int(sum(tables.values())),
        "row_counts": MetadataValue.json(tables),
        # Dumped whole into every tenant's archive: shown so nobody is surprised (docs/ISOLATION.md).
        "shared_tables": MetadataValue.json(shared_rows(manifest)),
    }


def build_backup_asset(settings: Settings) -> AssetsDefinition:
    """The one step: tenant_archive and a <location>_copy per configured location, with every check."""
    names = settings.location_names
    specs = [
        AssetSpec(
            ARCHIVE_ASSET,
            partitions_def=tenants_partitions,
            group_name=GROUP,
            kinds={"postgres"},
            skippable=True,
            description="One tenant's rows: pg_dump under row-level security → zstd → AES-256-GCM → SHA-256, "
            "staged on local disk, then restored into a scratch database (isolation, restore drill). "
            "The handle (path + manifest) is what the locations store.",
        )
    ]
    for name in names:
        kind = registry.kind(name)
        specs.append(
            AssetSpec(
                f"{name}_copy",
                deps=[ARCHIVE_ASSET],
                partitions_def=tenants_partitions,
                group_name=GROUP,
                kinds={kind.ui_kind},
                skippable=True,
                description=f"The tenant's archive and manifest stored in the {name} location "
                f"({kind.display_name}; retention per {kind.retention_variable}).",
            )
        )

    @multi_asset(
        name=STEP,
        specs=specs,
        check_specs=[*archive_check_specs(), *(c for name in names for c in location_check_specs(name))],
        partitions_def=tenants_partitions,
        can_subset=True,  # a location alone; and the checks are reported per partition, not as outputs
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN),
    )
    def back_up(context: AssetExecutionContext, backup: BackupResource):
        selected = {key.path[-1] for key in context.selected_asset_keys}
        # Checks selected without their copy (the UI's "execute checks"): re-run on the stored copy.
        recheck = {
            key.asset_key.path[-1]
            for key in context.selected_asset_check_keys
            if key.asset_key.path[-1] not in selected and key.asset_key.path[-1] != ARCHIVE_ASSET
        }
        tenants = context.partition_keys
        listed, names_of = _registry(context, backup, tenants)
        failed: list[str] = []
        stored = RunMaterializations(context.instance, context.run.run_id)  # the checks' targets
        for tenant_id in tenants:
            if selected:
                yield from _tenant(
                    context, backup, tenant_id, selected, failed, listed, names_of.get(tenant_id), stored
                )
            for asset in sorted(recheck):
                yield from _recheck(context, backup, tenant_id, asset, failed)
        if failed:
            lines: dict[str, str] = {}
            for tenant_id, asset, line in failed:
                lines[tenant_id] = f"{lines[tenant_id]}; {asset}: {line}" if tenant_id in lines else line
            raise Failure(
                _failure_line(failed, len(tenants)),
                allow_retries=False,
                metadata={ALERTED: True, FAILED_TENANTS: MetadataValue.json(lines)},
            )

    return back_up


def _registry(context, backup: BackupResource, tenants: list[str]) -> tuple[bool, dict[str, str]]:
    """One registry read per run, not per tenant: whether every tenant is listed, and their names. A
    batch's run carries the batch's own read as tags (LISTED_TAG, TENANT_NAME_TAG): none then; a run
    of one tenant asks for its row only (core/source/tenants.py registry_row)."""
    from ...core.source.tenants import clean_name, read_registry, registry_row

    tags = context.run.tags
    if tags.get(LISTED_TAG) == "true" and len(tenants) == 1:
        name = tags.get(TENANT_NAME_TAG)
        return True, ({tenants[0]: name} if name else {})
    try:
        if len(tenants) == 1:
            row = registry_row(backup.source_settings(), tenants[0])
            name = clean_name(row[1]) if row is not None and len(row) > 1 else None
            return row is not None, ({tenants[0]: name} if name else {})
        records = {r.id: r for r in read_registry(backup.source_settings())}
    except Exception as exc:  # noqa: BLE001 - each export asks again, and fails with the reason
        context.log.warning(f"tenant registry not read: {' '.join(str(exc).split())[:300]}")
        return False, {}
    listed = {t for t in tenants if t in records}
    return len(listed) == len(tenants), {t: records[t].name for t in listed if records[t].name}


def _tenant(context, backup: BackupResource, tenant_id, selected, failed, listed, name, stored):
    """One tenant's partition: its events; what failed appended to `failed`, alerted. Each check
    evaluation targets the materialization it checked: read from the run's event log (`stored`) once
    for the archive and once for all the locations' copies (not once per asset)."""
    settings = backup.get_settings()
    url = run_url(settings, context.run.run_id)
    handle = None
    if ARCHIVE_ASSET in selected:
        try:
            handle, drill_outcomes = _with_retries(settings, lambda: _archive(context, backup, tenant_id, listed))
        except Exception as exc:  # noqa: BLE001 - this tenant fails, the run's others go on
            line = exception_line(exc)
            failed.append((tenant_id, ARCHIVE_ASSET, line))
            alerts.emit(alerts.backup_failure(tenant_id, None, f"{ARCHIVE_ASSET}: {line}", url), settings)
            return
        if handle is not None and handle.proven:
            yield AssetMaterialization(
                AssetKey(ARCHIVE_ASSET),
                partition=tenant_id,
                metadata={**archive_metadata(handle.manifest), **({"tenant_name": name} if name else {})},
            )
        if handle is not None and handle.proven:
            stored.read()
        target = stored.target(ARCHIVE_ASSET, tenant_id)
        for outcome in drill_outcomes:
            common = _common(ARCHIVE_ASSET, tenant_id, None, settings)
            yield check_result(context, **common, **outcome, blocking=True, target=target)
        if not handle.proven:  # not materialized: nothing to ship, and nothing a later run could pick up
            Path(handle.path).unlink(missing_ok=True)
            line = "; ".join(str(o["message"]) for o in drill_outcomes if not o["passed"])
            failed.append(
                (tenant_id, ARCHIVE_ASSET, f"archive {handle.backup_id} failed its checks, not shipped: {line}")
            )
            return
    locations = [n for n in backup.location_names() if f"{n}_copy" in selected]
    if locations and handle is None:
        try:
            handle = load_staged(backup.work_dir, tenant_id)
        except Exception as exc:  # noqa: BLE001
            failed.append((tenant_id, ARCHIVE_ASSET, exception_line(exc)))
            return
    checked: list[tuple[str, str, list[dict]]] = []  # (asset, location, its checks' outcomes)
    for location in locations:
        asset = f"{location}_copy"
        try:
            if not handle.proven:  # fail closed: e.g. an archive staged by a run whose checks did not pass
                raise Failure(
                    f"archive {handle.backup_id} of tenant {tenant_id} was not proven by its"
                    f" isolation check and restore drill: not shipped to {location}",
                    allow_retries=False,
                )
            metadata = _with_retries(settings, lambda loc=location: store_copy(loc, backup, handle))
        except Exception as exc:  # noqa: BLE001 - this location fails alone
            line = exception_line(exc)
            failed.append((tenant_id, asset, line))
            alerts.emit(alerts.backup_failure(tenant_id, location, f"{asset}: {line}", url), settings)
            continue
        yield AssetMaterialization(AssetKey(asset), partition=tenant_id, metadata=metadata)
        checked.append((asset, location, copy_check_outcomes(location, handle, backup, context.log.warning)))
    if checked:
        stored.read()
    for asset, location, outcomes in checked:
        target = stored.target(asset, tenant_id)
        for outcome in outcomes:
            yield check_result(context, **_common(asset, tenant_id, location, settings), **outcome, target=target)


def _recheck(context, backup: BackupResource, tenant_id: str, asset: str, failed: list):
    """A copy's checks again, on the copy its latest materialization stored (decoded: no drill here)."""
    from ..resources import stored_backup_id

    location = asset[: -len("_copy")]
    backup_id = stored_backup_id(context.instance, AssetKey(asset), tenant_id)
    if backup_id is None:
        failed.append((tenant_id, asset, f"{asset} of tenant {tenant_id} was never stored"))
        return
    handle = ArchiveHandle(tenant_id, backup_id, "", None)
    settings = backup.get_settings()
    target = latest_materialization(context.instance, asset, tenant_id)
    for outcome in copy_check_outcomes(location, handle, backup, context.log.warning):
        yield check_result(context, **_common(asset, tenant_id, location, settings), **outcome, target=target)


def _failure_line(failed: list[tuple[str, str, str]], tenants: int) -> str:
    """What failed, on one line: a run of one tenant says its cause (the asset named when more than one
    failed); a run of many names each tenant with its asset and cause."""
    if tenants == 1:
        return failed[0][2] if len(failed) == 1 else "; ".join(f"{asset}: {line}" for _, asset, line in failed)
    return f"{len({t for t, _, _ in failed})} of {tenants} tenant backups failed: " + "; ".join(
        f"{tenant} ({asset}: {line})" for tenant, asset, line in failed
    )


def _common(asset, tenant_id, location, settings) -> dict:
    return {"asset": asset, "tenant_id": tenant_id, "location": location, "settings": settings}


def _with_retries(settings: Settings, work):
    """`work()`, again after TENANT_BACKUP_RETRY_DELAY_S for a transient error, at most
    TENANT_BACKUP_RETRIES times (a permanent one is raised at once: defs/failures.py)."""
    attempt = 0
    while True:
        try:
            return work()
        except Failure:
            raise
        except Exception as exc:
            if permanent_failure(exc) is not None or attempt >= settings.retries:
                if attempt:
                    exc.add_note(f"(after {attempt} retries)")
                raise
            attempt += 1
            time.sleep(settings.retry_delay_s * attempt)


def _archive(context, backup: BackupResource, tenant_id: str, listed: bool):
    """Export, stage and drill one tenant's archive: (its handle, the drill's check outcomes)."""
    if context.has_partition_key:  # a run of one tenant: is another live run backing this tenant up?
        try:
            claim_tenant(
                context.instance,
                context.run.run_id,
                tenant_id,
                log=context.log.warning,
                timeout_s=backup.get_settings().run_timeout_s,
            )
        except TenantBusy as exc:
            raise Failure(str(exc), allow_retries=False) from None
    with permanent_failures(backup.work_dir):
        out_dir = backup.staging_dir(tenant_id)
        _remove_leftovers(out_dir, context)
    pending = out_dir / f"{PENDING}{context.run.run_id}.tbk"
    # A tenant the registry no longer returns is refused unless the run says --force.
    force = context.run.tags.get(FORCE_TAG) == "true"
    # A permanent error (configuration, refused tenant, isolation, pg_dump's own error, a full or
    # read-only work directory) fails at once, naming it; a transient one is retried.
    with permanent_failures(pending):
        exported = export_tenant(
            backup.source_settings(),
            backup.keyring(),
            tenant_id,
            pending,
            ExportOptions(force=force, warn_shared=False, listed=listed or None),
        )
    shared = shared_rows(exported)
    if shared:  # once per run; a batch's runs leave it to the batch, which says it once with the count
        warn, line = shared_line(shared, backup.source_settings().shared_tables)
        in_batch = BATCH_TAG in context.run.tags or len(context.partition_keys) > 1
        if warn and not in_batch:
            context.log.warning(line)
    final = out_dir / f"{exported.backup_id}.tbk"
    with permanent_failures(final):
        os.replace(pending, final)
    manifest = exported.with_archive(file=final.name)
    handle = ArchiveHandle(tenant_id, manifest.backup_id, str(final), manifest)
    outcomes, proven, drill = archive_check_results(handle, backup)
    if drill is not None:  # stored with every copy: which bytes were proven, on which PostgreSQL major
        manifest = dataclasses.replace(manifest, drill=drill)
        handle = ArchiveHandle(tenant_id, manifest.backup_id, str(final), manifest)
    if proven:
        stage_handle(backup.work_dir, handle)
        with permanent_failures(out_dir):
            _prune_staging(out_dir, keep=final)
    return handle, outcomes


PENDING = "pending-"  # pending-<run id>.tbk: an archive being written by that run


def _remove_leftovers(directory, context) -> None:
    """Files an interrupted run left behind (never a complete archive: those are renamed into place
    only when whole). claim_tenant made this the tenant's only live run; a file whose run is still
    executing is kept all the same."""
    for leftover in [*directory.glob(f"{PENDING}*"), *directory.glob(f"*{TEMP_MARK}*")]:
        owner = leftover.name[len(PENDING) :].split(".", 1)[0] if leftover.name.startswith(PENDING) else None
        if owner and owner != context.run.run_id:
            run = context.instance.get_run_by_id(owner)
            if run is not None and run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
                context.log.warning(f"kept {leftover.name}: its run {owner} is still executing")
                continue
        leftover.unlink(missing_ok=True)
        context.log.info(f"removed {leftover.name}, left by an interrupted run")


def _prune_staging(directory, keep, retain: int = 2) -> None:
    """Keep the newest staged archives only (a location re-run needs the latest one)."""
    staged = sorted(p for p in directory.glob("*.tbk") if not p.name.startswith(PENDING))
    for old in staged[:-retain]:
        if old != keep:
            old.unlink(missing_ok=True)
