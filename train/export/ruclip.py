"""ruCLIP (ai-forever/ru-clip) checkpoints as a :class:`~train.export.source.Source` (``--from ruclip DIR``).

A ruCLIP folder holds ``config.json``, ``pytorch_model.bin`` and ``bpe.model``
(a youtokentome BPE). The model is built by ruclip's own
``ruclip.model.CLIP.from_pretrained(DIR)``; ruclip's package ``__init__``
imports youtokentome, torchvision and an old huggingface_hub (none of which
install beside our torch 2.13 / Python 3.11), so ``ruclip/model.py`` — which
imports only torch and numpy — is loaded from the installed ``ruclip`` package
by file. Everything else follows ruclip's ``RuCLIPProcessor``:

- text: lower-cased, youtokentome BPE ids cut to ``context_length - 2``, BOS 2
  and EOS 3 around them, zero-padded to ``context_length`` (77); the text
  tower pools at the EOS position. The BPE is converted to a ``tokenizers``
  JSON by :mod:`train.yttm_tokenizer` (ids proven identical to youtokentome's).
  With youtokentome at hand (in this Python, or a CPython 3.8 named by
  ``$ZEROSHOT_YTTM_PYTHON``) the export tokenizes with
  youtokentome itself, so the id check compares against the original;
- images: ``RandomResizedCrop(size, scale=(1, 1), ratio=(1, 1))``, which for
  any image is the central square of the shorter side resized bilinearly:
  the runtime's ``crop_square`` + ``bilinear``; mean/std from the config (CLIP's by default).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from zeroshot.manifest import TokenizerConfig, read_section
from zeroshot.text import Tokenizer

from ..contract import hf_tokenizer_config
from ..yttm_tokenizer import convert, read_yttm, to_hf_tokenizer
from .source import OPENAI_MEAN, OPENAI_STD, Batch, Source, _Call, _require_file

logger = logging.getLogger(__name__)

YTTM_PYTHON_ENV = "ZEROSHOT_YTTM_PYTHON"
_YTTM_SCRIPT = """
import json, sys
import youtokentome as yttm
texts = json.load(open(sys.argv[2], encoding="utf-8"))
ids = yttm.BPE(sys.argv[1]).encode(texts, output_type=yttm.OutputType.ID, dropout_prob=0.0)
json.dump(ids, sys.stdout)
"""


def ruclip_model_class() -> Any:
    """``ruclip.model.CLIP`` from the installed ruclip package, without running ruclip/__init__.py."""
    spec = importlib.util.find_spec("ruclip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the ruclip package is not installed (pip install --no-deps ruclip==0.0.2; "
                                  "see requirements-nodeps.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model.py"
    module_spec = importlib.util.spec_from_file_location("ruclip_model", str(path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.CLIP


def tokenizer_cfg(bpe: Path, context: int) -> Dict[str, Any]:
    """The manifest's text.tokenizer section for ruCLIP (special ids from the BPE file)."""
    _, pad, bos, eos = read_yttm(bpe).specials
    return hf_tokenizer_config(max(pad, 0), context, True, bos_id=bos, eos_id=eos, lowercase=True,
                               add_special_tokens=False)


def yttm_encoder(bpe: Path, python: Optional[str]) -> Optional[Any]:
    """texts -> youtokentome's raw ids (lower-cased inputs expected), or None when youtokentome is unavailable.

    In this Python if youtokentome imports, else in ``python`` (a CPython with youtokentome).
    """
    try:
        import youtokentome as yttm

        model = yttm.BPE(str(bpe))
        return lambda texts: model.encode(list(texts), output_type=yttm.OutputType.ID, dropout_prob=0.0)
    except ImportError:
        pass
    if not python:
        return None

    def encode(texts: Sequence[str]) -> List[List[int]]:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "texts.json"
            data.write_text(json.dumps(list(texts), ensure_ascii=False), encoding="utf-8")
            proc = subprocess.run([python, "-c", _YTTM_SCRIPT, str(bpe), str(data)], capture_output=True,
                                  text=True, encoding="utf-8")
        if proc.returncode != 0:
            raise RuntimeError(f"{python}: youtokentome failed on {bpe}: {proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout)

    return encode


def ruclip_batch(raw: Sequence[List[int]], cfg: Dict[str, Any]) -> Batch:
    """RuCLIPProcessor.encode_text on youtokentome ids: [bos] + ids[:ctx-2] + [eos], zero-padded; (ids, mask)."""
    ctx = int(cfg["context_length"])
    ids = np.full((len(raw), ctx), cfg["pad_id"], dtype=np.int64)
    mask = np.zeros((len(raw), ctx), dtype=np.int64)
    for row, seq in enumerate(raw):
        full = [cfg["bos_id"]] + list(seq)[:ctx - 2] + [cfg["eos_id"]]
        ids[row, :len(full)] = full
        mask[row, :len(full)] = 1
    return ids, mask


def encode_text_at_eos(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """ruclip's ``CLIP.encode_text`` with the EOS position found by an int32 argmax.

    ruclip pools at ``torch.where(ids == eos_id)[1]``, which exports as NonZero and
    breaks the gather when a row has no EOS (or two); the first EOS by argmax is
    the same position for every row the tokenizer makes (exactly one EOS) and
    keeps the graph's shapes fixed. The export checks it against ``encode_text``.
    """
    x = model.token_embedding(ids).type(model.dtype) + model.positional_embedding.type(model.dtype)
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x).type(model.dtype)
    eos = (ids == model.eos_id).to(torch.int32).argmax(dim=1)
    return x[torch.arange(x.shape[0]), eos] @ model.text_projection


def load_ruclip(folder: Path, yttm_python: Optional[str] = None) -> Source:
    """``ruclip.model.CLIP.from_pretrained(folder)`` with its ``bpe.model`` converted for the runtime."""
    folder = _require_file(Path(folder), "ruCLIP folder")
    config_path = _require_file(folder / "config.json", "ruCLIP config.json")
    _require_file(folder / "pytorch_model.bin", "ruCLIP weights (pytorch_model.bin)")
    bpe = _require_file(folder / "bpe.model", "ruCLIP youtokentome tokenizer (bpe.model)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model = ruclip_model_class().from_pretrained(str(folder)).eval()
    cfg = tokenizer_cfg(bpe, int(config["context_length"]))
    if cfg["eos_id"] != model.eos_id:
        raise ValueError(f"{bpe}: EOS id {cfg['eos_id']}, but the model pools at id {model.eos_id}")
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / "tokenizer.json"
        to_hf_tokenizer(read_yttm(bpe), bpe).save(str(converted))
        runtime_tok = Tokenizer(converted, read_section(TokenizerConfig, cfg, "text.tokenizer"))
    original = yttm_encoder(bpe, yttm_python or os.environ.get(YTTM_PYTHON_ENV))
    if original is None:
        logger.warning("%s: youtokentome is not available (it has wheels for CPython <= 3.8 only; set "
                       "%s to such a Python): token ids come from the converted tokenizer, whose identity "
                       "with youtokentome tests/test_ruclip.py proves on a model trained by youtokentome", bpe,
                       YTTM_PYTHON_ENV)

    def tokenize(texts: Sequence[str]) -> Batch:
        if original is None:
            return runtime_tok.batch(texts)
        return ruclip_batch(original([t.lower() for t in texts]), cfg)

    def reference(texts: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            return model.encode_text(torch.from_numpy(tokenize(texts)[0])).float().numpy()

    size = int(config["image_resolution"])
    image_cfg = {"size": size, "resize": "crop_square", "decode": "exact", "interpolation": "bilinear",
                 "mean": [float(v) for v in config.get("mean") or OPENAI_MEAN],
                 "std": [float(v) for v in config.get("std") or OPENAI_STD]}
    return Source(name=f"ruclip:{folder.name}", family="ruclip",
                  image_module=_Call(model, lambda m, px: m.encode_image(px)),
                  text_module=_Call(model, encode_text_at_eos),
                  text_uses_mask=False, fixed_length=True, tokenize=tokenize, reference_text=reference,
                  save_tokenizer=lambda path: convert(bpe, path), tokenizer_cfg=cfg, image_cfg=image_cfg,
                  logit_scale=float(model.logit_scale.detach().exp()), token_embedding=lambda: model.token_embedding,
                  info={"folder": folder.name, "token_ids_reference": "youtokentome" if original is not None
                        else "converted tokenizer (youtokentome unavailable)"})


TINY_RUCLIP = {"embed_dim": 16, "image_resolution": 32, "vision_layers": 2, "vision_width": 64,
               "vision_patch_size": 8, "context_length": 77, "vocab_size": 3000, "transformer_width": 32,
               "transformer_heads": 2, "transformer_layers": 2}
RUCLIP_VIT_B_32_384 = {"embed_dim": 512, "image_resolution": 384, "vision_layers": 12, "vision_width": 768,
                       "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408,
                       "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12}


def save_random_ruclip(folder: Path, bpe_model: Path, config: Dict[str, Any], seed: int = 0) -> Path:
    """A ruCLIP folder with random weights: config.json, pytorch_model.bin (ruclip's CLIP) and ``bpe_model``.

    The vocabulary must cover the BPE model's ids.
    """
    vocab = read_yttm(bpe_model).vocab_size
    if config["vocab_size"] < vocab:
        raise ValueError(f"{bpe_model}: {vocab} tokens, more than the model's vocab_size {config['vocab_size']}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    clip = ruclip_model_class()
    model = clip(**config)
    with torch.no_grad():  # ruclip initialises some tensors with torch.empty; make every weight finite
        for name, param in model.named_parameters():
            if not torch.isfinite(param).all() or name.endswith("in_proj_bias"):
                param.normal_(std=0.02)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({**config, "mean": OPENAI_MEAN, "std": OPENAI_STD}, indent=2),
                                        encoding="utf-8")
    (folder / "bpe.model").write_bytes(Path(bpe_model).read_bytes())
    return folder

