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

    Raises:
        ValueError: ``n``, ``indices`` or ``seed`` as :func:`~kinetic_fm.data.subset.select_indices`
            refuses them (``TooFewItemsError`` for n > 1,797).
        ImportError: scikit-learn, which ships the digits, is not installed or fails to import.
    """
    pixels, digits = _digits_table()
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    labels = torch.as_tensor(digits, dtype=torch.int64)
    chosen = select_indices(images.shape[0], n=n, indices=indices, seed=seed)
    return ImageDataset(images[chosen].contiguous(), labels[chosen], DIGIT_CLASSES,
                        "scikit-learn digits (8x8)", indices=chosen)


def _digits_table():
    """(1797, 64) raw intensities and (1797,) digits, read from the CSV scikit-learn ships.

    Importing ``sklearn.datasets`` to read it costs about 2 s, a tenth of ``kfm reproduce --tiny``;
    the file is found without importing scikit-learn, and its loader is the fallback should the
    file ever move.
    """
    import importlib.util
    from pathlib import Path

    import numpy as np

    from ..optional import import_failure, installed, optional_names

    user = "load_digits"
    if not installed("sklearn"):
        raise import_failure("sklearn", ModuleNotFoundError("No module named 'sklearn'", name="sklearn"), user)
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        table = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if table.is_file():
            data = np.loadtxt(table, delimiter=",")
            return data[:, :-1], data[:, -1].astype(np.int64)
    (sklearn_load_digits,) = optional_names("sklearn.datasets", user, "load_digits")
    bunch = sklearn_load_digits()
    return bunch.data, bunch.target
