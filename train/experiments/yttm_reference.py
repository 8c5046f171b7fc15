"""Reference token ids from youtokentome itself, for ruCLIP's tokenizer conversion (train/yttm_tokenizer.py).

youtokentome has wheels for CPython <= 3.8 only, so CI (Python 3.11) cannot run
it; this script runs on 3.8 and writes what the tests compare with. It

1. trains a youtokentome BPE model on Russian+English text built from
   ``train/vocab/*.tsv`` (plus ``--corpus`` files) with ruCLIP's special ids
   (pad 0, unk 1, bos 2, eos 3), written to ``OUT/bpe.model``;
2. encodes the check strings (class names and English names from the vocab
   files, ruCLIP's templates applied to them, the dev set's class names when
   present, and edge cases: case, punctuation, digits, tabs, no-break spaces,
   U+2581, unknown scripts, emoji, an over-long text) lower-cased as ruCLIP's
   processor does, and writes ``OUT/reference.json`` {strings, ids};
3. when ``tokenizers`` is importable (install vendor/'s cp38 wheel), converts
   the model with train.yttm_tokenizer and logs how many id lists are identical.

youtokentome's training is not bit-reproducible (ties between equally frequent
pairs), so a rerun may write a slightly different model; the reference ids are
always those of the model written beside them.

Run from the repository root in a throwaway CPython 3.8 venv::

    /root/.pyenv/versions/3.8.18/bin/python -m venv /tmp/yttm38
    /tmp/yttm38/bin/pip install youtokentome==1.0.6 vendor/tokenizers-0.20.3-cp38-*.whl
    /tmp/yttm38/bin/python -m train.experiments.yttm_reference --out tests/fixtures/yttm
"""

from __future__ import annotations

import json
import logging
import random
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from train.templates import load_templates
from zeroshot.command import make_parser, parse_args
from zeroshot.limits import DEVSETS_DIR

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
VOCAB_DIR = REPO / "train" / "vocab"
DEV_CLASSES = DEVSETS_DIR / "caltech101" / "classes.json"
SPECIALS = dict(pad_id=0, unk_id=1, bos_id=2, eos_id=3)  # ruCLIP's (RuCLIPProcessor), youtokentome.BPE.train's names
EDGE_CASES = [
    "", "   ", "Кот", "  кот  ", "КОТ И ПЁС", "кот\tи\nпёс", "кот,пёс!", "кот - пёс", "«кот»", "C-3PO",
    "12 обезьян", "кот 🐱", "猫 и собака", "naïve café", "кот\u00a0пёс", "\u2581кот", "под\u2581водой",
    "ёжик Ёжик ежик", "фото: {}", "x" * 40, "кот пёс " * 60, "a photo of a big red fire truck.",
]


def vocab_phrases() -> List[str]:
    """Russian synonyms and English names of train/vocab/*.tsv, in file order, without duplicates."""
    phrases: List[str] = []
    for path in sorted(VOCAB_DIR.glob("*.tsv")):
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t")
        cols = [header.index(c) for c in ("russian", "english") if c in header]
        for line in lines[1:]:
            fields = line.split("\t")
            for col in cols:
                phrases.extend(p.strip() for p in fields[col].split(";") if p.strip())
    return list(dict.fromkeys(phrases))


def check_strings(phrases: Sequence[str], every: int) -> List[str]:
    """Every ``every``-th phrase, ruCLIP's templates on a sample, the dev classes, and the edge cases."""
    rnd = random.Random(0)
    picked = list(phrases[::every])
    templates = load_templates()
    picked += [t.replace("{}", p) for t in templates for p in rnd.sample(list(phrases), 20)]
    if DEV_CLASSES.is_file():
        dev = json.loads(DEV_CLASSES.read_text(encoding="utf-8"))
        picked += list(dev) + [t.replace("{}", c) for t in templates for c in dev]
    return list(dict.fromkeys(picked + EDGE_CASES))


def train_model(corpus: Sequence[str], model_path: Path, vocab_size: int) -> None:
    """Train a youtokentome BPE model with ruCLIP's special ids on ``corpus`` (one text per line)."""
    import youtokentome as yttm

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "corpus.txt"
        data.write_text("\n".join(corpus) + "\n", encoding="utf-8")
        yttm.BPE.train(data=str(data), model=str(model_path), vocab_size=vocab_size, n_threads=1, **SPECIALS)


def reference_ids(model_path: Path, strings: Sequence[str]) -> List[List[int]]:
    """youtokentome's ids of each string lower-cased (ruCLIP's processor lower-cases), no BOS/EOS."""
    import youtokentome as yttm

    bpe = yttm.BPE(str(model_path))
    return bpe.encode([s.lower() for s in strings], output_type=yttm.OutputType.ID, dropout_prob=0.0)


def compare_with_conversion(model_path: Path, strings: Sequence[str], ids: Sequence[List[int]]) -> int:
    """Number of strings whose converted-tokenizer ids equal youtokentome's (logs the first mismatches)."""
    from train.yttm_tokenizer import read_yttm, to_hf_tokenizer

    tok = to_hf_tokenizer(read_yttm(model_path), model_path)
    same = 0
    for text, want in zip(strings, ids):
        got = tok.encode(text.lower()).ids
        if got == list(want):
            same += 1
        elif same < 5:
            logger.warning("differs: %r: youtokentome %s, converted %s", text, want, got)
    return same


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.yttm_reference", __doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bpe.model and reference.json")
    parser.add_argument("--vocab-size", type=int, default=3000, help="BPE vocabulary size (default: %(default)s)")
    parser.add_argument("--every", type=int, default=6,
                        help="check every N-th vocabulary phrase (default: %(default)s)")
    parser.add_argument("--corpus", type=Path, action="append", default=[],
                        help="extra training text, one line per text (repeatable)")
    parser.add_argument("--check", type=Path, action="append", default=[],
                        help="extra check strings, one per line (repeatable)")
    args = parse_args(parser, argv)
    phrases = vocab_phrases()
    corpus = phrases + [t.replace("{}", p) for t in load_templates() for p in phrases[::3]]
    for path in args.corpus:
        corpus += path.read_text(encoding="utf-8").splitlines()
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "bpe.model"
    train_model(corpus, model_path, args.vocab_size)
    strings = check_strings(phrases, args.every)
    for path in args.check:
        strings += path.read_text(encoding="utf-8").splitlines()
    ids = reference_ids(model_path, strings)
    import youtokentome

    record = {"description": "youtokentome's ids of each string lower-cased (no BOS/EOS), written by "
                             "train/experiments/yttm_reference.py",
              "youtokentome": getattr(youtokentome, "__version__", "1.0.6"), "python": sys.version.split()[0],
              "vocab_size": args.vocab_size, "special_ids": SPECIALS, "strings": strings, "ids": ids}
    (args.out / "reference.json").write_text(json.dumps(record, ensure_ascii=False, indent=0) + "\n",
                                             encoding="utf-8")
    logger.info("wrote %s and reference.json: %d strings, %d training lines", model_path, len(strings), len(corpus))
    try:
        same = compare_with_conversion(model_path, strings, ids)
    except ImportError:
        logger.info("tokenizers is not installed here: conversion not compared")
        return 0
    sys.stdout.write(f"{same}/{len(strings)} strings: converted tokenizer ids identical to youtokentome's\n")
    return 0 if same == len(strings) else 1


if __name__ == "__main__":
    sys.exit(main())
