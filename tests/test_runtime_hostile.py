"""Issue 20: nothing lost on the judge's side of the contract. Hostile input that used to cost a whole
answer or part of it; each case ends with a complete JSON. The big cases (a 40000x40000 JPEG, 50,000
and 500,000 classes) are measured by ``python -m contest.hostile``; these tests cover each mechanism
at a small scale."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import read_json, run_predict_sh
from datagen import make_dataset

from zeroshot import cli, datasets, images, pipeline
from zeroshot.datasets import discover, read_classes
from zeroshot.images import ImageError, decoded_pixels, load_image

NAMES = ["кошка", "собака", "птица"]


# --- classes.json: depth, encodings, names that are not strings ---------------------------------------

def test_deeply_nested_classes_json_costs_only_its_dataset(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "deep", NAMES, 4)
    make_dataset(root, "ok", NAMES, 5)
    (root / "deep" / "classes.json").write_text("[" * 995 + "]" * 995)
    out = tmp_path / "o.json"
    proc = run_predict_sh(root, out, tiny_model)
    assert proc.returncode == 0, proc.stderr
    preds = read_json(out)
    assert preds["deep"] == {i: 0 for i in preds["deep"]} and len(preds["deep"]) == 4
    assert len(preds["ok"]) == 5
    assert "nested too deeply" in proc.stderr and "all 4 images of dataset 'deep' get class 0" in proc.stderr


@pytest.mark.parametrize("encoding,prefix", [("utf-16", b""), ("utf-16-le", b""), ("utf-16-be", b""),
                                             ("utf-32", b""), ("utf-8", b"\xef\xbb\xbf"), ("cp1251", b"")])
def test_classes_json_in_other_encodings(tmp_path: Path, encoding: str, prefix: bytes) -> None:
    path = tmp_path / "classes.json"
    path.write_bytes(prefix + json.dumps(NAMES, ensure_ascii=False).encode(encoding))
    assert read_classes(path) == NAMES


def test_oversized_classes_json_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "MAX_CLASSES_BYTES", 100)
    path = tmp_path / "classes.json"
    path.write_text(json.dumps([f"класс {i}" for i in range(50)]), encoding="utf-8")
    with pytest.raises(datasets.DatasetError, match="more than the 100 a classes.json may have"):
        read_classes(path)


def test_cp1251_fallback_is_said(tmp_path: Path, caplog) -> None:
    path = tmp_path / "classes.json"
    path.write_bytes(json.dumps(NAMES, ensure_ascii=False).encode("cp1251"))
    assert read_classes(path) == NAMES
    assert "not UTF-8" in caplog.text and "read as cp1251" in caplog.text


def test_names_that_are_not_strings_become_text(tmp_path: Path, caplog) -> None:
    path = tmp_path / "classes.json"
    deep = "[" * 800 + "]" * 800
    text = '[NaN, 1, 2.5, null, true, "кот", ["кот", "кошка"], {"a": 1}, ' + deep + "]"
    path.write_text(text, encoding="utf-8")
    names = read_classes(path)
    assert names[:8] == ["NaN", "1", "2.5", "null", "true", "кот", "кот, кошка", '{"a": 1}']
    assert len(names) == 9 and names[8] in ("", deep)  # its JSON, or "" past the stack
    assert "are not strings" in caplog.text


@pytest.mark.parametrize("content", ["[", "{}", "[]", '{"a": 1}', "\xff\xff", None])
def test_unreadable_classes_still_give_every_image_class_0(tiny_model: Path, tmp_path: Path,
                                                          content: str) -> None:
    root = tmp_path / "data"
    make_dataset(root, "bad", NAMES, 3)
    make_dataset(root, "ok", NAMES, 3)
    classes = root / "bad" / "classes.json"
    classes.unlink()
    if content is None:
        classes.mkdir()  # there, but cannot be read
    else:
        classes.write_bytes(content.encode("latin-1"))
    report = tmp_path / "r.json"
    out = tmp_path / "o.json"
    assert cli.main([str(root), str(out), "--model", str(tiny_model), "--report", str(report)]) == 0
    preds = read_json(out)
    assert preds["bad"] == {i: 0 for i in preds["bad"]} and len(preds["bad"]) == 3 and len(preds["ok"]) == 3
    problems = read_json(report)["datasets"]["bad"]["problems"]
    assert any("get class 0" in p for p in problems), problems


# --- D9: the placeholder answer does not wait for the class names ------------------------------------

def test_placeholder_is_on_disk_before_class_names_are_read(tiny_model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    truth = make_dataset(root, "a", NAMES, 6)
    out = tmp_path / "o.json"
    seen = []
    read = datasets.read_classes

    def checking(path: Path):
        seen.append(sorted(read_json(out)["a"]) if out.exists() else None)
        return read(path)

    monkeypatch.setattr(datasets, "read_classes", checking)
    assert cli.main([str(root), str(out), "--model", str(tiny_model)]) == 0
    assert seen == [sorted(truth)]


def test_placeholder_costs_one_class_scan_per_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["", "кот", "пёс"], 30)
    found, _ = discover(root)
    calls = []
    mask = datasets.class_mask
    monkeypatch.setattr(datasets, "class_mask", lambda names: calls.append(1) or mask(names))
    preds = cli.initial_predictions(found)
    assert set(preds["a"].values()) == {1} and len(preds["a"]) == 30
    assert len(calls) == 1


# --- D2: malformed EXIF costs the metadata, not the pixels --------------------------------------------

def _exif(entries, data: bytes = b"") -> bytes:
    """An APP1 Exif payload: big-endian TIFF header, IFD0 of (tag, type, count, 4 value bytes), then ``data``."""
    body = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHI", t, k, n) + v for t, k, n, v in entries)
    return b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + body + b"\x00\x00\x00\x00" + data


ORIENTATION_6 = (0x0112, 3, 1, b"\x00\x06\x00\x00")  # rotate 90 degrees clockwise on display
MALFORMED_EXIF = {
    # an XResolution of type BYTE: Pillow's Image.open fails reading the dpi from it
    "open": _exif([ORIENTATION_6, (0x011A, 1, 1, b"\x05\x00\x00\x00"), (0x0128, 3, 1, b"\x00\x02\x00\x00")]),
    # a YResolution of type ASCII: read fine, but ImageOps.exif_transpose cannot write it back
    "transpose": _exif([ORIENTATION_6, (0x011B, 2, 6, struct.pack(">I", 38))], b"Canon\x00"),
}


def _half_white_jpeg(exif: bytes) -> bytes:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:]


@pytest.mark.parametrize("breaks", sorted(MALFORMED_EXIF))
def test_malformed_exif_keeps_the_pixels_and_the_orientation(tmp_path: Path, breaks: str, caplog) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_half_white_jpeg(MALFORMED_EXIF[breaks]))
    out = load_image(path, 16)
    assert out.size == (20, 40), "orientation 6 applied"
    assert out.getpixel((10, 5))[0] > 200 and out.getpixel((10, 35))[0] < 50  # the white half now on top
    assert decoded_pixels(path, 16) == 800
    if breaks == "open":
        assert "photo.jpg: malformed metadata" in caplog.text


def test_malformed_exif_image_is_predicted_from_its_pixels(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", NAMES, 4)
    for breaks, exif in MALFORMED_EXIF.items():
        (root / "a" / "img" / f"{breaks}.jpg").write_bytes(_half_white_jpeg(exif))
    report = tmp_path / "r.json"
    assert cli.main([str(root), str(tmp_path / "o.json"), "--model", str(tiny_model), "--report", str(report)]) == 0
    assert read_json(report)["datasets"]["a"]["problems"] == []
    assert len(read_json(tmp_path / "o.json")["a"]) == 6


# --- D12: a progressive JPEG is counted at what its decoder holds --------------------------------------

def test_progressive_jpeg_counts_its_full_size_coefficients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Draft mode scales a JPEG's output, but a progressive one still holds every DCT coefficient of
    the full image (2 bytes per sample): 40000x40000 grey peaked at 3.4 GB. At small scale: a cap of
    100,000 pixels lets the baseline 800x800 through (100x100 decoded) and refuses the progressive one."""
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 100_000)
    grey = Image.new("L", (800, 800), 128)
    grey.save(tmp_path / "baseline.jpg", quality=50)
    grey.save(tmp_path / "progressive.jpg", quality=50, progressive=True)
    assert load_image(tmp_path / "baseline.jpg", 32).size == (100, 100)
    assert decoded_pixels(tmp_path / "baseline.jpg", 32) == 100 * 100
    assert decoded_pixels(tmp_path / "progressive.jpg", 32) == 100 * 100 + 800 * 800 * 2 // 3
    with pytest.raises(ImageError, match="progressive.jpg: 800x800 progressive JPEG image is too large"):
        load_image(tmp_path / "progressive.jpg", 32)
    colour = Image.new("RGB", (800, 800), (10, 200, 30))  # 4:2:0: chroma at half size in both directions
    colour.save(tmp_path / "colour.jpg", quality=50, progressive=True)
    assert decoded_pixels(tmp_path / "colour.jpg", 32) == 100 * 100 + 800 * 800 * 3 // 2 * 2 // 3


# --- a corrupt or truncated rung: the next intact one runs ---------------------------------------------

@pytest.fixture()
def two_rung_model(tmp_path: Path) -> Path:
    """The tiny model with a ladder small -> large whose rungs have image encoder files of their own."""
    from train.manifest_io import write_manifest
    from train.tiny_model import LADDER, build_tiny_model
    from zeroshot.manifest import load_manifest

    out = tmp_path / "model"
    build_tiny_model(out, seed=0)
    manifest = load_manifest(out).to_dict()
    files = {k: v["path"] for k, v in manifest["files"].items()}
    for rung in LADDER:
        shutil.copyfile(out / files["image_encoder"], out / f"image_encoder.{rung}.onnx")
    sections = {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
    sections["ladder"] = list(LADDER)
    write_manifest(out, files, sections, {r: {"image_encoder": f"image_encoder.{r}.onnx"} for r in LADDER}, LADDER)
    return out


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing"])
def test_corrupt_richest_rung_falls_back_to_the_next(two_rung_model: Path, tmp_path: Path, damage: str) -> None:
    path = two_rung_model / "image_encoder.large.onnx"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "flipped":  # same size, one byte changed: only the sha256 tells
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        path.unlink()
    root = tmp_path / "data"
    truth = make_dataset(root, "a", NAMES, 6)
    out = tmp_path / "o.json"
    proc = run_predict_sh(root, out, two_rung_model, "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(read_json(out)["a"]) == sorted(truth)
    assert "rung large left out" in proc.stderr and "accuracy ladder: rung small" in proc.stderr
    assert {"truncated": "truncated", "flipped": "sha256", "missing": "missing"}[damage] in proc.stderr
    assert cli.check(two_rung_model, None) == 0


def test_no_intact_rung_fails_with_a_complete_placeholder(two_rung_model: Path, tmp_path: Path) -> None:
    for rung in ("small", "large"):
        path = two_rung_model / f"image_encoder.{rung}.onnx"
        path.write_bytes(path.read_bytes()[:100])
    root = tmp_path / "data"
    truth = make_dataset(root, "a", NAMES, 4)
    out = tmp_path / "o.json"
    proc = run_predict_sh(root, out, two_rung_model)
    assert proc.returncode == 2 and "no rung of the accuracy ladder has intact model files" in proc.stderr
    assert sorted(read_json(out)["a"]) == sorted(truth)


@pytest.mark.parametrize("where", ["probe", "load"])
def test_a_rung_that_does_not_load_gives_way(two_rung_model: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, caplog, where: str) -> None:
    """Intact files that onnxruntime still refuses (say, an operator it lacks), when the ladder probes
    the rung or only when the model loads it: the next rung runs."""
    from zeroshot import encoders

    make = encoders.make_session

    def refusing(path: Path, *args, **kwargs):
        if path.name == "image_encoder.large.onnx":
            raise ValueError(f"{path}: onnxruntime cannot load this model: test")
        return make(path, *args, **kwargs)

    monkeypatch.setattr(encoders, "make_session", refusing)
    if where == "probe":
        monkeypatch.setattr(cli, "make_session", refusing)
    root = tmp_path / "data"
    make_dataset(root, "a", NAMES, 4)
    report = tmp_path / "r.json"
    assert cli.main([str(root), str(tmp_path / "o.json"), "--model", str(two_rung_model), "--report",
                     str(report)]) == 0
    assert read_json(report)["model"]["variant"] == "small"
    assert {"probe": "rung large cannot be probed", "load": "rung large does not load"}[where] in caplog.text


# --- D8 and 500,000 classes: the class side within the time budget, the stop and the memory cap ----------

def test_class_vectors_are_the_mean_of_each_class_prompts(tiny_model: Path) -> None:
    """Encoded a batch at a time into one (C, D) array: the same vectors as all prompts at once."""
    from zeroshot.encoders import Model
    from zeroshot.text import build_prompts

    model = Model(tiny_model, threads=1)
    names = [f"класс {i}" for i in range(150)]  # 300 prompts: batches cross the template boundary
    templates = model.text_cfg.templates
    vecs = model.encode_texts(build_prompts(names, templates, model.text_cfg.normalize))
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)  # the tiny model scores by cosine
    expected = vecs.reshape(len(templates), len(names), -1).mean(axis=0)
    np.testing.assert_allclose(model.class_vectors(names), expected, rtol=1e-5, atol=1e-6)
    assert model.class_vectors(["а", "б"]).shape == (2, model.text_dim())


def _slow_text(monkeypatch: pytest.MonkeyPatch, seconds: float, calls: list, after=None) -> None:
    """Every text batch (one tokenisation and encoder run) takes ``seconds`` more; ``after(n)`` runs
    after the n-th."""
    from zeroshot.encoders import Model

    tokenize = Model.token_batch

    def slow(self, texts):
        time.sleep(seconds)
        calls.append(len(texts))
        if after is not None:
            after(len(calls))
        return tokenize(self, texts)

    monkeypatch.setattr(Model, "token_batch", slow)


def test_class_names_that_cannot_be_encoded_in_time_are_given_up(tiny_model: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """D8 at small scale: 12,000 classes x 2 templates at 20 ms per 64 prompts need 7.5 s; the budget has 3 s.
    The encoding stops once a second of measured speed projects past the budget, and the run ends in time."""
    root = tmp_path / "data"
    make_dataset(root, "many", NAMES, 4)
    classes = [f"класс {i}" for i in range(12000)]
    (root / "many" / "classes.json").write_text(json.dumps(classes), encoding="utf-8")
    make_dataset(root, "small", NAMES, 4, seed=1)
    calls: list = []
    _slow_text(monkeypatch, 0.02, calls)
    report = tmp_path / "r.json"
    started = time.monotonic()
    assert cli.main([str(root), str(tmp_path / "o.json"), "--model", str(tiny_model), "--time-budget", "3",
                     "--report", str(report)]) == 0
    assert time.monotonic() - started < 5.0
    assert len(calls) < 150, "the encoding went on past its projection"
    rep = read_json(report)
    assert rep["datasets"]["many"]["tiers"]["prior"] == 4 and rep["datasets"]["small"]["tiers"]["full"] == 4
    assert any("class names given up after" in p for p in rep["datasets"]["many"]["problems"])
    assert len(read_json(tmp_path / "o.json")["many"]) == 4


def test_sigterm_stops_class_encoding_within_a_batch(tiny_model: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    make_dataset(root, "many", NAMES, 4)
    (root / "many" / "classes.json").write_text(json.dumps([f"класс {i}" for i in range(5000)]), encoding="utf-8")
    calls: list = []
    _slow_text(monkeypatch, 0.005, calls, after=lambda n: n == 3 and os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "o.json"
    assert cli.main([str(root), str(out), "--model", str(tiny_model)]) == cli.EXIT_TERMINATED
    assert len(calls) == 3
    assert len(read_json(out)["many"]) == 4


def test_class_side_over_the_memory_cap_keeps_the_prior(tiny_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """500,000 names at small scale: a cap of 200 kB; 2,000 classes x 16 dims x 3 copies x 4 bytes is 384 kB."""
    monkeypatch.setattr(pipeline, "CLASS_SIDE_BYTES", 200_000, raising=False)
    root = tmp_path / "data"
    make_dataset(root, "many", NAMES, 4)
    (root / "many" / "classes.json").write_text(json.dumps([f"класс {i}" for i in range(2000)]), encoding="utf-8")
    make_dataset(root, "small", NAMES, 4, seed=1)
    calls: list = []
    _slow_text(monkeypatch, 0.0, calls)
    report = tmp_path / "r.json"
    assert cli.main([str(root), str(tmp_path / "o.json"), "--model", str(tiny_model), "--report", str(report)]) == 0
    rep = read_json(report)
    assert rep["datasets"]["many"]["tiers"]["prior"] == 4 and rep["datasets"]["small"]["tiers"]["full"] == 4
    assert any("more than the 0.0 GB the class side may use" in p for p in rep["datasets"]["many"]["problems"])
    assert sum(calls) == len(NAMES) * 2, "only the small dataset's prompts were encoded"
