"""The layout's rules, checked on the source (docs/ARCHITECTURE.md): imports go down only, the test
doubles stay out of production, configuration is read at the edges, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "backup_assets"
# Where os.environ may be read (docs/ARCHITECTURE.md, "Configuration"): the edges, the Settings
# parser, and the module that decides what a child process inherits.
ENVIRON_ALLOWED = {
    "core/settings.py",
    "core/source/session.py",
    "cli",
    "demo.py",
    "definitions.py",
    "defs/operations/jobs.py",
    "testing",
    "sample",
}
MAX_LINES = 500


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.AST, rel: str) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved)."""
    package = ["backup_assets", *rel.split("/")[:-1]]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _allowed(rel: str, allowed: set[str]) -> bool:
    return any(rel == a or rel.startswith(a + "/") for a in allowed)


def test_core_imports_neither_dagster_nor_the_layers_above_it():
    bad = {}
    for rel, _, tree in _modules():
        if rel.startswith("core/"):
            hits = sorted(
                n
                for n in _imports(tree, rel)
                if n.split(".")[0] == "dagster"
                or n.startswith(
                    ("backup_assets.defs", "backup_assets.cli", "backup_assets.demo", "backup_assets.testing")
                )
            )
            if hits:
                bad[rel] = hits
    assert not bad, f"core/ must not import Dagster, defs, cli, demo or the test doubles: {bad}"


def test_no_production_module_imports_the_test_doubles():
    bad = {}
    for rel, _, tree in _modules():
        if rel.startswith(("testing/", "sample/")) or rel == "demo.py":
            continue  # the demo starts the doubles as processes; it is the one place that uses them
        hits = sorted(
            n
            for n in _imports(tree, rel)
            if n.startswith("backup_assets.testing") or n.split(".")[0] in ("moto", "psutil", "pytest")
        )
        if hits:
            bad[rel] = hits
    assert not bad, f"production modules import test doubles or test-only packages: {bad}"


def test_os_environ_is_read_only_at_the_edges():
    bad = []
    for rel, _, tree in _modules():
        if _allowed(rel, ENVIRON_ALLOWED):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                bad.append(f"{rel}:{node.lineno}")
    assert not bad, f"os.environ read below the edges (use Settings): {bad}"


def test_no_module_over_500_lines_without_a_reason_at_its_top():
    long = []
    for rel, path, tree in _modules():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(tree) or ""
        if lines > MAX_LINES and "Why this module is long" not in doc:
            long.append(f"{rel} ({lines} lines)")
    assert not long, f"modules over {MAX_LINES} lines without 'Why this module is long' in their docstring: {long}"
