"""Building the visual concept bank (train/visual_bank.py): difference hashes, picking a source's images from a
generated git repository without near-copies of reference images, concepts from encoded images, the written bank."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from contest.suite_data import ClassSpec, Spec, class_candidates, git_dir_of
from train.visual_bank import (DUPLICATE_BITS, MIN_IMAGES, Encoded, concepts_of, dhash, hash_bytes, near, pick,
                               read_bank, write_bank)

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def _picture(seed: int, size: Tuple[int, int] = (240, 180)) -> Image.Image:
    """A smooth random picture: an 8x6 grid of random colours blown up to ``size`` (w, h)."""
    grid = np.random.default_rng(seed).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize(size, Image.BICUBIC)


def _encoded(img: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def _bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def _h(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


# ----------------------------------------------------------------------------------------- hashes


def test_a_copy_hashes_equal_a_resized_copy_near_and_another_picture_far() -> None:
    img = _picture(0)
    h = dhash(img)
    assert 0 <= h < 2 ** 64 and dhash(img.copy()) == h
    resized = hash_bytes(_encoded(img.resize((97, 73), Image.LANCZOS)))  # as a suite set stores it: smaller JPEG
    assert resized is not None and _bits(resized, h) <= DUPLICATE_BITS
    assert near(_h(resized), _h(h)).tolist() == [True]
    other = dhash(_picture(1))
    assert _bits(other, h) > DUPLICATE_BITS
    assert near(_h(other), _h(h)).tolist() == [False]
    assert hash_bytes(b"not an image") is None


def test_the_hash_compares_horizontal_neighbours() -> None:
    """Brightness rising left to right sets all 64 bits; rising top to bottom sets none."""
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (60, 1))
    assert dhash(Image.fromarray(ramp, "L")) == 2 ** 64 - 1
    assert dhash(Image.fromarray(np.ascontiguousarray(ramp[:, ::-1]), "L")) == 0
    assert dhash(Image.fromarray(np.ascontiguousarray(np.tile(ramp[:1, :60].T, (1, 90))), "L")) == 0


def test_near_counts_differing_bits_in_every_byte() -> None:
    h = 0x0123_4567_89AB_CDEF
    top = 64 - DUPLICATE_BITS
    hashes = _h(h, h ^ (2 ** DUPLICATE_BITS - 1), h ^ (2 ** (DUPLICATE_BITS + 1) - 1),
                h ^ ((2 ** DUPLICATE_BITS - 1) << top), h ^ ((2 ** (DUPLICATE_BITS + 1) - 1) << (top - 1)))
    assert near(hashes, _h(7, h)).tolist() == [True, True, False, True, False]
    assert near(hashes, _h(h), bits=64).all() and near(hashes[:1], _h(h), bits=0).tolist() == [True]
    assert near(_h(), _h(h)).shape == (0,) and not near(hashes, _h()).any()


# ------------------------------------------------------------------------------------------- pick


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, check=True,
                          stdout=subprocess.PIPE).stdout.decode().strip()


@pytest.fixture()
def source(tmp_path: Path) -> Dict[str, object]:
    """A git repository with data/cat (6 pictures and a broken file) and data/dog (9 pictures); a spec of it."""
    repo = tmp_path / "src"
    files: Dict[str, bytes] = {}
    seed = 0
    for cls, n in (("cat", 6), ("dog", 9)):
        (repo / "data" / cls).mkdir(parents=True)
        for i in range(n):
            files[f"data/{cls}/{cls}_{i}.jpg"] = _encoded(_picture(seed := seed + 1))
    files["data/cat/broken.jpg"] = b"not an image"
    for path, data in files.items():
        (repo / path).write_bytes(data)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "pictures")
    spec = Spec(name="pets", domain="test animals", repo="someone/pets", commit=_git(repo, "rev-parse", "HEAD"),
                licence="MIT", layout="folders", folders=("data",),
                classes=(ClassSpec(("cat",), "кошка", ("котик",)), ClassSpec(("dog",), "собака")))
    return {"git_dir": git_dir_of(repo), "spec": spec, "files": files}


def _copy_hash(files: Dict[str, bytes], path: str) -> int:
    """The hash of a shrunk JPEG copy of a repository picture (a reference image made from it)."""
    with Image.open(io.BytesIO(files[path])) as img:
        return hash_bytes(_encoded(img.resize((100, 75), Image.LANCZOS), "JPEG"))  # type: ignore[return-value]


def test_pick_skips_near_copies_of_references_counts_them_and_keeps_the_first_per_class(
        source: Dict[str, object]) -> None:
    files: Dict[str, bytes] = source["files"]  # type: ignore[assignment]
    git_dir: Path = source["git_dir"]  # type: ignore[assignment]
    spec: Spec = source["spec"]  # type: ignore[assignment]
    copied = {"dev": ["data/cat/cat_1.jpg"], "suite": ["data/cat/cat_4.jpg", "data/dog/dog_2.jpg"]}
    reference = {name: _h(*(_copy_hash(files, p) for p in paths)) for name, paths in copied.items()}
    rows, removed = pick(spec, git_dir, 5, reference)
    order = [[p for p, _ in items] for items in class_candidates(git_dir, spec)]
    kept: List[List[str]] = [[p for k, p, _, _ in rows if k == c] for c in (0, 1)]
    # cat: 6 pictures, 2 copies, the broken file skipped uncounted: 4 kept (fewer than 5, so every one was seen)
    assert kept[0] == [p for p in order[0] if p not in copied["dev"] + copied["suite"] + ["data/cat/broken.jpg"]]
    assert len(kept[0]) == 4
    # dog: the first 5 in sampling order that copy nothing; the copy counts only if it came before the 5th
    assert kept[1] == [p for p in order[1] if p != "data/dog/dog_2.jpg"][:5]
    dog_copy_seen = order[1].index("data/dog/dog_2.jpg") < order[1].index(kept[1][-1])
    assert removed == {"dev": 1, "suite": 1 + dog_copy_seen}
    for k, path, h, data in rows:
        assert data == files[path] and h == hash_bytes(data) and path.startswith(("data/cat/", "data/dog/")[k])


def test_pick_without_references_keeps_at_most_per_class(source: Dict[str, object]) -> None:
    git_dir: Path = source["git_dir"]  # type: ignore[assignment]
    spec: Spec = source["spec"]  # type: ignore[assignment]
    order = [[p for p, _ in items] for items in class_candidates(git_dir, spec)]
    for per_class in (1, 2, 7):
        rows, removed = pick(spec, git_dir, per_class, {"dev": _h(), "suite": _h()})
        assert removed == {}
        for c in (0, 1):
            expected = [p for p in order[c] if p != "data/cat/broken.jpg"][:per_class]
            assert [p for k, p, _, _ in rows if k == c] == expected


# ------------------------------------------------------------------------------------ concepts, bank


def _spec3() -> Spec:
    return Spec(name="farm", domain="d", repo="someone/farm", commit="a" * 40, licence="MIT", layout="folders",
                folders=("x",), classes=(ClassSpec(("a",), "корова", ("бурёнка",)), ClassSpec(("b",), "коза"),
                                         ClassSpec(("c",), "овца")))


def test_concepts_of_drops_a_class_with_too_few_images() -> None:
    counts = [MIN_IMAGES, MIN_IMAGES - 1, MIN_IMAGES + 2]
    classes = np.repeat(np.arange(3), counts)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(classes), 5)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    enc = Encoded(classes, [f"x/{i}.jpg" for i in range(len(classes))], _h(*range(len(classes))), features, {})
    records, protos = concepts_of(_spec3(), enc)
    assert records == [
        {"ru": "корова", "synonyms": ["бурёнка"], "source": "farm", "repo": "someone/farm", "commit": "a" * 40,
         "images": MIN_IMAGES},
        {"ru": "овца", "synonyms": [], "source": "farm", "repo": "someone/farm", "commit": "a" * 40,
         "images": MIN_IMAGES + 2}]
    for proto, cls in zip(protos, (0, 2)):
        mean = features[classes == cls].mean(axis=0)
        np.testing.assert_allclose(proto, mean / np.linalg.norm(mean), rtol=1e-5)


def test_a_written_bank_reads_back(tmp_path: Path) -> None:
    records = [{"ru": "корова", "synonyms": ["бурёнка"], "source": "farm", "repo": "someone/farm",
                "commit": "a" * 40, "images": 9},
               {"ru": "корова", "synonyms": [], "source": "zoo", "repo": "other/zoo", "commit": "b" * 40, "images": 12}]
    protos = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    summary = write_bank(tmp_path, records, protos, {"suite": 3}, ["gone"], "fp32")
    assert summary == {"rung": "fp32", "concepts": 2, "names": 1, "images": 21, "sources": 2,
                       "duplicates_removed": {"suite": 3}, "sources_without_snapshot": ["gone"], "dim": 6}
    back, stored = read_bank(tmp_path)
    assert back == records and stored.dtype == np.float16
    np.testing.assert_allclose(stored, protos, rtol=1e-3, atol=1e-3)
    assert "| farm | someone/farm | 1 |" in (tmp_path / "BANK.md").read_text(encoding="utf-8")
