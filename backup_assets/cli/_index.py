"""`tenant-backup rebuild --index`: each location's index rebuilt from the manifests it lists
(core/locations/index_compact.py compact(full=True)): every manifest re-read and authenticated,
concurrently, nothing of the old index kept but its tombstones."""

from __future__ import annotations

from ..core.errors import TenantBackupError
from ..core.locations.index_compact import compact
from ..core.locations.indexing import supports_index
from ._progress import Counter
from .ops import locations_for


def rebuild_indexes(args, out) -> int:
    keyring = out.settings.keyring()
    reports, failed = [], {}
    for name, loc in locations_for(out, args.location).items():
        if not supports_index(loc):
            continue
        with Counter(out, f"indexing {name}", total=None, unit="objects") as bar:
            try:
                report = compact(loc, keyring, full=True, progress=lambda n: bar.advance(True))
            except TenantBackupError as exc:
                failed[name] = str(exc)
                out.warn(f"tenant-backup: error: {name}: index not rebuilt: {exc}")
                continue
        reports.append(report)
        out.text(report.line())
        for line in report.refused + report.errors:
            out.warn(f"tenant-backup: warning: {name}: {line}")
    out.emit(
        {
            "indexes": [
                {
                    "location": r.location,
                    "generation": r.generation,
                    "backups": r.backups,
                    "tenants": r.tenants,
                    "manifests_read": r.manifests_read,
                    "refused": r.refused,
                    "errors": r.errors,
                    "seconds": round(r.seconds, 3),
                }
                for r in reports
            ],
            "failed": failed,
            "ok": not failed,
        }
    )
    return 1 if failed else 0
