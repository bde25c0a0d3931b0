"""core.archive.pipe.ArchivePipe: the one pipe archive → decode_archive → a client program's stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from backup_assets.core.archive.pipe import ArchivePipe, HashingReader
from backup_assets.core.codec.format import encode_archive
from backup_assets.core.errors import ArchiveError

TENANT = "7f3e1c2a-0b4d-4e5f-8a9b-0c1d2e3f4a5b"
PAYLOAD = os.urandom(3 << 20)  # several segments; random: zstd cannot shrink it


@pytest.fixture(scope="module")
def archive(keyring) -> bytes:
    out = io.BytesIO()
    encode_archive(
        io.BytesIO(PAYLOAD).read,
        out,
        tenant_id=TENANT,
        backup_id="20261201T000000Z-00000000",
        created_at="2026-12-01T00:00:00Z",
        keyring=keyring,
    )
    return out.getvalue()


# A child that copies stdin to stdout and exits 0 only if it saw EOF (a complete stream).
_CAT = [sys.executable, "-c", "import sys, shutil; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)"]


def test_decoded_bytes_reach_the_child(archive, keyring):
    reader = HashingReader(io.BytesIO(archive))
    with ArchivePipe(_CAT, reader, keyring, expect_tenant_id=TENANT, stdout=subprocess.PIPE) as pipe:
        got = pipe.stdout.read()
    assert got == PAYLOAD
    outcome = pipe.outcome
    assert outcome.ok and outcome.code == 0 and outcome.decode_error is None
    assert outcome.header.tenant_id == TENANT and outcome.stats.raw_bytes == len(PAYLOAD)
    assert reader.count == len(archive)


def test_a_tampered_archive_kills_the_child_before_eof(archive, keyring):
    bad = bytearray(archive)
    bad[-5] ^= 1  # in the last segment: everything before it decodes, then authentication fails
    with ArchivePipe(_CAT, io.BytesIO(bytes(bad)), keyring, stdout=subprocess.PIPE) as pipe:
        got = pipe.stdout.read()
    outcome = pipe.outcome
    assert isinstance(outcome.decode_error, ArchiveError) and not outcome.ok
    assert outcome.code < 0  # killed: it never saw the end of its input
    assert len(got) < len(PAYLOAD)


def test_wrong_tenant_is_refused_before_any_output(archive, keyring):
    with ArchivePipe(_CAT, io.BytesIO(archive), keyring, expect_tenant_id="another", stdout=subprocess.PIPE) as pipe:
        got = pipe.stdout.read()
    assert isinstance(pipe.outcome.decode_error, ArchiveError) and got == b""


def test_an_error_in_the_body_kills_the_child(archive, keyring):
    with pytest.raises(RuntimeError, match="reader gave up"):
        with ArchivePipe(_CAT, io.BytesIO(archive), keyring, stdout=subprocess.PIPE) as pipe:
            pipe.stdout.read(10)
            raise RuntimeError("reader gave up")
    assert pipe.outcome.code < 0 and pipe.outcome.decode_error is None


def test_a_child_that_stops_reading_is_not_an_error_and_the_whole_file_is_read(archive, keyring):
    head = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(10); sys.stderr.write('read  10\\n  bytes')"]
    reader = HashingReader(io.BytesIO(archive))
    with ArchivePipe(head, reader, keyring) as pipe:
        pass
    assert pipe.outcome.ok and reader.count == len(archive)  # every segment still authenticated
    assert pipe.outcome.stderr == "read 10 bytes"  # one line


def test_a_failing_child_is_reported_uniformly(archive, keyring):
    fail = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(); sys.stderr.write('no such table'); sys.exit(3)"]
    with ArchivePipe(fail, io.BytesIO(archive), keyring, scrub=lambda s: s.replace("table", "***")) as pipe:
        pass
    assert pipe.outcome.decode_error is None and pipe.outcome.code == 3
    assert pipe.outcome.child_failure("pg_restore") == "pg_restore failed (exit 3): no such ***"
