"""`tenant-backup demo --ui` stops everything it started — `dagster dev` and the processes under it,
the loopback servers, the embedded PostgreSQL — on SIGTERM and on Ctrl-C (SIGINT to the terminal's
foreground process group). Real processes throughout: the demo is started as a user would."""

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
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_demo_ui_leaves_nothing_running(how):
    directory = Path(tempfile.mkdtemp(prefix="tb-demo-stop-"))  # not under pytest's tmp (the server's user)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_", "DAGSTER_"))}
    env["PYTHONPATH"] = str(ROOT)
    log = open(directory.parent / f"{directory.name}.log", "w+")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backup_assets.cli",
            "demo",
            "--ui",
            "--dir",
            str(directory),
            "--tenants",
            "1",
            "--rows",
            "5",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = [demo]
    try:
        deadline = time.monotonic() + 420
        while not _answers(f"http://127.0.0.1:{port}/server_info"):
            assert demo.poll() is None, f"demo exited early ({demo.returncode}):\n{Path(log.name).read_text()[-4000:]}"
            assert time.monotonic() < deadline, "the UI never answered:\n" + Path(log.name).read_text()[-4000:]
            time.sleep(1)
        # Everything it runs now: its process tree (dagster dev, webserver, daemon, code servers) and
        # the embedded PostgreSQL (daemonized by pg_ctl, so found by its data directory).
        me = psutil.Process(demo.pid)
        tree = [me, *me.children(recursive=True)]
        postmaster = _postmaster(directory / "pg")
        assert postmaster is not None and postmaster.is_running()
        backends = postmaster.children(recursive=True)
        everything = [*tree, postmaster, *backends]
        cmdlines = [" ".join(p.cmdline()) for p in tree]
        assert any("dagster dev" in c for c in cmdlines) and any("webserver" in c for c in cmdlines), cmdlines
        started = everything

        if how == "SIGTERM":
            demo.send_signal(signal.SIGTERM)
        else:  # what a terminal does on Ctrl-C: SIGINT to the foreground process group
            os.killpg(demo.pid, signal.SIGINT)
        code = demo.wait(120)
        assert code == 130, Path(log.name).read_text()[-4000:]
        gone, alive = psutil.wait_procs(everything[1:], timeout=10)
        assert _alive(alive) == [], [(p.pid, p.cmdline()) for p in _alive(alive)]
        assert not _answers(f"http://127.0.0.1:{port}/server_info")
        output = Path(log.name).read_text()
        # The stop itself is orderly (the backup phase before it may carry Dask's shutdown chatter).
        stopping = output[output.index("stopping the Dagster UI") :]
        assert "stopping everything it started" in stopping and "Traceback" not in stopping, stopping[-4000:]
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
