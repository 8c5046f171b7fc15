"""Measure the default model's design choices on the four dev-set yardsticks, from cached encoder outputs.

For every setting it prints the mean accuracy x 100 on (a) ``dev``, the dev
set; (b) ``holdout``, the dev set with every vocabulary entry that names a
dev class (in any inflection) removed from the concept bank, ImageNet's
primary class names kept; (c) ``px32``, the dev images downscaled to 32x32 px
and upscaled by the runtime's preprocessing like any image; (d)
``imbalanced``, a fixed-seed subset with 5 to 30 images per class
(train/yardsticks.py makes (b)-(d) from the dev set).

Image outputs (ImageNet logits and pooled penultimate features of every
EfficientNet-Lite the settings use, at each size, and of the mirrored images)
come from the torch models and are cached in --cache; the USE-m embeddings of
the concept bank too. Every number is then computed by the runtime's own
scoring (zeroshot.scoring.predict) from these outputs, as predict.py would.

Text-side settings ``head_alpha`` > 0 mix the learned vocabulary head
(train/vocab_head.py) into the bank's class weights (1 = the head alone); the
head is trained on exactly the bank of the column (for ``holdout`` the bank
with the dev names held out) and cached in --cache/heads by a hash of its
training entries and settings (about a minute per head on one core).

Usage: ``python -m train.tune_default [--data DATASETS] [--sets dev,holdout] [--only default,...]``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import Dataset, discover
from zeroshot.images import load_image, preprocess
from zeroshot.limits import DEV_GT, DEVSETS_DIR
from zeroshot.manifest import BalanceConfig, ScoreConfig, TransductiveConfig, VisualBankConfig, read_section
from zeroshot.scoring import class_logits, predict
from zeroshot.visual_bank import Bank, ClassMatch, bank_logits
from zeroshot.text import normalize_name

from .concepts import GROUP_FILES, concept_similarities, load_bank, mix
from .text_encoder import EMBEDDING_NAME, embed_texts
from .visual_bank import BANK_DIR, PROTOTYPES_FILE, read_bank
from .yardsticks import YARDSTICKS, downscale, holdout_filter, imbalanced_subset

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/tmp/zeroshot_tune_i12")

Member = Tuple[str, int, bool]  # (EfficientNet-Lite backbone, input size, mirrored)


@dataclass
class ImageOutputs:
    """Encoder outputs of one dataset for one (arch, size, mirrored): logits (N, 1000), features (N, 1280)."""

    logits: np.ndarray
    features: np.ndarray


def _load(path: Path, transform: Optional[str], size: int):
    img = load_image(path, size)
    return downscale(img) if transform == "px32" else img


def encode(paths: Sequence[Path], arch: str, size: int, transform: Optional[str]) -> Dict[bool, ImageOutputs]:
    """Torch EfficientNet-Lite outputs of the images and of their mirror images: {mirrored: outputs}."""
    import torch

    from .image_encoder import FeatureBackbone, image_config, load_efficientnet_lite

    torch.set_num_threads(1)  # one thread per process: the cache is filled by several processes in parallel
    cfg = image_config(arch, size)
    model = FeatureBackbone(load_efficientnet_lite(arch, image_size=size)).eval()
    out: Dict[bool, List[Tuple[np.ndarray, np.ndarray]]] = {False: [], True: []}
    with torch.no_grad():
        for start in range(0, len(paths), 32):
            batch = np.stack([preprocess(_load(p, transform, size), cfg, size) for p in paths[start:start + 32]])
            for mirrored in (False, True):
                pixels = torch.from_numpy(np.ascontiguousarray(batch[..., ::-1] if mirrored else batch))
                logits, feats = model(pixels)
                out[mirrored].append((logits.numpy(), feats.numpy()))
    return {m: ImageOutputs(np.concatenate([a for a, _ in rows]), np.concatenate([b for _, b in rows]))
            for m, rows in out.items()}


class ImageCache:
    """Encoder outputs per (dataset, image set, arch, size, mirrored), computed once and kept in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.memory: Dict[Tuple[str, str, str, int, bool], ImageOutputs] = {}

    def get(self, ds: Dataset, image_set: str, member: Member) -> ImageOutputs:
        arch, size, mirrored = member
        key = (ds.name, image_set, arch, size, mirrored)
        if key not in self.memory:
            files = {m: self.folder / f"img_{ds.name}_{len(ds.images)}_{image_set}_{arch}_{size}_{int(m)}.npz"
                     for m in (False, True)}
            if not all(f.is_file() for f in files.values()):
                logger.info("encoding %s (%s) with %s at %d px", ds.name, image_set, arch, size)
                outs = encode(ds.images, arch, size, "px32" if image_set == "px32" else None)
                self.folder.mkdir(parents=True, exist_ok=True)
                for m, o in outs.items():
                    np.savez(files[m], logits=o.logits, features=o.features)
            data = np.load(files[mirrored])
            self.memory[key] = ImageOutputs(data["logits"], data["features"])
        return self.memory[key]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def image_vectors(outs: Sequence[ImageOutputs], features: str) -> Tuple[np.ndarray, np.ndarray]:
    """An ensemble's (probabilities (N, 1000), transductive features (N, F)), as the exported graph forms them.

    Probabilities are the mean of the members' softmax; ``features`` is
    ``probs`` (the mean probabilities) or ``penultimate`` (the members' pooled
    features, each L2-normalised, concatenated over architectures).
    """
    probs = np.mean([_softmax(o.logits) for o in outs], axis=0)
    if features == "probs":
        return probs, probs
    unit = [o.features / np.maximum(np.linalg.norm(o.features, axis=1, keepdims=True), 1e-12) for o in outs]
    return probs, np.concatenate(unit, axis=1)


def ensemble(cache: ImageCache, ds: Dataset, image_set: str, members: Sequence[Member],
             features: str) -> Tuple[np.ndarray, np.ndarray]:
    """(probabilities, features) of ``members``: mirrored members are averaged with their unmirrored twin."""
    groups: Dict[Tuple[str, int], List[ImageOutputs]] = {}
    for arch, size, mirrored in members:
        groups.setdefault((arch, size), []).append(cache.get(ds, image_set, (arch, size, mirrored)))
    merged = [ImageOutputs(np.mean([o.logits for o in g], axis=0), np.mean([o.features for o in g], axis=0))
              for g in groups.values()]
    return image_vectors(merged, features)


def rung_members(name: str) -> List[Member]:
    """The (arch, size, mirrored) encoder outputs a rung of train.build_default.RUNGS averages."""
    from .build_default import RUNGS

    rung = next(r for r in RUNGS if r["name"] == name)
    mirrors = (False, True) if rung.get("mirror") else (False,)
    return [(arch, rung["size"], m) for arch in rung["backbones"] for m in mirrors]


def _setting(**changes: Any) -> Dict[str, Any]:
    """The default model's settings (train/build_default.py) with ``changes`` applied.

    The image side is the rung predict.py chooses for 2,200 images on one core
    (build_default.MEASURED_RUNG), with its penultimate features for the
    transductive step.
    """
    from . import build_default as d

    base = {"templates": d.TEMPLATES, "english": d.ENGLISH_ENTRIES, "inflect": True, "group_files": GROUP_FILES,
            "scale": d.CONCEPT_SCALE, "top_k": d.CONCEPT_TOP_K, "balance": d.BALANCE,
            "transductive": d.TRANSDUCTIVE, "members": rung_members(d.MEASURED_RUNG), "features": "penultimate",
            "head_alpha": 0.0, "visual_bank": {"embedding_output": EMBEDDING_NAME, **d.VISUAL_BANK}
            if (BANK_DIR / PROTOTYPES_FILE).is_file() else None}
    base.update(changes)
    return base


class VisualSide:
    """The committed visual concept bank (train/vocab/visual_bank), class names matched to it as the runtime
    matches them (USE-m name embeddings, zeroshot.visual_bank.Bank), the prototypes cut to the features' size."""

    def __init__(self, normalize: Callable[[str], str], held_out: Sequence[str]) -> None:
        from .build_default import LITE2_FEATURES, NORMALIZE

        self.normalize_steps = NORMALIZE
        records, self.prototypes = read_bank(BANK_DIR)
        self.names = [[r["ru"], *r["synonyms"]] for r in records]
        self.sources = [r["repo"] for r in records]
        self.norm, self.held_out, self.lite2 = normalize, list(held_out), slice(*LITE2_FEATURES)
        self.embeddings = embed_texts([normalize(n) for ns in self.names for n in ns])
        self.queries: Dict[Tuple[str, ...], np.ndarray] = {}

    def match(self, s: Dict[str, Any], classes: Sequence[str], dim: int, holdout: bool) -> Optional[ClassMatch]:
        """The classes' prototypes for setting ``s`` (None without its ``visual_bank``); with ``holdout`` every
        concept named like a dev class is removed, as the text side's held-out yardstick removes its names."""
        if not s.get("visual_bank"):
            return None
        cfg = read_section(VisualBankConfig, s["visual_bank"], "visual_bank")
        lite2_only = {arch for arch, _, _ in s["members"]} == {"lite2"}
        if s["features"] == "penultimate" and dim == self.prototypes.shape[1]:
            protos = self.prototypes
        elif s["features"] == "penultimate" and lite2_only and dim == self.lite2.stop - self.lite2.start:
            protos = self.prototypes[:, self.lite2]
        else:
            logger.info("visual bank left out: its prototypes are not in this setting's feature space")
            return None
        bank = Bank(self.names, self.sources, self.embeddings, protos, cfg, self.normalize_steps)
        key = tuple(classes)
        if key not in self.queries:
            self.queries[key] = embed_texts([self.norm(c) for c in classes])
        return bank.match(classes, self.queries[key], drop=bank.named(self.held_out) if holdout else ())


class TextSide:
    """Class weights (C, 1000) of the class names for a setting, with or without the dev names held out."""

    def __init__(self, cache: Path, normalize: Callable[[str], str], held_out: Sequence[str]) -> None:
        self.cache, self.norm = cache, normalize
        self.held_out = list(held_out)
        self.banks: Dict[Tuple, Tuple] = {}
        self.queries: Dict[str, np.ndarray] = {}
        self.heads: Dict[Tuple, Any] = {}

    def _bank(self, s: Dict[str, Any], holdout: bool) -> Tuple:
        rows = holdout and s.get("holdout_rows", False)
        key = (s["english"], s["inflect"], len(s["group_files"]), holdout) + (("rows",) if rows else ())
        if key not in self.banks:
            drop = None
            if holdout:
                import pymorphy3

                drop = holdout_filter(self.held_out, pymorphy3.MorphAnalyzer())
            bank = load_bank(self.norm, english=s["english"], inflect=s["inflect"], drop=drop, drop_rows=rows,
                             group_files=s["group_files"])
            path = self.cache / f"bank_{'_'.join(str(v) for v in key)}_{len(bank.texts)}.npy"
            if path.is_file():
                emb = np.load(path)
            else:
                emb = embed_texts(bank.texts)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, emb)
            self.banks[key] = (bank, emb, bank.entry_index())
        return self.banks[key]

    def _head(self, s: Dict[str, Any], holdout: bool):
        """The vocabulary head (train/vocab_head.py) trained on exactly the bank of ``s`` (held-out or full)."""
        from zeroshot.limits import MODEL_DIR

        from .vocab_head import trained_head

        bank, _, _ = self._bank(s, holdout)
        key = (id(bank),)
        if key not in self.heads:
            self.heads[key] = trained_head(bank, MODEL_DIR, self.cache / "heads")
        return self.heads[key]

    def _embed(self, prompts: List[str]) -> np.ndarray:
        missing = [p for p in prompts if p not in self.queries]
        if missing:
            self.queries.update(zip(missing, embed_texts(missing)))
        return np.stack([self.queries[p] for p in prompts])

    def weights(self, s: Dict[str, Any], classes: Sequence[str], holdout: bool) -> np.ndarray:
        bank, emb, index = self._bank(s, holdout)
        alpha = float(s.get("head_alpha", 0.0))
        head = self._head(s, holdout) if alpha > 0 else None
        per_template = []
        for template in s["templates"]:
            q = self._embed([template.replace("{}", self.norm(c)) for c in classes])
            w = mix(concept_similarities(q, emb, index), bank.distributions, s["scale"], (s["top_k"],))
            if head is not None:
                from .vocab_head import head_weights, mix_weights

                w = mix_weights(w, head_weights(head, q), alpha)
            per_template.append(w)
        return np.mean(per_template, axis=0)


def score_dataset(s: Dict[str, Any], w: np.ndarray, probs: np.ndarray, feats: np.ndarray, truth: np.ndarray,
                  class_mask: np.ndarray, valid: Optional[np.ndarray] = None, match: Optional[ClassMatch] = None
                  ) -> float:
    """Accuracy x 100 of the runtime's scoring (class logits, balance, transductive step) on one image set.

    As predict.py scores a dataset (zeroshot.pipeline): ``s["score"]`` (default: build_default.SCORE) forms
    the logits of class weights ``w`` (C, D) and image vectors ``probs`` (N, D), then ``s["balance"]`` and
    ``s["transductive"]`` on ``feats`` (N, F), each a manifest section as a dict (read through the manifest's
    types). ``valid`` bool (N,): rows from a decoded image (default all; the others get the dataset's prior).
    ``truth`` int (N,): labels, < 0 for an image without one (not counted). ``match``: the classes'
    concept-bank prototypes, added as ``s["visual_bank"]`` says (zeroshot.visual_bank.bank_logits).
    """
    from .build_default import SCORE

    valid = np.ones(len(probs), bool) if valid is None else valid
    score = read_section(ScoreConfig, s.get("score", SCORE), "score")
    logits = np.where(valid[:, None], class_logits(probs, w, score), 0.0).astype(np.float32)
    if match is not None and s.get("visual_bank"):
        logits = bank_logits(logits, feats, valid, match, read_section(VisualBankConfig, s["visual_bank"],
                                                                        "visual_bank"))
    pred = predict(logits, valid, class_mask, read_section(BalanceConfig, s["balance"], "balance"),
                   feats.astype(np.float32), read_section(TransductiveConfig, s["transductive"], "transductive"))
    labelled = truth >= 0
    return 100.0 * float((pred[labelled] == truth[labelled]).mean())


def resampled(s: Dict[str, Any], w: np.ndarray, probs: np.ndarray, feats: np.ndarray, truth: np.ndarray,
              class_mask: np.ndarray, seeds: int, match: Optional[ClassMatch] = None) -> float:
    """Mean accuracy x 100 over the imbalanced subsets of seeds 0..seeds-1 (one subset is a noisy yardstick:
    a cluster taken by the wrong class moves it by 30 images)."""
    return float(np.mean([score_dataset(s, w, probs[keep], feats[keep], truth[keep], class_mask, match=match)
                          for keep in (imbalanced_subset(truth, seed=seed) for seed in range(seeds))]))


def evaluate(s: Dict[str, Any], datasets: List[Dataset], gt: Dict[str, Dict[str, int]], cache: ImageCache,
             text: TextSide, sets: Sequence[str] = YARDSTICKS, seeds: int = 0,
             visual: Optional[VisualSide] = None) -> Dict[str, float]:
    """The yardsticks ``sets`` of setting ``s``: {yardstick: mean accuracy x 100 over datasets}; with
    ``visual`` and the setting's ``visual_bank`` the concept bank adds to the scores as in predict.py.

    With ``seeds`` > 0 also ``<yardstick> x<seeds>`` for dev, holdout and
    px32: the mean over that many imbalanced resamples of each (:func:`resampled`).
    """
    scores: Dict[str, List[float]] = {k: [] for k in sets}
    wanted = set(sets) | ({"holdout", "px32"} if seeds else set())
    for ds in datasets:
        truth = np.array([gt[ds.name][i] for i in ds.ids])
        mask = ds.class_mask()
        w_full = text.weights(s, ds.classes, holdout=False)
        probs, feats = ensemble(cache, ds, "dev", s["members"], s["features"])
        # (class weights, probabilities, features) of each image set, each formed once
        match = visual.match(s, ds.classes, feats.shape[1], False) if visual is not None else None
        sources = {"dev": (w_full, probs, feats)}
        matches = {"dev": match, "px32": match}
        if "holdout" in wanted:
            sources["holdout"] = (text.weights(s, ds.classes, holdout=True), probs, feats)
            matches["holdout"] = visual.match(s, ds.classes, feats.shape[1], True) if visual is not None else None
        if "px32" in wanted:
            sources["px32"] = (w_full, *ensemble(cache, ds, "px32", s["members"], s["features"]))
        for name in ("dev", "holdout", "px32"):
            if name in sets:
                scores[name].append(score_dataset(s, *sources[name], truth, mask, match=matches[name]))
            if seeds:
                scores.setdefault(f"{name} x{seeds}", []).append(
                    resampled(s, *sources[name], truth, mask, seeds, matches[name]))
        if "imbalanced" in sets:
            keep = imbalanced_subset(truth)
            scores["imbalanced"].append(score_dataset(s, w_full, probs[keep], feats[keep], truth[keep], mask,
                                                      match=match))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def ablations() -> List[Tuple[str, Dict[str, Any]]]:
    """(label, changes to the default) for every setting the table shows."""
    from . import build_default as d

    trans, bal, prop = d.TRANSDUCTIVE, d.BALANCE, d.PROPAGATE
    sinkhorn = {"method": "sinkhorn", "iterations": 3, "min_images_per_class": 5}
    em = {"method": "em", "iterations": 3, "em_iterations": 20, "pseudo_count": 2.0, "min_images_per_class": 5}
    before = {"balance": sinkhorn, "features": "probs", "members": rung_members("fp32"),
              "transductive": {**trans, "scale": 10.0, "log_features": True, "propagate": None},
              "group_files": GROUP_FILES[:2]}
    rows = [("default", {}), ("before issue 12 (fp32 rung, log-probability features, Sinkhorn)", before)]
    rows.append(("holdout: whole rows naming a dev class removed (stricter)", {"holdout_rows": True}))
    rows += [(f"rung {r['name']}", {"members": rung_members(r["name"])}) for r in d.RUNGS
             if "backbones" in r and r["name"] != d.MEASURED_RUNG]
    rows += [(f"rung {r['name']}, no label propagation", {"members": rung_members(r["name"]),
                                                          "transductive": {**trans, "propagate": None}})
             for r in d.RUNGS if "backbones" in r]
    rows += [("no visual concept bank", {"visual_bank": None})]
    rows += [("text: learned vocabulary head", {"head_alpha": 1.0})]
    rows += [(f"text: bank + head alpha {a}", {"head_alpha": a}) for a in (0.25, 0.5)]
    return rows + [
        ("bank: without everyday_ru.tsv", {"group_files": GROUP_FILES[:2]}),
        ("no balancing", {"balance": None}),
        ("balance: Sinkhorn to equal classes", {"balance": sinkhorn}),
        ("balance: EM priors (Saerens)", {"balance": em}),
        ("balance: estimated, 1 round", {"balance": {**bal, "rounds": 1}}),
        ("balance: estimated, 3 rounds", {"balance": {**bal, "rounds": 3}}),
        ("features: log-probabilities", {"features": "probs", "transductive": {**trans, "log_features": True}}),
        ("propagation: alpha 0.8", {"transductive": {**trans, "propagate": {**prop, "alpha": 0.8}}}),
        ("propagation: 5 neighbours", {"transductive": {**trans, "propagate": {**prop, "neighbours": 5}}}),
        ("propagation: 20 neighbours", {"transductive": {**trans, "propagate": {**prop, "neighbours": 20}}}),
        ("no prototype refinement", {"transductive": None}),
        ("refinement: scale 10", {"transductive": {**trans, "scale": 10.0}}),
        ("refinement: scale 20", {"transductive": {**trans, "scale": 20.0}}),
        ("refinement: scale 40", {"transductive": {**trans, "scale": 40.0}}),
        ("refinement: 3 iterations", {"transductive": {**trans, "iterations": 3}}),
    ]


def print_table(rows: List[Tuple[str, Dict[str, float]]]) -> None:
    """Markdown table of the settings' yardsticks, with the differences to the first row."""
    base = rows[0][1]
    columns = list(YARDSTICKS) + [k for k in base if k not in YARDSTICKS]
    sys.stdout.write("| setting | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n")
    for label, scores in rows:
        cells = [("" if k not in scores else f"{scores[k]:.2f}")
                 + ("" if scores is base or k not in scores or k not in base else f" ({scores[k] - base[k]:+.2f})")
                 for k in columns]
        sys.stdout.write(f"| {label} | " + " | ".join(cells) + " |\n")
    sys.stdout.flush()


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.tune_default", __doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEVSETS_DIR, help="datasets folder (default: %(default)s)")
    parser.add_argument("--gt", type=Path, default=None, help=f"ground truth (default: DATA/gt.json, {DEV_GT})")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", default=None, help="comma-separated labels of the settings to run")
    parser.add_argument("--sets", default=",".join(YARDSTICKS),
                        help="comma-separated yardsticks to measure (default: all four)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--seeds", type=int, default=0,
                        help="also report dev, holdout and px32 as the mean over this many imbalanced resamples")
    args = parse_args(parser, argv)
    from .build_default import NORMALIZE

    gt_path = args.gt or args.data / "gt.json"
    if not gt_path.is_file():
        raise FileNotFoundError(f"{gt_path}: ground truth not found (pass --gt)")
    gt = json.loads(gt_path.read_text(encoding="utf-8"))
    datasets, _ = discover(args.data)
    norm = lambda t: normalize_name(t, NORMALIZE)  # noqa: E731
    cache = ImageCache(args.cache)
    text = TextSide(args.cache, norm, [c for ds in datasets for c in ds.classes])
    visual = VisualSide(norm, text.held_out) if (BANK_DIR / PROTOTYPES_FILE).is_file() else None
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    for label, changes in ablations():
        if wanted is None or label in wanted:
            rows.append((label, evaluate(_setting(**changes), datasets, gt, cache, text, args.sets.split(","),
                                         args.seeds, visual)))
            logger.info("%s: %s", label, rows[-1][1])
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(dict(rows), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
