"""Time grids on [0, 1] for fixed-step solvers (t = 0 noise, t = 1 data)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..checks import check_integer, torch_readable
from .noise import check_float_dtype

GRIDS = ("uniform", "cosine")


def time_grid(
    grid: str | torch.Tensor | np.ndarray = "uniform",
    steps: int = 100,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Return the (steps + 1,) grid 0 = t_0 < t_1 < ... < t_N = 1 on the CPU.

    ``"uniform"``: t_i = i / N.  ``"cosine"``: t_i = ½(1 − cos(π i / N)), dense at both ends.
    A user tensor or NumPy array is validated (1-D, floating point, starts at 0, ends at 1,
    strictly increasing) and returned with its values as given; ``steps`` must still be an
    integer ≥ 1, as ``kfm.sample`` asks, and is then ignored. ``dtype`` is the result's floating
    dtype (ValueError if rounding to it breaks the increase). The grid stays on the CPU, in
    float64 by default, so step sizes and KTS gains can be precomputed without touching the device.
    """
    check_float_dtype(dtype)
    steps = check_integer("steps", steps, 1)
    if isinstance(grid, np.ndarray):  # copied (a few values): writable and in native byte order
        grid = torch.from_numpy(np.array(torch_readable(grid)))
    if isinstance(grid, torch.Tensor):
        return _still_increasing(validate_grid(grid).to(dtype=dtype, device="cpu"), dtype)
    i = torch.arange(steps + 1, dtype=torch.float64)
    if grid == "uniform":
        t = i / steps
    elif grid == "cosine":
        t = 0.5 * (1.0 - torch.cos(math.pi * i / steps))
        t[0], t[-1] = 0.0, 1.0  # exact end points despite cos rounding
    else:
        raise ValueError(f"grid must be one of {GRIDS} or a 1-D tensor from 0 to 1, got {grid!r}")
    return _still_increasing(t.to(dtype), dtype)


def _still_increasing(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` if rounding to ``dtype`` kept every step positive (5000 float16 steps do not)."""
    if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"the grid of {t.numel() - 1} steps is not strictly increasing in {dtype}; "
                         "use fewer steps or a wider dtype (float64 is the default)")
    return t


def validate_grid(grid: torch.Tensor, name: str = "grid") -> torch.Tensor:
    """Check a user grid and return it (detached, on the CPU); ValueError names the broken rule
    and the argument as ``name`` (``KineticODESolver.sample`` passes "time_grid")."""
    if grid.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(grid.shape)}")
    if grid.numel() < 2:
        raise ValueError(f"{name} must hold at least 2 times (0 and 1), got {grid.numel()}")
    if not torch.is_floating_point(grid):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {grid.dtype}")
    g = grid.detach().to("cpu", torch.float64)
    if not torch.isfinite(g).all():
        raise ValueError(f"{name} must be finite")
    if g[0].item() != 0.0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {as_typed(g[0].item(), grid.dtype)}")
    if g[-1].item() != 1.0:
        raise ValueError(f"{name} must end at 1, got {name}[-1] = {as_typed(g[-1].item(), grid.dtype)}")
    steps = g[1:] - g[:-1]
    if (steps <= 0).any():
        bad = int(torch.nonzero(steps <= 0)[0])
        raise ValueError(
            f"{name} must be strictly increasing, but {name}[{bad + 1}] = {as_typed(g[bad + 1].item(), grid.dtype)} "
            f"<= {name}[{bad}] = {as_typed(g[bad].item(), grid.dtype)}"
        )
    return grid.detach().cpu()


def as_typed(value: float, dtype: torch.dtype) -> str:
    """The shortest decimal that ``dtype`` reads as ``value`` (a float of that dtype), written as
    Python writes a float: 0.7 for a float32 0.7, which float64 prints as 0.699999988079071; 100.0,
    not 1e+02; ``repr(value)`` for float64."""
    for digits in range(1, 18):
        shown = float(f"{value:.{digits}g}")
        if torch.tensor(shown, dtype=dtype).item() == value:
            return repr(shown)
    return repr(value)
