"""contest.suite: every suite set and the dev set through predict.py's path; compare's arithmetic."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from conftest import read_json
from contest import suite
from datagen import make_dataset
from zeroshot import cli
from zeroshot.evaluate import evaluate


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A suite of two sets (labels flat in one gt.json, in the judge's format in the other) and a dev folder."""
    root = tmp_path_factory.mktemp("suite_data")
    truth_a = make_dataset(root / "suite", "цвета", ["красный", "зелёный", "синий"], 12, seed=1)
    write_json(root / "suite" / "цвета" / "gt.json", truth_a)
    truth_b = make_dataset(root / "suite", "pairs", ["кошка", "самолёт"], 10, seed=2)
    truth_b["img003.part"] = 1 - truth_b["img003.part"]  # one label the colours cannot explain
    write_json(root / "suite" / "pairs" / "gt.json", {"pairs": truth_b})
    truth_dev = make_dataset(root / "dev", "caltech", ["кошка", "собака", "самолёт", "ключ"], 16,
                             seed=3)
    write_json(root / "dev" / "gt.json", {"caltech": truth_dev})
    return {"suite": root / "suite", "dev": root / "dev"}


def test_run_scores_every_set_as_predict_py_does(tiny_model: Path, folders: Dict[str, Path], tmp_path: Path,
                                                capsys) -> None:
    out = tmp_path / "suite.json"
    assert suite.main(["run", "--model", str(tiny_model), "--suite", str(folders["suite"]), "--dev",
                       str(folders["dev"]), "--json", str(out)]) == 0
    result = read_json(out)
    assert list(result["sets"]) == ["caltech", "pairs", "цвета"]  # the dev set first, then the suite by name
    assert [r["dev"] for r in result["sets"].values()] == [True, False, False]
    assert {k: (r["n"], r["n_classes"]) for k, r in result["sets"].items()} == {
        "caltech": (16, 4), "pairs": (10, 2), "цвета": (12, 3)}
    assert result["rung"] is None and result["threads"] == 1 and result["model"] == "tiny-random"
    assert all(r["seconds"] > 0 for r in result["sets"].values()) and result["date"]
    # the same accuracies as predict.py's JSON scored by zeroshot.evaluate
    for name, folder in (("dev", folders["dev"]), ("suite", folders["suite"])):
        preds = tmp_path / f"{name}.json"
        assert cli.main([str(folder), str(preds), "--model", str(tiny_model), "--threads", "1"]) == 0
        for ds, labels in read_json(preds).items():
            gt = read_json(folder / "gt.json")[ds] if name == "dev" else suite.read_truth(folder / ds / "gt.json", ds)
            report = evaluate({ds: gt}, {ds: labels})
            assert result["sets"][ds]["accuracy"] == pytest.approx(report.score)
    suite_acc = {k: r["accuracy"] for k, r in result["sets"].items() if not r["dev"]}
    assert result["summary"]["mean"] == pytest.approx(sum(suite_acc.values()) / 2)
    assert result["summary"]["worst"]["accuracy"] == min(suite_acc.values())
    table = capsys.readouterr().out
    assert "mean over 2 suite sets (dev left out)" in table and "worst suite set" in table
    assert table.splitlines()[2].split()[:2] == ["caltech", "yes"]


def test_run_uses_the_ladder_unless_a_rung_is_forced(tmp_path_factory: pytest.TempPathFactory,
                                                      folders: Dict[str, Path], tmp_path: Path) -> None:
    from train.tiny_model import build_tiny_model

    model = tmp_path_factory.mktemp("ladder_model")
    build_tiny_model(model, seed=0, ladder=True)
    args = ["run", "--model", str(model), "--suite", str(folders["suite"]), "--no-dev"]
    assert suite.main(args + ["--json", str(tmp_path / "ladder.json")]) == 0
    chosen = read_json(tmp_path / "ladder.json")
    assert chosen["rung"] == "large" and not chosen["rung_forced"] and "caltech" not in chosen["sets"]
    assert suite.main(args + ["--rung", "small", "--json", str(tmp_path / "small.json")]) == 0
    forced = read_json(tmp_path / "small.json")
    assert forced["rung"] == "small" and forced["rung_forced"]
    assert suite.main(args + ["--rung", "huge"]) == 2


def test_bad_suites_name_the_path(tiny_model: Path, tmp_path: Path, caplog) -> None:
    make_dataset(tmp_path / "s", "nolabels", ["a", "b"], 4)
    assert suite.main(["run", "--model", str(tiny_model), "--suite", str(tmp_path / "s"), "--no-dev"]) == 2
    assert str(tmp_path / "s" / "nolabels" / "gt.json") in caplog.text
    (tmp_path / "s" / "unbuilt").mkdir()
    write_json(tmp_path / "s" / "unbuilt" / "classes.json", ["a", "b"])  # classes only: skipped, not an error
    write_json(tmp_path / "s" / "nolabels" / "gt.json", {"nolabels": {"img000.part": 0}})
    assert [s.dataset.name for s in suite.load_suite(tmp_path / "s", None)] == ["nolabels"]
    assert "unbuilt" in caplog.text and "not built yet" in caplog.text
    write_json(tmp_path / "s" / "nolabels" / "gt.json", {"other": {"x": 0}})
    with pytest.raises(ValueError, match="no labels for dataset 'nolabels'"):
        suite.load_suite(tmp_path / "s", None)
    write_json(tmp_path / "s" / "nolabels" / "gt.json", {"x": "a"})
    with pytest.raises(ValueError, match="expected"):
        suite.load_suite(tmp_path / "s", None)
    make_dataset(tmp_path / "d", "nolabels", ["a", "b"], 4)
    write_json(tmp_path / "d" / "gt.json", {"nolabels": {}})
    write_json(tmp_path / "s" / "nolabels" / "gt.json", {})
    with pytest.raises(ValueError, match="also dataset names of the dev set"):
        suite.load_suite(tmp_path / "s", tmp_path / "d")


def result(accuracies: Dict[str, float], dev: str = "") -> Dict[str, object]:
    return {"sets": {k: {"accuracy": v, "n": 10, "dev": k == dev} for k, v in accuracies.items()}}


def exact_bootstrap_interval(deltas: List[float]) -> List[float]:
    """The 2.5% and 97.5% quantiles of the mean of len(deltas) draws with replacement, by enumerating
    every one of the n^n equally likely draws (the value where the cumulative probability first reaches
    the level)."""
    n = len(deltas)
    counts: Dict[float, int] = {}
    for draw in itertools.product(deltas, repeat=n):
        mean = sum(draw) / n
        counts[mean] = counts.get(mean, 0) + 1
    total, out = n ** n, []
    for level in (Fraction(25, 1000), Fraction(975, 1000)):
        seen = 0
        for value in sorted(counts):
            seen += counts[value]
            if Fraction(seen, total) >= level:
                out.append(value)
                break
    return out


def test_compare_arithmetic_on_hand_made_results(tmp_path: Path, capsys) -> None:
    # B - A: -3, 0, +3, +6 over four suite sets; the dev row (+50) and a set only in A are not counted
    a = result({"s1": 80.0, "s2": 50.0, "s3": 60.0, "s4": 70.0, "gone": 10.0, "dev": 40.0}, dev="dev")
    b = result({"dev": 90.0, "s1": 77.0, "s2": 50.0, "s3": 63.0, "s4": 76.0, "new": 99.0}, dev="dev")
    cmp = suite.compare(a, b, resamples=10_000, seed=0)
    assert {k: r["delta"] for k, r in cmp["sets"].items()} == {"dev": 50.0, "s1": -3.0, "s2": 0.0, "s3": 3.0,
                                                               "s4": 6.0}
    assert list(cmp["sets"])[0] == "dev" and cmp["sets"]["dev"]["dev"]
    assert (cmp["compared"], cmp["improved"], cmp["fell"], cmp["equal"]) == (4, 2, 1, 1)
    assert cmp["only_a"] == ["gone"] and cmp["only_b"] == ["new"]
    assert cmp["mean_delta"] == pytest.approx((-3 + 0 + 3 + 6) / 4)
    # the exact bootstrap distribution of the mean over the 4^4 resamples: P(mean <= -1.5) = 15/256 is the first
    # to reach 2.5% (P(mean <= -2.25) = 5/256 < 2.5%), and symmetrically +4.5 above; 10,000 seeded resamples
    # land on these values
    assert exact_bootstrap_interval([-3.0, 0.0, 3.0, 6.0]) == [-1.5, 4.5]
    assert cmp["interval"] == pytest.approx([-1.5, 4.5])
    assert suite.compare(a, b, seed=0) == cmp  # seeded
    same = suite.compare(a, a)
    assert (same["improved"], same["fell"], same["equal"], same["mean_delta"], same["interval"]) == (
        0, 0, 5, 0.0, [0.0, 0.0])
    paths = [write_json(tmp_path / f"{k}.json", v) for k, v in (("a", a), ("b", b))]
    assert suite.main(["compare", str(paths[0]), str(paths[1]), "--json", str(tmp_path / "cmp.json")]) == 0
    text = capsys.readouterr().out
    assert "2 improved, 1 fell, 1 equal" in text and "mean delta +1.50" in text and "[-1.50, +4.50]" in text
    assert read_json(tmp_path / "cmp.json")["interval"] == pytest.approx([-1.5, 4.5])
    write_json(tmp_path / "bad.json", {"sets": {"s1": {"n": 3}}})
    assert suite.main(["compare", str(paths[0]), str(tmp_path / "bad.json")]) == 2


def test_bootstrap_interval_of_three_sets_matches_the_exact_distribution() -> None:
    deltas = [0.0, 3.0, 6.0]  # mean over 3 draws: P(0) = 1/27 > 2.5%, so the interval is [0, 6]
    assert exact_bootstrap_interval(deltas) == [0.0, 6.0]
    assert suite.bootstrap_interval(deltas, 10_000, seed=1) == pytest.approx([0.0, 6.0])
    low, high = suite.bootstrap_interval(list(np.linspace(-1, 1, 20)), 10_000, seed=0)
    assert -1 < low < 0 < high < 1
