"""The isolation scan reads an archive's COPY rows and flags any row of another tenant."""

from __future__ import annotations

from backup_assets.core.archive.export import ExportOptions, export_tenant
from backup_assets.core.checks.isolation import parse_copy_header, scan_archive, scan_dump_lines
from backup_assets.core.codec.keyring import Keyring, generate_entry
from backup_assets.core.settings import SourceSettings


def test_copy_header_with_quoted_names():
    table, columns = parse_copy_header('COPY "My Schema"."odd.table" (id, "Tenant, Col", x) FROM stdin;')
    assert table == "My Schema.odd.table"
    assert columns == ["id", "Tenant, Col", "x"]


def test_foreign_and_null_rows_are_flagged():
    lines = [
        "COPY public.t (id, tenant_id, v) FROM stdin;\n",
        "1\tA\tx\n",
        "2\tB\ty\n",
        "3\t\\N\tz\n",
        "\\.\n",
        "COPY public.lookup (code) FROM stdin;\n",
        "gold\n",
        "\\.\n",
    ]
    report = scan_dump_lines(lines, "A", "tenant_id")
    assert report.rows == {"public.t": 3, "public.lookup": 1}
    assert report.checked_tables == ["public.t"]
    assert report.foreign_rows == {"public.t": 2} and not report.isolated


def test_real_archive_is_isolated(sample_db, sample_tenants, tmp_path):
    keyring = Keyring.parse(generate_entry("iso"))
    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": sample_db.backup_dsn})
    tenant = sample_tenants[0]
    manifest = export_tenant(settings, keyring, tenant.id, tmp_path / "a.tbk", ExportOptions())
    report = scan_archive(tmp_path / "a.tbk", keyring, tenant_id=tenant.id)
    assert report.isolated
    assert report.rows == manifest.tables
    assert set(report.checked_tables) == set(manifest.table_kinds.tenant)
    # Scanned as if it were another tenant's archive, every tenant row is foreign.
    wrong = scan_dump_lines(
        (line for line in _dump_lines(tmp_path / "a.tbk", keyring, tenant.id)), sample_tenants[1].id, "tenant_id"
    )
    assert set(wrong.foreign_rows) == {t for t in report.checked_tables if report.rows[t]}


def _dump_lines(archive, keyring, tenant_id):
    import subprocess

    from backup_assets.core.archive.decrypt import decrypt_to_file
    from backup_assets.core.source.pgbin import pg_program

    dump = archive.with_suffix(".dump")
    decrypt_to_file(archive, dump, keyring, expect_tenant_id=tenant_id)
    out = subprocess.run(
        [pg_program("pg_restore"), "--data-only", "-f", "-", str(dump)], capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines(keepends=True)
