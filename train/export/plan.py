"""Size and time planner: does each variant fit the judge's 700 MB archive and 23 minutes on one vCPU?

For every variant of an exported model folder: the archive size (model files
+ the vendored wheels + the runtime code, uncompressed: ONNX weights barely
deflate), the image encoder's images/s and the text encoder's ms per
prompt on one core of this machine (onnxruntime with one thread, the process
pinned to one CPU; times are the CPU time of that one thread, so a busy
machine does not inflate them), decode+preprocess time per image measured on
real images,
and the projected time for PLAN_IMAGES images and PLAN_CLASSES classes x the
manifest's templates, against the 23-minute limit.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.encoders import make_session
from zeroshot.limits import ARCHIVE_CAP_MB, JUDGE_IMAGES, JUDGE_TIME_LIMIT_S
from zeroshot.manifest import ImageConfig, Manifest, resolve_file


logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CAP_MB = ARCHIVE_CAP_MB
LIMIT_S = JUDGE_TIME_LIMIT_S
PLAN_IMAGES = JUDGE_IMAGES
PLAN_CLASSES = 100   # class names over all hidden datasets (the dev set has 19 in one dataset)
RUNTIME_CODE = ("predict.py", "predict.sh", "setup.sh", "zeroshot")


def _pin_one_cpu() -> Optional[set]:
    """Pin this process to its first allowed CPU; returns the previous mask (None if unsupported)."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})
        return before
    except (AttributeError, OSError):
        return None


def _best_time(fn: Any, repeats: int) -> Tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) of the fastest of ``repeats`` calls after a warm-up.

    onnxruntime with one intra-op thread computes in the calling thread, so its
    CPU time is the one-core cost even when other processes share the machine
    (wall time then includes waiting for a CPU).
    """
    fn()  # warm-up
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        cpu, wall = time.thread_time(), time.perf_counter()
        fn()
        best = min(best, (time.thread_time() - cpu, time.perf_counter() - wall))
    return best


def runtime_mb(vendor: Optional[Path]) -> float:
    """MB of what every archive carries besides the model: the vendored wheels (both Pythons) and the runtime code."""
    total = 0
    if vendor is not None and Path(vendor).is_dir():
        total += sum(p.stat().st_size for p in Path(vendor).glob("*.whl"))
    for name in RUNTIME_CODE:
        path = REPO / name
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        total += sum(p.stat().st_size for p in files)
    return total / 1e6


def preprocess_ms(images: Sequence[Path], cfg: ImageConfig) -> float:
    """Mean ms to decode and preprocess one image with the runtime's functions (0 without images)."""
    from zeroshot.images import load_image, preprocess

    if not images:
        return 0.0
    size = int(cfg.size)
    start = time.thread_time()
    for path in images:
        preprocess(load_image(Path(path), size, cfg.decode), cfg, size)
    return 1000.0 * (time.thread_time() - start) / len(images)


def _variant_paths(manifest: Manifest, model_dir: Path, variant: Optional[str]) -> Dict[str, Path]:
    roles = ["image_encoder", "text_encoder", "tokenizer"] + (["tokenizer_id_map"]
                                                               if "tokenizer_id_map" in manifest.files else [])
    return {role: resolve_file(manifest, model_dir, role, False, variant) for role in roles}


def measure_variant(manifest: Manifest, model_dir: Path, variant: Optional[str], extra_mb: float,
                    prep_ms: float, batch: int = 8, repeats: int = 3) -> Dict[str, Any]:
    """One row of the plan: sizes, speeds on one core, projected time and the verdicts."""
    paths = _variant_paths(manifest, model_dir, variant)
    model_mb = sum(p.stat().st_size for p in paths.values()) / 1e6
    image_cfg, text_cfg = manifest.image_for(variant), manifest.text
    size = image_cfg.size
    start = time.thread_time()
    image_session = make_session(paths["image_encoder"], 1)
    text_session = make_session(paths["text_encoder"], 1)
    load_s = time.thread_time() - start
    pixels = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    image_s, image_wall = _best_time(lambda: image_session.run([image_cfg.output], {image_cfg.input: pixels}),
                                     repeats)
    length = text_cfg.tokenizer.context_length or 32
    rows = 32
    ids = np.full((rows, length), 5, dtype=np.int64)
    feeds = {text_cfg.input_ids: ids}
    if text_cfg.attention_mask:
        feeds[text_cfg.attention_mask] = np.ones_like(ids)
    text_s, text_wall = _best_time(lambda: text_session.run([text_cfg.output], feeds), repeats)
    image_ms = 1000.0 * image_s / batch
    prompt_ms = 1000.0 * text_s / rows
    prompts = PLAN_CLASSES * len(text_cfg.templates)
    projected = load_s + PLAN_IMAGES * (image_ms + prep_ms) / 1000.0 + prompts * prompt_ms / 1000.0
    archive = model_mb + extra_mb
    return {"variant": variant or "default", "model_mb": round(model_mb, 1), "archive_mb": round(archive, 1),
            "image_ms": round(image_ms, 2), "images_per_s": round(1000.0 / image_ms, 2),
            "image_ms_wall": round(1000.0 * image_wall / batch, 2), "prompt_ms_wall": round(1000.0 * text_wall / rows, 2),
            "preprocess_ms": round(prep_ms, 2), "prompt_ms": round(prompt_ms, 2), "prompts": prompts,
            "load_s": round(load_s, 2), "projected_s": round(projected, 1),
            "fits_size": archive <= CAP_MB, "fits_time": projected <= LIMIT_S}


def plan(manifest: Manifest, model_dir: Path, vendor: Optional[Path], images: Sequence[Path]) -> List[Dict[str, Any]]:
    """The plan rows of every variant in the manifest (or the default files if it lists none)."""
    pinned = _pin_one_cpu()
    try:
        prep = preprocess_ms(list(images)[:16], manifest.image)
        extra = runtime_mb(vendor)
        variants = sorted(manifest.variants) or [None]
        return [measure_variant(manifest, Path(model_dir), v, extra, prep) for v in variants]
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)


def format_table(rows: Sequence[Dict[str, Any]], title: str = "") -> str:
    """A Markdown table of plan rows (what the CLI prints and docs/export.md shows)."""
    head = ("| variant | archive MB | images/s (1 core) | ms/prompt | projected s for "
            f"{PLAN_IMAGES} images | verdict | kept |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        kept = {True: "yes", False: "no (agreement)"}.get(r.get("kept"), "-")
        verdict = "fits" if r["fits_size"] and r["fits_time"] else ", ".join(
            (["over 700 MB"] if not r["fits_size"] else []) + (["over 23 min"] if not r["fits_time"] else []))
        lines.append(f"| {r['variant']} | {r['archive_mb']:.0f} | {r['images_per_s']:.1f} | {r['prompt_ms']:.1f} | "
                     f"{r['projected_s']:.0f} | {verdict} | {kept} |")
    return (f"{title}\n\n" if title else "") + head + "\n".join(lines) + "\n"
