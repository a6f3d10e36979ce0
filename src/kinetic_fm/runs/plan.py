"""Which seeds go into which shard, and which shards belong to which rank.

A run covers the contiguous seeds ``seed_start, ..., seed_start + n - 1``. Shard ``i`` holds the
``shard_size`` seeds starting at ``seed_start + i * shard_size`` (the last shard may be shorter),
and rank ``r`` of a world of ``P`` processes owns the shards ``i`` with ``i % P == r``. Because
every sample depends on its own seed only, the per-sample results do not depend on ``P``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import SEED_LIMIT, SEED_NOTE


@dataclass(frozen=True)
class ShardPlan:
    """Seeds ``seed_start .. seed_start + n - 1`` cut into shards of ``shard_size`` seeds."""

    seed_start: int
    n: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1 samples, got {self.n}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1 samples, got {self.shard_size}")
        if not 0 <= self.seed_start <= SEED_LIMIT - self.n:
            raise ValueError(f"seed_start must lie in [0, {SEED_LIMIT - self.n}] (0 to 2**32 - n, n being "
                             f"{self.n}: the seeds seed_start .. seed_start + n - 1 stay below 2**32; "
                             f"{SEED_NOTE}), got {self.seed_start}")

    @property
    def count(self) -> int:
        """Number of shards, ``ceil(n / shard_size)``."""
        return -(-self.n // self.shard_size)

    def seeds(self, index: int) -> np.ndarray:
        """The seeds of shard ``index`` as an int64 array of shape (rows,)."""
        if not 0 <= index < self.count:
            raise IndexError(f"shard index must be in [0, {self.count}), got {index}")
        lo = index * self.shard_size
        hi = min(lo + self.shard_size, self.n)
        return np.arange(self.seed_start + lo, self.seed_start + hi, dtype=np.int64)

    def all_seeds(self) -> np.ndarray:
        """Every seed of the run, int64 of shape (n,)."""
        return np.arange(self.seed_start, self.seed_start + self.n, dtype=np.int64)

    def name(self, index: int) -> str:
        """File name of shard ``index``, e.g. ``shard-00012-of-00040.parquet``."""
        width = max(5, len(str(self.count)))
        return f"shard-{index:0{width}d}-of-{self.count:0{width}d}.parquet"

    def for_rank(self, rank: int, world_size: int) -> list[int]:
        """Shard indices owned by ``rank`` (round-robin: shard i -> rank i % world_size)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got {rank}/{world_size}")
        return list(range(rank, self.count, world_size))
