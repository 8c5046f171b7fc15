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

Only intact rungs compete: at start-up every rung's files are checked
against the manifest (size and sha256, each file hashed once), a rung with a
missing or corrupt file is left out with a warning, and a rung whose encoder
cannot be probed or loaded gives way to the next cheaper one. The run fails
only when no rung is intact.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np

from .manifest import MANIFEST_NAME, Manifest, file_problems, resolve_file
from .images import decode_one

logger = logging.getLogger(__name__)

BUDGET_SHARE = 0.5
PROBE_IMAGES = 4
T = TypeVar("T")


@dataclass
class Choice:
    """The chosen rung and why: the projected seconds of every rung probed."""

    rung: str
    reason: str
    projected: Dict[str, float] = field(default_factory=dict)


def rungs(manifest: Manifest) -> List[str]:
    """The manifest's ladder (variant names, cheapest first); empty when it has none."""
    return list(manifest.ladder)


def intact_rungs(model_dir: Path, manifest: Manifest, names: Sequence[str]) -> List[str]:
    """The rungs of ``names`` whose model files are all there with their size and sha256; a warning
    names each rung left out and its broken files."""
    intact = []
    for rung in names:
        problems = file_problems(manifest, model_dir, rung)
        if problems:
            logger.warning("accuracy ladder: rung %s left out: %s", rung, "; ".join(problems))
        else:
            intact.append(rung)
    return intact


def cheaper_intact(model_dir: Path, manifest: Manifest, rung: Optional[str]) -> List[str]:
    """The intact rungs below ``rung`` in the ladder, richest first (where a failing rung falls back to)."""
    names = rungs(manifest)
    below = names[:names.index(rung)] if rung in names else []
    return [r for r in reversed(below) if not file_problems(manifest, model_dir, r)]


def load_first(candidates: Sequence[Optional[str]], load: Callable[[Optional[str]], T]) -> T:
    """``load(c)`` for the first candidate that loads; a warning for each that does not (FileNotFoundError,
    ValueError), whose error is raised again when no candidate is left."""
    for i, candidate in enumerate(candidates):
        try:
            return load(candidate)
        except (FileNotFoundError, ValueError) as exc:
            if i == len(candidates) - 1:
                raise
            logger.warning("rung %s does not load (%s); falling back to rung %s", candidate, exc, candidates[i + 1])
    raise ValueError("no rung to load")


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

    Only intact rungs are probed (:func:`intact_rungs`). Logs which rung and why. Raises ValueError for
    a forced name the ladder lacks, and when no rung is intact.
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
    intact = intact_rungs(model_dir, manifest, names)
    if not intact:
        raise ValueError(f"{Path(model_dir) / MANIFEST_NAME}: no rung of the accuracy ladder has intact model files "
                         f"(rungs {', '.join(names)}; see the warnings above)")
    if not paths:
        logger.info("accuracy ladder: rung %s (no images to predict)", intact[0])
        return intact[0]

    def seconds_per_image(rung: str) -> float:
        try:
            return probe_rung(model_dir, manifest, rung, paths, threads, make_session)
        except (FileNotFoundError, ValueError) as exc:
            logger.warning("accuracy ladder: rung %s cannot be probed (%s); left out", rung, exc)
            return math.inf

    choice = choose(intact, seconds_per_image, len(paths), budget_s)
    logger.info("accuracy ladder: rung %s: %s", choice.rung, choice.reason)
    return choice.rung
