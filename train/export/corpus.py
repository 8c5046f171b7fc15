"""Offline Russian+English text: the export's check strings and the corpus a trimmed vocabulary is chosen from.

Sources, all in the repository: the class names of train/vocab/*.tsv (ImageNet
classes, groups and proxies, Russian and English), every inflected form of
their Russian words (pymorphy3, when installed), and the prompt templates.
"""

from __future__ import annotations

import csv
import functools
import logging
from pathlib import Path
from typing import List, Sequence

from ..templates import load_templates

logger = logging.getLogger(__name__)

VOCAB_DIR = Path(__file__).resolve().parent.parent / "vocab"
# ruCLIP's Russian prompt templates (the default prompt ensemble of train.export), shipped as data
DEFAULT_TEMPLATES = load_templates()  # train/vocab/templates_ru.json
ENGLISH_TEMPLATES = ["{}", "a photo of a {}.", "a picture of a {}", "an image of the {}"]
MIN_CHECK_STRINGS = 300


@functools.lru_cache(maxsize=1)
def _names() -> tuple:
    """(russian, english) name lists from train/vocab/*.tsv, in file order, de-duplicated."""
    russian: List[str] = []
    english: List[str] = []
    for path in sorted(VOCAB_DIR.glob("*.tsv")):
        with open(path, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                russian += [p.strip() for p in (row.get("russian") or "").split(";") if p.strip()]
                english += [p.strip() for p in (row.get("english") or "").replace("(", ",").replace(")", ",")
                            .split(",") if p.strip()]
    return tuple(dict.fromkeys(russian)), tuple(dict.fromkeys(english))


def vocabulary_names() -> List[str]:
    """Every Russian and English name of train/vocab (about 6,000 strings)."""
    russian, english = _names()
    return list(russian) + list(english)


def check_strings(templates: Sequence[str], count: int = 400) -> List[str]:
    """``count`` (>= MIN_CHECK_STRINGS) Russian and English prompts: names spread over the vocabulary, templated.

    Half Russian (with the model's templates), half English, deterministic.
    """
    russian, english = _names()
    half = max(count // 2, MIN_CHECK_STRINGS // 2)
    ru_step = max(1, len(russian) // half)
    en_step = max(1, len(english) // half)
    ru = [templates[i % len(templates)].replace("{}", n) for i, n in enumerate(russian[::ru_step][:half])]
    en = [ENGLISH_TEMPLATES[i % len(ENGLISH_TEMPLATES)].replace("{}", n) for i, n in enumerate(english[::en_step][:half])]
    return ru + en


def inflections(words: Sequence[str]) -> List[str]:
    """All pymorphy3 word forms of the Russian words in ``words`` (empty if pymorphy3 is not installed)."""
    try:
        import pymorphy3
    except ImportError:
        logger.warning("pymorphy3 is not installed: the trimming corpus has no inflected forms")
        return []
    morph = pymorphy3.MorphAnalyzer()
    forms = set()
    for word in {w for text in words for w in text.lower().split() if w.isalpha()}:
        for parse in morph.parse(word)[:1]:
            forms.update(f.word for f in parse.lexeme)
    return sorted(forms)


def trimming_corpus(templates: Sequence[str]) -> List[str]:
    """Texts a trimmed vocabulary must cover: names, their inflections, templates, templated names."""
    names = vocabulary_names()
    all_templates = list(dict.fromkeys(list(templates) + DEFAULT_TEMPLATES + ENGLISH_TEMPLATES))
    texts = names + inflections(names) + all_templates
    texts += [t.replace("{}", n) for t in all_templates for n in names[:50]]
    return texts
