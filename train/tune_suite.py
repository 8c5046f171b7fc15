"""Re-decide the default model's settings on the tuning suite, leave one set out.

For every knob (rung; logit scale; refinement rounds and scale; label propagation on/off, its neighbours
and alpha; class-balance estimation; prompt templates; flip TTA) each value is scored on every set with
the other knobs at the current default, through the runtime's own scoring (zeroshot.scoring via
train.tune_default.score_dataset: the manifest's ``score``, ``balance`` and ``transductive`` sections, as
zeroshot.pipeline scores a dataset) from the runtime's own encoder outputs, cached per set and rung by
train/suite_cache.py (ONNX graphs of the model folder; nothing is re-encoded for a knob).

Per knob it reports the **leave-one-set-out** score (for each set, the value with the best mean on the
other sets, scored on this set; the mean over sets is the headline), the in-sample best (the value best
on all sets, scored on the same sets: optimistic) and the current default. ``joint`` does the same for
all knobs at once: for each held-out set, coordinate ascent over the knobs on the other sets, from the
default. The dev set (zeroshot.limits.DEVSETS_DIR), if given, is scored for every setting but takes no
part in a choice; its row shows the setting chosen on all suite sets.

Flip TTA averages each image with its mirror image after the graph: probabilities by their normalised
geometric mean (equal to the in-graph mirror's averaged logits for a one-backbone rung), features by
their mean.

Usage: ``python -m train.tune_suite [--suite DIR] [--model DIR] [--cache DIR] [--knobs rung,...] [--json OUT]``.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from contest.suite import LabelledSet, load_suite
from contest.suite_data import load_spec
from zeroshot.visual_bank import ClassMatch
from zeroshot.command import make_parser, parse_args
from zeroshot.encoders import mean_over_templates
from zeroshot.limits import DEVSETS_DIR, MODEL_DIR, SUITE_DIR
from zeroshot.manifest import VisualBankConfig, load_manifest, read_section
from zeroshot.outputs import write_json_atomic

from .suite_cache import DEFAULT_CACHE, SuiteCache, fill
from .tune_default import score_dataset

logger = logging.getLogger(__name__)

Table = Dict[str, Dict[str, float]]          # value label -> set -> accuracy x 100
Choice = Dict[str, str]                      # knob -> value label
Change = Callable[[Dict[str, Any]], None]    # edits a config in place
TIE = 1e-9
JOINT_PASSES = 3
TEMPLATE_SETS = [("{}",), ("фото {}",), ("{}", "фото {}"), ("{}", "фото {}", "изображение {}"),
                 ("{}", "фото {}", "фотография {}", "картинка {}", "изображение {}")]


# ---------------------------------------------------------------- selection (pure)

def mean_over(scores: Dict[str, float], sets: Sequence[str]) -> float:
    return float(np.mean([scores[s] for s in sets]))


def best_value(table: Table, sets: Sequence[str], prefer: str) -> str:
    """The value with the best mean over ``sets``; a tie (within TIE) goes to ``prefer``, then to the first listed."""
    means = {label: mean_over(scores, sets) for label, scores in table.items()}
    top = max(means.values())
    tied = [label for label in table if means[label] >= top - TIE]
    return prefer if prefer in tied else tied[0]


def leave_one_set_out(table: Table, sets: Sequence[str], default: str) -> Dict[str, Any]:
    """Per set: the value chosen on the other sets (``choice``) and its score here (``loso``), the default's
    score and the in-sample best value's score; and their means over ``sets``."""
    best = best_value(table, sets, default)
    per_set: Dict[str, Dict[str, Any]] = {}
    for held in sets:
        choice = best_value(table, [s for s in sets if s != held], default)
        per_set[held] = {"choice": choice, "loso": table[choice][held], "default": table[default][held],
                         "best": table[best][held]}
    return {"default": default, "best": best, "per_set": per_set,
            "loso_mean": float(np.mean([r["loso"] for r in per_set.values()])),
            "default_mean": mean_over(table[default], sets), "best_mean": mean_over(table[best], sets),
            "choices": dict(Counter(r["choice"] for r in per_set.values()))}


def ascend(knobs: Sequence[Tuple[str, Sequence[str]]], start: Choice, score: Callable[[Choice], Dict[str, float]],
           sets: Sequence[str], passes: int = JOINT_PASSES) -> Choice:
    """Coordinate ascent: each knob in turn set to its best value on ``sets`` (mean; ties keep the current
    value) with the others fixed, for up to ``passes`` rounds or until nothing changes."""
    current = dict(start)
    for _ in range(passes):
        changed = False
        for name, labels in knobs:
            table = {label: score({**current, name: label}) for label in labels}
            pick = best_value(table, sets, current[name])
            changed |= pick != current[name]
            current[name] = pick
        if not changed:
            break
    return current


def joint_leave_one_set_out(knobs: Sequence[Tuple[str, Sequence[str]]], start: Choice,
                            score: Callable[[Choice], Dict[str, float]], sets: Sequence[str]) -> Dict[str, Any]:
    """:func:`ascend` on every set but one, scored on that one; and on all sets (in-sample)."""
    best = ascend(knobs, start, score, sets)
    per_set: Dict[str, Dict[str, Any]] = {}
    for held in sets:
        choice = ascend(knobs, start, score, [s for s in sets if s != held])
        logger.info("joint, without %s: %s", held, {k: v for k, v in choice.items() if v != start[k]} or "default")
        per_set[held] = {"choice": choice, "loso": score(choice)[held], "default": score(start)[held],
                         "best": score(best)[held]}
    return {"default": start, "best": best, "per_set": per_set,
            "loso_mean": float(np.mean([r["loso"] for r in per_set.values()])),
            "default_mean": mean_over(score(start), sets), "best_mean": mean_over(score(best), sets)}


# ---------------------------------------------------------------- knobs

def base_config(manifest: Dict[str, Any], rung: Optional[str]) -> Dict[str, Any]:
    """The model's current settings: rung, no flip, the manifest's templates, score, balance, transductive."""
    return {"rung": rung, "flip": False, "templates": list(manifest["text"]["templates"]),
            "score": dict(manifest["score"]), "balance": copy.deepcopy(manifest.get("balance")),
            "transductive": copy.deepcopy(manifest.get("transductive")),
            "visual_bank": copy.deepcopy(manifest.get("visual_bank"))}


def _set(*path: str, value: Any) -> Change:
    """A change setting config[path[0]][path[1]]... to ``value`` (a no-op where a section is off)."""
    def change(c: Dict[str, Any]) -> None:
        node = c
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                return
        node[path[-1]] = value
    return change


def knob_values(manifest: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, List[Tuple[str, Change]]]:
    """{knob: [(value label, change)]}: the values each knob takes around ``base``."""
    from .build_default import BALANCE, PROPAGATE

    prop = (base["transductive"] or {}).get("propagate") or PROPAGATE
    bal = base["balance"] or BALANCE
    balances = [("estimated, 2 rounds", {**bal, "method": "estimated", "rounds": 2}),
                ("estimated, 0 rounds (equal shares)", {**bal, "method": "estimated", "rounds": 0}),
                ("estimated, 1 round", {**bal, "method": "estimated", "rounds": 1}),
                ("estimated, 3 rounds", {**bal, "method": "estimated", "rounds": 3}),
                ("sinkhorn", {"method": "sinkhorn", "iterations": 3, "min_images_per_class": 5}),
                ("em", {"method": "em", "iterations": 3, "em_iterations": 20, "pseudo_count": 2.0,
                        "min_images_per_class": 5}),
                ("none", None)]
    return {
        "rung": [(r or "default encoder", _set("rung", value=r)) for r in manifest.get("ladder") or [None]],
        "logit scale": [(f"x{f}", _set("score", "scale", value=f * base["score"]["scale"])) for f in (0.5, 1, 2)],
        "refinement rounds": [(str(v), _set("transductive", "iterations", value=v)) for v in (0, 3, 5, 10, 20)],
        "refinement scale": [(str(v), _set("transductive", "scale", value=v)) for v in (20.0, 30.0, 40.0)],
        "propagation": [("on", _set("transductive", "propagate", value=dict(prop))),
                        ("off", _set("transductive", "propagate", value=None))],
        "neighbours": [(str(v), _set("transductive", "propagate", "neighbours", value=v)) for v in (5, 10, 20)],
        "alpha": [(str(v), _set("transductive", "propagate", "alpha", value=v)) for v in (0.3, 0.5, 0.7, 0.8)],
        "balance": [(label, _set("balance", value=b)) for label, b in balances],
        "templates": [(" + ".join(f"'{x}'" for x in t), _set("templates", value=list(t))) for t in TEMPLATE_SETS],
        "flip": [("off", _set("flip", value=False)), ("on", _set("flip", value=True))],
        **bank_knobs(base),
    }


BANK_SCALES = (10.0, 30.0)
BANK_WEIGHTS = (0.5, 1.0, 2.0)
BANK_THRESHOLDS = (0.85, 0.95)


def _bank(**values: float) -> Change:
    """Set several of the bank's values together (they interact: a looser match wants a lighter hand)."""
    def change(c: Dict[str, Any]) -> None:
        for key, value in values.items():
            _set("visual_bank", key, value=value)(c)
    return change


def bank_knobs(base: Dict[str, Any]) -> Dict[str, List[Tuple[str, Change]]]:
    """The visual concept bank's knobs (none when the model has no bank)."""
    bank = base.get("visual_bank")
    if not bank:
        return {}
    grid = [(s, w, t) for s in BANK_SCALES for w in BANK_WEIGHTS for t in BANK_THRESHOLDS]
    return {
        "bank": [("on", _set("visual_bank", value=dict(bank))), ("off", _set("visual_bank", value=None))],
        "bank scale x weight x threshold": [(f"{s} x {w} x {t}", _bank(scale=s, weight=w, threshold=t))
                                            for s, w, t in grid],
        "bank margin": [(str(v), _set("visual_bank", "margin", value=v)) for v in (0.0, 0.02, 0.05)],
        "bank centre": [("on", _set("visual_bank", "center", value=True)),
                        ("off", _set("visual_bank", "center", value=False))],
    }


def with_defaults(values: Dict[str, List[Tuple[str, Change]]], base: Dict[str, Any]) -> Dict[str, Any]:
    """{knob: (labels, changes by label, default label)}: the default is the value that leaves ``base`` as it
    is; a knob whose values all change it gets a first value ``current`` (the base's own)."""
    out = {}
    for knob, options in values.items():
        default = next((label for label, change in options if apply(base, [change]) == base), None)
        if default is None:
            options = [("current", lambda c: None)] + options
            default = "current"
        out[knob] = ([label for label, _ in options], dict(options), default)
    return out


def apply(base: Dict[str, Any], changes: Sequence[Change]) -> Dict[str, Any]:
    config = copy.deepcopy(base)
    for change in changes:
        change(config)
    return config


# ---------------------------------------------------------------- scoring from the cache

def own_sources(ls: LabelledSet) -> List[str]:
    """The repositories a suite set was drawn from (its ``source.json``); none for the dev set."""
    spec = ls.dataset.root / "source.json"
    return [load_spec(spec).repo] if spec.is_file() else []


class Scorer:
    """Accuracy x 100 of a config on every set, from cached encoder outputs; memoised by config."""

    def __init__(self, cache: SuiteCache, sets: Sequence[LabelledSet], names_out: bool = False) -> None:
        """``names_out``: the concept bank also loses every concept named like one of the set's classes."""
        self.cache, self.sets, self.names_out = cache, list(sets), names_out
        self.memo: Dict[str, Dict[str, float]] = {}

    def match(self, config: Dict[str, Any], ls: LabelledSet) -> Optional[ClassMatch]:
        """The set's classes matched to the concept bank at the config's rung, every concept drawn from the set's
        own source collection removed (so a set is scored with what the bank holds of other collections), and
        with ``names_out`` every concept named like one of its classes."""
        if not config.get("visual_bank"):
            return None
        bank = self.cache.model(config["rung"]).bank
        if bank is None:
            return None
        cfg = read_section(VisualBankConfig, config["visual_bank"], "visual_bank")
        drop = bank.named(ls.dataset.classes) if self.names_out else []
        return bank.match(ls.dataset.classes, self.cache.names(ls.dataset), own_sources(ls), cfg, drop)

    def views(self, ls: LabelledSet, rung: Optional[str], flip: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probs (N, D), features (N, F), valid (N,)) of a set at ``rung``, averaged with the mirror if ``flip``."""
        outs = self.cache.images(ls.dataset, rung)
        if not flip:
            return outs.probs, outs.features, outs.valid
        mirror = self.cache.images(ls.dataset, rung, mirror=True)
        logp = 0.5 * (np.log(np.maximum(outs.probs, 1e-30)) + np.log(np.maximum(mirror.probs, 1e-30)))
        probs = np.exp(logp - logp.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return probs.astype(np.float32), 0.5 * (outs.features + mirror.features), outs.valid & mirror.valid

    def score_set(self, config: Dict[str, Any], ls: LabelledSet) -> float:
        ds = ls.dataset
        probs, feats, valid = self.views(ls, config["rung"], config["flip"])
        w = mean_over_templates(self.cache.templates(ds, config["templates"]),
                                self.cache.model(None).manifest.score.similarity)
        truth = np.array([ls.truth.get(i, -1) for i in ds.ids], dtype=np.int64)
        return score_dataset(config, w, probs, feats, truth, ds.class_mask(), valid, self.match(config, ls))

    def __call__(self, config: Dict[str, Any]) -> Dict[str, float]:
        key = json.dumps(config, sort_keys=True, ensure_ascii=False)
        if key not in self.memo:
            self.memo[key] = {ls.dataset.name: self.score_set(config, ls) for ls in self.sets}
        return self.memo[key]


# ---------------------------------------------------------------- report

def knob_tables(knobs: Dict[str, Any], base: Dict[str, Any], scorer: Scorer, sets: Sequence[str]) -> Dict[str, Table]:
    """{knob: {value: {set: accuracy}}}, each knob varied alone around ``base``; logs the means over ``sets``."""
    tables = {}
    for knob, (labels, changes, _) in knobs.items():
        tables[knob] = {label: scorer(apply(base, [changes[label]])) for label in labels}
        logger.info("%s: %s", knob, {k: round(mean_over(v, sets), 2) for k, v in tables[knob].items()})
    return tables


def format_summary(results: Dict[str, Dict[str, Any]], n_sets: int) -> str:
    """Markdown: per knob the default, the in-sample best and the leave-one-set-out mean."""
    lines = [f"| knob | default | default mean | in-sample best | best mean | LOSO mean | LOSO - default | "
             f"LOSO choices (of {n_sets} folds) |", "|---|---|---|---|---|---|---|---|"]
    for knob, r in results.items():
        choices = ", ".join(f"{k} x{v}" for k, v in sorted(r["choices"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {knob} | {r['default']} | {r['default_mean']:.2f} | {r['best']} | {r['best_mean']:.2f} | "
                     f"{r['loso_mean']:.2f} | {r['loso_mean'] - r['default_mean']:+.2f} | {choices} |")
    return "\n".join(lines)


def format_values(knob: str, table: Table, sets: Sequence[str], dev: Sequence[str]) -> str:
    """Markdown: per set (dev rows marked) the accuracy of every value of ``knob``; the suite mean last."""
    labels = list(table)
    lines = [f"| set ({knob}) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in list(dev) + list(sets):
        tag = " (dev)" if name in dev else ""
        lines.append(f"| {name}{tag} | " + " | ".join(f"{table[l][name]:.2f}" for l in labels) + " |")
    lines.append("| **mean over suite sets** | " + " | ".join(f"**{mean_over(table[l], sets):.2f}**"
                                                            for l in labels) + " |")
    return "\n".join(lines)


def format_per_set(knob: str, r: Dict[str, Any], dev_scores: Dict[str, float]) -> str:
    """Markdown: per set the default's score, the in-sample best's and the leave-one-set-out choice's."""
    lines = [f"| set ({knob}) | default | in-sample best | LOSO choice | LOSO |", "|---|---|---|---|---|"]
    for name, row in r["per_set"].items():
        choice = row["choice"] if isinstance(row["choice"], str) else describe(row["choice"], r["default"])
        lines.append(f"| {name} | {row['default']:.2f} | {row['best']:.2f} | {choice} | {row['loso']:.2f} |")
    for name, (default, best) in dev_scores.items():
        lines.append(f"| {name} (dev, not in any choice) | {default:.2f} | {best:.2f} | in-sample best | "
                     f"{best:.2f} |")
    return "\n".join(lines)


def describe(choice: Choice, default: Choice) -> str:
    """The knobs of a joint choice that differ from the default, or ``default``."""
    diff = [f"{k}={v}" for k, v in choice.items() if default.get(k) != v]
    return ", ".join(diff) or "default"


def tune(sets: Sequence[LabelledSet], cache: SuiteCache, manifest: Dict[str, Any], rung: Optional[str],
         wanted: Optional[Sequence[str]], joint: bool, names_out: bool = False) -> Dict[str, Any]:
    """Every knob's table and leave-one-set-out result (and the joint one); the dev sets scored alongside."""
    base = base_config(manifest, rung)
    knobs = with_defaults(knob_values(manifest, base), base)
    if wanted:
        unknown = sorted(set(wanted) - set(knobs))
        if unknown:
            raise ValueError(f"unknown knobs {unknown} (known: {list(knobs)})")
        knobs = {k: v for k, v in knobs.items() if k in wanted}
    scorer = Scorer(cache, sets, names_out)
    suite_sets = [ls.dataset.name for ls in sets if not ls.dev]
    dev_sets = [ls.dataset.name for ls in sets if ls.dev]
    if len(suite_sets) < 2:
        raise ValueError(f"leave-one-set-out needs at least 2 suite sets, found {len(suite_sets)}")
    tables = knob_tables(knobs, base, scorer, suite_sets)
    results = {k: leave_one_set_out(tables[k], suite_sets, knobs[k][2]) for k in knobs}
    for k, r in results.items():
        r["dev"] = {d: (tables[k][r["default"]][d], tables[k][r["best"]][d]) for d in dev_sets}
    out: Dict[str, Any] = {"base": base, "suite_sets": suite_sets, "dev_sets": dev_sets, "tables": tables,
                           "knobs": results}
    if joint:
        def score(choice: Choice) -> Dict[str, float]:
            return scorer(apply(base, [knobs[k][1][v] for k, v in choice.items()]))

        start = {k: v[2] for k, v in knobs.items()}
        out["joint"] = joint_leave_one_set_out([(k, v[0]) for k, v in knobs.items()], start, score, suite_sets)
        out["joint"]["dev"] = {d: (score(start)[d], score(out["joint"]["best"])[d]) for d in dev_sets}
    return out


def report(out: Dict[str, Any], show_values: Sequence[str], per_set: bool = False) -> str:
    """The markdown report: the summary, the value tables of ``show_values``, each knob's per-set result
    (``per_set``), the joint result per set."""
    suite_sets, dev = out["suite_sets"], out["dev_sets"]
    parts = [format_summary(out["knobs"], len(suite_sets))]
    for knob in show_values:
        if knob in out["tables"]:
            parts.append(format_values(knob, out["tables"][knob], suite_sets, dev))
    if per_set:
        parts += [format_per_set(knob, r, r["dev"]) for knob, r in out["knobs"].items()]
    if "joint" in out:
        j = out["joint"]
        parts.append(f"joint (coordinate ascent over all knobs from the default): default mean "
                     f"{j['default_mean']:.2f}, in-sample best {j['best_mean']:.2f} "
                     f"({describe(j['best'], j['default'])}), LOSO mean {j['loso_mean']:.2f} "
                     f"({j['loso_mean'] - j['default_mean']:+.2f})")
        parts.append(format_per_set("joint", j, j["dev"]))
    return "\n\n".join(parts) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.tune_suite", __doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument("--suite", type=Path, default=SUITE_DIR, help="the suite (default: %(default)s)")
    parser.add_argument("--dev", type=Path, default=DEVSETS_DIR,
                        help="the dev set, scored alongside (default: %(default)s)")
    parser.add_argument("--no-dev", action="store_true", help="leave the dev set out")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="encoder outputs (default: %(default)s)")
    parser.add_argument("--rung", default=None,
                        help="the rung the other knobs are varied at (default: build_default.MEASURED_RUNG, the "
                             "ladder's choice for the judge's images on one core)")
    parser.add_argument("--knobs", default=None, help="comma-separated knobs to sweep (default: all)")
    parser.add_argument("--no-joint", action="store_true", help="skip the joint coordinate-ascent selection")
    parser.add_argument("--show", default="rung", help="comma-separated knobs whose per-set value tables to print")
    parser.add_argument("--per-set", action="store_true", help="print every knob's per-set result too")
    parser.add_argument("--fill-only", action="store_true",
                        help="only encode what the cache lacks (every rung, and mirrored if flip is swept)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: 1)")
    parser.add_argument("--json", type=Path, default=None, help="write every table and result here")
    parser.add_argument("--bank-names-out", action="store_true",
                        help="score each set with the visual concept bank's concepts named like its classes removed "
                             "too (its own source is always removed): the bank must not make pure zero-shot worse")
    args = parse_args(parser, argv)
    from .build_default import MEASURED_RUNG

    try:
        sets = load_suite(args.suite, None if args.no_dev else args.dev)
        manifest = load_manifest(args.model).to_dict()  # knob grids are built as dicts
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    rung = args.rung or (MEASURED_RUNG if MEASURED_RUNG in manifest.get("ladder", []) else None)
    cache = SuiteCache(args.cache, args.model, args.threads)
    wanted = args.knobs.split(",") if args.knobs else None
    if args.fill_only:
        rungs = (manifest.get("ladder") or [rung]) if wanted is None or "rung" in wanted else [rung]
        fill(cache, [ls.dataset for ls in sets], rungs, wanted is None or "flip" in wanted)
        return 0
    try:
        out = tune(sets, cache, manifest, rung, wanted, not args.no_joint, args.bank_names_out)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(report(out, [k for k in args.show.split(",") if k], args.per_set))
    if args.json is not None:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
