"""The judge's ONNX limits (onnxruntime 1.16: opset <= 17, IR version <= 9) and the one step that enforces them.

Every module of train/ that writes an ONNX file (the image and text encoders, the int8 copy,
the USE-m port, the tiny test model) passes it through :func:`finalize_onnx`; tests/test_layout.py
checks it. train/experiments/ writes scratch models for measurements only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

OPSET = 17
MAX_IR_VERSION = 9


def finalize_onnx(path: Path) -> Tuple[int, int]:
    """Drop opset imports no node uses, cap IR at MAX_IR_VERSION, run onnx.checker; rewrite ``path``.

    onnxruntime's optimizer and quantizer declare every domain they know
    (ai.onnx.ml 5, com.microsoft, ...), which older runtimes may reject.
    Returns (opset, IR version); raises ValueError unless the only opset
    import left is ai.onnx <= OPSET.
    """
    import onnx

    proto = onnx.load(str(path))
    used = {node.domain or "" for node in proto.graph.node}
    keep = [o for o in proto.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(proto)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if opsets.get("ai.onnx", 0) > OPSET or len(opsets) > 1:
        raise ValueError(f"{path}: opset imports {opsets}; expected only ai.onnx <= {OPSET}")
    onnx.save(proto, str(path))
    return int(opsets["ai.onnx"]), int(proto.ir_version)
