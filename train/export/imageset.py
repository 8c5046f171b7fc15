"""The image files end-to-end parity runs on: real photos in every size and file kind a user feeds.

:func:`build_image_set` writes, deterministically from a few source photos (the
dev set's) and a seeded noise texture, one file of each kind in :data:`KINDS`
relative to the model's input side S: smaller than S, 1-2x, 2-8x, a
contest-size photo, a 4000x3000 JPEG, a progressive JPEG, a CMYK JPEG, a
greyscale JPEG, a palette PNG with a transparent colour, a 16-bit greyscale
PNG, a WebP and a JPEG whose EXIF orientation says "rotate 90 degrees". The
same Pillow writes the same bytes, so tests regenerate the set and compare
each file's sha256 with the golden fixtures' record.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
NOISE_STD = 6.0     # grey levels of texture over the upscaled photo, so large files have fine detail to decode


def _photo(source: Path, width: int, height: int, seed: int) -> Image.Image:
    """The source photo (full decode, RGB) resized to ``width`` x ``height`` with seeded texture: RGB image."""
    with Image.open(source) as img:
        rgb = img.convert("RGB")
    arr = np.asarray(rgb.resize((width, height), Image.BICUBIC), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, NOISE_STD, size=arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8), "RGB")


def _jpeg(img: Image.Image, path: Path, **options: object) -> None:
    img.save(path, "JPEG", quality=90, **options)


def _palette_alpha(img: Image.Image, path: Path) -> None:
    """A 64-colour palette PNG whose most frequent colour is transparent."""
    pal = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    counts = np.bincount(np.asarray(pal).ravel(), minlength=64)
    pal.save(path, "PNG", transparency=int(counts.argmax()))


def _png16(img: Image.Image, path: Path) -> None:
    """A 16-bit greyscale PNG (mode I;16, values 0..65535)."""
    grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(path, "PNG")  # uint16 -> mode I;16


def _exif_rotated(img: Image.Image, path: Path) -> None:
    """A JPEG stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=90, exif=exif.tobytes())


Writer = Callable[[Image.Image, Path], None]


def kinds(size: int) -> List[Tuple[str, str, Tuple[int, int], Writer]]:
    """(kind, file suffix, (width, height), writer) of every file, for input side ``size``.

    Odd size differences exercise the crops' rounding (round vs floor).
    """
    s = int(size)
    return [
        ("smaller", ".jpg", (s * 3 // 4 + 3, s * 3 // 4), _jpeg),
        ("1-2x", ".jpg", (s * 3 // 2 + 1, 2 * s), _jpeg),
        ("2-8x", ".jpg", (s * 20 // 3 + 1, 5 * s), _jpeg),
        ("contest", ".jpg", (500, 375), _jpeg),
        ("4000x3000", ".jpg", (4000, 3000), _jpeg),
        ("progressive", ".jpg", (1201, 900), lambda img, path: _jpeg(img, path, progressive=True)),
        ("cmyk", ".jpg", (800, 601), lambda img, path: _jpeg(img.convert("CMYK"), path)),
        ("greyscale", ".jpg", (640, 481), lambda img, path: _jpeg(img.convert("L"), path)),
        ("palette_alpha", ".png", (301, 225), _palette_alpha),
        ("png16", ".png", (400, 301), _png16),
        ("webp", ".webp", (641, 480), lambda img, path: img.save(path, "WEBP", quality=85)),
        ("exif_rotated", ".jpg", (480, 641), _exif_rotated),
    ]


KINDS = tuple(k for k, _, _, _ in kinds(224))


def sha256_bytes(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_image_set(photos: Sequence[Path], size: int, out: Path) -> List[Dict[str, str]]:
    """Write one file per kind into ``out``; returns [{"file", "kind", "source", "sha256"}] in KINDS order.

    ``photos``: source photos, used in turn; ``size``: the model's input side.
    """
    photos = list(photos)
    if not photos:
        raise ValueError("the parity image set needs at least one source photo")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (kind, suffix, (width, height), write) in enumerate(kinds(size)):
        source = Path(photos[i % len(photos)])
        # the exif-rotated file is stored sideways: the photo is made upright at the displayed size
        path = out / f"{i:02d}_{kind}{suffix}"
        write(_photo(source, width, height, seed=i), path)
        records.append({"file": path.name, "kind": kind, "source": source.name, "sha256": sha256_bytes(path)})
    logger.info("parity image set: %d files in %s", len(records), out)
    return records
