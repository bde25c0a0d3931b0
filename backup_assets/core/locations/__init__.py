"""Storage locations behind one interface: local disk and the cloud stores, one module per kind, each
declaring its `KIND` (registry.py: the registry of location kinds).

See base.py for the contract, docs/STORAGE.md for configuration. Backends import their client
libraries lazily, so importing this package costs nothing.
"""

import importlib

from .base import ARCHIVE_NAME, MANIFEST_NAME, BackupRef, Location, StoredObject, sha256_file, validate_backup_id
from .config import locations_from_env
from .garbage import Garbage, Survey
from .retry import RetryingLocation


def __getattr__(name):  # a kind's Location class (LocalLocation, ...) from its own module, imported on use
    from . import registry

    for kind in registry.kinds():
        module = importlib.import_module(kind.module)
        if name in vars(module) and name.endswith("Location"):
            return vars(module)[name]
    raise AttributeError(name)


__all__ = [
    "ARCHIVE_NAME",
    "MANIFEST_NAME",
    "BackupRef",
    "Garbage",
    "Location",
    "StoredObject",
    "Survey",
    "RetryingLocation",
    "locations_from_env",
    "sha256_file",
    "validate_backup_id",
]
