"""Build the submission archive: ``python -m contest.bundle [--model DIR] [--vendor DIR] [--out ZIP]``.

At the archive's root: setup.sh, predict.sh, predict.py, the runtime package
zeroshot/ (its .py files), model/ (manifest.json and every file it names, the
default files and each variant's, each checked against its sha256, so
``predict.sh --variant X`` works inside the archive for every X the manifest
lists) and vendor/ (the wheels and requirements files of
contest/vendor.py), and nothing else. The zip is deterministic: fixed file order,
fixed timestamps and modes, so the same inputs give the same bytes. Prints a
size table to stdout and fails (writing nothing) above the cap.

``--dev`` builds an archive without vendor/: its setup.sh then uses the
packages of the Python that runs it (for tests on machines without wheels).
"""

from __future__ import annotations

import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, List, Optional, Sequence

from zeroshot.limits import ARCHIVE_CAP_MB as CAP_MB
from zeroshot.limits import MODEL_DIR
from zeroshot.limits import REPO_ROOT as REPO
from zeroshot.manifest import MANIFEST_NAME, load_manifest, resolve_file, sha256_file
from zeroshot.outputs import atomic_open

from .vendor import REQUIREMENTS_NAME, find_wheel, read_requirements
from zeroshot.command import make_parser, parse_args

logger = logging.getLogger(__name__)

ROOT_FILES = ("setup.sh", "predict.sh", "predict.py")
RUNTIME_PACKAGE = "zeroshot"
ALLOWED_TOP = frozenset(ROOT_FILES + (RUNTIME_PACKAGE, "model", "vendor"))
EXECUTABLE = frozenset(ROOT_FILES)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
STORED_SUFFIXES = (".whl",)


@dataclass(frozen=True)
class Entry:
    """One file of the archive: where it comes from and its name inside."""

    source: Path
    arcname: str


def code_entries(repo: Path) -> List[Entry]:
    """The entry points and the runtime package's .py files (no caches)."""
    entries = [Entry(repo / name, name) for name in ROOT_FILES]
    package = repo / RUNTIME_PACKAGE
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(repo)
        if "__pycache__" not in rel.parts:
            entries.append(Entry(path, rel.as_posix()))
    missing = [e.source for e in entries if not e.source.is_file()]
    if missing:
        raise FileNotFoundError(f"missing code files: {[str(p) for p in missing]}")
    return entries


def model_entries(model_dir: Path) -> List[Entry]:
    """manifest.json and every file it names (the default files and each variant's), verified against its sha256.

    Other files in ``model_dir`` are left out (and logged). Raises
    FileNotFoundError/ValueError from the manifest checks.
    """
    manifest = load_manifest(model_dir)
    files = {MANIFEST_NAME: model_dir / MANIFEST_NAME}
    for variant in [None, *sorted(manifest.variants)]:
        for key in sorted(manifest.files):
            path = resolve_file(manifest, model_dir, key, verify=False, variant=variant)
            name = path.relative_to(model_dir).as_posix()
            if name not in files:
                files[name] = resolve_file(manifest, model_dir, key, verify=True, variant=variant)
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        if path.relative_to(model_dir).as_posix() not in files:
            logger.warning("%s: not named in %s; left out of the archive", path, MANIFEST_NAME)
    return [Entry(path, f"model/{name}") for name, path in sorted(files.items())]


def vendor_entries(vendor_dir: Path) -> List[Entry]:
    """The requirements files and the wheels they pin, each checked against its hash.

    Raises FileNotFoundError if there is none, or a pin has no wheel, and
    ValueError if a wheel's sha256 differs from its pin.
    """
    reqs = sorted(vendor_dir.glob(REQUIREMENTS_NAME.format("*")))
    if not reqs:
        raise FileNotFoundError(f"{vendor_dir}: no {REQUIREMENTS_NAME.format('<X.Y>')}; run 'make vendor' "
                                "(or pass --dev for an archive without wheels)")
    wheels = {}
    for req in reqs:
        python = req.name[len("requirements-py"):-len(".txt")]
        for pin in read_requirements(req):
            wheel = find_wheel(vendor_dir, pin, python)
            if wheel is None:
                raise FileNotFoundError(f"{req}: no wheel for {pin.name}=={pin.version} in {vendor_dir}")
            if pin.sha256 and sha256_file(wheel) != pin.sha256:
                raise ValueError(f"{wheel}: sha256 differs from the pin in {req}; run 'make vendor' again")
            wheels[wheel.name] = wheel
    for path in sorted(vendor_dir.iterdir()):
        if path.name not in wheels and path not in reqs:
            logger.warning("%s: not pinned by any requirements file; left out of the archive", path)
    entries = [Entry(p, f"vendor/{p.name}") for p in reqs]
    return entries + [Entry(p, f"vendor/{name}") for name, p in sorted(wheels.items())]


def zip_info(entry: Entry) -> zipfile.ZipInfo:
    """A ZipInfo with a fixed timestamp, unix mode 0755/0644 and the compression for this file."""
    info = zipfile.ZipInfo(entry.arcname, date_time=ZIP_TIME)
    mode = 0o755 if entry.arcname in EXECUTABLE else 0o644
    info.external_attr = (0o100000 | mode) << 16
    info.create_system = 3
    stored = entry.arcname.endswith(STORED_SUFFIXES)
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    return info


def write_zip(entries: Sequence[Entry], out: BinaryIO) -> List[zipfile.ZipInfo]:
    """Write ``entries`` in order to the binary file ``out`` (deterministic bytes for the same inputs).

    Returns the written members (with their compressed sizes).
    """
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        for entry in entries:
            info = zip_info(entry)
            with open(entry.source, "rb") as src, archive.open(info, "w", force_zip64=False) as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
        return archive.infolist()


def size_table(members: Sequence[zipfile.ZipInfo]) -> List[str]:
    """Lines: each model file and wheel, the code and vendor/ text totals, in MB."""
    rows = []
    code = [0, 0]
    for info in members:
        if info.filename.startswith(("model/", "vendor/")) and not info.filename.endswith(".txt"):
            rows.append((info.filename, info.file_size, info.compress_size))
        else:
            code[0] += info.file_size
            code[1] += info.compress_size
    lines = [f"{'file':<84} {'MB':>9} {'zipped MB':>10}"]
    lines += [f"{name:<84} {size / 1e6:>9.2f} {zipped / 1e6:>10.2f}" for name, size, zipped in rows]
    lines.append(f"{'code and text files (' + RUNTIME_PACKAGE + '/, *.sh, predict.py, requirements)':<84} "
                 f"{code[0] / 1e6:>9.2f} {code[1] / 1e6:>10.2f}")
    return lines


def build(model_dir: Path, vendor_dir: Optional[Path], out: Path, cap_mb: float, repo: Path = REPO) -> int:
    """Build ``out``; returns its size in bytes. Raises ValueError above ``cap_mb`` (nothing written).

    The archive is written beside ``out`` and renamed onto it (zeroshot.outputs.atomic_open),
    so it gets the usual 0644 permissions and a failed build leaves the old archive.
    """
    entries = code_entries(repo) + model_entries(model_dir)
    if vendor_dir is not None:
        entries += vendor_entries(vendor_dir)
    with atomic_open(out, "wb", durable=False) as handle:
        members = write_zip(entries, handle)
        size = handle.tell()
        sys.stdout.write("\n".join(size_table(members)) + "\n")
        sys.stdout.write(f"{'archive ' + str(out):<84} {size / 1e6:>9.2f} MB (cap {cap_mb:g} MB)\n")
        if size > cap_mb * 1e6:
            raise ValueError(f"{out}: {size / 1e6:.2f} MB is over the cap of {cap_mb:g} MB; not written")
    return size


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m contest.bundle", __doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument("--vendor", type=Path, default=REPO / "vendor", help="wheel folder (default: %(default)s)")
    parser.add_argument("--dev", action="store_true",
                        help="leave vendor/ out: setup.sh then uses the packages of the Python that runs it")
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "submission.zip",
                        help="archive to write (default: %(default)s)")
    parser.add_argument("--cap-mb", type=float, default=CAP_MB,
                        help="fail above this many MB (10^6 bytes; default: %(default)s)")
    args = parse_args(parser, argv)
    try:
        size = build(args.model, None if args.dev else args.vendor, args.out, args.cap_mb)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    logger.info("wrote %s (%.2f MB%s)", args.out, size / 1e6, ", no vendor/: --dev" if args.dev else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
