"""train.vocab_head: held-out vocabularies, the vocabulary head's training, the bank + head mixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from train.concepts import ConceptBank
from train.text_encoder import ConceptTextEncoder
from train.tower_loop import train
from train.tower_run import TrainConfig, encode_texts
from train.tiny_model import build_tiny_model
from train.tower_model import TinyTextEncoder
from train.vocab_head import BankHeadTextEncoder, holdout_bank, holdout_forms, mix_weights, vocab_run
from zeroshot.text import normalize_name

STEPS = ["strip", "collapse_spaces", "lowercase", "yo", "trailing_punct"]


def norm(text: str) -> str:
    return normalize_name(text, STEPS)


def _bank(n_concepts: int = 4, dim: int = 16) -> ConceptBank:
    texts = ["слон", "слоны", "африканский слон", "гаечный ключ", "ключ", "кот", "кошка", "собака", "пес"]
    concept_of = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3], dtype=np.int64)
    dist = np.zeros((n_concepts, dim), dtype=np.float32)
    dist[np.arange(n_concepts), np.arange(n_concepts)] = 1.0
    return ConceptBank(texts, concept_of, dist, [f"c{i}" for i in range(n_concepts)])


def test_holdout_removes_names_and_inflections() -> None:
    forms = holdout_forms(["Слон", "гаечный ключ"], norm)
    assert {"слон", "слоны", "гаечный ключ", "гаечные ключи"} <= set(forms)
    bank = holdout_bank(_bank(), forms)
    assert bank.texts == ["африканский слон", "ключ", "кот", "кошка", "собака", "пес"]
    assert bank.concept_of.tolist() == [0, 1, 2, 2, 3, 3] and bank.distributions.shape == (4, 16)


def test_bank_head_mixture_is_a_distribution() -> None:
    torch.manual_seed(0)

    class Unit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = TinyTextEncoder(30, 8)

        def forward(self, ids, mask):
            return torch.nn.functional.normalize(self.enc(ids, mask), dim=-1)

    bank = _bank(dim=6)
    entries = np.random.default_rng(0).normal(size=(len(bank.texts), 8)).astype(np.float32)
    entries /= np.linalg.norm(entries, axis=1, keepdims=True)
    concept = ConceptTextEncoder(Unit(), entries, bank.entry_index(), bank.distributions, 20.0, 2).eval()
    head = torch.nn.Linear(8, 6)
    ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        both = BankHeadTextEncoder(concept, head, 0.25)(ids, mask).numpy()
        want = mix_weights(concept(ids, mask)[0].numpy(), torch.softmax(head(concept.use(ids, mask)), -1).numpy(), 0.25)
    np.testing.assert_allclose(both, want, atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError):
        BankHeadTextEncoder(concept, head, 1.5)


def test_vocab_head_learns_the_vocabulary(tmp_path: Path) -> None:
    """Trained on the bank's entries against the concepts' distributions, the head ranks each entry's concept first."""
    model = tmp_path / "prob_model"
    build_tiny_model(model, overrides={"score": {"similarity": "dot", "logit": "log", "scale": 1.0}})
    bank = _bank()
    cfg = TrainConfig(steps=60, batch_size=9, lr=0.05, hard_negatives=0.0, checkpoint_every=1000, val_fraction=0.0)
    run = vocab_run(bank, model, tmp_path / "run", cfg)
    result = train(run)
    assert result["final_loss"] < 0.5 * result["first_loss"]
    w = encode_texts(run.tower, run.tokenizer, bank.texts, torch.device("cpu")).numpy()
    assert (w[:, :4].argmax(axis=1) == bank.concept_of).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)


def test_vocab_bank_holds_out_names_from_every_vocabulary_file() -> None:
    from train.vocab_head import vocab_bank

    held = vocab_bank(["Слон", "гаечный ключ"])
    assert not {"слон", "слоны", "гаечный ключ", "гаечные ключи"} & set(held.texts)
    assert {"африканский слон", "индийский слон"} <= set(held.texts)
    assert held.distributions.shape == (len(held.names), 1000)


def test_trained_head_is_cached_by_its_training_data(tmp_path: Path, monkeypatch) -> None:
    """A second call with the same bank and settings loads the cached head; a different bank trains anew."""
    import train.vocab_head as vh

    model = tmp_path / "prob_model"
    build_tiny_model(model, overrides={"score": {"similarity": "dot", "logit": "log", "scale": 1.0}})
    cfg = TrainConfig(steps=5, batch_size=9, lr=0.05, hard_negatives=0.0, checkpoint_every=1000, val_fraction=0.0)
    bank = _bank()
    first = vh.trained_head(bank, model, tmp_path / "heads", cfg)
    assert len(list((tmp_path / "heads").glob("head_*.npz"))) == 1

    def no_training(run):
        raise AssertionError("trained again although cached")

    monkeypatch.setattr(vh, "train", no_training)
    again = vh.trained_head(bank, model, tmp_path / "heads", cfg)
    np.testing.assert_array_equal(again.weight.detach().numpy(), first.weight.detach().numpy())
    held = holdout_bank(bank, ["слон"])
    assert vh.bank_key(held, cfg) != vh.bank_key(bank, cfg)
    with pytest.raises(AssertionError, match="trained again"):
        vh.trained_head(held, model, tmp_path / "heads", cfg)
    w = vh.head_weights(first, np.random.default_rng(0).normal(size=(3, first.in_features)).astype(np.float32))
    assert w.shape == (3, 16)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
