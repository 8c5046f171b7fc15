"""Golden test: zeroshot.images.preprocess against independent two-step references (PIL only,
train/experiments/preprocess_reference.py, which measures the same on the dev set).

- ``resize_center_crop`` + bicubic must be CLIP's (torchvision ``Resize(S, BICUBIC)`` then
  ``CenterCrop(S)``): resize the shorter side to S, the longer to int(S * long / short),
  crop at int(round((new - S) / 2)).
- ``crop_square`` + bilinear must be ruCLIP's (``RandomResizedCrop(S, scale=(1, 1),
  ratio=(1, 1))``, whose fallback is the central square at (long - short) // 2): crop, then resize.

The runtime repeats both steps (no one-resize shortcut, no reducing gap), so its
pixels equal the references' exactly, at every size ratio (up to float rounding).
tests/test_export_parity.py checks the same against the real libraries.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from train.experiments.preprocess_reference import clip_reference, ruclip_reference
from train.experiments.preprocess_reference import runtime_pixels as ours
from zeroshot.images import preprocess
from zeroshot.manifest import ImageConfig

SIZES = [(300, 201), (201, 300), (640, 480), (333, 500), (225, 224), (500, 101), (97, 131), (224, 224)]


def edge_rich(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random colour field with thin sharp lines (where a misplaced crop shows)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(max(height // 16, 2), max(width // 16, 2), 3)).astype(np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(20):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        end = (x0 + int(rng.integers(-80, 80)), y0 + int(rng.integers(-80, 80)))
        draw.line((x0, y0) + end, fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=int(rng.integers(1, 4)))
    return img


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("resize, interpolation, reference", [
    ("resize_center_crop", "bicubic", clip_reference), ("crop_square", "bilinear", ruclip_reference)])
def test_preprocess_matches_the_two_step_reference(size, resize, interpolation, reference) -> None:
    for i, (w, h) in enumerate(SIZES):
        img = edge_rich(w, h, seed=i)
        diff = np.abs(ours(img, size, resize, interpolation) - reference(img, size))
        assert diff.max() <= 1e-3, (w, h, float(diff.max()))


def test_clip_normalisation_uses_the_manifest_mean_and_std() -> None:
    img = Image.new("RGB", (50, 40), (200, 100, 50))
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    out = preprocess(img, ImageConfig(input="x", output="y", size=16, resize="center_crop", interpolation="bicubic",
                                 decode="exact", mean=mean, std=std), 16)
    want = (np.array([200, 100, 50]) / 255.0 - np.array(mean)) / np.array(std)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    assert np.allclose(out[:, 5, 7], want, atol=1e-5)
