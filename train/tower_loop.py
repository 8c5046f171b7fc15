"""The text tower's training loop (train.text_tower): batches with hard negatives, AdamW with warm-up and cosine
decay, checkpoints and resume, Ctrl-C at a step boundary."""

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
from .tower_run import TRAJECTORY, Run, TrainConfig, TrainData, encode_texts, tokens

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


def save_checkpoint(run: Run, step: int, opt: Any, sched: Any, scaler: Any) -> Path:
    """Write OUT/checkpoints/step_<step>.pt (trainable weights, optimizer, schedule, RNG) atomically; keep the last two."""
    folder = checkpoint_dir(run.out)
    folder.mkdir(parents=True, exist_ok=True)
    names = set(trainable(run.tower))
    state = {"step": step, "config": asdict(run.cfg), "history": run.history,
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


def _step(run: Run, idx: np.ndarray, feats: Optional[torch.Tensor], device: torch.device, opt: Any, sched: Any,
          scaler: Any) -> float:
    """One optimizer step on the pairs ``idx``; returns the loss. With a GradScaler the tower runs in float16
    autocast; the similarities and the loss are always float32 (log of small probabilities)."""
    images, column = _batch_tensors(run, idx, device)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=scaler is not None):
        if feats is not None:
            text = run.tower.project(feats[torch.from_numpy(idx).to(device)])
        else:
            text = run.tower(*tokens(run.tokenizer, [run.data.texts[i] for i in idx], device))
    loss = info_nce(similarity(text.float(), images, run.manifest.score), column, run.tower.scale())
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


def train(run: Run, resume: bool = False) -> Dict[str, Any]:
    """Train the tower; returns {"steps", "pairs_per_s", "final_loss", "first_loss"}.

    ``resume``: continue from the latest checkpoint in OUT/checkpoints. Ctrl-C stops after the
    current step with a checkpoint and raises KeyboardInterrupt.
    """
    cfg, device = run.cfg, torch.device(run.cfg.device)
    plan = BatchPlan(run.data, cfg.batch_size, cfg.hard_negatives, cfg.seed)
    steps = total_steps(cfg, plan)
    run.tower.to(device).train()
    opt, sched = make_optimizer(run.tower, cfg, steps)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    start = 0
    if resume:
        path = latest_checkpoint(run.out)
        if path is None:
            raise FileNotFoundError(f"{checkpoint_dir(run.out)}: no checkpoint to resume from")
        state = load_checkpoint(run, path)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        logger.info("resumed from %s at step %d of %d", path, start, steps)
    frozen_encoder = not any(p.requires_grad for p in run.tower.encoder.parameters())
    t0 = time.perf_counter()
    feats = encode_texts(run.tower, run.tokenizer, run.data.texts, device, project=False) if frozen_encoder else None
    feature_seconds = time.perf_counter() - t0
    logger.info("training %d steps (%d per epoch, batch %d with %d hard negatives) on %s; %s", steps,
                plan.steps_per_epoch, plan.batch, plan.n_hard, device,
                "encoder frozen: text features computed once" if frozen_encoder else
                f"{sum(p.numel() for p in run.tower.encoder.parameters() if p.requires_grad)} encoder weights trained")
    progress, pair_rate = Progress("training", steps, unit="steps"), PairRate()
    losses: List[float] = []
    interrupted = _Interrupt()
    with interrupted:
        for step in range(start, steps):
            t0 = time.perf_counter()
            idx = plan(step)
            losses.append(_step(run, idx, feats, device, opt, sched, scaler))
            pair_rate.add(len(idx), time.perf_counter() - t0)
            done = step + 1
            progress.update(done, force=done == steps, note=f"loss {losses[-1]:.4f}, {pair_rate.rate:.0f} pairs/s")
            if (done % plan.steps_per_epoch == 0 or done == steps) and not interrupted.flag:
                run.history.append({"step": done, "loss": losses[-1], **evaluate(run)})
            if done % cfg.checkpoint_every == 0 or done == steps or interrupted.flag:
                save_checkpoint(run, done, opt, sched, scaler)
            if interrupted.flag:
                raise KeyboardInterrupt(f"interrupted after step {done}; --resume continues from there")
    return {"steps": steps, "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "pairs_per_s": pair_rate.rate, "text_features_s": feature_seconds, "losses": losses}
