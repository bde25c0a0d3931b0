"""Issue 23.3 with the real daemon: 1,200 backed-up tenants plus the sample's, all three locations on
their loopback servers; the stale_backup_alerts sensor, run by dagster-daemon, reads the indexes and
raises STALE_BACKUP for the tenant whose newest backup is 10 days old, not for the fresh ones, with
every tick far inside Dagster's 60 s deadline. The registry sensor adds the 1,200 partitions too.

Its own stack (not the package's): the registry query returns 1,200 more tenants, and the staleness
sensor runs every few seconds."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_assets.core.codec.keyring import Keyring
from backup_assets.core.locations.index import read_many
from backup_assets.core.locations.index_compact import compact
from backup_assets.core.maintenance.alerts import STALE_BACKUP
from backup_assets.testing.backups import backup_id_at, make_backup
from backup_assets.testing.dagster_stack import LOCATION_NAME, REPOSITORY_NAME, DagsterStack

SCALE = 1_200
QUERY = (
    "SELECT id::text FROM tenants WHERE status = 'ACTIVE' UNION ALL "
    f"SELECT md5('scale-' || i)::uuid::text FROM generate_series(1, {SCALE}) AS i"
)
TICKS = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename
  ... on Sensor { sensorState { ticks(limit: 20) { status timestamp endTimestamp skipReason runIds
  error { message } } } } } }"""


def _synthetic() -> list[str]:
    import hashlib

    return [str(uuid.UUID(hashlib.md5(f"scale-{i}".encode()).hexdigest())) for i in range(1, SCALE + 1)]


@pytest.fixture(scope="module")
def stack():
    directory = Path(tempfile.mkdtemp(prefix="tenant-backup-e2e-scale-"))
    os.chmod(directory, 0o755)
    saved = dict(os.environ)
    s = DagsterStack(
        directory,
        active=2,
        suspended=0,
        rows=2,
        extra_env={"TENANT_BACKUP_TENANTS_QUERY": QUERY, "TENANT_BACKUP_STALE_CHECK_S": "10"},
    )
    try:
        yield s.start()
    finally:
        s.stop()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(directory, ignore_errors=True)


def _ticks(stack) -> list[dict]:
    selector = {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME}
    data = stack.graphql(TICKS, {"s": {**selector, "sensorName": "stale_backup_alerts"}})
    return data["sensorOrError"]["sensorState"]["ticks"]


def test_stale_backup_is_raised_by_the_daemon_at_1200_tenants(stack, tmp_path):
    tenants = _synthetic()
    stale = tenants[0]
    now = datetime.now(timezone.utc)
    locations = stack.locations()
    keyring = Keyring.from_env({**os.environ, **stack.env})

    def store(item):
        n, tenant = item
        created = now - timedelta(days=10 if tenant == stale else 1)
        backup = backup_id_at(created, n)
        path = tmp_path / f"{tenant}.tbk"
        manifest = make_backup(keyring, tenant, backup, created, path)
        for loc in locations.values():
            loc.put(tenant, backup, path, manifest)
        path.unlink()

    read_many(store, list(enumerate(tenants)), workers=12)
    for loc in locations.values():  # what the index job does; here now, so the test need not wait a day
        assert compact(loc, keyring).complete
    ready = time.time()

    alert = stack.wait_for_alert(
        lambda a: a["kind"] == STALE_BACKUP and a["tenant_id"] == stale and "days old" in a["message"], timeout=120
    )
    assert alert["location"] in locations and "10.0 days old" in alert["message"]
    for name in locations:  # each location: the stale tenant named there
        stack.wait_for_alert(lambda a, n=name: a["tenant_id"] == stale and a["location"] == n, timeout=60)
    # Ticks during the stores above rightly called the tenants not stored yet stale; since then, none is.
    since = datetime.fromtimestamp(int(ready) + 1, timezone.utc).isoformat(timespec="seconds")
    later = [a for a in stack.alerts() if a["at"] >= since]
    assert not [a for a in later if a["tenant_id"] in tenants[1:]], "a fresh tenant was called stale"
    # The sample's two active tenants have no backup at all: stale too, and named.
    sample = [t.id for t in stack.tenants]
    assert {a["tenant_id"] for a in stack.alerts() if a["kind"] == STALE_BACKUP} >= {stale, *sample}
    deadline = time.monotonic() + 60  # a tick that began after every store and the compactions
    while not (done := [t for t in _ticks(stack) if t["timestamp"] >= ready and t["endTimestamp"]]):
        assert time.monotonic() < deadline, _ticks(stack)
        time.sleep(2)
    assert all(t["status"] in ("SKIPPED", "SUCCESS") for t in done), done
    slowest = max(t["endTimestamp"] - t["timestamp"] for t in done)
    assert slowest < 10, f"sensor tick took {slowest:.1f} s at {SCALE} tenants"
    # The registry sensor added every tenant's partition (in batches, not a query per key).
    deadline = time.monotonic() + 60
    while len(stack.partition_keys()) < SCALE + len(sample) and time.monotonic() < deadline:
        time.sleep(2)
    assert len(stack.partition_keys()) == SCALE + len(sample)
