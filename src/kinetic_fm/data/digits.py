"""scikit-learn's bundled 8x8 handwritten digits: the embedded default image set (no files)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .images import ImageDataset
from .subset import select_indices

DIGIT_CLASSES = tuple(str(d) for d in range(10))


def load_digits(*, n: int | None = None, indices: Sequence[int] | Tensor | None = None, seed: int = 0) -> ImageDataset:
    """The 1,797 UCI digits shipped with scikit-learn as (N, 1, 8, 8) float32 in [-1, 1].

    Raw intensities 0..16 map linearly to [-1, 1] (0 = background = -1). Labels are the digits 0..9.
    ``n``, ``indices`` and ``seed`` select a subset (see :func:`~kinetic_fm.data.subset.select_indices`).
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    chosen = select_indices(images.shape[0], n=n, indices=indices, seed=seed)
    return ImageDataset(images[chosen].contiguous(), labels[chosen], DIGIT_CLASSES,
                        "scikit-learn digits (8x8)", indices=chosen)
