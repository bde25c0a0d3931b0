"""An archive streamed into a PostgreSQL server, with a pg_restore that server accepts.

    archive ─decode (ArchivePipe)─▶ pg_restore --single-transaction -d target        (direct)
    archive ─decode─▶ pg_restore --single-transaction -f - ─preset filter─▶ psql -d target  (script)

The pg_restore is chosen for the target's major and the pg_dump that wrote the archive
(source/pgbin.py: for_restore). When it is newer than the target, it writes settings the target does
not know at the start of its output (pg_restore 17+: `SET transaction_timeout = 0`, an error on 13-16),
so its script goes through psql, with exactly those `SET` lines of the preamble removed: a known list
(pgbin.PRESET_SETTINGS), never "ignore errors". Any other error stops psql (ON_ERROR_STOP) and the
single transaction never commits. A bad archive kills pg_restore before its end (ArchivePipe): in
script mode psql is then killed before its input ends, so the transaction's COMMIT never reaches it.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import tempfile
import threading
from pathlib import Path

from ..codec.keyring import Keyring
from ..errors import ArchiveError, first_error
from ..source import pgbin
from ..source.session import PgSession
from .pipe import IO_CHUNK, STDERR_LIMIT, ArchivePipe, HashingReader

log = logging.getLogger(__name__)

# pg_restore's preamble ends where the first object's comment starts.
_PREAMBLE_END = (b"-- Name: ", b"-- Data for Name: ", b"CREATE ", b"COPY ", b"ALTER ")
_PREAMBLE_MAX_LINES = 200


def stream_into_pg_restore(
    archive_path: Path,
    keyring: Keyring,
    tenant_id: str,
    dsn: str,
    *,
    target_version: int,
    dump_version: str | None,
    keep_owners: bool = False,
    synchronous_commit: str = "off",
) -> tuple[bool, str, int, str | None]:
    """Stream the archive (decrypted on the fly, never on disk) into `pg_restore --single-transaction`
    on `dsn`, a server of `target_version` (server_version_num). Returns (restored, sha256, size,
    failure message); a bad archive kills pg_restore before its transaction commits.

    keep_owners: restore ownership and grants (the source's roles must exist); the drill never does."""
    chosen = pgbin.for_restore(target_version, dump_version)
    session = PgSession.from_dsn(
        dsn, {"synchronous_commit": synchronous_commit}, application_name="tenant-backup-restore"
    )
    conninfo, env = session.conninfo(), session.child_env()
    flags = [
        *(() if keep_owners else ("--no-owner", "--no-acl")),  # the source's roles need not exist on the target
        "--no-tablespaces",
        "--no-security-labels",
        "--no-publications",
        "--no-subscriptions",  # never wire a drill into replication
        "--single-transaction",
    ]
    with archive_path.open("rb") as handle:
        reader = HashingReader(handle)
        if chosen.neutralise:
            failure = _through_psql(chosen, flags, reader, keyring, tenant_id, conninfo, env, session.scrub)
        else:
            args = [chosen.program("pg_restore"), *flags, "--exit-on-error", f"--dbname={conninfo}"]
            with ArchivePipe(
                args, reader, keyring, expect_tenant_id=tenant_id, env=env, scrub=session.scrub, name="restore"
            ) as pipe:
                pass  # a bad archive kills pg_restore before EOF reaches it: nothing of it may commit
            failure = _failure(pipe.outcome, "pg_restore")
        reader.drain()
    return failure is None, reader.hexdigest(), reader.count, failure


def _failure(outcome, what: str) -> str | None:
    if outcome.decode_error is not None:
        if not isinstance(outcome.decode_error, ArchiveError):
            raise outcome.decode_error
        return f"archive rejected (nothing restored): {outcome.decode_error}"
    if outcome.code != 0:
        return outcome.child_failure(what)
    return None


def _through_psql(chosen, flags, reader, keyring, tenant_id, conninfo, env, scrub) -> str | None:
    psql_err = tempfile.TemporaryFile()
    psql = subprocess.Popen(
        [
            chosen.program("psql"),
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            f"--dbname={conninfo}",
            "--file=-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=psql_err,
        env=env,
    )
    removed: list[str] = []
    try:
        args = [chosen.program("pg_restore"), *flags, "--file=-"]
        with ArchivePipe(
            args,
            reader,
            keyring,
            expect_tenant_id=tenant_id,
            env=env,
            stdout=subprocess.PIPE,
            scrub=scrub,
            name="restore",
        ) as pipe:
            removed = copy_script(pipe.stdout, psql.stdin, chosen.neutralise)
        outcome = pipe.outcome
        if outcome.ok:
            _close(psql.stdin)  # the whole script, COMMIT included, reaches psql only now
            code = psql.wait()
        else:
            psql.kill()  # before its input ends: the transaction never commits
            code = psql.wait()
        psql_err.seek(0)
        psql_msg = scrub(first_error(psql_err.read(STDERR_LIMIT * 2).decode("utf-8", "replace")))[:STDERR_LIMIT]
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
        psql_err.close()
    if outcome.decode_error is not None or (outcome.code != 0 and code == 0):
        return _failure(outcome, "pg_restore")
    if code != 0:
        return f"psql failed (exit {code}) restoring pg_restore {chosen.clients.major}'s script: {psql_msg or 'no message'}"
    log.info(
        "restored through psql into PostgreSQL %s, removed from pg_restore %s's preamble: %s",
        chosen.target_major,
        chosen.clients.major,
        "; ".join(removed) or "nothing",
    )
    return None


def _close(stream) -> None:
    try:
        stream.close()
    except (BrokenPipeError, ConnectionResetError):
        pass


def copy_script(source, sink, neutralise: tuple[str, ...]) -> list[str]:
    """Copy pg_restore's script from `source` to `sink`, without the preamble's `SET name = ...;` lines
    for the settings in `neutralise`; returns the lines removed. Past the preamble (the first
    object), bytes are copied as they are: table data is never looked at."""
    pattern = re.compile(rb"SET (%s) = .*;\n\Z" % b"|".join(re.escape(n.encode()) for n in neutralise))
    buffered = io.BufferedReader(source, IO_CHUNK) if not isinstance(source, io.BufferedIOBase) else source
    removed: list[str] = []
    broken = threading.Event()

    def write(data: bytes) -> None:
        if broken.is_set():
            return
        try:
            sink.write(data)
        except (BrokenPipeError, ConnectionResetError, ValueError):
            broken.set()  # psql stopped (its error is reported); keep draining pg_restore

    for _ in range(_PREAMBLE_MAX_LINES):
        line = buffered.readline()
        if not line:
            return removed
        if pattern.match(line):
            removed.append(line.decode("utf-8", "replace").strip())
            continue
        write(line)
        if line.startswith(_PREAMBLE_END):
            break
    while True:
        chunk = buffered.read1(IO_CHUNK)
        if not chunk:
            return removed
        write(chunk)
