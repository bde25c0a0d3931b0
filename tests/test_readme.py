"""The README's shell blocks, run as written, in order, in one shell, in a fresh copy of the repository
(issue 21): the set-up, the first export against the embedded sample, every operator command against a
local directory, R2 and B2 through their loopback stand-ins. A documented command or flag that stops
working fails here. A block the README marks `<!-- not run by tests/test_readme.py: why -->` is left
out (a service, placeholders); the lines in INSTEAD run differently, for the reason given there.

Why not a Markdown code-block runner (pytest-codeblocks, mktestdocs, both maintained): they run each
block in a shell of its own in pytest's working directory, so a block cannot use the variables the
one before it exported, there is no fresh directory and nothing stops the servers a block leaves
running. Extracting the blocks takes a dozen lines here.

Run time: about 40 s (the demo with 2 tenants, then the path with 5).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOT_RUN = "<!-- not run by tests/test_readme.py"
# Lines of the set-up block that run differently here (matched on the command, before its comment).
INSTEAD = {
    "make demo": 'make demo ARGS="--tenants 2 --rows 5"',  # the same demo, small: the test stays short
    "make test": ": make test is this very suite",  # no suite inside the suite
}


def shell_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, run?) of every ```sh block, in order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() in ("```sh", "```bash", "```shell"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
            blocks.append((i + 1, "\n".join(lines[i + 1 : end]), not before.startswith(NOT_RUN)))
            i = end
        i += 1
    return blocks


def script(text: str) -> tuple[str, set[str]]:
    """The blocks to run as one bash script, and the INSTEAD lines that were found."""
    parts, used = ["set -euo pipefail"], set()
    for number, code, run in shell_blocks(text):
        if not run:
            continue
        parts.append(f": README.md line {number}")
        for line in code.splitlines():
            command = line.split("#", 1)[0].strip()
            if command in INSTEAD:
                used.add(command)
                line = INSTEAD[command]
            parts.append(line)
    return "\n".join(parts) + "\n", used


def fresh_copy(dest: Path) -> None:
    """The repository's files as a clone would have them (tracked, and new files not ignored), and a
    .venv whose contents are this test run's virtual environment: the set-up's `make` finds it installed."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    venv = dest / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # newer than the copied pyproject.toml: nothing to install


def _stop_leftovers(dest: Path) -> None:
    """Whatever a failed run left running in the copy (the sample's PostgreSQL, the stand-ins)."""
    mine = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(dest) in " ".join(proc.info["cmdline"] or []) or (proc.info["cwd"] or "").startswith(str(dest)):
                mine.append(proc)
        except psutil.Error:
            pass
    for proc in mine:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(mine, timeout=10)


def test_the_readme_blocks_find_what_they_should():
    blocks = shell_blocks(README.read_text())
    text, used = script(README.read_text())
    assert used == set(INSTEAD), f"README lines the test replaces are gone: {set(INSTEAD) - used}"
    assert sum(run for _, _, run in blocks) >= 4 and sum(not run for _, _, run in blocks) >= 1
    for command in ("tenant-backup export", "decrypt", "backup --all", "status", "list", "verify --all", "--deep"):
        assert command in text
    for command in ("restore", "--replace --dry-run", "prune --dry-run", "rebuild", "keys rewrap", "--stop"):
        assert command in text


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the project's virtual environment")
def test_the_readme_runs_as_written():
    dest = Path(tempfile.mkdtemp(prefix="tb-readme-"))  # not under pytest's tmp (the servers' user, as root)
    try:
        fresh_copy(dest)
        text, _ = script((dest / "README.md").read_text())
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TENANT_BACKUP_", "R2_", "B2_", "DAGSTER_", "PG", "SAMPLE_", "VIRTUAL_ENV"))
        }
        env["PYTHONPATH"] = str(dest)  # the copy's code, also for the console script
        result = subprocess.run(
            ["bash", "-c", text],
            cwd=dest,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        output = result.stdout[-3000:] + "\n--- stderr ---\n" + result.stderr[-6000:]
        assert result.returncode == 0, output
        # What ran, as the README says it does.
        assert "2/2 tenants backed up to local, R2 and B2 with every check passing" in result.stdout, output
        assert "into empty database" in result.stdout and "replacing its rows in" in result.stdout, output
        assert "0 would delete" in result.stdout, output
        # Lines whose command sits in a $(…) or an export: their failure alone would not stop the script.
        assert "decrypted backup" in result.stderr and "r2: 5 copied" in result.stdout, output
        assert "b2: 5 copied" in result.stdout and "15 re-wrapped" in result.stdout, output
        # Quiet by default: no INFO lines, no Python warnings, no traceback.
        noise = [
            line
            for line in result.stderr.splitlines()
            if re.match(r"(INFO|DEBUG) ", line) or "Warning:" in line or line.startswith("Traceback")
        ]
        assert noise == [], noise
        assert not list(dest.glob(".tenant-backup-demo/pg/postmaster.pid")), "the demo left its PostgreSQL running"
        assert not (dest / ".sample-db" / "pg" / "postmaster.pid").exists(), "the README's --stop did not stop it"
    finally:
        _stop_leftovers(dest)
        shutil.rmtree(dest, ignore_errors=True)
