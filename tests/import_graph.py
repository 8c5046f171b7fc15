"""The repository's import graph, read from the source (imports inside functions included, relative ones
resolved), for the layout tests: module names, their imports, cycles, closures and depth."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

from conftest import REPO

PACKAGES = ("zeroshot", "train", "contest")


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
