"""`tenant-backup worker [SCHEDULER]`: this machine's Dask workers for batches driven elsewhere (the
weekly batch job, `tenant-backup backup` with TENANT_BACKUP_DASK_SCHEDULER).

It checks this machine's whole configuration first — its own secrets, paths, Dagster instance,
the scheduler's address and Dask's TLS configuration — and names everything that is missing in one
line (exit 2); then it runs Dask's own worker (`dask worker`, with a nanny per process that restarts
a killed one), one thread per process (one tenant at a time), its scratch space under this machine's
TENANT_BACKUP_WORK_DIR, no dashboard unless asked for. docs/DEPLOYMENT.md, "Workers on other machines".
"""

from __future__ import annotations

import os
from pathlib import Path

from ._command import arg, command

# `dask worker` options passed on as they are (flag, dest).
PASSED_ON = (
    ("--name", "name"),
    ("--listen-address", "listen_address"),
    ("--contact-address", "contact_address"),
    ("--worker-port", "worker_port"),
    ("--nanny-port", "nanny_port"),
    ("--memory-limit", "memory_limit"),
    ("--death-timeout", "death_timeout"),
    ("--tls-ca-file", "tls_ca_file"),
    ("--tls-cert", "tls_cert"),
    ("--tls-key", "tls_key"),
)


@command(
    "worker",
    help="run this machine's Dask workers for batches driven elsewhere, after checking its configuration",
    args=[
        arg(
            "scheduler",
            nargs="?",
            metavar="SCHEDULER",
            help="the Dask scheduler, e.g. tls://scheduler:8786 (default: DASK_SCHEDULER_ADDRESS)",
        ),
        arg(
            "--nworkers",
            type=int,
            default=None,
            metavar="N",
            help="worker processes, each backing up one tenant at a time (default TENANT_BACKUP_WORKERS, else cores + 1)",
        ),
        arg("--name", help="this worker's name (Dask's --name)"),
        arg("--tls-ca-file", metavar="FILE", help="the cluster's CA (else Dask's distributed.comm.tls.ca-file)"),
        arg("--tls-cert", metavar="FILE", help="this worker's certificate (else distributed.comm.tls.worker.cert)"),
        arg("--tls-key", metavar="FILE", help="this worker's private key (else distributed.comm.tls.worker.key)"),
        arg("--listen-address", metavar="URI", help="Dask's --listen-address (one worker process only)"),
        arg("--contact-address", metavar="URI", help="the address others reach this worker at (behind NAT)"),
        arg("--worker-port", metavar="PORT[:PORT]", help="Dask's --worker-port (a port or a range)"),
        arg("--nanny-port", metavar="PORT[:PORT]", help="Dask's --nanny-port"),
        arg("--memory-limit", help="Dask's --memory-limit per process (default: Dask's)"),
        arg("--death-timeout", metavar="SECONDS", help="give up after this long without the scheduler"),
        arg("--dashboard-address", metavar="ADDR", help="serve Dask's worker dashboard there (default: none)"),
        arg("--check", action="store_true", help="check this machine's configuration, then exit (0 when complete)"),
    ],
)
def cmd_worker(args, out) -> int:
    import dask
    from distributed import Security

    from ..core.cluster import Problems, check_address, check_tls, worker_dask_config
    from ..core.errors import ConfigError
    from ..defs.runs.in_process import instance_label, load_worker_side

    settings = out.settings
    problems = Problems([], [])
    address = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)
    if not address:
        problems.missing.append(
            "the scheduler's address (tenant-backup worker tls://host:8786, or DASK_SCHEDULER_ADDRESS)"
        )
    else:
        try:
            scheme = check_address(
                address, allow_plaintext=settings.dask_allow_plaintext, variable="the scheduler address"
            )
            if scheme in ("tls", "wss"):
                given = {"tls_ca_file": args.tls_ca_file, "tls_worker_cert": args.tls_cert}
                given["tls_worker_key"] = args.tls_key
                check_tls(Security(**{k: v for k, v in given.items() if v}), "worker", address)
        except ConfigError as exc:
            problems.invalid.append(str(exc))
    side, own = load_worker_side(require_postgres=True)  # DatabaseUnreachable (exit 7): instance unreachable
    problems.extend(own)
    if problems:
        raise ConfigError(f"this worker cannot start: {problems.line()}")
    active = side.settings.keyring().active.id
    summary = (
        f"work dir {side.settings.work_dir}, Dagster instance {instance_label(side.instance)}, active key {active!r}"
    )
    side.instance.dispose()
    if args.check:
        out.note(f"tenant-backup worker: configuration complete: {summary}")
        out.emit({"ok": True, "scheduler": address, "work_dir": side.settings.work_dir, "active_key": active})
        return 0
    nworkers = args.nworkers or settings.workers
    argv = [address, "--nthreads", "1", "--nworkers", str(nworkers), "--preload", __name__]
    argv += ["--local-directory", str(Path(settings.work_dir) / "dask")]
    for flag, dest in PASSED_ON:
        value = getattr(args, dest)
        if value:
            argv += [flag, str(value)]
    argv += ["--dashboard-address", args.dashboard_address] if args.dashboard_address else ["--no-dashboard"]
    out.note(f"tenant-backup worker: configuration complete: {summary}; {nworkers} Dask worker processes for {address}")
    # Dask's statistical profiler off unless configured (core/cluster.py worker_dask_config): each nanny
    # hands this process's configuration to its worker.
    with dask.config.set(worker_dask_config()):
        return run_dask_worker(argv)


def run_dask_worker(argv: list[str]) -> int:
    """Dask's own `dask worker` with these arguments, in this process (signals stop it as they stop it)."""
    from distributed.cli.dask_worker import main as dask_worker

    try:
        dask_worker.main(args=argv, prog_name="tenant-backup worker", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def dask_setup(worker) -> None:
    """Dask preload, in every worker process as it starts (`tenant-backup worker` adds it; with Dask's own
    `dask worker` — a Helm chart, the Kubernetes operator — add `--preload backup_assets.cli.worker`):
    this process's configuration, Dagster instance and definitions, checked and built before it joins
    the scheduler, so its first tenant starts warm. What is missing is logged in one line at start;
    such a worker refuses every task, and the batch names it (defs/runs/batch.py)."""
    import logging

    from ..core.cluster import check_address
    from ..core.errors import ConfigError
    from ..core.settings import Settings, load_dotenv_file
    from ..defs.runs.in_process import prepare_worker_side

    log = logging.getLogger("tenant_backup.worker")
    load_dotenv_file()
    problem, own = prepare_worker_side()
    if not problem and worker.scheduler.address:
        try:
            allow = Settings.from_env().dask_allow_plaintext
            check_address(worker.scheduler.address, allow_plaintext=allow, variable="the scheduler address")
        except ConfigError as exc:
            problem, own = str(exc), True
    if problem and own:
        log.error("tenant-backup: error: this worker refuses every task: %s", problem)
    elif problem:  # the Dagster database is unreachable: its tasks try again
        log.warning("tenant-backup: warning: %s", problem)
