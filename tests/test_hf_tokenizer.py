"""The Hugging Face ``tokenizers`` JSON tokenizer, its manifest options and the trimmed-vocabulary id map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from conftest import read_json, run_predict_sh
from datagen import make_dataset
from train.manifest_io import write_manifest
from zeroshot.encoders import Model
from zeroshot.manifest import TokenizerConfig, to_dict, validate_manifest
from zeroshot.text import Tokenizer, load_id_map

WORDS = ["кот", "кошка", "собака", "пёс", "фото", "на", "котором", "изображено", "картинка", "изображение",
         "photo", "of", "a", "cat", "dog", "big", "red", "самолёт", "вертолёт", "ёжик"]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def build_hf_tokenizer(path: Path, vocab_size: int = 90) -> Path:
    """Train a small BPE ``tokenizer.json`` on generated Russian+English text; <s> $A </s> post-processor."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors, trainers

    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=4)) for _ in range(300)]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hf_tokenizer(tmp_path_factory.mktemp("hf") / "tokenizer.json")


def _cfg(**kw: Any) -> TokenizerConfig:
    cfg: Dict[str, Any] = {"type": "hf_tokenizers", "bos_id": 2, "eos_id": 3, "pad_id": 0, "context_length": None}
    cfg.update(kw)
    return TokenizerConfig(**cfg)


def test_post_processor_adds_specials_and_pads_right(hf_json: Path) -> None:
    ids, mask = Tokenizer(hf_json, _cfg()).batch(["кот", "большой рыжий кот на фото"])
    assert ids.dtype == np.int64 and ids.shape == mask.shape
    n0 = int(mask[0].sum())
    assert ids[0, 0] == 2 and ids[0, n0 - 1] == 3 and (ids[0, n0:] == 0).all() and mask[0, :n0].all()
    assert ids.shape[1] == int(mask[1].sum())  # padded to the longest row only


def test_truncation_keeps_the_special_tokens(hf_json: Path) -> None:
    long = " ".join(WORDS)
    ids, mask = Tokenizer(hf_json, _cfg(context_length=6)).batch([long])
    assert ids.shape == (1, 6) and ids[0, 0] == 2 and ids[0, -1] == 3 and mask.all()
    ids, _ = Tokenizer(hf_json, _cfg(context_length=6, add_special_tokens=False, bos_id=None, eos_id=None)).batch([long])
    assert ids.shape == (1, 6) and 2 not in ids and 3 not in ids


def test_without_post_processor_the_runtime_adds_bos_eos(hf_json: Path) -> None:
    with_pp = Tokenizer(hf_json, _cfg()).encode("кот на фото")
    runtime = Tokenizer(hf_json, _cfg(add_special_tokens=False)).encode("кот на фото")
    assert runtime == with_pp
    cut = Tokenizer(hf_json, _cfg(add_special_tokens=False, context_length=3)).encode("кот на фото")
    assert cut == [2, with_pp[1], 3]


def test_pad_to_context_left_padding_and_lowercase(hf_json: Path) -> None:
    tok = Tokenizer(hf_json, _cfg(context_length=12, pad_to_context=True, padding_side="left", pad_id=1,
                                  lowercase=True))
    ids, mask = tok.batch(["КОТ", "кот"])
    assert ids.shape == (2, 12) and (ids[0] == ids[1]).all()
    assert ids[0, -1] == 3 and (ids[0, :12 - int(mask[0].sum())] == 1).all() and mask[0, -1] == 1
    assert Tokenizer(hf_json, _cfg()).encode("КОТ") != tok.encode("КОТ")


def test_id_map_maps_every_id_including_padding(hf_json: Path, tmp_path: Path) -> None:
    plain = Tokenizer(hf_json, _cfg(context_length=10, pad_to_context=True))
    vocab = json.loads(hf_json.read_text(encoding="utf-8"))["model"]["vocab"]
    table = np.full(len(vocab), 1, dtype=np.int32)  # everything unknown ...
    kept = sorted(set(plain.encode("кот")) | {0})
    table[kept] = np.arange(len(kept), dtype=np.int32) + 10  # ... except what "кот" needs and the padding
    np.save(tmp_path / "ids.npy", table)
    tok = Tokenizer(hf_json, _cfg(context_length=10, pad_to_context=True), load_id_map(tmp_path / "ids.npy"))
    raw, _ = plain.batch(["кот", "собака"])
    ids, _ = tok.batch(["кот", "собака"])
    assert (ids == table[raw]).all() and (ids[0] >= 10).all()
    assert 1 in ids[1]  # a dropped token becomes the unknown row


def test_id_map_errors_name_the_file(hf_json: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "short.npy", np.zeros(3, dtype=np.int32))
    tok = Tokenizer(hf_json, _cfg(), load_id_map(tmp_path / "short.npy"))
    with pytest.raises(ValueError, match="beyond the id map"):
        tok.batch(["собака кошка самолёт"])
    np.save(tmp_path / "float.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="float.npy"):
        load_id_map(tmp_path / "float.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        load_id_map(tmp_path / "junk.npy")


def test_a_broken_tokenizer_json_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer(bad, _cfg())


def _hf_model(tiny_model: Path, hf_json: Path, out: Path) -> Path:
    """The tiny model with an hf tokenizer whose 90 ids map onto the tiny text encoder's 120 rows."""
    shutil.copytree(tiny_model, out)
    (out / "tokenizer.model").unlink()
    shutil.copy(hf_json, out / "tokenizer.json")
    np.save(out / "tokenizer_ids.npy", (np.arange(90, dtype=np.int32) * 7) % 120)
    sections = {k: v for k, v in read_json(tiny_model / "manifest.json").items()
                if k not in ("files", "format_version")}
    sections["text"]["tokenizer"] = to_dict(_cfg(context_length=16, pad_to_context=True, lowercase=True,
                                                 id_map="tokenizer_ids.npy"))
    sections["score"]["bias"] = -5.0
    write_manifest(out, {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx",
                         "tokenizer": "tokenizer.json", "tokenizer_id_map": "tokenizer_ids.npy"}, sections)
    return out


def test_a_model_with_an_hf_tokenizer_predicts(tiny_model: Path, hf_json: Path, tmp_path: Path) -> None:
    model_dir = _hf_model(tiny_model, hf_json, tmp_path / "model")
    model = Model(model_dir)
    ids, _ = model.tokenizer.batch(["кот"])
    assert ids.shape == (1, 16) and ids.max() < 120
    assert model.class_vectors(["кот", "собака"]).shape == (2, 16)
    make_dataset(tmp_path / "data", "ds", ["кот", "собака", "самолёт"], 4)
    proc = run_predict_sh(tmp_path / "data", tmp_path / "out.json", model_dir)
    assert proc.returncode == 0, proc.stderr
    assert len(read_json(tmp_path / "out.json")["ds"]) == 4


@pytest.mark.parametrize("change, message", [
    ({"type": "bpe"}, "text.tokenizer.type"),
    ({"pad_to_context": True, "context_length": None}, "pad_to_context needs"),
    ({"pad_to_context": "yes"}, "pad_to_context must be"),
    ({"lowercase": 1}, "lowercase must be"),
    ({"add_special_tokens": None}, "add_special_tokens must be"),
    ({"padding_side": "middle"}, "padding_side"),
    ({"bos_id": True}, "bos_id"),
    ({"pad_id": -1}, "pad_id"),
    ({"id_map": "ids.bin"}, "id_map must be"),
    ({"id_map": "other.npy"}, "must name the same file"),
])
def test_manifest_rejects_bad_tokenizer_fields(tiny_model: Path, hf_json: Path, tmp_path: Path,
                                               change: Dict[str, Any], message: str) -> None:
    manifest = read_json(_hf_model(tiny_model, hf_json, tmp_path / "model") / "manifest.json")
    validate_manifest(manifest, tmp_path / "m.json")
    manifest["text"]["tokenizer"].update(change)
    with pytest.raises(ValueError, match=message):
        validate_manifest(manifest, tmp_path / "m.json")


def test_manifest_rejects_mismatched_files_and_bias(tiny_model: Path, hf_json: Path, tmp_path: Path) -> None:
    manifest = read_json(_hf_model(tiny_model, hf_json, tmp_path / "model") / "manifest.json")
    spm = json.loads(json.dumps(manifest))
    spm["files"]["tokenizer"]["path"] = "tokenizer.model"
    with pytest.raises(ValueError, match="tokenizers .json file"):
        validate_manifest(spm, tmp_path / "m.json")
    no_map = json.loads(json.dumps(manifest))
    del no_map["files"]["tokenizer_id_map"]
    with pytest.raises(ValueError, match="tokenizer_id_map"):
        validate_manifest(no_map, tmp_path / "m.json")
    for bias in ("1", float("nan"), True):
        manifest["score"]["bias"] = bias
        with pytest.raises(ValueError, match="score.bias"):
            validate_manifest(manifest, tmp_path / "m.json")
