"""Build and check the tuning suite: labelled image sets from public git repositories, in the contest layout.

Usage::

    python -m contest.suite_data build --spec data/suite/<set>/source.json --source PATH_OR_URL [--out data/suite]
    python -m contest.suite_data build-all --mirror MIRROR [--root data/suite]
    python -m contest.suite_data check [--root data/suite]
    python -m contest.suite_data survey --source PATH_OR_URL --folder F [--folder F ...] [--commit C]

A set is ``<root>/<set>/`` with ``classes.json`` (JSON list of Russian class
names; a class's number is its position), ``img/<id>.jpg``, ``gt.json``
(``{"<set>": {"<id>": <class index>}}``), ``source.json`` (the spec below, the
one input of ``build``) and ``SOURCE.md`` (written by ``build`` from the spec
and the counts; do not edit it by hand).

``build`` reads the files of the spec's pinned commit from git objects
(``git ls-tree`` / ``git cat-file``, never a working tree), so a PATH may be a
bare git dir (e.g. a ``fetch`` snapshot ``MIRROR/owner+name/repo``) or
a work tree; a URL (``https://``, ``file://``, ...) is cloned bare into a temp
dir. A commit the source does not hold is refused.

Sampling, per class: the class's images are ordered by
``sha1("<set>/<path in repo>")``; identical files (same blob) are kept once,
and a blob found under two classes is dropped from both. A class with fewer
than ``per_class_min`` images is an error (drop it from the spec and name it
under ``dropped``); otherwise the first ``per_class_max`` images that decode
are kept (an unreadable one is logged and replaced by the next). Each image
is opened by content (a ``.jpg`` that is really WebP/PNG is fine), EXIF
orientation applied, alpha composited on white, converted to RGB, resized
with Lanczos so its longest side is at most ``max_side`` (never upscaled) and
saved as baseline JPEG at ``quality``. Its id (file name without ``.jpg``) is
the first 16 hex digits of ``sha1("<set>/<path in repo>")``, so it does not
reveal the class. A rebuild gives byte-identical files (same Pillow).

Spec fields (``source.json``; an unknown key is an error):

==========================  =========================================================================
``name``                    set name = folder name under the root, ``[a-z0-9_-]+``
``domain``                  a few words: what the images show (e.g. "indoor and outdoor scenes")
``repo``                    ``owner/name`` on GitHub
``commit``                  40 lowercase hex digits: the commit whose files are read
``licence``                 the licence as the repository states it, or ``"none stated"``
``layout``                  ``"folders"`` or ``"csv"``
``folders``                 (folders) list of root folders in the repo to pool (e.g. train and test;
                            ``"/"``: the repository's top level);
                            a class is a directory directly below a root, its images every file
                            below that directory (recursively)
``csv``                     (csv) list of CSV files in the repo
``csv_file_column``         (csv) column holding the image path: a header name, or a 0-based index
``csv_label_column``        (csv) column holding the label, likewise
``csv_header``              (csv) whether the first row is a header (default true)
``csv_root``                (csv) folder the image paths are relative to (default: the CSV's folder)
``classes``                 ordered list of ``{"source": <class dir or label, or a list of them to
                            merge, e.g. ["Coast", "coast"]>, "ru": <Russian class name>}``, and
                            optionally ``"synonyms"``: other Russian names (the visual concept bank's
                            specs use them; the suite ignores them); the order is the class index
``include``                 file-name patterns (fnmatch, case-insensitive) of images to take
                            (default: common image extensions)
``exclude``                 file-name patterns to skip (default: none)
``per_class_max``           images kept per class at most (default 60)
``per_class_min``           fewer images found is an error (default 15)
``max_side``                longest side in px after resizing (default 400)
``quality``                 JPEG quality (default 90)
``min_classes_exception``   why this set may have fewer than 10 classes (``check`` accepts it then)
``dropped``                 list of ``{"source": ..., "reason": ...}``: classes of the source left out
``notes``                   free text for SOURCE.md (sampling remarks, label caveats)
==========================  =========================================================================

``check`` validates every set under the root (10-40 classes unless
``min_classes_exception``, ``per_class_min``..``per_class_max`` images per
class, every image an RGB JPEG with longest side <= ``max_side``, gt ids ==
image stems, class names non-empty Cyrillic without Latin letters, total size
under 80 MB), prints a table (set, domain, classes, images, MB) to stdout and
exits 1 on any violation.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from PIL import Image, ImageOps

from zeroshot.command import make_parser, parse_args
from zeroshot.limits import REPO_ROOT as REPO

logger = logging.getLogger(__name__)

DEFAULT_ROOT = REPO / "data" / "suite"
ROOT_HELP = "suite root (default: data/suite of this repository)"
IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.gif", "*.tif", "*.tiff")
MIN_CLASSES, MAX_CLASSES = 10, 40
MAX_TOTAL_MB = 80.0
ID_HEX = 16
_SPEC_KEYS = {
    "name", "domain", "repo", "commit", "licence", "layout", "folders", "csv", "csv_file_column",
    "csv_label_column", "csv_header", "csv_root", "classes", "include", "exclude", "per_class_max",
    "per_class_min", "max_side", "quality", "min_classes_exception", "dropped", "notes",
}
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")
_CYRILLIC_RE = re.compile(r"[\u0400-\u04ff]")
_LATIN_RE = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class ClassSpec:
    """One class: the source dirs/labels merged into it, its Russian name and other Russian names for it."""

    source: Tuple[str, ...]
    ru: str
    synonyms: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Spec:
    """A set's ``source.json``, validated (see the module docstring for the fields)."""

    name: str
    domain: str
    repo: str
    commit: str
    licence: str
    layout: str
    classes: Tuple[ClassSpec, ...]
    folders: Tuple[str, ...] = ()
    csv: Tuple[str, ...] = ()
    csv_file_column: object = None
    csv_label_column: object = None
    csv_header: bool = True
    csv_root: Optional[str] = None
    include: Tuple[str, ...] = IMAGE_PATTERNS
    exclude: Tuple[str, ...] = ()
    per_class_max: int = 60
    per_class_min: int = 15
    max_side: int = 400
    quality: int = 90
    min_classes_exception: str = ""
    dropped: Tuple[Tuple[str, str], ...] = ()
    notes: str = ""


def _need(cond: bool, path: Path, what: str) -> None:
    """Raise ValueError naming the spec file when ``cond`` is false."""
    if not cond:
        raise ValueError(f"{path}: {what}")


def _str_list(raw: object, path: Path, key: str) -> Tuple[str, ...]:
    """A non-empty string, or a list of non-empty strings, as a tuple."""
    items = [raw] if isinstance(raw, str) else raw
    _need(isinstance(items, list) and bool(items) and all(isinstance(s, str) and s for s in items),
          path, f"{key!r} must be a non-empty string or list of non-empty strings")
    return tuple(items)  # type: ignore[arg-type]


def _int_field(raw: Dict[str, object], key: str, default: int, lo: int, hi: int, path: Path) -> int:
    """An integer field within [lo, hi]."""
    value = raw.get(key, default)
    _need(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
          path, f"{key!r} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)  # type: ignore[arg-type]


def _classes(raw: object, path: Path) -> Tuple[ClassSpec, ...]:
    """The ordered class list; Russian names and sources unique."""
    _need(isinstance(raw, list) and bool(raw), path, "'classes' must be a non-empty list")
    out = []
    for i, item in enumerate(raw):  # type: ignore[arg-type]
        _need(isinstance(item, dict) and {"source", "ru"} <= set(item) <= {"source", "ru", "synonyms"}, path,
              f"classes[{i}] must be an object with 'source', 'ru' and optionally 'synonyms'")
        ru = item["ru"]
        _need(isinstance(ru, str) and ru.strip() == ru and bool(ru), path,
              f"classes[{i}].ru must be a trimmed non-empty string")
        synonyms = _str_list(item["synonyms"], path, f"classes[{i}].synonyms") if "synonyms" in item else ()
        out.append(ClassSpec(_str_list(item["source"], path, f"classes[{i}].source"), ru, synonyms))
    names = [c.ru for c in out]
    _need(len(set(names)) == len(names), path, "Russian class names must be unique")
    sources = [s for c in out for s in c.source]
    _need(len(set(sources)) == len(sources), path, "a source class may belong to one class only")
    return tuple(out)


def _dropped(raw: object, path: Path) -> Tuple[Tuple[str, str], ...]:
    """The ``dropped`` list as (source, reason) pairs."""
    _need(isinstance(raw, list), path, "'dropped' must be a list")
    out = []
    for i, item in enumerate(raw):  # type: ignore[arg-type]
        _need(isinstance(item, dict) and set(item) == {"source", "reason"}
              and all(isinstance(v, str) and v for v in item.values()), path,
              f"dropped[{i}] must be {{'source': str, 'reason': str}}")
        out.append((item["source"], item["reason"]))
    return tuple(out)


def _layout_fields(raw: Dict[str, object], path: Path) -> Dict[str, object]:
    """The layout-specific fields, checked against ``layout``."""
    layout = raw.get("layout")
    csv_keys = {"csv", "csv_file_column", "csv_label_column", "csv_header", "csv_root"}
    if layout == "folders":
        _need(not csv_keys & set(raw), path, f"layout 'folders' takes none of {sorted(csv_keys)}")
        return {"folders": tuple(f.strip("/") for f in _str_list(raw.get("folders"), path, "folders"))}
    _need(layout == "csv", path, f"'layout' must be 'folders' or 'csv', got {layout!r}")
    _need("folders" not in raw, path, "layout 'csv' takes no 'folders'")
    cols = {}
    for key in ("csv_file_column", "csv_label_column"):
        value = raw.get(key)
        _need((isinstance(value, str) and bool(value)) or (isinstance(value, int) and not isinstance(value, bool)
                                                            and value >= 0), path, f"{key!r} must be a name or index")
        cols[key] = value
    header = raw.get("csv_header", True)
    _need(isinstance(header, bool), path, "'csv_header' must be true or false")
    _need(header or all(isinstance(v, int) for v in cols.values()), path, "without a header, columns must be indices")
    root = raw.get("csv_root")
    _need(root is None or isinstance(root, str), path, "'csv_root' must be a string")
    return {"csv": _str_list(raw.get("csv"), path, "csv"), "csv_header": header,
            "csv_root": root.strip("/") if isinstance(root, str) else None, **cols}


def load_spec(path: Path) -> Spec:
    """Read and validate a ``source.json``; ValueError naming the file and the field on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    _need(isinstance(raw, dict), path, "must be a JSON object")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    _need(not unknown, path, f"unknown key(s) {unknown}")
    for key in ("name", "domain", "repo", "commit", "licence", "layout", "classes"):
        _need(key in raw, path, f"missing key {key!r}")
    for key in ("name", "domain", "repo", "commit", "licence", "min_classes_exception", "notes"):
        _need(isinstance(raw.get(key, ""), str), path, f"{key!r} must be a string")
    _need(re.fullmatch(r"[a-z0-9_-]+", raw["name"]) is not None, path, "'name' must match [a-z0-9_-]+")
    _need(re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", raw["repo"]) is not None, path, "'repo' must be owner/name")
    _need(re.fullmatch(r"[0-9a-f]{40}", raw["commit"]) is not None, path, "'commit' must be 40 lowercase hex digits")
    _need(bool(raw["domain"].strip()) and bool(raw["licence"].strip()), path,
          "'domain' and 'licence' must be non-empty")
    per_class_min = _int_field(raw, "per_class_min", 15, 1, 100000, path)
    return Spec(
        name=raw["name"], domain=raw["domain"], repo=raw["repo"], commit=raw["commit"], licence=raw["licence"],
        layout=raw["layout"], classes=_classes(raw["classes"], path),
        include=_str_list(raw.get("include", list(IMAGE_PATTERNS)), path, "include"),
        exclude=_str_list(raw["exclude"], path, "exclude") if raw.get("exclude") else (),
        per_class_max=_int_field(raw, "per_class_max", 60, per_class_min, 100000, path), per_class_min=per_class_min,
        max_side=_int_field(raw, "max_side", 400, 16, 10000, path),
        quality=_int_field(raw, "quality", 90, 1, 100, path),
        min_classes_exception=raw.get("min_classes_exception", ""), dropped=_dropped(raw.get("dropped", []), path),
        notes=raw.get("notes", ""), **_layout_fields(raw, path),  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- git access


def _git(git_dir: Path, *args: str, stdin: Optional[bytes] = None) -> bytes:
    """Run ``git --git-dir=git_dir args`` and return stdout; RuntimeError with stderr on failure."""
    cmd = ["git", "-c", "safe.directory=*", "--literal-pathspecs", f"--git-dir={git_dir}", *args]
    proc = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def git_dir_of(path: Path) -> Path:
    """The git dir of a bare repository or a work tree at ``path``; FileNotFoundError if it is neither."""
    path = Path(path)
    if (path / ".git").exists():
        out = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(path), "rev-parse", "--absolute-git-dir"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if out.returncode == 0:
            return Path(out.stdout.decode().strip())
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    raise FileNotFoundError(f"not a git repository (bare dir or work tree): {path}")


def require_commit(git_dir: Path, commit: str) -> None:
    """ValueError if ``git_dir`` does not hold ``commit``."""
    try:
        _git(git_dir, "cat-file", "-e", f"{commit}^{{commit}}")
    except RuntimeError as exc:
        raise ValueError(f"commit {commit} is not in {git_dir}") from exc


def list_tree(git_dir: Path, commit: str, folder: str) -> Dict[str, str]:
    """{path: blob sha} of every file under ``folder`` ('' = all) at ``commit``."""
    args = ["ls-tree", "-r", "-z", "--full-tree", commit]
    if folder:
        args += ["--", folder]
    out = {}
    for entry in _git(git_dir, *args).split(b"\0"):
        if not entry:
            continue
        meta, name = entry.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        if kind == "blob" and mode != "120000":
            out[name.decode("utf-8", "surrogateescape")] = sha
    return out


def read_blobs(git_dir: Path, shas: Sequence[str]) -> Dict[str, Optional[bytes]]:
    """{sha: content, or None where the object is missing (e.g. left out of a snapshot)}."""
    if not shas:
        return {}
    raw = _git(git_dir, "cat-file", "--batch", stdin="".join(f"{s}\n" for s in shas).encode())
    out: Dict[str, Optional[bytes]] = {}
    pos = 0
    for sha in shas:
        end = raw.index(b"\n", pos)
        header = raw[pos:end].decode().split()
        pos = end + 1
        if len(header) < 3 or header[1] == "missing":
            out[sha] = None
            continue
        size = int(header[2])
        out[sha] = raw[pos:pos + size]
        pos += size + 1
    return out


def open_source(source: str, workdir: Path) -> Path:
    """The git dir for a local PATH, or for a URL cloned bare into ``workdir``."""
    if _URL_RE.match(source) and not Path(source).exists():
        dest = workdir / "clone.git"
        logger.info("cloning %s", source)
        proc = subprocess.run(["git", "clone", "--bare", "--quiet", source, str(dest)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise FileNotFoundError(f"could not clone {source}: {proc.stderr.decode(errors='replace').strip()}")
        return dest
    return git_dir_of(Path(source))


# ---------------------------------------------------------------- candidates


def _wanted(path: str, spec: Spec) -> bool:
    """Whether the file name matches ``include`` and not ``exclude`` (case-insensitive)."""
    base = path.rsplit("/", 1)[-1].lower()
    if base.startswith("."):
        return False
    return any(fnmatch.fnmatchcase(base, p.lower()) for p in spec.include) and \
        not any(fnmatch.fnmatchcase(base, p.lower()) for p in spec.exclude)


def _folder_candidates(git_dir: Path, spec: Spec) -> Dict[str, Dict[str, str]]:
    """{source class: {path: blob sha}} for the folders layout."""
    found: Dict[str, Dict[str, str]] = {}
    for folder in spec.folders:
        tree = list_tree(git_dir, spec.commit, folder)
        if not tree:
            raise ValueError(f"folder {folder!r} is empty or missing at {spec.commit} in {git_dir}")
        for path, sha in tree.items():
            rest = path[len(folder) + 1:] if folder else path
            if "/" in rest and _wanted(path, spec):
                found.setdefault(rest.split("/", 1)[0], {})[path] = sha
    return found


def _csv_rows(text: str, spec: Spec, where: str) -> Iterator[Tuple[str, str]]:
    """(file, label) pairs of one CSV text."""
    rows = list(csv.reader(io.StringIO(text)))
    cols = [spec.csv_file_column, spec.csv_label_column]
    if spec.csv_header and rows:
        header = [h.strip() for h in rows.pop(0)]
        for i, col in enumerate(cols):
            if isinstance(col, str):
                if col not in header:
                    raise ValueError(f"{where}: no column {col!r} in header {header}")
                cols[i] = header.index(col)
    for row in rows:
        if row and max(cols) < len(row):  # type: ignore[type-var]
            yield row[cols[0]].strip(), row[cols[1]].strip()  # type: ignore[index]


def _csv_candidates(git_dir: Path, spec: Spec) -> Dict[str, Dict[str, str]]:
    """{source label: {path: blob sha}} for the csv layout."""
    tree = list_tree(git_dir, spec.commit, "")
    found: Dict[str, Dict[str, str]] = {}
    for csv_path in spec.csv:
        if csv_path not in tree:
            raise ValueError(f"CSV {csv_path!r} not found at {spec.commit} in {git_dir}")
        text = read_blobs(git_dir, [tree[csv_path]])[tree[csv_path]]
        root = spec.csv_root if spec.csv_root is not None else csv_path.rpartition("/")[0]
        for name, label in _csv_rows((text or b"").decode("utf-8-sig"), spec, csv_path):
            path = f"{root}/{name.lstrip('/')}" if root else name.lstrip("/")
            if path not in tree:
                logger.warning("%s: %s is listed but not in the tree; skipped", csv_path, path)
            elif _wanted(path, spec):
                found.setdefault(label, {})[path] = tree[path]
    return found


def sample_key(set_name: str, path: str) -> str:
    """sha1 hex of ``<set>/<path>``: the sampling order, and (first 16 digits) the image id."""
    return hashlib.sha1(f"{set_name}/{path}".encode("utf-8", "surrogateescape")).hexdigest()


def class_candidates(git_dir: Path, spec: Spec) -> List[List[Tuple[str, str]]]:
    """Per spec class, its (path, blob sha) in sampling order; duplicate blobs kept once, shared ones dropped."""
    found = _folder_candidates(git_dir, spec) if spec.layout == "folders" else _csv_candidates(git_dir, spec)
    missing = [s for c in spec.classes for s in c.source if s not in found]
    if missing:
        raise ValueError(f"{spec.name}: source class(es) {missing} not found; present: {sorted(found)}")
    per_class = []
    for cls in spec.classes:
        items = sorted(((p, sha) for s in cls.source for p, sha in found[s].items()),
                       key=lambda ps: sample_key(spec.name, ps[0]))
        seen, unique = set(), []
        for path, sha in items:
            if sha not in seen:
                seen.add(sha)
                unique.append((path, sha))
        if len(unique) < len(items):
            logger.info("%s/%s: %d duplicate file(s) kept once", spec.name, cls.source[0], len(items) - len(unique))
        per_class.append(unique)
    owners: Dict[str, int] = {}
    for items in per_class:
        for sha in {sha for _, sha in items}:
            owners[sha] = owners.get(sha, 0) + 1
    shared = {sha for sha, n in owners.items() if n > 1}
    if shared:
        logger.warning("%s: %d file(s) appear under two classes; dropped from both", spec.name, len(shared))
    return [[(p, sha) for p, sha in items if sha not in shared] for items in per_class]


# ---------------------------------------------------------------- images


def to_jpeg(data: bytes, max_side: int, quality: int) -> Tuple[bytes, Tuple[int, int]]:
    """Decode ``data`` by content, apply EXIF orientation, flatten alpha on white, RGB, shrink, JPEG.

    Returns the JPEG bytes and the original (width, height). Raises OSError/ValueError if undecodable.
    """
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        size = opened.size
        img = ImageOps.exif_transpose(opened)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue(), size


@dataclass
class ClassResult:
    """What build kept of one class."""

    spec: ClassSpec
    found: int
    kept: Dict[str, bytes] = field(default_factory=dict)  # id -> JPEG bytes
    skipped: int = 0


def gather_class(git_dir: Path, spec: Spec, cls: ClassSpec, items: List[Tuple[str, str]]) -> ClassResult:
    """Read the class's files in sampling order until ``per_class_max`` decode; ValueError below ``per_class_min``."""
    result = ClassResult(cls, len(items))
    if len(items) < spec.per_class_min:
        raise ValueError(f"{spec.name}: class {cls.source} has {len(items)} images < per_class_min "
                         f"{spec.per_class_min}; drop it from the spec (and list it under 'dropped')")
    pos = 0
    while len(result.kept) < spec.per_class_max and pos < len(items):
        batch = items[pos:pos + spec.per_class_max - len(result.kept)]
        pos += len(batch)
        blobs = read_blobs(git_dir, [sha for _, sha in batch])
        for path, sha in batch:
            data = blobs.get(sha)
            try:
                if data is None:
                    raise OSError("blob missing from the repository")
                jpeg, _ = to_jpeg(data, spec.max_side, spec.quality)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                logger.warning("%s: skipped %s: %s", spec.name, path, exc)
                result.skipped += 1
                continue
            result.kept[sample_key(spec.name, path)[:ID_HEX]] = jpeg
    if len(result.kept) < spec.per_class_min:
        raise ValueError(f"{spec.name}: class {cls.source} has {len(result.kept)} readable images "
                         f"< per_class_min {spec.per_class_min}")
    return result


# ---------------------------------------------------------------- writing a set


def _write_json(path: Path, obj: object) -> None:
    """UTF-8 JSON, Cyrillic as is, two-space indent, trailing newline."""
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=isinstance(obj, dict)) + "\n",
                    encoding="utf-8")


def _sampling_text(spec: Spec) -> str:
    """The sampling rule in words, for SOURCE.md."""
    return (f"per class, every image if it has at most {spec.per_class_max}, else the first {spec.per_class_max} "
            f"that decode in order of sha1(\"{spec.name}/<path in repo>\") (identical files kept once; a file under "
            f"two classes dropped); classes with fewer than {spec.per_class_min} images left out; longest side resized "
            f"to at most {spec.max_side} px with Lanczos (never upscaled), EXIF orientation applied, RGB JPEG quality "
            f"{spec.quality}; file name = first {ID_HEX} hex digits of that sha1")


def source_markdown(spec: Spec, results: Sequence[ClassResult]) -> str:
    """SOURCE.md text: where the images come from, the licence, the sampling, the class map with counts."""
    where = (f"folders {', '.join(f'`{f}`' for f in spec.folders)} (a class is a directory directly below each; "
             "its images are every file below it)" if spec.layout == "folders" else
             f"CSV {', '.join(f'`{c}`' for c in spec.csv)} (file column {spec.csv_file_column!r}, "
             f"label column {spec.csv_label_column!r})")
    kept = sum(len(r.kept) for r in results)
    lines = [
        f"# {spec.name}: {spec.domain}", "",
        "Generated by `python -m contest.suite_data build` from `source.json`; edit that, not this file.", "",
        f"- Repository: https://github.com/{spec.repo}",
        f"- Commit: `{spec.commit}`",
        f"- Read from: {where}",
        f"- Licence (as stated): {spec.licence}",
        f"- Sampling: {_sampling_text(spec)}",
        f"- Result: {len(results)} classes, {kept} images",
    ]
    if spec.min_classes_exception:
        lines.append(f"- Fewer than {MIN_CLASSES} classes: {spec.min_classes_exception}")
    if spec.notes:
        lines += ["", "## Notes", "", spec.notes]
    lines += ["", "## Classes", "", "| # | source (English) | Russian | found | kept |", "|---|---|---|---|---|"]
    for i, r in enumerate(results):
        src = ", ".join(f"`{s}`" for s in r.spec.source)
        lines.append(f"| {i} | {src} | {r.spec.ru} | {r.found} | {len(r.kept)} |")
    if spec.dropped:
        lines += ["", "## Left out", "", "| source | reason |", "|---|---|"]
        lines += [f"| `{s}` | {reason} |" for s, reason in spec.dropped]
    return "\n".join(lines) + "\n"


def write_set(out_dir: Path, spec: Spec, results: Sequence[ClassResult]) -> None:
    """Replace ``out_dir``'s classes.json, gt.json, SOURCE.md and img/ with the built set."""
    ids = [i for r in results for i in r.kept]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{spec.name}: image id collision")
    img_dir = out_dir / "img"
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True)
    gt = {}
    for index, result in enumerate(results):
        for image_id, jpeg in sorted(result.kept.items()):
            (img_dir / f"{image_id}.jpg").write_bytes(jpeg)
            gt[image_id] = index
    _write_json(out_dir / "classes.json", [r.spec.ru for r in results])
    _write_json(out_dir / "gt.json", {spec.name: dict(sorted(gt.items()))})
    (out_dir / "SOURCE.md").write_text(source_markdown(spec, results), encoding="utf-8")


def build(spec_path: Path, source: str, out_root: Path) -> Path:
    """Build the set of ``spec_path`` from ``source`` (git dir, work tree or URL) into ``out_root/<name>``."""
    spec = load_spec(spec_path)
    with tempfile.TemporaryDirectory(prefix="suite_data_") as tmp:
        git_dir = open_source(source, Path(tmp))
        require_commit(git_dir, spec.commit)
        candidates = class_candidates(git_dir, spec)
        results = []
        for cls, items in zip(spec.classes, candidates):
            result = gather_class(git_dir, spec, cls, items)
            logger.info("%s: %-28s found %4d kept %3d", spec.name, cls.source[0], result.found, len(result.kept))
            results.append(result)
    out_dir = Path(out_root) / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_copy = out_dir / "source.json"
    if not spec_copy.exists() or spec_copy.resolve() != Path(spec_path).resolve():
        shutil.copyfile(spec_path, spec_copy)
    write_set(out_dir, spec, results)
    logger.info("%s: %d classes, %d images -> %s", spec.name, len(results),
                sum(len(r.kept) for r in results), out_dir)
    return out_dir


def find_snapshot(mirror: Path, repo: str) -> Optional[Path]:
    """The git dir of ``repo``'s snapshot under ``mirror`` (``owner+name/repo[/.git]``), or None."""
    base = Path(mirror) / repo.replace("/", "+")
    for candidate in (base / "repo", base):
        try:
            return git_dir_of(candidate)
        except FileNotFoundError:
            continue
    return None


def spec_paths(root: Path) -> List[Path]:
    """Every ``<root>/<set>/source.json``, sorted."""
    return sorted(Path(root).glob("*/source.json"))


def build_all(mirror: Path, root: Path) -> int:
    """Rebuild every set under ``root`` whose snapshot is in ``mirror``; 1 if any build failed."""
    failed = 0
    for path in spec_paths(root):
        spec = load_spec(path)
        git_dir = find_snapshot(mirror, spec.repo)
        if git_dir is None:
            logger.warning("%s: no snapshot of %s under %s; not rebuilt", spec.name, spec.repo, mirror)
            continue
        try:
            build(path, str(git_dir), root)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            logger.error("%s: %s", spec.name, exc)
            failed += 1
    return 1 if failed else 0


# ---------------------------------------------------------------- check


@dataclass
class SetReport:
    """One set's numbers and problems, as check prints them."""

    name: str
    domain: str = "?"
    classes: int = 0
    images: int = 0
    bytes: int = 0
    problems: List[str] = field(default_factory=list)


def _check_names(names: object, spec: Spec, report: SetReport) -> int:
    """Class-list problems into ``report``; returns the class count."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        report.problems.append("classes.json is not a list of strings")
        return 0
    if names != [c.ru for c in spec.classes]:
        report.problems.append("classes.json differs from source.json's classes")
    for n in names:
        if not n.strip() or not _CYRILLIC_RE.search(n) or _LATIN_RE.search(n):
            report.problems.append(f"class name {n!r} is not non-empty Cyrillic")
    if not MIN_CLASSES <= len(names) <= MAX_CLASSES and not (len(names) < MIN_CLASSES and spec.min_classes_exception):
        report.problems.append(f"{len(names)} classes, not {MIN_CLASSES}-{MAX_CLASSES}")
    return len(names)


def _check_images(set_dir: Path, spec: Spec, gt: Dict[str, int], n_classes: int, report: SetReport) -> None:
    """Image-level problems into ``report``: ids, labels, per-class counts, format and size."""
    files = sorted((set_dir / "img").glob("*"))
    stems = {f.stem for f in files}
    if stems != set(gt):
        report.problems.append(f"gt ids != img stems ({len(set(gt) - stems)} missing, {len(stems - set(gt))} extra)")
    counts = [0] * n_classes
    for label in gt.values():
        if isinstance(label, int) and 0 <= label < n_classes:
            counts[label] += 1
        else:
            report.problems.append(f"bad class index {label!r}")
    for i, n in enumerate(counts):
        if not spec.per_class_min <= n <= spec.per_class_max:
            report.problems.append(f"class {i} has {n} images, not {spec.per_class_min}-{spec.per_class_max}")
    for f in files:
        try:
            with Image.open(f) as img:
                ok = (f.suffix == ".jpg" and img.format == "JPEG" and img.mode == "RGB"
                      and max(img.size) <= spec.max_side)
        except OSError:
            ok = False
        if not ok:
            report.problems.append(f"{f.name}: not an RGB .jpg with longest side <= {spec.max_side}")
    report.images = len(files)


def check_set(set_dir: Path) -> SetReport:
    """Validate one set folder; the problems are listed in the report."""
    report = SetReport(set_dir.name)
    report.bytes = sum(f.stat().st_size for f in set_dir.rglob("*") if f.is_file())
    try:
        spec = load_spec(set_dir / "source.json")
        classes = json.loads((set_dir / "classes.json").read_text(encoding="utf-8"))
        gt_all = json.loads((set_dir / "gt.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        report.problems.append(str(exc))
        return report
    report.domain = spec.domain
    if spec.name != set_dir.name:
        report.problems.append(f"spec name {spec.name!r} != folder name")
    if not (set_dir / "SOURCE.md").is_file():
        report.problems.append("SOURCE.md missing")
    report.classes = _check_names(classes, spec, report)
    gt = gt_all.get(set_dir.name) if isinstance(gt_all, dict) and len(gt_all) == 1 else None
    if not isinstance(gt, dict):
        report.problems.append(f"gt.json must be {{{set_dir.name!r}: {{id: index}}}}")
        return report
    _check_images(set_dir, spec, gt, report.classes, report)
    return report


def check(root: Path) -> Tuple[List[SetReport], List[str]]:
    """Reports of every set under ``root`` and the suite-level problems (no sets, total size)."""
    reports = [check_set(p.parent) for p in spec_paths(root)]
    problems = [] if reports else [f"no sets (no */source.json) under {root}"]
    total_mb = sum(r.bytes for r in reports) / 1e6
    if total_mb >= MAX_TOTAL_MB:
        problems.append(f"total size {total_mb:.1f} MB >= {MAX_TOTAL_MB:.0f} MB")
    return reports, problems


def format_table(reports: Sequence[SetReport]) -> str:
    """The check table: set, domain, classes, images, MB, status; and a total row."""
    rows = [("set", "domain", "classes", "images", "MB", "status")]
    for r in reports:
        rows.append((r.name, r.domain, str(r.classes), str(r.images), f"{r.bytes / 1e6:.2f}",
                     "ok" if not r.problems else f"{len(r.problems)} problem(s)"))
    rows.append(("total", "", str(sum(r.classes for r in reports)), str(sum(r.images for r in reports)),
                 f"{sum(r.bytes for r in reports) / 1e6:.2f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


# ---------------------------------------------------------------- survey


def survey(source: str, folders: Sequence[str], commit: Optional[str]) -> List[Tuple[str, str, int]]:
    """(folder, class dir, image count) of every class dir directly below each folder, at ``commit`` or HEAD."""
    out = []
    with tempfile.TemporaryDirectory(prefix="suite_data_") as tmp:
        git_dir = open_source(source, Path(tmp))
        rev = commit or _git(git_dir, "rev-parse", "HEAD").decode().strip()
        require_commit(git_dir, rev)
        for folder in folders:
            counts: Dict[str, int] = {}
            folder = folder.strip("/")
            for path in list_tree(git_dir, rev, folder):
                rest = path[len(folder) + 1:] if folder else path
                base = rest.rsplit("/", 1)[-1].lower()
                if "/" in rest and any(fnmatch.fnmatchcase(base, p) for p in IMAGE_PATTERNS):
                    counts[rest.split("/", 1)[0]] = counts.get(rest.split("/", 1)[0], 0) + 1
            out += [(folder, name, n) for name, n in sorted(counts.items())]
    return out


# ---------------------------------------------------------------- CLI


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: build, build-all, check or survey (see the module docstring)."""
    parser = make_parser("python -m contest.suite_data", "Build and check the tuning suite of labelled image sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build one set from its source.json")
    p.add_argument("--spec", type=Path, required=True, help="data/suite/<set>/source.json")
    p.add_argument("--source", required=True, help="bare git dir, work tree or clone URL holding the spec's commit")
    p.add_argument("--out", type=Path, default=DEFAULT_ROOT, help=ROOT_HELP)
    p = sub.add_parser("build-all", help="rebuild every set whose snapshot is under --mirror")
    p.add_argument("--mirror", type=Path, required=True, help="folder of snapshots owner+name/repo")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=ROOT_HELP)
    p = sub.add_parser("check", help="validate every set and print a table")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=ROOT_HELP)
    p = sub.add_parser("survey", help="count images per class dir below folders of a repository")
    p.add_argument("--source", required=True, help="bare git dir, work tree or clone URL")
    p.add_argument("--folder", action="append", required=True, help="root folder in the repo (repeatable)")
    p.add_argument("--commit", help="commit to read (default: HEAD)")
    args = parse_args(parser, argv)
    if args.command == "build":
        build(args.spec, args.source, args.out)
        return 0
    if args.command == "build-all":
        return build_all(args.mirror, args.root)
    if args.command == "survey":
        for folder, name, n in survey(args.source, args.folder, args.commit):
            sys.stdout.write(f"{n:6d}  {folder}/{name}\n")
        return 0
    reports, problems = check(args.root)
    sys.stdout.write(format_table(reports) + "\n")
    for r in reports:
        for problem in r.problems:
            logger.error("%s: %s", r.name, problem)
    for problem in problems:
        logger.error("%s", problem)
    return 1 if problems or any(r.problems for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
