"""Retrieval on the dev set (recall@1/5/10 both ways) and query time over 10,000 generated images.

Captions are generated, not written by people: each dev image gets one caption
per Russian template in CAPTION_TEMPLATES with its class name, so a caption is
shared by every image of its class (text->image: any of them is a hit;
image->text: any of its class's captions is a hit).

The timing part writes ``--synthetic N`` images (default 10,000) made from the
dev images by random crops, flips and colour jitter, indexes them with
``zeroshot.retrieve index`` (the time is reported), re-indexes (every file
unchanged), and times ``--queries`` text queries against the index in one
process (model loaded once): text encoding + scoring + top-k.

Usage: ``taskset -c 0 python -m train.experiments.retrieval_dev --work /tmp/retrieval [--synthetic 10000]``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from zeroshot.command import make_parser, parse_args
from zeroshot.encoders import Model
from zeroshot import retrieve
from zeroshot.embed import embed_texts
from zeroshot.retrieve_index import Searcher, search
from zeroshot.limits import DEVSETS_DIR, MODEL_DIR

from .devset import labelled

logger = logging.getLogger(__name__)

CAPTION_TEMPLATES = ("{}", "фото: {}", "на снимке {}", "{} крупным планом", "изображение, на котором {}")


def write_captions(path: Path, paths: List[Path], names: List[str], labels: List[int]) -> int:
    """CSV image,caption with one row per (image, template); returns the row count."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        rows = 0
        for image, label in zip(paths, labels):
            for template in CAPTION_TEMPLATES:
                writer.writerow([image.name, template.format(names[label])])
                rows += 1
    return rows


def synthesize(out: Path, sources: List[Path], n: int, seed: int = 0) -> None:
    """Write ``n`` JPEGs (at most 256 px) made from ``sources`` by crop, flip and colour jitter."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = out / f"s{i:05d}.jpg"
        if target.exists():
            continue
        with Image.open(sources[i % len(sources)]) as src:
            img = src.convert("RGB")
        w, h = img.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
        img.thumbnail((256, 256))
        img.save(target, quality=90)


def time_queries(model: Model, index_path: Path, queries: List[str]) -> Dict[str, float]:
    """Mean milliseconds per query (encode text, search the index, top 10), one query at a time.

    Wall time and this process's CPU time are both reported: on a shared machine
    the CPU time is the steadier estimate of what an idle core would take.
    """
    store = retrieve.open_store(index_path, retrieve.model_signature(model, None))
    searcher = Searcher(store, retrieve.is_cosine(model), model.threads)
    embed_texts(model, queries[:1])  # warm-up
    wall: Dict[str, List[float]] = {"encode": [], "score": []}
    cpu: Dict[str, List[float]] = {"encode": [], "score": []}
    for text in queries:
        t0, c0 = time.perf_counter(), time.process_time()
        vecs, _, _ = embed_texts(model, [text])
        t1, c1 = time.perf_counter(), time.process_time()
        search(searcher, vecs, 10, model.manifest.score)
        t2, c2 = time.perf_counter(), time.process_time()
        wall["encode"].append(t1 - t0)
        wall["score"].append(t2 - t1)
        cpu["encode"].append(c1 - c0)
        cpu["score"].append(c2 - c1)
    report: Dict[str, float] = {"images": len(store.files), "queries": len(queries)}
    for kind, times in (("wall", wall), ("cpu", cpu)):
        report[f"{kind}_ms_per_query"] = round(1000 * float(np.mean(np.add(times["encode"], times["score"]))), 1)
        report[f"{kind}_ms_text_encoding"] = round(1000 * float(np.mean(times["encode"])), 1)
        report[f"{kind}_ms_scoring_top10"] = round(1000 * float(np.mean(times["score"])), 1)
    return report


def run(work: Path, model_dir: Path, n_synthetic: int, n_queries: int) -> Dict[str, Any]:
    """All measurements; returns the report (also logged)."""
    work.mkdir(parents=True, exist_ok=True)
    names, paths, labels = labelled()
    captions = work / "dev_captions.csv"
    rows = write_captions(captions, paths, names, labels)
    dev_index = work / "dev_index"
    report: Dict[str, Any] = {"caption_templates": list(CAPTION_TEMPLATES), "caption_rows": rows}
    retrieve.main(["--model", str(model_dir), "index", str(paths[0].parent), str(dev_index)])
    model = Model(model_dir)
    pairs, _ = retrieve.read_pairs(captions)
    dev = retrieve.load_index(retrieve.open_store(dev_index, retrieve.model_signature(model, None)))
    report["dev"] = retrieve.evaluate_pairs(model, dev, pairs)
    logger.info("dev set: %s", report["dev"])
    if n_synthetic:
        synth = work / "synthetic"
        synthesize(synth, paths, n_synthetic)
        big = work / "synthetic_index"
        for attempt in ("index", "reindex"):  # "index" is a full build only when the index folder is new
            t0 = time.perf_counter()
            retrieve.main(["--model", str(model_dir), "index", str(synth), str(big)])
            report[f"{attempt}_seconds"] = round(time.perf_counter() - t0, 1)
        queries = [t.format(n) for n in names for t in CAPTION_TEMPLATES][:n_queries]
        report["query_timing"] = time_queries(model, big, queries)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.retrieval_dev", __doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for captions, indexes, generated images")
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--synthetic", type=int, default=10000, help="generated images for the timing (0: skip)")
    parser.add_argument("--queries", type=int, default=50)
    args = parse_args(parser, argv)
    if not DEVSETS_DIR.is_dir():
        logger.error("%s: dev set not found", DEVSETS_DIR)
        return 2
    report = run(args.work, args.model, args.synthetic, args.queries)
    sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
