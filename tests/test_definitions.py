"""The code location loads the way Dagster loads it: `dagster definitions validate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backup_assets.core.codec.keyring import generate_entry

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "DAGSTER_HOME": str(tmp_path),
            # Loading builds clients but does no network I/O: these need not be reachable.
            "TENANT_BACKUP_SOURCE_DSN": "postgresql://tenant_backup@127.0.0.1:1/app",
            "TENANT_BACKUP_KEYS": generate_entry("k1"),
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "R2_ENDPOINT_URL": "http://127.0.0.1:1",
            "R2_ACCESS_KEY_ID": "a",
            "R2_SECRET_ACCESS_KEY": "b",
            "R2_BUCKET": "c",
            "B2_APPLICATION_KEY_ID": "d",
            "B2_APPLICATION_KEY": "e",
            "B2_BUCKET": "f",
        }
    )
    env.update(extra)
    return env


def _validate(env):
    return subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_workspace_validates(tmp_path):
    result = _validate(_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tenant_backup" in result.stdout + result.stderr


def test_missing_location_variable_fails_loading_and_names_it(tmp_path):
    env = _env(tmp_path)
    del env["B2_APPLICATION_KEY"]
    result = _validate(env)
    assert result.returncode != 0
    assert "B2_APPLICATION_KEY" in result.stdout + result.stderr
