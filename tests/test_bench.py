"""contest/bench.py end to end on the tiny model: every pipeline measured, ratios from the measured rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen import make_dataset

from contest import bench
from zeroshot.datasets import discover


@pytest.fixture(scope="module")
def model_with_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose manifest lists an ``int8`` variant (here a copy of the fp32 image encoder)."""
    import shutil

    from train.manifest_io import write_manifest
    from train.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_int8")
    manifest = build_tiny_model(out).to_dict()
    shutil.copyfile(out / "image_encoder.onnx", out / "image_encoder.int8.onnx")
    files = {role: entry["path"] for role, entry in manifest.pop("files").items()}
    manifest.pop("format_version")
    write_manifest(out, files, manifest, variants={"int8": {"image_encoder": "image_encoder.int8.onnx"}})
    return out


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_data")
    make_dataset(root, "birds", ["воробей", "синица", "ворона"], 5, seed=1)
    make_dataset(root, "cars", ["автомобиль", "грузовик"], 3, seed=2)
    return root


def test_repeat_set_has_exactly_n_images_with_unique_ids(small_data: Path, tmp_path: Path) -> None:
    assert bench.make_repeat_set(small_data, 19, tmp_path / "dev") == 19
    datasets, problems = discover(tmp_path / "dev")
    assert not problems and [ds.name for ds in datasets] == ["birds", "cars"]
    assert sum(len(ds.images) for ds in datasets) == 19
    assert all(len(set(ds.ids)) == len(ds.ids) for ds in datasets)


def test_resnet50_has_torchvisions_parameter_count() -> None:
    from contest.resnet50 import resnet50

    assert sum(p.numel() for p in resnet50().parameters()) == 25_557_032


def test_bench_measures_every_pipeline(model_with_int8: Path, small_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    rc = bench.main(["--model", str(model_with_int8), "--data", str(small_data),
                     "--repeat-to", "12", "--large", "2", "--baseline-size", "32", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["sets"] == {"dev": 12, "large": 2}
    for set_name, rows in report["results"].items():
        by = {r["pipeline"]: r for r in rows}
        assert set(by) == {"ours", "ours-int8", "baseline", "ceiling"}
        for row in rows:
            assert row["images"] == report["sets"][set_name]
            assert min(row["images_per_s"], row["steady_images_per_s"], row["cpu_images_per_s"]) > 0
            assert row["peak_rss_mb"] > 0
            assert row["images_per_s"] == pytest.approx(row["images"] / row["wall_s"])
        for name in ("ours", "ours-int8"):
            rat = report["ratios"][set_name][name]
            assert rat["vs_baseline"] == pytest.approx(by[name]["images_per_s"] / by["baseline"]["images_per_s"])
            assert rat["vs_baseline_cpu"] == pytest.approx(
                by[name]["cpu_images_per_s"] / by["baseline"]["cpu_images_per_s"])
            assert rat["vs_ceiling_steady"] == pytest.approx(
                by[name]["steady_images_per_s"] / by["ceiling"]["steady_images_per_s"])
    assert report["gate"] == [] and "gate" not in capsys.readouterr().out  # speed is reported, not judged
    assert {r["pipeline"]: r.get("rung") for r in report["results"]["dev"]}["ours-int8"] == "int8"
    assert not any("skipped" in note for note in report["notes"])
    assert report["legs"]["ours-int8"] == f"--model {model_with_int8} --variant int8"
    out2 = tmp_path / "gated.json"
    rc = bench.main(["--model", str(model_with_int8), "--data", str(small_data), "--repeat-to", "4", "--large", "0",
                     "--baseline-size", "32", "--out", str(out2), "--min-ratio", "1e9"])
    table = capsys.readouterr().out
    assert rc == 1 and "NOT MET" in table
    gated = json.loads(out2.read_text(encoding="utf-8"))["gate"]
    assert {g["pipeline"] for g in gated} == {"ours", "ours-int8"} and not any(g["passed"] for g in gated)
    assert "ours-int8" in table and "baseline" in table and "ceiling" in table and "int8" in table


def test_int8_leg_is_skipped_with_a_note_when_its_folder_is_missing(tiny_model: Path, small_data: Path,
                                                                    tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    missing = tmp_path / "no_int8_model"
    rc = bench.main(["--model", str(tiny_model), "--int8-model", str(missing), "--data", str(small_data),
                     "--repeat-to", "4", "--large", "0", "--baseline-size", "32", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [r["pipeline"] for r in report["results"]["dev"]] == ["ours", "baseline", "ceiling"]
    assert any(str(missing) in note for note in report["notes"])
    assert str(missing) in capsys.readouterr().out


def test_missing_model_is_a_clear_error(small_data: Path, tmp_path: Path) -> None:
    assert bench.main(["--model", str(tmp_path / "nope"), "--data", str(small_data), "--out",
                       str(tmp_path / "b.json")]) == 2
    assert not (tmp_path / "b.json").exists()

