"""The package's shape, as docs/architecture.md draws it: no import cycles, the served
process never imports the simulator or the benchmark, and the doc's module table names
exactly the modules there are."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fleet_exporter"
DOC = REPO / "docs" / "architecture.md"
DEV_ONLY = ("simulator", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at any depth of its code (lazy imports count too),
    resolved to absolute names; ``from X import y`` counts as importing ``X.y`` when that
    is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {
        name: {m for m in imports(name, path) if m in mods} - {name} for name, path in mods.items()
    }


def test_no_import_cycles() -> None:
    edges = graph()
    # A package's __init__ is imported by its submodules implicitly; an edge from an
    # __init__ to its own submodule would be a cycle only if that submodule imported it.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_package_never_imports_the_simulator_or_the_benchmark() -> None:
    for name, path in modules().items():
        bad = {m for m in imports(name, path) if m.split(".")[0] in DEV_ONLY}
        assert not bad, f"{name} imports {sorted(bad)}"
    # And at run time: every module of the package imported, neither is loaded.
    code = (
        "import importlib, sys\n"
        f"for m in {sorted(m for m in modules() if not m.endswith('__main__'))!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {DEV_ONLY!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "[]"


def test_the_installed_package_holds_only_the_runtime() -> None:
    """What the wheel (and so the image) carries: setuptools' own package discovery."""
    from setuptools import find_packages

    found = find_packages(str(REPO), include=["fleet_exporter*"])
    assert all(p.startswith("fleet_exporter") for p in found)
    assert re.search(r'include = \["fleet_exporter\*"\]', (REPO / "pyproject.toml").read_text())


def test_the_module_table_matches_the_code() -> None:
    section = DOC.read_text().split("## Modules", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_/]+)` \|", section, re.M))
    actual = {
        name.removeprefix("fleet_exporter.").replace(".", "/")
        for name in modules()
        if name not in ("fleet_exporter", "fleet_exporter.__main__", "fleet_exporter.web")
    }
    assert documented == actual, (
        f"in the doc only: {sorted(documented - actual)}; in the code only: "
        f"{sorted(actual - documented)}"
    )
