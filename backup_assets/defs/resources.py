"""Dagster resources and IO managers. Thin: they hold configuration and call the core.

What passes between assets is an ArchiveHandle (path + manifest), never the archive's bytes.
"""


import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, MetadataValue, OutputContext

from ..core.errors import TenantBackupError
from ..core.codec.keyring import Keyring
from ..core.settings import SourceSettings
from ..core.locations import Location, locations_from_env


@dataclass(frozen=True)
class ArchiveHandle:
    """An archive on local disk and its manifest; what the archive asset hands to the locations."""

    tenant_id: str
    backup_id: str
    path: str
    manifest: dict


@dataclass(frozen=True)
class StoredHandle:
    """A backup as stored in one location; what a location asset's IO manager gives back on load."""

    location: str
    tenant_id: str
    backup_id: str
    uri: str
    manifest: dict


_LOCATION_VARS = ("TENANT_BACKUP_", "R2_", "B2_")


def location(name: str) -> Location:
    """The configured location `name`, built once per process for a given configuration: an S3
    client costs ~0.2 s to build, and every step and check of every tenant needs one."""
    fingerprint = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_LOCATION_VARS)))
    return _cached_location(name, fingerprint)


@lru_cache(maxsize=16)
def _cached_location(name: str, fingerprint: tuple) -> Location:
    return locations_from_env([name], dict(fingerprint))[name]


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


def default_work_dir() -> str:
    return os.environ.get("TENANT_BACKUP_WORK_DIR") or str(Path(tempfile.gettempdir()) / "tenant-backup-work")


class BackupResource(ConfigurableResource):
    """The source database and the keyring. Secrets come in as EnvVar (never shown in the UI), or
    the keyring as the path of a key file; the remaining TENANT_BACKUP_* settings are read from the
    environment (core/settings.py)."""

    source_dsn: str
    work_dir: str
    master_keys: Optional[str] = None  # TENANT_BACKUP_KEYS, through EnvVar
    master_keys_file: Optional[str] = None  # TENANT_BACKUP_KEYS_FILE: a path, not a secret

    def source_settings(self) -> SourceSettings:
        return SourceSettings.from_env({**os.environ, "TENANT_BACKUP_SOURCE_DSN": self.source_dsn})

    def keyring(self) -> Keyring:
        return Keyring.from_file(self.master_keys_file) if self.master_keys_file else Keyring.parse(self.master_keys)

    def scratch_admin_dsn(self) -> str:
        """Where restore drills create their scratch databases: TENANT_BACKUP_SCRATCH_DSN (a role that
        may CREATE DATABASE), else an embedded PostgreSQL kept under the work directory."""
        configured = os.environ.get("TENANT_BACKUP_SCRATCH_DSN", "").strip()
        if configured:
            return configured
        from ..core.checks.scratch import embedded_scratch_dsn

        return embedded_scratch_dsn(self.work_dir)

    def scratch_pool(self):
        """This process's pool of scratch databases on the scratch server (core/checks/scratch.py)."""
        return _scratch_pool(self.scratch_admin_dsn())

    def _proven_path(self, tenant_id: str) -> Path:
        return self.staging_dir(tenant_id) / "proven.json"

    def record_proven(self, archive: "ArchiveHandle", run_id: str) -> None:
        """The restore drill restored exactly these bytes (their SHA-256), in run `run_id`."""
        path = self._proven_path(archive.tenant_id)
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps({"backup_id": archive.backup_id, "sha256": archive.manifest["archive"]["sha256"],
                                    "run_id": run_id}))
        os.replace(temp, path)

    def proven(self, archive: "ArchiveHandle") -> str | None:
        """The run whose restore drill restored this very archive (same SHA-256), or None."""
        return self._proven_run(archive)

    def require_proven(self, archive: "ArchiveHandle", where: str) -> None:
        """Fail closed: an archive its isolation check and restore drill did not prove is not shipped."""
        if self._proven_run(archive) is None:
            raise TenantBackupError(f"archive {archive.backup_id} of tenant {archive.tenant_id} was not proven by its"
                                    f" isolation check and restore drill: not shipped to {where}")

    def _proven_run(self, archive: "ArchiveHandle") -> str | None:
        try:
            record = json.loads(self._proven_path(archive.tenant_id).read_text())
        except (OSError, ValueError):
            return None
        same = (record.get("backup_id") == archive.backup_id
                and record.get("sha256") == archive.manifest["archive"]["sha256"])
        return record.get("run_id") if same else None

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
        pointer.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = pointer.with_suffix(".tmp")
        temp.write_text(json.dumps({"tenant_id": obj.tenant_id, "backup_id": obj.backup_id,
                                    "path": obj.path, "manifest": obj.manifest}))
        os.replace(temp, pointer)

    def load_input(self, context: InputContext) -> ArchiveHandle:
        tenant_id = context.partition_key
        pointer = self._pointer(tenant_id)
        if not pointer.exists():
            raise TenantBackupError(f"no staged archive for tenant {tenant_id}: materialize tenant_archive first")
        data = json.loads(pointer.read_text())
        if not Path(data["path"]).exists():
            raise TenantBackupError(
                f"the staged archive {data['path']} of tenant {tenant_id} is gone: re-materialize tenant_archive")
        return ArchiveHandle(data["tenant_id"], data["backup_id"], data["path"], data["manifest"])


class LocationIOManager(ConfigurableIOManager):
    """Stores an archive in one storage location (local, r2 or b2) and loads back a handle on the
    latest complete backup of the partition's tenant there. Configured from the environment."""

    location: str

    def build(self) -> Location:
        return location(self.location)

    def handle_output(self, context: OutputContext, obj: ArchiveHandle) -> None:
        import time

        started = time.monotonic()
        stored = self.build().put(obj.tenant_id, obj.backup_id, Path(obj.path), obj.manifest)
        context.add_output_metadata({
            "location": self.location,
            "uri": MetadataValue.text(stored.uri),
            "backup_id": obj.backup_id,
            "stored_bytes": MetadataValue.int(stored.size),
            "sha256": stored.sha256,
            "upload_seconds": MetadataValue.float(round(time.monotonic() - started, 3)),
        })

    def load_input(self, context: InputContext) -> StoredHandle:
        tenant_id = context.partition_key
        location = self.build()
        refs = location.list(tenant_id)
        if not refs:
            raise TenantBackupError(f"no complete backup of tenant {tenant_id} in location {self.location}")
        latest = refs[-1]
        return StoredHandle(self.location, tenant_id, latest.backup_id, latest.uri,
                            location.get_manifest(tenant_id, latest.backup_id))
