"""Robustness probe: classes that are not one cluster (like scenes or kinds of clothing).

Some dev classes are merged under an everyday superclass name (транспорт:
вертолёт + мотоцикл + самолёт; животное: слон + краб + крокодил + бабочка;
инструмент: гаечный ключ + ножницы), so three classes are unions of two to
four visual clusters; the other classes stay. A few settings of
``python -m train.tune_default`` (:func:`settings`: the shipped one, the
default before label propagation, the ensemble rung and refinement scale
30, and the shipped one without propagation, with alpha 0.8 and without
transductive steps) are scored on
the dev and px32 images with these labels, on the whole set and as the mean
over ten imbalanced resamples, through the runtime's scoring, from
tune_default's cache.

Usage: ``python -m train.experiments.merged_classes [--data DEVSETS] [--cache DIR]``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import discover
from zeroshot.limits import DEVSETS_DIR
from zeroshot.text import normalize_name

from ..build_default import NORMALIZE, PROPAGATE, TRANSDUCTIVE
from ..tune_default import DEFAULT_CACHE, ImageCache, TextSide, _setting, ensemble, rung_members, score_dataset
from ..yardsticks import imbalanced_subset

logger = logging.getLogger(__name__)

MERGES = {"транспорт": ["вертолет", "мотоцикл", "самолет"], "животное": ["слон", "краб", "крокодил", "бабочка"],
          "инструмент": ["гаечный ключ", "ножницы"]}
SEEDS = 10


def merged_classes(classes: Sequence[str], norm) -> Tuple[List[str], np.ndarray]:
    """(new class names, old class index -> new class index) with MERGES applied; a missing member is skipped."""
    names = [norm(c) for c in classes]
    new, mapping = [], np.full(len(classes), -1, dtype=np.int64)
    for superclass, members in MERGES.items():
        found = [names.index(m) for m in members if m in names]
        if found:
            new.append(superclass)
            mapping[found] = len(new) - 1
    for i, name in enumerate(classes):
        if mapping[i] < 0:
            new.append(name)
            mapping[i] = len(new) - 1
    return new, mapping


def settings() -> List[Tuple[str, Dict[str, Any]]]:
    """(label, tune_default changes) of the settings compared."""
    before = {"members": rung_members("fp32-260"),
              "transductive": {**TRANSDUCTIVE, "scale": 20.0, "propagate": None}}
    return [("default", {}), ("before the second wave (fp32-260, scale 20, no propagation)", before),
            ("default without label propagation", {"transductive": {**TRANSDUCTIVE, "propagate": None}}),
            ("default with alpha 0.8", {"transductive": {**TRANSDUCTIVE, "propagate": {**PROPAGATE, "alpha": 0.8}}}),
            ("default without transductive steps", {"transductive": None})]


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.merged_classes", __doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEVSETS_DIR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parse_args(parser, argv)
    gt = json.loads((args.data / "gt.json").read_text(encoding="utf-8"))
    datasets, _ = discover(args.data)
    norm = lambda t: normalize_name(t, NORMALIZE)  # noqa: E731
    cache, text = ImageCache(args.cache), TextSide(args.cache, norm, [])
    sys.stdout.write("| setting | dev | dev x10 | px32 | px32 x10 |\n|---|---|---|---|---|\n")
    for label, changes in settings():
        s = _setting(**changes)
        cells: Dict[str, List[float]] = {}
        for ds in datasets:
            classes, mapping = merged_classes(ds.classes, norm)
            truth = mapping[np.array([gt[ds.name][i] for i in ds.ids])]
            mask = np.ones(len(classes), bool)
            w = text.weights(s, classes, holdout=False)
            for image_set in ("dev", "px32"):
                probs, feats = ensemble(cache, ds, image_set, s["members"], s["features"])
                cells.setdefault(image_set, []).append(score_dataset(s, w, probs, feats, truth, mask))
                cells.setdefault(f"{image_set} x{SEEDS}", []).append(float(np.mean(
                    [score_dataset(s, w, probs[k], feats[k], truth[k], mask)
                     for k in (imbalanced_subset(truth, seed=seed) for seed in range(SEEDS))])))
        row = [f"{np.mean(cells[k]):.2f}" for k in ("dev", f"dev x{SEEDS}", "px32", f"px32 x{SEEDS}")]
        sys.stdout.write(f"| {label} | " + " | ".join(row) + " |\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
