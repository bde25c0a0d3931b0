"""`tenant-backup demo --ui` stops everything it started — `dagster dev` and the processes under it,
the loopback servers, the embedded PostgreSQL — on SIGTERM and on Ctrl-C (SIGINT to the process group,
also when it was started without a terminal and so inherited SIGINT ignored) within 5 seconds, and
exits 0 with one line saying so; and when the demo itself is SIGKILLed, its watchdog stops all of it.
Real processes throughout: the demo is started as a user, a service manager or a script would."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _postmaster(data_dir: Path) -> psutil.Process | None:
    pid_file = data_dir / "postmaster.pid"
    try:
        return psutil.Process(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return None


def _alive(procs) -> list:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C without a terminal", "SIGKILL"])
def test_demo_ui_leaves_nothing_running(how):
    directory = Path(tempfile.mkdtemp(prefix="tb-demo-stop-"))  # not under pytest's tmp (the server's user)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_", "DAGSTER_"))}
    env["PYTHONPATH"] = str(ROOT)
    log = open(directory.parent / f"{directory.name}.log", "w+")
    argv = ["demo", "--ui", "--dir", str(directory), "--tenants", "1", "--rows", "5", "--port", str(port)]
    # Without a terminal the demo may inherit SIGINT ignored (`cmd &` in a script, some service
    # managers): an ignored disposition survives exec, so it is set here around the start.
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN) if how.startswith("Ctrl-C") else None
    try:
        demo = subprocess.Popen(
            [sys.executable, "-m", "backup_assets.cli", *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if inherited is not None:
            signal.signal(signal.SIGINT, inherited)
    started = [demo]
    try:
        deadline = time.monotonic() + 420
        # Up once the UI answers and the demo has said so (it prints how to use it once it answers).
        while (
            not _answers(f"http://127.0.0.1:{port}/server_info")
            or "Dagster's own log" not in Path(log.name).read_text()
        ):
            assert demo.poll() is None, f"demo exited early ({demo.returncode}):\n{Path(log.name).read_text()[-4000:]}"
            assert time.monotonic() < deadline, "the UI never answered:\n" + Path(log.name).read_text()[-4000:]
            time.sleep(1)
        # Everything it runs now: its process tree (dagster dev, webserver, daemon, code servers, the
        # watchdog) and the embedded PostgreSQL (daemonized by pg_ctl, so found by its data directory).
        me = psutil.Process(demo.pid)
        tree = [me, *me.children(recursive=True)]
        postmaster = _postmaster(directory / "pg")
        assert postmaster is not None and postmaster.is_running()
        everything = [*tree, postmaster, *postmaster.children(recursive=True)]
        cmdlines = [" ".join(p.cmdline()) for p in tree]
        assert any("dagster dev" in c for c in cmdlines) and any("webserver" in c for c in cmdlines), cmdlines
        started = everything
        before = Path(log.name).read_text()
        # Nothing a user of the demo cannot act on: Dagster's own output is in its log file.
        for noise in ("SupersessionWarning", "dagster.yaml", "Traceback", " - INFO - ", " - WARNING - "):
            assert noise not in before, before[-4000:]
        assert f"set -a; . {directory / 'demo.env'}; set +a" in before

        t0 = time.monotonic()
        if how == "SIGTERM":
            demo.send_signal(signal.SIGTERM)
        elif how == "SIGKILL":
            demo.kill()
        else:  # what a terminal (or a service manager's KillMode) does on Ctrl-C: SIGINT to the group
            os.killpg(demo.pid, signal.SIGINT)
        code = demo.wait(60)
        stopped_s = time.monotonic() - t0
        gone, alive = psutil.wait_procs(everything[1:], timeout=15)
        assert _alive(alive) == [], [(p.pid, p.cmdline()) for p in _alive(alive)]
        assert not _answers(f"http://127.0.0.1:{port}/server_info")
        if how == "SIGKILL":
            return  # the watchdog stopped the rest (the wait above)
        assert code == 0 and stopped_s < 5, (code, stopped_s, Path(log.name).read_text()[-4000:])
        after = Path(log.name).read_text()[len(before) :].strip().splitlines()
        signal_name = "SIGTERM" if how == "SIGTERM" else "Ctrl-C"
        assert len(after) == 1 and after[0].startswith(f"tenant-backup: demo stopped on {signal_name}"), after
    finally:
        for proc in _alive([p for p in started if isinstance(p, psutil.Process)]):
            proc.kill()
        if demo.poll() is None:
            demo.kill()
        log.close()
        pm = _postmaster(directory / "pg")
        if pm is not None and pm.is_running():
            pm.kill()
        shutil.rmtree(directory, ignore_errors=True)
        Path(log.name).unlink(missing_ok=True)


def test_the_watchdog_ends_what_it_was_told_about_when_its_owner_is_killed():
    """testing/reaper.py alone: its owner starts a process group and a process, tells the watchdog, and
    is SIGKILLed; the watchdog ends both. Untold processes are left alone."""
    owner_code = (
        "import subprocess, sys, time\n"
        "from backup_assets.testing.reaper import Reaper\n"
        "reaper = Reaper()\n"
        "group = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "single = subprocess.Popen(['sleep', '301'])\n"
        "reaper.watch_group(group.pid)\n"
        "reaper.watch_pid(single.pid)\n"
        "print(group.pid, single.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    bystander = subprocess.Popen(["sleep", "302"], start_new_session=True)
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    told: list[psutil.Process] = []
    try:
        told = [psutil.Process(int(pid)) for pid in owner.stdout.readline().split()]
        owner.kill()
        owner.wait(10)
        gone, alive = psutil.wait_procs(told, timeout=10)
        assert _alive(alive) == [], [p.pid for p in alive]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(5)
        for proc in _alive(told):
            proc.kill()
        if owner.poll() is None:
            owner.kill()
