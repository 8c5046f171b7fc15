"""The model folder's contract (zeroshot.manifest.Manifest): one typed reader and writer, defaults written once,
unknown keys and old formats refused with the file and the key named, every folder the project makes round-trips."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from conftest import assert_round_trips, read_json
from zeroshot.manifest import (FORMAT_VERSION, MANIFEST_NAME, BalanceConfig, Manifest, TransductiveConfig,
                               read_section, to_dict, validate_manifest)


def test_the_tiny_models_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    from train.tiny_model import build_tiny_model

    plain = assert_round_trips(tiny_model)
    assert plain.format_version == FORMAT_VERSION and not plain.ladder and not plain.variants
    laddered = build_tiny_model(tmp_path, seed=2, ladder=True)
    assert assert_round_trips(tmp_path) == laddered and laddered.ladder


def test_every_default_is_written_into_the_file(tiny_model: Path) -> None:
    """A field the builder did not set is in the file with its one default, so the file says what runs."""
    written = read_json(tiny_model / MANIFEST_NAME)
    assert written["text"]["tokenizer"]["padding_side"] == "right"
    assert written["text"]["tokenizer"]["add_special_tokens"] is True
    assert written["score"]["bias"] == 0.0
    assert written["transductive"]["log_features"] is False and written["transductive"]["propagate"] is None


def test_an_unknown_key_is_an_error_naming_the_key_and_the_file(tiny_model: Path) -> None:
    data = read_json(tiny_model / MANIFEST_NAME)
    for where, key in [((), "default_variant"), (("image",), "antialias"), (("text", "tokenizer"), "truncate"),
                       (("transductive",), "rounds")]:
        bad = copy.deepcopy(data)
        section = bad
        for part in where:
            section = section[part]
        section[key] = 1
        dotted = ".".join(where + (key,))
        with pytest.raises(ValueError, match=rf"m\.json: invalid manifest: unknown key {dotted} "):
            validate_manifest(bad, Path("m.json"))


def test_an_old_or_missing_format_version_says_how_to_rebuild(tiny_model: Path, tmp_path: Path) -> None:
    data = read_json(tiny_model / MANIFEST_NAME)
    for version in (1, None, "2"):
        old = dict(data, format_version=version)
        (tmp_path / MANIFEST_NAME).write_text(json.dumps(old), encoding="utf-8")
        with pytest.raises(ValueError, match=rf"{MANIFEST_NAME}: manifest format_version .* rebuild the folder"):
            Manifest.load(tmp_path)


def test_required_fields_and_bad_values_are_named(tiny_model: Path) -> None:
    data = read_json(tiny_model / MANIFEST_NAME)
    for change, message in [(lambda d: d["image"].pop("size"), "image.size is required"),
                            (lambda d: d["image"].update(fast_size=999), r"image.fast_size must be at most"),
                            (lambda d: d["score"].update(scale=float("nan")), "score.scale must be a finite"),
                            (lambda d: d["files"].pop("tokenizer"), "files.tokenizer is required"),
                            (lambda d: d["files"].update(extra=d["files"]["tokenizer"]), "unknown file role"),
                            (lambda d: d["files"]["tokenizer"].update(sha256="abc"), "64 lower-case hex")]:
        bad = copy.deepcopy(data)
        change(bad)
        with pytest.raises(ValueError, match=message):
            validate_manifest(bad, Path("m.json"))


def test_a_variant_runs_with_its_own_image_settings_and_files(tiny_model: Path) -> None:
    data = read_json(tiny_model / MANIFEST_NAME)
    ref = data["files"]["image_encoder"]
    data["variants"] = {"big": {"files": {"image_encoder": dict(ref, path="other.onnx")}, "image": {"size": 48}}}
    data["ladder"] = ["big"]
    manifest = validate_manifest(data, Path("m.json"))
    assert manifest.image_for("big").size == 48 and manifest.image_for(None).size == manifest.image.size
    assert manifest.file("image_encoder", "big").path == "other.onnx"
    assert manifest.file("text_encoder", "big") == manifest.files["text_encoder"]
    assert set(manifest.all_files()) >= {"other.onnx", ref["path"]}
    data["variants"]["big"]["image"] = {"size": 0}
    with pytest.raises(ValueError, match=r"variants.big.image.size must be > 0"):
        validate_manifest(data, Path("m.json"))


def test_sections_built_as_dicts_are_read_with_the_same_rules() -> None:
    """Knob grids build dicts; read_section gives the runtime's type with its defaults, or names the problem."""
    trans = read_section(TransductiveConfig, {"iterations": 2, "weight": 1.0, "scale": 10.0})
    assert trans.center is True and trans.method == "prototypes" and trans.propagate is None
    assert read_section(BalanceConfig, None) is None
    with pytest.raises(ValueError, match="settings.rounds must be >= 0"):
        read_section(BalanceConfig, {"method": "estimated", "iterations": 3, "rounds": -1})
    assert to_dict(dataclasses.replace(trans, scale=30.0))["scale"] == 30.0
