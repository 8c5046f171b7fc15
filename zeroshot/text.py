"""Class names to token batches: normalisation, prompt templates, tokenisation.

Everything here is configured by the manifest's ``text`` section; the ONNX
text encoder that consumes the batches lives in :mod:`zeroshot.encoders`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

_SPACES = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[\s.,;:!?…]+$")


def normalize_name(name: str, steps: Sequence[str]) -> str:
    """Apply the manifest's normalisation steps to one class name, in a fixed order.

    Steps: strip, collapse_spaces, lowercase, yo (ё -> е), trailing_punct.
    Unicode is always NFC-normalised first so that a decomposed "й" or "ё"
    matches the composed one.
    """
    text = unicodedata.normalize("NFC", name)
    if "strip" in steps:
        text = text.strip()
    if "collapse_spaces" in steps:
        text = _SPACES.sub(" ", text)
    if "lowercase" in steps:
        text = text.lower()
    if "yo" in steps:
        text = text.replace("ё", "е").replace("Ё", "Е")
    if "trailing_punct" in steps:
        text = _TRAILING_PUNCT.sub("", text)
    return text


def build_prompts(names: Sequence[str], templates: Sequence[str], steps: Sequence[str]) -> List[str]:
    """Prompts in template-major order: prompt ``t * len(names) + c`` is template t of class c."""
    normalized = [normalize_name(n, steps) for n in names]
    return [template.replace("{}", name) for template in templates for name in normalized]


class Tokenizer:
    """A sentencepiece tokenizer configured by the manifest's ``text.tokenizer`` section."""

    def __init__(self, model_file: Path, cfg: Dict[str, Any]) -> None:
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor()
        if not self._sp.Load(str(model_file)):
            raise ValueError(f"{model_file}: not a sentencepiece model")
        self.bos_id: Optional[int] = cfg.get("bos_id")
        self.eos_id: Optional[int] = cfg.get("eos_id")
        self.pad_id: int = int(cfg.get("pad_id") or 0)
        self.context_length: Optional[int] = cfg.get("context_length")

    def encode(self, text: str) -> List[int]:
        """Token ids of one text, with BOS/EOS as configured and truncated to the context length."""
        ids = list(self._sp.EncodeAsIds(text))
        if self.context_length is not None:
            room = self.context_length - (self.bos_id is not None) - (self.eos_id is not None)
            ids = ids[:room]
        if self.bos_id is not None:
            ids = [self.bos_id] + ids
        if self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def batch(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Right-padded int64 ids and mask, both shape (len(texts), L).

        L is the context length when the manifest fixes one, else the longest text.
        """
        encoded = [self.encode(t) for t in texts]
        width = self.context_length or max(len(ids) for ids in encoded)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, seq in enumerate(encoded):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        return ids, mask
