"""Data-parallel training under torchrun: who this process is, and its part of each batch.

`vaejam train` run by `torchrun --nproc-per-node N` (nodes and rendezvous set by torchrun) joins
the process group torchrun describes in its environment: gloo on CPU, nccl on CUDA, one GPU per
process (LOCAL_RANK). Every rank draws the same global batches (same seeds); `Dist.part` gives a
rank its contiguous share of each, and `RankPart` lets the loss be exactly the one-process loss:
the reparameterisation noise is drawn for the whole batch on every rank and sliced, the VAEs'
pixel variance is averaged over all ranks, and each rank's loss is scaled so that DDP's mean
of the gradients is the gradient of the mean over the global batch. One process (no torchrun) is
the same code with world 1.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(hours=2)  # rank 0 writes checkpoints while the others wait


@dataclass(frozen=True)
class RankPart:
    """This rank's rows [lo, hi) of a global batch of `total` rows. A rank left without rows (a last
    batch smaller than the world) reads row 0 with weight 0, so it still joins every collective."""

    lo: int
    hi: int
    total: int
    world: int
    weight: float  # 1, or 0 for the stand-in row of a rank without rows

    @property
    def rows(self) -> slice:
        return slice(self.lo, self.hi)

    def batch_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-row values over the whole global batch (sums across ranks)."""
        total = values.sum() * self.weight
        if self.world > 1:
            dist.all_reduce(total)
        return total / self.total

    def loss_scale(self) -> float:
        """Factor for the (weighted) sum of this rank's per-row losses: DDP averages gradients over
        the ranks, so world / total makes that average the gradient of the global batch's mean."""
        return self.world / self.total


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run (nccl takes CUDA tensors only)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that reads and writes OUT, logs and shows progress."""
        return self.rank == 0

    def part(self, total: int) -> RankPart:
        lo, hi = self.rank * total // self.world, (self.rank + 1) * total // self.world
        if lo == hi:
            return RankPart(0, 1, total, self.world, 0.0)
        return RankPart(lo, hi, total, self.world, 1.0)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, on the device's backend; returned where the tensor was."""
        if self.world == 1:
            return tensor
        work = tensor.to(self.device)
        dist.all_reduce(work)
        return work.to(tensor.device)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's value on every rank (pickled; for small things: state, config, optimizer moments)."""
        if self.world == 1:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor with rank 0's, in place."""
        if self.world > 1:
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when there is one; the device this rank trains on."""
    if not launched_by_torchrun():
        return Dist(), device
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local)  # one GPU per process, whatever --device named
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    if rank:
        logging.getLogger().setLevel(logging.WARNING)  # one log, rank 0's
    log.info("rank %d of %d (local %d) on %s", rank, world, local, device)
    return Dist(rank, world, local, device), device


def stop(ranks: Dist) -> None:
    """Leave the process group (after the last collective: rank 0 may go on alone)."""
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
