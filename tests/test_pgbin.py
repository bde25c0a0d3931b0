"""Which client programs serve which server (core/source/pgbin.py), on directories of stand-in programs
that answer `--version` like the real ones; the real programs on real servers: tests/test_pg_matrix.py."""

from __future__ import annotations

import io
import os

import pytest

from backup_assets.core.archive.into_server import copy_script
from backup_assets.core.errors import ConfigError
from backup_assets.core.source import pgbin


@pytest.fixture
def clients(tmp_path):
    """Factory: clients(15, 18) makes a bin dir per major and points TENANT_BACKUP_PG_BIN at them."""

    def make(*majors: int) -> dict[int, str]:
        dirs = {}
        for major in majors:
            directory = tmp_path / f"pg{major}" / "bin"
            directory.mkdir(parents=True)
            for name in ("pg_dump", "pg_restore", "psql"):
                program = directory / name
                program.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {major}.3'\n")
                program.chmod(0o755)
            dirs[major] = str(directory)
        pgbin.configure(os.pathsep.join(dirs.values()))
        return dirs

    yield make
    pgbin.configure(None)


def test_dump_with_the_sources_major_else_the_lowest_newer(clients):
    dirs = clients(15, 16, 18)
    assert str(pgbin.for_dump(150004).directory) == dirs[15]
    assert str(pgbin.for_dump(140011).directory) == dirs[15]  # lowest newer: its archive is readable by more
    assert str(pgbin.for_dump("17.2 (Debian 17.2-1)").directory) == dirs[18]
    assert pgbin.for_dump(180001).version == "18.3"


def test_no_usable_pg_dump_is_one_line_naming_what_to_install(clients):
    clients(15, 16)
    with pytest.raises(ConfigError) as caught:
        pgbin.for_dump(170004)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("source is PostgreSQL 17.4; pg_dump 17 or newer is needed: install postgresql-client-17")
    assert "TENANT_BACKUP_PG_BIN" in message and "found: 16 in" in message


@pytest.mark.parametrize(
    "have,target,dump,chosen,neutralise",
    [
        ((15, 18), 150000, "pg_dump (PostgreSQL) 15.3", 15, ()),  # the target's own
        ((15, 18), 150000, "pg_dump (PostgreSQL) 18.3", 18, ("transaction_timeout",)),  # archive newer than target
        ((16, 18), 150000, "pg_dump (PostgreSQL) 15.3", 16, ()),  # lowest newer: 16 writes nothing 15 lacks
        ((15, 16), 180000, "pg_dump (PostgreSQL) 15.3", 16, ()),  # newest not newer than the target
        ((18,), 130000, "pg_dump (PostgreSQL) 18.3", 18, ("transaction_timeout",)),
        ((18,), 170000, "pg_dump (PostgreSQL) 18.3", 18, ()),  # 17 knows transaction_timeout
        ((14, 18), 140000, None, 14, ()),  # an archive of unknown origin: the target's own
    ],
)
def test_restore_with_a_pg_restore_the_target_accepts(clients, have, target, dump, chosen, neutralise):
    dirs = clients(*have)
    restore = pgbin.for_restore(target, dump)
    assert str(restore.clients.directory) == dirs[chosen]
    assert restore.neutralise == neutralise


def test_a_pg_restore_too_old_for_the_archive_is_refused(clients):
    clients(15)
    with pytest.raises(ConfigError, match="written by pg_dump 18.3; pg_restore 18 or newer is needed"):
        pgbin.for_restore(150000, "pg_dump (PostgreSQL) 18.3")
    with pytest.raises(ConfigError, match="pg_restore 18 or newer"):
        pgbin.for_archive("pg_dump (PostgreSQL) 18.3")


def test_a_pg_bin_without_pg_dump_is_a_config_error(tmp_path):
    pgbin.configure(str(tmp_path))
    try:
        with pytest.raises(ConfigError, match="no pg_dump in"):
            pgbin.installed_clients()
    finally:
        pgbin.configure(None)


def test_the_filter_removes_exactly_the_preamble_setting_never_table_data():
    script = (
        b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n"
        b"SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET transaction_timeout = 0;\n"
        b"SET client_encoding = 'UTF8';\n\n"
        b"--\n-- Name: notes; Type: TABLE; Schema: public; Owner: -\n--\n\n"
        b"CREATE TABLE public.notes (body text);\n\n"
        b"COPY public.notes (body) FROM stdin;\nSET transaction_timeout = 0;\n\\.\n\nCOMMIT;\n"
    )
    out = io.BytesIO()
    removed = copy_script(io.BytesIO(script), out, ("transaction_timeout",))
    assert removed == ["SET transaction_timeout = 0;"]
    assert out.getvalue() == script.replace(b"SET transaction_timeout = 0;\nSET client", b"SET client", 1)
    assert out.getvalue().count(b"SET transaction_timeout = 0;") == 1  # the row in the table's data stays
