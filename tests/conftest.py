"""Shared fixtures: a tiny random model built once per session, and a runner for predict.sh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# the first CPU this process may use (taskset -c 0 fails where CPU 0 is not in the affinity mask)
FIRST_CPU = min(os.sched_getaffinity(0))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random image/text encoder pair with manifest (train.tiny_model)."""
    from train.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(out, seed=0)
    return out


RUNTIME_FILES = ("setup.sh", "predict.sh", "predict.py", "zeroshot")


@pytest.fixture(scope="session")
def app_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime laid out as in the archive (no vendor/), with the tiny model as model/."""
    app = tmp_path_factory.mktemp("app")
    for name in RUNTIME_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, app / name)
    shutil.copytree(tiny_model, app / "model")
    return app


def run_predict_sh(datasets: Path, out_json: Path, model: Path, *extra: str,
                   env_extra: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run the real predict.sh with this interpreter; returns the completed process."""
    env = dict(os.environ, PYTHON=sys.executable)
    env.update(env_extra or {})
    cmd: List[str] = ["bash", str(REPO / "predict.sh"), str(datasets), str(out_json), "--model", str(model), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd="/")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_round_trips(model_dir: Path):
    """The folder's manifest.json is exactly what its type (zeroshot.manifest.Manifest) writes, and reading what
    it writes gives the same manifest back; returns it."""
    from zeroshot.manifest import MANIFEST_NAME, Manifest

    path = model_dir / MANIFEST_NAME
    manifest = Manifest.load(model_dir)
    assert path.read_text(encoding="utf-8") == manifest.to_json()
    assert Manifest.from_dict(json.loads(manifest.to_json()), path) == manifest
    return manifest
