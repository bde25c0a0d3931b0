"""What the demo (and the stacks built on it) starts does not outlive it, even when it is SIGKILLed;
and `stop_group`, which stops a child's whole process group within seconds.

`Reaper()` starts a watchdog process in a session of its own (a Ctrl-C to the terminal does not reach
it) that holds the read end of a pipe whose only writer is the process that made the Reaper. That
process tells it, one line each, what it started: a process group (`dagster dev` and everything under
it), a process, an embedded PostgreSQL's data directory. The watchdog does nothing until the pipe
reaches EOF — `close()` was called, or the process died, however (SIGKILL, the OOM killer) — and then
ends whatever of that is still running: process groups and processes SIGTERM, then SIGKILL after 2 s;
PostgreSQL a fast shutdown (SIGINT), then SIGQUIT, then SIGKILL. An orderly stop has stopped all of
it already, so the watchdog then finds nothing and exits. The same approach as the servers' watchdog
in testing/pg_servers.py; only the standard library, so it starts in tens of milliseconds.

    python -m backup_assets.testing.reaper FD      (what Reaper() runs; FD: the pipe's read end)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_GRACE_S = 2.0


class Reaper:
    def __init__(self):
        read_fd, self._write_fd = os.pipe()  # both non-inheritable: no other child keeps the write end
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "backup_assets.testing.reaper", str(read_fd)],
            pass_fds=(read_fd,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],  # where `-m backup_assets…` imports from, installed or not
        )
        os.close(read_fd)

    def _tell(self, line: str) -> None:
        if self._write_fd is not None:
            try:
                os.write(self._write_fd, (line + "\n").encode())
            except BrokenPipeError:  # the watchdog is gone (killed): the orderly stop still stops everything
                pass

    def watch_group(self, pgid: int) -> None:
        """A process group (a child started with start_new_session=True: its pid)."""
        self._tell(f"group {pgid}")

    def watch_pid(self, pid: int) -> None:
        self._tell(f"pid {pid} {_start_time(pid)}")

    def watch_postgres(self, data_dir: Path) -> None:
        """The server whose postmaster.pid is in data_dir, whenever it is started."""
        self._tell(f"postgres {Path(data_dir).resolve()}")

    def close(self, timeout: float = 10.0) -> None:
        """EOF: the watchdog ends whatever of what it was told about still runs, then exits."""
        if self._write_fd is None:
            return
        os.close(self._write_fd)
        self._write_fd = None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


# ------------------------------------------------------------------------------- a group, now


def stop_group(proc: subprocess.Popen, grace_s: float = 1.5) -> None:
    """Stop a child started with start_new_session=True and everything in its process group now:
    SIGTERM to all of them at once, SIGKILL to whatever remains after `grace_s` (`dagster dev`, its
    webserver, daemon and code servers stop within seconds; nothing of a PostgreSQL-backed instance is
    lost by the kill)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:  # only zombies left (macOS): reaped below
            pass
        if _group_gone(proc, wait_s):
            break
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        pass


def _group_gone(proc: subprocess.Popen, seconds: float) -> bool:
    """True once no process of the group runs (zombies waiting for init to reap them are gone)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        proc.poll()
        if not _group_running(proc.pid):
            return True
        time.sleep(0.05)
    return False


def _group_running(pgid: int) -> bool:
    proc_fs = Path("/proc")
    if not proc_fs.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for stat in proc_fs.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


# ------------------------------------------------------------------------------------ the watchdog


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat): a pid reused since is not ours."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's (the postmaster when we run as root is still ours to signal)
        return True
    return True


def _send(kill, target: int, sig: int) -> None:
    try:
        kill(target, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(check, seconds: float) -> bool:
    """True once check() is False (the target is gone), within `seconds`."""
    end = time.monotonic() + seconds
    while check():
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)
    return True


def _postmaster(data_dir: str) -> int | None:
    try:
        pid = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:  # the postmaster's command line names its data directory: a reused pid does not
        if data_dir.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    except OSError:
        return pid if _alive(pid) and not Path("/proc/self").exists() else None
    return pid


def _reap(groups: list[int], pids: list[tuple[int, str]], data_dirs: list[str]) -> None:
    ours = [(os.killpg, g, lambda g=g: _group_running(g)) for g in groups if _group_running(g)]
    ours += [(os.kill, p, lambda p=p: _alive(p)) for p, started in pids if _alive(p) and _start_time(p) == started]
    for kill, target, _ in ours:
        _send(kill, target, signal.SIGTERM)
    for kill, target, alive in ours:
        if not _wait(alive, _GRACE_S):
            _send(kill, target, signal.SIGKILL)
    for data_dir in data_dirs:
        pid = _postmaster(data_dir)
        if pid is None:
            continue
        for sig, seconds in ((signal.SIGINT, 5), (signal.SIGQUIT, 3), (signal.SIGKILL, 3)):
            _send(os.kill, pid, sig)
            if _wait(lambda pid=pid: _alive(pid), seconds):
                break


def main(fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: list[int] = []
    pids: list[tuple[int, str]] = []
    data_dirs: list[str] = []
    buffer = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            kind, _, value = line.decode().partition(" ")
            if kind == "group":
                groups.append(int(value))
            elif kind == "pid":
                pid, _, started = value.partition(" ")
                pids.append((int(pid), started))
            elif kind == "postgres":
                data_dirs.append(value)
    _reap(groups, pids, data_dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
