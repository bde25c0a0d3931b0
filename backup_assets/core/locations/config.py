"""Build the configured storage locations from their settings (docs/STORAGE.md has the table), through
the registry of location kinds (core/locations/registry.py): nothing here knows a kind by name.

A location that is listed but not fully configured is a ConfigError naming every missing variable;
an unknown location name is a ConfigError too. Nothing is skipped silently. No network I/O happens
here: credentials and buckets are checked on first use.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..codec.keyring import Keyring
from ..errors import ConfigError
from ..source.tenant_ids import TenantIds, tenant_ids_from_env
from ..values import int_setting
from . import registry
from .base import Location
from .indexing import IndexingLocation, supports_index
from .retry import RetryingLocation

LOCATIONS_VAR = "TENANT_BACKUP_LOCATIONS"


def location_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get(LOCATIONS_VAR, "").strip() or ",".join(registry.default_names())
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{LOCATIONS_VAR} lists no location")
    return names


def _smaller_fix(names: list[str], environ: Mapping[str, str], *, listed: bool) -> str:
    """The smallest change that works, when TENANT_BACKUP_LOCATIONS chose the locations: keep only
    the configured ones, or begin with one local directory."""
    if not listed:
        return ""  # the caller named the locations (a --location option): nothing to drop
    ready = [n for n in names if not registry.kind(n).missing(environ)]
    if ready:
        return f"; or use only {', '.join(ready)}: {LOCATIONS_VAR}={','.join(ready)}"
    return (
        f"; or, to begin with one local directory: {LOCATIONS_VAR}=local and TENANT_BACKUP_LOCAL_DIR=/path/to/backups"
    )


def locations_from_env(
    names: list[str] | None,
    environ: Mapping[str, str],
    *,
    retry: bool = True,
    tenant_ids_rule: TenantIds | None = None,
) -> dict[str, Location]:
    """name -> Location (wrapped in RetryingLocation unless retry=False), in the order listed; each
    one that stores objects by key keeps its index (core/locations/indexing.py IndexingLocation, the
    keyring read from `environ` when a write first needs it).

    Each kind's own variables are declared in its module (registry.Variable); common to all:
    TENANT_BACKUP_STORAGE_PREFIX (key prefix in every location), TENANT_BACKUP_STORAGE_ATTEMPTS (3),
    TENANT_BACKUP_RETENTION_<NAME>_DAYS. `tenant_ids_rule`: what a tenant id is (settings.tenant_ids;
    default: from TENANT_BACKUP_TENANT_ID_PATTERN in `environ`).
    """
    names_given = names
    names = [n.strip().lower() for n in (names if names is not None else location_names(environ))]
    known = registry.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown storage location(s) {', '.join(unknown)} (known: {', '.join(known)})")
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"storage location(s) listed twice: {', '.join(sorted(dupes))}")
    missing = [var for n in names for var in registry.kind(n).missing(environ)]
    if missing:
        raise ConfigError(
            f"missing configuration for storage location(s) {', '.join(names)}: set {', '.join(missing)}"
            + _smaller_fix(names, environ, listed=names_given is None)
        )

    prefix = environ.get("TENANT_BACKUP_STORAGE_PREFIX", "").strip()
    rule = tenant_ids_rule or tenant_ids_from_env(environ)
    attempts = int_setting(environ, "TENANT_BACKUP_STORAGE_ATTEMPTS", 3)
    out: dict[str, Location] = {}
    keyring = _keyring_of(environ)
    for n in names:
        kind = registry.kind(n)
        loc: Location = kind.build(kind.settings(environ, prefix))
        loc.tenant_ids = rule
        loc = RetryingLocation(loc, attempts=attempts) if retry else loc
        out[n] = IndexingLocation(loc, keyring) if supports_index(loc) else loc
    return out


class _keyring_of:
    """The keyring the index is authenticated with, parsed on first use (ConfigError when none is
    configured: a location is also built to list or read, without keys). Picklable."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = dict(environ)
        self._parsed = None

    def __call__(self) -> Keyring:
        if self._parsed is None:
            self._parsed = Keyring.from_env(self.environ)
        return self._parsed
