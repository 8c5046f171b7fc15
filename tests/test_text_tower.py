"""train.text_tower: input formats, the image cache, contrastive training, resume, export through predict.sh.

Everything runs on a tiny random image model and a tiny text tower on CPU in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import zipfile
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from conftest import assert_round_trips, read_json, run_predict_sh
from datagen import make_dataset
from train.image_cache import ImageTower, embed_cached
from train.pairs import read_class_folders, read_metadata, read_pairs_jsonl
from train import tower_loop
from train.text_tower import build_parser, main, prepare
from train.tower_loop import latest_checkpoint, train
from train.tower_model import TinyTextEncoder, freeze_lower, info_nce

STEPS = ["strip", "collapse_spaces", "lowercase", "yo", "trailing_punct"]
N_IMAGES = 12


def _word(rnd: random.Random) -> str:
    return "".join(rnd.choice("абвгдежзиклмнопрстуфхцчшэюя") for _ in range(rnd.randint(4, 7)))


@pytest.fixture(scope="module")
def contest_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """metadata.json + images/: N_IMAGES distinct flat-colour photos, each with its own query words,
    plus a non-JSON line (4), a missing image (line 8), empty queries (line 10) and a bad type (line 12)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("contest")
    (root / "images").mkdir()
    rng, rnd = np.random.default_rng(1), random.Random(1)
    lines: List[str] = []
    for i in range(N_IMAGES):
        colour = rng.integers(0, 256, size=3)
        pixels = np.clip(colour[None, None, :] + rng.normal(0, 8, size=(24, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "images" / f"{1000 + i}.jpg")
        lines.append(json.dumps({"image": 1000 + i, "queries": [_word(rnd), _word(rnd) + " " + _word(rnd)]},
                                ensure_ascii=False))
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"image": 5, "queries": ["нет такой картинки"]}))
    lines.insert(9, json.dumps({"image": 1003, "queries": ["", "   ", 7]}))
    lines.insert(11, json.dumps({"image": [1], "queries": "строка"}))
    (root / "metadata.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _args(data: Path, model: Path, out: Path, *extra: str) -> List[str]:
    return ["--metadata", str(data / "metadata.json"), "--images", str(data / "images"), "--image-model", str(model),
            "--out", str(out), "--text-model", "tiny", "--tokenizer", str(model / "tokenizer.model"),
            "--batch-size", "8", "--freeze-layers", "0", "--lr", "0.02", "--encoder-lr", "0.02",
            "--val-fraction", "0.25", "--log-level", "WARNING", *extra]


def test_metadata_bad_lines_reported_with_line_numbers(contest_data: Path) -> None:
    pairs, report = read_metadata(contest_data / "metadata.json", contest_data / "images", STEPS)
    assert report.counts == {"bad_line": 2, "missing_image": 1, "empty_query": 1}
    assert report.where["bad_line"] == [4, 12] and report.where["missing_image"] == [8]
    assert report.where["empty_query"] == [10]
    assert "2 bad line (lines 4, 12)" in report.summary() and "1 missing image (lines 8)" in report.summary()
    assert len(pairs.images) == N_IMAGES and len(pairs) == 2 * N_IMAGES
    assert all(t == t.strip().lower() for t in pairs.texts)


def test_pairs_jsonl_and_class_folders(tmp_path: Path, contest_data: Path) -> None:
    lines = [json.dumps({"image": str(contest_data / "images" / "1000.jpg"), "text": "Кот."}, ensure_ascii=False),
             "[1, 2]", json.dumps({"image": "nowhere.jpg", "text": "собака"}),
             json.dumps({"image": str(contest_data / "images" / "1001.jpg"), "text": " "})]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines), encoding="utf-8")
    pairs, report = read_pairs_jsonl(tmp_path / "pairs.jsonl", None, STEPS)
    assert pairs.texts == ["кот"] and report.where == {"bad_line": [2], "missing_image": [3], "empty_query": [4]}

    tree = tmp_path / "tree"
    for name in ("Ёжик", "кот"):
        (tree / name).mkdir(parents=True)
        for i in range(2):
            (tree / name / f"{i}.jpg").write_bytes((contest_data / "images" / f"100{i}.jpg").read_bytes())
    (tree / "пусто").mkdir()
    pairs, report = read_class_folders(tree, ["{}", "фото {}"], STEPS)
    assert len(pairs.images) == 4 and sorted(set(pairs.texts)) == ["ежик", "кот", "фото ежик", "фото кот"]
    assert report.counts["missing_image"] == 1


def test_image_cache_is_keyed_by_file_hash(tmp_path: Path, contest_data: Path, tiny_model: Path,
                                           caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    tower = ImageTower(tiny_model)
    paths = sorted((contest_data / "images").glob("*.jpg"))[:4]
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(paths[0].read_bytes())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        vectors, rows = embed_cached(tower, paths + [broken], tmp_path / "cache")
    assert rows[-1] == -1 and "broken.jpg" in caplog.text
    assert isinstance(vectors, np.memmap) and vectors.shape == (4, 16)
    seen: List[int] = []
    real = ImageTower.embed
    monkeypatch.setattr(ImageTower, "embed", lambda self, ps, pool: (seen.extend([len(ps)]), real(self, ps, pool))[1])
    again, rows2 = embed_cached(tower, [copy] + paths, tmp_path / "cache")
    assert seen == [] and rows2[0] == rows[0] and list(rows2[1:]) == list(rows[:4])
    fresh = real(tower, paths, __import__("concurrent.futures").futures.ThreadPoolExecutor(1))[0]
    np.testing.assert_allclose(np.asarray(again[rows[:4]]), fresh, rtol=1e-6)


def test_freeze_lower_layers() -> None:
    enc = TinyTextEncoder(50, 8)
    freeze_lower(enc, 1)
    assert not enc.embedding.weight.requires_grad and all(p.requires_grad for p in enc.mlp.parameters())
    assert freeze_lower(enc, -1) == 0 and freeze_lower(enc, 0) == sum(p.numel() for p in enc.parameters())


def test_info_nce_repeated_image_is_not_a_negative() -> None:
    sims = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    both = info_nce(sims, torch.tensor([0, 0, 1]), torch.tensor(10.0))
    wrong = info_nce(sims, torch.tensor([0, 1, 1]), torch.tensor(10.0))
    assert float(both) < 0.4 < float(wrong)


def _weights(run) -> dict:
    return {k: v.clone() for k, v in run.tower.state_dict().items()}


def test_loss_falls_and_resume_after_ctrl_c_equals_uninterrupted(tmp_path: Path, contest_data: Path, tiny_model: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    full = prepare(parser.parse_args(_args(contest_data, tiny_model, tmp_path / "a", "--steps", "24")))
    result = train(full)
    assert np.mean(result["losses"][-4:]) < 0.6 * result["losses"][0]

    first = prepare(parser.parse_args(_args(contest_data, tiny_model, tmp_path / "b", "--steps", "24")))
    real_step, calls = tower_loop._step, []

    def step_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        loss = real_step(*args, **kwargs)
        if len(calls) == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(tower_loop, "_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="after step 10"):
        train(first)
    monkeypatch.setattr(tower_loop, "_step", real_step)
    assert latest_checkpoint(tmp_path / "b").name == "step_00000010.pt"
    assert first.tower.state_dict().keys() == full.tower.state_dict().keys()
    assert not all(torch.equal(v, full.tower.state_dict()[k]) for k, v in first.tower.state_dict().items())
    resumed = prepare(parser.parse_args(_args(contest_data, tiny_model, tmp_path / "b", "--steps", "24")))
    train(resumed, resume=True)
    want = _weights(full)
    for key, value in resumed.tower.state_dict().items():
        assert torch.equal(value, want[key]), key

    other = prepare(parser.parse_args(_args(contest_data, tiny_model, tmp_path / "b", "--steps", "30")))
    with pytest.raises(ValueError, match="steps=24"):
        train(other, resume=True)


def test_cli_trains_evaluates_exports_and_predict_sh_runs(tmp_path: Path, contest_data: Path,
                                                        tiny_model: Path) -> None:
    datasets = tmp_path / "datasets"
    truth = make_dataset(datasets, "colours", ["красный", "зелёный", "синий"], 9)
    (datasets / "gt.json").write_text(json.dumps({"colours": truth}), encoding="utf-8")
    out = tmp_path / "run"
    assert main(_args(contest_data, tiny_model, out, "--steps", "6", "--eval", str(datasets),
                      "--checkpoint-every", "4")) == 0
    model = out / "model"
    assert_round_trips(model)
    manifest = read_json(model / "manifest.json")
    record = manifest["validation"]["text_encoder"]
    assert record["min_cosine"] >= record["threshold"] >= 0.9999 and record["opset"] <= 17 and record["ir_version"] <= 9
    assert manifest["image"] == read_json(tiny_model / "manifest.json")["image"]
    last = manifest["training"]["history"][-1]
    assert last["step"] == 6 and {"recall@1", "recall@5", "recall@10", "zero_shot"} <= set(last)
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["step_00000004.pt", "step_00000006.pt"]

    proc = run_predict_sh(datasets, tmp_path / "pred.json", model)
    assert proc.returncode == 0, proc.stderr
    assert set(read_json(tmp_path / "pred.json")["colours"]) == set(truth)

    from contest.bundle import build
    from zeroshot.limits import ARCHIVE_CAP_MB

    build(model, None, tmp_path / "submission.zip", cap_mb=ARCHIVE_CAP_MB)
    names = set(zipfile.ZipFile(tmp_path / "submission.zip").namelist())
    assert {"model/manifest.json", "model/text_encoder.onnx", "model/tokenizer.model", "predict.sh"} <= names

    # the stages on their own: export again from the latest checkpoint gives the same text encoder
    before = (model / "text_encoder.onnx").read_bytes()
    assert main(_args(contest_data, tiny_model, out, "--steps", "6", "--stage", "export")) == 0
    assert (model / "text_encoder.onnx").read_bytes() == before


def test_export_keeps_the_image_models_rungs_with_their_sizes(tmp_path: Path) -> None:
    """A rung at another input size stays at that size in the exported folder, and the ladder comes along."""
    from types import SimpleNamespace

    from train.tiny_model import build_tiny_model
    from train.tower_export import _copy_image_files

    image_model = tmp_path / "image_model"
    manifest = build_tiny_model(image_model, ladder=True)
    out = tmp_path / "out"
    out.mkdir()
    files, variants, extras = _copy_image_files(SimpleNamespace(manifest=manifest, image_model=image_model), out)
    assert set(variants) == set(manifest.ladder) == {"small", "large"}
    assert extras["small"]["image"] == {"size": 16, "fast_size": 16}
    assert (out / files["image_encoder"]).is_file()
