"""The app's packages import in one direction only, read from the code's own imports (every
``import`` statement, function-level ones included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Each app package with the packages it may import. Lower layers never import higher ones.
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "core": set(),
    "channels": {"core", "contracts"},
    "dataverse": {"core", "contracts"},
    "storage": {"core", "contracts"},
    "usecases": {"core", "contracts", "channels", "dataverse", "storage"},
    "blueprints": {"core", "contracts", "storage", "usecases"},
    "function_app": {"blueprints", "usecases"},
}
#: Tools around the app: they may use its packages but nothing in the app imports them.
TOOLS = {"devhost", "bench", "tests", "provisioning"}


def module_files(package: str) -> list[Path]:
    single = ROOT / f"{package}.py"
    return [single] if single.exists() else sorted((ROOT / package).rglob("*.py"))


def imported_packages(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level name) of every absolute import in ``path``, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def project_imports() -> dict[str, dict[str, list[str]]]:
    """package -> imported project package -> where ("file:line")."""
    known = set(ALLOWED) | TOOLS
    graph: dict[str, dict[str, list[str]]] = {}
    for package in sorted(known):
        edges: dict[str, list[str]] = {}
        for path in module_files(package):
            for line, name in imported_packages(path):
                if name in known and name != package:
                    edges.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
        graph[package] = edges
    return graph


GRAPH = project_imports()


def test_every_app_package_is_declared() -> None:
    """A new top-level package must be placed in a layer (or declared a tool) before it is used."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {
        p.stem for p in ROOT.glob("*.py") if p.stem != "conftest"
    }
    assert packages <= set(ALLOWED) | TOOLS, f"undeclared packages: {sorted(packages - set(ALLOWED) - TOOLS)}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package: str) -> None:
    forbidden = {name: where for name, where in GRAPH[package].items() if name not in ALLOWED[package]}
    assert not forbidden, f"{package} must not import {forbidden}"


def test_no_app_package_imports_a_tool() -> None:
    offenders = {p: sorted(set(GRAPH[p]) & TOOLS) for p in ALLOWED if set(GRAPH[p]) & TOOLS}
    assert not offenders


def test_only_function_app_imports_blueprints() -> None:
    importers = sorted(p for p, edges in GRAPH.items() if "blueprints" in edges)
    assert importers in ([], ["function_app"]), importers


def test_channels_and_dataverse_do_not_know_each_other() -> None:
    assert "dataverse" not in GRAPH["channels"], GRAPH["channels"].get("dataverse")
    assert "channels" not in GRAPH["dataverse"], GRAPH["dataverse"].get("channels")


def test_contracts_import_no_other_package() -> None:
    assert GRAPH["contracts"] == {}


def test_packages_form_no_cycle() -> None:
    """Depth-first search over the whole graph, tools included."""
    state: dict[str, str] = {}

    def visit(package: str, path: list[str]) -> None:
        state[package] = "open"
        for name in GRAPH.get(package, {}):
            if state.get(name) == "open":
                cycle = [*path[path.index(name) :], name] if name in path else [package, name]
                pytest.fail(f"import cycle: {' -> '.join(cycle)} ({GRAPH[package][name][0]})")
            if name not in state:
                visit(name, [*path, name])
        state[package] = "done"

    for package in GRAPH:
        if package not in state:
            visit(package, [package])


def test_the_reader_really_sees_function_level_imports(tmp_path: Path) -> None:
    """The checks above are only as good as the import reader: it must see an import in a function."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from storage.ledger import SendLedger\n    import channels.base\n")
    assert sorted(name for _, name in imported_packages(module)) == ["channels", "storage"]
