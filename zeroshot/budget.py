"""The time budget across all datasets, and the choice of tier per batch.

Three tiers, from best to cheapest: ``full`` (image.size), ``fast``
(image.fast_size, when the manifest offers one) and ``prior`` (no decoding:
the image gets its dataset's prior class, Dataset.prior_class). Before each batch the budget
projects the finish from everything still to do -- the images at the measured
seconds per image of each tier, the class prompts of the datasets not yet
encoded at the measured seconds per prompt, and a measured overhead per
dataset -- and picks the best tier that still ends before the deadline.

The first batch of each tier is a warm-up (onnxruntime plans and allocates on
its first run, and the first images pay for cold caches): it is not taken as
the tier's speed, which would send images to the prior that the deadline had
room for.
Until a second batch is measured, a tier is tried whenever one more batch at
the warm-up's speed still ends in time.

The budget knows the total image count and the measured costs
(:meth:`Budget.per_image`, :meth:`Budget.seconds_left`), so a start-up choice
(e.g. which model to run) can ask it too.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Optional

logger = logging.getLogger(__name__)

FULL, FAST, PRIOR = "full", "fast", "prior"
TIERS = (FULL, FAST, PRIOR)  # best first
SMOOTH = 0.3  # weight of the newest measurement in a running cost


def _smooth(old: Optional[float], new: float) -> float:
    return new if old is None else (1.0 - SMOOTH) * old + SMOOTH * new


def cheaper(tier: str, than: str) -> bool:
    """True when ``tier`` comes after ``than`` in TIERS (costs less, predicts worse)."""
    return TIERS.index(tier) > TIERS.index(than)


class Budget:
    """Tracks the measured costs and the work still to do; picks a tier per batch."""

    def __init__(self, seconds: float, total_images: int, fast_ratio: Optional[float],
                 clock: Callable[[], float] = time.monotonic, total_prompts: int = 0,
                 total_datasets: int = 0) -> None:
        """``fast_ratio``: expected cost of fast relative to full (None: no fast tier).

        ``total_prompts``: class prompts to encode over all datasets; ``total_datasets``:
        datasets still to finish (each costs a measured overhead).
        """
        self.clock = clock
        self.seconds = seconds
        self.start = clock()
        self.deadline = self.start + seconds
        self.total_images = total_images
        self.remaining = total_images
        self.prompts_left = total_prompts
        self.datasets_left = total_datasets
        self.fast_ratio = fast_ratio
        self.cost: Dict[str, Optional[float]] = {FULL: None, FAST: None}
        self.warmup: Dict[str, Optional[float]] = {FULL: None, FAST: None}  # seconds per image, first batch
        self.prompt_cost: Optional[float] = None
        self.dataset_overhead: Optional[float] = None
        self.count: Dict[str, int] = {tier: 0 for tier in TIERS}
        self._announced = FULL

    def per_image(self, tier: str) -> Optional[float]:
        """Measured (smoothed) seconds per image on ``tier``, fast estimated from full; None if unknown."""
        if tier == PRIOR:
            return 0.0
        if self.cost[tier] is not None:
            return self.cost[tier]
        if tier == FAST and self.cost[FULL] is not None and self.fast_ratio is not None:
            return self.cost[FULL] * self.fast_ratio
        return None

    def seconds_left(self) -> float:
        """Seconds to the deadline (negative once it has passed)."""
        return self.deadline - self.clock()

    def fixed_cost(self) -> float:
        """Projected seconds of the work that does not depend on the tier: prompts and per-dataset overhead."""
        return ((self.prompt_cost or 0.0) * self.prompts_left
                + (self.dataset_overhead or 0.0) * self.datasets_left)

    def seconds_for_prompts(self, prompts: int) -> float:
        """Seconds the ``prompts`` class prompts of the dataset at hand may take: the time left less the
        projected prompts of the other datasets and the per-dataset overheads."""
        others = (self.prompt_cost or 0.0) * max(self.prompts_left - prompts, 0)
        return self.seconds_left() - others - (self.dataset_overhead or 0.0) * self.datasets_left

    def choose(self, batch: int) -> str:
        """The tier for the next ``batch`` images: the best one projected to finish in time."""
        left = self.seconds_left()
        candidates = [FULL] + ([FAST] if self.fast_ratio is not None else [])
        choice = PRIOR
        for tier in candidates:
            per = self.per_image(tier)
            if per is None:  # no speed past the warm-up yet: try it if one batch at the warm-up's speed fits
                if (self.warmup[tier] or 0.0) * batch + self.fixed_cost() < left:
                    choice = tier
                    break
                continue
            if per * self.remaining + self.fixed_cost() <= left:
                choice = tier
                break
        if choice != self._announced and cheaper(choice, self._announced):
            logger.warning("time budget: %d images left, %.1f s left; switching to the %s tier",
                           self.remaining, max(left, 0.0), choice)
            self._announced = choice
        return choice

    def past_deadline(self) -> bool:
        return self.seconds_left() <= 0

    def record(self, tier: str, images: int, seconds: float) -> None:
        """Account for ``images`` done on ``tier`` in ``seconds`` (smoothed cost per image; a tier's
        first batch is its warm-up, kept apart)."""
        self.remaining = max(0, self.remaining - images)
        self.count[tier] += images
        if tier == PRIOR or images == 0:
            return
        if self.warmup[tier] is None:
            self.warmup[tier] = seconds / images
            return
        self.cost[tier] = _smooth(self.cost[tier], seconds / images)

    def record_prompts(self, prompts: int, seconds: float, encoded: bool = True) -> None:
        """``prompts`` of one dataset are done (``encoded``: in ``seconds``; else skipped)."""
        self.prompts_left = max(0, self.prompts_left - prompts)
        if encoded and prompts:
            self.prompt_cost = _smooth(self.prompt_cost, seconds / prompts)

    def record_dataset(self, overhead_s: float) -> None:
        """One dataset finished; ``overhead_s``: its seconds outside image batches and prompts."""
        self.datasets_left = max(0, self.datasets_left - 1)
        self.dataset_overhead = _smooth(self.dataset_overhead, max(overhead_s, 0.0))

    def elapsed(self) -> float:
        return self.clock() - self.start

    def describe(self) -> Dict[str, object]:
        """The budget for the run report: seconds, images, measured costs and images per tier."""
        return {"seconds": self.seconds, "total_images": self.total_images,
                "seconds_per_image": {t: self.per_image(t) for t in (FULL, FAST)},
                "warmup_seconds_per_image": dict(self.warmup),
                "seconds_per_prompt": self.prompt_cost, "overhead_per_dataset_s": self.dataset_overhead,
                "tiers": dict(self.count)}
