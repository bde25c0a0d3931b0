"""The registry of location kinds: what a kind of storage location is, declared once, in its own module.

As restic registers its backends (a scheme, how its settings parse, how it is opened) and runs one
test suite through that same factory, every kind of location declares a `LocationKind` as `KIND` in
its module under core/locations/ (local.py, and one module per cloud store): its name (what
TENANT_BACKUP_LOCATIONS lists) and display name, its variables (names, which are required, which are
secrets, defaults, how each parses), its retention default, how its storage is built, its place in
`restore --location auto`, and the kind tag the Dagster UI shows. Everything else iterates the
registry: the settings (which variables are kept), the storage configuration (core/locations/config.py),
the Dagster resource, assets, IO managers and checks (one per configured location), the runs, the
failure alerts, restore's choice of copy, `status`, docs/STORAGE.md's table (`docs_table`, checked by
a test) and the conformance suite. A new kind is one new module plus its tests; `register` adds a
kind from elsewhere (a plugin, a test).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..values import int_setting

# Modules of this package that are the machinery, not kinds.
_MACHINERY = {"base", "retry", "config", "registry"}


@dataclass(frozen=True)
class Variable:
    """One environment variable a kind reads."""

    name: str
    help: str
    required: bool = False
    secret: bool = False  # never shown: the Dagster resource passes it as an EnvVar
    default: Any = None  # what applies when it is unset (shown in the docs)
    type: type = str  # str or int
    minimum: int = 0  # for an int
    # Names where the copies go (endpoint, bucket, directory, realm): a batch's workers must agree on it
    # (core/cluster.py). None: a required variable that is not a secret does.
    locates: bool | None = None

    @property
    def is_locating(self) -> bool:
        return self.locates if self.locates is not None else (self.required and not self.secret)

    def parse(self, environ: Mapping[str, str]) -> Any:
        """Its value from `environ` (stripped; the default when unset): ConfigError naming it when malformed."""
        if self.type is int:
            return int_setting(environ, self.name, self.default, minimum=self.minimum)
        value = environ.get(self.name, "").strip()
        return value if value else self.default


@dataclass(frozen=True)
class LocationSettings:
    """One configured location's settings, parsed: what its kind's `build` receives."""

    kind: "LocationKind"
    values: tuple[tuple[str, Any], ...]  # every variable of the kind: its parsed value
    retention_days: int
    prefix: str  # TENANT_BACKUP_STORAGE_PREFIX

    def __getitem__(self, variable: str) -> Any:
        return dict(self.values)[variable]


@dataclass(frozen=True)
class LocationKind:
    """A kind of storage location (see the module docstring)."""

    name: str  # as listed in TENANT_BACKUP_LOCATIONS; also the asset (<name>_copy), IO manager and URI scheme
    display_name: str  # "Local disk", ...
    variables: tuple[Variable, ...]
    retention_days: int  # default of TENANT_BACKUP_RETENTION_<NAME>_DAYS
    build: Callable[[LocationSettings], Any]  # -> core/locations/base.py Location (not wrapped in retries)
    restore_order: int  # `restore --location auto` tries kinds in this order (lowest first)
    ui_kind: str  # the Dagster kind tag of its asset (an icon in the UI)
    default: bool = True  # among the locations TENANT_BACKUP_LOCATIONS defaults to
    description: str = ""  # one line for the docs table
    short_name: str = ""  # in running text ("backed up to local, R2 and B2"); default: its name
    module: str = field(default="", compare=False)  # where it is declared

    @property
    def label(self) -> str:
        return self.short_name or self.name

    @property
    def retention_variable(self) -> str:
        return f"TENANT_BACKUP_RETENTION_{self.name.upper()}_DAYS"

    @property
    def variable_names(self) -> tuple[str, ...]:
        """Every variable this kind reads (its retention's included): what Settings keeps for it."""
        return (*(v.name for v in self.variables), self.retention_variable)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables if v.secret)

    def missing(self, environ: Mapping[str, str]) -> list[str]:
        return [v.name for v in self.variables if v.required and not environ.get(v.name, "").strip()]

    def settings(self, environ: Mapping[str, str], prefix: str = "") -> LocationSettings:
        """Its variables parsed (ConfigError naming a malformed one)."""
        days = int_setting(environ, self.retention_variable, self.retention_days)
        return LocationSettings(self, tuple((v.name, v.parse(environ)) for v in self.variables), days, prefix)


_KINDS: dict[str, LocationKind] = {}
_lock = threading.Lock()
_discovered = False


def _discover() -> None:
    """Register the KIND of every module of this package (once)."""
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        package = __name__.rpartition(".")[0]
        here = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(here.__path__), key=lambda i: i.name):
            if info.name in _MACHINERY or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package}.{info.name}")
            kind = getattr(module, "KIND", None)
            if isinstance(kind, LocationKind):
                _add(kind, module.__name__)
        _discovered = True


def _add(kind: LocationKind, module: str) -> None:
    if not kind.name.isidentifier() or kind.name != kind.name.lower():
        raise ValueError(f"location kind name {kind.name!r}: lower-case letters, digits and _ only")
    known = _KINDS.get(kind.name)
    if known is not None and known.module != module:
        raise ValueError(f"location kind {kind.name!r} registered twice ({known.module}, {module})")
    object.__setattr__(kind, "module", module)
    _KINDS[kind.name] = kind


def register(kind: LocationKind) -> LocationKind:
    """Add a kind declared outside core/locations/ (a plugin, a test). Returns it."""
    _discover()
    _add(kind, kind.module or getattr(kind.build, "__module__", "?"))
    return kind


def unregister(name: str) -> None:
    """Remove a kind added with `register` (tests)."""
    _KINDS.pop(name, None)


def kinds() -> list[LocationKind]:
    """Every registered kind, in `restore --location auto` order."""
    _discover()
    return sorted(_KINDS.values(), key=lambda k: (k.restore_order, k.name))


def kind(name: str) -> LocationKind:
    """The kind `name`, or ConfigError naming the known ones."""
    _discover()
    found = _KINDS.get(name)
    if found is None:
        raise ConfigError(f"unknown storage location {name!r} (known: {', '.join(names())})")
    return found


def names() -> list[str]:
    return [k.name for k in kinds()]


def default_names() -> list[str]:
    """What TENANT_BACKUP_LOCATIONS means when unset."""
    return [k.name for k in kinds() if k.default]


def variables() -> frozenset[str]:
    """Every variable any registered kind reads: Settings keeps these (besides TENANT_BACKUP_*)."""
    return frozenset(v for k in kinds() for v in k.variable_names)


def secret_variables() -> frozenset[str]:
    return frozenset(v for k in kinds() for v in k.secrets)


def auto_order(configured) -> list[str]:
    """The configured location names in `restore --location auto` order."""
    configured = list(configured)
    known = [k.name for k in kinds() if k.name in configured]
    return known + [n for n in configured if n not in known]


def kind_of_asset(asset_or_step: str) -> str | None:
    """The location whose asset (<name>_copy) or step/check this is; None for others (the archive)."""
    for k in sorted(kinds(), key=lambda k: -len(k.name)):
        if asset_or_step.startswith(f"{k.name}_copy"):
            return k.name
    return None


def docs_table() -> str:
    """docs/STORAGE.md's table of every kind's variables (tests/test_layers.py checks the docs hold it)."""
    rows = ["| location | variable | meaning | default |", "|---|---|---|---|"]
    for k in kinds():
        for v in k.variables:
            default = "—" if v.default in (None, "") else f"`{v.default}`"
            need = " (required)" if v.required else ""
            secret = ", secret" if v.secret else ""
            rows.append(f"| `{k.name}` ({k.display_name}) | `{v.name}` | {v.help}{need}{secret} | {default} |")
        rows.append(
            f"| `{k.name}` ({k.display_name}) | `{k.retention_variable}` | retention in days"
            f" (`.retention_days`) | `{k.retention_days}` |"
        )
    return "\n".join(rows)
