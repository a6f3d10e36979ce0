"""Per-sample initial noise: one random generator per seed (EDM-style)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..checks import SEED_LIMIT, SEED_NOTE, check_device, is_integer


def noise(
    seeds: Iterable[int] | torch.Tensor,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *shape); row i depends on ``seeds[i]`` only.

    ``seeds`` are integers in [0, 2**32) (torch's generator keeps 32 bits of a seed): a list,
    range, generator, NumPy array or 1-D tensor (at least one). ``shape`` is one sample's shape, a sequence of positive integers.
    ``dtype`` a floating torch dtype; ``device`` where the result goes (None: the CPU).
    ValueError names a bad seed, dimension, dtype or device; TypeError a seeds or shape that is no sequence.

    Each row is drawn on the CPU from ``torch.Generator().manual_seed(seeds[i])`` in float64 and
    cast, so the same seed gives the same noise in any batch, on any device and world size.
    """
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be a sequence of integers, got {seeds!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed (got an empty sequence)")
    for s in seeds:
        if not (is_integer(s) and 0 <= s < SEED_LIMIT):
            raise ValueError(f"seeds must be integers in [0, 2**32) ({SEED_NOTE}), got {s!r}")
    seeds = [int(s) for s in seeds]
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable) or not all(is_integer(d) for d in shape):
        raise TypeError(f"shape must be a sequence of integers (one sample's shape), got {shape!r}")
    shape = tuple(int(d) for d in shape)
    if any(d < 1 for d in shape):
        raise ValueError(f"shape must have positive dimensions, got {shape}")
    check_float_dtype(dtype)
    target = check_device(device)
    if target is not None and target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device")
    gen = torch.Generator(device="cpu")
    rows = []
    for s in seeds:
        gen.manual_seed(s)
        rows.append(torch.randn(shape, device="cpu", generator=gen, dtype=torch.float64))
    return torch.stack(rows).to(dtype=dtype, device=target)


def check_float_dtype(dtype, name: str = "dtype") -> None:
    """ValueError unless ``dtype`` is a real floating torch dtype (noise and grids are real numbers)."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{name} must be a floating torch dtype such as torch.float32, got {dtype!r}")
