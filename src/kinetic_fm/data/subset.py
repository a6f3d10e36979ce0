"""Deterministic subset selection (e.g. the paper's n = 1024 CelebA training images)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence, TypeVar

import torch
from torch import Tensor

from ..checks import as_scalar, check_integer, check_seed, is_integer, shortened, torch_readable

if TYPE_CHECKING:
    from .images import ImageDataset
    from .synthetic import PointDataset

T = TypeVar("T")


class TooFewItemsError(ValueError):
    """A subset of ``requested`` items asked of a source holding only ``available`` (a ValueError,
    whose text names ``n`` and the range); callers that know which of their settings made ``n``
    (``kfm reproduce``'s n_train + n_heldout) say so instead."""

    def __init__(self, message: str, *, requested: int, available: int):
        super().__init__(message)
        self.requested = requested
        self.available = available


def select_indices(
    total: int,
    *,
    n: int | None = None,
    indices: Sequence[int] | Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """Positions to keep out of ``total`` items, as an (M,) int64 tensor.

    Args:
        total: size of the full set.
        n: keep this many, drawn without replacement by ``seed`` from ``indices`` (or from all),
            returned in increasing order. For one seed, the subset of size n is contained in the
            subset of any larger size, so training-set-size sweeps are nested.
        indices: explicit integer positions in [0, total) (duplicates, floats and bool masks are an
            error: pass a mask's positions, ``np.flatnonzero(mask)``). Without ``n`` they
            are kept in the order given, like indexing an array: item i of the result is
            position ``indices[i]``, so two sets loaded with the same list stay paired.
        seed: seeds the draw of ``n``, an integer in [0, 2**32); the same (total, n, indices, seed)
            always gives the same set.

    With neither ``n`` nor ``indices`` all positions are kept, in order.

    Raises:
        ValueError: ``total`` is negative; ``seed`` is not an integer in [0, 2**32 - 1]; ``indices``
            are no integer positions (text, floats, a bool mask), lie outside [0, total) or repeat
            one; ``n`` is not an integer in [1, available items] (:class:`TooFewItemsError`, a
            ValueError, when it is an integer larger than that).
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    seed = check_seed("seed", seed)  # a negative one aliased seed + 2**64, 2**32 + s seed s
    if indices is None:
        pool = torch.arange(total, dtype=torch.int64)
    else:
        pool = _positions(indices, total)
        if pool.numel() and (int(pool.min()) < 0 or int(pool.max()) >= total):
            raise ValueError(f"indices must lie in [0, {total}), got range [{int(pool.min())}, {int(pool.max())}]")
        if torch.unique(pool).numel() != pool.numel():
            raise ValueError("indices must not contain duplicates")
    if n is not None:
        try:
            n = check_integer("n", n, 1, pool.numel(), note="the available items")
        except ValueError as err:
            number = as_scalar(n)
            if is_integer(number) and number > pool.numel():  # a good integer, just too many
                raise TooFewItemsError(str(err), requested=int(number), available=pool.numel()) from None
            raise
        generator = torch.Generator().manual_seed(seed)
        pool = torch.sort(pool[torch.randperm(pool.numel(), device="cpu", generator=generator)[:n]]).values
    return pool


def _positions(indices: Sequence[int] | Tensor, total: int) -> Tensor:
    """``indices`` as a flat int64 tensor; ValueError naming ``indices`` for what is not integer
    positions: int64 conversion cut 1.9 to position 1 and read a bool mask as positions 0 and 1."""
    try:
        values = torch.as_tensor(torch_readable(indices))
    except (TypeError, ValueError, RuntimeError):  # text, objects: torch's own words named neither
        raise ValueError(f"indices must be integer positions in [0, {total}), "
                         f"got {shortened(repr(indices), 60)}") from None
    if values.dtype == torch.bool:
        raise ValueError("indices must be integer positions, not a bool mask: pass its positions, "
                         "np.flatnonzero(mask) (or mask.nonzero().flatten() for a tensor)")
    if values.numel() and (values.is_floating_point() or values.is_complex()):
        raise ValueError(f"indices must be integer positions in [0, {total}), got float values "
                         f"({values.dtype}, e.g. {values.reshape(-1)[0].item()!r})")
    return values.to(torch.int64).reshape(-1)


def dataset_rows(dataset: ImageDataset | PointDataset) -> Tensor:
    """The (N, ...) tensor of a data set: an :class:`ImageDataset`'s images, a :class:`PointDataset`'s points."""
    return _rows_and_field(dataset)[0]


def _rows_and_field(dataset) -> tuple[Tensor, str]:
    images = getattr(dataset, "images", None)
    return (images, "images") if images is not None else (dataset.points, "points")


def subset(dataset: T, *, n: int | None = None, indices: Sequence[int] | Tensor | None = None, seed: int = 0) -> T:
    """A subset of an :class:`ImageDataset` or :class:`PointDataset` (see :func:`select_indices`): the
    same type, its rows (images, points, labels) those chosen, ``indices`` recording their positions
    in the full set.

    The mean stored by a centred dataset is kept as it is (the training mean of the original set);
    recompute it by loading with the subset arguments if you need the subset's own mean.

    Raises:
        ValueError: ``n``, ``indices`` or ``seed`` as :func:`select_indices` refuses them
            (:class:`TooFewItemsError` when ``n`` exceeds the set's rows).
    """
    data, field = _rows_and_field(dataset)
    chosen = select_indices(int(data.shape[0]), n=n, indices=indices, seed=seed)
    changes = {field: data[chosen]}
    if dataset.labels is not None:
        changes["labels"] = dataset.labels[chosen]
    if getattr(dataset, "indices", None) is not None:
        changes["indices"] = dataset.indices[chosen]
    elif hasattr(dataset, "indices"):
        changes["indices"] = chosen
    return dataclasses.replace(dataset, **changes)
