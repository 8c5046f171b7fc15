"""The text tower's evaluation (train.text_tower): held-out recall@k and zero-shot accuracy scored as the runtime
scores."""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Sequence

import numpy as np
import torch

from zeroshot.datasets import class_mask
from zeroshot.embed import RECALL_AT
from zeroshot.embed import recall_at as recall_at_ranks
from zeroshot.scoring import class_logits, predict
from zeroshot.text import build_prompts

from .tower_model import similarity
from .tower_run import Run, encode_texts

logger = logging.getLogger(__name__)



def recall_at(run: Run, ks: Sequence[int] = RECALL_AT) -> Dict[str, float]:
    """Text -> image retrieval recall@k on the held-out pairs (among the held-out images)."""
    val = run.data.val
    if not len(val):
        return {}
    device = next(run.tower.parameters()).device
    text = encode_texts(run.tower, run.tokenizer, [run.data.texts[i] for i in val], device)
    rows, column = np.unique(run.data.rows[val], return_inverse=True)
    images = torch.from_numpy(np.asarray(run.data.vectors[rows], dtype=np.float32)).to(device)
    sims = similarity(text, images, run.manifest.score).cpu().numpy()
    own = sims[np.arange(len(val)), column][:, None]
    rank = (sims > own).sum(axis=1)
    return {f"recall@{k}": share for k, share in recall_at_ranks(rank, ks).items()}


def zero_shot(run: Run) -> Dict[str, float]:
    """Zero-shot accuracy x 100 per dataset of --eval and their mean, scored as the runtime scores.

    Prompts, normalisation, score, balance and prototype refinement follow the image model's
    manifest, with the learned scale. The refinement reads the cached image vectors (the
    runtime reads ``image.features_output`` when a manifest names one; none of ours does).
    """
    es = run.eval_set
    if es is None or not es.names:
        return {}
    m = run.manifest
    device = next(run.tower.parameters()).device
    templates, steps = m.text.templates, m.text.normalize
    out: Dict[str, float] = {}
    for name, classes, vecs, valid, truth in zip(es.names, es.classes, es.vectors, es.valid, es.truth):
        prompts = build_prompts(classes, templates, steps)
        text = encode_texts(run.tower, run.tokenizer, prompts, device).cpu().numpy()
        text = text.reshape(len(templates), len(classes), -1)
        if m.score.similarity == "cosine":
            text = text / np.maximum(np.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
        score_cfg = dataclasses.replace(m.score, scale=run.tower.scale().detach().item())
        scores = class_logits(vecs, text.mean(axis=0), score_cfg)
        pred = predict(scores, valid, class_mask(classes), m.balance, vecs, m.transductive)
        out[f"zero_shot/{name}"] = 100.0 * float((pred == truth).mean())
    out["zero_shot"] = float(np.mean([out[f"zero_shot/{n}"] for n in es.names]))
    return out


def evaluate(run: Run) -> Dict[str, float]:
    """Held-out recall@k and --eval zero-shot accuracy; logged and returned."""
    result = {**recall_at(run), **zero_shot(run)}
    if result:
        logger.info("evaluation: %s", ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
    return result
