"""Random-weight checkpoints in each family's own on-disk format, built from configs in code (no downloads).

Used by the tests (tiny sizes, seconds) and by the planner (full-size
ViT-B/32, ViT-B/16, XLM-R-base: real sizes and speeds without weights).
Every builder writes exactly what a user would have on disk: an open_clip
config JSON + state-dict file, ``save_pretrained`` folders with
``tokenizer.json``, a Multilingual-CLIP folder.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

logger = logging.getLogger(__name__)

_ALPHABET = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяabcdefghijklmnopqrstuvwxyz"
TINY_VISION = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}
VIT_B_32 = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32}
VIT_B_16 = {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16}
CLIP_TEXT_BASE = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
TINY_CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
XLMR_BASE = {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 514}
TINY_XLMR = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 80}


def corpus(seed: int, n: int = 500) -> List[str]:
    """Generated Russian/Latin pseudo-words plus every fourth real name of train/vocab, for small tokenizers."""
    from .corpus import vocabulary_names

    rnd = random.Random(seed)
    words = [" ".join("".join(rnd.choice(_ALPHABET) for _ in range(rnd.randint(2, 9)))
                      for _ in range(rnd.randint(1, 4))) for _ in range(n)]
    return words + vocabulary_names()[::4]


def train_unigram_tokenizer(vocab_size: int, seed: int) -> Any:
    """A ``tokenizers`` Unigram model with XLM-R's special tokens (<s> 0, <pad> 1, </s> 2, <unk> 3)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_trained_unigram(vocab_size, seed))


@functools.lru_cache(maxsize=4)
def _trained_unigram(vocab_size: int, seed: int) -> str:
    """The JSON of a trained Unigram tokenizer (cached: training takes seconds)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(corpus(seed), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok.to_str()


def save_xlmr(folder: Path, sizes: Dict[str, int], seed: int = 0, tokenizer_vocab: Optional[int] = 500) -> Path:
    """A random XLM-R ``save_pretrained`` folder (config, weights, and a tokenizer trained here unless None)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    torch.manual_seed(seed)
    folder = Path(folder)
    tok = None
    if tokenizer_vocab:
        tok = XLMRobertaTokenizerFast(tokenizer_object=train_unigram_tokenizer(tokenizer_vocab, seed),
                                      bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                      cls_token="<s>", sep_token="</s>", mask_token="<unk>")
    vocab = sizes.get("vocab_size") or len(tok)
    config = XLMRobertaConfig(**{**sizes, "vocab_size": vocab}, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    if tok is not None:
        tok.save_pretrained(str(folder))
    return folder


def save_open_clip(folder: Path, vision: Dict[str, Any], text: Dict[str, Any], embed_dim: int,
                   name: str = "tiny-clip", seed: int = 0) -> Dict[str, Path]:
    """An open_clip config ``folder/name.json`` and a random state dict ``folder/name.pt`` (open_clip's format)."""
    from . import torchvision_shim

    torchvision_shim.install()
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text}
    cfg_path = folder / f"{name}.json"
    cfg_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained_image=False, pretrained_text=False)
    with torch.no_grad():  # a trained-like scale; random init leaves log(1/0.07)
        model.logit_scale.fill_(4.6)
    ckpt = folder / f"{name}.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return {"config": cfg_path, "checkpoint": ckpt}


def save_open_clip_xlmr(folder: Path, vision: Dict[str, Any], xlmr: Dict[str, int], embed_dim: int,
                        name: str = "tiny-xlmr-clip", seed: int = 0,
                        tokenizer_vocab: Optional[int] = 500) -> Dict[str, Path]:
    """open_clip with an HF XLM-R text tower (mean pooling, linear projection), all on disk."""
    text_dir = save_xlmr(Path(folder) / f"{name}-text", xlmr, seed, tokenizer_vocab)
    text = {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir), "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear", "context_length": min(77, xlmr["max_position_embeddings"] - 3)}
    return save_open_clip(folder, vision, text, embed_dim, name, seed)


def _clip_image_processor(size: int, crop: bool) -> Any:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    if crop:
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return SiglipImageProcessor(size={"height": size, "width": size})


def save_hf_clip(folder: Path, seed: int = 0, tiny: bool = True, image_size: int = 32, patch_size: int = 8) -> Path:
    """A random transformers ``CLIPModel`` folder with a CLIP BPE tokenizer (open_clip's vocabulary)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    from .sources import clip_bpe_tokenizer_json
    from . import torchvision_shim

    torchvision_shim.install()
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(seed)
    folder = Path(folder)
    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 0}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": patch_size}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(folder))
    simple = SimpleTokenizer()
    backend = clip_bpe_tokenizer_json(simple)
    tok = CLIPTokenizerFast(tokenizer_object=backend, bos_token="<start_of_text>", eos_token="<end_of_text>",
                            unk_token="<end_of_text>", pad_token="!")
    tok.model_max_length = 77
    tok.save_pretrained(str(folder))
    _clip_image_processor(image_size, True).save_pretrained(str(folder))
    return folder


def save_hf_siglip(folder: Path, seed: int = 0, sizes: Optional[Dict[str, Any]] = None,
                   tokenizer_vocab: int = 500) -> Path:
    """A random transformers ``SiglipModel`` folder with a small Unigram tokenizer (pad 1, eos 2)."""
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    folder = Path(folder)
    sizes = sizes or {}
    tok = PreTrainedTokenizerFast(tokenizer_object=train_unigram_tokenizer(tokenizer_vocab, seed),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": 1, "eos_token_id": 2,
            "bos_token_id": 0, **sizes.get("text", {})}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8, **sizes.get("vision", {})}
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    _clip_image_processor(vision["image_size"], False).save_pretrained(str(folder))
    return folder


def save_mclip(folder: Path, base: Path, image_dim: int, seed: int = 0) -> Path:
    """A Multilingual-CLIP folder (``MultilingualCLIP.save_pretrained``) over the local base text model ``base``."""
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from transformers import AutoConfig, AutoTokenizer

    torch.manual_seed(seed)
    hidden = AutoConfig.from_pretrained(str(base)).hidden_size
    model = MultilingualCLIP(MCLIPConfig(modelBase=str(base), transformerDimSize=hidden, imageDimSize=image_dim))
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(folder))
    return Path(folder)


SOURCE_NAMES = ("open_clip", "hf_clip", "hf_siglip", "mclip", "ruclip")
# a BPE model trained by youtokentome (the only one on disk: youtokentome has no wheel for this Python)
RUCLIP_BPE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "yttm" / "bpe.model"


def save_source(name: str, folder: Path, image_size: int = 32, seed: int = 0) -> Dict[str, Optional[str]]:
    """One small random checkpoint of source ``name`` (SOURCE_NAMES) under ``folder``, in its family's format.

    Returns its ``train.export`` loading arguments (family, path, arch,
    checkpoint, image_from, mclip_base; absent ones None). ``image_size``: the
    image towers' input side (patches of 8 px at 32, else 32 px). The M-CLIP
    text tower is paired with an open_clip image tower (HF CLIP is ``hf_clip``).
    """
    folder = Path(folder)
    patch = 8 if image_size <= 64 else 32
    vision = {**TINY_VISION, "image_size": image_size, "patch_size": patch}
    args: Dict[str, Optional[str]] = dict.fromkeys(("path", "arch", "checkpoint", "image_from", "mclip_base"))
    if name == "open_clip":
        paths = save_open_clip(folder / "open_clip", vision, TINY_CLIP_TEXT, 16, seed=seed)
        return {**args, "family": "open_clip", "arch": str(paths["config"]), "checkpoint": str(paths["checkpoint"])}
    if name == "hf_clip":
        return {**args, "family": "hf", "path": str(save_hf_clip(folder / "hf_clip", seed, image_size=image_size,
                                                                 patch_size=patch))}
    if name == "hf_siglip":
        sizes = {"vision": {"image_size": image_size, "patch_size": patch}}
        return {**args, "family": "hf", "path": str(save_hf_siglip(folder / "hf_siglip", seed, sizes))}
    if name == "mclip":
        base = save_xlmr(folder / "mclip-base", TINY_XLMR, seed)
        image = save_open_clip(folder / "mclip-image", vision, TINY_CLIP_TEXT, 16, name="tiny-mclip-image", seed=seed)
        text = save_mclip(folder / "mclip", base, image_dim=16, seed=seed)
        return {**args, "family": "mclip", "path": str(text), "image_from": str(image["checkpoint"]),
                "arch": str(image["config"]), "mclip_base": str(base)}
    if name == "ruclip":
        from .ruclip import TINY_RUCLIP, save_random_ruclip

        config = {**TINY_RUCLIP, "image_resolution": image_size, "vision_patch_size": patch}
        path = save_random_ruclip(folder / "ruclip", RUCLIP_BPE, config, seed)
        return {**args, "family": "ruclip", "path": str(path)}
    raise ValueError(f"unknown source {name!r}; expected one of {SOURCE_NAMES}")


def export_args(spec: Dict[str, Optional[str]]) -> List[str]:
    """``python -m train.export`` arguments that load ``spec`` (from :func:`save_source`)."""
    args = ["--from", str(spec["family"])] + ([str(spec["path"])] if spec.get("path") else [])
    for key in ("arch", "checkpoint", "image_from", "mclip_base"):
        if spec.get(key):
            args += [f"--{key.replace('_', '-')}", str(spec[key])]
    return args


def load_spec(spec: Dict[str, Optional[str]]) -> Any:
    """The :class:`~train.export.source.Source` of a :func:`save_source` checkpoint."""
    from .sources import load_source

    path = lambda key: Path(spec[key]) if spec.get(key) else None  # noqa: E731
    return load_source(str(spec["family"]), path("path"), spec.get("arch"), path("checkpoint"), path("image_from"),
                       path("mclip_base"))
