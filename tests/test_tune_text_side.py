"""train.tune_default's text side: head_alpha mixes the learned vocabulary head into the bank's class weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.concepts import ConceptBank, concept_similarities, mix
from train.tune_default import TextSide, _setting
from train.vocab_head import head_weights, mix_weights


def _side(tmp_path: Path, s, holdout: bool):
    """A TextSide whose bank, query embeddings and head are given (no USE-m, no training)."""
    rng = np.random.default_rng(0)
    texts = ["кот", "кошка", "собака", "пес", "слон", "мышь", "лиса"]
    dist = np.eye(6, 10, dtype=np.float32)  # more concepts than the setting's top_k (5)
    bank = ConceptBank(texts, np.array([0, 0, 1, 2, 3, 4, 5]), dist, [f"c{i}" for i in range(6)])
    emb = rng.normal(size=(7, 8)).astype(np.float32)
    text = TextSide(tmp_path, lambda t: t, ["кот"])
    key = (s["english"], s["inflect"], len(s["group_files"]), holdout)
    text.banks[key] = (bank, emb, bank.entry_index())
    prompts = [t.replace("{}", c) for t in s["templates"] for c in ("кот", "пес")]
    text.queries.update({p: rng.normal(size=8).astype(np.float32) for p in prompts})
    torch.manual_seed(0)
    text.heads[(id(bank),)] = torch.nn.Linear(8, 10)
    return text, bank, emb


def test_head_alpha_mixes_the_head_into_the_bank_weights(tmp_path: Path) -> None:
    base = _setting()
    text, bank, emb = _side(tmp_path, base, holdout=True)
    head = text.heads[(id(bank),)]
    per_t = [np.stack([text.queries[t.replace("{}", c)] for c in ("кот", "пес")]) for t in base["templates"]]
    want_bank = np.mean([mix(concept_similarities(q, emb, bank.entry_index()), bank.distributions, base["scale"],
                             (base["top_k"],)) for q in per_t], axis=0)
    want_head = np.mean([head_weights(head, q) for q in per_t], axis=0)
    np.testing.assert_allclose(text.weights(base, ["кот", "пес"], holdout=True), want_bank, atol=1e-6)
    np.testing.assert_allclose(text.weights(_setting(head_alpha=1.0), ["кот", "пес"], holdout=True), want_head,
                               atol=1e-6)
    half = text.weights(_setting(head_alpha=0.5), ["кот", "пес"], holdout=True)
    np.testing.assert_allclose(half, mix_weights(want_bank, want_head, 0.5), atol=1e-6)
    assert not np.allclose(half, want_bank)
