"""Images/s of predict.sh inside a 1-CPU cgroup quota (``docker run --cpus=1``), settings interleaved.

Usage: ``python -m contest.quota_bench DATASETS_DIR --case NAME=TREE[:ARGS] ... [--rounds 3]``.

Each case is a checkout (TREE, holding predict.sh, a model/ and a set-up .deps/)
and extra predict.sh arguments (e.g. ``before=/tmp/main:--threads 16``). Every
round runs every case once, each in a fresh cgroup with a quota of one CPU and
no affinity pin, so all of the host's CPUs stay in the mask, as under Docker.
Rates come from predict.py's own "wrote ..." log line (images over the run's
wall time). Needs root and cgroup v1 or v2 (contest/cgroups.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional, Tuple

from zeroshot.command import make_parser, parse_args

from .cgroups import create_cpu_quota_cgroup, remove_cgroup

logger = logging.getLogger(__name__)

WROTE = re.compile(r"wrote .*?: \d+ datasets, (\d+) images in ([\d.]+) s")


def parse_case(text: str) -> Tuple[str, Path, List[str]]:
    """``NAME=TREE[:ARGS]`` -> (name, tree, args); ValueError if malformed."""
    name, eq, rest = text.partition("=")
    if not eq or not name:
        raise ValueError(f"--case {text!r}: expected NAME=TREE[:ARGS]")
    tree, _, args = rest.partition(":")
    return name, Path(tree), args.split()


def run_in_quota(tree: Path, datasets: Path, args: List[str], python: str) -> Tuple[int, float]:
    """(images, seconds) of one predict.sh run inside a fresh 1-CPU quota cgroup.

    The seconds are the wall time of the whole predict.sh process (start-up and
    model load included), measured here: never zero, unlike the runtime's own
    rounded log line on a handful of images.
    """
    group = create_cpu_quota_cgroup(f"zeroshot-bench-{os.getpid()}", 1.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = group.prefix() + [str(tree / "predict.sh"), str(datasets), str(Path(tmp) / "out.json"), *args]
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHON=python))
            seconds = time.perf_counter() - started
    finally:
        remove_cgroup(group)
    match = WROTE.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        raise ValueError(f"{tree}/predict.sh {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return int(match.group(1)), seconds


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m contest.quota_bench", __doc__.split("\n")[0])
    parser.add_argument("datasets_dir", type=Path, help="datasets folder as the judge lays it out")
    parser.add_argument("--case", action="append", required=True, help="NAME=TREE[:ARGS] (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every case, interleaved (default: 3)")
    parser.add_argument("--python", default=sys.executable, help="the Python predict.sh runs (default: this one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    try:
        cases = [parse_case(c) for c in args.case]
        rates: Dict[str, List[float]] = {name: [] for name, _, _ in cases}
        for round_ in range(args.rounds):
            for name, tree, extra in cases:
                images, seconds = run_in_quota(tree, args.datasets_dir, extra, args.python)
                rates[name].append(images / seconds)
                logger.info("round %d %s: %d images in %.1f s = %.1f images/s", round_ + 1, name, images, seconds,
                            images / seconds)
    except (OSError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    lines = [f"{name:<20} median {median(r):6.1f} images/s  (runs: {', '.join(f'{x:.1f}' for x in r)})"
             for name, r in rates.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out is not None:
        args.out.write_text(json.dumps(rates, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
