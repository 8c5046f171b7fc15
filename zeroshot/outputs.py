"""Writing and reading the judge's JSON: {"<dataset>": {"<image id>": <class index>}}, and atomic file writes."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterator

Predictions = Dict[str, Dict[str, int]]
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def json_bytes(data: Any) -> bytes:
    r"""UTF-8 JSON of ``data``; a lone surrogate (a name that was not valid UTF-8) is written as ``\udcXX``.

    ``backslashreplace`` turns a surrogate into the six characters ``\udcXX``,
    which inside a JSON string is the escape for that same code point, so the
    file stays valid UTF-8 JSON and reads back to the same Python string.
    """
    text = json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    return text.encode("utf-8", errors="backslashreplace")


@contextmanager
def atomic_open(path: Path, mode: str = "w", durable: bool = True) -> Iterator[IO[Any]]:
    """A temp file beside ``path`` ("w": UTF-8 text, "wb": bytes), renamed onto ``path`` if the block succeeds.

    The file gets the usual permissions (0666 minus the umask, 0644 mostly), not
    mkstemp's 0600, so a scorer running as another user can read it.
    ``durable``: fsync before the rename (survives a machine crash; a killed
    process leaves a complete file either way, the rename being atomic).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(folder))
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write UTF-8 JSON to ``path`` atomically (see :func:`atomic_open`)."""
    payload = json_bytes(data)
    with atomic_open(path, "wb", durable) as handle:
        handle.write(payload)


class PredictionsFile:
    """The judge's JSON kept complete on disk: every image from the start, improved dataset by dataset.

    :meth:`start` writes every image with its dataset's prior class (that
    also proves OUT_JSON is writable before any inference); :meth:`update`
    replaces one dataset's predictions and rewrites the file atomically, so
    a kill at any moment leaves the best answer so far.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: Predictions = {}

    def start(self, initial: Predictions) -> None:
        """Write ``initial``; OSError/ValueError naming OUT_JSON if it cannot be written."""
        if self.path.is_dir():
            raise ValueError(f"{self.path}: OUT_JSON is a directory; expected a file path")
        self.data = {name: dict(preds) for name, preds in initial.items()}
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:
            raise OSError(exc.errno, f"{self.path}: cannot write OUT_JSON: {exc.strerror or exc}") from exc

    def update(self, name: str, predictions: Dict[str, int]) -> None:
        """Replace one dataset's predictions (no write if they are what the file already holds)."""
        if self.data.get(name) == predictions:
            return
        self.data[name] = dict(predictions)
        write_json_atomic(self.path, self.data, durable=False)

    def finish(self) -> None:
        """The last write, synced to disk."""
        write_json_atomic(self.path, self.data)


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
