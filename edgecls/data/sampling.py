"""How training draws its images: each epoch's order (shuffled or class-balanced) and each
process's share of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def balanced_sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per image, 1 / its class's count: drawn by these, every class is equally likely."""
    counts = torch.bincount(labels).float()
    return 1.0 / counts[labels]


def epoch_order(n: int, generator: torch.Generator, weights: torch.Tensor | None) -> torch.Tensor:
    """A shuffle of the n images, or with `weights` n draws with replacement in proportion
    (balance=sampler); both the batch path and the per-image loader draw their epoch here."""
    if weights is None:
        return torch.randperm(n, generator=generator)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


@dataclass(frozen=True)
class Shard:
    """This process's part of the work when `size` processes train together (rank 0 of 1: all)."""

    rank: int = 0
    size: int = 1

    def rows(self, total: int) -> slice:
        """A contiguous block of `total` rows (a view, even of a memory-mapped split)."""
        per, extra = divmod(total, self.size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (self.rank < extra))

    def batches(self, order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        """The epoch's `order` cut into global batches of `batch_size` x `size` images (the last
        short one dropped unless it is the only one: batch norm needs > 1 sample), and this
        process's slice of each: together the processes train the batches one process would."""
        step = batch_size * self.size
        usable = len(order) if len(order) <= step else len(order) - len(order) % step
        return [
            order[start : start + step].tensor_split(self.size)[self.rank]
            for start in range(0, usable, step)
        ]


WHOLE = Shard()  # one process: all of it
