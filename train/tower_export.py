"""The text tower's export (train.text_tower): the ONNX text encoder beside a copy of the frozen image encoder,
with a manifest, as a complete model folder."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from zeroshot.manifest import to_dict
from zeroshot.text import Tokenizer

from .contract import TEXT_ENCODER_FILE, TOKENIZER_FILE, text_config
from .export.onnx_text import OUTPUT_NAME, export_text_encoder
from .manifest_io import write_manifest
from .tower_model import TextTower
from .tower_run import Run

CHECK_TEXTS = ["кошка", "собаки", "немецкая овчарка", "гаечный ключ", "самолет", "фото подсолнуха", "инь и янь"]


class _ExportWrapper(nn.Module):
    def __init__(self, tower: TextTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids, attention_mask)


def export_text_tower(tower: TextTower, path: Path, tokenizer: Tokenizer, check_texts: Sequence[str]) -> Dict[str, Any]:
    """Export the tower (cpu, float32) through the one text-encoder export path and return its validation record.

    Graph: input_ids, attention_mask int64 (batch, length) -> text_embeds float32 (batch, D);
    :func:`train.export.onnx_text.export_text_encoder` writes it (opset 17, IR <= 9, checked)
    and raises ValueError unless every row of ``check_texts``, tokenized by the runtime's
    Tokenizer, has cosine >= its threshold with torch.
    """
    module = _ExportWrapper(tower.cpu().float().eval()).eval()
    ids, mask = tokenizer.batch(list(check_texts))
    record = export_text_encoder(module, path, ids, mask)
    record["check_texts"] = len(check_texts)
    return record


def _copy_image_files(run: Run, model: Path) -> Tuple[Dict[str, str], Dict[str, Dict[str, str]], Dict[str, Any]]:
    """Copy the image model's image encoder and its image-only variants into ``model``.

    Returns (files, variants, extras): each variant keeps its own ``image`` settings and description, so a rung
    at 260 px still runs at 260 px in the new folder.
    """
    src = run.manifest
    names = {"image_encoder": src.files["image_encoder"].path}
    variants: Dict[str, Dict[str, str]] = {}
    extras: Dict[str, Any] = {}
    for vname, variant in src.variants.items():
        if set(variant.files) == {"image_encoder"}:
            variants[vname] = {"image_encoder": variant.files["image_encoder"].path}
            extras[vname] = {"image": dict(variant.image), "description": variant.description}
    for rel in {names["image_encoder"], *(v["image_encoder"] for v in variants.values())}:
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.image_model / rel, model / rel)
    return names, variants, extras


def export_model(run: Run, train_summary: Dict[str, Any], scale: Optional[float] = None) -> Path:
    """Write OUT/model: text_encoder.onnx, tokenizer.model, the image encoder copied, manifest.json.

    ``scale``: the manifest's score.scale (default: the learned InfoNCE scale).
    """
    model = run.out / "model"
    model.mkdir(parents=True, exist_ok=True)
    m = run.manifest
    record = export_text_tower(run.tower, model / TEXT_ENCODER_FILE, run.tokenizer,
                               CHECK_TEXTS + [t.replace("{}", "кот") for t in m.text.templates])
    shutil.copyfile(run.tokenizer_path, model / TOKENIZER_FILE)
    files, variants, extras = _copy_image_files(run, model)
    files.update({"text_encoder": TEXT_ENCODER_FILE, "tokenizer": TOKENIZER_FILE})
    scale = round(run.tower.scale().detach().item(), 4) if scale is None else scale
    sections: Dict[str, Any] = {
        "name": f"text-tower-{run.cfg.text_model}+{m.name}",
        "description": f"{run.cfg.text_model} text tower trained contrastively (train.text_tower) against the frozen "
                       f"image encoder of {m.name}",
        "batch_size": m.batch_size,
        "image": to_dict(m.image),
        "text": text_config(OUTPUT_NAME, m.text.templates, m.text.normalize),
        "score": {"similarity": m.score.similarity, "logit": m.score.logit, "scale": scale},
        "validation": {"text_encoder": record, "image_encoder": m.validation.get("image_encoder")},
        "training": {"config": asdict(run.cfg), "pairs": len(run.data.texts), "train_pairs": len(run.data.train),
                     "held_out_pairs": len(run.data.val), "history": run.history,
                     **{k: v for k, v in train_summary.items() if k != "losses"}},
    }
    for key in ("balance", "transductive"):
        if getattr(m, key) is not None:
            sections[key] = to_dict(getattr(m, key))
    ladder = [rung for rung in m.ladder if rung in variants]
    if ladder:
        sections["ladder"] = ladder
    write_manifest(model, files, sections, variants or None, extras)
    return model
