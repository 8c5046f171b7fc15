"""The model folder's contract: ``manifest.json`` read, validated and written through one typed class.

A model folder holds the ONNX encoders, the tokenizer and ``manifest.json``,
which carries every model-specific constant the runtime needs, so that none is
typed in the runtime's code: file names with sha256, ONNX input/output names,
the image preprocessing, the tokenizer, prompt templates, how scores are formed,
the class balancing and the transductive steps, variants and the accuracy
ladder. :class:`Manifest` is the only reader and writer of that file: every
default is written once, in the field that has it; an unknown key is an error
naming the key and the file; a folder of another ``format_version`` gets a
message saying how to rebuild it. Builders and exporters in ``train/`` write it
through :func:`write_manifest`; the runtime reads it through :meth:`Manifest.load`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, get_type_hints

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
FILE_KEYS = ("image_encoder", "text_encoder", "tokenizer")
VISUAL_BANK_FILE_KEYS = ("visual_concepts", "visual_names", "visual_prototypes")
OPTIONAL_FILE_KEYS = ("tokenizer_id_map", "head") + VISUAL_BANK_FILE_KEYS
TOKENIZER_TYPES = ("sentencepiece", "hf_tokenizers")
PADDING_SIDES = ("right", "left")
RESIZE_MODES = ("center_crop", "resize_center_crop", "resize_center_crop_floor", "crop_square", "squash")
DECODE_MODES = ("exact", "draft")  # zeroshot.images: every pixel, or JPEG draft mode (reduced DCT scale)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
SIMILARITIES = ("dot", "cosine")
LOGIT_KINDS = ("linear", "log")
BALANCE_METHODS = ("sinkhorn", "estimated", "em")
TEXT_NORMALIZERS = ("strip", "collapse_spaces", "lowercase", "yo", "trailing_punct")

Check = Tuple[Callable[[Any], bool], str]
_HASHES: Dict[Tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256


def _spec(default: Any = dataclasses.MISSING, check: Optional[Check] = None, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with an optional ``check``: (predicate on the read value, what it must be)."""
    return field(default=default, default_factory=factory, metadata={"check": check})


def _one_of(options: Tuple[str, ...]) -> Check:
    return (lambda v: v in options, f"must be one of {list(options)}")


_POSITIVE: Check = (lambda v: v > 0, "must be > 0")
_NON_NEGATIVE: Check = (lambda v: v >= 0, "must be >= 0")


def _fail(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: invalid manifest: {what}")


# ------------------------------------------------------------------------------------------------ sections


@dataclass(frozen=True)
class FileRef:
    """A model file inside the folder and its sha256 (hex)."""

    path: str
    sha256: str = _spec(check=(lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v),
                               "must be 64 lower-case hex digits"))
    size: Optional[int] = _spec(None, check=_NON_NEGATIVE)  # bytes; a truncated file is told apart from a changed one


@dataclass(frozen=True)
class ImageConfig:
    """How images become the image encoder's input, and the encoder's output names."""

    input: str
    output: str
    size: int = _spec(check=_POSITIVE)
    resize: str = _spec(check=_one_of(RESIZE_MODES))
    interpolation: str = _spec(check=_one_of(INTERPOLATIONS))
    mean: List[float] = _spec(check=(lambda v: len(v) == 3, "must hold 3 numbers"))
    std: List[float] = _spec(check=(lambda v: len(v) == 3 and all(x > 0 for x in v), "must hold 3 positive numbers"))
    decode: str = _spec(check=_one_of(DECODE_MODES))  # exact: every pixel; draft: JPEG at a reduced DCT scale
    features_output: Optional[str] = None      # penultimate features for the transductive steps
    fast_size: Optional[int] = _spec(None, check=_POSITIVE)   # the budget's cheaper tier

    def check(self, path: Path, where: str) -> None:
        if self.fast_size is not None and self.fast_size > self.size:
            raise _fail(path, f"{where}.fast_size must be at most {where}.size ({self.size})")


@dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer: its kind, special ids, context length, padding and lower-casing."""

    type: str = _spec(check=_one_of(TOKENIZER_TYPES))
    bos_id: Optional[int] = _spec(None, check=_NON_NEGATIVE)
    eos_id: Optional[int] = _spec(None, check=_NON_NEGATIVE)
    pad_id: Optional[int] = _spec(None, check=_NON_NEGATIVE)
    context_length: Optional[int] = _spec(None, check=(lambda v: v > 1, "must be > 1"))
    pad_to_context: bool = False
    lowercase: bool = False
    add_special_tokens: bool = True            # hf_tokenizers: the tokenizer adds BOS/EOS itself
    padding_side: str = _spec("right", check=_one_of(PADDING_SIDES))
    id_map: Optional[str] = _spec(None, check=(lambda v: v.endswith(".npy"), "must be the name of a .npy file"))

    def check(self, path: Path, where: str) -> None:
        if self.pad_to_context and self.context_length is None:
            raise _fail(path, f"{where}.pad_to_context needs {where}.context_length")


@dataclass(frozen=True)
class TextConfig:
    """How class names become prompts and token ids, and the text encoder's input/output names."""

    input_ids: str
    output: str
    tokenizer: TokenizerConfig
    templates: List[str] = _spec(check=(lambda v: len(v) > 0 and all("{}" in t for t in v),
                                        "must be a non-empty list of strings containing '{}'"))
    attention_mask: Optional[str] = None
    normalize: List[str] = _spec(factory=list, check=(lambda v: all(n in TEXT_NORMALIZERS for n in v),
                                                      f"must be drawn from {list(TEXT_NORMALIZERS)}"))


@dataclass(frozen=True)
class ScoreConfig:
    """logit = scale * f(similarity(image, class)) + bias, f the identity or log."""

    similarity: str = _spec(check=_one_of(SIMILARITIES))
    logit: str = _spec(check=_one_of(LOGIT_KINDS))
    scale: float = _spec(check=_POSITIVE)
    bias: float = 0.0                          # SigLIP's logit bias


@dataclass(frozen=True)
class BalanceConfig:
    """Class-share balancing of one dataset's probabilities (zeroshot.scoring.balance)."""

    method: str = _spec(check=_one_of(BALANCE_METHODS))
    iterations: int = _spec(check=_NON_NEGATIVE)
    pseudo_count: float = _spec(0.0, check=_NON_NEGATIVE)
    temperature: float = _spec(1.0, check=_POSITIVE)
    rounds: int = _spec(0, check=_NON_NEGATIVE)
    em_iterations: Optional[int] = _spec(None, check=_NON_NEGATIVE)  # None: ``iterations``
    min_images_per_class: float = _spec(0.0, check=_NON_NEGATIVE)


@dataclass(frozen=True)
class PropagateConfig:
    """Label propagation over the images' k-nearest-neighbour graph (zeroshot.scoring.propagate)."""

    neighbours: int = _spec(check=_POSITIVE)
    iterations: int = _spec(check=_NON_NEGATIVE)
    alpha: float = _spec(check=(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    power: float = _spec(1.0, check=_POSITIVE)
    max_images: Optional[int] = _spec(None, check=(lambda v: v >= 2, "must be >= 2"))  # None: no cap


@dataclass(frozen=True)
class TransductiveConfig:
    """Prototype refinement on the image features of one dataset (zeroshot.scoring.refine)."""

    iterations: int = _spec(check=_NON_NEGATIVE)
    weight: float = _spec(check=_NON_NEGATIVE)
    scale: float = _spec(check=_NON_NEGATIVE)
    method: str = _spec("prototypes", check=_one_of(("prototypes",)))
    center: bool = True
    log_features: bool = False
    min_images_per_class: float = _spec(0.0, check=_NON_NEGATIVE)
    propagate: Optional[PropagateConfig] = None


@dataclass(frozen=True)
class HeadConfig:
    """A trained linear head (zeroshot.linear): its classes, how it was trained (free-form)."""

    classes: List[str] = _spec(check=(lambda v: len(v) > 1 and all(c.strip() for c in v) and len(set(v)) == len(v),
                                      "must be a list of 2+ distinct non-empty names"))
    zero_shot: bool = False
    text: bool = False
    training: Dict[str, Any] = _spec(factory=dict)


@dataclass(frozen=True)
class VisualBankConfig:
    """The visual concept bank (zeroshot.visual_bank): class names matched to image prototypes of named concepts.

    A class whose name's embedding (the text encoder's ``embedding_output``) has cosine at least
    ``threshold`` with a concept's name or synonym (an equal normalised name counts as 1) gets the mean
    prototype of the concepts within ``margin`` of its best match. Each image's cosines to the matched
    classes' prototypes (both sides centred on the dataset's mean image feature first if ``center``), times
    ``scale``, give a softmax p over the m matched classes; their logits gain ``weight * log(m p)``.
    """

    embedding_output: str
    threshold: float = _spec(check=(lambda v: -1.0 <= v <= 1.0, "must be in [-1, 1]"))
    scale: float = _spec(check=_POSITIVE)
    weight: float = _spec(check=(lambda v: v >= 0, "must be >= 0"))
    margin: float = _spec(0.02, check=(lambda v: v >= 0, "must be >= 0"))
    center: bool = True


@dataclass(frozen=True)
class Variant:
    """Files (and image settings) that replace the defaults when this variant runs."""

    files: Dict[str, FileRef]
    image: Dict[str, Any] = _spec(factory=dict)   # entries of ``image`` it overrides
    description: Optional[str] = None


@dataclass(frozen=True)
class Manifest:
    """The whole of ``manifest.json``. Optional sections are None when absent."""

    files: Dict[str, FileRef]
    image: ImageConfig
    text: TextConfig
    score: ScoreConfig
    format_version: int = FORMAT_VERSION
    name: str = "unnamed"
    description: str = ""
    batch_size: int = _spec(16, check=_POSITIVE)
    balance: Optional[BalanceConfig] = None
    transductive: Optional[TransductiveConfig] = None
    head: Optional[HeadConfig] = None
    visual_bank: Optional[VisualBankConfig] = None
    variants: Dict[str, Variant] = _spec(factory=dict)
    ladder: List[str] = _spec(factory=list)        # variant names, cheapest first
    validation: Dict[str, Any] = _spec(factory=dict)   # free-form: what the builder measured
    source: Dict[str, Any] = _spec(factory=dict)       # free-form: where the weights came from
    training: Dict[str, Any] = _spec(factory=dict)     # free-form: how a trained tower was trained
    concepts: Dict[str, Any] = _spec(factory=dict)     # free-form: the default model's concept-bank settings

    def check(self, path: Path, where: str) -> None:
        for key in FILE_KEYS:
            if key not in self.files:
                raise _fail(path, f"files.{key} is required")
        for key in self.files:
            if key not in FILE_KEYS + OPTIONAL_FILE_KEYS:
                raise _fail(path, f"unknown file role files.{key} (known: {list(FILE_KEYS + OPTIONAL_FILE_KEYS)})")
        tok = self.text.tokenizer
        if tok.type == "hf_tokenizers" and not self.files["tokenizer"].path.endswith(".json"):
            raise _fail(path, "files.tokenizer.path must be a tokenizers .json file for text.tokenizer.type "
                              "'hf_tokenizers'")
        id_map = self.files.get("tokenizer_id_map")
        if (tok.id_map is None) != (id_map is None) or (id_map is not None and id_map.path != tok.id_map):
            raise _fail(path, "text.tokenizer.id_map and files.tokenizer_id_map.path must name the same file "
                              "(or both be absent)")
        if (self.head is None) != ("head" not in self.files):
            raise _fail(path, "a head section and files.head go together")
        if any((self.visual_bank is None) == (key in self.files) for key in VISUAL_BANK_FILE_KEYS):
            raise _fail(path, f"a visual_bank section and files.{', files.'.join(VISUAL_BANK_FILE_KEYS)} go together")
        for name, variant in self.variants.items():
            for key in variant.files:
                if key not in FILE_KEYS + OPTIONAL_FILE_KEYS:
                    raise _fail(path, f"unknown file role variants.{name}.files.{key}")
            self.image_for(name, path)
        if len(set(self.ladder)) != len(self.ladder):
            raise _fail(path, "ladder must list distinct variant names")
        for rung in self.ladder:
            if rung not in self.variants:
                raise _fail(path, f"ladder rung {rung!r} is not a variant (variants: {sorted(self.variants)})")

    # -------------------------------------------------------------------------------------- queries

    def image_for(self, variant: Optional[str], path: Path = Path(MANIFEST_NAME)) -> ImageConfig:
        """The ``image`` section as ``variant`` runs it: the variant's ``image`` entries replace the defaults."""
        if variant is None or not self.variants[variant].image:
            return self.image
        merged = dict(to_dict(self.image), **self.variants[variant].image)
        cfg = _read(ImageConfig, merged, f"variants.{variant}.image", path)
        return cfg

    def file(self, key: str, variant: Optional[str] = None) -> FileRef:
        """The file of role ``key`` as ``variant`` runs it (the variant's, else the default)."""
        if variant is not None and key in self.variants[variant].files:
            return self.variants[variant].files[key]
        return self.files[key]

    def all_files(self) -> Dict[str, FileRef]:
        """Every file the manifest names, defaults and variants', by path."""
        refs = list(self.files.values()) + [r for v in self.variants.values() for r in v.files.values()]
        return {ref.path: ref for ref in refs}

    # ----------------------------------------------------------------------------------- reading, writing

    @classmethod
    def from_dict(cls, data: Any, path: Path = Path(MANIFEST_NAME)) -> "Manifest":
        """Validate ``data`` (parsed JSON) and build the manifest; ValueError naming ``path`` and the field."""
        if not isinstance(data, dict):
            raise _fail(path, "the top level must be an object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: manifest format_version {version!r}, this runtime reads {FORMAT_VERSION}: "
                             "rebuild the folder with this version's builder (make model, python -m train.export, "
                             "python -m train.text_tower --stage export)")
        return _read(cls, data, "", path)

    @classmethod
    def load(cls, model_dir: Path) -> "Manifest":
        """Read and validate ``model_dir/manifest.json``; FileNotFoundError or ValueError naming the file."""
        path = Path(model_dir) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model manifest not found (build the default model with 'make model' "
                                    "or pass --model DIR)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"{path}: manifest is not valid UTF-8 JSON: {exc}") from exc
        return cls.from_dict(data, path)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object of this manifest: every field written, absent optional sections left out."""
        return to_dict(self)

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, two-space indent, UTF-8 as is, final newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def validate_manifest(data: Any, path: Path) -> Manifest:
    """``Manifest.from_dict(data, path)``: the manifest if ``data`` is a valid one, else ValueError naming ``path``."""
    return Manifest.from_dict(data, path)


def read_section(cls: Any, data: Optional[Dict[str, Any]], where: str = "settings") -> Any:
    """A manifest section of type ``cls`` from a plain dict (None stays None), validated as the manifest is:
    for settings that tools build as dicts (knob grids) before handing them to the runtime's scoring."""
    return None if data is None else _read(cls, data, where, Path(where))


def load_manifest(model_dir: Path) -> Manifest:
    """``Manifest.load(model_dir)``."""
    return Manifest.load(model_dir)


def check_file(path: Path, ref: FileRef, key: str) -> None:
    """Raise FileNotFoundError if ``path`` is missing, ValueError if its size (when ``ref`` records one) or its
    sha256 differs; each message names the path and the expected sha256. A file is hashed once per process."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file '{key}' is missing (expected sha256 {ref.sha256})")
    size = path.stat().st_size
    if ref.size is not None and size != ref.size:
        raise ValueError(f"{path}: model file '{key}' is corrupt: {size} bytes, expected {ref.size} "
                         f"(sha256 {ref.sha256}){' -- truncated' if size < ref.size else ''}")
    actual = cached_sha256(path)
    if actual != ref.sha256:
        raise ValueError(f"{path}: model file '{key}' is corrupt: sha256 {actual}, expected {ref.sha256}")


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered for the process while its size and mtime stay the same (start-up
    checks every rung's files, then the chosen rung's model loads them again)."""
    stat = path.stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def resolve_file(manifest: Manifest, model_dir: Path, key: str, verify: bool = True,
                 variant: Optional[str] = None) -> Path:
    """Path of the model file of role ``key`` (the variant's, else the default), checked to exist and, with
    ``verify``, to match its size and sha256 (:func:`check_file`). Raises FileNotFoundError or ValueError
    naming the path and the hash."""
    if variant is not None and variant not in manifest.variants:
        raise ValueError(f"{Path(model_dir) / MANIFEST_NAME}: no variant '{variant}' "
                         f"(available: {sorted(manifest.variants) or 'none'})")
    if key not in manifest.files and (variant is None or key not in manifest.variants[variant].files):
        raise ValueError(f"{Path(model_dir) / MANIFEST_NAME}: names no model file '{key}'")
    ref = manifest.file(key, variant)
    path = Path(model_dir) / ref.path
    if verify:
        check_file(path, ref, key)
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: model file '{key}' is missing (expected sha256 {ref.sha256})")
    return path


def file_problems(manifest: Manifest, model_dir: Path, variant: Optional[str] = None) -> List[str]:
    """What is wrong with the files ``variant`` runs (each role it has: missing, wrong size, wrong sha256), one
    message per file; empty when they are intact."""
    roles = set(manifest.files) | (set(manifest.variants[variant].files) if variant is not None else set())
    problems: List[str] = []
    for key in sorted(roles):
        try:
            check_file(Path(model_dir) / manifest.file(key, variant).path, manifest.file(key, variant), key)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
    return problems


# --------------------------------------------------------------------------------- the generic reader


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _convert(kind: Any, value: Any, where: str, path: Path) -> Any:
    """``value`` read as type ``kind`` (a dataclass, Optional, List, Dict, or a JSON scalar type)."""
    origin = getattr(kind, "__origin__", None)
    args = getattr(kind, "__args__", ())
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where, path)
    if dataclasses.is_dataclass(kind):
        return _read(kind, value, where, path)
    if origin in (list, List):
        if not isinstance(value, list):
            raise _fail(path, f"{where} must be a list")
        return [_convert(args[0], v, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise _fail(path, f"{where} must be an object")
        if args and args[1] is not Any:
            return {k: _convert(args[1], v, f"{where}.{k}", path) for k, v in value.items()}
        return dict(value)
    if kind is bool and not isinstance(value, bool):
        raise _fail(path, f"{where} must be true or false")
    if kind is int and not _is_int(value):
        raise _fail(path, f"{where} must be an integer")
    if kind is float:
        if not _is_number(value):
            raise _fail(path, f"{where} must be a finite number")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise _fail(path, f"{where} must be a string")
    return value


def _read(cls: Any, data: Any, where: str, path: Path) -> Any:
    """An instance of dataclass ``cls`` from the JSON object ``data`` at ``where``: every key known and checked."""
    label = where or "the top level"
    if not isinstance(data, dict):
        raise _fail(path, f"{label} must be an object")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise _fail(path, f"unknown key {(where + '.') if where else ''}{unknown[0]} (known in {label}: {known})")
    hints = get_type_hints(cls)
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore
                raise _fail(path, f"{key} is required")
            continue
        value = _convert(hints[f.name], data[f.name], key, path)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check[0](value):
            raise _fail(path, f"{key} {check[1]} (got {data[f.name]!r})")
        values[f.name] = value
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(path, where)
    return obj


def to_dict(obj: Any) -> Any:
    """The JSON value of a manifest dataclass (recursively); None-valued top-level sections are left out."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Manifest):  # absent optional sections and empty free-form records are left out
            out = {k: v for k, v in out.items() if v is not None and v != {}}
        return out
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
