"""The default Russian prompt templates (``train/vocab/templates_ru.json``) that exporters write into manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

DEFAULT_TEMPLATES = Path(__file__).resolve().parent / "vocab" / "templates_ru.json"


def load_templates(path: Path = DEFAULT_TEMPLATES) -> List[str]:
    """The ``templates`` list of a templates JSON file; ValueError naming the file unless each has one '{}'."""
    try:
        templates = json.loads(Path(path).read_text(encoding="utf-8"))["templates"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected a JSON object with a 'templates' list: {exc}") from exc
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ValueError(f"{path}: every template must be a string with exactly one '{{}}'")
    return list(templates)
