"""A restore's work folder: `tenant-restore-*` under the work dir, a work folder of core/workdir.py
(owner-only, its owner recorded, removed when the restore ends however it ends; the folders of dead
runs removed by the next one)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .. import workdir
from ..workdir import OWNER_FILE, remove_dead  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PREFIX = "tenant-restore-"


@contextmanager
def work_folder(base: Path | str | None, report: Callable[[str], None] = log.info) -> Iterator[Path]:
    """A fresh owner-only `tenant-restore-*` folder under `base` (core/workdir.py work_folder)."""
    with workdir.work_folder(base, PREFIX, report) as work:
        yield work
