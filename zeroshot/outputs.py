"""Writing and reading the judge's JSON: {"<dataset>": {"<image id>": <class index>}}."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterator

Predictions = Dict[str, Dict[str, int]]


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A temp file beside ``path`` ("w": UTF-8 text, "wb": bytes), renamed onto ``path`` if the block succeeds."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(folder))
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write UTF-8 JSON to ``path`` through a temp file in the same folder and a rename."""
    with atomic_open(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1, sort_keys=True)
        handle.write("\n")


def read_predictions(path: Path) -> Predictions:
    """Read a predictions/ground-truth file; ValueError naming the file if it is not in the judge's format."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of datasets, got {type(data).__name__}")
    for name, preds in data.items():
        if not isinstance(preds, dict):
            raise ValueError(f"{path}: dataset '{name}' must map image ids to class indices")
        for key, label in preds.items():
            if not isinstance(label, int) or isinstance(label, bool):
                raise ValueError(f"{path}: {name}/{key}: class index must be an integer, got {label!r}")
    return data
