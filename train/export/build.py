"""From a loaded :class:`~train.export.source.Source` to a validated model folder.

Steps (each fails loudly): tokenizer JSON for the runtime; optional
vocabulary trimming; text and image towers to ONNX with cosine parity
against torch; manifest; the runtime itself (zeroshot.encoders.Model) reads
the folder and must reproduce the checkpoint's token ids on every check
string and its text embeddings; end to end, the runtime's loader, encoders
and scoring on real image files must reproduce the checkpoint's own pipeline
run in the reference environment (train/export/end_to_end.py); reduced (draft)
JPEG decoding is measured against exact decoding; every file loads and runs on
onnxruntime 1.16.3; smaller variants with measured dev-set agreement (kept
only when justified); the size/time plan, and from it the decoding policy.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.datasets import discover
from zeroshot.encoders import Model
from zeroshot.limits import DEVSETS_DIR
from zeroshot.manifest import ImageConfig, read_section
from zeroshot.text import normalize_name

from ..contract import CLIP_NORMALIZE, IMAGE_ENCODER_FILE, TEXT_ENCODER_FILE, text_config
from ..manifest_io import write_manifest
from . import corpus, end_to_end as e2e, plan, trim, variants
from .imageset import KINDS
from .onnx_image import INPUT_NAME, OUTPUT_NAME as IMAGE_OUTPUT, export_image_encoder
from .onnx_text import OUTPUT_NAME as TEXT_OUTPUT, export_text_encoder
from .ort116 import check_judge_runtime
from .parity import MIN_COSINE, row_cosines
from .source import Source

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEV_SET = DEVSETS_DIR
VENDOR = REPO / "vendor"
NORMALIZE = CLIP_NORMALIZE
PARITY_IMAGES = 64
PLAN_ONLY_STRINGS = 16   # --plan without --out: a quick parity check, then sizes and speeds
PLAN_ONLY_IMAGES = 4
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Options:
    """What to export besides the fp32 towers, and where the checks' data is."""

    templates: List[str] = field(default_factory=lambda: list(corpus.DEFAULT_TEMPLATES))
    plain: bool = False
    variants: List[str] = field(default_factory=lambda: ["fp16", "int8", "fp32-int8text"])
    trim_vocabulary: bool = False
    dev_set: Path = DEV_SET
    images: int = 570
    vendor: Path = VENDOR
    plan: bool = True
    default_variant: str = "auto"
    plan_only: bool = False
    decode: str = "auto"                       # image.decode: exact, draft (if it agrees), or auto (the plan's)
    end_to_end: bool = True                    # compare with the checkpoint's own pipeline (reference environment)
    reference_python: Optional[Path] = None    # default: .venv-ref/bin/python


def dev_data(root: Path, limit: int) -> Tuple[List[Path], List[Tuple[List[str], List[int]]]]:
    """Up to ``limit`` images of the datasets under ``root`` (evenly spaced) and (classes, indices) per dataset."""
    if not Path(root).is_dir():
        logger.warning("%s: no dev set; parity runs on synthetic images and no agreement is measured", root)
        return [], []
    found, _ = discover(Path(root))
    total = sum(len(ds.images) for ds in found)
    step = max(1, -(-total // max(limit, 1)))
    images: List[Path] = []
    groups: List[Tuple[List[str], List[int]]] = []
    for ds in found:
        chosen = ds.images[::step]
        groups.append((list(ds.classes), list(range(len(images), len(images) + len(chosen)))))
        images += chosen
    return images[:limit], [(c, [i for i in idx if i < limit]) for c, idx in groups]


def _pixels(images: Sequence[Path], image_cfg: Dict[str, Any], n: int) -> np.ndarray:
    """The check images (or synthetic ones) preprocessed as the manifest's ``image`` section (a dict) says."""
    from ..image_encoder import pixel_batch, synthetic_batch

    image_cfg = read_section(ImageConfig, image_cfg, "image")
    size = image_cfg.size
    if images:
        return pixel_batch(list(images)[:n], image_cfg, size)
    return synthetic_batch(8, size, image_cfg)


def _trim(source: Source, out: Path, templates: Sequence[str], checks: Sequence[str],
          tok_cfg: Dict[str, Any], dev_set: Path) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Trim the text tower's token table in place; write the id map; returns (id map, kept ids, record).

    The record gives the token coverage of the templates, the check strings and
    the class names of the datasets under ``dev_set`` (when it exists).
    """
    if source.token_embedding is None or source.unk_id is None:
        raise ValueError(f"{source.name}: vocabulary trimming needs a tokenizer with an unknown token "
                         "(byte-level BPE has none: every id can occur)")
    table = source.token_embedding()
    vocab = int(table.weight.shape[0])
    kept = trim.choose_vocabulary(source.tokenize, corpus.trimming_corpus(templates),
                                  source.special_ids + [tok_cfg.get("pad_id")], vocab)
    id_map = trim.build_id_map(kept, vocab, source.unk_id)
    pad = tok_cfg.get("pad_id")
    if pad is not None and int(id_map[pad]) != pad:
        raise ValueError(f"{source.name}: the pad id {pad} would move to row {int(id_map[pad])}")
    before, after = trim.trim_embedding(table, kept)
    np.save(out / trim.ID_MAP_FILE, id_map)
    dev_names = [n for ds in discover(dev_set)[0] for n in ds.classes] if Path(dev_set).is_dir() else []
    record = {"rows_before": before, "rows_after": after, "corpus": "train/vocab names + pymorphy3 inflections + "
              "templates (train/export/corpus.py)",
              "coverage_dev_names": trim.coverage(source.tokenize, dev_names, kept) if dev_names else None,
              "coverage_templates": trim.coverage(source.tokenize, list(templates), kept),
              "coverage_check_strings": trim.coverage(source.tokenize, list(checks), kept)}
    logger.info("trimmed vocabulary %d -> %d rows; dev-name token coverage %s", before, after,
                record["coverage_dev_names"] and record["coverage_dev_names"]["share"])
    return id_map, kept, record


def _sections(source: Source, tok_cfg: Dict[str, Any], opts: Options) -> Dict[str, Any]:
    from ..build_default import BALANCE, TRANSDUCTIVE

    score: Dict[str, Any] = {"similarity": "cosine", "logit": "linear", "scale": round(source.logit_scale, 6)}
    if source.logit_bias is not None:
        score["bias"] = float(source.logit_bias)
    return {"name": source.name, "description": f"{source.family} checkpoint exported by train.export",
            "batch_size": 16, "source": {"family": source.family, **source.info},
            "image": {"input": INPUT_NAME, "output": IMAGE_OUTPUT, **source.image_cfg},
            "text": text_config(TEXT_OUTPUT, opts.templates, NORMALIZE, tokenizer_cfg=tok_cfg,
                                attention_mask=source.text_uses_mask),
            "score": score, **({} if opts.plain else {"balance": BALANCE, "transductive": TRANSDUCTIVE})}


def _runtime_checks(out: Path, texts: Sequence[str], want_ids: np.ndarray, want_mask: np.ndarray,
                    reference: np.ndarray, rows: np.ndarray) -> Dict[str, Any]:
    """The runtime's tokenizer must give the checkpoint's ids; its text embeddings the checkpoint's (cosine)."""
    model = Model(out, threads=1, verify=False)
    got_ids, got_mask = model.tokenizer.batch(list(texts))
    if got_ids.shape != want_ids.shape or not np.array_equal(got_ids, want_ids) \
            or not np.array_equal(got_mask, want_mask):
        bad = [t for i, t in enumerate(texts) if got_ids.shape != want_ids.shape
               or not np.array_equal(got_ids[i], want_ids[i])]
        raise ValueError(f"{out}: the runtime tokenizer differs from the checkpoint's on {len(bad)} of "
                         f"{len(texts)} strings (e.g. {bad[:3]}); shapes {got_ids.shape} vs {want_ids.shape}")
    got = model.encode_texts(list(np.asarray(texts, dtype=object)[rows]))
    cos = row_cosines(reference[rows], got)
    if not cos.min() >= MIN_COSINE:
        raise ValueError(f"{out}: runtime text embeddings vs the checkpoint's own: cosine {cos.min():.6f} < "
                         f"{MIN_COSINE} on '{np.asarray(texts)[rows][int(cos.argmin())]}'")
    return {"token_ids_identical": len(texts), "strings": len(texts),
            "russian_strings": sum(any("а" <= ch <= "я" for ch in t.lower()) for t in texts),
            "end_to_end_min_cosine": float(cos.min()), "end_to_end_rows": int(len(rows))}


def _variants(out: Path, files: Dict[str, str], sections: Dict[str, Any], opts: Options,
              images: List[Path], groups: List[Tuple[List[str], List[int]]]) -> Tuple[Dict[str, Dict[str, str]], Dict[str, Any]]:
    """Write the candidate variants, measure their agreement with fp32, keep the justified ones."""
    candidates = _candidates(out, opts)
    wanted = [v for v in candidates if v != "fp32"]
    write_manifest(out, files, sections, candidates)
    records: Dict[str, Any] = {}
    if not images:
        return {"fp32": candidates["fp32"]}, {"skipped": "no dev images: variants need measured agreement"}
    pixels = list(_pixels(images, sections["image"], len(images)))
    reference = variants.zero_shot(Model(out, threads=1, verify=False, variant="fp32"), pixels, groups)
    kept = {"fp32": candidates["fp32"]}
    for name in wanted:
        rec = variants.agreement(reference, variants.zero_shot(Model(out, threads=1, verify=False, variant=name),
                                                               pixels, groups))
        rec["kept"] = variants.justified(rec)
        records[name] = rec
        if rec["kept"]:
            kept[name] = candidates[name]
        logger.info("variant %s: %s", name, rec)
    records["thresholds"] = {"min_top1_agreement": variants.MIN_TOP1_AGREEMENT,
                             "min_mean_cosine": variants.MIN_MEAN_COSINE}
    return kept, records


def _candidates(out: Path, opts: Options) -> Dict[str, Dict[str, str]]:
    """Write the files of every requested variant; returns variant -> {role: file} (fp32 first)."""
    wanted = [v for v in opts.variants if v != "fp32"]
    unknown = [v for v in wanted if v not in variants.MODEL_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {sorted(variants.MODEL_VARIANTS)}")
    variants.make_files(out, sorted({p for v in wanted for p in variants.MODEL_VARIANTS[v]}))
    return {v: variants.variant_files(v) for v in ["fp32"] + wanted}


def _plan_only(out: Path, files: Dict[str, str], sections: Dict[str, Any], validation: Dict[str, Any],
               opts: Options, images: List[Path]) -> Dict[str, Any]:
    """Every requested variant written, loaded on onnxruntime 1.16.3 and planned; no agreement measured."""
    candidates = _candidates(out, opts)
    onnx_files = sorted({out / f for v in candidates.values() for f in v.values()})
    validation["judge_onnxruntime"] = check_judge_runtime(onnx_files, opts.vendor)
    manifest = write_manifest(out, files, {**sections, "validation": validation}, candidates)
    validation["plan"] = plan.plan(manifest, out, opts.vendor, images)
    return write_manifest(out, files, {**sections, "validation": validation}, candidates)


def _end_to_end(source: Source, out: Path, opts: Options, images: List[Path],
                groups: List[Tuple[List[str], List[int]]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(end-to-end record, decoding record) of the folder ``out`` on the parity image set + the dev images.

    The end-to-end record compares with the checkpoint's own pipeline (raises
    if it misses a threshold, or if there is no reference environment unless
    ``opts.end_to_end`` is off); the decoding record measures draft against exact.
    """
    names = list(groups[0][0]) if groups else list(e2e.FALLBACK_CLASSES)
    with tempfile.TemporaryDirectory(prefix="export-e2e-") as tmp:
        set_paths, kinds = e2e.parity_images(images[:len(KINDS)], int(source.image_cfg["size"]), Path(tmp))
        paths = set_paths + list(images)
        contest = list(images[:32]) or [p for p, k in zip(set_paths, kinds) if k == "contest"]
        decode = e2e.decode_record(Model(out, threads=1, verify=False), paths, names,
                                   [p for p, k in zip(set_paths, kinds) if k == "4000x3000"], contest)
        logger.info("draft against exact decoding: %s", decode)
        if not opts.end_to_end:
            logger.warning("%s: end-to-end parity with the checkpoint's own pipeline was NOT checked "
                           "(--skip-end-to-end)", out)
            return {"skipped": "--skip-end-to-end"}, decode
        python = e2e.reference_python(opts.reference_python)
        if python is None:
            raise FileNotFoundError(f"{e2e.REFERENCE_VENV}: no reference environment for the end-to-end check "
                                    "(make reference-env builds it; --skip-end-to-end exports unproven)")
        tokens = (lambda prompts: source.tokenize(prompts)[0]) if source.family == "ruclip" else None
        record = e2e.end_to_end(out, source.origin, paths, kinds, names, python, tokens)
    logger.info("end to end against the checkpoint's own pipeline: %s", record)
    e2e.check(record, out)
    return record, decode


def _remove_unused(out: Path, kept: Dict[str, Dict[str, str]]) -> None:
    """Delete the encoder files no kept variant uses (the rejected variants' files)."""
    used = {f for v in kept.values() for f in v.values()}
    for path in list(out.glob("image_encoder*.onnx")) + list(out.glob("text_encoder*.onnx")):
        if path.name not in used:
            path.unlink()


def choose_default(kept: Dict[str, Dict[str, str]], rows: Optional[List[Dict[str, Any]]], wanted: str) -> str:
    """The variant whose files become the manifest's default files (the ones the archive carries).

    ``wanted``: a kept variant's name, or ``auto``: fp32 if it fits the plan's
    size and time (or there is no plan), else the smallest kept variant that fits.
    """
    if wanted != "auto":
        if wanted not in kept:
            raise ValueError(f"--default {wanted}: not among the kept variants {sorted(kept)}")
        return wanted
    fitting = [r for r in rows or [] if r["variant"] in kept and r["fits_size"] and r["fits_time"]]
    if not rows or any(r["variant"] == "fp32" for r in fitting):
        return "fp32"
    if not fitting:
        logger.warning("no kept variant fits 700 MB and 23 minutes: the default stays fp32 (see the plan)")
        return "fp32"
    best = min(fitting, key=lambda r: r["archive_mb"])["variant"]
    logger.warning("fp32 does not fit the judge's limits: the default files are variant %s", best)
    return best


def fit_archive(out: Path, files: Dict[str, str], kept: Dict[str, Dict[str, str]], default: str,
                vendor: Path) -> Tuple[Dict[str, Dict[str, str]], Dict[str, Any]]:
    """Keep the other variants in the manifest only if the archive can carry them all.

    The archive ships every file the manifest names (the default files and each
    variant's); if together they exceed the 700 MB cap, only the default stays.
    Returns (variants to list, record with the archive's size and what was dropped).
    """
    names = set(files.values()) | {f for v in kept.values() for f in v.values()}
    extra = plan.runtime_mb(vendor)
    total = extra + sum((out / n).stat().st_size for n in names) / 1e6
    if total <= plan.CAP_MB:
        return kept, {"mb": round(total, 1), "dropped_variants": []}
    alone = extra + sum((out / n).stat().st_size for n in set(files.values())) / 1e6
    dropped = sorted(v for v in kept if v != default)
    logger.warning("all kept variants together need %.0f MB > %.0f MB: the manifest keeps only %s (%.0f MB); "
                   "dropped %s", total, plan.CAP_MB, default, alone, dropped)
    return {default: kept[default]}, {"mb": round(alone, 1), "dropped_variants": dropped,
                                      "mb_with_all_variants": round(total, 1)}


def export(source: Source, out: Path, opts: Options) -> Dict[str, Any]:
    """Write and validate the model folder ``out`` for ``source``; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = [normalize_name(t, NORMALIZE) for t in corpus.check_strings(opts.templates)]
    texts = texts[::len(texts) // PLAN_ONLY_STRINGS][:PLAN_ONLY_STRINGS] if opts.plan_only else texts
    source.save_tokenizer(out / TOKENIZER_FILE)
    ids, mask = source.tokenize(texts)
    reference = source.reference_text(texts)
    tok_cfg = dict(source.tokenizer_cfg)
    files = {"image_encoder": IMAGE_ENCODER_FILE, "text_encoder": TEXT_ENCODER_FILE, "tokenizer": TOKENIZER_FILE}
    validation: Dict[str, Any] = {}
    model_ids, rows = ids, np.arange(len(texts))
    if opts.trim_vocabulary:
        id_map, kept_ids, validation["trim"] = _trim(source, out, opts.templates, texts, tok_cfg, opts.dev_set)
        tok_cfg["id_map"] = files["tokenizer_id_map"] = trim.ID_MAP_FILE
        model_ids = id_map[ids].astype(np.int64)
        real = mask.astype(bool)
        rows = np.flatnonzero([np.isin(r[m], kept_ids).all() for r, m in zip(ids, real)])
    validation["text_encoder"] = export_text_encoder(source.text_module, out / files["text_encoder"], model_ids,
                                                     mask if source.text_uses_mask else None, source.fixed_length)
    sections = _sections(source, tok_cfg, opts)
    images, groups = dev_data(opts.dev_set, opts.images)
    validation["image_encoder"] = export_image_encoder(source.image_module, out / files["image_encoder"],
                                                       _pixels(images, sections["image"], PLAN_ONLY_IMAGES
                                                               if opts.plan_only else PARITY_IMAGES))
    validation["image_encoder"]["source"] = "dev set" if images else "synthetic"
    write_manifest(out, files, {**sections, "validation": validation})
    validation["runtime"] = _runtime_checks(out, texts, model_ids, mask, reference, rows)
    if opts.plan_only:
        validation["end_to_end"] = {"skipped": "--plan without --out"}
        return _plan_only(out, files, sections, validation, opts, images)
    validation["end_to_end"], validation["decode"] = _end_to_end(source, out, opts, images, groups)
    kept, validation["variants"] = _variants(out, files, sections, opts, images, groups)
    onnx_files = sorted(set(out.glob("image_encoder*.onnx")) | set(out.glob("text_encoder*.onnx")))
    validation["judge_onnxruntime"] = check_judge_runtime(onnx_files, opts.vendor)
    if opts.plan:  # every candidate is planned, the rejected ones too (marked kept: false)
        candidates = {v: variants.variant_files(v) for v in ["fp32"] + list(validation["variants"])
                      if v in variants.MODEL_VARIANTS}
        rows = plan.plan(write_manifest(out, files, sections, candidates), out, opts.vendor, images)
        for row in rows:
            row["kept"] = row["variant"] in kept
        validation["plan"] = rows
    default = choose_default(kept, validation.get("plan"), opts.default_variant)
    row = next((r for r in validation.get("plan") or [] if r["variant"] == default), None)
    decode, why = e2e.choose_decode(opts.decode, validation["decode"], row, plan.LIMIT_S, plan.PLAN_IMAGES)
    sections["image"]["decode"] = decode
    validation["decode"].update({"chosen": decode, "why": why})
    logger.info("image.decode: %s (%s)", decode, why)
    files.update(kept[default])
    kept, validation["archive"] = fit_archive(out, files, kept, default, opts.vendor)
    _remove_unused(out, kept)
    validation["default_variant"] = default  # its files are the manifest's default files
    return write_manifest(out, files, {**sections, "validation": validation}, kept if len(kept) > 1 else None)
