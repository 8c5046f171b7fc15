"""The time budget across all datasets, and the choice of path per batch.

Three paths, from best to cheapest: ``full`` (image.size), ``fast``
(image.fast_size, when the manifest offers one) and ``prior`` (no decoding:
the image gets its dataset's most likely class). Before each batch the budget
projects the finish from the measured cost per image of each path and picks
the best path that still ends before the deadline.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Optional

logger = logging.getLogger(__name__)

FULL, FAST, PRIOR = "full", "fast", "prior"


class Budget:
    """Tracks the seconds per image of each path and the images still to do."""

    def __init__(self, seconds: float, total_images: int, fast_ratio: Optional[float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``fast_ratio``: expected cost of fast relative to full (None: no fast path)."""
        self.clock = clock
        self.start = clock()
        self.deadline = self.start + seconds
        self.remaining = total_images
        self.fast_ratio = fast_ratio
        self.cost: Dict[str, Optional[float]] = {FULL: None, FAST: None}
        self.count: Dict[str, int] = {FULL: 0, FAST: 0, PRIOR: 0}
        self._announced = FULL

    def _per_image(self, path: str) -> Optional[float]:
        if self.cost[path] is not None:
            return self.cost[path]
        if path == FAST and self.cost[FULL] is not None and self.fast_ratio is not None:
            return self.cost[FULL] * self.fast_ratio
        return None

    def choose(self, batch: int) -> str:
        """The path for the next ``batch`` images: the best one projected to finish in time."""
        left = self.deadline - self.clock()
        candidates = [FULL] + ([FAST] if self.fast_ratio is not None else [])
        choice = PRIOR
        for path in candidates:
            per = self._per_image(path)
            if per is None:  # nothing measured yet: try it if any time is left
                if left > 0:
                    choice = path
                    break
                continue
            if per * self.remaining <= left:
                choice = path
                break
        if choice != FULL and choice != self._announced:
            logger.warning("time budget: %d images left, %.1f s left; switching to the %s path",
                           self.remaining, max(left, 0.0), choice)
            self._announced = choice
        return choice

    def record(self, path: str, images: int, seconds: float) -> None:
        """Account for ``images`` done on ``path`` in ``seconds`` (smoothed cost per image)."""
        self.remaining = max(0, self.remaining - images)
        self.count[path] += images
        if path == PRIOR or images == 0:
            return
        per = seconds / images
        old = self.cost[path]
        self.cost[path] = per if old is None else 0.7 * old + 0.3 * per

    def elapsed(self) -> float:
        return self.clock() - self.start
