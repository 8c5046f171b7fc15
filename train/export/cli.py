"""Export a CLIP-family checkpoint (open_clip, transformers CLIP/SigLIP, Multilingual-CLIP, ruCLIP) to a validated model folder.

Examples::

    python -m train.export --from open_clip --arch ViT-B-32 --checkpoint ckpt.pt --out model
    python -m train.export --from open_clip --arch my_clip.json --checkpoint ckpt.pt --out DIR --templates '{}' --plain
    python -m train.export --from hf ./siglip-folder --out model --trim-vocabulary
    python -m train.export --from mclip ./M-CLIP-folder --image-from ./clip-vit-b-32-folder --out model
    python -m train.export --from ruclip ./ruclip-vit-base-patch32-384 --out model

Nothing downloads: every file is local and a missing one is an error naming
it. The export fails unless the ONNX towers match torch (cosine >= 0.9999 on
dev images and 400 Russian+English strings), the runtime's tokenizer gives
the checkpoint's token ids on all of them, the runtime run on real image files
reproduces the checkpoint's own preprocessing and encoders end to end (in the
reference environment, ``make reference-env``; train/export/end_to_end.py), and
every file runs on onnxruntime 1.16.3. The size/time plan of every kept variant is printed to
stdout at the end. ``--plan`` without ``--out`` only plans: a quick export to a
temporary folder (parity on 16 strings and 4 images, no dev-set agreement),
every requested variant loaded on onnxruntime 1.16.3 and measured.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from zeroshot.command import make_parser, parse_args

from . import build, end_to_end, plan, sources, variants

logger = logging.getLogger(__name__)


def parse_templates(value: str) -> List[str]:
    """``--templates``: a JSON list of strings with '{}', or one such template ('{}' alone = the bare name)."""
    text = value.strip()
    templates = json.loads(text) if text.startswith("[") else [value]
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and "{}" in t
                                                                   for t in templates):
        raise ValueError(f"--templates {value!r}: expected a template containing '{{}}' or a JSON list of them")
    return templates


def build_parser():
    parser = make_parser("python -m train.export", __doc__.split("\n")[0])
    parser.add_argument("--from", dest="family", choices=sources.FAMILIES, required=True,
                        help="checkpoint family")
    parser.add_argument("path", nargs="?", type=Path, help="the model folder (--from hf / mclip / ruclip)")
    parser.add_argument("--arch", help="open_clip architecture: a built-in name or a model config .json")
    parser.add_argument("--checkpoint", type=Path, help="open_clip checkpoint file (state dict)")
    parser.add_argument("--image-from", type=Path,
                        help="mclip's image tower: an HF CLIP folder, or an open_clip checkpoint (with --arch)")
    parser.add_argument("--mclip-base", type=Path,
                        help="mclip: local folder of the base text model (replaces the config's modelBase)")
    parser.add_argument("--out", type=Path, help="model folder to write (manifest.json and the ONNX files)")
    parser.add_argument("--templates", default=None,
                        help="prompt templates: one template ('{}') or a JSON list (default: the Russian "
                             "templates of train/export/corpus.py)")
    parser.add_argument("--plain", action="store_true",
                        help="no class balancing and no transductive step in the manifest (argmax of cosine logits)")
    parser.add_argument("--variants", default="fp16,int8,fp32-int8text",
                        help=f"comma list of smaller variants to try, of {sorted(variants.MODEL_VARIANTS)}; "
                             "each is kept only if its dev-set agreement with fp32 justifies it ('' for none)")
    parser.add_argument("--trim-vocabulary", action="store_true",
                        help="keep only the token rows an offline Russian+English corpus uses (id map in the manifest)")
    parser.add_argument("--dev-set", type=Path, default=build.DEV_SET,
                        help="datasets folder for the image checks and variant agreement (default: %(default)s)")
    parser.add_argument("--images", type=int, default=570, help="at most this many dev images for agreement")
    parser.add_argument("--vendor", type=Path, default=build.VENDOR,
                        help="the wheels folder with onnxruntime 1.16.3 (make vendor) for the judge-runtime check")
    parser.add_argument("--default", default="auto",
                        help="the variant whose files the manifest (and so the archive) uses by default; auto: fp32 "
                             "if it fits 700 MB and 23 minutes, else the smallest kept variant that fits")
    parser.add_argument("--plan", action="store_true",
                        help="without --out: only plan (quick checks, every variant measured, nothing kept)")
    parser.add_argument("--no-plan", action="store_true", help="skip the size/time measurements")
    parser.add_argument("--decode", choices=("auto", "exact", "draft"), default="auto",
                        help="image.decode of the folder: exact (the checkpoint's own decoding), draft (reduced JPEG "
                             "decoding: only if its measured top-1 agreement with exact is >= 99%%), or auto: exact "
                             "unless the plan is over the time and draft makes it fit (default)")
    parser.add_argument("--reference-python", type=Path, default=None,
                        help="Python of the reference environment that runs the checkpoint's own pipeline for the "
                             "end-to-end check (default: .venv-ref/bin/python, built by make reference-env)")
    parser.add_argument("--skip-end-to-end", action="store_true",
                        help="export without the end-to-end check against the checkpoint's own pipeline "
                             "(the manifest records it as skipped)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.out is None and not args.plan:
        parser.error("--out DIR is required (or --plan to only print the size/time plan)")
    opts = build.Options(plain=args.plain, trim_vocabulary=args.trim_vocabulary, dev_set=args.dev_set,
                         images=args.images, vendor=args.vendor, plan=not args.no_plan or args.plan,
                         variants=[v.strip() for v in args.variants.split(",") if v.strip()],
                         default_variant=args.default, plan_only=args.plan and args.out is None,
                         decode=args.decode, end_to_end=not args.skip_end_to_end,
                         reference_python=args.reference_python)
    if args.templates is not None:
        opts.templates = parse_templates(args.templates)
    source = sources.load_source(args.family, args.path, args.arch, args.checkpoint, args.image_from,
                                 args.mclip_base)
    with tempfile.TemporaryDirectory(prefix="export-plan-") as tmp:
        manifest = build.export(source, args.out or Path(tmp), opts)
        validation = manifest.validation
        if validation.get("plan"):
            sys.stdout.write(plan.format_table(validation["plan"], f"{source.name}: size and time plan") + "\n")
        sys.stdout.write(end_to_end.format_report(validation.get("end_to_end", {}), validation.get("decode", {}),
                                                  f"{source.name}: end to end against its own pipeline") + "\n")
    logger.info("exported %s to %s", source.name, args.out or "(temporary folder)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
