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
from zeroshot.retrieve_store import Store
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
    index = tmp_path / "idx"
    code, out, err = run(tiny_model, "index", str(folder), str(index))
    assert code == 0
    assert out[0]["images"] == 7 and out[0]["indexed"] == 6 and out[0]["failed"] == 1 and out[0]["encoded"] == 6
    assert "broken.jpg" in err  # reported, not fatal
    first = retrieve.load_index(Store.open(index))
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
    second = retrieve.load_index(Store.open(index))
    assert "a2.jpg" not in second.paths and "sub/moved.jpg" in second.paths
    np.testing.assert_array_equal(second.vectors[second.paths.index("sub/moved.jpg")],
                                  first.vectors[first.paths.index("a1.jpg")])


def test_query_ranks_by_the_manifest_score(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    index = tmp_path / "idx"
    run(tiny_model, "index", str(folder), str(index))
    code, out, err = run(tiny_model, "query", str(index), "красная машина", "  ", "a dog", "-k", "3")
    assert code == 0 and "text 2 is empty" in err
    assert [r["query"] for r in out] == ["красная машина"] * 3 + ["a dog"] * 3
    assert [r["rank"] for r in out[:3]] == [1, 2, 3]
    scores = [r["score"] for r in out[:3]]
    assert scores == sorted(scores, reverse=True)
    model = Model(tiny_model)
    idx = retrieve.load_index(Store.open(index))
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
    index = tmp_path / "idx"
    run(tiny_model, "index", str(folder), str(index))
    code, out, err = run(other, "query", str(index), "кот")
    assert code == 2 and "another model" in err and out == []
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "index.json").write_bytes(b"junk")
    code, _, err = run(tiny_model, "query", str(tmp_path / "junk"), "кот")
    assert code == 2 and "not a retrieval index" in err
    (tmp_path / "old.npz").write_bytes(b"an index of the single-file format")
    code, _, err = run(tiny_model, "index", str(folder), str(tmp_path / "old.npz"))
    assert code == 2 and "is a file; an index is a folder" in err


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
    index = tmp_path / "idx"
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


def shard_files(index: Path) -> dict:
    """name -> (inode, mtime_ns, bytes) of every file of the index's shard folder."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in (index / "seg").iterdir()}


def test_an_update_writes_only_new_shards(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    index = tmp_path / "idx"
    run(tiny_model, "index", str(folder), str(index), "--batch", "2")
    before = shard_files(index)
    assert sorted(before) == ["000000.json", "000000.npy", "000001.json", "000001.npy", "000002.json",
                              "000002.npy", "000003.json", "000003.npy"]  # 7 contents, 2 a commit
    photo(np.random.default_rng(1), COLORS[3], (44, 30)).save(folder / "a0.jpg")   # changed
    os.replace(folder / "a1.jpg", folder / "sub" / "moved.jpg")                     # moved
    photo(np.random.default_rng(2), COLORS[2], (40, 30)).save(folder / "new.jpg")  # added
    (folder / "a2.jpg").unlink()                                                    # deleted
    code, out, _ = run(tiny_model, "index", str(folder), str(index), "--batch", "2")
    assert code == 0 and out[0]["encoded"] == 2 and out[0]["removed"] == 2 and out[0]["indexed"] == 6
    after = shard_files(index)
    assert {name: after[name] for name in before} == before  # nothing committed was written again
    # the moves and deletions (no vectors), then a0 + broken.jpg (tried again), then new.jpg
    assert sorted(set(after) - set(before)) == ["000004.json", "000005.json", "000005.npy", "000006.json",
                                                "000006.npy"]
    store = Store.open(index)
    assert store.next_id == 8 and len(store.live_ids()) == 6  # a0's old vector and a2's are tombstones
    code, out, _ = run(tiny_model, "query", str(index), "красная машина", "-k", "6")
    code, compacted, _ = run(tiny_model, "compact", str(index))
    assert compacted[0]["vectors_before"] == 8 and compacted[0]["vectors"] == 6
    assert not set(before) & set(shard_files(index))
    code, again, _ = run(tiny_model, "query", str(index), "красная машина", "-k", "6")
    assert again == out


def test_a_killed_index_run_resumes_to_the_same_index(tiny_model: Path, folder: Path, tmp_path: Path, run) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(tiny_model, "index", str(folder), str(whole), "--batch", "2")
    model = Model(tiny_model)
    store = Store.create(cut, folder.resolve(), retrieve.model_signature(model, None))

    def kill_after_two(store: Store) -> None:
        if len(store.segments) == 2:
            raise KeyboardInterrupt  # as a kill: nothing after this commit runs
    with pytest.raises(KeyboardInterrupt):
        retrieve.update_index(model, store, folder.resolve(), 2, after_commit=kill_after_two)
    (cut / "seg" / "000002.npy").write_bytes(b"the batch in flight, written but not committed")
    assert len(Store.open(cut).segments) == 2
    code, out, _ = run(tiny_model, "index", str(folder), str(cut), "--batch", "2")
    assert code == 0 and out[0]["reused"] == 4 and out[0]["encoded"] == 2 and out[0]["failed"] == 1
    assert json.loads((cut / "index.json").read_text()) == json.loads((whole / "index.json").read_text())
    assert shard_files(cut).keys() == shard_files(whole).keys()
    for name in shard_files(whole):
        if name.endswith(".json"):
            assert json.loads((cut / "seg" / name).read_text()) == json.loads((whole / "seg" / name).read_text())
        else:
            np.testing.assert_array_equal(np.load(cut / "seg" / name), np.load(whole / "seg" / name))
