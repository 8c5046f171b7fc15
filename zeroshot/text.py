"""Class names to token batches: normalisation, prompt templates, tokenisation.

Everything here is configured by the manifest's ``text`` section; the ONNX
text encoder that consumes the batches lives in :mod:`zeroshot.encoders`.
Two tokenizer formats are read: sentencepiece models and Hugging Face
``tokenizers`` JSON files (also the format ruCLIP's youtokentome BPE is
converted to by ``train/``).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .manifest import TOKENIZER_TYPES, Manifest, TokenizerConfig, resolve_file

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


def fill(template: str, name: str) -> str:
    """The prompt of one (already normalised) class name: ``template`` with ``{}`` replaced by it."""
    return template.replace("{}", name)


def build_prompts(names: Sequence[str], templates: Sequence[str], steps: Sequence[str]) -> List[str]:
    """Prompts in template-major order: prompt ``t * len(names) + c`` is template t of class c."""
    normalized = [normalize_name(n, steps) for n in names]
    return [fill(template, name) for template in templates for name in normalized]


def _sentencepiece_encoder(model_file: Path) -> Callable[[str], List[int]]:
    """text -> ids of a sentencepiece model (no special tokens)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    if not sp.Load(str(model_file)):
        raise ValueError(f"{model_file}: not a sentencepiece model")
    return lambda text: list(sp.EncodeAsIds(text))


def _hf_encoder(model_file: Path, cfg: TokenizerConfig) -> Callable[[str], List[int]]:
    """text -> ids of a Hugging Face ``tokenizers`` JSON file.

    With ``add_special_tokens`` (default true) the file's own post-processor
    adds the special tokens and ``tokenizers`` truncates the content so that
    the result, specials included, fits ``context_length``. The file's own
    padding and truncation settings are replaced by the manifest's.
    """
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(model_file))
    except Exception as exc:  # tokenizers raises its own Exception type for a bad file
        raise ValueError(f"{model_file}: not a Hugging Face tokenizers JSON file: {exc}") from exc
    tok.no_padding()
    tok.no_truncation()
    add_special = cfg.add_special_tokens
    if add_special and cfg.context_length is not None:
        tok.enable_truncation(max_length=cfg.context_length)
    return lambda text: list(tok.encode(text, add_special_tokens=add_special).ids)


def load_id_map(path: Path) -> np.ndarray:
    """int64 (V,) lookup table original token id -> row of a trimmed embedding table.

    The file is a 1-D integer .npy array (int32 as written by the exporter);
    raises ValueError naming the file if it is anything else.
    """
    try:
        table = np.load(str(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: token id map is not a readable .npy file: {exc}") from exc
    if table.ndim != 1 or table.dtype.kind not in "iu" or table.size == 0 or int(table.min()) < 0:
        raise ValueError(f"{path}: token id map must be a non-empty 1-D array of non-negative integers, "
                         f"got dtype {table.dtype} shape {table.shape}")
    return table.astype(np.int64)


class Tokenizer:
    """Texts -> padded id batches, configured by the manifest's ``text.tokenizer`` section.

    ``type``: ``sentencepiece`` (a ``.model`` file) or ``hf_tokenizers`` (a
    ``tokenizer.json``). ``lowercase``: the whole prompt is lower-cased first.
    ``bos_id``/``eos_id`` are added here to the sentencepiece ids, and to the
    ``hf_tokenizers`` ids when ``add_special_tokens`` is false (with it true the
    file's post-processor adds them and these two ids are informative only).
    ``context_length``: ids are truncated to it (content first, the special
    tokens kept); ``pad_to_context``: every row is padded to it (models with
    fixed positional embeddings), else to the longest row. ``padding_side``:
    ``right`` (default) or ``left``. ``id_map``: ids (padding included) are
    looked up in this table (a trimmed vocabulary's rows) last.
    """

    def __init__(self, model_file: Path, cfg: TokenizerConfig, id_map: Optional[np.ndarray] = None) -> None:
        self.type: str = cfg.type
        if self.type == "sentencepiece":
            self._encode = _sentencepiece_encoder(model_file)
        elif self.type == "hf_tokenizers":
            self._encode = _hf_encoder(model_file, cfg)
        else:
            raise ValueError(f"{model_file}: unknown tokenizer type {self.type!r} (expected one of {TOKENIZER_TYPES})")
        self.file = Path(model_file)
        self.adds_specials = self.type == "sentencepiece" or not cfg.add_special_tokens
        self.bos_id: Optional[int] = cfg.bos_id
        self.eos_id: Optional[int] = cfg.eos_id
        self.pad_id: int = cfg.pad_id or 0
        self.context_length: Optional[int] = cfg.context_length
        self.pad_to_context = cfg.pad_to_context
        self.lowercase = cfg.lowercase
        self.left_pad = cfg.padding_side == "left"
        self.id_map = id_map

    def encode(self, text: str) -> List[int]:
        """Token ids of one text (original vocabulary): specials as configured, truncated to the context."""
        ids = self._encode(text.lower() if self.lowercase else text)
        if not self.adds_specials:
            return ids[:self.context_length] if self.context_length is not None else ids
        if self.context_length is not None:
            room = self.context_length - (self.bos_id is not None) - (self.eos_id is not None)
            ids = ids[:room]
        if self.bos_id is not None:
            ids = [self.bos_id] + ids
        if self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        """Map original ids through ``id_map``; ValueError if an id is beyond the table."""
        if self.id_map is None:
            return ids
        if ids.size and int(ids.max()) >= len(self.id_map):
            raise ValueError(f"{self.file}: token id {int(ids.max())} is beyond the id map's {len(self.id_map)} "
                             "entries (the id map was made for another tokenizer)")
        return self.id_map[ids]

    def batch(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """int64 ids and mask, both shape (len(texts), L), padded on the configured side.

        L is the context length with ``pad_to_context``, else the longest row.
        """
        encoded = [self.encode(t) for t in texts]
        longest = max((len(ids) for ids in encoded), default=0)
        width = self.context_length if self.pad_to_context and self.context_length else longest
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, seq in enumerate(encoded):
            cols = slice(width - len(seq), width) if self.left_pad else slice(0, len(seq))
            ids[row, cols] = seq
            mask[row, cols] = 1
        return self._lookup(ids), mask


def load_tokenizer(manifest: Manifest, model_dir: Path, verify: bool = True,
                   variant: Optional[str] = None) -> Tokenizer:
    """The manifest's tokenizer with its id map (files ``tokenizer`` and ``tokenizer_id_map``), sha256-checked."""
    cfg = manifest.text.tokenizer
    path = resolve_file(manifest, model_dir, "tokenizer", verify, variant)
    id_map = None
    if cfg.id_map:
        id_map = load_id_map(resolve_file(manifest, model_dir, "tokenizer_id_map", verify, variant))
    return Tokenizer(path, cfg, id_map)
