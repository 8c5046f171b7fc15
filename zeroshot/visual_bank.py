"""The visual concept bank at run time: a class name matched to image prototypes of named concepts.

The model folder's ``visual_bank`` section (zeroshot.manifest.VisualBankConfig) and three files: ``visual_concepts``
(JSON: per concept its Russian name, synonyms and source collection), ``visual_names`` (float16 (E, T):
the text encoder's ``embedding_output`` of every concept name and synonym, in concept order) and
``visual_prototypes`` (float16 (K, F): each concept's mean image feature in the rung's feature space; a
variant may have its own). Built by train/visual_bank.py and train/build_default.py.

Per dataset, :meth:`Bank.match` gives each class the mean prototype of the concepts its name matches (or
none), and :func:`bank_logits` turns the images' cosines to the matched prototypes into evidence among the
matched classes, added to their logits; the transductive steps then refine as before. A class with no
confident match keeps its zero-shot logits.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Dict, List, Optional, Sequence

import numpy as np

from .manifest import VisualBankConfig, Manifest, resolve_file
from .text import normalize_name

logger = logging.getLogger(__name__)

_EPS = 1e-12
MATCH_BLOCK = 4096  # class names scored against the bank at once


@dataclass
class ClassMatch:
    """A dataset's classes and the bank: ``prototypes`` float32 (M, F), one row per matched class in class order;
    ``matched`` bool (C,); ``concepts`` per class the indices of the concepts pooled into its prototype."""

    prototypes: np.ndarray
    matched: np.ndarray
    concepts: List[List[int]]

    @property
    def any(self) -> bool:
        return bool(self.matched.any())


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row (last axis) L2-normalised; a zero row stays zero."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


class Bank:
    """A model folder's concept bank for one variant: names, their embeddings and the concepts' prototypes."""

    def __init__(self, names: Sequence[Sequence[str]], sources: Sequence[str], embeddings: np.ndarray,
                 prototypes: np.ndarray, cfg: VisualBankConfig, normalize: Sequence[str]) -> None:
        """``names``: per concept its name then synonyms; ``embeddings``: one row per name, in that order."""
        self.cfg, self.normalize = cfg, list(normalize)
        self.sources = np.array(sources)
        self.entry_concept = np.array([k for k, ns in enumerate(names) for _ in ns], dtype=np.int64)
        self.entry_text = [normalize_name(n, self.normalize) for ns in names for n in ns]
        if len(embeddings) != len(self.entry_text):
            raise ValueError(f"bank: {len(embeddings)} name embeddings for {len(self.entry_text)} names")
        if len(prototypes) != len(names):
            raise ValueError(f"bank: {len(prototypes)} prototypes for {len(names)} concepts")
        self.embeddings = unit_rows(embeddings.astype(np.float32))
        self.prototypes = unit_rows(prototypes.astype(np.float32))
        self.concept_starts = np.flatnonzero(np.r_[True, self.entry_concept[1:] != self.entry_concept[:-1]])
        self.entries_named: Dict[str, List[int]] = {}
        for e, text in enumerate(self.entry_text):
            self.entries_named.setdefault(text, []).append(e)

    def named(self, names: Sequence[str]) -> List[int]:
        """The concepts with a name or synonym equal (normalised) to one of ``names``."""
        wanted = {normalize_name(n, self.normalize) for n in names}
        return sorted({int(self.entry_concept[e]) for e, text in enumerate(self.entry_text) if text in wanted})

    def concept_scores(self, names: Sequence[str], name_vecs: np.ndarray,
                       exclude: Collection[str] = ()) -> np.ndarray:
        """float32 (C, K): each class name's best cosine to a concept's names; an equal normalised name is 1.

        Concepts whose source collection (a repository) is in ``exclude`` get -inf: the tuning tools score a
        suite set without its own source.
        """
        if not len(self.sources):
            return np.zeros((len(names), 0), dtype=np.float32)
        sims = unit_rows(name_vecs.astype(np.float32)) @ self.embeddings.T
        for c, name in enumerate(names):
            sims[c, self.entries_named.get(normalize_name(name, self.normalize), [])] = 1.0
        scores = np.maximum.reduceat(sims, self.concept_starts, axis=1)  # entries are grouped by concept
        if exclude:
            scores[:, np.isin(self.sources, list(exclude))] = -np.inf
        return scores

    def match(self, names: Sequence[str], name_vecs: np.ndarray, exclude: Collection[str] = (),
              cfg: Optional[VisualBankConfig] = None, drop: Collection[int] = ()) -> ClassMatch:
        """Each class's prototype: the mean of the concepts scoring at least ``threshold`` and within ``margin``
        of the class's best concept (:meth:`concept_scores`); ``cfg`` (default: the bank's own) sets both.
        Concepts of a source in ``exclude``, and the concepts ``drop`` (indices), take no part. Classes are
        scored MATCH_BLOCK at a time, so memory stays bounded for any class count."""
        cfg = cfg or self.cfg
        matched = np.zeros(len(names), dtype=bool)
        protos: List[np.ndarray] = []
        concepts: List[List[int]] = []
        for start in range(0, len(names), MATCH_BLOCK):
            scores = self.concept_scores(names[start:start + MATCH_BLOCK], name_vecs[start:start + MATCH_BLOCK],
                                         exclude)
            scores[:, list(drop)] = -np.inf
            best = scores.max(axis=1) if scores.shape[1] else np.full(len(scores), -np.inf, np.float32)
            ok = best >= cfg.threshold
            matched[start:start + len(scores)] = ok
            chosen = (scores >= (best - cfg.margin)[:, None]) & ok[:, None]
            concepts += [np.flatnonzero(row).tolist() for row in chosen]
            if ok.any():
                pooled = chosen[ok].astype(np.float32) @ self.prototypes
                protos.append(unit_rows(pooled / chosen[ok].sum(axis=1, keepdims=True)))
        width = self.prototypes.shape[1]
        logger.info("visual concept bank: %d of %d class names matched", int(matched.sum()), len(names))
        return ClassMatch(np.concatenate(protos) if protos else np.zeros((0, width), np.float32), matched, concepts)


def bank_logits(logits: np.ndarray, features: Optional[np.ndarray], valid: np.ndarray, match: Optional[ClassMatch],
                cfg: VisualBankConfig) -> np.ndarray:
    """float32 (N, C): ``logits`` plus the bank's evidence on the matched classes' columns of the valid rows.

    For each image, the matched classes' prototypes give a distribution over those classes,
    softmax(``scale`` * cosine(image features, prototype)); it enters the logits as ``weight`` *
    log(m * p), m the number of matched classes. An image that looks alike to every matched prototype adds
    nothing (m p = 1); the bank only moves an image among the classes it knows, and never moves the matched
    classes as a group against the others (their total share is unchanged up to the weight). Features are
    L2-normalised like the prototypes and, with ``center``, both are centred on the images' mean. Unchanged
    without features or a match.
    """
    if match is None or features is None or not match.any or not valid.any():
        return logits
    f = unit_rows(features[valid].astype(np.float32))
    protos = match.prototypes
    if cfg.center:
        mean = f.mean(axis=0, keepdims=True)
        f, protos = f - mean, protos - mean
    z = cfg.scale * (unit_rows(f) @ unit_rows(protos).T)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    out = logits.astype(np.float32, copy=True)
    out[np.ix_(valid, match.matched)] += cfg.weight * (log_p + np.log(len(protos)))
    return out


def load_bank(model_dir: Path, manifest: Manifest, variant: Optional[str], verify: bool = True) -> Optional[Bank]:
    """The model folder's bank as ``variant`` runs it (None without a ``visual_bank`` section); files checked."""
    cfg = manifest.visual_bank
    if cfg is None:
        return None
    concepts_path = resolve_file(manifest, Path(model_dir), "visual_concepts", verify, variant)
    try:
        records = json.loads(concepts_path.read_text(encoding="utf-8"))["concepts"]
        names = [[r["ru"], *r.get("synonyms", [])] for r in records]
        sources = [r["source"] for r in records]
        if not all(isinstance(r.get("synonyms", []), list) for r in records) or \
                not all(isinstance(n, str) and n for ns in names for n in ns) or \
                not all(isinstance(x, str) for x in sources):
            raise ValueError("names and sources must be non-empty strings, synonyms a list of them")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{concepts_path}: not a concept list: {exc}") from exc
    names_path = resolve_file(manifest, Path(model_dir), "visual_names", verify, variant)
    protos_path = resolve_file(manifest, Path(model_dir), "visual_prototypes", verify, variant)
    try:
        return Bank(names, sources, np.load(names_path), np.load(protos_path), cfg, manifest.text.normalize)
    except ValueError as exc:
        raise ValueError(f"{names_path} / {protos_path}: {exc}") from exc

