"""The accuracy ladder: pick the richest image-encoder rung that fits the time budget on this machine.

The manifest's ``ladder`` lists variant names from the cheapest to the richest
(e.g. int8, fp32, a larger input, mirror averaging, an ensemble), each a
variant with its own image encoder file and ``image`` settings. At start-up
the runtime knows how many images it must predict. It decodes a few of them
and times each rung's encoder on them, richest first, on this machine (the
judge's CPU is not the build machine's, and build-time timings would make
``make model`` non-deterministic); the first rung whose projected time fits
within ``share`` (half) of the budget is used, and the per-batch guard
(zeroshot.budget) still steps down if reality is slower.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .manifest import Manifest, resolve_file
from .pipeline import decode_one

logger = logging.getLogger(__name__)

BUDGET_SHARE = 0.5
PROBE_IMAGES = 4


@dataclass
class Choice:
    """The chosen rung and why: the projected seconds of every rung probed."""

    rung: str
    reason: str
    projected: Dict[str, float] = field(default_factory=dict)


def rungs(manifest: Manifest) -> List[str]:
    """The manifest's ladder (variant names, cheapest first); empty when it has none."""
    return list(manifest.ladder)


def _probe_paths(paths: Sequence[Path], n: int) -> List[Path]:
    """Up to ``n`` paths spread evenly over ``paths``."""
    if len(paths) <= n:
        return list(paths)
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


def probe_rung(model_dir: Path, manifest: Manifest, rung: str, paths: Sequence[Path], threads: int,
               make_session: Callable[[Path, int], Any]) -> float:
    """Seconds per image of ``rung`` on this machine: decoding + preprocessing + its encoder.

    A few of ``paths`` are decoded at the rung's size and run through its
    encoder after one warm-up run. Images that cannot be decoded are skipped;
    with none left, synthetic pixels are timed.
    """
    cfg = manifest.image_for(rung)
    size = cfg.size
    chosen = _probe_paths(paths, PROBE_IMAGES)
    pixels, started = [], time.perf_counter()
    for path in chosen:
        arr, err = decode_one(path, cfg, size)
        if arr is None:  # a broken image is the pipeline's business, not the probe's
            logger.debug("ladder probe skips %s", err)
        else:
            pixels.append(arr)
    decode_s = (time.perf_counter() - started) / max(len(chosen), 1) if pixels else 0.0
    batch = np.stack(pixels) if pixels else np.zeros((PROBE_IMAGES, 3, size, size), dtype=np.float32)
    # unverified here: Model checks the sha256 of the rung it then loads (hashing every rung twice cost start-up)
    session = make_session(resolve_file(manifest, model_dir, "image_encoder", False, rung), threads)
    session.run(None, {cfg.input: batch[:1]})
    started = time.perf_counter()
    session.run(None, {cfg.input: batch})
    return decode_s + (time.perf_counter() - started) / len(batch)


def choose(names: Sequence[str], seconds_per_image: Callable[[str], float], images: int, budget_s: float,
           share: float = BUDGET_SHARE) -> Choice:
    """The richest of ``names`` (cheapest first) whose projected time for ``images`` fits ``share`` of the budget.

    Rungs are measured richest first and the search stops at the first that
    fits; when none does, the cheapest is used.
    """
    allowed = share * budget_s
    projected: Dict[str, float] = {}
    for rung in reversed(names):
        projected[rung] = images * seconds_per_image(rung)
        if projected[rung] <= allowed:
            too_slow = ", ".join(f"{r} {t:.0f} s" for r, t in projected.items() if r != rung)
            return Choice(rung, f"projected {projected[rung]:.0f} s for {images} images fits in {allowed:.0f} s "
                                f"({share:.0%} of the {budget_s:.0f} s budget)"
                                + (f"; richer rungs would take {too_slow}" if too_slow else ""), projected)
    return Choice(names[0], f"no rung fits in {allowed:.0f} s ({share:.0%} of the {budget_s:.0f} s budget) for "
                            f"{images} images; the cheapest projects {projected[names[0]]:.0f} s", projected)


def select_rung(model_dir: Path, manifest: Manifest, forced: Optional[str], paths: Sequence[Path],
                budget_s: float, threads: int, make_session: Callable[[Path, int], Any]) -> Optional[str]:
    """The variant to run: ``forced`` (``--rung``), else the ladder's choice, else None (no ladder).

    Logs which rung and why. Raises ValueError for a forced name the ladder lacks.
    """
    names = rungs(manifest)
    if forced is not None:
        if forced not in names:
            raise ValueError(f"{Path(model_dir) / 'manifest.json'}: no rung '{forced}' in the ladder "
                             f"(available: {names or 'none'})")
        logger.info("accuracy ladder: rung %s (forced by --rung)", forced)
        return forced
    if not names:
        return None
    if not paths:
        logger.info("accuracy ladder: rung %s (no images to predict)", names[0])
        return names[0]
    choice = choose(names, lambda r: probe_rung(model_dir, manifest, r, paths, threads, make_session), len(paths),
                    budget_s)
    logger.info("accuracy ladder: rung %s: %s", choice.rung, choice.reason)
    return choice.rung
