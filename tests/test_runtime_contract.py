"""The judge's contract end to end: setup.sh, predict.sh, the JSON, the metric."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIRST_CPU, REPO, read_json, run_predict_sh
from datagen import make_dataset

from zeroshot.evaluate import evaluate, main as evaluate_main
from zeroshot.datasets import image_id


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("datasets")
    truth = {
        "birds": make_dataset(root, "birds", ["Воробей", "синица", "ворона"], 23, seed=1),
        "cars": make_dataset(root, "cars", ["автомобиль", "грузовик"], 17, seed=2, ext=".png"),
    }
    (root / "notes").mkdir()  # a folder without classes.json is not a dataset
    (root / "README.txt").write_text("not a dataset")
    return root, truth


def test_setup_then_predict_from_an_archive_layout(app_dir: Path, two_datasets, tmp_path: Path) -> None:
    """The judge's two calls, from another working directory, with model/ beside the scripts."""
    root, truth = two_datasets
    env = dict(os.environ, PYTHON=sys.executable)
    setup = subprocess.run(["bash", str(app_dir / "setup.sh")], capture_output=True, text=True, env=env, cwd="/")
    assert setup.returncode == 0, setup.stderr
    assert "match their sha256" in setup.stderr
    assert setup.stdout == ""
    out = tmp_path / "out.json"
    proc = subprocess.run(["bash", str(app_dir / "predict.sh"), str(root), str(out)], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert {k: sorted(v) for k, v in read_json(out).items()} == {k: sorted(v) for k, v in truth.items()}


def test_setup_fails_when_the_model_is_missing(app_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "app"
    shutil.copytree(app_dir, broken, ignore=shutil.ignore_patterns("model"))
    env = dict(os.environ, PYTHON=sys.executable)
    setup = subprocess.run(["bash", str(broken / "setup.sh")], capture_output=True, text=True, env=env)
    assert setup.returncode != 0
    assert str(broken / "model" / "manifest.json") in setup.stderr


def test_predict_sh_writes_every_image_of_every_dataset(tiny_model: Path, two_datasets, tmp_path: Path) -> None:
    root, truth = two_datasets
    out = tmp_path / "sub" / "out.json"
    proc = run_predict_sh(root, out, tiny_model)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "stdout must stay clean"
    preds = read_json(out)
    assert sorted(preds) == ["birds", "cars"]
    for name, ids in truth.items():
        assert sorted(preds[name]) == sorted(ids)
        n_classes = len(json.loads((root / name / "classes.json").read_text(encoding="utf-8")))
        assert all(isinstance(v, int) and 0 <= v < n_classes for v in preds[name].values())
    assert "images/s" in proc.stderr and "birds" in proc.stderr
    assert not list(out.parent.glob(".*.tmp")), "the temp file is renamed away"


def test_output_is_utf8_json_with_russian_dataset_names(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "птицы", ["воробей", "синица"], 4)
    out = tmp_path / "out.json"
    assert run_predict_sh(root, out, tiny_model).returncode == 0
    raw = out.read_bytes().decode("utf-8")
    assert "птицы" in raw
    assert sorted(json.loads(raw)["птицы"]) == ["img000.part", "img001.part", "img002.part", "img003.part"]


def test_batch_size_invariance(tiny_model: Path, two_datasets, tmp_path: Path) -> None:
    root, _ = two_datasets
    outs = []
    for batch in ("1", "32"):
        out = tmp_path / f"b{batch}.json"
        proc = run_predict_sh(root, out, tiny_model, "--batch-size", batch)
        assert proc.returncode == 0, proc.stderr
        outs.append(read_json(out))
    assert outs[0] == outs[1]


def test_thread_count_invariance(tiny_model: Path, two_datasets, tmp_path: Path) -> None:
    root, _ = two_datasets
    a, b = tmp_path / "t1.json", tmp_path / "t3.json"
    assert run_predict_sh(root, a, tiny_model, "--threads", "1").returncode == 0
    assert run_predict_sh(root, b, tiny_model, "--threads", "3").returncode == 0
    assert read_json(a) == read_json(b)


def test_runs_under_taskset_one_cpu(tiny_model: Path, two_datasets, tmp_path: Path) -> None:
    root, _ = two_datasets
    out = tmp_path / "one_cpu.json"
    env = dict(os.environ, PYTHON=sys.executable)
    cmd = ["taskset", "-c", str(FIRST_CPU), "bash", str(REPO / "predict.sh"), str(root), str(out), "--model", str(tiny_model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "1 threads" in proc.stderr


def test_existing_output_is_replaced_atomically(tiny_model: Path, two_datasets, tmp_path: Path) -> None:
    root, _ = two_datasets
    out = tmp_path / "out.json"
    out.write_text("old garbage")
    assert run_predict_sh(root, out, tiny_model).returncode == 0
    assert set(read_json(out)) == {"birds", "cars"}


def test_image_id_drops_only_the_last_extension() -> None:
    assert image_id(Path("a.b.jpg")) == "a.b"
    assert image_id(Path("photo.JPEG")) == "photo"
    assert image_id(Path("noext")) == "noext"


def test_missing_model_fails_loudly_with_the_path(two_datasets, tmp_path: Path) -> None:
    root, _ = two_datasets
    proc = run_predict_sh(root, tmp_path / "o.json", tmp_path / "nowhere")
    assert proc.returncode == 2
    assert str(tmp_path / "nowhere" / "manifest.json") in proc.stderr


def test_corrupt_model_file_names_path_and_expected_sha(tiny_model: Path, two_datasets, tmp_path: Path) -> None:
    import shutil

    root, _ = two_datasets
    bad = tmp_path / "bad_model"
    shutil.copytree(tiny_model, bad)
    with open(bad / "image_encoder.onnx", "ab") as handle:
        handle.write(b"\0")
    expected = read_json(bad / "manifest.json")["files"]["image_encoder"]["sha256"]
    proc = run_predict_sh(root, tmp_path / "o.json", bad)
    assert proc.returncode == 2
    assert str(bad / "image_encoder.onnx") in proc.stderr and expected in proc.stderr


def test_evaluate_metric_is_mean_of_dataset_accuracies() -> None:
    gt = {"a": {"1": 0, "2": 1}, "b": {"1": 0, "2": 0, "3": 0, "4": 1}}
    pred = {"a": {"1": 0, "2": 0}, "b": {"1": 0, "2": 0, "3": 0, "4": 1}}
    report = evaluate(gt, pred)
    assert report.score == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert report.clean()


def test_evaluate_per_class_names_classes_worst_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.json"
    gt.write_text(json.dumps({"a": {"1": 0, "2": 0, "3": 1, "4": 1, "5": 2}}))
    pred.write_text(json.dumps({"a": {"1": 0, "2": 1, "3": 1, "4": 1, "5": 0}}))
    data = tmp_path / "data"
    (data / "a" / "img").mkdir(parents=True)
    (data / "a" / "classes.json").write_text(json.dumps(["кот", "пёс", "ёж"], ensure_ascii=False), encoding="utf-8")
    report = evaluate(read_json(gt), read_json(pred))
    assert report.datasets[0].classes == {0: [2, 1], 1: [2, 2], 2: [1, 0]}
    assert evaluate_main([str(gt), str(pred), "--per-class", "--data", str(data)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert rows == [["2", "ёж", "1", "0.00"], ["0", "кот", "2", "50.00"], ["1", "пёс", "2", "100.00"]]
    assert evaluate_main([str(gt), str(pred), "--per-class", "--data", str(tmp_path / "nowhere")]) == 2


def test_evaluate_strict_fails_on_missing_and_extra_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.json"
    gt.write_text(json.dumps({"a": {"1": 0, "2": 1}}))
    pred.write_text(json.dumps({"a": {"1": 0, "3": 1}}))
    assert evaluate_main([str(gt), str(pred)]) == 0
    out = capsys.readouterr().out
    assert "50.00" in out
    assert evaluate_main([str(gt), str(pred), "--strict"]) == 1


def test_variant_and_rung_together_are_refused(tiny_model: Path, two_datasets, tmp_path: Path) -> None:
    """--variant X --rung Y used to run X silently; one of the two must be given."""
    root, _ = two_datasets
    proc = run_predict_sh(root, tmp_path / "out.json", tiny_model, "--variant", "a", "--rung", "b")
    assert proc.returncode == 2 and "--variant and --rung" in proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_every_tool_sizes_threads_by_the_cpus_it_may_use(tiny_model: Path) -> None:
    """Model (used by predict and every side tool) lowers --threads to the affinity/quota count, never raises it."""
    from zeroshot.encoders import Model
    from zeroshot.retrieve import main as retrieve_main

    allowed = len(os.sched_getaffinity(0))
    assert Model(tiny_model, threads=allowed + 63).threads == allowed
    assert Model(tiny_model, threads=1).threads == 1
    with pytest.raises(SystemExit) as exit_info:
        retrieve_main(["index", str(tiny_model), str(tiny_model / "i.npz"), "--threads", "0"])
    assert exit_info.value.code == 2
