"""The judge's input layout: DATASETS_DIR/<dataset>/{classes.json, img/}.

Datasets are the subdirectories holding a ``classes.json``; listings are
sorted; an image id is the file name without its last extension.

File and folder names that are not valid UTF-8 (an archive unzipped from
CP866/CP1251) keep their ids: Python decodes them with ``surrogateescape``
(each bad byte becomes a lone surrogate U+DC80..U+DCFF), the image is read
through the same name, and the JSON writer spells the surrogate as a
``\\udcXX`` escape (what ``json.dumps`` writes by default), so a scorer that
lists the folder in Python gets the same key. Lone surrogates in class names
(valid JSON, but not text) become U+FFFD, with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

import numpy as np

logger = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
IMAGES_DIR = "img"


class DatasetError(ValueError):
    """A malformed dataset; the message names the path and the reason."""


@dataclass
class Dataset:
    """One dataset: its class names and its images (sorted), with their ids."""

    name: str
    root: Path
    classes: List[str]
    images: List[Path] = field(default_factory=list)
    ids: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def class_mask(self) -> np.ndarray:
        """bool (C,): classes that may be predicted (empty names and repeats masked)."""
        return class_mask(self.classes)

    def prior_class(self) -> int:
        """The class an image gets before any inference: the first one that may be predicted."""
        return int(np.argmax(self.class_mask()))


def has_surrogates(text: str) -> bool:
    """True if ``text`` holds a lone surrogate (a name that is not valid UTF-8, or a JSON "\\ud800")."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (valid pairs cannot occur in a Python str)."""
    if not has_surrogates(text):
        return text
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def image_id(path: Path) -> str:
    """The judge's id of an image: its file name without the last extension ("a.b.jpg" -> "a.b")."""
    name = path.name
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def read_classes(path: Path) -> List[str]:
    """The class names in ``classes.json``: a non-empty JSON list of strings.

    Raises DatasetError naming the file and the problem.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{path}: expected a non-empty JSON list of class names, got {type(data).__name__}"
                           + (" (empty)" if isinstance(data, list) else ""))
    bad = [i for i, v in enumerate(data) if not isinstance(v, str)]
    if bad:
        raise DatasetError(f"{path}: class names must be strings; entries {bad[:5]} are not")
    broken = [i for i, v in enumerate(data) if has_surrogates(v)]
    if broken:
        logger.warning("%s: class names %s hold lone surrogates (not text); they are replaced by U+FFFD",
                       path, broken[:5])
    return [clean_text(v) for v in data]


def class_mask(classes: List[str]) -> np.ndarray:
    """bool (C,): False for empty names and for repeats of an earlier name (the first one wins)."""
    seen = set()
    mask = np.ones(len(classes), dtype=bool)
    for i, name in enumerate(classes):
        key = " ".join(name.split()).lower()
        if not key or key in seen:
            mask[i] = False
        seen.add(key)
    if not mask.any():
        mask[0] = True
    return mask


def list_images(img_dir: Path) -> Tuple[List[Path], List[str], List[str]]:
    """Sorted image files of ``img_dir`` with their ids, and the problems found.

    Hidden files and subfolders are skipped; a second file with an id already
    taken is skipped with a problem reported.
    """
    problems: List[str] = []
    if not img_dir.is_dir():
        return [], [], [f"{img_dir}: no img/ folder; the dataset has no images"]
    try:
        entries = sorted(img_dir.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return [], [], [f"{img_dir}: cannot list the img/ folder ({exc.strerror or exc}); the dataset has no images"]
    images: List[Path] = []
    ids: List[str] = []
    taken = set()
    for path in entries:
        if path.name.startswith(".") or not path.is_file():
            continue
        key = image_id(path)
        if key in taken:
            problems.append(f"{path}: id '{key}' is already used by another file; skipped")
            continue
        taken.add(key)
        images.append(path)
        ids.append(key)
    return images, ids, problems


def discover(root: Path) -> Tuple[List[Dataset], List[str]]:
    """The datasets under ``root`` (sorted by name) and the problems found on the way.

    A subdirectory without classes.json is reported and skipped; one whose
    classes.json is malformed is reported and skipped. Raises
    FileNotFoundError if ``root`` is not a directory.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: datasets directory not found")
    try:
        subs = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise FileNotFoundError(f"{root}: cannot list the datasets directory: {exc}") from exc
    datasets: List[Dataset] = []
    problems: List[str] = []
    for sub in subs:
        if sub.name.startswith(".") or not sub.is_dir():
            continue
        classes_path = sub / CLASSES_FILE
        if not classes_path.is_file():
            problems.append(f"{sub}: no {CLASSES_FILE}; not a dataset, skipped")
            continue
        try:
            classes = read_classes(classes_path)
        except DatasetError as exc:
            problems.append(f"{exc}; dataset '{sub.name}' skipped")
            continue
        images, ids, img_problems = list_images(sub / IMAGES_DIR)
        ds = Dataset(sub.name, sub, classes, images, ids, img_problems)
        mask = ds.class_mask()
        if not mask.all():
            ds.problems.append(f"{classes_path}: empty or repeated class names at {np.flatnonzero(~mask).tolist()}; "
                               "they are never predicted (a repeat's first occurrence is used)")
        datasets.append(ds)
    return datasets, problems
