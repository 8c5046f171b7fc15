"""Vocabulary trimming: keep only the token-table rows a Russian+English corpus uses.

Multilingual text towers (XLM-R, Gemma-based SigLIP) spend most of their
size on a 250k-row token table. Trimming keeps the rows of every id the
checkpoint's own tokenizer produces on :func:`train.export.corpus.trimming_corpus`
(plus the special ids), rewrites the token table to those rows, and writes an
int32 lookup table original id -> kept row (unknown ids -> the unknown token's
row) that the runtime tokenizer applies. The original tokenizer is kept.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

ID_MAP_FILE = "tokenizer_id_map.npy"

Tokenize = Callable[[Sequence[str]], Tuple[np.ndarray, np.ndarray]]


def used_ids(tokenize: Tokenize, texts: Sequence[str], batch: int = 512) -> np.ndarray:
    """Sorted unique int64 ids the tokenizer produces on ``texts`` (real tokens only, by its mask)."""
    seen: set = set()
    for start in range(0, len(texts), batch):
        ids, mask = tokenize(texts[start:start + batch])
        seen.update(int(i) for i in np.unique(ids[mask.astype(bool)]))
    return np.array(sorted(seen), dtype=np.int64)


def build_id_map(kept: np.ndarray, vocab_size: int, unk_id: int) -> np.ndarray:
    """int32 (vocab_size,) table: kept[i] -> i, every other id -> the row of ``unk_id`` (which must be kept)."""
    rows = np.searchsorted(kept, unk_id)
    if rows >= len(kept) or kept[rows] != unk_id:
        raise ValueError(f"the unknown token id {unk_id} is not among the kept ids")
    table = np.full(vocab_size, rows, dtype=np.int32)
    table[kept] = np.arange(len(kept), dtype=np.int32)
    return table


def choose_vocabulary(tokenize: Tokenize, corpus: Sequence[str], special_ids: Sequence[int],
                      vocab_size: int) -> np.ndarray:
    """Sorted int64 ids to keep: the corpus's ids, the special ids and every id up to the largest special id < 16.

    Keeping the low ids unchanged leaves the pad id (and the other specials of
    XLM-R / Gemma vocabularies, 0..3) mapped to themselves, so padding before
    or after the lookup gives the same rows.
    """
    specials = sorted({int(i) for i in special_ids if i is not None and 0 <= int(i) < vocab_size})
    low = [i for i in specials if i < 16]
    head = list(range(max(low) + 1)) if low else []
    kept = np.union1d(np.union1d(used_ids(tokenize, corpus), np.array(specials, dtype=np.int64)),
                      np.array(head, dtype=np.int64))
    return kept[kept < vocab_size].astype(np.int64)


def trim_embedding(embedding: nn.Embedding, kept: np.ndarray) -> Tuple[int, int]:
    """Keep only rows ``kept`` of ``embedding`` in place; returns (rows before, rows after)."""
    before = int(embedding.weight.shape[0])
    with torch.no_grad():
        rows = embedding.weight[torch.from_numpy(kept)].clone()
    embedding.weight = nn.Parameter(rows, requires_grad=False)
    embedding.num_embeddings = int(len(kept))
    if embedding.padding_idx is not None:
        embedding.padding_idx = int(np.searchsorted(kept, embedding.padding_idx))
    return before, int(len(kept))


def coverage(tokenize: Tokenize, texts: Sequence[str], kept: np.ndarray) -> Dict[str, Any]:
    """Share of the real tokens of ``texts`` whose id is kept; the texts with a dropped token."""
    ids, mask = tokenize(list(texts))
    real = mask.astype(bool)
    hit = np.isin(ids, kept) & real
    missing: List[str] = [t for t, row_hit, row_real in zip(texts, hit, real) if (row_hit != row_real).any()]
    total = int(real.sum())
    return {"texts": len(texts), "tokens": total, "covered_tokens": int(hit.sum()),
            "share": float(hit.sum() / max(total, 1)), "texts_with_unknown": missing[:20],
            "texts_with_unknown_count": len(missing)}
