"""The tree's shape: one typing style everywhere, every command on the shared CLI skeleton."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Sequence

from conftest import REPO

PACKAGES = ("zeroshot", "train", "contest", "tests")
PYTHON_FILES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _annotations(tree: ast.AST) -> List[ast.AST]:
    out: List[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            out += [a.annotation for a in args if a.annotation is not None]
            out += [node.returns] if node.returns is not None else []
        elif isinstance(node, ast.AnnAssign):
            out.append(node.annotation)
    return out


def modern_annotations(paths: Sequence[Path]) -> List[str]:
    """``file:line`` of annotations written as list[...]/dict[...] or X | Y instead of typing's names."""
    found = []
    for path in paths:
        for ann in _annotations(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for node in ast.walk(ann):
                builtin = (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                           and node.value.id in BUILTIN_GENERICS)
                union = isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                if builtin or union:
                    found.append(f"{path.name}:{node.lineno}")
                    break
    return found


def test_one_typing_style() -> None:
    assert PYTHON_FILES
    assert modern_annotations(PYTHON_FILES) == []


def test_typing_style_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x: list[int], y: Optional[int] = None) -> Dict[str, int]:\n    z: int | None = 1\n")
    assert modern_annotations([bad]) == ["bad.py:1", "bad.py:2"]


def test_every_command_uses_the_shared_skeleton() -> None:
    commands = [p for p in PYTHON_FILES if p.parts[-2] != "tests" and 'if __name__ == "__main__":' in p.read_text(
        encoding="utf-8")]
    assert commands
    for path in commands:
        source = path.read_text(encoding="utf-8")
        assert "make_parser(" in source and "parse_args(" in source, path
        assert "def main(argv: Optional[List[str]] = None) -> int:" in source, path
        assert "argparse.ArgumentParser(" not in source and "basicConfig" not in source, path
