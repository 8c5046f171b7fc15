"""Label propagation over the images' kNN graph (zeroshot.scoring.propagate), before the prototypes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zeroshot.manifest import BalanceConfig, PropagateConfig, TransductiveConfig, to_dict
from zeroshot.scoring import knn_graph, predict, propagated_logits, unit_features

PROP = PropagateConfig(neighbours=5, alpha=0.5, power=3.0, iterations=20, max_images=10000)


def _clusters(seed: int = 0, per_cluster: int = 30, classes: int = 4):
    """Two tight feature clusters per class; noisy zero-shot log-scores right for about 60% of the images."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(classes), 2 * per_cluster)
    cluster = np.repeat(np.arange(2 * classes), per_cluster)
    centers = rng.normal(size=(2 * classes, 48)) * 4
    feats = centers[cluster] + rng.normal(size=(len(truth), 48))
    logits = 1.0 * np.eye(classes)[truth] + rng.normal(scale=1.0, size=(len(truth), classes))
    return logits.astype(np.float32), unit_features(feats, np.ones(len(truth), bool), True), truth


def test_knn_graph_finds_the_nearest_other_rows_in_any_block_size() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(37, 8))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sims = f @ f.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.sort(np.argsort(-sims, axis=1)[:, :4], axis=1)
    for block in (1, 5, 37, 100):
        idx, w = knn_graph(f, 4, 2.0, block=block)
        assert (np.sort(idx, axis=1) == expected).all()
        assert w == pytest.approx(np.maximum(np.take_along_axis(sims, idx, 1), 0.0) ** 2)
        assert not (idx == np.arange(37)[:, None]).any(), "an image is not its own neighbour"


def test_propagation_lets_a_cluster_agree() -> None:
    logits, f, truth = _clusters()
    valid, mask = np.ones(len(truth), bool), np.ones(4, bool)
    before = (logits.argmax(1) == truth).mean()
    after = (propagated_logits(logits, f, valid, mask, PROP).argmax(1) == truth).mean()
    assert before < 0.7 and after > before + 0.15, "alpha 0.5: each image keeps half of its own evidence"
    strong = (propagated_logits(logits, f, valid, mask, dataclasses.replace(PROP, alpha=0.9)).argmax(1) == truth).mean()
    assert strong > 0.95


def test_propagation_raises_the_end_to_end_accuracy() -> None:
    """predict() runs it when the transductive section has ``propagate`` (no prototype rounds here)."""
    logits, f, truth = _clusters(seed=3)
    valid, mask = np.ones(len(truth), bool), np.ones(4, bool)
    balance = BalanceConfig(method="sinkhorn", iterations=3)
    trans = TransductiveConfig(iterations=0, weight=1.0, scale=10.0, center=True)
    plain = (predict(logits, valid, mask, balance, f, trans) == truth).mean()
    spread = (predict(logits, valid, mask, balance, f, dataclasses.replace(trans, propagate=PROP)) == truth).mean()
    assert spread > plain + 0.1


def test_invalid_rows_and_masked_classes_are_left_alone() -> None:
    logits, f, truth = _clusters()
    valid = np.ones(len(truth), bool)
    valid[::7] = False
    mask = np.array([True, True, False, True])
    out = propagated_logits(logits, f, valid, mask, PROP)
    assert (out[~valid] == logits[~valid]).all()
    assert (out[:, 2] == logits[:, 2]).all()
    assert np.isfinite(out).all()
    assert 2 not in predict(out, valid, mask, None)
    # only valid rows are graph nodes: an invalid row's features change nothing
    f2 = f.copy()
    f2[~valid] = f2[0]
    assert np.array_equal(propagated_logits(logits, f2, valid, mask, PROP), out)


def test_large_datasets_and_single_images_are_skipped() -> None:
    logits, f, truth = _clusters()
    valid, mask = np.ones(len(truth), bool), np.ones(4, bool)
    assert np.array_equal(propagated_logits(logits, f, valid, mask, dataclasses.replace(PROP, max_images=100)), logits)
    one = np.zeros(len(truth), bool)
    one[0] = True
    assert np.array_equal(propagated_logits(logits, f, one, mask, PROP), logits)


def test_fewer_images_than_neighbours() -> None:
    logits, f, truth = _clusters()
    out = propagated_logits(logits[:4], f[:4], np.ones(4, bool), np.ones(4, bool), PROP)
    assert out.shape == (4, 4) and np.isfinite(out).all()


@pytest.mark.parametrize("key, value", [("neighbours", 0), ("alpha", 1.0), ("alpha", "0.5"), ("iterations", -1),
                                        ("power", 0), ("max_images", 1.5)])
def test_manifest_rejects_a_mistyped_propagate_section(tmp_path, key, value) -> None:
    from train.tiny_model import build_tiny_model

    section = {"method": "prototypes", "iterations": 2, "weight": 1.0, "scale": 10.0, "center": True,
               "propagate": {**to_dict(PROP), key: value}}
    with pytest.raises(ValueError, match=f"transductive.propagate.{key}"):
        build_tiny_model(tmp_path, overrides={"transductive": section})
