"""The end-to-end stack, one for the tests/e2e package: embedded PostgreSQL, loopback R2/B2, dagster-webserver and
dagster-daemon as real processes (backup_assets/testing/dagster_stack.py). Only e2e tests use it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from backup_assets.testing.dagster_stack import DagsterStack


# Package scope: the stack (and the environment variables it sets in this process) is gone before
# the rest of the suite runs in the same session.
@pytest.fixture(scope="package")
def e2e_stack():
    # Not under pytest's tmp dir: as root the embedded server runs as another user, and other pytest
    # sessions chmod /tmp/pytest-of-root to 0700 (tests/conftest.py). E2E_KEEP=1 keeps it for debugging.
    directory = Path(tempfile.mkdtemp(prefix="tenant-backup-e2e-"))
    os.chmod(directory, 0o755)
    saved = dict(os.environ)
    stack = DagsterStack(directory)
    try:
        yield stack.start()
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)
        if not os.environ.get("E2E_KEEP"):
            shutil.rmtree(directory, ignore_errors=True)
