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
into the default model: ``w = (1 - alpha) * bank(w) + alpha * head(w)``; alpha = 1 is the head alone,
which ``python -m train.vocab_head --out DIR`` trains and exports as a complete model folder
(DIR/model: the image model's image encoder, the head as the text encoder, the image model's
score, balance and transductive sections) for ``./predict.sh --model DIR/model``.

Usage: ``python -m train.vocab_head --out DIR [--image-model model] [--hold-out NAME ...]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from zeroshot.command import make_parser, parse_args
from zeroshot.limits import MODEL_DIR
from zeroshot.manifest import Manifest
from zeroshot.text import normalize_name

from .concepts import ConceptBank, inflections, load_bank
from .contract import NORMALIZE, tokenizer
from .tower_export import export_model
from .tower_loop import train
from .tower_run import Run, TrainConfig, TrainData
from .tower_model import TextTower, UseMEncoder, freeze_lower

logger = logging.getLogger(__name__)

#: The head's training settings, fixed before any dev-set measurement (not tuned on it).
HEAD = TrainConfig(text_model="use-m", epochs=20, batch_size=512, lr=3e-3, hard_negatives=0.25, freeze_layers=-1,
                   seed=0, checkpoint_every=10 ** 9, val_fraction=0.0)


def norm(text: str) -> str:
    """The runtime's class-name normalisation with every step (train/contract.py NORMALIZE)."""
    return normalize_name(text, NORMALIZE)


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


def vocab_bank(held_out: Sequence[str] = ()) -> ConceptBank:
    """The default model's bank (Russian entries with inflections, no English), with ``held_out`` names removed:
    vocabulary rows naming one of them dropped (an ImageNet class keeps its primary name), and every entry equal
    to one of them or an inflection of one."""
    if not held_out:
        return load_bank(norm, english=False)
    banned = {norm(n) for n in held_out}
    bank = load_bank(norm, english=False, drop=lambda name: norm(name) in banned, drop_rows=True)
    return holdout_bank(bank, holdout_forms(held_out, norm))


def bank_key(bank: ConceptBank, cfg: TrainConfig) -> str:
    """sha256 hex of a head's training data (the bank's entries, concepts, distributions) and settings."""
    h = hashlib.sha256()
    h.update("\n".join(bank.texts).encode("utf-8"))
    h.update(np.ascontiguousarray(bank.concept_of, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(bank.distributions, dtype=np.float32).tobytes())
    h.update(repr(dataclasses.asdict(cfg)).encode("utf-8"))
    return h.hexdigest()


def trained_head(bank: ConceptBank, image_model: Path, cache: Path, cfg: TrainConfig = HEAD) -> nn.Linear:
    """The head (Linear 512 -> 1000, before the softmax) trained on ``bank``, cached in ``cache`` by :func:`bank_key`.

    Training runs on one thread with the config's fixed seed, so it is deterministic.
    """
    path = cache / f"head_{bank_key(bank, cfg)[:16]}.npz"
    if not path.is_file():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with tempfile.TemporaryDirectory(dir=cache.parent if cache.parent.is_dir() else None) as work:
                run = vocab_run(bank, image_model, Path(work), cfg)
                summary = train(run)
            logger.info("head trained on %d entries: %s", len(bank.texts),
                        {k: v for k, v in summary.items() if k != "losses"})
        finally:
            torch.set_num_threads(threads)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, weight=run.tower.head.weight.detach().numpy(), bias=run.tower.head.bias.detach().numpy())
    data = np.load(path)
    head = nn.Linear(data["weight"].shape[1], data["weight"].shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(data["weight"]))
        head.bias.copy_(torch.from_numpy(data["bias"]))
    return head


def head_weights(head: nn.Linear, queries: np.ndarray) -> np.ndarray:
    """USE-m query embeddings float32 (N, 512) -> the head's ImageNet distributions float32 (N, 1000)."""
    with torch.no_grad():
        return torch.softmax(head(torch.from_numpy(np.asarray(queries, np.float32))), dim=-1).numpy()


def vocab_run(bank: ConceptBank, image_model: Path, out: Path, cfg: TrainConfig) -> Run:
    """A text_tower Run whose pairs are the bank's entries and whose 'images' are the concepts' distributions.

    The image model's manifest must score ``dot``/``log`` over probabilities with
    as many dimensions as the bank's distributions (the default model: 1000).
    """
    manifest = Manifest.load(image_model)
    if (manifest.score.similarity, manifest.score.logit) != ("dot", "log"):
        raise ValueError(f"{image_model}: the vocabulary head needs a probability image encoder (score dot/log), "
                         f"got {manifest.score}")
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



def main(argv: Optional[List[str]] = None) -> int:
    """Train the head on the vocabulary and export OUT/model; the training summary goes to the log."""
    parser = make_parser("python -m train.vocab_head", __doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (OUT/model is the model folder)")
    parser.add_argument("--image-model", type=Path, default=MODEL_DIR, help="model folder with a probability encoder")
    parser.add_argument("--hold-out", nargs="*", default=[], help="class names left out of the vocabulary")
    parser.add_argument("--epochs", type=int, default=HEAD.epochs)
    args = parse_args(parser, argv)
    cfg = dataclasses.replace(HEAD, epochs=args.epochs)
    run = vocab_run(vocab_bank(args.hold_out), args.image_model, args.out, cfg)
    summary = train(run)
    export_model(run, summary, scale=run.manifest.score.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
