"""Storage locations (local disk, Cloudflare R2, Backblaze B2) behind one interface.

See base.py for the contract, docs/STORAGE.md for configuration. Backends import their client
libraries lazily, so importing this package costs nothing.
"""

from .base import ARCHIVE_NAME, MANIFEST_NAME, BackupRef, Location, StoredObject, sha256_file, validate_backup_id
from .config import locations_from_env
from .retry import RetryingLocation


def __getattr__(name):  # lazy: boto3 / b2sdk are only imported when their location is used
    if name == "LocalLocation":
        from .local import LocalLocation

        return LocalLocation
    if name == "R2Location":
        from .r2 import R2Location

        return R2Location
    if name == "B2Location":
        from .b2 import B2Location

        return B2Location
    raise AttributeError(name)


__all__ = [
    "ARCHIVE_NAME",
    "MANIFEST_NAME",
    "BackupRef",
    "Location",
    "StoredObject",
    "RetryingLocation",
    "LocalLocation",
    "R2Location",
    "B2Location",
    "locations_from_env",
    "sha256_file",
    "validate_backup_id",
]
