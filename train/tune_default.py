"""Measure the default model's design choices on a labelled dev set, from cached encoder outputs.

Caches (in --cache) the ImageNet probabilities of every dev image and the
USE-m embeddings of the concept bank, then scores combinations of: English
lemmas in the bank, inflections, concept softmax scale, top-k, image
temperature, prompt templates and Sinkhorn iterations. Prints one line per
setting (mean accuracy x 100) to stdout, best last.

Usage: ``python -m train.tune_default --data ../shared/devsets --gt ../shared/devsets/gt.json``.
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
from zeroshot.scoring import predict
from zeroshot.text import normalize_name

from .concepts import GROUP_FILES, concept_similarities, load_bank, mix
from .build_default import NORMALIZE, TRANSDUCTIVE
from .text_encoder import embed_texts
from zeroshot.command import make_parser, parse_args

logger = logging.getLogger(__name__)

def image_logits(paths: List[Path], variant: str, cfg: Dict) -> np.ndarray:
    """ImageNet logits (N, 1000) of the images through EfficientNet-Lite (torch)."""
    import torch

    from .image_encoder import load_efficientnet_lite

    model = load_efficientnet_lite(variant, image_size=cfg["size"])
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), 32):
            batch = np.stack([preprocess(load_image(p, cfg["size"]), cfg, cfg["size"]) for p in paths[start:start + 32]])
            out.append(model(torch.from_numpy(batch)).numpy())
    return np.concatenate(out)


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
    parser.add_argument("--data", type=Path, default=Path("../shared/devsets"))
    parser.add_argument("--gt", type=Path, default=Path("../shared/devsets/gt.json"))
    parser.add_argument("--variant", default="lite2")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the variant's native size)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/zeroshot_tune"))
    args = parse_args(parser, argv)
    from .image_encoder import image_config

    cfg = image_config(args.variant, args.size)
    gt = json.loads(args.gt.read_text(encoding="utf-8"))
    datasets, _ = discover(args.data)
    norm = lambda s: normalize_name(s, NORMALIZE)  # noqa: E731
    banks: Dict = {}
    logits_img = {}
    for ds in datasets:
        key = f"{ds.name}_{len(ds.images)}_{args.variant}_{cfg['size']}_{cfg['resize']}_{cfg['mean'][0]:.3f}"
        logits_img[ds.name] = _cached(args.cache / f"img_{key}.npy", lambda: image_logits(ds.images, args.variant, cfg))
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
            scores = np.log(np.maximum(p @ w.T, 1e-12))
            pred = predict(scores, np.ones(len(scores), bool), ds.class_mask(), s["balance"], p,
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
