"""The contest metric: mean over datasets of accuracy x 100.

Usage: ``python -m zeroshot.evaluate GT_JSON PRED_JSON [--strict] [--json OUT]
[--per-class] [--data DATASETS_DIR] [--html FILE [--run-report REPORT_JSON]]``.
Prints per-dataset accuracy and the score to stdout; ``--per-class`` adds each
class's accuracy, worst first (named from DATASETS_DIR's classes.json files).
``--html`` also writes a self-contained HTML page (zeroshot/html_report.py):
per-class accuracy, confusion heat maps, the most frequent confusions with
thumbnails from DATASETS_DIR, and the images predict.py's run report puts on
the fast or prior tier.
An image missing from the predictions counts as wrong; with ``--strict``
missing or extra ids (or datasets) make the command fail.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .datasets import Dataset, discover
from .html_report import render, write_html
from .outputs import Predictions, os_error_text, read_predictions, write_json_atomic
from .command import make_parser, parse_args
from .report import read_report

logger = logging.getLogger(__name__)


@dataclass
class DatasetScore:
    """Accuracy of one dataset and the ids that did not line up."""

    name: str
    total: int
    correct: int
    missing: List[str] = field(default_factory=list)
    extra: List[str] = field(default_factory=list)
    classes: Dict[int, List[int]] = field(default_factory=dict)  # true label -> [images, correct]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class Report:
    """Per-dataset scores and the contest score (mean accuracy x 100)."""

    datasets: List[DatasetScore]
    extra_datasets: List[str]

    @property
    def score(self) -> float:
        if not self.datasets:
            return 0.0
        return 100.0 * sum(d.accuracy for d in self.datasets) / len(self.datasets)

    def clean(self) -> bool:
        """True when predictions and ground truth have exactly the same datasets and ids."""
        return not self.extra_datasets and all(not d.missing and not d.extra for d in self.datasets)


def evaluate(gt: Predictions, pred: Predictions) -> Report:
    """Score ``pred`` against ``gt``; missing predictions count as wrong."""
    scores: List[DatasetScore] = []
    for name in sorted(gt):
        truth, guess = gt[name], pred.get(name, {})
        classes: Dict[int, List[int]] = {}
        for key, label in truth.items():
            counts = classes.setdefault(label, [0, 0])
            counts[0] += 1
            counts[1] += guess.get(key) == label
        correct = sum(c for _, c in classes.values())
        missing = sorted(k for k in truth if k not in guess)
        extra = sorted(k for k in guess if k not in truth)
        scores.append(DatasetScore(name, len(truth), correct, missing, extra, dict(sorted(classes.items()))))
    return Report(scores, sorted(set(pred) - set(gt)))


def format_report(report: Report) -> str:
    """A small table: dataset, images, accuracy x 100, missing, extra; then the score."""
    lines = [f"{'dataset':<24} {'images':>7} {'accuracy':>9} {'missing':>8} {'extra':>6}"]
    for d in report.datasets:
        lines.append(f"{d.name:<24} {d.total:>7} {100 * d.accuracy:>9.2f} {len(d.missing):>8} {len(d.extra):>6}")
    for name in report.extra_datasets:
        lines.append(f"{name:<24} {'-':>7} {'-':>9} {'-':>8} {'(not in ground truth)'}")
    lines.append(f"score (mean accuracy x 100): {report.score:.2f}")
    return "\n".join(lines)


def format_per_class(report: Report, class_names: Optional[Dict[str, Sequence[str]]] = None) -> str:
    """Per dataset, each true class's images and accuracy x 100, worst first (ties by class index)."""
    lines = []
    for d in report.datasets:
        names = (class_names or {}).get(d.name, [])
        lines.append(f"{d.name}: per class, worst first")
        for label, (total, correct) in sorted(d.classes.items(), key=lambda kv: (kv[1][1] / kv[1][0], kv[0])):
            name = names[label] if isinstance(label, int) and 0 <= label < len(names) else ""
            lines.append(f"  {label:>4} {name:<30} {total:>6} {100 * correct / total:>9.2f}")
    return "\n".join(lines)


def report_dict(report: Report) -> Dict[str, object]:
    """JSON-ready form of a report."""
    return {"score": report.score, "extra_datasets": report.extra_datasets,
            "datasets": [dict(asdict(d), accuracy=d.accuracy) for d in report.datasets]}


def write_page(args: argparse.Namespace, gt: Predictions, pred: Predictions, report: Report,
               datasets: Dict[str, Dataset], run_report: Optional[Dict[str, Any]]) -> bool:
    """Write the --html page; False (logged) when it cannot be written."""
    sources = [("ground truth", str(args.gt)), ("predictions", str(args.pred))]
    sources += [(what, str(path)) for what, path in (("datasets", args.data), ("run report", args.run_report)) if path]
    page = render(report_dict(report), gt, pred, datasets, run_report, sources)
    try:
        write_html(args.html, page)
    except OSError as exc:
        logger.error("--html %s: cannot write it: %s", args.html, os_error_text(exc))
        return False
    logger.info("wrote the HTML report %s (%.0f KB)", args.html, len(page.encode("utf-8")) / 1024)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m zeroshot.evaluate", __doc__.split("\n")[0])
    parser.add_argument("gt", type=Path, help="ground truth JSON in the judge's format")
    parser.add_argument("pred", type=Path, help="predictions JSON written by predict.sh")
    parser.add_argument("--strict", action="store_true", help="fail on missing or extra datasets or ids")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--per-class", action="store_true", help="also print each class's accuracy, worst first")
    parser.add_argument("--data", type=Path, default=None,
                        help="the datasets dir, to name the classes (from classes.json) and show images in --html")
    parser.add_argument("--html", type=Path, default=None,
                        help="also write a self-contained HTML report here (per-class accuracy, confusions, thumbnails)")
    parser.add_argument("--run-report", type=Path, default=None,
                        help="predict.py's --report JSON, for the --html page's fast and prior tier images")
    args = parse_args(parser, argv)
    try:
        gt, pred = read_predictions(args.gt), read_predictions(args.pred)
        report = evaluate(gt, pred)
        datasets = {ds.name: ds for ds in discover(args.data)[0]} if args.data is not None else {}
        run_report = read_report(args.run_report) if args.run_report is not None else None
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(format_report(report) + "\n")
    if args.per_class:
        sys.stdout.write(format_per_class(report, {n: ds.classes for n, ds in datasets.items()}) + "\n")
    if args.json is not None:
        write_json_atomic(args.json, report_dict(report))
    if args.html is not None and not write_page(args, gt, pred, report, datasets, run_report):
        return 2
    if args.strict and not report.clean():
        logger.error("predictions and ground truth differ in datasets or ids (--strict)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
