"""Issue 19.3: settings are built once per process at the edge and handed down typed. The Dagster
resource carries typed fields (secrets as EnvVar) and gives back the Settings the code location built;
the keyring is parsed once; process-wide effects happen once; tenant ids are validated in one place,
compiled once, and a bad pattern is refused when the settings load."""

from __future__ import annotations

import warnings
from unittest import mock

import pytest
from conftest import CLI, EXIT
from dagster import EnvVar

from backup_assets.core.codec.keyring import Keyring
from backup_assets.core.errors import ConfigError, InvalidTenantId
from backup_assets.core.options import OPTIONS
from backup_assets.core.settings import Settings
from backup_assets.core.source import tenant_ids

warnings.filterwarnings("ignore", category=Warning, module="dagster")


@pytest.fixture
def env(keys, tmp_path, monkeypatch):
    values = {
        "TENANT_BACKUP_SOURCE_DSN": "postgresql://backup@db.invalid/app",
        "TENANT_BACKUP_KEYS": keys,
        "TENANT_BACKUP_LOCATIONS": "local",
        "TENANT_BACKUP_LOCAL_DIR": str(tmp_path / "local"),
        "TENANT_BACKUP_WORK_DIR": str(tmp_path / "work"),
        "TENANT_BACKUP_RETRIES": "2",
        "TENANT_BACKUP_MAX_AGE_DAYS": "3.5",
        "TENANT_BACKUP_DASK_ALLOW_PLAINTEXT": "yes",
        "TENANT_BACKUP_RETENTION_LOCAL_DAYS": "9",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_a_bad_tenant_id_pattern_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"TENANT_BACKUP_TENANT_ID_PATTERN='\[a-' is not a valid regular expression"):
        Settings.from_env({"TENANT_BACKUP_TENANT_ID_PATTERN": "[a-"})
    result = CLI.run(["list"], {"TENANT_BACKUP_TENANT_ID_PATTERN": "(", "TENANT_BACKUP_LOCAL_DIR": str(tmp_path)})
    assert "TENANT_BACKUP_TENANT_ID_PATTERN" in CLI.error(result, EXIT["config"])


def test_tenant_ids_are_validated_in_one_place_compiled_once():
    with mock.patch("re.compile", wraps=__import__("re").compile) as compiled:
        settings = Settings.from_env({"TENANT_BACKUP_TENANT_ID_PATTERN": "org-[0-9]{1,6}"})
        rule = settings.tenant_ids
        for _ in range(50):
            assert rule.validate("org-42") == "org-42"
            assert tenant_ids.validate_tenant_id("org-7", rule) == "org-7"
        with pytest.raises(InvalidTenantId):
            rule.validate("org-x")
        patterns = [c.args[0] for c in compiled.call_args_list]
    assert patterns.count("org-[0-9]{1,6}") <= 1  # once (or cached from an earlier test)
    assert Settings.from_env({}).tenant_ids.validate("7F3E1C2A-0B4D-4E5F-8A9B-0C1D2E3F4A5B") == (
        "7f3e1c2a-0b4d-4e5f-8a9b-0c1d2e3f4a5b"
    )


def test_the_resource_is_typed_and_gives_back_the_process_s_settings(env):
    from backup_assets.defs.build import build_definitions

    settings = Settings.from_env()
    defs = build_definitions(settings)
    backup = defs.resources["backup"]
    # Typed fields, one per setting (core/options.py OPTIONS), as the UI shows them.
    assert (backup.retries, backup.max_age_days, backup.dask_allow_plaintext) == (2, 3.5, True)
    assert backup.weekly_mode is None  # unset: its default applies (named in the field's description)
    fields = type(backup).model_fields
    assert {o.field for o in OPTIONS if o.var != "TENANT_BACKUP_WORK_DIR"} <= set(fields)
    assert "TENANT_BACKUP_RETRIES" in fields["retries"].description
    # Secrets as EnvVar: shown by name only.
    secrets = {"source_dsn": "TENANT_BACKUP_SOURCE_DSN", "master_keys": "TENANT_BACKUP_KEYS"}
    assert {f: (type(getattr(backup, f)), getattr(backup, f).env_var_name) for f in secrets} == {
        f: (EnvVar, var) for f, var in secrets.items()
    }
    local = backup.storage["local"]
    assert (local.kind, local.retention_days, local.settings) == (
        "local",
        9,
        {"TENANT_BACKUP_LOCAL_DIR": env["TENANT_BACKUP_LOCAL_DIR"]},
    )
    # Handed back: the very Settings the code location built, for every accessor.
    assert backup.get_settings() is settings and backup.get_settings() is backup.get_settings()
    assert backup.get_settings().max_age_days == 3.5 and backup.location("local").retention_days == 9
    # A copy made from its config (what Dagster does for a run) parses the same settings, once.
    rebuilt = type(backup)(**{name: getattr(backup, name) for name in fields})
    again = rebuilt.get_settings()
    assert again is rebuilt.get_settings() and again == Settings.of(again.variables)
    assert (again.retries, again.max_age_days, again.dask_allow_plaintext, again.work_dir) == (
        2,
        3.5,
        True,
        settings.work_dir,
    )
    assert again.source.dsn == settings.source.dsn and again.keyring().ids == settings.keyring().ids


def test_the_keyring_is_parsed_once_and_process_wide_effects_happen_once(env):
    from backup_assets.core.source import pgbin
    from backup_assets.defs.build import build_definitions

    with (
        mock.patch.object(Keyring, "from_env", wraps=Keyring.from_env) as parsed,
        mock.patch.object(pgbin, "configure") as configured,
    ):
        settings = Settings.from_env({**env, "TENANT_BACKUP_PG_BIN": "/opt/once/bin"})
        settings.apply_process_wide()  # the edge
        backup = build_definitions(settings).resources["backup"]
        for _ in range(5):
            backup.keyring()
            settings.keyring()
            backup.get_settings().apply_process_wide()
    assert parsed.call_count == 1
    assert [c.args for c in configured.call_args_list] == [("/opt/once/bin",)]
