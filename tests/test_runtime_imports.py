"""The runtime's dependencies: numpy, onnxruntime, Pillow, sentencepiece, on Python 3.8 to 3.12."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from datagen import make_dataset

RUNTIME_FILES = sorted([REPO / "predict.py", *(REPO / "zeroshot").glob("*.py")])
ALLOWED_THIRD_PARTY = {"numpy", "onnxruntime", "PIL", "sentencepiece"}

BLOCK_AND_RUN = r"""
import sys, importlib.abc, runpy
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "cv2", "tensorflow", "train", "contest"}:
            raise ImportError("blocked by test: " + name)
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


def test_predict_runs_with_torch_unimportable(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "ds", ["а", "б"], 6)
    out = tmp_path / "o.json"
    script = tmp_path / "block.py"
    script.write_text(BLOCK_AND_RUN)
    proc = subprocess.run([sys.executable, str(script), str(REPO / "predict.py"), str(root), str(out),
                           "--model", str(tiny_model)], capture_output=True, text=True)
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
