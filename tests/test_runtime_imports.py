"""The runtime's dependencies: numpy, onnxruntime, Pillow, sentencepiece, tokenizers, on Python 3.8 to 3.12."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest

from conftest import REPO
from datagen import make_dataset

RUNTIME_FILES = sorted([REPO / "predict.py", *(REPO / "zeroshot").glob("*.py")])
ALLOWED_THIRD_PARTY = {"numpy", "onnxruntime", "PIL", "sentencepiece", "tokenizers"}
# never imported by the runtime: heavy frameworks, and the model-making and contest packages of this repo
FORBIDDEN = ("torch", "torchvision", "cv2", "tensorflow", "train", "contest")
# imported by one side tool's module only, never on the judge's path (and not vendored into the archive)
SIDE_TOOL_ONLY = {"faiss": "retrieve_index.py"}

BLOCK_AND_RUN = r"""
import sys, importlib.abc, runpy
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError("blocked by test: " + name)
FORBIDDEN = set(sys.argv.pop(1).split(","))
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    mods = sorted({m.split(".")[0] for m in sys.modules})
    sys.stderr.write("MODULES " + " ".join(mods) + "\n")
"""


def test_runtime_parses_with_the_python38_grammar() -> None:
    assert RUNTIME_FILES
    for path in RUNTIME_FILES:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 8))


def test_runtime_imports_no_builtin_generics_at_runtime() -> None:
    """list[int] / X | Y outside annotations would break 3.8 at import time."""
    for path in RUNTIME_FILES:
        source = path.read_text(encoding="utf-8")
        if "zeroshot" in str(path.parent) and path.name != "__init__.py":
            assert "from __future__ import annotations" in source, path


def forbidden_imports(paths: Sequence[Path], forbidden: Sequence[str] = FORBIDDEN) -> List[str]:
    """``file:line module`` for every import of a ``forbidden`` package, at any depth (also inside functions)."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in forbidden]
    return found


def run_guarded(predict_py: Path, tmp_path: Path, model: Path) -> subprocess.CompletedProcess:
    """predict.py on a small generated dataset with every FORBIDDEN and SIDE_TOOL_ONLY package unimportable."""
    root = tmp_path / "data"
    make_dataset(root, "ds", ["а", "б"], 6)
    script = tmp_path / "block.py"
    script.write_text(BLOCK_AND_RUN)
    blocked = ",".join(FORBIDDEN + tuple(SIDE_TOOL_ONLY))
    return subprocess.run([sys.executable, str(script), blocked, str(predict_py), str(root),
                           str(tmp_path / "o.json"), "--model", str(model)], capture_output=True, text=True)


def runtime_copy(tmp_path: Path, module: str, line: str) -> Path:
    """predict.py and zeroshot/ copied into tmp_path with ``line`` appended to zeroshot/``module``."""
    app = tmp_path / "app"
    shutil.copytree(REPO / "zeroshot", app / "zeroshot", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "predict.py", app / "predict.py")
    with open(app / "zeroshot" / module, "a", encoding="utf-8") as handle:
        handle.write("\n" + line + "\n")
    return app


def test_runtime_source_imports_no_forbidden_package() -> None:
    assert forbidden_imports(RUNTIME_FILES) == []


def test_faiss_is_imported_by_the_retrieval_index_alone_and_never_vendored() -> None:
    for package, module in SIDE_TOOL_ONLY.items():
        found = forbidden_imports(RUNTIME_FILES, (package,))
        assert found and {hit.split(":")[0] for hit in found} == {module}, found
    from contest.vendor import TARGETS

    pins = [pin for target in TARGETS.values() for pin in target]
    assert not [pin for pin in pins if pin.split("=")[0].replace("_", "-") in {"faiss", "faiss-cpu"}], pins


@pytest.mark.parametrize("line", ["import torch", "from train.manifest_io import write_manifest",
                                  "def later():\n    import contest.bundle"])
def test_static_guard_fails_on_a_forbidden_import(tmp_path: Path, line: str) -> None:
    app = runtime_copy(tmp_path, "scoring.py", line)
    found = forbidden_imports(sorted(app.rglob("*.py")))
    assert len(found) == 1 and found[0].startswith("scoring.py:"), found


@pytest.mark.parametrize("package", ["torch", "train", "faiss"])
def test_runtime_guard_fails_when_the_runtime_imports_a_forbidden_package(
        tiny_model: Path, tmp_path: Path, package: str) -> None:
    app = runtime_copy(tmp_path, "cli.py", f"import {package}")
    proc = run_guarded(app / "predict.py", tmp_path, tiny_model)
    assert proc.returncode != 0 and f"blocked by test: {package}" in proc.stderr, proc.stderr
    assert not (tmp_path / "o.json").exists()


@pytest.fixture(params=["sentencepiece", "hf_tokenizers"])
def any_model(request: pytest.FixtureRequest, tiny_model: Path, tmp_path: Path) -> Path:
    """The tiny model with each tokenizer type the runtime reads."""
    if request.param == "sentencepiece":
        return tiny_model
    from test_hf_tokenizer import _hf_model, build_hf_tokenizer

    return _hf_model(tiny_model, build_hf_tokenizer(tmp_path / "tokenizer.json"), tmp_path / "hf_model")


def test_predict_runs_with_torch_unimportable(any_model: Path, tmp_path: Path) -> None:
    proc = run_guarded(REPO / "predict.py", tmp_path, any_model)
    out = tmp_path / "o.json"
    assert proc.returncode == 0 or "SystemExit: 0" in proc.stderr, proc.stderr
    assert out.is_file()
    modules = set(proc.stderr.split("MODULES ", 1)[1].split())
    assert "torch" not in modules
    stdlib = set(sys.stdlib_module_names)
    third_party = {m for m in modules if m not in stdlib and not m.startswith("_")} - {"zeroshot", "__main__"}
    # onnxruntime and numpy bring their own helpers (e.g. coloredlogs, packaging): allow only those
    unexpected = {m for m in third_party - ALLOWED_THIRD_PARTY
                  if m not in {"coloredlogs", "humanfriendly", "packaging", "flatbuffers", "sympy", "mpmath",
                               "google", "ml_dtypes", "onnx", "typing_extensions"}}
    assert not unexpected, f"the runtime imported {sorted(unexpected)}"
