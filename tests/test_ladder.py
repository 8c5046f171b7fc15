"""The accuracy ladder: the richest rung whose projected time fits half the budget; --rung; the log."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from conftest import read_json, run_predict_sh
from datagen import make_dataset
from zeroshot.ladder import choose, select_rung
from zeroshot.manifest import Manifest, Variant, validate_manifest

NAMES = ["int8", "fp32", "ensemble"]
COST = {"int8": 0.025, "fp32": 0.035, "ensemble": 0.205}


def test_choose_takes_the_richest_rung_that_fits_half_the_budget() -> None:
    probed = []
    cost = lambda r: probed.append(r) or COST[r]  # noqa: E731
    # 2,200 images: ensemble 2200 * 0.205 = 451 s <= 630 s; nothing else needs probing
    assert choose(NAMES, cost, 2200, 1260).rung == "ensemble" and probed == ["ensemble"]
    # a machine 2x slower: ensemble 902 s > 630; fp32 154 s fits
    slow = choose(NAMES, lambda r: 2 * COST[r], 2200, 1260)
    assert slow.rung == "fp32" and "richer rungs would take ensemble 902 s" in slow.reason
    assert slow.projected["fp32"] == pytest.approx(154.0) and "int8" not in slow.projected


def test_choose_falls_back_to_the_cheapest_when_nothing_fits() -> None:
    choice = choose(NAMES, COST.get, 100000, 60)
    assert choice.rung == "int8" and "no rung fits" in choice.reason


def test_forced_rung_and_unknown_rung(tiny_model: Path) -> None:
    plain = Manifest.load(tiny_model)
    ref = plain.files["image_encoder"]
    laddered = dataclasses.replace(plain, ladder=NAMES, variants={n: Variant(files={"image_encoder": ref})
                                                                  for n in NAMES})
    assert select_rung(tiny_model, laddered, "fp32", [], 10, 1, None) == "fp32"
    with pytest.raises(ValueError, match="no rung 'huge'"):
        select_rung(tiny_model, laddered, "huge", [], 10, 1, None)
    assert select_rung(tiny_model, plain, None, [], 10, 1, None) is None


def test_manifest_ladder_must_name_variants_with_costs(tiny_model: Path) -> None:
    base = read_json(tiny_model / "manifest.json")
    entry = base["files"]["image_encoder"]
    good = copy.deepcopy(base)
    good["variants"] = {"big": {"files": {"image_encoder": entry}, "image": {"size": 64}}}
    good["ladder"] = ["big"]
    validate_manifest(good, tiny_model / "manifest.json")
    for broken, message in [({"ladder": ["nope"]}, "ladder rung 'nope'"), ({"ladder": ["big", "big"]}, "distinct"),
                            ({"variants": {"big": {"files": {"image_encoder": entry}, "image": {"size": 0}}}},
                             "image.size")]:
        bad = copy.deepcopy(good)
        bad.update(broken)
        with pytest.raises(ValueError, match=message):
            validate_manifest(bad, tiny_model / "manifest.json")


@pytest.fixture(scope="module")
def ladder_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("ladder_model")
    build_tiny_model(out, seed=0, ladder=True)
    return out


def test_predict_picks_a_rung_by_budget_and_logs_why(ladder_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    truth = make_dataset(root, "a", ["x", "y", "z"], 12, seed=1)
    out = tmp_path / "o.json"
    roomy = run_predict_sh(root, out, ladder_model, "--threads", "1")
    assert roomy.returncode == 0, roomy.stderr
    assert "accuracy ladder: rung large: projected" in roomy.stderr
    assert sorted(read_json(out)["a"]) == sorted(truth)
    tight = run_predict_sh(root, out, ladder_model, "--threads", "1", "--time-budget", "0.0001")
    assert "accuracy ladder: rung small: no rung fits" in tight.stderr
    forced = run_predict_sh(root, out, ladder_model, "--rung", "small")
    assert forced.returncode == 0 and "rung small (forced by --rung)" in forced.stderr
    bad = run_predict_sh(root, out, ladder_model, "--rung", "huge")
    assert bad.returncode == 2 and "no rung 'huge'" in bad.stderr
