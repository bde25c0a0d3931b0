"""The benchmarks' sample database: large tenants built once and cached across runs of
bench/export.py and bench/restore.py (building a 1 GiB tenant takes ~90 s)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from backup_assets.core.embedded_pg import dsn_for, start_embedded
from backup_assets.sample.generate import SampleDatabase, add_large_tenant, create_sample_database

DBNAME = "bench_export"


def large_tenants(out: Path, sizes: list[int], dsn: str | None = None) -> tuple[SampleDatabase, dict[int, str]]:
    """(database, {size MiB: tenant id}) on `dsn` or an embedded server under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    server_dsn = dsn or start_embedded(out / "pg").admin_dsn()
    state_file = out / "tenants.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("server") != server_dsn:
        state = {"server": server_dsn, "tenants": {}}
        db = create_sample_database(server_dsn, DBNAME)
    else:
        db = SampleDatabase(
            DBNAME,
            dsn_for(server_dsn, dbname=DBNAME),
            dsn_for(server_dsn, user="app_owner", dbname=DBNAME),
            dsn_for(server_dsn, user="tenant_backup", dbname=DBNAME),
        )
    for size in sizes:
        if str(size) not in state["tenants"]:
            started = time.perf_counter()
            state["tenants"][str(size)] = add_large_tenant(db, size, seed=size).id
            state_file.write_text(json.dumps(state))
            print(f"generated a ~{size} MiB tenant in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return db, {size: state["tenants"][str(size)] for size in sizes}
