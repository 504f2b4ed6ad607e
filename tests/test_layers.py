"""The package's shape: layers that only point down, no import cycles, short functions.

Read from the source (imports and definitions), so a module that is never imported by a test is
checked too. Imports under `if TYPE_CHECKING:` are for type checkers only and do not count.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgecls"
# Bottom to top: a module may import from its own layer or any layer below it.
LAYERS = [
    {"errors", "redact", "console", "device", "registry", "phases"},
    {"config"},
    {"runs", "models", "data", "report"},
    {"evaluate", "deploy"},
    {"training"},
    {"plan"},
    {"ablate", "api"},
    {"cli", "__main__", "__init__"},
]
LONGEST_FUNCTION = 80  # lines, decorators and docstring included


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    (layer,) = [index for index, names in enumerate(LAYERS) if top in names]
    return layer


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def edgecls_imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The edgecls modules `tree` imports, anywhere but under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgecls")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "edgecls":
            for alias in node.names:  # `from edgecls import runs` imports the module edgecls.runs
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        graph[name] = edgecls_imports(ast.parse(path.read_text()), modules) - {name}
    return graph


def test_every_import_points_down_the_layers():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    graph = import_graph()
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            cycle = walk(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = walk(module, [])
        assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=str)
def test_no_function_is_longer_than_a_screen(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
    ]
    assert not long, f"{path.name}: " + ", ".join(long)
