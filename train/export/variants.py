"""Smaller copies of the exported encoders, each kept only if its measured agreement with fp32 justifies it.

- ``fp16``: fp16 storage: every large float32 weight is stored as float16 and
  Cast back to float32 at load, so the file halves and compute stays fp32;
- ``int8``: dynamic int8 (onnxruntime ``quantize_dynamic``) of MatMul (and the
  token table Gather for text); the ViT patch Conv stays float, because
  ConvInteger has no CPU kernel in onnxruntime 1.16.

A model variant combines one image and one text file (e.g. ``fp32-int8text``:
fp32 image tower, int8 text tower). :func:`agreement` measures, on the dev set
through the runtime itself, each variant's zero-shot top-1 agreement with fp32
and its embedding cosines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..onnx_compat import finalize_onnx

logger = logging.getLogger(__name__)

# model variant -> (image precision, text precision)
MODEL_VARIANTS: Dict[str, Tuple[str, str]] = {
    "fp32": ("fp32", "fp32"),
    "fp16": ("fp16", "fp16"),
    "int8": ("int8", "int8"),
    "fp32-int8text": ("fp32", "int8"),
    "fp16-int8text": ("fp16", "int8"),
}
FP16_MIN_ELEMENTS = 1024          # smaller initializers (biases, norms) stay float32
MIN_TOP1_AGREEMENT = 0.98         # zero-shot predictions equal to fp32's on at least this share of dev images
MIN_MEAN_COSINE = 0.99            # mean cosine of image and class embeddings with fp32


def file_name(role: str, precision: str) -> str:
    """image_encoder.onnx / image_encoder.fp16.onnx / text_encoder.int8.onnx ..."""
    return f"{role}.onnx" if precision == "fp32" else f"{role}.{precision}.onnx"


def to_fp16_storage(src: Path, dst: Path, min_elements: int = FP16_MIN_ELEMENTS) -> int:
    """Store float32 initializers with >= ``min_elements`` values as float16 + Cast(to float); returns the count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(src))
    casts, kept = [], []
    for init in proto.graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elements:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                          name=f"fp16_storage_{len(casts)}"))
        else:
            kept.append(init)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    nodes = casts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.save(proto, str(dst))
    finalize_onnx(Path(dst))
    return len(casts)


def to_int8_dynamic(src: Path, dst: Path, text: bool) -> None:
    """Dynamic int8 of MatMul (and Gather for a text tower): int8 weights, activations quantized per run."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops: List[str] = ["MatMul", "Gather"] if text else ["MatMul"]
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs every tensor at INFO on the root logger
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops, weight_type=QuantType.QInt8,
                         per_channel=False, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    finalize_onnx(Path(dst))


def make_files(model_dir: Path, precisions: Sequence[str]) -> Dict[str, str]:
    """Write the image/text files for every precision in ``precisions`` (fp32 exists); returns role.precision -> name."""
    made = {f"{role}.fp32": file_name(role, "fp32") for role in ("image_encoder", "text_encoder")}
    for precision in sorted(set(precisions) - {"fp32"}):
        for role in ("image_encoder", "text_encoder"):
            src, dst = model_dir / file_name(role, "fp32"), model_dir / file_name(role, precision)
            if precision == "fp16":
                to_fp16_storage(src, dst)
            elif precision == "int8":
                to_int8_dynamic(src, dst, text=role == "text_encoder")
            else:
                raise ValueError(f"unknown precision {precision!r}")
            made[f"{role}.{precision}"] = dst.name
            logger.info("%s: %.1f MB", dst, dst.stat().st_size / 1e6)
    return made


def variant_files(variant: str) -> Dict[str, str]:
    """The manifest's variants[variant].files roles -> file names."""
    image, text = MODEL_VARIANTS[variant]
    return {"image_encoder": file_name("image_encoder", image), "text_encoder": file_name("text_encoder", text)}


def zero_shot(model: Any, pixels: Sequence[np.ndarray], datasets: Sequence[Tuple[List[str], List[int]]]
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions int64 (N,), image vectors float32 (N, D), class vectors float32 (C_total, D)).

    ``datasets``: (class names, indices into ``pixels``) per dataset; scored
    with the runtime's own scoring (zeroshot.scoring.class_logits), argmax only.
    """
    from zeroshot.scoring import class_logits

    preds = np.zeros(len(pixels), dtype=np.int64)
    image_vecs = np.concatenate([model.encode_images(np.stack(pixels[s:s + 16]))[0]
                                 for s in range(0, len(pixels), 16)])
    class_vecs = []
    for names, idx in datasets:
        cls = model.class_vectors(names)
        class_vecs.append(cls)
        preds[idx] = class_logits(image_vecs[idx], cls, model.manifest.score).argmax(axis=1)
    return preds, image_vecs, np.concatenate(class_vecs)


def agreement(reference: Tuple[np.ndarray, ...], other: Tuple[np.ndarray, ...]) -> Dict[str, float]:
    """Top-1 agreement and embedding cosines of ``other`` against ``reference`` (both from :func:`zero_shot`)."""
    from .parity import row_cosines

    img = row_cosines(reference[1], other[1])
    cls = row_cosines(reference[2], other[2])
    return {"top1_agreement": float(np.mean(reference[0] == other[0])), "images": int(len(reference[0])),
            "image_cosine_mean": float(img.mean()), "image_cosine_min": float(img.min()),
            "class_cosine_mean": float(cls.mean()), "class_cosine_min": float(cls.min())}


def justified(record: Dict[str, float]) -> bool:
    """Keep a variant only if its top-1 agreement and mean cosines clear the thresholds."""
    return (record["top1_agreement"] >= MIN_TOP1_AGREEMENT and record["image_cosine_mean"] >= MIN_MEAN_COSINE
            and record["class_cosine_mean"] >= MIN_MEAN_COSINE)
