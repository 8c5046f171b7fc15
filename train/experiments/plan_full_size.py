"""Size/time plan of full-size CLIP-family architectures, built with random weights (nothing to download).

Each architecture is written to disk in its family's own format
(train/export/random_models.py), exported with ``python -m train.export``
in plan mode (``--plan``: quick parity checks, every variant loaded on
onnxruntime 1.16.3; no dev-set agreement, which means nothing for random
weights) and planned on one core of this machine. Prints one Markdown table
per architecture (the tables of docs/export.md) and writes them to ``--out``.

Usage: ``python -m train.experiments.plan_full_size --work /tmp/plan --out bench/results/plan_full_size.md``
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from zeroshot.command import make_parser, parse_args

from ..export import cli, random_models

logger = logging.getLogger(__name__)

VARIANTS = "fp16,int8,fp32-int8text,fp16-int8text"


def _open_clip_builtin(name: str) -> Dict:
    from ..export import torchvision_shim

    torchvision_shim.install()
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"open_clip has no built-in config {name}")
    return copy.deepcopy(cfg)


def xlmr_b32(work: Path) -> List[str]:
    """open_clip xlm-roberta-base-ViT-B-32: ViT-B/32 + XLM-R-base (250,002 tokens), mean pooling."""
    cfg = _open_clip_builtin("xlm-roberta-base-ViT-B-32")
    text_dir = random_models.save_xlmr(work / "xlmr-base", random_models.XLMR_BASE)
    cfg["text_cfg"].update(hf_model_name=str(text_dir), hf_tokenizer_name=str(text_dir))
    paths = random_models.save_open_clip(work, cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"],
                                         name="xlm-roberta-base-ViT-B-32-random")
    return ["--from", "open_clip", "--arch", str(paths["config"]), "--checkpoint", str(paths["checkpoint"])]


def _builtin(name: str) -> Callable[[Path], List[str]]:
    def build(work: Path) -> List[str]:
        cfg = _open_clip_builtin(name)
        paths = random_models.save_open_clip(work, cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"],
                                             name=f"{name}-random")
        return ["--from", "open_clip", "--arch", str(paths["config"]), "--checkpoint", str(paths["checkpoint"])]
    build.__doc__ = f"open_clip {name} (its own 49,408-token text transformer)"
    return build


ARCHITECTURES: Dict[str, Callable[[Path], List[str]]] = {
    "xlm-roberta-base-ViT-B-32": xlmr_b32,
    "ViT-B-16": _builtin("ViT-B-16"),
    "ViT-B-32": _builtin("ViT-B-32"),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser("python -m train.experiments.plan_full_size", __doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the checkpoints and exports")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file for the tables")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHITECTURES), help="default: all")
    parser.add_argument("--images", type=int, default=32)
    args = parse_args(parser, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.arch or list(ARCHITECTURES):
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        source_args = ARCHITECTURES[name](work)
        table = args.out.with_suffix(f".{name}.md")
        with open(table, "w", encoding="utf-8") as handle:
            old, sys.stdout = sys.stdout, handle
            try:
                cli.main(source_args + ["--plan", "--variants", VARIANTS, "--images", str(args.images),
                                        "--log-level", args.log_level])
            finally:
                sys.stdout = old
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(f"### {name} (random weights)\n\n{table.read_text(encoding='utf-8')}\n")
        shutil.rmtree(work, ignore_errors=True)
        gc.collect()
    sys.stdout.write(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
