"""Prove the exported files load and run on the judge's onnxruntime (the vendored 1.16.3 wheel).

The wheel for this Python (and its numpy 1.x) from vendor/ is unpacked once into
``.deps/ort-check-pyX.Y`` and each ONNX file is opened and run there in a
subprocess, so the export's onnxruntime (newer) cannot hide an incompatibility.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
JUDGE_ORT = "1.16.3"

_PROBE = r"""
import json, sys
import numpy as np
import onnxruntime as ort
out = {"version": ort.__version__, "files": {}}
for path in sys.argv[1:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else (2 if k == 0 else 8) for k, d in enumerate(i.shape)]
        feeds[i.name] = np.ones(shape, np.int64) if "int64" in i.type else np.zeros(shape, np.float32)
    res = s.run(None, feeds)[0]
    out["files"][path] = list(res.shape)
print(json.dumps(out))
"""


def _wheel(vendor: Path, name: str) -> Optional[Path]:
    tag = "cp%d%d" % sys.version_info[:2]
    found = sorted(Path(vendor).glob(f"{name}-*-{tag}-*.whl"))
    return found[-1] if found else None


def runtime_dir(vendor: Path) -> Optional[Path]:
    """``.deps/ort-check-pyX.Y`` holding the vendored onnxruntime + numpy for this Python (None if not vendored)."""
    ort_whl, np_whl = _wheel(vendor, f"onnxruntime-{JUDGE_ORT}"), _wheel(vendor, "numpy")
    if ort_whl is None or np_whl is None:
        return None
    target = REPO / ".deps" / ("ort-check-py%d.%d" % sys.version_info[:2])
    stamp = target / ".installed"
    if not stamp.is_file() or stamp.read_text() != ort_whl.name + np_whl.name:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--no-index", "--upgrade", "--target", str(target), str(ort_whl), str(np_whl)], check=True)
        stamp.write_text(ort_whl.name + np_whl.name)
    return target


def check_judge_runtime(paths: Sequence[Path], vendor: Path) -> Dict[str, Any]:
    """Open and run every ONNX file on onnxruntime 1.16.3; raises ValueError naming a file it rejects.

    Returns {"onnxruntime": version, "files": {name: output shape}}, or
    {"skipped": reason} when vendor/ has no such wheel for this Python.
    """
    target = runtime_dir(Path(vendor))
    if target is None:
        logger.warning("%s has no onnxruntime %s wheel for this Python: the judge-runtime check is skipped "
                       "(run `make vendor`)", vendor, JUDGE_ORT)
        return {"skipped": f"no vendored onnxruntime {JUDGE_ORT} wheel for this Python in {vendor}"}
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *[str(p) for p in paths]], capture_output=True, text=True,
                          env=env, timeout=1800)
    if proc.returncode != 0:
        raise ValueError(f"onnxruntime {JUDGE_ORT} cannot load or run {[Path(p).name for p in paths]}: "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["version"] != JUDGE_ORT:
        raise ValueError(f"{target}: expected onnxruntime {JUDGE_ORT}, imported {result['version']}")
    return {"onnxruntime": result["version"], "files": {Path(k).name: v for k, v in result["files"].items()}}
