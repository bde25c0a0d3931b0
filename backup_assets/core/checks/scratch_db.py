"""Scratch databases on a scratch server: their names (`tb_drill_<utc>_<hex>`), creating and dropping
one, and dropping the leftovers of drills that were killed before their own DROP. Used by the restore
drill (drill.py) and the pool of reused scratch databases (scratch.py).

In use = locked: the process that creates a scratch database first takes a session-level advisory
lock on its name (`hashtextextended(name, 0)`) on its admin connection, and holds it until the database
is dropped; the lock dies with the process (or its connection), whatever killed it. So a scratch
database whose lock anybody can take, and that no session is connected to, belongs to no live drill:
`drop_stale_scratch_databases` drops exactly those (advisory locks are per database: every process
must use the same admin DSN's database, as they do: the scratch server's admin DSN)."""

from __future__ import annotations

import logging
import re
import secrets
from datetime import datetime, timedelta, timezone

import psycopg2
from psycopg2 import sql

from ..archive.pipe import STDERR_LIMIT
from ..errors import ScratchDatabaseError, one_line
from ..source.session import connect

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "tb_drill_"
_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d{8}t\d{6}z)_[0-9a-f]{8}\Z")


def scratch_database_name(now: datetime | None = None) -> str:
    """`tb_drill_20261125t030000z_1a2b3c4d`: unique, lower case (no quoting needed in psql), and
    old leftovers are recognisable by age."""
    now = now or datetime.now(timezone.utc)
    return f"{SCRATCH_PREFIX}{now:%Y%m%dt%H%M%Sz}_{secrets.token_hex(4)}"


def create_scratch_database(admin, strategy: str | None = "WAL_LOG") -> str:
    """CREATE DATABASE tb_drill_<utc>_<hex> on `admin` (autocommit), its name locked first on `admin`
    (module docstring: held until drop_scratch_database); returns its name."""
    name = scratch_database_name()
    _lock(admin, name)
    try:
        _create_database(admin, name, strategy if admin.server_version >= 150000 else None)
    except BaseException:
        _unlock(admin, name)
        raise
    return name


def drop_scratch_database(admin, name: str) -> None:
    """DROP DATABASE name WITH (FORCE), then its lock is let go (when `admin` holds it)."""
    _drop_database(admin, name, admin.server_version)
    _unlock(admin, name)


def _lock(admin, name: str) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (name,))


def _unlock(admin, name: str) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))


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
    """Drop the scratch databases (`tb_drill_<utc>_<hex>`, only names this module generates) of drills
        that are gone — killed (SIGKILL, a lost worker, a lost machine) before their own DROP: those whose
        lock nobody holds and to which no session is connected (module docstring). `older_than`: spare
        younger ones (default 6 h: a drill of an older tenant-backup took no lock; the runs' clean-ups pass 0,
    as every drill now locks). Returns the names dropped.
        A database somebody connects to meanwhile is not dropped (DROP without FORCE fails: skipped)."""
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
            with admin.cursor() as cur:  # held by the live drill using it (create_scratch_database)
                cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,))
                if not cur.fetchone()[0]:
                    continue
            try:
                with admin.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
                    if cur.fetchone()[0]:
                        continue  # a session in it: not ours to end
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                dropped.append(name)
            except psycopg2.Error as exc:  # e.g. "being accessed by other users": a later run retries
                log.warning("scratch database %s left for now: %s", name, one_line(exc, STDERR_LIMIT))
            finally:
                with admin.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))
    return dropped
