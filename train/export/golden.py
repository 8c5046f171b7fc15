"""Golden fixtures of the source frameworks' own pipelines, so tests check against them without installing them.

``make parity-fixtures`` (needs the reference environment, ``make reference-env``)
runs, for each source of :data:`train.export.random_models.SOURCE_NAMES`:

1. its tiny random checkpoint (``save_source``, 32 px, seed 0), built here in the
   build environment exactly as the tests build it;
2. the parity image set (train/export/imageset.py) made from the first dev photos,
   and DEV_IMAGES further dev photos;
3. the checkpoint's own pipeline on them in the reference environment
   (train/export/reference.py): pixel tensors of the image set, image embeddings
   of all, prompt embeddings of the dev classes;

and writes ``tests/fixtures/parity/<source>.npz`` (pixels as the 8-bit values the
reference normalised, image vectors, class vectors, top-1) and ``index.json``
(the files' sha256, the checkpoints' weight fingerprints, prompts, versions).
A few hundred KB in all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import discover
from zeroshot.limits import DEVSETS_DIR
from zeroshot.manifest import ScoreConfig
from zeroshot.text import build_prompts

from ..contract import CLIP_NORMALIZE
from . import end_to_end as e2e
from .imageset import KINDS, build_image_set
from .random_models import SOURCE_NAMES, load_spec, save_source

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "parity"
IMAGE_SIZE = 32
DEV_IMAGES = 36          # dev photos beside the image set, for top-1 (embeddings only)
TEMPLATES = ["{}"]
WEIGHT_SUFFIXES = (".pt", ".bin", ".safetensors")


def weights_fingerprint(spec: Dict[str, Optional[str]]) -> str:
    """sha256 over the weight files of a checkpoint made by ``save_source`` (sorted by name, paths excluded)."""
    digest = hashlib.sha256()
    roots = {Path(v).parent if Path(v).is_file() else Path(v) for k, v in spec.items()
             if k != "family" and v and Path(v).exists()}
    files = sorted({p for root in roots for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES},
                   key=lambda p: (p.parent.name, p.name))
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def dev_photos(root: Path) -> Dict[str, Any]:
    """{"classes", "set_photos", "dev_images"} of the first dataset under ``root`` (sorted images)."""
    found, _ = discover(Path(root))
    if not found:
        raise FileNotFoundError(f"{root}: no dev datasets (the parity fixtures are made from its photos)")
    images = list(found[0].images)
    return {"classes": list(found[0].classes), "set_photos": images[:len(KINDS)],
            "dev_images": images[len(KINDS):len(KINDS) + DEV_IMAGES]}


def to_uint8(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float32 (N, 3, S, S) -> the 8-bit values they came from, uint8; raises if any is not one."""
    raw = (pixels * np.asarray(std, np.float64)[:, None, None] + np.asarray(mean, np.float64)[:, None, None]) * 255
    out = np.round(raw)
    if not np.abs(raw - out).max() < 1e-3:
        raise ValueError(f"reference pixels are not 8-bit values normalised (off by {np.abs(raw - out).max():.4g})")
    return out.astype(np.uint8)


def from_uint8(values: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (N, 3, S, S) -> float64 normalised pixels, ToTensor + Normalize's arithmetic."""
    x = values.astype(np.float64) / 255.0
    return (x - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]


def source_fixture(name: str, work: Path, photos: Dict[str, Any], python: Path) -> Dict[str, Any]:
    """Build ``name``'s checkpoint, run its reference; returns {"arrays": ..., "meta": ...}."""
    spec = save_source(name, work / "checkpoints", IMAGE_SIZE)
    source = load_spec(spec)
    set_paths = [photos["image_dir"] / r["file"] for r in photos["records"]]
    paths = set_paths + list(photos["dev_images"])
    prompts = build_prompts(photos["classes"], TEMPLATES, CLIP_NORMALIZE)
    request = dict(source.origin, images=[str(p) for p in paths], pixel_images=len(set_paths), prompts=prompts)
    if source.family == "ruclip":
        request["token_ids"] = source.tokenize(prompts)[0].tolist()
    ref = e2e.run_reference(python, request, work / f"ref-{name}")
    cfg = source.image_cfg
    classes = e2e.class_means(ref["text"], len(TEMPLATES), len(photos["classes"]))
    score = ScoreConfig(similarity="cosine", logit="linear", scale=1.0)
    arrays = {"pixels_u8": to_uint8(ref["pixels"], cfg["mean"], cfg["std"]),
              "image": ref["image"].astype(np.float32), "classes": classes,
              "top1": e2e.top1(ref["image"], classes, score).astype(np.int16)}
    meta = {"weights_sha256": weights_fingerprint(spec), "image_cfg": {k: cfg[k] for k in ("size", "resize",
            "interpolation", "mean", "std")}, "reference": ref["versions"]}
    return {"arrays": arrays, "meta": meta}


def generate(out: Path, dev_root: Path, python: Path, names: Sequence[str] = SOURCE_NAMES) -> Dict[str, Any]:
    """Write the fixtures of ``names`` into ``out``; returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    photos = dev_photos(dev_root)
    index: Dict[str, Any] = {"image_size": IMAGE_SIZE, "templates": TEMPLATES, "normalize": CLIP_NORMALIZE,
                             "classes": photos["classes"], "prompts": build_prompts(photos["classes"], TEMPLATES,
                                                                                   CLIP_NORMALIZE),
                             "set_photos": [p.name for p in photos["set_photos"]],
                             "dev_images": [p.name for p in photos["dev_images"]], "sources": {}}
    with tempfile.TemporaryDirectory(prefix="parity-fixtures-") as tmp:
        work = Path(tmp)
        photos["image_dir"] = work / "images"
        photos["records"] = index["image_set"] = build_image_set(photos["set_photos"], IMAGE_SIZE, work / "images")
        for name in names:
            fixture = source_fixture(name, work / name, photos, python)
            np.savez_compressed(out / f"{name}.npz", **fixture["arrays"])
            index["sources"][name] = fixture["meta"]
            logger.info("%s: %s (%d bytes)", name, out / f"{name}.npz", (out / f"{name}.npz").stat().st_size)
    (out / "index.json").write_text(json.dumps(index, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                    encoding="utf-8")
    return index


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.export.golden", __doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=FIXTURES, help="fixtures folder (default: %(default)s)")
    parser.add_argument("--dev-set", type=Path, default=DEVSETS_DIR, help="datasets folder whose photos are used")
    parser.add_argument("--reference-python", type=Path, default=None,
                        help="the reference environment's Python (default: .venv-ref/bin/python)")
    parser.add_argument("--sources", default=",".join(SOURCE_NAMES), help="comma list of sources")
    args = parse_args(parser, argv)
    import torch

    torch.set_num_threads(1)
    python = e2e.reference_python(args.reference_python)
    if python is None:
        raise FileNotFoundError(f"{e2e.REFERENCE_VENV}: no reference environment (make reference-env)")
    generate(args.out, args.dev_set, python, [s.strip() for s in args.sources.split(",") if s.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
