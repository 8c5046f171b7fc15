"""A learned text -> ImageNet-probability head trained on the Russian vocabulary (train/vocab), and its
combination with the concept bank.

Pairs: every entry of the concept bank (each Russian name, synonym, group and visual-proxy phrase,
with its pymorphy3 number form) paired with its concept's point in the image encoder's output
space. The default image encoder outputs ImageNet probabilities, so a concept's image-space
target is its distribution over the 1000 classes (one-hot for a class, uniform over the members
for a group or proxy): the probability vector an ideal image of that concept would get. The
head is the text tower of train/tower_model.py (USE-m, frozen, + a linear layer + softmax) trained
by train/text_tower.py's loop with InfoNCE over ``log(p . w)``, the runtime's own score.

:func:`holdout_bank` removes names (and their inflections) from a bank, so that the bank lookup
and the head can be measured on class names neither has seen
(train/experiments/vocab_head_holdout.py). :class:`BankHeadTextEncoder` is the option to wire
into the default model: ``w = (1 - alpha) * bank(w) + alpha * head(w)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from torch import nn

from zeroshot.manifest import load_manifest

from .concepts import ConceptBank, inflections
from .text_tower import Run, TrainConfig, TrainData
from .contract import tokenizer
from .tower_model import TextTower, UseMEncoder, freeze_lower

logger = logging.getLogger(__name__)


def holdout_forms(names: Sequence[str], normalize) -> List[str]:
    """The normalised names and their nominative singular/plural forms (pymorphy3)."""
    import pymorphy3

    morph = pymorphy3.MorphAnalyzer()
    return sorted({normalize(f) for n in names for f in inflections(normalize(n), morph)})


def holdout_bank(bank: ConceptBank, forms: Sequence[str]) -> ConceptBank:
    """The bank without the entries whose text is one of ``forms``; every concept stays (maybe without entries)."""
    banned = set(forms)
    keep = [i for i, t in enumerate(bank.texts) if t not in banned]
    logger.info("held out %d entries of %d (%d forms)", len(bank.texts) - len(keep), len(bank.texts), len(banned))
    return ConceptBank([bank.texts[i] for i in keep], bank.concept_of[keep], bank.distributions, bank.names)


def vocab_run(bank: ConceptBank, image_model: Path, out: Path, cfg: TrainConfig) -> Run:
    """A text_tower Run whose pairs are the bank's entries and whose 'images' are the concepts' distributions.

    The image model's manifest must score ``dot``/``log`` over probabilities with
    as many dimensions as the bank's distributions (the default model: 1000).
    """
    manifest = load_manifest(image_model)
    if (manifest["score"]["similarity"], manifest["score"]["logit"]) != ("dot", "log"):
        raise ValueError(f"{image_model}: the vocabulary head needs a probability image encoder (score dot/log), "
                         f"got {manifest['score']}")
    torch.manual_seed(cfg.seed)
    encoder = UseMEncoder()
    freeze_lower(encoder, cfg.freeze_layers)
    tower = TextTower(encoder, bank.distributions.shape[1], "distribution", cfg.init_scale)
    rows = bank.concept_of.astype(np.int64)
    data = TrainData(list(bank.texts), rows, np.arange(len(rows), dtype=np.int64), np.zeros(0, dtype=np.int64),
                     bank.distributions.astype(np.float32))
    from .use_m import sp_model_path

    return Run(cfg, Path(out), Path(image_model), manifest, sp_model_path(), tokenizer(sp_model_path()),
               tower, data)


class BankHeadTextEncoder(nn.Module):
    """input_ids, attention_mask int64 (B, L) -> float32 (B, 1000): (1 - alpha) * bank + alpha * head.

    ``bank`` is the default model's ConceptTextEncoder (train/text_encoder.py); ``head`` the
    projection (``TextTower.head``) of a vocabulary head trained on the same USE-m. Both read one
    USE-m pass, so the exported graph holds one copy of USE-m; rows still sum to 1 and the
    runtime's ``log(p . w)`` applies unchanged.
    """

    def __init__(self, bank: nn.Module, head: nn.Linear, alpha: float) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.bank, self.head, self.alpha = bank, head, float(alpha)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        query = self.bank.use(input_ids, attention_mask)
        head = torch.softmax(self.head(query), dim=-1)
        return (1.0 - self.alpha) * self.bank.mix_concepts(query) + self.alpha * head


def mix_weights(bank_w: np.ndarray, head_w: np.ndarray, alpha: float) -> np.ndarray:
    """float32 (C, 1000) class weights of the bank and of the head -> their mixture (numpy twin of the module)."""
    return ((1.0 - alpha) * bank_w + alpha * head_w).astype(np.float32)

