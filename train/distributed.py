"""Training on several processes (``torchrun``): the process group, each process's share of a list, and the
collectives the text tower's trainer and the image cache need.

:func:`start` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group:
gloo when training on the CPU, nccl on GPUs (each process on ``cuda:LOCAL_RANK``).
Without that environment (or with one process) it returns :data:`SINGLE` and
nothing is initialised: every method below is then the identity or a no-op, so a
plain run does exactly what it did before this module existed.

Shares are contiguous and in rank order (the first ``n % world`` processes get one
item more), so concatenating every process's share gives the list back in order:
N processes with a global batch of B pairs train on the same B pairs, in the same
order, as one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Mapping, Optional, Sequence

import torch
import torch.distributed as tdist

logger = logging.getLogger(__name__)

# how long a collective waits for the slowest process (torch's defaults: 30 min gloo, 10 min nccl); the image
# cache's shards are embedded between two collectives, and on a large input they finish minutes apart
TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: str = "cpu"            # where collectives' tensors live: cpu (gloo) or cuda (nccl)

    @property
    def active(self) -> bool:
        """True with more than one process (a process group is initialised)."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on rank 0: the process that logs, evaluates, writes checkpoints, the report and the export."""
        return self.rank == 0

    def shares(self, n: int) -> List[int]:
        """How many of ``n`` items each rank takes, in rank order (sizes differ by at most one)."""
        return [n // self.world + (1 if r < n % self.world else 0) for r in range(self.world)]

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``range(n)``."""
        sizes = self.shares(n)
        start = sum(sizes[:self.rank])
        return slice(start, start + sizes[self.rank])

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.active:
            tdist.barrier()

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process (e.g. one of them was interrupted)."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
        return bool(value.item())

    def gather_rows(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Every rank's rows of ``x`` (this rank's (sizes[rank], ...)), concatenated in rank order.

        Differentiable: see :class:`_GatherRows` for the gradient. The identity with one process.
        """
        if not self.active:
            return x
        if x.shape[0] != sizes[self.rank]:
            raise ValueError(f"rank {self.rank}: {x.shape[0]} rows, expected {sizes[self.rank]}")
        return _GatherRows.apply(x, list(sizes), self.rank)


SINGLE = Dist()


class _GatherRows(torch.autograd.Function):
    """All-gather rows with a gradient, for a loss that every process computes over the global batch.

    Forward: the ranks' rows (padded to the longest share for ``all_gather``) concatenated in rank
    order. Backward: the gradient of the gathered tensor is summed over the processes and each
    keeps its own rows. Every process computes the same global loss L, so this rank's rows get
    N x dL/d(rows); DistributedDataParallel then averages parameter gradients over the N
    processes, which gives exactly dL/d(parameter), as one process on the whole batch would.
    Parameters used outside the gathered rows (the temperature) get dL/dp on every process, and
    the average keeps it. No gradient is lost or counted twice, whatever the share sizes.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: List[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        tdist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        total = grad.contiguous().clone()
        tdist.all_reduce(total)
        start = sum(ctx.sizes[:ctx.rank])
        return total[start:start + ctx.sizes[ctx.rank]], None, None


def from_env(env: Optional[Mapping[str, str]] = None) -> Dist:
    """This process's Dist from torchrun's variables; :data:`SINGLE` when ``WORLD_SIZE`` is unset or 1."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    missing = [k for k in ("RANK", "LOCAL_RANK") if k not in env]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: start several processes with torchrun")
    return Dist(int(env["RANK"]), world, int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", "1")))


def start(device: str) -> Dist:
    """Join torchrun's process group (gloo for ``device`` cpu, nccl for cuda, on ``cuda:LOCAL_RANK``).

    Returns :data:`SINGLE`, initialising nothing, when this is the only process.
    """
    found = from_env()
    if not found.active:
        return SINGLE
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device")
        torch.cuda.set_device(found.local_rank)
        tdist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", found.local_rank))
    else:
        tdist.init_process_group("gloo", timeout=TIMEOUT)
    dist = Dist(found.rank, found.world, found.local_rank, found.local_world, "cuda" if device == "cuda" else "cpu")
    logger.info("process %d of %d (local %d of %d), backend %s", dist.rank, dist.world, dist.local_rank,
                dist.local_world, tdist.get_backend())
    return dist


def stop(dist: Dist) -> None:
    """Leave the process group ``start`` joined (a no-op for one process)."""
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()
