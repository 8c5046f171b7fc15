"""The four dev-set yardsticks of ``python -m train.tune_default``, made in code from the dev set.

- ``dev``: the dev set as it is;
- ``holdout``: the dev set scored with a concept bank from which every entry
  naming a dev class (in any inflection) was removed (:func:`holdout_filter`);
- ``px32``: every dev image downscaled to 32x32 px (:func:`downscale`) and
  then preprocessed by the runtime like any image (so upscaled again);
- ``imbalanced``: a fixed-seed subset keeping between 5 and 30 images of each
  class (:func:`imbalanced_subset`).
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

YARDSTICKS = ("dev", "holdout", "px32", "imbalanced")
SMALL_SIDE = 32
IMBALANCE_RANGE = (5, 30)
IMBALANCE_SEED = 12


def holdout_filter(class_names: Iterable[str], morph) -> Callable[[str], bool]:
    """A predicate: True for an entry text that names one of ``class_names`` in any inflection.

    Every parse of every word is tried (``кружки`` is both a form of
    ``кружка`` and of ``кружок``), so the filter errs towards removing.
    """
    def keys(text: str) -> List[str]:
        options = [{p.normal_form.replace("ё", "е") for p in morph.parse(w)} | {w}
                   for w in text.lower().replace("ё", "е").split()]
        out = [""]
        for opts in options:
            out = [f"{o} {x}".strip() for o in out for x in sorted(opts)][:64]
        return out

    banned = {k for name in class_names for k in keys(name)}

    def named(text: str) -> bool:
        return any(k in banned for k in keys(text))

    return named


def downscale(img: Image.Image, side: int = SMALL_SIDE) -> Image.Image:
    """An RGB image -> its central square downscaled to ``side`` x ``side`` px (box filter, like a thumbnail)."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img.resize((side, side), Image.BOX, box=box)


def imbalanced_subset(labels: Sequence[int], low: int = IMBALANCE_RANGE[0], high: int = IMBALANCE_RANGE[1],
                      seed: int = IMBALANCE_SEED) -> np.ndarray:
    """Sorted int64 indices keeping, per class, a seeded random count in low..high of its images.

    Class sizes are drawn evenly spaced over low..high (then shuffled), so the
    subset is imbalanced by construction and not by chance.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    sizes = np.round(np.linspace(low, high, len(classes))).astype(int)
    rng.shuffle(sizes)
    keep: List[int] = []
    for cls, size in zip(classes.tolist(), sizes.tolist()):
        members = np.flatnonzero(labels == cls)
        keep.extend(rng.choice(members, size=min(size, len(members)), replace=False).tolist())
    return np.asarray(sorted(keep), dtype=np.int64)


def summary(scores: Dict[str, float]) -> str:
    """``{"dev": 90.2, ...}`` -> "dev 90.18 | holdout ..." in YARDSTICKS order."""
    return " | ".join(f"{k} {scores[k]:.2f}" for k in YARDSTICKS if k in scores)
