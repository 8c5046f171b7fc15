"""End-to-end parity: an exported folder, run by the runtime on image files, against the checkpoint's own pipeline.

What an export proves (train/export/build.py records it in the manifest's
``validation.end_to_end``): the runtime's own loader and preprocessing
(``zeroshot.images`` under the manifest's ``image`` section), its ONNX
encoders and its scoring, on real image files -- the parity image set
(train/export/imageset.py: every size and file kind) and the dev photos --
compared with the source framework's own preprocessing and encoders, run in
the reference environment (train/export/reference.py, ``make reference-env``):

- ``pixel_max_abs_diff``: max |runtime - reference| of the normalised pixel tensors (per kind too);
- ``image_cosine_min`` / ``image_cosine_mean``: runtime vs reference image embeddings;
- ``top1_agreement``: argmax over a class list (the same prompts, the manifest's score) of both.

:func:`decode_record` measures the runtime's reduced (draft) decoding against
exact decoding on the same files: top-1 agreement and images/s on one CPU for
4000x3000 JPEGs and contest-size photos.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.encoders import Model
from zeroshot.images import DRAFT, EXACT, load_image, preprocess
from zeroshot.manifest import ImageConfig, ScoreConfig
from zeroshot.scoring import class_logits
from zeroshot.text import build_prompts

from .imageset import build_image_set
from .parity import row_cosines

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
REFERENCE_VENV = REPO / ".venv-ref"
MIN_TOP1 = 0.995              # end-to-end top-1 agreement an export must reach
MIN_IMAGE_COSINE = 0.999      # every image: runtime vs reference embedding
MAX_PIXEL_DIFF = 1e-3         # normalised units: float rounding only (one 8-bit level is ~0.015)
MIN_DRAFT_AGREEMENT = 0.99    # reduced decoding may be chosen only above this top-1 agreement with exact
FALLBACK_CLASSES = ["кошка", "собака", "самолёт", "гаечный ключ", "стул"]
SPEED_REPEATS = 3


def reference_python(explicit: Optional[Path] = None) -> Optional[Path]:
    """The reference environment's interpreter: ``explicit``, else .venv-ref/bin/python if it exists."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"{explicit}: reference Python not found (make reference-env builds .venv-ref)")
        return Path(explicit)
    default = REFERENCE_VENV / "bin" / "python"
    return default if default.is_file() else None


def run_reference(python: Path, request: Dict[str, Any], work: Path) -> Dict[str, Any]:
    """Run train.export.reference in ``python`` (from the repository root); its npz arrays and versions."""
    work.mkdir(parents=True, exist_ok=True)
    req_path, out_path = work / "reference_request.json", work / "reference.npz"
    req_path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([str(python), "-m", "train.export.reference", str(req_path), str(out_path),
                           "--log-level", "WARNING"], cwd=str(REPO), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} -m train.export.reference failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-3000:]}")
    with np.load(out_path) as data:
        out = {k: data[k] for k in ("pixels", "image", "text")}
        out["versions"] = json.loads(str(data["versions"]))
    return out


def runtime_pixels(paths: Sequence[Path], cfg: ImageConfig, decode: str) -> np.ndarray:
    """The runtime's pixels of ``paths`` under ``decode``: float32 (N, 3, S, S)."""
    size = cfg.size
    return np.stack([preprocess(load_image(Path(p), size, decode), cfg, size) for p in paths])


def runtime_embeddings(model: Model, paths: Sequence[Path], decode: str) -> np.ndarray:
    """The runtime's image vectors of ``paths`` (decoded under ``decode``): float32 (N, D)."""
    out = []
    for start in range(0, len(paths), 16):
        out.append(model.encode_images(runtime_pixels(paths[start:start + 16], model.image_cfg, decode))[0])
    return np.concatenate(out)


def class_means(text: np.ndarray, n_templates: int, n_classes: int) -> np.ndarray:
    """Prompt vectors float (T*C, D) in template-major order -> class vectors float32 (C, D), the CLIP recipe."""
    vecs = text.reshape(n_templates, n_classes, -1).astype(np.float64)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)
    return vecs.mean(axis=0).astype(np.float32)


def top1(image: np.ndarray, classes: np.ndarray, score: ScoreConfig) -> np.ndarray:
    """int64 (N,) argmax of the manifest's score of image vectors (N, D) against class vectors (C, D)."""
    return class_logits(image, classes, score).argmax(axis=1)


def _pixel_record(got: np.ndarray, want: np.ndarray, kinds: Sequence[str]) -> Dict[str, Any]:
    if got.shape != want.shape:
        raise ValueError(f"runtime pixels {got.shape} vs the reference's {want.shape}: the image size or "
                         "crop differs from the checkpoint's own preprocessing")
    diff = np.abs(got.astype(np.float64) - want).reshape(len(got), -1).max(axis=1)
    per_kind: Dict[str, float] = {}
    for kind, d in zip(kinds, diff):
        per_kind[kind] = max(per_kind.get(kind, 0.0), float(d))
    return {"pixel_max_abs_diff": float(diff.max()) if len(diff) else 0.0, "pixel_max_abs_diff_by_kind": per_kind}


def compare(model: Model, paths: Sequence[Path], kinds: Sequence[str], names: Sequence[str],
            reference: Dict[str, Any]) -> Dict[str, Any]:
    """The end-to-end record of the runtime (``model`` under its manifest) against ``reference``.

    ``kinds``: the kind of each of the first len(reference["pixels"]) images
    (whose pixel tensors are compared); ``names``: the class list.
    """
    cfg, score = model.image_cfg, model.manifest.score
    n_pix = len(reference["pixels"])
    record = _pixel_record(runtime_pixels(paths[:n_pix], cfg, cfg.decode), reference["pixels"], kinds[:n_pix])
    got = runtime_embeddings(model, paths, cfg.decode)
    cos = row_cosines(got, reference["image"])
    templates = model.text_cfg.templates
    ref_classes = class_means(reference["text"], len(templates), len(names))
    ours, theirs = top1(got, model.class_vectors(names), score), top1(reference["image"], ref_classes, score)
    record.update({"images": len(paths), "pixel_images": n_pix, "classes": len(names),
                   "image_cosine_min": float(cos.min()), "image_cosine_mean": float(cos.mean()),
                   "top1_agreement": float(np.mean(ours == theirs)),
                   "worst_image": Path(paths[int(cos.argmin())]).name})
    return record


def check(record: Dict[str, Any], where: Path) -> None:
    """Raise ValueError naming ``where`` if the end-to-end record misses a threshold."""
    problems = []
    if not record["pixel_max_abs_diff"] <= MAX_PIXEL_DIFF:
        problems.append(f"pixels differ by up to {record['pixel_max_abs_diff']:.4g} (> {MAX_PIXEL_DIFF}; by kind "
                        f"{record['pixel_max_abs_diff_by_kind']})")
    if not record["image_cosine_min"] >= MIN_IMAGE_COSINE:
        problems.append(f"image embedding cosine {record['image_cosine_min']:.6f} < {MIN_IMAGE_COSINE} "
                        f"(on {record['worst_image']})")
    if not record["top1_agreement"] >= MIN_TOP1:
        problems.append(f"top-1 agreement {record['top1_agreement']:.4f} < {MIN_TOP1}")
    if problems:
        raise ValueError(f"{where}: the runtime does not reproduce the checkpoint's own pipeline end to end: "
                         + "; ".join(problems))


def parity_images(photos: Sequence[Path], size: int, work: Path) -> Tuple[List[Path], List[str]]:
    """The parity image set for input side ``size`` in ``work`` (from ``photos``, or a synthetic photo)."""
    if not photos:
        from PIL import Image

        rng = np.random.default_rng(0)
        synthetic = work / "synthetic_photo.png"
        work.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(small, "RGB").resize((640, 480), Image.BICUBIC).save(synthetic)
        photos = [synthetic]
    records = build_image_set(photos, size, work / "images")
    return [work / "images" / r["file"] for r in records], [r["kind"] for r in records]


def _ms_per_image(paths: Sequence[Path], cfg: ImageConfig, decode: str) -> float:
    """Fastest of SPEED_REPEATS passes: CPU ms of this thread per load_image + preprocess."""
    size = cfg.size
    best = float("inf")
    for _ in range(SPEED_REPEATS):
        start = time.thread_time()
        for path in paths:
            preprocess(load_image(Path(path), size, decode), cfg, size)
        best = min(best, (time.thread_time() - start) / len(paths))
    return 1000.0 * best


def decode_speed(large: Sequence[Path], contest: Sequence[Path], cfg: ImageConfig) -> Dict[str, Any]:
    """images/s (decode + preprocess, one thread, CPU time) of exact and draft, for 4000x3000 and contest-size files."""
    out: Dict[str, Any] = {}
    for label, paths in (("4000x3000", large), ("contest", contest)):
        if not paths:
            continue
        for decode in (EXACT, DRAFT):
            ms = _ms_per_image(paths, cfg, decode)
            out[f"{label}_{decode}_images_per_s"] = round(1000.0 / max(ms, 1e-6), 2)
        out[f"{label}_files"] = len(paths)
    return out


def decode_record(model: Model, paths: Sequence[Path], names: Sequence[str], large: Sequence[Path],
                  contest: Sequence[Path]) -> Dict[str, Any]:
    """Draft against exact decoding through the runtime: top-1 agreement over ``names`` on ``paths``, and speeds."""
    exact = runtime_embeddings(model, paths, EXACT)
    draft = runtime_embeddings(model, paths, DRAFT)
    classes, score = model.class_vectors(list(names)), model.manifest.score
    cos = row_cosines(exact, draft)
    record = {"draft_top1_agreement": float(np.mean(top1(exact, classes, score) == top1(draft, classes, score))),
              "images": len(paths), "draft_image_cosine_min": float(cos.min()),
              "min_draft_agreement": MIN_DRAFT_AGREEMENT}
    record.update(decode_speed(large, contest, model.image_cfg))
    return record


def choose_decode(wanted: str, record: Dict[str, Any], row: Optional[Dict[str, Any]], limit_s: float,
                  images: int) -> Tuple[str, str]:
    """(image.decode, why) for the export: ``wanted`` is exact, draft or auto.

    Draft needs its measured top-1 agreement with exact >= MIN_DRAFT_AGREEMENT
    (an explicit ``draft`` below it is an error). ``auto`` keeps exact unless the
    default variant's plan ``row`` does not fit ``limit_s`` and draft decoding's
    measured saving on contest-size photos (``images`` of them) makes it fit.
    """
    agreement = record.get("draft_top1_agreement", 0.0)
    good = agreement >= MIN_DRAFT_AGREEMENT
    if wanted == EXACT:
        return EXACT, "asked for (--decode exact)"
    if wanted == DRAFT:
        if not good:
            raise ValueError(f"--decode draft: its top-1 agreement with exact decoding is {agreement:.4f} "
                             f"< {MIN_DRAFT_AGREEMENT} on {record.get('images')} images")
        return DRAFT, f"asked for (--decode draft), top-1 agreement with exact {agreement:.4f}"
    if row is None or row["fits_time"]:
        return EXACT, "exact decoding fits the time"
    exact_ips, draft_ips = record.get("contest_exact_images_per_s"), record.get("contest_draft_images_per_s")
    if not good or not exact_ips or not draft_ips:
        return EXACT, f"over the time, but draft decoding's top-1 agreement {agreement:.4f} < {MIN_DRAFT_AGREEMENT}"
    saved = images * (1.0 / exact_ips - 1.0 / draft_ips)
    if row["projected_s"] - saved > limit_s:
        return EXACT, f"over the time even with draft decoding (saves {saved:.0f} s)"
    return DRAFT, f"exact decoding is over the time; draft saves {saved:.0f} s at top-1 agreement {agreement:.4f}"


def prompts_for(model: Model, names: Sequence[str]) -> List[str]:
    """The manifest's prompts of ``names`` (template-major), as the runtime builds them."""
    text = model.text_cfg
    return build_prompts(list(names), text.templates, text.normalize)


def end_to_end(model_dir: Path, request: Dict[str, Any], paths: Sequence[Path], kinds: Sequence[str],
               names: Sequence[str], python: Path,
               token_ids: Optional[Callable[[List[str]], np.ndarray]] = None) -> Dict[str, Any]:
    """Run the reference on ``paths`` and compare; the first len(kinds) images also compare pixels.

    ``request``: the source's loading arguments (family, path, arch, ...);
    ``token_ids``: prompts -> their ids int64 (P, L), when the reference takes ids (ruCLIP).
    """
    model = Model(Path(model_dir), threads=1, verify=False)
    prompts = prompts_for(model, names)
    req = dict(request, images=[str(p) for p in paths], pixel_images=len(kinds), prompts=prompts)
    if token_ids is not None:
        req["token_ids"] = np.asarray(token_ids(prompts)).tolist()
    with tempfile.TemporaryDirectory(prefix="e2e-ref-") as tmp:
        started = time.perf_counter()
        reference = run_reference(python, req, Path(tmp))
        logger.info("reference pipeline: %d images in %.0f s", len(paths), time.perf_counter() - started)
    record = compare(model, list(paths), list(kinds), list(names), reference)
    record["reference"] = reference["versions"]
    record["decoding_rule"] = ("both sides decode every pixel (Image.open), turn the image upright by its EXIF "
                               "orientation and convert it to RGB by zeroshot.images' rule before resizing")
    return record


def format_report(record: Dict[str, Any], decode: Dict[str, Any], title: str = "") -> str:
    """A Markdown summary of the end-to-end and decoding records (what the export prints)."""
    lines = [f"{title}\n" if title else ""]
    if "skipped" in record:
        lines.append(f"end-to-end parity: not run ({record['skipped']})")
    else:
        lines.append("| images | pixel max diff | image cosine min / mean | top-1 agreement |\n|---|---|---|---|")
        lines.append(f"| {record['images']} | {record['pixel_max_abs_diff']:.2e} | {record['image_cosine_min']:.6f} / "
                     f"{record['image_cosine_mean']:.6f} | {record['top1_agreement']:.4f} |")
    if decode:
        lines.append("\n| decoding | top-1 vs exact | 4000x3000 images/s | contest-size images/s |\n|---|---|---|---|")
        for mode in (EXACT, DRAFT):
            agree = 1.0 if mode == EXACT else decode.get("draft_top1_agreement", float("nan"))
            lines.append(f"| {mode} | {agree:.4f} | {decode.get(f'4000x3000_{mode}_images_per_s', '-')} | "
                         f"{decode.get(f'contest_{mode}_images_per_s', '-')} |")
    return "\n".join(lines) + "\n"

