"""ruCLIP: youtokentome BPE -> tokenizers JSON with ids identical to youtokentome, and the export end to end.

youtokentome has no wheel for this Python: ``tests/fixtures/yttm`` holds a BPE
model trained by youtokentome 1.0.6 and its ids for 1,214 Russian and English
strings, both written by ``train/experiments/yttm_reference.py`` on CPython 3.8.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from conftest import REPO, assert_round_trips, read_json, run_predict_sh
from datagen import make_dataset
from zeroshot.images import load_image, preprocess
from zeroshot.manifest import Manifest, TokenizerConfig, load_manifest
from zeroshot.text import Tokenizer, build_prompts

FIXTURE = REPO / "tests" / "fixtures" / "yttm"
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def reference() -> Dict[str, Any]:
    return read_json(FIXTURE / "reference.json")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.yttm_tokenizer import convert

    out = tmp_path_factory.mktemp("yttm") / "tokenizer.json"
    convert(FIXTURE / "bpe.model", out)
    return out


def test_converted_ids_equal_youtokentome_on_every_reference_string(reference: Dict[str, Any],
                                                                    converted: Path) -> None:
    from train.export.ruclip import ruclip_batch, tokenizer_cfg

    strings, want = reference["strings"], reference["ids"]
    russian = sum(1 for s in strings if re.search("[а-яё]", s.lower()))
    english = sum(1 for s in strings if re.fullmatch(r"[a-z0-9 ,.'()-]+", s.lower()))
    assert len(strings) >= 300 and russian >= 300 and english >= 100
    cfg = tokenizer_cfg(FIXTURE / "bpe.model", 77)
    assert (cfg["bos_id"], cfg["eos_id"], cfg["pad_id"]) == (2, 3, 0)
    got, got_mask = Tokenizer(converted, TokenizerConfig(**cfg)).batch(strings)
    expected, mask = ruclip_batch(want, cfg)
    same = [bool((g == e).all()) for g, e in zip(got, expected)]
    assert all(same), [s for s, ok in zip(strings, same) if not ok][:5]
    assert (got_mask == mask).all() and got.shape == (len(strings), 77)
    longest = max(range(len(want)), key=lambda i: len(want[i]))
    assert len(want[longest]) > 75 and got[longest, -1] == 3  # truncated, EOS kept at the last position


def test_bad_yttm_files_are_named(tmp_path: Path) -> None:
    from train.yttm_tokenizer import read_yttm

    bad = tmp_path / "bpe.model"
    bad.write_text("2 1\n1074 4\n9601 5\n4 5 6\n", encoding="ascii")
    with pytest.raises(ValueError, match="bpe.model.*header"):
        read_yttm(bad)
    bad.write_text("not a model\n", encoding="ascii")
    with pytest.raises(ValueError, match="bpe.model"):
        read_yttm(bad)


def test_youtokentome_itself_when_available(reference: Dict[str, Any]) -> None:
    """With $ZEROSHOT_YTTM_PYTHON (a CPython 3.8 with youtokentome), the exporter's own check path runs."""
    from train.export.ruclip import YTTM_PYTHON_ENV, yttm_encoder

    encode = yttm_encoder(FIXTURE / "bpe.model", os.environ.get(YTTM_PYTHON_ENV))
    if encode is None:
        pytest.skip(f"youtokentome not importable and ${YTTM_PYTHON_ENV} not set")
    assert encode([s.lower() for s in reference["strings"]]) == reference["ids"]


def _torch_predictions(folder: Path, manifest: Manifest, classes: list, images: list) -> np.ndarray:
    """ruclip's own model: argmax of cosine between image and template-averaged text embeddings."""
    import torch

    from train.export.ruclip import load_ruclip

    src = load_ruclip(folder)
    templates = manifest.text.templates
    prompts = build_prompts(classes, templates, manifest.text.normalize)
    text = src.reference_text(prompts).reshape(len(templates), len(classes), -1)
    text = (text / np.linalg.norm(text, axis=-1, keepdims=True)).mean(axis=0)
    cfg = manifest.image
    pixels = np.stack([preprocess(load_image(p, cfg.size, cfg.decode), cfg, cfg.size) for p in images])
    with torch.no_grad():
        img = src.image_module(torch.from_numpy(pixels)).numpy()
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    return np.argmax(img @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T, axis=1)


def test_ruclip_export_predicts_like_torch(tmp_path: Path) -> None:
    """python -m train.export --from ruclip DIR --plain: validated folder; predict.sh agrees with ruclip's torch model."""
    from train.export.cli import main
    from train.export.ruclip import TINY_RUCLIP, save_random_ruclip

    folder = save_random_ruclip(tmp_path / "ruclip", FIXTURE / "bpe.model", TINY_RUCLIP, seed=1)
    classes = ["кошка", "собака", "самолёт", "вертолёт", "гаечный ключ", "ёжик"]
    truth = make_dataset(tmp_path / "data", "ds", classes, 60)
    assert main(["--from", "ruclip", str(folder), "--out", str(tmp_path / "model"), "--plain", "--variants", "",
                 "--no-plan", "--dev-set", str(tmp_path / "data"), "--images", "12", "--skip-end-to-end"]) == 0
    assert_round_trips(tmp_path / "model")
    manifest = read_json(tmp_path / "model" / "manifest.json")
    val = manifest["validation"]
    assert val["runtime"]["token_ids_identical"] == val["runtime"]["strings"] >= 300
    assert val["text_encoder"]["min_cosine"] >= 0.9999 and val["image_encoder"]["min_cosine"] >= 0.9999
    assert manifest["image"]["resize"] == "crop_square" and manifest["image"]["interpolation"] == "bilinear"
    assert manifest["text"]["tokenizer"]["lowercase"] and manifest["text"]["tokenizer"]["eos_id"] == 3
    proc = run_predict_sh(tmp_path / "data", tmp_path / "out.json", tmp_path / "model")
    assert proc.returncode == 0, proc.stderr
    ours = read_json(tmp_path / "out.json")["ds"]
    images = sorted((tmp_path / "data" / "ds" / "img").iterdir())
    want = _torch_predictions(folder, load_manifest(tmp_path / "model"), classes, images)
    agree = np.mean([ours[p.name.rsplit(".", 1)[0]] == int(w) for p, w in zip(images, want)])
    assert len(ours) == len(truth) and agree >= 0.98


def test_a_missing_ruclip_file_is_named(tmp_path: Path) -> None:
    from train.export.ruclip import TINY_RUCLIP, load_ruclip, save_random_ruclip

    folder = save_random_ruclip(tmp_path / "ruclip", FIXTURE / "bpe.model", TINY_RUCLIP)
    (folder / "bpe.model").unlink()
    with pytest.raises(FileNotFoundError, match="bpe.model"):
        load_ruclip(folder)
