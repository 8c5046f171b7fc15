"""The frozen image tower and its memory-mapped embedding cache, keyed by file hash.

:class:`ImageTower` runs any model folder's ONNX image encoder exactly as the
runtime does (``zeroshot.encoders.make_session``, ``zeroshot.images`` decoding
and preprocessing configured by the manifest's ``image`` section) and returns
the vectors the runtime scores against (``image.output``).

:func:`embed_cached` embeds every image once: the cache folder holds one
sub-folder per encoder (its sha256 and input size), with ``vectors.f32`` (rows
of float32, appended) and ``index.json`` (file sha256 -> row, or -1 for a file
that cannot be decoded). Training then reads the rows through ``np.memmap``
and never touches pixels again. A renamed or copied image hits the cache; an
edited one is embedded again.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from zeroshot.encoders import make_session
from zeroshot.manifest import Manifest, resolve_file, sha256_file
from zeroshot.images import decode_one
from zeroshot.resources import effective_cpus

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
VECTORS_FILE = "vectors.f32"
BROKEN = -1


class ImageTower:
    """A model folder's image encoder: files -> float32 (N, D) vectors, through the runtime's code."""

    def __init__(self, model_dir: Path, threads: int = 0) -> None:
        self.dir = Path(model_dir)
        self.manifest = Manifest.load(self.dir)
        self.cfg = self.manifest.image
        self.path = resolve_file(self.manifest, self.dir, "image_encoder")
        self.sha256: str = self.manifest.files["image_encoder"].sha256
        self.threads = threads or effective_cpus().cpus
        self.session = make_session(self.path, self.threads)
        outputs = [o.name for o in self.session.get_outputs()]
        if self.cfg.output not in outputs:
            raise ValueError(f"{self.path}: no output named {self.cfg.output!r} (outputs {outputs})")

    @property
    def key(self) -> str:
        """Cache sub-folder name: the encoder's sha256 prefix and input size."""
        return f"{self.sha256[:16]}-{self.cfg.size}"

    def embed(self, paths: Sequence[Path], pool: ThreadPoolExecutor) -> Tuple[np.ndarray, List[str]]:
        """Decode + encode ``paths``: (float32 (n_ok, D) vectors of the decodable ones, per-path error or "")."""
        size = int(self.cfg.size)
        decoded = list(pool.map(lambda p: decode_one(Path(p), self.cfg, size), paths))
        errors = [msg or "" for _, msg in decoded]
        pixels = [arr for arr, _ in decoded if arr is not None]
        if not pixels:
            return np.zeros((0, 0), dtype=np.float32), errors
        out = self.session.run([self.cfg.output], {self.cfg.input: np.stack(pixels)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(pixels), -1), errors


def _load_index(folder: Path) -> Dict[str, int]:
    path = folder / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: corrupt image cache index ({exc}); delete the folder {folder}") from exc


def _save_index(folder: Path, index: Dict[str, int]) -> None:
    tmp = folder / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, sort_keys=True), encoding="utf-8")
    tmp.replace(folder / INDEX_FILE)


def open_vectors(folder: Path, dim: int) -> np.ndarray:
    """The cache's rows as a read-only float32 memmap (rows, dim); an empty array when there are none."""
    path = folder / VECTORS_FILE
    rows = path.stat().st_size // (4 * dim) if path.is_file() and dim else 0
    if rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))


def embed_cached(tower: ImageTower, paths: Sequence[Path], cache_dir: Path,
                 batch: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """Every image's vector, embedding only files whose sha256 is not cached yet.

    Returns (vectors, rows): ``vectors`` a read-only float32 memmap (R, D) over
    the whole cache, ``rows`` int64 (len(paths),) the row of each path, -1 for
    a file that cannot be decoded (logged, never fatal). Logs the time taken,
    the images embedded and the cache size.
    """
    folder = Path(cache_dir) / tower.key
    folder.mkdir(parents=True, exist_ok=True)
    index = _load_index(folder)
    meta = folder / "meta.json"
    dim = int(json.loads(meta.read_text())["dim"]) if meta.is_file() else 0
    start = time.perf_counter()
    hashes = [sha256_file(Path(p)) for p in paths]
    todo: Dict[str, Path] = {}
    for path, digest in zip(paths, hashes):
        if digest not in index:
            todo.setdefault(digest, Path(path))
    broken = 0
    items = list(todo.items())
    with ThreadPoolExecutor(max_workers=tower.threads) as pool, open(folder / VECTORS_FILE, "ab") as out:
        rows_now = (folder / VECTORS_FILE).stat().st_size // (4 * dim) if dim else 0
        for begin in range(0, len(items), batch):
            chunk = items[begin:begin + batch]
            vecs, errors = tower.embed([p for _, p in chunk], pool)
            if len(vecs) and not dim:
                dim = vecs.shape[1]
                meta.write_text(json.dumps({"dim": dim, "encoder": str(tower.path), "sha256": tower.sha256}))
            out.write(np.ascontiguousarray(vecs, dtype=np.float32).tobytes())
            it = iter(range(rows_now, rows_now + len(vecs)))
            for (digest, _), err in zip(chunk, errors):
                if err:
                    logger.warning("%s; skipped", err)
                    broken += 1
                index[digest] = BROKEN if err else next(it)
            rows_now += len(vecs)
            if (begin // batch) % 20 == 19:
                logger.info("image cache: %d / %d new images embedded", begin + len(chunk), len(items))
    _save_index(folder, index)
    vectors = open_vectors(folder, dim)
    seconds = time.perf_counter() - start
    size_mb = (folder / VECTORS_FILE).stat().st_size / 1e6 if (folder / VECTORS_FILE).is_file() else 0.0
    logger.info("image cache %s: %d images (%d new, %d undecodable) in %.1f s (%.1f new images/s); "
                "%d vectors x %d dims, %.1f MB", folder, len(paths), len(items), broken, seconds,
                len(items) / max(seconds, 1e-9), len(vectors), dim, size_mb)
    return vectors, np.asarray([index[h] for h in hashes], dtype=np.int64)
