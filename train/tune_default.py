"""Measure the default model's design choices on a labelled dev set, from cached encoder outputs.

Caches (in --cache) the ImageNet probabilities of every dev image and the
USE-m embeddings of the concept bank, then scores the default and one change
at a time (the ABLATIONS below: prompt templates, the bank's English lemmas,
inflections and visual proxies, held-out dev class names, concept scale and
top-k, Sinkhorn balancing, prototype refinement). Prints one line per setting
(mean accuracy x 100 and the difference to the default) to stdout, in the
order of ABLATIONS.

The image side is the shipped one by default: the image encoder of the model
folder ``--model`` (default: the repo's model/, built by ``make model``; its
default file, or ``--variant fp32``) at the manifest's size and preprocessing.
``--backbone lite0|lite1|lite2 [--size N]`` measures another EfficientNet-Lite
through torch instead.

Usage: ``python -m train.tune_default`` (the dev set beside the repo, see zeroshot/limits.py).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from zeroshot.datasets import discover
from zeroshot.images import load_image, preprocess
from zeroshot.limits import DEV_GT, DEVSETS_DIR, MODEL_DIR
from zeroshot.manifest import load_manifest, resolve_file, sha256_file
from zeroshot.scoring import class_logits, predict
from zeroshot.text import normalize_name

from .concepts import GROUP_FILES, concept_similarities, load_bank, mix
from .build_default import NORMALIZE, SCORE, TRANSDUCTIVE
from .text_encoder import embed_texts
from zeroshot.command import make_parser, parse_args

logger = logging.getLogger(__name__)

def _pixels(paths: List[Path], cfg: Dict) -> np.ndarray:
    """float32 (N, 3, S, S) through the runtime's preprocessing at cfg["size"]."""
    return np.stack([preprocess(load_image(p, cfg["size"]), cfg, cfg["size"]) for p in paths])


def image_logits(paths: List[Path], backbone: str, cfg: Dict) -> np.ndarray:
    """ImageNet logits (N, 1000) of the images through EfficientNet-Lite ``backbone`` (torch)."""
    import torch

    from .image_encoder import load_efficientnet_lite

    model = load_efficientnet_lite(backbone, image_size=cfg["size"])
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), 32):
            out.append(model(torch.from_numpy(_pixels(paths[start:start + 32], cfg))).numpy())
    return np.concatenate(out)


def shipped_log_probs(paths: List[Path], model_dir: Path, variant: Optional[str]) -> np.ndarray:
    """log ImageNet probabilities (N, 1000) through the model folder's ONNX image encoder (as predict.py runs it)."""
    from .image_encoder import run_encoder
    from zeroshot.encoders import make_session

    manifest = load_manifest(model_dir)
    session = make_session(resolve_file(manifest, model_dir, "image_encoder", variant=variant), threads=1)
    probs = np.concatenate([run_encoder(session, _pixels(paths[start:start + 32], manifest["image"]))
                            for start in range(0, len(paths), 32)])
    return np.log(np.maximum(probs, 1e-30))


def _cached(path: Path, make) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return arr


def _setting(**changes) -> Dict:
    """The default model's settings (train/build_default.py) with ``changes`` applied."""
    from . import build_default as d

    base = {"templates": d.TEMPLATES, "english": d.ENGLISH_ENTRIES, "inflect": True, "proxies": True,
            "holdout": False, "scale": d.CONCEPT_SCALE,
            "top_k": d.CONCEPT_TOP_K, "balance": d.BALANCE, "transductive": d.TRANSDUCTIVE}
    base.update(changes)
    return base


TRANS = TRANSDUCTIVE
ABLATIONS = [
    ("default", {}),
    ("templates: only '{}'", {"templates": ["{}"]}),
    ("templates: + 'изображение {}'", {"templates": ["{}", "фото {}", "изображение {}"]}),
    ("bank: + English lemmas", {"english": True}),
    ("bank: no inflections", {"inflect": False}),
    ("bank: no visual proxies", {"proxies": False}),
    ("bank: dev class names out of proxies", {"holdout": "proxies"}),
    ("bank: dev class names out of groups+proxies", {"holdout": "all"}),
    ("concept scale 10", {"scale": 10.0}),
    ("concept scale 40", {"scale": 40.0}),
    ("concept top-k 1", {"top_k": 1}),
    ("concept top-k 20", {"top_k": 20}),
    ("no Sinkhorn balancing", {"balance": None}),
    ("no prototype refinement", {"transductive": None}),
    ("neither balancing nor refinement", {"balance": None, "transductive": None}),
    ("refinement: 1 iteration", {"transductive": {**TRANS, "iterations": 1}}),
    ("refinement: 10 iterations", {"transductive": {**TRANS, "iterations": 10}}),
    ("refinement: weight 2", {"transductive": {**TRANS, "weight": 2.0}}),
    ("refinement: weight 0.5", {"transductive": {**TRANS, "weight": 0.5}}),
    ("refinement: not centred", {"transductive": {**TRANS, "center": False}}),
    ("refinement: probabilities, not log", {"transductive": {**TRANS, "log_features": False}}),
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.tune_default", __doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEVSETS_DIR, help="datasets folder (default: %(default)s)")
    parser.add_argument("--gt", type=Path, default=DEV_GT, help="ground truth (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=MODEL_DIR,
                        help="model folder whose image encoder is measured (default: %(default)s)")
    parser.add_argument("--variant", default=None, help="a variant of --model's manifest (default: its default files)")
    parser.add_argument("--backbone", choices=("lite0", "lite1", "lite2"), default=None,
                        help="measure this EfficientNet-Lite through torch instead of --model's encoder")
    parser.add_argument("--size", type=int, default=None, help="--backbone's image size (default: its native size)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/zeroshot_tune"))
    args = parse_args(parser, argv)
    from .image_encoder import image_config

    gt = json.loads(args.gt.read_text(encoding="utf-8"))
    datasets, _ = discover(args.data)
    norm = lambda s: normalize_name(s, NORMALIZE)  # noqa: E731
    banks: Dict = {}
    logits_img = {}
    if args.backbone:
        cfg = image_config(args.backbone, args.size)
        source = f"{args.backbone}_{cfg['size']}_{cfg['resize']}_{cfg['mean'][0]:.3f}"
    else:
        manifest = load_manifest(args.model)
        source = sha256_file(resolve_file(manifest, args.model, "image_encoder", variant=args.variant))[:16]
    logger.info("image side: %s", f"torch {args.backbone} at {cfg['size']} px" if args.backbone else
                f"{args.model} (variant {args.variant or 'default'})")
    for ds in datasets:
        make = ((lambda: image_logits(ds.images, args.backbone, cfg)) if args.backbone else
                (lambda: shipped_log_probs(ds.images, args.model, args.variant)))
        logits_img[ds.name] = _cached(args.cache / f"img_{ds.name}_{len(ds.images)}_{source}.npy", make)
    rows = []
    for label, changes in ABLATIONS:
        s = _setting(**changes)
        bkey = (s["english"], s["inflect"], s["proxies"], s["holdout"])
        if bkey not in banks:
            exclude = [norm(c) for ds in datasets for c in ds.classes] if s["holdout"] else []
            bank = load_bank(norm, english=s["english"], inflect=s["inflect"], exclude=exclude,
                             exclude_from=GROUP_FILES if s["holdout"] == "all" else GROUP_FILES[1:],
                             group_files=GROUP_FILES if s["proxies"] else GROUP_FILES[:1])
            emb = _cached(args.cache / f"bank_{'_'.join(str(v) for v in bkey)}_{len(bank.texts)}.npy",
                          lambda: embed_texts(bank.texts))
            banks[bkey] = (bank, emb, bank.entry_index())
        bank, emb, index = banks[bkey]
        accs = []
        for ds in datasets:
            truth = np.array([gt[ds.name][i] for i in ds.ids])
            prompts = [t.replace("{}", norm(c)) for t in s["templates"] for c in ds.classes]
            q = embed_texts(prompts).reshape(len(s["templates"]), len(ds.classes), -1)
            w = np.mean([mix(concept_similarities(q[t], emb, index), bank.distributions, s["scale"],
                             (s["top_k"],)) for t in range(len(s["templates"]))], axis=0)
            z = logits_img[ds.name]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            pred = predict(class_logits(p, w, SCORE), np.ones(len(p), bool), ds.class_mask(), s["balance"], p,
                           s["transductive"])
            accs.append(100 * float((pred == truth).mean()))
        rows.append((label, float(np.mean(accs))))
    base = rows[0][1]
    sys.stdout.write(f"{'setting':<36} {'score':>6} {'vs default':>10}\n")
    for label, acc in rows:
        sys.stdout.write(f"{label:<36} {acc:6.2f} {acc - base:+10.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
