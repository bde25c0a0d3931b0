"""`pg_servers`: real PostgreSQL servers of every major (backup_assets.testing.pg_servers), one per major
per session, started on first use and stopped at session end.

Use it from a test module with `from pg_matrix import pg_servers  # noqa: F401` (tests/ is on sys.path),
then `def test_x(pg_servers): server = pg_servers(14)`. The servers live in a module-level registry, so a
fixture imported into several modules (pytest then makes one fixture per module) still shares them.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from backup_assets.testing.pg_servers import MAJORS, PgServerHandle, start_server

_SERVERS: dict[int, PgServerHandle] = {}
_LOCK = threading.Lock()
_ROOT: Path | None = None


def _get(major: int) -> PgServerHandle:
    global _ROOT
    with _LOCK:
        if major not in _SERVERS:
            # Not under tmp_path: as root the server runs as another user, and pytest resets its basetemp
            # to 0700 at every session start (see backup_assets/core/embedded_pg.py).
            if _ROOT is None:
                _ROOT = Path(tempfile.mkdtemp(prefix="tenant-backup-pgmatrix-"))
                _ROOT.chmod(0o711)  # mkdtemp's 0700 would stop the server user; traverse, not list
            _SERVERS[major] = start_server(major, _ROOT / f"pg{major}")
        return _SERVERS[major]


def _stop_all() -> None:
    global _ROOT
    with _LOCK:
        errors = []
        for major in list(_SERVERS):
            try:
                _SERVERS.pop(major).stop()
            except Exception as exc:  # stop the others anyway
                errors.append(f"{major}: {exc}")
        if _ROOT is not None:
            shutil.rmtree(_ROOT, ignore_errors=True)
            _ROOT = None
    assert not errors, f"servers that did not stop: {errors}"


@pytest.fixture(scope="session")
def pg_servers():
    """Callable `get(major) -> PgServerHandle` for a major in MAJORS (13..18); one server per major."""

    def get(major: int) -> PgServerHandle:
        if major not in MAJORS:
            raise ValueError(f"PostgreSQL {major}: not one of {MAJORS}")
        return _get(major)

    yield get
    _stop_all()
