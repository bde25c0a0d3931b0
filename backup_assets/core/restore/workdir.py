"""A restore's work folder: `tenant-restore-*` under the work dir (TENANT_BACKUP_WORK_DIR at the
edges), owner-only, removed when the restore ends however it ends — and, since a killed process
removes nothing, the folders of dead runs are removed by the next restore. Each folder records its
owner (pid, the process's start time so that a reused pid is not mistaken for it, host); only a
folder of this user, on this host, whose owner is gone, is removed. A folder without that record
(an older version's, or one being created this very moment) is left alone."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

PREFIX = "tenant-restore-"
OWNER_FILE = "owner.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user has that pid: alive, not ours to judge
    if start is not None:
        now = _start_time(pid)
        if now is not None and now != start:
            return False  # the pid was reused: the owner is gone
    return True


def remove_dead(root: Path) -> list[Path]:
    """Remove the work folders under `root` whose owner process is dead (module docstring)."""
    removed = []
    host = socket.gethostname()
    for path in sorted(Path(root).glob(PREFIX + "*")):
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            owner = json.loads((path / OWNER_FILE).read_text())
            pid, start = int(owner["pid"]), owner.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner.get("host") != host or pid == os.getpid() or _alive(pid, start):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


@contextmanager
def work_folder(base: Path | str | None, report: Callable[[str], None] = log.info) -> Iterator[Path]:
    """A fresh owner-only folder under `base` (the system temp dir when None), removed on exit;
    the folders of dead restores under `base` are removed first."""
    root = Path(base) if base else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in remove_dead(root):
        report(f"removed the work folder of a restore that did not end: {path}")
    work = Path(tempfile.mkdtemp(prefix=PREFIX, dir=str(root)))  # mode 0700
    try:
        owner = {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}
        (work / OWNER_FILE).write_text(json.dumps(owner))
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
