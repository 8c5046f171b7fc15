"""Image decoding and preprocessing, written once: prediction, evaluation and the exporters' checks share it.

:func:`load_image` turns any file into an RGB ``PIL.Image`` (EXIF orientation
applied when it can be read, malformed metadata skipped, alpha composited on
white, 16-bit and float modes rescaled) or raises ``ImageError`` naming the
file. How a JPEG is decoded is the manifest's ``image.decode``: ``exact``
decodes every pixel, as the checkpoint's own pipeline does (``Image.open`` +
``load``); ``draft`` decodes at a reduced DCT scale (Pillow's draft mode) when
the image is more than twice the target size, which is faster and changes the
pixels. What a decode will hold in memory (:func:`decoded_pixels`) counts a
progressive JPEG's full-size coefficient buffer. :func:`preprocess` turns an
RGB image into the float32 CHW array an image encoder takes, configured by the
manifest's ``image`` section: for an exported checkpoint, its own resize, crop
and normalisation step by step. The same functions serve prediction,
evaluation and the exporters' checks.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
from PIL import Image

from .manifest import DECODE_MODES, ImageConfig
from .resources import PixelBudget

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
# JPEG segments skipped when Pillow cannot parse a file's metadata: APP1..APP13 and APP15
METADATA_MARKERS = frozenset(range(0xE1, 0xEE)) | {0xEF}
ORIENTATION_TAG = 0x0112
TRANSPOSE = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
             6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}

Decoded = Tuple[Optional[np.ndarray], Optional[str]]  # (float32 (3, S, S) pixels, None) or (None, message)

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


def _coefficient_pixels(img: Image.Image) -> int:
    """What a progressive JPEG's decoder holds besides its output, in RGB pixels (3 bytes each).

    libjpeg keeps every DCT coefficient of the full-size image (2 bytes per
    sample, each component at its sampling factors) until the last scan, at
    any draft scale; a baseline JPEG is decoded in strips and holds none.
    Call before :meth:`Image.draft` (it needs the full size). 0 for other files.
    """
    if img.format not in DRAFT_FORMATS or not img.info.get("progressive"):
        return 0
    layers = getattr(img, "layer", None) or [(None, 1, 1, None)] * len(img.getbands())
    h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    width, height = img.size
    blocks = sum(-(-width * h // (8 * h_max)) * -(-height * v // (8 * v_max)) for _, h, v, _ in layers)
    return blocks * 64 * 2 // 3


def _strip_metadata(data: bytes) -> Tuple[bytes, Optional[bytes]]:
    """A JPEG's bytes without its metadata segments (APP1..APP13 and APP15: EXIF, XMP, ICC, MPF, ...)
    and its raw EXIF block ("Exif\\0\\0..."; None if it has none). JFIF (APP0) and Adobe (APP14, which
    says how CMYK is stored) stay. ``data`` unchanged when its segments cannot be walked."""
    if data[:2] != b"\xff\xd8":
        return data, None
    kept, exif, pos = [data[:2]], None, 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan (image data follows) or end of image
            break
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if end <= pos + 3 or end > len(data):
            return data, None
        if marker in METADATA_MARKERS:
            if exif is None and data[pos + 4:pos + 10] == b"Exif\x00\x00":
                exif = data[pos + 4:end]
        else:
            kept.append(data[pos:end])
        pos = end
    return b"".join(kept) + data[pos:], exif


def _open(path: Path) -> Tuple[Image.Image, Optional[str]]:
    """``Image.open(path)`` (lazy), and a note when it only opened without the file's metadata.

    A JPEG whose metadata Pillow cannot parse (a malformed EXIF block makes
    Image.open itself fail) is opened again without its metadata segments;
    its raw EXIF block stays in ``info["exif"]`` for the orientation.
    """
    try:
        return Image.open(path), None
    except Exception as exc:  # Pillow raises many types for broken files
        with open(path, "rb") as handle:
            raw = handle.read() if handle.read(2) == b"\xff\xd8" else b""  # only a JPEG is read whole
        data, exif = _strip_metadata(b"\xff\xd8" + raw)
        if not raw or len(data) == len(raw) + 2:  # not a JPEG, or no metadata to leave out
            raise
        try:
            img = Image.open(io.BytesIO(data))
        except Exception:
            raise exc from None
        if exif is not None:
            img.info["exif"] = exif
        return img, f"{path}: malformed metadata ({type(exc).__name__}: {exc}); pixels decoded without it"


def orientation(img: Image.Image) -> int:
    """The EXIF orientation of ``img``, 1..8 (1 when there is none or it cannot be read)."""
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block: the pixels are still good
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(img: Image.Image) -> Image.Image:
    """``img`` turned upright as its EXIF orientation says (what ImageOps.exif_transpose does to the
    pixels, without writing the EXIF block back, which fails on malformed ones)."""
    method = TRANSPOSE.get(orientation(img))
    return img if method is None else img.transpose(method)


@dataclass
class _Opened:
    """An image opened for decoding: ``pixels`` it will hold (its size after draft mode plus
    :func:`_coefficient_pixels`), its ``size`` in the file, and a ``note`` from :func:`_open`."""

    img: Image.Image
    pixels: int
    size: Tuple[int, int]
    note: Optional[str]


@contextmanager
def _open_draft(path: Path, target: int, decode: str = DRAFT, warn: bool = False) -> Iterator[_Opened]:
    """Open ``path`` lazily (header only), warnings off, JPEG/MPO set to decode at reduced size if ``decode``
    says so (:func:`_draft_wanted`). ``warn``: log when an ``exact`` decode has to be reduced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img, note = _open(path)
        with img:
            size, held = img.size, _coefficient_pixels(img)
            if _draft_wanted(img, decode):
                if decode == EXACT and warn:
                    logger.warning("%s: %dx%d JPEG is over %d pixels: decoded at reduced size (draft mode)",
                                   path, img.size[0], img.size[1], MAX_DECODE_PIXELS)
                img.draft("RGB", (target, target))
            yield _Opened(img, int(img.size[0]) * int(img.size[1]) + held, size, note)


def load_image(path: Path, target: int, decode: str = DRAFT) -> Image.Image:
    """Decode ``path`` into an RGB image whose shorter side is about >= ``target``.

    ``decode`` is the manifest's ``image.decode``. ``exact``: every pixel, as
    ``Image.open(path)`` gives them (a JPEG over MAX_DECODE_PIXELS is still
    reduced, with a warning). ``draft`` (the default model's): JPEGs (and MPO,
    the multi-picture JPEG of phone cameras) are decoded through draft mode at
    the smallest DCT scale that keeps both sides >= ``target``. The first frame
    of an animation is used; EXIF orientation is applied when it can be read,
    and malformed metadata is skipped (logged). Raises ImageError (with the
    path and the reason) for anything that cannot be decoded or would need more
    than MAX_DECODE_PIXELS pixels (a progressive JPEG's full-size coefficient
    buffer counted), ValueError for an unknown ``decode``.
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"image decode policy {decode!r}: expected one of {DECODE_MODES}")
    try:
        with _open_draft(path, target, decode, warn=True) as opened:
            img = opened.img
            if opened.pixels > MAX_DECODE_PIXELS:
                kind = " progressive" if img.info.get("progressive") else ""
                raise ImageError(f"{path}: {opened.size[0]}x{opened.size[1]}{kind} {img.format} image is too large "
                                 f"to decode safely: {opened.pixels} pixels in memory, limit {MAX_DECODE_PIXELS}")
            if opened.note:
                logger.warning("%s", opened.note)
            img.load()
            return _to_rgb(apply_orientation(img))
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise ImageError(f"{path}: cannot decode image: {type(exc).__name__}: {exc}") from exc


def decoded_pixels(path: Path, target: int, decode: str = DRAFT) -> int:
    """Pixels :func:`load_image` will hold for ``path`` under ``decode`` (after draft mode, a progressive
    JPEG's coefficient buffer counted), from the header only.

    0 if the header cannot be read (load_image then raises the ImageError).
    """
    try:
        with _open_draft(path, target, decode) as opened:
            return opened.pixels
    except Exception:  # Pillow raises many types for broken files
        return 0


def decode_one(path: Path, cfg: ImageConfig, size: int, pixels: Optional[PixelBudget] = None) -> Decoded:
    """(float32 (3, size, size) array, None) for a good image, (None, message) for a bad one.

    Holds the image's decoded pixel count in ``pixels`` (if given) while it decodes.
    """
    try:
        with pixels.hold(decoded_pixels(path, size, cfg.decode)) if pixels is not None else nullcontext():
            return preprocess(load_image(path, size, cfg.decode), cfg, size), None
    except ImageError as exc:
        return None, str(exc)
    except Exception as exc:  # a bug or an exotic file (MemoryError too) must not stop the run
        return None, f"{path}: cannot preprocess image: {type(exc).__name__}: {exc}"


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
