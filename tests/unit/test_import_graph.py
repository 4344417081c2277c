"""The package's shape, checked from its source: no import cycle, imports follow the documented layer order,
and no module reaches into another module's private names.

The layer order is written once, in docs/architecture.md between the `layers:begin` and `layers:end` markers;
this test reads it from there. Imports under `if TYPE_CHECKING:` are annotations only and are left out; imports
inside functions (lazy imports of optional SDKs, of the simulated card) count like any other.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = "ax_llm_provider"
DOC = ROOT / "docs" / "architecture.md"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_edges(known: dict[str, Path]) -> list[Edge]:
    edges = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in known else base)
            for target in targets:
                while target and target not in known:  # `import a.b.c` where c is a name: its module
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE + ".") and target != module:
                    edges.append(Edge(module, target, node.lineno))  # type: ignore[attr-defined]
    return edges


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def documented_layers(text: str) -> list[list[str]]:
    """The layer block of docs/architecture.md: one layer a line, bottom first, its units comma-separated in
    the first column (module paths under the package, `/` or `.` separated)."""
    block = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", text, re.S)
    assert block, "docs/architecture.md has no <!-- layers:begin --> ... <!-- layers:end --> block"
    layers = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith("```") or line.startswith(" "):
            continue
        first = re.split(r"\s{2,}", line.strip())[0]
        units = [u.strip().rstrip("/").removesuffix(".py").replace("/", ".") for u in first.split(",")]
        layers.append([PACKAGE if u == "__init__" else f"{PACKAGE}.{u}" for u in units if u])
    return layers


def layer_of(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer index, unit) of the longest unit that is the module or one of its parent packages."""
    best: tuple[int, str] | None = None
    for i, units in enumerate(layers):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (i, unit)
    return best


def layer_violations(edges: list[Edge], layers: list[list[str]]) -> list[str]:
    problems = []
    for e in edges:
        src, dst = layer_of(e.source, layers), layer_of(e.target, layers)
        if src is None or dst is None:
            continue  # reported by test_every_module_has_a_layer
        if dst[0] > src[0]:
            problems.append(f"{e.source}:{e.line} imports {e.target}: {dst[1]} is above {src[1]}")
    return problems


def private_reaches(known: dict[str, Path]) -> list[str]:
    """`from our_module import _name`, and `obj._name` where `_name` is not defined in the same module."""
    problems = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        defined = _private_names_defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith(PACKAGE)):
                for alias in node.names:
                    if _private(alias.name):
                        problems.append(f"{module}:{node.lineno} imports the private {alias.name}")
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if node.attr not in defined:
                    problems.append(f"{module}:{node.lineno} reaches into {ast.unparse(owner)}.{node.attr}")
    return problems


# Public names that start with an underscore by the standard library's own convention.
DOCUMENTED_UNDERSCORE_NAMES = {"_exit", "_fields_", "_pack_", "_asdict", "_replace", "_make"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in DOCUMENTED_UNDERSCORE_NAMES


def _private_names_defined(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _private(node.target.id):
            names.add(node.target.id)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
            names.add(node.id)
    return names


# ---- the checks ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def known() -> dict[str, Path]:
    return modules()


@pytest.fixture(scope="module")
def edges(known: dict[str, Path]) -> list[Edge]:
    return import_edges(known)


@pytest.fixture(scope="module")
def layers() -> list[list[str]]:
    return documented_layers(DOC.read_text())


def test_the_package_has_no_import_cycle(edges: list[Edge]) -> None:
    assert find_cycles(edges) == []


def test_every_module_has_a_layer(known: dict[str, Path], layers: list[list[str]]) -> None:
    assert [m for m in known if m != PACKAGE and layer_of(m, layers) is None] == []


def test_imports_follow_the_documented_layer_order(edges: list[Edge], layers: list[list[str]]) -> None:
    assert layer_violations(edges, layers) == []


def test_no_module_reaches_into_another_modules_privates(known: dict[str, Path]) -> None:
    assert private_reaches(known) == []


# ---- the checker itself finds what it should --------------------------------------------------------------


def test_a_cycle_is_found() -> None:
    cycle = [Edge("p.a", "p.b", 1), Edge("p.b", "p.c", 1), Edge("p.c", "p.a", 1), Edge("p.c", "p.d", 1)]
    assert find_cycles(cycle) == [["p.a", "p.b", "p.c"]]


def test_an_upward_import_is_found() -> None:
    layers = documented_layers("<!-- layers:begin -->\n```\nruntime/   low\nengine/, process.py   high\n```\n"
                               "<!-- layers:end -->")
    assert layers == [[f"{PACKAGE}.runtime"], [f"{PACKAGE}.engine", f"{PACKAGE}.process"]]
    up = Edge(f"{PACKAGE}.runtime.x", f"{PACKAGE}.engine.y", 3)
    down = Edge(f"{PACKAGE}.process", f"{PACKAGE}.runtime.x", 4)
    assert layer_violations([up, down], layers) == [
        f"{PACKAGE}.runtime.x:3 imports {PACKAGE}.engine.y: {PACKAGE}.engine is above {PACKAGE}.runtime"]


def test_a_private_reach_is_found(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("from ax_llm_provider.engine.x import _hidden\n\n"
                    "class A:\n    def __init__(self):\n        self._own = 1\n\n"
                    "def f(a, engine):\n    return a._own + engine._models\n")
    assert private_reaches({"m": path}) == [
        "m:1 imports the private _hidden", "m:8 reaches into engine._models"]
