"""Writing ``manifest.json`` beside the exported files: the one place constants are set.

Every exporter ends with :func:`write_manifest`, which fills in the sha256 and
the size of each file, validates the result with the runtime's own validator, and writes
it deterministically (sorted keys, fixed indentation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from zeroshot.manifest import FORMAT_VERSION, MANIFEST_NAME, sha256_file, validate_manifest

logger = logging.getLogger(__name__)


def _file_entries(model_dir: Path, files: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """role -> {"path", "sha256", "size" (bytes)} of each file inside ``model_dir``."""
    return {role: {"path": name, "sha256": sha256_file(model_dir / name), "size": (model_dir / name).stat().st_size}
            for role, name in sorted(files.items())}


def write_manifest(model_dir: Path, files: Dict[str, str], sections: Dict[str, Any],
                   variants: Optional[Dict[str, Dict[str, str]]] = None,
                   variant_extras: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Write model_dir/manifest.json and return it.

    files: role ("image_encoder", "text_encoder", "tokenizer") -> file name
    inside ``model_dir``; sections: the other top-level entries (name, image,
    text, score, balance, batch_size, validation, ...); variants: name -> the
    roles whose files it replaces (e.g. an "int8" variant naming another image_encoder file);
    variant_extras: name -> further entries of that variant (its ``image`` overrides,
    a description).
    """
    model_dir = Path(model_dir)
    manifest: Dict[str, Any] = {"format_version": FORMAT_VERSION}
    manifest.update(sections)
    manifest["files"] = _file_entries(model_dir, files)
    if variants:
        extras = variant_extras or {}
        manifest["variants"] = {name: {**extras.get(name, {}), "files": _file_entries(model_dir, vf)}
                                for name, vf in sorted(variants.items())}
    path = model_dir / MANIFEST_NAME
    validate_manifest(manifest, path)
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
    return manifest
