"""The time budget: cheaper tiers when the projected finish passes it, and a complete JSON."""

from __future__ import annotations

from pathlib import Path

from conftest import read_json, run_predict_sh
from datagen import make_dataset

from zeroshot.budget import FAST, FULL, PRIOR, Budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_keeps_full_path_while_it_fits() -> None:
    clock = FakeClock()
    budget = Budget(100.0, total_images=100, fast_ratio=0.5, clock=clock)
    assert budget.choose(10) == FULL
    clock.now = 5.0
    budget.record(FULL, 10, 5.0)  # 0.5 s/image, 90 left -> 45 s needed, 95 s left
    assert budget.choose(10) == FULL


def test_budget_switches_to_fast_then_prior_as_time_runs_out() -> None:
    clock = FakeClock()
    budget = Budget(100.0, total_images=1000, fast_ratio=0.25, clock=clock)
    budget.record(FULL, 10, 3.0)  # the warm-up batch: not the tier's speed
    budget.record(FULL, 10, 10.0)  # 1 s/image: 980 s needed
    clock.now = 10.0
    assert budget.choose(10) == PRIOR  # fast projected at 0.25 s/image * 980 = 245 s > 90 s
    budget2 = Budget(100.0, total_images=300, fast_ratio=0.25, clock=FakeClock())
    budget2.record(FULL, 10, 3.0)
    budget2.record(FULL, 10, 10.0)  # 280 left: full 280 s, fast 70 s, 100 s left
    assert budget2.choose(10) == FAST


def test_budget_without_fast_path_goes_to_prior() -> None:
    budget = Budget(10.0, total_images=100, fast_ratio=None, clock=FakeClock())
    budget.record(FULL, 10, 5.0)  # warm-up
    budget.record(FULL, 10, 5.0)
    assert budget.choose(10) == PRIOR


def test_budget_exhausted_before_start_uses_prior() -> None:
    clock = FakeClock()
    budget = Budget(1.0, total_images=10, fast_ratio=0.5, clock=clock)
    clock.now = 2.0
    assert budget.choose(5) == PRIOR


def test_tiny_budget_still_writes_complete_json(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    truth = {"a": make_dataset(root, "a", ["x", "y", "z"], 40, seed=3),
             "b": make_dataset(root, "b", ["p", "q"], 30, seed=4)}
    out = tmp_path / "o.json"
    proc = run_predict_sh(root, out, tiny_model, "--time-budget", "0.001", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    preds = read_json(out)
    assert {k: sorted(v) for k, v in preds.items()} == {k: sorted(v) for k, v in truth.items()}
    assert "switching to the prior tier" in proc.stderr
    assert "prior=" in proc.stderr


def test_warm_up_batch_is_not_the_speed() -> None:
    """N1: a slow first batch (onnxruntime's warm-up, 4x the steady time here) must not send images to the
    prior that the deadline has room for; one more batch is tried when it fits at the warm-up's speed."""
    clock = FakeClock()
    budget = Budget(10.0, total_images=200, fast_ratio=None, clock=clock)
    budget.record(FULL, 10, 2.0)  # warm-up: 0.2 s/image would need 38 s for the 190 left
    clock.now = 2.0
    assert budget.choose(10) == FULL
    budget.record(FULL, 10, 0.4)  # steady: 0.04 s/image, 180 left need 7.2 s of the 7.6 s left
    clock.now = 2.4
    assert budget.choose(10) == FULL
    clock = FakeClock()
    late = Budget(10.0, total_images=200, fast_ratio=None, clock=clock)
    late.record(FULL, 10, 2.0)
    clock.now = 8.5  # 1.5 s left: one more batch at the warm-up's 2 s would not end in time
    assert late.choose(10) == PRIOR
