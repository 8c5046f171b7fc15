"""From image and class vectors to one class per image.

The manifest's ``score`` section says how the logits are formed: a
``similarity`` between image and class vectors (dot or cosine), then the
``logit`` transform of that similarity (linear or log) times ``scale``. Its
``balance`` section says how the class frequencies within one dataset are
treated before the argmax: ``sinkhorn`` assumes them equal, ``estimated``
estimates them from the dataset's own predictions, ``em`` re-estimates the
priors by EM (Saerens et al. 2002).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple, Union

import numpy as np

from .manifest import BalanceConfig, PropagateConfig, ScoreConfig, TransductiveConfig

logger = logging.getLogger(__name__)

_EPS = 1e-12


def similarities(image_vecs: np.ndarray, class_vecs: np.ndarray, similarity: str) -> np.ndarray:
    """float32 (N, D) x (C, D) -> float32 (N, C): ``dot`` products or ``cosine`` (both sides L2-normalised)."""
    img, cls = image_vecs.astype(np.float32), class_vecs.astype(np.float32)
    if similarity == "cosine":
        img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), _EPS)
        cls = cls / np.maximum(np.linalg.norm(cls, axis=1, keepdims=True), _EPS)
    return img @ cls.T


def class_logits(image_vecs: np.ndarray, class_vecs: np.ndarray, cfg: ScoreConfig) -> np.ndarray:
    """float32 (N, D) x (C, D) -> float32 (N, C) logits as the manifest's score section ``cfg`` says.

    The similarity s (:func:`similarities`) goes through the ``logit``
    transform: ``linear`` gives scale * s, ``log`` gives scale * log(s) (for
    probability-like s, e.g. p . w of two distributions); an optional ``bias``
    is added (SigLIP's logit bias: scale * cos + bias).
    """
    sims = similarities(image_vecs, class_vecs, cfg.similarity)
    transformed = np.log(np.maximum(sims, _EPS)) if cfg.logit == "log" else sims
    return (cfg.scale * transformed + cfg.bias).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically safe softmax (the max is subtracted first); -inf entries get 0."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def sinkhorn(probs: np.ndarray, iterations: int, target: Optional[np.ndarray] = None) -> np.ndarray:
    """Balance an (N, C) probability matrix towards class masses ``target`` (default: equal).

    Alternately scales columns to sum N x target (equal: N/C over the classes
    that have any mass) and rows to sum 1. Zero columns (masked classes) stay zero.
    """
    p = probs.astype(np.float64)
    n, _ = p.shape
    live = p.sum(axis=0) > 0
    share = np.full(live.sum(), 1.0 / max(int(live.sum()), 1)) if target is None else target[live]
    for _ in range(iterations):
        col = p.sum(axis=0)
        p[:, live] *= n * share / np.maximum(col[live], _EPS)
        p /= np.maximum(p.sum(axis=1, keepdims=True), _EPS)
    return p


def em_priors(probs: np.ndarray, iterations: int, pseudo_count: float = 0.0, temperature: float = 1.0) -> np.ndarray:
    """Class priors (C,) of an (N, C) probability matrix by EM (Saerens et al. 2002); they sum to 1.

    The probabilities, sharpened or softened as ``probs ** (1 / temperature)``
    (softmax(logits / temperature)), are taken as posteriors under equal
    priors over the classes with any mass. Each round adjusts them by the
    current priors and sets the priors to the mean adjusted posterior,
    smoothed by ``pseudo_count`` images per class (a Dirichlet prior towards
    equal classes that keeps a class from vanishing). Masked classes get 0.
    """
    p = np.power(np.maximum(probs.astype(np.float64), 0.0), 1.0 / temperature)
    p /= np.maximum(p.sum(axis=1, keepdims=True), _EPS)
    live = p.sum(axis=0) > 0
    k = max(int(live.sum()), 1)
    priors = np.where(live, 1.0 / k, 0.0)
    for _ in range(iterations):
        adjusted = p * priors[None, :]
        adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), _EPS)
        priors = np.where(live, adjusted.sum(axis=0) + pseudo_count, 0.0)
        priors /= max(float(priors.sum()), _EPS)
    return priors


def balance_probs(probs: np.ndarray, cfg: BalanceConfig, target: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, C) probabilities balanced as the manifest's ``balance`` section says.

    ``sinkhorn``: towards equal class masses; ``estimated``: towards the
    class shares ``target`` (equal when None; see :func:`predict`); ``em``:
    re-weighted by the EM estimate of the class priors (``em_iterations``,
    ``pseudo_count``, ``temperature``).
    """
    if cfg.method == "em":
        iterations = cfg.iterations if cfg.em_iterations is None else cfg.em_iterations
        priors = em_priors(probs, iterations, cfg.pseudo_count, cfg.temperature)
        adjusted = probs.astype(np.float64) * priors[None, :]
        return adjusted / np.maximum(adjusted.sum(axis=1, keepdims=True), _EPS)
    return sinkhorn(probs, cfg.iterations, target if cfg.method == "estimated" else None)


def estimate_shares(probs: np.ndarray, valid: np.ndarray, class_mask: np.ndarray, pseudo_count: float) -> np.ndarray:
    """Class shares (C,) from the argmax counts of the valid rows, plus ``pseudo_count`` per allowed class."""
    counts = np.bincount(probs[valid].argmax(axis=1), minlength=probs.shape[1]).astype(np.float64)
    shares = np.where(class_mask, counts + pseudo_count, 0.0)
    return shares / max(float(shares.sum()), _EPS)


def _enough(section: Union[BalanceConfig, TransductiveConfig, None], n: int, n_classes: int) -> bool:
    """True when a balance or transductive section is set and the dataset has enough images for it."""
    return section is not None and n >= section.min_images_per_class * n_classes


def _balanced(logits: np.ndarray, valid: np.ndarray, class_mask: np.ndarray,
              balance: Optional[BalanceConfig], target: Optional[np.ndarray] = None) -> np.ndarray:
    """Softmax of masked logits, invalid rows set to the prior, balanced if enabled: (N, C)."""
    masked = np.where(class_mask[None, :], logits, -np.inf)
    probs = softmax(masked, axis=1)
    prior = probs[valid].mean(axis=0) if valid.any() else class_mask / max(class_mask.sum(), 1)
    probs[~valid] = prior
    if _enough(balance, len(probs), int(class_mask.sum())):
        probs = balance_probs(probs, balance, target)
    return probs


def unit_features(features: np.ndarray, valid: np.ndarray, center: bool, log: bool = False) -> np.ndarray:
    """(N, D) -> L2-normalised rows, centred on the valid rows' mean first if ``center``.

    ``log``: the features are probabilities; use their logarithm with each
    row's mean removed (equal to the logits up to a per-row constant).
    """
    f = features.astype(np.float64)
    if log:
        f = np.log(np.maximum(f, 1e-30))
        f -= f.mean(axis=1, keepdims=True)
    if center and valid.any():
        f = f - f[valid].mean(axis=0, keepdims=True)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _EPS)


def refine(logits: np.ndarray, f: np.ndarray, valid: np.ndarray, class_mask: np.ndarray,
           balance: Optional[BalanceConfig], cfg: TransductiveConfig,
           target: Optional[np.ndarray] = None) -> np.ndarray:
    """Transductive prototypes: (N, C) probabilities after ``cfg.iterations`` rounds.

    ``f``: the image features as :func:`unit_features` makes them for ``cfg``
    (computed once per dataset by :func:`predict`). Each round forms one
    prototype per class as the probability-weighted mean of the valid rows of
    ``f``, and adds ``weight * scale * cosine(image, prototype)`` to the
    zero-shot ``logits``.
    """
    probs = _balanced(logits, valid, class_mask, balance, target)
    step = cfg.weight * cfg.scale
    for _ in range(cfg.iterations):
        weights = np.where(valid[:, None], probs, 0.0)
        protos = weights.T @ f
        protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), _EPS)
        probs = _balanced(logits + step * (f @ protos.T), valid, class_mask, balance, target)
    return probs


def knn_graph(f: np.ndarray, k: int, power: float, block: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows of unit-row ``f`` (N, D): (indices int64 (N, k), weights float64 (N, k)).

    Weights are max(cosine, 0) ** ``power``. The cosines are computed
    ``block`` rows at a time, so memory stays at block x N floats.
    """
    n = len(f)
    k = min(int(k), n - 1)
    f32 = f.astype(np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    weights = np.empty((n, k), dtype=np.float64)
    for start in range(0, n, block):
        sims = f32[start:start + block] @ f32.T
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf  # not its own neighbour
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        idx[start:start + block] = near
        weights[start:start + block] = np.maximum(np.take_along_axis(sims, near, axis=1), 0.0) ** power
    return idx, weights


def propagate(log_probs: np.ndarray, f: np.ndarray, cfg: PropagateConfig) -> np.ndarray:
    """Label propagation (Zhou et al. 2004) of (N, C) log-probabilities over the kNN graph of unit-row features f.

    The graph joins every image to its ``neighbours`` nearest images
    (:func:`knn_graph`, weights cosine ** ``power``), made symmetric and
    normalised as S = D^-1/2 W D^-1/2; ``iterations`` rounds of
    F <- alpha S F + (1 - alpha) Y, from Y = ``log_probs``, let the images of
    a tight cluster agree while each keeps (1 - alpha) of its own evidence.
    Log-probabilities are spread, not probabilities: a geometric mean keeps
    the faint second choices that the balancing and the prototypes need to
    tell two weak classes apart (spreading probabilities swapped such
    classes on the yardsticks). Returns float64 (N, C) logits.
    """
    n = len(log_probs)
    y = log_probs.astype(np.float64)
    if n < 2:
        return y
    idx, w = knn_graph(f, cfg.neighbours, cfg.power)
    src = np.repeat(np.arange(n), idx.shape[1])
    rows, cols = np.concatenate([src, idx.ravel()]), np.concatenate([idx.ravel(), src])
    vals = np.concatenate([w.ravel(), w.ravel()])
    degree = np.bincount(rows, weights=vals, minlength=n)
    vals = vals / np.sqrt(np.maximum(degree[rows] * degree[cols], _EPS))
    alpha = cfg.alpha
    out = y.copy()
    for _ in range(cfg.iterations):
        spread = np.stack([np.bincount(rows, weights=vals * out[cols, c], minlength=n)
                           for c in range(y.shape[1])], axis=1)
        out = alpha * spread + (1.0 - alpha) * y
    return out


def propagated_logits(logits: np.ndarray, f: np.ndarray, valid: np.ndarray, class_mask: np.ndarray,
                      cfg: PropagateConfig) -> np.ndarray:
    """float32 (N, C): the valid rows' logits after :func:`propagate`; other rows and masked classes unchanged.

    ``cfg`` is the transductive section's ``propagate``; datasets with more
    than its ``max_images`` valid rows are left as they are (the graph costs
    N^2 D), and so is a dataset with fewer than two.
    """
    n_valid = int(valid.sum())
    if n_valid < 2:
        return logits
    if cfg.max_images is not None and n_valid > cfg.max_images:
        logger.info("label propagation skipped: %d images (more than %d)", n_valid, cfg.max_images)
        return logits
    allowed = np.flatnonzero(class_mask)
    sub = logits[np.ix_(valid, allowed)].astype(np.float64)
    shifted = sub - sub.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    out = logits.copy()
    out[np.ix_(valid, allowed)] = propagate(log_probs, f[valid], cfg)
    return out.astype(np.float32)


def predict(logits: np.ndarray, valid: np.ndarray, class_mask: np.ndarray,
            balance: Optional[BalanceConfig], features: Optional[np.ndarray] = None,
            transductive: Optional[TransductiveConfig] = None) -> np.ndarray:
    """Class index per image.

    logits: float32 (N, C) (:func:`class_logits`); valid: bool (N,) rows that come from a
    decoded image; class_mask: bool (C,) classes that may be predicted
    (duplicates and empty names are masked); features: float32 (N, D) image
    features for the transductive step (used when ``transductive`` is set;
    with its ``propagate`` section the logits first go through label
    propagation over the images' kNN graph, :func:`propagated_logits`).
    Rows that are not valid get the mean probability of the valid rows (the
    dataset's prior), so they still get a sensible class. With the
    ``estimated`` balance the whole step runs ``rounds`` more times, each
    balancing towards the class shares the previous run predicted (smoothed
    by ``pseudo_count`` images per class), so the class proportions are
    estimated from the data instead of assumed equal. Returns int64 (N,).
    """
    n = logits.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    use_features = features is not None and _enough(transductive, int(valid.sum()), int(class_mask.sum()))
    rounds = balance.rounds if balance is not None and balance.method == "estimated" else 0
    target: Optional[np.ndarray] = None
    f = unit_features(features, valid, transductive.center, transductive.log_features) if use_features else None
    if use_features and transductive.propagate is not None:
        logits = propagated_logits(logits, f, valid, class_mask, transductive.propagate)
    for r in range(rounds + 1):
        if r:
            target = estimate_shares(probs, valid, class_mask, balance.pseudo_count)
        if use_features:
            probs = refine(logits, f, valid, class_mask, balance, transductive, target)
        else:
            probs = _balanced(logits, valid, class_mask, balance, target)
    return np.argmax(probs, axis=1).astype(np.int64)
