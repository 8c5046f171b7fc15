"""Issue 10: threads from the effective CPUs, a complete JSON from the start, SIGTERM, --report,
and the defects found by a hostile user (D1-D6 and the small ones), each with a regression test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, read_json, run_predict_sh
from datagen import make_dataset, photo

from zeroshot import cli, pipeline
from zeroshot.budget import FAST, FULL, PRIOR, Budget
from zeroshot.datasets import discover
from zeroshot.encoders import MAX_PROMPT_TOKENS, Model, make_session
from zeroshot.images import load_image
from zeroshot.manifest import ImageConfig
from zeroshot.outputs import PredictionsFile
from zeroshot.resources import PixelBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- threads -----------------------------------------------------------------------------------

def test_one_thread_sessions_do_not_spin(tiny_model: Path) -> None:
    one = make_session(tiny_model / "image_encoder.onnx", threads=1)
    assert one.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    two = make_session(tiny_model / "image_encoder.onnx", threads=2)
    assert two.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    quota = make_session(tiny_model / "image_encoder.onnx", threads=2, spinning=False)
    assert quota.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert one.get_session_options().intra_op_num_threads == 1


def test_decoding_is_inline_on_one_cpu() -> None:
    assert cli.decode_workers("auto", 1) == 0
    assert cli.decode_workers("auto", 4) == 4
    assert cli.decode_workers("inline", 4) == 0
    assert cli.decode_workers("threads", 1) == 1


@pytest.mark.parametrize("decode", ["inline", "threads"])
def test_inline_and_threaded_decoding_agree(tiny_model: Path, tmp_path: Path, decode: str) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y", "z"], 20, seed=5)
    ref, out = tmp_path / "ref.json", tmp_path / "out.json"
    assert cli.main([str(root), str(ref), "--model", str(tiny_model), "--threads", "1"]) == 0
    assert cli.main([str(root), str(out), "--model", str(tiny_model), "--decode", decode, "--batch-size", "3"]) == 0
    assert read_json(out) == read_json(ref)


# --- item 6: complete JSON early, replaced per dataset, SIGTERM, writability, mode ----------------

def test_initial_json_has_every_image_with_the_prior_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["", "кот", "пёс"], 4)  # class 0 is empty: never predicted
    make_dataset(root, "b", ["x", "y"], 3)
    datasets, _ = discover(root)
    out = PredictionsFile(tmp_path / "o.json")
    out.start(cli.initial_predictions(datasets))
    data = read_json(tmp_path / "o.json")
    assert set(data["a"].values()) == {1} and set(data["b"].values()) == {0}
    assert len(data["a"]) == 4 and len(data["b"]) == 3


def test_json_is_written_0644_under_the_usual_umask(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 3)
    old = os.umask(0o022)
    try:
        assert cli.main([str(root), str(tmp_path / "o.json"), "--model", str(tiny_model),
                         "--report", str(tmp_path / "r.json")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("kind", ["parent_is_a_file", "is_a_directory"])
def test_unwritable_out_json_fails_before_loading_the_model(tmp_path: Path, caplog, kind: str) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 2)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "o.json" if kind == "parent_is_a_file" else tmp_path
    assert cli.main([str(root), str(out), "--model", str(tmp_path / "no_model")]) == 2
    assert str(out) in caplog.text and "OUT_JSON" in caplog.text
    assert "no_model" not in caplog.text  # nothing was loaded


@pytest.mark.parametrize("signum,exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_leave_a_complete_json_and_a_report(tiny_model: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, caplog,
                                                               signum: int, exit_code: int) -> None:
    """SIGTERM, and Ctrl-C alike (issue 20): the current dataset finishes on the prior tier, the JSON holds
    every image, exit 128 + the signal, one line; the previous handler is back afterwards."""
    previous = signal.getsignal(signum)
    root = tmp_path / "data"
    truth = {"a": make_dataset(root, "a", ["x", "y"], 60, seed=1), "b": make_dataset(root, "b", ["p", "q"], 10)}
    decode = pipeline.decode_one

    def slow_decode(*args):
        time.sleep(0.02)
        return decode(*args)

    monkeypatch.setattr(pipeline, "decode_one", slow_decode)
    out, report = tmp_path / "o.json", tmp_path / "r.json"

    def kill_once_running() -> None:
        while not report.exists() or "threads" not in report.read_text():  # written before and after loading
            time.sleep(0.005)
        time.sleep(0.2)
        os.kill(os.getpid(), signum)

    killer = threading.Thread(target=kill_once_running)
    killer.start()
    code = cli.main([str(root), str(out), "--model", str(tiny_model), "--batch-size", "4", "--decode", "inline",
                     "--report", str(report)])
    killer.join()
    assert code == exit_code and cli.EXIT_TERMINATED == 143 and cli.EXIT_INTERRUPTED == 130
    name = signal.Signals(signum).name
    assert caplog.text.count(f"{name}: stopping; the JSON keeps the best answer so far") == 1
    assert "Traceback" not in caplog.text and signal.getsignal(signum) is previous
    preds = read_json(out)
    assert {k: sorted(v) for k, v in preds.items()} == {k: sorted(v) for k, v in truth.items()}
    rep = read_json(report)
    assert rep["status"] == "stopped"
    assert rep["datasets"]["a"]["tiers"][FULL] > 0 and rep["datasets"]["a"]["tiers"][PRIOR] > 0
    assert rep["datasets"]["b"]["tiers"] == {"full": 0, "fast": 0, "prior": 10}
    assert rep["datasets"]["b"]["fallback"] == {"prior": sorted(truth["b"])}
    assert len(rep["datasets"]["a"]["fallback"]["prior"]) == rep["datasets"]["a"]["tiers"][PRIOR]


# --- --report ------------------------------------------------------------------------------------

def test_report_has_threads_versions_budget_tiers_and_problems(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 5)
    (root / "a" / "img" / "bad.jpg").write_bytes(b"no")
    (root / "junk").mkdir()
    report = tmp_path / "r.json"
    assert cli.main([str(root), str(tmp_path / "o.json"), "--model", str(tiny_model), "--threads", "1",
                     "--report", str(report)]) == 0
    rep = read_json(report)
    assert rep["threads"] == 1 and rep["cpu_source"] in ("flag", "affinity", "cgroup-v1", "cgroup-v2")
    assert rep["python"] and rep["packages"]["onnxruntime"] and rep["packages"]["numpy"]
    assert rep["model"]["name"] and rep["status"] == "done" and rep["decode"] == "inline"
    assert rep["budget"]["total_images"] == 6 and rep["budget"]["seconds"] > 0
    ds = rep["datasets"]["a"]
    assert ds["images"] == 6 and ds["classes"] == 2 and ds["tiers"] == {"full": 6, "fast": 0, "prior": 0}
    assert ds["fallback"] == {}  # the undecodable image is on the full tier (its problem names it)
    assert any("bad.jpg" in p for p in ds["problems"]) and ds["images_per_s"] > 0
    assert any(str(root / "junk") in p for p in rep["problems"])


# --- D1: names that are not valid UTF-8 ---------------------------------------------------------------

def test_d1_non_utf8_file_and_folder_names_keep_their_ids(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "ok", ["x", "y"], 3)
    bad_ds = os.path.join(os.fsencode(root), "Кошки".encode("cp1251"))
    os.makedirs(os.path.join(bad_ds, b"img"))
    with open(os.path.join(bad_ds, b"classes.json"), "w", encoding="utf-8") as f:
        json.dump(["кот", "пёс"], f)
    photo(np.random.default_rng(0), (200, 0, 0)).save(os.path.join(bad_ds, b"img", "фото".encode("cp866") + b".jpg"))
    cafe = os.path.join(os.fsencode(root), b"ok", b"img", b"caf\xe9.jpg")  # Latin-1, not UTF-8
    photo(np.random.default_rng(1), (0, 200, 0)).save(cafe)
    out = tmp_path / "o.json"
    proc = run_predict_sh(root, out, tiny_model)
    assert proc.returncode == 0, proc.stderr
    raw = out.read_bytes()
    raw.decode("utf-8")  # the file stays valid UTF-8
    preds = json.loads(raw)
    ds_name = os.fsdecode("Кошки".encode("cp1251"))
    assert sorted(preds) == sorted(["ok", ds_name])
    assert os.fsdecode("фото".encode("cp866")) in preds[ds_name]
    assert "caf\udce9" in preds["ok"] and len(preds["ok"]) == 4


# --- D2: lone surrogates in classes.json ---------------------------------------------------------------

def test_d2_lone_surrogate_class_name(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 3)
    make_dataset(root, "b", ["x", "y"], 3)
    (root / "a" / "classes.json").write_text('["\\ud800", "cat", "\\udc00dog"]', encoding="utf-8")
    out = tmp_path / "o.json"
    proc = run_predict_sh(root, out, tiny_model)
    assert proc.returncode == 0, proc.stderr
    assert sorted(read_json(out)) == ["a", "b"] and len(read_json(out)["a"]) == 3
    assert "lone surrogates" in proc.stderr


# --- D3: an img/ folder that cannot be listed ------------------------------------------------------------

def test_d3_unlistable_img_folder(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 3)
    make_dataset(root, "locked", ["x", "y"], 3)
    locked = root / "locked" / "img"
    iterdir = Path.iterdir

    def guarded(self: Path):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", guarded)  # root ignores chmod, so the refusal is simulated
    out = tmp_path / "o.json"
    assert cli.main([str(root), str(out), "--model", str(tiny_model)]) == 0
    preds = read_json(out)
    assert len(preds["a"]) == 3 and preds["locked"] == {}
    assert f"{locked}: cannot list the img/ folder" in caplog.text


DROP_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def _unprivileged_prefix() -> List[str]:
    """A prefix under which a folder of mode 000 cannot be listed: none for a normal user; for root,
    setpriv without the capabilities that bypass file permissions (skip if that is not possible)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None or subprocess.run(DROP_DAC + ["true"]).returncode != 0:
        pytest.skip("running as root without a working setpriv: a folder of mode 000 stays listable")
    return DROP_DAC


def test_d3_unlistable_img_folder_for_real(tiny_model: Path, tmp_path: Path) -> None:
    prefix = _unprivileged_prefix()
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 3)
    make_dataset(root, "locked", ["x", "y"], 3)
    (root / "locked" / "img").chmod(0)
    try:
        proc = subprocess.run(prefix + ["bash", str(REPO / "predict.sh"), str(root), str(tmp_path / "o.json"),
                                        "--model", str(tiny_model)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHON=sys.executable), cwd="/", timeout=300)
    finally:
        (root / "locked" / "img").chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    preds = read_json(tmp_path / "o.json")
    assert len(preds["a"]) == 3 and preds["locked"] == {}
    assert "cannot list the img/ folder" in proc.stderr


# --- D4: very long class names ------------------------------------------------------------------------------

def test_d4_prompts_are_capped_in_tokens(tiny_model: Path) -> None:
    model = Model(tiny_model, threads=1)
    ids, mask = model.token_batch(["кот " * 5000, "пёс"])
    cap = model.tokenizer.context_length or MAX_PROMPT_TOKENS
    assert ids.shape[1] <= cap and mask[0].sum() == cap and mask[1].sum() < cap
    if model.tokenizer.eos_id is not None:
        assert ids[0, cap - 1] == model.tokenizer.eos_id


def test_d4_long_class_names_run_in_bounded_time(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 4)
    (root / "a" / "classes.json").write_text(json.dumps([f"{i} " + "слово" * 2000 for i in range(200)]),
                                             encoding="utf-8")
    out = tmp_path / "o.json"
    assert cli.main([str(root), str(out), "--model", str(tiny_model)]) == 0
    assert len(read_json(out)["a"]) == 4


def test_d4_d6_prompt_encoding_is_counted_in_the_budget() -> None:
    clock = FakeClock()
    budget = Budget(5.0, total_images=300, fast_ratio=None, clock=clock, total_prompts=600, total_datasets=300)
    budget.record(FULL, 1, 0.001)
    budget.record_prompts(2, 0.2)  # 0.1 s per prompt: 598 prompts left need ~60 s
    budget.record_dataset(0.0)
    assert budget.choose(1) == PRIOR
    generous = Budget(500.0, total_images=300, fast_ratio=None, clock=clock, total_prompts=600)
    generous.record(FULL, 1, 0.001)
    generous.record_prompts(2, 0.2)
    assert generous.choose(1) == FULL


def test_d6_per_dataset_overhead_is_counted() -> None:
    budget = Budget(10.0, total_images=100, fast_ratio=None, clock=FakeClock(), total_datasets=100)
    budget.record(FULL, 1, 0.001)
    budget.record_dataset(0.5)  # 99 datasets x 0.5 s > 10 s
    assert budget.choose(1) == PRIOR


# --- D5: decoding memory is a pixel budget, not a thread count --------------------------------------------

def test_d5_pixel_budget_bounds_pixels_in_flight() -> None:
    pixels = PixelBudget(1000)
    peak: List[int] = []

    def work(n: int) -> None:
        with pixels.hold(n):
            peak.append(pixels.in_flight)
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(n,)) for n in [400] * 12 + [5000]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(peak) == 5000 or pixels.peak <= 1000  # an oversize image goes alone
    assert all(p <= 1000 for p in peak if p != 5000) and pixels.in_flight == 0


def test_d5_many_decode_threads_keep_the_pixel_budget(tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (1000, 1000), (i * 30, 0, 0)).save(path)
        paths.append(path)
    pixels = PixelBudget(2_000_000)
    decoder = pipeline.Decoder(8, pixels)
    cfg = ImageConfig(input="x", output="y", size=32, resize="center_crop", interpolation="bilinear",
                      decode="draft", mean=[0.5] * 3, std=[0.5] * 3)
    futures = [decoder.submit(p, cfg, 32) for p in paths]
    results = [decoder.result(f, lambda: False) for f in futures]
    decoder.close()
    assert all(r is not None and r[0] is not None for r in results)
    assert pixels.peak <= 2_000_000


D5_PEAK = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from zeroshot.pipeline import Decoder
from zeroshot.resources import PixelBudget, return_freed_memory
if sys.argv[3] == "fixed":
    assert return_freed_memory()
from zeroshot.manifest import ImageConfig
cfg = ImageConfig(input="x", output="y", size=32, resize="center_crop", interpolation="bilinear", decode="draft",
                  mean=[0.5] * 3, std=[0.5] * 3)
def peak_kb():  # this process's own high-water mark (ru_maxrss would include the parent's, from before exec)
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
start = peak_kb()
decoder = Decoder(8, PixelBudget(int(sys.argv[4])))
futures = [decoder.submit(f, cfg, 32) for f in sorted(Path(sys.argv[2]).glob("*.png"))]
assert all(decoder.result(f, lambda: False)[0] is not None for f in futures)
print(peak_kb() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_d5_decoding_memory_does_not_grow_with_threads(tmp_path: Path) -> None:
    """One image at a time (pixel budget), 8 threads: without a fixed mmap threshold each thread's
    malloc arena keeps an image's worth of memory (measured ~350 MB here), with it ~70 MB."""
    y, x = np.mgrid[0:3000, 0:3000]
    arr = np.stack([(x // 7) % 256, (y // 7) % 256, ((x + y) // 9) % 256], axis=-1).astype(np.uint8)
    for i in range(8):
        Image.fromarray(arr).save(tmp_path / f"{i}.png", compress_level=1)
    growth = {}
    for mode in ("fixed", "glibc-default"):
        proc = subprocess.run([sys.executable, "-c", D5_PEAK, str(REPO), str(tmp_path), mode, str(3000 * 3000)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        growth[mode] = int(proc.stdout)
    assert growth["fixed"] < 0.5 * growth["glibc-default"], growth


# --- D6: cancel queued work at the switch, stop waiting at the deadline -----------------------------------

def test_d6_queued_decodes_are_cancelled_when_time_runs_out(tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 40)
    calls: List[Path] = []
    decode = pipeline.decode_one

    def counting(path, *args):
        calls.append(path)
        time.sleep(0.01)
        return decode(path, *args)

    monkeypatch.setattr(pipeline, "decode_one", counting)
    clock = FakeClock()
    budget = Budget(10.0, total_images=40, fast_ratio=None, clock=clock)
    model = Model(tiny_model, threads=1)
    encode = model.encode_images

    def encode_then_run_out(pixels):  # the first batch uses up all the time
        clock.now = 100.0
        return encode(pixels)

    model.encode_images = encode_then_run_out  # type: ignore[method-assign]
    ds = discover(root)[0][0]
    decoder = pipeline.Decoder(1, PixelBudget(10 ** 8))
    res = pipeline.predict_dataset(ds, model, budget, decoder, batch_size=4)
    decoder.close()
    assert len(res.predictions) == 40
    assert res.tiers[FULL] == 4 and res.tiers[PRIOR] == 36 and res.fallback == {PRIOR: ds.ids[4:]}
    assert len(calls) <= 4 + 2, "queued decodes kept running after the switch to the prior tier"


def test_the_images_below_the_full_tier_are_named_up_to_a_cap(tiny_model: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 20)
    tiers = iter([FULL, FULL, FAST, FAST, PRIOR, PRIOR])  # the class prompts, then one per batch of 4
    monkeypatch.setattr(Budget, "choose", lambda self, images: next(tiers))
    monkeypatch.setattr(pipeline, "FALLBACK_IDS", 6)
    ds = discover(root)[0][0]
    decoder = pipeline.Decoder(0, PixelBudget(10 ** 8))
    res = pipeline.predict_dataset(ds, Model(tiny_model, threads=1), Budget(1e6, total_images=20, fast_ratio=None), decoder, 4)
    assert res.tiers == {FULL: 4, FAST: 8, PRIOR: 8}
    assert res.fallback == {FAST: ds.ids[4:10], PRIOR: ds.ids[12:18]}


# --- the "Also" list ----------------------------------------------------------------------------------------

def test_mpo_jpeg_decodes_through_draft_mode(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4000, 3000), (200, 10, 10)), Image.new("RGB", (4000, 3000), (10, 10, 200))]
    path = tmp_path / "camera.jpg"
    frames[0].save(path, format="MPO", save_all=True, append_images=frames[1:])
    with Image.open(path) as img:
        assert img.format == "MPO"
    out = load_image(path, 224)
    assert min(out.size) >= 224 and max(out.size) <= 1000


def test_predict_sh_through_a_symlink(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 2)
    link_dir = tmp_path / "bin"
    link_dir.mkdir()
    (link_dir / "predict.sh").symlink_to(REPO / "predict.sh")
    proc = subprocess.run(["bash", str(link_dir / "predict.sh"), str(root), str(tmp_path / "o.json"),
                           "--model", str(tiny_model)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable), cwd="/", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(read_json(tmp_path / "o.json")["a"]) == 2


@pytest.mark.parametrize("args,message", [(["--threads", "-1"], "expected an integer >= 1"),
                                          (["--threads", "0"], "expected an integer >= 1"),
                                          (["--time-budget", "nan"], "finite number of seconds"),
                                          (["--time-budget", "inf"], "finite number of seconds"),
                                          (["--batch-size", "0"], "expected an integer >= 1")])
def test_bad_numbers_are_usage_errors_not_tracebacks(tiny_model: Path, tmp_path: Path, args: List[str],
                                                     message: str) -> None:
    root = tmp_path / "data"
    make_dataset(root, "a", ["x", "y"], 2)
    proc = run_predict_sh(root, tmp_path / "o.json", tiny_model, *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
