"""Class-name normalisation and tokenisation as the manifest configures them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroshot.manifest import TokenizerConfig
from zeroshot.text import Tokenizer, build_prompts, normalize_name

ALL = ["strip", "collapse_spaces", "lowercase", "yo", "trailing_punct"]


def test_typing_variants_normalise_to_one_string() -> None:
    variants = ["Ёжик", "ёжик", "  ежик ", "ЕЖИК.", "ежик…", "е\u0308жик"]
    assert {normalize_name(v, ALL) for v in variants} == {"ежик"}
    assert normalize_name("гаечный   ключ", ALL) == "гаечный ключ"


def test_normalisation_steps_are_opt_in() -> None:
    assert normalize_name(" Ёж. ", []) == " Ёж. "
    assert normalize_name(" Ёж. ", ["strip"]) == "Ёж."


def test_prompts_are_template_major() -> None:
    assert build_prompts(["Кот", "пёс"], ["{}", "фото {}"], ALL) == ["кот", "пес", "фото кот", "фото пес"]


def test_tokenizer_pads_right_and_masks(tiny_model: Path) -> None:
    tok = Tokenizer(tiny_model / "tokenizer.model", TokenizerConfig("sentencepiece", bos_id=1, eos_id=2, pad_id=0))
    ids, mask = tok.batch(["кот", "большой рыжий кот"])
    assert ids.shape == mask.shape and ids.dtype == np.int64
    assert ids[0, 0] == 1 and mask[0].sum() < mask[1].sum()
    assert ids[0, mask[0].sum() - 1] == 2 and (ids[0, mask[0].sum():] == 0).all()


def test_tokenizer_truncates_to_context_length(tiny_model: Path) -> None:
    tok = Tokenizer(tiny_model / "tokenizer.model", TokenizerConfig("sentencepiece", bos_id=1, eos_id=2, pad_id=0,
                                                               context_length=5))
    ids, mask = tok.batch(["очень длинное название класса из многих слов"])
    assert ids.shape == (1, 5) and ids[0, 0] == 1 and ids[0, 4] == 2


def test_prompt_ensemble_is_the_mean_of_normalised_prompt_embeddings(tiny_model: Path) -> None:
    """CLIP's recipe: each template's text embedding is L2-normalised before the mean over templates."""
    from zeroshot.encoders import Model

    model = Model(tiny_model)
    names = ["Кот", "пёс", "гаечный ключ"]
    templates = model.text_cfg.templates
    assert len(templates) > 1 and model.manifest.score.similarity == "cosine"
    prompts = build_prompts(names, templates, model.text_cfg.normalize)
    vecs = model.encode_texts(prompts).reshape(len(templates), len(names), -1)
    norms = np.linalg.norm(vecs, axis=-1, keepdims=True)
    assert not np.allclose(norms[0], norms[1])  # otherwise normalising first would change nothing
    want = (vecs / norms).mean(axis=0)
    assert np.allclose(model.class_vectors(names), want, atol=1e-6)
    assert not np.allclose(vecs.mean(axis=0) / np.linalg.norm(vecs.mean(axis=0), axis=-1, keepdims=True),
                           want / np.linalg.norm(want, axis=-1, keepdims=True), atol=1e-4)
