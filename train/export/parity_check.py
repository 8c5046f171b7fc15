"""``make export-parity``: each source exported as a user would, predict.sh against the checkpoint's own pipeline.

For every source of :data:`train.export.random_models.SOURCE_NAMES`: a small
random checkpoint at ``--size`` px (224: where decoding matters), exported with
``python -m train.export ... --plain --templates '{}'`` (its own end-to-end
check included), then ``predict.sh`` on the dev set with the folder as
exported (``image.decode: exact``) and with ``draft``, each compared image by
image with the top-1 of the checkpoint's own preprocessing and encoders over
the same prompts (train/export/reference.py in the reference environment).
Prints a Markdown table (agreement and images/s, exact and draft, per source)
and writes ``OUT/parity.json``. Needs ``make reference-env``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import discover, image_id
from zeroshot.encoders import Model
from zeroshot.images import DRAFT, EXACT
from zeroshot.limits import DEVSETS_DIR
from zeroshot.manifest import MANIFEST_NAME, Manifest

from . import cli, end_to_end as e2e
from .random_models import SOURCE_NAMES, export_args, load_spec, save_source

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def predict_sh(data: Path, model: Path, work: Path) -> Dict[str, Any]:
    """Run predict.sh (one thread) on ``data`` with ``model``: {"predictions", "wall_s"}."""
    out = work / "preds.json"
    env = dict(os.environ, PYTHON=sys.executable)
    started = time.perf_counter()
    cmd = ["bash", str(REPO / "predict.sh"), str(data), str(out), "--model", str(model), "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"predict.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"predictions": json.loads(out.read_text(encoding="utf-8")), "wall_s": time.perf_counter() - started}


def with_decode(model: Path, decode: str, out: Path) -> Path:
    """A copy of the model folder whose manifest's image.decode is ``decode``."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)
    manifest = Manifest.load(out)
    changed = dataclasses.replace(manifest, image=dataclasses.replace(manifest.image, decode=decode))
    (out / MANIFEST_NAME).write_text(changed.to_json(), encoding="utf-8")
    return out


def reference_top1(spec: Dict[str, Optional[str]], model: Path, data: Path, python: Path,
                   work: Path) -> Dict[str, Dict[str, int]]:
    """The checkpoint's own pipeline's top-1 on every dev image: {dataset: {image id: class}}."""
    source = load_spec(spec)
    rt = Model(model, threads=1, verify=False)
    out: Dict[str, Dict[str, int]] = {}
    for ds in discover(data)[0]:
        prompts = e2e.prompts_for(rt, ds.classes)
        req = dict(source.origin, images=[str(p) for p in ds.images], pixel_images=0, prompts=prompts)
        if source.family == "ruclip":
            req["token_ids"] = source.tokenize(prompts)[0].tolist()
        ref = e2e.run_reference(python, req, work / f"ref-{ds.name}")
        classes = e2e.class_means(ref["text"], len(rt.text_cfg.templates), len(ds.classes))
        top = e2e.top1(ref["image"], classes, rt.manifest.score)
        out[ds.name] = {image_id(p): int(k) for p, k in zip(ds.images, top)}
    return out


def agreement(got: Dict[str, Dict[str, int]], want: Dict[str, Dict[str, int]]) -> float:
    pairs = [(got.get(d, {}).get(i), k) for d in want for i, k in want[d].items()]
    return float(np.mean([a == b for a, b in pairs]))


def check_source(name: str, data: Path, size: int, work: Path, python: Path) -> Dict[str, Any]:
    """Export ``name``'s random checkpoint, predict the dev set exact and draft, compare with its own pipeline."""
    spec = save_source(name, work / "checkpoint", size)
    model = work / "model"
    if cli.main(export_args(spec) + ["--out", str(model), "--plain", "--templates", "{}", "--variants", "",
                                     "--no-plan", "--dev-set", str(data), "--reference-python", str(python),
                                     "--log-level", "WARNING"]) != 0:
        raise RuntimeError(f"{name}: export failed")
    validation = Manifest.load(model).validation
    want = reference_top1(spec, model, data, python, work)
    row: Dict[str, Any] = {"source": name, "size": size, "export_end_to_end": validation["end_to_end"],
                           "decode": validation["decode"]}
    for decode in (EXACT, DRAFT):
        run = predict_sh(data, with_decode(model, decode, work / f"model-{decode}"), work)
        row[f"{decode}_top1_agreement"] = agreement(run["predictions"], want)
        row[f"{decode}_images"] = sum(len(v) for v in want.values())
        row[f"{decode}_predict_wall_s"] = round(run["wall_s"], 1)
    logger.info("%s: %s", name, {k: v for k, v in row.items() if "agreement" in k})
    return row


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown: agreement with the checkpoint's own pipeline and images/s, exact and draft, per source."""
    head = ("| source | dev images | top-1 agreement exact | top-1 agreement draft | export check: pixel max diff / "
            "cosine min | 4000x3000 images/s exact / draft | contest-size images/s exact / draft |\n"
            "|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        e, d = r["export_end_to_end"], r["decode"]
        lines.append(f"| {r['source']} | {r['exact_images']} | {r['exact_top1_agreement']:.4f} | "
                     f"{r['draft_top1_agreement']:.4f} | {e['pixel_max_abs_diff']:.1e} / {e['image_cosine_min']:.6f} | "
                     f"{d.get('4000x3000_exact_images_per_s')} / {d.get('4000x3000_draft_images_per_s')} | "
                     f"{d.get('contest_exact_images_per_s')} / {d.get('contest_draft_images_per_s')} |")
    return head + "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.export.parity_check", __doc__.split("\n")[0])
    parser.add_argument("--dev-set", type=Path, default=DEVSETS_DIR, help="datasets folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "export-parity", help="work and result folder")
    parser.add_argument("--size", type=int, default=224, help="the random image towers' input side")
    parser.add_argument("--sources", default=",".join(SOURCE_NAMES), help="comma list of sources")
    parser.add_argument("--reference-python", type=Path, default=None, help="default: .venv-ref/bin/python")
    args = parse_args(parser, argv)
    import torch

    torch.set_num_threads(1)
    python = e2e.reference_python(args.reference_python)
    if python is None:
        raise FileNotFoundError(f"{e2e.REFERENCE_VENV}: no reference environment (make reference-env)")
    if not args.dev_set.is_dir():
        raise FileNotFoundError(f"{args.dev_set}: no dev set")
    rows = [check_source(name.strip(), args.dev_set, args.size, args.out / name.strip(), python)
            for name in args.sources.split(",") if name.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parity.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
