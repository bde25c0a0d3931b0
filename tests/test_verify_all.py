"""`tenant-backup verify --all [--subset n/t] [--deep]`: the daily verify job's rotating-share
selection from the command line (one function, core.maintenance.catalog.share_of), against a local
directory and the loopback S3 server (R2), with real archives."""

from __future__ import annotations

import io
import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import CLI

from backup_assets.core.archive.manifest import Manifest, new_backup_id
from backup_assets.core.codec.format import encode_archive
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.locations import locations_from_env
from backup_assets.core.maintenance.catalog import VERIFY_CYCLE_DAYS, share_of
from backup_assets.core.settings import Settings
from backup_assets.defs.operations.jobs import verify_bucket
from backup_assets.testing.s3_server import S3Server

ROOT = Path(__file__).resolve().parent.parent
KEYS = generate_entry("va1")
NOW = datetime.now(timezone.utc)


def small_archive(tmp: Path, tenant: str, created: datetime) -> tuple[Path, dict]:
    bid = new_backup_id(created)
    path = tmp / f"{tenant}-{bid}.tbk"
    with path.open("wb") as out:
        header, stats = encode_archive(
            io.BytesIO(os.urandom(2000)).read,
            out,
            tenant_id=tenant,
            backup_id=bid,
            created_at=created,
            keyring=Keyring.parse(KEYS),
        )
    manifest = {
        "manifest_version": 1,
        "tenant_id": tenant,
        "backup_id": bid,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "archive": {"size": stats.archive_bytes, "sha256": stats.sha256, "key_id": header.key_id},
        "tables": {"public.orders": 3},
    }
    return path, manifest


@pytest.fixture
def stored(tmp_path):
    """12 backups (6 tenants × 2), each in local and R2: 24 copies."""
    with S3Server() as s3:
        bucket = f"va-{uuid.uuid4().hex[:10]}"
        s3.create_bucket(bucket)
        env = {
            "TENANT_BACKUP_KEYS": KEYS,
            "TENANT_BACKUP_LOCATIONS": "local,r2",
            "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
            "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
            "R2_ENDPOINT_URL": s3.url,
            "R2_ACCESS_KEY_ID": s3.access_key or "testing",
            "R2_SECRET_ACCESS_KEY": s3.secret_key,
            "R2_BUCKET": bucket,
            "TENANT_BACKUP_STORAGE_ATTEMPTS": "1",
        }
        locs = locations_from_env(None, env)
        copies = []
        for _ in range(6):
            tenant = str(uuid.uuid4())
            for age in (1, 3):
                path, manifest = small_archive(tmp_path, tenant, NOW - timedelta(days=age))
                for name, loc in locs.items():
                    loc.put(tenant, manifest["backup_id"], path, Manifest.from_dict(manifest))
                    copies.append((name, tenant, manifest["backup_id"]))
        yield env, locs, copies


def verified(locs, copies) -> set:
    """The copies that carry a verification record (written by every copy verify reads)."""
    return {(n, t, b) for n, t, b in copies if locs[n].get_verified(t, b) is not None}


def test_the_daily_job_and_the_cli_read_the_same_copies(stored):
    """The daily verify job's day D re-reads exactly the copies `verify --all --subset D+1/28` re-reads:
    both are run, and what each read is told apart by the record it left beside each copy."""
    from dagster import instance_for_test

    from backup_assets.defs.build import build_definitions

    env, locs, copies = stored
    day = share_of(*copies[0], VERIFY_CYCLE_DAYS)
    settings = Settings.from_env({**env, "TENANT_BACKUP_SOURCE_DSN": "postgresql://nobody@127.0.0.1:1/none"})
    job = build_definitions(settings).resolve_job_def("verify_share_job")
    with instance_for_test() as instance:
        run_config = {"ops": {"verify_share_op": {"config": {"day": day}}}}
        job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
    by_job = {c for c in copies if (locs[c[0]].get_verified(c[1], c[2]) or {}).get("by") == "verify_share_job"}
    doc = json.loads(CLI.run(["verify", "--all", "--subset", f"{day + 1}/28", "--json"], env).stdout)
    by_cli = {(c["location"], c["tenant_id"], c["backup_id"]) for c in doc["copies"]}
    assert by_job and by_job == by_cli, (by_job, by_cli)


def test_subset_reads_its_share_only_and_the_shares_cover_every_copy(stored):
    env, locs, copies = stored
    first = {c for c in copies if share_of(*c, 2) == 0}
    assert 0 < len(first) < len(copies)  # a real split of these 24 copies

    result = CLI.run(["verify", "--all", "--subset", "1/2", "--json"], env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    checked = {(c["location"], c["tenant_id"], c["backup_id"]) for c in doc["copies"]}
    assert checked == first and (doc["listed"], doc["checked"], doc["subset"]) == (24, len(first), "1/2")
    assert verified(locs, copies) == first  # exactly those were read, the others not touched

    result = CLI.run(["verify", "--all", "--subset", "2/2"], env)
    assert result.returncode == 0, result.stderr
    assert verified(locs, copies) == set(copies)  # the two shares: every copy, each once
    assert f"share 2/2: {len(copies) - len(first)} of 24 stored copies re-read" in result.stdout
    assert result.stdout.splitlines()[0].split()[:4] == ["LOCATION", "TENANT", "BACKUP", "RESULT"]

    # --subset n/28 is the daily job's day n-1.
    day = share_of(*copies[0], VERIFY_CYCLE_DAYS)
    doc = json.loads(CLI.run(["verify", "--all", "--subset", f"{day + 1}/28", "--json"], env).stdout)
    assert {(c["location"], c["tenant_id"], c["backup_id"]) for c in doc["copies"]} == {
        c for c in copies if verify_bucket(*c) == day
    }

    for bad in ("0/2", "3/2", "half", "1/0"):
        assert CLI.run(["verify", "--all", "--subset", bad], env).returncode == 2


def test_a_flipped_byte_is_named_and_fails_the_run(stored):
    env, locs, copies = stored
    name, tenant, backup = next(c for c in copies if c[0] == "local")
    path = next((Path(env["TENANT_BACKUP_LOCAL_DIR"]) / "tenants" / tenant / backup).glob("archive-*.tbk"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = CLI.run(["verify", "--all"], env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("tenant-backup: error:")]
    assert len(errors) == 1 and f"local/{tenant}/{backup}" in errors[0] and "1 of 24 copies" in errors[0]
    fails = [line for line in result.stdout.splitlines() if " FAIL " in line]
    assert len(fails) == 1 and tenant in fails[0] and backup in fails[0] and fails[0].startswith("local")
    assert "local: 11/12 ok, r2: 12/12 ok" in result.stdout

    # The same exit code in JSON mode, the bad copy named in the document.
    js = CLI.run(["verify", "--all", "--json"], env)
    assert js.returncode == 1
    doc = json.loads(js.stdout)
    assert [(c["location"], c["tenant_id"], c["backup_id"]) for c in doc["copies"] if not c["ok"]] == [
        (name, tenant, backup)
    ]
    assert locs["local"].get_verified(tenant, backup)["ok"] is False  # `status` sees it as failed
