"""The dump stream reader on real pg_dump output: rows per table whatever the reads and the chunking,
every tenant value checked, and streams it cannot follow refused (fail closed)."""

from __future__ import annotations

import subprocess

import pgdump_custom as custom
import pytest
from variant_db import variant_db

from backup_assets.core.dump.copytext import copy_text
from backup_assets.core.dump.pgdump import prove_dump
from backup_assets.core.dump.stream import COPY_END, DumpStreamError, DumpStreamReader
from backup_assets.core.errors import SafetyCheckFailed
from backup_assets.core.source.pgbin import pg_program
from backup_assets.core.source.session import PgSession
from backup_assets.sample.generate import TENANT_TABLES, tenant_row_counts


def _pg_dump(dsn: str, settings: dict, *extra: str) -> bytes:
    session = PgSession.from_dsn(dsn, settings)
    out = subprocess.run(
        [
            pg_program("pg_dump"),
            "--format=custom",
            "--compress=0",
            "--enable-row-security",
            "--no-large-objects",
            *extra,
            f"--dbname={session.conninfo()}",
        ],
        capture_output=True,
        env=session.child_env(),
        check=True,
    )
    return out.stdout


@pytest.fixture(scope="module")
def tenant(sample_tenants):
    return next(t for t in sample_tenants if t.status == "ACTIVE")


@pytest.fixture(scope="module")
def dump(sample_db, tenant) -> bytes:
    return _pg_dump(sample_db.backup_dsn, {"app.current_tenant": tenant.id})


def _read(data: bytes, size: int, values=None):
    reader = DumpStreamReader(values)
    for i in range(0, len(data), size):
        reader.feed(data[i : i + size])
    return reader.finish()


def _values(tenant_id: str) -> dict[str, bytes]:
    return {table: copy_text(tenant_id) for table in TENANT_TABLES}


@pytest.mark.parametrize("size", [1, 5, 6, 7, 4096, 1 << 20])
def test_rows_per_table_are_the_oracles_whatever_the_reads(sample_db, tenant, dump, size):
    contents = _read(dump, size)
    expected = tenant_row_counts(sample_db, tenant.id)
    assert {t: n for t, n in contents.rows().items() if t in expected} == expected
    assert contents.rows()["public.metal_types"] > 0  # the shared table, whole
    assert all(t.ended for t in contents.tables.values())


@pytest.mark.parametrize(
    "chunker",
    [custom.per_row, custom.fixed(1), custom.fixed(3), custom.fixed(5000), lambda data: [data]],
    ids=["per-row", "1", "3", "5000", "whole-block"],
)
@pytest.mark.parametrize("check", [False, True], ids=["count", "check-rows"])
def test_rows_and_tenant_values_whatever_the_chunking(dump, tenant, chunker, check):
    """pg_dump 18 writes a chunk per row; a chunk may as well hold many rows, or cut one: rows are
    the newlines of the COPY data either way, and each tenant value is found across cuts."""
    reference = _read(dump, 1 << 20).rows()
    rewritten = custom.write(custom.parse(dump), chunker)
    contents = _read(rewritten, 65536, _values(tenant.id) if check else None)
    assert contents.rows() == reference
    for name, tally in contents.tables.items():
        assert tally.foreign == 0, name
        if check and name in TENANT_TABLES:
            assert tally.checked == tally.rows, name


@pytest.mark.parametrize("chunker", [custom.per_row, custom.fixed(2), custom.fixed(64)], ids=["per-row", "2", "64"])
def test_a_foreign_tenant_value_is_found_wherever_the_chunks_cut_it(dump, tenant, chunker):
    parsed = custom.parse(dump)
    table = "public.customers"
    data = dict((parsed.tags[i], d) for i, d in parsed.blocks)[table]
    rows = data.split(b"\n")
    stranger = "00000000-0000-4000-8000-000000000001"
    rows[1] = rows[1].replace(tenant.id.encode(), stranger.encode(), 1)  # one row of another tenant
    contents = _read(
        custom.write(custom.replace_block(parsed, table, b"\n".join(rows)), chunker), 4096, _values(tenant.id)
    )
    tally = contents.tables[table]
    assert (tally.foreign, tally.sample) == (1, stranger.encode())
    with pytest.raises(SafetyCheckFailed, match=f"{table}: 1 rows whose tenant column is not {tenant.id}"):
        prove_dump(contents.rows(), contents, tenant.id)


def test_a_chunk_too_large_to_carry_is_followed_piece_by_piece(dump, tenant):
    parsed = custom.parse(dump)
    table = "public.notifications"
    data = dict((parsed.tags[i], d) for i, d in parsed.blocks)[table]
    body = data[: -len(COPY_END)]
    big = body * (1 + (9 << 20) // max(1, len(body)))  # > 4 MiB in one chunk
    contents = _read(
        custom.write(custom.replace_block(parsed, table, big + COPY_END), lambda d: [d]), 1 << 20, _values(tenant.id)
    )
    tally = contents.tables[table]
    assert tally.rows == big.count(b"\n") and tally.checked == tally.rows and tally.foreign == 0


def test_more_rows_in_the_dump_than_in_the_snapshot_is_refused(dump, tenant):
    contents = _read(dump, 65536)
    counts = dict(contents.rows())
    counts["public.sales"] -= 1  # the proof's session saw one row fewer than pg_dump wrote
    with pytest.raises(
        SafetyCheckFailed, match=r"public\.sales: \d+ rows in the dump, \d+ of this tenant in the snapshot"
    ):
        prove_dump(counts, contents, tenant.id)
    del counts["public.sales"]
    counts.pop("public.metal_types")
    with pytest.raises(SafetyCheckFailed, match="public.metal_types: .* a table the pre-flight did not check"):
        prove_dump(counts, contents, tenant.id)


def test_truncated_or_malformed_streams_are_refused(dump):
    for cut in (3, 40, len(dump) // 2, len(dump) - 3):
        with pytest.raises(DumpStreamError):
            _read(dump[:cut], 4096)
    with pytest.raises(DumpStreamError, match="PGDMP"):
        _read(b"not a dump at all" * 10, 4096)
    newer = dump[:5] + bytes([1, 17]) + dump[7:]
    with pytest.raises(DumpStreamError, match="archive version 1.17"):
        _read(newer, 4096)
    parsed = custom.parse(dump)
    table = parsed.tags[parsed.blocks[0][0]]
    without_marker = custom.write(custom.replace_block(parsed, table, b"1\tx\n"), custom.per_row)
    with pytest.raises(DumpStreamError, match="end marker"):
        _read(without_marker, 4096)
    after_marker = custom.write(custom.replace_block(parsed, table, COPY_END + b"1\tx\n"), custom.per_row)
    with pytest.raises(DumpStreamError, match="end marker"):
        _read(after_marker, 4096)


def test_large_objects_in_a_dump_are_refused(pg_server_dsn):
    """Large objects have no tenant and no RLS: a dump that holds them cannot be proven."""
    with variant_db(pg_server_dsn) as db:
        db.run(
            "CREATE TABLE t (id int PRIMARY KEY); GRANT SELECT ON t TO {backup};"
            " SELECT lo_from_bytea(0, 'blob of some tenant');"
            " DO $$ BEGIN EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO {backup}',"
            " (SELECT max(oid) FROM pg_largeobject_metadata)); END $$;"
        )
        session = PgSession.from_dsn(db.backup_dsn)
        data = subprocess.run(
            [
                pg_program("pg_dump"),
                "--format=custom",
                "--compress=0",
                "--large-objects",
                f"--dbname={session.conninfo()}",
            ],
            capture_output=True,
            env=session.child_env(),
            check=True,
        ).stdout
    with pytest.raises(DumpStreamError, match="BLOB"):
        _read(data, 65536)
