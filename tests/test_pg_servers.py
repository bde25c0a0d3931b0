"""Real PostgreSQL servers of every major 13–18 (backup_assets.testing.pg_servers): each starts,
serves, and stops without leaving a process or a directory behind; the npm cache is built atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
from pg_matrix import pg_servers  # noqa: F401  (tests/ is on sys.path)

from backup_assets.testing import pg_servers as pgs


def _query(dsn: str, sql: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def _pg_dump_major(bin_dir: Path) -> int:
    out = subprocess.run([str(bin_dir / "pg_dump"), "--version"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1].split(".")[0])


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("major", pgs.MAJORS)
def test_each_major_starts_serves_and_stops(major):
    root = Path(tempfile.mkdtemp(prefix="tenant-backup-pgtest-"))
    server = pgs.start_server(major, root)
    try:
        assert server.major == major and server.install.major == major
        assert int(_query(server.admin_dsn, "SHOW server_version_num")[0]) // 10000 == major
        assert _query(server.admin_dsn, "SHOW server_version")[0].startswith(server.version)
        assert _query(server.admin_dsn, "SHOW listen_addresses")[0] == ""  # unix socket only
        assert _query(server.admin_dsn, "SHOW fsync")[0] == "off"
        _query(server.admin_dsn, "CREATE DATABASE matrix_check")
        assert _query(server.dsn("matrix_check"), "SELECT current_database()")[0] == "matrix_check"
        if os.geteuid() == 0:  # initdb/postgres refuse root: the server runs as the dedicated user
            uid = int(Path(f"/proc/{server.pid}/status").read_text().split("Uid:")[1].split()[0])
            assert uid != 0
        if server.install.client_bin_dir is not None:
            assert _pg_dump_major(server.install.client_bin_dir) == major
    finally:
        server.stop()
    assert not pgs._alive(server.pid)
    assert not root.exists()
    server.stop()  # idempotent


def test_client_bin_dirs_has_15_16_18_of_the_matching_major():
    dirs = pgs.client_bin_dirs()
    assert {15, 16, 18} <= set(dirs), dirs
    for major, bin_dir in dirs.items():
        assert _pg_dump_major(bin_dir) == major
        assert all((bin_dir / p).is_file() for p in ("pg_dump", "pg_restore", "psql"))


@pytest.mark.parametrize("major", [15, 16])
def test_npm_builds_stand_in_for_15_and_16(major):
    install = pgs.npm_install(major)
    assert (install.source, install.client_bin_dir) == ("npm", None)
    server = pgs.start_server(major, Path(tempfile.mkdtemp(prefix="tenant-backup-pgtest-")), install=install)
    try:
        assert int(_query(server.admin_dsn, "SHOW server_version_num")[0]) // 10000 == major
    finally:
        server.stop()


_INSTALL = """
import sys
from pathlib import Path
from backup_assets.testing.pg_servers import ensure_npm_install
print(ensure_npm_install(sys.argv[1], Path(sys.argv[2])))
"""


def test_npm_cache_is_built_atomically_by_racing_processes(tmp_path):
    version = pgs.NPM_VERSIONS[13]
    procs = [
        subprocess.Popen([sys.executable, "-c", _INSTALL, version, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    entry = tmp_path / version
    assert outs == [str(entry)] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [version]  # no temp dirs left behind
    links = json.loads((entry / "native" / "pg-symlinks.json").read_text())
    for link in links:
        target = entry / link["target"]
        assert target.is_symlink() and os.readlink(target) == Path(link["source"]).name and target.exists()
    # An entry without its marker (incomplete or tampered with) is not trusted: it is rebuilt.
    (entry / pgs._MARKER).unlink()
    assert pgs.ensure_npm_install(version, tmp_path) == entry
    assert (entry / pgs._MARKER).is_file()


_ORPHAN = """
import sys, tempfile
from pathlib import Path
from backup_assets.testing.pg_servers import start_server
h = start_server(int(sys.argv[1]), Path(tempfile.mkdtemp(prefix="tenant-backup-pgtest-")))
print(h.pid, h.root, flush=True)
sys.stdin.read()
"""


def test_server_does_not_outlive_a_killed_owner():
    owner = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, "16"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        pid_text, root_text = owner.stdout.readline().split()
        pid, root = int(pid_text), Path(root_text)
        assert pgs._alive(pid)
    finally:
        owner.send_signal(signal.SIGKILL)  # no stop(), no atexit: only the watchdog is left
        owner.wait()
    assert _wait(lambda: not pgs._alive(pid), 30), f"postmaster {pid} outlived its owner"
    assert _wait(lambda: not root.exists(), 30), f"{root} left behind"


def test_pg_servers_fixture_starts_each_major_once(pg_servers):  # noqa: F811
    server = pg_servers(17)
    assert pg_servers(17) is server
    assert int(_query(server.admin_dsn, "SHOW server_version_num")[0]) // 10000 == 17
    with pytest.raises(ValueError):
        pg_servers(12)
