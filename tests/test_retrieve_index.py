"""zeroshot.retrieve_store + zeroshot.retrieve_index on synthetic vectors: the search index follows the collection's
size, matches brute force, catches up with new and deleted files without training again, and compaction keeps
the answers."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from zeroshot import retrieve_index
from zeroshot.manifest import ScoreConfig
from zeroshot.retrieve_index import Searcher, compact, refresh, search
from zeroshot.retrieve_store import FileRecord, Store
from zeroshot.scoring import class_logits

DIM = 16
DOT = ScoreConfig(similarity="dot", logit="linear", scale=1.0)
COSINE = ScoreConfig(similarity="cosine", logit="linear", scale=10.0)


def add_files(store: Store, vectors: np.ndarray, prefix: str) -> List[str]:
    """Commit ``vectors`` as files ``<prefix><i>.jpg`` (one new vector each); returns their paths."""
    names = [f"{prefix}{i}.jpg" for i in range(len(vectors))]
    records = {name: FileRecord(store.next_id + i, f"{prefix}-{i}", 1, 1) for i, name in enumerate(names)}
    store.commit(vectors.astype(np.float32), records, [])
    return names


def clustered(rng: np.random.Generator, n: int, centres: int = 8) -> np.ndarray:
    """(n, DIM) vectors around ``centres`` random directions."""
    means = rng.normal(size=(centres, DIM))
    return means[rng.integers(centres, size=n)] + 0.3 * rng.normal(size=(n, DIM))


def brute_force(store: Store, queries: np.ndarray, k: int, score: ScoreConfig) -> Tuple[np.ndarray, np.ndarray]:
    """The k best live ids per query by the manifest score over every live vector (ties: lower id first)."""
    live = store.live_ids()
    scores = class_logits(store.vectors(live), queries, score)
    order = [np.lexsort((live, -scores[:, q]))[:k] for q in range(len(queries))]
    return np.stack([live[o] for o in order]), np.stack([scores[o, q] for q, o in enumerate(order)])


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store.create(tmp_path / "idx", tmp_path / "images", "signature")


def test_the_index_type_follows_the_collection_size(store: Store) -> None:
    rng = np.random.default_rng(0)
    add_files(store, clustered(rng, 60), "a")
    entry = refresh(store, exact_max=100, cosine=False)
    assert entry["type"] == "flat" and entry["file"] is None and not list(store.path.glob("search-*"))
    add_files(store, clustered(rng, 340), "b")
    entry = refresh(store, exact_max=100, cosine=False)
    assert entry["type"] == "ivfpq" and entry["factory"] == "IVF8,PQ16x8np" and entry["nprobe"] == 8
    assert entry["vectors"] == 400 and entry["segments"] == 2 and (store.path / entry["file"]).is_file()
    assert Store.open(store.path).meta["search"] == entry  # committed with its parameters
    store.commit(np.zeros((0, DIM), np.float32), {}, [f"b{i}.jpg" for i in range(340)])
    entry = refresh(store, exact_max=100, cosine=False)
    assert entry["type"] == "flat" and not list(store.path.glob("search-*"))


def test_the_spec_scales_with_the_collection() -> None:
    assert retrieve_index.choose_spec(10 ** 5, 1280, True)["type"] == "flat"
    big = retrieve_index.choose_spec(10 ** 6, 1280, True)
    assert big["factory"] == "IVF1024,PQ64x8np" and big["train_size"] == 65536
    assert retrieve_index.choose_spec(10 ** 8, 1000, False)["factory"] == "IVF8192,PQ50x8np"


@pytest.mark.parametrize("score", [DOT, COSINE], ids=["dot", "cosine"])
def test_search_matches_brute_force(store: Store, score: ScoreConfig) -> None:
    rng = np.random.default_rng(1)
    add_files(store, clustered(rng, 150), "a")
    queries = clustered(rng, 12).astype(np.float32)
    cosine = score.similarity == "cosine"
    refresh(store, exact_max=1000, cosine=cosine)
    ids, scores = search(Searcher(store, cosine), queries, 5, score)
    want_ids, want_scores = brute_force(store, queries, 5, score)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    entry = refresh(store, exact_max=100, cosine=cosine)
    assert entry["type"] == "ivfpq"
    # every list probed and every vector a candidate: IVF-PQ then returns exactly what brute force does
    ids, scores = search(Searcher(store, cosine), queries, 5, score, nprobe=entry["nlist"], refine=40)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_updates_catch_up_without_training_again(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(2)
    add_files(store, clustered(rng, 400), "a")
    first = refresh(store, exact_max=100, cosine=False)
    monkeypatch.setattr(retrieve_index, "_train", lambda *a: pytest.fail("trained again"))
    add_files(store, clustered(rng, 40), "b")
    store.commit(np.zeros((0, DIM), np.float32), {}, [f"a{i}.jpg" for i in range(0, 400, 4)])  # 100 tombstones
    queries = clustered(rng, 10).astype(np.float32)
    want_ids, _ = brute_force(store, queries, 5, DOT)
    caplog.clear()
    stale, _ = search(Searcher(store, False), queries, 5, DOT, nprobe=first["nlist"], refine=100)
    assert "covers 1 of 3 segments" in caplog.text  # not refreshed yet: caught up in memory
    np.testing.assert_array_equal(stale, want_ids)
    entry = refresh(store, exact_max=100, cosine=False)
    assert entry["file"] != first["file"] and entry["vectors"] == 340 and entry["segments"] == 3
    assert not (store.path / first["file"]).exists()
    ids, _ = search(Searcher(store, False), queries, 5, DOT, nprobe=first["nlist"], refine=100)
    np.testing.assert_array_equal(ids, want_ids)


def test_compaction_drops_tombstones_and_keeps_the_answers(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    names = add_files(store, clustered(rng, 600), "a")
    store.commit(np.zeros((0, DIM), np.float32), {"copy.jpg": store.files["a7.jpg"]}, names[::3])
    first = refresh(store, exact_max=100, cosine=True)
    queries = clustered(rng, 10).astype(np.float32)
    ids, scores = search(Searcher(store, True), queries, 5, COSINE, nprobe=8, refine=100)
    before = [[store.paths_by_id()[i] for i in row] for row in ids]
    old_files = {p.name for p in (store.path / "seg").iterdir()}
    monkeypatch.setattr(retrieve_index, "_train", lambda *a: pytest.fail("trained again"))
    new = compact(store, exact_max=100, cosine=True)
    assert new.next_id == 400 and len(new.files) == 401 and new.files["copy.jpg"].id == new.files["a7.jpg"].id
    assert not old_files & {p.name for p in (new.path / "seg").iterdir()}  # the old shards are gone
    reopened = Store.open(new.path)
    assert reopened.meta["search"]["vectors"] == 400 and reopened.meta["search"]["factory"] == first["factory"]
    ids2, scores2 = search(Searcher(reopened, True), queries, 5, COSINE, nprobe=8, refine=100)
    assert [[reopened.paths_by_id()[i] for i in row] for row in ids2] == before
    np.testing.assert_allclose(scores2, scores, rtol=1e-6)


def test_unreferenced_files_of_a_killed_writer_are_removed(store: Store) -> None:
    add_files(store, clustered(np.random.default_rng(4), 10), "a")
    torn = [store.path / "seg" / "000001.npy", store.path / "search-000007.faiss", store.path / ".index.json.x.tmp"]
    for path in torn:
        path.write_bytes(b"torn")
    reopened = Store.open(store.path)
    assert len(reopened.segments) == 1
    reopened.remove_unreferenced()
    assert not any(p.exists() for p in torn) and (store.path / "seg" / "000000.npy").is_file()


def test_vectors_are_read_by_id_in_any_order(store: Store) -> None:
    rng = np.random.default_rng(5)
    parts = [rng.normal(size=(n, DIM)).astype(np.float32) for n in (7, 300, 5)]
    for i, part in enumerate(parts):
        add_files(store, part, f"p{i}-")
    every = np.concatenate(parts)
    for ids in (np.array([311, 0, 6, 7, 306, 8]), rng.permutation(312), np.arange(10, 300, 97), np.array([], int)):
        np.testing.assert_array_equal(Store.open(store.path).vectors(ids), every[ids])
    with pytest.raises(ValueError, match="not in the index"):
        store.vectors(np.array([312]))

