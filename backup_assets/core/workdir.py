"""Every command's temporary files: owner-only work folders under the work directory
(TENANT_BACKUP_WORK_DIR at the edges; `settings.work_dir`), removed when the command ends however it
ends — and, since a killed process removes nothing, the folders of dead runs are removed by the next
command that uses the work directory (`work_folder`, `clean_work_dir`).

A folder is `<prefix><random>` (mode 0700) with an `owner.json`: the owner's pid, the process's start
time (so that a reused pid is not mistaken for it) and host. Only a folder of this user, on this host,
whose owner is gone, is removed. A folder of a known prefix without that record (written by
`tempfile.TemporaryDirectory`, e.g. `tb-rewrap-*` of core/maintenance/rotation.py) is removed once
nothing in it has changed for `OWNERLESS_AFTER` (a live one is being written, or is a day old at most
per archive); one of an unknown prefix is never touched.

Prefixes: `tenant-restore-` (restore), `tb-rebuild-` (rebuild), `tb-rewrap-` (keys rewrap),
`tb-verify-` (verify --deep, the copy checks), `tb-work-` (anything else). The folders are looked for
in the work directory itself and in its `tmp/` (where the Dagster jobs and checks put theirs).
Unnamed temporary files (`tempfile.TemporaryFile`: pg_dump's and the client programs' stderr) have
no name from the start: the kernel frees them when their process dies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
PREFIXES = ("tenant-restore-", "tb-rebuild-", "tb-rewrap-", "tb-verify-", "tb-work-")
SUBDIRS = ("", "tmp")  # the work directory, and the folder of the Dagster jobs' and checks' files
OWNERLESS_AFTER = 24 * 3600.0  # seconds without a change after which an owner-less folder is a leftover


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` started at `start` (start_time) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user has that pid: alive, not ours to judge
    if start is not None:
        now = start_time(pid)
        if now is not None and now != start:
            return False  # the pid was reused: the owner is gone
    return True


def owner_record() -> dict:
    """This process, as an owner.json records it."""
    return {"pid": os.getpid(), "start": start_time(os.getpid()), "host": socket.gethostname()}


def _newest_change(path: Path) -> float:
    newest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                pass
    return newest


def _leftover(path: Path, host: str, ownerless_after: float) -> bool:
    """Whether `path` (a folder of a known prefix) belongs to a dead run of this user on this host."""
    if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
        return False
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
        pid, start = int(owner["pid"]), owner.get("start")
    except FileNotFoundError:
        return time.time() - _newest_change(path) > ownerless_after  # TemporaryDirectory's: by age
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return owner.get("host") == host and pid != os.getpid() and not alive(pid, start)


def remove_dead(
    root: Path | str, prefixes: Iterable[str] = PREFIXES, *, ownerless_after: float = OWNERLESS_AFTER
) -> list[Path]:
    """Remove the work folders directly under `root` whose owner process is dead (module docstring);
    returns those removed."""
    removed = []
    host = socket.gethostname()
    for prefix in prefixes:
        for path in sorted(Path(root).glob(prefix + "*")):
            try:
                if not _leftover(path, host, ownerless_after):
                    continue
            except OSError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


def clean_work_dir(work_dir: Path | str, report: Callable[[str], None] = log.info) -> list[Path]:
    """Remove what dead runs left in the work directory and its tmp/ (the folders of every command;
    see the module docstring). Called when a command starts using the work directory."""
    removed = []
    for sub in SUBDIRS:
        root = Path(work_dir) / sub
        if root.is_dir():
            removed += remove_dead(root)
    for path in removed:
        report(f"removed the temporary folder of a run that did not end: {path}")
    return removed


def ensure_work_dir(work_dir: Path | str) -> Path:
    """The work directory, created owner-only (0700) when new."""
    root = Path(work_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


@contextmanager
def work_folder(
    base: Path | str | None, prefix: str = "tb-work-", report: Callable[[str], None] = log.info
) -> Iterator[Path]:
    """A fresh owner-only folder `<prefix>…` under `base` (the system temp dir when None), with its
    owner recorded, removed on exit; the folders of dead runs under `base` are removed first."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown work folder prefix {prefix!r}: add it to PREFIXES so leftovers are found")
    root = ensure_work_dir(base or tempfile.gettempdir())
    for path in remove_dead(root):
        report(f"removed the temporary folder of a run that did not end: {path}")
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=str(root)))  # mode 0700
    try:
        (work / OWNER_FILE).write_text(json.dumps(owner_record()))
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
