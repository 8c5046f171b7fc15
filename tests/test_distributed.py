"""train.text_tower under torchrun: two CPU processes (gloo) train the same weights as one process with the same
global batch, and a run resumes across a change of the number of processes.

Tolerance: max |w_2 - w_1| < TOLERANCE over every trained weight. The processes add their gradients in another
order than one process does (and Adam divides by their square roots), so they agree to float32 rounding, not
bitwise. The InfoNCE loss has in-batch negatives: the processes all-gather the tower outputs and each computes
the loss of the whole global batch (train/distributed.py), else the weights would differ by far more.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from conftest import REPO
from test_text_tower import _args, contest_data  # noqa: F401 (contest_data: the fixture)
from train.distributed import SINGLE, Dist, from_env
from train.text_tower import main
from train.tower_loop import _Texts
from train.tower_model import TextTower, TinyTextEncoder, freeze_lower, info_nce, similarity
from zeroshot.manifest import ScoreConfig

TOLERANCE = 1e-5
STEPS, HALF = 24, 12
# batch 7 = 5 pairs in order + 2 hard negatives; 18 training pairs: the last batch of each epoch is 5 pairs,
# so the two processes take 4 + 3 and 3 + 2 pairs (uneven shares)
TRAIN = ("--steps", str(STEPS), "--checkpoint-every", str(HALF), "--batch-size", "7", "--stage", "train")


def _torchrun(args: List[str], processes: int = 2) -> None:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m train.text_tower ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "train.text_tower", *args]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _checkpoint(out: Path, step: int) -> Dict:
    return torch.load(out / "checkpoints" / f"step_{step:08d}.pt", map_location="cpu", weights_only=False)


def max_weight_diff(a: Path, b: Path, step: int = STEPS) -> float:
    """Max |difference| over every trained weight of the step-``step`` checkpoints of runs ``a`` and ``b``."""
    wa, wb = _checkpoint(a, step)["weights"], _checkpoint(b, step)["weights"]
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, contest_data: Path, tiny_model: Path) -> Path:  # noqa: F811
    """one/: one process; two/: two processes under torchrun; both the encoder trained, checkpoints at HALF, STEPS."""
    root = tmp_path_factory.mktemp("ddp")
    assert main(_args(contest_data, tiny_model, root / "one", *TRAIN)) == 0
    _torchrun(_args(contest_data, tiny_model, root / "two", *TRAIN))
    return root


def test_two_processes_train_the_weights_of_one(runs: Path) -> None:
    diff = max_weight_diff(runs / "one", runs / "two")
    print(f"max |w_2 processes - w_1 process| after {STEPS} steps: {diff:.3g}")
    assert diff < TOLERANCE
    one, two = _checkpoint(runs / "one", STEPS), _checkpoint(runs / "two", STEPS)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_batch"] == two["global_batch"] == 7 and one["samples_seen"] == two["samples_seen"]
    # the image cache was embedded in shares and merged once: one row per image, no shard left behind
    cache = next((runs / "two" / "cache").iterdir())
    assert sorted(p.name for p in cache.iterdir()) == ["index.json", "meta.json", "vectors.f32"]
    assert (cache / "vectors.f32").read_bytes() == next((runs / "one" / "cache").iterdir()).joinpath(
        "vectors.f32").read_bytes()


def test_checkpoint_of_two_processes_resumes_on_one(runs: Path, contest_data: Path,  # noqa: F811
                                                    tiny_model: Path) -> None:
    out = runs / "two_then_one"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(runs / "two" / "checkpoints" / f"step_{HALF:08d}.pt", out / "checkpoints")
    assert main(_args(contest_data, tiny_model, out, *TRAIN, "--resume")) == 0
    diff = max_weight_diff(runs / "one", out)
    print(f"2 processes for {HALF} steps, then 1 to {STEPS}: max |w - w_1 process| = {diff:.3g}")
    assert diff < TOLERANCE


def test_checkpoint_of_one_process_resumes_on_two_with_a_frozen_encoder(tmp_path: Path, contest_data: Path,  # noqa: F811
                                                                         tiny_model: Path) -> None:
    """The other way round, with the text features computed once (each process encodes its share)."""
    frozen = (*TRAIN, "--freeze-layers", "-1")
    assert main(_args(contest_data, tiny_model, tmp_path / "one", *frozen)) == 0
    out = tmp_path / "one_then_two"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "one" / "checkpoints" / f"step_{HALF:08d}.pt", out / "checkpoints")
    _torchrun(_args(contest_data, tiny_model, out, *frozen, "--resume"))
    diff = max_weight_diff(tmp_path / "one", out)
    print(f"1 process for {HALF} steps, then 2 to {STEPS}, frozen encoder: max |w - w_1 process| = {diff:.3g}")
    assert diff < TOLERANCE
    assert _checkpoint(out, STEPS)["world_size"] == 2


def test_shares_are_contiguous_and_in_rank_order() -> None:
    for world in (1, 2, 3):
        for n in (0, 1, 5, 7):
            shares = [Dist(rank, world).share(n) for rank in range(world)]
            assert [i for s in shares for i in range(n)[s]] == list(range(n))
            sizes = Dist(0, world).shares(n)
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert from_env({}) is SINGLE and from_env({"WORLD_SIZE": "1"}) is SINGLE
    assert from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == Dist(1, 2, 1, 2)
    with pytest.raises(ValueError, match="RANK"):
        from_env({"WORLD_SIZE": "2"})


def _grad_worker(rank: int, world: int, init: str, batch: int) -> None:
    """One of ``world`` gloo processes: the gradients of the global-batch InfoNCE under DistributedDataParallel,
    each process holding its share of the batch, equal those of one process on the whole batch."""
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        tower = TextTower(TinyTextEncoder(50, 8), 6, "unit")
        freeze_lower(tower.encoder, -1)
        feats, images = torch.randn(batch, 8), torch.randn(4, 6)
        column = torch.from_numpy(np.arange(batch) % 4)
        score = ScoreConfig(similarity="cosine", logit="linear", scale=1.0)
        info_nce(similarity(_Texts(tower)(feats), images, score), column, tower.scale()).backward()
        want = {n: p.grad.clone() for n, p in tower.named_parameters() if p.requires_grad}
        tower.zero_grad()
        dist = Dist(rank, world)
        ddp = torch.nn.parallel.DistributedDataParallel(_Texts(tower))
        text = dist.gather_rows(ddp(feats[dist.share(batch)]), dist.shares(batch))
        info_nce(similarity(text, images, score), column, tower.scale()).backward()
        for name, grad in want.items():
            got = dict(tower.named_parameters())[name].grad
            assert torch.allclose(got, grad, rtol=1e-5, atol=1e-7), (name, float((got - grad).abs().max()))
    finally:
        tdist.destroy_process_group()


def test_gathered_loss_gives_one_process_gradients(tmp_path: Path) -> None:
    """Unequal shares (7 rows on 2 processes) included; without the summed gradient of the gathered rows
    the text side's gradients would be half of one process's."""
    mp.spawn(_grad_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", 7), nprocs=2, join=True)
