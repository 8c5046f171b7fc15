"""The concept bank: Russian (and English) names of ImageNet classes and groups.

A *concept* is either one of the 1000 ImageNet classes or a Russian group of
them (``train/vocab/groups_ru.tsv``); its distribution over the 1000 classes
is one-hot or uniform over the members. An *entry* is one written name of a
concept: every Russian name from ``train/vocab/imagenet_ru.tsv`` and the group
file, the visual proxies (``proxies_ru.tsv``, ``everyday_ru.tsv``: concepts
ImageNet lacks, mapped to classes that look like them; see train/vocab/README.md),
its plural (or singular) form made with pymorphy3, and optionally the
English WordNet lemmas. The text encoder embeds a class name, compares it with
every entry, takes each concept's best entry, and mixes the concepts'
distributions by a softmax over those similarities.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
N_IMAGENET = 1000


@dataclass
class ConceptBank:
    """Entries (texts and their concept), and each concept's distribution over ImageNet.

    texts: N entry strings; concept_of: int64 (N,) concept index per entry;
    distributions: float32 (K, 1000), rows sum to 1; names: K concept labels.
    """

    texts: List[str]
    concept_of: np.ndarray
    distributions: np.ndarray
    names: List[str]

    def entry_index(self, pad_to: Optional[int] = None) -> np.ndarray:
        """int64 (K, E): each concept's entry indices, padded with N (a sentinel entry)."""
        n, k = len(self.texts), len(self.names)
        per: List[List[int]] = [[] for _ in range(k)]
        for i, c in enumerate(self.concept_of.tolist()):
            per[c].append(i)
        width = pad_to or max(len(p) for p in per)
        out = np.full((k, width), n, dtype=np.int64)
        for c, ids in enumerate(per):
            out[c, :len(ids)] = ids[:width]
        return out


def _read_tsv(path: Path) -> List[Dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def _split(names: str) -> List[str]:
    return [n.strip() for n in names.split(";") if n.strip()]


def parse_members(spec: str) -> List[int]:
    """"7,8,80-100" -> [7, 8, 80, ..., 100]; raises ValueError on anything else."""
    out: List[int] = []
    for part in spec.split(","):
        part = part.strip()
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if not 0 <= first <= last < N_IMAGENET:
            raise ValueError(f"bad member range {part!r}")
        out.extend(range(first, last + 1))
    return out


def imagenet_lemmas() -> List[List[str]]:
    """English WordNet lemmas of the 1000 classes, from timm's data files (timm is not imported)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("timm is not installed: pip install --no-deps -r requirements-nodeps.txt")
    info = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemma = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                 if "\t" in line)
    return [[x.strip() for x in lemma[s].split(",") if x.strip()] for s in synsets]


def inflections(phrase: str, morph) -> List[str]:
    """The phrase and its number-swapped form (nominative plural, or singular for a plural)."""
    words = phrase.split()
    out = [phrase]
    for number in ("plur", "sing"):
        changed, new_words = False, []
        for word in words:
            parse = next((p for p in morph.parse(word) if "nomn" in p.tag), None)
            form = None
            if parse is not None and parse.tag.POS in ("NOUN", "ADJF", "PRTF"):
                if "Pltm" not in parse.tag and number not in parse.tag:
                    form = parse.inflect({number, "nomn"})
            new_words.append(form.word if form is not None else word)
            changed = changed or form is not None
        if changed:
            out.append(" ".join(new_words))
    return out


GROUP_FILES = ("groups_ru.tsv", "proxies_ru.tsv", "everyday_ru.tsv")


def load_bank(normalize: Callable[[str], str], english: bool = True, inflect: bool = True,
              vocab_dir: Path = VOCAB_DIR, group_files: Sequence[str] = GROUP_FILES,
              drop: Optional[Callable[[str], bool]] = None, drop_rows: bool = False) -> ConceptBank:
    """Build the bank from the vocabulary files; entry texts pass through ``normalize``.

    ``group_files``: files of (russian, english, members) rows (groups, visual
    proxies); ``drop``: names for which it is True are left out (with their
    inflections): every group and proxy name and every ImageNet synonym, but
    not an ImageNet class's primary (first) name; a group left without names is
    left out. Used to measure on a dev set with its own class names held out.
    ``drop_rows``: stricter, a row with any such name loses all its names (an
    ImageNet class keeps its primary name only).
    """
    rows = _read_tsv(vocab_dir / "imagenet_ru.tsv")
    if [int(r["index"]) for r in rows] != list(range(N_IMAGENET)):
        raise ValueError(f"{vocab_dir / 'imagenet_ru.tsv'}: expected indices 0..999 in order")
    def keep(names: List[str]) -> List[str]:
        if drop is None:
            return names
        kept = [n for n in names if not drop(n)]
        return [] if drop_rows and len(kept) < len(names) else kept

    groups = [(g, keep(_split(g["russian"]))) for name in group_files for g in _read_tsv(vocab_dir / name)]
    groups = [(g, names) for g, names in groups if names]
    morph = None
    if inflect:
        import pymorphy3

        morph = pymorphy3.MorphAnalyzer()
    lemmas = imagenet_lemmas() if english else [[] for _ in range(N_IMAGENET)]
    concepts: List[Tuple[str, List[str], np.ndarray]] = []
    for row, eng in zip(rows, lemmas):
        dist = np.zeros(N_IMAGENET, dtype=np.float32)
        dist[int(row["index"])] = 1.0
        names = _split(row["russian"])
        concepts.append((row["english"], names[:1] + keep(names[1:] + list(eng)), dist))
    for g, names in groups:
        members = parse_members(g["members"])
        dist = np.zeros(N_IMAGENET, dtype=np.float32)
        dist[members] = 1.0 / len(members)
        concepts.append(("group: " + g["english"], names, dist))
    texts: List[str] = []
    concept_of: List[int] = []
    for k, (_, names, _) in enumerate(concepts):
        seen = set()
        for name in names:
            for form in (inflections(name, morph) if morph is not None else [name]):
                text = normalize(form)
                if text and text not in seen:
                    seen.add(text)
                    texts.append(text)
                    concept_of.append(k)
    logger.info("concept bank: %d concepts (%d groups), %d entries", len(concepts), len(groups), len(texts))
    return ConceptBank(texts, np.asarray(concept_of, dtype=np.int64),
                       np.stack([c[2] for c in concepts]), [c[0] for c in concepts])


def concept_similarities(query: np.ndarray, entries: np.ndarray, index: np.ndarray) -> np.ndarray:
    """float32 (B, D) queries x (N, D) entries -> (B, K) best cosine per concept (numpy reference)."""
    sims = query @ entries.T
    sims = np.concatenate([sims, np.full((len(query), 1), -1.0, dtype=sims.dtype)], axis=1)
    return sims[:, index].max(axis=2)


def mix(concept_sims: np.ndarray, distributions: np.ndarray, scale: float, top_k: Sequence[int] = ()) -> np.ndarray:
    """(B, K) similarities -> (B, 1000) distributions: softmax(scale * sims) @ distributions."""
    logits = scale * concept_sims
    if top_k:
        kth = -np.sort(-logits, axis=1)[:, top_k[0] - 1:top_k[0]]
        logits = np.where(logits >= kth, logits, -np.inf)
    logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ distributions
