"""A tiny random image/text encoder pair in the runtime's format, for tests and runtime benchmarks.

Built with ``onnx.helper`` and numpy only (no torch, no downloads):
- image encoder: Conv(3->8, 3x3, stride 2) -> ReLU -> GlobalAveragePool -> MatMul -> (B, D);
  any input size works, so the cheap ``fast_size`` path is exercised too;
- text encoder: embedding lookup, masked mean over tokens -> (B, D);
- tokenizer: a sentencepiece unigram model trained on a few hundred generated words.

Usage: ``python -m train.tiny_model OUT_DIR [--seed N]``.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zeroshot.manifest import Manifest

from .contract import (ATTENTION_MASK, IMAGE_ENCODER_FILE, INPUT_IDS, SENTENCEPIECE_IDS, TEXT_ENCODER_FILE,
                       TOKENIZER_FILE, model_files, text_config)
from .manifest_io import write_manifest
from .onnx_compat import OPSET, finalize_onnx
from zeroshot.command import make_parser, parse_args

logger = logging.getLogger(__name__)

IR_VERSION = 8
DIM = 16
IMAGE_SIZE = 32
TOKENIZER_VOCAB = 120
_ALPHABET = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяabcdefghijklmnopqrstuvwxyz"


def _save(graph: onnx.GraphProto, path: Path) -> None:
    """Write ``graph`` as an opset-OPSET model at IR_VERSION, finalized like every export."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="zeroshot-tiny")
    model.ir_version = IR_VERSION
    onnx.save(model, str(path))
    finalize_onnx(path)


def build_image_encoder(path: Path, rng: np.random.Generator, dim: int = DIM) -> None:
    """pixel_values float32 (B, 3, H, W) -> image_embeds float32 (B, dim)."""
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "conv_w")
    b = numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "conv_b")
    proj = numpy_helper.from_array(rng.normal(size=(8, dim)).astype(np.float32), "proj")
    nodes = [
        helper.make_node("Conv", ["pixel_values", "conv_w", "conv_b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "proj"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", dim])],
        [w, b, proj])
    _save(graph, path)


def build_text_encoder(path: Path, rng: np.random.Generator, vocab: int, dim: int = DIM) -> None:
    """input_ids int64 (B, L), attention_mask int64 (B, L) -> text_embeds float32 (B, dim)."""
    table = numpy_helper.from_array(rng.normal(size=(vocab, dim)).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    eps = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    nodes = [
        helper.make_node("Gather", ["table", INPUT_IDS], ["emb"]),
        helper.make_node("Cast", [ATTENTION_MASK], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes_last"], ["m3"]),
        helper.make_node("Mul", ["emb", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["m", "axes"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["total", "count1"], ["text_embeds"]),
    ]
    axes_last = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes_last")
    graph = helper.make_graph(
        nodes, "tiny_text",
        [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", dim])],
        [table, axes, eps, axes_last])
    _save(graph, path)


def _corpus(seed: int, n: int = 600) -> List[str]:
    rnd = random.Random(seed)
    return [" ".join("".join(rnd.choice(_ALPHABET) for _ in range(rnd.randint(2, 9)))
                     for _ in range(rnd.randint(1, 4))) for _ in range(n)]


def build_tokenizer(prefix: Path, seed: int, vocab: int = TOKENIZER_VOCAB) -> Path:
    """Train a small sentencepiece model on generated words; returns the .model path."""
    import sentencepiece

    corpus = prefix.parent / "tokenizer_corpus.txt"
    corpus.write_text("\n".join(_corpus(seed)) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab, model_type="unigram",
        character_coverage=1.0, bos_id=SENTENCEPIECE_IDS["bos_id"], eos_id=SENTENCEPIECE_IDS["eos_id"], unk_id=0,
        pad_id=-1, num_threads=1,
        minloglevel=2)
    corpus.unlink()
    prefix.with_suffix(".vocab").unlink()
    return prefix.with_suffix(".model")


# An accuracy ladder for tests: the same graph at two input sizes.
LADDER = {"small": {"image": {"size": 16, "fast_size": 16}}, "large": {"image": {"size": IMAGE_SIZE}}}


def build_tiny_model(out_dir: Path, seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                     ladder: bool = False) -> Manifest:
    """Write a complete tiny model folder and return its manifest.

    ``overrides`` replaces top-level manifest sections (e.g. {"balance": None});
    ``ladder`` adds the two-rung accuracy ladder LADDER.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    build_tokenizer(out_dir / Path(TOKENIZER_FILE).stem, seed)
    build_image_encoder(out_dir / IMAGE_ENCODER_FILE, rng)
    build_text_encoder(out_dir / TEXT_ENCODER_FILE, rng, TOKENIZER_VOCAB)
    sections: Dict[str, Any] = {
        "name": "tiny-random",
        "description": "random weights, for tests only",
        "batch_size": 8,
        "image": {"input": "pixel_values", "output": "image_embeds", "size": IMAGE_SIZE, "fast_size": 16,
                  "resize": "center_crop", "decode": "draft", "interpolation": "bilinear",
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "text": text_config("text_embeds", ["{}", "фото: {}"]),
        "score": {"similarity": "cosine", "logit": "linear", "scale": 10.0},
        "balance": {"method": "sinkhorn", "iterations": 3, "min_images_per_class": 2},
        "transductive": {"method": "prototypes", "iterations": 2, "weight": 1.0, "scale": 10.0, "center": True,
                         "min_images_per_class": 2},
    }
    sections.update(overrides or {})
    if not ladder:
        return write_manifest(out_dir, model_files(), sections)
    sections["ladder"] = list(LADDER)
    return write_manifest(out_dir, model_files(), sections,
                          {name: {"image_encoder": model_files()["image_encoder"]} for name in LADDER}, LADDER)


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.tiny_model", __doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, argv)
    build_tiny_model(args.out_dir, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
