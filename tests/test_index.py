"""The index of a location (core/locations/index.py, docs/STORAGE.md "The index"): kept by every write
through the configured locations, complete only once reconciled with the manifests, authenticated,
never losing a concurrent writer's entry, never making a backup disappear or a stale tenant look fresh.
Real parts: the local disk, the loopback S3 server and the b2sdk-backed B2 server."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from backup_assets.core.errors import TenantBackupError, TransientStorageError
from backup_assets.core.locations import locations_from_env
from backup_assets.core.locations.index import index_root, read_index
from backup_assets.core.locations.index_compact import compact
from backup_assets.core.locations.indexing import IndexingLocation
from backup_assets.testing.backups import backup_id_at, make_backup
from backup_assets.testing.location_doubles import LocationDoubles

NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def doubles():
    d = LocationDoubles("idx-" + uuid.uuid4().hex[:8])
    yield d
    d.stop()


@pytest.fixture
def env(doubles, keys, tmp_path):
    prefix = "p" + uuid.uuid4().hex[:8]  # a fresh, empty corner of each bucket per test
    return {
        **doubles.env,
        "TENANT_BACKUP_KEYS": keys,
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_STORAGE_PREFIX": prefix,
        "TENANT_BACKUP_STORAGE_ATTEMPTS": "1",
    }


def _locs(env, names=("local", "r2", "b2")):
    return locations_from_env(list(names), env)


def _store(loc, keyring, tmp_path, tenant, n, days_old=0.0):
    created = NOW - timedelta(days=days_old)
    backup = backup_id_at(created, n)
    path = tmp_path / f"{tenant}-{backup}.tbk"
    manifest = make_backup(keyring, tenant, backup, created, path)
    loc.put(tenant, backup, path, manifest)
    return backup


def _s3_requests(doubles):
    return doubles.servers["r2"].checksum_headers()["requests"]


def _b2_requests(doubles):
    return doubles.servers["b2"].request_counts()["requests"]


def test_writes_keep_the_index_and_a_reconcile_makes_it_complete(env, keyring, tmp_path, doubles):
    locs = _locs(env)
    assert all(isinstance(loc, IndexingLocation) for loc in locs.values())
    tenants = [str(uuid.uuid4()) for _ in range(6)]
    stored = {}
    for i, tenant in enumerate(tenants):
        for loc in locs.values():
            stored[tenant] = [_store(loc, keyring, tmp_path, tenant, i * 10 + j, days_old=7 * j) for j in range(2)]
    for loc in locs.values():
        view = read_index(loc, keyring)
        # Every write is in the index at once, but before a reconcile it cannot say "stale".
        assert {(b.tenant_id, b.backup_id) for b in view.backups()} == {(t, b) for t in tenants for b in stored[t]}
        assert not view.usable and "rebuild --index" in view.why_unusable()
        report = compact(loc, keyring)
        assert report.complete and report.backups == 12 and report.manifests_read == 0, report.line()
        view = read_index(loc, keyring, latest_only=True)
        assert view.usable and not view.ignored
        newest = view.newest()
        assert {t: b.backup_id for t, b in newest.items()} == {t: max(stored[t]) for t in tenants}
        entry = newest[tenants[0]]
        manifest = loc.get_manifest(tenants[0], entry.backup_id)  # the index says what the manifest says
        assert (entry.info.sha256, entry.info.size, entry.info.key_id) == (*manifest.stated_checksum(), manifest.key_id)
        assert entry.manifest().created_at == manifest.created_at and entry.info.sealed
    # After compaction, what status reads is a listing and one pack: the same few requests for any tenant count.
    s3, b2 = _s3_requests(doubles), _b2_requests(doubles)
    read_index(locs["r2"], keyring, latest_only=True)
    read_index(locs["b2"], keyring, latest_only=True)
    assert _s3_requests(doubles) - s3 <= 2, "index listing + one pack"
    assert _b2_requests(doubles) - b2 <= 4, "index listing + one pack (+ b2sdk's own set-up calls)"


def test_verification_is_indexed_only_for_the_bytes_it_checked(env, keyring, tmp_path):
    loc = _locs(env, ["local"])["local"]
    tenant = str(uuid.uuid4())
    backup = _store(loc, keyring, tmp_path, tenant, 1)
    sha = loc.get_manifest(tenant, backup).stated_checksum()[0]
    loc.put_verified(tenant, backup, {"sha256": sha, "ok": True, "deep": True, "verified_at": NOW.isoformat()})
    compact(loc, keyring)
    got = read_index(loc, keyring, latest_only=True).newest()[tenant]
    assert got.verification_record()["ok"] is True and got.verification_record()["deep"] is True
    loc.put_verified(tenant, backup, {"sha256": "00" * 32, "ok": True, "deep": False, "verified_at": NOW.isoformat()})
    assert read_index(loc, keyring).backup(tenant, backup).verified is None  # other bytes: not this copy's


def test_concurrent_writers_and_compactions_lose_no_entry(env, keyring, tmp_path):
    loc = _locs(env, ["r2"])["r2"]
    tenants = [str(uuid.uuid4()) for _ in range(24)]
    written: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def writer(chunk):
        try:
            for i, tenant in enumerate(chunk):
                written.append((tenant, _store(loc, keyring, tmp_path, tenant, i)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def compactor():
        try:
            for _ in range(3):
                compact(loc, keyring)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(tenants[i::4],)) for i in range(4)]
    threads += [threading.Thread(target=compactor), threading.Thread(target=compactor)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    view = read_index(loc, keyring)  # before any further compaction: packs of every generation + log
    assert {(b.tenant_id, b.backup_id) for b in view.backups()} == set(written)
    compact(loc, keyring)
    view = read_index(loc, keyring, latest_only=True)
    assert view.usable and len(view.generations) == 1 and set(view.newest()) == set(tenants)


def test_a_damaged_or_missing_index_is_never_trusted_and_is_rebuilt(env, keyring, tmp_path):
    loc = _locs(env, ["b2"])["b2"]
    tenants = [str(uuid.uuid4()) for _ in range(4)]
    backups = {t: _store(loc, keyring, tmp_path, t, i) for i, t in enumerate(tenants)}
    compact(loc, keyring)
    inner = loc.inner.inner
    pack = next(k for k, _ in inner._list(index_root(loc)) if "/latest-" in k)
    data = bytearray(inner._get_bytes(pack))
    data[-5] ^= 0x01
    inner._put_bytes(pack, bytes(data))
    view = read_index(loc, keyring, latest_only=True)
    assert not view.usable and view.damaged and "rebuild --index" in view.why_unusable()
    # Lost entirely (someone emptied index/): not usable either, never "no backups, all stale".
    for key, _ in list(inner._list(index_root(loc))):
        inner._delete(key)
    assert not read_index(loc, keyring).usable
    report = compact(loc, keyring, full=True)  # tenant-backup rebuild --index
    assert report.complete and report.manifests_read == 4, report.line()
    view = read_index(loc, keyring, latest_only=True)
    assert view.usable and {t: b.backup_id for t, b in view.newest().items()} == backups


def test_forged_entries_are_ignored_and_another_locations_index_does_not_verify(env, keyring, tmp_path):
    locs = _locs(env, ["local", "r2"])
    tenant = str(uuid.uuid4())
    backup = _store(locs["local"], keyring, tmp_path, tenant, 1)
    compact(locs["local"], keyring)
    inner = locs["local"].inner.inner
    root = index_root(locs["local"])
    # A tombstone and a newer backup written by someone without the keyring: ignored, said so.
    inner._put_bytes(f"{root}log/{tenant}/{backup}/d~{10**19}~k1~AAAAAAAAAAAAAAAAAAAAAA", b"")
    fake = backup_id_at(NOW + timedelta(days=1), 9)
    inner._put_bytes(f"{root}log/{tenant}/{fake}/p~{10**19}~1~1~n~n~T~n~0~k1~AAAAAAAAAAAAAAAAAAAAAA", b"")
    view = read_index(locs["local"], keyring, latest_only=True)
    assert len(view.ignored) == 2 and view.newest()[tenant].backup_id == backup
    # The local location's index copied into R2's place: its packs name another scope.
    r2 = locs["r2"].inner.inner
    for key, _ in inner._list(root):
        r2._put_bytes(index_root(locs["r2"]) + key[len(root) :], inner._get_bytes(key))
    copied = read_index(locs["r2"], keyring)
    assert not copied.usable and copied.damaged and not copied.backups()


def test_what_changed_without_the_index_is_found_by_the_reconcile(env, keyring, tmp_path):
    loc = _locs(env, ["r2"])["r2"]
    inner = loc.inner.inner
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    kept = _store(loc, keyring, tmp_path, a, 1)
    gone = _store(loc, keyring, tmp_path, b, 2)
    compact(loc, keyring)
    inner.delete(b, gone)  # outside the tool: the index still holds it until the next reconcile
    path = tmp_path / "c.tbk"
    unindexed = backup_id_at(NOW, 3)
    inner.put(c, unindexed, path, make_backup(keyring, c, unindexed, NOW, path))  # outside the tool
    edited = backup_id_at(NOW, 4)
    manifest = make_backup(keyring, a, edited, NOW, path)
    inner.put(a, edited, path, manifest.copy(created_at=(NOW + timedelta(days=30)).isoformat()))  # seal broken
    report = compact(loc, keyring)
    assert report.dropped == 1 and report.manifests_read == 2 and len(report.refused) == 1, report.line()
    newest = read_index(loc, keyring, latest_only=True).newest()
    assert b not in newest  # gone: stale, never fresh
    assert newest[c].backup_id == unindexed
    assert newest[a].backup_id == edited and newest[a].refused and newest[a].info is None  # refused, not trusted
    assert read_index(loc, keyring).backup(a, kept) is not None


def test_a_delete_whose_tombstone_cannot_be_written_deletes_nothing(env, keyring, tmp_path, doubles):
    loc = _locs(env, ["r2"])["r2"]
    tenant = str(uuid.uuid4())
    backup = _store(loc, keyring, tmp_path, tenant, 1)
    doubles.servers["r2"].faults.set(fail=10, status=503, match="/index/")
    try:
        with pytest.raises(TransientStorageError):
            loc.delete(tenant, backup)
    finally:
        doubles.servers["r2"].faults.clear()
    assert [r.backup_id for r in loc.list(tenant)] == [backup]
    loc.delete(tenant, backup)
    assert loc.list(tenant) == [] and read_index(loc, keyring).backup(tenant, backup) is None


def test_without_a_keyring_a_delete_marks_the_index_out_of_date(env, keyring, tmp_path):
    with_keys = _locs(env, ["local"])["local"]
    tenant = str(uuid.uuid4())
    backup = _store(with_keys, keyring, tmp_path, tenant, 1)
    compact(with_keys, keyring)
    no_keys = _locs({k: v for k, v in env.items() if k != "TENANT_BACKUP_KEYS"}, ["local"])["local"]
    no_keys.delete(tenant, backup)
    view = read_index(with_keys, keyring, latest_only=True)
    assert not view.usable and view.dirty  # never "fresh" from an entry the delete could not retract
    compact(with_keys, keyring)
    view = read_index(with_keys, keyring, latest_only=True)
    assert view.usable and tenant not in view.newest()


def test_an_unreachable_location_is_an_error_not_an_empty_index(env, keyring):
    env = {**env, "R2_ENDPOINT_URL": "http://127.0.0.1:9"}
    with pytest.raises(TenantBackupError):
        read_index(_locs(env, ["r2"])["r2"], keyring)


@pytest.mark.parametrize("damage", ["flipped", "emptied"])
def test_readers_of_a_damaged_index_lose_no_backup_and_call_no_stale_tenant_fresh(env, keyring, tmp_path, damage):
    """What status, the sensor, list and prune say when a location's index is damaged or gone: the
    manifests' word (status, list, prune) or *unknown* (the sensor, which launches the index job)."""
    from backup_assets.core.maintenance.catalog import collect
    from backup_assets.core.maintenance.index_status import gather_indexed
    from backup_assets.core.maintenance.retention import prune_location

    locs = _locs(env, ["local", "b2"])
    fresh, stale = str(uuid.uuid4()), str(uuid.uuid4())
    stored = {}
    for name, loc in locs.items():
        stored[name] = {
            (fresh, _store(loc, keyring, tmp_path, fresh, 1, days_old=1)),
            (fresh, _store(loc, keyring, tmp_path, fresh, 2, days_old=40)),
            (stale, _store(loc, keyring, tmp_path, stale, 3, days_old=10)),
        }
        assert compact(loc, keyring).complete
    damaged = locs["b2"].inner.inner
    keys = [k for k, _ in damaged._list(index_root(locs["b2"]))]
    for key in keys:
        if damage == "emptied":
            damaged._delete(key)
        elif "/packs/" in key:
            data = bytearray(damaged._get_bytes(key))
            data[-5] ^= 0x01
            damaged._put_bytes(key, bytes(data))

    def states(report):
        return {(c.tenant_id, c.location): c.state for c in report.copies}

    # status: the damaged location is read the old way (its manifests): the same answer as the index.
    status = gather_indexed([fresh, stale], locs, keyring=keyring, max_age_days=8)
    assert status.scanned == ["b2"]
    assert states(status.report) == {
        (fresh, "local"): "ok",
        (fresh, "b2"): "ok",
        (stale, "local"): "stale",
        (stale, "b2"): "stale",
    }
    # The sensor past its scan limit: unknown there (alerted as such), never fresh; the index job due.
    sensor = gather_indexed([fresh, stale], locs, keyring=keyring, max_age_days=8, scan_up_to=1, missing=False)
    assert {t: s for (t, n), s in states(sensor.report).items() if n == "b2"} == {fresh: "unknown", stale: "unknown"}
    assert "b2" in sensor.report.unreadable and "rebuild --index" in sensor.maintenance_due()["b2"]
    # list and prune: every backup, from the listing and the manifests.
    entries, errors = collect(locs, keyring=keyring)
    assert not errors
    assert {(e.tenant_id, e.backup_id) for e in entries if "b2" in e.locations} == stored["b2"]
    report = prune_location(locs["b2"], keyring=keyring, keep_min=2, dry_run=True)
    assert {(d.tenant_id, d.backup_id) for d in report.decisions} == stored["b2"] and not report.deleted
    # rebuild --index: usable again, and the same answer from it.
    assert compact(locs["b2"], keyring, full=True).complete
    again = gather_indexed([fresh, stale], locs, keyring=keyring, max_age_days=8)
    assert again.scanned == [] and states(again.report) == states(status.report)


def test_status_reads_backups_as_pairs_and_agrees_with_the_full_read(env, keyring, tmp_path):
    """read_index(pairs=True), what status reads: each tenant's newest from the `latest` packs, the
    other backups as bare (tenant, backup) pairs — the same newest backups and live backups as the
    full read, with log entries pending after the compaction (a delete of a newest backup, a new put,
    a verification) that the lean read must merge in full."""
    loc = _locs(env, ["local"])["local"]
    deleted_newest, new_put, verified, untouched = (str(uuid.uuid4()) for _ in range(4))
    made = {
        t: [_store(loc, keyring, tmp_path, t, 10 * i + j, days_old=7 * j) for j in range(4)]
        for i, t in enumerate((deleted_newest, new_put, verified, untouched))
    }
    assert compact(loc, keyring).complete
    loc.delete(deleted_newest, made[deleted_newest][0])
    _store(loc, keyring, tmp_path, new_put, 99)
    loc.put_verified(verified, made[verified][2], {"sha256": "0" * 64, "ok": True, "verified_at": NOW.isoformat()})

    lean, full = read_index(loc, keyring, pairs=True), read_index(loc, keyring)
    assert lean.usable and full.usable
    assert len(lean.pairs) == 3 and all(t == untouched for t, _ in lean.pairs)  # the lean path was taken
    assert (
        sorted(lean.live_keys())
        == sorted(full.live_keys())
        == sorted((b.tenant_id, b.backup_id) for b in full.backups())
    )
    assert lean.newest() == full.newest()
    assert lean.newest()[deleted_newest].backup_id == made[deleted_newest][1]  # the next one, not the deleted
    assert (deleted_newest, made[deleted_newest][0]) not in lean.live_keys()
