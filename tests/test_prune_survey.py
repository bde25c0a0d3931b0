"""Prune plans and collects garbage from one listing of each location (Location.survey, issue 23),
against a local directory, the loopback S3 server (R2) and the loopback B2 server.

What this must not cost: a folder that had no manifest when the survey was taken, and has one by the
time garbage is collected (a put older than the grace that finished meanwhile), is listed again and
kept; a folder still without one is collected.
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.locations.garbage import Survey
from backup_assets.core.maintenance.retention import prune_location
from backup_assets.testing.backups import backup_id_at, make_backup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from storage_backends import backend_for, http_json  # noqa: E402

KEYS = Keyring.parse(generate_entry("survey"))
NOW = datetime.now(timezone.utc)


def store(raw, tmp_path, tenant: str, days: int, n: int):
    created = NOW - timedelta(days=days)
    bid = backup_id_at(created, n)
    path = tmp_path / f"{bid}.tbk"
    manifest = make_backup(KEYS, tenant, bid, created, path)
    raw.put(tenant, bid, path, manifest)
    return bid, path, manifest


def orphan(raw, tenant: str, days: int, n: int) -> str:
    """A folder a killed put left: an archive, no manifest."""
    bid = backup_id_at(NOW - timedelta(days=days), n)
    raw._put_bytes(raw.backup_prefix(tenant, bid) + "archive-0123456789abcdef.tbk", b"x" * 1000)
    return bid


def whole_listings(monkeypatch, raw) -> list[str]:
    """Records each listing of the whole location: survey() and _list of its root."""
    seen: list[str] = []
    cls = type(raw)
    survey, listing = cls.survey, cls._list

    inside = []

    def counted_survey(self):
        seen.append("survey")
        inside.append(1)
        try:
            return survey(self)
        finally:
            inside.pop()

    def counted_list(self, prefix):
        if prefix == self._root() and not inside:  # survey's own listing is the survey
            seen.append("list")
        return listing(self, prefix)

    monkeypatch.setattr(cls, "survey", counted_survey)
    monkeypatch.setattr(cls, "_list", counted_list)
    return seen


@pytest.mark.parametrize("kind", ["local", "r2", "b2"])
def test_prune_lists_each_location_once(kind, tmp_path, request, monkeypatch):
    be = backend_for(kind, tmp_path, request)
    raw = be.make(retention_days=30)
    t = str(uuid.uuid4())
    made = [store(raw, tmp_path, t, days, n) for n, days in enumerate((1, 100, 200, 300))]
    left = orphan(raw, t, 50, 9)
    before = http_json(be.server.url + "/__requests__")["by_call"] if kind == "b2" else {}

    seen = whole_listings(monkeypatch, raw)
    dry = prune_location(raw, keyring=KEYS, keep_min=2, grace=timedelta(0), dry_run=True)
    assert seen == ["survey"]  # the plan and the garbage from one listing
    if kind == "b2":  # B2's older versions come from that same listing, not from a second one
        after = http_json(be.server.url + "/__requests__")["by_call"]
        calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        assert calls.get("b2_list_file_versions") == 1, calls
    seen.clear()
    report = prune_location(raw, keyring=KEYS, keep_min=2, grace=timedelta(0))
    assert seen == ["survey"]
    assert [(d.backup_id, d.reason) for d in report.deleted] == [(d.backup_id, d.reason) for d in dry.deleted]
    # What it decided and did is what two listings gave: the two oldest deleted, the orphan collected.
    assert sorted(d.backup_id for d in report.deleted) == sorted(b for b, _, _ in made[2:])
    assert [r.backup_id for r in report.incomplete] == [left]
    monkeypatch.undo()
    assert [r.backup_id for r in raw.list(t)] == sorted(b for b, _, _ in made[:2])
    assert raw.garbage(NOW + timedelta(days=1)) == []


@pytest.mark.parametrize("kind", ["local", "r2", "b2"])
def test_a_folder_completed_after_the_survey_is_not_garbage(kind, tmp_path, request):
    be = backend_for(kind, tmp_path, request)
    raw = be.make(retention_days=30)
    t = str(uuid.uuid4())
    finished, still = orphan(raw, t, 3, 1), orphan(raw, t, 3, 2)
    survey = raw.survey()
    assert isinstance(survey, Survey)
    assert {b for (_, b), f in survey.folders.items() if not f.complete} == {finished, still}

    # A put that was still going (older than the grace) writes its manifest after the survey.
    created = NOW - timedelta(days=3)
    path = tmp_path / "late.tbk"
    raw.put(t, finished, path, make_backup(KEYS, t, finished, created, path))

    later = NOW + timedelta(days=1)  # grace over for everything written so far
    found = {(g.key.split("/")[-2], g.key.split("/")[-1], g.what) for g in raw.garbage(later, survey)}
    # The completed one is listed again: only the stray archive beside its manifest is garbage (its
    # manifest names another); the folder still without a manifest is collected whole.
    assert found == {
        (finished, "archive-0123456789abcdef.tbk", "superseded archive"),
        (still, "archive-0123456789abcdef.tbk", "no manifest"),
    }
    fresh = {(g.key.split("/")[-2], g.key.split("/")[-1], g.what) for g in raw.garbage(later)}
    assert fresh == found  # what a fresh listing says
    assert [r.backup_id for r in raw.list(survey=survey)] == []  # the survey itself is not rewritten
    assert [r.backup_id for r in raw.list(t)] == [finished]


def test_b2_survey_shows_older_versions_once(tmp_path, request):
    """A name with two versions (a put killed between its upload and the removal of the older one):
    the survey's folder has the name once, and the older version is garbage from the same listing."""
    be = backend_for("b2", tmp_path, request)
    raw = be.make(retention_days=30)
    t = str(uuid.uuid4())
    bid, _path, manifest = store(raw, tmp_path, t, 2, 1)
    key = raw.manifest_key(t, bid)
    raw._b().upload_bytes(manifest.to_json().encode(), key)  # a second version of the manifest

    survey = raw.survey()
    assert set(survey.folders[(t, bid)].names) >= {"manifest.json"}
    assert [g.key for g in survey.older] == [key]
    got = raw.garbage(NOW + timedelta(days=1), survey)
    assert [(g.key, g.what) for g in got] == [(key, "older version")]
    assert raw.get_manifest(t, bid) == manifest  # the newest version is the one read
