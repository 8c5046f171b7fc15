"""Predicting every image of every dataset within the time budget.

Decoding and preprocessing run in a thread pool (Pillow releases the GIL) a
few batches ahead of onnxruntime, which runs the image encoder batch by batch.
Class prompts are encoded once per dataset. Every image gets a class: one
that cannot be decoded, or that the budget sends down the ``prior`` path,
gets its dataset's most likely class.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from .budget import FAST, FULL, PRIOR, Budget
from .datasets import Dataset
from .encoders import Model
from .images import ImageError, load_image, preprocess
from .scoring import class_logits, predict

logger = logging.getLogger(__name__)

LOOKAHEAD_BATCHES = 2
PROGRESS_EVERY_S = 10.0


@dataclass
class DatasetResult:
    """Predictions of one dataset and what happened on the way."""

    name: str
    predictions: Dict[str, int]
    seconds: float
    problems: List[str] = field(default_factory=list)
    paths: Dict[str, int] = field(default_factory=dict)


def decode_one(path: Path, cfg: Dict[str, Any], size: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(float32 (3, size, size) array, None) for a good image, (None, message) for a bad one."""
    try:
        return preprocess(load_image(path, size), cfg, size), None
    except ImageError as exc:
        return None, str(exc)
    except Exception as exc:  # a bug or an exotic file must not stop the run
        return None, f"{path}: cannot preprocess image: {type(exc).__name__}: {exc}"


@dataclass
class _Batch:
    start: int
    stop: int
    path: str
    futures: List["Future[Tuple[Optional[np.ndarray], Optional[str]]]"]


def _submit(ds: Dataset, start: int, stop: int, path: str, model: Model, pool: ThreadPoolExecutor) -> _Batch:
    """Queue the decoding of images start..stop-1 for ``path`` (nothing to decode on the prior path)."""
    if path == PRIOR:
        return _Batch(start, stop, path, [])
    cfg = model.image_cfg
    size = cfg["size"] if path == FULL else cfg["fast_size"]
    futures = [pool.submit(decode_one, p, cfg, size) for p in ds.images[start:stop]]
    return _Batch(start, stop, path, futures)


class _Progress:
    """Logs images done and images/s every PROGRESS_EVERY_S seconds."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            logger.info("%s: %d/%d images, %.1f images/s", self.name, done, self.total, rate)


def predict_dataset(ds: Dataset, model: Model, budget: Budget, pool: ThreadPoolExecutor,
                    batch_size: int) -> DatasetResult:
    """Predict one dataset; never raises for a bad image."""
    started = time.monotonic()
    n, problems = len(ds.images), list(ds.problems)
    for problem in problems:
        logger.warning("%s", problem)
    if n == 0 or len(ds.classes) == 1:
        budget.record(PRIOR, n, 0.0)
        return DatasetResult(ds.name, {i: 0 for i in ds.ids}, time.monotonic() - started, problems, {PRIOR: n})
    class_vecs = model.class_vectors(ds.classes)
    scores = np.zeros((n, len(ds.classes)), dtype=np.float32)
    features: Optional[np.ndarray] = None
    valid = np.zeros(n, dtype=bool)
    paths = {FULL: 0, FAST: 0, PRIOR: 0}
    starts = list(range(0, n, batch_size))
    queue: Deque[_Batch] = deque()
    progress = _Progress(ds.name, n)
    mark = time.monotonic()
    for k in range(len(starts)):
        while len(queue) <= LOOKAHEAD_BATCHES and k + len(queue) < len(starts):
            s = starts[k + len(queue)]
            stop = min(s + batch_size, n)
            queue.append(_submit(ds, s, stop, budget.choose(stop - s), model, pool))
        batch = queue.popleft()
        if batch.futures:
            decoded = [f.result() for f in batch.futures]
            ok = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
            for arr, err in decoded:
                if err is not None:
                    logger.warning("%s; it gets the dataset's most likely class", err)
                    problems.append(err)
            if ok:
                pixels = np.stack([decoded[i][0] for i in ok])
                rows = np.asarray(ok) + batch.start
                vectors, feats = model.encode_images(pixels)
                if features is None:
                    features = np.zeros((n, feats.shape[1]), dtype=np.float32)
                scores[rows] = class_logits(vectors, class_vecs, model.manifest["score"])
                features[rows] = feats
                valid[rows] = True
        now = time.monotonic()
        budget.record(batch.path, batch.stop - batch.start, now - mark)
        mark = now
        paths[batch.path] += batch.stop - batch.start
        progress.update(batch.stop)
    if model.head is not None:
        scores = model.head.adjust(ds.classes, scores, features, valid, model.text_cfg.get("normalize", []))
    labels = predict(scores, valid, ds.class_mask(), model.manifest.get("balance"), features,
                     model.manifest.get("transductive"))
    preds = {image_id: int(label) for image_id, label in zip(ds.ids, labels)}
    return DatasetResult(ds.name, preds, time.monotonic() - started, problems, paths)


def run_all(datasets: List[Dataset], model: Model, budget: Budget, batch_size: int,
            workers: int) -> List[DatasetResult]:
    """Predict every dataset in order with one shared decoding pool."""
    results: List[DatasetResult] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for ds in datasets:
            res = predict_dataset(ds, model, budget, pool, batch_size)
            n = len(res.predictions)
            logger.info("%s: %d images, %d classes, %.1f s, %.1f images/s (paths %s)", ds.name, n,
                        len(ds.classes), res.seconds, n / max(res.seconds, 1e-9),
                        ", ".join(f"{k}={v}" for k, v in res.paths.items() if v))
            results.append(res)
    return results
