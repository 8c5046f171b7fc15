"""Train a Russian text tower against a frozen image tower, evaluate it, export a complete model folder.

Input (one of): ``--metadata FILE --images DIR`` (the contest's JSON lines), ``--pairs FILE``
(``{"image": "path", "text": "..."}`` lines) or ``--class-folders DIR`` (``DIR/<class name>/*.jpg``);
see train/pairs.py. ``--image-model DIR`` is any model folder; its image encoder is used frozen
(train/image_cache.py embeds every image once into ``OUT/cache``). The text tower
(train/tower_model.py) is trained with InfoNCE, a learned temperature and in-batch hard negatives,
AdamW with linear warm-up and cosine decay, fixed seeds, checkpoints in ``OUT/checkpoints`` and
``--resume``; every epoch it reports recall@1/5/10 on held-out images and, with ``--eval DIR``,
zero-shot accuracy on a labelled datasets folder. The result is exported to ONNX (parity checked,
opset <= 17, IR <= 9) into ``OUT/model`` beside a copy of the image encoder, with a manifest, so
``./predict.sh DATA OUT.json --model OUT/model`` runs it.

Usage::

    python -m train.text_tower --metadata FILE --images DIR --image-model MODEL_DIR --out OUT_DIR \\
        [--steps N] [--device cpu|cuda] [--eval DATASETS_DIR] [--stage all|cache|train|evaluate|export]
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from zeroshot.command import make_parser, parse_args
from zeroshot.datasets import class_mask, discover
from zeroshot.scoring import class_logits
from zeroshot.scoring import predict
from zeroshot.text import Tokenizer, build_prompts

from .contract import TEXT_ENCODER_FILE, TOKENIZER_FILE, text_config
from .export.onnx_text import OUTPUT_NAME, export_text_encoder
from .contract import tokenizer as runtime_tokenizer
from .image_cache import ImageTower, embed_cached
from .manifest_io import write_manifest
from .pairs import Pairs, read_class_folders, read_metadata, read_pairs_jsonl
from .tower_model import (TEXT_MODELS, TextTower, build_encoder, default_tokenizer, freeze_lower,
                          info_nce, output_kind, similarity, trainable)

logger = logging.getLogger(__name__)

STAGES = ("all", "cache", "train", "evaluate", "export")
RECALL_AT = (1, 5, 10)
MAX_VAL_IMAGES = 2000
HARD_POOL = 8            # hard negatives are chosen from HARD_POOL x as many random candidates
KEEP_CHECKPOINTS = 2
ENCODE_BATCH = 256
CHECK_TEXTS = ["кошка", "собаки", "немецкая овчарка", "гаечный ключ", "самолет", "фото подсолнуха", "инь и янь"]
# fields of TrainConfig that change the training trajectory: a resumed run must match them
TRAJECTORY = ("text_model", "steps", "batch_size", "lr", "encoder_lr", "weight_decay", "warmup_steps",
              "hard_negatives", "freeze_layers", "seed", "val_fraction", "init_scale")


@dataclass
class TrainConfig:
    """Every setting of one training run (saved in each checkpoint and in the report)."""

    text_model: str = "use-m"
    steps: int = 0                 # 0: epochs x steps per epoch
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3               # projection head and temperature
    encoder_lr: float = 1e-4       # unfrozen encoder layers
    weight_decay: float = 0.01
    warmup_steps: int = -1         # -1: 5% of the steps
    hard_negatives: float = 0.25   # share of each batch chosen as hard negatives
    freeze_layers: int = -1        # lowest encoder layer groups frozen; -1: the whole encoder
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 200
    val_fraction: float = 0.1
    init_scale: float = 10.0


@dataclass
class TrainData:
    """Pairs with their cached image rows, split into training and held-out pairs by image."""

    texts: List[str]
    rows: np.ndarray               # int64 (P,) cache row of each pair's image
    train: np.ndarray              # int64 indices of training pairs
    val: np.ndarray                # int64 indices of held-out pairs (their images never trained on)
    vectors: np.ndarray            # float32 (R, D) memmap of the image cache


@dataclass
class EvalSet:
    """A labelled datasets folder with its cached image vectors."""

    names: List[str]
    classes: List[List[str]]
    vectors: List[np.ndarray]      # float32 (N_d, D) per dataset (zeros for undecodable images)
    valid: List[np.ndarray]        # bool (N_d,)
    truth: List[np.ndarray]        # int64 (N_d,)


@dataclass
class Run:
    """Everything a stage needs: configuration, data, the tower and where things go."""

    cfg: TrainConfig
    out: Path
    image_model: Path
    manifest: Dict[str, Any]       # the image model's manifest
    tokenizer_path: Path
    tokenizer: Tokenizer
    tower: TextTower
    data: TrainData
    eval_set: Optional[EvalSet] = None
    history: List[Dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- data


def read_input(args: Any, templates: Sequence[str], steps: Sequence[str]) -> Pairs:
    """Pairs from whichever input the arguments name; logs the input report."""
    if args.metadata is not None:
        if args.images is None:
            raise ValueError("--metadata needs --images DIR (the folder holding ID.jpg files)")
        pairs, report = read_metadata(args.metadata, args.images, steps)
    elif args.pairs is not None:
        pairs, report = read_pairs_jsonl(args.pairs, args.images, steps)
    else:
        pairs, report = read_class_folders(args.class_folders, templates, steps)
    report.log()
    if not len(pairs):
        raise ValueError(f"{report.source}: no usable (image, text) pairs: {report.summary()}")
    return pairs


def split_pairs(pairs: Pairs, rows: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, held-out) pair indices: a seeded ``fraction`` of the decodable images (at most MAX_VAL_IMAGES)
    and all their texts are held out; pairs whose image could not be decoded are dropped."""
    image_of = np.asarray(pairs.image_of, dtype=np.int64)
    good = np.flatnonzero(rows[image_of] >= 0)
    images = np.unique(image_of[good])
    n_val = min(int(round(fraction * len(images))), MAX_VAL_IMAGES)
    if len(images) - n_val < 2:
        n_val = 0
    held = set(np.random.default_rng(seed).permutation(images)[:n_val].tolist())
    is_val = np.array([image_of[i] in held for i in good], dtype=bool)
    return good[~is_val], good[is_val]


def load_eval_set(folder: Path, gt_path: Optional[Path], image_tower: ImageTower, cache: Path) -> EvalSet:
    """The datasets of ``folder`` with labels from ``gt_path`` (default folder/gt.json), images cached."""
    gt_path = gt_path or folder / "gt.json"
    if not gt_path.is_file():
        raise FileNotFoundError(f"{gt_path}: no ground truth for --eval {folder} (expected gt.json, "
                                "{dataset: {image id: class index}})")
    gt = json.loads(gt_path.read_text(encoding="utf-8"))
    datasets, problems = discover(folder)
    for problem in problems:
        logger.warning("%s", problem)
    out = EvalSet([], [], [], [], [])
    for ds in datasets:
        labels = gt.get(ds.name, {})
        keep = [i for i, image in enumerate(ds.ids) if image in labels]
        if not keep:
            logger.warning("%s: no image of dataset '%s' is in %s; not evaluated", folder, ds.name, gt_path)
            continue
        vectors, rows = embed_cached(image_tower, [ds.images[i] for i in keep], cache)
        dim = vectors.shape[1]
        out.names.append(ds.name)
        out.classes.append(ds.classes)
        out.vectors.append(np.stack([vectors[r] if r >= 0 else np.zeros(dim, np.float32) for r in rows]))
        out.valid.append(rows >= 0)
        out.truth.append(np.asarray([labels[ds.ids[i]] for i in keep], dtype=np.int64))
    return out


# ------------------------------------------------------------------------------------- training


def tokens(tokenizer: Tokenizer, texts: Sequence[str], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask) int64 (B, L) on ``device``, via the runtime's Tokenizer."""
    ids, mask = tokenizer.batch(list(texts))
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


@torch.no_grad()
def encode_texts(tower: TextTower, tokenizer: Tokenizer, texts: Sequence[str], device: torch.device,
                 project: bool = True) -> torch.Tensor:
    """Texts -> float32 (N, D) tower outputs (``project=False``: encoder outputs), in eval mode."""
    was = tower.training
    tower.eval()
    out = []
    for start in range(0, len(texts), ENCODE_BATCH):
        feats = tower.encoder(*tokens(tokenizer, texts[start:start + ENCODE_BATCH], device))
        out.append(tower.project(feats) if project else feats)
    tower.train(was)
    return torch.cat(out).float() if out else torch.zeros(0)


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


class Progress:
    """A progress line on stderr: step, loss, training pairs/s (evaluation time excluded); redrawn in place on a
    terminal, logged every 5% otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pairs, self.seconds = 0, 0.0
        self.tty = sys.stderr.isatty()
        self.every = max(1, total // 20)

    @property
    def rate(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)

    def update(self, step: int, loss: float, pairs: int, seconds: float) -> None:
        self.pairs += pairs
        self.seconds += seconds
        done = int(30 * step / max(self.total, 1))
        line = f"[{'#' * done}{'.' * (30 - done)}] step {step}/{self.total} loss {loss:.4f} {self.rate:.0f} pairs/s"
        if self.tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        elif step % self.every == 0 or step == self.total:
            logger.info("%s", line)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


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
    loss = info_nce(similarity(text.float(), images, run.manifest["score"]), column, run.tower.scale())
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
    progress = Progress(steps)
    losses: List[float] = []
    interrupted = _Interrupt()
    with interrupted:
        for step in range(start, steps):
            t0 = time.perf_counter()
            idx = plan(step)
            losses.append(_step(run, idx, feats, device, opt, sched, scaler))
            progress.update(step + 1, losses[-1], len(idx), time.perf_counter() - t0)
            done = step + 1
            if (done % plan.steps_per_epoch == 0 or done == steps) and not interrupted.flag:
                run.history.append({"step": done, "loss": losses[-1], **evaluate(run)})
            if done % cfg.checkpoint_every == 0 or done == steps or interrupted.flag:
                save_checkpoint(run, done, opt, sched, scaler)
            if interrupted.flag:
                progress.close()
                raise KeyboardInterrupt(f"interrupted after step {done}; --resume continues from there")
    progress.close()
    return {"steps": steps, "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "pairs_per_s": progress.rate, "text_features_s": feature_seconds, "losses": losses}


# ----------------------------------------------------------------------------------- evaluation


def recall_at(run: Run, ks: Sequence[int] = RECALL_AT) -> Dict[str, float]:
    """Text -> image retrieval recall@k on the held-out pairs (among the held-out images)."""
    val = run.data.val
    if not len(val):
        return {}
    device = next(run.tower.parameters()).device
    text = encode_texts(run.tower, run.tokenizer, [run.data.texts[i] for i in val], device)
    rows, column = np.unique(run.data.rows[val], return_inverse=True)
    images = torch.from_numpy(np.asarray(run.data.vectors[rows], dtype=np.float32)).to(device)
    sims = similarity(text, images, run.manifest["score"]).cpu().numpy()
    own = sims[np.arange(len(val)), column][:, None]
    rank = (sims > own).sum(axis=1)
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}


def zero_shot(run: Run) -> Dict[str, float]:
    """Zero-shot accuracy x 100 per dataset of --eval and their mean, scored as the runtime scores.

    Prompts, normalisation, score, balance and prototype refinement follow the image model's
    manifest, with the learned scale. The refinement reads the cached image vectors (the
    runtime reads ``image.features_output`` when a manifest names one; none of ours does).
    """
    es = run.eval_set
    if es is None or not es.names:
        return {}
    m = run.manifest
    device = next(run.tower.parameters()).device
    templates, steps = m["text"]["templates"], m["text"].get("normalize", [])
    out: Dict[str, float] = {}
    for name, classes, vecs, valid, truth in zip(es.names, es.classes, es.vectors, es.valid, es.truth):
        prompts = build_prompts(classes, templates, steps)
        text = encode_texts(run.tower, run.tokenizer, prompts, device).cpu().numpy()
        text = text.reshape(len(templates), len(classes), -1)
        if m["score"]["similarity"] == "cosine":
            text = text / np.maximum(np.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
        score_cfg = dict(m["score"], scale=run.tower.scale().detach().item())
        scores = class_logits(vecs, text.mean(axis=0), score_cfg)
        pred = predict(scores, valid, class_mask(classes), m.get("balance"), vecs, m.get("transductive"))
        out[f"zero_shot/{name}"] = 100.0 * float((pred == truth).mean())
    out["zero_shot"] = float(np.mean([out[f"zero_shot/{n}"] for n in es.names]))
    return out


def evaluate(run: Run) -> Dict[str, float]:
    """Held-out recall@k and --eval zero-shot accuracy; logged and returned."""
    result = {**recall_at(run), **zero_shot(run)}
    if result:
        logger.info("evaluation: %s", ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
    return result


# ---------------------------------------------------------------------------------------- export


class _ExportWrapper(nn.Module):
    def __init__(self, tower: TextTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids, attention_mask)


def export_text_tower(tower: TextTower, path: Path, tokenizer: Tokenizer, check_texts: Sequence[str]) -> Dict[str, Any]:
    """Export the tower (cpu, float32) through the one text-encoder export path and return its validation record.

    Graph: input_ids, attention_mask int64 (batch, length) -> text_embeds float32 (batch, D);
    :func:`train.export.onnx_text.export_text_encoder` writes it (opset 17, IR <= 9, checked)
    and raises ValueError unless every row of ``check_texts``, tokenized by the runtime's
    Tokenizer, has cosine >= its threshold with torch.
    """
    module = _ExportWrapper(tower.cpu().float().eval()).eval()
    ids, mask = tokenizer.batch(list(check_texts))
    record = export_text_encoder(module, path, ids, mask)
    record["check_texts"] = len(check_texts)
    return record


def _copy_image_files(run: Run, model: Path) -> Tuple[Dict[str, str], Dict[str, Dict[str, str]]]:
    """Copy the image model's image encoder (and image-only variants) into ``model``; (files, variants)."""
    src = run.manifest
    names = {"image_encoder": src["files"]["image_encoder"]["path"]}
    variants: Dict[str, Dict[str, str]] = {}
    for vname, variant in src.get("variants", {}).items():
        if set(variant["files"]) == {"image_encoder"}:
            variants[vname] = {"image_encoder": variant["files"]["image_encoder"]["path"]}
    for rel in {names["image_encoder"], *(v["image_encoder"] for v in variants.values())}:
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.image_model / rel, model / rel)
    return names, variants


def export_model(run: Run, train_summary: Dict[str, Any], scale: Optional[float] = None) -> Path:
    """Write OUT/model: text_encoder.onnx, tokenizer.model, the image encoder copied, manifest.json.

    ``scale``: the manifest's score.scale (default: the learned InfoNCE scale).
    """
    model = run.out / "model"
    model.mkdir(parents=True, exist_ok=True)
    m = run.manifest
    record = export_text_tower(run.tower, model / TEXT_ENCODER_FILE, run.tokenizer,
                               CHECK_TEXTS + [t.replace("{}", "кот") for t in m["text"]["templates"]])
    shutil.copyfile(run.tokenizer_path, model / TOKENIZER_FILE)
    files, variants = _copy_image_files(run, model)
    files.update({"text_encoder": TEXT_ENCODER_FILE, "tokenizer": TOKENIZER_FILE})
    scale = round(run.tower.scale().detach().item(), 4) if scale is None else scale
    sections: Dict[str, Any] = {
        "name": f"text-tower-{run.cfg.text_model}+{m.get('name', run.image_model.name)}",
        "description": f"{run.cfg.text_model} text tower trained contrastively (train.text_tower) against the frozen "
                       f"image encoder of {m.get('name', run.image_model.name)}",
        "batch_size": int(m.get("batch_size", 16)),
        "image": dict(m["image"]),
        "text": text_config(OUTPUT_NAME, m["text"]["templates"], m["text"].get("normalize", [])),
        "score": {"similarity": m["score"]["similarity"], "logit": m["score"]["logit"], "scale": scale},
        "validation": {"text_encoder": record, "image_encoder": m.get("validation", {}).get("image_encoder")},
        "training": {"config": asdict(run.cfg), "pairs": len(run.data.texts), "train_pairs": len(run.data.train),
                     "held_out_pairs": len(run.data.val), "history": run.history,
                     **{k: v for k, v in train_summary.items() if k != "losses"}},
    }
    for key in ("balance", "transductive"):
        if m.get(key) is not None:
            sections[key] = m[key]
    write_manifest(model, files, sections, variants or None)
    return model


# ------------------------------------------------------------------------------------------- CLI


def _config(args: Any) -> TrainConfig:
    return TrainConfig(text_model=args.text_model, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, encoder_lr=args.encoder_lr, weight_decay=args.weight_decay,
                       warmup_steps=args.warmup_steps, hard_negatives=args.hard_negatives,
                       freeze_layers=args.freeze_layers, seed=args.seed, device=args.device,
                       checkpoint_every=args.checkpoint_every, val_fraction=args.val_fraction)


def prepare(args: Any) -> Optional[Run]:
    """Read the input, fill the image cache and build the tower; None after ``--stage cache``."""
    cfg = _config(args)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image_tower = ImageTower(args.image_model)
    m = image_tower.manifest
    pairs = read_input(args, m["text"]["templates"], m["text"].get("normalize", []))
    cache = Path(args.cache) if args.cache else out / "cache"
    vectors, image_rows = embed_cached(image_tower, pairs.images, cache)
    eval_set = load_eval_set(args.eval, args.eval_gt, image_tower, cache) if args.eval else None
    if args.stage == "cache":
        return None
    rows = image_rows[np.asarray(pairs.image_of, dtype=np.int64)]
    train_idx, val_idx = split_pairs(pairs, image_rows, cfg.val_fraction, cfg.seed)
    if not len(train_idx):
        raise ValueError(f"no training pairs left: every image of the input failed to decode ({cache})")
    logger.info("%d pairs: %d for training, %d held out", len(pairs), len(train_idx), len(val_idx))
    tok_path = Path(args.tokenizer) if args.tokenizer else default_tokenizer(cfg.text_model)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.text_model, tok_path)
    freeze_lower(encoder, cfg.freeze_layers)
    tower = TextTower(encoder, vectors.shape[1], output_kind(m["score"]), cfg.init_scale)
    data = TrainData(pairs.texts, rows, train_idx, val_idx, vectors)
    return Run(cfg, out, Path(args.image_model), m, tok_path, runtime_tokenizer(tok_path), tower, data,
               eval_set)


def build_parser():
    parser = make_parser("python -m train.text_tower", __doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--metadata", type=Path, help='contest JSON lines {"image": ID, "queries": [...]} (with --images)')
    src.add_argument("--pairs", type=Path, help='JSON lines {"image": "path", "text": "..."}')
    src.add_argument("--class-folders", type=Path, help="folder of <Russian class name>/ image folders")
    parser.add_argument("--images", type=Path, help="images folder (ID.jpg for --metadata; base of --pairs paths)")
    parser.add_argument("--image-model", type=Path, required=True, help="model folder whose image encoder is frozen")
    parser.add_argument("--out", type=Path, required=True, help="output folder: cache/, checkpoints/, model/, report.json")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="all (default); cache: only embed the images; train: train (and evaluate) without "
                             "export; evaluate / export: from the latest checkpoint")
    parser.add_argument("--text-model", choices=TEXT_MODELS, default="use-m")
    parser.add_argument("--tokenizer", type=Path, default=None, help="sentencepiece .model (required for tiny)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (default: --epochs epochs)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the projection and temperature")
    parser.add_argument("--encoder-lr", type=float, default=1e-4, help="learning rate of unfrozen encoder layers")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=-1, help="linear warm-up steps (default: 5%% of steps)")
    parser.add_argument("--hard-negatives", type=float, default=0.25, help="share of each batch mined as hard negatives")
    parser.add_argument("--freeze-layers", type=int, default=-1,
                        help="freeze the N lowest encoder layer groups (-1: the whole encoder; 0: train all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda trains with mixed precision")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/checkpoints")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out for recall@k")
    parser.add_argument("--eval", type=Path, default=None, help="labelled datasets folder for zero-shot accuracy")
    parser.add_argument("--eval-gt", type=Path, default=None, help="its ground truth (default: EVAL/gt.json)")
    parser.add_argument("--cache", type=Path, default=None, help="image cache folder (default: OUT/cache)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the stages; the report goes to OUT/report.json (and the log), stdout stays clean."""
    args = parse_args(build_parser(), argv)
    run = prepare(args)
    if run is None:
        return 0
    summary: Dict[str, Any] = {}
    if args.stage in ("all", "train"):
        summary = train(run, resume=args.resume)
    else:
        path = latest_checkpoint(run.out)
        if path is None:
            raise FileNotFoundError(f"{checkpoint_dir(run.out)}: no checkpoint; train first (--stage train)")
        state = load_checkpoint(run, path)
        summary = {"steps": state["step"]}
        if args.stage == "evaluate":
            run.history.append({"step": state["step"], **evaluate(run)})
    if args.stage in ("all", "export"):
        summary["model"] = str(export_model(run, summary))
    report = {"config": asdict(run.cfg), "history": run.history,
              **{k: v for k, v in summary.items() if k != "losses"}}
    (run.out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    logger.info("report %s", run.out / "report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
