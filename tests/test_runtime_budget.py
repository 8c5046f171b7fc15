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
    budget.record(FULL, 10, 10.0)  # 1 s/image: 990 s needed
    clock.now = 10.0
    assert budget.choose(10) == PRIOR  # fast projected at 0.25 s/image * 990 = 247 s > 90 s
    budget2 = Budget(100.0, total_images=300, fast_ratio=0.25, clock=FakeClock())
    budget2.record(FULL, 10, 10.0)  # 290 left: full 290 s, fast 72 s, 100 s left
    assert budget2.choose(10) == FAST


def test_budget_without_fast_path_goes_to_prior() -> None:
    budget = Budget(10.0, total_images=100, fast_ratio=None, clock=FakeClock())
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
