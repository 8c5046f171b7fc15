"""Images per second on one core: our predict.py against the organisers' baseline and the input ceiling.

Usage: ``make bench`` or ``python -m contest.bench [--model DIR] [--int8-model DIR] [--data DIR]
[--large N] [--repeat-to N] [--out JSON]``.

Image sets, built in a temporary folder in the judge's layout:
- ``dev``: the datasets of ``--data`` repeated through symlinks to exactly ``--repeat-to`` images;
- ``large``: ``--large`` generated 3000x2000 JPEGs, where JPEG draft mode pays off.

Pipelines, each in its own process under ``taskset -c CPU`` with OMP_NUM_THREADS=1:
- ``ours`` (and ``ours-<variant>`` for each variant the manifest lists, ``ours-int8`` for ``--int8-model``): the real
  ``predict.py SET OUT --model DIR --threads 1``, end to end (decode, preprocess, both encoders,
  scores, JSON);
- ``baseline``: the organisers' setup (contest/resnet50.py): PyTorch ResNet-50 fp32, full PIL decode,
  resize + center crop 224, batch 10, one torch thread, predictions written as JSON;
- ``ceiling``: zeroshot.images.load_image + preprocess at the model's image size with no model,
  the most our input stage can deliver.

Figures per process: ``wall`` from start to exit (JSON written); ``load`` until the first image
can be processed (for ours, the wall of ``predict.py --check``, which loads the same model);
``steady`` images/s = images / (wall - load); ``cpu`` images/s = images / CPU seconds (user +
sys, steadier than wall time when other processes share the CPU); peak RSS of the pipeline's
process (see :func:`run_pinned`); for ours, the rung predict.py ran (its ``--report``). The table goes to
stdout, the same figures with ratios to ``--out`` (default bench/results/bench.json). Speed is reported, not
judged: ``--min-ratio X`` makes the run exit 1 when ours is under X times the baseline's images/s on the dev
set (a gate for whoever wants one; a slower machine alone never fails the default run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import CLASSES_FILE, IMAGES_DIR, discover
from zeroshot.limits import DEVSETS_DIR, JUDGE_IMAGES, MODEL_DIR
from zeroshot.limits import REPO_ROOT as REPO
from zeroshot.manifest import MANIFEST_NAME, Manifest, load_manifest

logger = logging.getLogger(__name__)

DEFAULT_OUT = REPO / "bench" / "results" / "bench.json"
LARGE_SIZE = (3000, 2000)
NO_BUDGET_S = "1e9"       # ours runs its full tier on every image, whatever the judge's budget
_LAUNCHER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}, f)
sys.exit(rc)
"""


# ---------------------------------------------------------------- image sets

def make_repeat_set(data: Path, n: int, dest: Path) -> int:
    """Fill ``dest`` with the datasets of ``data``, images repeated by symlink to exactly ``n`` in all.

    Images are taken round-robin through every dataset's sorted images; the k-th
    repeat of ``name`` is ``r{k}_{name}``, so ids stay unique. Returns ``n``.
    """
    datasets, problems = discover(data)
    for problem in problems:
        logger.warning("%s", problem)
    pool = [(ds, path) for ds in datasets for path in ds.images]
    if not pool:
        raise ValueError(f"{data}: no images found in any dataset (expected <name>/{CLASSES_FILE} and "
                         f"<name>/{IMAGES_DIR}/)")
    for i in range(n):
        ds, src = pool[i % len(pool)]
        img_dir = dest / ds.name / IMAGES_DIR
        if not img_dir.is_dir():
            img_dir.mkdir(parents=True)
            shutil.copyfile(ds.root / CLASSES_FILE, dest / ds.name / CLASSES_FILE)
        (img_dir / f"r{i // len(pool)}_{src.name}").symlink_to(src.resolve())
    return n


def large_photo(rng: np.random.Generator, size=LARGE_SIZE) -> Image.Image:
    """A photo-like RGB image: a four-corner colour gradient with sensor-like noise."""
    w, h = size
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    c = rng.uniform(0, 255, size=(4, 3)).astype(np.float32)
    arr = c[0] * (1 - xs) * (1 - ys) + c[1] * xs * (1 - ys) + c[2] * (1 - xs) * ys + c[3] * xs * ys
    arr += rng.standard_normal((h, w, 3), dtype=np.float32) * 8.0
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_large_set(dest: Path, n: int, classes_from: Path, seed: int = 0) -> int:
    """Write ``n`` 3000x2000 JPEGs (quality 90) as one dataset ``dest/large``; returns ``n``."""
    img_dir = dest / "large" / IMAGES_DIR
    img_dir.mkdir(parents=True)
    shutil.copyfile(classes_from, dest / "large" / CLASSES_FILE)
    rng = np.random.default_rng(seed)
    for i in range(n):
        large_photo(rng).save(img_dir / f"large{i:04d}.jpg", quality=90)
    return n


def warm_cache(root: Path) -> None:
    """Read every file under ``root`` once, so no pipeline pays for a cold page cache."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            path.read_bytes()


def variant_legs(args: argparse.Namespace, manifest: Manifest, notes: List[str]) -> List[Tuple[str, List[str]]]:
    """predict.py's model arguments for the legs beyond ``ours``: one per variant the manifest lists
    (``ours-<name>``, ``--variant <name>``) whose files differ from the default ones, and ``ours-int8``
    for --int8-model DIR. A note says when there is none."""
    legs: List[Tuple[str, List[str]]] = []
    default = {k: v.path for k, v in manifest.files.items()}
    for name, variant in sorted(manifest.variants.items()):
        if any(default.get(k) != v.path for k, v in variant.files.items()):
            legs.append((f"ours-{name}", ["--model", str(args.model), "--variant", name]))
    if args.int8_model is not None:
        if (args.int8_model / MANIFEST_NAME).is_file():
            legs.append(("ours-int8", ["--model", str(args.int8_model)]))
        else:
            notes.append(f"ours-int8 skipped: {args.int8_model / MANIFEST_NAME} not found")
    if not legs:
        notes.append(f"only the default files measured: {args.model / MANIFEST_NAME} lists no other variant "
                     "and no --int8-model was given")
    return legs


# ---------------------------------------------------------------- child processes

def run_pinned(cmd: List[str], log_path: Path, cpu: int) -> Dict[str, float]:
    """Run ``cmd`` under ``taskset -c cpu``; {"wall_s", "cpu_s", "peak_rss_mb"}. Raises RuntimeError on failure.

    A bare Python launcher starts ``cmd`` and reads its peak RSS from RUSAGE_CHILDREN:
    a child forked from this process would carry this process's own high-water mark
    (Linux keeps it across exec), which the image sets built here inflate.
    """
    if shutil.which("taskset") is None:
        raise FileNotFoundError("taskset: not found on PATH (util-linux); the bench pins every pipeline to one CPU")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = log_path.with_suffix(".run.json")
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.call(["taskset", "-c", str(cpu), sys.executable, "-I", "-c", _LAUNCHER, str(result), *cmd],
                             stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}; its log ends:\n{tail}")
    return json.loads(result.read_text(encoding="utf-8"))


def _figures(pipeline: str, images: int, run: Dict[str, float], load_s: float) -> Dict[str, Any]:
    """One table row from a run and its load time: e2e, steady and CPU-time images/s, ms per image."""
    steady_s = max(run["wall_s"] - load_s, 1e-9)
    return {"pipeline": pipeline, "images": images, "wall_s": run["wall_s"], "load_s": load_s,
            "cpu_s": run["cpu_s"], "images_per_s": images / run["wall_s"], "steady_images_per_s": images / steady_s,
            "cpu_images_per_s": images / max(run["cpu_s"], 1e-9), "ms_per_image": 1000.0 * steady_s / images,
            "peak_rss_mb": run["peak_rss_mb"]}


def measure_ours(name: str, model_args: List[str], set_dir: Path, images: int, load_s: float, work: Path,
                 cpu: int) -> Dict[str, Any]:
    """The real predict.py on ``set_dir``; checks that every image got a prediction."""
    out = work / f"{set_dir.name}-{name}.json"
    report = work / f"{set_dir.name}-{name}.report.json"
    run = run_pinned([sys.executable, str(REPO / "predict.py"), str(set_dir), str(out), *model_args,
                      "--threads", "1", "--time-budget", NO_BUDGET_S, "--report", str(report)],
                     work / f"{set_dir.name}-{name}.log", cpu)
    predicted = sum(len(v) for v in json.loads(out.read_text(encoding="utf-8")).values())
    if predicted != images:
        raise RuntimeError(f"{out}: {predicted} predictions for {images} images")
    rung = json.loads(report.read_text(encoding="utf-8"))["model"].get("variant")
    return {**_figures(name, images, run, load_s), "rung": rung}


def measure_load(name: str, model_args: List[str], work: Path, cpu: int) -> float:
    """Seconds for ``predict.py --check``: interpreter, imports, sha256 checks, ONNX sessions."""
    cmd = [sys.executable, str(REPO / "predict.py"), "--check", *model_args]
    return run_pinned(cmd, work / f"check-{name}.log", cpu)["wall_s"]


def measure_leg(leg: str, set_dir: Path, images: int, args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """The ``baseline`` or ``ceiling`` leg of this module in its own pinned process."""
    timing = work / f"{set_dir.name}-{leg}.timing.json"
    cmd = [sys.executable, "-m", "contest.bench", "--leg", leg, "--data", str(set_dir), "--leg-out", str(timing),
           "--model", str(args.model), "--baseline-size", str(args.baseline_size),
           "--baseline-batch", str(args.baseline_batch)]
    run = run_pinned(cmd, work / f"{set_dir.name}-{leg}.log", args.cpu)
    child = json.loads(timing.read_text(encoding="utf-8"))
    if child["images"] != images:
        raise RuntimeError(f"{leg} leg saw {child['images']} images in {set_dir}, expected {images}")
    if child.get("failed"):
        logger.warning("%s leg on %s: %d images could not be decoded", leg, set_dir.name, child["failed"])
    return _figures(leg, images, run, run["wall_s"] - child["loop_s"])


# ---------------------------------------------------------------- legs (run inside the child)

def leg_baseline(data: Path, out_json: Path, size: int, batch: int) -> Dict[str, Any]:
    """The organisers' pipeline over every dataset of ``data``; predictions to ``out_json``."""
    import torch

    from zeroshot.outputs import write_json_atomic

    from .resnet50 import organisers_preprocess, resnet50

    torch.set_num_threads(1)
    model = resnet50().eval()
    datasets, _ = discover(data)
    started = time.perf_counter()
    preds: Dict[str, Dict[str, int]] = {}
    with torch.inference_mode():
        for ds in datasets:
            labels: List[int] = []
            for start in range(0, len(ds.images), batch):
                pixels = np.stack([organisers_preprocess(p, size) for p in ds.images[start:start + batch]])
                labels += model(torch.from_numpy(pixels)).argmax(dim=1).tolist()
            preds[ds.name] = {i: label % len(ds.classes) for i, label in zip(ds.ids, labels)}
    write_json_atomic(out_json, preds)
    return {"images": sum(len(ds.images) for ds in datasets), "loop_s": time.perf_counter() - started}


def leg_ceiling(data: Path, model_dir: Path) -> Dict[str, Any]:
    """Decode + preprocess every image of ``data`` at the model's image size, one thread, no model."""
    from zeroshot.images import ImageError, load_image, preprocess

    cfg = load_manifest(model_dir).image
    datasets, _ = discover(data)
    started = time.perf_counter()
    failed = 0
    for ds in datasets:
        for path in ds.images:
            try:
                preprocess(load_image(path, cfg.size, cfg.decode), cfg, cfg.size)
            except ImageError as exc:
                logger.warning("%s", exc)
                failed += 1
    return {"images": sum(len(ds.images) for ds in datasets), "loop_s": time.perf_counter() - started,
            "failed": failed}


# ---------------------------------------------------------------- report

def ratios(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per ours-variant: images/s over the baseline's (end to end, steady, per CPU second) and
    steady images/s over the ceiling's."""
    by = {r["pipeline"]: r for r in rows}
    out: Dict[str, Dict[str, float]] = {}
    for name, row in by.items():
        if not name.startswith("ours"):
            continue
        out[name] = {"vs_baseline": row["images_per_s"] / by["baseline"]["images_per_s"],
                     "vs_baseline_steady": row["steady_images_per_s"] / by["baseline"]["steady_images_per_s"],
                     "vs_baseline_cpu": row["cpu_images_per_s"] / by["baseline"]["cpu_images_per_s"],
                     "vs_ceiling_steady": row["steady_images_per_s"] / by["ceiling"]["steady_images_per_s"]}
    return out


def gate(set_ratios: Dict[str, Dict[str, Dict[str, float]]], min_ratio: Optional[float]) -> List[Dict[str, Any]]:
    """With ``--min-ratio``: for every ours-pipeline, whether its end-to-end images/s on the dev set is at least
    ``min_ratio`` times the baseline's; empty without it."""
    if min_ratio is None:
        return []
    return [{"pipeline": name, "ratio": rat["vs_baseline"], "min_ratio": min_ratio,
             "passed": rat["vs_baseline"] >= min_ratio} for name, rat in set_ratios.get("dev", {}).items()]


def format_report(report: Dict[str, Any]) -> str:
    """The table, the ratios and (with --min-ratio) the gate as plain text."""
    head = (f"{'set':<6} {'pipeline':<10} {'rung':<14} {'images':>6} {'load s':>7} {'wall s':>8} {'img/s':>8} "
            f"{'steady img/s':>12} {'ms/img':>8} {'cpu img/s':>9} {'peak RSS MB':>11}")
    lines = [head, "-" * len(head)]
    for set_name, rows in report["results"].items():
        for r in rows:
            lines.append(f"{set_name:<6} {r['pipeline']:<10} {r.get('rung') or '-':<14} {r['images']:>6} {r['load_s']:>7.2f} {r['wall_s']:>8.2f} "
                         f"{r['images_per_s']:>8.2f} {r['steady_images_per_s']:>12.2f} {r['ms_per_image']:>8.2f} "
                         f"{r['cpu_images_per_s']:>9.2f} {r['peak_rss_mb']:>11.0f}")
    lines.append("")
    for set_name, per in report["ratios"].items():
        for name, rat in per.items():
            lines.append(f"{set_name:<6} {name}/baseline {rat['vs_baseline']:.2f}x end to end, "
                         f"{rat['vs_baseline_steady']:.2f}x steady, {rat['vs_baseline_cpu']:.2f}x per CPU second; "
                         f"{name}/ceiling {rat['vs_ceiling_steady']:.2f} steady")
    for check in report["gate"]:
        lines.append(f"gate {check['pipeline']}: {check['ratio']:.2f}x the baseline on dev, --min-ratio "
                     f"{check['min_ratio']:g}: {'met' if check['passed'] else 'NOT MET'}")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m contest.bench", __doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument("--int8-model", type=Path, default=None,
                        help="an extra model folder measured as ours-int8 (the manifest's variants are measured anyway)")
    parser.add_argument("--data", type=Path, default=DEVSETS_DIR,
                        help="datasets folder in the judge's layout (default: %(default)s)")
    parser.add_argument("--repeat-to", type=int, default=JUDGE_IMAGES,
                        help="images in the dev set, repeating --data by symlinks (default: %(default)s)")
    parser.add_argument("--large", type=int, default=40, help="generated 3000x2000 JPEGs (0: no such set)")
    parser.add_argument("--baseline-size", type=int, default=224, help="baseline crop size (default: %(default)s)")
    parser.add_argument("--baseline-batch", type=int, default=10, help="baseline batch (default: %(default)s)")
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)),
                        help="the one CPU every pipeline is pinned to (default: the first this process may use)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (default: %(default)s)")
    parser.add_argument("--min-ratio", type=float, default=None,
                        help="exit 1 unless ours runs at least this many times the baseline's images/s on the dev "
                             "set (default: no gate, speed is only reported)")
    parser.add_argument("--leg", choices=["baseline", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--leg-out", type=Path, help=argparse.SUPPRESS)
    return parser


def run_bench(args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """Build the image sets in ``work``, measure every pipeline on each, return the report."""
    manifest = load_manifest(args.model)
    notes: List[str] = []
    variants = [("ours", ["--model", str(args.model)])] + variant_legs(args, manifest, notes)
    for note in notes:
        logger.warning("%s", note)
    sets: Dict[str, int] = {"dev": make_repeat_set(args.data, args.repeat_to, work / "dev")}
    if args.large > 0:
        first = discover(work / "dev")[0][0]
        sets["large"] = make_large_set(work / "large", args.large, first.root / CLASSES_FILE)
    warm_cache(work)
    load_before = os.getloadavg()
    load = {name: measure_load(name, model_args, work, args.cpu) for name, model_args in variants}
    results: Dict[str, List[Dict[str, Any]]] = {}
    for set_name, images in sets.items():
        set_dir = work / set_name
        rows = [measure_ours(name, model_args, set_dir, images, load[name], work, args.cpu)
                for name, model_args in variants]
        rows += [measure_leg(leg, set_dir, images, args, work) for leg in ("baseline", "ceiling")]
        for row in rows:
            logger.info("%s %s: %.2f images/s end to end, %.2f steady, peak RSS %.0f MB", set_name,
                        row["pipeline"], row["images_per_s"], row["steady_images_per_s"], row["peak_rss_mb"])
        results[set_name] = rows
    load_after = os.getloadavg()
    if max(load_before[0], load_after[0]) > 1.5:
        notes.append(f"other processes competed for the CPUs (1-min load average {load_before[0]:.1f} before, "
                     f"{load_after[0]:.1f} after): wall-clock figures are noisy, 'cpu img/s' less so")
    set_ratios = {name: ratios(rows) for name, rows in results.items()}
    model_name = manifest.name
    return {"cpu": args.cpu, "model": {"dir": str(args.model), "name": model_name},
            "legs": {name: " ".join(model_args) for name, model_args in variants},
            "data": str(args.data), "sets": sets,
            "baseline": {"arch": "resnet50", "size": args.baseline_size, "batch": args.baseline_batch},
            "load_average": {"before": load_before, "after": load_after},
            "results": results, "ratios": set_ratios, "gate": gate(set_ratios, args.min_ratio),
            "notes": notes}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    if args.leg:
        if args.leg == "baseline":
            timing = leg_baseline(args.data, args.leg_out.with_suffix(".predictions.json"), args.baseline_size,
                                  args.baseline_batch)
        else:
            timing = leg_ceiling(args.data, args.model)
        args.leg_out.write_text(json.dumps(timing), encoding="utf-8")
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="zeroshot-bench-") as tmp:
            report = run_bench(args, Path(tmp))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(format_report(report) + "\n")
    logger.info("wrote %s", args.out)
    return 1 if any(not check["passed"] for check in report["gate"]) else 0


if __name__ == "__main__":
    sys.exit(main())
