"""``predict.py DATASETS_DIR OUT_JSON``: the judge's entry point.

Exit codes: 0 once the JSON is written (problems with single images or
datasets are logged as warnings), 1 with ``--strict`` when there were such
problems (the JSON is still written), 2 when nothing could be predicted
(no model, unreadable datasets folder, OUT_JSON not writable) or when the
final answer could not be written (the file then keeps the last complete
answer that could), 143 after SIGTERM and 130 after SIGINT (Ctrl-C): the
JSON then holds the best answer so far.

OUT_JSON is complete from the first seconds: every image is first written
with its dataset's prior class, and the file is replaced after each dataset
with the real predictions (atomically where the file system allows it; see
zeroshot/outputs.py). A write that fails on the way (a full disk) is logged
and tried again after the next dataset and at the end.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

from .budget import Budget
from .command import make_parser, parse_args, positive_int
from .datasets import Dataset, discover
from .encoders import Model, make_session
from .images import MAX_DECODE_PIXELS
from .ladder import cheaper_intact, load_first, rungs, select_rung
from .limits import JUDGE_TIME_LIMIT_S, MODEL_DIR
from .manifest import load_manifest
from .outputs import Predictions, PredictionsFile
from .pipeline import Decoder, DatasetResult, run_all
from .report import RunReport, package_versions
from .resources import AFFINITY, FLAG, CpuLimit, PixelBudget, effective_cpus, return_freed_memory

logger = logging.getLogger("zeroshot")

SAFETY_MARGIN_S = 120
# Decoded pixels in flight across decoding threads: one allowed-size image at a time at most.
DECODE_PIXEL_BUDGET = MAX_DECODE_PIXELS
DECODE_MODES = ("auto", "inline", "threads")
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_NOT_WRITTEN = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds >= 0 (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


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
    parser.add_argument("--rung", default=None,
                        help="a rung of the manifest's accuracy ladder to use instead of the one chosen "
                             "for the image count and this machine's speed")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per encoder run (default: manifest)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="at most this many threads (default, and upper bound: the CPUs this process may use, "
                             "from the affinity mask and the cgroup CPU quota)")
    parser.add_argument("--decode", choices=DECODE_MODES, default="auto",
                        help="decode images in a thread pool ahead of inference, or inline in the main thread "
                             "(default auto: inline on one CPU, threads otherwise)")
    parser.add_argument("--time-budget", type=seconds_arg, default=JUDGE_TIME_LIMIT_S - SAFETY_MARGIN_S,
                        help="seconds for the whole run; past the projection, cheaper tiers are used "
                             "(default: the judge's %d s minus %d s = %%(default)s)" % (JUDGE_TIME_LIMIT_S, SAFETY_MARGIN_S))
    parser.add_argument("--report", type=Path, default=None,
                        help="write a JSON run report here (threads, CPU source, versions, budget, per dataset: "
                             "images, seconds, images per tier, problems)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any image or dataset had a problem (the JSON is still written)")
    return parser


def check(model_dir: Path, variant: Optional[str]) -> int:
    """Load the model and log the runtime's versions; 0 if it loads (without ``variant``: its default
    files, else any rung of its ladder, richest first), 2 if not."""
    limit = effective_cpus()
    try:
        candidates = [variant] if variant else [None] + list(reversed(rungs(load_manifest(model_dir))))
        model = load_first(candidates, lambda v: Model(model_dir, variant=v, threads=limit.cpus))
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    logger.info("python %s; %s", sys.version.split()[0],
                ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    logger.info("model %s (%s, %s): loads, its files match their sha256; %d CPUs (%s: %s)", model_dir,
                model.manifest.name, model.variant or "default files", limit.cpus, limit.source,
                limit.detail)
    return 0


def decode_workers(mode: str, cpus: int) -> int:
    """Decoding threads: 0 (inline in the main thread) or ``cpus``.

    auto: inline on one CPU, where a decoding pool only takes turns with the
    encoder on the same CPU (measured: a tie within noise; inline queues no
    decoded batches and stops between two images at the deadline; docs/runtime.md,
    "CPU and memory in the judge's container").
    """
    if mode == "inline" or (mode == "auto" and cpus == 1):
        return 0
    return cpus


class StopRequest(threading.Event):
    """Set by SIGTERM or SIGINT; :attr:`signum` says which (the exit code is 128 + it)."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: Optional[int] = None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """An event set by SIGTERM or SIGINT (Ctrl-C) while the block runs (the pipeline then finishes the
    current dataset on the prior tier and stops); the previous handlers are restored afterwards."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if not stop.is_set():
            logger.warning("%s: stopping; the JSON keeps the best answer so far", signal.Signals(signum).name)
            stop.signum = signum
        stop.set()

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def initial_predictions(datasets: List[Dataset]) -> Predictions:
    """Every image with its dataset's prior class: the answer before any inference (class 0 while the
    class names are not read yet), in time independent of the class count."""
    return {ds.name: dict.fromkeys(ds.ids, ds.prior_class()) for ds in datasets}


def load_classes(datasets: List[Dataset], out: PredictionsFile) -> None:
    """Read every dataset's class names, once the placeholder JSON is on disk; a dataset whose prior
    class is not 0 (its first name empty) gets its placeholder rewritten."""
    for ds in datasets:
        ds.load_classes()
        if ds.prior_class():
            out.update(ds.name, dict.fromkeys(ds.ids, ds.prior_class()))


def make_model(args: argparse.Namespace, limit: CpuLimit, paths: List[Path], budget_s: float) -> Model:
    """The model with onnxruntime sized to ``limit`` (no spinning under a cgroup quota or on one CPU).

    Without ``--variant``, the accuracy ladder (zeroshot.ladder) picks the
    variant for the images ``paths`` and ``budget_s`` seconds among the intact
    rungs; one that does not load falls back to the next cheaper intact rung.
    """
    spinning = limit.cpus > 1 and limit.source in (AFFINITY, FLAG)
    candidates: List[Optional[str]] = [args.variant]
    if args.variant is None:
        manifest = load_manifest(args.model)
        variant = select_rung(args.model, manifest, args.rung, paths, budget_s, limit.cpus,
                              lambda path, threads: make_session(path, threads, spinning))
        candidates = [variant] + ([] if args.rung else cheaper_intact(args.model, manifest, variant))
    return load_first(candidates, lambda v: Model(args.model, threads=limit.cpus, variant=v, spinning=spinning))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not args.check and (args.datasets_dir is None or args.out_json is None):
        parser.error("DATASETS_DIR and OUT_JSON are required (or --check)")
    if args.variant is not None and args.rung is not None:
        parser.error("--variant and --rung both choose the image encoder's files: give one (--rung NAME picks a rung "
                     "of the ladder, --variant NAME any variant the manifest lists)")
    if args.check:
        return check(args.model, args.variant)
    started = time.monotonic()
    if not return_freed_memory():
        logger.info("no glibc mallopt here: freed image memory may stay with its decoding thread")
    with stop_on_signals() as stop:
        try:
            datasets, problems = discover(args.datasets_dir, classes=False)
            out = PredictionsFile(args.out_json)
            out.start(initial_predictions(datasets))
        except (OSError, ValueError) as exc:
            logger.error("%s", exc)
            return 2
        report = RunReport(args.report)
        report.start()
        return predict_all(args, datasets, problems, out, report, stop, started)


def predict_all(args: argparse.Namespace, datasets: List[Dataset], problems: List[str], out: PredictionsFile,
                report: RunReport, stop: StopRequest, started: float) -> int:
    """Load the model, predict every dataset into ``out`` and the report; the exit code."""
    load_classes(datasets, out)
    for problem in problems:
        logger.warning("%s", problem)
    limit = effective_cpus(args.threads)
    try:
        model = make_model(args, limit, [p for ds in datasets for p in ds.images],
                           args.time_budget - (time.monotonic() - started))
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    total = sum(len(ds.images) for ds in datasets)
    per_class = len(model.text_cfg.templates) + (1 if model.bank is not None else 0)  # + the bank's name
    prompts = sum(len(ds.classes) for ds in datasets if ds.images) * per_class
    cfg = model.image_cfg
    fast_ratio = (cfg.fast_size / cfg.size) ** 2 if cfg.fast_size else None
    budget = Budget(args.time_budget - (time.monotonic() - started), total, fast_ratio,
                    total_prompts=prompts, total_datasets=len(datasets))
    workers = decode_workers(args.decode, limit.cpus)
    decode = "inline" if workers == 0 else f"{workers} threads"
    report.describe({"threads": limit.cpus, "cpu_source": limit.source, "cpu_detail": limit.detail,
                     "decode": decode, "model": {"name": model.manifest.name,
                                                 "dir": str(args.model), "variant": model.variant}})
    logger.info("%d datasets, %d images, model %s, %d threads (%s: %s), decoding %s, budget %.0f s",
                len(datasets), total, args.model, limit.cpus, limit.source, limit.detail, decode, args.time_budget)

    def on_result(res: DatasetResult) -> None:
        out.update(res.name, res.predictions)
        report.add_dataset(res)
        report.write()

    report.write()
    results = run_all(datasets, model, budget, args.batch_size or model.batch_size,
                      Decoder(workers, PixelBudget(DECODE_PIXEL_BUDGET)), on_result, stop)
    elapsed = time.monotonic() - started
    all_problems = problems + [p for r in results for p in r.problems]
    written = out.finish()
    report.finish("stopped" if stop.is_set() else "done", elapsed, budget.describe(), problems)
    report.write(final=True)
    if written:
        logger.info("wrote %s: %d datasets, %d images in %.1f s (%.1f images/s)", args.out_json, len(results),
                    total, elapsed, total / max(elapsed, 1e-9))
    if all_problems:
        logger.warning("%d problems (see warnings above)", len(all_problems))
    if not written:
        return EXIT_NOT_WRITTEN
    if stop.is_set():
        return 128 + (stop.signum or signal.SIGTERM)
    return 1 if (args.strict and all_problems) else 0


if __name__ == "__main__":
    sys.exit(main())
