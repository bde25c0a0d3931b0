"""Past one machine: what a batch's driver and its Dask workers must agree on, what each worker holds
itself, and how they may talk (docs/DEPLOYMENT.md, "Workers on other machines").

Three kinds of settings:
- **secrets** (SECRET_VARIABLES: the source password, the keyring, storage keys, the scratch DSN, the
  alert webhook, Dagster's database URL): never sent. Every worker reads its own from its own
  environment or key file, as the code location does.
- **per machine** (work directory, scratch server, client and server programs, timeouts, part
  sizes, ...): each worker's own, from its environment.
- **shared** (`cluster_settings`): what decides which tenants are dumped how, and where and under
  which key the archives go (source, registry, tenant column and setting, locations, retention, the
  active key). The driver sends its values (none of them secret: a DSN as user@host:port/db, the
  active key as its id and a one-way check value) with every task; a worker whose own values differ
  refuses the task, naming each setting (`compare`).

The transport: `tls://` with Dask's own security configuration (a CA, and a certificate and key per
process: `check_tls`); plain `tcp://` only to a loopback address unless the operator opts in
(TENANT_BACKUP_DASK_ALLOW_PLAINTEXT, `check_address`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import ConfigError, TenantBackupError
from .locations import registry
from .options import OPTIONS

# Never sent to a worker, never compared: the general settings' secrets (core/settings.py OPTIONS:
# the source and registry DSNs, compared as user@host:port/db only; the keyring, compared as the active
# key's id and check value only; the scratch DSN; the alert webhook), every location kind's secrets
# (core/locations/registry.py), the keyring file's contents (read where it is) and Dagster's database URL.
SECRET_VARIABLES = frozenset({*(o.var for o in OPTIONS if o.secret), *registry.secret_variables(), "DAGSTER_PG_URL"})
KEY_CHECK_LABEL = b"tenant-backup key check v1\0"
PLAINTEXT_OPT_IN = "TENANT_BACKUP_DASK_ALLOW_PLAINTEXT"
ACTIVE_KEY = "active key"  # the shared setting that is the keyring's first key: `id:check value`


class WorkerRefused(ConfigError):
    """A worker refused a task: its own configuration is incomplete, or differs from the driver's in a
    setting the cluster must agree on. One line naming the worker and every problem."""

    def __init__(self, message: str, worker: str = ""):
        super().__init__(message)
        self.worker = worker

    def __reduce__(self):  # travels from the worker to the driver
        return (type(self), (str(self), self.worker))


class ClusterUnreachable(TenantBackupError):
    """The Dask scheduler cannot be connected to (down, wrong address, or it refused our certificate)."""

    exit_code = 7
    transient = True


@dataclass(frozen=True)
class ClusterSpec:
    """What the driver sends with every task besides the tenant: no secret (tests/test_cluster_tls.py
    reads every task the scheduler receives for one)."""

    shared: tuple[tuple[str, str], ...]  # cluster_settings() of the driver, sorted
    instance: str  # the Dagster instance's cluster token (stored in the instance: defs/runs/batch.py)
    instance_label: str  # the driver's Dagster database as user@host:port/db, for messages


# ------------------------------------------------------------------------------ worker processes

PROFILER = "distributed.worker.profile.enabled"


def worker_dask_config() -> dict[str, object]:
    """Dask configuration for our worker processes (a LocalCluster's, `tenant-backup worker`'s): Dask's
    statistical profiler off. It samples the task thread's stack every 10 ms and keeps one call tree per
    second for the last 1,000 seconds (`distributed.admin.low-level-log-length`), twice (the whole
    worker's and per task key) — a tenant run's Dagster stack is deep, so a worker grew ~1.5 MB per
    tenant it backed up (~43,000 dicts of profile nodes per 25 tenants) until 1,000 seconds of history
    were full, and spent CPU sampling. It feeds only the dashboard's profile page. An operator who set
    it (DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED, a Dask YAML file) keeps their value."""
    import dask

    default = dask.config.get(PROFILER, config=dask.config.merge(*dask.config.defaults), default=True)
    configured = dask.config.get(PROFILER, default=True)
    from_environment = dask.config.get(PROFILER, config=dask.config.collect_env(), default=None)  # Dask's own read
    if configured != default or from_environment is not None:
        return {}
    return {PROFILER: False}


# --------------------------------------------------------------------------------- shared settings


def key_check(key: bytes) -> str:
    """A one-way check value of a master key (like a key check value): tells two keys of one id apart
    without carrying anything that helps to find the key."""
    return hashlib.sha256(KEY_CHECK_LABEL + key).hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("tenant-backup", "dagster"):
        try:
            out[f"{dist} version"] = version(dist)
        except PackageNotFoundError:
            out[f"{dist} version"] = "not installed"
    return out


def cluster_settings(settings) -> dict[str, str]:
    """The settings a driver and its workers must agree on, by name, as effective non-secret values
    (a default and the same value set explicitly agree). Raises ConfigError like the parsers do."""
    from .source.session import describe

    source = settings.source
    out = {
        "TENANT_BACKUP_SOURCE_DSN": describe(source.dsn),
        "TENANT_BACKUP_TENANTS_DSN": describe(source.registry_dsn),
        "TENANT_BACKUP_TENANTS_QUERY": source.tenants_query,
        "TENANT_BACKUP_TENANT_COLUMN": source.tenant_column,
        "TENANT_BACKUP_TENANT_SETTING": source.tenant_setting,
        "TENANT_BACKUP_TENANT_ID_PATTERN": source.tenant_id_pattern or "",
        "TENANT_BACKUP_SHARED_TABLES": ",".join(source.shared_tables),
        "TENANT_BACKUP_EXCLUDE_TABLES": ",".join(source.exclude_tables),
        "TENANT_BACKUP_KEEP_MIN": str(settings.keep_min),
        **_versions(),
    }
    active = settings.keyring().active
    out[ACTIVE_KEY] = f"{active.id}:{key_check(active.key)}"
    names = settings.location_names
    out["TENANT_BACKUP_LOCATIONS"] = ",".join(names)
    out["TENANT_BACKUP_STORAGE_PREFIX"] = settings.get("TENANT_BACKUP_STORAGE_PREFIX").strip().strip("/")
    env = settings.environ
    for name, location in settings.locations(names, retry=False).items():
        kind = registry.kind(name)
        out[kind.retention_variable] = str(location.retention_days)
        variables = [v for v in kind.variables if v.is_locating]  # where it stores: bucket, endpoint, dir
        for variable in variables:
            out[variable.name] = str(variable.parse(env) or "")
        if not variables:  # a kind that declares none: where it stores, as the location says it
            out[f"location {name}"] = repr(location)
    return out


def _missing_location_variables(name: str, env: Mapping[str, str]) -> list[str]:
    try:
        return list(registry.kind(name).missing(env))
    except ConfigError:
        return []


def compare(driver: Mapping[str, str], worker: Mapping[str, str], worker_key_ids: tuple[str, ...]) -> list[str]:
    """Every shared setting on which this worker differs from the driver, one phrase each, named."""
    problems = []
    for name in sorted(set(driver) | set(worker)):
        theirs, mine = driver.get(name), worker.get(name)
        if theirs == mine:
            continue
        if name == ACTIVE_KEY:
            problems.append(_key_problem(theirs or "", mine or "", worker_key_ids))
        else:
            problems.append(
                f"{name} differs from the driver's (this worker: {_shown(mine)}, the driver: {_shown(theirs)})"
            )
    return problems


def _shown(value: str | None) -> str:
    if value is None:
        return "unknown"
    return repr(value if len(value) <= 120 else value[:117] + "...")


def _key_problem(driver: str, worker: str, worker_key_ids: tuple[str, ...]) -> str:
    key_id = driver.partition(":")[0]
    keys = "TENANT_BACKUP_KEYS / TENANT_BACKUP_KEYS_FILE"
    if key_id not in worker_key_ids:
        return (
            f"its keyring ({keys}) lacks the active key id {key_id!r} (it holds {', '.join(worker_key_ids) or 'none'})"
        )
    if worker.partition(":")[0] != key_id:
        return f"its keyring's active (first) key is {worker.partition(':')[0]!r}, the driver's is {key_id!r}"
    return f"its key {key_id!r} is not the driver's key of that id ({keys})"


# ------------------------------------------------------------------------ a worker's own settings


@dataclass
class Problems:
    """Everything wrong with a process's configuration, to be said in one line."""

    missing: list[str]
    invalid: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.invalid)

    def extend(self, other: "Problems") -> None:
        self.missing += [m for m in other.missing if m not in self.missing]
        self.invalid += other.invalid

    def line(self) -> str:
        parts = []
        if self.missing:
            parts.append("not set: " + ", ".join(self.missing))
        parts += self.invalid
        return "; ".join(parts)


def configuration_problems(settings) -> Problems:
    """Every variable a worker lacks, and every other problem with its own configuration: the source,
    the keyring, each location, the work directory (nothing stops at the first)."""
    env = settings.environ
    problems = Problems([], [])

    def _set(var: str) -> bool:
        return bool((env.get(var) or "").strip())

    if not _set("TENANT_BACKUP_SOURCE_DSN"):
        problems.missing.append("TENANT_BACKUP_SOURCE_DSN")
    else:
        _collect(problems, lambda: settings.source)
    if not (_set("TENANT_BACKUP_KEYS") or _set("TENANT_BACKUP_KEYS_FILE")):
        problems.missing.append("TENANT_BACKUP_KEYS (or TENANT_BACKUP_KEYS_FILE)")
    else:
        _collect(problems, settings.keyring)
    names = _collect(problems, lambda: settings.location_names) or []
    lacking = [v for n in names for v in _missing_location_variables(n, env)]
    problems.missing += [v for v in dict.fromkeys(lacking) if v not in problems.missing]
    if names and not lacking:
        _collect(problems, lambda: settings.locations(names, retry=False))
    work = Path(settings.work_dir)
    try:
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = work / f".write-probe-{socket.gethostname()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        problems.invalid.append(f"TENANT_BACKUP_WORK_DIR {work} is not writable: {exc.strerror or exc}")
    return problems


def _collect(problems: Problems, build):
    try:
        return build()
    except ConfigError as exc:
        problems.invalid.append(str(exc))
        return None


# ------------------------------------------------------------------------------------- transport


def address_parts(address: str) -> tuple[str, str]:
    """(scheme, host) of a Dask address; a bare `host:port` has Dask's default scheme."""
    scheme, sep, rest = address.partition("://")
    if not sep:  # Dask's default scheme (distributed.comm.default-scheme, tcp unless configured)
        import dask

        scheme, rest = dask.config.get("distributed.comm.default-scheme", "tcp"), address
    if rest.startswith("["):  # [::1]:8786
        host = rest[1:].partition("]")[0]
    elif rest.count(":") == 1:
        host = rest.partition(":")[0]
    else:  # no port, or a bare IPv6 address
        host = rest
    return scheme.lower(), host


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (a name that does not resolve is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_address(address: str, *, allow_plaintext: bool, variable: str) -> str:
    """The scheme of `address` when it may be used: tls:// always (with check_tls), a plain protocol
    only to a loopback address or when the operator opted in. ConfigError naming `variable` otherwise."""
    scheme, host = address_parts(address)
    named = f"{variable}={address}" if variable.isupper() else f"{variable} {address}"
    if scheme in ("tls", "wss"):
        return scheme
    if scheme in ("tcp", "ws", "ucx") and (allow_plaintext or is_loopback(host)):
        return scheme
    if scheme in ("tcp", "ws", "ucx"):
        raise ConfigError(
            f"{named} is a plain {scheme}:// address on the network: tasks and results would travel"
            f" unencrypted and anyone reaching the port could run code on the workers; use tls:// with Dask's TLS"
            f" configuration (docs/DEPLOYMENT.md), or set {PLAINTEXT_OPT_IN}=1 to allow it"
        )
    raise ConfigError(f"{named}: unsupported scheme {scheme!r} (use tls://host:8786)")


# Dask's own configuration keys for one role, and the environment variables that set them.
def _tls_keys(role: str) -> list[tuple[str, str, str]]:
    return [
        ("tls_ca_file", "distributed.comm.tls.ca-file", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE"),
        (f"tls_{role}_cert", f"distributed.comm.tls.{role}.cert", f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT"),
    ]


def check_tls(security, role: str, address: str) -> None:
    """A tls:// address needs a CA file and this process's certificate (and key, unless the certificate
    file holds it) in `security` (distributed.security.Security, from Dask's configuration): a
    ConfigError naming each missing one and the variable that sets it."""
    missing, unreadable = [], []
    for attr, key, var in _tls_keys(role):
        value = getattr(security, attr, None)
        if not value:
            missing.append(f"{key} ({var})")
        elif "\n" not in value and not _readable(value):
            unreadable.append(f"{key}={value}")
    key_file = getattr(security, f"tls_{role}_key", None)
    if key_file and "\n" not in key_file and not _readable(key_file):
        unreadable.append(f"distributed.comm.tls.{role}.key={key_file}")
    if missing or unreadable:
        parts = []
        if missing:
            parts.append("Dask's TLS configuration lacks " + ", ".join(missing))
        if unreadable:
            parts.append("cannot read " + ", ".join(unreadable))
        raise ConfigError(f"{address}: " + "; ".join(parts) + " (docs/DEPLOYMENT.md, certificates)")


def _readable(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False
