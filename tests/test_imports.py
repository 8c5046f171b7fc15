"""The import graph: no cycle anywhere in the repository, the judge's path imports only the runtime core, the side
tools share one library (zeroshot/embed.py) and never import each other."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

from conftest import REPO

PACKAGES = ("zeroshot", "train", "contest")
# what predict.py runs: the judge's path (zeroshot/cli.py and what it imports)
CORE = {"zeroshot", "zeroshot.budget", "zeroshot.cli", "zeroshot.command", "zeroshot.datasets", "zeroshot.encoders",
        "zeroshot.images", "zeroshot.ladder", "zeroshot.limits", "zeroshot.linear", "zeroshot.manifest",
        "zeroshot.outputs", "zeroshot.pipeline", "zeroshot.progress", "zeroshot.report", "zeroshot.resources",
        "zeroshot.scoring", "zeroshot.text"}
SIDE_TOOLS = {"zeroshot.retrieve", "zeroshot.verify", "zeroshot.head", "zeroshot.evaluate"}
SIDE_LIBRARY = "zeroshot.embed"


def module_files(repo: Path = REPO) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py of the packages (and predict.py as ``predict``)."""
    files = {"predict": repo / "predict.py"}
    for package in PACKAGES:
        for path in (repo / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(repo).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph(files: Dict[str, Path]) -> Dict[str, Set[str]]:
    """Module -> the repository modules it imports anywhere (functions included), relative imports resolved."""
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def closure(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen: Set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def depth(graph: Dict[str, Set[str]], node: str) -> int:
    """Import floors below ``node`` (1 for a module that imports no repository module); the graph is acyclic."""
    return 1 + max((depth(graph, nxt) for nxt in graph.get(node, ())), default=0)


GRAPH = import_graph(module_files())


def test_no_import_cycle_in_the_repository() -> None:
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    for name, text in {"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n", "c.py": ""}.items():
        (tmp_path / "zeroshot" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "zeroshot" / name).write_text(text)
    (tmp_path / "zeroshot" / "__init__.py").write_text("")
    (tmp_path / "predict.py").write_text("")
    for package in ("train", "contest"):
        (tmp_path / package).mkdir()
    assert cycles(import_graph(module_files(tmp_path))) == [["zeroshot.a", "zeroshot.b"]]


def test_the_judges_path_imports_only_the_runtime_core() -> None:
    assert closure(GRAPH, "predict") - {"predict"} <= CORE
    assert depth(GRAPH, "predict") <= 7  # predict, cli, pipeline, encoders, linear, scoring, manifest


def test_side_tools_import_the_core_and_their_library_never_each_other() -> None:
    for tool in SIDE_TOOLS | {SIDE_LIBRARY}:
        imported = {m for m in GRAPH[tool] if m.startswith("zeroshot")}
        assert imported <= CORE | {SIDE_LIBRARY}, (tool, imported - CORE)
    for module in CORE:
        assert not GRAPH[module] & (SIDE_TOOLS | {SIDE_LIBRARY}), module
