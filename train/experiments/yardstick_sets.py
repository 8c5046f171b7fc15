"""Write the px32 and imbalanced yardstick sets as datasets folders, to run the real predict.py on them.

``OUT/px32/`` holds every dataset of ``--data`` with each image downscaled
to 32x32 px (PNG); ``OUT/imbalanced/`` the fixed-seed subset with 5 to 30
images per class (symlinks); each folder has its own ``gt.json``. See
train/yardsticks.py; ``python -m train.tune_default`` computes the same
yardsticks from cached encoder outputs.

Usage: ``python -m train.experiments.yardstick_sets --out /tmp/yardsticks`` then
``python predict.py /tmp/yardsticks/px32 px32.json`` and
``python -m zeroshot.evaluate /tmp/yardsticks/px32/gt.json px32.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import Dataset, discover
from zeroshot.images import load_image
from zeroshot.limits import DEVSETS_DIR

from ..yardsticks import downscale, imbalanced_subset

logger = logging.getLogger(__name__)

# Images are decoded as for a 224-px encoder (JPEG draft mode keeps both sides >= 224), then downscaled,
# as tune_default makes its px32 set; decoding for 32 px directly (draft at 1/8) gives harsher images.
DECODE_SIDE = 224


def _copy_layout(ds: Dataset, dest: Path) -> Path:
    """dest/<name>/classes.json (copied) and an empty img/; returns the img folder."""
    folder = dest / ds.name
    (folder / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ds.root / "classes.json", folder / "classes.json")
    return folder / "img"


def write_sets(data: Path, gt: Dict[str, Dict[str, int]], out: Path) -> Dict[str, int]:
    """Write OUT/px32 and OUT/imbalanced from the datasets in ``data``; returns images per set."""
    datasets, _ = discover(data)
    counts = {"px32": 0, "imbalanced": 0}
    truth: Dict[str, Dict[str, Dict[str, int]]] = {"px32": {}, "imbalanced": {}}
    for ds in datasets:
        labels = np.array([gt[ds.name][i] for i in ds.ids])
        small_dir = _copy_layout(ds, out / "px32")
        for path, image_id in zip(ds.images, ds.ids):
            downscale(load_image(path, DECODE_SIDE)).save(small_dir / f"{image_id}.png")
        truth["px32"][ds.name] = dict(gt[ds.name])
        counts["px32"] += len(ds.ids)
        keep = imbalanced_subset(labels)
        sub_dir = _copy_layout(ds, out / "imbalanced")
        for k in keep.tolist():
            target = sub_dir / ds.images[k].name
            if not target.exists():
                target.symlink_to(ds.images[k].resolve())
        truth["imbalanced"][ds.name] = {ds.ids[k]: int(labels[k]) for k in keep.tolist()}
        counts["imbalanced"] += len(keep)
    for name, table in truth.items():
        (out / name / "gt.json").write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.yardstick_sets", __doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEVSETS_DIR, help="datasets folder (default: %(default)s)")
    parser.add_argument("--gt", type=Path, default=None, help="ground truth (default: DATA/gt.json)")
    parser.add_argument("--out", type=Path, required=True)
    args = parse_args(parser, argv)
    gt_path = args.gt or args.data / "gt.json"
    if not gt_path.is_file():
        raise FileNotFoundError(f"{gt_path}: ground truth not found (pass --gt)")
    counts = write_sets(args.data, json.loads(gt_path.read_text(encoding="utf-8")), args.out)
    logger.info("wrote %s: %s", args.out, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
