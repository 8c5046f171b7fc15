"""``predict.py DATASETS_DIR OUT_JSON``: the judge's entry point.

Exit codes: 0 once the JSON is written (problems with single images or
datasets are logged as warnings), 1 with ``--strict`` when there were such
problems (the JSON is still written), 2 when nothing could be predicted
(no model, unreadable datasets folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

from .budget import Budget
from .command import make_parser, parse_args
from .datasets import discover
from .encoders import Model, available_cpus
from .limits import JUDGE_TIME_LIMIT_S, MODEL_DIR
from .outputs import write_json_atomic
from .pipeline import run_all

logger = logging.getLogger("zeroshot")

SAFETY_MARGIN_S = 120


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("predict.py", "Zero-shot image classification with "
                                     "class names from each dataset's classes.json; writes the judge's JSON.")
    parser.add_argument("datasets_dir", type=Path, nargs="?",
                        help="folder of datasets: <name>/classes.json and <name>/img/")
    parser.add_argument("out_json", type=Path, nargs="?", help="where to write {dataset: {image id: class index}}")
    parser.add_argument("--check", action="store_true",
                        help="only load the model (imports, sha256, ONNX sessions), log what runs, and exit")
    parser.add_argument("--model", type=Path, default=MODEL_DIR,
                        help="model folder with manifest.json (default: %(default)s)")
    parser.add_argument("--variant", default=None,
                        help="a variant listed in the manifest (e.g. int8) whose files replace the defaults")
    parser.add_argument("--batch-size", type=int, default=None, help="images per encoder run (default: manifest)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for decoding and inference (default: CPUs this process may use)")
    parser.add_argument("--time-budget", type=float, default=JUDGE_TIME_LIMIT_S - SAFETY_MARGIN_S,
                        help="seconds for the whole run; past the projection, cheaper paths are used "
                             "(default: the judge's %d s minus %d s = %%(default)s)" % (JUDGE_TIME_LIMIT_S, SAFETY_MARGIN_S))
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any image or dataset had a problem (the JSON is still written)")
    return parser


def check(model_dir: Path, variant: Optional[str]) -> int:
    """Load the model and log the runtime's versions; 0 if everything loads, 2 if not."""
    import numpy
    import onnxruntime
    import PIL
    import sentencepiece

    try:
        model = Model(model_dir, variant=variant)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    logger.info("python %s; numpy %s, onnxruntime %s, Pillow %s, sentencepiece %s", sys.version.split()[0],
                numpy.__version__, onnxruntime.__version__, PIL.__version__, sentencepiece.__version__)
    logger.info("model %s (%s): loads, all files match their sha256; %d CPUs available",
                model_dir, model.manifest.get("name", "unnamed"), available_cpus())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not args.check and (args.datasets_dir is None or args.out_json is None):
        parser.error("DATASETS_DIR and OUT_JSON are required (or --check)")
    if args.check:
        return check(args.model, args.variant)
    started = time.monotonic()
    if args.batch_size is not None and args.batch_size < 1:
        logger.error("--batch-size must be >= 1")
        return 2
    try:
        datasets, problems = discover(args.datasets_dir)
        model = Model(args.model, threads=args.threads, variant=args.variant)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    for problem in problems:
        logger.warning("%s", problem)
    total = sum(len(ds.images) for ds in datasets)
    cfg = model.image_cfg
    fast_ratio = (cfg["fast_size"] / cfg["size"]) ** 2 if cfg.get("fast_size") else None
    budget = Budget(args.time_budget - (time.monotonic() - started), total, fast_ratio)
    workers = args.threads or available_cpus()
    logger.info("%d datasets, %d images, model %s, %d threads, budget %.0f s", len(datasets), total,
                args.model, workers, args.time_budget)
    results = run_all(datasets, model, budget, args.batch_size or model.batch_size, workers)
    write_json_atomic(args.out_json, {r.name: r.predictions for r in results})
    elapsed = time.monotonic() - started
    logger.info("wrote %s: %d datasets, %d images in %.1f s (%.1f images/s)", args.out_json, len(results),
                total, elapsed, total / max(elapsed, 1e-9))
    n_problems = len(problems) + sum(len(r.problems) for r in results)
    if n_problems:
        logger.warning("%d problems (see warnings above)", n_problems)
    return 1 if (args.strict and n_problems) else 0


if __name__ == "__main__":
    sys.exit(main())
