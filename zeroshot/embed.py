"""Images and texts to vectors for the jobs beside classification (retrieval, verification, heads).

Everything goes through the runtime's own path: :func:`zeroshot.images.decode_one`
(load + preprocess, configured by the manifest), :meth:`Model.encode_images` and
:meth:`Model.class_vectors` (the manifest's normalisation and templates), and
:func:`zeroshot.scoring.class_logits` for every similarity. A file that cannot be
decoded and an empty text are reported and skipped, never fatal.
"""

from __future__ import annotations

import csv
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .datasets import list_images
from .encoders import Model
from .images import decode_one
from .progress import Progress
from .scoring import class_logits

logger = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Vectors of the files that decoded, in input order, and the problems of those that did not.

    vectors: float32 (N, D), scored against text vectors; features: float32 (N, F),
    the image features (the manifest's features_output, else the vectors);
    valid: bool (len(paths),), which inputs have a row.
    """

    vectors: np.ndarray
    features: np.ndarray
    valid: np.ndarray
    problems: List[str] = field(default_factory=list)


RECALL_AT = (1, 5, 10)


def recall_at(ranks: np.ndarray, ks: Sequence[int] = RECALL_AT) -> Dict[int, float]:
    """{k: share of queries whose first right answer has 0-based rank < k} from int (Q,) ``ranks`` (0 when Q = 0)."""
    return {k: float(np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def walk_images(root: Path) -> List[Path]:
    """Image files under ``root`` and its subfolders (hidden ones skipped), sorted by relative path.

    Raises FileNotFoundError when ``root`` is not a directory.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: images folder not found")
    found, _, problems = list_images(root)
    for problem in problems:
        logger.warning("%s", problem)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found.extend(walk_images(sub))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@dataclass
class Records:
    """Labelled training records: image paths, label per record, optional text per record."""

    classes: List[str]
    images: List[Path]
    labels: List[int]
    texts: List[str]
    problems: List[str] = field(default_factory=list)


def read_folders(root: Path) -> Records:
    """Class folders: every image under ``root/<class>/`` is labelled <class>; classes sorted by name."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images: List[Path] = []
    labels: List[int] = []
    problems: List[str] = []
    for label, name in enumerate(classes):
        found = walk_images(root / name)
        if not found:
            problems.append(f"{root / name}: class folder without images")
        images.extend(found)
        labels.extend([label] * len(found))
    return Records(classes, images, labels, [""] * len(images), problems)


def embed_images(model: Model, paths: Sequence[Path], batch_size: Optional[int] = None,
                 progress: Optional[Progress] = None, progress_offset: int = 0) -> Embedded:
    """Encode ``paths`` at the manifest's image size; undecodable files are logged and skipped.

    Decoding runs in a thread pool (one thread per CPU the model uses).
    ``progress`` counts from ``progress_offset`` (a caller that encodes its
    images in several calls shares one progress line).
    """
    batch = batch_size or model.batch_size
    cfg, size = model.image_cfg, model.image_cfg.size
    valid = np.zeros(len(paths), dtype=bool)
    vec_rows: List[np.ndarray] = []
    feat_rows: List[np.ndarray] = []
    problems: List[str] = []
    with ThreadPoolExecutor(max_workers=model.threads, thread_name_prefix="decode") as pool:
        for start in range(0, len(paths), batch):
            chunk = list(paths[start:start + batch])
            decoded = list(pool.map(lambda p: decode_one(p, cfg, size), chunk))
            ok = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
            for _, err in decoded:
                if err is not None:
                    logger.warning("%s; skipped", err)
                    problems.append(err)
            if ok:
                vecs, feats = model.encode_images(np.stack([decoded[i][0] for i in ok]))
                vec_rows.append(vecs)
                feat_rows.append(feats)
                valid[np.asarray(ok) + start] = True
            if progress is not None:
                done = progress_offset + start + len(chunk)
                progress.update(done, force=done == progress.total)
    dim = _output_dims(vec_rows, feat_rows)
    vectors = np.concatenate(vec_rows) if vec_rows else np.zeros((0, dim[0]), dtype=np.float32)
    features = np.concatenate(feat_rows) if feat_rows else np.zeros((0, dim[1]), dtype=np.float32)
    return Embedded(vectors, features, valid, problems)


def _output_dims(vec_rows: List[np.ndarray], feat_rows: List[np.ndarray]) -> Tuple[int, int]:
    """(D, F) of the encoded batches; (0, 0) when nothing decoded."""
    if not vec_rows:
        return 0, 0
    return int(vec_rows[0].shape[1]), int(feat_rows[0].shape[1])


def embed_texts(model: Model, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Texts -> (float32 (M, D) vectors of the non-empty ones, bool (len(texts),) valid, problems).

    Each text goes through the class-name path (:meth:`Model.class_vectors`:
    normalisation, templates, averaging), so a query is encoded exactly as a
    class name would be. Empty or blank texts are reported and skipped.
    """
    valid = np.array([isinstance(t, str) and bool(t.strip()) for t in texts], dtype=bool)
    problems = [f"text {i + 1} is empty; skipped" for i in np.flatnonzero(~valid)]
    for problem in problems:
        logger.warning("%s", problem)
    keep = [texts[i] for i in np.flatnonzero(valid)]
    if not keep:
        return np.zeros((0, 0), dtype=np.float32), valid, problems
    return model.class_vectors(keep), valid, problems


def similarity(model: Model, image_vecs: np.ndarray, text_vecs: np.ndarray) -> np.ndarray:
    """float32 (N, D) x (M, D) -> (N, M) scores as the manifest's score section says."""
    if len(image_vecs) == 0 or len(text_vecs) == 0:
        return np.zeros((len(image_vecs), len(text_vecs)), dtype=np.float32)
    return class_logits(image_vecs, text_vecs, model.manifest.score)


def read_pairs(path: Path) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(image, caption) pairs from a CSV with an ``image,caption`` header or JSON lines.

    JSON lines: one object per line with "image" and "caption" (or "text").
    Rows with an empty caption or image, and lines that do not parse, are
    reported and skipped. Raises FileNotFoundError when the file is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: captions file not found (CSV image,caption or JSON lines)")
    text = path.read_text(encoding="utf-8-sig")
    rows: List[Dict[str, str]] = []
    problems: List[str] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON: {exc}; skipped")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path}:{number}: expected an object; skipped")
                continue
            rows.append({"image": obj.get("image"), "caption": obj.get("caption", obj.get("text"))})
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "image" not in reader.fieldnames or not (
                {"caption", "text"} & set(reader.fieldnames)):
            raise ValueError(f"{path}: expected a CSV header with 'image' and 'caption' columns, "
                             f"got {reader.fieldnames}")
        for row in reader:
            rows.append({"image": row.get("image"), "caption": row.get("caption", row.get("text"))})
    pairs: List[Tuple[str, str]] = []
    for number, row in enumerate(rows, 1):
        image, caption = row["image"], row["caption"]
        if not isinstance(image, str) or not image.strip() or not isinstance(caption, str) or not caption.strip():
            problems.append(f"{path}: record {number} has an empty image or caption; skipped")
            continue
        pairs.append((image.strip(), caption.strip()))
    for problem in problems:
        logger.warning("%s", problem)
    return pairs, problems

