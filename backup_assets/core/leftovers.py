"""What dead runs leave behind on this machine and on the scratch server, collected: the work
folders of killed commands (core/workdir.py) and the scratch databases of killed restore drills
(core/checks/scratch_db.py). `clean_leftovers` is the periodic clean-up (the daily verify job calls
it) and what a run calls when it starts; docs/RUNBOOK.md "After a crash" says what goes when.

Never anything of a live run: a folder whose owner process lives, a scratch database whose drill
holds its lock or has a session in it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

from .settings import Settings
from .workdir import clean_work_dir

log = logging.getLogger(__name__)


@dataclass
class Collected:
    folders: list[Path] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)  # "<database> (on <server>)"
    problems: list[str] = field(default_factory=list)  # a scratch server that could not be cleaned

    def line(self) -> str:
        return (
            f"removed {len(self.folders)} temporary folders and {len(self.databases)} scratch databases"
            " of runs that did not end" + (f"; not cleaned: {'; '.join(self.problems)}" if self.problems else "")
        )


def scratch_servers(settings: Settings) -> list[str]:
    """The admin DSNs of the scratch servers drills may have used: TENANT_BACKUP_SCRATCH_DSN, else
    the work directory's embedded servers that are running now (one not running is cleaned by the
    first drill that starts it: core/checks/scratch.py ScratchPool)."""
    if settings.scratch_dsn:
        return [settings.scratch_dsn]
    from .checks.scratch import _running_dsn

    root = Path(settings.work_dir)
    found = []
    for dsn_file in sorted(root.glob("scratch*.dsn")) if root.is_dir() else []:
        suffix = dsn_file.name[len("scratch") : -len(".dsn")]
        dsn = _running_dsn(root, root / f"scratch-pg{suffix}", suffix)
        if dsn:
            found.append(dsn)
    return found


def clean_scratch_servers(settings: Settings, collected: Collected | None = None) -> Collected:
    from .checks.scratch_db import drop_stale_scratch_databases
    from .errors import one_line

    collected = collected or Collected()
    for dsn in scratch_servers(settings):
        try:
            dropped = drop_stale_scratch_databases(dsn, older_than=timedelta(0))
        except Exception as exc:  # noqa: BLE001 - reported; a later run tries again
            collected.problems.append(f"scratch server: {one_line(exc, 300)}")
            continue
        collected.databases += dropped
    return collected


def clean_leftovers(settings: Settings, report: Callable[[str], None] = log.info) -> Collected:
    """Remove the temporary folders of dead runs under settings.work_dir and drop the scratch
    databases of dead drills on the scratch servers (`scratch_servers`). Never raises for a server
    that cannot be reached: named in `problems`."""
    collected = Collected(folders=clean_work_dir(settings.work_dir, report))
    clean_scratch_servers(settings, collected)
    for name in collected.databases:
        report(f"dropped scratch database {name} of a restore drill that did not end")
    for problem in collected.problems:
        report(f"could not clean up: {problem}")
    return collected
