"""The index job: compacts and reconciles every configured location's index (core/locations/index_compact.py).
Launched by the staleness sensor when an index is unusable, holds many log entries, or was last
reconciled over a day ago; `tenant-backup rebuild --index` does the same from the command line."""

from dagster import Failure, OpExecutionContext, job, op

from ...core.errors import TenantBackupError
from ...core.locations.index_compact import compact
from ...core.locations.indexing import supports_index
from ..resources import BackupResource

INDEX_JOB = "index_maintenance"


@op(description="Compact and reconcile each configured location's index with the manifests it lists.")
def compact_indexes(context: OpExecutionContext, backup: BackupResource) -> None:
    keyring = backup.keyring()
    failed = []
    for name in backup.location_names():
        loc = backup.location(name)
        if not supports_index(loc):
            continue
        try:
            report = compact(loc, keyring)
        except TenantBackupError as exc:  # one location failing does not keep the others' indexes old
            failed.append(f"{name}: {exc}")
            continue
        context.log.info(report.line())
    if failed:
        raise Failure("index not compacted: " + "; ".join(failed))


@job(name=INDEX_JOB, description="Compacts and reconciles the storage locations' indexes (docs/STORAGE.md).")
def index_maintenance_job():
    compact_indexes()
