"""A Dask cluster for tests as if on separate machines: a certificate authority and certificates made
here (the `cryptography` package), and per "machine" its own HOME, TMPDIR, work directory and
environment; a TLS scheduler started as Dask's own `dask scheduler` process (optionally with a preload
that records every task graph it receives: tests/dask_payload_recorder.py)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
RECORDER = Path(__file__).resolve().parent / "dask_payload_recorder.py"


# ------------------------------------------------------------------------------------ certificates


@dataclass
class Authority:
    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.pem")

    def issue(self, name: str) -> tuple[str, str]:
        """A certificate and key for `name` (valid for localhost and 127.0.0.1), signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            _builder(name, self.cert.subject, key)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return str(cert_file), str(key_file)


def make_authority(directory: Path, name: str = "tenant-backup test CA") -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(directory, key, cert)


def _builder(name: str, issuer: x509.Name, key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _write_key(key, path: Path) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(data)
    path.chmod(0o600)


def tls_env(authority: Authority, role: str, cert: tuple[str, str]) -> dict[str, str]:
    """Dask's own TLS configuration for one process, as environment variables."""
    upper = role.upper()
    return {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": authority.ca_file,
        f"DASK_DISTRIBUTED__COMM__TLS__{upper}__CERT": cert[0],
        f"DASK_DISTRIBUTED__COMM__TLS__{upper}__KEY": cert[1],
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    }


# ---------------------------------------------------------------------------------------- machines


@dataclass
class Machine:
    name: str
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def env(self, **extra: str) -> dict[str, str]:
        """A from-scratch environment: nothing of the test process's TENANT_BACKUP_*, DAGSTER_*, DASK_*."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "PYTHONPATH": str(ROOT),
            "TENANT_BACKUP_WORK_DIR": str(self.work),
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "10s",
        }
        env.update(extra)
        return env


def make_machine(base: Path, name: str) -> Machine:
    machine = Machine(name, base / name)
    for path in (machine.home, machine.tmp):
        path.mkdir(parents=True, exist_ok=True)
    return machine


def files_under(*roots: Path) -> set[str]:
    return {str(p) for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------- processes


def start_scheduler(machine: Machine, authority: Authority, *, record_to: Path | None = None):
    """`dask scheduler` over TLS on a free loopback port; (process, address) once it listens."""
    cert = authority.issue(f"scheduler-{machine.name}")
    scheduler_file = machine.tmp / "scheduler.json"
    argv = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--protocol", "tls", "--tls-ca-file", authority.ca_file, "--tls-cert", cert[0], "--tls-key", cert[1]]
    argv += ["--no-dashboard", "--scheduler-file", str(scheduler_file)]
    env = machine.env(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="3")
    if record_to is not None:
        argv += ["--preload", str(RECORDER)]
        env["TB_TEST_PAYLOAD_DIR"] = str(record_to)
    log = open(machine.root / "scheduler.log", "w")
    proc = subprocess.Popen(argv, cwd=machine.root, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if scheduler_file.exists():
            try:
                return proc, json.loads(scheduler_file.read_text())["address"]
            except (ValueError, KeyError):
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the scheduler did not start: " + (machine.root / "scheduler.log").read_text()[-2000:])


def start_process(machine: Machine, argv: list[str], env: dict[str, str], label: str) -> subprocess.Popen:
    """A process of `machine` in its own process group (SIGKILL to the group: the machine dies)."""
    log = open(machine.root / f"{label}.log", "w")
    return subprocess.Popen(
        argv, cwd=machine.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def log_of(machine: Machine, label: str) -> str:
    path = machine.root / f"{label}.log"
    return path.read_text() if path.exists() else ""


def stop(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, 15)
            except (ProcessLookupError, PermissionError):
                proc.terminate()
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, 9)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait(timeout=10)
