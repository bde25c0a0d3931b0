"""`--json` on every command, as a user runs it (the real entry point in a subprocess) against the
sample database, a local directory and the loopback S3 server (R2): stdout is one JSON document
(json.loads of all of it), exit codes are the same with and without --json, errors are a JSON
object and a non-zero exit. Also: --version, and tenant display names from the registry query."""

from __future__ import annotations

import json
import uuid
from importlib.metadata import version
from pathlib import Path

import psycopg2
import pytest
from conftest import CLI, EXIT

from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.settings import SourceSettings
from backup_assets.core.source.tenants import (
    clean_name,
    display_label,
    is_listed,
    list_tenants,
    read_registry,
    tenant_name,
)

ROOT = Path(__file__).resolve().parent.parent
KEYS = generate_entry("json1")
NAMED_QUERY = "SELECT id::text, name FROM tenants WHERE status = 'ACTIVE'"


def as_json(result):
    """The whole of stdout is one JSON document (nothing else on it)."""
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"stdout is not one JSON document:\n{result.stdout[:2000]}\nstderr:\n{result.stderr[-2000:]}"
        )


@pytest.fixture(scope="module")
def world(sample_db, sample_tenants, s3_server, pg_server_dsn, tmp_path_factory):
    """Two of the three active tenants backed up through Dagster by `backup --json` (local + R2)."""
    tmp = tmp_path_factory.mktemp("cli-json")
    bucket = f"json-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    env = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_TENANTS_QUERY": NAMED_QUERY,
        "TENANT_BACKUP_LOCATIONS": "local,r2",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": pg_server_dsn,
        "R2_ENDPOINT_URL": s3_server.url,
        "R2_ACCESS_KEY_ID": s3_server.access_key or "testing",
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET": bucket,
        "TENANT_BACKUP_RETRIES": "0",
        "TENANT_BACKUP_RETRY_DELAY_S": "0",
        "TENANT_BACKUP_STORAGE_ATTEMPTS": "1",
        "DAGSTER_HOME": str(tmp / "dagster_home"),  # a recorded instance: the runs' tags can be read back
    }
    (tmp / "dagster_home").mkdir()
    active = [t for t in sample_tenants if t.status == "ACTIVE"]
    backed_up = active[:2]
    result = CLI.run(["backup", *sum((["--tenant", t.id] for t in backed_up), []), "--workers", "1", "--json"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        "env": env,
        "tmp": tmp,
        "backup": as_json(result),
        "backed_up": backed_up,
        "active": active,
        "names": {t.id: t.name for t in active},
    }


def test_version_from_package_metadata():
    result = CLI.run(["--version"], {})
    assert result.returncode == 0 and result.stdout.strip() == f"tenant-backup {version('tenant-backup')}"


def test_backup_json(world):
    doc = world["backup"]
    assert (doc["total"], doc["ok"], doc["failed"], doc["skipped"]) == (2, 2, 0, 0)
    by_id = {t["tenant_id"]: t for t in doc["tenants"]}
    assert set(by_id) == {t.id for t in world["backed_up"]}
    for tenant in world["backed_up"]:
        row = by_id[tenant.id]
        assert row["state"] == "ok" and row["ok"] is True and row["run_id"]
        assert row["tenant_name"] == tenant.name  # the registry query's second column
        assert row["steps"] == {"tenant_archive": "ok", "local_copy": "ok", "r2_copy": "ok"}
        assert row["checks"] and all(row["checks"].values())
        assert "tenant_archive:restore_drill" in row["checks"]


def test_runs_and_archive_metadata_carry_the_tenant_name(world):
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    with DagsterInstance.from_ref(InstanceRef.from_dir(world["env"]["DAGSTER_HOME"])) as instance:
        for row in world["backup"]["tenants"]:
            name = world["names"][row["tenant_id"]]
            assert instance.get_run_by_id(row["run_id"]).tags["tenant_backup/tenant_name"] == name
            events = [
                e
                for e in instance.all_logs(row["run_id"], of_type=DagsterEventType.ASSET_MATERIALIZATION)
                if e.dagster_event.asset_key.path[-1] == "tenant_archive"
            ]
            assert len(events) == 1
            metadata = events[0].dagster_event.event_specific_data.materialization.metadata
            assert metadata["tenant_name"].value == name and metadata["tenant_id"].value == row["tenant_id"]


def test_list_and_status_json(world):
    env = world["env"]
    result = CLI.run(["list", "--json"], env)
    assert result.returncode == 0, result.stderr
    rows = as_json(result)
    assert {r["tenant_id"] for r in rows} == {t.id for t in world["backed_up"]}
    assert all(r["locations"] == ["local", "r2"] and r["tenant_name"] == world["names"][r["tenant_id"]] for r in rows)

    # The third active tenant has no backup: stale, exit 1, with and without --json.
    text = CLI.run(["status"], env)
    result = CLI.run(["status", "--json"], env)
    assert text.returncode == result.returncode == 1
    doc = as_json(result)
    stale = {(c["tenant_id"], c["location"]) for c in doc["copies"] if c["state"] == "stale"}
    missing = world["active"][2].id
    assert stale == {(missing, "local"), (missing, "r2")}
    assert doc["tenant_names"] == world["names"]
    assert {c["tenant_name"] for c in doc["copies"]} == set(world["names"].values())
    # The table shows labels: "Name (3f14…)".
    first = world["backed_up"][0]
    assert f"{first.name} ({first.id[:4]}…)" in text.stdout
    assert f"{missing}@local" in text.stderr and f"{missing}@local" in result.stderr


def test_verify_json_one_tenant_and_all(world):
    env = world["env"]
    tenant = world["backed_up"][0]
    result = CLI.run(["verify", "--tenant", tenant.id, "--json"], env)
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    assert doc["tenant_id"] == tenant.id and doc["tenant_name"] == tenant.name and doc["ok"] is True
    assert [(c["location"], c["state"]) for c in doc["copies"]] == [("local", "ok"), ("r2", "ok")]

    result = CLI.run(["verify", "--all", "--deep", "--json"], env)
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    assert (doc["listed"], doc["checked"], doc["ok"], doc["failed"], doc["deep"], doc["subset"]) == (
        4,
        4,
        4,
        0,
        True,
        None,
    )
    assert all("isolated" in c["message"] for c in doc["copies"])


def test_restore_json(world, fresh_db):
    tenant = world["backed_up"][1]
    target = fresh_db("json_restore")
    result = CLI.run(
        ["restore", "--tenant", tenant.id, "--location", "auto", "--target-dsn", target, "--json"], world["env"]
    )
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    assert doc["tenant_id"] == tenant.id and doc["tenant_name"] == tenant.name and doc["location"] == "local"
    conn = psycopg2.connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM sales")
            restored = cur.fetchone()[0]
    finally:
        conn.close()
    assert restored > 0 and doc["tables"]["public.sales"]["inserted"] == restored


def test_export_and_decrypt_json(world, tmp_path):
    env = world["env"]
    tenant = world["active"][2]
    result = CLI.run(["export", "--tenant", tenant.id, "--out", str(tmp_path / "a.tbk"), "--json"], env)
    assert result.returncode == 0, result.stderr
    manifest = as_json(result)
    assert manifest["tenant_id"] == tenant.id and manifest["archive"]["size"] == (tmp_path / "a.tbk").stat().st_size
    assert "dumped" not in result.stderr  # no progress chatter with --json
    result = CLI.run(["decrypt", str(tmp_path / "a.tbk"), "--out", str(tmp_path / "a.dump"), "--json"], env)
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    assert (doc["tenant_id"], doc["backup_id"]) == (tenant.id, manifest["backup_id"])
    assert doc["size"] == (tmp_path / "a.dump").stat().st_size > 0


def test_prune_and_rebuild_json(world):
    env = world["env"]
    result = CLI.run(["prune", "--dry-run", "--json"], env)
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    assert doc["dry_run"] is True and doc["ok"] is True and doc["keep_min"] == 2
    assert set(doc["locations"]) == {"local", "r2"}
    assert all(loc["deleted"] == [] and loc["kept"] == 2 for loc in doc["locations"].values())

    result = CLI.run(["rebuild", "--location", "r2", "--from", "local", "--dry-run", "--json"], env)
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    assert (doc["location"], doc["sources"], doc["copied"], doc["failed"], doc["ok"]) == ("r2", ["local"], 0, 0, True)


def test_errors_in_json_mode(world, tmp_path):
    env = world["env"]
    for args, code in (
        (["export", "--tenant", "not-a-uuid", "--out", str(tmp_path / "x.tbk")], EXIT["config"]),
        (["verify", "--tenant", world["backed_up"][0].id, "--backup", "20200101T000000Z-00000000"], EXIT["storage"]),
    ):
        plain, js = CLI.run(args, env), CLI.run([*args, "--json"], env)
        assert plain.returncode == js.returncode == code, (args, plain.stderr)
        doc = as_json(js)
        assert doc["error"]["exit_code"] == js.returncode and doc["error"]["message"]
        assert plain.stdout == "" or "error" not in plain.stdout
        assert [line for line in js.stderr.splitlines() if line.startswith("tenant-backup: error:")]
    assert (
        as_json(CLI.run(["export", "--tenant", "not-a-uuid", "--out", "x", "--json"], env))["error"]["type"]
        == "InvalidTenantId"
    )


def test_a_bad_copy_same_exit_code_with_and_without_json(world):
    env = world["env"]
    tenant = world["backed_up"][0]
    local = world["tmp"] / "local" / "tenants" / tenant.id
    archive = next(local.glob("*/archive-*.tbk"))
    original = archive.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    try:
        plain = CLI.run(["verify", "--tenant", tenant.id], env)
        js = CLI.run(["verify", "--tenant", tenant.id, "--json"], env)
        assert plain.returncode == js.returncode == 1
        doc = as_json(js)
        assert doc["ok"] is False
        assert {c["location"]: c["state"] for c in doc["copies"]} == {"local": "failed", "r2": "ok"}
    finally:
        archive.write_bytes(original)


def test_keys_generate_and_rewrap_json(world):
    result = CLI.run(["keys", "generate", "--id", "k2027", "--json"], {})
    assert result.returncode == 0
    doc = as_json(result)
    assert doc["key_id"] == "k2027" and doc["entry"].startswith("k2027:")

    env = dict(world["env"], TENANT_BACKUP_KEYS=f"{doc['entry']},{KEYS}")
    result = CLI.run(["keys", "rewrap", "--json"], env)
    assert result.returncode == 0, result.stderr
    doc = as_json(result)
    assert (doc["active_key"], doc["rewrapped"], doc["skipped"], doc["failed"]) == ("k2027", 4, 0, 0)
    assert {c["location"] for c in doc["copies"]} == {"local", "r2"}
    again = as_json(CLI.run(["keys", "rewrap", "--json"], env))
    assert (again["rewrapped"], again["skipped"]) == (0, 4)


# ------------------------------------------------------------------------- the registry's display names


@pytest.fixture
def crm_registry(fresh_db):
    """A registry that is not the sample's: another schema, table and column names, text ids."""
    dsn = fresh_db("crm_registry")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA crm; CREATE TABLE crm.orgs (org_key text, title text, lifecycle text)")
        cur.execute(
            "INSERT INTO crm.orgs VALUES ('17', 'Acme Jewellers', 'live'), ('4', NULL, 'live'),"
            " ('23', E'Evil\\x1b[31m Corp\\u202e', 'live'), ('x y', 'bad id', 'live'),"
            " ('99', 'Gone Ltd', 'closed')"
        )
    conn.close()
    return dsn


def test_registry_query_with_one_two_or_three_columns(crm_registry):
    base = dict(dsn=crm_registry, tenant_id_pattern="[0-9]+")
    ids_only = SourceSettings(**base, tenants_query="SELECT org_key FROM crm.orgs WHERE lifecycle = 'live'")
    assert list_tenants(ids_only) == ["17", "23", "4"]
    assert all(r.name is None for r in read_registry(ids_only))
    assert is_listed(ids_only, "17") and not is_listed(ids_only, "99")

    named = SourceSettings(
        **base, tenants_query="SELECT org_key, title, lifecycle FROM crm.orgs WHERE lifecycle = 'live'"
    )
    records = {r.id: r for r in read_registry(named)}
    assert set(records) == {"17", "23", "4"}  # the malformed id skipped
    assert (records["17"].name, records["17"].status, records["17"].label) == (
        "Acme Jewellers",
        "live",
        "Acme Jewellers (17)",
    )
    assert records["4"].name is None and records["4"].label == "4"
    assert records["23"].name == "Evil [31m Corp"  # no escape or bidi control reaches a terminal
    assert tenant_name(named, "17") == "Acme Jewellers" and tenant_name(named, "99") is None
    assert tenant_name(ids_only, "17") is None
    assert is_listed(named, "23") and not is_listed(named, "99")


def test_labels():
    tid = "3f14c0de-0000-4000-8000-000000000001"
    assert display_label(tid, "Acme Jewellers") == "Acme Jewellers (3f14…)"
    assert display_label(tid, None) == tid
    assert clean_name("  a\n\tb  ") == "a b" and clean_name("") is None and clean_name(None) is None
    assert len(clean_name("x" * 500)) == 60
