"""Build the configured storage locations from their settings (docs/STORAGE.md has the table).

A location that is listed but not fully configured is a ConfigError naming every missing variable;
an unknown location name is a ConfigError too. Nothing is skipped silently. No network I/O happens
here: credentials and buckets are checked on first use.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError
from ..settings import int_setting
from .base import Location
from .retry import RetryingLocation

KNOWN = ("local", "r2", "b2")
DEFAULT_LOCATIONS = "local,r2,b2"
REQUIRED = {
    "local": ("TENANT_BACKUP_LOCAL_DIR",),
    "r2": ("R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET"),
    "b2": ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "B2_BUCKET"),
}
RETENTION_DEFAULTS = {"local": 30, "r2": 365, "b2": 365}


def location_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("TENANT_BACKUP_LOCATIONS", "").strip() or DEFAULT_LOCATIONS
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if not names:
        raise ConfigError("TENANT_BACKUP_LOCATIONS lists no location")
    return names


def _smaller_fix(names: list[str], environ: Mapping[str, str], *, listed: bool) -> str:
    """The smallest change that works, when TENANT_BACKUP_LOCATIONS chose the locations: keep only
    the configured ones, or begin with one local directory."""
    if not listed:
        return ""  # the caller named the locations (a --location option): nothing to drop
    ready = [n for n in names if all(environ.get(var, "").strip() for var in REQUIRED[n])]
    if ready:
        return f"; or use only {', '.join(ready)}: TENANT_BACKUP_LOCATIONS={','.join(ready)}"
    return "; or, to begin with one local directory: TENANT_BACKUP_LOCATIONS=local and TENANT_BACKUP_LOCAL_DIR=/path/to/backups"


def locations_from_env(
    names: list[str] | None, environ: Mapping[str, str], *, retry: bool = True
) -> dict[str, Location]:
    """name -> Location (wrapped in RetryingLocation unless retry=False), in the order listed.

    Optional tuning variables: TENANT_BACKUP_STORAGE_PREFIX (key prefix in every location),
    TENANT_BACKUP_R2_PART_SIZE_MB (default 16), TENANT_BACKUP_R2_MULTIPART_THRESHOLD_MB (64),
    TENANT_BACKUP_R2_CONCURRENCY (parts in flight, 2: 16 MiB parts keep a link busy; more threads only
    contend for a small machine's cores — bench/storage.py measured 4 slower than 2 here),
    TENANT_BACKUP_B2_PART_SIZE_MB (server's recommendation), TENANT_BACKUP_STORAGE_ATTEMPTS (3).
    """
    names_given = names
    names = [n.strip().lower() for n in (names if names is not None else location_names(environ))]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ConfigError(f"unknown storage location(s) {', '.join(unknown)} (known: {', '.join(KNOWN)})")
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"storage location(s) listed twice: {', '.join(sorted(dupes))}")
    missing = [var for n in names for var in REQUIRED[n] if not environ.get(var, "").strip()]
    if missing:
        raise ConfigError(
            f"missing configuration for storage location(s) {', '.join(names)}: set {', '.join(missing)}"
            + _smaller_fix(names, environ, listed=names_given is None)
        )

    prefix = environ.get("TENANT_BACKUP_STORAGE_PREFIX", "").strip()
    pattern = environ.get("TENANT_BACKUP_TENANT_ID_PATTERN") or None
    attempts = int_setting(environ, "TENANT_BACKUP_STORAGE_ATTEMPTS", 3)
    mib = 1024 * 1024
    out: dict[str, Location] = {}
    for n in names:
        days = int_setting(environ, f"TENANT_BACKUP_RETENTION_{n.upper()}_DAYS", RETENTION_DEFAULTS[n])
        if n == "local":
            from .local import LocalLocation

            loc: Location = LocalLocation(
                environ["TENANT_BACKUP_LOCAL_DIR"].strip(), prefix=prefix, retention_days=days
            )
        elif n == "r2":
            from .r2 import R2Location

            part = int_setting(environ, "TENANT_BACKUP_R2_PART_SIZE_MB", 16, minimum=5) * mib
            loc = R2Location(
                environ["R2_ENDPOINT_URL"].strip(),
                environ["R2_ACCESS_KEY_ID"].strip(),
                environ["R2_SECRET_ACCESS_KEY"].strip(),
                environ["R2_BUCKET"].strip(),
                prefix=prefix,
                retention_days=days,
                part_size=part,
                multipart_threshold=int_setting(environ, "TENANT_BACKUP_R2_MULTIPART_THRESHOLD_MB", 64, minimum=5)
                * mib,
                concurrency=int_setting(environ, "TENANT_BACKUP_R2_CONCURRENCY", 2),
            )
        else:
            from .b2 import B2Location

            part_mb = int_setting(environ, "TENANT_BACKUP_B2_PART_SIZE_MB", 0, minimum=0)
            loc = B2Location(
                environ["B2_APPLICATION_KEY_ID"].strip(),
                environ["B2_APPLICATION_KEY"].strip(),
                environ["B2_BUCKET"].strip(),
                realm=environ.get("B2_REALM", "").strip() or "production",
                prefix=prefix,
                retention_days=days,
                part_size=part_mb * mib or None,
            )
        loc.tenant_id_pattern = pattern
        out[n] = RetryingLocation(loc, attempts=attempts) if retry else loc
    return out
