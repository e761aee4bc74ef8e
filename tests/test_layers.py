"""The package's modules import one way: no cycle among them, counting imports made inside
functions (which only delay TensorFlow, Ray or matplotlib, never hide a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featx"


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its body)."""
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for node in ast.walk(ast.parse((package / f"{m}.py").read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == package.name:  # from featx import learners
                    names = [a.name for a in node.names]
                elif node.module.startswith(package.name + "."):
                    names = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names
                         if a.name.startswith(package.name + ".")]
            graph[m] |= {n for n in names if n in modules and n != m}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle (its modules in order, the first repeated at the end), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_import_cycle_among_featx_modules():
    cycle = find_cycle(import_graph(PACKAGE))
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "featx"
    package.mkdir()
    (package / "a.py").write_text("from featx.b import x\n")
    (package / "b.py").write_text("def f():\n    from featx import c\n")
    (package / "c.py").write_text("import featx.a\n")
    assert find_cycle(import_graph(package)) == ["a", "b", "c", "a"]
    (package / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) == []
