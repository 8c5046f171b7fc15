"""The trainable text tower: a text encoder with a runtime tokenizer, plus a projection into an image space.

Text encoders (``--text-model``):

- ``use-m``: the torch port of multilingual USE v3 (train/use_m.py) and its sentencepiece
  model; its layers form six groups, lowest first (input projection, first and second window
  convolutions, pooling, the two halves of the output MLP), that ``--freeze-layers`` freezes;
- ``tiny``: a small embedding-bag + MLP encoder over any sentencepiece model (``--tokenizer``),
  for tests and for training from scratch.

Both tokenize through the runtime's :class:`zeroshot.text.Tokenizer`, configured by the same
``text.tokenizer`` section the exported manifest carries (train/contract.py), so training and prediction share one
tokenization.

The projection maps the encoder's vector into the space the image model's manifest scores
against (its ``score`` section): ``cosine`` -> a unit vector; ``dot``/``linear`` -> a plain
vector; ``dot``/``log`` (the default model: ImageNet probabilities) -> a distribution (softmax),
so the runtime's ``log(p . w)`` applies unchanged. :func:`similarity` is that score function in
torch, and :func:`info_nce` the symmetric contrastive loss over it with a learned temperature.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from zeroshot.manifest import ScoreConfig

TEXT_MODELS = ("use-m", "tiny")
TINY_DIM = 64
MAX_SCALE = 100.0
_EPS = 1e-12


class TinyTextEncoder(nn.Module):
    """input_ids, attention_mask int64 (B, L) -> float32 (B, dim): masked mean of embeddings, then an MLP."""

    LAYER_GROUPS: Tuple[Tuple[str, ...], ...] = (("embedding.",), ("mlp.",))

    def __init__(self, vocab_size: int, dim: int = TINY_DIM) -> None:
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(vocab_size, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32).unsqueeze(-1)
        mean = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return mean + self.mlp(mean)


class UseMEncoder(nn.Module):
    """USE-m v3 (train/use_m.UseM): input_ids, attention_mask int64 (B, L) -> unit float32 (B, 512)."""

    LAYER_GROUPS: Tuple[Tuple[str, ...], ...] = (
        ("use.proj_", "use.ln1_"), ("use.w1.", "use.b1."), ("use.w2.", "use.b2."), ("use.ln2_", "use.cnn_"),
        ("use.d0", "use.d1", "use.p1"), ("use.d2", "use.d3", "use.p3"))

    def __init__(self) -> None:
        super().__init__()
        from .use_m import EMB_DIM, UseM

        self.use = UseM()
        self.dim = EMB_DIM

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.use(input_ids, attention_mask)


def build_encoder(kind: str, tokenizer: Path) -> nn.Module:
    """A text encoder of ``kind`` (see TEXT_MODELS) for the sentencepiece model ``tokenizer``."""
    if kind == "use-m":
        return UseMEncoder()
    if kind == "tiny":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor()
        if not sp.Load(str(tokenizer)):
            raise ValueError(f"{tokenizer}: not a sentencepiece model")
        return TinyTextEncoder(sp.GetPieceSize())
    raise ValueError(f"unknown text model {kind!r}; expected one of {TEXT_MODELS}")


def default_tokenizer(kind: str) -> Path:
    """The sentencepiece model a text model comes with (``use-m``); ``tiny`` has none and needs --tokenizer."""
    if kind == "use-m":
        from .use_m import sp_model_path

        return sp_model_path()
    raise ValueError(f"text model {kind!r} needs --tokenizer (a sentencepiece .model file)")


def freeze_lower(encoder: nn.Module, layers: int) -> int:
    """Freeze the ``layers`` lowest layer groups (-1: all) and unfreeze the rest; returns the trainable count.

    Parameters outside every group (none in our encoders) stay frozen only when ``layers`` is -1.
    """
    groups: Sequence[Tuple[str, ...]] = getattr(encoder, "LAYER_GROUPS")
    frozen = len(groups) if layers < 0 else min(layers, len(groups))
    prefixes = [p for group in groups[:frozen] for p in group]
    count = 0
    for name, param in encoder.named_parameters():
        train = layers >= 0 and not any(name.startswith(p) for p in prefixes)
        param.requires_grad_(train)
        count += param.numel() if train else 0
    return count


def output_kind(score: ScoreConfig) -> str:
    """The projection's output for the image model's score section: 'unit', 'linear' or 'distribution'."""
    if score.similarity == "cosine":
        return "unit"
    return "distribution" if score.logit == "log" else "linear"


class TextTower(nn.Module):
    """input_ids, attention_mask int64 (B, L) -> float32 (B, D_image) in the image model's score space.

    ``logit_scale`` (log of the InfoNCE temperature's inverse) is trained with the
    tower and written to the manifest's score.scale; forward does not use it.
    """

    def __init__(self, encoder: nn.Module, image_dim: int, kind: str, init_scale: float = 10.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.kind = kind
        self.head = nn.Linear(int(getattr(encoder, "dim")), image_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale), dtype=torch.float32))

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Encoder vectors float32 (B, E) -> tower output (B, D_image)."""
        z = self.head(feats)
        if self.kind == "unit":
            return F.normalize(z, dim=-1)
        if self.kind == "distribution":
            return torch.softmax(z, dim=-1)
        return z

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder(input_ids, attention_mask))

    def scale(self) -> torch.Tensor:
        """The InfoNCE logit scale exp(logit_scale), clamped to MAX_SCALE."""
        return self.logit_scale.exp().clamp(max=MAX_SCALE)


def similarity(text: torch.Tensor, image: torch.Tensor, score: ScoreConfig) -> torch.Tensor:
    """float32 (B, D) x (M, D) -> (B, M), formed as the runtime's zeroshot.scoring.logits with scale 1."""
    if score.similarity == "cosine":
        text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    sims = text @ image.T
    if score.logit == "log":
        sims = torch.log(sims.clamp(min=_EPS))
    return sims


def info_nce(sims: torch.Tensor, image_of: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch.

    sims: float32 (B, U) similarity of B texts to the batch's U distinct images;
    image_of: int64 (B,) each text's image column. Text -> image is a cross
    entropy; image -> text treats every text of the image as a positive
    (log of the summed softmax over them), so repeated images are not negatives.
    """
    logits = scale * sims.float()
    t2i = F.cross_entropy(logits, image_of)
    positive = image_of[None, :] == torch.arange(sims.shape[1], device=sims.device)[:, None]  # (U, B)
    by_image = logits.T
    i2t = torch.logsumexp(by_image, dim=1) - torch.logsumexp(by_image.masked_fill(~positive, -torch.inf), dim=1)
    return 0.5 * (t2i + i2t.mean())


def trainable(module: nn.Module) -> List[str]:
    """Names of the parameters that require gradients."""
    return [n for n, p in module.named_parameters() if p.requires_grad]
