"""Benchmark of the EfficientNet-Lite image encoders: accuracy proxy and one-core speed.

For labelled images whose classes have an ImageNet counterpart (``--class-map``,
a JSON object {dataset class index: [ImageNet indices]}; dataset-specific, so
it is passed on the command line, never stored here), it reports the share of
images whose top-1 / top-5 ImageNet classes contain a mapped class, for:

- the preprocessing grid (``--preprocess-grid``): mean/std (TF-Lite (x-127)/128
  vs PyTorch ImageNet), center_crop vs squash, bilinear vs bicubic, at each
  backbone's native size, fp32;
- each ``--config`` ``BACKBONE@EXPORT:RUN,RUN...`` (e.g. ``lite2@260:260,224``):
  the encoder exported with the padding of EXPORT px, run at each RUN size, in
  fp32, static int8 (train.image_encoder.quantize_image_encoder) and, with
  ``--dynamic``, dynamic int8 for comparison; with images/s of the encoder
  alone at batch 16 and 1 on one intra-op thread.

Run it pinned to one core: ``taskset -c 0 python -m train.experiments.measure_image_encoders ...``.
Results go to stdout as a Markdown table (and ``--json-out``); logs to stderr.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from train.image_encoder import (INPUT_NAME, PARITY_IMAGES, TF_LITE_MEAN, TF_LITE_STD, export_image_encoder,
                                 image_config, list_images, native_size, pixel_batch, quantize_image_encoder,
                                 run_encoder, split_images)
from zeroshot.command import make_parser, parse_args
from zeroshot.encoders import make_session
from zeroshot.images import load_image, preprocess

logger = logging.getLogger(__name__)

TIMING_IMAGES = 32

NORMS = {"tf_lite": (TF_LITE_MEAN, TF_LITE_STD),
         "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}


def labelled_images(images: Path, gt_path: Path, dataset: str,
                    class_map: Dict[int, List[int]]) -> Tuple[List[Path], List[Set[int]]]:
    """Images of the mapped classes (sorted by id) and, per image, its set of ImageNet targets."""
    gt = json.loads(Path(gt_path).read_text(encoding="utf-8"))
    if dataset not in gt:
        raise ValueError(f"{gt_path}: no dataset {dataset!r} (has {sorted(gt)})")
    by_stem = {p.stem: p for p in list_images(images)}
    paths, targets = [], []
    for image_id, label in sorted(gt[dataset].items()):
        if int(label) in class_map and image_id in by_stem:
            paths.append(by_stem[image_id])
            targets.append(set(class_map[int(label)]))
    if not paths:
        raise ValueError(f"{images}: no labelled image of the mapped classes {sorted(class_map)}")
    return paths, targets


def hit_rates(probs: np.ndarray, targets: Sequence[Set[int]]) -> Tuple[float, float]:
    """float32 (N, 1000) -> (top-1 share, top-5 share) of rows whose top-k holds a target class."""
    top5 = np.argsort(-probs, axis=1)[:, :5]
    top1 = float(np.mean([top5[i, 0] in t for i, t in enumerate(targets)]))
    any5 = float(np.mean([bool(set(top5[i].tolist()) & t) for i, t in enumerate(targets)]))
    return top1, any5


def images_per_second(session: Any, pixels: np.ndarray, batch: int, seconds: float) -> float:
    """Encoder throughput on ``pixels`` (cycled) at ``batch`` images per run, after one warm-up run."""
    feeds = [pixels[i:i + batch] for i in range(0, len(pixels) - batch + 1, batch)]
    session.run(None, {INPUT_NAME: feeds[0]})
    done, start = 0, time.perf_counter()
    for chunk in itertools.cycle(feeds):
        session.run(None, {INPUT_NAME: chunk})
        done += len(chunk)
        if time.perf_counter() - start >= seconds:
            break
    return done / (time.perf_counter() - start)


def decode_per_second(paths: Sequence[Path], cfg: Dict[str, Any], size: int, limit: int = 100) -> float:
    """load_image + preprocess throughput (images/s) in this thread."""
    chosen = list(paths)[:limit]
    start = time.perf_counter()
    for path in chosen:
        preprocess(load_image(path, size, cfg.decode), cfg, size)
    return len(chosen) / (time.perf_counter() - start)


def preprocess_grid(backbone: str, work: Path, paths: List[Path], targets: List[Set[int]]) -> List[Dict[str, Any]]:
    """Top-1/top-5 shares of the fp32 encoder at native size for every mean/std x resize x interpolation."""
    model = work / f"{backbone}_grid.onnx"
    export_image_encoder(backbone, model)
    session = make_session(model, threads=1)
    size = native_size(backbone)
    rows = []
    for norm, resize, interp in itertools.product(NORMS, ("center_crop", "squash"), ("bilinear", "bicubic")):
        cfg = {"resize": resize, "decode": "draft", "interpolation": interp, "mean": NORMS[norm][0],
               "std": NORMS[norm][1]}
        top1, top5 = hit_rates(run_encoder(session, pixel_batch(paths, cfg, size)), targets)
        rows.append({"backbone": backbone, "size": size, "norm": norm, "resize": resize, "interpolation": interp,
                     "top1": top1, "top5": top5})
        logger.info("grid %s", json.dumps(rows[-1]))
    return rows


def parse_config(spec: str) -> Tuple[str, int, List[int]]:
    """``lite2@260:260,224`` -> ("lite2", 260, [260, 224]); ``lite0`` -> native size only."""
    backbone, _, rest = spec.partition("@")
    export, _, runs = rest.partition(":")
    export_size = int(export) if export else native_size(backbone)
    run_sizes = [int(s) for s in runs.split(",")] if runs else [export_size]
    return backbone, export_size, run_sizes


def measure_config(spec: str, work: Path, paths: List[Path], targets: List[Set[int]], calibration: List[Path],
                   dynamic: bool) -> List[Dict[str, Any]]:
    """Export (fp32, static int8, optional dynamic int8) at EXPORT px; accuracy at each RUN size.

    Each row keeps the model path and a few preprocessed images under private
    keys ("_model", "_pixels", "_paths", "_cfg") for :func:`time_rows`.
    """
    backbone, export_size, run_sizes = parse_config(spec)
    cfg = image_config(backbone, export_size)
    fp32 = work / f"{backbone}_{export_size}.onnx"
    export_image_encoder(backbone, fp32, size=export_size, check_images=calibration[:PARITY_IMAGES])
    models = {"fp32": fp32, "int8_static": work / f"{backbone}_{export_size}.int8.onnx"}
    # the benchmark reports agreement (agree_fp32) instead of stopping at the export threshold
    quantize_image_encoder(fp32, models["int8_static"], calibration, cfg, check_images=paths, min_agreement=0.0)
    if dynamic:
        prepared = work / f"{backbone}_{export_size}.prep.onnx"
        quant_pre_process(str(fp32), str(prepared))
        models["int8_dynamic"] = work / f"{backbone}_{export_size}.dyn.onnx"
        quantize_dynamic(str(prepared), str(models["int8_dynamic"]), weight_type=QuantType.QUInt8)
    rows = []
    for size in run_sizes:
        pixels = pixel_batch(paths, cfg, size)
        reference = None
        for kind, model in models.items():
            probs = run_encoder(make_session(model, threads=1), pixels)
            reference = probs if reference is None else reference
            top1, top5 = hit_rates(probs, targets)
            rows.append({"backbone": backbone, "export_size": export_size, "size": size, "model": kind,
                         "top1": top1, "top5": top5,
                         "agree_fp32": float(np.mean(probs.argmax(1) == reference.argmax(1))),
                         "_model": model, "_pixels": pixels[:TIMING_IMAGES], "_paths": paths, "_cfg": cfg})
            logger.info("accuracy %s", json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("_")}))
    return rows


def time_rows(rows: List[Dict[str, Any]], batches: Sequence[int], seconds: float, rounds: int) -> None:
    """Add median images/s (encoder at each batch size; decode+preprocess per size) to every row.

    Measurements are interleaved over ``rounds`` rounds so that drifts of the
    machine's speed (shared or throttled cores) hit every configuration alike.
    """
    samples: Dict[Tuple[int, str], List[float]] = {}
    sessions = [make_session(row["_model"], threads=1) for row in rows]
    for round_no in range(rounds):
        decoded: Set[Tuple[str, int]] = set()
        for i, (row, session) in enumerate(zip(rows, sessions)):
            for batch in batches:
                samples.setdefault((i, f"ips_b{batch}"), []).append(
                    images_per_second(session, row["_pixels"], batch, seconds))
            key = (row["backbone"], row["size"])
            if key not in decoded:
                decoded.add(key)
                samples.setdefault((i, "decode_ips"), []).append(
                    decode_per_second(row["_paths"], row["_cfg"], row["size"]))
        logger.info("timing round %d/%d done", round_no + 1, rounds)
    for (i, name), values in samples.items():
        rows[i][name] = float(np.median(values))
    for row in rows:
        decode = next(r["decode_ips"] for r in rows if (r["backbone"], r["size"]) == (row["backbone"], row["size"])
                      and "decode_ips" in r)
        row["decode_ips"] = decode
        row["serial_ips_b16"] = 1.0 / (1.0 / row["ips_b16"] + 1.0 / decode) if "ips_b16" in row else None
        for key in [k for k in row if k.startswith("_")]:
            del row[key]


def _cell(value: Any) -> str:
    """Shares (<= 1) with 3 decimals, rates with 1, anything else as str."""
    if isinstance(value, float):
        return f"{value:.3f}" if value <= 1.0 else f"{value:.1f}"
    return str(value)


def markdown(rows: List[Dict[str, Any]]) -> str:
    """Rows of dicts with the same keys -> a Markdown table."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.measure_image_encoders", __doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of the labelled images")
    parser.add_argument("--gt", type=Path, required=True, help='ground truth {"dataset": {"id": class}}')
    parser.add_argument("--dataset", required=True, help="dataset name inside --gt")
    parser.add_argument("--class-map", required=True,
                        help='JSON (or @file): {"dataset class index": [ImageNet class indices]}')
    parser.add_argument("--work-dir", type=Path, required=True, help="where the exported models go")
    parser.add_argument("--config", nargs="*", default=[], help="BACKBONE@EXPORT:RUN,RUN (e.g. lite2@260:260,224)")
    parser.add_argument("--preprocess-grid", nargs="*", default=[], metavar="BACKBONE",
                        help="backbones for the mean/std x resize x interpolation grid")
    parser.add_argument("--calibration-dir", type=Path, default=None, help="int8 calibration images (default --images)")
    parser.add_argument("--dynamic", action="store_true", help="also measure dynamic int8 quantization")
    parser.add_argument("--batches", default="16,1", help="batch sizes for images/s")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing length per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parse_args(parser, argv)
    logging.getLogger().handlers[0].addFilter(lambda r: not r.getMessage().startswith("Increased scale"))
    raw = Path(args.class_map[1:]).read_text(encoding="utf-8") if args.class_map.startswith("@") else args.class_map
    class_map = {int(k): [int(i) for i in v] for k, v in json.loads(raw).items()}
    paths, targets = labelled_images(args.images, args.gt, args.dataset, class_map)
    logger.info("%d labelled images of %d mapped classes", len(paths), len(class_map))
    calibration, _ = split_images(list_images(args.calibration_dir or args.images))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    grid = [r for v in args.preprocess_grid for r in preprocess_grid(v, args.work_dir, paths, targets)]
    batches = [int(b) for b in args.batches.split(",")]
    rows = [r for spec in args.config
            for r in measure_config(spec, args.work_dir, paths, targets, calibration, args.dynamic)]
    time_rows(rows, batches, args.seconds, args.rounds)
    sys.stdout.write(markdown(grid) + "\n\n" + markdown(rows) + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps({"grid": grid, "encoders": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
