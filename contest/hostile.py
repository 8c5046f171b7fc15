"""The judge's side of the contract under hostile input: does every case end with a complete JSON?

Usage: ``python -m contest.hostile [--app DIR] [--python PY] [--model DIR] [--work DIR] [--case NAME ...]
[--out JSON]``.

Each case builds a datasets folder in the judge's layout (under ``--work``, kept
between runs so that the big inputs are made once), runs ``DIR/predict.sh`` on
it with the real model (default: the repository's ``model/``, so the text
encoder's real speed is what a class-heavy case measures), optionally sends
SIGTERM after some seconds, and records: exit code, wall seconds, seconds until
OUT_JSON first existed, seconds from SIGTERM to exit, peak RSS of the
prediction process, whether the JSON holds every image id of every dataset,
images per tier and problems (from ``--report``). ``--app`` points at another
checkout (e.g. the code before a change) to measure it the same way.

Cases (issue 20):

- ``d1-deep``: a classes.json nested 995 levels deep, beside a good dataset;
- ``encodings``: classes.json in UTF-16 (BOM), UTF-8 with BOM, cp1251, and with NaN/number/null names;
- ``d2-exif``: JPEGs whose malformed EXIF breaks Image.open or ImageOps.exif_transpose;
- ``d12-progressive``: a 40000x40000 grey progressive JPEG;
- ``d8-50k``: 50,000 classes with a 30 s budget;
- ``d8-50k-sigterm``: the same without a budget, SIGTERM 2 s after the run report appears (the model
  is loaded and the class names are being encoded);
- ``d9-sigterm``: 5,000 classes x 2,200 images, SIGTERM 2 s after the start;
- ``n1-tight``: 96 photos of 3000x2000 on the ensemble-260 rung (decoded in threads where there are
  several CPUs, so the first batches wait for the pool to fill), with 90% of the wall time of a
  run without a budget as the budget;
- ``onnx-corrupt``: the richest rung's image encoder truncated to half;
- ``classes-500k``: 500,000 names of about 150 bytes (a 76 MB classes.json).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from contest.bench import large_photo
from zeroshot.command import make_parser, parse_args
from zeroshot.limits import MODEL_DIR
from zeroshot.limits import REPO_ROOT as REPO
from zeroshot.manifest import MANIFEST_NAME, load_manifest

logger = logging.getLogger(__name__)

DEFAULT_OUT = REPO / "bench" / "results" / "hostile.json"
KILL_AFTER_TERM_S = 600.0  # SIGKILL when a SIGTERM has not ended the run by then
_LAUNCHER = """
import json, os, resource, signal, subprocess, sys, time
result, out_json, term_after, term_mark = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
started = time.monotonic()
child = subprocess.Popen(sys.argv[5:])
first_json = term_at = marked = None
while child.poll() is None:
    now = time.monotonic() - started
    if first_json is None and os.path.exists(out_json):
        first_json = now
    if marked is None and (not term_mark or os.path.exists(term_mark)):
        marked = now
    if term_after >= 0 and term_at is None and marked is not None and now >= marked + term_after:
        child.send_signal(signal.SIGTERM)
        term_at = now
    if term_at is not None and now - term_at > %r:
        child.kill()
    time.sleep(0.01)
wall = time.monotonic() - started
if first_json is None and os.path.exists(out_json):
    first_json = wall
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(result, "w") as f:
    json.dump({"rc": child.returncode, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
               "first_json_s": first_json,
               "term_to_exit_s": None if term_at is None else wall - term_at,
               "peak_rss_mb": usage.ru_maxrss / 1024}, f)
""" % KILL_AFTER_TERM_S


@dataclass
class Case:
    """A datasets folder, the extra predict.py arguments and the expected image ids."""

    data: Path
    expected: Dict[str, List[str]]
    args: List[str] = field(default_factory=list)
    sigterm_after: float = -1.0  # seconds after the start, or after the run report appears (sigterm_in_run)
    model: Optional[Path] = None
    sigterm_in_run: bool = False
    budget_share: Optional[float] = None  # run once without a budget first, then with this share of its wall time


# ---------------------------------------------------------------- inputs

def small_photo(rng: np.random.Generator, size=(64, 48)) -> Image.Image:
    """A noisy colour image."""
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    arr = base[None, None, :] + rng.normal(0, 25, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_dataset(root: Path, name: str, classes_bytes: bytes, n_images: int, seed: int = 0) -> List[str]:
    """root/name/{classes.json (these bytes), img/ with ``n_images`` small JPEGs}; their ids."""
    img = root / name / "img"
    img.mkdir(parents=True, exist_ok=True)
    (root / name / "classes.json").write_bytes(classes_bytes)
    rng = np.random.default_rng(seed)
    ids = [f"{name}{i:05d}" for i in range(n_images)]
    for image_id in ids:
        small_photo(rng).save(img / f"{image_id}.jpg", quality=85)
    return ids


def utf8(names: List[Any]) -> bytes:
    return json.dumps(names, ensure_ascii=False).encode("utf-8")


def class_names(n: int, words: int, seed: int = 0) -> List[str]:
    """``n`` distinct Russian-looking class names of ``words`` words of three syllables (2 words: about 20
    bytes of UTF-8; 11 words, with the number in front: about 150 bytes)."""
    rng = np.random.default_rng(seed)
    syllables = np.array("ка ро ми ле ту на зо ви ша пе ды го".split())
    vocab = ["".join(rng.choice(syllables, 3)) for _ in range(4000)]
    picks = rng.integers(0, len(vocab), size=(2 * n, words))
    names = list(dict.fromkeys(" ".join(vocab[j] for j in row) for row in picks))[:n]
    return [f"{i} {name}" for i, name in enumerate(names)] if words > 2 else names


def exif_ifd(entries: List[Tuple[int, int, int, bytes]], data: bytes = b"") -> bytes:
    """An APP1 Exif payload: a big-endian TIFF header, IFD0 with ``entries`` (tag, type, count, 4 value
    bytes), then ``data`` (what an entry's offset may point at; it starts at 14 + 12 * len(entries))."""
    body = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHI", *e[:3]) + e[3] for e in entries)
    return b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + body + b"\x00\x00\x00\x00" + data


def malformed_exif(breaks: str) -> bytes:
    """Exif with orientation 6 (rotate on display) that Pillow reads but cannot handle: ``open`` makes
    Image.open fail (an XResolution of type BYTE), ``transpose`` makes exif_transpose fail (a YResolution
    of type ASCII, which cannot be written back)."""
    orientation = (0x0112, 3, 1, b"\x00\x06\x00\x00")
    if breaks == "open":
        return exif_ifd([orientation, (0x011A, 1, 1, b"\x05\x00\x00\x00"), (0x0128, 3, 1, b"\x00\x02\x00\x00")])
    return exif_ifd([orientation, (0x011B, 2, 6, struct.pack(">I", 14 + 24))], b"Canon\x00")


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding ``payload`` right after its SOI marker."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def progressive_giant(path: Path, side: int) -> None:
    """A ``side`` x ``side`` grey progressive JPEG, made in a child process (its memory is not ours)."""
    code = ("import sys; from PIL import Image; Image.MAX_IMAGE_PIXELS = None; "
            "Image.new('L', (int(sys.argv[2]),) * 2, 128).save(sys.argv[1], quality=5, progressive=True)")
    subprocess.run([sys.executable, "-c", code, str(path), str(side)], check=True)


def build_d1(root: Path) -> Case:
    return Case(root, {"a_deep": write_dataset(root, "a_deep", b"[" * 995 + b"]" * 995, 5),
                       "b_ok": write_dataset(root, "b_ok", utf8(["кот", "собака"]), 5, 1)})


def build_encodings(root: Path) -> Case:
    names = ["кошка", "собака", "птица"]
    text = json.dumps(names, ensure_ascii=False)
    return Case(root, {"utf16": write_dataset(root, "utf16", text.encode("utf-16"), 6),
                       "utf8bom": write_dataset(root, "utf8bom", b"\xef\xbb\xbf" + text.encode("utf-8"), 6, 1),
                       "cp1251": write_dataset(root, "cp1251", text.encode("cp1251"), 6, 2),
                       "nonstr": write_dataset(root, "nonstr", b'[NaN, 1, null, "\xd0\xba\xd0\xbe\xd1\x82"]', 6, 3)})


def build_d2(root: Path) -> Case:
    ids = write_dataset(root, "exif", utf8(["кот", "собака"]), 4)
    buf = io.BytesIO()
    small_photo(np.random.default_rng(7), (80, 40)).save(buf, "JPEG", quality=90)
    for breaks in ("open", "transpose"):
        (root / "exif" / "img" / f"exif_{breaks}.jpg").write_bytes(with_app1(buf.getvalue(), malformed_exif(breaks)))
        ids.append(f"exif_{breaks}")
    return Case(root, {"exif": ids})


def build_d12(root: Path) -> Case:
    ids = write_dataset(root, "giant", utf8(["кот", "собака"]), 3)
    progressive_giant(root / "giant" / "img" / "giant.jpg", 40000)
    return Case(root, {"giant": ids + ["giant"]})


def build_d8(root: Path) -> Case:
    return Case(root, {"many": write_dataset(root, "many", utf8(class_names(50_000, 2)), 16)}, ["--time-budget", "30"])


def build_d8_sigterm(root: Path) -> Case:
    case = build_d8(root)
    case.args, case.sigterm_after, case.sigterm_in_run = [], 2.0, True
    return case


def build_d9(root: Path) -> Case:
    return Case(root, {"wide": write_dataset(root, "wide", utf8(class_names(5_000, 2)), 2200)}, sigterm_after=2.0)


def build_n1(root: Path) -> Case:
    img = root / "photos" / "img"
    img.mkdir(parents=True)
    (root / "photos" / "classes.json").write_bytes(utf8(["кот", "собака", "птица", "рыба"]))
    rng = np.random.default_rng(0)
    for i in range(96):
        large_photo(rng).save(img / f"photo{i:03d}.jpg", quality=90)
    return Case(root, {"photos": [f"photo{i:03d}" for i in range(96)]}, ["--rung", "ensemble-260"], budget_share=0.9)


def build_onnx_corrupt(root: Path) -> Case:
    model = root / "model"
    model.mkdir()
    manifest = load_manifest(MODEL_DIR)
    richest = manifest.ladder[-1]
    broken = manifest.file("image_encoder", richest).path
    for src in MODEL_DIR.iterdir():
        if src.name == broken:
            data = src.read_bytes()
            (model / src.name).write_bytes(data[:len(data) // 2])
        else:
            (model / src.name).symlink_to(src.resolve())
    data = root / "data"
    return Case(data, {"a": write_dataset(data, "a", utf8(["кот", "собака"]), 8)}, model=model)


def build_500k(root: Path) -> Case:
    return Case(root, {"huge": write_dataset(root, "huge", utf8(class_names(500_000, 11)), 16)})


CASES: Dict[str, Callable[[Path], Case]] = {
    "d1-deep": build_d1, "encodings": build_encodings, "d2-exif": build_d2, "d12-progressive": build_d12,
    "d8-50k": build_d8, "d8-50k-sigterm": build_d8_sigterm, "d9-sigterm": build_d9, "n1-tight": build_n1,
    "onnx-corrupt": build_onnx_corrupt, "classes-500k": build_500k}


def prepare(name: str, work: Path) -> Case:
    """The case's inputs under ``work/name`` (built once; a ``.case.json`` marks them complete)."""
    folder = work / name
    marker = folder / ".case.json"
    if marker.is_file():
        spec = json.loads(marker.read_text(encoding="utf-8"))
        return Case(Path(spec["data"]), spec["expected"], spec["args"], spec["sigterm_after"],
                    Path(spec["model"]) if spec["model"] else None, spec["sigterm_in_run"], spec["budget_share"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    case = CASES[name](folder)
    marker.write_text(json.dumps({"data": str(case.data), "expected": case.expected, "args": case.args,
                                  "sigterm_after": case.sigterm_after, "sigterm_in_run": case.sigterm_in_run,
                                  "budget_share": case.budget_share,
                                  "model": str(case.model) if case.model else None}), encoding="utf-8")
    return case


# ---------------------------------------------------------------- runs

def completeness(out_json: Path, expected: Dict[str, List[str]]) -> Dict[str, Any]:
    """Whether ``out_json`` holds every expected image id, and what is missing."""
    if not out_json.is_file():
        return {"json": False, "complete": False, "missing": sum(len(v) for v in expected.values())}
    try:
        preds = json.loads(out_json.read_text(encoding="utf-8"))
    except ValueError:
        return {"json": False, "complete": False, "missing": sum(len(v) for v in expected.values())}
    missing = sum(1 for ds, ids in expected.items() for i in ids if i not in preds.get(ds, {}))
    return {"json": True, "complete": missing == 0, "missing": missing}


def run_case(name: str, case: Case, app: Path, python: str, model: Path, work: Path) -> Dict[str, Any]:
    """Run ``app/predict.sh`` on the case (twice with ``budget_share``: without a budget, then with that
    share of the first run's wall time); the row of figures of the (last) run."""
    extra: List[str] = []
    calibration: Optional[Dict[str, Any]] = None
    if case.budget_share is not None:
        calibration = launch(name, case, app, python, model, work, [])
        extra = ["--time-budget", f"{case.budget_share * calibration['wall_s']:.1f}"]
    row = launch(name, case, app, python, model, work, extra)
    if calibration is not None:
        row["budget_s"] = float(extra[1])
        row["unbudgeted_wall_s"] = calibration["wall_s"]
    return row


def launch(name: str, case: Case, app: Path, python: str, model: Path, work: Path,
           extra: List[str]) -> Dict[str, Any]:
    """One run of ``app/predict.sh`` on the case under the launcher; the row of figures."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=str(work)))
    out_json, report, timing = out_dir / "out.json", out_dir / "report.json", out_dir / "timing.json"
    cmd = ["bash", str(app / "predict.sh"), str(case.data), str(out_json), "--model", str(case.model or model),
           "--report", str(report), *case.args, *extra]
    env = dict(os.environ, PYTHON=python)
    with open(out_dir / "log.txt", "w", encoding="utf-8") as log:
        mark = str(report) if case.sigterm_in_run else ""
        subprocess.run([sys.executable, "-I", "-c", _LAUNCHER, str(timing), str(out_json), str(case.sigterm_after),
                        mark, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/", check=True)
    row: Dict[str, Any] = {"case": name, **json.loads(timing.read_text(encoding="utf-8")),
                           **completeness(out_json, case.expected), "log": str(out_dir / "log.txt")}
    if report.is_file():
        rep = json.loads(report.read_text(encoding="utf-8"))
        row["tiers"] = {ds: {k: v for k, v in d["tiers"].items() if v} for ds, d in rep["datasets"].items()}
        row["problems"] = len(rep.get("problems", [])) + sum(len(d["problems"]) for d in rep["datasets"].values())
    lines = (out_dir / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    row["warnings"] = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Error" in ln][-6:]
    return row


def format_rows(rows: List[Dict[str, Any]]) -> str:
    """One line per case, then its last warnings."""
    head = (f"{'case':<16} {'rc':>4} {'wall s':>7} {'cpu s':>7} {'1st json s':>10} {'term->exit s':>12} "
            f"{'peak MB':>8} complete")
    out = [head, "-" * len(head)]
    for r in rows:
        first = "-" if r["first_json_s"] is None else f"{r['first_json_s']:.2f}"
        term = "-" if r["term_to_exit_s"] is None else f"{r['term_to_exit_s']:.2f}"
        out.append(f"{r['case']:<16} {r['rc']:>4} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {first:>10} {term:>12} "
                   f"{r['peak_rss_mb']:>8.0f} "
                   f"{'yes' if r['complete'] else 'NO (%d missing)' % r['missing']}  tiers {r.get('tiers')}")
        if "budget_s" in r:
            out.append(f"    budget {r['budget_s']:.1f} s ({r['unbudgeted_wall_s']:.1f} s without one)")
        out += [f"    {w[:160]}" for w in r["warnings"]]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m contest.hostile", __doc__.split("\n")[0])
    parser.add_argument("--app", type=Path, default=REPO, help="checkout whose predict.sh runs (default: %(default)s)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for predict.sh (default: this one)")
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "zeroshot-hostile",
                        help="inputs (kept, built once) and runs (default: %(default)s)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON rows (default: %(default)s)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    if not (args.model / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{args.model / MANIFEST_NAME}: no model (build it with 'make model' or pass --model)")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.case or list(CASES):
        logger.info("case %s", name)
        rows.append(run_case(name, prepare(name, args.work), args.app.resolve(), args.python, args.model, args.work))
        logger.info("%s", format_rows(rows[-1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(format_rows(rows) + "\n")
    return 0 if all(r["complete"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
