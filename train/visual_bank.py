"""The visual concept bank: image prototypes of everyday concepts in a model's feature space, by Russian name.

The default backbone knows only ImageNet's 1,000 labels; a class name outside them ("паэлья", "кроссовки")
reaches the images only through text similarity to those labels. The bank gives such a name what CLIP has
from its training pictures: the mean image feature of a few dozen labelled photos of the concept.

Sources are pinned collections in public git repositories, one spec each, in the tuning suite's spec
format (contest/suite_data.py; a class may add ``"synonyms"``): ``train/bank_sources/*.json`` and the
suite's own ``data/suite/*/source.json`` (a suite set's source is removed from the bank when that set is
scored: zeroshot.visual_bank's ``exclude``). For each class the images are taken in the spec's sampling order
from the snapshot's git objects (never a work tree); one whose difference hash is within ``DUPLICATE_BITS``
bits of an image of the dev set or of a suite set is skipped (counted in the report), and the first
``PER_CLASS`` others are decoded and encoded by the runtime (zeroshot.embed.embed_images on the model
folder's image encoder at ``--rung``). A concept is one (source, class): its prototype is the normalised
mean of its images' unit features, kept in float16.

Output (committed, beside the vocabulary lists; a fresh clone cannot reach the sources):
``train/vocab/visual_bank/concepts.json`` (per concept: Russian name, synonyms, source spec, repository,
commit, images used) and ``prototypes.npy`` (float16 (K, F)); ``BANK.md`` summarises them.
``make model`` copies them into the model folder (train/build_default.py).

Usage::

    python -m train.visual_bank build [--mirror ../.mirror] [--model model] [--rung ensemble-260]
                                      [--sources train/bank_sources] [--suite data/suite] [--out DIR]
    python -m train.visual_bank stats [--out DIR]

Encoded images are cached per spec, commit and encoder under ``--cache`` (default /tmp/bank_cache), so a
spec added later costs only its own images.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import json
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from contest.suite_data import Spec, class_candidates, find_snapshot, load_spec, read_blobs, spec_paths
from zeroshot.command import make_parser, parse_args
from zeroshot.embed import embed_images, read_folders, walk_images
from zeroshot.encoders import Model
from zeroshot.limits import DEVSETS_DIR, MODEL_DIR, SNAPSHOTS_DIR, SUITE_DIR
from zeroshot.manifest import load_manifest
from zeroshot.outputs import write_json_atomic
from zeroshot.text import normalize_name
from zeroshot.visual_bank import unit_rows

logger = logging.getLogger(__name__)

TRAIN_DIR = Path(__file__).resolve().parent
SOURCES_DIR = TRAIN_DIR / "bank_sources"
BANK_DIR = TRAIN_DIR / "vocab" / "visual_bank"
CONCEPTS_FILE = "concepts.json"
PROTOTYPES_FILE = "prototypes.npy"
DEFAULT_CACHE = Path("/tmp/bank_cache")
ENCODE_RUNG = "ensemble-260"
# The visual_bank section (but its embedding_output): the default model's (build_default.VISUAL_BANK, chosen
# leave-one-set-out on the tuning suite, docs/visual-bank.md) and `install`'s defaults.
DEFAULT_SECTION = {"threshold": 0.95, "scale": 30.0, "weight": 1.0, "margin": 0.02, "center": True}
PER_CLASS = 16          # images per concept: a stable mean at a bounded encoding cost
MIN_IMAGES = 8          # fewer left after decoding and de-duplication: the concept is dropped
DUPLICATE_BITS = 6      # 64-bit difference hashes this close count as the same picture
READ_CHUNK = 256        # blobs read from git at once


def dhash(img: Image.Image) -> int:
    """The 64-bit difference hash of a picture: 9x8 grey thumbnail, one bit per horizontal neighbour pair."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hash_bytes(data: bytes) -> Optional[int]:
    """:func:`dhash` of an encoded image, None if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (64, 64))
            return dhash(img)
    except Exception:  # noqa: BLE001 - any undecodable file is simply not hashed
        return None


def hash_files(paths: Iterable[Path]) -> np.ndarray:
    """uint64 difference hashes of the image files that decode."""
    out = [h for h in (hash_bytes(p.read_bytes()) for p in paths) if h is not None]
    return np.array(out, dtype=np.uint64)


def near(hashes: np.ndarray, reference: np.ndarray, bits: int = DUPLICATE_BITS) -> np.ndarray:
    """bool per hash: within ``bits`` differing bits of some reference hash."""
    if len(hashes) == 0 or len(reference) == 0:
        return np.zeros(len(hashes), bool)
    x = hashes[:, None] ^ reference[None, :]
    counts = np.zeros(x.shape, np.uint8)
    for shift in range(0, 64, 8):
        counts += _POPCOUNT[((x >> np.uint64(shift)) & np.uint64(255)).astype(np.uint8)]
    return (counts <= bits).any(axis=1)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def reference_hashes(devsets: Optional[Path], suite: Optional[Path]) -> Dict[str, np.ndarray]:
    """{"dev": hashes, "suite": hashes} of the images a bank picture must not copy (missing folders: empty)."""
    out = {}
    for name, root in (("dev", devsets), ("suite", suite)):
        paths = walk_images(root) if root is not None and root.is_dir() else []
        out[name] = hash_files(paths)
        logger.info("%s: %d reference images hashed", name, len(out[name]))
    return out


@dataclasses.dataclass
class Encoded:
    """One spec's images: class index, path in the repo, hash, image features (N, F); copies of references skipped."""

    classes: np.ndarray
    paths: List[str]
    hashes: np.ndarray
    features: np.ndarray
    removed: Dict[str, int]


def pick(spec: Spec, git_dir: Path, per_class: int,
         reference: Dict[str, np.ndarray]) -> Tuple[List[Tuple[int, str, int, bytes]], Dict[str, int]]:
    """Per class, the first ``per_class`` images in sampling order that decode and copy no reference image.

    Returns ((class index, path, hash, bytes) rows, {reference name: images skipped as its near-copies}).
    """
    rows: List[Tuple[int, str, int, bytes]] = []
    removed: Counter = Counter()
    for k, items in enumerate(class_candidates(git_dir, spec)):
        kept = 0
        for start in range(0, len(items), 2 * per_class):
            chunk = items[start:start + 2 * per_class]
            blobs = read_blobs(git_dir, [sha for _, sha in chunk])
            for path, sha in chunk:
                data = blobs.get(sha)
                h = hash_bytes(data) if data else None
                if h is None:
                    continue
                copies = [name for name, ref in reference.items() if near(np.array([h], np.uint64), ref)[0]]
                if copies:
                    removed[copies[0]] += 1
                    continue
                rows.append((k, path, h, data))
                kept += 1
                if kept == per_class:
                    break
            if kept == per_class:
                break
    return rows, dict(removed)


def encode_spec(spec: Spec, git_dir: Path, model: Model, per_class: int,
                reference: Dict[str, np.ndarray]) -> Encoded:
    """:func:`pick` a spec's images and encode them through the runtime (undecodable ones are skipped)."""
    rows, removed = pick(spec, git_dir, per_class, reference)
    with tempfile.TemporaryDirectory(prefix="bank_") as tmp:
        files = []
        for i, (_, path, _, data) in enumerate(rows):
            f = Path(tmp) / f"{i}{Path(path).suffix.lower() or '.jpg'}"
            f.write_bytes(data)
            files.append(f)
        emb = embed_images(model, files)
    ok = np.flatnonzero(emb.valid)
    logger.info("%s: %d images encoded, %s skipped as copies", spec.name, len(ok), removed or "none")
    return Encoded(np.array([rows[i][0] for i in ok], np.int64), [rows[i][1] for i in ok],
                   np.array([rows[i][2] for i in ok], np.uint64), emb.features.astype(np.float32), removed)


def cached_encode(spec: Spec, git_dir: Path, model: Model, per_class: int, reference: Dict[str, np.ndarray],
                  cache: Path, encoder_sha: str) -> Encoded:
    """:func:`encode_spec`, kept under ``cache`` by spec content, per-class count, references and encoder."""
    refs = {name: hashlib.sha256(np.sort(ref).tobytes()).hexdigest() for name, ref in reference.items()}
    key = hashlib.sha256(json.dumps([dataclasses.asdict(spec), per_class, refs, encoder_sha], sort_keys=True,
                                    default=list).encode()).hexdigest()[:16]
    path = cache / f"{spec.name}-{key}.npz"
    if path.is_file():
        z = np.load(path)
        return Encoded(z["classes"], list(z["paths"]), z["hashes"], z["features"], json.loads(str(z["removed"])))
    enc = encode_spec(spec, git_dir, model, per_class, reference)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, classes=enc.classes, paths=np.array(enc.paths), hashes=enc.hashes, features=enc.features,
             removed=json.dumps(enc.removed))
    tmp.replace(path)
    return enc


def prototype(features: np.ndarray) -> np.ndarray:
    """The normalised mean of the feature rows, each L2-normalised first."""
    return unit_rows(unit_rows(features).mean(axis=0))


def concepts_of(spec: Spec, enc: Encoded) -> Tuple[List[Dict[str, object]], List[np.ndarray]]:
    """The spec's concepts (records, prototypes) from its encoded images."""
    records, protos = [], []
    for k, cls in enumerate(spec.classes):
        rows = np.flatnonzero(enc.classes == k)
        if len(rows) < MIN_IMAGES:
            logger.info("%s/%s: %d images left; not a concept", spec.name, cls.ru, len(rows))
            continue
        records.append({"ru": cls.ru, "synonyms": list(cls.synonyms), "source": spec.name, "repo": spec.repo,
                        "commit": spec.commit, "images": int(len(rows))})
        protos.append(prototype(enc.features[rows]))
    return records, protos


def all_specs(sources: Path, suite: Optional[Path]) -> List[Spec]:
    """The bank's specs: every ``sources/*.json``, then every suite set's ``source.json``; names unique."""
    paths = sorted(Path(sources).glob("*.json")) + (spec_paths(suite) if suite is not None else [])
    specs = [load_spec(p) for p in paths]
    seen = Counter(s.name for s in specs)
    clash = [n for n, c in seen.items() if c > 1]
    if clash:
        raise ValueError(f"bank source names used twice: {clash}")
    return specs


def build(specs: Sequence[Spec], mirror: Path, model_dir: Path, rung: Optional[str], out: Optional[Path],
          cache: Path, reference: Dict[str, np.ndarray], per_class: int = PER_CLASS) -> Dict[str, object]:
    """Encode every spec whose snapshot is in ``mirror`` and write the bank to ``out`` (None: only fill the
    cache); returns the summary."""
    model = Model(model_dir, threads=1, variant=rung, spinning=False)
    encoder_sha = load_manifest(model_dir).file("image_encoder", rung).sha256
    records: List[Dict[str, object]] = []
    protos: List[np.ndarray] = []
    removed: Counter = Counter()
    skipped = []
    for spec in specs:
        git_dir = find_snapshot(mirror, spec.repo)
        if git_dir is None:
            skipped.append(spec.name)
            logger.warning("%s: no snapshot of %s under %s; left out", spec.name, spec.repo, mirror)
            continue
        enc = cached_encode(spec, git_dir, model, per_class, reference, cache, encoder_sha)
        removed.update(enc.removed)
        recs, ps = concepts_of(spec, enc)
        records += recs
        protos += ps
    if out is None:
        return {"concepts": len(records), "cached": [s.name for s in specs if s.name not in skipped]}
    if not protos:
        raise ValueError("no concept could be built: no source snapshot found")
    return write_bank(out, records, np.stack(protos), dict(removed), skipped, rung)


def write_bank(out: Path, records: List[Dict[str, object]], protos: np.ndarray, removed: Dict[str, int],
               skipped: List[str], rung: Optional[str]) -> Dict[str, object]:
    """concepts.json, prototypes.npy (float16) and BANK.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    names = {str(r["ru"]) for r in records}
    summary = {"rung": rung, "concepts": len(records), "names": len(names),
               "images": int(sum(int(r["images"]) for r in records)),
               "sources": len({r["source"] for r in records}), "duplicates_removed": removed,
               "sources_without_snapshot": skipped, "dim": int(protos.shape[1])}
    write_json_atomic(out / CONCEPTS_FILE, {"summary": summary, "concepts": records})
    np.save(out / PROTOTYPES_FILE, protos.astype(np.float16))
    (out / "BANK.md").write_text(bank_markdown(summary, records), encoding="utf-8")
    return summary


def bank_markdown(summary: Dict[str, object], records: List[Dict[str, object]]) -> str:
    """A short human summary: totals, de-duplication, concepts per source."""
    per_source = Counter(str(r["source"]) for r in records)
    repos = {str(r["source"]): str(r["repo"]) for r in records}
    lines = ["# The visual concept bank (written by `python -m train.visual_bank build`; do not edit)", "",
             f"- concepts (source x class): {summary['concepts']}; distinct Russian names: {summary['names']}",
             f"- images encoded: {summary['images']} (at most {PER_CLASS} per concept), rung {summary['rung']}, "
             f"{summary['dim']}-d prototypes in float16",
             f"- near-duplicates of reference images removed (difference hash within {DUPLICATE_BITS} bits): "
             f"{summary['duplicates_removed']}", "", "| source | repository | concepts |", "| --- | --- | --- |"]
    lines += [f"| {s} | {repos[s]} | {n} |" for s, n in sorted(per_source.items())]
    return "\n".join(lines) + "\n"


def read_bank(folder: Path = BANK_DIR) -> Tuple[List[Dict[str, object]], np.ndarray]:
    """(concept records, float16 prototypes (K, F)) of a written bank."""
    data = json.loads((Path(folder) / CONCEPTS_FILE).read_text(encoding="utf-8"))
    return data["concepts"], np.load(Path(folder) / PROTOTYPES_FILE)


def add_folders(root: Path, source: str, bank_dir: Path, model_dir: Path, rung: Optional[str],
                per_class: int = PER_CLASS) -> Dict[str, object]:
    """Add one concept per class folder of ``root`` (``root/<Russian name>/*.jpg``; the folder name is the
    concept's name) to the bank in ``bank_dir`` (created if absent), encoded by ``model_dir`` at ``rung``, as
    source ``source``; a concept of that source already in the bank is replaced. Returns the new summary."""
    records: List[Dict[str, object]] = []
    protos = np.zeros((0, 0), np.float32)
    if (Path(bank_dir) / CONCEPTS_FILE).is_file():
        records, protos = read_bank(bank_dir)
    keep = [i for i, r in enumerate(records) if r["source"] != source]
    records, protos = [records[i] for i in keep], protos[keep] if len(protos) else protos
    folders = read_folders(Path(root))
    for problem in folders.problems:
        logger.warning("%s", problem)
    model = Model(model_dir, threads=1, variant=rung, spinning=False)
    new_records, new_protos = [], []
    for label, name in enumerate(folders.classes):
        paths = [p for p, lab in zip(folders.images, folders.labels) if lab == label][:per_class]
        emb = embed_images(model, paths)
        if int(emb.valid.sum()) < MIN_IMAGES:
            logger.warning("%s: %d images decode, fewer than %d; not a concept", Path(root) / name,
                           int(emb.valid.sum()), MIN_IMAGES)
            continue
        new_records.append({"ru": name, "synonyms": [], "source": source, "repo": source, "commit": "",
                            "images": int(emb.valid.sum())})
        new_protos.append(prototype(emb.features))
    if not new_protos:
        raise ValueError(f"{root}: no class folder with {MIN_IMAGES}+ decodable images")
    stacked = np.stack(new_protos)
    if len(protos) and protos.shape[1] != stacked.shape[1]:
        raise ValueError(f"{bank_dir}: the bank's prototypes are {protos.shape[1]}-d, {model_dir} makes "
                         f"{stacked.shape[1]}-d features: build both with the same model and rung")
    merged = np.concatenate([protos.astype(np.float32), stacked]) if len(protos) else stacked
    return write_bank(Path(bank_dir), records + new_records, merged, {}, [], rung)


MODEL_CONCEPTS = "visual_bank.json"
MODEL_NAMES = "visual_bank.names.npy"


def model_prototypes(variant: Optional[str]) -> str:
    return f"visual_bank.{variant or 'default'}.npy"


def add_to_model(model_dir: Path, bank_dir: Path, section: Dict[str, object],
                 slices: Optional[Dict[Optional[str], Tuple[int, int]]] = None) -> Dict[str, object]:
    """Put a written bank into a model folder: concepts, their name embeddings, prototypes per variant.

    The names (each concept's Russian name and synonyms) are embedded by the folder's own text encoder at
    ``section["embedding_output"]``, through the runtime, so matching at run time compares like with like.
    ``slices``: variant (None: the defaults) -> (start, stop) columns of the bank's prototypes that make
    that variant's feature space (the default model's Lite2 rungs use the Lite2 part of the ensemble's
    features); a variant not named takes every column. Returns what was added (counts, bytes).
    """
    from .manifest_io import add_to_manifest

    model_dir = Path(model_dir)
    records, protos = read_bank(bank_dir)
    concepts = [{"ru": r["ru"], "synonyms": r["synonyms"], "source": r["repo"]} for r in records]
    write_json_atomic(model_dir / MODEL_CONCEPTS, {"concepts": concepts})
    names = [n for c in concepts for n in [c["ru"], *c["synonyms"]]]
    model = Model(model_dir, threads=1, spinning=False)
    vecs = model.encode_texts([normalize_name(n, model.text_cfg.normalize) for n in names],
                              output=str(section["embedding_output"]))
    np.save(model_dir / MODEL_NAMES, unit_rows(vecs).astype(np.float16))
    manifest = load_manifest(model_dir)
    slices = slices or {}
    variant_files: Dict[str, Dict[str, Optional[str]]] = {}
    whole = (0, protos.shape[1])
    for variant in [None, *manifest.variants]:
        start, stop = slices.get(variant, whole)
        rung = model if variant is None else Model(model_dir, threads=1, variant=variant, verify=False, spinning=False)
        width = rung.features_width()
        if width is not None and width != stop - start:
            raise ValueError(f"{model_dir}: variant {variant or 'default'} makes {width}-d features, the bank's "
                             f"prototypes give {stop - start}: build the bank with that variant (--rung)")
        if variant is not None and (start, stop) == slices.get(None, whole):
            variant_files[variant] = {"visual_prototypes": None}  # the defaults' file serves it
            continue
        part = unit_rows(protos[:, start:stop].astype(np.float32))
        np.save(model_dir / model_prototypes(variant), part.astype(np.float16))
        if variant is not None:
            variant_files[variant] = {"visual_prototypes": model_prototypes(variant)}
    add_to_manifest(model_dir, {"visual_concepts": MODEL_CONCEPTS, "visual_names": MODEL_NAMES,
                                "visual_prototypes": model_prototypes(None)},
                    {"visual_bank": section}, variant_files)
    written = [MODEL_CONCEPTS, MODEL_NAMES, model_prototypes(None)]
    size = sum((model_dir / f).stat().st_size
               for f in written + [v["visual_prototypes"] for v in variant_files.values() if v["visual_prototypes"]])
    logger.info("visual bank in %s: %d concepts, %d names, %.1f MB", model_dir, len(concepts), len(names), size / 1e6)
    return {"concepts": len(concepts), "names": len(names), "bytes": size}


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"not a yes/no value: {text!r}")
    return text.lower() in ("true", "1", "yes")


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.visual_bank", "Build the visual concept bank from pinned image sources.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="encode every source and write the bank")
    b.add_argument("--mirror", type=Path, default=SNAPSHOTS_DIR, help="folder of fetch snapshots (owner+name/)")
    b.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder whose image encoder is used")
    b.add_argument("--rung", default=ENCODE_RUNG, help="the model's variant to encode with ('' = its defaults)")
    b.add_argument("--sources", type=Path, default=SOURCES_DIR, help="folder of bank source specs")
    b.add_argument("--suite", type=Path, default=SUITE_DIR, help="the tuning suite (its specs are sources; "
                   "its images are references for de-duplication)")
    b.add_argument("--devsets", type=Path, default=DEVSETS_DIR, help="the dev set (de-duplication reference)")
    b.add_argument("--per-class", type=int, default=PER_CLASS, help="images per concept at most")
    b.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="encoded images per spec")
    b.add_argument("--out", type=Path, default=BANK_DIR, help="where the bank is written")
    b.add_argument("--only", default=None, help="encode only the specs whose name matches this pattern (fnmatch) "
                   "into the cache and write no bank: runs in parallel fill the cache, then one build writes it")
    a = sub.add_parser("add-folders", help="add your own labelled folders (ROOT/<Russian name>/*.jpg) to a bank")
    a.add_argument("root", type=Path)
    a.add_argument("--source", required=True, help="a name for this collection (its concepts are replaced on re-run)")
    a.add_argument("--model", type=Path, default=MODEL_DIR)
    a.add_argument("--rung", default=ENCODE_RUNG, help="the variant whose features the bank holds ('' = defaults)")
    a.add_argument("--out", type=Path, default=BANK_DIR, help="the bank to extend (created if absent)")
    i = sub.add_parser("install", help="put a bank into a model folder (any model: its own text encoder "
                       "embeds the names; the bank must hold that model's features)")
    i.add_argument("--model", type=Path, required=True)
    i.add_argument("--bank", type=Path, default=BANK_DIR)
    i.add_argument("--embedding-output", required=True,
                   help="the text encoder's output that embeds a name (the default model: name_embedding)")
    for key, value in DEFAULT_SECTION.items():
        i.add_argument(f"--{key}", type=type(value) if not isinstance(value, bool) else _flag, default=value,
                       help=f"the visual_bank section's {key} (default: %(default)s)")
    s = sub.add_parser("stats", help="print a written bank's summary")
    s.add_argument("--out", type=Path, default=BANK_DIR)
    args = parse_args(parser, argv)
    if args.command == "add-folders":
        summary = add_folders(args.root, args.source, args.out, args.model, args.rung or None)
        print(json.dumps(summary, ensure_ascii=False, indent=1))
        return 0
    if args.command == "install":
        section = {"embedding_output": args.embedding_output, **{k: getattr(args, k) for k in DEFAULT_SECTION}}
        print(json.dumps(add_to_model(args.model, args.bank, section), indent=1))
        return 0
    if args.command == "stats":
        records, protos = read_bank(args.out)
        print(json.dumps({"concepts": len(records), "names": len({r["ru"] for r in records}),
                          "shape": list(protos.shape)}, ensure_ascii=False))
        return 0
    specs = all_specs(args.sources, args.suite)
    if args.only:
        specs = [s for s in specs if fnmatch.fnmatchcase(s.name, args.only)]
    reference = reference_hashes(args.devsets, args.suite)
    summary = build(specs, args.mirror, args.model, args.rung or None, None if args.only else args.out, args.cache,
                    reference, args.per_class)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
