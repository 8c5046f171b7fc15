"""Reading and validating ``model/manifest.json``.

The manifest holds every model-specific constant the runtime needs, so that
no such constant is typed in the runtime's code: file names with sha256, ONNX input/output names, the image
preprocessing, the tokenizer, prompt templates, how scores are formed and the
transductive balancing. The exporters in ``train/`` write it; the runtime only
reads it, through :func:`load_manifest`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

_HASHES: Dict[Tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
FILE_KEYS = ("image_encoder", "text_encoder", "tokenizer")
OPTIONAL_FILE_KEYS = ("tokenizer_id_map", "head")
TOKENIZER_TYPES = ("sentencepiece", "hf_tokenizers")
PADDING_SIDES = ("right", "left")
RESIZE_MODES = ("center_crop", "resize_center_crop", "crop_square", "squash")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
SIMILARITIES = ("dot", "cosine")
LOGIT_KINDS = ("linear", "log")
BALANCE_METHODS = ("sinkhorn", "estimated", "em")
TEXT_NORMALIZERS = ("strip", "collapse_spaces", "lowercase", "yo", "trailing_punct")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(cond: bool, manifest_path: Path, what: str) -> None:
    """Raise a ValueError naming the manifest and the broken field."""
    if not cond:
        raise ValueError(f"{manifest_path}: invalid manifest: {what}")


def _check_image(section: Dict[str, Any], path: Path) -> None:
    _require(isinstance(section.get("input"), str), path, "image.input must be a string")
    _require(isinstance(section.get("output"), str), path, "image.output must be a string")
    feats = section.get("features_output")
    _require(feats is None or isinstance(feats, str), path, "image.features_output must be null or a string")
    size = section.get("size")
    _require(isinstance(size, int) and size > 0, path, "image.size must be a positive integer")
    fast = section.get("fast_size")
    _require(fast is None or (isinstance(fast, int) and 0 < fast <= size), path,
             "image.fast_size must be null or an integer in 1..image.size")
    _require(section.get("resize") in RESIZE_MODES, path, f"image.resize must be one of {RESIZE_MODES}")
    _require(section.get("interpolation") in INTERPOLATIONS, path,
             f"image.interpolation must be one of {INTERPOLATIONS}")
    for key in ("mean", "std"):
        vals = section.get(key)
        _require(isinstance(vals, list) and len(vals) == 3 and all(isinstance(v, (int, float)) for v in vals),
                 path, f"image.{key} must be a list of 3 numbers")
    _require(all(v > 0 for v in section["std"]), path, "image.std must be positive")


def _check_text(section: Dict[str, Any], path: Path) -> None:
    _require(isinstance(section.get("input_ids"), str), path, "text.input_ids must be a string")
    mask = section.get("attention_mask")
    _require(mask is None or isinstance(mask, str), path, "text.attention_mask must be null or a string")
    _require(isinstance(section.get("output"), str), path, "text.output must be a string")
    _check_tokenizer(section.get("tokenizer"), path)
    norm = section.get("normalize", [])
    _require(isinstance(norm, list) and all(n in TEXT_NORMALIZERS for n in norm), path,
             f"text.normalize must be a list drawn from {TEXT_NORMALIZERS}")
    templates = section.get("templates")
    _require(isinstance(templates, list) and templates
             and all(isinstance(t, str) and "{}" in t for t in templates), path,
             "text.templates must be a non-empty list of strings containing '{}'")


def _is_size(value: Any) -> bool:
    """True for a file entry's optional ``size``: absent, or an integer >= 0 (bytes)."""
    return value is None or (_is_int(value) and value >= 0)


def _is_int(value: Any) -> bool:
    """True for an int that is not a bool (JSON true is not a token id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tokenizer(tok: Any, path: Path) -> None:
    """The ``text.tokenizer`` section: type, special ids, context, padding, lower-casing, id map."""
    _require(isinstance(tok, dict), path, "text.tokenizer must be an object")
    _require(tok.get("type") in TOKENIZER_TYPES, path, f"text.tokenizer.type must be one of {TOKENIZER_TYPES}")
    for key in ("bos_id", "eos_id", "pad_id"):
        _require(tok.get(key) is None or (_is_int(tok[key]) and tok[key] >= 0), path,
                 f"text.tokenizer.{key} must be null or an integer >= 0")
    ctx = tok.get("context_length")
    _require(ctx is None or (_is_int(ctx) and ctx > 1), path,
             "text.tokenizer.context_length must be null or an integer > 1")
    for key in ("pad_to_context", "lowercase", "add_special_tokens"):
        _require(isinstance(tok.get(key, False), bool), path, f"text.tokenizer.{key} must be true or false")
    _require(not tok.get("pad_to_context") or ctx is not None, path,
             "text.tokenizer.pad_to_context needs text.tokenizer.context_length")
    _require(tok.get("padding_side", "right") in PADDING_SIDES, path,
             f"text.tokenizer.padding_side must be one of {PADDING_SIDES}")
    id_map = tok.get("id_map")
    _require(id_map is None or (isinstance(id_map, str) and id_map.endswith(".npy")), path,
             "text.tokenizer.id_map must be null or the name of a .npy file")


def _check_files(manifest: Dict[str, Any], path: Path) -> None:
    """``files``: the required roles, optional ones, and their agreement with the tokenizer section."""
    files = manifest.get("files")
    _require(isinstance(files, dict), path, "files must be an object")
    for key in FILE_KEYS + OPTIONAL_FILE_KEYS:
        entry = files.get(key)
        _require((key in OPTIONAL_FILE_KEYS and entry is None)
                 or (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                     and isinstance(entry.get("sha256"), str) and _is_size(entry.get("size"))), path,
                 f"files.{key} must have 'path' and 'sha256' (and 'size' in bytes, or none)")
    tok = manifest["text"]["tokenizer"]
    if tok["type"] == "hf_tokenizers":
        _require(files["tokenizer"]["path"].endswith(".json"), path,
                 "files.tokenizer.path must be a tokenizers .json file when text.tokenizer.type is 'hf_tokenizers'")
    id_map, entry = tok.get("id_map"), files.get("tokenizer_id_map")
    _require((id_map is None) == (entry is None) and (id_map is None or entry["path"] == id_map), path,
             "text.tokenizer.id_map and files.tokenizer_id_map.path must name the same file (or both be absent)")


def _check_score(section: Dict[str, Any], path: Path) -> None:
    _require(section.get("similarity") in SIMILARITIES, path, f"score.similarity must be one of {SIMILARITIES}")
    _require(section.get("logit") in LOGIT_KINDS, path, f"score.logit must be one of {LOGIT_KINDS}")
    scale = section.get("scale")
    _require(isinstance(scale, (int, float)) and scale > 0, path, "score.scale must be a positive number")
    bias = section.get("bias", 0.0)
    _require(isinstance(bias, (int, float)) and not isinstance(bias, bool) and math.isfinite(bias), path,
             "score.bias must be a finite number (SigLIP's logit bias) or absent")


def _check_balance(section: Optional[Dict[str, Any]], path: Path) -> None:
    if section is None:
        return
    _require(section.get("method") in BALANCE_METHODS, path, f"balance.method must be one of {BALANCE_METHODS}")
    pseudo = section.get("pseudo_count", 0)
    _require(isinstance(pseudo, (int, float)) and pseudo >= 0, path, "balance.pseudo_count must be a number >= 0")
    temperature = section.get("temperature", 1.0)
    _require(isinstance(temperature, (int, float)) and temperature > 0, path,
             "balance.temperature must be a positive number")
    rounds = section.get("rounds", 0)
    _require(isinstance(rounds, int) and rounds >= 0, path, "balance.rounds must be an integer >= 0")
    em_iters = section.get("em_iterations", 0)
    _require(isinstance(em_iters, int) and em_iters >= 0, path, "balance.em_iterations must be an integer >= 0")
    iters = section.get("iterations")
    _require(isinstance(iters, int) and iters >= 0, path, "balance.iterations must be an integer >= 0")
    mpc = section.get("min_images_per_class", 0)
    _require(isinstance(mpc, (int, float)) and mpc >= 0, path, "balance.min_images_per_class must be >= 0")


def _check_transductive(section: Optional[Dict[str, Any]], path: Path) -> None:
    if section is None:
        return
    _require(section.get("method") == "prototypes", path, "transductive.method must be 'prototypes'")
    iters = section.get("iterations")
    _require(isinstance(iters, int) and iters >= 0, path, "transductive.iterations must be an integer >= 0")
    for key in ("weight", "scale"):
        _require(isinstance(section.get(key), (int, float)) and section[key] >= 0, path,
                 f"transductive.{key} must be a number >= 0")
    for key in ("center", "log_features"):
        _require(isinstance(section.get(key, False), bool), path, f"transductive.{key} must be true or false")
    mpc = section.get("min_images_per_class", 0)
    _require(isinstance(mpc, (int, float)) and mpc >= 0, path, "transductive.min_images_per_class must be >= 0")
    _check_propagate(section.get("propagate"), path)


def _check_propagate(section: Optional[Dict[str, Any]], path: Path) -> None:
    """The optional label-propagation step of the transductive section (zeroshot.scoring.propagate)."""
    if section is None:
        return
    _require(isinstance(section, dict), path, "transductive.propagate must be an object")
    for key, low, default in (("neighbours", 1, None), ("iterations", 0, None), ("max_images", 2, 2)):
        value = section.get(key, default)  # max_images is optional
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= low, path,
                 f"transductive.propagate.{key} must be an integer >= {low}")
    alpha = section.get("alpha")
    _require(isinstance(alpha, (int, float)) and 0 <= alpha < 1, path,
             "transductive.propagate.alpha must be a number in [0, 1)")
    power = section.get("power", 1.0)
    _require(isinstance(power, (int, float)) and power > 0, path, "transductive.propagate.power must be a number > 0")


def _check_head(section: Optional[Dict[str, Any]], files: Dict[str, Any], path: Path) -> None:
    """The optional trained head (zeroshot.linear): its classes, and its file in ``files.head``."""
    if section is None:
        return
    entry = files.get("head")
    _require(isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str),
             path, "a head section needs files.head with 'path' and 'sha256'")
    classes = section.get("classes")
    _require(isinstance(classes, list) and len(classes) > 1 and all(isinstance(c, str) and c.strip() for c in classes)
             and len(set(classes)) == len(classes), path, "head.classes must be a list of 2+ distinct non-empty names")


def _check_ladder(ladder: Any, variants: Dict[str, Any], path: Path) -> None:
    """The ladder, if any, is a non-empty list of distinct variant names."""
    if ladder is None:
        return
    _require(isinstance(ladder, list) and ladder and len(set(map(str, ladder))) == len(ladder), path,
             "ladder must be a non-empty list of distinct variant names")
    for name in ladder:
        _require(isinstance(name, str) and name in variants, path, f"ladder rung {name!r} must be a variant")


def variant_image_config(manifest: Dict[str, Any], variant: Optional[str]) -> Dict[str, Any]:
    """The ``image`` section as ``variant`` runs it: the variant's ``image`` entries replace the defaults."""
    cfg = dict(manifest["image"])
    if variant is not None:
        cfg.update(manifest.get("variants", {}).get(variant, {}).get("image", {}))
    return cfg


def validate_manifest(manifest: Dict[str, Any], path: Path) -> None:
    """Check the manifest's structure; raise ValueError naming the first problem."""
    _require(isinstance(manifest, dict), path, "top level must be an object")
    _require(manifest.get("format_version") == FORMAT_VERSION, path,
             f"format_version must be {FORMAT_VERSION}")
    for key in ("image", "text", "score"):
        _require(isinstance(manifest.get(key), dict), path, f"{key} must be an object")
    _check_image(manifest["image"], path)
    _check_text(manifest["text"], path)
    _check_files(manifest, path)
    _check_score(manifest["score"], path)
    _check_balance(manifest.get("balance"), path)
    _check_transductive(manifest.get("transductive"), path)
    _check_head(manifest.get("head"), manifest["files"], path)
    variants = manifest.get("variants", {})
    _require(isinstance(variants, dict), path, "variants must be an object")
    for name, variant in variants.items():
        vfiles = variant.get("files") if isinstance(variant, dict) else None
        _require(isinstance(vfiles, dict) and all(k in FILE_KEYS + OPTIONAL_FILE_KEYS and isinstance(v, dict) and isinstance(
            v.get("path"), str) and isinstance(v.get("sha256"), str) and _is_size(v.get("size"))
            for k, v in vfiles.items()), path,
            f"variants.{name}.files must map file roles to {{'path', 'sha256'}} (and 'size' in bytes, or none)")
    for name, variant in variants.items():
        if "image" in variant:
            _require(isinstance(variant["image"], dict), path, f"variants.{name}.image must be an object")
            _check_image(variant_image_config(manifest, name), path)
    _check_ladder(manifest.get("ladder"), variants, path)
    batch = manifest.get("batch_size", 16)
    _require(isinstance(batch, int) and batch > 0, path, "batch_size must be a positive integer")


def file_entry(manifest: Dict[str, Any], model_dir: Path, key: str,
               variant: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The ``files[key]`` entry ``variant`` runs (its own, else the default; None when neither names one);
    ValueError for an unknown variant."""
    entry = manifest["files"].get(key)
    if variant is not None:
        variants = manifest.get("variants", {})
        if variant not in variants:
            raise ValueError(f"{Path(model_dir) / MANIFEST_NAME}: no variant '{variant}' "
                             f"(available: {sorted(variants) or 'none'})")
        entry = variants[variant]["files"].get(key, entry)
    return entry


def check_file(path: Path, entry: Dict[str, Any], key: str) -> None:
    """Raise FileNotFoundError if ``path`` is missing, ValueError if its size (when the entry records
    one) or its sha256 differs from ``entry``; each message names the path and the expected sha256.
    A file is hashed once per process (:func:`cached_sha256`)."""
    expected = entry["sha256"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file '{key}' is missing (expected sha256 {expected})")
    size = path.stat().st_size
    if entry.get("size") is not None and size != entry["size"]:
        raise ValueError(f"{path}: model file '{key}' is corrupt: {size} bytes, expected {entry['size']} "
                         f"(sha256 {expected}){' -- truncated' if size < entry['size'] else ''}")
    actual = cached_sha256(path)
    if actual != expected:
        raise ValueError(f"{path}: model file '{key}' is corrupt: sha256 {actual}, expected {expected}")


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered for the process while its size and mtime stay the same (start-up
    checks every rung's files, then the chosen rung's model loads them again)."""
    stat = path.stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def resolve_file(manifest: Dict[str, Any], model_dir: Path, key: str, verify: bool = True,
                 variant: Optional[str] = None) -> Path:
    """Path of the model file ``files[key]`` (or the variant's), checked to exist and (``verify``) to
    match its size and sha256 (:func:`check_file`).

    Raises FileNotFoundError or ValueError naming the path and the expected hash.
    """
    entry = file_entry(manifest, model_dir, key, variant)
    if entry is None:
        raise ValueError(f"{Path(model_dir) / MANIFEST_NAME}: names no model file '{key}'")
    path = model_dir / entry["path"]
    if verify:
        check_file(path, entry, key)
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: model file '{key}' is missing (expected sha256 {entry['sha256']})")
    return path


def file_problems(manifest: Dict[str, Any], model_dir: Path, variant: Optional[str] = None) -> List[str]:
    """What is wrong with the files ``variant`` runs (each role it has: missing, wrong size, wrong
    sha256), one message per file; empty when they are intact."""
    roles = set(manifest["files"]) | set(manifest.get("variants", {}).get(variant, {}).get("files", {}))
    problems: List[str] = []
    for key in sorted(roles & set(FILE_KEYS + OPTIONAL_FILE_KEYS)):
        entry = file_entry(manifest, model_dir, key, variant)
        if entry is None:
            continue
        try:
            check_file(Path(model_dir) / entry["path"], entry, key)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
    return problems


def load_manifest(model_dir: Path) -> Dict[str, Any]:
    """Read and validate ``model_dir/manifest.json``.

    Raises FileNotFoundError if it is missing and ValueError if it is malformed.
    """
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model manifest not found (build the default model with 'make model' "
                                "or pass --model DIR)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: manifest is not valid UTF-8 JSON: {exc}") from exc
    validate_manifest(manifest, path)
    return manifest
