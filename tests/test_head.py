"""zeroshot.head: training a logistic-regression head into a model folder, and predict.sh using it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_round_trips, read_json, run_predict_sh
from datagen import COLORS, make_dataset, photo

from zeroshot.encoders import Model
from zeroshot.head import main as head_main
from zeroshot.linear import fit_logistic, read_head
from zeroshot.manifest import load_manifest

CLASSES = ["красный", "зелёный", "синий"]


def class_folders(root: Path, n_per_class: int, seed: int) -> Path:
    """root/<class>/ with noisy images of the class's colour (datagen.COLORS order)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            photo(rng, COLORS[label], (40 + 3 * i, 36)).save(folder / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def headed_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("head")
    data = class_folders(root / "data", 6, seed=3)
    (data / CLASSES[0] / "broken.jpg").write_bytes(b"not an image")
    out = root / "model_with_head"
    assert head_main(["--model", str(tiny_model), "train", str(data), str(out), "--zero-shot"]) == 0
    return out


def test_logistic_regression_separates_and_the_offset_counts() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 5)) * 0.3
    x[np.arange(60), y] += 2.0
    fit = fit_logistic(x, y, 3, l2=1e-3, iterations=300)
    assert np.mean(np.argmax(x @ fit["weights"] + fit["bias"], axis=1) == y) == 1.0
    # a base that already explains the labels leaves little for the weights to learn
    base = np.full((60, 3), -10.0)
    base[np.arange(60), y] = 10.0
    with_base = fit_logistic(x, y, 3, base=base, l2=1e-3, iterations=300)
    assert np.abs(with_base["weights"]).sum() < 0.1 * np.abs(fit["weights"]).sum()


def test_train_writes_a_validated_head_into_a_new_model_folder(headed_model: Path, tiny_model: Path) -> None:
    manifest = assert_round_trips(headed_model)
    assert manifest.head.classes == sorted(CLASSES)
    assert manifest.head.training["records"] == 18 and manifest.head.training["skipped"] == 1  # the broken file
    head = read_head(headed_model / manifest.files["head"].path)
    assert head.weights.shape == (16, 3)
    assert load_manifest(tiny_model).head is None  # the base model is untouched
    assert Model(headed_model).head is not None


def test_predict_sh_uses_the_head_for_matching_classes_only(headed_model: Path, tiny_model: Path,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    # the head's classes in another order and spelling: still the head's dataset
    order = ["Синий ", "красный", "зеленый"]
    colors = [2, 0, 1]
    ds = root / "colors"
    rng = np.random.default_rng(9)
    (ds / "img").mkdir(parents=True)
    (ds / "classes.json").write_text(json.dumps(order, ensure_ascii=False), encoding="utf-8")
    truth = {}
    for i in range(24):
        label = i % 3
        photo(rng, COLORS[colors[label]], (50, 40)).save(ds / "img" / f"{i}.jpg")
        truth[str(i)] = label
    make_dataset(root, "other", ["кошка", "собака"], 6)
    results = {}
    for name, model in (("head", headed_model), ("zero-shot", tiny_model)):
        out = tmp_path / f"{name}.json"
        proc = run_predict_sh(root, out, model)
        assert proc.returncode == 0, proc.stderr
        results[name] = read_json(out)
        assert ("match the trained head" in proc.stderr) == (name == "head")
    accuracy = np.mean([results["head"]["colors"][k] == v for k, v in truth.items()])
    zero_shot = np.mean([results["zero-shot"]["colors"][k] == v for k, v in truth.items()])
    assert accuracy >= 0.9 and zero_shot < 0.7, (accuracy, zero_shot)
    assert results["head"]["other"] == results["zero-shot"]["other"]


def test_csv_records_with_text_and_bad_rows(tiny_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = ["image,text,label"]
    for i in range(12):
        label = i % 3
        photo(rng, COLORS[label], (40, 40)).save(tmp_path / f"p{i}.png")
        text = "" if i % 4 == 0 else f"товар {CLASSES[label]}"
        rows.append(f"p{i}.png,{text},{CLASSES[label]}")
    rows += ["missing.png,нет файла,красный", "p0.png,без метки,"]
    csv_path = tmp_path / "records.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "model"
    assert head_main(["--model", str(tiny_model), "train", str(csv_path), str(out)]) == 0
    manifest = load_manifest(out)
    assert manifest.head.text is True and manifest.head.zero_shot is False
    assert manifest.head.classes == CLASSES  # CSV: order of first appearance
    assert manifest.head.training["records"] == 12 and manifest.head.training["skipped"] == 1
    head = Model(out).head
    assert head is not None and head.weights.shape == (32, 3)


def test_a_corrupt_head_file_is_a_model_error(headed_model: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(headed_model, broken)
    (broken / "head.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="head.npz"):
        Model(broken)
    manifest = json.loads((broken / "manifest.json").read_text(encoding="utf-8"))
    manifest["head"]["classes"] = ["один"]
    (broken / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match="head.classes"):
        load_manifest(broken)


def test_train_reports_unusable_data(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    assert head_main(["--model", str(tiny_model), "train", str(tmp_path), str(tmp_path / "o")]) == 2
    assert head_main(["--model", str(tiny_model), "train", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2


def test_the_archive_ships_the_head(headed_model: Path) -> None:
    from contest.bundle import model_entries

    names = {entry.arcname for entry in model_entries(headed_model)}
    assert "model/head.npz" in names and "model/manifest.json" in names
