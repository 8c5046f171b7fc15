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

Under torchrun (train/distributed.py) the work is sharded by rank: each process
hashes its share of the files and embeds its share of the new ones into
``vectors.rank<r>.f32``; rank 0 appends the shards to ``vectors.f32`` in rank
order and writes the index, and every process then reads the one merged cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from zeroshot.encoders import make_session
from zeroshot.manifest import Manifest, resolve_file, sha256_file
from zeroshot.images import decode_one
from zeroshot.resources import effective_cpus

from .distributed import SINGLE, Dist

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
VECTORS_FILE = "vectors.f32"
META_FILE = "meta.json"
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


def _hashes(paths: Sequence[Path], dist: Dist) -> List[str]:
    """sha256 of every file in ``paths``; each process reads only its share of the files."""
    mine = [sha256_file(Path(p)) for p in paths[dist.share(len(paths))]]
    return [digest for part in dist.all_gather_object(mine) for digest in part]


def _embed_into(tower: ImageTower, items: Sequence[Tuple[str, Path]], path: Path, first_row: int, dim: int,
                batch: int, meta: Optional[Path]) -> Tuple[Dict[str, int], int, int]:
    """Embed ``items`` (sha256, file) and append their vectors to ``path``, the first at row ``first_row``.

    Returns (sha256 -> row or BROKEN, dim, undecodable count). ``meta``: where to write the
    cache's meta.json as soon as the vector size is known (before any row is appended), or None.
    """
    index: Dict[str, int] = {}
    broken, rows_now = 0, first_row
    with ThreadPoolExecutor(max_workers=tower.threads) as pool, open(path, "ab") as out:
        for begin in range(0, len(items), batch):
            chunk = items[begin:begin + batch]
            vecs, errors = tower.embed([p for _, p in chunk], pool)
            if len(vecs) and not dim:
                dim = vecs.shape[1]
                if meta is not None:
                    _write_meta(meta, tower, dim)
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
    return index, dim, broken


def _read_dim(folder: Path) -> int:
    """The cache's vector size from meta.json (0 before the first vector)."""
    meta = folder / META_FILE
    return int(json.loads(meta.read_text())["dim"]) if meta.is_file() else 0


def _write_meta(meta: Path, tower: ImageTower, dim: int) -> None:
    meta.write_text(json.dumps({"dim": dim, "encoder": str(tower.path), "sha256": tower.sha256}))


def _rows_in(path: Path, dim: int) -> int:
    return path.stat().st_size // (4 * dim) if dim and path.is_file() else 0


def _merge_shards(tower: ImageTower, folder: Path, parts: List[Tuple[Dict[str, int], int]],
                  index: Dict[str, int], dim: int) -> Dict[str, int]:
    """Rank 0: append every rank's shard file (rank order) to vectors.f32, delete them; returns the merged index.

    ``parts``: per rank, (sha256 -> row within its shard or BROKEN, dim).
    """
    dim = dim or max(d for _, d in parts)
    if dim and not (folder / META_FILE).is_file():
        _write_meta(folder / META_FILE, tower, dim)
    with open(folder / VECTORS_FILE, "ab") as out:
        for rank, (shard_index, _) in enumerate(parts):
            offset = _rows_in(folder / VECTORS_FILE, dim)
            shard = _shard_file(folder, rank)
            with open(shard, "rb") as src:
                shutil.copyfileobj(src, out)
            out.flush()
            shard.unlink()
            index.update({d: BROKEN if row == BROKEN else offset + row for d, row in shard_index.items()})
    return index


def _shard_file(folder: Path, rank: int) -> Path:
    return folder / f"vectors.rank{rank}.f32"


def _embed_new(tower: ImageTower, items: List[Tuple[str, Path]], folder: Path, index: Dict[str, int], dim: int,
               batch: int, dist: Dist) -> Tuple[Dict[str, int], int, int]:
    """Embed ``items`` into the cache: returns (updated index, dim, undecodable count).

    One process appends to vectors.f32 directly. Several: rank r embeds its share of ``items``
    into ``vectors.rank<r>.f32``; once all are done rank 0 appends the shards to vectors.f32 in rank
    order and writes the index; every process then reads the merged index.
    """
    if not dist.active:
        rows = _rows_in(folder / VECTORS_FILE, dim)
        new, dim, broken = _embed_into(tower, items, folder / VECTORS_FILE, rows, dim, batch, folder / META_FILE)
        index.update(new)
        _save_index(folder, index)
        return index, dim, broken
    shard = _shard_file(folder, dist.rank)
    shard.unlink(missing_ok=True)
    new, shard_dim, broken = _embed_into(tower, items[dist.share(len(items))], shard, 0, dim, batch, None)
    parts = dist.all_gather_object((new, shard_dim, broken))
    if dist.main:
        _save_index(folder, _merge_shards(tower, folder, [(n, d) for n, d, _ in parts], index, dim))
    dist.barrier()
    return _load_index(folder), _read_dim(folder), sum(b for _, _, b in parts)


def embed_cached(tower: ImageTower, paths: Sequence[Path], cache_dir: Path, batch: int = 32,
                 dist: Dist = SINGLE) -> Tuple[np.ndarray, np.ndarray]:
    """Every image's vector, embedding only files whose sha256 is not cached yet.

    Returns (vectors, rows): ``vectors`` a read-only float32 memmap (R, D) over
    the whole cache, ``rows`` int64 (len(paths),) the row of each path, -1 for
    a file that cannot be decoded (logged, never fatal). Logs the time taken,
    the images embedded and the cache size.

    With several processes (``dist``, under torchrun) each one hashes and embeds only its
    share of the files; rank 0 merges the shards (see :func:`_embed_new`). The cache folder
    must be one that every process reads (one machine, or a shared file system).
    """
    folder = Path(cache_dir) / tower.key
    folder.mkdir(parents=True, exist_ok=True)
    index, dim = _load_index(folder), _read_dim(folder)
    start = time.perf_counter()
    hashes = _hashes(paths, dist)
    todo: Dict[str, Path] = {}
    for path, digest in zip(paths, hashes):
        if digest not in index:
            todo.setdefault(digest, Path(path))
    items = list(todo.items())
    index, dim, broken = _embed_new(tower, items, folder, index, dim, batch, dist)
    vectors = open_vectors(folder, dim)
    seconds = time.perf_counter() - start
    size_mb = (folder / VECTORS_FILE).stat().st_size / 1e6 if (folder / VECTORS_FILE).is_file() else 0.0
    logger.info("image cache %s: %d images (%d new%s, %d undecodable) in %.1f s (%.1f new images/s); "
                "%d vectors x %d dims, %.1f MB", folder, len(paths), len(items),
                f", shared by {dist.world} processes" if dist.active else "", broken, seconds,
                len(items) / max(seconds, 1e-9), len(vectors), dim, size_mb)
    return vectors, np.asarray([index[h] for h in hashes], dtype=np.int64)
