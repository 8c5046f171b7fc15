"""Retrieval at scale: the index folder and its FAISS search index at 10^4, 10^5 and 10^6 vectors, one thread.

Usage: ``make bench-retrieval`` or ``python -m train.experiments.retrieval_scale [--sizes 10000 100000 1000000]
[--queries 1000] [--noise 0.5] [--exact-max N] [--work DIR] [--out JSON]``.

The vectors are real image features repeated with noise. Seeds: every valid
row of ``features`` (float32, :data:`DIM` = 1280, the default model's image
features) in the tuning suite's cache (``/tmp/suite_cache/images/*/*.npz``,
written by ``train.suite_cache``: each set at each rung, plain and mirrored),
L2-normalised and shuffled (seed 0). Vector i of a collection of N is seed
``i mod S`` (S = min(N, number of seeds)) plus gaussian noise of expected norm
``--noise`` (each coordinate N(0, (noise^2) / 1280)), L2-normalised again: at
the default 0.5 a copy has cosine 0.89 with its seed. Queries: ``--queries``
seeds drawn from those S (seed 1), with fresh noise of the same size. Scores
are cosine (:data:`SCORE`), the exact answer is brute force over all N.

The seeds are loaded in a process of their own, and each size runs in two
more (so ``ru_maxrss`` is that step's own; a child's starts at the small
parent's resident set, which is about its own baseline after imports):
``build`` writes the index folder through :class:`zeroshot.retrieve_store.Store`
(a commit per :data:`SEGMENT_ROWS` vectors, as ``zeroshot.retrieve index`` does
with its default ``--batch``, file records ``v/<i>.jpg``) and builds the search
index with :func:`zeroshot.retrieve_index.refresh` (the same code and defaults
as ``index``); the exact top 10 of every query is computed on the side, not
timed. ``query`` opens the index (file tables replayed, search index loaded),
then answers the queries one at a time with :func:`zeroshot.retrieve_index.search`
(the same path as ``zeroshot.retrieve query`` after text encoding), and for an
IVF index sweeps ``nprobe`` and ``refine``. Reported: build seconds (store
writes, search index), index size on disk, peak RSS of each process, query
latency p50/p99 in ms, recall@10 against the exact answer (share of the exact
10 ids found in the returned 10, averaged over queries).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from train.suite_cache import DEFAULT_CACHE
from zeroshot.command import make_parser, parse_args
from zeroshot.manifest import ScoreConfig
from zeroshot.outputs import atomic_open
from zeroshot.retrieve_index import EXACT_MAX, Searcher, refresh, search
from zeroshot.retrieve_store import FileRecord, Store

logger = logging.getLogger(__name__)

DIM = 1280
K = 10
SEGMENT_ROWS = 256            # zeroshot.retrieve index's default --batch
SEEDS_NAME = "seeds.npy"      # the seed vectors, written once by the parent process
SCORE = ScoreConfig(similarity="cosine", logit="linear", scale=1.0)
SWEEP_NPROBE = (8, 16, 32, 64)
SWEEP_REFINE = (1, 4, 10, 20)


def load_seeds(pattern: str) -> np.ndarray:
    """float32 (S, DIM) L2-normalised valid feature rows of every cache file matching ``pattern``, shuffled."""
    rows = []
    for name in sorted(glob.glob(pattern)):
        with np.load(name) as data:
            if data["features"].shape[1] == DIM:
                rows.append(data["features"][data["valid"]])
    if not rows:
        raise FileNotFoundError(f"{pattern}: no cached {DIM}-d image features (train.suite_cache writes them)")
    seeds = np.concatenate(rows).astype(np.float32)
    seeds /= np.maximum(np.linalg.norm(seeds, axis=1, keepdims=True), 1e-12)
    return seeds[np.random.default_rng(0).permutation(len(seeds))]


def noisy(seeds: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``seeds`` plus gaussian noise of expected norm ``noise``, L2-normalised (float32)."""
    out = seeds + rng.normal(scale=noise / np.sqrt(DIM), size=seeds.shape).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def exact_merge(best: np.ndarray, best_ids: np.ndarray, scores: np.ndarray, first_id: int) -> None:
    """Fold (Q, n) ``scores`` of ids first_id.. into the running top K (``best``, ``best_ids``: (Q, K))."""
    ids = np.broadcast_to(np.arange(first_id, first_id + scores.shape[1]), scores.shape)
    all_scores = np.concatenate([best, scores], axis=1)
    all_ids = np.concatenate([best_ids, ids], axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :K]  # ties: the earlier (lower) id first
    best[:] = np.take_along_axis(all_scores, order, axis=1)
    best_ids[:] = np.take_along_axis(all_ids, order, axis=1)


def build(work: Path, n: int, args: Any) -> Dict[str, Any]:
    """Write the index folder of ``n`` vectors and its search index; the exact top K per query on the side."""
    seeds = np.load(args.work / SEEDS_NAME, mmap_mode="r")[:n]
    queries = noisy(seeds[np.random.default_rng(1).integers(len(seeds), size=args.queries)], args.noise,
                    np.random.default_rng(2))
    store = Store.create(work / "index", work / "images", "retrieval-scale")
    best = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), K), -1, dtype=np.int64)
    store_s = 0.0
    for start in range(0, n, SEGMENT_ROWS):
        ids = np.arange(start, min(start + SEGMENT_ROWS, n))
        vectors = noisy(seeds[ids % len(seeds)], args.noise, np.random.default_rng([3, start]))
        exact_merge(best, best_ids, queries @ vectors.T, start)
        records = {f"v/{i:08d}.jpg": FileRecord(int(i), f"{i:064x}", 0, 0) for i in ids}
        t0 = time.perf_counter()
        store.commit(vectors, records, [])
        store_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    entry = refresh(store, args.exact_max, cosine=True)
    search_s = time.perf_counter() - t0
    np.save(work / "queries.npy", queries)
    np.save(work / "exact_ids.npy", best_ids)
    sizes = {kind: sum(p.stat().st_size for p in (work / "index").rglob(pattern)) for kind, pattern in
             (("shards", "*.npy"), ("tables", "*.json"), ("search", "search-*.faiss"))}
    return {"n": n, "factory": entry["factory"], "search": entry, "store_write_s": round(store_s, 1),
            "search_build_s": round(search_s, 1), "disk_mb": {k: round(v / 1e6, 1) for k, v in sizes.items()},
            "build_peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set (``ru_maxrss``, KiB on Linux) in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of ``exact`` ids that the same row of ``found`` holds."""
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / K for f, e in zip(found, exact)]))


def timed_search(searcher: Searcher, queries: np.ndarray, nprobe: Optional[int] = None,
                 refine: Optional[int] = None) -> Dict[str, Any]:
    """Answer ``queries`` one at a time; latency percentiles in ms and the ids found."""
    times, found = [], []
    for row in range(len(queries)):
        t0 = time.perf_counter()
        ids, _ = search(searcher, queries[row:row + 1], K, SCORE, nprobe, refine)
        times.append(time.perf_counter() - t0)
        found.append(ids[0])
    return {"p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 2), "ids": np.stack(found)}


def query(work: Path) -> Dict[str, Any]:
    """Open the index, time the queries at the default settings, sweep nprobe x refine for IVF."""
    t0 = time.perf_counter()
    store = Store.open(work / "index")
    searcher = Searcher(store, cosine=True, threads=1)
    open_s = time.perf_counter() - t0
    open_rss = peak_rss_mb()
    queries, exact = np.load(work / "queries.npy"), np.load(work / "exact_ids.npy")
    search(searcher, queries[:1], K, SCORE)  # warm-up
    default = timed_search(searcher, queries)
    report = {"open_s": round(open_s, 2), "open_peak_rss_mb": open_rss, "p50_ms": default["p50_ms"], "p99_ms": default["p99_ms"],
              "recall_at_10": round(recall(default["ids"], exact), 4), "query_peak_rss_mb": peak_rss_mb(),
              "sweep": []}
    if searcher.nprobe:
        for nprobe in SWEEP_NPROBE:
            for refine in SWEEP_REFINE:
                got = timed_search(searcher, queries[:200], nprobe, refine)
                report["sweep"].append({"nprobe": nprobe, "refine": refine, "p50_ms": got["p50_ms"],
                                        "recall_at_10": round(recall(got["ids"], exact[:200]), 4)})
                logger.info("nprobe %d refine %d: %s", nprobe, refine, report["sweep"][-1])
    return report


def child(step: str, work: Path, n: int, args: Any) -> Dict[str, Any]:
    """Run ``step`` for size ``n`` in a fresh process (one thread); its JSON report."""
    cmd = [sys.executable, "-m", "train.experiments.retrieval_scale", "--step", step, "--work", str(work),
           "--sizes", str(n), "--queries", str(args.queries), "--noise", str(args.noise), "--exact-max",
           str(args.exact_max), "--seeds", args.seeds]
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, **env), check=True)
    return json.loads(proc.stdout)


def table(rows: List[Dict[str, Any]]) -> str:
    """The markdown table of the docs."""
    lines = ["| vectors | search index | build: shards + search (s) | on disk: shards + search (MB) | "
             "peak RSS build / query (MB) | open (s) | p50 / p99 (ms) | recall@10 |", "|" + " --- |" * 8]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['factory']} | {r['store_write_s']} + {r['search_build_s']} | "
                     f"{r['disk_mb']['shards'] + r['disk_mb']['tables']:,.0f} + {r['disk_mb']['search']:,.1f} | "
                     f"{r['build_peak_rss_mb']:,.0f} / {r['query_peak_rss_mb']:,.0f} | {r['open_s']} | "
                     f"{r['p50_ms']} / {r['p99_ms']} | {r['recall_at_10']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.retrieval_scale", __doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10 ** 4, 10 ** 5, 10 ** 6])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.5, help="expected norm of the noise added to a unit seed")
    parser.add_argument("--exact-max", type=int, default=EXACT_MAX, help="as zeroshot.retrieve index's")
    parser.add_argument("--seeds", default=str(DEFAULT_CACHE / "images" / "*" / "*.npz"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_retrieval"))
    parser.add_argument("--out", type=Path, default=Path("dist/bench-retrieval.json"))
    parser.add_argument("--step", choices=("seeds", "build", "query"), default=None, help=argparse.SUPPRESS)
    args = parse_args(parser, argv)
    if args.step == "seeds":
        seeds = load_seeds(args.seeds)
        np.save(args.work / SEEDS_NAME, seeds)
        sys.stdout.write(json.dumps({"seeds": len(seeds)}) + "\n")
        return 0
    if args.step:
        import faiss

        faiss.omp_set_num_threads(1)
        work = args.work / str(args.sizes[0])
        work.mkdir(parents=True, exist_ok=True)
        report = build(work, args.sizes[0], args) if args.step == "build" else query(work)
        sys.stdout.write(json.dumps(report) + "\n")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    child("seeds", args.work, 0, args)
    rows = []
    for n in args.sizes:
        row = child("build", args.work, n, args)
        logger.info("built %d: %s", n, row)
        row.update(child("query", args.work, n, args))
        logger.info("queried %d: %s", n, {k: v for k, v in row.items() if k != "sweep"})
        rows.append(row)
        with atomic_open(args.out, "w") as handle:
            json.dump({"noise": args.noise, "queries": args.queries, "rows": rows}, handle, indent=1)
    sys.stdout.write(table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
