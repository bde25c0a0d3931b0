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


# ------------------------------------------------------------------------------------ import graph


def _module_name(rel: str) -> str:
    parts = ["backup_assets", *rel.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports, anywhere in it (inside functions, under
    TYPE_CHECKING): `from package import name` counts as the module `package.name` when that is one
    (as import-linter reads it), else as `package`."""
    modules = {_module_name(rel): (rel, tree) for rel, _, tree in _modules()}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, (rel, tree) in modules.items():
        package = module.split(".") if rel.endswith("__init__.py") else module.split(".")[:-1]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else resolve(base))
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_anywhere():
    """No module imports, directly or through others, a module that imports it: imports inside
    functions and under TYPE_CHECKING count (they only hide a cycle, they do not remove it)."""
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# Which part may import which (imports go down): an edge imports the layers below it, never the reverse.
# The command line and the demo (the `demo` command, which backs up with the `backup` command's batch
# display) are one edge; "testing" is the test doubles (and the demo's process control), which the demo
# starts; the end-to-end stack built on the demo's (testing/dagster_stack.py) is a part of its own.
LAYERS = {
    "core": set(),
    "sample": {"core"},
    "testing": {"core", "sample"},
    "defs": {"core"},
    "definitions": {"core", "defs"},
    "cli": {"core", "defs", "sample", "testing"},
    "e2e stack": {"core", "sample", "testing", "cli"},
}


def _part(module: str) -> str:
    if module == "backup_assets.testing.dagster_stack":
        return "e2e stack"
    part = module.split(".")[1] if "." in module else module
    return "cli" if part == "demo" else part


def test_layers_import_down_only():
    bad = []
    for module, targets in _import_graph().items():
        part = _part(module)
        for target in targets:
            other = _part(target)
            if other != part and other in LAYERS and other not in LAYERS.get(part, set()):
                bad.append(f"{module} -> {target}")
    assert not bad, f"imports against the layers (docs/ARCHITECTURE.md): {bad}"
    # The parts themselves form no loop (a package that imports one that imports it back).
    assert not _cycles({part: allowed & set(LAYERS) for part, allowed in LAYERS.items()}), LAYERS


# ----------------------------------------------------------------------------- location kinds, once


def _code_strings(tree: ast.AST):
    """String constants of a module's code (docstrings are documentation: left out)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_a_location_kind_is_named_only_in_its_own_module():
    """What a kind of location is lives in its module (core/locations/<kind>.py, registry.py): no other
    production module names one of the cloud kinds in its code, or their variables. The test doubles
    (testing/) speak those protocols and are left out, as are docstrings and docs."""
    import re

    from backup_assets.core.locations import registry

    others = [k.name for k in registry.kinds() if k.name != "local"]
    assert others, "no kind besides the local disk"
    word = re.compile(r"(?i)(?<![a-z0-9])(" + "|".join(map(re.escape, others)) + r")(?![a-z0-9])")
    bad = []
    for rel, _, tree in _modules():
        if rel.startswith("testing/"):
            continue
        own = {f"core/locations/{k}.py" for k in others}
        for node in _code_strings(tree):
            if rel not in own and word.search(node.value):
                bad.append(f"{rel}:{node.lineno}: {node.value[:60]!r}")
    assert not bad, f"a location kind named outside its own module: {bad}"


def test_the_storage_docs_table_is_the_registry_s():
    from backup_assets.core.locations import registry

    docs = (PACKAGE.parent / "docs" / "STORAGE.md").read_text()
    assert registry.docs_table() in docs, (
        "docs/STORAGE.md's table of location variables is not the registry's: paste"
        " `python -c 'from backup_assets.core.locations import registry; print(registry.docs_table())'`"
    )


# ---------------------------------------------------------------------------------- typed manifest


def test_no_manifest_field_is_read_by_string_key_outside_its_module():
    """The manifest's fields are read through Manifest (core/archive/manifest.py) only: no `x["archive"]`,
    `x.get("tables")`, ... anywhere else (the archive header of core/codec/format.py has its own
    fields, some of the same names, defined there)."""
    import dataclasses

    from backup_assets.core.archive import manifest as m

    parts = (m.Manifest, m.ArchiveInfo, m.TableKinds, m.SourceInfo, m.DrillRecord, m.SealInfo)
    names = {f.name for cls in parts for f in dataclasses.fields(cls) if f.metadata.get("json")}
    names -= {"ok", "version", "file", "role", "database", "tenant"}  # words too common to tell apart
    bad = []
    for rel, _, tree in _modules():
        if rel in ("core/archive/manifest.py", "core/codec/format.py") or rel.startswith("testing/"):
            continue
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                key = node.slice.value if isinstance(node.slice, ast.Constant) else None
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                key = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            if isinstance(key, str) and key in names:
                bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not bad, f"manifest fields read by string key outside core/archive/manifest.py: {bad}"
