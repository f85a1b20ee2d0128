"""Splitting a data set's positions among the processes of a data-parallel run.

Rank ``r`` of ``W`` reads positions ``r, r + W, r + 2W, ...`` of the epoch's order (the layout
of :class:`torch.utils.data.DistributedSampler`):

* training shards are *padded* — the order is extended by its own first positions to a multiple
  of ``W`` — so every rank gets ``ceil(n / W)`` samples, the same number of batches, and the
  collectives of every step pair up (a few samples are seen twice per epoch when ``W`` does not
  divide ``n``, as with ``DistributedSampler``);
* evaluation shards are *exact*: disjoint, together exactly the split, so sums gathered over
  the ranks equal those of one process (ranks may then differ by one sample).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import Sampler

from helper.errors import UserError


@dataclass(frozen=True)
class Shard:
    """The part of a split that process ``rank`` of ``world_size`` reads (see module doc)."""

    rank: int = 0
    world_size: int = 1
    pad: bool = True  # equal shard sizes (training) or an exact split (evaluation)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise UserError(f"invalid data shard: rank {self.rank} of {self.world_size} processes")

    def size(self, n: int) -> int:
        """Number of positions this rank reads out of ``n``."""
        if self.pad:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def positions(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The positions (into an epoch order of length ``n``) this rank reads, int64."""
        total = self.size(n) * self.world_size if self.pad else n
        start = min(self.rank, total)  # an empty shard when there are fewer positions than ranks
        return torch.arange(start, total, self.world_size, device=device) % max(n, 1)


class ShardSampler(Sampler[int]):
    """Indices of one :class:`Shard` of ``range(n)``, in order (evaluation: no shuffling)."""

    def __init__(self, n: int, shard: Shard) -> None:
        self.n = int(n)
        self.shard = shard

    def __len__(self) -> int:
        return self.shard.size(self.n)

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard.positions(self.n).tolist())
