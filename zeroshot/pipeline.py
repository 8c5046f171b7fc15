"""Predicting every image of every dataset within the time budget.

Decoding and preprocessing run either in a thread pool a few batches ahead of
onnxruntime (Pillow releases the GIL), or inline in the main thread when one
CPU is all there is (then threads would only fight over it). The pixels being
decoded at once are bounded by a :class:`~zeroshot.resources.PixelBudget`, so
memory does not grow with the thread count. Class prompts are encoded once per
dataset, inside the budget. Every image gets a class: one that cannot be
decoded, or that the budget sends down the ``prior`` tier, gets its dataset's
most likely class. When the budget switches to the prior tier (or a stop is
requested, e.g. by SIGTERM), queued decodes are cancelled and nothing waits for
work that will not be used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, TimeoutError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from .budget import FULL, PRIOR, TIERS, Budget, cheaper
from .datasets import Dataset
from .encoders import Model
from .images import Decoded, decode_one
from .manifest import ImageConfig
from .limits import JUDGE_MEMORY_GB
from .progress import Progress
from .resources import PixelBudget
from .visual_bank import ClassMatch, bank_logits
from .scoring import class_logits, predict

logger = logging.getLogger(__name__)

LOOKAHEAD_BATCHES = 2
# The class side of a dataset (class vectors and scores) may hold this much memory: half the judge's.
CLASS_SIDE_BYTES = int(JUDGE_MEMORY_GB * 1e9 / 2)
# An upper bound, not a fit: 20,000 classes x 200 images with the default model (D = 1000, dot scores,
# no balancing at that ratio) raised the peak RSS by 190 MB; class_side_bytes says 432 MB.
CLASS_VECTOR_COPIES = 3  # the class vectors, and the float32 and normalised copies class_logits makes
SCORE_BYTES = 48  # per (image, class): the float32 scores and the float64 work arrays of predict()
CLASS_GATE_MEASURE_S = 1.0  # class prompts are encoded this long before their speed may stop them
POLL_S = 0.1  # how often a wait for decodes checks the deadline and the stop flag
FALLBACK_IDS = 200  # per dataset and tier, the ids of images below the full tier kept for the run report



@dataclass
class DatasetResult:
    """Predictions of one dataset and what happened on the way."""

    name: str
    predictions: Dict[str, int]
    seconds: float
    classes: int = 0
    problems: List[str] = field(default_factory=list)
    tiers: Dict[str, int] = field(default_factory=lambda: {tier: 0 for tier in TIERS})
    fallback: Dict[str, List[str]] = field(default_factory=dict)  # fast / prior -> its first FALLBACK_IDS ids
    busy_s: float = 0.0  # seconds of prompt encoding and image batches (the rest is per-dataset overhead)


class Decoder:
    """Decodes images in a thread pool (``workers`` >= 1) or inline when they are waited for (0)."""

    def __init__(self, workers: int, pixels: PixelBudget) -> None:
        self.workers = workers
        self.pixels = pixels
        self.lookahead = LOOKAHEAD_BATCHES if workers > 0 else 0
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers > 0 else None
        self._inline: Dict["Future[Decoded]", Callable[[], Decoded]] = {}

    def submit(self, path: Path, cfg: ImageConfig, size: int) -> "Future[Decoded]":
        if self._pool is not None:
            return self._pool.submit(decode_one, path, cfg, size, self.pixels)
        future: "Future[Decoded]" = Future()
        self._inline[future] = lambda: decode_one(path, cfg, size, self.pixels)
        return future

    def result(self, future: "Future[Decoded]", give_up: Callable[[], bool]) -> Optional[Decoded]:
        """The decoded image, or None when ``give_up()`` turns true first (the future is then cancelled)."""
        job = self._inline.pop(future, None)
        if job is not None:
            if give_up() or not future.set_running_or_notify_cancel():
                return None
            future.set_result(job())
        while True:
            try:
                return future.result(timeout=POLL_S)
            except TimeoutError:
                if give_up():
                    future.cancel()
                    return None
            except CancelledError:
                return None

    def cancel(self, futures: List["Future[Decoded]"]) -> None:
        """Cancel what has not started (running decodes finish in the background, unused)."""
        for future in futures:
            future.cancel()
            self._inline.pop(future, None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def class_side_bytes(classes: int, images: int, dim: int) -> int:
    """Bytes a dataset's class side holds at its peak: the (C, D) float32 class vectors with the copies
    scoring makes, and the (N, C) scores with the work arrays of balancing and refinement."""
    return classes * dim * 4 * CLASS_VECTOR_COPIES + images * classes * SCORE_BYTES


class ClassGate:
    """Asked between two text batches whether a dataset's class prompts may still be encoded.

    No, once a stop is requested, once the budget leaves no time for them
    (:meth:`Budget.seconds_for_prompts`), or once the speed measured over
    CLASS_GATE_MEASURE_S seconds (the first batch, a warm-up, left out)
    projects the rest past that time; ``reason`` then says why.
    """

    def __init__(self, budget: Budget, stop: threading.Event, started: float) -> None:
        self.budget, self.stop, self.started = budget, stop, started
        self.done = 0
        self.first: Optional[Tuple[int, float]] = None  # prompts done and the clock after the first batch
        self.reason = ""

    def __call__(self, done: int, total: int) -> bool:
        self.done = done
        now = time.monotonic()
        if self.stop.is_set():
            self.reason = f"stopped while encoding class names ({done}/{total} prompts done)"
            return True
        if done and self.first is None:
            self.first = (done, now)
        projected = 0.0
        if self.first is not None and now - self.first[1] >= CLASS_GATE_MEASURE_S:
            projected = (now - self.first[1]) / (done - self.first[0]) * (total - done)
        allowed = self.budget.seconds_for_prompts(total)
        if projected > allowed or allowed <= 0:
            self.reason = (f"class names given up after {done}/{total} prompts in {now - self.started:.1f} s: the "
                           f"rest would take about {projected:.0f} s, {max(allowed, 0.0):.0f} s are left for them")
            return True
        return False


@dataclass
class _Batch:
    start: int
    stop: int
    tier: str
    futures: List["Future[Decoded]"]


class _DatasetRun:
    """The scores of one dataset filled batch by batch; unfinished rows fall back to the prior."""

    def __init__(self, ds: Dataset, model: Model, budget: Budget, decoder: Decoder, batch_size: int,
                 stop: threading.Event) -> None:
        self.ds, self.model, self.budget, self.decoder = ds, model, budget, decoder
        self.batch_size, self.stop = batch_size, stop
        n = len(ds.images)
        self.scores = np.zeros((n, len(ds.classes)), dtype=np.float32)
        self.features: Optional[np.ndarray] = None
        self.match: Optional[ClassMatch] = None
        self.valid = np.zeros(n, dtype=bool)
        self.tiers = {tier: 0 for tier in TIERS}
        self.fallback: Dict[str, List[str]] = {}
        self.problems: List[str] = []
        self.busy_s = 0.0  # seconds spent on prompts and batches (the rest is per-dataset overhead)

    def give_up(self) -> bool:
        return self.stop.is_set() or self.budget.past_deadline()

    def _tier(self, images: int) -> str:
        return PRIOR if self.stop.is_set() else self.budget.choose(images)

    def _submit(self, start: int, stop: int, tier: str) -> _Batch:
        if tier == PRIOR:
            return _Batch(start, stop, tier, [])
        cfg = self.model.image_cfg
        size = cfg.size if tier == FULL else cfg.fast_size
        return _Batch(start, stop, tier, [self.decoder.submit(p, cfg, size) for p in self.ds.images[start:stop]])

    def _downgrade(self, queue: Deque[_Batch], tier: str) -> None:
        """On a switch to the prior tier, queued batches are cancelled rather than waited for."""
        if tier != PRIOR:
            return
        for batch in queue:
            if cheaper(tier, batch.tier):
                self.decoder.cancel(batch.futures)
                batch.tier, batch.futures = PRIOR, []

    def class_vectors(self) -> Optional[np.ndarray]:
        """float32 (C, D) class vectors, or None when the dataset stays on its prior: the budget leaves
        no time for it, its class side would pass the memory cap, or the encoding was given up (the
        reason is then one of the dataset's problems)."""
        classes, images = len(self.ds.classes), len(self.ds.images)
        prompts = classes * len(self.model.text_cfg.templates)
        if self._tier(min(self.batch_size, images)) == PRIOR:
            self.budget.record_prompts(prompts, 0.0, encoded=False)
            return None
        need = class_side_bytes(classes, images, self.model.text_dim())
        if need > CLASS_SIDE_BYTES:
            self.budget.record_prompts(prompts, 0.0, encoded=False)
            self._problem(f"{self.ds.root}: {classes} classes x {images} images would hold about {need / 1e9:.1f} GB "
                          f"of class vectors and scores, more than the {CLASS_SIDE_BYTES / 1e9:.1f} GB the class side "
                          "may use; the dataset gets its prior class")
            return None
        started = time.monotonic()
        gate = ClassGate(self.budget, self.stop, started)
        vecs: Optional[np.ndarray] = None
        try:
            vecs = self.model.class_vectors(self.ds.classes, gate)
        finally:
            self._charge(started, prompts, prompts if vecs is not None else gate.done)
        if vecs is None:
            self._problem(f"{self.ds.root}: {gate.reason}; the dataset gets its prior class")
        elif self.model.bank is not None:
            self.match = self.bank_match()
        return vecs

    def bank_match(self) -> Optional[ClassMatch]:
        """The classes' concept-bank prototypes (zeroshot.visual_bank), or None when the names cannot be matched in
        time or at all (the dataset is then scored without the bank; the reason is one of its problems)."""
        started = time.monotonic()
        gate = ClassGate(self.budget, self.stop, started)
        names = len(self.ds.classes)
        vecs = None
        try:
            vecs = self.model.name_vectors(self.ds.classes, gate)
            if vecs is None:
                self._problem(f"{self.ds.root}: visual concept bank not used: {gate.reason}")
                return None
            return self.model.bank.match(self.ds.classes, vecs)
        except Exception as exc:  # the bank only adds to the zero-shot scores: without it the dataset still scores
            self._problem(f"{self.ds.root}: visual concept bank not used: {type(exc).__name__}: {exc}")
            return None
        finally:
            self._charge(started, names, names if vecs is not None else gate.done)

    def _charge(self, started: float, prompts: int, done: int) -> None:
        """Charge the budget for ``prompts`` text prompts begun at ``started``, of which ``done`` were encoded."""
        seconds = time.monotonic() - started
        self.busy_s += seconds
        self.budget.record_prompts(done, seconds)
        self.budget.record_prompts(prompts - done, 0.0, encoded=False)

    def _problem(self, message: str) -> None:
        logger.warning("%s", message)
        self.problems.append(message)

    def _count(self, tier: str, rows: List[int]) -> None:
        """Count the images at ``rows`` on ``tier``; below the full tier, keep the first FALLBACK_IDS ids."""
        self.tiers[tier] += len(rows)
        if tier != FULL and rows:
            kept = self.fallback.setdefault(tier, [])
            kept.extend(self.ds.ids[r] for r in rows[:FALLBACK_IDS - len(kept)])

    def _encode(self, batch: _Batch, class_vecs: np.ndarray) -> List[bool]:
        """Wait for a batch's decodes and score them; returns, per image, whether it got the batch's tier."""
        decoded = [self.decoder.result(f, self.give_up) for f in batch.futures]
        ok = []
        for i, item in enumerate(decoded):
            if item is None:
                continue
            arr, err = item
            if err is not None:
                logger.warning("%s; it gets the dataset's most likely class", err)
                self.problems.append(err)
            if arr is not None:
                ok.append(i)
        if ok:
            rows = np.asarray(ok) + batch.start
            vectors, feats = self.model.encode_images(np.stack([decoded[i][0] for i in ok]))
            if self.features is None:
                self.features = np.zeros((len(self.valid), feats.shape[1]), dtype=np.float32)
            self.scores[rows] = class_logits(vectors, class_vecs, self.model.manifest.score)
            self.features[rows] = feats
            self.valid[rows] = True
        return [item is not None for item in decoded]

    def run_batches(self, class_vecs: np.ndarray) -> None:
        """Every batch, decoded ``decoder.lookahead`` batches ahead; records each in the budget."""
        n = len(self.ds.images)
        starts = list(range(0, n, self.batch_size))
        queue: Deque[_Batch] = deque()
        progress = Progress(self.ds.name, n)
        submitted = 0
        try:
            for _ in starts:
                while len(queue) <= self.decoder.lookahead and submitted < len(starts):
                    s = starts[submitted]
                    stop = min(s + self.batch_size, n)
                    tier = self._tier(stop - s)
                    self._downgrade(queue, tier)
                    queue.append(self._submit(s, stop, tier))
                    submitted += 1
                batch = queue.popleft()
                mark = time.monotonic()
                got = self._encode(batch, class_vecs) if batch.futures else [False] * (batch.stop - batch.start)
                seconds = time.monotonic() - mark
                self.busy_s += seconds
                done = [batch.start + i for i, ok in enumerate(got) if ok]
                rest = [batch.start + i for i, ok in enumerate(got) if not ok]
                self.budget.record(batch.tier, len(done), seconds)
                self.budget.record(PRIOR, len(rest), 0.0)
                self._count(batch.tier, done)
                self._count(PRIOR, rest)
                progress.update(batch.stop)
        finally:
            for batch in queue:
                self.decoder.cancel(batch.futures)

    def labels(self) -> np.ndarray:
        """int64 (N,) classes: scored rows by the scores, the rest by the dataset's prior.

        The concept bank's prototypes (the manifest's optional ``visual_bank``) add to the
        scores of the classes whose names it matched; then a trained head (the
        optional ``head``) whose classes match this dataset's replaces or adjusts them.
        """
        scores, model = self.scores, self.model
        if model.bank is not None and self.match is not None:
            try:
                scores = bank_logits(scores, self.features, self.valid, self.match, model.bank.cfg)
            except Exception as exc:  # e.g. prototypes of another feature space: score without the bank
                self._problem(f"{self.ds.root}: visual concept bank not used: {type(exc).__name__}: {exc}")
        if model.head is not None:
            scores = model.head.adjust(self.ds.classes, scores, self.features, self.valid,
                                       model.text_cfg.normalize)
        return predict(scores, self.valid, self.ds.class_mask(), model.manifest.balance,
                       self.features, model.manifest.transductive)


def prior_result(ds: Dataset, started: float, problems: List[str]) -> DatasetResult:
    """Every image of ``ds`` on the prior tier: the first class that may be predicted."""
    first = ds.prior_class()
    tiers = {tier: 0 for tier in TIERS}
    tiers[PRIOR] = len(ds.images)
    return DatasetResult(ds.name, {i: first for i in ds.ids}, time.monotonic() - started, len(ds.classes),
                         problems, tiers, {PRIOR: ds.ids[:FALLBACK_IDS]} if ds.ids else {})


def predict_dataset(ds: Dataset, model: Model, budget: Budget, decoder: Decoder, batch_size: int,
                    stop: Optional[threading.Event] = None) -> DatasetResult:
    """Predict one dataset; never raises for a bad image, bad class names or a failing encoder."""
    started = time.monotonic()
    for problem in ds.problems:
        logger.warning("%s", problem)
    run = _DatasetRun(ds, model, budget, decoder, batch_size, stop or threading.Event())
    result = _predict(run, started)
    result.busy_s = run.busy_s
    return result


def _predict(run: _DatasetRun, started: float) -> DatasetResult:
    ds, budget = run.ds, run.budget
    if not ds.images or len(ds.classes) <= 1:
        budget.record_prompts(len(ds.classes) * len(run.model.text_cfg.templates), 0.0, encoded=False)
        budget.record(PRIOR, len(ds.images), 0.0)
        return prior_result(ds, started, list(ds.problems))
    try:
        class_vecs = run.class_vectors()
        if class_vecs is None:
            budget.record(PRIOR, len(ds.images), 0.0)
            return prior_result(ds, started, ds.problems + run.problems)
        run.run_batches(class_vecs)
        labels = run.labels()
    except Exception as exc:  # one dataset's failure must not cost the others
        message = f"{ds.root}: {type(exc).__name__}: {exc}; the dataset gets its prior class"
        logger.error("%s", message)
        budget.record(PRIOR, len(ds.images) - sum(run.tiers.values()), 0.0)
        return prior_result(ds, started, ds.problems + run.problems + [message])
    preds = {image_id: int(label) for image_id, label in zip(ds.ids, labels)}
    return DatasetResult(ds.name, preds, time.monotonic() - started, len(ds.classes), ds.problems + run.problems,
                         run.tiers, run.fallback)


def run_all(datasets: List[Dataset], model: Model, budget: Budget, batch_size: int, decoder: Decoder,
            on_result: Optional[Callable[[DatasetResult], None]] = None,
            stop: Optional[threading.Event] = None) -> List[DatasetResult]:
    """Predict every dataset in order; ``on_result`` gets each result as soon as it is ready.

    Everything outside prompts and image batches (listing, scoring, writing the
    results) is recorded in the budget as per-dataset overhead.
    """
    results: List[DatasetResult] = []
    try:
        for ds in datasets:
            started = time.monotonic()
            res = predict_dataset(ds, model, budget, decoder, batch_size, stop)
            n = len(res.predictions)
            logger.info("%s: %d images, %d classes, %.1f s, %.1f images/s (tiers %s)", ds.name, n,
                        len(ds.classes), res.seconds, n / max(res.seconds, 1e-9),
                        ", ".join(f"{k}={v}" for k, v in res.tiers.items() if v))
            results.append(res)
            if on_result is not None:
                on_result(res)
            budget.record_dataset(time.monotonic() - started - res.busy_s)
    finally:
        decoder.close()
    return results
