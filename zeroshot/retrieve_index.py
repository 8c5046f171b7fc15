"""The search index over a retrieval store's vectors (FAISS), chosen by collection size, updated in place.

Up to ``exact_max`` live vectors (:data:`EXACT_MAX` by default) search is
exact: an ``IndexFlatIP`` filled from the shards when a query command starts,
nothing more on disk. Beyond that, an IVF index of product-quantised codes
(factory ``IVF{nlist},PQ{m}x{bits}np``, inner product; ``np``: no polysemous
training, which only serves Hamming filtering and costs seconds per
sub-quantizer) is trained on a sample of the live vectors and kept in
``search-NNNNNN.faiss``; a query probes ``nprobe`` of its lists and scores the
best ``refine`` x k candidates exactly from the shards (the manifest's score,
as brute force would). Every parameter goes into index.json's ``search``
entry, with the number of segments the file covers. A refresh adds the ids of
newer segments and removes the ids no file refers to any more; the index is
trained again only when the chosen parameters change (the collection crossed
``exact_max``, or grew or shrank enough for another ``nlist``). With the
manifest's ``cosine`` similarity the index holds L2-normalised copies, and
queries are normalised too.

Only ``zeroshot.retrieve`` imports this module: FAISS (``pip install faiss-cpu``,
in requirements-build.txt) is a side tool's dependency, never the judge's.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .manifest import ScoreConfig
from .progress import Progress
from .outputs import atomic_open
from .retrieve_store import Store, compacted, replay
from .scoring import class_logits

try:
    import faiss
except ImportError as _exc:  # pragma: no cover - the message is the point
    raise ImportError("zeroshot.retrieve needs FAISS: pip install faiss-cpu (requirements-build.txt has it; "
                      "the judge's archive does not)") from _exc

logger = logging.getLogger(__name__)

EXACT_MAX = 100_000       # live vectors up to which search is exact (IndexFlatIP)
PQ_M = 64                 # product-quantiser sub-vectors (the largest divisor of D up to this)
TRAIN_PER_LIST = 64       # training vectors per inverted list
MIN_TRAIN = 16_384        # and at least this many (the PQ's 256 centroids per sub-vector)
NPROBE = 32               # lists probed per query
REFINE = 10               # candidates per result scored exactly
ADD_CHUNK = 4096          # vectors per add() call: PQ encoding holds a (chunk, m, 256) float32 table


def choose_spec(n: int, dim: int, cosine: bool, exact_max: int = EXACT_MAX) -> Dict[str, Any]:
    """The search index's parameters for ``n`` live vectors of size ``dim``.

    ``flat`` up to ``exact_max``; beyond, IVF-PQ with ``nlist`` the power of 2
    nearest sqrt(n) (at most n / 39: faiss's minimum of training points per
    list), ``m`` the largest divisor of ``dim`` up to :data:`PQ_M`, 8-bit codes
    (fewer when fewer than 256 training vectors exist).
    """
    base = {"metric": "inner_product", "normalized": cosine}
    if n <= exact_max:
        return dict(base, type="flat", factory="Flat")
    nlist = 2 ** max(0, min(round(math.log2(math.sqrt(n))), int(math.log2(max(n // 39, 1)))))
    m = max(d for d in range(1, min(PQ_M, dim) + 1) if dim % d == 0)
    train = min(n, max(TRAIN_PER_LIST * nlist, MIN_TRAIN))
    bits = min(8, int(math.log2(train)))
    return dict(base, type="ivfpq", factory=f"IVF{nlist},PQ{m}x{bits}np", nlist=nlist, pq_m=m, pq_bits=bits,
                train_size=train, nprobe=min(NPROBE, nlist), refine=REFINE)


def _same_index(old: Optional[Dict[str, Any]], spec: Dict[str, Any]) -> bool:
    """True when ``old``'s file holds an index of ``spec``'s kind (query-time knobs may differ)."""
    return bool(old and old.get("file") and old["factory"] == spec["factory"]
                and old["normalized"] == spec["normalized"])


def _prepared(vectors: np.ndarray, normalized: bool) -> np.ndarray:
    """float32 C-contiguous copy of (N, D) ``vectors``, L2-normalised when ``normalized``."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if normalized and len(out):
        faiss.normalize_L2(out)
    return out


def _add(index: Any, store: Store, ids: np.ndarray, normalized: bool, name: str) -> None:
    """Add the vectors of ``ids`` to ``index`` in chunks, logging progress."""
    progress = Progress(name, len(ids), unit="vectors")
    done = 0
    for part, vectors in store.iter_vectors(ids, ADD_CHUNK):
        index.add_with_ids(_prepared(vectors, normalized), part)
        done += len(part)
        progress.update(done, force=done == len(ids))


def _train(store: Store, live: np.ndarray, spec: Dict[str, Any]) -> Any:
    """An empty IVF-PQ index of ``spec`` trained on a seeded sample of ``live`` (spec's train_size)."""
    sample = np.sort(np.random.default_rng(0).choice(live, size=spec["train_size"], replace=False))
    start = time.monotonic()
    index = faiss.index_factory(int(store.meta["dim"]), spec["factory"], faiss.METRIC_INNER_PRODUCT)
    index.train(_prepared(store.vectors(sample), spec["normalized"]))
    logger.info("search index %s trained on %d vectors in %.1f s", spec["factory"], len(sample),
                time.monotonic() - start)
    return index


def _catch_up(index: Any, store: Store, entry: Dict[str, Any], live: np.ndarray) -> None:
    """Bring a file written at ``entry['segments']`` segments to the store's state: add new ids, drop dead ones."""
    before = np.unique(np.array([r.id for r in replay(store.path, store.segments[:entry["segments"]]).values()],
                                dtype=np.int64))
    dead = np.setdiff1d(before, live)
    if len(dead):
        index.remove_ids(dead)
    fresh = np.setdiff1d(live, before)
    if len(fresh):
        _add(index, store, fresh, entry["normalized"], "search index")
    logger.info("search index: %d vectors added, %d tombstones removed", len(fresh), len(dead))


def refresh(store: Store, exact_max: int, cosine: bool) -> Dict[str, Any]:
    """Bring the search index up to date with the store and commit its entry in index.json; returns the entry."""
    live = store.live_ids()
    spec = dict(choose_spec(len(live), int(store.meta["dim"]), cosine, exact_max), exact_max=exact_max)
    old = store.meta.get("search")
    if spec["type"] == "flat":
        return _commit(store, dict(spec, vectors=len(live), file=None), bump=False)
    if _same_index(old, spec) and old["segments"] == len(store.segments):
        return old
    if _same_index(old, spec):
        index = faiss.read_index(str(store.path / old["file"]))
        _catch_up(index, store, old, live)
        spec["train_size"] = old["train_size"]
    else:
        index = _train(store, live, spec)
        _add(index, store, live, spec["normalized"], "search index")
    return _write_index(store, index, spec)


def compact(store: Store, exact_max: int, cosine: bool) -> Store:
    """Re-pack the live vectors under new ids (:func:`compacted`), drop the tombstones, commit; returns the new store.

    An IVF index of unchanged parameters keeps its training (emptied and
    filled again with the new ids); otherwise :func:`refresh` chooses and builds one.
    """
    old = store.meta.get("search")
    new = compacted(store)
    live = new.live_ids()
    spec = dict(choose_spec(len(live), int(new.meta["dim"]), cosine, exact_max), exact_max=exact_max)
    if not _same_index(old, spec):
        new.write_meta(new.meta)
        refresh(new, exact_max, cosine)
        return new
    index = faiss.read_index(str(store.path / old["file"]))
    index.reset()
    _add(index, new, live, spec["normalized"], "search index")
    _write_index(new, index, dict(spec, train_size=old["train_size"]))
    return new


def _write_index(store: Store, index: Any, spec: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``index`` under a new search file name and commit it with ``spec``; returns the entry."""
    name = f"search-{int(store.meta['next_search']):06d}.faiss"
    with atomic_open(store.path / name, "wb") as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
    return _commit(store, dict(spec, vectors=int(index.ntotal), file=name), bump=True)


def _commit(store: Store, entry: Dict[str, Any], bump: bool) -> Dict[str, Any]:
    """Commit ``entry`` (covering every segment) as the search index; ``bump``: a new file name was used."""
    entry = dict(entry, segments=len(store.segments))
    store.write_meta(dict(store.meta, search=entry, next_search=int(store.meta["next_search"]) + int(bump)))
    store.remove_unreferenced()
    return entry


def _flat(store: Store, ids: np.ndarray, normalized: bool) -> Any:
    """An IndexFlatIP whose row i is the vector of ``ids[i]``, filled in place (one copy of the vectors in memory)."""
    dim = max(int(store.meta["dim"]), 1)
    index = faiss.IndexFlatIP(dim)
    if not len(ids):
        return index
    index.codes.resize(len(ids) * dim * 4)
    rows = faiss.rev_swig_ptr(index.codes.data(), len(ids) * dim * 4).view(np.float32).reshape(len(ids), dim)
    progress = Progress("exact search index", len(ids), unit="vectors")
    done = 0
    for part, vectors in store.iter_vectors(ids, ADD_CHUNK):
        rows[done:done + len(part)] = _prepared(vectors, normalized)
        done += len(part)
        progress.update(done, force=done == len(ids))
    index.ntotal = len(ids)
    return index


class Searcher:
    """The store's search index loaded for queries: the committed IVF file, or an exact IndexFlatIP in memory.

    An IVF file that covers fewer segments than the store (an ``index`` run was
    killed before its refresh) is brought up to date in memory, with a warning.
    ``cosine``: the manifest's similarity is cosine (vectors and queries are
    L2-normalised for the inner product).
    """

    def __init__(self, store: Store, cosine: bool, threads: int = 1) -> None:
        faiss.omp_set_num_threads(threads)
        self.store, self.normalized = store, cosine
        live = store.live_ids()
        entry = store.meta.get("search") or {}
        self.nprobe, self.refine = int(entry.get("nprobe", 0)), int(entry.get("refine", 0))
        if entry.get("file") and entry["normalized"] == cosine:
            self.index = faiss.read_index(str(store.path / entry["file"]))
            if entry["segments"] != len(store.segments):
                logger.warning("%s: the search index covers %d of %d segments (an interrupted 'index' run?); "
                               "catching up in memory, run 'index' again to save it", store.path,
                               entry["segments"], len(store.segments))
                _catch_up(self.index, store, entry, live)
            return
        if len(live) > int(entry.get("exact_max", EXACT_MAX)):
            logger.warning("%s: no search index for this score (an interrupted 'index' run?): exact search over %d "
                           "vectors; run 'index' again to build it", store.path, len(live))
        self.nprobe = self.refine = 0
        self.ids = live
        self.index = _flat(store, live, cosine)

    def candidates(self, queries: np.ndarray, k: int, nprobe: Optional[int] = None,
                   refine: Optional[int] = None) -> np.ndarray:
        """int64 (M, K) candidate ids per float32 (M, D) query, -1 where fewer exist.

        K is ``k`` for the exact index, ``k`` x ``refine`` for IVF (each list of
        ``nprobe`` probed); the caller scores them exactly (:func:`search`).
        """
        if self.index.ntotal == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), dtype=np.int64)
        q = _prepared(queries, self.normalized)
        if not self.nprobe:
            rows = self.index.search(q, k)[1]
            return np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        faiss.extract_index_ivf(self.index).nprobe = nprobe or self.nprobe
        return self.index.search(q, k * (refine or self.refine))[1]


def search(searcher: Searcher, queries: np.ndarray, k: int, score: ScoreConfig, nprobe: Optional[int] = None,
           refine: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ids per query, best first, and their exact scores (the manifest's ``score``).

    Returns int64 (M, k) ids (-1 past the collection's end) and float32 (M, k)
    scores (-inf there); ties are broken by the lower id, as brute force over
    the ids in order would.
    """
    found = searcher.candidates(queries, k, nprobe, refine)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for row, cand in enumerate(found):
        cand = np.unique(cand[cand >= 0])
        if not len(cand):
            continue
        exact = class_logits(searcher.store.vectors(cand), queries[row:row + 1], score)[:, 0]
        best = np.lexsort((cand, -exact))[:k]
        ids[row, :len(best)], scores[row, :len(best)] = cand[best], exact[best]
    return ids, scores
