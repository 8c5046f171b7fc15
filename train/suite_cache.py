"""The runtime's encoder outputs of every tuning-suite set, per rung, computed once and kept on disk.

A knob sweep (train/tune_suite.py) changes only what happens after the encoders, so it needs each set's
image outputs once per rung and each class's prompt vectors once per template. Both come from the model
folder's own ONNX graphs through the runtime (``zeroshot.encoders.Model`` with the rung as its variant,
images decoded and preprocessed by ``zeroshot.pipeline.decode_one`` at the rung's size), so a cached
output is what predict.py computes for that image.

Layout under the cache folder (``/tmp/suite_cache`` by default, never the repository):

- ``images/<encoder sha256[:16]>-<size>/<set>-<listing digest>.npz``: ``probs`` float32 (N, D) (the
  ``image.output`` scored against the class vectors), ``features`` float32 (N, F) (``features_output``),
  ``valid`` bool (N,) (False for an image that cannot be decoded: zeros, as in the pipeline);
  ``...-mirror.npz`` the same for the horizontally mirrored pixels, made only when asked for;
- ``text/<text encoder sha256[:16]>/<set>-<template digest>.npy``: float32 (C, D), one template's prompt
  of every class.

The listing digest covers the set's image names and sizes, so an edited set is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from zeroshot.datasets import Dataset
from zeroshot.encoders import Model
from zeroshot.pipeline import Progress, decode_one

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/tmp/suite_cache")
BATCH = 16


@dataclass
class ImageOutputs:
    """One set's image-encoder outputs: probs float32 (N, D), features float32 (N, F), valid bool (N,)."""

    probs: np.ndarray
    features: np.ndarray
    valid: np.ndarray


def digest(parts: Sequence[str]) -> str:
    """A 16-hex-digit sha256 of ``parts`` joined by newlines."""
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def listing_digest(ds: Dataset) -> str:
    """The digest of a dataset's image names and byte sizes (changes when an image is added, removed or edited)."""
    return digest([f"{p.name}\t{p.stat().st_size}" for p in ds.images])


def encode_set(model: Model, ds: Dataset, mirror: bool, batch: int = BATCH) -> ImageOutputs:
    """Every image of ``ds`` through the model's image encoder as the pipeline runs it (optionally mirrored)."""
    cfg = model.image_cfg
    size = cfg.size
    n = len(ds.images)
    probs: Optional[np.ndarray] = None
    feats: Optional[np.ndarray] = None
    valid = np.zeros(n, dtype=bool)
    progress = Progress(f"{ds.name} ({model.variant or 'default'}{', mirrored' if mirror else ''})", n)
    for start in range(0, n, batch):
        decoded = [decode_one(p, cfg, size) for p in ds.images[start:start + batch]]
        ok = [i for i, (arr, err) in enumerate(decoded) if arr is not None]
        for _, err in decoded:
            if err is not None:
                logger.warning("%s", err)
        if ok:
            pixels = np.stack([decoded[i][0] for i in ok])
            vecs, f = model.encode_images(np.ascontiguousarray(pixels[..., ::-1]) if mirror else pixels)
            if probs is None:
                probs = np.zeros((n, vecs.shape[1]), np.float32)
                feats = np.zeros((n, f.shape[1]), np.float32)
            rows = start + np.asarray(ok)
            probs[rows], feats[rows], valid[rows] = vecs, f, True
        progress.update(min(start + batch, n))
    if probs is None or feats is None:
        raise ValueError(f"{ds.root}: no image of the set could be decoded")
    return ImageOutputs(probs, feats, valid)


class SuiteCache:
    """Encoder outputs of suite sets per rung and prompt vectors per template, on disk under ``folder``."""

    def __init__(self, folder: Path, model_dir: Path, threads: int = 1) -> None:
        self.folder, self.model_dir, self.threads = Path(folder), Path(model_dir), threads
        self.models: Dict[Optional[str], Model] = {}
        self.memory: Dict[Any, Any] = {}

    def model(self, rung: Optional[str]) -> Model:
        """The runtime's Model at ``rung`` (a manifest variant; None: the defaults), loaded once."""
        if rung not in self.models:
            self.models[rung] = Model(self.model_dir, threads=self.threads, variant=rung, spinning=False)
        return self.models[rung]

    def _encoder_key(self, rung: Optional[str]) -> str:
        from zeroshot.manifest import load_manifest

        manifest = load_manifest(self.model_dir)
        return f"{manifest.file('image_encoder', rung).sha256[:16]}-{manifest.image_for(rung).size}"

    def images(self, ds: Dataset, rung: Optional[str], mirror: bool = False) -> ImageOutputs:
        """The image outputs of ``ds`` at ``rung`` (mirrored pixels if ``mirror``), encoded on the first call."""
        key = ("img", ds.name, rung, mirror)
        if key in self.memory:
            return self.memory[key]
        path = (self.folder / "images" / self._encoder_key(rung)
                / f"{ds.name}-{listing_digest(ds)}{'-mirror' if mirror else ''}.npz")
        if not path.is_file():
            started = time.monotonic()
            outs = encode_set(self.model(rung), ds, mirror)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, probs=outs.probs, features=outs.features, valid=outs.valid)
            tmp.replace(path)
            logger.info("cached %s: %d images in %.1f s", path, len(ds.images), time.monotonic() - started)
        data = np.load(path)
        self.memory[key] = ImageOutputs(data["probs"], data["features"], data["valid"])
        return self.memory[key]

    def _text(self, kind: str, ds: Dataset, parts: Sequence[Any], encode: Callable[[Model], np.ndarray]) -> np.ndarray:
        """``encode(model)`` of the text encoder (no variant), kept under ``<kind>/<encoder sha>/`` by ``parts``."""
        key = (kind, ds.name, *parts)
        if key in self.memory:
            return self.memory[key]
        model = self.model(None)
        sha = model.manifest.files["text_encoder"].sha256[:16]
        text = json.dumps([*parts, model.text_cfg.normalize, ds.classes], ensure_ascii=False)
        path = self.folder / kind / sha / f"{ds.name}-{digest([text])}.npy"
        if not path.is_file():
            vecs = encode(model)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npy")
            np.save(tmp, vecs)
            tmp.replace(path)
        self.memory[key] = np.load(path)
        return self.memory[key]

    def template(self, ds: Dataset, template: str) -> np.ndarray:
        """float32 (C, D): ``template``'s prompt of every class of ``ds`` through the text encoder."""
        return self._text("text", ds, [template], lambda m: m.template_vectors(ds.classes, [template])[0])

    def names(self, ds: Dataset) -> np.ndarray:
        """float32 (C, T): every class name's concept-bank embedding (``Model.name_vectors``)."""
        return self._text("names", ds, [], lambda m: m.name_vectors(ds.classes))

    def templates(self, ds: Dataset, templates: Sequence[str]) -> np.ndarray:
        """float32 (T, C, D): :meth:`template` of each of ``templates``."""
        return np.stack([self.template(ds, t) for t in templates])


def fill(cache: SuiteCache, datasets: List[Dataset], rungs: Sequence[Optional[str]], mirror: bool) -> None:
    """Encode every dataset at every rung (and mirrored, if ``mirror``) that the cache lacks."""
    for rung in rungs:
        for ds in datasets:
            cache.images(ds, rung)
            if mirror:
                cache.images(ds, rung, mirror=True)
