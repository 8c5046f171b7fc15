"""The model folder's contract, stated once for every exporter (torch-free).

The image side's preprocessing comes from :func:`train.image_encoder.image_config`;
this module holds the rest: the file names inside a model folder, and the text
side (:func:`text_config`: ONNX input names, the tokenizer's ids, the class-name
normalisation and the prompt templates). The exporters write these into the
manifest, and tokenize at build time through the runtime's own
:class:`zeroshot.text.Tokenizer` configured by that same manifest section
(:func:`tokenizer`, :func:`token_feeds`), so build and prediction cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from zeroshot.manifest import TEXT_NORMALIZERS, TokenizerConfig, read_section
from zeroshot.text import Tokenizer

IMAGE_ENCODER_FILE = "image_encoder.onnx"
IMAGE_ENCODER_INT8_FILE = "image_encoder.int8.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.model"

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
# every normalisation step the runtime knows, in its order
NORMALIZE = list(TEXT_NORMALIZERS)
# sentencepiece ids as USE-m's tokenizer defines them (the tiny test tokenizer is trained to match);
# padding uses id 0 under a zero attention mask
SENTENCEPIECE_IDS = {"bos_id": 1, "eos_id": 2, "pad_id": 0}
TOKENIZER = {"type": "sentencepiece", **SENTENCEPIECE_IDS, "context_length": None}
# CLIP-family exports (train/export): whitespace only; the checkpoint's own tokenizer handles case
CLIP_NORMALIZE = ["strip", "collapse_spaces"]


def model_files(image_encoder: str = IMAGE_ENCODER_FILE) -> Dict[str, str]:
    """The manifest's ``files``: role -> file name inside the model folder."""
    return {"image_encoder": image_encoder, "text_encoder": TEXT_ENCODER_FILE, "tokenizer": TOKENIZER_FILE}


def text_config(output: str, templates: Sequence[str], normalize: Sequence[str] = NORMALIZE,
                context_length: Any = None, tokenizer_cfg: Optional[Dict[str, Any]] = None,
                attention_mask: bool = True) -> Dict[str, Any]:
    """The manifest's ``text`` section for a text encoder whose graph returns ``output``.

    Inputs are INPUT_IDS and (with ``attention_mask``) ATTENTION_MASK, int64
    (B, L); the tokenizer is ``tokenizer_cfg`` (e.g. :func:`hf_tokenizer_config`),
    by default sentencepiece with SENTENCEPIECE_IDS; ``context_length`` None
    means no truncation (batches are padded to their longest text).
    """
    tok = dict(tokenizer_cfg) if tokenizer_cfg is not None else dict(TOKENIZER, context_length=context_length)
    return {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK if attention_mask else None, "output": output,
            "tokenizer": tok, "normalize": list(normalize), "templates": list(templates)}


def hf_tokenizer_config(pad_id: int, context_length: Optional[int], pad_to_context: bool,
                        bos_id: Optional[int] = None, eos_id: Optional[int] = None, lowercase: bool = False,
                        add_special_tokens: bool = True) -> Dict[str, Any]:
    """The manifest's ``text.tokenizer`` for a Hugging Face ``tokenizer.json`` (see zeroshot.text.Tokenizer).

    With ``add_special_tokens`` the file's post-processor adds BOS/EOS; without
    it the runtime adds ``bos_id``/``eos_id``. ``id_map`` is set by trimming.
    """
    return {"type": "hf_tokenizers", "bos_id": bos_id, "eos_id": eos_id, "pad_id": int(pad_id),
            "context_length": None if context_length is None else int(context_length),
            "pad_to_context": bool(pad_to_context), "lowercase": bool(lowercase),
            "add_special_tokens": bool(add_special_tokens), "id_map": None}


def tokenizer(model_file: Path, cfg: Dict[str, Any] = TOKENIZER) -> Tokenizer:
    """The runtime's Tokenizer for ``model_file``, configured like the manifest's ``text.tokenizer`` (``cfg``,
    validated as the manifest validates it)."""
    return Tokenizer(Path(model_file), read_section(TokenizerConfig, cfg, "text.tokenizer"))


def token_feeds(tok: Tokenizer, texts: Sequence[str]) -> Dict[str, np.ndarray]:
    """The text encoder's feeds {INPUT_IDS, ATTENTION_MASK}: int64 (len(texts), L), right-padded."""
    ids, mask = tok.batch(list(texts))
    return {INPUT_IDS: ids, ATTENTION_MASK: mask}
