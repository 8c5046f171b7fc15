"""Writing ``manifest.json`` beside the exported files: the one place constants are set.

Every builder and exporter ends with :func:`write_manifest`, which fills in the
sha256 and the size of each file, reads the result through the runtime's own type
(:class:`zeroshot.manifest.Manifest`: unknown keys and bad values are errors,
defaults filled in) and writes that type's deterministic JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from zeroshot.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, sha256_file

logger = logging.getLogger(__name__)


def _file_entries(model_dir: Path, files: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """role -> {"path", "sha256", "size" (bytes)} of each file inside ``model_dir``."""
    return {role: {"path": name, "sha256": sha256_file(model_dir / name), "size": (model_dir / name).stat().st_size}
            for role, name in sorted(files.items())}


def write_manifest(model_dir: Path, files: Dict[str, str], sections: Dict[str, Any],
                   variants: Optional[Dict[str, Dict[str, str]]] = None,
                   variant_extras: Optional[Dict[str, Dict[str, Any]]] = None) -> Manifest:
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
    typed = Manifest.from_dict(manifest, path)
    path.write_text(typed.to_json(), encoding="utf-8")
    logger.info("wrote %s", path)
    return typed


def add_to_manifest(model_dir: Path, files: Dict[str, str], sections: Dict[str, Any],
                    variant_files: Optional[Dict[str, Dict[str, Optional[str]]]] = None) -> Manifest:
    """Add files (role -> name inside ``model_dir``), top-level sections and per-variant files (a None name
    removes the variant's own file of that role) to an existing manifest.json, checked through the runtime's
    type as :func:`write_manifest` writes it; returns it."""
    import json

    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(sections)
    manifest["files"].update(_file_entries(model_dir, files))
    for name, vf in (variant_files or {}).items():
        own = manifest["variants"][name]["files"]
        for role in [r for r, f in vf.items() if f is None]:
            own.pop(role, None)
        own.update(_file_entries(model_dir, {r: f for r, f in vf.items() if f is not None}))
    typed = Manifest.from_dict(manifest, path)
    path.write_text(typed.to_json(), encoding="utf-8")
    logger.info("updated %s: %s", path, sorted(files) + sorted(sections))
    return typed
