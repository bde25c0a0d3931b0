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
    Config,
    ConfigurableIOManager,
    ConfigurableResource,
    EnvVar,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)
from pydantic import Field, PrivateAttr

from ..core.archive.manifest import Manifest
from ..core.archive.seal import read_manifest
from ..core.codec.keyring import Keyring
from ..core.errors import TenantBackupError
from ..core.locations import Location, registry
from ..core.settings import OPTIONS, Settings, SourceSettings
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


BACKUP_ID_METADATA = "backup_id"  # a location asset's metadata: the backup its materialization stored
WORK_DIR = "TENANT_BACKUP_WORK_DIR"  # always explicit in the resource: staging and scratch files live there


class LocationConfig(Config):
    """One configured storage location, as the UI shows it: its kind's variables (declared in the kind's
    module, core/locations/registry.py), the secrets among them as EnvVar (shown by name only)."""

    kind: str = Field(description="the location kind (core/locations/registry.py)")
    retention_days: Optional[int] = Field(None, description="TENANT_BACKUP_RETENTION_<NAME>_DAYS (unset: the kind's)")
    settings: Dict[str, str] = Field({}, description="its variables that are set, but its secrets")
    secrets: Dict[str, str] = Field({}, description="its secret variables (EnvVar: shown by name only)")


# The general settings that are secrets (a location kind's are in its LocationConfig): each its own
# resource field, filled through EnvVar (never shown in the UI, never in run config).
SECRETS = {o.field: o.var for o in OPTIONS if o.secret} | {v.lower(): v for v in registry.secret_variables()}


def _secret_looking(var: str) -> bool:
    return var.endswith(("_DSN", "_KEY", "_KEYS", "_PASSWORD", "_TOKEN", "_SECRET", "_WEBHOOK"))


def _resolved(value):
    """An EnvVar's value (Dagster resolves them for a run; a resource used outside one, by a sensor's
    or a test's hand, still holds them), in a value or the values of a dict."""
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    return value.get_value() if isinstance(value, EnvVar) else value


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


class _BackupResource(ConfigurableResource):
    """tenant-backup's configuration (core/settings.py) as the UI shows it, typed: one field per general
    setting (core/settings.py OPTIONS; unset: None, its default applies), `storage` one entry per
    configured location (its kind's variables), secrets as EnvVar (shown by name only). The fields are
    made from OPTIONS (BackupResource below), so a setting is declared once. `get_settings()` is the
    Settings the core is called with: the one this process parsed for the same variables (the code
    location's, the CLI's), so the keyring and the clients are built once per process."""

    work_dir: str
    storage: Dict[str, LocationConfig] = Field({}, description="one entry per configured storage location")
    other: Dict[str, str] = Field({}, description="variables no setting declares (kept as they are)")
    other_secrets: Dict[str, str] = Field({}, description="the same, that look like secrets (EnvVar)")
    _settings: Optional[Settings] = PrivateAttr(None)

    @classmethod
    def from_settings(cls, settings: Settings) -> "BackupResource":
        """The resource for `settings`: a secret read from the process environment becomes an EnvVar of
        its variable (resolved by Dagster where the step runs, shown by name only); one a caller put
        into the Settings itself (an embedding application, a test) is passed as it is."""
        env = {k: v for k, v in settings.environ.items() if v.strip()}

        def secret(var: str):
            return EnvVar(var) if var in settings.from_process else env[var]

        fields: dict = {}
        for option in OPTIONS:
            if option.var in env and option.var != WORK_DIR:
                fields[option.field] = secret(option.var) if option.secret else option.typed(env[option.var])
            env.pop(option.var, None)
        locations = {}
        for name in settings.location_names:
            kind = registry.kind(name)
            days = env.pop(kind.retention_variable, None)
            mine = {v.name: v for v in kind.variables if v.name in env}
            locations[name] = LocationConfig(
                kind=kind.name,
                retention_days=int(days) if days is not None else None,
                settings={n: env.pop(n) for n, v in mine.items() if not v.secret},
                secrets={n: secret(n) for n, v in mine.items() if v.secret},
            )
            for n in mine:
                env.pop(n, None)
        hidden = registry.secret_variables()
        other = {k: v for k, v in env.items() if k not in hidden and not _secret_looking(k)}
        other_secrets = {k: secret(k) for k in env if k not in other}
        resource = cls(
            work_dir=settings.work_dir, storage=locations, other=other, other_secrets=other_secrets, **fields
        )
        resource._settings = settings  # this process's; a copy Dagster makes from the config rebuilds it once
        return resource

    def get_settings(self) -> Settings:
        """The Settings of this resource's values (parsed once per process)."""
        if self._settings is None:
            values = {WORK_DIR: self.work_dir, **self.other, **_resolved(self.other_secrets)}
            for option in OPTIONS:
                value = getattr(self, option.field, None)
                if value is not None and option.var != WORK_DIR:
                    values[option.var] = option.text(_resolved(value))
            for location in self.storage.values():
                values.update(location.settings)
                values.update(_resolved(location.secrets))
                if location.retention_days is not None:
                    values[registry.kind(location.kind).retention_variable] = str(location.retention_days)
            self._settings = Settings.of(tuple(sorted(values.items())))
        return self._settings

    def source_settings(self) -> SourceSettings:
        return self.get_settings().source

    def keyring(self) -> Keyring:
        return self.get_settings().keyring()

    def location(self, name: str) -> Location:
        """The configured location `name`, cached per process and configuration."""
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


def _typed_fields() -> dict:
    """One typed field per general setting, from core/settings.py OPTIONS (each declared once)."""
    annotations: dict = {}
    namespace: dict = {}
    for option in OPTIONS:
        if option.var == WORK_DIR:
            continue
        annotations[option.field] = Optional[str if option.secret else option.type]
        default = "" if option.default is None else f"; default {option.default}"
        namespace[option.field] = Field(None, description=f"{option.var}: {option.help}{default}")
    return {"__annotations__": annotations, **namespace}


BackupResource = type(
    "BackupResource",
    (_BackupResource,),
    {"__module__": __name__, "__doc__": _BackupResource.__doc__, **_typed_fields()},
)


class StagingIOManager(ConfigurableIOManager):
    """Keeps the archive asset's handle beside the staged archive: <work>/staging/<tenant>/latest.json.
    A later run (a location re-run alone) loads it back; the archive itself is never pickled."""

    work_dir: str

    def handle_output(self, context: OutputContext, obj: ArchiveHandle) -> None:
        stage_handle(self.work_dir, obj)

    def load_input(self, context: InputContext) -> ArchiveHandle:
        return load_staged(self.work_dir, context.partition_key)


def _pointer(work_dir: str, tenant_id: str) -> Path:
    return Path(work_dir) / "staging" / tenant_id / "latest.json"


def stage_handle(work_dir: str, obj: ArchiveHandle) -> None:
    """The archive's handle beside it: what a later run of a location alone loads (load_staged)."""
    pointer = _pointer(work_dir, obj.tenant_id)
    temp = pointer.with_suffix(".tmp")
    with permanent_failures(temp):  # a full or read-only work directory: not retried
        pointer.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp.write_text(obj.to_json())
        os.replace(temp, pointer)


def load_staged(work_dir: str, tenant_id: str) -> ArchiveHandle:
    with permanent_failures():  # nothing staged: a retry minutes later finds nothing either
        pointer = _pointer(work_dir, tenant_id)
        if not pointer.exists():
            raise TenantBackupError(f"no staged archive for tenant {tenant_id}: materialize tenant_archive first")
        handle = ArchiveHandle.from_json(pointer.read_text())
        if not Path(handle.path).exists():
            raise TenantBackupError(
                f"the staged archive {handle.path} of tenant {tenant_id} is gone: re-materialize tenant_archive"
            )
        return handle


def store_copy(location: str, backup: "BackupResource", obj: ArchiveHandle) -> dict:
    """Store the archive in one location; the copy asset's metadata. A permanent storage error
    (configuration, credentials, missing bucket) is a Failure at once; a transient one is raised as it
    is (retried by the caller). The local location writes files on this machine: a full, read-only or
    forbidden disk is permanent too, named with the copy's path."""
    import time

    started = time.monotonic()
    with permanent_failures(local_files=False):
        loc = backup.location(location)
        destination = _local_path(loc.uri(obj.tenant_id, obj.backup_id))
    with permanent_failures(destination, local_files=location == "local"):
        stored = loc.put(obj.tenant_id, obj.backup_id, Path(obj.path), obj.manifest)
    return {
        "location": location,
        "uri": MetadataValue.text(stored.uri),
        BACKUP_ID_METADATA: obj.backup_id,
        "stored_bytes": MetadataValue.int(stored.size),
        "sha256": stored.sha256,
        "upload_seconds": MetadataValue.float(round(time.monotonic() - started, 3)),
    }


class LocationIOManager(ConfigurableIOManager):
    """Stores an archive in one storage location and loads back a handle on the backup that asset's
    materialization stored (this run's, when it ran in this run), configured by the backup resource."""

    location: str
    backup: ResourceDependency[BackupResource]

    def build(self) -> Location:
        return self.backup.location(self.location)

    def handle_output(self, context: OutputContext, obj: ArchiveHandle) -> None:
        context.add_output_metadata(store_copy(self.location, self.backup, obj))

    def load_input(self, context: InputContext) -> StoredHandle:
        with permanent_failures(local_files=False):
            tenant_id = context.partition_key
            backup_id = stored_backup_id(context.instance, context.asset_key, tenant_id, _run_id(context))
            if backup_id is None:
                raise TenantBackupError(f"{context.asset_key.to_user_string()} of tenant {tenant_id} was never stored")
            location = self.build()
            manifest, _sealed = read_manifest(location, tenant_id, backup_id, self.backup.keyring())
            return StoredHandle(self.location, tenant_id, backup_id, location.uri(tenant_id, backup_id), manifest)


def _run_id(context: InputContext) -> str | None:
    """The run loading the input (None outside a run: a test's context)."""
    try:
        return context.step_context.run_id
    except Exception:  # noqa: BLE001 - no step context
        return None


def stored_backup_id(instance, asset_key: AssetKey, tenant_id: str, run_id: str | None = None) -> str | None:
    """The backup id the asset's materialization of this tenant stored (its `backup_id` metadata): the
    one of run `run_id` when that run materialized it, else the latest; None when never materialized."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[tenant_id]), limit=20
    ).records
    chosen = next((r for r in records if r.run_id == run_id), records[0] if records else None)
    if chosen is None or chosen.asset_materialization is None:
        return None
    value = chosen.asset_materialization.metadata.get(BACKUP_ID_METADATA)
    return getattr(value, "value", value)


def _local_path(uri: str) -> str:
    """/path/to/file for a file:// URI (the local location's); any other URI as it is."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    return unquote(parts.path) if parts.scheme == "file" else uri
