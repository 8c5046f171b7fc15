"""Scores to classes: softmax, Sinkhorn balancing, prototypes, masks and undecodable rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zeroshot.manifest import BalanceConfig, ScoreConfig, TransductiveConfig
from zeroshot.scoring import class_logits, predict, similarities, sinkhorn, softmax

BALANCE = BalanceConfig(method="sinkhorn", iterations=5)
TRANS = TransductiveConfig(iterations=3, weight=1.0, scale=10.0, center=True)


def test_softmax_is_safe_for_huge_logits() -> None:
    p = softmax(np.array([[1000.0, 999.0, -np.inf]]), axis=1)
    assert np.isfinite(p).all() and p[0, 2] == 0 and p[0, 0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_logits_cosine_and_log_dot() -> None:
    img = np.array([[3.0, 4.0]], dtype=np.float32)
    cls = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert similarities(img, cls, "dot") == pytest.approx(np.array([[3.0, 8.0]]))
    assert similarities(img, cls, "cosine") == pytest.approx(np.array([[0.6, 0.8]]), rel=1e-5)
    cos = class_logits(img, cls, ScoreConfig(similarity="cosine", logit="linear", scale=10.0))
    assert cos == pytest.approx(np.array([[6.0, 8.0]]), rel=1e-5)
    log = class_logits(img, cls, ScoreConfig(similarity="dot", logit="log", scale=2.0))
    assert log == pytest.approx(2.0 * np.log(np.array([[3.0, 8.0]])), rel=1e-5)


def test_sinkhorn_evens_out_a_skewed_matrix() -> None:
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(60, 3)) + np.array([2.0, 0.0, 0.0]), axis=1)
    assert np.bincount(p.argmax(1), minlength=3)[0] > 40
    q = sinkhorn(p, 20)
    assert q.sum(axis=0) == pytest.approx(np.full(3, 20.0), rel=0.05)
    assert q.sum(axis=1) == pytest.approx(np.ones(60))


def _clusters(seed: int = 0):
    """Three tight feature clusters; zero-shot scores that point the right way only weakly."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), 40)
    centers = rng.normal(size=(3, 32)) * 3
    feats = centers[truth] + rng.normal(size=(120, 32))
    scores = 0.6 * np.eye(3)[truth] + rng.normal(scale=0.6, size=(120, 3))
    return scores.astype(np.float32), feats.astype(np.float32), truth


def test_prototypes_use_the_feature_clusters() -> None:
    scores, feats, truth = _clusters()
    valid, mask = np.ones(120, bool), np.ones(3, bool)
    base = (predict(scores, valid, mask, BALANCE) == truth).mean()
    refined = (predict(scores, valid, mask, BALANCE, feats, TRANS) == truth).mean()
    assert refined > base + 0.1 and refined > 0.95


def test_prototypes_skipped_when_too_few_images_per_class() -> None:
    scores, feats, _ = _clusters()
    valid, mask = np.ones(120, bool), np.ones(3, bool)
    few = dataclasses.replace(TRANS, min_images_per_class=1000)
    assert (predict(scores, valid, mask, BALANCE, feats, few) == predict(scores, valid, mask, BALANCE)).all()


def test_masked_classes_are_never_predicted_and_invalid_rows_get_the_prior() -> None:
    # valid rows: class 0 clearly, class 1 barely; the prior (their mean probability) favours class 0
    logits = np.array([[5.0, 0.0, 9.0], [0.0, 1.0, 9.0], [0.0, 9.0, 0.0]], dtype=np.float32)
    valid = np.array([True, True, False])
    mask = np.array([True, True, False])
    pred = predict(logits, valid, mask, None)
    assert pred.tolist() == [0, 1, 0], "the invalid row ignores its own logits (which say 1) and takes the prior"
    assert predict(logits, np.ones(3, bool), mask, None).tolist() == [0, 1, 1]


def test_all_invalid_rows_still_get_a_class() -> None:
    """No valid row: the prior is uniform over the unmasked classes; argmax takes the first of them."""
    logits = np.array([[9.0, 0.0, 0.0, 0.0]] * 4, np.float32)
    pred = predict(logits, np.zeros(4, bool), np.array([False, False, True, True]), BALANCE)
    assert pred.tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("key, value", [("center", "no"), ("log_features", 1), ("min_images_per_class", -1),
                                        ("iterations", 1.5), ("weight", "1")])
def test_manifest_rejects_a_mistyped_transductive_section(tmp_path, key, value) -> None:
    from train.tiny_model import build_tiny_model

    section = {"method": "prototypes", "iterations": 2, "weight": 1.0, "scale": 10.0, "center": True}
    with pytest.raises(ValueError, match=f"transductive.{key}"):
        build_tiny_model(tmp_path, overrides={"transductive": {**section, key: value}})


def test_logit_bias_is_added_after_the_scale() -> None:
    """SigLIP: logit = scale * cos + bias."""
    img = np.array([[3.0, 4.0]], dtype=np.float32)
    cls = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    out = class_logits(img, cls, ScoreConfig(similarity="cosine", logit="linear", scale=10.0, bias=-12.5))
    assert out == pytest.approx(np.array([[6.0 - 12.5, 8.0 - 12.5]]), rel=1e-5)


def _imbalanced(seed: int = 0):
    """Posteriors under equal priors for a 3-class set whose true class shares are 0.7 / 0.2 / 0.1."""
    rng = np.random.default_rng(seed)
    shares = np.array([0.7, 0.2, 0.1])
    truth = rng.choice(3, size=600, p=shares)
    loglik = 1.2 * np.eye(3)[truth] + rng.normal(size=(600, 3))
    return softmax(loglik, axis=1), truth, shares


def test_em_priors_estimate_the_class_shares_and_beat_equal_balancing() -> None:
    from zeroshot.scoring import balance_probs, em_priors

    probs, truth, shares = _imbalanced()
    priors = em_priors(probs, 50)
    assert priors == pytest.approx(shares, abs=0.06) and priors.sum() == pytest.approx(1.0)
    adjusted = balance_probs(probs, BalanceConfig(method="em", iterations=50))
    assert adjusted.sum(axis=1) == pytest.approx(np.ones(len(probs)))
    em_acc = (adjusted.argmax(1) == truth).mean()
    assert em_acc > (probs.argmax(1) == truth).mean() + 0.05
    assert em_acc > (sinkhorn(probs, 20).argmax(1) == truth).mean() + 0.1


def test_em_pseudo_count_pulls_towards_equal_and_masked_classes_stay_zero() -> None:
    from zeroshot.scoring import em_priors

    probs, _, _ = _imbalanced()
    probs = np.concatenate([probs, np.zeros((len(probs), 1))], axis=1)
    free, smooth = em_priors(probs, 50, 0.0), em_priors(probs, 50, 1000.0)
    assert free[3] == 0 and smooth[3] == 0
    assert np.ptp(smooth[:3]) < np.ptp(free[:3])
    sharp = em_priors(probs, 50, 0.0, temperature=0.5)
    assert not np.allclose(sharp, free)


def test_sinkhorn_towards_a_target_and_estimated_shares() -> None:
    from zeroshot.scoring import estimate_shares

    probs, truth, shares = _imbalanced()
    q = sinkhorn(probs, 50, shares)
    assert q.sum(axis=0) / len(q) == pytest.approx(shares, abs=0.01)
    est = estimate_shares(q, np.ones(len(q), bool), np.array([True, True, False]), pseudo_count=1.0)
    assert est[2] == 0 and est.sum() == pytest.approx(1.0) and est[0] > 0.6


def test_estimated_balance_keeps_an_imbalanced_set_imbalanced() -> None:
    probs, truth, _ = _imbalanced()
    scores = np.log(probs).astype(np.float32)
    valid, mask = np.ones(len(scores), bool), np.ones(3, bool)
    equal = predict(scores, valid, mask, BalanceConfig(method="sinkhorn", iterations=3))
    est = predict(scores, valid, mask, BalanceConfig(method="estimated", iterations=3, rounds=10, pseudo_count=2.0))
    assert (est == truth).mean() > (equal == truth).mean() + 0.1
    once = predict(scores, valid, mask, BalanceConfig(method="estimated", iterations=3, rounds=0))
    assert (once == equal).all()  # no rounds: balancing towards equal shares, as Sinkhorn does


def test_predict_with_em_balance_section() -> None:
    probs, truth, _ = _imbalanced()
    scores = np.log(probs).astype(np.float32)
    valid, mask = np.ones(len(scores), bool), np.ones(3, bool)
    em = predict(scores, valid, mask, BalanceConfig(method="em", iterations=30, pseudo_count=1.0))
    sk = predict(scores, valid, mask, BalanceConfig(method="sinkhorn", iterations=20))
    assert (em == truth).mean() > (sk == truth).mean() + 0.1
