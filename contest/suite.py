"""``make suite``: a model folder over every set of the tuning suite, through predict.py's own code path.

Usage:
``python -m contest.suite run [--model DIR] [--suite DIR] [--dev DIR | --no-dev] [--rung NAME] [--threads N]
[--json OUT]`` and ``python -m contest.suite compare A.json B.json [--resamples N] [--seed S] [--json OUT]``.

``run`` predicts every set of the suite (``SUITE/<set>/{classes.json, img/, gt.json}``, the judge's layout
with the labels beside it) and the dev set (``DEV/<dataset>/...`` with ``DEV/gt.json``, one row flagged
``dev``) with the functions predict.py uses: the model loads through ``zeroshot.cli.make_model`` (the
accuracy ladder chooses as predict.py would for the judge's 2,200 images, probed on the suite's images,
unless ``--rung`` forces one), the images go through ``zeroshot.pipeline.run_all`` (inline decoding on
one thread by default, as on the judge) and every set is scored by ``zeroshot.evaluate``. The budget is
unbounded, so every image is encoded at the rung's full size. It prints a table (per set: classes,
images, accuracy x 100, images/s; the mean over the suite's sets and the worst one, the dev set left
out of both) and writes a JSON (per set: accuracy, n, n_classes, seconds; model name, rung, git commit,
date).

``compare`` lines up two such JSONs set by set: B minus A per set, how many sets rose and fell, and the
mean delta over the suite's sets with a seeded bootstrap 95% interval (sets resampled with replacement).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.budget import Budget
from zeroshot.cli import DECODE_PIXEL_BUDGET, SAFETY_MARGIN_S, decode_workers, make_model, positive_int
from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import Dataset, discover
from zeroshot.evaluate import evaluate
from zeroshot.limits import DEVSETS_DIR, JUDGE_IMAGES, JUDGE_TIME_LIMIT_S, MODEL_DIR, REPO_ROOT, SUITE_DIR
from zeroshot.outputs import write_json_atomic
from zeroshot.pipeline import Decoder, DatasetResult, Progress, run_all
from zeroshot.resources import PixelBudget, effective_cpus

logger = logging.getLogger(__name__)

GT_FILE = "gt.json"
NO_BUDGET_S = 1e9          # every image on the full tier: the rung's own accuracy, not the budget's
RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass
class LabelledSet:
    """One dataset in the judge's layout with its true labels ({image id: class index})."""

    dataset: Dataset
    truth: Dict[str, int]
    dev: bool = False


def read_truth(path: Path, name: str) -> Dict[str, int]:
    """The labels of dataset ``name`` in ``path``: the judge's format ``{name: {id: class}}`` or ``{id: class}``.

    Raises FileNotFoundError or ValueError naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground truth not found (expected {{image id: class index}})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid UTF-8 JSON: {exc}") from exc
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        if name not in data:
            raise ValueError(f"{path}: no labels for dataset '{name}' (has {sorted(data)[:5]})")
        data = data[name]
    if not isinstance(data, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        raise ValueError(f"{path}: expected {{image id: class index}} or {{'{name}': {{image id: class index}}}}")
    return data


def load_suite(suite: Optional[Path], dev: Optional[Path]) -> List[LabelledSet]:
    """The dev set's datasets (flagged ``dev``, labels in ``dev/gt.json``) then the suite's sets (labels in
    ``suite/<set>/gt.json``), each sorted by name; a suite set with neither images nor labels (not built
    yet) is skipped with a warning. Raises FileNotFoundError/ValueError naming the path."""
    sets: List[LabelledSet] = []
    for root, is_dev in ((dev, True), (suite, False)):
        if root is None:
            continue
        datasets, problems = discover(root)
        for problem in problems:
            logger.warning("%s", problem)
        for ds in datasets:
            gt = root / GT_FILE if is_dev else ds.root / GT_FILE
            if not is_dev and not ds.images and not gt.is_file():
                logger.warning("%s: no images and no %s: a set not built yet (make suite-data); skipped",
                               ds.root, GT_FILE)
                continue
            truth = read_truth(gt, ds.name)
            unlabelled = set(ds.ids) - set(truth)
            if unlabelled:
                logger.warning("%s: %d images have no label in the ground truth; they are not scored",
                               ds.root, len(unlabelled))
            sets.append(LabelledSet(ds, truth, is_dev))
    names = [s.dataset.name for s in sets]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"{suite}: set names {clash} are also dataset names of the dev set {dev}")
    if not sets:
        raise ValueError(f"{suite}: no labelled sets (and no dev set)")
    return sets


def ladder_paths(sets: Sequence[LabelledSet], images: int) -> List[Path]:
    """``images`` image paths cycled through every set's images: what the ladder projects its time for."""
    pool = [p for s in sets for p in s.dataset.images]
    return list(islice(cycle(pool), images)) if pool else []


def git_commit(repo: Path = REPO_ROOT) -> Optional[str]:
    """HEAD's commit, with ``+dirty`` when tracked files differ from it; None outside a git work tree."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_sets(sets: Sequence[LabelledSet], model_dir: Path, rung: Optional[str], threads: int,
             batch_size: Optional[int] = None) -> Tuple[Any, List[DatasetResult]]:
    """Predict every set with predict.py's functions; returns (the loaded zeroshot Model, results in order)."""
    limit = effective_cpus(threads)
    args = argparse.Namespace(model=model_dir, variant=None, rung=rung)
    model = make_model(args, limit, ladder_paths(sets, JUDGE_IMAGES), JUDGE_TIME_LIMIT_S - SAFETY_MARGIN_S)
    datasets = [s.dataset for s in sets]
    total = sum(len(ds.images) for ds in datasets)
    prompts = sum(len(ds.classes) for ds in datasets) * len(model.text_cfg.templates)
    budget = Budget(NO_BUDGET_S, total, None, total_prompts=prompts, total_datasets=len(datasets))
    decoder = Decoder(decode_workers("auto", limit.cpus), PixelBudget(DECODE_PIXEL_BUDGET))
    progress = Progress("suite", total)
    done = [0]

    def on_result(res: DatasetResult) -> None:
        done[0] += len(res.predictions)
        progress.update(done[0], force=True)

    logger.info("suite: %d sets, %d images, model %s, rung %s, %d threads", len(sets), total, model_dir,
                model.variant, limit.cpus)
    return model, run_all(datasets, model, budget, batch_size or model.batch_size, decoder, on_result)


def score_sets(sets: Sequence[LabelledSet], results: Sequence[DatasetResult]) -> Dict[str, Dict[str, Any]]:
    """{set: {accuracy (x 100), correct, n (labelled images), n_classes, seconds, images_per_s, dev}}."""
    rows: Dict[str, Dict[str, Any]] = {}
    for s, res in zip(sets, results):
        name = s.dataset.name
        report = evaluate({name: s.truth}, {name: res.predictions}).datasets[0]
        rows[name] = {"accuracy": 100.0 * report.accuracy, "correct": report.correct, "n": report.total,
                      "n_classes": len(s.dataset.classes), "seconds": res.seconds,
                      "images_per_s": len(res.predictions) / max(res.seconds, 1e-9), "dev": s.dev}
    return rows


def summary(rows: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The mean accuracy over the suite's sets (dev rows left out) and the worst of them."""
    suite = {k: v["accuracy"] for k, v in rows.items() if not v["dev"]}
    if not suite:
        return {"sets": 0, "mean": None, "worst": None}
    worst = min(sorted(suite), key=lambda k: suite[k])
    return {"sets": len(suite), "mean": float(np.mean(list(suite.values()))),
            "worst": {"set": worst, "accuracy": suite[worst]}}


def format_table(result: Dict[str, Any]) -> str:
    """Per set: dev flag, classes, images, accuracy x 100, images/s; then the mean and the worst set."""
    lines = [f"model {result['model']} ({result['model_dir']}), rung {result['rung']}, {result['threads']} thread(s), "
             f"commit {result['commit']}, {result['date']}",
             f"{'set':<28} {'dev':>3} {'classes':>7} {'images':>7} {'accuracy':>9} {'images/s':>9}"]
    for name, row in result["sets"].items():
        lines.append(f"{name:<28} {'yes' if row['dev'] else '':>3} {row['n_classes']:>7} {row['n']:>7} "
                     f"{row['accuracy']:>9.2f} {row['images_per_s']:>9.1f}")
    summ = result["summary"]
    if summ["sets"]:
        lines.append(f"mean over {summ['sets']} suite sets (dev left out): {summ['mean']:.2f}")
        lines.append(f"worst suite set: {summ['worst']['set']} {summ['worst']['accuracy']:.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``run``: predict, score, print the table, write the JSON."""
    commit, date = git_commit(), datetime.datetime.now().isoformat(timespec="seconds")  # of the code that runs
    try:
        sets = load_suite(args.suite, None if args.no_dev else args.dev)
        model, results = run_sets(sets, args.model, args.rung, args.threads, args.batch_size)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    rows = score_sets(sets, results)
    result = {"model": model.manifest.name, "model_dir": str(args.model), "rung": model.variant,
              "rung_forced": args.rung is not None, "threads": model.threads, "commit": commit, "date": date,
              "suite": str(args.suite), "dev": None if args.no_dev else str(args.dev),
              "sets": rows, "summary": summary(rows)}
    sys.stdout.write(format_table(result) + "\n")
    if args.json is not None:
        write_json_atomic(args.json, result)
        logger.info("wrote %s", args.json)
    return 0


def bootstrap_interval(deltas: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                       confidence: float = CONFIDENCE) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``deltas``: the sets resampled with replacement
    ``resamples`` times (numpy's default_rng(``seed``)); numpy's linear-interpolated percentiles."""
    d = np.asarray(deltas, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def compare(a: Dict[str, Any], b: Dict[str, Any], resamples: int = RESAMPLES, seed: int = 0) -> Dict[str, Any]:
    """B minus A per set present in both; counts, mean delta and bootstrap interval over the non-dev sets."""
    dev = {k for side in (a, b) for k, row in side["sets"].items() if row.get("dev")}
    common = sorted((k for k in a["sets"] if k in b["sets"]), key=lambda k: (k not in dev, k))  # dev rows first
    rows = {k: {"a": a["sets"][k]["accuracy"], "b": b["sets"][k]["accuracy"],
                "delta": b["sets"][k]["accuracy"] - a["sets"][k]["accuracy"], "dev": k in dev} for k in common}
    deltas = [r["delta"] for r in rows.values() if not r["dev"]]
    out: Dict[str, Any] = {"sets": rows, "only_a": sorted(set(a["sets"]) - set(b["sets"])),
                           "only_b": sorted(set(b["sets"]) - set(a["sets"])), "compared": len(deltas),
                           "improved": sum(d > 0 for d in deltas), "fell": sum(d < 0 for d in deltas),
                           "equal": sum(d == 0 for d in deltas), "mean_delta": None, "interval": None,
                           "resamples": resamples, "seed": seed}
    if deltas:
        out["mean_delta"] = float(np.mean(deltas))
        out["interval"] = list(bootstrap_interval(deltas, resamples, seed))
    return out


def format_compare(cmp: Dict[str, Any], name_a: str, name_b: str) -> str:
    """Per set A, B and the delta; then the counts and the mean delta with its interval."""
    lines = [f"A = {name_a}", f"B = {name_b}", f"{'set':<28} {'dev':>3} {'A':>7} {'B':>7} {'B - A':>7}"]
    for name, r in cmp["sets"].items():
        lines.append(f"{name:<28} {'yes' if r['dev'] else '':>3} {r['a']:>7.2f} {r['b']:>7.2f} {r['delta']:>+7.2f}")
    for side in ("a", "b"):
        if cmp[f"only_{side}"]:
            lines.append(f"only in {side.upper()} (not compared): {', '.join(cmp[f'only_{side}'])}")
    lines.append(f"{cmp['compared']} suite sets (dev left out): {cmp['improved']} improved, {cmp['fell']} fell, "
                 f"{cmp['equal']} equal")
    if cmp["mean_delta"] is not None:
        low, high = cmp["interval"]
        lines.append(f"mean delta {cmp['mean_delta']:+.2f}, 95% bootstrap interval over sets [{low:+.2f}, {high:+.2f}] "
                     f"({cmp['resamples']} resamples, seed {cmp['seed']})")
    return "\n".join(lines)


def read_result(path: Path) -> Dict[str, Any]:
    """A JSON written by ``run``; ValueError naming the file if it has no per-set accuracies."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("sets"), dict) or not all(
            isinstance(v, dict) and isinstance(v.get("accuracy"), (int, float)) for v in data["sets"].values()):
        raise ValueError(f"{path}: expected a contest.suite result with sets.<set>.accuracy")
    return data


def compare_command(args: argparse.Namespace) -> int:
    """``compare``: print (and optionally write) the comparison of two results."""
    try:
        a, b = read_result(args.a), read_result(args.b)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    cmp = compare(a, b, args.resamples, args.seed)
    sys.stdout.write(format_compare(cmp, str(args.a), str(args.b)) + "\n")
    if args.json is not None:
        write_json_atomic(args.json, cmp)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m contest.suite", __doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="predict and score every set of the suite and the dev set")
    r.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: %(default)s)")
    r.add_argument("--suite", type=Path, default=SUITE_DIR,
                   help="the suite: <set>/{classes.json,img/,gt.json} (default: %(default)s)")
    r.add_argument("--dev", type=Path, default=DEVSETS_DIR,
                   help="the dev set: <dataset>/... and gt.json, one row flagged dev (default: %(default)s)")
    r.add_argument("--no-dev", action="store_true", help="leave the dev set out")
    r.add_argument("--rung", default=None, help="a rung of the ladder (default: the ladder's choice for "
                                                f"{JUDGE_IMAGES} images on this machine, as predict.py makes it)")
    r.add_argument("--threads", type=positive_int, default=1, help="onnxruntime threads (default: 1, as on the judge)")
    r.add_argument("--batch-size", type=positive_int, default=None, help="images per encoder run (default: manifest)")
    r.add_argument("--json", type=Path, default=None, help="write the per-set results here")
    c = sub.add_parser("compare", help="per-set deltas of two run JSONs and the mean delta's bootstrap interval")
    c.add_argument("a", type=Path, help="the baseline result (A)")
    c.add_argument("b", type=Path, help="the candidate result (B); deltas are B - A")
    c.add_argument("--resamples", type=positive_int, default=RESAMPLES,
                   help="bootstrap resamples (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    c.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    return run(args) if args.command == "run" else compare_command(args)


if __name__ == "__main__":
    sys.exit(main())
