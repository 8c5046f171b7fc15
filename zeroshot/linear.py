"""A trained linear head: logistic regression on normalised embeddings, kept in a model folder.

The manifest's optional ``head`` section names the head's classes and how its
features are formed; ``files.head`` names the weights file (``.npz``) with its
sha256, so bundling and loading check it like every model file. Prediction
uses the head for a dataset whose classes.json holds the same class names
(after the manifest's text normalisation, in any order):

    scores = zero-shot logits (if head.zero_shot) + features @ W + b

and then balances and refines as usual. Features are the image encoder's
features, log-transformed when the manifest says they are probabilities
(``transductive.log_features``), L2-normalised; with text, the record's text
vector (log-transformed when ``score.logit`` is ``log``), L2-normalised, is
appended (zeros when a record has no text).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .manifest import Manifest, resolve_file
from .scoring import softmax, unit_features
from .text import normalize_name

logger = logging.getLogger(__name__)

HEAD_KEY = "head"
DEFAULT_L2 = 1e-2          # L2 penalty on the head's weights
DEFAULT_ITERATIONS = 500   # gradient steps


@dataclass
class Head:
    """Weights float32 (F, C) and bias (C,) over ``classes``; F = image_dim + text_dim."""

    classes: List[str]
    weights: np.ndarray
    bias: np.ndarray
    zero_shot: bool
    image_log: bool
    text_log: bool
    text_dim: int

    def features(self, image_feats: np.ndarray, text_vecs: Optional[np.ndarray] = None) -> np.ndarray:
        """float32 (N, F_img) image features [+ (N, D) text vectors, zero rows = no text] -> (N, F)."""
        return head_features(image_feats, text_vecs, self.image_log, self.text_log, self.text_dim)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """float (N, F) head features -> float32 (N, C) head logits (without the zero-shot part)."""
        return (x @ self.weights + self.bias).astype(np.float32)

    def columns_for(self, classes: Sequence[str], steps: Sequence[str]) -> Optional[np.ndarray]:
        """For a dataset's class names: the head column of each, or None unless they are the head's classes."""
        mine = {normalize_name(c, steps): i for i, c in enumerate(self.classes)}
        theirs = [normalize_name(c, steps) for c in classes]
        if len(theirs) != len(mine) or len(set(theirs)) != len(theirs) or set(theirs) != set(mine):
            return None
        return np.array([mine[c] for c in theirs], dtype=np.int64)

    def adjust(self, classes: Sequence[str], scores: np.ndarray, features: Optional[np.ndarray],
               valid: np.ndarray, steps: Sequence[str]) -> np.ndarray:
        """(N, C) zero-shot logits -> the head's logits for the valid rows when ``classes`` match, else unchanged."""
        cols = self.columns_for(classes, steps)
        if cols is None or features is None or not valid.any():
            return scores
        logger.info("%d classes match the trained head; using it", len(cols))
        out = scores.copy()
        head = self.logits(self.features(features[valid]))[:, cols]
        out[valid] = head + (scores[valid] if self.zero_shot else 0.0)
        return out


def head_features(image_feats: np.ndarray, text_vecs: Optional[np.ndarray], image_log: bool, text_log: bool,
                  text_dim: int) -> np.ndarray:
    """(N, F_img) [+ (N, D)] -> float64 (N, F_img + text_dim): each part L2-normalised, text zeros when absent."""
    n = len(image_feats)
    parts = [unit_features(image_feats, np.ones(n, dtype=bool), center=False, log=image_log)]
    if text_dim:
        text = np.zeros((n, text_dim))
        if text_vecs is not None:
            has = np.abs(text_vecs).sum(axis=1) > 0
            if has.any():
                text[has] = unit_features(text_vecs[has], np.ones(int(has.sum()), dtype=bool), center=False,
                                          log=text_log)
        parts.append(text)
    return np.concatenate(parts, axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, base: Optional[np.ndarray] = None,
                 l2: float = DEFAULT_L2, iterations: int = DEFAULT_ITERATIONS) -> Dict[str, np.ndarray]:
    """Multinomial logistic regression by Nesterov-accelerated gradient descent.

    x: float (N, F); y: int (N,) labels in 0..n_classes-1; base: optional float
    (N, C) logits the model adds to (zero-shot scores). Minimises the mean
    cross-entropy of softmax(base + x W + b) + l2/2 |W|^2 with step 1/L (L from
    the spectral norm of [x, 1]). Returns {"weights": (F, C), "bias": (C,)}, float32.
    """
    n, f = x.shape
    xa = np.concatenate([x.astype(np.float64), np.ones((n, 1))], axis=1)
    target = np.zeros((n, n_classes))
    target[np.arange(n), y] = 1.0
    offset = np.zeros((n, n_classes)) if base is None else base.astype(np.float64)
    lipschitz = 0.5 * float(np.linalg.norm(xa, 2)) ** 2 / n + l2
    reg = np.ones((f + 1, 1))
    reg[-1] = 0.0  # the bias is not penalised
    w = np.zeros((f + 1, n_classes))
    prev, momentum = w.copy(), 1.0
    for _ in range(iterations):
        grad = xa.T @ (softmax(offset + xa @ w, axis=1) - target) / n + l2 * reg * w
        step = w - grad / lipschitz
        nxt = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * momentum * momentum))
        w, prev = step + ((momentum - 1.0) / nxt) * (step - prev), step
        momentum = nxt
    return {"weights": prev[:-1].astype(np.float32), "bias": prev[-1].astype(np.float32)}


def head_config(manifest: Manifest) -> Dict[str, bool]:
    """How features are formed for this model: {"image_log", "text_log"} from the manifest."""
    return {"image_log": manifest.transductive is not None and manifest.transductive.log_features,
            "text_log": manifest.score.logit == "log"}


def read_head(path: Path) -> Head:
    """Read a head written by :func:`zeroshot.head.save_head`; ValueError naming the file if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            head = Head([str(c) for c in data["classes"]], data["weights"].astype(np.float32),
                        data["bias"].astype(np.float32), bool(meta["zero_shot"]), bool(meta["image_log"]),
                        bool(meta["text_log"]), int(meta["text_dim"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a head file: {type(exc).__name__}: {exc}") from exc
    if head.weights.shape[1] != len(head.classes) or head.bias.shape != (len(head.classes),):
        raise ValueError(f"{path}: head weights {head.weights.shape} / bias {head.bias.shape} do not match "
                         f"{len(head.classes)} classes")
    return head


def load_head(model_dir: Path, manifest: Manifest, verify: bool = True) -> Optional[Head]:
    """The model folder's head (None without a ``head`` section), its file checked against its sha256.

    Raises FileNotFoundError/ValueError naming the file when it is missing,
    corrupt, or its classes differ from the manifest's ``head.classes``.
    """
    section = manifest.head
    if section is None:
        return None
    path = resolve_file(manifest, Path(model_dir), HEAD_KEY, verify)
    head = read_head(path)
    if head.classes != list(section.classes):
        raise ValueError(f"{path}: head classes {head.classes[:5]}... differ from the manifest's head.classes")
    logger.debug("head %s: %d classes, zero_shot=%s", path, len(head.classes), head.zero_shot)
    return head
