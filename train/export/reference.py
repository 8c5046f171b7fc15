"""The checkpoint's own pipeline on image files: run in the reference environment (``make reference-env``).

``.venv-ref/bin/python -m train.export.reference REQUEST.json OUT.npz`` (from
the repository root) loads a checkpoint the way its library's users do and
runs its own preprocessing and encoders, with a real torchvision:

- ``open_clip``: ``open_clip.create_model_and_transforms(ARCH, pretrained=FILE)``:
  ``preprocess``, ``encode_image``, ``get_tokenizer`` + ``encode_text``;
- ``hf``: ``CLIPModel`` / ``SiglipModel.from_pretrained`` with
  ``AutoImageProcessor`` (``CLIPImageProcessor`` / ``SiglipImageProcessor``) and
  ``AutoTokenizer`` (SigLIP padded to max_length, as its model card says);
- ``mclip``: ``MultilingualCLIP.from_pretrained(...)(texts, tokenizer)`` for text; the
  image tower's own library (open_clip or HF CLIP, as above) for images;
- ``ruclip``: ``ruclip.model.CLIP`` and ``RuCLIPProcessor``'s ``image_transform``
  (processor.py loaded by file, youtokentome stood in: it has no wheel for this
  Python and only the image side is used); text from the token ids in the request
  (youtokentome's, or the converted tokenizer's where youtokentome is missing,
  proven identical by tests/test_ruclip.py) through ruclip's own ``encode_text``.

**The decoding rule.** Every image is opened as a user opens it
(``Image.open(path)``, every pixel decoded), then turned upright by its EXIF
orientation and into RGB by the runtime's rule (zeroshot.images: alpha on
white, 16-bit rescaled, CMYK and palette converted) before the source's own
transform. The runtime does both for every photo; the reference pipelines do
neither (open_clip converts after resizing, so a palette image would be resized
with NEAREST), so without the rule those differences would be counted as noise.

The request (JSON): ``family``, ``path``, ``arch``, ``checkpoint``,
``image_from``, ``mclip_base`` (as ``train.export``'s options), ``images`` (file
paths), ``pixel_images`` (how many of the first images also return their pixel
tensors), ``prompts`` (strings) or ``token_ids`` (ruCLIP). The output (npz):
``pixels`` float32 (K, 3, S, S), ``image`` float32 (N, D), ``text`` float32 (P, D),
``versions`` (a JSON string).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from zeroshot.command import make_parser, parse_args

from ..contract import ATTENTION_MASK, INPUT_IDS

logger = logging.getLogger(__name__)

BATCH = 16

Transform = Callable[[Image.Image], Any]          # PIL RGB image -> torch float tensor (3, S, S)
Encoder = Callable[[Any], Any]                    # torch batch -> torch embeddings


def reference_image(path: Path) -> Image.Image:
    """``Image.open(path)`` fully decoded, then the stated rule: EXIF orientation, the runtime's RGB conversion."""
    from zeroshot.images import _to_rgb

    with Image.open(path) as img:
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


@functools.lru_cache(maxsize=2)
def _open_clip_model(arch: str, checkpoint: str) -> Tuple[Any, Transform, Any]:
    """(model, preprocess, tokenizer) from open_clip's own factory."""
    import open_clip

    name = arch
    if arch.endswith(".json"):
        open_clip.add_model_config(arch)
        name = Path(arch).stem
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@functools.lru_cache(maxsize=2)
def _hf_model(folder: str) -> Tuple[Any, Transform, Any, str]:
    """(model, transform, tokenizer, model_type) of a transformers CLIP/SigLIP folder."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    kind = AutoConfig.from_pretrained(folder).model_type
    model = {"clip": CLIPModel, "siglip": SiglipModel}[kind].from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    return model, lambda img: processor(images=[img], return_tensors="pt")["pixel_values"][0], \
        AutoTokenizer.from_pretrained(folder), kind


def _image_side(req: Dict[str, Any]) -> Tuple[Transform, Encoder]:
    """(transform, image encoder) of the request's image tower."""
    family = req["family"]
    if family == "open_clip" or (family == "mclip" and req.get("arch")):
        ckpt = req["checkpoint"] if family == "open_clip" else req["image_from"]
        model, preprocess, _ = _open_clip_model(req["arch"], ckpt)
        return preprocess, model.encode_image
    if family in ("hf", "mclip"):
        model, transform, _, _ = _hf_model(req["path"] if family == "hf" else req["image_from"])
        return transform, lambda px: model.get_image_features(pixel_values=px)
    if family == "ruclip":
        model, processor = _ruclip(req["path"])
        return processor.image_transform, model.encode_image
    raise ValueError(f"unknown family {family!r}")


def _text_side(req: Dict[str, Any]) -> Callable[[], np.ndarray]:
    """A function giving the prompts' embeddings float32 (P, D) through the checkpoint's own text path."""
    import torch

    family, prompts = req["family"], list(req.get("prompts") or [])
    if family == "open_clip":
        model, _, tokenizer = _open_clip_model(req["arch"], req["checkpoint"])
        return lambda: model.encode_text(tokenizer(prompts)).float().numpy()
    if family == "hf":
        model, _, tok, kind = _hf_model(req["path"])
        padding = "max_length" if kind == "siglip" else True
        context = int(model.config.text_config.max_position_embeddings)

        def hf_text() -> np.ndarray:
            enc = tok(prompts, padding=padding, truncation=True, max_length=context, return_tensors="pt")
            feeds = {INPUT_IDS: enc[INPUT_IDS]}
            if kind != "siglip":
                feeds[ATTENTION_MASK] = enc[ATTENTION_MASK]
            return model.get_text_features(**feeds).float().numpy()
        return hf_text
    if family == "mclip":
        from multilingual_clip.pt_multilingual_clip import MultilingualCLIP
        from transformers import AutoTokenizer

        kwargs = {"modelBase": req["mclip_base"]} if req.get("mclip_base") else {}
        model = MultilingualCLIP.from_pretrained(req["path"], **kwargs).eval()
        tok = AutoTokenizer.from_pretrained(req["path"])
        return lambda: model(prompts, tok).float().numpy()
    if family == "ruclip":
        model, _ = _ruclip(req["path"])
        ids = torch.tensor(np.asarray(req["token_ids"], dtype=np.int64))
        return lambda: model.encode_text(ids).float().numpy()
    raise ValueError(f"unknown family {family!r}")


def _load_by_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def _ruclip(folder: str) -> Tuple[Any, Any]:
    """(ruclip.model.CLIP, RuCLIPProcessor) of a ruCLIP folder (ruclip/__init__ needs an old huggingface_hub)."""
    spec = importlib.util.find_spec("ruclip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ruclip is not installed in the reference environment (make reference-env)")
    package = Path(list(spec.submodule_search_locations)[0])
    if "youtokentome" not in sys.modules:  # no wheel for this Python; the image transform does not use it
        stand_in = types.ModuleType("youtokentome")
        stand_in.BPE = lambda path: None
        sys.modules["youtokentome"] = stand_in
    clip = _load_by_file("ruclip_model", package / "model.py").CLIP.from_pretrained(folder).eval()
    processor = _load_by_file("ruclip_processor", package / "processor.py").RuCLIPProcessor.from_pretrained(folder)
    return clip, processor


def run(req: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """The reference outputs of a request: {"pixels", "image", "text"} (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    transform, encode = _image_side(req)
    paths = [Path(p) for p in req["images"]]
    keep = int(req.get("pixel_images", 0))
    pixels: List[np.ndarray] = []
    embeds: List[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(paths), BATCH):
            batch = torch.stack([transform(reference_image(p)) for p in paths[start:start + BATCH]])
            pixels += [t.numpy() for t in batch[:max(0, keep - start)]]
            embeds.append(encode(batch).float().numpy())
        text = _text_side(req)() if req.get("prompts") or req.get("token_ids") else np.zeros((0, 0), np.float32)
    size = int(pixels[0].shape[-1]) if pixels else 0
    return {"pixels": np.stack(pixels) if pixels else np.zeros((0, 3, size, size), np.float32),
            "image": np.concatenate(embeds) if embeds else np.zeros((0, 0), np.float32),
            "text": np.asarray(text, dtype=np.float32)}


def versions() -> Dict[str, str]:
    """Versions of the libraries whose pipelines ran."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "pillow", "open_clip_torch", "transformers", "multilingual-clip", "ruclip"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.export.reference", __doc__.split("\n")[0])
    parser.add_argument("request", type=Path, help="request JSON (see the module docstring)")
    parser.add_argument("out", type=Path, help="output .npz")
    args = parse_args(parser, argv)
    req = json.loads(args.request.read_text(encoding="utf-8"))
    import torchvision  # noqa: F401  (the real one: this environment exists for it)

    if getattr(torchvision, "IS_STAND_IN", False):
        raise RuntimeError("train.export.reference needs a real torchvision (make reference-env)")
    out = run(req)
    np.savez(args.out, **out, versions=np.asarray(json.dumps(versions())))
    logger.info("reference: %d images, %d pixel tensors, %d prompts -> %s", len(out["image"]), len(out["pixels"]),
                len(out["text"]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
