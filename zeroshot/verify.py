"""Is a free-text claim about an image true? ("На фото корова", "There is no cow here").

Usage::

    python -m zeroshot.verify IMAGE "текст" ["текст" ...]     # one JSON line per claim
    python -m zeroshot.verify calibrate DATA [--out FILE]       # threshold from labelled class folders

Each claim is parsed without a model (:func:`parse_claim`): negation words
(нет, не, нету, ни, без, отсутствует, no, not, n't, none, absent, without)
set ``negated`` (an odd count negates), frame words (на фото, здесь есть, there
is, in the picture, ...) are dropped, and the longest run of the remaining
words is the object phrase, inflected as written (the text encoder sees it
through the manifest's templates). The object's presence ``score`` is its
probability in a softmax over the object and ALTERNATIVES (everyday concepts;
alternatives sharing a word stem with the object, or whose text vector is
nearly the object's, are left out), from the manifest's score, so any model
folder works. ``present`` is ``score >= threshold``; the claim holds
(``true``) when ``present`` differs from ``negated``.

The threshold comes from ``calibrate``: for every image of labelled class folders
(``DATA/<class name>/*``), its own class name is a present object and the other
class names absent ones; the threshold maximising balanced accuracy is written
to ``--out`` (default ``<model>/verify.json``), where ``verify`` reads it
(``--calibration FILE`` to use another; without one the threshold is 0.5 and a
warning says so).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .limits import MODEL_DIR
from .command import make_parser, parse_args, positive_int
from .embed import embed_images, embed_texts, similarity
from .encoders import Model
from .embed import read_folders
from .outputs import write_json_atomic

logger = logging.getLogger(__name__)

CALIBRATION_NAME = "verify.json"
DEFAULT_THRESHOLD = 0.5
SYNONYM_COSINE = 0.9

NEGATIONS = frozenset("нет не нету ни без отсутствует отсутствуют отсутствие отсутствовать no not none absent "
                      "without nothing nobody".split())
FRAME_WORDS = frozenset((
    "на в во фото фотографии фотография фотке фотка снимке снимок снимку картинке картинка изображении изображение "
    "изображен изображена изображено изображены изображён кадре кадр есть имеется имеются здесь тут там это этом "
    "этой эта этот видно виден видна видны вижу можно увидеть показан показана показано показаны присутствует "
    "присутствуют находится находятся ли действительно правда точно перед нами мы вы "
    "there is are was were a an the in on at this that these those picture pictures photo photograph image "
    "shot here shows show showing shown contains contain containing of it its i see can visible present "
    "depicted depicts does do any some has have we you from"
).split())
_WORD = re.compile(r"[\w-]+")
_QUOTED = re.compile(r"[«\"“](.+?)[»\"”]")

ALTERNATIVES = tuple((
    "человек мужчина женщина ребенок лицо рука собака кошка лошадь корова овца свинья коза птица курица утка "
    "попугай сова рыба акула змея ящерица черепаха лягушка насекомое паук пчела бабочка муравей жук мышь кролик "
    "белка медведь волк лиса тигр лев слон жираф зебра обезьяна верблюд олень дельфин кит краб крокодил "
    "автомобиль грузовик автобус мотоцикл велосипед поезд самолет вертолет корабль лодка трактор ракета "
    "дом здание мост башня церковь дорога улица гора лес дерево цветок трава море река пляж небо облако снег "
    "стол стул диван кровать шкаф лампа часы телефон компьютер ноутбук клавиатура телевизор фотоаппарат книга "
    "ручка ножницы нож вилка ложка тарелка чашка кружка бутылка стакан хлеб яблоко банан апельсин пицца торт "
    "одежда платье обувь шляпа сумка рюкзак очки зонт мяч игрушка гитара пианино скрипка барабан молоток ключ "
    "пистолет меч флаг картина статуя знак окно дверь ваза растение подсолнух гриб камень огонь вода"
).split())


@dataclass
class Claim:
    """A parsed claim: the text, its object phrase ("" when none is left), and whether it is negated."""

    text: str
    object: str
    negated: bool


def claim_words(text: str) -> List[str]:
    """Lower-case words of ``text`` (ё -> е; "n't" -> " not"; "there's" -> "there is")."""
    text = unicodedata.normalize("NFC", text).lower().replace("ё", "е").replace("’", "'")
    text = text.replace("n't", " not").replace("'s", " is")
    return _WORD.findall(text)


def parse_claim(text: str) -> Claim:
    """Find the object phrase and the negation of a Russian or English claim.

    A quoted phrase («...» or "...") is the object when present; otherwise the
    longest run of words that are neither negations nor frame words (first on ties).
    """
    words = claim_words(text)
    negated = sum(w in NEGATIONS for w in words) % 2 == 1
    quoted = _QUOTED.search(text)
    if quoted:
        return Claim(text, " ".join(claim_words(quoted.group(1))), negated)
    best: List[str] = []
    run: List[str] = []
    for word in words + [""]:
        if word and word not in NEGATIONS and word not in FRAME_WORDS:
            run.append(word)
            continue
        if len(run) > len(best):
            best = run
        run = []
    return Claim(text, " ".join(best), negated)


def word_stem(word: str) -> str:
    """A crude stem for matching inflected forms: drop up to two final letters, keep at least three."""
    return word[:max(3, len(word) - 2)]


def alternatives_mask(objects: Sequence[str], alternatives: Sequence[str], object_vecs: np.ndarray,
                      alt_vecs: np.ndarray) -> np.ndarray:
    """bool (M, A): which alternatives compete with each object.

    Left out: alternatives sharing a word stem with the object, and those whose
    text vector has cosine >= SYNONYM_COSINE with the object's (a synonym).
    """
    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    cosine = unit(object_vecs) @ unit(alt_vecs).T
    keep = cosine < SYNONYM_COSINE
    alt_stems = [{word_stem(w) for w in claim_words(a)} for a in alternatives]
    for m, obj in enumerate(objects):
        stems = {word_stem(w) for w in claim_words(obj)}
        for a, other in enumerate(alt_stems):
            if stems & other:
                keep[m, a] = False
    return keep


def presence_scores(obj_logits: np.ndarray, alt_logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """float (N, M) object logits, (N, A) alternative logits, bool (M, A) -> float (N, M) probabilities.

    P(object m | image n) in a softmax over object m and the alternatives ``keep[m]`` allows.
    """
    top = np.maximum(obj_logits, np.max(alt_logits, axis=1, keepdims=True))  # (N, M)
    alt_exp = np.exp(alt_logits[:, None, :] - top[:, :, None]) * keep[None, :, :]  # (N, M, A)
    own = np.exp(obj_logits - top)
    return own / (own + alt_exp.sum(axis=2))


class Verifier:
    """Scores object phrases against one model's alternatives; text vectors cached by phrase."""

    def __init__(self, model: Model, alternatives: Sequence[str] = ALTERNATIVES) -> None:
        self.model = model
        self.alternatives = list(alternatives)
        self.alt_vecs, _, _ = embed_texts(model, self.alternatives)
        self._cache: Dict[str, np.ndarray] = {}

    def object_vectors(self, objects: Sequence[str]) -> np.ndarray:
        """float32 (M, D) text vectors of non-empty object phrases (encoded once each)."""
        todo = sorted({o for o in objects if o not in self._cache})
        if todo:
            vecs, _, _ = embed_texts(self.model, todo)
            self._cache.update(zip(todo, vecs))
        return np.stack([self._cache[o] for o in objects])

    def scores(self, image_vecs: np.ndarray, objects: Sequence[str]) -> np.ndarray:
        """float32 (N, D) image vectors x M object phrases -> (N, M) presence probabilities."""
        obj_vecs = self.object_vectors(objects)
        keep = alternatives_mask(objects, self.alternatives, obj_vecs, self.alt_vecs)
        return presence_scores(similarity(self.model, image_vecs, obj_vecs),
                               similarity(self.model, image_vecs, self.alt_vecs), keep)


def best_threshold(positives: np.ndarray, negatives: np.ndarray) -> Tuple[float, float]:
    """(threshold, balanced accuracy) maximising the mean of the true-positive and true-negative rates.

    The threshold is the midpoint between two neighbouring observed scores.
    """
    values = np.unique(np.concatenate([positives, negatives]))
    cuts = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    pos = np.sort(positives)
    neg = np.sort(negatives)
    tpr = 1.0 - np.searchsorted(pos, cuts, side="left") / max(len(pos), 1)
    tnr = np.searchsorted(neg, cuts, side="left") / max(len(neg), 1)
    balanced = (tpr + tnr) / 2
    best = int(np.argmax(balanced))
    return float(cuts[best]), float(balanced[best])


def calibrate(verifier: Verifier, image_vecs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> Dict[str, Any]:
    """Threshold from labelled images: (N, D) vectors, (N,) class index; every class name is scored on every image."""
    scores = verifier.scores(image_vecs, list(classes))  # (N, C)
    own = np.zeros_like(scores, dtype=bool)
    own[np.arange(len(labels)), labels] = True
    threshold, balanced = best_threshold(scores[own], scores[~own])
    return {"threshold": threshold, "balanced_accuracy": round(balanced, 4), "images": int(len(labels)),
            "classes": list(classes), "positives": int(own.sum()), "negatives": int((~own).sum()),
            "alternatives": len(verifier.alternatives)}


def verdict(claim: Claim, score: Optional[float], threshold: float) -> Dict[str, Any]:
    """The JSON record of one claim (score None: no object phrase or no image)."""
    present = None if score is None else bool(score >= threshold)
    return {"claim": claim.text, "object": claim.object, "negated": claim.negated, "present": present,
            "score": None if score is None else round(float(score), 6),
            "true": None if present is None else present != claim.negated}


def read_threshold(path: Path, explicit: bool, model_name: str = "") -> float:
    """The calibrated threshold in ``path``; DEFAULT_THRESHOLD with a warning when there is none."""
    if not path.is_file():
        if explicit:
            raise FileNotFoundError(f"{path}: calibration file not found (write one with 'verify calibrate')")
        logger.warning("%s: no calibration; using threshold %.2f (run 'python -m zeroshot.verify calibrate DATA')",
                       path, DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(saved["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected a JSON object with a numeric 'threshold': {exc}") from exc
    if model_name and saved.get("model") not in (None, model_name):
        logger.warning("%s was calibrated with model %r, not %r; recalibrate", path, saved.get("model"), model_name)
    return threshold


def cmd_verify(args: Any, model: Model) -> int:
    """One JSON line per claim; an unreadable image or an empty object gives present/score/true null."""
    calibration = args.calibration or (args.model / CALIBRATION_NAME)
    threshold = read_threshold(calibration, args.calibration is not None, model.manifest.name)
    claims = [parse_claim(t) for t in args.claims]
    emb = embed_images(model, [args.image])
    objects = [c.object for c in claims if c.object]
    for c in claims:
        if not c.object:
            logger.warning("claim %r: no object phrase found; skipped", c.text)
    scores: Dict[str, float] = {}
    if objects and emb.valid.all():
        row = Verifier(model).scores(emb.vectors, objects)[0]
        scores = dict(zip(objects, row.tolist()))
    for claim in claims:
        sys.stdout.write(json.dumps(verdict(claim, scores.get(claim.object), threshold), ensure_ascii=False) + "\n")
    return 0 if scores else 1


def cmd_calibrate(args: Any, model: Model) -> int:
    """Write the threshold calibrated on class folders to --out (default <model>/verify.json)."""
    records = read_folders(args.data) if args.data.is_dir() else None
    if records is None or len(records.classes) < 2:
        raise ValueError(f"{args.data}: expected a folder with at least 2 class folders")
    emb = embed_images(model, records.images)
    labels = np.asarray(records.labels)[emb.valid]
    result = calibrate(Verifier(model), emb.vectors, labels, records.classes)
    result.update(model=model.manifest.name, skipped=len(emb.problems))
    out = args.out or (args.model / CALIBRATION_NAME)
    write_json_atomic(out, result)
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    logger.info("wrote %s: threshold %.4f (balanced accuracy %.3f on %d images)", out, result["threshold"],
                result["balanced_accuracy"], result["images"])
    return 0


def build_parser(calibrating: bool) -> Any:
    parser = make_parser("python -m zeroshot.verify", __doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="at most this many threads (default, and upper bound: the CPUs this process may use)")
    if calibrating:
        parser.add_argument("command", choices=["calibrate"])
        parser.add_argument("data", type=Path, help="labelled class folders: DATA/<class name>/<images>")
        parser.add_argument("--out", type=Path, default=None, help="where to write (default: <model>/verify.json)")
    else:
        parser.epilog = ("python -m zeroshot.verify calibrate DATA [--out FILE] writes the threshold from labelled "
                         "class folders (see 'calibrate --help').")
        parser.add_argument("image", type=Path)
        parser.add_argument("claims", nargs="+", help="claims in Russian or English")
        parser.add_argument("--calibration", type=Path, default=None,
                            help="threshold file from 'calibrate' (default: <model>/verify.json)")
    return parser


_VALUED_OPTIONS = ("--model", "--threads", "--log-level", "--calibration", "--out")


def first_positional(argv: Sequence[str]) -> Optional[str]:
    """The first argument that is neither an option nor an option's value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    calibrating = first_positional(argv) == "calibrate"
    args = parse_args(build_parser(calibrating), argv)
    try:
        model = Model(args.model, threads=args.threads)
        return cmd_calibrate(args, model) if calibrating else cmd_verify(args, model)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
