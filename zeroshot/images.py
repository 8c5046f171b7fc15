"""Image decoding and preprocessing, written once: prediction, evaluation and the exporters' checks share it.

:func:`load_image` turns any file into an RGB ``PIL.Image`` (EXIF orientation
applied, alpha composited on white, 16-bit and float modes rescaled) or raises
``ImageError`` naming the file. How a JPEG is decoded is the manifest's
``image.decode``: ``exact`` decodes every pixel, as the checkpoint's own
pipeline does (``Image.open`` + ``load``); ``draft`` decodes at a reduced DCT
scale (Pillow's draft mode) when the image is more than twice the target size,
which is faster and changes the pixels. :func:`preprocess` turns an RGB image
into the float32 CHW array an image encoder takes, configured by the manifest's
``image`` section: for an exported checkpoint, its own resize, crop and
normalisation step by step. The same functions serve prediction, evaluation
and the exporters' checks.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np
from PIL import Image, ImageOps

from .manifest import DECODE_MODES, ImageConfig

logger = logging.getLogger(__name__)

# Pillow's own decompression-bomb guard raises on large but honest images; we
# enforce our own limit on what is actually decoded (after JPEG draft mode).
Image.MAX_IMAGE_PIXELS = None
MAX_DECODE_PIXELS = 64_000_000
# File endings the tools take as images when they scan a folder (the judge's img/ folder is read whole).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Formats decoded by the JPEG decoder, which can decode at 1/2, 1/4 or 1/8 scale (draft mode);
# MPO is a JPEG with extra frames (phone cameras), which Pillow reports under its own name.
DRAFT_FORMATS = ("JPEG", "MPO")
# image.decode: every pixel (the checkpoint's own decoding) or JPEG draft mode (reduced DCT scale)
EXACT, DRAFT = DECODE_MODES

_RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


class ImageError(Exception):
    """An image file that cannot be decoded; the message names the file."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha on white, 16-bit/float rescaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        img = img.convert("I")
    if img.mode == "I":
        return img.point(lambda v: v * (1.0 / 256.0)).convert("L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if top <= 1.0 else (255.0 / 65535.0 if top > 255.0 else 1.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _draft_wanted(img: Image.Image, decode: str) -> bool:
    """Whether to decode ``img`` (header read) in draft mode under the ``decode`` policy.

    ``draft``: every JPEG/MPO. ``exact``: only a JPEG too large to decode in full
    (over MAX_DECODE_PIXELS), which would otherwise not be decoded at all.
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"image decode policy {decode!r}: expected one of {DECODE_MODES}")
    if img.format not in DRAFT_FORMATS:
        return False
    return decode == DRAFT or img.size[0] * img.size[1] > MAX_DECODE_PIXELS


@contextmanager
def _open_draft(path: Path, target: int, decode: str = DRAFT, warn: bool = False) -> Iterator[Image.Image]:
    """Open ``path`` lazily (header only), warnings off, JPEG/MPO set to decode at reduced size if ``decode`` says so.

    ``warn``: log when an ``exact`` decode has to be reduced (the image is over MAX_DECODE_PIXELS).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            if _draft_wanted(img, decode):
                if decode == EXACT and warn:
                    logger.warning("%s: %dx%d JPEG is over %d pixels: decoded at reduced size (draft mode)",
                                   path, img.size[0], img.size[1], MAX_DECODE_PIXELS)
                img.draft("RGB", (target, target))
            yield img


def load_image(path: Path, target: int, decode: str = DRAFT) -> Image.Image:
    """Decode ``path`` into an RGB image whose shorter side is about >= ``target``.

    ``decode`` is the manifest's ``image.decode``. ``exact``: every pixel, as
    ``Image.open(path)`` gives them (a JPEG over MAX_DECODE_PIXELS is still
    reduced, with a warning). ``draft`` (the default model's): JPEGs (and MPO,
    the multi-picture JPEG of phone cameras) are decoded through draft mode at
    the smallest DCT scale that keeps both sides >= ``target``. The first frame
    of an animation is used. Raises ImageError (with the path and the reason)
    for anything that cannot be decoded or would need more than
    MAX_DECODE_PIXELS pixels, ValueError for an unknown ``decode``.
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"image decode policy {decode!r}: expected one of {DECODE_MODES}")
    try:
        with _open_draft(path, target, decode, warn=True) as img:
            width, height = img.size
            if width * height > MAX_DECODE_PIXELS:
                raise ImageError(f"{path}: {width}x{height} {img.format} image is too large to decode "
                                 f"safely (limit {MAX_DECODE_PIXELS} pixels)")
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise ImageError(f"{path}: cannot decode image: {type(exc).__name__}: {exc}") from exc


def decoded_pixels(path: Path, target: int, decode: str = DRAFT) -> int:
    """Pixels :func:`load_image` will decode for ``path`` under ``decode`` (after draft mode), from the header only.

    0 if the header cannot be read (load_image then raises the ImageError).
    """
    try:
        with _open_draft(path, target, decode) as img:
            return int(img.size[0]) * int(img.size[1])
    except Exception:  # Pillow raises many types for broken files
        return 0


def crop_box(width: int, height: int, resize: str) -> Tuple[float, float, float, float]:
    """Source box (in input pixels) that one resize maps onto the output (``center_crop`` and ``squash``).

    ``center_crop`` (the default model's): the central square of the shorter
    side, centred exactly (half-pixel offsets allowed). ``squash``: the whole
    image, aspect not kept.
    """
    if resize == "squash":
        return (0.0, 0.0, float(width), float(height))
    side = float(min(width, height))
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return (left, top, left + side, top + side)


def resize_crop(img: Image.Image, resize: str, size: int, resample: int) -> Image.Image:
    """RGB image -> RGB ``size`` x ``size`` image by the manifest's ``image.resize``.

    The checkpoints' own modes repeat their pipeline's steps exactly (Pillow's
    resize with no reducing gap, as torchvision and transformers call it):

    - ``resize_center_crop`` (open_clip, OpenAI CLIP: torchvision ``Resize(size)`` +
      ``CenterCrop(size)``): the shorter side to ``size``, the longer to
      ``int(size * long / short)``, then the square at ``int(round((new - size) / 2))``;
    - ``resize_center_crop_floor`` (transformers ``CLIPImageProcessor``: ``shortest_edge``
      then ``center_crop``): the same resize, the square at ``(new - size) // 2``;
    - ``crop_square`` (ruCLIP: ``RandomResizedCrop(size, scale=(1, 1), ratio=(1, 1))``):
      the central square at ``(long - short) // 2``, then the resize;
    - ``squash`` (SigLIP, open_clip ``resize_mode='squash'``): the whole image to ``size`` x ``size``.

    ``center_crop`` (the default model's own) is one resize of the exactly centred
    square (:func:`crop_box`) with a reducing gap of 3.
    """
    width, height = img.size
    if resize == "center_crop":
        return img.resize((size, size), resample, box=crop_box(width, height, resize), reducing_gap=3.0)
    if resize == "squash":
        return img.resize((size, size), resample)
    if resize == "crop_square":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return img.crop((left, top, left + side, top + side)).resize((size, size), resample)
    if resize not in ("resize_center_crop", "resize_center_crop_floor"):
        raise ValueError(f"image.resize {resize!r} is not a resize mode")
    new_w, new_h = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    resized = img.resize((new_w, new_h), resample)
    if resize == "resize_center_crop":
        left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    else:
        left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def preprocess(img: Image.Image, cfg: ImageConfig, size: int) -> np.ndarray:
    """RGB image -> float32 array of shape (3, size, size).

    ``cfg`` is the manifest's ``image`` section (resize, interpolation, mean,
    std in 0..1 units); ``size`` is the side length (image.size, or
    image.fast_size on the cheap path). Resize and crop: :func:`resize_crop`.
    """
    resized = resize_crop(img, cfg.resize, size, _RESAMPLE[cfg.interpolation])
    arr = np.asarray(resized, dtype=np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(cfg.std, dtype=np.float32) * 255.0)
    arr = (arr - mean) * inv_std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
