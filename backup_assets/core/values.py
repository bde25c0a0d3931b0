"""One setting's value from the environment, parsed: an integer, a number, a flag, a duration, an
optional string. Each parser names the variable in its ConfigError. Used by core/settings.py and by
the location kinds' declarations (core/locations/registry.py)."""

from __future__ import annotations

import re
from typing import Mapping

from .errors import ConfigError

_DURATION_RE = re.compile(r"\d+\s*(ms|s|min|h)?\Z")


def int_setting(environ: Mapping[str, str], var: str, default: int, minimum: int = 1) -> int:
    """An integer environment variable: its default when unset, a ConfigError naming it when malformed."""
    raw = environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{var} must be >= {minimum}, got {value}")
    return value


def float_setting(env: Mapping[str, str], var: str, default: float) -> float:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{var} must be > 0, got {raw!r}")
    return value


def duration_setting(env: Mapping[str, str], var: str, default: str) -> str:
    """A PostgreSQL duration (`10s`, `500ms`, `2min`; a bare number is milliseconds, as in PostgreSQL)."""
    value = env.get(var, "").strip() or default
    if not _DURATION_RE.match(value):
        raise ConfigError(f"{var}={value!r} is not a duration such as 10s, 500ms or 2min")
    return value


def optional_setting(env: Mapping[str, str], var: str) -> str | None:
    return env.get(var, "").strip() or None


def bool_setting(env: Mapping[str, str], var: str) -> bool:
    raw = env.get(var, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{var} must be 1/true/yes or 0/false/no, got {raw!r}")
