"""How many rows (or columns) one pass over a large float array touches at a time.

Element-wise passes over large arrays (float64 casts, exponentials, masks, gathers) run block by
block. On the CPU a block is at most :data:`CPU_BLOCK_BYTES`: blocks this small stay in the cache
and in glibc's heap, whereas whole-array temporaries are served as fresh mmaps and paid in page
faults. Measured on the 2-core machine of BENCHMARKS.md: the k-NN re-ranking ran 3× slower in
64 MiB blocks than in 4 MiB ones; a float64 copy of a (256, 10,000) EFM logit matrix cost a third
of a GEMM; centring a 16k × 2k reference whole took longer than its GEMMs against 4k queries;
2 and 4 MiB blocks were within noise of each other everywhere. Accelerators have no such cost
and pay per kernel launch instead, so their blocks are as large as :data:`DEVICE_BLOCK_BYTES`,
which only bounds the temporaries' memory.
"""
from __future__ import annotations

import torch

CPU_BLOCK_BYTES = 4 << 20
DEVICE_BLOCK_BYTES = 256 << 20


def block_size(device: torch.device, item_bytes: int, items: int) -> int:
    """How many of ``items`` rows (or columns) of ``item_bytes`` bytes each one block holds on ``device``.

    Returns an int in [1, max(1, items)]: as many as fit the device's byte budget, at least one.
    """
    budget = CPU_BLOCK_BYTES if torch.device(device).type == "cpu" else DEVICE_BLOCK_BYTES
    return max(1, min(items, budget // max(1, item_bytes)))
