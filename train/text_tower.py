"""Train a Russian text tower against a frozen image tower, evaluate it, export a complete model folder.

Input (one of): ``--metadata FILE --images DIR`` (the contest's JSON lines), ``--pairs FILE``
(``{"image": "path", "text": "..."}`` lines) or ``--class-folders DIR`` (``DIR/<class name>/*.jpg``);
see train/pairs.py. ``--image-model DIR`` is any model folder; its image encoder is used frozen
(train/image_cache.py embeds every image once into ``OUT/cache``). The text tower
(train/tower_model.py) is trained with InfoNCE, a learned temperature and in-batch hard negatives,
AdamW with linear warm-up and cosine decay, fixed seeds, checkpoints in ``OUT/checkpoints`` and
``--resume``; every epoch it reports recall@1/5/10 on held-out images and, with ``--eval DIR``,
zero-shot accuracy on a labelled datasets folder. The result is exported to ONNX (parity checked,
opset <= 17, IR <= 9) into ``OUT/model`` beside a copy of the image encoder, with a manifest, so
``./predict.sh DATA OUT.json --model OUT/model`` runs it.

Usage::

    python -m train.text_tower --metadata FILE --images DIR --image-model MODEL_DIR --out OUT_DIR \\
        [--steps N] [--device cpu|cuda] [--eval DATASETS_DIR] [--stage all|cache|train|evaluate|export]

The jobs live in their own modules: train/tower_run.py (settings and state), tower_data.py (inputs),
tower_loop.py (training), tower_eval.py (evaluation), tower_export.py (the model folder).

Started by ``torchrun`` it runs as one of several processes (train/distributed.py): the image cache and
the training batches are shared out by rank, rank 0 evaluates and writes checkpoints, the report and the
export; ``--batch-size`` stays the global batch. Without torchrun it is one process, as always.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from zeroshot.command import make_parser, parse_args
from zeroshot.resources import effective_cpus

from .contract import tokenizer as runtime_tokenizer
from .distributed import SINGLE, Dist, start, stop
from .image_cache import ImageTower, embed_cached
from .tower_data import load_eval_set, read_input, split_pairs
from .tower_eval import evaluate
from .tower_export import export_model
from .tower_loop import checkpoint_dir, latest_checkpoint, load_checkpoint, train
from .tower_model import TEXT_MODELS, TextTower, build_encoder, default_tokenizer, freeze_lower, output_kind
from .tower_run import Run, TrainConfig, TrainData

logger = logging.getLogger(__name__)

STAGES = ("all", "cache", "train", "evaluate", "export")


def _config(args: Any) -> TrainConfig:
    return TrainConfig(text_model=args.text_model, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, encoder_lr=args.encoder_lr, weight_decay=args.weight_decay,
                       warmup_steps=args.warmup_steps, hard_negatives=args.hard_negatives,
                       freeze_layers=args.freeze_layers, seed=args.seed, device=args.device,
                       checkpoint_every=args.checkpoint_every, val_fraction=args.val_fraction)


def prepare(args: Any, dist: Dist = SINGLE) -> Optional[Run]:
    """Read the input, fill the image cache and build the tower; None after ``--stage cache``.

    ``dist``: this process among torchrun's; each embeds its share of the uncached images.
    """
    cfg = _config(args)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, effective_cpus().cpus // dist.local_world) if dist.active else 0
    image_tower = ImageTower(args.image_model, threads)
    m = image_tower.manifest
    pairs = read_input(args, m.text.templates, m.text.normalize)
    cache = Path(args.cache) if args.cache else out / "cache"
    vectors, image_rows = embed_cached(image_tower, pairs.images, cache, dist=dist)
    eval_set = load_eval_set(args.eval, args.eval_gt, image_tower, cache, dist) if args.eval else None
    if args.stage == "cache":
        return None
    rows = image_rows[np.asarray(pairs.image_of, dtype=np.int64)]
    train_idx, val_idx = split_pairs(pairs, image_rows, cfg.val_fraction, cfg.seed)
    if not len(train_idx):
        raise ValueError(f"no training pairs left: every image of the input failed to decode ({cache})")
    logger.info("%d pairs: %d for training, %d held out", len(pairs), len(train_idx), len(val_idx))
    tok_path = Path(args.tokenizer) if args.tokenizer else default_tokenizer(cfg.text_model)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.text_model, tok_path)
    freeze_lower(encoder, cfg.freeze_layers)
    tower = TextTower(encoder, vectors.shape[1], output_kind(m.score), cfg.init_scale)
    data = TrainData(pairs.texts, rows, train_idx, val_idx, vectors)
    return Run(cfg, out, Path(args.image_model), m, tok_path, runtime_tokenizer(tok_path), tower, data,
               eval_set, dist=dist)


def build_parser():
    parser = make_parser("python -m train.text_tower", __doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--metadata", type=Path, help='contest JSON lines {"image": ID, "queries": [...]} (with --images)')
    src.add_argument("--pairs", type=Path, help='JSON lines {"image": "path", "text": "..."}')
    src.add_argument("--class-folders", type=Path, help="folder of <Russian class name>/ image folders")
    parser.add_argument("--images", type=Path, help="images folder (ID.jpg for --metadata; base of --pairs paths)")
    parser.add_argument("--image-model", type=Path, required=True, help="model folder whose image encoder is frozen")
    parser.add_argument("--out", type=Path, required=True, help="output folder: cache/, checkpoints/, model/, report.json")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="all (default); cache: only embed the images; train: train (and evaluate) without "
                             "export; evaluate / export: from the latest checkpoint")
    parser.add_argument("--text-model", choices=TEXT_MODELS, default="use-m")
    parser.add_argument("--tokenizer", type=Path, default=None, help="sentencepiece .model (required for tiny)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (default: --epochs epochs)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="pairs per step (the global batch: under torchrun shared by the processes)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the projection and temperature")
    parser.add_argument("--encoder-lr", type=float, default=1e-4, help="learning rate of unfrozen encoder layers")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=-1, help="linear warm-up steps (default: 5%% of steps)")
    parser.add_argument("--hard-negatives", type=float, default=0.25, help="share of each batch mined as hard negatives")
    parser.add_argument("--freeze-layers", type=int, default=-1,
                        help="freeze the N lowest encoder layer groups (-1: the whole encoder; 0: train all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda trains with mixed precision")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/checkpoints")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out for recall@k")
    parser.add_argument("--eval", type=Path, default=None, help="labelled datasets folder for zero-shot accuracy")
    parser.add_argument("--eval-gt", type=Path, default=None, help="its ground truth (default: EVAL/gt.json)")
    parser.add_argument("--cache", type=Path, default=None, help="image cache folder (default: OUT/cache)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the stages; the report goes to OUT/report.json (and the log), stdout stays clean.

    Under torchrun only rank 0 logs below WARNING, evaluates, exports and writes the report.
    """
    args = parse_args(build_parser(), argv)
    dist = start(args.device)
    if not dist.main:
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    try:
        run = prepare(args, dist)
        if run is not None:
            _stages(args, run)
    finally:
        stop(dist)
    return 0


def _stages(args: Any, run: Run) -> None:
    """Train, evaluate and export as ``--stage`` says (on rank 0 only, but training) and write the report."""
    summary: Dict[str, Any] = {}
    if args.stage in ("all", "train"):
        summary = train(run, resume=args.resume)
    if not run.dist.main:
        return
    if args.stage not in ("all", "train"):
        path = latest_checkpoint(run.out)
        if path is None:
            raise FileNotFoundError(f"{checkpoint_dir(run.out)}: no checkpoint; train first (--stage train)")
        state = load_checkpoint(run, path)
        summary = {"steps": state["step"]}
        if args.stage == "evaluate":
            run.history.append({"step": state["step"], **evaluate(run)})
    if args.stage in ("all", "export"):
        summary["model"] = str(export_model(run, summary))
    report = {"config": asdict(run.cfg), "history": run.history,
              **{k: v for k, v in summary.items() if k != "losses"}}
    (run.out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    logger.info("report %s", run.out / "report.json")


if __name__ == "__main__":
    sys.exit(main())
