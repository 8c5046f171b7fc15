"""contest.suite_data: building suite sets from a pinned commit of a git repository, and checking them."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from contest.suite_data import main

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}
CLASS_SIZES = {"cat": 5, "dog": 3, "fox": 2}  # images per class dir in each of train/ and test/


def _git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity; stdout."""
    return subprocess.run(["git", "-C", str(repo), *args], env=GIT_ENV, check=True,
                          stdout=subprocess.PIPE).stdout.decode().strip()


def _image(rng: np.random.Generator, size=(120, 90), fmt: str = "JPEG") -> bytes:
    """An encoded random image of ``size`` (w, h) in ``fmt``."""
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr, "RGB").save(out, fmt)
    return out.getvalue()


@pytest.fixture()
def source_repo(tmp_path: Path) -> Dict[str, str]:
    """A git work tree with train/ and test/ class folders, a CSV, a WebP named .jpg; returns paths and commits."""
    rng = np.random.default_rng(0)
    repo = tmp_path / "src"
    for split in ("train", "test"):
        for cls, n in CLASS_SIZES.items():
            d = repo / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{cls}_{i}.jpg").write_bytes(_image(rng, size=(800, 300) if i == 0 else (120, 90)))
    (repo / "data" / "train" / "cat" / "sub").mkdir()
    (repo / "data" / "train" / "cat" / "sub" / "webp.jpg").write_bytes(_image(rng, fmt="WEBP"))
    (repo / "data" / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
    (repo / "data" / "train" / "cat" / "notes.txt").write_text("x")
    rows = ["file,label"] + [f"train/{c}/{c}_{i}.jpg,{c.upper()}" for c, n in CLASS_SIZES.items() for i in range(n)]
    (repo / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "data" / "train" / "dog" / "dog_0.jpg").unlink()
    _git(repo, "commit", "-q", "-am", "two")
    return {"repo": str(repo), "first": first, "head": _git(repo, "rev-parse", "HEAD")}


def _spec(rev: str, **extra: object) -> Dict[str, object]:
    """A folders-layout spec of the test repo at commit ``rev`` with three classes (cat, dog, fox)."""
    spec = {
        "name": "pets", "domain": "test animals", "repo": "someone/src", "commit": rev, "licence": "MIT",
        "layout": "folders", "folders": ["data/train", "data/test"],
        "classes": [{"source": "cat", "ru": "кошка"}, {"source": "dog", "ru": "собака"},
                    {"source": "fox", "ru": "лиса"}],
        "per_class_min": 3, "per_class_max": 8, "max_side": 100,
        "min_classes_exception": "a three-class test set",
    }
    spec.update(extra)
    return spec


def _write_spec(root: Path, spec: Dict[str, object]) -> Path:
    """Write ``spec`` to root/<name>/source.json."""
    path = root / str(spec["name"]) / "source.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


def _snapshot(set_dir: Path) -> Dict[str, bytes]:
    """{relative path: bytes} of every file in a set folder."""
    return {str(p.relative_to(set_dir)): p.read_bytes() for p in sorted(set_dir.rglob("*")) if p.is_file()}


def _build(root: Path, spec: Dict[str, object], source: str) -> int:
    """main(['build', ...]) for ``spec`` written under ``root``."""
    return main(["build", "--spec", str(_write_spec(root, spec)), "--source", source, "--out", str(root)])


def test_build_layout_sampling_resizing_and_determinism(tmp_path: Path, source_repo: Dict[str, str]) -> None:
    root = tmp_path / "suite"
    assert _build(root, _spec(source_repo["first"]), source_repo["repo"]) == 0
    set_dir = root / "pets"
    classes = json.loads((set_dir / "classes.json").read_text(encoding="utf-8"))
    assert classes == ["кошка", "собака", "лиса"]
    gt = json.loads((set_dir / "gt.json").read_text())["pets"]
    counts = [list(gt.values()).count(i) for i in range(3)]
    # cat: 10 jpg, a webp and broken.jpg found, capped at 8 (notes.txt is no image); dog 6, fox 4: all
    assert counts == [8, 6, 4]
    stems = sorted(p.stem for p in (set_dir / "img").iterdir())
    assert stems == sorted(gt) and all(len(s) == 16 and "cat" not in s for s in stems)
    sizes = []
    for p in (set_dir / "img").iterdir():
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            sizes.append(img.size)
    assert max(max(s) for s in sizes) == 100 and (100, 38) in sizes  # 800x300 shrunk, aspect kept
    source_md = (set_dir / "SOURCE.md").read_text(encoding="utf-8")
    assert source_repo["first"] in source_md and "| 0 | `cat` | кошка | 12 | 8 |" in source_md
    first = _snapshot(set_dir)
    assert _build(root, _spec(source_repo["first"]), source_repo["repo"]) == 0
    assert _snapshot(set_dir) == first
    assert main(["check", "--root", str(root)]) == 0


def test_build_reads_the_pinned_commit_and_a_bare_clone_url(tmp_path: Path, source_repo: Dict[str, str]) -> None:
    root = tmp_path / "suite"
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", source_repo["repo"], str(bare)], check=True, env=GIT_ENV)
    spec = _spec(source_repo["head"], classes=[{"source": "dog", "ru": "собака"}])
    assert _build(root, spec, f"file://{bare}") == 0
    gt = json.loads((root / "pets" / "gt.json").read_text())["pets"]
    assert len(gt) == 5  # dog_0.jpg of train/ is gone at head
    assert _build(root, _spec(source_repo["first"], classes=[{"source": "dog", "ru": "собака"}]), str(bare)) == 0
    assert len(json.loads((root / "pets" / "gt.json").read_text())["pets"]) == 6


def test_build_csv_layout(tmp_path: Path, source_repo: Dict[str, str]) -> None:
    root = tmp_path / "suite"
    spec = _spec(source_repo["first"], layout="csv", csv=["data/labels.csv"], csv_file_column="file",
                 csv_label_column="label",
                 classes=[{"source": "CAT", "ru": "кошка"}, {"source": "DOG", "ru": "собака"}])
    del spec["folders"]
    assert _build(root, spec, source_repo["repo"]) == 0
    gt = json.loads((root / "pets" / "gt.json").read_text())["pets"]
    assert sorted(gt.values()) == [0] * 5 + [1] * 3


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown key"),
    ({"commit": "0" * 40}, "is not in"),
    ({"commit": "abc"}, "40 lowercase hex"),
    ({"classes": [{"source": "cow", "ru": "корова"}]}, "not found"),
    ({"per_class_min": 5, "per_class_max": 8, "classes": [{"source": "fox", "ru": "лиса"}]}, "per_class_min"),
    ({"layout": "csv"}, "takes no 'folders'"),
])
def test_build_refuses_bad_specs(tmp_path: Path, source_repo: Dict[str, str], change: Dict[str, object],
                                 message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _build(tmp_path / "suite", _spec(source_repo["first"], **change), source_repo["repo"])
    assert not (tmp_path / "suite" / "pets" / "img").exists()


def test_build_refuses_a_folder_that_is_not_a_repository(tmp_path: Path, source_repo: Dict[str, str]) -> None:
    with pytest.raises(FileNotFoundError, match="not a git repository"):
        _build(tmp_path / "suite", _spec(source_repo["first"]), str(tmp_path / "nowhere"))


def _break_first_image(set_dir: Path) -> None:
    """Replace one image with a 500 px wide one."""
    path = sorted((set_dir / "img").iterdir())[0]
    Image.new("RGB", (500, 20)).save(path, "JPEG")


def _drop_gt_entry(set_dir: Path) -> None:
    """Remove one id from gt.json."""
    gt = json.loads((set_dir / "gt.json").read_text())
    gt["pets"].pop(sorted(gt["pets"])[0])
    (set_dir / "gt.json").write_text(json.dumps(gt))


def _latin_class(set_dir: Path) -> None:
    """Give a class an English name in both classes.json and source.json."""
    spec = json.loads((set_dir / "source.json").read_text())
    spec["classes"][0]["ru"] = "cat"
    (set_dir / "source.json").write_text(json.dumps(spec))
    (set_dir / "classes.json").write_text(json.dumps(["cat", "собака", "лиса"]))


def _no_exception(set_dir: Path) -> None:
    """Remove the few-classes exception (3 classes are then too few)."""
    spec = json.loads((set_dir / "source.json").read_text())
    del spec["min_classes_exception"]
    (set_dir / "source.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("breaker", [_break_first_image, _drop_gt_entry, _latin_class, _no_exception])
def test_check_fails_on_a_broken_set(tmp_path: Path, source_repo: Dict[str, str], breaker,
                                     capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "suite"
    assert _build(root, _spec(source_repo["first"]), source_repo["repo"]) == 0
    assert main(["check", "--root", str(root)]) == 0
    breaker(root / "pets")
    assert main(["check", "--root", str(root)]) == 1
    assert "pets" in capsys.readouterr().out


def test_build_all_finds_snapshots_and_rebuilds_identically(tmp_path: Path, source_repo: Dict[str, str]) -> None:
    root, mirror = tmp_path / "suite", tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--bare", source_repo["repo"], str(mirror / "someone+src" / "repo")],
                   check=True, env=GIT_ENV)
    assert _build(root, _spec(source_repo["first"]), source_repo["repo"]) == 0
    other = _spec(source_repo["first"], name="absent", repo="nobody/absent")
    _write_spec(root, other)
    before = _snapshot(root / "pets")
    for p in (root / "pets" / "img").iterdir():
        p.unlink()
    assert main(["build-all", "--mirror", str(mirror), "--root", str(root)]) == 0
    assert _snapshot(root / "pets") == before
    assert not (root / "absent" / "img").exists()


def test_survey_counts_images_per_class_dir(tmp_path: Path, source_repo: Dict[str, str],
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["survey", "--source", source_repo["repo"], "--folder", "data/train"]) == 0
    lines: List[str] = capsys.readouterr().out.split("\n")
    assert [ln.split() for ln in lines if ln] == [["7", "data/train/cat"], ["2", "data/train/dog"],
                                                  ["2", "data/train/fox"]]


def test_identical_files_are_kept_once_and_shared_ones_dropped(tmp_path: Path, source_repo: Dict[str, str]) -> None:
    repo = Path(source_repo["repo"])
    cat = repo / "data" / "train" / "cat" / "cat_1.jpg"
    (repo / "data" / "test" / "cat" / "copy_of_cat_1.jpg").write_bytes(cat.read_bytes())  # same class: kept once
    fox = repo / "data" / "train" / "fox" / "fox_0.jpg"
    (repo / "data" / "test" / "dog" / "fox_0.jpg").write_bytes(fox.read_bytes())  # two classes: dropped from both
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "copies")
    root = tmp_path / "suite"
    assert _build(root, _spec(_git(repo, "rev-parse", "HEAD"), per_class_max=20), str(repo)) == 0
    gt = json.loads((root / "pets" / "gt.json").read_text())["pets"]
    # cat: 10 jpg + webp (broken.jpg skipped); dog: 6 at head - 1 (dog_0 removed) + 0 (the copy is dropped); fox: 4 - 1
    assert [list(gt.values()).count(i) for i in range(3)] == [11, 5, 3]
