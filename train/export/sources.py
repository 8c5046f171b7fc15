"""Loading a CLIP-family checkpoint through its own public API into one :class:`Source`.

Families (``--from``):

- ``open_clip``: ``open_clip.create_model(ARCH, pretrained=FILE)`` with a built-in
  architecture name or a config JSON (registered with ``open_clip.add_model_config``);
  towers with open_clip's own text transformer (tokenizer: open_clip's BPE,
  converted to a ``tokenizers`` JSON here) or a Hugging Face text tower (its
  ``hf_model_name`` / ``hf_tokenizer_name`` must be local folders: nothing downloads);
- ``hf``: a ``save_pretrained`` folder of transformers ``CLIPModel`` or ``SiglipModel``
  with its tokenizer and ``preprocessor_config.json``;
- ``mclip``: a Multilingual-CLIP folder (``multilingual_clip.pt_multilingual_clip.MultilingualCLIP``:
  an HF text model + linear projection) with the image tower of ``--image-from``
  (an HF CLIP folder, or an open_clip checkpoint with ``--arch``);
- ``ruclip``: an ai-forever ruCLIP folder (config.json, pytorch_model.bin, bpe.model),
  see :mod:`train.export.ruclip`.

A Source holds torch modules with the pooling inside (ids [, mask] -> embeds;
pixels -> embeds), the checkpoint's own tokenizer and end-to-end text
embedding (the reference the export is checked against), the tokenizer JSON
for the runtime and the manifest's image/tokenizer/score constants.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..contract import ATTENTION_MASK, INPUT_IDS, hf_tokenizer_config
from .source import OPENAI_MEAN, OPENAI_STD, Batch, Source, _Call, _require_file

logger = logging.getLogger(__name__)

FAMILIES = ("open_clip", "hf", "mclip", "ruclip")
# PIL resample codes used by transformers' image processors
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def _np(batch: Any) -> np.ndarray:
    return np.asarray(batch.numpy() if hasattr(batch, "numpy") else batch, dtype=np.int64)


# ---------------------------------------------------------------- tokenizer JSON files

def clip_bpe_tokenizer_json(tok: Any) -> Any:
    """open_clip's SimpleTokenizer (byte-level BPE, lower-cased) as a ``tokenizers.Tokenizer``.

    The same conversion transformers applies to OpenAI CLIP's vocabulary
    (CLIPConverter): NFC, whitespace collapse, lower-case; the open_clip split
    pattern; byte-level BPE with the '</w>' end-of-word suffix; start/end
    tokens added around every text. ftfy's mojibake repair is not reproduced
    (it changes nothing in clean text; the export checks ids on 300+ strings).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    merges = [pair for pair, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    sot, eot = tok.decoder[tok.sot_token_id], tok.decoder[tok.eot_token_id]
    bpe = models.BPE(vocab=dict(tok.encoder), merges=merges, continuing_subword_prefix="",
                     end_of_word_suffix="</w>", fuse_unk=False)
    out = Tokenizer(bpe)
    out.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(), normalizers.Lowercase()])
    out.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens([sot, eot])
    out.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, tok.sot_token_id), (eot, tok.eot_token_id)])
    return out


def _save_backend(backend: Any, path: Path) -> None:
    """Write a ``tokenizers.Tokenizer`` without padding/truncation (the manifest sets those)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    copy.save(str(path))


def _hf_fast_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{folder}: the tokenizer has no fast (tokenizers JSON) form that the runtime can read")
    return tok


def _hf_tokenizer_cfg(tok: Any, context: int, pad_to_context: bool) -> Dict[str, Any]:
    return hf_tokenizer_config(int(tok.pad_token_id or 0), context, pad_to_context)


# ---------------------------------------------------------------- open_clip

def _open_clip_module(arch: str) -> Tuple[Any, str]:
    """Import open_clip (torchvision stand-ins if needed) and resolve ``arch`` to a registered name."""
    from . import torchvision_shim

    torchvision_shim.install()
    import open_clip

    if arch.endswith(".json"):
        path = _require_file(Path(arch), "open_clip model config JSON")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise ValueError(f"{path}: an open_clip model config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
        open_clip.add_model_config(path)
        return open_clip, path.stem
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f"open_clip has no architecture {arch!r}; pass a built-in name or a config .json")
    return open_clip, arch


def _open_clip_image_cfg(model: Any, name: str) -> Dict[str, Any]:
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = pp.get("size", model.visual.image_size)
    size = size if isinstance(size, int) else size[0]
    resize_mode = pp.get("resize_mode", "shortest")
    modes = {"shortest": "resize_center_crop", "squash": "squash"}
    if resize_mode not in modes:
        raise ValueError(f"open_clip model {name}: resize_mode {resize_mode!r} is not supported by the runtime "
                         f"(supported: {sorted(modes)})")
    return {"size": int(size), "resize": modes[resize_mode], "decode": "exact",
            "interpolation": pp.get("interpolation", "bicubic"),
            "mean": [float(v) for v in pp.get("mean", OPENAI_MEAN)],
            "std": [float(v) for v in pp.get("std", OPENAI_STD)]}


def load_open_clip(arch: str, checkpoint: Path) -> Source:
    """``open_clip.create_model(arch, pretrained=checkpoint)`` and ``open_clip.get_tokenizer(arch)``."""
    checkpoint = _require_file(Path(checkpoint), "open_clip checkpoint")
    open_clip, name = _open_clip_module(arch)
    model = open_clip.create_model(name, pretrained=str(checkpoint), pretrained_image=False,
                                   pretrained_text=False).eval()
    tokenizer = open_clip.get_tokenizer(name)
    context = int(tokenizer.context_length)
    scale = float(model.logit_scale.detach().exp())
    bias = float(model.logit_bias.detach()) if getattr(model, "logit_bias", None) is not None else None

    def tokenize(texts: Sequence[str]) -> Batch:
        ids = _np(tokenizer(list(texts)))
        return ids, (ids != pad_id).astype(np.int64)

    def reference(texts: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            return model.encode_text(tokenizer(list(texts))).float().numpy()

    hf_text = hasattr(model, "text") and hasattr(model.text, "transformer")
    if hf_text:
        hf_tok = tokenizer.tokenizer
        pad_id = int(hf_tok.pad_token_id)
        cfg = _hf_tokenizer_cfg(hf_tok, context, True)
        save = lambda path: _save_backend(hf_tok.backend_tokenizer, path)  # noqa: E731
        unk_id, specials = hf_tok.unk_token_id, list(hf_tok.all_special_ids)

        def embedding() -> nn.Embedding:
            return model.text.transformer.get_input_embeddings()
    else:
        pad_id = 0
        cfg = hf_tokenizer_config(0, context, True)
        save = lambda path: clip_bpe_tokenizer_json(tokenizer).save(str(path))  # noqa: E731
        unk_id, specials = None, [int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)]

        def embedding() -> nn.Embedding:
            return model.token_embedding
    return Source(name=f"open_clip:{name}", family="open_clip",
                  image_module=_Call(model, lambda m, px: m.encode_image(px)),
                  text_module=_Call(model, lambda m, ids: m.encode_text(ids)),
                  text_uses_mask=False, fixed_length=True, tokenize=tokenize, reference_text=reference,
                  save_tokenizer=save, tokenizer_cfg=cfg, image_cfg=_open_clip_image_cfg(model, name),
                  logit_scale=scale, logit_bias=bias, token_embedding=embedding,
                  unk_id=unk_id, special_ids=specials,
                  info={"arch": name, "checkpoint": checkpoint.name, "text_tower": "hf" if hf_text else "open_clip"})


# ---------------------------------------------------------------- transformers CLIPModel / SiglipModel

def _hf_image_cfg(folder: Path, default_size: int) -> Dict[str, Any]:
    """The manifest image section from ``preprocessor_config.json`` (CLIPImageProcessor / SiglipImageProcessor).

    ``shortest_edge`` S then ``center_crop`` S (CLIP): ``resize_center_crop_floor`` (transformers
    crops at ``(new - S) // 2``); ``height`` = ``width`` = S without a crop (SigLIP): ``squash``.
    Anything else (a crop smaller than the resize, a non-square output, no resize) is refused.
    """
    path = _require_file(folder / "preprocessor_config.json", "image processor config (preprocessor_config.json)")
    pp = json.loads(path.read_text(encoding="utf-8"))
    size = pp.get("size", default_size)
    size = size if isinstance(size, dict) else {"shortest_edge": int(size)}
    crop = pp.get("crop_size") if pp.get("do_center_crop") else None
    crop = crop if crop is None or isinstance(crop, dict) else {"height": int(crop), "width": int(crop)}
    if not pp.get("do_resize", True):
        raise ValueError(f"{path}: do_resize false: the runtime needs a fixed input size")
    if crop is not None and "shortest_edge" in size and crop["height"] == crop["width"] == size["shortest_edge"]:
        side, resize = int(size["shortest_edge"]), "resize_center_crop_floor"
    elif crop is None and "height" in size and size["height"] == size.get("width"):
        side, resize = int(size["height"]), "squash"
    else:
        raise ValueError(f"{path}: resize {size} with center crop {crop} is not supported by the runtime "
                         "(supported: shortest_edge S + crop S x S, or height = width without a crop)")
    if not pp.get("do_rescale", True) or not math.isclose(float(pp.get("rescale_factor", 1 / 255)), 1 / 255):
        raise ValueError(f"{path}: only rescale by 1/255 is supported")
    return {"size": side, "resize": resize, "decode": "exact",
            "interpolation": _PIL_RESAMPLE.get(int(pp.get("resample", 3)), "bicubic"),
            "mean": [float(v) for v in pp.get("image_mean", OPENAI_MEAN)],
            "std": [float(v) for v in pp.get("image_std", OPENAI_STD)]}


def _hf_model(folder: Path) -> Tuple[Any, str]:
    from transformers import AutoConfig, CLIPModel, SiglipModel

    _require_file(folder / "config.json", "transformers config.json")
    kind = AutoConfig.from_pretrained(str(folder)).model_type
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if kind not in classes:
        raise ValueError(f"{folder}/config.json: model_type {kind!r}; --from hf expects one of {sorted(classes)}")
    return classes[kind].from_pretrained(str(folder)).eval(), kind


def load_hf(folder: Path) -> Source:
    """``CLIPModel`` / ``SiglipModel.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)``."""
    folder = _require_file(Path(folder), "transformers save_pretrained folder")
    model, kind = _hf_model(folder)
    tok = _hf_fast_tokenizer(folder)
    siglip = kind == "siglip"
    context = int(model.config.text_config.max_position_embeddings)
    padding = "max_length" if siglip else True  # SigLIP pools the last position: it was trained padded to 64

    def tokenize(texts: Sequence[str]) -> Batch:
        enc = tok(list(texts), padding=padding, truncation=True, max_length=context, return_tensors="np")
        return _np(enc[INPUT_IDS]), _np(enc[ATTENTION_MASK])

    def text_fn(m: Any, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return m.get_text_features(input_ids=ids, attention_mask=mask)

    def reference(texts: Sequence[str]) -> np.ndarray:
        enc = tok(list(texts), padding=padding, truncation=True, max_length=context, return_tensors="pt")
        feeds = {INPUT_IDS: enc[INPUT_IDS]}
        if not siglip:
            feeds[ATTENTION_MASK] = enc[ATTENTION_MASK]
        with torch.no_grad():
            return model.get_text_features(**feeds).float().numpy()

    bias = float(model.logit_bias.detach()) if siglip else None
    return Source(name=f"hf:{folder.name}", family=f"hf-{kind}",
                  image_module=_Call(model, lambda m, px: m.get_image_features(pixel_values=px)),
                  text_module=_Call(model, text_fn), text_uses_mask=not siglip, fixed_length=siglip,
                  tokenize=tokenize, reference_text=reference,
                  save_tokenizer=lambda path: _save_backend(tok.backend_tokenizer, path),
                  tokenizer_cfg=_hf_tokenizer_cfg(tok, context, siglip),
                  image_cfg=_hf_image_cfg(folder, model.config.vision_config.image_size),
                  logit_scale=float(model.logit_scale.detach().exp()), logit_bias=bias,
                  token_embedding=lambda: model.text_model.embeddings.token_embedding,
                  unk_id=tok.unk_token_id, special_ids=list(tok.all_special_ids),
                  info={"model_type": kind, "folder": folder.name})


# ---------------------------------------------------------------- Multilingual-CLIP

def _image_tower(image_from: Path, arch: Optional[str]) -> Tuple[nn.Module, Dict[str, Any], float, str]:
    """(image module, image section, logit scale, description) of an HF CLIP folder or an open_clip checkpoint."""
    image_from = _require_file(Path(image_from), "--image-from")
    if image_from.is_dir():
        src_model, kind = _hf_model(image_from)
        return (_Call(src_model, lambda m, px: m.get_image_features(pixel_values=px)),
                _hf_image_cfg(image_from, src_model.config.vision_config.image_size),
                float(src_model.logit_scale.detach().exp()), f"hf:{image_from.name}")
    if not arch:
        raise ValueError(f"{image_from}: an open_clip checkpoint as --image-from needs --arch")
    oc = load_open_clip(arch, image_from)
    return oc.image_module, oc.image_cfg, oc.logit_scale, oc.name


def load_mclip(folder: Path, image_from: Path, arch: Optional[str] = None, base: Optional[Path] = None) -> Source:
    """``MultilingualCLIP.from_pretrained(folder)`` (text) + the image tower of ``image_from``.

    The folder's config names the base text model (``modelBase``, e.g.
    'xlm-roberta-large'); MultilingualCLIP builds it with
    ``AutoModel.from_pretrained(modelBase)``, so offline it must be a local
    folder: ``base`` (``--mclip-base DIR``) replaces the config's value.
    """
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP

    folder = _require_file(Path(folder), "Multilingual-CLIP folder")
    cfg = json.loads(_require_file(folder / "config.json", "Multilingual-CLIP config.json").read_text("utf-8"))
    base = str(base) if base is not None else cfg.get("modelBase")
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(f"{folder}/config.json: modelBase {base!r} is not a local folder; offline the base "
                                "text model (config + weights) must be on disk (pass --mclip-base DIR)")
    model = MultilingualCLIP.from_pretrained(str(folder), modelBase=base).eval()
    tok = _hf_fast_tokenizer(folder)
    context = int(model.transformer.config.max_position_embeddings) - 2 \
        if model.transformer.config.model_type in ("xlm-roberta", "roberta") else \
        int(model.transformer.config.max_position_embeddings)
    image_module, image_cfg, scale, image_name = _image_tower(image_from, arch)

    def tokenize(texts: Sequence[str]) -> Batch:
        enc = tok(list(texts), padding=True, truncation=True, max_length=context, return_tensors="np")
        return _np(enc[INPUT_IDS]), _np(enc[ATTENTION_MASK])

    def text_fn(m: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        embs = m.transformer(input_ids=ids, attention_mask=mask)[0]
        maskf = mask.to(embs.dtype)
        embs = (embs * maskf.unsqueeze(2)).sum(dim=1) / maskf.sum(dim=1)[:, None]
        return m.LinearTransformation(embs)

    def reference(texts: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            return model(list(texts), tok).float().numpy()

    return Source(name=f"mclip:{folder.name}+{image_name}", family="mclip", image_module=image_module,
                  text_module=_Call(model, text_fn), text_uses_mask=True, fixed_length=False,
                  tokenize=tokenize, reference_text=reference,
                  save_tokenizer=lambda path: _save_backend(tok.backend_tokenizer, path),
                  tokenizer_cfg=_hf_tokenizer_cfg(tok, context, False), image_cfg=image_cfg, logit_scale=scale,
                  token_embedding=lambda: model.transformer.get_input_embeddings(),
                  unk_id=tok.unk_token_id, special_ids=list(tok.all_special_ids),
                  info={"text": folder.name, "image": image_name})


def load_source(family: str, path: Optional[Path], arch: Optional[str] = None, checkpoint: Optional[Path] = None,
                image_from: Optional[Path] = None, mclip_base: Optional[Path] = None) -> Source:
    """Dispatch on ``family`` (one of FAMILIES); raises ValueError for a missing argument."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if family == "open_clip":
        if not arch or not checkpoint:
            raise ValueError("--from open_clip needs --arch NAME_OR_CONFIG_JSON and --checkpoint FILE")
        source = load_open_clip(arch, checkpoint)
    elif path is None:
        raise ValueError(f"--from {family} needs the model folder")
    elif family == "hf":
        source = load_hf(path)
    elif family == "ruclip":
        from .ruclip import load_ruclip

        source = load_ruclip(path)
    elif family == "mclip":
        if image_from is None:
            raise ValueError("--from mclip needs --image-from (an HF CLIP folder or an open_clip checkpoint)")
        source = load_mclip(path, image_from, arch, mclip_base)
    else:
        raise ValueError(f"unknown source family {family!r}; expected one of {FAMILIES}")
    absolute = lambda p: str(Path(p).resolve()) if p is not None else None  # noqa: E731
    source.origin = {"family": family, "path": absolute(path), "arch": str(Path(arch).resolve())
                     if arch and arch.endswith(".json") else arch, "checkpoint": absolute(checkpoint),
                     "image_from": absolute(image_from), "mclip_base": absolute(mclip_base)}
    return source
