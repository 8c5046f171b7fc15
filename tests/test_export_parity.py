"""End-to-end parity of every source's export with its checkpoint's own pipeline, on real image files.

For each source (open_clip, HF CLIP, HF SigLIP, M-CLIP, ruCLIP) the tiny random
checkpoint is built offline (train.export.random_models.save_source), exported
through ``python -m train.export``, and the runtime -- its loader, its
preprocessing, predict.sh -- is compared with golden fixtures of the source's
own pipeline (tests/fixtures/parity, written by ``make parity-fixtures`` in the
reference environment: open_clip ``preprocess``, ``CLIPImageProcessor``,
``SiglipImageProcessor``, M-CLIP's open_clip tower, ruCLIP's transform) on the
parity image set (every size and file kind, made from the dev photos). Where the
reference environment exists (.venv-ref), the export's own live end-to-end check
runs too; elsewhere that test is skipped with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch

from conftest import assert_round_trips, read_json, run_predict_sh

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from train.export import cli, end_to_end as e2e, golden, random_models as rm  # noqa: E402
from train.export.imageset import build_image_set  # noqa: E402
from zeroshot.datasets import discover, image_id  # noqa: E402
from zeroshot.encoders import Model  # noqa: E402
from zeroshot.images import DRAFT, EXACT  # noqa: E402
from zeroshot.limits import DEVSETS_DIR  # noqa: E402
from zeroshot.manifest import ImageConfig, Manifest, validate_manifest  # noqa: E402

INDEX = read_json(golden.FIXTURES / "index.json")
torch.set_num_threads(1)


def dev_image_dir() -> Path:
    found = discover(DEVSETS_DIR)[0] if DEVSETS_DIR.is_dir() else []
    return found[0].images[0].parent if found else DEVSETS_DIR


needs_dev = pytest.mark.skipif(
    not all((dev_image_dir() / n).is_file() for n in INDEX["set_photos"]),
    reason=f"the parity image set is made from the dev photos, not found under {DEVSETS_DIR}")


@pytest.fixture(scope="module")
def parity_data(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One dataset: the regenerated parity image set + the fixture's dev photos, with the fixture's classes."""
    root = tmp_path_factory.mktemp("parity") / "datasets"
    img = root / "parity" / "img"
    records = build_image_set([dev_image_dir() / n for n in INDEX["set_photos"]], INDEX["image_size"], img)
    changed = [r["file"] for r, want in zip(records, INDEX["image_set"]) if r["sha256"] != want["sha256"]]
    assert not changed, f"the parity image set differs from the fixtures' ({changed}): make parity-fixtures"
    for name in INDEX["dev_images"]:
        shutil.copy2(dev_image_dir() / name, img / name)
    (root / "parity" / "classes.json").write_text(json.dumps(INDEX["classes"], ensure_ascii=False), encoding="utf-8")
    paths = [img / r["file"] for r in records] + [img / n for n in INDEX["dev_images"]]
    return {"root": root, "paths": paths, "kinds": [r["kind"] for r in records]}


def export(name: str, out: Path, data: Dict[str, Any], *extra: str) -> Manifest:
    """The tiny checkpoint of ``name`` (checked against the fixture's weights) exported to ``out``; its manifest."""
    spec = rm.save_source(name, out.parent / f"{name}-checkpoint", golden.IMAGE_SIZE)
    assert golden.weights_fingerprint(spec) == INDEX["sources"][name]["weights_sha256"], \
        f"{name}: the tiny checkpoint differs from the fixtures' (regenerate with make parity-fixtures)"
    assert cli.main(rm.export_args(spec) + ["--out", str(out), "--plain", "--templates", "{}", "--variants", "",
                                            "--no-plan", "--dev-set", str(data["root"]), "--images", "12",
                                            "--log-level", "WARNING", *extra]) == 0
    return assert_round_trips(out)


def fixture(name: str) -> Dict[str, np.ndarray]:
    with np.load(golden.FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


@needs_dev
@pytest.mark.parametrize("name", rm.SOURCE_NAMES)
def test_export_reproduces_the_sources_own_pipeline(name: str, parity_data: Dict[str, Any], tmp_path: Path) -> None:
    """Pixels, image embeddings and predict.sh's top-1 on every file kind, against the source's own pipeline."""
    manifest = export(name, tmp_path / "model", parity_data, "--skip-end-to-end")
    want, meta = fixture(name), INDEX["sources"][name]
    cfg = manifest.image
    assert cfg.decode == EXACT and {k: getattr(cfg, k) for k in meta["image_cfg"]} == meta["image_cfg"]
    assert manifest.validation["end_to_end"] == {"skipped": "--skip-end-to-end"}
    n_set = len(parity_data["kinds"])
    got = e2e.runtime_pixels(parity_data["paths"][:n_set], cfg, cfg.decode)
    diff = np.abs(got - golden.from_uint8(want["pixels_u8"], cfg.mean, cfg.std)).reshape(n_set, -1).max(axis=1)
    assert diff.max() <= 1e-5, dict(zip(parity_data["kinds"], diff.round(4)))
    model = Model(tmp_path / "model", threads=1, verify=False)
    assert e2e.prompts_for(model, INDEX["classes"]) == INDEX["prompts"]
    cos = e2e.row_cosines(e2e.runtime_embeddings(model, parity_data["paths"], EXACT), want["image"])
    assert cos.min() >= 0.9999, cos.min()
    out = tmp_path / "preds.json"
    proc = run_predict_sh(parity_data["root"], out, tmp_path / "model")
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = read_json(out)["parity"]
    top1 = [preds[image_id(p)] for p in parity_data["paths"]]
    assert np.mean(np.array(top1) == want["top1"]) >= 0.995, (top1, want["top1"].tolist())


@needs_dev
def test_draft_decoding_is_what_the_fixtures_catch(parity_data: Dict[str, Any]) -> None:
    """The old decoding (draft) moves the pixels of every JPEG over twice the size away from the source's own."""
    cfg = ImageConfig(input="pixel_values", output="image_embeds", decode=DRAFT,
                      **INDEX["sources"]["open_clip"]["image_cfg"])
    want = golden.from_uint8(fixture("open_clip")["pixels_u8"], cfg.mean, cfg.std)
    kinds = parity_data["kinds"]
    got = e2e.runtime_pixels(parity_data["paths"][:len(kinds)], cfg, DRAFT)
    diff = dict(zip(kinds, np.abs(got - want).reshape(len(kinds), -1).max(axis=1)))
    assert min(diff[k] for k in ("2-8x", "contest", "progressive", "cmyk", "greyscale", "exif_rotated")) > 0.3, diff
    assert diff["4000x3000"] > 0.01, diff  # at 32 px a 1/8-scale decode still averages ~90 source pixels per output
    assert max(diff[k] for k in ("smaller", "1-2x", "palette_alpha", "png16", "webp")) <= 1e-5, diff


@needs_dev
@pytest.mark.skipif(e2e.reference_python() is None,
                    reason=f"no reference environment at {e2e.REFERENCE_VENV} (make reference-env): live check skipped")
@pytest.mark.parametrize("name", rm.SOURCE_NAMES)
def test_live_end_to_end_check_in_the_reference_environment(name: str, parity_data: Dict[str, Any],
                                                            tmp_path: Path) -> None:
    """The export's own end-to-end check, run live against the source's pipeline in .venv-ref."""
    record = export(name, tmp_path / "model", parity_data).validation["end_to_end"]
    assert record["images"] == len(parity_data["kinds"]) + 12 and record["pixel_images"] == len(parity_data["kinds"])
    assert record["pixel_max_abs_diff"] <= 1e-5 and record["image_cosine_min"] >= 0.9999
    assert record["top1_agreement"] == 1.0 and record["reference"]["torchvision"] != "absent"


def test_decode_policy_is_validated_by_the_runtime(tiny_model: Path, tmp_path: Path) -> None:
    manifest = read_json(tiny_model / "manifest.json")
    for bad in ("fast", None):
        broken = {**manifest, "image": {**manifest["image"], "decode": bad}}
        with pytest.raises(ValueError, match=r"manifest\.json.*image\.decode must be"):
            validate_manifest(broken, tmp_path / "manifest.json")


def test_the_default_models_image_config_keeps_draft_decoding() -> None:
    from train.image_encoder import image_config

    assert image_config("lite0").decode == DRAFT


def test_exact_decoding_keeps_every_pixel_and_reduces_only_past_the_limit(tmp_path: Path, monkeypatch,
                                                                           caplog) -> None:
    from PIL import Image

    from zeroshot import images

    path = tmp_path / "big.jpg"
    Image.new("RGB", (800, 600), (10, 20, 30)).save(path)
    assert images.load_image(path, 32, EXACT).size == (800, 600)
    assert images.decoded_pixels(path, 32, EXACT) == 800 * 600
    assert images.load_image(path, 32, DRAFT).size == (100, 75)
    with pytest.raises(ValueError, match="decode policy"):
        images.load_image(path, 32, "fast")
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 100_000)
    with caplog.at_level(logging.WARNING, logger="zeroshot.images"):
        assert images.load_image(path, 32, EXACT).size == (100, 75)
    assert "decoded at reduced size" in caplog.text and str(path) in caplog.text


def test_draft_is_chosen_only_with_its_agreement_and_when_time_needs_it() -> None:
    record = {"draft_top1_agreement": 0.995, "images": 600, "contest_exact_images_per_s": 50.0,
              "contest_draft_images_per_s": 100.0}
    fits, over = {"fits_time": True, "projected_s": 900.0}, {"fits_time": False, "projected_s": 1400.0}
    assert e2e.choose_decode("auto", record, fits, 1380, 2200)[0] == EXACT
    assert e2e.choose_decode("auto", record, over, 1380, 2200)[0] == DRAFT            # saves 22 s
    assert e2e.choose_decode("auto", {**record, "draft_top1_agreement": 0.98}, over, 1380, 2200)[0] == EXACT
    assert e2e.choose_decode("auto", record, {"fits_time": False, "projected_s": 2000.0}, 1380, 2200)[0] == EXACT
    assert e2e.choose_decode("draft", record, fits, 1380, 2200)[0] == DRAFT
    with pytest.raises(ValueError, match="0.9800 < 0.99"):
        e2e.choose_decode("draft", {**record, "draft_top1_agreement": 0.98}, fits, 1380, 2200)
    assert e2e.choose_decode("exact", record, over, 1380, 2200)[0] == EXACT


def test_an_export_without_the_reference_environment_names_it(tmp_path: Path, monkeypatch) -> None:
    """No .venv-ref and no --skip-end-to-end: the export stops and says how to get the reference."""
    monkeypatch.setattr(e2e, "REFERENCE_VENV", tmp_path / "no-venv-ref")
    spec = rm.save_source("open_clip", tmp_path / "ckpt", golden.IMAGE_SIZE)
    with pytest.raises(FileNotFoundError, match="no-venv-ref.*make reference-env"):
        cli.main(rm.export_args(spec) + ["--out", str(tmp_path / "model"), "--plain", "--variants", "", "--no-plan",
                                         "--dev-set", str(tmp_path / "none"), "--templates", "{}",
                                         "--log-level", "ERROR"])


def test_fixtures_stay_small() -> None:
    total = sum(p.stat().st_size for p in golden.FIXTURES.iterdir())
    assert total < 400_000, total
    assert sorted(INDEX["sources"]) == sorted(rm.SOURCE_NAMES)
