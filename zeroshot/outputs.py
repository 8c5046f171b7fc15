"""Writing and reading the judge's JSON: {"<dataset>": {"<image id>": <class index>}}, and safe file writes.

How an output file (OUT_JSON, the run report) is written, by :class:`OutputFile`:

- **Atomically wherever the file system allows it**: a temp file beside the
  target, with a short name of its own (a 255-byte OUT_JSON name still leaves
  room for it), is written, synced and renamed onto the target, so a reader,
  a kill or a full disk never leaves a half-written file.
- **Through a symlink**: the link stays, its final target gets the answer (the
  temp file is made beside the target, where the rename can happen).
- **In place where a rename is impossible**: a single file bind-mounted into a
  container (EBUSY), a target on another mount (EXDEV), a folder that may not
  be written while the file may (EACCES, EPERM, EROFS), or a regular file
  reached through /proc/PID/fd (``/dev/stdout`` redirected to a file). The file
  is overwritten from its start, truncated to the new length and synced.
  **Such a write is not atomic**: a reader looking during the write, or a kill
  in the middle of it, can see a mix of the old and the new answer. If a write
  fails (a full disk), the previous answer is written back before the error
  is raised.
- **Once, at the end, to a stream**: a character device, FIFO or socket
  (``/dev/stdout`` on a pipe or a terminal) gets only the final answer, in one
  write (a kill before the end leaves nothing there).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Optional

logger = logging.getLogger(__name__)

Predictions = Dict[str, Dict[str, int]]
_UMASK_LOCK = threading.Lock()
# a rename onto the target cannot happen, but writing the file itself may still work
IN_PLACE_ERRNOS = frozenset({errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS})
TEMP_NAME_CHARS = 24  # of the target's name kept in its temp file's name (at most 96 bytes in UTF-8)
ATOMIC, IN_PLACE, STREAM = "atomic", "in place", "stream"


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


def link_target(path: Path) -> Path:
    """Where a write to ``path`` lands: the final target of a chain of symlinks, else ``path`` itself."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


@contextmanager
def atomic_open(path: Path, mode: str = "w", durable: bool = True) -> Iterator[IO[Any]]:
    """A temp file beside ``path`` ("w": UTF-8 text, "wb": bytes), renamed onto ``path`` if the block succeeds.

    A symlink ``path`` stays: its final target is replaced. The temp file's
    name keeps only the first TEMP_NAME_CHARS characters of the target's, so
    a name near the 255-byte limit still works. The file gets the usual
    permissions (0666 minus the umask, 0644 mostly), not mkstemp's 0600, so a
    scorer running as another user can read it. ``durable``: fsync before the
    rename (survives a machine crash; a killed process leaves a complete file
    either way, the rename being atomic).
    """
    target = link_target(Path(path))
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:TEMP_NAME_CHARS]}.", suffix=".tmp", dir=str(folder))
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, payload: bytes, durable: bool = True) -> None:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", durable) as handle:
        handle.write(payload)


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write UTF-8 JSON to ``path`` atomically (see :func:`atomic_open`)."""
    write_bytes_atomic(path, json_bytes(data), durable)


def _write_at_start(fd: int, payload: bytes) -> None:
    """Write all of ``payload`` from offset 0 of ``fd`` and cut the file there."""
    done = 0
    while done < len(payload):
        done += os.pwrite(fd, payload[done:], done)
    os.ftruncate(fd, len(payload))


def write_in_place(path: Path, payload: bytes, previous: Optional[bytes], durable: bool = True) -> None:
    """Overwrite the existing file ``path`` with ``payload`` (not atomic: see the module docstring).

    If the write fails, ``previous`` (what the file held) is written back
    before the OSError is raised, so a full disk does not cost the last answer.
    """
    fd = os.open(path, os.O_WRONLY)  # neither created nor truncated: the file is there and stays there
    try:
        try:
            _write_at_start(fd, payload)
            if durable:
                os.fsync(fd)
        except OSError:
            if previous is not None:
                try:
                    _write_at_start(fd, previous)
                except OSError:
                    logger.error("%s: could not write its previous content back either", path)
            raise
    finally:
        os.close(fd)


def write_stream(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a character device, FIFO or socket ``path`` in one go."""
    with open(path, "wb") as handle:
        handle.write(payload)


def os_error_text(exc: OSError) -> str:
    """``strerror: filename`` of an OSError (the filename when it has one), for one-line messages."""
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


def _read_or_none(path: Path) -> Optional[bytes]:
    """The bytes of ``path``, or None if it cannot be read (a write-only file)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


class OutputFile:
    """One file rewritten whole again and again, as safely as its kind allows (see the module docstring).

    ``what`` names it in messages ("OUT_JSON"). :attr:`how` is ATOMIC,
    IN_PLACE or STREAM once the first write has found out; :attr:`target`,
    where an atomic write renames to, is resolved once then (a link through
    /proc/self/fd/1 would lead elsewhere after the first rename).
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.how: Optional[str] = None
        self.target = self.path
        self._previous: Optional[bytes] = None

    def classify(self) -> str:
        """How ``path`` can be written (and :attr:`target`); ValueError if it is a directory."""
        self.target = link_target(self.path)
        try:
            info = os.stat(self.path)
        except OSError:  # not there yet (or its folder is not): the atomic write makes it or says why not
            return ATOMIC
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{self.path}: {self.what} is a directory; expected a file path")
        if not stat.S_ISREG(info.st_mode):
            return STREAM
        if not self.target.is_file() or not os.path.samefile(self.target, self.path):
            return IN_PLACE  # a /proc/PID/fd/N link to a deleted file: no name to rename onto
        return ATOMIC

    def write(self, payload: bytes, durable: bool = True, final: bool = False) -> None:
        """Write ``payload`` whole (a stream only when ``final``); OSError if it could not be written,
        and the file then holds what it held before."""
        if self.how is None:
            self.how = self.classify()
            if self.how != ATOMIC:
                logger.info("%s: %s is %s: written %s", self.path, self.what,
                            "a stream" if self.how == STREAM else "an open file reached through /proc",
                            "once, at the end" if self.how == STREAM else "in place (not atomically)")
        if self.how == STREAM:
            if final:
                write_stream(self.path, payload)
            return
        if self.how == ATOMIC:
            try:
                write_bytes_atomic(self.target, payload, durable)
                return
            except OSError as exc:
                if exc.errno not in IN_PLACE_ERRNOS or not self.path.is_file():
                    raise
                logger.warning("%s: cannot replace %s by a rename (%s): writing it in place from now on, "
                               "not atomically", self.path, self.what, exc.strerror or exc)
                self.how = IN_PLACE
                self._previous = _read_or_none(self.path)
        write_in_place(self.path, payload, self._previous, durable)
        self._previous = payload


class PredictionsFile:
    """The judge's JSON kept complete on disk: every image from the start, improved dataset by dataset.

    :meth:`start` writes every image with its dataset's prior class (that
    also proves OUT_JSON is writable before any inference); :meth:`update`
    replaces one dataset's predictions and rewrites the file, so a kill at
    any moment leaves the best answer so far. A write that fails later (a
    full disk) is logged and leaves the last complete answer in place; the
    next update and :meth:`finish` try again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = OutputFile(self.path, "OUT_JSON")
        self.data: Predictions = {}
        self.on_disk = "nothing"  # what the file holds, for messages
        self.pending = False  # self.data is newer than the file

    def start(self, initial: Predictions) -> None:
        """Write ``initial``; OSError/ValueError naming OUT_JSON if it cannot be written."""
        self.data = {name: dict(preds) for name, preds in initial.items()}
        error = self._write("every image with its dataset's prior class", durable=True)
        if error is not None:
            raise OSError(error.errno, f"{self.path}: cannot write OUT_JSON: {os_error_text(error)}") from error

    def update(self, name: str, predictions: Dict[str, int]) -> None:
        """Replace one dataset's predictions (no write if the file already holds them); a failed write is
        logged, not raised."""
        if self.data.get(name) == predictions and not self.pending:
            return
        self.data[name] = dict(predictions)
        error = self._write(f"the answer as of dataset {name}", durable=False)
        if error is not None:
            logger.warning("%s: cannot write OUT_JSON (%s): it keeps %s; trying again after the next dataset",
                           self.path, os_error_text(error), self.on_disk)

    def finish(self) -> bool:
        """The last write, synced to disk; False (logged as an error) if it could not be made."""
        error = self._write("the final answer", durable=True, final=True)
        if error is None:
            return True
        logger.error("%s: cannot write the final answer to OUT_JSON (%s); it keeps %s", self.path,
                     os_error_text(error), self.on_disk)
        return False

    def _write(self, what: str, durable: bool, final: bool = False) -> Optional[OSError]:
        """Write ``self.data``; the OSError if that failed (the file keeps its last complete answer)."""
        try:
            self.file.write(json_bytes(self.data), durable, final)
        except OSError as exc:
            self.pending = True
            return exc
        if self.pending:
            logger.info("%s: OUT_JSON written again: it holds %s", self.path, what)
        self.pending, self.on_disk = False, what
        return None


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
