"""‖v_i‖² per sample: the quantity every kinetic energy in kinetic_fm is made of.

It sits at the package root, below every layer, because the solvers (``sampling``), the guided
field's part energies (``fields.guidance``) and the diffusers scheduler (``integrations``) must
all measure a velocity the same way: summed over all coordinates (not averaged), in float64.
``kinetic_fm.sampling.energy`` re-exports it.

A sample's energy must not depend on its batch (ARCHITECTURE §3), and so not on how a row's
sum is ordered. ATen sums a row on one thread while the reduction holds at most its grain size
(32,768 values); beyond it, with few rows, it splits rows across threads, and the order then
depends on the batch size and the thread count (``torch.linalg.vecdot`` and ``pow(2).mean`` of
3 × 128 × 128 rows differed in the last bits between a batch of 8 and one sample at two threads).
:func:`row_dot` and :func:`row_mean_square` sum longer rows in fixed blocks of half that size and
then across the blocks; rows up to it are summed whole, as before.
"""
from __future__ import annotations

import torch


def squared_norm(v: torch.Tensor) -> torch.Tensor:
    """‖v_i‖² per sample in float64, shape (B,); computed in float64 so large values do not overflow."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1, dtype=torch.float64).square()


_GRAIN = 32_768          # ATen's internal::GRAIN_SIZE: no reduction of at most this many values is split
_BLOCK = _GRAIN // 2


def _blockwise(flat: torch.Tensor, reduce) -> torch.Tensor:
    """``reduce`` (a last-axis sum) of each (B, D) row, taken over blocks of ``_BLOCK`` values and
    then across the blocks, so no single reduction is long enough to be split across threads."""
    batch, dim = flat.shape
    whole = dim - dim % _BLOCK
    total = reduce(flat[:, :whole].reshape(batch, whole // _BLOCK, _BLOCK)).sum(dim=1)
    return total + reduce(flat[:, whole:]) if whole < dim else total


def row_dot(flat: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) Σ_j flat[i, j]² of (B, D) rows in their dtype (``out``: a (B,) buffer of that dtype),
    the same bits for a row in any batch and at any thread count."""
    if flat.shape[1] <= _GRAIN:
        return torch.linalg.vecdot(flat, flat, out=out)
    total = _blockwise(flat, lambda a: torch.linalg.vecdot(a, a))
    return total if out is None else out.copy_(total)


def row_mean_square(flat: torch.Tensor) -> torch.Tensor:
    """(B,) mean of flat[i, :]² of (B, D) rows in their dtype, batch- and thread-invariant as
    :func:`row_dot`."""
    if flat.shape[1] <= _GRAIN:
        return flat.pow(2).mean(dim=1)
    return _blockwise(flat, lambda a: a.pow(2).sum(dim=-1)) / flat.shape[1]
