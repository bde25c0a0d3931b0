"""Scratch databases on a scratch server: their names (`tb_drill_<utc>_<hex>`), creating and dropping
one, and dropping the leftovers of drills that were killed before their own DROP. Used by the restore
drill (drill.py) and the pool of reused scratch databases (scratch.py)."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone

import psycopg2
from psycopg2 import sql

from ..archive.pipe import STDERR_LIMIT
from ..errors import ScratchDatabaseError, one_line
from ..source.session import connect

SCRATCH_PREFIX = "tb_drill_"
_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d{8}t\d{6}z)_[0-9a-f]{8}\Z")


def scratch_database_name(now: datetime | None = None) -> str:
    """`tb_drill_20261125t030000z_1a2b3c4d`: unique, lower case (no quoting needed in psql), and
    old leftovers are recognisable by age."""
    now = now or datetime.now(timezone.utc)
    return f"{SCRATCH_PREFIX}{now:%Y%m%dt%H%M%Sz}_{secrets.token_hex(4)}"


def create_scratch_database(admin, strategy: str | None = "WAL_LOG") -> str:
    """CREATE DATABASE tb_drill_<utc>_<hex> on `admin` (autocommit); returns its name."""
    name = scratch_database_name()
    _create_database(admin, name, strategy if admin.server_version >= 150000 else None)
    return name


def drop_scratch_database(admin, name: str) -> None:
    _drop_database(admin, name, admin.server_version)


def _create_database(admin, name: str, strategy: str | None) -> None:
    stmt = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if strategy:
        stmt += sql.SQL(" STRATEGY {}").format(sql.SQL(strategy.upper()))  # validated above
    try:
        with admin.cursor() as cur:
            cur.execute(stmt)
    except psycopg2.Error as exc:
        raise ScratchDatabaseError(
            f"cannot create the scratch database {name}: {one_line(exc, STDERR_LIMIT)}"
            " (the scratch role needs CREATEDB)"
        ) from None


def _drop_database(admin, name: str, version: int) -> None:
    stmt = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    if version >= 130000:
        stmt += sql.SQL(" WITH (FORCE)")
    with admin.cursor() as cur:
        cur.execute(stmt)


def drop_stale_scratch_databases(
    scratch_admin_dsn: str,
    *,
    older_than: timedelta = timedelta(hours=6),
    now: datetime | None = None,
    connect_timeout: int = 10,
) -> list[str]:
    """Drop drill databases (`tb_drill_<utc>_<hex>`, lower case) older than `older_than`: leftovers of drills that
    were killed (kill -9, lost worker) before their own DROP. Returns the names dropped. Only names
    this module generates are touched."""
    now = now or datetime.now(timezone.utc)
    dropped = []
    with connect(scratch_admin_dsn, timeout=connect_timeout, application_name="tenant-backup-drill") as admin:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (SCRATCH_PREFIX.replace("_", r"\_") + "%",)
            )
            names = [row[0] for row in cur.fetchall()]
        for name in names:
            match = _SCRATCH_RE.match(name)
            if not match:
                continue
            made = datetime.strptime(match.group(1), "%Y%m%dt%H%M%Sz").replace(tzinfo=timezone.utc)
            if now - made < older_than:
                continue
            with admin.cursor() as cur:  # a pool's database in use is locked by its process (core/checks/scratch.py)
                cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,))
                if not cur.fetchone()[0]:
                    continue
            try:
                _drop_database(admin, name, admin.server_version)
                dropped.append(name)
            finally:
                with admin.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))
    return dropped
