"""The package's import graph, read from its source: no circles, layers that only import downwards,
and a core that knows no front end."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import napari_dropsembles

PACKAGE = Path(napari_dropsembles.__file__).parent
NAME = "napari_dropsembles"

# core's sub-packages, lowest first: each imports only the ones before it
CORE_LAYERS = (
    "config",
    "volumes",
    "io",
    "slices",
    "data",
    "networks",
    "fitting",
    "querying",
    "scoring",
    "results",
    "jobs",
    "cohort",
)
FRONT_ENDS = (f"{NAME}._gui", f"{NAME}.cli", f"{NAME}._widget", f"{NAME}._viewer", f"{NAME}._reader")
GUI_LIBRARIES = ("napari", "qtpy", "magicgui", "vispy", "PyQt5", "PyQt6", "PySide2", "PySide6")


@cache
def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:`` (annotations only: not imported when the code runs)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for inner in ast.walk(node))
    return skipped


def _function_nodes(tree: ast.Module) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(inner) for inner in ast.walk(node) if inner is not node)
    return inside


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    return _imports_of(module, path, tuple(modules))


@cache
def _imports_of(module: str, path: Path, modules: tuple[str, ...]) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for each runtime import of ``module``; a package module is
    resolved to the deepest module of the package it names."""
    tree = ast.parse(path.read_text())
    skipped, in_function = _type_checking_nodes(tree), _function_nodes(tree)
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            prefix = ".".join(p for p in (base, node.module or "") if p)
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        found += [(target, id(node) in in_function) for target in targets]
    return found


@cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports when it runs (inside functions too); importing
    ``a.b.c`` also runs ``a`` and ``a.b``."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for target, _ in imports_of(module, path, modules):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in modules and name != module and not module.startswith(name + "."):
                    edges.add(name)
        graph[module] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _core_layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "core" else None


def test_the_package_has_no_import_circle():
    assert circles(import_graph()) == []


def test_each_core_layer_imports_only_the_layers_below_it():
    upwards = []
    for module, targets in import_graph().items():
        layer = _core_layer(module)
        if layer is None:
            continue
        assert layer in CORE_LAYERS, f"{module}: core/{layer} is not in CORE_LAYERS (add it where it belongs)"
        for target in targets:
            other = _core_layer(target)
            if other is not None and CORE_LAYERS.index(other) > CORE_LAYERS.index(layer):
                upwards.append(f"{module} -> {target}")
    assert upwards == []


def test_core_imports_no_front_end_and_no_gui_library():
    modules = package_modules()
    wrong = []
    for module, path in modules.items():
        if not module.startswith(f"{NAME}.core"):
            continue
        for target, _ in imports_of(module, path, modules):
            if target.startswith(FRONT_ENDS) or target.split(".")[0] in GUI_LIBRARIES:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_core_imports_its_own_modules_at_the_top():
    """Imports inside functions are for heavy optional libraries only, never to get around a circle."""
    modules = package_modules()
    lazy = []
    for module, path in modules.items():
        if module.startswith(f"{NAME}.core"):
            found = imports_of(module, path, modules)
            lazy += [f"{module} -> {target}" for target, inside in found if inside and target.startswith(NAME)]
    assert lazy == []
