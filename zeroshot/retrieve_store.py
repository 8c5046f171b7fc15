"""The retrieval index's storage: append-only vector shards and small JSON tables, each commit atomic.

An index is a folder::

    index.json             format, images root, model signature, vector size, the committed segments in
                           order, the next id, and the search index's parameters (zeroshot.retrieve_index)
    seg/NNNNNN.npy         float32 (rows, D): the vectors one commit added, ids first_id .. first_id+rows-1
                           (absent when the commit added none); rows are read by offset, only those asked for
    seg/NNNNNN.json        that commit's file table changes: {"set": {rel: [id, sha256, size, mtime_ns]},
                           "removed": [rel, ...]}
    search-NNNNNN.faiss    the FAISS index over the live ids, when the collection needs one

A commit writes its segment files under a new number, then replaces index.json
(``os.replace``), so a killed writer loses at most the commit in flight, whose
unreferenced files the next writer removes. Nothing committed is rewritten:
a deleted or changed file only drops its path from the table, and a vector no
path refers to any more is a tombstone until :func:`compacted` re-packs the
live vectors under new ids. Replaying the tables in order gives the file table
(path -> id, sha256, size, mtime); a moved or copied file refers to the
vector its content already has. One writer at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from .embed import walk_images
from .manifest import sha256_file
from .outputs import atomic_open

logger = logging.getLogger(__name__)

STORE_FORMAT = 2
META_NAME = "index.json"
SEGMENTS_DIR = "seg"
COMPACT_ROWS = 65536


@dataclass(frozen=True)
class FileRecord:
    """One indexed file: the id of its vector, its sha256, size in bytes and mtime in ns."""

    id: int
    sha256: str
    size: int
    mtime: int


@dataclass(frozen=True)
class Segment:
    """One commit: its file name stem, the first id of its vectors and how many it added."""

    name: str
    first_id: int
    rows: int


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, ensure_ascii=False, separators=(",", ":"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a retrieval index file: {type(exc).__name__}: {exc}") from exc


class Store:
    """An index folder opened for reading and appending; ``files`` is the replayed file table."""

    def __init__(self, path: Path, meta: Dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.segments = [Segment(name, first, rows) for name, first, rows in meta["segments"]]
        self.files: Dict[str, FileRecord] = replay(path, self.segments)
        self._offsets: Dict[str, int] = {}

    @classmethod
    def create(cls, path: Path, root: Path, signature: str) -> "Store":
        """An empty index at ``path`` (a folder); an index already there is dropped by this commit."""
        if path.is_file():
            raise ValueError(f"{path}: is a file; an index is a folder (the single-file .npz index of earlier "
                             f"versions is not read: index the images again into a folder)")
        meta = {"format": STORE_FORMAT, "root": str(root), "signature": signature, "dim": 0, "next_id": 0,
                "next_segment": 0, "next_search": 0, "segments": [], "search": None}
        store = cls(path, meta)
        _write_json(path / META_NAME, meta)
        store.remove_unreferenced()
        return store

    @classmethod
    def open(cls, path: Path) -> "Store":
        """Read ``path``/index.json and replay the file tables; FileNotFoundError/ValueError name the path."""
        meta_path = path / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path}: retrieval index not found (no {META_NAME}; build it with "
                                    f"'python -m zeroshot.retrieve index IMAGES_DIR {path}')")
        meta = _read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{meta_path}: index format {meta.get('format') if isinstance(meta, dict) else None},"
                             f" expected {STORE_FORMAT} (index the images again)")
        return cls(path, meta)

    @property
    def root(self) -> Path:
        return Path(self.meta["root"])

    @property
    def signature(self) -> str:
        return str(self.meta["signature"])

    @property
    def next_id(self) -> int:
        return int(self.meta["next_id"])

    def segment_file(self, segment: Segment, suffix: str) -> Path:
        return self.path / SEGMENTS_DIR / f"{segment.name}{suffix}"

    def live_ids(self) -> np.ndarray:
        """int64 (L,) sorted ids that some file refers to."""
        return np.unique(np.array([r.id for r in self.files.values()], dtype=np.int64))

    def paths_by_id(self) -> Dict[int, List[str]]:
        """id -> the sorted relative paths whose content it is (copies share one vector)."""
        found: Dict[int, List[str]] = {}
        for rel in sorted(self.files):
            found.setdefault(self.files[rel].id, []).append(rel)
        return found

    def _data_offset(self, segment: Segment, handle: BinaryIO) -> int:
        """Where the rows of ``segment``'s .npy start (its header checked once: float32, C order, (rows, D))."""
        if segment.name not in self._offsets:
            fmt = np.lib.format
            version = fmt.read_magic(handle)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(handle)
            if dtype != np.float32 or fortran or shape != (segment.rows, self.meta["dim"]):
                raise ValueError(f"{self.segment_file(segment, '.npy')}: {dtype} {shape}, expected float32 "
                                 f"({segment.rows}, {self.meta['dim']})")
            self._offsets[segment.name] = handle.tell()
        return self._offsets[segment.name]

    def _rows(self, segment: Segment, local: np.ndarray) -> np.ndarray:
        """float32 (len(local), D) rows of one segment, in the order of ``local``, read by offset.

        Positional reads, not a memory map: the page cache keeps the shards,
        while the process holds only the rows it asked for (a memory-mapped
        row counts its whole page-cache folio, often the whole shard, in RSS).
        """
        dim = int(self.meta["dim"])
        width = dim * 4
        with open(self.segment_file(segment, ".npy"), "rb") as handle:
            start = self._data_offset(segment, handle)
            lo, hi = int(local.min()), int(local.max()) + 1
            if hi - lo <= 2 * len(local):  # dense enough: one read of the span
                span = np.frombuffer(os.pread(handle.fileno(), (hi - lo) * width, start + lo * width), np.float32)
                return span.reshape(hi - lo, dim)[local - lo]
            return np.stack([np.frombuffer(os.pread(handle.fileno(), width, start + int(r) * width), np.float32)
                             for r in local])

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32 (len(ids), D) vectors of ``ids`` (any order), read from the memory-mapped shards."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), int(self.meta["dim"])), dtype=np.float32)
        stored = [s for s in self.segments if s.rows]
        firsts = np.array([s.first_id for s in stored], dtype=np.int64)
        where = np.searchsorted(firsts, ids, side="right") - 1
        for k in np.unique(where):
            rows = np.flatnonzero(where == k)
            local = ids[rows] - (stored[int(k)].first_id if k >= 0 else 0)
            if k < 0 or local.max() >= stored[int(k)].rows:
                raise ValueError(f"{self.path}: ids {ids[rows][:5].tolist()} are not in the index")
            segment = stored[int(k)]
            out[rows] = self._rows(segment, local)
        return out

    def iter_vectors(self, ids: np.ndarray, chunk: int = COMPACT_ROWS) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) in chunks of at most ``chunk`` rows, in the order of ``ids``."""
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            yield part, self.vectors(part)

    def commit(self, vectors: np.ndarray, set_files: Mapping[str, FileRecord], removed: Sequence[str]) -> Segment:
        """Append ``vectors`` (ids from :attr:`next_id` on) and the file table changes, atomically.

        ``set_files`` may refer to the new ids or to any stored one; ``removed``
        paths leave the table (their vectors stay, as tombstones when no other
        path refers to them).
        """
        segment = _write_segment(self, vectors, set_files, removed)
        self.write_meta(self.meta)
        return segment

    def write_meta(self, meta: Dict[str, Any]) -> None:
        """Replace index.json with ``meta`` (the commit point) and keep it as this store's state."""
        _write_json(self.path / META_NAME, meta)
        self.meta = meta

    def remove_unreferenced(self) -> None:
        """Delete segment and search files index.json does not name (left by a killed writer or a compaction)."""
        keep = {f"{name}{suffix}" for name, _, _ in self.meta["segments"] for suffix in (".npy", ".json")}
        seg_dir = self.path / SEGMENTS_DIR
        stale = [p for p in seg_dir.iterdir() if p.name not in keep] if seg_dir.is_dir() else []
        search_file = (self.meta.get("search") or {}).get("file")
        stale += [p for p in self.path.glob("search-*.faiss") if p.name != search_file]
        stale += list(self.path.glob(".*.tmp"))
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if stale:
            logger.info("%s: removed %d files that are not part of the index (%s, ...)", self.path, len(stale),
                        stale[0].name)


def _write_segment(store: Store, vectors: np.ndarray, set_files: Mapping[str, FileRecord],
                   removed: Sequence[str]) -> Segment:
    """Write one segment's files and add it to ``store``'s in-memory state (index.json is not written)."""
    rows, meta = len(vectors), store.meta
    segment = Segment(f"{int(meta['next_segment']):06d}", store.next_id, rows)
    bad = [rel for rel, r in set_files.items() if not 0 <= r.id < store.next_id + rows]
    if bad:
        raise ValueError(f"{store.path}: file records {bad[:3]} refer to ids that do not exist")
    if rows:
        if meta["dim"] and vectors.shape[1] != meta["dim"]:
            raise ValueError(f"{store.path}: vectors of size {vectors.shape[1]}, the index has {meta['dim']}")
        with atomic_open(store.segment_file(segment, ".npy"), "wb") as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
    _write_json(store.segment_file(segment, ".json"),
                {"set": {rel: [r.id, r.sha256, r.size, r.mtime] for rel, r in set_files.items()},
                 "removed": list(removed)})
    store.meta = dict(meta, next_id=store.next_id + rows, next_segment=int(meta["next_segment"]) + 1,
                      segments=meta["segments"] + [[segment.name, segment.first_id, rows]],
                      dim=int(meta["dim"] or (vectors.shape[1] if rows else 0)))
    store.segments.append(segment)
    for rel in removed:
        store.files.pop(rel, None)
    store.files.update(set_files)
    return segment


def replay(path: Path, segments: Sequence[Segment]) -> Dict[str, FileRecord]:
    """The file table after ``segments``' changes, applied in order."""
    files: Dict[str, FileRecord] = {}
    for segment in segments:
        table = _read_json(path / SEGMENTS_DIR / f"{segment.name}.json")
        for rel in table["removed"]:
            files.pop(rel, None)
        for rel, (id_, sha, size, mtime) in table["set"].items():
            files[rel] = FileRecord(int(id_), str(sha), int(size), int(mtime))
    return files


@dataclass
class Plan:
    """What an update does, from ``images`` files of which ``unchanged`` match their records.

    ``reuse``: path -> record of a vector the index has (a moved or copied
    file, or one changed back to a known content); ``removed``: paths no longer
    there; ``encode``: new contents as (sha256, [(rel, size, mtime), ...]) in
    path order, one entry per distinct hash; ``paths``: rel -> file.
    """

    images: int
    unchanged: int
    reuse: Dict[str, FileRecord]
    removed: List[str]
    encode: List[Tuple[str, List[Tuple[str, int, int]]]]
    paths: Dict[str, Path]


def plan_update(store: Store, root: Path) -> Plan:
    """Compare the images under ``root`` with the file table.

    A file whose size and mtime match its record keeps its stored hash; any
    other is hashed. A hash the index already has (a moved, copied or
    reverted file) reuses that vector; the rest are to be encoded.
    """
    paths = walk_images(root)
    by_hash = {r.sha256: r.id for r in store.files.values()}
    found: Dict[str, Path] = {}
    reuse: Dict[str, FileRecord] = {}
    encode: Dict[str, List[Tuple[str, int, int]]] = {}
    unchanged = 0
    for path in paths:
        rel = path.relative_to(root).as_posix()
        found[rel] = path
        stat = path.stat()
        old = store.files.get(rel)
        if old is not None and old.size == stat.st_size and old.mtime == stat.st_mtime_ns:
            unchanged += 1
            continue
        digest = sha256_file(path)
        if digest in by_hash:
            reuse[rel] = FileRecord(by_hash[digest], digest, stat.st_size, stat.st_mtime_ns)
        else:
            encode.setdefault(digest, []).append((rel, stat.st_size, stat.st_mtime_ns))
    removed = sorted(set(store.files) - set(found))
    return Plan(len(paths), unchanged, reuse, removed, list(encode.items()), found)


def compacted(store: Store, rows: int = COMPACT_ROWS) -> Store:
    """The live vectors re-packed under new ids 0..L-1 (in id order) in new segments, not yet committed.

    The segments are written beside the old ones; the caller commits the
    returned store with :meth:`Store.write_meta` (then removes the old files
    with :meth:`Store.remove_unreferenced`). Its ``search`` entry is None.
    """
    old_ids = store.live_ids()
    new_id = {int(old): new for new, old in enumerate(old_ids)}
    by_id: Dict[int, Dict[str, FileRecord]] = {}
    for rel, r in sorted(store.files.items()):
        by_id.setdefault(new_id[r.id], {})[rel] = FileRecord(new_id[r.id], r.sha256, r.size, r.mtime)
    meta = dict(store.meta, next_id=0, segments=[], search=None)
    new = Store(store.path, meta)
    for start in range(0, max(len(old_ids), 1), rows):
        part = old_ids[start:start + rows]
        files = {rel: r for i in range(start, start + len(part)) for rel, r in by_id[i].items()}
        vectors = store.vectors(part) if len(part) else np.zeros((0, int(meta["dim"])), dtype=np.float32)
        _write_segment(new, vectors, files, [])
    return new
