"""The dev set (``zeroshot.limits.DEVSETS_DIR``) as labelled images, for the retrieval, verification and head measurements.

The dev set is in the judge's layout (``<dataset>/classes.json``, ``img/``) with
labels in ``gt.json``; these helpers list its images with their class index and
lay it out as class folders (symlinks) for the commands that take labelled folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

from zeroshot.datasets import discover
from zeroshot.limits import DEVSETS_DIR


def labelled(data: Path = DEVSETS_DIR, dataset: str = "caltech101") -> Tuple[List[str], List[Path], List[int]]:
    """(class names, image paths sorted by id, class index per image) of one dataset with a gt.json."""
    gt = json.loads((data / "gt.json").read_text(encoding="utf-8"))
    found = {ds.name: ds for ds in discover(data)[0]}
    if dataset not in found or dataset not in gt:
        raise ValueError(f"{data}: no dataset {dataset!r} with labels in gt.json")
    ds = found[dataset]
    pairs = [(path, gt[dataset][i]) for path, i in zip(ds.images, ds.ids) if i in gt[dataset]]
    return ds.classes, [p for p, _ in pairs], [int(label) for _, label in pairs]


def class_folders(out: Path, classes: List[str], paths: List[Path], labels: List[int]) -> Path:
    """Lay ``paths`` out as ``out/<class name>/<file>`` symlinks; returns ``out``."""
    for path, label in zip(paths, labels):
        folder = out / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return out
