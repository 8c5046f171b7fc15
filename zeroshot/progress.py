"""The one progress line of the project: ``name: done/total unit, rate unit/s, ETA`` on stderr through logging.

Prediction logs images per dataset, the side tools images per folder, training
steps per run; each logs at most every ``every_s`` seconds (and when forced,
e.g. at the end), so a long run shows it is alive without flooding the log.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0


class Progress:
    """Logs ``done/total`` ``unit`` and the rate since the start, at most every ``every_s`` seconds."""

    def __init__(self, name: str, total: int, unit: str = "images", every_s: float = PROGRESS_EVERY_S) -> None:
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.start = self.last = time.monotonic()

    def update(self, done: int, force: bool = False, note: str = "") -> None:
        """Log now if ``force`` or ``every_s`` seconds have passed since the last line; ``note`` is appended."""
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            eta = f", ETA {duration((self.total - done) / rate)}" if 0 < done < self.total else ""
            logger.info("%s: %d/%d %s, %.1f %s/s%s%s", self.name, done, self.total, self.unit, rate, self.unit, eta,
                        f", {note}" if note else "")


def duration(seconds: float) -> str:
    """``45s``, ``12m05s`` or ``3h07m`` (rounded to the second)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
