"""Claim verification on the dev set: accuracy and confusion table on generated true/false claims.

Claims are generated, not written by people: per dev image, four claims from
the templates below, each template drawn at random (seeded): its own class in
a positive template (true), another class in a positive template (false), its
own class in a negated template (false) and another class in a negated
template (true). Class names are inflected with pymorphy3 (genitive after
"нет", plural agreement of "отсутствует"); the English frames carry the
Russian class name (the dev set has Russian names only).

The threshold is calibrated with :func:`zeroshot.verify.calibrate` on one half
of the images (every class split in two) and the claims about the other half
are judged with it, then the halves swap (2-fold), so no claim is judged with a
threshold fitted on its own image. ``--ablate-alternatives`` also runs with every
alternative concept sharing a word stem with a dev class name removed; ``--english``
also judges English claims with English class names (ENGLISH_NAMES, our translations),
the threshold still calibrated on the Russian class names.

Usage: ``python -m train.experiments.verify_dev [--seed 0]``; prints JSON and Markdown tables.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.command import make_parser, parse_args
from zeroshot.embed import embed_images
from zeroshot.encoders import Model
from zeroshot.verify import ALTERNATIVES, Verifier, word_stem, claim_words, calibrate, parse_claim
from zeroshot.limits import MODEL_DIR

from .devset import labelled

logger = logging.getLogger(__name__)

POSITIVE = ("На фото {nom}", "На снимке есть {nom}", "Здесь изображено: {nom}", "Это {nom}",
            "На картинке можно увидеть {acc}", "There is a {nom} in the picture", "The photo shows {nom}")
NEGATED = ("На фото нет {gen}", "Здесь нет {gen}", "{nom} {absent}", "Это не {nom}", "На снимке не видно {gen}",
           "There is no {nom} here", "{nom} is absent", "No {nom} in this image")
# --english: English claims with English names (our translations of the dev set's 19 class names,
# used only here; the calibration stays on the Russian class folders)
ENGLISH_NAMES = {"инь и янь": ("a yin and yang", "yin and yang"), "лампа": ("a lamp", "lamp"),
                 "вертолет": ("a helicopter", "helicopter"), "электрогитара": ("an electric guitar", "electric guitar"),
                 "фотоаппарат": ("a camera", "camera"), "зонтик": ("an umbrella", "umbrella"),
                 "ножницы": ("scissors", "scissors"), "револьвер": ("a revolver", "revolver"),
                 "часы": ("a watch", "watch"), "ролики": ("inline skates", "inline skates"),
                 "гаечный ключ": ("a wrench", "wrench"), "кружка": ("a mug", "mug"),
                 "подсолнух": ("a sunflower", "sunflower"), "бабочка": ("a butterfly", "butterfly"),
                 "мотоцикл": ("a motorcycle", "motorcycle"), "самолет": ("an airplane", "airplane"),
                 "слон": ("an elephant", "elephant"), "краб": ("a crab", "crab"),
                 "крокодил": ("a crocodile", "crocodile")}
POSITIVE_EN = ("There is {a} in the picture", "The photo shows {a}", "I can see {a} here", "{a}", "This is {a}")
NEGATED_EN = ("There is no {bare} here", "No {bare} in this image", "This is not {a}", "I don't see {a}",
              "{bare} is absent from the photo")


def inflect(name: str, case: str, morph: Any) -> str:
    """``name`` with every word put in grammatical ``case`` (words pymorphy3 cannot inflect stay)."""
    out = []
    for word in name.split():
        parse = morph.parse(word)[0]
        form = parse.inflect({case}) if "NOUN" in parse.tag or "ADJF" in parse.tag else None
        out.append(form.word if form is not None else word)
    return " ".join(out)


def forms(name: str, morph: Any) -> Dict[str, str]:
    """Template slots for one class name: nom, gen, acc, absent (agreeing in number)."""
    plural = any("plur" in morph.parse(w)[0].tag for w in name.split() if "NOUN" in morph.parse(w)[0].tag)
    return {"nom": name, "gen": inflect(name, "gent", morph), "acc": inflect(name, "accs", morph),
            "absent": "отсутствуют" if plural else "отсутствует"}


def make_claims(labels: np.ndarray, classes: Sequence[str], seed: int,
                english: bool = False) -> List[Tuple[int, str, str, bool, bool, str]]:
    """(image row, claim, expected object phrase, negated, truth, template) — four claims per image."""
    if english:
        slots = [{"a": ENGLISH_NAMES[c][0], "bare": ENGLISH_NAMES[c][1]} for c in classes]
        positive, negative = POSITIVE_EN, NEGATED_EN
    else:
        import pymorphy3

        morph = pymorphy3.MorphAnalyzer()
        slots = [forms(c, morph) for c in classes]
        positive, negative = POSITIVE, NEGATED
    rng = np.random.default_rng(seed)
    claims = []
    for row, label in enumerate(labels):
        other = int(rng.choice([c for c in range(len(classes)) if c != label]))
        for cls, negated in ((int(label), False), (other, False), (int(label), True), (other, True)):
            template = str(rng.choice(negative if negated else positive))
            slot = next(k for k in ("gen", "acc", "nom", "bare", "a") if "{" + k + "}" in template)
            text = template.format(**slots[cls])
            text = text[0].upper() + text[1:]
            expected = slots[cls]["bare"] if english else slots[cls][slot]
            claims.append((row, text, expected, negated, (cls == label) != negated, template))
    return claims


def halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """bool (N,): True for a random half of every class."""
    rng = np.random.default_rng(seed)
    first = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        first[idx[:len(idx) // 2]] = True
    return first


def evaluate(model: Model, vectors: np.ndarray, labels: np.ndarray, classes: Sequence[str], seed: int,
             alternatives: Sequence[str], english: bool = False) -> Dict[str, Any]:
    """Two-fold calibration + judging; accuracy, confusion table, per-template accuracy, parse accuracy."""
    verifier = Verifier(model, alternatives)
    claims = make_claims(labels, classes, seed, english)
    parsed = [parse_claim(c[1]) for c in claims]
    fold = halves(labels, seed)
    predicted = np.zeros(len(claims), dtype=bool)
    thresholds = []
    for calib in (fold, ~fold):
        cal = calibrate(verifier, vectors[calib], labels[calib], classes)
        thresholds.append(cal)
        todo = [i for i, (row, *_rest) in enumerate(claims) if not calib[row] and parsed[i].object]
        for i in todo:
            row = claims[i][0]
            score = float(verifier.scores(vectors[row:row + 1], [parsed[i].object])[0, 0])
            predicted[i] = (score >= cal["threshold"]) != parsed[i].negated
    truth = np.array([c[4] for c in claims])
    negated = np.array([c[3] for c in claims])
    templates: Dict[str, List[bool]] = {}
    for claim, ok in zip(claims, predicted == truth):
        templates.setdefault(claim[5], []).append(bool(ok))
    parse_ok = np.mean([p.object == " ".join(claim_words(c[2])) and p.negated == c[3] for p, c in zip(parsed, claims)])
    return {
        "claims": len(claims), "accuracy": round(100 * float(np.mean(predicted == truth)), 2),
        "accuracy_positive_claims": round(100 * float(np.mean((predicted == truth)[~negated])), 2),
        "accuracy_negated_claims": round(100 * float(np.mean((predicted == truth)[negated])), 2),
        "confusion": {"true claim judged true": int(np.sum(truth & predicted)),
                      "true claim judged false": int(np.sum(truth & ~predicted)),
                      "false claim judged true": int(np.sum(~truth & predicted)),
                      "false claim judged false": int(np.sum(~truth & ~predicted))},
        "parse_accuracy": round(100 * float(parse_ok), 2),
        "thresholds": [round(t["threshold"], 4) for t in thresholds],
        "calibration_balanced_accuracy": [t["balanced_accuracy"] for t in thresholds],
        "alternatives": len(alternatives),
        "per_template": {t: round(100 * float(np.mean(v)), 1) for t, v in sorted(templates.items())},
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.verify_dev", __doc__.split("\n")[0])
    parser.add_argument("--model", default=str(MODEL_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablate-alternatives", action="store_true")
    parser.add_argument("--english", action="store_true", help="also English claims with English class names")
    args = parse_args(parser, argv)
    model = Model(args.model)
    classes, paths, label_list = labelled()
    labels = np.asarray(label_list)
    emb = embed_images(model, paths)
    report = {"default": evaluate(model, emb.vectors, labels, classes, args.seed, ALTERNATIVES)}
    if args.ablate_alternatives:
        dev_stems = {word_stem(w) for c in classes for w in claim_words(c)}
        kept = [a for a in ALTERNATIVES if not {word_stem(w) for w in claim_words(a)} & dev_stems]
        report["without dev-class alternatives"] = evaluate(model, emb.vectors, labels, classes, args.seed, kept)
    if args.english:
        report["english claims"] = evaluate(model, emb.vectors, labels, classes, args.seed, ALTERNATIVES, english=True)
    sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
