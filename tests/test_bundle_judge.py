"""The submission archive (contest/bundle.py) and the local judge (contest/judge.py), end to end.

No network: archives are built from the tiny random model, without wheels
(``--dev``: setup.sh then uses this Python's packages) or with a small wheel
made here; the test with the real wheels of vendor/ runs only once
``make vendor`` has filled it, and is skipped otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from conftest import REPO, read_json
from datagen import make_dataset

from contest import bundle, docker_judge, judge
from contest.vendor import REQUIREMENTS_NAME, TARGETS, find_wheel, parse_pin
from zeroshot import cli
from zeroshot.evaluate import evaluate
from zeroshot.limits import JUDGE_IMAGES, JUDGE_MEMORY_GB
from zeroshot.manifest import MANIFEST_NAME, load_manifest

PY_TAG = "%d.%d" % sys.version_info[:2]
NETWORK = judge.find_network_isolation()
NET_ARGS: List[str] = [] if NETWORK else ["--allow-network"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """Two small datasets (JPEG and PNG, ids with dots) and their ground truth file."""
    root = tmp_path_factory.mktemp("judge_data") / "datasets"
    truth = {"animals": make_dataset(root, "animals", ["кошка", "собака", "ёж"], 5, seed=1),
             "things": make_dataset(root, "things", ["стол", "стул"], 4, seed=2, ext=".png")}
    gt = root.parent / "gt.json"
    gt.write_text(json.dumps(truth, ensure_ascii=False), encoding="utf-8")
    return root, gt


@pytest.fixture(scope="module")
def plain_run(tiny_model: Path, datasets: Tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Predictions of the plain run (predict.py in this process, this Python's packages)."""
    out = tmp_path_factory.mktemp("plain") / "plain.json"
    assert cli.main([str(datasets[0]), str(out), "--model", str(tiny_model), "--log-level", "WARNING"]) == 0
    return out


@pytest.fixture(scope="module")
def dev_archive(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dev_archive") / "submission.zip"
    assert bundle.main(["--model", str(tiny_model), "--dev", "--out", str(out)]) == 0
    return out


def make_wheel(folder: Path, name: str = "zeroshot_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel holding module ``name``."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in list(files) + [f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
    return path


def pin_line(wheel: Path, name: str = "zeroshot_probe", version: str = "1.0") -> str:
    return f"{name}=={version} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"


def run_judge(archive: Path, datasets: Tuple[Path, Path], out_dir: Path, *extra: str) -> Tuple[int, Dict]:
    """judge.main on ``archive`` with this Python; returns its exit code and summary.json."""
    argv = [str(archive), str(datasets[0]), "--gt", str(datasets[1]), "--python", sys.executable,
            "--out-dir", str(out_dir), *NET_ARGS, *extra]
    code = judge.main(argv)
    return code, read_json(out_dir / "summary.json")


def unzip(archive: Path, dest: Path) -> Path:
    judge.extract(archive, dest)
    return dest


def test_archive_holds_exactly_the_allowed_files(dev_archive: Path, tiny_model: Path) -> None:
    manifest = load_manifest(tiny_model)
    expected = {"setup.sh", "predict.sh", "predict.py"}
    expected |= {p.relative_to(REPO).as_posix() for p in (REPO / "zeroshot").rglob("*.py")
                 if "__pycache__" not in p.parts}
    expected |= {f"model/{MANIFEST_NAME}"} | {f"model/{path}" for path in manifest.all_files()}
    with zipfile.ZipFile(dev_archive) as zf:
        infos = zf.infolist()
    assert {i.filename for i in infos} == expected
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        mode = (info.external_attr >> 16) & 0o777
        assert mode == (0o755 if info.filename in bundle.EXECUTABLE else 0o644), info.filename


def test_archive_is_byte_identical_when_built_twice(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    assert bundle.main(["--model", str(model), "--dev", "--out", str(a)]) == 0
    for path in model.iterdir():
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (model / "stray.txt").write_text("not in the manifest")
    assert bundle.main(["--model", str(model), "--dev", "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_archive_gets_the_usual_permissions(tiny_model: Path, tmp_path: Path) -> None:
    """0666 minus the umask (a judge's uploader running as another user must read it), not mkstemp's 0600."""
    out = tmp_path / "sub.zip"
    old = os.umask(0o022)
    try:
        assert bundle.main(["--model", str(tiny_model), "--dev", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_archive_over_the_cap_fails_and_writes_nothing(tiny_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "big.zip"
    assert bundle.main(["--model", str(tiny_model), "--dev", "--out", str(out), "--cap-mb", "0.01"]) == 1
    assert not out.exists() and not list(tmp_path.iterdir())
    table = capsys.readouterr().out
    assert "model/tokenizer.model" in table and "cap 0.01 MB" in table


def test_corrupt_model_file_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    with open(model / "tokenizer.model", "ab") as handle:
        handle.write(b"x")
    assert bundle.main(["--model", str(model), "--dev", "--out", str(tmp_path / "x.zip")]) == 1


def test_vendor_pin_without_its_wheel_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / REQUIREMENTS_NAME.format(PY_TAG)).write_text("onnxruntime==1.16.3\n")
    assert bundle.main(["--model", str(tiny_model), "--vendor", str(vendor), "--out", str(tmp_path / "x.zip")]) == 1
    assert bundle.main(["--model", str(tiny_model), "--vendor", str(tmp_path / "none"),
                        "--out", str(tmp_path / "x.zip")]) == 1


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_setup_installs_vendored_wheels_offline_once(tiny_model: Path, tmp_path: Path, shell: str) -> None:
    """setup.sh installs from vendor/ only (pip settings ignored), into .deps/py<X.Y>, then does nothing;
    as ``sh setup.sh`` (dash on Debian) too."""
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    wheel = make_wheel(vendor)
    (vendor / REQUIREMENTS_NAME.format(PY_TAG)).write_text(pin_line(wheel))
    archive = tmp_path / "s.zip"
    assert bundle.main(["--model", str(tiny_model), "--vendor", str(vendor), "--out", str(archive)]) == 0
    root = unzip(archive, tmp_path / "unpacked")
    env = dict(os.environ, PYTHON=sys.executable, PIP_INDEX_URL="http://127.0.0.1:9/nowhere",
               PIP_FIND_LINKS=str(tmp_path / "nowhere"), PIP_CONSTRAINT=str(tmp_path / "missing.txt"))
    cmd = (NETWORK or []) + [shell, "setup.sh"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(root))
    assert first.returncode == 0, first.stderr
    assert "zeroshot_probe-1.0" in first.stderr and "match their sha256" in first.stderr
    assert (root / ".deps" / f"py{PY_TAG}" / "zeroshot_probe.py").is_file()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(root))
    assert second.returncode == 0, second.stderr
    assert "already installed" in second.stderr


def test_setup_refuses_a_vendor_without_this_python(tiny_model: Path, tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    wheel = make_wheel(vendor)
    (vendor / REQUIREMENTS_NAME.format("2.7")).write_text(pin_line(wheel))
    archive = tmp_path / "s.zip"
    assert bundle.main(["--model", str(tiny_model), "--vendor", str(vendor), "--out", str(archive)]) == 0
    root = unzip(archive, tmp_path / "unpacked")
    proc = subprocess.run([str(root / "setup.sh")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode != 0
    assert f"no requirements-py{PY_TAG}.txt" in proc.stderr and "requirements-py2.7.txt" in proc.stderr


def test_judge_passes_the_archive_with_the_plain_run_predictions(dev_archive: Path, datasets, plain_run: Path,
                                                               tmp_path: Path, capsys) -> None:
    code, summary = run_judge(dev_archive, datasets, tmp_path / "j", "--reference", str(plain_run))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict      PASS" in out and "score (mean accuracy x 100)" in out
    expected = evaluate(read_json(datasets[1]), read_json(plain_run)).score
    assert summary["passed"] and summary["score"] == pytest.approx(expected)
    assert f"score (mean accuracy x 100): {expected:.2f}" in out
    assert summary["images"] == 9 and summary["images_per_s"] > 0
    assert summary["projected"]["images"] == JUDGE_IMAGES and summary["projected"]["seconds"] > 0
    assert summary["reference"]["differ"] == 0 and summary["reference"]["compared"] == 9
    assert summary["top_level"] == ["model", "predict.py", "predict.sh", "setup.sh", "zeroshot"]
    inside = summary["inside"]
    assert len(inside["cpus"]) == 1 and inside["rlimit_as"] == int(JUDGE_MEMORY_GB * 1e9)
    if NETWORK:
        assert inside["interfaces"] in ([], ["lo"])
    assert read_json(tmp_path / "j" / "predictions.json") == read_json(plain_run)
    assert all(s["returncode"] == 0 and not s["timed_out"] for s in summary["steps"].values())
    assert "cpu quota    " in out and "runtime sees 1 CPU(s)" in out
    if "not applied" not in summary["limits"]["cpu_quota"]:  # root with cgroups: the quota is what the runtime sees
        assert inside["effective_cpus"]["cgroup_quota"]["cpus"] == 1, inside
        assert "100000/100000 us" in out and "cgroup quota inside: 1 CPU (cgroup-v" in out
    report = read_json(tmp_path / "j" / "report.json")
    assert report["threads"] == 1 and report["status"] == "done" and sorted(report["datasets"]) == ["animals", "things"]
    assert "animals" in out and "tiers: full 5" in out


def test_judge_fails_when_predictions_differ_from_the_reference(dev_archive: Path, datasets, plain_run: Path,
                                                                tmp_path: Path) -> None:
    ref = read_json(plain_run)
    key = sorted(ref["animals"])[0]
    ref["animals"][key] = (ref["animals"][key] + 1) % 3
    changed = tmp_path / "ref.json"
    changed.write_text(json.dumps(ref))
    code, summary = run_judge(dev_archive, datasets, tmp_path / "j", "--reference", str(changed))
    assert code == 1 and not summary["passed"]
    assert summary["reference"]["differ"] == 1 and key in summary["reference"]["examples"][0]


def test_judge_kills_a_run_past_the_time_limit(dev_archive: Path, datasets, tmp_path: Path) -> None:
    # setup.sh alone takes ~0.2 s on a fast machine, so the limit must be far below that to hit it
    code, summary = run_judge(dev_archive, datasets, tmp_path / "j", "--time-limit", "0.01")
    assert code == 1 and not summary["passed"]
    assert summary["steps"]["setup.sh"]["timed_out"]
    assert any("time limit" in p for p in summary["problems"])


def test_judge_enforces_the_memory_limit(dev_archive: Path, datasets, tmp_path: Path) -> None:
    """60 MB of address space is too little to import onnxruntime: the run must fail, not pass unlimited."""
    code, summary = run_judge(dev_archive, datasets, tmp_path / "j", "--memory-gb", "0.06")
    assert code == 1 and not summary["passed"]


def _vendored_for(python: str) -> bool:
    req = REPO / "vendor" / REQUIREMENTS_NAME.format(python)
    return python in TARGETS and req.is_file() and all(
        find_wheel(REPO / "vendor", parse_pin(spec), python) for spec in TARGETS[python])


def _no_wheels_reason(python: str) -> str:
    return (f"vendor/ has no wheels for Python {python}: run 'make vendor' (PyPI, once) to test "
            "the archive with onnxruntime 1.16.3")


@pytest.fixture(scope="module")
def vendored_archive(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's archive with the real wheels of vendor/ (both Pythons)."""
    archive = tmp_path_factory.mktemp("vendored") / "submission.zip"
    assert bundle.main(["--model", str(tiny_model), "--vendor", str(REPO / "vendor"), "--out", str(archive)]) == 0
    return archive


@pytest.mark.skipif(not _vendored_for(PY_TAG), reason=_no_wheels_reason(PY_TAG))
def test_judge_with_the_vendored_wheels(vendored_archive: Path, datasets, plain_run: Path, tmp_path: Path) -> None:
    """The real archive: setup.sh installs the vendored onnxruntime, and predict.sh runs on it."""
    archive = vendored_archive
    with zipfile.ZipFile(archive) as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == bundle.ALLOWED_TOP
    code, summary = run_judge(archive, datasets, tmp_path / "j", "--reference", str(plain_run))
    assert code == 0, summary["problems"]
    pins = {parse_pin(s).name: parse_pin(s).version for s in TARGETS[PY_TAG]}
    assert summary["versions"]["onnxruntime"] == pins["onnxruntime"]
    assert summary["versions"]["numpy"] == pins["numpy"]
    assert str(Path(summary["versions"]["onnxruntime_path"]).parent).endswith(f".deps/py{PY_TAG}/onnxruntime")


@pytest.fixture(scope="module")
def variant_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model plus a variant "alt" whose image encoder has other weights."""
    import numpy as np

    from train.contract import model_files
    from train.manifest_io import write_manifest
    from train.tiny_model import build_image_encoder

    model = tmp_path_factory.mktemp("variant_model") / "model"
    shutil.copytree(tiny_model, model)
    build_image_encoder(model / "image_encoder.alt.onnx", np.random.default_rng(7))
    sections = {k: v for k, v in load_manifest(model).to_dict().items()
                if k not in ("files", "variants", "format_version")}
    write_manifest(model, model_files(), sections, {"alt": {"image_encoder": "image_encoder.alt.onnx"}})
    return model


def test_every_variant_the_archived_manifest_lists_runs_from_the_unzipped_archive(
        variant_model: Path, datasets: Tuple[Path, Path], tmp_path: Path, caplog) -> None:
    archive = tmp_path / "submission.zip"
    assert bundle.main(["--model", str(variant_model), "--dev", "--out", str(archive)]) == 0
    assert "not named in" not in caplog.text
    app = unzip(archive, tmp_path / "app")
    manifest = load_manifest(app / "model")
    assert sorted(manifest.variants) == ["alt"]
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(app / "setup.sh")], env=env, check=True, capture_output=True, cwd="/")
    preds = {}
    for variant in [None, *manifest.variants]:
        out = tmp_path / f"{variant}.json"
        extra = ["--variant", variant] if variant else []
        proc = subprocess.run(["bash", str(app / "predict.sh"), str(datasets[0]), str(out), *extra, "--strict"],
                              env=env, capture_output=True, text=True, cwd="/")
        assert proc.returncode == 0, proc.stderr
        preds[variant] = read_json(out)
        assert {name: len(p) for name, p in preds[variant].items()} == {"animals": 5, "things": 4}


# --- the Docker judge (contest/docker_judge.py, contest.judge --docker) ---

def run_docker_judge(archive: Path, datasets: Tuple[Path, Path], out_dir: Path, *extra: str) -> int:
    return judge.main(["--docker", str(archive), str(datasets[0]), "--gt", str(datasets[1]),
                       "--out-dir", str(out_dir), *extra])


def test_docker_judge_without_an_engine_says_so(dev_archive: Path, datasets, tmp_path: Path, monkeypatch,
                                                caplog) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert run_docker_judge(dev_archive, datasets, tmp_path / "j") == 2
    if shutil.which("docker"):
        assert "no Docker engine answers" in caplog.text and "not starting a local dockerd" in caplog.text
    caplog.clear()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert run_docker_judge(dev_archive, datasets, tmp_path / "j") == 2
    assert "no 'docker' client on PATH" in caplog.text
    assert not (tmp_path / "j" / "summary.json").exists()


def test_docker_peak_memory_file_from_proc_cgroup(tmp_path: Path) -> None:
    v1 = "12:pids:/docker/abc\n5:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"
    assert docker_judge.parse_proc_cgroup(v1, tmp_path) == tmp_path / "memory/docker/abc/memory.max_usage_in_bytes"
    v2 = "0::/system.slice/docker-abc.scope\n"
    assert docker_judge.parse_proc_cgroup(v2, tmp_path) == tmp_path / "system.slice/docker-abc.scope/memory.peak"
    assert docker_judge.parse_proc_cgroup("", tmp_path) is None


def test_docker_limits_are_read_back(tmp_path: Path) -> None:
    args = judge.build_parser().parse_args(["--docker", "a.zip", "data"])
    good = {"interfaces": ["lo"], "cpu_quota": 1.0, "memory_limit": 8 * 2 ** 30}
    assert docker_judge.limit_problems(good, args) == []
    bad = {"interfaces": ["eth0", "lo"], "cpu_quota": None, "memory_limit": None}
    problems = docker_judge.limit_problems(bad, args)
    assert len(problems) == 3 and "eth0" in problems[0] and "CPU quota" in problems[1]
    assert docker_judge.docker_run_args(args) == ["--cpus=1", "--memory=8g", "--memory-swap=8g", "--network=none"]


def test_docker_base_tag_follows_its_recipe(tmp_path: Path) -> None:
    home = tmp_path / "py"
    (home / "bin").mkdir(parents=True)
    python = home / "bin" / "python3.8"
    python.write_text("#!/bin/sh\necho '3.8.18 (default, test build)'\n")
    python.chmod(0o755)
    recipe = tmp_path / "recipe.sh"
    recipe.write_text("debootstrap bookworm\n")
    first = docker_judge.base_tag(home, recipe)
    assert first.startswith("zeroshot-judge-base:") and first == docker_judge.base_tag(home, recipe)
    recipe.write_text("debootstrap bookworm --include=unzip\n")
    assert docker_judge.base_tag(home, recipe) != first
    with pytest.raises(FileNotFoundError, match="no bin/python3.X"):
        docker_judge.base_tag(tmp_path / "nowhere", recipe)


def test_docker_runtime_threads_from_report_or_log(tmp_path: Path) -> None:
    log = tmp_path / "predict.log"
    log.write_text("12:00:00 INFO zeroshot: 1 datasets, 9 images, model /submission/model, 3 threads, budget 1 s\n")
    assert docker_judge.runtime_threads({"threads": 1}, log) == 1
    assert docker_judge.runtime_threads(None, log) == 3
    assert docker_judge.runtime_threads(None, tmp_path / "none.log") is None


def _base_unavailable() -> str:
    """Why the judge image cannot be had from the running engine ('' when it can)."""
    if docker_judge.image_id(docker_judge.REGISTRY_BASE):
        return ""
    python = docker_judge.BASE_PYTHON
    if python.is_dir() and docker_judge.image_id(docker_judge.base_tag(python)):
        return ""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None or not python.is_dir():
        return (f"neither {docker_judge.REGISTRY_BASE} nor the offline base image is here, and the base cannot be "
                f"built (needs root, debootstrap and a CPython 3.8 at {python})")
    return ""


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Dict]:
    """An engine for the Docker tests: the running one, or a dockerd started for them and stopped after the
    session (never left running by ``make test``)."""
    if not _vendored_for("3.8"):
        pytest.skip(_no_wheels_reason("3.8"))
    try:
        with docker_judge.engine_for() as engine:
            reason = _base_unavailable()
            if reason:
                pytest.skip(reason)
            yield engine
    except docker_judge.EngineUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")


FAKE_DOCKERD = """#!/bin/sh
echo $$ > "$FAKE_DOCKER_STATE/pid"
touch "$FAKE_DOCKER_STATE/up"
trap 'rm -f "$FAKE_DOCKER_STATE/up"; exit 0' TERM
while :; do sleep 0.1; done
"""
FAKE_DOCKER = """#!/bin/sh
[ "$1" = version ] && [ -e "$FAKE_DOCKER_STATE/up" ] && echo 99.0-fake && exit 0
exit 1
"""


def test_a_dockerd_started_for_the_tests_is_stopped_after_them(tmp_path: Path, monkeypatch, caplog) -> None:
    """With stand-ins for docker and dockerd: engine_for (the docker_engine fixture) starts the engine in its
    own session, says how to stop it, and stops it when the block ends; ensure_engine alone leaves it running."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("dockerd", FAKE_DOCKERD), ("docker", FAKE_DOCKER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with docker_judge.engine_for(log_path=tmp_path / "dockerd.log") as engine:
        assert engine["started"] and engine["server"] == "99.0-fake"
        pid = engine["pid"]
        assert os.getsid(pid) == pid  # its own session: it would outlive the tests
        assert f"stop it with 'kill {pid}'" in caplog.text
        assert f"stop it with 'kill {pid}'" in docker_judge.format_docker({"docker": {"engine": engine}})
    assert not (state / "up").exists() and f"stopped the dockerd started here (pid {pid}" in caplog.text
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with docker_judge.engine_for(log_path=tmp_path / "dockerd.log") as again:
        assert again["started"] and again["pid"] != pid
        with docker_judge.engine_for() as running:  # an engine that answers is used, and not stopped
            assert not running["started"]
        assert (state / "up").exists()


def test_docker_judge_runs_the_archive_in_a_container(docker_engine, vendored_archive: Path, datasets,
                                                      plain_run: Path, tmp_path: Path, capsys) -> None:
    """The tiny model's archive in docker run --cpus=1 --memory=8g --network=none on the judge's Python 3.8."""
    code = run_docker_judge(vendored_archive, datasets, tmp_path / "j", "--reference", str(plain_run))
    out = capsys.readouterr().out
    summary = read_json(tmp_path / "j" / "summary.json")
    assert code == 0, summary["problems"]
    assert "verdict      PASS" in out and "peak memory (cgroup)" in out
    inside = summary["inside"]
    assert inside["python"].startswith("3.8.") and inside["interfaces"] in ([], ["lo"])
    assert inside["cpu_quota"] == 1.0 and inside["memory_limit"] == 8 * 2 ** 30
    assert inside["image_packages"]["numpy"] == "1.20.3" and inside["image_packages"]["onnxruntime"] is None
    assert summary["versions"]["onnxruntime"] == "1.16.3"
    assert summary["versions"]["onnxruntime_path"].startswith("/submission/.deps/py3.8/onnxruntime")
    assert summary["reference"]["differ"] == 0 and summary["images"] == 9
    assert all(step["peak_rss_bytes"] > 0 for step in summary["steps"].values())
    # the runtime reads the CFS quota (the affinity mask still lists every host CPU) and writes its run report
    assert inside["effective_cpus"]["cpus"] == 1 and summary["docker"]["threads"] == 1
    assert summary["report_option"] and (tmp_path / "j" / "report.json").is_file()
    assert "runtime      1 threads" in out
    assert read_json(tmp_path / "j" / "predictions.json") == read_json(plain_run)


def test_docker_judge_kills_at_the_time_limit_and_scores_what_was_written(docker_engine, datasets,
                                                                          tmp_path: Path) -> None:
    """A predict.sh that writes its answer and then hangs: killed at the deadline, the answer still counts."""
    answer = json.dumps(read_json(datasets[1]))
    scripts = {"setup.sh": "#!/usr/bin/env bash\ntrue\n",
               "predict.sh": f"#!/usr/bin/env bash\n[ \"$1\" = --help ] && exit 0\n"
                             f"cat > \"$2\" <<'EOF'\n{answer}\nEOF\nsleep 600\n"}
    archive = tmp_path / "hang.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, text in scripts.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16
            zf.writestr(info, text)
    assert run_docker_judge(archive, datasets, tmp_path / "j", "--time-limit", "8") == 1
    summary = read_json(tmp_path / "j" / "summary.json")
    assert summary["steps"]["setup.sh"]["returncode"] == 0 and summary["steps"]["predict.sh"]["timed_out"]
    assert any("time limit" in p for p in summary["problems"])
    assert summary["images"] == 9 and summary["score"] == 100.0


def test_version_probe_reports_onnxruntime_when_tokenizers_is_missing(tmp_path: Path) -> None:
    """An archive without tokenizers (sentencepiece-only, built before it was vendored) still shows its onnxruntime."""
    (tmp_path / "tokenizers.py").write_text("raise ImportError('not in this archive')\n")
    proc = subprocess.run([sys.executable, "-c", judge.PROBE_VERSIONS, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    versions = json.loads(proc.stdout)
    assert versions["tokenizers"] is None
    import onnxruntime

    assert versions["onnxruntime"] == onnxruntime.__version__
