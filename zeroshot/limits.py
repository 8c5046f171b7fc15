"""The judge's limits and the repository's paths, stated once.

Standard library only, so the runtime (``zeroshot/``), ``train/``, ``contest/``,
the tests and the Makefile (``python3 -m zeroshot.limits NAME``) all read the
same numbers. Inside the submission archive the "repository" is the archive's
root, where ``model/`` sits beside ``predict.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

JUDGE_TIME_LIMIT_S = 23 * 60      # setup.sh + predict.sh, wall seconds
JUDGE_IMAGES = 2200               # images of the hidden test set (the projections' target)
JUDGE_MEMORY_GB = 8.0             # the container's memory, GB = 10^9 bytes
ARCHIVE_CAP_MB = 700.0            # the submission archive, MB = 10^6 bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / "model"                              # the default model folder
DEVSETS_DIR = REPO_ROOT.parent / "shared" / "devsets"        # the labelled dev set, beside the repository
DEV_GT = DEVSETS_DIR / "gt.json"
CALIBRATION_DIR = DEVSETS_DIR / "caltech101" / "img"         # natural photos for export checks and int8
SUITE_DIR = REPO_ROOT / "data" / "suite"                     # the tuning suite: <set>/{source.json, ...; built: img/, gt.json}
SNAPSHOTS_DIR = REPO_ROOT.parent / ".mirror"                 # snapshots of public repositories (owner+name/...)

NAMES = ("JUDGE_TIME_LIMIT_S", "JUDGE_IMAGES", "JUDGE_MEMORY_GB", "ARCHIVE_CAP_MB", "REPO_ROOT", "MODEL_DIR",
         "DEVSETS_DIR", "DEV_GT", "CALIBRATION_DIR", "SUITE_DIR", "SNAPSHOTS_DIR")


def main(argv: Optional[List[str]] = None) -> int:
    from .command import make_parser, parse_args

    parser = make_parser("python -m zeroshot.limits", __doc__.split("\n")[0])
    parser.add_argument("name", choices=NAMES, help="the value to print to stdout")
    args = parse_args(parser, argv)
    sys.stdout.write(f"{globals()[args.name]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
