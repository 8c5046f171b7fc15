"""zeroshot.retrieve: the index cache, queries, image-to-text, recall, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

import numpy as np
import pytest

from datagen import COLORS, photo

from zeroshot import retrieve
from zeroshot.encoders import Model
from zeroshot.scoring import class_logits


def lines(out: str) -> List[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        photo(rng, COLORS[i], (40, 30)).save(root / f"a{i}.jpg")
    photo(rng, COLORS[5], (30, 40)).save(root / "sub" / "b.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / ".hidden.jpg").write_bytes(b"")
    return root


@pytest.fixture()
def run(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    """Call retrieve.main with a model; returns (exit code, stdout JSON lines, log text)."""
    def call(model: Path, *argv: str) -> tuple:
        caplog.clear()
        code = retrieve.main(["--model", str(model), *argv])
        return code, lines(capsys.readouterr().out), caplog.text
    return call


def test_index_caches_by_hash_and_reencodes_only_changes(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    index = tmp_path / "idx.npz"
    code, out, err = run(tiny_model, "index", str(folder), str(index))
    assert code == 0
    assert out[0]["images"] == 7 and out[0]["indexed"] == 6 and out[0]["failed"] == 1 and out[0]["encoded"] == 6
    assert "broken.jpg" in err  # reported, not fatal
    first = retrieve.load_index(index)
    assert first.paths == ["a0.jpg", "a1.jpg", "a2.jpg", "a3.jpg", "a4.jpg", "sub/b.png"]
    code, out, _ = run(tiny_model, "index", str(folder), str(index))
    assert out[0]["reused"] == 7 - 1 and out[0]["encoded"] == 0  # only the broken file is tried again
    # one file changed, one moved, one added, one removed
    photo(np.random.default_rng(1), COLORS[3], (44, 30)).save(folder / "a0.jpg")
    os.replace(folder / "a1.jpg", folder / "sub" / "moved.jpg")
    photo(np.random.default_rng(2), COLORS[2], (40, 30)).save(folder / "new.jpg")
    (folder / "a2.jpg").unlink()
    code, out, _ = run(tiny_model, "index", str(folder), str(index))
    assert out[0]["encoded"] == 2 and out[0]["indexed"] == 6  # a0 and new; moved.jpg reused by hash
    second = retrieve.load_index(index)
    assert "a2.jpg" not in second.paths and "sub/moved.jpg" in second.paths
    np.testing.assert_array_equal(second.vectors[second.paths.index("sub/moved.jpg")],
                                  first.vectors[first.paths.index("a1.jpg")])


def test_query_ranks_by_the_manifest_score(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    index = tmp_path / "idx.npz"
    run(tiny_model, "index", str(folder), str(index))
    code, out, err = run(tiny_model, "query", str(index), "красная машина", "  ", "a dog", "-k", "3")
    assert code == 0 and "text 2 is empty" in err
    assert [r["query"] for r in out] == ["красная машина"] * 3 + ["a dog"] * 3
    assert [r["rank"] for r in out[:3]] == [1, 2, 3]
    scores = [r["score"] for r in out[:3]]
    assert scores == sorted(scores, reverse=True)
    model = Model(tiny_model)
    idx = retrieve.load_index(index)
    expected = class_logits(idx.vectors, model.class_vectors(["красная машина"]), model.manifest.score)[:, 0]
    best = int(np.argmax(expected))
    assert out[0]["path"] == str(folder / idx.paths[best])
    assert out[0]["score"] == pytest.approx(float(expected[best]), abs=1e-5)
    code, out, _ = run(tiny_model, "query", str(index), "", "-k", "3")
    assert code == 1 and out == []


def test_index_of_another_model_is_refused(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    from train.tiny_model import build_tiny_model

    other = tmp_path / "other_model"
    build_tiny_model(other, seed=1)
    index = tmp_path / "idx.npz"
    run(tiny_model, "index", str(folder), str(index))
    code, out, err = run(other, "query", str(index), "кот")
    assert code == 2 and "another model" in err and out == []
    (tmp_path / "junk.npz").write_bytes(b"junk")
    code, _, err = run(tiny_model, "query", str(tmp_path / "junk.npz"), "кот")
    assert code == 2 and "not a retrieval index" in err


def test_describe_ranks_captions_per_image(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("красный квадрат\n\nзелёный круг\nсиний фон\nкрасный квадрат\n", encoding="utf-8")
    code, out, err = run(tiny_model, "describe", str(captions), str(folder / "a0.jpg"),
                         str(folder / "sub"), str(folder / "broken.jpg"), "-k", "2")
    assert code == 0 and "broken.jpg" in err
    assert [(r["image"], r["rank"]) for r in out] == [(str(folder / "a0.jpg"), 1), (str(folder / "a0.jpg"), 2),
                                                      (str(folder / "sub" / "b.png"), 1),
                                                      (str(folder / "sub" / "b.png"), 2)]
    assert {r["caption"] for r in out} <= {"красный квадрат", "зелёный круг", "синий фон"}


def test_recall_counts_any_relevant_item() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    ranks = retrieve.first_hit_ranks(scores, [[2, 1], [0]])
    assert ranks.tolist() == [1, 1]
    assert retrieve.recalls(np.array([0, 1, 7, 20])) == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0}


def test_eval_reads_csv_and_json_lines(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    index = tmp_path / "idx.npz"
    run(tiny_model, "index", str(folder), str(index))
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text("image,caption\na0.jpg,красный\na1,зелёный\nsub/b.png,розовый\nmissing.jpg,нет\n"
                        "a2.jpg,\n", encoding="utf-8")
    code, out, err = run(tiny_model, "eval", str(index), str(csv_path))
    assert code == 0 and "missing.jpg" in err and "empty image or caption" in err
    report = out[0]
    assert report["pairs"] == 3 and report["captions"] == 3 and report["unmatched_images"] == 1
    assert set(report["text_to_image"]) == {"R@1", "R@5", "R@10"}
    assert report["text_to_image"]["R@10"] == 100.0  # 6 images indexed: every caption's image is in the top 10
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"image": "a0.jpg", "caption": "красный"}\nnot json\n{"image": "a3.jpg", "text": "жёлтый"}\n',
                     encoding="utf-8")
    code, out, err = run(tiny_model, "eval", str(index), str(jsonl))
    assert code == 0 and out[0]["pairs"] == 2 and "not JSON" in err
