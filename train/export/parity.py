"""Shared pieces of the ONNX exporters: torch.onnx.export with the judge's limits, and cosine parity.

Every graph is written by the TorchScript exporter (``dynamo=False``: the
dynamo exporter writes opset 18 / IR 10 even when asked for 17, which
onnxruntime 1.16 refuses), rewritten so that ArgMax never reads int64 (no
int64 ArgMax kernel on onnxruntime 1.16 CPU), and finalized by
:func:`train.onnx_compat.finalize_onnx` (opset 17, IR <= 9, checker).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from zeroshot.encoders import make_session

from ..onnx_compat import OPSET, finalize_onnx

logger = logging.getLogger(__name__)

MIN_COSINE = 0.9999  # fp32 ONNX vs torch, every row


_PASS_THROUGH = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "Expand", "Transpose")


def _int64_tensors(graph: Any) -> set:
    """Names of int64 tensors found by a cheap forward pass over graph inputs, initializers, Cast and
    shape-preserving ops (no full shape inference: that would copy every weight of a 1 GB model)."""
    from onnx import TensorProto

    names = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.INT64}
    names |= {t.name for t in graph.initializer if t.data_type == TensorProto.INT64}
    for node in graph.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            if to == TensorProto.INT64:
                names.update(node.output)
        elif node.op_type in _PASS_THROUGH and node.input and node.input[0] in names:
            names.update(node.output)
    return names


def cast_argmax_inputs(path: Path) -> int:
    """Insert Cast(to int32) before every ArgMax that reads int64; rewrite ``path``; returns the count.

    EOT pooling (``x[arange, ids.argmax(-1)]``) reads the int64 token ids;
    onnxruntime 1.16 has no CPU ArgMax kernel for int64 and refuses the graph.
    Token ids are < 2**31, so the cast changes no result.
    """
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(path))
    int64 = _int64_tensors(proto.graph)
    nodes: List[Any] = []
    count = 0
    for node in proto.graph.node:
        if node.op_type == "ArgMax" and node.input[0] in int64:
            cast_out = f"{node.input[0]}_as_int32_{count}"
            nodes.append(helper.make_node("Cast", [node.input[0]], [cast_out], to=TensorProto.INT32,
                                          name=f"argmax_int32_cast_{count}"))
            node.input[0] = cast_out
            count += 1
        nodes.append(node)
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        onnx.save(proto, str(path))
    return count


def torch_export(module: nn.Module, example: Tuple[torch.Tensor, ...], out_path: Path, input_names: List[str],
                 output_name: str, dynamic_axes: Dict[str, Dict[int, str]]) -> Dict[str, int]:
    """Export ``module`` (eval mode) to ``out_path``; returns {"opset", "ir_version", "argmax_casts"}."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # aten::_native_multi_head_attention has no ONNX export
    try:
        _export(module, example, out_path, input_names, output_name, dynamic_axes)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    casts = cast_argmax_inputs(out_path)
    opset, ir_version = finalize_onnx(out_path)
    return {"opset": opset, "ir_version": ir_version, "argmax_casts": casts}


def _export(module: nn.Module, example: Tuple[torch.Tensor, ...], out_path: Path, input_names: List[str],
            output_name: str, dynamic_axes: Dict[str, Dict[int, str]]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the checkpoints' own code; parity is checked below
        torch.onnx.export(module, example, str(out_path), input_names=input_names, output_names=[output_name],
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float (N, D) x (N, D) -> float64 (N,) cosine of each pair of rows."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-30)
    return num / den


def run_session(path: Path, feeds: Sequence[Dict[str, np.ndarray]], output: str, threads: int = 1) -> np.ndarray:
    """Run an ONNX file on each feed dict; float32 (sum of batch sizes, D)."""
    session = make_session(Path(path), threads)
    return np.concatenate([np.asarray(session.run([output], f)[0], dtype=np.float32).reshape(
        len(next(iter(f.values()))), -1) for f in feeds])


def run_torch(module: nn.Module, feeds: Sequence[Dict[str, np.ndarray]], names: List[str]) -> np.ndarray:
    """Run ``module`` on the same feed dicts (positional in ``names`` order); float32 (N, D)."""
    outs = []
    with torch.no_grad():
        for f in feeds:
            outs.append(module(*[torch.from_numpy(f[n]) for n in names]).float().numpy())
    return np.concatenate(outs)


def cosine_record(torch_out: np.ndarray, onnx_out: np.ndarray, what: str, path: Path,
                  min_cosine: Optional[float] = MIN_COSINE) -> Dict[str, float]:
    """{"min_cosine", "mean_cosine", "rows"}; raises ValueError if a row's cosine < ``min_cosine``."""
    if torch_out.shape != onnx_out.shape:
        raise ValueError(f"{path}: {what} output shape {onnx_out.shape}, torch gives {torch_out.shape}")
    cos = row_cosines(torch_out, onnx_out)
    record = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "rows": int(len(cos))}
    if min_cosine is not None and not record["min_cosine"] >= min_cosine:
        worst = int(cos.argmin())
        raise ValueError(f"{path}: {what}: onnxruntime vs torch cosine {record['min_cosine']:.6f} on row {worst} "
                         f"(< {min_cosine}); the export is not faithful")
    return record
