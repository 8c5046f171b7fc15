"""One CLIP-family checkpoint ready to export (:class:`Source`), whatever loaded it.

train/export/sources.py loads open_clip, Hugging Face and M-CLIP checkpoints,
train/export/ruclip.py ruCLIP ones; both build this type, and the exporter
(train/export/build.py) reads only it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

Batch = Tuple[np.ndarray, np.ndarray]  # int64 ids (N, L), int64 mask (N, L)


@dataclass
class Source:
    """One checkpoint, ready to export. Shapes: ids/mask int64 (N, L); embeddings float32 (N, D)."""

    name: str
    family: str
    image_module: nn.Module
    text_module: nn.Module
    text_uses_mask: bool
    fixed_length: bool
    tokenize: Callable[[Sequence[str]], Batch]
    reference_text: Callable[[Sequence[str]], np.ndarray]
    save_tokenizer: Callable[[Path], None]
    tokenizer_cfg: Dict[str, Any]
    image_cfg: Dict[str, Any]
    logit_scale: float
    logit_bias: Optional[float] = None
    token_embedding: Optional[Callable[[], nn.Embedding]] = None
    unk_id: Optional[int] = None
    special_ids: List[int] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)
    origin: Dict[str, Optional[str]] = field(default_factory=dict)  # how it was loaded (the reference reloads it)


class _Call(nn.Module):
    """A module whose forward is ``fn(*inputs)`` over a wrapped model (so export traces only that path)."""

    def __init__(self, model: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, *inputs)


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path
