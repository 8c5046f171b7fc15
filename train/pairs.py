"""Training pairs (image file, Russian text) from the three input formats of ``python -m train.text_tower``.

- the contest's ``metadata.json``: JSON lines ``{"image": ID, "queries": ["...", ...]}`` plus an
  images folder holding ``ID.jpg`` (any image extension; the id is the file name without its
  last extension, as the runtime names images). The URLs of ``images.json`` are never fetched.
- ``pairs.jsonl``: JSON lines ``{"image": "path", "text": "..."}``; a relative path is taken
  from the images folder (default: the file's own folder).
- a class-folder tree: ``ROOT/<Russian class name>/*.jpg``; each image gets one query per
  prompt template, filled with its folder's name.

Bad lines (not JSON, not an object, missing or mistyped fields), missing images and empty
queries are counted, reported with their line numbers, and skipped; none of them stops a run.
Texts pass through the runtime's class-name normalisation (:func:`zeroshot.text.normalize_name`).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from zeroshot.datasets import image_id
from zeroshot.images import IMAGE_EXTENSIONS
from zeroshot.text import build_prompts, normalize_name

logger = logging.getLogger(__name__)

#: Problem kinds, in the order they are reported.
KINDS = ("bad_line", "missing_image", "empty_query")
MAX_LISTED = 20


@dataclass
class InputReport:
    """What was read from one input and what was skipped: counts per kind and the line numbers."""

    source: Path
    lines: int = 0
    pairs: int = 0
    counts: Dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    where: Dict[str, List[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    examples: List[str] = field(default_factory=list)

    def add(self, kind: str, line: int, message: str) -> None:
        """Count one problem of ``kind`` at 1-based ``line`` (0: no line, e.g. a folder)."""
        self.counts[kind] += 1
        self.where[kind].append(line)
        if len(self.examples) < MAX_LISTED:
            self.examples.append(f"{self.source}:{line}: {message}" if line else f"{self.source}: {message}")

    def summary(self) -> str:
        """One line: lines read, pairs kept, and each problem kind with its count and first line numbers."""
        parts = [f"{self.source}: {self.lines} lines, {self.pairs} pairs kept"]
        for kind in KINDS:
            if self.counts[kind]:
                lines = [n for n in self.where[kind] if n][:MAX_LISTED]
                more = "..." if self.counts[kind] > len(lines) and lines else ""
                at = f" (lines {', '.join(map(str, lines))}{more})" if lines else ""
                parts.append(f"{self.counts[kind]} {kind.replace('_', ' ')}{at}")
        return "; ".join(parts)

    def log(self) -> None:
        """Log the summary (a warning when anything was skipped) and the first problems in full."""
        skipped = sum(self.counts.values())
        logger.log(logging.WARNING if skipped else logging.INFO, "%s", self.summary())
        for line in self.examples:
            logger.debug("%s", line)


@dataclass
class Pairs:
    """Texts and the images they describe.

    images: unique image files, in first-seen order; texts: P normalised texts;
    image_of: P indices into ``images``.
    """

    images: List[Path]
    texts: List[str]
    image_of: List[int]

    def __len__(self) -> int:
        return len(self.texts)


class _Builder:
    """Collects (image, text) pairs, de-duplicating images and repeated (image, text) pairs."""

    def __init__(self, steps: Sequence[str]) -> None:
        self.steps = list(steps)
        self.index: "OrderedDict[Path, int]" = OrderedDict()
        self.seen: set = set()
        self.texts: List[str] = []
        self.image_of: List[int] = []

    def add(self, image: Path, text: str) -> bool:
        """Add one pair; False if the normalised text is empty (the caller reports it)."""
        norm = normalize_name(text, self.steps)
        if not norm:
            return False
        row = self.index.setdefault(image, len(self.index))
        if (row, norm) not in self.seen:
            self.seen.add((row, norm))
            self.texts.append(norm)
            self.image_of.append(row)
        return True

    def pairs(self) -> Pairs:
        return Pairs(list(self.index), self.texts, self.image_of)


def _images_by_id(folder: Path) -> Dict[str, Path]:
    """Image id (file name without its last extension) -> path, for the image files of ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: images folder not found (expected ID.jpg files)")
    out: Dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
            out.setdefault(image_id(path), path)
    return out


def _json_lines(path: Path, report: InputReport):
    """Yield (line number, object) for each non-blank line that parses as a JSON object."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected JSON lines)")
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            report.lines += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                report.add("bad_line", number, f"not JSON: {exc.msg}")
                continue
            if not isinstance(obj, dict):
                report.add("bad_line", number, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield number, obj


def read_metadata(path: Path, images_dir: Path, steps: Sequence[str]) -> Tuple[Pairs, InputReport]:
    """The contest format: ``{"image": ID, "queries": [str, ...]}`` per line, images as ``images_dir/ID.*``."""
    report = InputReport(Path(path))
    by_id = _images_by_id(Path(images_dir))
    builder = _Builder(steps)
    for number, obj in _json_lines(Path(path), report):
        key, queries = obj.get("image"), obj.get("queries")
        if isinstance(key, bool) or not isinstance(key, (str, int)) or not isinstance(queries, list):
            report.add("bad_line", number, 'expected {"image": ID, "queries": [...]}')
            continue
        image = by_id.get(str(key))
        if image is None:
            report.add("missing_image", number, f"no image '{key}.*' in {images_dir}")
            continue
        kept = [q for q in queries if isinstance(q, str) and builder.add(image, q)]
        if not kept:
            report.add("empty_query", number, f"image '{key}' has no non-empty text query")
    pairs = builder.pairs()
    report.pairs = len(pairs)
    return pairs, report


def read_pairs_jsonl(path: Path, images_dir: Optional[Path], steps: Sequence[str]) -> Tuple[Pairs, InputReport]:
    """``{"image": "path", "text": "..."}`` per line; relative paths from ``images_dir`` (default: the file's folder)."""
    path = Path(path)
    base = Path(images_dir) if images_dir is not None else path.parent
    report = InputReport(path)
    builder = _Builder(steps)
    for number, obj in _json_lines(path, report):
        rel, text = obj.get("image"), obj.get("text")
        if not isinstance(rel, str) or not rel or not isinstance(text, str):
            report.add("bad_line", number, 'expected {"image": "path", "text": "..."}')
            continue
        image = base / rel
        if not image.is_file():
            report.add("missing_image", number, f"{image}: no such file")
            continue
        if not builder.add(image, text):
            report.add("empty_query", number, "empty text")
    pairs = builder.pairs()
    report.pairs = len(pairs)
    return pairs, report


def read_class_folders(root: Path, templates: Sequence[str], steps: Sequence[str]) -> Tuple[Pairs, InputReport]:
    """``root/<class name>/*.jpg``: each image paired with every template filled with its class name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: class-folder tree not found (expected ROOT/<class name>/*.jpg)")
    report = InputReport(root)
    builder = _Builder(steps)
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.name):
        report.lines += 1
        prompts = build_prompts([folder.name], templates, steps)
        if not normalize_name(folder.name, steps):
            report.add("empty_query", 0, f"{folder}: folder name is empty after normalisation")
            continue
        files = [p for p in sorted(folder.iterdir(), key=lambda p: p.name)
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            report.add("missing_image", 0, f"{folder}: no image files")
        for image in files:
            for prompt in prompts:
                builder.add(image, prompt)
    pairs = builder.pairs()
    report.pairs = len(pairs)
    return pairs, report
