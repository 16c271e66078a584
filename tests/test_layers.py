"""The package's layers, read from the source's imports: no import circle, and each layer imports only the layers
below it (docs/ARCHITECTURE.md draws them).

From the bottom: the ground floor (small modules every layer may use), the model zoo, the passes, the runtime,
and the rest of `compressor` (data, training, methods, report, API, CLI). The imports are read with `ast`, wherever
they stand in a file (inside a function too: a function-local import that dodges a circle is still a circle), except
under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each import name's code lives (pyproject.toml's package-dir mapping).
FOLDERS = {"compressor": ROOT / "compressor", "compressor.passes": ROOT / "passes",
           "compressor.runtime": ROOT / "runtime", "compressor.models": ROOT / "models"}

# The ground floor: module utilities, errors, paths, files, counting, tables, options, the structure checks and the
# finiteness check, with the skip-unit vocabulary they name. It imports nothing from the layers above.
GROUND_FLOOR = {"compressor", "compressor.modules", "compressor.errors", "compressor.paths", "compressor.files",
                "compressor.counting", "compressor.tables", "compressor.options", "compressor.structure",
                "compressor.finite", "compressor.models.units"}
LAYERS = ["ground floor", "models", "passes", "runtime", "compressor"]


def module_files() -> dict[str, Path]:
    """Every module of the package by its import name."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = [part for part in relative.parts if part != "__init__"]
            name = ".".join([package, *parts])
            modules[name] = path
    return modules


MODULES = module_files()


def layer(module: str) -> int:
    if module in GROUND_FLOOR:
        return 0
    for rank, prefix in ((1, "compressor.models"), (2, "compressor.passes"), (3, "compressor.runtime")):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return 4


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(module: str) -> set[str]:
    """The package's modules that `module` imports: `from a.b import c` names a.b.c where that is a module, else
    a.b; relative imports are resolved against the module's package."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_the_package_has_no_import_circle():
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            connect(module)
    assert circles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_those_below(module):
    upward = sorted(target for target in GRAPH[module] if layer(target) > layer(module))
    assert upward == [], f"{module} ({LAYERS[layer(module)]}) imports from above: {upward}"


def test_the_layers_are_read_from_the_real_tree():
    # The test would pass vacuously on an empty or misread tree.
    assert {"compressor.api", "compressor.modules", "compressor.passes.base", "compressor.runtime.bench",
            "compressor.models.registry"} <= set(MODULES)
    assert "compressor.modules" in GRAPH["compressor.counting"]
