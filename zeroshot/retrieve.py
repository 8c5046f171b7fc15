"""Text-to-image and image-to-text retrieval with the model's own encoders and score.

Usage::

    python -m zeroshot.retrieve index IMAGES_DIR INDEX            # embed every image into the index folder INDEX
    python -m zeroshot.retrieve query INDEX "текст" [...] -k 10    # JSON lines: query, rank, path, score
    python -m zeroshot.retrieve describe CAPTIONS TARGET... -k 5   # best captions per image (TARGET: index, image, folder)
    python -m zeroshot.retrieve eval INDEX CAPTIONS                # recall@1/5/10 both ways, JSON
    python -m zeroshot.retrieve compact INDEX                      # drop the vectors no file refers to any more

The index is a folder (:mod:`zeroshot.retrieve_store`): append-only vector
shards, each file's path, size, mtime and sha256, and the model signature the
vectors belong to, committed a batch at a time, so a killed ``index`` run
loses at most its last batch and the next run goes on from there. Re-indexing
encodes only new or changed files (a file whose size and mtime match keeps its
stored hash; a changed one is re-hashed, and a moved or copied file with a
known hash reuses its vector). Queries go through a FAISS index chosen by the
collection's size (:mod:`zeroshot.retrieve_index`: exact up to 100,000
vectors, IVF-PQ beyond) and the candidates are scored with the manifest's score
(:func:`zeroshot.scoring.class_logits`), so any model folder works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .limits import MODEL_DIR
from .command import make_parser, parse_args, positive_int
from .embed import RECALL_AT, Progress, embed_images, embed_texts, read_pairs, recall_at, similarity, walk_images
from .encoders import Model
from .manifest import to_dict
from .retrieve_index import EXACT_MAX, Searcher, compact, refresh, search
from .retrieve_store import META_NAME, FileRecord, Store, plan_update

logger = logging.getLogger(__name__)

COMMIT_IMAGES = 256


@dataclass
class Index:
    """An index read whole: float32 (N, D) vectors and the N relative paths (copies of a file each have a row)."""

    root: Path
    vectors: np.ndarray
    paths: List[str]

    def full_path(self, i: int) -> str:
        """The indexed file's path (IMAGES_DIR as given to ``index`` joined with its relative path)."""
        return str(self.root / self.paths[i])


def model_signature(model: Model, variant: Optional[str]) -> str:
    """sha256 over what image vectors depend on: the image encoder file and the image section."""
    key = {"image_encoder": model.manifest.file("image_encoder", variant).sha256, "image": to_dict(model.image_cfg)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def open_store(path: Path, signature: str) -> Store:
    """The index at ``path``; ValueError when it was built with another image encoder or preprocessing."""
    store = Store.open(path)
    if store.signature != signature:
        raise ValueError(f"{path}: index was built with another model or variant (signature "
                         f"{store.signature[:12]}, this model {signature[:12]}); re-index with this model")
    return store


def load_index(store: Store) -> Index:
    """Every indexed file with its vector, paths sorted."""
    paths = sorted(store.files)
    return Index(store.root, store.vectors(np.array([store.files[p].id for p in paths], dtype=np.int64)), paths)


def is_cosine(model: Model) -> bool:
    """True when the manifest scores by cosine (the search index then holds L2-normalised vectors)."""
    return model.manifest.score.similarity == "cosine"


def update_index(model: Model, store: Store, root: Path, batch: int = COMMIT_IMAGES,
                 after_commit: Optional[Callable[[Store], None]] = None) -> Dict[str, int]:
    """Bring ``store`` up to date with the images under ``root``, one commit per ``batch`` new contents.

    First one commit of what needs no encoding (moved or copied files, removed
    ones), then the new contents in path order, ``batch`` at a time, each
    commit atomic; ``after_commit`` is called after each (tests use it to
    interrupt a run). A file that cannot be decoded is reported, dropped from
    the index and tried again next time. Returns counts: images, indexed,
    reused, encoded, failed, removed.
    """
    plan = plan_update(store, root)
    if store.meta["root"] != str(root):
        store.write_meta(dict(store.meta, root=str(root)))
    files = sum(len(group) for _, group in plan.encode)
    logger.info("%s: %d images, %d unchanged, %d moved or copied, %d removed, %d to encode (%d distinct)", root,
                plan.images, plan.unchanged, len(plan.reuse), len(plan.removed), files, len(plan.encode))
    if plan.reuse or plan.removed:
        store.commit(np.zeros((0, 0), dtype=np.float32), plan.reuse, plan.removed)
        if after_commit is not None:
            after_commit(store)
    progress = Progress("encoded images", len(plan.encode))
    encoded = failed = 0
    for start in range(0, len(plan.encode), batch):
        chunk = plan.encode[start:start + batch]
        emb = embed_images(model, [plan.paths[group[0][0]] for _, group in chunk], progress=progress,
                           progress_offset=start)
        new_ids = store.next_id + np.cumsum(emb.valid) - 1
        set_files: Dict[str, FileRecord] = {}
        removed: List[str] = []
        for (digest, group), ok, id_ in zip(chunk, emb.valid, new_ids):
            for rel, size, mtime in group:
                if ok:
                    set_files[rel] = FileRecord(int(id_), digest, size, mtime)
                elif rel in store.files:
                    removed.append(rel)
            encoded, failed = encoded + len(group) * int(ok), failed + len(group) * int(not ok)
        store.commit(emb.vectors, set_files, removed)
        if after_commit is not None:
            after_commit(store)
    return {"images": plan.images, "indexed": len(store.files), "reused": plan.unchanged + len(plan.reuse),
            "encoded": encoded, "failed": failed, "removed": len(plan.removed)}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest of a 1-D array, best first (ties by index); O(N) selection, then a sort of k."""
    if k < len(scores):
        chosen = np.argpartition(-scores, k - 1)[:k]
    else:
        chosen = np.arange(len(scores))
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def _write_line(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def cmd_index(args: Any, model: Model) -> int:
    """Build or refresh the index folder, then its search index; prints a JSON summary on stdout."""
    signature = model_signature(model, args.variant)
    root = args.images_dir.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: images folder not found")
    try:
        store = open_store(args.index, signature)
        store.remove_unreferenced()
    except FileNotFoundError:
        store = Store.create(args.index, root, signature)
    except ValueError as exc:
        logger.warning("%s; building a new index", exc)
        store = Store.create(args.index, root, signature)
    counts = update_index(model, store, root, args.batch)
    entry = refresh(store, args.exact_max, is_cosine(model))
    _write_line(dict(counts, index=str(args.index), search=entry["factory"]))
    logger.info("wrote %s: %d images (%d reused, %d encoded, %d failed, %d removed); search index %s", args.index,
                counts["indexed"], counts["reused"], counts["encoded"], counts["failed"], counts["removed"],
                entry["factory"])
    return 0


def cmd_compact(args: Any, model: Model) -> int:
    """Re-pack the index without its tombstones; prints a JSON summary on stdout."""
    store = open_store(args.index, model_signature(model, args.variant))
    before = sum(s.rows for s in store.segments)
    new = compact(store, args.exact_max, is_cosine(model))
    _write_line({"index": str(args.index), "vectors_before": before, "vectors": new.next_id,
                 "files": len(new.files), "search": new.meta["search"]["factory"]})
    return 0


def cmd_query(args: Any, model: Model) -> int:
    """Top-k images per query text as JSON lines; empty queries are reported and skipped."""
    store = open_store(args.index, model_signature(model, args.variant))
    searcher = Searcher(store, is_cosine(model), model.threads)
    vecs, valid, problems = embed_texts(model, args.texts)
    ids, scores = search(searcher, vecs, args.k, model.manifest.score, args.nprobe, args.refine)
    paths = store.paths_by_id()
    for row, i in enumerate(np.flatnonzero(valid)):
        found = [(rel, score) for id_, score in zip(ids[row], scores[row]) if id_ >= 0 for rel in paths[int(id_)]]
        for rank, (rel, score) in enumerate(found[:args.k], 1):
            _write_line({"query": args.texts[i], "rank": rank, "path": str(store.root / rel),
                         "score": round(float(score), 6)})
    return 1 if problems and not valid.any() else 0


def read_captions(path: Path) -> List[str]:
    """Distinct captions, in first-seen order, from a captions file or a text file (one per line)."""
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: captions file not found")
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        blank = [n for n, line in enumerate(lines, 1) if not line.strip()]
        if blank:
            logger.warning("%s: %d empty lines skipped", path, len(blank))
        captions = [line.strip() for line in lines if line.strip()]
    else:
        captions = [caption for _, caption in read_pairs(path)[0]]
    return list(dict.fromkeys(captions))


def _targets(model: Model, targets: Sequence[Path], signature: str) -> Tuple[List[str], np.ndarray]:
    """(paths, float32 (N, D) vectors) of every TARGET: an index folder, an image file, or a folder of images."""
    names: List[str] = []
    rows: List[np.ndarray] = []
    for target in targets:
        if (target / META_NAME).is_file():
            index = load_index(open_store(target, signature))
            names.extend(index.full_path(i) for i in range(len(index.paths)))
            rows.append(index.vectors)
            continue
        paths = walk_images(target) if target.is_dir() else [target]
        emb = embed_images(model, paths)
        names.extend(str(p) for p, ok in zip(paths, emb.valid) if ok)
        rows.append(emb.vectors)
    rows = [r for r in rows if len(r)]
    return names, (np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32))


def cmd_describe(args: Any, model: Model) -> int:
    """Top-k captions per image as JSON lines (image, rank, caption, score)."""
    captions = read_captions(args.captions)
    if not captions:
        logger.error("%s: no captions", args.captions)
        return 2
    names, vectors = _targets(model, args.targets, model_signature(model, args.variant))
    text_vecs, _, _ = embed_texts(model, captions)
    scores = similarity(model, vectors, text_vecs)
    for row, name in enumerate(names):
        for rank, col in enumerate(top_k(scores[row], args.k), 1):
            _write_line({"image": name, "rank": rank, "caption": captions[int(col)],
                         "score": round(float(scores[row, col]), 6)})
    return 0 if names else 1


def match_images(index: Index, names: Sequence[str]) -> List[int]:
    """Index row of each captions-file image name (-1 if none).

    A name matches an indexed file by relative path, else by file name, else by
    file name without its last extension (the judge's image id).
    """
    keys: Dict[str, int] = {}
    for level in (lambda p: Path(p).stem, lambda p: Path(p).name, lambda p: p):
        for i, rel in enumerate(index.paths):
            keys[level(rel)] = i
    rows = []
    for name in names:
        posix = name.replace("\\", "/")
        rows.append(keys.get(posix, keys.get(Path(posix).name, keys.get(Path(posix).stem, -1))))
    return rows


def first_hit_ranks(scores: np.ndarray, relevant: List[List[int]]) -> np.ndarray:
    """0-based rank of the first relevant column per row of (Q, N) ``scores`` (stable order)."""
    ranks = np.zeros(len(relevant), dtype=np.int64)
    for q, rel in enumerate(relevant):
        order = np.argsort(-scores[q], kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        ranks[q] = int(position[rel].min())
    return ranks


def recalls(ranks: np.ndarray) -> Dict[str, float]:
    """recall@K for RECALL_AT from 0-based first-hit ranks, in percent ({"R@1": ..., ...})."""
    return {f"R@{k}": round(100.0 * share, 2) for k, share in recall_at(ranks, RECALL_AT).items()}


def evaluate_pairs(model: Model, index: Index, pairs: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
    """Recall@1/5/10 text->image (per distinct caption: any of its images) and image->text.

    A caption is relevant to every image the captions file pairs it with, so
    a caption shared by several images is one query with several right answers.
    """
    rows = match_images(index, [image for image, _ in pairs])
    unmatched = sorted({image for (image, _), row in zip(pairs, rows) if row < 0})
    for name in unmatched[:10]:
        logger.warning("captions file names %s, which is not in the index; skipped", name)
    matched = [(row, caption) for row, (_, caption) in zip(rows, pairs) if row >= 0]
    captions = list(dict.fromkeys(caption for _, caption in matched))
    col = {c: j for j, c in enumerate(captions)}
    text_vecs, _, _ = embed_texts(model, captions)
    scores = similarity(model, index.vectors, text_vecs)  # (N, M)
    images_of: Dict[int, List[int]] = {}
    captions_of: Dict[int, List[int]] = {}
    for row, caption in matched:
        images_of.setdefault(col[caption], []).append(row)
        captions_of.setdefault(row, []).append(col[caption])
    t2i = first_hit_ranks(scores.T, [images_of[j] for j in range(len(captions))])
    image_rows = sorted(captions_of)
    i2t = first_hit_ranks(scores[image_rows], [captions_of[r] for r in image_rows])
    return {"text_to_image": recalls(t2i), "image_to_text": recalls(i2t), "captions": len(captions),
            "images": len(image_rows), "indexed": len(index.paths), "pairs": len(matched),
            "unmatched_images": len(unmatched)}


def cmd_eval(args: Any, model: Model) -> int:
    """Print recall@1/5/10 both ways as JSON."""
    index = load_index(open_store(args.index, model_signature(model, args.variant)))
    pairs, _ = read_pairs(args.captions)
    if not pairs:
        logger.error("%s: no usable (image, caption) pairs", args.captions)
        return 2
    report = evaluate_pairs(model, index, pairs)
    _write_line(report)
    return 0


def build_parser() -> Any:
    parser = make_parser("python -m zeroshot.retrieve", __doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument("--variant", default=None, help="a manifest variant whose files replace the defaults")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="at most this many threads (default, and upper bound: the CPUs this process may use)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("index", help="embed every image under IMAGES_DIR into INDEX (unchanged files are reused)")
    p.add_argument("images_dir", type=Path)
    p.add_argument("index", type=Path, help="the index folder to create or update")
    p.add_argument("--batch", type=positive_int, default=COMMIT_IMAGES,
                   help="new images per commit, the most a killed run loses (default: %(default)s)")
    p.add_argument("--exact-max", type=positive_int, default=EXACT_MAX,
                   help="exact search up to this many vectors, IVF-PQ beyond (default: %(default)s)")
    p = sub.add_parser("query", help="the k best images per text, as JSON lines")
    p.add_argument("index", type=Path)
    p.add_argument("texts", nargs="+", help="query texts (Russian or English)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--nprobe", type=positive_int, default=None,
                   help="IVF lists probed per query (default: the index's, written at build)")
    p.add_argument("--refine", type=positive_int, default=None,
                   help="IVF candidates per result scored exactly (default: the index's)")
    p = sub.add_parser("describe", help="the k best captions per image, as JSON lines")
    p.add_argument("captions", type=Path, help="CSV image,caption, JSON lines, or .txt with one caption a line")
    p.add_argument("targets", type=Path, nargs="+", help="index folders, images or folders of images")
    p.add_argument("-k", type=int, default=5)
    p = sub.add_parser("eval", help="recall@1/5/10 text->image and image->text on a captions file")
    p.add_argument("index", type=Path)
    p.add_argument("captions", type=Path, help="CSV image,caption or JSON lines {\"image\", \"caption\"}")
    p = sub.add_parser("compact", help="re-pack INDEX without the vectors no file refers to any more")
    p.add_argument("index", type=Path)
    p.add_argument("--exact-max", type=positive_int, default=EXACT_MAX,
                   help="exact search up to this many vectors, IVF-PQ beyond (default: %(default)s)")
    return parser


COMMANDS = {"index": cmd_index, "query": cmd_query, "describe": cmd_describe, "eval": cmd_eval,
            "compact": cmd_compact}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    if getattr(args, "k", 1) < 1:
        logger.error("-k must be >= 1")
        return 2
    try:
        model = Model(args.model, threads=args.threads, variant=args.variant)
        return COMMANDS[args.command](args, model)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
