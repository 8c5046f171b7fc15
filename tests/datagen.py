"""Generated datasets in the judge's layout, for tests (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 200), (40, 210, 210)]


def photo(rng: np.random.Generator, color: Sequence[int], size=(64, 48)) -> Image.Image:
    """A noisy image dominated by ``color``."""
    base = np.array(color, dtype=np.float32)[None, None, :]
    noise = rng.normal(0, 25, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def make_dataset(root: Path, name: str, classes: List[str], n_images: int, seed: int = 0,
                 ext: str = ".jpg") -> Dict[str, int]:
    """Write root/name/{classes.json, img/*} with ``n_images`` images; returns {id: color index}."""
    rng = np.random.default_rng(seed)
    ds = root / name
    (ds / "img").mkdir(parents=True, exist_ok=True)
    (ds / "classes.json").write_text(json.dumps(classes, ensure_ascii=False), encoding="utf-8")
    truth = {}
    for i in range(n_images):
        label = i % len(classes)
        image_id = f"img{i:03d}.part"  # a dot inside the id
        photo(rng, COLORS[label % len(COLORS)], (40 + 7 * (i % 5), 30 + 5 * (i % 7))).save(ds / "img" / f"{image_id}{ext}")
        truth[image_id] = label
    return truth
