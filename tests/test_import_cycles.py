"""No import cycles in ``plmforge.core``, counting imports inside functions too.

A function-level import only postpones a cycle to the first call; it still ties the modules
together. So every import of a ``plmforge.core`` module counts, wherever it is written, except
under ``if TYPE_CHECKING:`` (never executed).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import plmforge.core

CORE = Path(plmforge.core.__file__).resolve().parent
PACKAGE = "plmforge.core"


def module_name(path: Path, root: Path = CORE, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = CORE, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (``from package import x`` counts as x when x is one)."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root, package): f for f in files}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, file in modules.items():
        is_package = file.name == "__init__.py"
        for node in _imports(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules and target.startswith(package + "."):
                    target = target.rsplit(".", 1)[0]  # `import plmforge.core.data.x.y` -> the module part
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_core_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and f"{PACKAGE}.build" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in plmforge.core: " + " -> ".join(cycle or [])


def test_the_walk_sees_function_level_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def later():\n    from pkg.sub import c\n    return c\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == set()
    assert find_cycle(graph) is None
    (pkg / "sub" / "c.py").write_text("class C:\n    def m(self):\n        from .. import a\n")  # relative, in a method
    cycle = find_cycle(import_graph(pkg, "pkg"))
    assert cycle == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


def test_find_cycle_on_a_small_graph():
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"y"}}) == ["y", "z", "y"]
