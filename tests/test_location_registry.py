"""Issue 19.1: one registry of location kinds. A fourth kind (tests/memory_location.py, an in-memory
"vault"), registered without editing anything under defs/ or cli/, is everywhere the built-in kinds are:
the settings, the Dagster definitions (its asset, IO manager and checks, its variables in the
resource, secrets as EnvVar), `tenant-backup backup`, `status`, `restore --location auto` (in the
place its kind declares) and the alerts (BACKUP_FAILURE and INTEGRITY_FAILURE name it)."""

from __future__ import annotations

import json
import warnings

import memory_location
import pytest
from dagster import AssetKey, EnvVar

from backup_assets.cli import main
from backup_assets.core.codec.keyring import generate_entry
from backup_assets.core.locations import registry
from backup_assets.core.maintenance import alerts
from backup_assets.core.settings import Settings

warnings.filterwarnings("ignore", category=Warning, module="dagster")
KEYS = generate_entry("vault1")


@pytest.fixture
def vault():
    registry.register(memory_location.KIND)
    try:
        yield memory_location.KIND
    finally:
        registry.unregister("vault")
        memory_location.STORES.clear()


@pytest.fixture
def env(vault, sample_db, sample_tenants, pg_server_dsn, tmp_path, monkeypatch):
    values = {
        "TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn,
        "TENANT_BACKUP_KEYS": KEYS,
        "TENANT_BACKUP_LOCATIONS": "local,vault",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_SCRATCH_DSN": pg_server_dsn,
        "TENANT_BACKUP_RETRIES": "0",
        "VAULT_BUCKET": "b1",
        "VAULT_TOKEN": "vault-token-canary",
    }
    for name in [k for k in __import__("os").environ if k.startswith("TENANT_BACKUP_") or k == "DAGSTER_HOME"]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def cli(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([args[0], "--json", *args[1:]])
    return code, json.loads(capsys.readouterr().out)


def test_the_kinds_declare_what_everything_else_iterates():
    kinds = registry.kinds()
    assert [k.name for k in kinds][:1] == ["local"] and len(kinds) >= 3
    for kind in kinds:
        assert kind.module.startswith("backup_assets.core.locations."), kind
        assert kind.retention_variable == f"TENANT_BACKUP_RETENTION_{kind.name.upper()}_DAYS"
        assert registry.kind_of_asset(f"{kind.name}_copy") == kind.name
    assert registry.kind_of_asset("tenant_archive") is None
    with pytest.raises(Exception, match="unknown storage location 'nope'"):
        registry.kind("nope")


def test_settings_keep_every_kind_s_variables(vault):
    # A kind's variables need no TENANT_BACKUP_ prefix: the registry says which ones it reads.
    settings = Settings.from_env({"VAULT_BUCKET": "b", "VAULT_TOKEN": "t", "AZURE_OTHER": "dropped"})
    assert settings.get("VAULT_BUCKET") == "b" and settings.get("VAULT_TOKEN") == "t"
    assert settings.get("AZURE_OTHER") == ""
    with pytest.raises(Exception, match="set VAULT_TOKEN"):
        Settings.from_env({"TENANT_BACKUP_LOCATIONS": "vault", "VAULT_BUCKET": "b"}).locations()
    assert vault.name not in registry.default_names()  # not in the default TENANT_BACKUP_LOCATIONS


def test_a_fourth_kind_is_everywhere(env, sample_tenants, fresh_db, capsys):
    from backup_assets.defs.build import build_definitions

    tenant = sample_tenants[0].id
    defs = build_definitions(Settings.from_env())
    # The Dagster definitions: its asset (with its kind's UI tag), IO manager and checks.
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"tenant_archive", "local_copy", "vault_copy"} <= keys
    vault_asset = defs.resolve_assets_def("vault_copy")
    assert "memory" in (vault_asset.specs_by_key[AssetKey("vault_copy")].kinds or set())
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {("vault_copy", "checksum"), ("vault_copy", "integrity")} <= checks
    assert "vault_io_manager" in defs.resources
    # The resource: the kind's variables typed by location, its secret as an EnvVar (never its value).
    stored = defs.resources["backup"].storage["vault"]
    assert stored.kind == "vault" and stored.settings == {"VAULT_BUCKET": "b1"}
    assert stored.secrets == {"VAULT_TOKEN": EnvVar("VAULT_TOKEN")}

    # The CLI's backup: a run that stores into the vault and checks its copy.
    code, doc = cli(capsys, "backup", "--tenant", tenant, "--workers", "1")
    assert code == 0, doc
    [outcome] = doc["tenants"]
    assert outcome["steps"] == {"tenant_archive": "ok", "local_copy": "ok", "vault_copy": "ok"}
    assert outcome["checks"]["vault_copy:checksum"] and outcome["checks"]["vault_copy:integrity"]

    # status: the vault's copy, fresh and verified (by its copy checks, deep).
    code, doc = cli(capsys, "status")
    copies = {(c["tenant_id"], c["location"]): c for c in doc["copies"]}
    assert copies[(tenant, "vault")]["state"] == "ok" and copies[(tenant, "vault")]["verified"] == "ok"
    assert copies[(tenant, "vault")]["verified_deep"] is True
    assert doc["locations"] == ["local", "vault"]

    # restore --location auto: the vault first (its kind's place), the local disk when it fails.
    target = fresh_db("vaultauto")
    code, doc = cli(capsys, "restore", "--tenant", tenant, "--location", "auto", "--target-dsn", target)
    assert code == 0 and doc["location"] == "vault", doc
    archive = next(k for k in memory_location.STORES["b1"] if k.endswith(".tbk"))
    data, sha, mtime = memory_location.STORES["b1"][archive]
    memory_location.STORES["b1"][archive] = (data[:-1] + bytes([data[-1] ^ 1]), sha, mtime)
    target = fresh_db("vaultauto2")
    code, doc = cli(capsys, "restore", "--tenant", tenant, "--location", "auto", "--target-dsn", target)
    assert code == 0 and doc["location"] == "local" and doc["skipped"][0][0] == "vault", doc

    # verify --deep finds the damaged vault copy, and so do its Dagster checks, whose INTEGRITY_FAILURE
    # alert names the location.
    code, doc = cli(capsys, "verify", "--tenant", tenant, "--deep")
    assert code == 1 and {c["location"]: c["state"] for c in doc["copies"]} == {"local": "ok", "vault": "failed"}
    from dagster import AssetCheckKey, instance_for_test

    from backup_assets.defs.resources import stored_backup_id

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [tenant])
        # The checks alone re-check the copy the instance's latest materialization stored: back up
        # in this instance, damage that copy, then run the two checks without the assets.
        stored = defs.resolve_job_def("tenant_backup").execute_in_process(partition_key=tenant, instance=instance)
        assert stored.success
        backup_id = stored_backup_id(instance, AssetKey("vault_copy"), tenant)
        archive = next(k for k in memory_location.STORES["b1"] if f"/{backup_id}/" in k and k.endswith(".tbk"))
        data, sha, mtime = memory_location.STORES["b1"][archive]
        memory_location.STORES["b1"][archive] = (data[:-1] + bytes([data[-1] ^ 1]), sha, mtime)
        keys = {AssetCheckKey(AssetKey("vault_copy"), name) for name in ("checksum", "integrity")}
        job = defs.resolve_job_def("tenant_backup").get_subset(asset_selection=set(), asset_check_selection=keys)
        result = job.execute_in_process(partition_key=tenant, instance=instance, raise_on_error=False)
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        "checksum": False,
        "integrity": False,
    }
    failed = [a for a in alerts.read_alerts(Settings.from_env()) if a["kind"] == alerts.INTEGRITY_FAILURE]
    assert failed and {a["location"] for a in failed} == {"vault"}, failed


def test_a_failing_fourth_kind_alerts_with_its_name(env, sample_tenants, monkeypatch, capsys):
    from dagster import DagsterEventType, build_run_status_sensor_context, instance_for_test

    from backup_assets.defs.automation.triggers import backup_failure_alerts
    from backup_assets.defs.build import build_definitions
    from backup_assets.defs.runs.in_process import run_tenant

    monkeypatch.setenv("VAULT_BUCKET", "down")
    settings = Settings.from_env()
    defs = build_definitions(settings)
    tenant = sample_tenants[1].id
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [tenant])
        outcome = run_tenant(defs, instance, tenant)
        assert outcome.steps == {"tenant_archive": "ok", "local_copy": "ok", "vault_copy": "failed"}, outcome
        assert "the vault refuses every request" in outcome.reason
        run = instance.get_run_by_id(outcome.run_id)
        failure = next(
            r.dagster_event
            for r in instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
            if r.dagster_event
        )
        context = build_run_status_sensor_context(
            sensor_name="backup_failure_alerts",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=run,
            resources={"backup": defs.resources["backup"]},
        )
        backup_failure_alerts(context.for_run_failure())
    recorded = [a for a in alerts.read_alerts(settings) if a["kind"] == alerts.BACKUP_FAILURE]
    assert [a["location"] for a in recorded] == ["vault"], recorded
    assert "vault-token-canary" not in json.dumps(recorded)
