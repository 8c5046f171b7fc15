"""Train a logistic-regression head on labelled images (and texts) into a model folder.

Usage: ``python -m zeroshot.head train DATA OUT [--model DIR] [--l2 X] [--zero-shot]``.

DATA is a folder of class folders (``DATA/<class name>/*.jpg``, nested
folders included) or a CSV with columns ``image,label`` and an optional
``text`` (product records: title, description), image paths relative to the
CSV's folder. OUT is a model folder: the base model (``--model``) itself, or
a new folder that gets the base model's files (hard links when possible) and
its manifest. The head's weights go to ``OUT/head.npz`` and the manifest gets
``files.head`` and a ``head`` section (see :mod:`zeroshot.linear`);
``predict.sh --model OUT`` then uses the head for every dataset whose
classes.json holds exactly the head's classes. By default the head is a plain classifier whose scores replace the
zero-shot ones (the dev-set k-shot curves chose it); ``--zero-shot`` learns a
correction added to the zero-shot scores instead.
Unreadable images, empty labels and empty texts are reported and skipped
(a record without text is trained on its image alone). A record with text is
also seen without it, so the head works on images alone (as in predict.sh).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .limits import MODEL_DIR
from .command import make_parser, parse_args, positive_int
from .embed import Progress, Records, embed_images, embed_texts, read_folders, similarity
from .encoders import Model
from .linear import DEFAULT_ITERATIONS, DEFAULT_L2, HEAD_KEY, Head, fit_logistic, head_config, head_features
from .manifest import MANIFEST_NAME, FileRef, HeadConfig, Manifest, sha256_file
from .outputs import atomic_open

logger = logging.getLogger(__name__)

HEAD_FILE = "head.npz"


def read_csv_records(path: Path) -> Records:
    """CSV ``image,label[,text]``; classes in order of first appearance. Bad rows are reported and skipped."""
    rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    fields = set(rows[0]) if rows else set()
    if not {"image", "label"} <= fields:
        raise ValueError(f"{path}: expected a CSV header with 'image' and 'label' (and optionally 'text'), "
                         f"got {sorted(fields)}")
    classes: Dict[str, int] = {}
    records = Records([], [], [], [])
    for number, row in enumerate(rows, 2):
        image, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
        if not image or not label:
            records.problems.append(f"{path}:{number}: empty image or label; skipped")
            continue
        records.images.append(path.parent / image)
        records.labels.append(classes.setdefault(label, len(classes)))
        records.texts.append((row.get("text") or "").strip())
    records.classes = list(classes)
    return records


def read_records(data: Path) -> Records:
    """Records from class folders or a CSV; FileNotFoundError/ValueError name DATA when unusable."""
    if data.is_dir():
        records = read_folders(data)
    elif data.is_file():
        records = read_csv_records(data)
    else:
        raise FileNotFoundError(f"{data}: training data not found (a folder of class folders or a CSV)")
    for problem in records.problems:
        logger.warning("%s", problem)
    if len(set(records.labels)) < 2:
        raise ValueError(f"{data}: need labelled images of at least 2 classes, found {len(set(records.labels))}")
    return records


@dataclass
class Encoded:
    """Everything a head trains on: image vectors (N, D), features (N, F), text vectors (N, T) or None, labels (N,)."""

    vectors: np.ndarray
    features: np.ndarray
    texts: Optional[np.ndarray]
    labels: np.ndarray


def encode_records(model: Model, records: Records) -> Encoded:
    """Encode images (undecodable ones skipped) and the non-empty texts of the records that decoded."""
    emb = embed_images(model, records.images, progress=Progress("encoded training images", len(records.images)))
    keep = np.flatnonzero(emb.valid)
    labels = np.asarray(records.labels, dtype=np.int64)[keep]
    texts = [records.texts[i] for i in keep]
    text_vecs: Optional[np.ndarray] = None
    if any(texts):
        filled = [i for i, t in enumerate(texts) if t]
        logger.info("%d of %d records have text; the others train on the image alone", len(filled), len(texts))
        vecs, _, _ = embed_texts(model, [texts[i] for i in filled])
        text_vecs = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
        text_vecs[filled] = vecs
    return Encoded(emb.vectors, emb.features, text_vecs, labels)


def train_head(model: Model, classes: List[str], data: Encoded, zero_shot: bool = False, l2: float = DEFAULT_L2,
               iterations: int = DEFAULT_ITERATIONS) -> Head:
    """Fit a head on encoded records; a record with text also counts once without it."""
    cfg = head_config(model.manifest)
    text_dim = 0 if data.texts is None else int(data.texts.shape[1])
    x = head_features(data.features, data.texts, cfg["image_log"], cfg["text_log"], text_dim)
    y, vectors = data.labels, data.vectors
    if data.texts is not None:
        has = np.abs(data.texts).sum(axis=1) > 0
        x = np.concatenate([x, head_features(data.features[has], None, cfg["image_log"], cfg["text_log"], text_dim)])
        y, vectors = np.concatenate([y, y[has]]), np.concatenate([vectors, vectors[has]])
    base = similarity(model, vectors, model.class_vectors(classes)) if zero_shot else None
    fit = fit_logistic(x, y, len(classes), base, l2, iterations)
    head = Head(list(classes), fit["weights"], fit["bias"], zero_shot, cfg["image_log"], cfg["text_log"], text_dim)
    train_acc = float(np.mean(np.argmax(head.logits(x) + (base if base is not None else 0.0), axis=1) == y))
    logger.info("head: %d classes, %d training rows, %d features, training accuracy %.3f", len(classes), len(y),
                x.shape[1], train_acc)
    return head


def save_head(head: Head, path: Path) -> None:
    """Write the head's weights and settings to ``path`` (.npz)."""
    meta = {"zero_shot": head.zero_shot, "image_log": head.image_log, "text_log": head.text_log,
            "text_dim": head.text_dim}
    with atomic_open(path, "wb") as handle:
        np.savez(handle, weights=head.weights.astype(np.float32), bias=head.bias.astype(np.float32),
                 classes=np.array(head.classes, dtype=str), meta=np.array(json.dumps(meta)))


def _place_model(base: Path, out: Path, manifest: Manifest) -> None:
    """Give ``out`` the base model's files (hard links, else copies) unless it is the base folder."""
    if out.resolve() == base.resolve():
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(manifest.all_files()):
        src, dst = base / name, out / name
        if dst.exists():
            dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def write_head(model: Model, head: Head, out: Path, info: Dict[str, Any]) -> Path:
    """Write ``out/head.npz`` and ``out/manifest.json`` (the base manifest + files.head + head); returns the manifest path."""
    files = {k: v for k, v in model.manifest.files.items() if k != HEAD_KEY}
    _place_model(model.dir, out, dataclasses.replace(model.manifest, files=files, head=None))
    save_head(head, out / HEAD_FILE)
    files[HEAD_KEY] = FileRef(HEAD_FILE, sha256_file(out / HEAD_FILE))
    section = HeadConfig(classes=list(head.classes), zero_shot=head.zero_shot, text=bool(head.text_dim),
                         training=dict(info))
    path = out / MANIFEST_NAME
    manifest = Manifest.from_dict(dataclasses.replace(model.manifest, files=files, head=section).to_dict(), path)
    with atomic_open(path, "w") as handle:
        handle.write(manifest.to_json())
    return path


def cmd_train(args: Any) -> int:
    """``train DATA OUT``: read, encode, fit, write."""
    model = Model(args.model, threads=args.threads)
    records = read_records(args.data)
    data = encode_records(model, records)
    counts = np.bincount(data.labels, minlength=len(records.classes))
    if (counts == 0).any():
        missing = [records.classes[i] for i in np.flatnonzero(counts == 0)]
        logger.warning("classes without a usable image (learnt from zero-shot scores only): %s", missing)
    head = train_head(model, records.classes, data, args.zero_shot, args.l2, args.iterations)
    info = {"l2": args.l2, "iterations": args.iterations, "records": int(len(data.labels)),
            "skipped": int(len(records.images) - len(data.labels))}
    path = write_head(model, head, args.out, info)
    logger.info("wrote %s and %s (%d classes)", args.out / HEAD_FILE, path, len(head.classes))
    return 0


def build_parser() -> Any:
    parser = make_parser("python -m zeroshot.head", __doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="base model folder (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="at most this many threads (default, and upper bound: the CPUs this process may use)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fit a head on DATA and write it into the model folder OUT")
    p.add_argument("data", type=Path, help="a folder of class folders, or a CSV image,label[,text]")
    p.add_argument("out", type=Path, help="model folder to write (the base model's folder or a new one)")
    p.add_argument("--l2", type=float, default=DEFAULT_L2, help="L2 penalty on the weights (default: %(default)s)")
    p.add_argument("--iterations", type=positive_int, default=DEFAULT_ITERATIONS,
                   help="gradient steps (default: %(default)s)")
    p.add_argument("--zero-shot", action="store_true",
                   help="learn a correction added to the zero-shot scores (default: a plain classifier)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    try:
        return cmd_train(args)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
