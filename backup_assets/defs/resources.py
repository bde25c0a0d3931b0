"""Dagster resources and IO managers. Thin: they hold configuration and call the core.

What passes between assets is an ArchiveHandle (path + manifest), never the archive's bytes.
"""

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    ConfigurableIOManager,
    ConfigurableResource,
    EnvVar,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)

from ..core.archive.manifest import Manifest
from ..core.archive.seal import read_manifest
from ..core.codec.keyring import Keyring
from ..core.errors import TenantBackupError
from ..core.locations import Location
from ..core.settings import Settings, SourceSettings
from .failures import permanent_failures


@dataclass(frozen=True)
class ArchiveHandle:
    """An archive on local disk and its manifest; what the archive asset hands to the locations.
    The manifest's drill record (Manifest.drill) says which bytes the restore drill proved."""

    tenant_id: str
    backup_id: str
    path: str
    manifest: Manifest  # what every location stores beside its copy

    @property
    def sha256(self) -> str:
        return self.manifest.checksum()[0]

    @property
    def proven(self) -> bool:
        """The isolation check and restore drill passed on exactly these bytes."""
        return self.manifest.drill_proved()

    def to_json(self) -> str:
        return json.dumps({"path": self.path, "manifest": self.manifest.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> "ArchiveHandle":
        data = json.loads(text)
        manifest = Manifest.from_dict(data["manifest"])
        return cls(manifest.tenant_id, manifest.backup_id, data["path"], manifest)


@dataclass(frozen=True)
class StoredHandle:
    """A backup as stored in one location; what a location asset's IO manager gives back on load."""

    location: str
    tenant_id: str
    backup_id: str
    uri: str
    manifest: Manifest  # authenticated (its seal) before it was handed on


# The settings that are secrets: each its own resource field, filled through EnvVar (never shown in the
# UI, never in run config). Every other setting is shown in the UI in BackupResource.settings.
SECRETS = {
    "source_dsn": "TENANT_BACKUP_SOURCE_DSN",
    "master_keys": "TENANT_BACKUP_KEYS",
    "tenants_dsn": "TENANT_BACKUP_TENANTS_DSN",
    "scratch_dsn": "TENANT_BACKUP_SCRATCH_DSN",
    "alert_webhook": "TENANT_BACKUP_ALERT_WEBHOOK",
    "r2_access_key_id": "R2_ACCESS_KEY_ID",
    "r2_secret_access_key": "R2_SECRET_ACCESS_KEY",
    "b2_application_key_id": "B2_APPLICATION_KEY_ID",
    "b2_application_key": "B2_APPLICATION_KEY",
}


@lru_cache(maxsize=16)
def _settings(variables: tuple) -> Settings:
    settings = Settings(variables)
    settings.apply_process_wide()
    return settings


@lru_cache(maxsize=16)
def _cached_location(name: str, settings: Settings) -> Location:
    """Built once per process and configuration: an S3 client costs ~0.2 s to build, and every step
    and check of every tenant needs one."""
    return settings.locations([name])[name]


_POOLS: dict[str, object] = {}


def _scratch_pool(admin_dsn: str):
    """One ScratchPool per scratch server and process, closed (its database dropped) at exit."""
    pool = _POOLS.get(admin_dsn)
    if pool is None:
        import atexit

        from ..core.checks.scratch import ScratchPool

        pool = _POOLS[admin_dsn] = ScratchPool(admin_dsn)
        atexit.register(pool.close, quiet=True)
    return pool


class BackupResource(ConfigurableResource):
    """tenant-backup's configuration (core/settings.py), as the UI shows it: `settings` holds every
    TENANT_BACKUP_* / R2_* / B2_* variable that is not a secret; each secret is its own field, given
    as an EnvVar (shown by name only). `get_settings()` is the Settings the core is called with."""

    work_dir: str
    settings: Dict[str, str] = {}
    master_keys_file: Optional[str] = None  # TENANT_BACKUP_KEYS_FILE: a path, not a secret
    source_dsn: Optional[str] = None
    master_keys: Optional[str] = None
    tenants_dsn: Optional[str] = None
    scratch_dsn: Optional[str] = None
    alert_webhook: Optional[str] = None
    r2_access_key_id: Optional[str] = None
    r2_secret_access_key: Optional[str] = None
    b2_application_key_id: Optional[str] = None
    b2_application_key: Optional[str] = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "BackupResource":
        """The resource for `settings`: a secret read from the process environment becomes an EnvVar of
        its variable (resolved by Dagster where the step runs, shown by name only); one a caller put
        into the Settings itself (an embedding application, a test) is passed as it is."""
        env = settings.environ
        secret_vars = set(SECRETS.values())
        shown = {k: v for k, v in env.items() if k not in secret_vars and k != "TENANT_BACKUP_KEYS_FILE"}
        secrets = {
            field: EnvVar(var) if var in settings.from_process else env[var]
            for field, var in SECRETS.items()
            if (env.get(var) or "").strip()
        }
        keys_file = (env.get("TENANT_BACKUP_KEYS_FILE") or "").strip() or None
        return cls(work_dir=settings.work_dir, settings=shown, master_keys_file=keys_file, **secrets)

    def get_settings(self) -> Settings:
        values = dict(self.settings)
        values["TENANT_BACKUP_WORK_DIR"] = self.work_dir
        if self.master_keys_file:
            values["TENANT_BACKUP_KEYS_FILE"] = self.master_keys_file
        for field, var in SECRETS.items():
            value = getattr(self, field)
            if value:
                values[var] = value
        return _settings(tuple(sorted(values.items())))

    def source_settings(self) -> SourceSettings:
        return self.get_settings().source

    def keyring(self) -> Keyring:
        return self.get_settings().keyring()

    def location(self, name: str) -> Location:
        """The configured location `name` (local, r2 or b2), cached per process and configuration."""
        return _cached_location(name, self.get_settings())

    def location_names(self) -> list[str]:
        return self.get_settings().location_names

    def scratch_admin_dsn(self, major: int | None = None) -> str:
        """Where restore drills create their scratch databases: TENANT_BACKUP_SCRATCH_DSN (a role that
        may CREATE DATABASE), else an embedded PostgreSQL kept under the work directory, of the
        source's `major` where its server programs are installed (docs/COMPATIBILITY.md)."""
        settings = self.get_settings()
        if settings.scratch_dsn:
            return settings.scratch_dsn
        from ..core.checks.scratch import embedded_scratch_dsn

        return embedded_scratch_dsn(
            self.work_dir, idle_s=settings.scratch_idle_s, major=major, server_dirs=settings.scratch_pg_bin
        )

    def scratch_pool(self, major: int | None = None):
        """This process's pool of scratch databases on the scratch server for a source of PostgreSQL
        `major` (core/checks/scratch.py)."""
        return _scratch_pool(self.scratch_admin_dsn(major))

    def scratch_files_dir(self) -> str:
        path = Path(self.work_dir) / "tmp"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(path)

    def staging_dir(self, tenant_id: str) -> Path:
        path = Path(self.work_dir) / "staging" / tenant_id
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path


class StagingIOManager(ConfigurableIOManager):
    """Keeps the archive asset's handle beside the staged archive: <work>/staging/<tenant>/latest.json.
    A later run (a location re-run alone) loads it back; the archive itself is never pickled."""

    work_dir: str

    def _pointer(self, tenant_id: str) -> Path:
        return Path(self.work_dir) / "staging" / tenant_id / "latest.json"

    def handle_output(self, context: OutputContext, obj: ArchiveHandle) -> None:
        pointer = self._pointer(obj.tenant_id)
        temp = pointer.with_suffix(".tmp")
        with permanent_failures(temp):  # a full or read-only work directory: not retried
            pointer.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temp.write_text(obj.to_json())
            os.replace(temp, pointer)

    def load_input(self, context: InputContext) -> ArchiveHandle:
        with permanent_failures():  # nothing staged: a retry minutes later finds nothing either
            return self._load(context.partition_key)

    def _load(self, tenant_id: str) -> ArchiveHandle:
        pointer = self._pointer(tenant_id)
        if not pointer.exists():
            raise TenantBackupError(f"no staged archive for tenant {tenant_id}: materialize tenant_archive first")
        handle = ArchiveHandle.from_json(pointer.read_text())
        if not Path(handle.path).exists():
            raise TenantBackupError(
                f"the staged archive {handle.path} of tenant {tenant_id} is gone: re-materialize tenant_archive"
            )
        return handle


class LocationIOManager(ConfigurableIOManager):
    """Stores an archive in one storage location and loads back a handle on the backup that asset's
    materialization stored (this run's, when it ran in this run), configured by the backup resource."""

    location: str
    backup: ResourceDependency[BackupResource]

    def build(self) -> Location:
        return self.backup.location(self.location)

    def handle_output(self, context: OutputContext, obj: ArchiveHandle) -> None:
        import time

        started = time.monotonic()
        # A permanent storage error (configuration, credentials, missing bucket) fails the step at once;
        # a transient one is retried. The local location writes files on this machine: a full,
        # read-only or forbidden disk is permanent too, named with the copy's path.
        with permanent_failures(local_files=False):
            location = self.build()
            destination = _local_path(location.uri(obj.tenant_id, obj.backup_id))
        with permanent_failures(destination, local_files=self.location == "local"):
            stored = location.put(obj.tenant_id, obj.backup_id, Path(obj.path), obj.manifest)
        context.add_output_metadata(
            {
                "location": self.location,
                "uri": MetadataValue.text(stored.uri),
                "backup_id": obj.backup_id,
                "stored_bytes": MetadataValue.int(stored.size),
                "sha256": stored.sha256,
                "upload_seconds": MetadataValue.float(round(time.monotonic() - started, 3)),
            }
        )

    def load_input(self, context: InputContext) -> StoredHandle:
        with permanent_failures(local_files=False):
            tenant_id = context.partition_key
            backup_id = stored_backup_id(context.instance, context.asset_key, tenant_id, context.run_id)
            if backup_id is None:
                raise TenantBackupError(f"{context.asset_key.to_user_string()} of tenant {tenant_id} was never stored")
            location = self.build()
            manifest, _sealed = read_manifest(location, tenant_id, backup_id, self.backup.keyring())
            return StoredHandle(self.location, tenant_id, backup_id, location.uri(tenant_id, backup_id), manifest)


def stored_backup_id(instance, asset_key: AssetKey, tenant_id: str, run_id: str | None = None) -> str | None:
    """The backup id the asset's materialization of this tenant stored (its `backup_id` metadata): the
    one of run `run_id` when that run materialized it, else the latest; None when never materialized."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[tenant_id]), limit=20
    ).records
    chosen = next((r for r in records if r.run_id == run_id), records[0] if records else None)
    if chosen is None or chosen.asset_materialization is None:
        return None
    value = chosen.asset_materialization.metadata.get("backup_id")
    return getattr(value, "value", value)


def _local_path(uri: str) -> str:
    """/path/to/file for a file:// URI (the local location's); any other URI as it is."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    return unquote(parts.path) if parts.scheme == "file" else uri
