"""Export a torch image tower to ONNX and prove it matches torch on real, runtime-preprocessed images.

The graph maps ``pixel_values`` float32 (B, 3, S, S), preprocessed by
:func:`zeroshot.images.preprocess` with the manifest's image section, to
``image_embeds`` float32 (B, D).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .parity import MIN_COSINE, cosine_record, run_session, run_torch, torch_export

logger = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeds"


def _feeds(pixels: np.ndarray, batch: int) -> List[Dict[str, np.ndarray]]:
    return [{INPUT_NAME: pixels[s:s + batch].astype(np.float32)} for s in range(0, len(pixels), batch)]


def export_image_encoder(module: nn.Module, out_path: Path, pixels: np.ndarray, batch: int = 16,
                         min_cosine: Optional[float] = MIN_COSINE) -> Dict[str, Any]:
    """Write ``module`` as ONNX (dynamic batch, fixed size) and validate it on ``pixels`` (N, 3, S, S).

    Returns the validation record; raises ValueError if a row's cosine with
    torch is below ``min_cosine``.
    """
    example = (torch.from_numpy(pixels[:2].astype(np.float32)),)
    record: Dict[str, Any] = torch_export(module, example, out_path, [INPUT_NAME], OUTPUT_NAME,
                                          {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    feeds = _feeds(pixels, batch)
    record.update(cosine_record(run_torch(module, feeds, [INPUT_NAME]), run_session(out_path, feeds, OUTPUT_NAME),
                                "image embeddings", Path(out_path), min_cosine))
    record["threshold"] = min_cosine
    logger.info("image encoder %s: %.1f MB, cosine with torch min %.6f over %d images", out_path,
                Path(out_path).stat().st_size / 1e6, record["min_cosine"], record["rows"])
    return record


def onnx_image_embeddings(path: Path, pixels: np.ndarray, batch: int = 16, threads: int = 1) -> np.ndarray:
    """float32 (N, D) embeddings of an exported image encoder."""
    return run_session(path, _feeds(pixels, batch), OUTPUT_NAME, threads)


def torch_image_embeddings(module: nn.Module, pixels: np.ndarray, batch: int = 16) -> np.ndarray:
    """float32 (N, D) embeddings of the torch image module."""
    return run_torch(module, _feeds(pixels, batch), [INPUT_NAME])


__all__ = ["export_image_encoder", "onnx_image_embeddings", "torch_image_embeddings", "INPUT_NAME",
           "OUTPUT_NAME", "MIN_COSINE"]
