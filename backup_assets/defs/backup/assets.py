"""The assets: one archive per tenant partition, fanned out to one asset per storage location.

tenant_archive ──► <location>_copy for every configured location (one per kind in the registry of
location kinds: local_copy, ...), each with its own IO manager, so a failing location fails, retries
and is backfilled alone. The archive's isolation check and restore drill run
in its own step (defs/backup/archive_checks.py); a location ships only an archive they proved.
"""

import dataclasses
import os

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Backoff,
    DagsterRunStatus,
    Failure,
    MetadataValue,
    Output,
    RetryPolicy,
    asset,
)

from ...core.archive.export import ExportOptions, export_tenant, shared_line
from ...core.archive.manifest import Manifest
from ...core.files import TEMP_MARK
from ...core.locations import registry
from ...core.settings import Settings
from ..failures import permanent_failures
from ..resources import ArchiveHandle, BackupResource
from ..runs.guard import BATCH_TAG, TenantBusy, claim_tenant
from .archive_checks import ARCHIVE_ASSET, archive_check_results, archive_check_specs
from .partitions import tenants_partitions

GROUP = "tenant_backup"
FORCE_TAG = "tenant_backup/force"  # run tag: back up a tenant the registry does not return
TENANT_NAME_TAG = "tenant_backup/tenant_name"  # run tag: the registry's display name (its query's 2nd column)


def record_tenant_name(context, source_settings, tenant_id: str) -> str | None:
    """The tenant's display name from the registry query, put on the run as a tag (shown in the UI
    beside the id); None when the query returns no name. Never fails the backup."""
    from ...core.source.tenants import tenant_name

    try:
        name = tenant_name(source_settings, tenant_id)
        if name and context.run.tags.get(TENANT_NAME_TAG) != name:
            context.instance.add_run_tags(context.run.run_id, {TENANT_NAME_TAG: name})
        return name
    except Exception as exc:  # noqa: BLE001 - a name is a label, not a reason to fail a backup
        context.log.warning(f"tenant name not recorded: {' '.join(str(exc).split())[:300]}")
        return None


def retry_policy(settings: Settings) -> RetryPolicy:
    """TENANT_BACKUP_RETRIES (default 3) retries, TENANT_BACKUP_RETRY_DELAY_S (default 300) apart: for
    transient errors only (the database or a storage unreachable); the steps fail a permanent one at
    once (defs/failures.py)."""
    return RetryPolicy(max_retries=settings.retries, delay=settings.retry_delay_s, backoff=Backoff.LINEAR)


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


def build_archive_asset(settings: Settings) -> AssetsDefinition:
    @asset(
        name=ARCHIVE_ASSET,
        partitions_def=tenants_partitions,
        io_manager_key="staging_io_manager",
        group_name=GROUP,
        retry_policy=retry_policy(settings),
        kinds={"postgres"},
        check_specs=archive_check_specs(),
        description="One tenant's rows: pg_dump under row-level security → zstd → AES-256-GCM → SHA-256, "
        "staged on local disk, then restored into a scratch database (isolation, restore drill). "
        "The handle (path + manifest) is what flows downstream.",
    )
    def tenant_archive(context: AssetExecutionContext, backup: BackupResource):
        tenant_id = context.partition_key
        try:  # first of all: is another live run backing this tenant up?
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
        # read-only work directory) fails the step at once, naming it; a transient one is retried.
        with permanent_failures(pending):
            exported = export_tenant(
                backup.source_settings(),
                backup.keyring(),
                tenant_id,
                pending,
                ExportOptions(force=force, warn_shared=False),
            )
        shared = shared_rows(exported)
        if shared:  # once per run; a batch's runs leave it to the batch, which says it once with the count
            warn, line = shared_line(shared, backup.source_settings().shared_tables)
            in_batch = BATCH_TAG in context.run.tags
            (context.log.warning if warn and not in_batch else context.log.info)(line)
        name = record_tenant_name(context, backup.source_settings(), tenant_id)
        final = out_dir / f"{exported.backup_id}.tbk"
        with permanent_failures(final):
            os.replace(pending, final)
        manifest = exported.with_archive(file=final.name)
        handle = ArchiveHandle(tenant_id, manifest.backup_id, str(final), manifest)
        results, proven, drill = archive_check_results(context, handle, backup)
        if drill is not None:  # stored with every copy: which bytes were proven, on which PostgreSQL major
            manifest = dataclasses.replace(manifest, drill=drill)
            handle = ArchiveHandle(tenant_id, manifest.backup_id, str(final), manifest)
        yield from results
        if not proven:  # not materialized: nothing to ship, and nothing a later run could pick up
            final.unlink(missing_ok=True)
            raise Failure(
                f"archive {handle.backup_id} of tenant {tenant_id} failed its checks, not shipped: "
                + "; ".join(str(r.metadata["message"].value) for r in results if not r.passed),
                allow_retries=False,
            )
        with permanent_failures(out_dir):
            _prune_staging(out_dir, keep=final)
        yield Output(handle, metadata={**archive_metadata(manifest), **({"tenant_name": name} if name else {})})

    return tenant_archive


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


def build_location_asset(location: str, settings: Settings) -> AssetsDefinition:
    """The asset <location>_copy of a configured location; what the UI shows of it is its kind's
    (core/locations/registry.py)."""
    kind = registry.kind(location)

    @asset(
        name=f"{location}_copy",
        partitions_def=tenants_partitions,
        io_manager_key=f"{location}_io_manager",
        ins={"archive": AssetIn(ARCHIVE_ASSET)},
        group_name=GROUP,
        retry_policy=retry_policy(settings),
        kinds={kind.ui_kind},
        description=f"The tenant's archive and manifest stored in the {location} location ({kind.display_name}; "
        f"its IO manager writes it; retention per {kind.retention_variable}).",
    )
    def copy(archive: ArchiveHandle, backup: BackupResource) -> ArchiveHandle:
        if not archive.proven:  # fail closed: e.g. an archive staged by a run whose checks did not pass
            raise Failure(
                f"archive {archive.backup_id} of tenant {archive.tenant_id} was not proven by its"
                f" isolation check and restore drill: not shipped to {location}",
                allow_retries=False,
            )
        return archive  # the IO manager does the storing: the value is only the handle

    return copy
