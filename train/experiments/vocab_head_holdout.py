"""Does a learned text -> ImageNet-probability head beat or complement the concept-bank lookup?

For two vocabularies -- the full bank, and the bank with every dev class name and its
inflections held out (entries removed, and group/proxy rows naming a dev class dropped) -- this
1. trains the vocabulary head (train/vocab_head.py: frozen USE-m + linear + softmax, InfoNCE
   over log(p . w) against the concepts' ImageNet distributions) on that vocabulary only;
2. builds the default model's bank lookup (train/concepts.py, the settings of
   train/build_default.py) from the same vocabulary;
3. scores the dev set as the runtime does (the default model's image encoder through the
   image cache, score log(p . w), Sinkhorn, prototype refinement) with the bank, the head and
   their mixtures, and prints mean accuracy x 100 per setting to stdout.

The head's settings (train/vocab_head.py HEAD) were fixed before measuring, not tuned on the dev set.
Usage: ``python -m train.experiments.vocab_head_holdout [--data DEVSETS] [--model model]``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import discover
from zeroshot.limits import DEVSETS_DIR, MODEL_DIR
from zeroshot.manifest import Manifest
from zeroshot.scoring import class_logits
from zeroshot.scoring import predict
from zeroshot.text import build_prompts

from ..build_default import CONCEPT_SCALE, CONCEPT_TOP_K, TEMPLATES
from ..concepts import ConceptBank, concept_similarities, mix
from ..contract import NORMALIZE
from ..image_cache import ImageTower, embed_cached
from ..tower_loop import train
from ..tower_run import Run, encode_texts
from ..vocab_head import HEAD, mix_weights, vocab_bank, vocab_run

logger = logging.getLogger(__name__)

ALPHAS = (0.25, 0.5)


def dev_images(model: Path, data: Path, gt_path: Path, cache: Path) -> List[Tuple[str, List[str], np.ndarray, np.ndarray]]:
    """(name, classes, image probabilities float32 (N, 1000), truth int64 (N,)) per dev dataset."""
    gt = json.loads(gt_path.read_text(encoding="utf-8"))
    tower = ImageTower(model)
    out = []
    for ds in discover(data)[0]:
        vectors, rows = embed_cached(tower, ds.images, cache)
        if (rows < 0).any():
            raise ValueError(f"{ds.root}: {int((rows < 0).sum())} images cannot be decoded")
        out.append((ds.name, ds.classes, np.asarray(vectors[rows]), np.array([gt[ds.name][i] for i in ds.ids])))
    return out


def class_weights(run: Run, bank: ConceptBank, entries: np.ndarray, classes: List[str]) -> Dict[str, np.ndarray]:
    """float32 (C, 1000) class weights of the bank lookup and of the head, averaged over the templates."""
    prompts = build_prompts(classes, TEMPLATES, NORMALIZE)
    device = torch.device("cpu")
    q = encode_texts(run.tower, run.tokenizer, prompts, device, project=False)
    head = run.tower.project(q).detach().numpy().reshape(len(TEMPLATES), len(classes), -1).mean(axis=0)
    qn = q.numpy().reshape(len(TEMPLATES), len(classes), -1)
    index = bank.entry_index()
    lookup = np.mean([mix(concept_similarities(qn[t], entries, index), bank.distributions, CONCEPT_SCALE,
                          (CONCEPT_TOP_K,)) for t in range(len(TEMPLATES))], axis=0)
    return {"bank": lookup.astype(np.float32), "head": head.astype(np.float32)}


def score(manifest: Manifest, probs: np.ndarray, weights: np.ndarray, truth: np.ndarray) -> float:
    """Accuracy x 100 of one dataset, scored like the runtime (manifest's score, balance, transductive)."""
    scores = class_logits(probs, weights, manifest.score)
    pred = predict(scores, np.ones(len(probs), bool), np.ones(len(weights), bool), manifest.balance, probs,
                   manifest.transductive)
    return 100.0 * float((pred == truth).mean())


def measure(model: Path, dev, held_out: bool, out: Path) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Train the head on the (held-out) vocabulary; (dev score per setting, training summary)."""
    names = [c for _, classes, _, _ in dev for c in classes]
    bank = vocab_bank(names if held_out else ())
    run = vocab_run(bank, model, out, HEAD)
    t0 = time.perf_counter()
    summary = train(run)
    summary = {"seconds": time.perf_counter() - t0, "pairs_per_s": summary["pairs_per_s"], "steps": summary["steps"],
               "first_loss": summary["first_loss"], "final_loss": summary["final_loss"], "entries": len(bank.texts)}
    entries = encode_texts(run.tower, run.tokenizer, bank.texts, torch.device("cpu"), project=False).numpy()
    accs: Dict[str, List[float]] = {}
    for _, classes, probs, truth in dev:
        w = class_weights(run, bank, entries, classes)
        settings = {"bank lookup (default)": w["bank"], "learned head": w["head"]}
        settings.update({f"bank + head, alpha {a}": mix_weights(w["bank"], w["head"], a) for a in ALPHAS})
        for label, weights in settings.items():
            accs.setdefault(label, []).append(score(run.manifest, probs, weights, truth))
    return {k: float(np.mean(v)) for k, v in accs.items()}, summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.vocab_head_holdout", __doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEVSETS_DIR, help="labelled datasets (default: the dev set)")
    parser.add_argument("--gt", type=Path, default=None, help="default: DATA/gt.json")
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="the default model folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/zeroshot_vocab_head"), help="image cache, runs")
    args = parse_args(parser, argv)
    dev = dev_images(args.model, args.data, args.gt or args.data / "gt.json", args.work / "cache")
    table: Dict[str, Dict[str, float]] = {}
    for held_out in (False, True):
        column = "held out" if held_out else "full"
        accs, info = measure(args.model, dev, held_out, args.work / column.replace(" ", "_"))
        logger.info("%s vocabulary: %s", column, json.dumps(info))
        for label, acc in accs.items():
            table.setdefault(label, {})[column] = acc
    sys.stdout.write(f"{'setting':<28} {'full':>7} {'held out':>9}\n")
    for label, row in table.items():
        sys.stdout.write(f"{label:<28} {row['full']:7.2f} {row['held out']:9.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
