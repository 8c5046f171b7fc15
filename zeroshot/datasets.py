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
from typing import Any, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
IMAGES_DIR = "img"
# 500,000 names of 150 bytes are 76 MB; the bytes, their text and the parsed list hold about 7x the size
MAX_CLASSES_BYTES = 200_000_000
# byte order marks, longest first (UTF-32-LE's starts with UTF-16-LE's)
BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xef\xbb\xbf", "utf-8"),
        (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


class DatasetError(ValueError):
    """A malformed dataset; the message names the path and the reason."""


@dataclass
class Dataset:
    """One dataset: its class names and its images (sorted), with their ids.

    ``classes`` is empty until :meth:`load_classes` has read them, and stays
    empty when they cannot be read (every image then gets class 0).
    """

    name: str
    root: Path
    classes: List[str] = field(default_factory=list)
    images: List[Path] = field(default_factory=list)
    ids: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def class_mask(self) -> np.ndarray:
        """bool (C,): classes that may be predicted (empty names and repeats masked)."""
        return class_mask(self.classes)

    def prior_class(self) -> int:
        """The class an image gets before any inference: the first one that may be predicted (0 without classes)."""
        mask = self.class_mask()
        return int(np.argmax(mask)) if mask.size else 0

    def load_classes(self) -> None:
        """Read ``classes.json`` into ``classes``; a file that cannot be read leaves them empty, with a problem."""
        path = self.root / CLASSES_FILE
        try:
            self.classes = read_classes(path)
        except DatasetError as exc:
            self.classes = []
            self.problems.append(f"{exc}; all {len(self.ids)} images of dataset '{self.name}' get class 0")
            return
        mask = self.class_mask()
        if not mask.all():
            self.problems.append(f"{path}: empty or repeated class names at {np.flatnonzero(~mask).tolist()[:20]}; "
                                 "they are never predicted (a repeat's first occurrence is used)")


def has_surrogates(text: str) -> bool:
    """True if ``text`` holds a lone surrogate (a name that is not valid UTF-8, or a JSON "\\ud800")."""
    try:
        text.encode("utf-8")  # at C speed: a 76 MB classes.json is checked in a fraction of a second
    except UnicodeEncodeError:
        return True
    return False


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


def _zero_pattern_codec(head: bytes) -> Optional[str]:
    """The UTF-16/32 codec a JSON text without a byte order mark is in, from where its first four
    bytes are zero (RFC 4627: the first two characters are ASCII), or None."""
    if len(head) < 4:
        return None
    zeros = tuple(b == 0 for b in head[:4])
    return {(True, True, True, False): "utf-32-be", (False, True, True, True): "utf-32-le",
            (True, False, True, False): "utf-16-be", (False, True, False, True): "utf-16-le"}.get(zeros)


def decode_classes(raw: bytes, path: Path) -> str:
    """The text of the classes.json at ``path`` from its bytes; says how it was read when not UTF-8.

    A byte order mark names the encoding (UTF-8, UTF-16, UTF-32); without one,
    UTF-16/32 is recognised by its zero bytes, and bytes that are not UTF-8 are
    read as cp1251 (what a Russian Windows writes), with a warning.
    """
    for bom, codec in BOMS:
        if raw.startswith(bom):
            if codec != "utf-8":
                logger.info("%s: read as %s (byte order mark)", path, codec)
            return raw[len(bom):].decode(codec, errors="replace")
    codec = _zero_pattern_codec(raw)
    if codec is not None:
        logger.warning("%s: not UTF-8; read as %s (zero bytes, no byte order mark)", path, codec)
        return raw.decode(codec, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        logger.warning("%s: not UTF-8 (%s); read as cp1251", path, exc)
    return raw.decode("cp1251", errors="replace")


def name_text(value: Any) -> str:
    """A class name as text: strings as they are, a list of strings joined with ", " (synonyms),
    anything else (numbers, NaN, null, true, nested lists) as its JSON text ("" if nested too deeply)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (RecursionError, ValueError):
        return ""


def read_classes(path: Path) -> List[str]:
    """The class names in ``classes.json``: a non-empty JSON list, each entry a name.

    Encodings other than UTF-8 are read (:func:`decode_classes`), entries that
    are not strings become their text form (:func:`name_text`), each with a
    warning. Raises DatasetError naming the file when there is no list of
    names to read (unreadable, over MAX_CLASSES_BYTES, not JSON, nested too
    deeply, not a non-empty list).
    """
    try:
        size = path.stat().st_size
        if size > MAX_CLASSES_BYTES:
            raise DatasetError(f"{path}: {size} bytes, more than the {MAX_CLASSES_BYTES} a classes.json may have "
                               "(reading it would hold about 7 times that in memory)")
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    text = decode_classes(raw, path)
    try:
        data = json.loads(text)
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{path}: expected a non-empty JSON list of class names, got {type(data).__name__}"
                           + (" (empty)" if isinstance(data, list) else ""))
    bad = [i for i, v in enumerate(data) if not isinstance(v, str)]
    if bad:
        logger.warning("%s: class names %s are not strings (%s); their text form is used", path, bad[:5],
                       ", ".join(sorted({type(data[i]).__name__ for i in bad})))
        data = [name_text(v) for v in data]
    broken = [i for i, v in enumerate(data) if has_surrogates(v)]
    if broken:
        logger.warning("%s: class names %s hold lone surrogates (not text); they are replaced by U+FFFD",
                       path, broken[:5])
    return [clean_text(v) for v in data]


def class_mask(classes: List[str]) -> np.ndarray:
    """bool (C,): False for empty names and for repeats of an earlier name (the first one wins).

    At least one class stays allowed when there is any.
    """
    seen = set()
    mask = np.ones(len(classes), dtype=bool)
    for i, name in enumerate(classes):
        key = " ".join(name.split()).lower()
        if not key or key in seen:
            mask[i] = False
        seen.add(key)
    if len(mask) and not mask.any():
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


def discover(root: Path, classes: bool = True) -> Tuple[List[Dataset], List[str]]:
    """The datasets under ``root`` (sorted by name) and the problems found on the way.

    A dataset is a subdirectory holding a ``classes.json`` (readable or not);
    one without is reported and skipped. With ``classes`` false the class names are not read
    yet (:meth:`Dataset.load_classes`), so listing costs nothing per class.
    Raises FileNotFoundError if ``root`` is not a directory.
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
        if not (classes_path.exists() or classes_path.is_symlink()):
            problems.append(f"{sub}: no {CLASSES_FILE}; not a dataset, skipped")
            continue
        images, ids, img_problems = list_images(sub / IMAGES_DIR)
        ds = Dataset(sub.name, sub, [], images, ids, img_problems)
        if classes:
            ds.load_classes()
        datasets.append(ds)
    return datasets, problems
