"""Scores to classes: softmax, Sinkhorn balancing, prototypes, masks and undecodable rows."""

from __future__ import annotations

import numpy as np
import pytest

from zeroshot.scoring import class_logits, predict, similarities, sinkhorn, softmax

BALANCE = {"method": "sinkhorn", "iterations": 5}
TRANS = {"method": "prototypes", "iterations": 3, "weight": 1.0, "scale": 10.0, "center": True}


def test_softmax_is_safe_for_huge_logits() -> None:
    p = softmax(np.array([[1000.0, 999.0, -np.inf]]), axis=1)
    assert np.isfinite(p).all() and p[0, 2] == 0 and p[0, 0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_logits_cosine_and_log_dot() -> None:
    img = np.array([[3.0, 4.0]], dtype=np.float32)
    cls = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert similarities(img, cls, "dot") == pytest.approx(np.array([[3.0, 8.0]]))
    assert similarities(img, cls, "cosine") == pytest.approx(np.array([[0.6, 0.8]]), rel=1e-5)
    cos = class_logits(img, cls, {"similarity": "cosine", "logit": "linear", "scale": 10.0})
    assert cos == pytest.approx(np.array([[6.0, 8.0]]), rel=1e-5)
    log = class_logits(img, cls, {"similarity": "dot", "logit": "log", "scale": 2.0})
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
    few = dict(TRANS, min_images_per_class=1000)
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
    out = class_logits(img, cls, {"similarity": "cosine", "logit": "linear", "scale": 10.0, "bias": -12.5})
    assert out == pytest.approx(np.array([[6.0 - 12.5, 8.0 - 12.5]]), rel=1e-5)
