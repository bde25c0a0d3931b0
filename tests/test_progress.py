"""Progress displays: on stderr when it is a terminal (a real pty here), never with --json, -q or a
stderr that is not a terminal; stdout stays the plain output either way."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.codec.format import encode_archive
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.locations import locations_from_env
from backup_assets.core.settings import SourceSettings

ROOT = Path(__file__).resolve().parent.parent
KEYS = generate_entry("prog1")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_"))}
    env.update(extra, PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS="160", LINES="40")
    return env


def run_on_pty(args, extra):
    """The command with its stderr on a pseudo-terminal (what a person at a terminal sees) and its
    stdout on a pipe. Returns (exit code, stdout, everything written to the terminal)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backup_assets.cli", *args],
        env=_env(extra),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    seen = bytearray()
    stdout = bytearray()
    streams = [master, proc.stdout.fileno()]
    while streams:
        ready, _, _ = select.select(streams, [], [], 300)
        if not ready:
            proc.kill()
            raise AssertionError("timed out")
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                chunk = b""
            if not chunk:
                streams.remove(fd)
            else:
                (seen if fd == master else stdout).extend(chunk)
    os.close(master)
    return proc.wait(60), stdout.decode(), seen.decode(errors="replace")


def run_piped(args, extra):
    return subprocess.run(
        [sys.executable, "-m", "backup_assets.cli", *args],
        env=_env(extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def local_copies(tmp_path):
    env = {
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
    }
    loc = locations_from_env(None, env)["local"]
    for _ in range(5):
        tenant, created = str(uuid.uuid4()), datetime.now(timezone.utc)
        bid = new_backup_id(created)
        path = tmp_path / f"{bid}.tbk"
        with path.open("wb") as out:
            header, stats = encode_archive(
                io.BytesIO(os.urandom(4000)).read,
                out,
                tenant_id=tenant,
                backup_id=bid,
                created_at=created,
                keyring=Keyring.parse(KEYS),
            )
        loc.put(
            tenant,
            bid,
            path,
            Manifest.from_dict(
                {
                    "manifest_version": 1,
                    "tenant_id": tenant,
                    "backup_id": bid,
                    "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "archive": {"size": stats.archive_bytes, "sha256": stats.sha256, "key_id": header.key_id},
                    "tables": {},
                }
            ),
        )
    return env


def test_verify_all_shows_progress_on_a_terminal_only(local_copies):
    code, stdout, terminal = run_on_pty(["verify", "--all"], local_copies)
    assert code == 0, terminal
    screen = ANSI.sub("", terminal)
    assert "verifying" in screen and "5/5" in screen and "copies · 0 failed" in screen and "ETA" in screen
    assert "\x1b[" in terminal  # drawn (cursor movement / colours), not printed as lines
    assert "5 of 5 stored copies re-read" in stdout and "\x1b" not in stdout  # stdout stays plain

    for args in (["verify", "--all", "--json"], ["-q", "verify", "--all"]):  # --json / -q: none
        code, stdout, terminal = run_on_pty(args, local_copies)
        assert code == 0 and "ETA" not in terminal and "5/5" not in terminal and "\x1b[" not in terminal, terminal

    piped = run_piped(["verify", "--all"], local_copies)  # stderr not a terminal: none
    assert piped.returncode == 0 and "ETA" not in piped.stderr and "\x1b" not in piped.stderr
    assert "5 of 5 stored copies re-read" in piped.stdout


def test_export_and_restore_show_bytes_rate_and_eta(sample_db, sample_tenants, tmp_path, fresh_db):
    tenant = sample_tenants[0]
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
    }
    code, stdout, terminal = run_on_pty(["export", "--tenant", tenant.id, "--out", str(tmp_path / "a.tbk")], env)
    assert code == 0, terminal
    screen = ANSI.sub("", terminal)
    assert f"export {tenant.id}" in screen and re.search(r"\d+(\.\d+)?/\d+(\.\d+)? [kM]?B", screen), screen
    assert re.search(r"[\d.]+ [kM]?B/s", screen) and "ETA" in screen
    assert '"tenant_id"' in stdout  # the manifest, untouched

    piped = run_piped(["export", "--tenant", tenant.id, "--out", str(tmp_path / "b.tbk"), "--json"], env)
    assert piped.returncode == 0 and "ETA" not in piped.stderr and "dumped" not in piped.stderr

    # restore: the download from the location (its size known from the manifest), then the restore
    manifest = export_tenant(
        SourceSettings(dsn=sample_db.backup_dsn), Keyring.parse(KEYS), tenant.id, tmp_path / "c.tbk", ExportOptions()
    )
    locations_from_env(None, env)["local"].put(tenant.id, manifest.backup_id, tmp_path / "c.tbk", manifest)
    args = ["restore", "--tenant", tenant.id, "--location", "local", "--target-dsn", fresh_db("prog")]
    code, stdout, terminal = run_on_pty(args, env)
    assert code == 0, terminal
    screen = ANSI.sub("", terminal)
    size_kb = manifest.archive.size / 1000
    assert "restore" in screen and "ETA" in screen and "using location local" in screen
    assert re.search(rf"{size_kb:.1f}/{size_kb:.1f} kB", screen), screen  # all of the archive's bytes
    assert "restored tenant" in stdout

    piped = run_piped([*args[:-1], fresh_db("prog2"), "--json"], env)
    assert piped.returncode == 0 and "ETA" not in piped.stderr and "\x1b" not in piped.stderr


def test_backup_all_shows_tenants_done_failures_and_eta(sample_db, sample_tenants, tmp_path, pg_server_dsn):
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_TENANTS_QUERY": "SELECT id::text, name FROM tenants WHERE status = 'ACTIVE'",
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": pg_server_dsn,
        "TENANT_BACKUP_RETRIES": "0",
    }
    active = [t for t in sample_tenants if t.status == "ACTIVE"]
    code, stdout, terminal = run_on_pty(["backup", "--all"], env)
    assert code == 0, terminal
    screen = ANSI.sub("", terminal)
    assert "backing up" in screen and f"{len(active)}/{len(active)}" in screen, screen
    assert "tenants · 0 failed" in screen and "ETA" in screen
    for tenant in active:  # the table names every tenant by its label
        assert f"{tenant.name} ({tenant.id[:4]}…)" in stdout
    assert "\x1b" not in stdout
