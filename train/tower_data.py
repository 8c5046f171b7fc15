"""The text tower's inputs (train.text_tower): training pairs from any input format, the held-out split by image,
and a labelled datasets folder for zero-shot evaluation, all with cached image vectors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from zeroshot.datasets import discover

from .distributed import SINGLE, Dist
from .image_cache import ImageTower, embed_cached
from .pairs import Pairs, read_class_folders, read_metadata, read_pairs_jsonl
from .tower_run import EvalSet

logger = logging.getLogger(__name__)

MAX_VAL_IMAGES = 2000


def read_input(args: Any, templates: Sequence[str], steps: Sequence[str]) -> Pairs:
    """Pairs from whichever input the arguments name; logs the input report."""
    if args.metadata is not None:
        if args.images is None:
            raise ValueError("--metadata needs --images DIR (the folder holding ID.jpg files)")
        pairs, report = read_metadata(args.metadata, args.images, steps)
    elif args.pairs is not None:
        pairs, report = read_pairs_jsonl(args.pairs, args.images, steps)
    else:
        pairs, report = read_class_folders(args.class_folders, templates, steps)
    report.log()
    if not len(pairs):
        raise ValueError(f"{report.source}: no usable (image, text) pairs: {report.summary()}")
    return pairs


def split_pairs(pairs: Pairs, rows: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, held-out) pair indices: a seeded ``fraction`` of the decodable images (at most MAX_VAL_IMAGES)
    and all their texts are held out; pairs whose image could not be decoded are dropped."""
    image_of = np.asarray(pairs.image_of, dtype=np.int64)
    good = np.flatnonzero(rows[image_of] >= 0)
    images = np.unique(image_of[good])
    n_val = min(int(round(fraction * len(images))), MAX_VAL_IMAGES)
    if len(images) - n_val < 2:
        n_val = 0
    held = set(np.random.default_rng(seed).permutation(images)[:n_val].tolist())
    is_val = np.array([image_of[i] in held for i in good], dtype=bool)
    return good[~is_val], good[is_val]


def load_eval_set(folder: Path, gt_path: Optional[Path], image_tower: ImageTower, cache: Path,
                  dist: Dist = SINGLE) -> EvalSet:
    """The datasets of ``folder`` with labels from ``gt_path`` (default folder/gt.json), images cached
    (each of ``dist``'s processes embeds its share)."""
    gt_path = gt_path or folder / "gt.json"
    if not gt_path.is_file():
        raise FileNotFoundError(f"{gt_path}: no ground truth for --eval {folder} (expected gt.json, "
                                "{dataset: {image id: class index}})")
    gt = json.loads(gt_path.read_text(encoding="utf-8"))
    datasets, problems = discover(folder)
    for problem in problems:
        logger.warning("%s", problem)
    out = EvalSet([], [], [], [], [])
    for ds in datasets:
        labels = gt.get(ds.name, {})
        keep = [i for i, image in enumerate(ds.ids) if image in labels]
        if not keep:
            logger.warning("%s: no image of dataset '%s' is in %s; not evaluated", folder, ds.name, gt_path)
            continue
        vectors, rows = embed_cached(image_tower, [ds.images[i] for i in keep], cache, dist=dist)
        dim = vectors.shape[1]
        out.names.append(ds.name)
        out.classes.append(ds.classes)
        out.vectors.append(np.stack([vectors[r] if r >= 0 else np.zeros(dim, np.float32) for r in rows]))
        out.valid.append(rows >= 0)
        out.truth.append(np.asarray([labels[ds.ids[i]] for i in keep], dtype=np.int64))
    return out
