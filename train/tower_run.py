"""One text-tower training run's state (train.text_tower): its settings, data, evaluation set and tower,
and text encoding through the runtime's Tokenizer, shared by the loop, the evaluation and the export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from zeroshot.manifest import Manifest
from zeroshot.text import Tokenizer

from .distributed import SINGLE, Dist
from .tower_model import TextTower

ENCODE_BATCH = 256
# fields of TrainConfig that change the training trajectory: a resumed run must match them
TRAJECTORY = ("text_model", "steps", "batch_size", "lr", "encoder_lr", "weight_decay", "warmup_steps",
              "hard_negatives", "freeze_layers", "seed", "val_fraction", "init_scale")


@dataclass
class TrainConfig:
    """Every setting of one training run (saved in each checkpoint and in the report)."""

    text_model: str = "use-m"
    steps: int = 0                 # 0: epochs x steps per epoch
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3               # projection head and temperature
    encoder_lr: float = 1e-4       # unfrozen encoder layers
    weight_decay: float = 0.01
    warmup_steps: int = -1         # -1: 5% of the steps
    hard_negatives: float = 0.25   # share of each batch chosen as hard negatives
    freeze_layers: int = -1        # lowest encoder layer groups frozen; -1: the whole encoder
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 200
    val_fraction: float = 0.1
    init_scale: float = 10.0


@dataclass
class TrainData:
    """Pairs with their cached image rows, split into training and held-out pairs by image."""

    texts: List[str]
    rows: np.ndarray               # int64 (P,) cache row of each pair's image
    train: np.ndarray              # int64 indices of training pairs
    val: np.ndarray                # int64 indices of held-out pairs (their images never trained on)
    vectors: np.ndarray            # float32 (R, D) memmap of the image cache


@dataclass
class EvalSet:
    """A labelled datasets folder with its cached image vectors."""

    names: List[str]
    classes: List[List[str]]
    vectors: List[np.ndarray]      # float32 (N_d, D) per dataset (zeros for undecodable images)
    valid: List[np.ndarray]        # bool (N_d,)
    truth: List[np.ndarray]        # int64 (N_d,)


@dataclass
class Run:
    """Everything a stage needs: configuration, data, the tower and where things go."""

    cfg: TrainConfig
    out: Path
    image_model: Path
    manifest: Manifest             # the image model's manifest
    tokenizer_path: Path
    tokenizer: Tokenizer
    tower: TextTower
    data: TrainData
    eval_set: Optional[EvalSet] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    dist: Dist = SINGLE            # this process among torchrun's (train/distributed.py)


def tokens(tokenizer: Tokenizer, texts: Sequence[str], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask) int64 (B, L) on ``device``, via the runtime's Tokenizer."""
    ids, mask = tokenizer.batch(list(texts))
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


@torch.no_grad()
def encode_texts(tower: TextTower, tokenizer: Tokenizer, texts: Sequence[str], device: torch.device,
                 project: bool = True) -> torch.Tensor:
    """Texts -> float32 (N, D) tower outputs (``project=False``: encoder outputs), in eval mode."""
    was = tower.training
    tower.eval()
    out = []
    for start in range(0, len(texts), ENCODE_BATCH):
        feats = tower.encoder(*tokens(tokenizer, texts[start:start + ENCODE_BATCH], device))
        out.append(tower.project(feats) if project else feats)
    tower.train(was)
    return torch.cat(out).float() if out else torch.zeros(0)
