"""The text tower's training loop (train.text_tower): batches with hard negatives, AdamW with warm-up and cosine
decay, checkpoints and resume, Ctrl-C at a step boundary.

Under torchrun (train/distributed.py) every process draws the same global batch from the
BatchPlan and runs the tower on its contiguous share of it, inside DistributedDataParallel;
the tower outputs are all-gathered so each process computes the contrastive loss of the whole
global batch (its in-batch negatives span every process), and the gradients equal one
process's on that batch. Rank 0 alone evaluates and writes checkpoints (the others wait at a
barrier). A checkpoint holds the global step, the global batch and the pairs seen, never a
process's own state, so a run resumes on any number of processes.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from zeroshot.progress import Progress

from .tower_eval import evaluate
from .tower_model import TextTower, info_nce, similarity, trainable
from .tower_run import ENCODE_BATCH, TRAJECTORY, Run, TrainConfig, TrainData, encode_texts, tokens

logger = logging.getLogger(__name__)

HARD_POOL = 8            # hard negatives are chosen from HARD_POOL x as many random candidates
KEEP_CHECKPOINTS = 2


class BatchPlan:
    """Which training pairs form batch ``step``: a function of (seed, step) only, so a resumed run sees the same.

    Each batch holds ``batch - n_hard`` pairs taken in order from a seeded
    per-epoch permutation, plus ``n_hard`` hard negatives: of HARD_POOL x n_hard
    random candidates, those whose images are most similar (cosine of the
    frozen image vectors) to an image already in the batch.
    """

    def __init__(self, data: TrainData, batch: int, hard: float, seed: int) -> None:
        self.pairs = data.train
        self.rows = data.rows
        n = len(self.pairs)
        self.batch = max(2, min(batch, n))
        self.n_hard = int(round(hard * self.batch)) if n > self.batch else 0
        self.n_anchor = self.batch - self.n_hard
        self.steps_per_epoch = math.ceil(n / self.n_anchor)
        self.seed = seed
        self._epoch = (-1, np.zeros(0, dtype=np.int64))
        self.vectors = data.vectors

    def _perm(self, epoch: int) -> np.ndarray:
        if self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs)))
        return self._epoch[1]

    def _unit(self, rows: np.ndarray) -> np.ndarray:
        """L2-normalised image vectors float32 (len(rows), D), read from the cache."""
        vecs = np.asarray(self.vectors[rows], dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    def __call__(self, step: int) -> np.ndarray:
        """int64 pair indices of batch ``step`` (0-based)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        anchors = self.pairs[self._perm(epoch)[i * self.n_anchor:(i + 1) * self.n_anchor]]
        if not self.n_hard:
            return anchors
        rng = np.random.default_rng([self.seed, epoch, i, 1])
        pool = self.pairs[rng.choice(len(self.pairs), size=min(len(self.pairs), HARD_POOL * self.n_hard),
                                     replace=False)]
        pool = pool[~np.isin(self.rows[pool], self.rows[anchors])]
        if not len(pool):
            return anchors
        closeness = (self._unit(self.rows[pool]) @ self._unit(self.rows[anchors]).T).max(axis=1)
        return np.concatenate([anchors, pool[np.argsort(-closeness, kind="stable")[:self.n_hard]]])


def total_steps(cfg: TrainConfig, plan: BatchPlan) -> int:
    return cfg.steps if cfg.steps > 0 else cfg.epochs * plan.steps_per_epoch


def make_optimizer(tower: TextTower, cfg: TrainConfig, steps: int) -> Tuple[torch.optim.Optimizer, Any]:
    """AdamW (no decay on biases, norms and the temperature) with linear warm-up then cosine decay to 0."""
    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    for name, param in tower.named_parameters():
        if not param.requires_grad:
            continue
        lr = cfg.encoder_lr if name.startswith("encoder.") else cfg.lr
        decay = cfg.weight_decay if param.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    opt = torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()])
    warm = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class PairRate:
    """Training pairs per second over the optimizer steps only (evaluation and checkpoints excluded)."""

    def __init__(self) -> None:
        self.pairs, self.seconds = 0, 0.0

    def add(self, pairs: int, seconds: float) -> None:
        self.pairs += pairs
        self.seconds += seconds

    @property
    def rate(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)


def _batch_tensors(run: Run, idx: np.ndarray, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image vectors float32 (U, D) of the batch's distinct images, int64 (B,) each pair's column)."""
    rows, column = np.unique(run.data.rows[idx], return_inverse=True)
    images = torch.from_numpy(np.asarray(run.data.vectors[rows], dtype=np.float32)).to(device)
    return images, torch.from_numpy(column.astype(np.int64)).to(device)


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def latest_checkpoint(out: Path) -> Optional[Path]:
    """The checkpoint with the most steps in OUT/checkpoints, or None."""
    found = sorted(checkpoint_dir(out).glob("step_*.pt"))
    return found[-1] if found else None


def save_checkpoint(run: Run, step: int, opt: Any, sched: Any, scaler: Any,
                    position: Optional[Dict[str, int]] = None) -> Path:
    """Write OUT/checkpoints/step_<step>.pt (trainable weights, optimizer, schedule, RNG) atomically; keep the last two.

    ``position``: where the run is in global terms ({"global_batch", "samples_seen", "world_size"}).
    """
    folder = checkpoint_dir(run.out)
    folder.mkdir(parents=True, exist_ok=True)
    names = set(trainable(run.tower))
    state = {"step": step, **(position or {}), "config": asdict(run.cfg), "history": run.history,
             "weights": {k: v.detach().cpu() for k, v in run.tower.state_dict().items() if k in names},
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "torch_rng": torch.get_rng_state()}
    path = folder / f"step_{step:08d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    for old in sorted(folder.glob("step_*.pt"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
    logger.info("checkpoint %s", path)
    return path


def load_checkpoint(run: Run, path: Path) -> Dict[str, Any]:
    """Load the trainable weights of ``path`` into the tower; returns the checkpoint.

    Raises ValueError if the checkpoint was made with settings that change the training trajectory.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state["config"]
    changed = [k for k in TRAJECTORY if saved.get(k) != getattr(run.cfg, k)]
    if changed:
        raise ValueError(f"{path}: made with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)});"
                         " resume with the same settings or start a new --out")
    missing = set(trainable(run.tower)) - set(state["weights"])
    if missing:
        raise ValueError(f"{path}: checkpoint lacks trainable weights {sorted(missing)[:5]}")
    run.tower.load_state_dict(state["weights"], strict=False)
    run.history = list(state.get("history", []))
    return state


class _Interrupt:
    """Within ``with``: Ctrl-C (SIGINT) only sets ``flag``, so the loop can stop at a step boundary with a checkpoint."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._set)
        return self

    def _set(self, signum: int, frame: Any) -> None:
        self.flag = True
        logger.warning("interrupt: stopping after this step with a checkpoint")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Texts(nn.Module):
    """The tower's training forward as one module, so DistributedDataParallel can wrap it: a frozen encoder's
    features float32 (B, E), or input_ids and attention_mask int64 (B, L) -> tower outputs (B, D)."""

    def __init__(self, tower: TextTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.tower.project(inputs[0]) if len(inputs) == 1 else self.tower(*inputs)


def _texts_module(run: Run) -> nn.Module:
    """_Texts over run.tower; with several processes inside DistributedDataParallel (gradients averaged)."""
    module = _Texts(run.tower)
    if not run.dist.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [run.dist.local_rank] if run.dist.device == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def _text_features(run: Run, device: torch.device) -> torch.Tensor:
    """A frozen encoder's features float32 (P, E) of every text.

    Each process encodes its share of the ENCODE_BATCH-text chunks (the chunks one process
    encodes, so the same numbers) and the shares are all-gathered.
    """
    texts, dist = run.data.texts, run.dist
    chunks = np.cumsum([0] + dist.shares(math.ceil(len(texts) / ENCODE_BATCH)))
    bounds = np.minimum(chunks * ENCODE_BATCH, len(texts))
    mine = texts[bounds[dist.rank]:bounds[dist.rank + 1]]
    local = (encode_texts(run.tower, run.tokenizer, mine, device, project=False) if mine else
             torch.zeros((0, run.tower.head.in_features), device=device))
    return dist.gather_rows(local, np.diff(bounds).tolist())


def _step(run: Run, idx: np.ndarray, feats: Optional[torch.Tensor], device: torch.device, opt: Any, sched: Any,
          scaler: Any, texts: nn.Module) -> float:
    """One optimizer step on the global batch ``idx``; returns its loss. With a GradScaler the tower runs in float16
    autocast; the similarities and the loss are always float32 (log of small probabilities).

    ``texts`` (:func:`_texts_module`) runs the tower on this process's share of ``idx``; the outputs of
    every share are gathered (run.dist.gather_rows), so the loss is the global batch's on every process.
    """
    images, column = _batch_tensors(run, idx, device)
    local = idx[run.dist.share(len(idx))]
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=scaler is not None):
        if feats is not None:
            text = texts(feats[torch.from_numpy(local).to(device)])
        else:
            text = texts(*tokens(run.tokenizer, [run.data.texts[i] for i in local], device))
    text = run.dist.gather_rows(text.float(), run.dist.shares(len(idx)))
    loss = info_nce(similarity(text, images, run.manifest.score), column, run.tower.scale())
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    sched.step()
    return loss.item()


def _resume(run: Run, plan: BatchPlan, steps: int, opt: Any, sched: Any, scaler: Any) -> Tuple[int, int]:
    """Load the latest checkpoint into the tower, optimizer, schedule, scaler and RNG; returns (step, pairs seen).

    Every process reads the same checkpoint (any number of processes may have written it).
    """
    path = latest_checkpoint(run.out)
    if path is None:
        raise FileNotFoundError(f"{checkpoint_dir(run.out)}: no checkpoint to resume from")
    state = load_checkpoint(run, path)
    if state.get("global_batch", plan.batch) != plan.batch:
        raise ValueError(f"{path}: made with a global batch of {state['global_batch']} pairs, this run's is "
                         f"{plan.batch}; resume with the same --batch-size and input")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    start = int(state["step"])
    logger.info("resumed from %s at step %d of %d (written by %d process(es), now %d)", path, start, steps,
                state.get("world_size", 1), run.dist.world)
    return start, int(state.get("samples_seen", 0))


def train(run: Run, resume: bool = False) -> Dict[str, Any]:
    """Train the tower; returns {"steps", "pairs_per_s", "final_loss", "first_loss"}.

    ``resume``: continue from the latest checkpoint in OUT/checkpoints. Ctrl-C stops after the
    current step with a checkpoint and raises KeyboardInterrupt. ``--batch-size`` is the global
    batch: with several processes (run.dist) each takes its share of every batch.
    """
    cfg, device, dist = run.cfg, torch.device(run.cfg.device), run.dist
    plan = BatchPlan(run.data, cfg.batch_size, cfg.hard_negatives, cfg.seed)
    if plan.batch < dist.world:
        raise ValueError(f"a batch of {plan.batch} pairs cannot be shared by {dist.world} processes: "
                         "raise --batch-size or start fewer processes")
    steps = total_steps(cfg, plan)
    run.tower.to(device).train()
    opt, sched = make_optimizer(run.tower, cfg, steps)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    start, seen = _resume(run, plan, steps, opt, sched, scaler) if resume else (0, 0)
    texts = _texts_module(run)
    frozen_encoder = not any(p.requires_grad for p in run.tower.encoder.parameters())
    t0 = time.perf_counter()
    feats = _text_features(run, device) if frozen_encoder else None
    feature_seconds = time.perf_counter() - t0
    logger.info("training %d steps (%d per epoch, batch %d with %d hard negatives) on %s%s; %s", steps,
                plan.steps_per_epoch, plan.batch, plan.n_hard, device,
                f" x {dist.world} processes" if dist.active else "",
                "encoder frozen: text features computed once" if frozen_encoder else
                f"{sum(p.numel() for p in run.tower.encoder.parameters() if p.requires_grad)} encoder weights trained")
    progress, pair_rate = Progress("training", steps, unit="steps"), PairRate()
    losses: List[float] = []
    interrupted = _Interrupt()
    with interrupted:
        for step in range(start, steps):
            t0 = time.perf_counter()
            idx = plan(step)
            losses.append(_step(run, idx, feats, device, opt, sched, scaler, texts))
            pair_rate.add(len(idx), time.perf_counter() - t0)
            seen, done = seen + len(idx), step + 1
            stop = dist.any(interrupted.flag)
            progress.update(done, force=done == steps, note=f"loss {losses[-1]:.4f}, {pair_rate.rate:.0f} pairs/s")
            if (done % plan.steps_per_epoch == 0 or done == steps) and not stop and dist.main:
                run.history.append({"step": done, "loss": losses[-1], **evaluate(run)})
            if done % cfg.checkpoint_every == 0 or done == steps or stop:
                if dist.main:
                    save_checkpoint(run, done, opt, sched, scaler,
                                    {"global_batch": plan.batch, "samples_seen": seen, "world_size": dist.world})
                dist.barrier()
            if stop:
                raise KeyboardInterrupt(f"interrupted after step {done}; --resume continues from there")
    return {"steps": steps, "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "pairs_per_s": pair_rate.rate, "text_features_s": feature_seconds, "losses": losses}
