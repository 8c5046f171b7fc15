"""Golden preprocessing: fixed tiny images -> exact expected tensors, computed here without Pillow's resize.

The parity tests compare torch with onnxruntime on tensors that zeroshot.images made,
so a bug in the preprocessing itself (crop box, channel order, mean/std, EXIF
orientation, filter) would pass them. These tests pin it against an independent
numpy reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
from PIL import Image

from zeroshot.images import crop_box, load_image, preprocess
from zeroshot.manifest import ImageConfig

MEAN = [0.1, 0.2, 0.3]        # distinct per channel, so a swapped channel or statistic shows
STD = [0.5, 0.25, 0.125]
EXIF_ORIENTATION = 0x0112


def cfg(resize: str = "center_crop") -> ImageConfig:
    return ImageConfig(input="x", output="y", size=2, resize=resize, interpolation="bilinear", decode="draft",
                       mean=MEAN, std=STD)


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8/float (H, W, 3) in 0..255 -> float64 (3, H, W): (x / 255 - mean) / std per channel, RGB order."""
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    return ((x - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


def triangle_weights(n_in: int, start: float, end: float, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased bilinear (triangle) resample of [start, end) onto n_out pixels.

    Output pixel i samples the source at center = start + (i + 0.5) * scale; the
    triangle is widened by the scale when shrinking; weights are renormalised
    over the source pixels inside the image.
    """
    scale = (end - start) / n_out
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = start + (i + 0.5) * scale
        for j in range(n_in):
            weights[i, j] = max(0.0, 1.0 - abs(j + 0.5 - center) / support)
        weights[i] /= weights[i].sum()
    return weights


def reference(rgb: np.ndarray, box: Tuple[float, float, float, float], size: int) -> np.ndarray:
    """The expected (3, size, size) tensor: separable triangle resample of ``box``, then normalise."""
    height, width = rgb.shape[:2]
    rows = triangle_weights(height, box[1], box[3], size)
    cols = triangle_weights(width, box[0], box[2], size)
    resized = np.einsum("ih,hwc,jw->ijc", rows, rgb.astype(np.float64), cols)
    return normalise(resized)


def one_level() -> np.ndarray:
    """Per-channel size of one 8-bit grey level after normalisation (Pillow rounds to uint8 per pass)."""
    return (1.0 / 255.0 / np.array(STD))[:, None, None]


def test_crop_box_is_the_central_square() -> None:
    assert crop_box(7, 4, "center_crop") == (1.5, 0.0, 5.5, 4.0)
    assert crop_box(4, 9, "center_crop") == (0.0, 2.5, 4.0, 6.5)
    assert crop_box(7, 4, "squash") == (0.0, 0.0, 7.0, 4.0)


def test_channel_order_and_mean_std_on_a_flat_image() -> None:
    img = Image.new("RGB", (5, 3), (200, 100, 50))
    got = preprocess(img, cfg(), 2)
    assert got.shape == (3, 2, 2) and got.dtype == np.float32
    want = [(200 / 255 - 0.1) / 0.5, (100 / 255 - 0.2) / 0.25, (50 / 255 - 0.3) / 0.125]
    np.testing.assert_allclose(got, np.broadcast_to(np.array(want)[:, None, None], (3, 2, 2)), atol=1e-5)


def test_half_pixel_crop_at_scale_one_is_the_mean_of_two_columns() -> None:
    """7x4 -> box (1.5, 0, 5.5, 4) -> 4x4: each output column is the mean of source columns i+1 and i+2."""
    rgb = np.zeros((4, 7, 3), np.uint8)
    rgb[..., 0] = np.arange(7)[None, :] * 20          # R rises to the right
    rgb[..., 1] = np.arange(4)[:, None] * 40          # G rises downwards
    rgb[..., 2] = 8
    got = preprocess(Image.fromarray(rgb, "RGB"), cfg(), 4)
    cols = (rgb[:, 1:5].astype(np.float64) + rgb[:, 2:6]) / 2.0
    np.testing.assert_allclose(got, normalise(cols), atol=1e-5)


@pytest.mark.parametrize("resize, shape, size", [("center_crop", (7, 9), 4), ("center_crop", (13, 6), 5),
                                                 ("squash", (7, 9), 4), ("center_crop", (5, 5), 8)])
def test_random_image_matches_the_numpy_reference(resize: str, shape: Tuple[int, int], size: int) -> None:
    rgb = np.random.default_rng(sum(shape) + size).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    got = preprocess(Image.fromarray(rgb, "RGB"), cfg(resize), size)
    want = reference(rgb, crop_box(shape[1], shape[0], resize), size)
    assert got.shape == want.shape == (3, size, size)
    assert (np.abs(got - want) <= 1.01 * one_level()).all(), np.abs(got - want).max()


def exif_png(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    img = Image.fromarray(rgb, "RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    img.save(path, exif=exif.tobytes())
    return path


# what the viewer shows for each EXIF orientation, written with numpy alone
UPRIGHT = {1: lambda a: a, 3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, k=-1), 8: lambda a: np.rot90(a, k=1),
           2: lambda a: a[:, ::-1]}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied_before_the_crop(tmp_path: Path, orientation: int) -> None:
    rgb = np.random.default_rng(orientation).integers(0, 256, size=(2, 4, 3), dtype=np.uint8)  # stored 4 wide, 2 tall
    path = exif_png(tmp_path / f"o{orientation}.png", rgb, orientation)
    img = load_image(path, 2)
    upright = np.ascontiguousarray(UPRIGHT[orientation](rgb))
    assert np.array_equal(np.asarray(img), upright)
    got = preprocess(img, cfg(), 2)
    top, left = (upright.shape[0] - 2) // 2, (upright.shape[1] - 2) // 2      # even sides: an exact crop
    np.testing.assert_allclose(got, normalise(upright[top:top + 2, left:left + 2]), atol=1e-5)
