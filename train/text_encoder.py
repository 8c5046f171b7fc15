"""The default text encoder: a Russian class name -> a distribution over the 1000 ImageNet classes.

``ConceptTextEncoder`` runs USE-m (train/use_m.py) on the prompt, compares the
embedding with every entry of the concept bank (train/concepts.py), keeps each
concept's best entry, and mixes the concepts' ImageNet distributions with a
softmax over the ``top_k`` best concepts. The bank is baked into the ONNX
graph, so the runtime sees an ordinary text encoder whose output is scored
against the image encoder's ImageNet probabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from zeroshot.text import Tokenizer

from .concepts import ConceptBank
from .contract import ATTENTION_MASK, INPUT_IDS, token_feeds, tokenizer
from .onnx_compat import OPSET, finalize_onnx
from .use_m import UseM, sp_model_path

logger = logging.getLogger(__name__)

OUTPUT_NAME = "class_weights"
EMBEDDING_NAME = "name_embedding"  # the prompt's unit USE-m vector: the concept bank matches names on it
PARITY_TOLERANCE = 1e-4


class ConceptTextEncoder(nn.Module):
    """input_ids, attention_mask int64 (B, L) -> (class_weights float32 (B, 1000), rows sum to 1;
    name_embedding float32 (B, 512), the prompt's unit USE-m vector)."""

    def __init__(self, use: UseM, entries: np.ndarray, index: np.ndarray, distributions: np.ndarray,
                 scale: float, top_k: int) -> None:
        super().__init__()
        self.use = use
        self.register_buffer("entries", torch.from_numpy(entries.astype(np.float32)))
        self.register_buffer("index", torch.from_numpy(index.astype(np.int64)))
        self.register_buffer("distributions", torch.from_numpy(distributions.astype(np.float32)))
        self.scale = float(scale)
        self.top_k = int(min(top_k, index.shape[0]))

    def concept_similarities(self, query: torch.Tensor) -> torch.Tensor:
        """(B, 512) unit vectors -> (B, K) best cosine of each concept's entries."""
        sims = query @ self.entries.T
        sentinel = torch.full_like(sims[:, :1], -1.0)
        sims = torch.cat([sims, sentinel], dim=1)
        return sims[:, self.index].amax(dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        query = self.use(input_ids, attention_mask)
        return self.mix_concepts(query), query

    def mix_concepts(self, query: torch.Tensor) -> torch.Tensor:
        """(B, 512) USE-m vectors -> (B, 1000) class weights: softmax over the top_k concepts, mixed."""
        logits = self.scale * self.concept_similarities(query)
        kth = torch.topk(logits, self.top_k, dim=1).values[:, -1:]
        logits = torch.where(logits >= kth, logits, torch.full_like(logits, -1e9))
        return torch.softmax(logits, dim=1) @ self.distributions


def build_text_encoder(bank: ConceptBank, entries: np.ndarray, scale: float, top_k: int) -> ConceptTextEncoder:
    """The torch module for ``bank`` whose entry embeddings are ``entries`` (N, 512)."""
    return ConceptTextEncoder(UseM().eval(), entries, bank.entry_index(), bank.distributions, scale, top_k).eval()


def embed_texts(texts: Sequence[str], batch: int = 256) -> np.ndarray:
    """USE-m embeddings float32 (N, 512) of ``texts`` through the torch port (runtime tokenization)."""
    tok = tokenizer(sp_model_path())
    model = UseM().eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            feeds = token_feeds(tok, texts[start:start + batch])
            out.append(model(torch.from_numpy(feeds[INPUT_IDS]), torch.from_numpy(feeds[ATTENTION_MASK])).numpy())
    return np.concatenate(out).astype(np.float32)


def export_text_encoder(module: ConceptTextEncoder, out_path: Path, tok: Tokenizer,
                        check_texts: List[str]) -> Dict[str, float]:
    """Export to ONNX (opset 17, IR <= 9) and validate against torch; returns the validation numbers.

    ``tok``: the runtime's Tokenizer as the manifest configures it; the check
    texts are tokenized by it. Raises ValueError if onnxruntime and torch
    differ by more than PARITY_TOLERANCE.
    """
    import onnxruntime as ort

    feeds = token_feeds(tok, check_texts)
    example = (torch.from_numpy(feeds[INPUT_IDS]), torch.from_numpy(feeds[ATTENTION_MASK]))
    torch.onnx.export(module, example, str(out_path), dynamo=False, opset_version=OPSET,
                      input_names=[INPUT_IDS, ATTENTION_MASK], output_names=[OUTPUT_NAME, EMBEDDING_NAME],
                      dynamic_axes={INPUT_IDS: {0: "batch", 1: "length"}, ATTENTION_MASK: {0: "batch", 1: "length"},
                                    OUTPUT_NAME: {0: "batch"}, EMBEDDING_NAME: {0: "batch"}})
    opset, ir_version = finalize_onnx(out_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the validation numbers go into the manifest: same on any core count
    session = ort.InferenceSession(str(out_path), sess_options=opts, providers=["CPUExecutionProvider"])
    got, got_names = session.run([OUTPUT_NAME, EMBEDDING_NAME], feeds)
    with torch.no_grad():
        want, want_names = (t.numpy() for t in module(*example))
    diff = float(max(np.abs(got - want).max(), np.abs(got_names - want_names).max()))
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    if diff > PARITY_TOLERANCE:
        raise ValueError(f"{out_path}: onnxruntime differs from torch by {diff:.2e} > {PARITY_TOLERANCE:.0e}")
    logger.info("text encoder %s: max |torch - onnxruntime| %.2e (class weights and name embeddings), top-1 "
                "agreement %.3f", out_path, diff, agree)
    return {"max_abs_diff": diff, "tolerance": PARITY_TOLERANCE, "top1_agreement": agree,
            "opset": opset, "ir_version": ir_version, "check_texts": len(check_texts)}
