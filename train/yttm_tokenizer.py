"""youtokentome BPE models (ruCLIP's ``bpe.model``) converted to a Hugging Face ``tokenizer.json``.

youtokentome (yttm) has wheels for CPython <= 3.8 only, and the runtime reads
``tokenizers`` JSON files, so an exporter converts the model once. The yttm
model file is plain text::

    N_CHARS N_RULES
    CODEPOINT ID          (N_CHARS lines: the alphabet)
    X Y Z                 (N_RULES lines: merge ids X and Y into Z, in priority order)
    UNK PAD BOS EOS       (special ids, -1 when absent)

yttm's encoder, reproduced with ``tokenizers`` components:

- words are split at ASCII whitespace (C ``isspace``: space, \\t \\n \\v \\f \\r) and
  at U+2581 "▁"; each word gets a leading "▁" (pre-tokenizer: Split + Metaspace);
- each word is merged by BPE, always applying the rule of lowest index first,
  leftmost first (tokenizers' BPE with the rules as ranked merges);
- a run of characters outside the alphabet inside a word becomes one <UNK>
  (BPE with ``fuse_unk``); no special tokens are added (ruCLIP adds BOS/EOS).

The ids are identical to youtokentome's: ``train/experiments/yttm_reference.py``
checks it against youtokentome itself and writes the test fixture that
``tests/test_ruclip.py`` compares with. This module imports only the standard
library and ``tokenizers`` and keeps to the Python 3.8 grammar, so that script
runs it beside youtokentome on CPython 3.8.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

logger = logging.getLogger(__name__)

SPACE = "\u2581"
SPECIAL_NAMES = ("<UNK>", "<PAD>", "<BOS>", "<EOS>")
# C isspace() in the "C" locale, plus yttm's own space token (utils.cpp: is_space)
SPLIT_PATTERN = "[\\t\\n\\x0B\\x0C\\r \u2581]+"


@dataclass(frozen=True)
class YttmModel:
    """The content of a youtokentome BPE model file.

    chars: codepoint -> id; rules: (x, y, z) merges in priority order;
    specials: (unk, pad, bos, eos) ids, -1 when absent.
    """

    chars: Dict[int, int]
    rules: List[Tuple[int, int, int]]
    specials: Tuple[int, int, int, int]

    @property
    def unk_id(self) -> int:
        return self.specials[0]

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.rules) + sum(1 for s in self.specials if s >= 0)


def read_yttm(path: Path) -> YttmModel:
    """Parse a youtokentome BPE model file; ValueError naming the file if it is not one."""
    try:
        numbers = [int(tok) for tok in Path(path).read_text(encoding="ascii").split()]
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a youtokentome BPE model (expected lines of integers): {exc}") from exc
    if len(numbers) < 2:
        raise ValueError(f"{path}: not a youtokentome BPE model (empty)")
    n_chars, n_rules = numbers[0], numbers[1]
    expected = 2 + 2 * n_chars + 3 * n_rules + 4
    if n_chars <= 0 or n_rules < 0 or len(numbers) != expected:
        raise ValueError(f"{path}: not a youtokentome BPE model: header says {n_chars} characters and {n_rules} "
                         f"rules ({expected} numbers), the file has {len(numbers)} numbers")
    body = numbers[2:]
    chars = {body[2 * i]: body[2 * i + 1] for i in range(n_chars)}
    base = 2 * n_chars
    rules = [(body[base + 3 * i], body[base + 3 * i + 1], body[base + 3 * i + 2]) for i in range(n_rules)]
    unk, pad, bos, eos = body[base + 3 * n_rules:]
    if ord(SPACE) not in chars:
        raise ValueError(f"{path}: the alphabet has no '{SPACE}' (U+2581) word-start character")
    return YttmModel(chars, rules, (unk, pad, bos, eos))


def token_strings(model: YttmModel, path: Path) -> Dict[str, int]:
    """Every token's text -> id: the special names, the characters, and each rule's concatenation.

    Raises ValueError if two ids have the same text (tokenizers' BPE keys tokens by text).
    """
    names: Dict[int, str] = {i: name for i, name in zip(model.specials, SPECIAL_NAMES) if i >= 0}
    for code, idx in model.chars.items():
        names[idx] = chr(code)
    for x, y, z in model.rules:
        if x not in names or y not in names:
            raise ValueError(f"{path}: rule {x} {y} -> {z} uses an id defined later or nowhere")
        names[z] = names[x] + names[y]
    vocab: Dict[str, int] = {}
    for idx, text in sorted(names.items()):
        if text in vocab:
            raise ValueError(f"{path}: ids {vocab[text]} and {idx} are both {text!r}; "
                             "a tokenizers BPE cannot represent that")
        vocab[text] = idx
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{path}: token ids are not 0..{len(vocab) - 1}")
    return vocab


def to_hf_tokenizer(model: YttmModel, path: Path) -> Any:
    """A ``tokenizers.Tokenizer`` that gives youtokentome's ids (no BOS/EOS, no lower-casing)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if model.unk_id < 0:
        raise ValueError(f"{path}: the model has no <UNK> id; unknown characters would have no token")
    vocab = token_strings(model, path)
    by_id = {idx: text for text, idx in vocab.items()}
    merges = [(by_id[x], by_id[y]) for x, y, _ in model.rules]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=by_id[model.unk_id], fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=False),
    ])
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=False)
    return tok


def convert(yttm_path: Path, out_json: Path) -> YttmModel:
    """Write ``out_json`` (a tokenizers JSON) from the youtokentome model ``yttm_path``; returns the parsed model."""
    model = read_yttm(yttm_path)
    to_hf_tokenizer(model, yttm_path).save(str(out_json))
    logger.info("converted %s (%d tokens, %d rules) to %s", yttm_path, model.vocab_size, len(model.rules), out_json)
    return model
