"""How far zeroshot.images.preprocess is from the CLIP and ruCLIP two-step references, on real images.

The references (written with PIL alone, independent of the runtime):

- CLIP / open_clip: torchvision ``Resize(S, BICUBIC)`` + ``CenterCrop(S)``: the shorter side
  to S, the longer to int(S * long / short), the crop at int(round((new - S) / 2));
- ruCLIP: ``RandomResizedCrop(S, scale=(1, 1), ratio=(1, 1))``: the central square at
  (long - short) // 2, then a bilinear resize.

They are compared with ``preprocess`` configured as ``resize_center_crop`` + bicubic and
``crop_square`` + bilinear, in 0..255 units, on already-decoded images (the
runtime's JPEG draft decoding is a separate step). Prints a Markdown table.
``tests/test_preprocess_golden.py`` pins the same comparison on generated images.

Usage: ``python -m train.experiments.preprocess_reference [IMAGES_DIR] [--sizes 224 384]``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
from PIL import Image

from zeroshot.command import make_parser, parse_args
from zeroshot.images import preprocess
from zeroshot.manifest import ImageConfig
from zeroshot.limits import CALIBRATION_DIR

logger = logging.getLogger(__name__)

DEV_IMAGES = CALIBRATION_DIR  # the dev set's images


def clip_reference(img: Image.Image, size: int) -> np.ndarray:
    """torchvision Resize(size, BICUBIC) + CenterCrop(size) with PIL: float32 (S, S, 3) in 0..255."""
    w, h = img.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = img.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32)


def ruclip_reference(img: Image.Image, size: int) -> np.ndarray:
    """The central square at integer offsets, then a bilinear resize: float32 (S, S, 3) in 0..255."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.BILINEAR), dtype=np.float32)


def runtime_pixels(img: Image.Image, size: int, resize: str, interpolation: str) -> np.ndarray:
    """preprocess() with mean 0 and std 1/255, i.e. its pixels in 0..255 units: float32 (S, S, 3)."""
    cfg = ImageConfig(input="pixel_values", output="image_embeds", size=size, resize=resize,
                      interpolation=interpolation, decode="exact", mean=[0.0] * 3, std=[1 / 255.0] * 3)
    return preprocess(img, cfg, size).transpose(1, 2, 0)


REFERENCES = {"clip": ("resize_center_crop", "bicubic", clip_reference),
              "ruclip": ("crop_square", "bilinear", ruclip_reference)}


def compare(paths: List[Path], size: int, resize: str, interpolation: str,
            reference: Callable[[Image.Image, int], np.ndarray]) -> List[float]:
    """[mean |diff| over images, worst image's mean |diff|, max |diff|] in 0..255 units."""
    means, peak = [], 0.0
    for path in paths:
        with Image.open(path) as raw:
            img = raw.convert("RGB")
        diff = np.abs(runtime_pixels(img, size, resize, interpolation) - reference(img, size))
        means.append(float(diff.mean()))
        peak = max(peak, float(diff.max()))
    return [float(np.mean(means)), float(np.max(means)), peak]


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.preprocess_reference", __doc__.split("\n")[0])
    parser.add_argument("images", nargs="?", type=Path, default=DEV_IMAGES, help="folder of images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    args = parse_args(parser, argv)
    paths = sorted(p for p in args.images.iterdir() if p.is_file())
    if not paths:
        raise FileNotFoundError(f"{args.images}: no images")
    sys.stdout.write("| reference | size | images | mean abs diff /255 | worst image /255 | max /255 |\n"
                     "| --- | --- | --- | --- | --- | --- |\n")
    for name, (resize, interpolation, reference) in REFERENCES.items():
        for size in args.sizes:
            mean, worst, peak = compare(paths, size, resize, interpolation, reference)
            sys.stdout.write(f"| {name} ({resize}, {interpolation}) | {size} | {len(paths)} | {mean:.3f} | "
                             f"{worst:.3f} | {peak:.0f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
