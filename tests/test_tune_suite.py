"""train.tune_suite: leave-one-set-out selection, the joint ascent, and cached scores equal to predict.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest

from conftest import read_json
from contest import suite
from datagen import make_dataset
from train import suite_cache, tune_suite
from train.tune_suite import ascend, best_value, joint_leave_one_set_out, leave_one_set_out

SETS = ["s1", "s2", "s3"]


def test_leave_one_set_out_on_a_hand_made_table() -> None:
    table = {"a": {"s1": 90.0, "s2": 50.0, "s3": 70.0},
             "b": {"s1": 60.0, "s2": 80.0, "s3": 75.0},
             "c": {"s1": 70.0, "s2": 70.0, "s3": 70.0}}
    r = leave_one_set_out(table, SETS, default="c")
    # means over all three: a 70, b 71.67, c 70 -> in-sample best b
    assert r["best"] == "b" and r["best_mean"] == pytest.approx(215 / 3) and r["default_mean"] == 70.0
    # without s1: a (50+70)/2 = 60, b (80+75)/2 = 77.5, c 70 -> b, which scores 60 on s1
    # without s2: a 80, b 67.5, c 70 -> a, which scores 50 on s2
    # without s3: a 70, b 70, c 70 -> a tie, kept at the default c: 70 on s3
    assert {s: row["choice"] for s, row in r["per_set"].items()} == {"s1": "b", "s2": "a", "s3": "c"}
    assert [r["per_set"][s]["loso"] for s in SETS] == [60.0, 50.0, 70.0]
    assert r["loso_mean"] == pytest.approx(60.0)  # tuning on the other sets loses 10 points against the default
    assert [r["per_set"][s]["best"] for s in SETS] == [60.0, 80.0, 75.0]
    assert r["choices"] == {"b": 1, "a": 1, "c": 1}


def test_ties_go_to_the_preferred_value_then_to_the_first_listed() -> None:
    table = {"x": {"s1": 1.0}, "y": {"s1": 2.0}, "z": {"s1": 2.0}}
    assert best_value(table, ["s1"], prefer="z") == "z"
    assert best_value(table, ["s1"], prefer="x") == "y"


def quadratic(targets_x: Dict[str, int], targets_y: Dict[str, int]):
    """score(choice)[set] = -(x - tx)^2 - (y - ty)^2 for value labels "0", "1", "2"."""
    def score(choice: Dict[str, str]) -> Dict[str, float]:
        x, y = int(choice["x"]), int(choice["y"])
        return {s: -float((x - targets_x[s]) ** 2 + (y - targets_y[s]) ** 2) for s in targets_x}
    return score


def test_joint_leave_one_set_out_by_coordinate_ascent() -> None:
    score = quadratic({"s1": 2, "s2": 2, "s3": 0}, {"s1": 1, "s2": 1, "s3": 1})
    knobs = [("x", ["0", "1", "2"]), ("y", ["0", "1"])]
    start = {"x": "0", "y": "0"}
    # all sets: x=1 has mean -(1+1+1)/3 = -1 against -8/3 (x=0) and -4/3 (x=2); y=1 is exact everywhere
    assert ascend(knobs, start, score, SETS) == {"x": "1", "y": "1"}
    r = joint_leave_one_set_out(knobs, start, score, SETS)
    # without s3 the targets are 2, 2: x=2, which costs (2-0)^2 = 4 on s3; without s1 (or s2): 2, 0 -> x=1
    assert {s: row["choice"] for s, row in r["per_set"].items()} == {
        "s1": {"x": "1", "y": "1"}, "s2": {"x": "1", "y": "1"}, "s3": {"x": "2", "y": "1"}}
    assert [r["per_set"][s]["loso"] for s in SETS] == [-1.0, -1.0, -4.0]
    assert r["loso_mean"] == pytest.approx(-2.0) and r["best_mean"] == pytest.approx(-1.0)
    assert r["default_mean"] == pytest.approx(-11 / 3)  # (0, 0): -5, -5, -1


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("tune_suite_data")
    for name, classes, n, seed in (("one", ["красный", "зелёный", "синий"], 18, 4),
                                   ("two", ["кошка", "собака"], 12, 5),
                                   ("three", ["a", "b", "c", "d"], 16, 6)):
        truth = make_dataset(root / "suite", name, classes, n, seed=seed)
        (root / "suite" / name / "gt.json").write_text(json.dumps({name: truth}), encoding="utf-8")
    truth = make_dataset(root / "dev", "devset", ["красный", "синий"], 10, seed=7)
    (root / "dev" / "gt.json").write_text(json.dumps({"devset": truth}), encoding="utf-8")
    return {"suite": root / "suite", "dev": root / "dev"}


def test_cached_scores_are_predict_pys_and_the_cache_is_reused(tiny_model: Path, small_suite: Dict[str, Path],
                                                              tmp_path: Path, monkeypatch, capsys) -> None:
    cache, out = tmp_path / "cache", tmp_path / "tune.json"
    args = ["--model", str(tiny_model), "--suite", str(small_suite["suite"]), "--dev", str(small_suite["dev"]),
            "--cache", str(cache), "--knobs", "logit scale,refinement rounds,templates,flip", "--json", str(out),
            "--per-set"]
    assert tune_suite.main(args) == 0
    result = read_json(out)
    assert result["suite_sets"] == ["one", "three", "two"] and result["dev_sets"] == ["devset"]
    assert (len(list((cache / "images").rglob("*-mirror.npz"))), len(list((cache / "images").rglob("*.npz")))) == (4, 8)
    # the tiny model's templates are none of TEMPLATE_SETS: its own are the default value "current"
    assert result["knobs"]["templates"]["default"] == "current" and result["knobs"]["logit scale"]["default"] == "x1"
    # the default setting's scores are what contest.suite (predict.py's path) measures
    assert suite.main(["run", "--model", str(tiny_model), "--suite", str(small_suite["suite"]), "--dev",
                       str(small_suite["dev"]), "--json", str(tmp_path / "run.json")]) == 0
    measured = {k: v["accuracy"] for k, v in read_json(tmp_path / "run.json")["sets"].items()}
    default = result["tables"]["flip"]["off"]
    assert default == pytest.approx(measured)
    text = capsys.readouterr().out
    assert "| knob | default |" in text and "joint (coordinate ascent" in text
    assert "devset (dev, not in any choice)" in text
    # a second run encodes nothing
    monkeypatch.setattr(suite_cache, "encode_set", lambda *a, **k: pytest.fail("encoded again"))
    assert tune_suite.main(args + ["--no-joint"]) == 0
    assert tune_suite.main(args[:8] + ["--knobs", "nope"]) == 2
