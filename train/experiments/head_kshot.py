"""k-shot accuracy curves of the trained head on the dev set (k = 0 is zero-shot), averaged over seeds.

For each seed and k, k images per class are drawn for training and every other
image is the test set. Every row is scored on the same test images:

- zero-shot: the runtime as predict.sh runs it (scores, Sinkhorn, prototypes), and its plain argmax;
- the head as ``zeroshot.head train`` makes it (plain logistic regression), through the
  same prediction path as predict.sh with the head (scores replaced, then Sinkhorn and
  prototypes), and its plain argmax;
- the head with ``--zero-shot`` (a correction added to the zero-shot scores), both ways.

Image vectors are encoded once (:func:`zeroshot.embed.embed_images`); heads are trained
with :func:`zeroshot.head.train_head`, exactly as the command does.

``--end-to-end WORK`` also runs the commands themselves once (seed 0, k = 8): ``zeroshot.head
train`` on class folders of the training images, then ``predict.py`` with and without the head on
the other images laid out as a judge dataset, scored with the contest metric.

Usage: ``python -m train.experiments.head_kshot [--seeds 5] [--l2 0.01] [--end-to-end WORK]``; prints a Markdown table.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from zeroshot.cli import main as predict_main
from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import class_mask
from zeroshot.embed import embed_images, similarity
from zeroshot.encoders import Model
from zeroshot.evaluate import evaluate
from zeroshot.head import Encoded, main as head_main, train_head
from zeroshot.outputs import read_predictions
from zeroshot.scoring import predict
from zeroshot.limits import MODEL_DIR

from .devset import class_folders, labelled

logger = logging.getLogger(__name__)

KS = (0, 1, 2, 4, 8, 16)
COLUMNS = ("zero-shot (predict.sh)", "zero-shot argmax", "head (predict.sh)", "head argmax",
           "head --zero-shot (predict.sh)", "head --zero-shot argmax")


def pipeline_accuracy(model: Model, scores: np.ndarray, features: np.ndarray, labels: np.ndarray,
                      classes: List[str]) -> float:
    """Accuracy of the runtime's decision (balance + transductive from the manifest) on (N, C) scores."""
    valid = np.ones(len(scores), dtype=bool)
    pred = predict(scores, valid, class_mask(classes), model.manifest.balance, features,
                   model.manifest.transductive)
    return float(np.mean(pred == labels))


def split(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """bool (N,): True for k random training images per class."""
    train = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        train[rng.choice(idx, size=min(k, len(idx)), replace=False)] = True
    return train


def run(model: Model, seeds: int, l2: float) -> Dict[int, Dict[str, List[float]]]:
    """{k: {column: [accuracy per seed]}}."""
    classes, paths, label_list = labelled()
    labels = np.asarray(label_list)
    emb = embed_images(model, paths)
    if not emb.valid.all():
        raise ValueError("some dev images did not decode")
    scores = similarity(model, emb.vectors, model.class_vectors(classes))
    steps = model.text_cfg.normalize
    results: Dict[int, Dict[str, List[float]]] = {k: {c: [] for c in COLUMNS} for k in KS}
    for seed in range(seeds):
        for k in KS:
            train = split(labels, k, np.random.default_rng(seed))
            test = ~train
            s, f, y = scores[test], emb.features[test], labels[test]
            row = results[k]
            row["zero-shot (predict.sh)"].append(pipeline_accuracy(model, s, f, y, classes))
            row["zero-shot argmax"].append(float(np.mean(np.argmax(s, axis=1) == y)))
            if k == 0:
                continue
            data = Encoded(emb.vectors[train], emb.features[train], None, labels[train])
            for name, zero_shot in (("head", False), ("head --zero-shot", True)):
                head = train_head(model, classes, data, zero_shot=zero_shot, l2=l2)
                adjusted = head.adjust(classes, s, f, np.ones(len(s), dtype=bool), steps)
                row[f"{name} (predict.sh)"].append(pipeline_accuracy(model, adjusted, f, y, classes))
                row[f"{name} argmax"].append(float(np.mean(np.argmax(adjusted, axis=1) == y)))
            logger.info("seed %d k %d: %s", seed, k, {c: round(v[-1], 4) for c, v in row.items() if v})
    return results


def end_to_end(work: Path, model_dir: Path, k: int = 8, seed: int = 0) -> Dict[str, float]:
    """Contest score of predict.py on the test images with the base model and with a head trained by the command."""
    classes, paths, label_list = labelled()
    labels = np.asarray(label_list)
    train = split(labels, k, np.random.default_rng(seed))
    class_folders(work / "train", classes, [p for p, t in zip(paths, train) if t], labels[train].tolist())
    test_root = work / "test"
    img = test_root / "caltech101" / "img"
    img.mkdir(parents=True, exist_ok=True)
    (test_root / "caltech101" / "classes.json").write_text(json.dumps(classes, ensure_ascii=False), encoding="utf-8")
    gt = {"caltech101": {}}
    for path, label in zip([p for p, t in zip(paths, train) if not t], labels[~train].tolist()):
        if not (img / path.name).exists():
            (img / path.name).symlink_to(path.resolve())
        gt["caltech101"][path.stem] = int(label)
    if head_main(["--model", str(model_dir), "train", str(work / "train"), str(work / "model")]) != 0:
        raise RuntimeError("zeroshot.head train failed")
    scores = {}
    for name, model in (("zero-shot", model_dir), ("head", work / "model")):
        out = work / f"{name}.json"
        if predict_main([str(test_root), str(out), "--model", str(model)]) != 0:
            raise RuntimeError(f"predict.py failed with {model}")
        scores[name] = round(evaluate(gt, read_predictions(out)).score, 2)
    return scores


def table(results: Dict[int, Dict[str, List[float]]]) -> str:
    """Markdown: one row per k, mean accuracy x 100 (± std over seeds) per column."""
    lines = ["| k per class | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for k, row in results.items():
        cells = [f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}" if v else "—" for v in (row[c] for c in COLUMNS)]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.head_kshot", __doc__.split("\n")[0])
    parser.add_argument("--model", default=str(MODEL_DIR))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--l2", type=float, default=1e-2)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--end-to-end", type=Path, default=None, help="work folder for the command-level check")
    args = parse_args(parser, argv)
    if args.end_to_end is not None:
        scores = end_to_end(args.end_to_end, Path(args.model))
        sys.stdout.write(f"end to end (seed 0, k = 8, predict.py on the other images): {scores}\n")
    results = run(Model(args.model), args.seeds, args.l2)
    sys.stdout.write(table(results) + "\n")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump({str(k): v for k, v in results.items()}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
