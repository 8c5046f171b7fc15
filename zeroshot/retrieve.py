"""Text-to-image and image-to-text retrieval with the model's own encoders and score.

Usage::

    python -m zeroshot.retrieve index IMAGES_DIR INDEX            # embed every image (cached by sha256)
    python -m zeroshot.retrieve query INDEX "текст" [...] -k 10    # JSON lines: query, rank, path, score
    python -m zeroshot.retrieve describe CAPTIONS TARGET... -k 5   # best captions per image (TARGET: index, image, folder)
    python -m zeroshot.retrieve eval INDEX CAPTIONS                # recall@1/5/10 both ways, JSON

The index is one ``.npz`` file: image vectors, paths relative to IMAGES_DIR,
each file's size, mtime and sha256, and the model signature the vectors
belong to. Re-indexing re-encodes only new or changed files (a file whose
size and mtime match keeps its stored hash; a changed one is re-hashed, and
a moved file with a known hash reuses its vector). Every similarity is the
manifest's score (:func:`zeroshot.scoring.class_logits`), so any model folder works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .limits import MODEL_DIR
from .command import make_parser, parse_args, positive_int
from .embed import RECALL_AT, Progress, embed_images, embed_texts, read_pairs, recall_at, similarity, walk_images
from .encoders import Model
from .manifest import sha256_file, to_dict
from .outputs import atomic_open

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1


@dataclass
class Index:
    """Image vectors of one folder. vectors: float32 (N, D); the lists have N entries each."""

    root: Path
    signature: str
    vectors: np.ndarray
    paths: List[str]
    sha256: List[str]
    sizes: List[int]
    mtimes: List[int]

    def full_path(self, i: int) -> str:
        """The indexed file's path (IMAGES_DIR as given to ``index`` joined with its relative path)."""
        return str(self.root / self.paths[i])


def model_signature(model: Model, variant: Optional[str]) -> str:
    """sha256 over what image vectors depend on: the image encoder file and the image section."""
    key = {"image_encoder": model.manifest.file("image_encoder", variant).sha256, "image": to_dict(model.image_cfg)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def save_index(index: Index, path: Path) -> None:
    """Write ``index`` to ``path`` atomically (temp file in the same folder + rename)."""
    meta = {"format": INDEX_FORMAT, "root": str(index.root), "signature": index.signature}
    with atomic_open(path, "wb") as handle:
        np.savez(handle, vectors=index.vectors.astype(np.float32),
                 paths=np.array(index.paths, dtype=str), sha256=np.array(index.sha256, dtype=str),
                 sizes=np.array(index.sizes, dtype=np.int64), mtimes=np.array(index.mtimes, dtype=np.int64),
                 meta=np.array(json.dumps(meta)))


def load_index(path: Path) -> Index:
    """Read an index written by :func:`save_index`; FileNotFoundError/ValueError name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index not found (build it with 'python -m zeroshot.retrieve index')")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            n = len(data["paths"])
            index = Index(Path(meta["root"]), meta["signature"], data["vectors"].astype(np.float32),
                          [str(p) for p in data["paths"]], [str(h) for h in data["sha256"]],
                          [int(s) for s in data["sizes"]], [int(m) for m in data["mtimes"]])
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a retrieval index: {type(exc).__name__}: {exc}") from exc
    if meta.get("format") != INDEX_FORMAT or len(index.vectors) != n:
        raise ValueError(f"{path}: index format {meta.get('format')} with {len(index.vectors)} vectors for "
                         f"{n} paths; expected format {INDEX_FORMAT} (re-index)")
    return index


def _check_model(index: Index, signature: str, path: Path) -> None:
    """ValueError when the index was built with another image encoder or preprocessing."""
    if index.signature != signature:
        raise ValueError(f"{path}: index was built with another model or variant (signature "
                         f"{index.signature[:12]}, this model {signature[:12]}); re-index with this model")


def build_index(model: Model, root: Path, signature: str, old: Optional[Index]) -> Tuple[Index, Dict[str, int]]:
    """Index every image under ``root``, reusing ``old``'s vectors for unchanged files.

    Returns the index and counts: images, reused, encoded, failed.
    """
    paths = walk_images(root)
    rels = [p.relative_to(root).as_posix() for p in paths]
    if old is not None and old.signature != signature:
        logger.info("the old index was built with another model; re-encoding everything")
        old = None
    by_path = {p: i for i, p in enumerate(old.paths)} if old else {}
    by_hash = {h: i for i, h in enumerate(old.sha256)} if old else {}
    hashes, sizes, mtimes, source = [], [], [], []
    for path, rel in zip(paths, rels):
        stat = path.stat()
        j = by_path.get(rel)
        same = old is not None and j is not None and old.sizes[j] == stat.st_size and old.mtimes[j] == stat.st_mtime_ns
        digest = old.sha256[j] if same and old is not None and j is not None else sha256_file(path)
        hashes.append(digest)
        sizes.append(stat.st_size)
        mtimes.append(stat.st_mtime_ns)
        source.append(by_hash.get(digest, -1))
    todo = [i for i, s in enumerate(source) if s < 0]
    logger.info("%s: %d images, %d unchanged, %d to encode", root, len(paths), len(paths) - len(todo), len(todo))
    emb = embed_images(model, [paths[i] for i in todo], progress=Progress("encoded images", len(todo)))
    fresh = iter(emb.vectors)
    encoded = {i: next(fresh) for i, ok in zip(todo, emb.valid) if ok}
    keep = [i for i in range(len(paths)) if source[i] >= 0 or i in encoded]
    dim = old.vectors.shape[1] if old is not None and len(old.vectors) else emb.vectors.shape[1]
    rows = [old.vectors[source[i]] if source[i] >= 0 and old is not None else encoded[i] for i in keep]
    vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), dtype=np.float32)
    index = Index(root, signature, vectors, [rels[i] for i in keep], [hashes[i] for i in keep],
                  [sizes[i] for i in keep], [mtimes[i] for i in keep])
    counts = {"images": len(paths), "indexed": len(keep), "reused": len(paths) - len(todo),
              "encoded": len(encoded), "failed": len(todo) - len(encoded)}
    return index, counts


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
    """Build or refresh the index; prints a JSON summary on stdout."""
    old = None
    if args.index.is_file():
        try:
            old = load_index(args.index)
        except ValueError as exc:
            logger.warning("%s; building a new index", exc)
    index, counts = build_index(model, args.images_dir.resolve(), model_signature(model, args.variant), old)
    save_index(index, args.index)
    _write_line(dict(counts, index=str(args.index)))
    logger.info("wrote %s: %d images (%d reused, %d encoded, %d failed)", args.index, counts["indexed"],
                counts["reused"], counts["encoded"], counts["failed"])
    return 0


def cmd_query(args: Any, model: Model) -> int:
    """Top-k images per query text as JSON lines; empty queries are reported and skipped."""
    index = load_index(args.index)
    _check_model(index, model_signature(model, args.variant), args.index)
    vecs, valid, problems = embed_texts(model, args.texts)
    scores = similarity(model, index.vectors, vecs)
    for col, i in enumerate(np.flatnonzero(valid)):
        for rank, row in enumerate(top_k(scores[:, col], args.k), 1):
            _write_line({"query": args.texts[i], "rank": rank, "path": index.full_path(int(row)),
                         "score": round(float(scores[row, col]), 6)})
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
    """(paths, float32 (N, D) vectors) of every TARGET: an index file, an image file, or a folder."""
    names: List[str] = []
    rows: List[np.ndarray] = []
    for target in targets:
        if target.is_file() and target.suffix == ".npz":
            index = load_index(target)
            _check_model(index, signature, target)
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
    index = load_index(args.index)
    _check_model(index, model_signature(model, args.variant), args.index)
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
    p.add_argument("index", type=Path, help="the index file to write (.npz)")
    p = sub.add_parser("query", help="the k best images per text, as JSON lines")
    p.add_argument("index", type=Path)
    p.add_argument("texts", nargs="+", help="query texts (Russian or English)")
    p.add_argument("-k", type=int, default=10)
    p = sub.add_parser("describe", help="the k best captions per image, as JSON lines")
    p.add_argument("captions", type=Path, help="CSV image,caption, JSON lines, or .txt with one caption a line")
    p.add_argument("targets", type=Path, nargs="+", help="index files (.npz), images or folders")
    p.add_argument("-k", type=int, default=5)
    p = sub.add_parser("eval", help="recall@1/5/10 text->image and image->text on a captions file")
    p.add_argument("index", type=Path)
    p.add_argument("captions", type=Path, help="CSV image,caption or JSON lines {\"image\", \"caption\"}")
    return parser


COMMANDS = {"index": cmd_index, "query": cmd_query, "describe": cmd_describe, "eval": cmd_eval}


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
