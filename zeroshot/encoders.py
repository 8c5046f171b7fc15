"""The two ONNX encoders behind one small interface.

:class:`Model` loads ``manifest.json``, checks every model file's sha256 and
opens onnxruntime sessions with thread counts that follow the CPUs this
process may use. Nothing here knows which model it runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .linear import load_head
from .manifest import load_manifest, resolve_file
from .text import Tokenizer, build_prompts

logger = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask, e.g. under ``taskset -c 0``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def make_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session using ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ValueError(f"{path}: onnxruntime cannot load this model: {exc}") from exc


def _check_io(session: Any, path: Path, inputs: Sequence[str], output: str) -> None:
    """Raise ValueError if the graph lacks an input or output the manifest names."""
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [n for n in inputs if n not in have_in] + ([output] if output not in have_out else [])
    if missing:
        raise ValueError(f"{path}: graph has no input/output named {missing} "
                         f"(inputs {sorted(have_in)}, outputs {sorted(have_out)})")


class Model:
    """Image encoder, text encoder and tokenizer described by one manifest."""

    def __init__(self, model_dir: Path, threads: Optional[int] = None, verify: bool = True,
                 variant: Optional[str] = None) -> None:
        """``variant``: a name from the manifest's ``variants`` (e.g. "int8") whose files replace the defaults."""
        self.dir = Path(model_dir)
        self.manifest: Dict[str, Any] = load_manifest(self.dir)
        self.threads = threads or available_cpus()
        img_path = resolve_file(self.manifest, self.dir, "image_encoder", verify, variant)
        txt_path = resolve_file(self.manifest, self.dir, "text_encoder", verify, variant)
        tok_path = resolve_file(self.manifest, self.dir, "tokenizer", verify, variant)
        self.image_cfg: Dict[str, Any] = self.manifest["image"]
        self.text_cfg: Dict[str, Any] = self.manifest["text"]
        self.tokenizer = Tokenizer(tok_path, self.text_cfg["tokenizer"])
        self._image = make_session(img_path, self.threads)
        self._image_outputs = [self.image_cfg["output"]] + ([self.image_cfg["features_output"]]
                                                           if self.image_cfg.get("features_output") else [])
        for name in self._image_outputs:
            _check_io(self._image, img_path, [self.image_cfg["input"]], name)
        self._text = make_session(txt_path, self.threads)
        text_inputs = [self.text_cfg["input_ids"]] + ([self.text_cfg["attention_mask"]]
                                                     if self.text_cfg.get("attention_mask") else [])
        _check_io(self._text, txt_path, text_inputs, self.text_cfg["output"])
        self.head = load_head(self.dir, self.manifest, verify)

    @property
    def batch_size(self) -> int:
        return int(self.manifest.get("batch_size", 16))

    def encode_images(self, pixels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """float32 (B, 3, S, S) preprocessed images -> (vectors (B, D), features (B, F)), float32.

        The vectors are scored against the class vectors; the features feed the
        transductive step (the manifest's image.features_output, else the vectors).
        """
        cfg = self.image_cfg
        outs = self._image.run(self._image_outputs, {cfg["input"]: pixels.astype(np.float32, copy=False)})
        arrays = [np.asarray(o, dtype=np.float32).reshape(len(pixels), -1) for o in outs]
        return arrays[0], arrays[-1]

    def encode_texts(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        """Prompts -> float32 (len(texts), D) text vectors, ``batch`` prompts per run."""
        cfg = self.text_cfg
        chunks: List[np.ndarray] = []
        for start in range(0, len(texts), batch):
            ids, mask = self.tokenizer.batch(texts[start:start + batch])
            feeds = {cfg["input_ids"]: ids}
            if cfg.get("attention_mask"):
                feeds[cfg["attention_mask"]] = mask
            out = self._text.run([cfg["output"]], feeds)[0]
            chunks.append(np.asarray(out, dtype=np.float32).reshape(len(ids), -1))
        return np.concatenate(chunks, axis=0)

    def class_vectors(self, names: Sequence[str]) -> np.ndarray:
        """Class names -> float32 (C, D): each class's prompts encoded and averaged.

        With cosine similarity each prompt vector is L2-normalised before the
        mean (the CLIP recipe); the mean is normalised again when scoring.
        """
        templates = self.text_cfg["templates"]
        prompts = build_prompts(names, templates, self.text_cfg.get("normalize", []))
        vecs = self.encode_texts(prompts).reshape(len(templates), len(names), -1)
        if self.manifest["score"]["similarity"] == "cosine":
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)
        return vecs.mean(axis=0)
