"""`tenant-backup export | decrypt | keys generate`: one archive file, no storage, no Dagster."""

from __future__ import annotations

from pathlib import Path

from ._command import arg, command
from ._progress import Transfer


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@command(
    "export",
    help="dump, compress and encrypt one tenant into a file; manifest JSON on stdout",
    args=[
        arg("--tenant", required=True, metavar="ID", help="tenant id (UUID unless TENANT_BACKUP_TENANT_ID_PATTERN)"),
        arg("--out", required=True, metavar="FILE", help="archive to write (its directory must exist)"),
        arg(
            "--force",
            action="store_true",
            help="export a tenant that TENANT_BACKUP_TENANTS_QUERY does not return (e.g. a SUSPENDED one)",
        ),
        arg("--zstd-level", type=int, default=1, choices=range(1, 20), metavar="N", help="zstd level (default 1)"),
        arg(
            "--check-rows",
            action="store_true",
            help="also compare every row's tenant value in the dump stream (the row counts are always"
            " proven; slower, see docs/BENCHMARKS.md)",
        ),
    ],
)
def cmd_export(args, out) -> int:
    from ..core.archive.export import ExportOptions, export_tenant

    settings = out.settings.source
    keyring = out.settings.keyring()
    with Transfer(out, f"export {args.tenant}") as bar:

        def progress(total: int, elapsed: float) -> None:
            if bar.on:
                bar.update(total)
            else:
                rate = total / elapsed / (1 << 20) if elapsed > 0 else 0.0
                out.note(f"  dumped {_mib(total)} in {elapsed:.1f}s ({rate:.0f} MiB/s)")

        quiet = out.quiet or out.json
        options = ExportOptions(
            force=args.force,
            zstd_level=args.zstd_level,
            check_rows=args.check_rows,
            progress=None if quiet and not bar.on else progress,
            progress_interval=0.2 if bar.on else 2.0,
        )
        manifest = export_tenant(settings, keyring, args.tenant, Path(args.out), options)
        dumped = manifest.raw_size
        if bar.on and isinstance(dumped, int):
            bar.update(dumped, total=max(dumped, 1))  # done: the total is known now
    try:
        if out.json:
            out.emit(manifest.to_dict())
        else:
            print(manifest.to_json(), flush=True)  # export's output either way: what a location stores
    except OSError as exc:  # stdout redirected onto a full disk: one line, not a traceback
        from ..core.errors import LocalWriteError
        from ..core.files import os_error_line

        raise LocalWriteError(
            f"{os_error_line(exc, 'standard output')}: the manifest was not written (the archive is {args.out})"
        ) from None
    return 0


@command(
    "decrypt",
    help="verify and decrypt an archive to a plain pg_dump custom-format file",
    args=[
        arg("file", metavar="FILE"),
        arg("--out", required=True, metavar="DUMP"),
        arg("--tenant", metavar="ID", help="refuse the archive unless it belongs to this tenant"),
        arg("--sha256", metavar="HEX", help="refuse the archive unless its SHA-256 is this (from the manifest)"),
    ],
)
def cmd_decrypt(args, out) -> int:
    from ..core.archive.decrypt import decrypt_to_file
    from ..core.source.tenant_ids import validate_tenant_id

    keyring = out.settings.keyring()
    expect = validate_tenant_id(args.tenant, out.settings.tenant_ids) if args.tenant else None
    header = decrypt_to_file(
        Path(args.file), Path(args.out), keyring, expect_tenant_id=expect, expect_sha256=args.sha256
    )
    out.note(f"decrypted backup {header.backup_id} of tenant {header.tenant_id} to {args.out}")
    out.emit(
        {
            "tenant_id": header.tenant_id,
            "backup_id": header.backup_id,
            "key_id": header.key_id,
            "file": str(args.file),
            "out": str(args.out),
            "size": Path(args.out).stat().st_size,
        }
    )
    return 0


@command(
    "keys generate",
    help="print a new keyring entry id:base64key (put it first in TENANT_BACKUP_KEYS)",
    args=[
        arg("--id", metavar="KEY_ID", help="key id (default: generated from today's date)"),
    ],
)
def cmd_keys_generate(args, out) -> int:
    from ..core.codec.keyring import generate_entry

    entry = generate_entry(args.id) if args.id else generate_entry()
    out.text(entry)
    out.emit({"key_id": entry.split(":", 1)[0], "entry": entry})
    return 0
