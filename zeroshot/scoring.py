"""From image and class vectors to one class per image.

The manifest's ``score`` section says how a score is formed (dot or cosine,
linear or log, a scale); its ``balance`` section says whether the class
frequencies within one dataset are balanced (Sinkhorn) before the argmax.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np

logger = logging.getLogger(__name__)

_EPS = 1e-12


def logits(image_vecs: np.ndarray, class_vecs: np.ndarray, cfg: Dict[str, Any]) -> np.ndarray:
    """float32 (N, D) x (C, D) -> float32 (N, C) logits as the manifest's score section says.

    similarity: ``dot`` or ``cosine`` (both sides L2-normalised); logit:
    ``linear`` (scale * s) or ``log`` (scale * log(s), for probability-like s).
    """
    img, cls = image_vecs.astype(np.float32), class_vecs.astype(np.float32)
    if cfg["similarity"] == "cosine":
        img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), _EPS)
        cls = cls / np.maximum(np.linalg.norm(cls, axis=1, keepdims=True), _EPS)
    sims = img @ cls.T
    if cfg["logit"] == "log":
        sims = np.log(np.maximum(sims, _EPS))
    return (float(cfg["scale"]) * sims).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically safe softmax (the max is subtracted first); -inf entries get 0."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def sinkhorn(probs: np.ndarray, iterations: int) -> np.ndarray:
    """Balance an (N, C) probability matrix towards equal class mass.

    Alternately scales columns to sum N/C over the classes that have any mass
    and rows to sum 1. Zero columns (masked classes) stay zero.
    """
    p = probs.astype(np.float64)
    n, _ = p.shape
    live = p.sum(axis=0) > 0
    target = n / max(int(live.sum()), 1)
    for _ in range(iterations):
        col = p.sum(axis=0)
        p[:, live] *= target / np.maximum(col[live], _EPS)
        p /= np.maximum(p.sum(axis=1, keepdims=True), _EPS)
    return p


def predict(scores: np.ndarray, valid: np.ndarray, class_mask: np.ndarray,
            balance: Optional[Dict[str, Any]]) -> np.ndarray:
    """Class index per image.

    scores: float32 (N, C) logits; valid: bool (N,) rows that come from a
    decoded image; class_mask: bool (C,) classes that may be predicted
    (duplicates and empty names are masked). Rows that are not valid get the
    mean probability of the valid rows (the dataset's prior), so they still
    get a sensible class. Returns int64 (N,).
    """
    n, c = scores.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    masked = np.where(class_mask[None, :], scores, -np.inf)
    probs = softmax(masked, axis=1)
    prior = probs[valid].mean(axis=0) if valid.any() else class_mask / max(class_mask.sum(), 1)
    probs[~valid] = prior
    if balance is not None and n >= float(balance.get("min_images_per_class", 0)) * int(class_mask.sum()):
        probs = sinkhorn(probs, int(balance["iterations"]))
    return np.argmax(probs, axis=1).astype(np.int64)
