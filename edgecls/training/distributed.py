"""Training in several processes (torch DistributedDataParallel), one machine or many.

`torchrun --nproc_per_node=N -m edgecls train ...` starts N copies of the command; each joins
the process group from torchrun's environment (gloo on CPU, NCCL on GPUs). Rank 0 plans, claims
the run folder, searches the LR and writes every file; the others train their shard of each
batch and wait for it. Decisions that end or change the run (the time budget, a skipped
non-finite batch, early stopping) are taken from numbers every rank agrees on, so no rank stops
alone. `edgecls train ... --nproc N` launches torchrun itself for one machine.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn as distributed_nn
from timm.layers import BatchNormAct2d, convert_sync_batchnorm

from edgecls.data.sampling import Shard
from edgecls.training.launcher import under_torchrun

# Ranks other than 0 wait in a collective while rank 0 searches the LR or writes the final
# report; a rank that dies is noticed by torchrun, which stops the others, not by this timeout.
GROUP_TIMEOUT = timedelta(hours=24)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)

    def share(self, value: T) -> T:
        """Rank 0's `value` (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on every rank."""
        if self.size == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks."""
        if self.size == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return total.item() / self.size

    def share_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of `tensors` copied into them on every rank."""
        if self.size > 1:
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """Rows computed for `shard.rows(total)` on every rank, back in their original order."""
        if self.size == 1:
            return rows
        parts: list[Any] = [None] * self.size
        dist.all_gather_object(parts, rows.cpu())
        gathered = torch.empty(total, *rows.shape[1:], dtype=rows.dtype)
        for rank, part in enumerate(parts):
            gathered[Shard(rank, self.size).rows(total)] = part
        return gathered


SINGLE = World()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def join() -> World:
    """This process's place in the run: torchrun's environment joined as a process group, or a
    world of one."""
    if not under_torchrun():
        return SINGLE
    world = World(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    )
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=GROUP_TIMEOUT)
    return world


def device_of(world: World, device: torch.device) -> torch.device:
    """Each process on a GPU of its own."""
    if world.size > 1 and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def replicate(
    models: Sequence[torch.nn.Module], world: World, device: torch.device, sync_bn: bool
) -> list[torch.nn.Module]:
    """The modules the forward pass runs through: the models themselves in one process,
    DistributedDataParallel wrappers around them (sharing their weights) in several."""
    if world.size == 1:
        return list(models)
    if sync_bn:
        for model in models:
            if device.type == "cuda":  # timm's: its norm + activation layers included
                convert_sync_batchnorm(model)
            else:
                synchronise_batch_norms(model)
    ids = [device.index] if device.type == "cuda" else None
    return [torch.nn.parallel.DistributedDataParallel(m, device_ids=ids) for m in models]


class _SynchronisedStatistics:
    """Batch statistics over every process's part of the batch, for CPU processes (torch's
    SyncBatchNorm runs on GPUs only): per-channel sums all-reduced through torch.distributed.nn,
    which back-propagates through the reduction. Evaluation uses the running statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype)
        sums = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        sums = distributed_nn.all_reduce(sums, group=_statistics_group())
        n = sums[-1]
        mean = sums[:channels] / n
        var = (sums[channels : 2 * channels] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp(min=1), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.bias is not None else 0)
        x = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        if isinstance(self, BatchNormAct2d):  # timm's norm + activation layer
            x = self.act(self.drop(x))
        return x


def synchronise_batch_norms(model: torch.nn.Module) -> None:
    """Every 2-d batch norm of `model` (timm's BatchNormAct2d included) computes its training
    statistics over all processes; names, parameters and checkpoints stay as they are."""
    for module in model.modules():
        kind = type(module)
        if issubclass(kind, torch.nn.BatchNorm2d) and not issubclass(kind, _SynchronisedStatistics):
            module.__class__ = _synchronised(kind)


@functools.cache
def _statistics_group() -> dist.ProcessGroup:
    """A process group of their own for the statistics: DDP reduces gradients asynchronously in
    the default group while the backward pass reduces the statistics' gradients, and two
    streams of collectives in one group can pair up differently in each process."""
    return dist.new_group()


@functools.cache
def _synchronised(kind: type) -> type:
    return type(f"Synchronised{kind.__name__}", (_SynchronisedStatistics, kind), {})


def lost_a_process(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process of the run is gone."""
    if not under_torchrun() or not isinstance(error, RuntimeError):
        return False
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset", "gloo", "NCCL")
    )
