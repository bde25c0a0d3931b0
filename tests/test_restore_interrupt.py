"""A killed or interrupted `restore --replace` lets go at once (issue 18, items 4 and 7): the real
command in a subprocess, killed (SIGKILL) or interrupted (SIGINT, Ctrl-C) while the server works in
each phase, on real PostgreSQL. No mocks.

Reported: SIGKILL during the DELETE left the server running it for ~100 s with every table locked;
each kill left its work folder behind; Ctrl-C during the DELETE exited after ~42 s, during the load
with exit code 10. Here the server's work is made long on purpose, in the database itself: a
statement trigger that sleeps before the DELETE of the tenant's rows, and a domain check that sleeps
per row while the restore's session loads the backup into its temporary tables (knobs in a table).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
from test_restore import KEYS, _backup, _exec, _hashes, _locations

from backup_assets.core.codec.keyring import Keyring
from backup_assets.sample.generate import add_tenants, create_sample_database

ROOT = Path(__file__).resolve().parent.parent
APP = "tenant-backup-restore"  # the restore's application_name

SLOW = f"""
CREATE TABLE test_knobs (phase text PRIMARY KEY, seconds float8 NOT NULL);
GRANT SELECT ON test_knobs TO PUBLIC;
CREATE FUNCTION knob(p text) RETURNS float8 LANGUAGE sql STABLE
    AS $$ SELECT coalesce((SELECT seconds FROM test_knobs WHERE phase = p), 0) $$;
CREATE FUNCTION slow_ok(text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') = '{APP}' THEN PERFORM pg_sleep(knob('load')); END IF;
    RETURN true;
END $$;
CREATE DOMAIN slow_text AS text CHECK (slow_ok(VALUE));
ALTER TABLE notifications ALTER COLUMN body TYPE slow_text;
CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(knob('delete')); RETURN NULL; END $$;
CREATE TRIGGER slow_delete BEFORE DELETE ON notifications FOR EACH STATEMENT EXECUTE FUNCTION slow_delete();
"""


@pytest.fixture(scope="module")
def site(pg_server_dsn, tmp_path_factory):
    """A sample database of this module's own (3 tenants, the first backed up, slow knobs installed)."""
    db = create_sample_database(pg_server_dsn, f"restore_kill_{os.getpid()}_{secrets.token_hex(3)}")
    tenants = [t.id for t in add_tenants(db, 3, rows=30, status="ACTIVE", seed=5)]
    local = tmp_path_factory.mktemp("kill_local")
    manifest = _backup(db, tenants[0], Keyring.parse(KEYS), _locations(local), tmp_path_factory.mktemp("kill_w"))
    _exec(db.admin_dsn, SLOW)
    try:
        yield db, tenants, local, manifest
    finally:
        _exec(pg_server_dsn, f'DROP DATABASE IF EXISTS "{db.dbname}" WITH (FORCE)')


@pytest.fixture
def knobs(site):
    db = site[0]

    def set_knobs(**seconds):
        _exec(db.admin_dsn, "DELETE FROM test_knobs")
        for phase, value in seconds.items():
            _exec(db.admin_dsn, "INSERT INTO test_knobs VALUES (%s, %s)", (phase, value))

    yield set_knobs
    set_knobs()


def _env(local: Path, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_BACKUP_")}
    env.update(
        TENANT_BACKUP_KEYS=KEYS,
        TENANT_BACKUP_LOCATIONS="local",
        TENANT_BACKUP_LOCAL_DIR=str(local),
        TENANT_BACKUP_WORK_DIR=str(work),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


def _restore(site, work: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    db, tenants, local, _ = site
    args = ["restore", "--tenant", tenants[0], "--location", "local", "--target-dsn", db.owner_dsn, "--replace"]
    return subprocess.Popen(
        [sys.executable, "-m", "backup_assets.cli", *args, *extra],
        env=_env(local, work),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a shell's background job (CI started with `&`) inherits SIGINT ignored,
        # and Python then never installs its Ctrl-C handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(db, statement: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the restore's session is running `statement` (DELETE, COPY) on the server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _exec(
            db.admin_dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active' AND query LIKE %s",
            (APP, statement + "%"),
        )
        if rows[0][0]:
            time.sleep(0.3)  # well inside it
            return
        if proc.poll() is not None:
            pytest.fail(f"the restore ended before its {statement}: {proc.communicate()}")
        time.sleep(0.02)
    pytest.fail(f"the restore never ran {statement}")


def _state(db, tenants, manifest):
    return {t: _hashes(db.admin_dsn, manifest, t) for t in tenants}


def _tables(manifest) -> str:
    kinds = {t: k for k, ts in manifest.table_kinds.to_dict().items() for t in ts}
    return ", ".join(t for t in sorted(manifest.tables) if kinds.get(t) in ("tenant", "rls_child"))


def _seconds_until_locks_free(db, manifest, since: float) -> float:
    """Another session takes ACCESS EXCLUSIVE on every table the restore locked: seconds after `since`."""
    conn = psycopg2.connect(db.admin_dsn)
    try:
        while time.monotonic() - since < 60:
            try:
                with conn.cursor() as cur:
                    cur.execute("SET LOCAL lock_timeout = '200ms'")
                    cur.execute(f"LOCK TABLE {_tables(manifest)} IN ACCESS EXCLUSIVE MODE")
                return time.monotonic() - since
            except psycopg2.errors.LockNotAvailable:
                conn.rollback()
        return float("inf")
    finally:
        conn.rollback()
        conn.close()


def _junk(db, tenant) -> None:
    """Notifications created since the backup: the restore deletes them (the slow DELETE)."""
    _exec(
        db.admin_dsn,
        "INSERT INTO notifications (tenant_id, recipient, channel, subject, body, created_at)"
        " SELECT %s, 'junk', 'email', 'junk', 'junk', now() FROM generate_series(1, 3)",
        (tenant,),
    )


def _folders(work: Path) -> list[Path]:
    return sorted(work.glob("tenant-restore-*"))


@pytest.mark.parametrize("phase", ["delete", "load"])
def test_sigkill_lets_go_of_the_locks_at_once_and_the_next_run_removes_the_folder(site, knobs, phase, tmp_path):
    db, tenants, _local, manifest = site
    _junk(db, tenants[0])
    knobs(**{phase: 60 if phase == "delete" else 1.0})
    before = _state(db, tenants, manifest)
    work = tmp_path / "work"
    proc = _restore(site, work, tmp_path)
    _wait_for(db, "DELETE" if phase == "delete" else "COPY", proc)
    (folder,) = _folders(work)
    proc.kill()
    killed = time.monotonic()
    proc.communicate()
    free_after = _seconds_until_locks_free(db, manifest, killed)
    assert free_after < 10, f"the tables stayed locked {free_after:.1f}s after the kill ({phase})"
    gone = _exec(db.admin_dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,))
    assert gone == [(0,)]
    assert _state(db, tenants, manifest) == before
    assert folder.exists()  # a killed process removes nothing...
    assert json.loads((folder / "owner.json").read_text())["pid"] == proc.pid

    knobs()
    nxt = _restore(site, work, tmp_path, "--dry-run")
    out, err = nxt.communicate(timeout=120)
    assert nxt.returncode == 0, err
    assert f"removed the temporary folder of a run that did not end: {folder}" in err
    assert not folder.exists() and _folders(work) == []  # ...the next run does, and its own on exit
    assert _state(db, tenants, manifest) == before
    _exec(db.admin_dsn, "DELETE FROM notifications WHERE recipient = 'junk'")


@pytest.mark.parametrize("phase", ["delete", "load"])
def test_ctrl_c_exits_130_within_5_seconds_with_nothing_changed(site, knobs, phase, tmp_path):
    db, tenants, _local, manifest = site
    _junk(db, tenants[0])
    knobs(**{phase: 60 if phase == "delete" else 1.0})
    before = _state(db, tenants, manifest)
    work = tmp_path / "work"
    proc = _restore(site, work, tmp_path)
    _wait_for(db, "DELETE" if phase == "delete" else "COPY", proc)
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    elapsed = time.monotonic() - interrupted
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert elapsed < 5, f"exit {elapsed:.1f}s after Ctrl-C ({phase})"
    assert err.strip().splitlines()[-1] == "tenant-backup: interrupted"
    assert _seconds_until_locks_free(db, manifest, time.monotonic()) < 2
    assert _state(db, tenants, manifest) == before
    assert _folders(work) == []
    knobs()  # the cleanup's own DELETE would sleep too
    _exec(db.admin_dsn, "DELETE FROM notifications WHERE recipient = 'junk'")


def test_work_folders_of_live_or_foreign_owners_are_left_alone(tmp_path):
    from backup_assets.core.restore.workdir import remove_dead, work_folder

    root = tmp_path / "work"
    alive = root / "tenant-restore-alive"
    legacy = root / "tenant-restore-legacy"  # no owner recorded (an older version's): not ours to judge
    dead = root / "tenant-restore-dead"
    reused = root / "tenant-restore-reused"  # the pid lives, but it is another process than the owner
    for path in (alive, legacy, dead, reused):
        path.mkdir(parents=True)
    host = os.uname().nodename
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (alive / "owner.json").write_text(json.dumps({"pid": sleeper.pid, "start": None, "host": host}))
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (dead / "owner.json").write_text(json.dumps({"pid": gone.pid, "start": None, "host": host}))
        (reused / "owner.json").write_text(json.dumps({"pid": sleeper.pid, "start": "1", "host": host}))
        assert remove_dead(root) == [dead, reused]
        assert alive.exists() and legacy.exists()
        with work_folder(root) as folder:
            assert folder.parent == root and (folder.stat().st_mode & 0o777) == 0o700
            (folder / "x").write_text("x")
        assert not folder.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
