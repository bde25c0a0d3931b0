"""`tenant-backup demo`: the embedded default (backup_assets/demo.py), which backs the sample's tenants up
with the `backup` command's batch display (cli/backup.py)."""

from __future__ import annotations

from pathlib import Path

from ._command import arg, command


@command(
    "demo",
    help="the embedded default: sample database, loopback cloud-storage stand-ins, weekly backup of every tenant"
    " through Dagster",
    args=[
        arg("--dir", default=".tenant-backup-demo", help="where the demo keeps its server and outputs"),
        arg("--tenants", type=int, default=20, help="active sample tenants (default 20)"),
        arg("--rows", type=int, default=50, help="sales per sample tenant (default 50)"),
        arg(
            "--ui",
            action="store_true",
            help="then keep the Dagster UI (dagster dev) running on the demo; "
            "Ctrl-C or SIGTERM stops everything the demo started",
        ),
        arg("--port", type=int, default=3000, help="port of the Dagster UI with --ui (default 3000)"),
    ],
)
def cmd_demo(args, out) -> int:
    from ..demo import run_demo

    return run_demo(Path(args.dir), tenants=args.tenants, rows=args.rows, ui=args.ui, port=args.port, out=out)
