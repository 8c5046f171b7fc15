"""Fill vendor/ with the wheels setup.sh installs offline, and the requirements files it reads.

Usage: ``python -m contest.vendor [--out vendor] [--python 3.8 --python 3.11]``.

The judge has CPython 3.8 with numpy 1.20, Pillow 8.3 and sentencepiece 0.1.95
but no onnxruntime; the building machine has CPython 3.11. For each target
Python this downloads (``pip download --only-binary=:all: --no-deps`` for
manylinux2014 x86_64) the pinned wheels of :data:`TARGETS` that are not in the
folder yet, writes ``requirements-py<X.Y>.txt`` with the pins and the sha256
of each wheel (pip then refuses any other file), removes wheels no target
names, and checks offline that pip can install each file from the folder alone.
A second run with everything present makes no network call.

Why only these: the runtime imports numpy, onnxruntime, Pillow,
sentencepiece and tokenizers (Hugging Face ``tokenizer.json`` files, for
exported CLIP-family models). onnxruntime 1.16.3 declares coloredlogs, flatbuffers,
packaging, protobuf and sympy too, but importing it and running a session
needs only numpy (the others serve its tools), so they are not vendored and
setup.sh installs with ``--no-deps``. It requires numpy >= 1.21.6, newer than
the judge's 1.20, hence numpy 1.24.4 (the last for 3.8).

Pillow is vendored although the judge has 8.3: that wheel decodes JPEG with
IJG libjpeg 9, whose pixels differ from libjpeg-turbo's (mean |diff| 0.3 of
255 on the dev set, up to 64), so predictions would differ from ours. Pillow
10.4.0 (the last for 3.8) bundles libjpeg-turbo and decodes the dev set
exactly as the build machine's Pillow does; the same version on both targets
makes the archive predict the same on 3.8 and 3.11.

tokenizers 0.20.3 is the newest release with a CPython 3.8 wheel: 0.21 and
later ship only ``cp39-abi3`` wheels, and 0.20.3 has no abi3 wheel, so each
target gets its own (cp38 and cp311, about 3 MB each). Its declared
dependency huggingface_hub serves only ``from_pretrained`` downloads, which the
runtime never calls (it reads a local ``tokenizer.json``), so it is not vendored.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from zeroshot.limits import REPO_ROOT as REPO
from zeroshot.manifest import sha256_file
from zeroshot.command import make_parser, parse_args

logger = logging.getLogger(__name__)

PLATFORM = "manylinux2014_x86_64"
TARGETS: Dict[str, Tuple[str, ...]] = {
    "3.8": ("onnxruntime==1.16.3", "numpy==1.24.4", "pillow==10.4.0", "sentencepiece==0.2.0", "tokenizers==0.20.3"),
    "3.11": ("onnxruntime==1.16.3", "numpy==1.26.4", "pillow==10.4.0", "sentencepiece==0.2.0", "tokenizers==0.20.3"),
}
REQUIREMENTS_NAME = "requirements-py{}.txt"
_WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?"
                       r"-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")
_PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>[^\s;]+)(?P<rest>.*)$")


@dataclass(frozen=True)
class Wheel:
    """The parts of a wheel file name that decide where it installs."""

    path: Path
    name: str
    version: str
    python: str
    abi: str
    platform: str


@dataclass(frozen=True)
class Pin:
    """One ``name==version [--hash=sha256:...]`` line of a requirements file."""

    name: str
    version: str
    sha256: Optional[str] = None


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel(path: Path) -> Optional[Wheel]:
    """The tags of ``path`` if its name is a wheel's, else None."""
    match = _WHEEL_RE.match(path.name)
    if not match:
        return None
    return Wheel(path, normalize(match["name"]), match["version"], match["py"], match["abi"], match["plat"])


def fits(wheel: Wheel, python: str) -> bool:
    """True if ``wheel`` installs on CPython ``python`` ("3.8") on manylinux x86_64."""
    tag = "cp" + python.replace(".", "")
    pythons = wheel.python.split(".")
    if wheel.abi == "abi3":
        minor = [int(p[3:]) for p in pythons if p.startswith("cp3") and p[3:].isdigit()]
        py_ok = bool(minor) and min(minor) <= int(python.split(".")[1])
    else:
        py_ok = tag in pythons or "py3" in pythons
    plats = wheel.platform.split(".")
    plat_ok = "any" in plats or any(p.startswith("manylinux") and p.endswith("x86_64") for p in plats)
    return py_ok and plat_ok


def parse_pin(text: str) -> Pin:
    """``name==version`` with an optional ``--hash=sha256:HEX``; ValueError otherwise."""
    match = _PIN_RE.match(text.strip())
    if not match:
        raise ValueError(f"expected 'name==version', got {text!r}")
    digest = re.search(r"--hash=sha256:([0-9a-f]{64})", match["rest"])
    return Pin(normalize(match["name"]), match["version"], digest.group(1) if digest else None)


def read_requirements(path: Path) -> List[Pin]:
    """The pins of a requirements file (comments and blank lines skipped)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    try:
        return [parse_pin(line) for line in lines if line]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def find_wheel(folder: Path, pin: Pin, python: str) -> Optional[Path]:
    """The wheel in ``folder`` that satisfies ``pin`` on CPython ``python``, or None."""
    for path in sorted(folder.glob("*.whl")):
        wheel = parse_wheel(path)
        if wheel and wheel.name == pin.name and wheel.version == pin.version and fits(wheel, python):
            return path
    return None


def pip_target_args(python: str) -> List[str]:
    """pip options that select wheels for CPython ``python`` on manylinux2014 x86_64."""
    abi = "cp" + python.replace(".", "")
    return ["--only-binary=:all:", "--platform", PLATFORM, "--python-version", python,
            "--implementation", "cp", "--abi", abi]


def download(folder: Path, python: str, specs: Iterable[str]) -> None:
    """``pip download`` the wheels of ``specs`` for ``python`` into ``folder`` (network)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(folder), *pip_target_args(python), *specs]
    logger.info("downloading for Python %s: %s", python, " ".join(specs))
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def requirements_text(folder: Path, python: str, specs: Iterable[str]) -> str:
    """The requirements file for ``python``: one pinned, hashed line per wheel."""
    lines = [f"# Written by contest/vendor.py for CPython {python} on manylinux x86_64; setup.sh installs",
             "# these with: pip install --no-index --no-deps --find-links vendor/ (see contest/vendor.py)."]
    for spec in specs:
        pin = parse_pin(spec)
        wheel = find_wheel(folder, pin, python)
        if wheel is None:
            raise FileNotFoundError(f"{folder}: no wheel for {spec} on Python {python} (download failed?)")
        lines.append(f"{spec} --hash=sha256:{sha256_file(wheel)}  # {wheel.name}")
    return "\n".join(lines) + "\n"


def check_offline(folder: Path, python: str) -> None:
    """Let pip resolve the requirements file from ``folder`` alone, as setup.sh will (no network)."""
    req = folder / REQUIREMENTS_NAME.format(python)
    with tempfile.TemporaryDirectory() as target:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
               "--disable-pip-version-check", "--find-links", str(folder), "--target", target,
               *pip_target_args(python), "-r", str(req)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=_isolated_pip_env())
    if result.returncode != 0:
        raise RuntimeError(f"{req}: pip cannot install it from {folder} alone:\n{result.stderr}")
    logger.info("checked offline: %s installs from %s", req.name, folder)


def _isolated_pip_env() -> Dict[str, str]:
    """The environment without pip's settings (no extra indexes, find-links or constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def referenced_wheels(folder: Path, targets: Dict[str, Tuple[str, ...]]) -> List[Path]:
    """The wheels in ``folder`` that some target's pins select."""
    found = {find_wheel(folder, parse_pin(spec), python) for python, specs in targets.items() for spec in specs}
    return sorted(p for p in found if p is not None)


def fill(folder: Path, targets: Dict[str, Tuple[str, ...]]) -> List[Path]:
    """Download what is missing, write the requirements files, drop stray wheels; returns the wheels."""
    folder.mkdir(parents=True, exist_ok=True)
    for python, specs in sorted(targets.items()):
        missing = [s for s in specs if find_wheel(folder, parse_pin(s), python) is None]
        if missing:
            download(folder, python, missing)
        else:
            logger.info("Python %s: all %d wheels already in %s", python, len(specs), folder)
        (folder / REQUIREMENTS_NAME.format(python)).write_text(requirements_text(folder, python, specs),
                                                               encoding="utf-8")
    keep = set(referenced_wheels(folder, targets))
    for path in sorted(folder.glob("*.whl")):
        if path not in keep:
            logger.warning("removing %s: no target pins it", path)
            path.unlink()
    for path in sorted(folder.glob(REQUIREMENTS_NAME.format("*"))):
        if path.name not in {REQUIREMENTS_NAME.format(p) for p in targets}:
            logger.warning("removing %s: not a target", path)
            path.unlink()
    for python in sorted(targets):
        check_offline(folder, python)
    return sorted(keep)


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m contest.vendor", __doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "vendor", help="wheel folder (default: %(default)s)")
    parser.add_argument("--python", action="append", choices=sorted(TARGETS), default=None,
                        help="target Python version; repeat for several; the folder then holds exactly these "
                             "(default: all of %s)" % sorted(TARGETS))
    args = parse_args(parser, argv)
    targets = {p: TARGETS[p] for p in (args.python or sorted(TARGETS))}
    try:
        wheels = fill(args.out, targets)
    except (subprocess.CalledProcessError, FileNotFoundError, ValueError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1
    for path in wheels:
        sys.stdout.write(f"{path.stat().st_size / 1e6:8.1f} MB  {path.name}\n")
    sys.stdout.write(f"{sum(p.stat().st_size for p in wheels) / 1e6:8.1f} MB  total in {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
