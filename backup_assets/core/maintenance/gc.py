"""Garbage collection of the storage locations: what no manifest refers to, once the grace period is over.

The write protocol (core/locations/base.py) never leaves a broken copy, but a killed put, re-wrap,
rebuild or prune leaves objects no manifest names (Location.garbage, core/locations/garbage.py): a
re-wrap's superseded archive, a new archive whose manifest switch never came, a backup folder without a
manifest, local hidden temporary files, R2 multipart uploads never completed, B2 unfinished large files
and older versions of a name. `prune` runs `collect_garbage` in every location after its retention
(`tenant-backup prune`; `--dry-run` lists them with their sizes).

Nothing younger than the grace period (TENANT_BACKUP_GC_GRACE_S, default a day) is touched: a running
backup, rebuild or re-wrap may still be writing it and switch its manifest to it. No put takes a day
between its first byte and its manifest, so a day is safe; tests set 0 once the writer is dead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .. import crashpoints
from ..errors import TenantBackupError
from ..locations import Garbage, Location, Survey
from ..options import OPTIONS

log = logging.getLogger(__name__)

GRACE_VAR = "TENANT_BACKUP_GC_GRACE_S"


def grace_period(variables: Mapping[str, str] | tuple = ()) -> timedelta:
    """The grace period from the variables (Settings.variables or an environment mapping)."""
    option = next(o for o in OPTIONS if o.var == GRACE_VAR)
    env = dict(variables)
    return timedelta(seconds=option.value(env))


DEFAULT_GRACE = grace_period()


@dataclass
class GcReport:
    location: str
    found: list[Garbage] = field(default_factory=list)  # what is garbage (removed unless dry_run)
    removed: list[Garbage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line each; the other removals went on
    dry_run: bool = False

    @property
    def bytes(self) -> int:
        return sum(g.size or 0 for g in self.found)


def collect_garbage(
    loc: Location,
    *,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
    dry_run: bool = False,
    on_item: Callable[[Garbage], None] | None = None,
    survey: Survey | None = None,
) -> GcReport:
    """Find what no manifest of `loc` refers to, untouched for `grace`, and remove it (unless dry_run);
    `survey`: the listing to work from (Location.survey: prune's, taken for its plan)."""
    now = now or datetime.now(timezone.utc)
    report = GcReport(loc.name, dry_run=dry_run)
    try:
        report.found = loc.garbage(now - grace, survey)
    except TenantBackupError as exc:
        report.errors.append(f"cannot look for garbage: {exc}")
        return report
    for item in report.found:
        if not dry_run:
            try:
                loc.remove_garbage(item)
            except TenantBackupError as exc:
                report.errors.append(f"{item.uri}: cannot remove ({item.what}): {exc}")
                continue
            crashpoints.reached("gc.remove")
        report.removed.append(item)
        if on_item is not None:
            on_item(item)
    return report
