"""CelebA aligned faces with the paper's preprocessing: centre crop, resize, grayscale, centring."""
from __future__ import annotations

import os
from typing import Sequence

from torch import Tensor

from .images import ImageDataset, check_sides, load_image_folder

CENTERING = ("pixel", "global", "none")


def load_celeba(
    path: str | os.PathLike,
    *,
    n: int | None = None,
    indices: Sequence[int] | Tensor | None = None,
    seed: int = 0,
    size: int | None = 32,
    crop: int | None = 140,
    grayscale: bool = True,
    center: str = "pixel",
    progress: bool = False,
) -> ImageDataset:
    """Aligned CelebA JPEGs (178x218) from a folder or zip, preprocessed as in the paper.

    Each image is converted to grayscale (8-bit, PIL's "L"), centre-cropped to ``crop`` x ``crop``,
    resized to ``size`` x ``size`` (bicubic), mapped to [-1, 1], and centred by the mean of the
    loaded (training) images. (Grayscale before resizing: the other order rounds the resized
    colour image first, up to 5.9/255 apart.) Files are taken in name order;
    ``n``/``indices``/``seed`` select the training subset (the paper uses n = 1024) before decoding.

    Args:
        size, crop: output side and centre-crop side in pixels; None keeps the files' size (no
            resize) or the whole image (no crop).
        center: "pixel" subtracts the per-pixel mean image, "global" one scalar mean, "none" nothing.

    Returns:
        :class:`ImageDataset` of (N, 1, size, size) float32 (3 channels if ``grayscale=False``);
        ``mean`` (C, size, size) holds what was subtracted (undo with :meth:`ImageDataset.to_unit`).
        Labels are None.

    The mean is the loaded subset's own, so one face's values depend on the subset: the
    ``celeba:PATH`` spec (``kfm memorization --train celeba:PATH``) loads every face and centres by
    their mean. On the shared 6,000 faces an n = 1000 subset's mean is 0.33 (L2) from theirs, so
    its copies sit that far from their faces there (``kfm memorization`` warns of such a common
    offset); move samples across with ``x + subset.mean - whole.mean``.

    Raises:
        ValueError: ``center`` is not one of "pixel", "global", "none"; ``size`` or ``crop`` is
            neither None nor an integer >= 1; as :func:`load_image_folder` raises (``path`` neither
            a folder nor a zip, an image that cannot be read or is smaller than ``crop``, images of
            different sizes with ``size`` None); ``n``, ``indices`` or ``seed`` as
            :func:`~kinetic_fm.data.subset.select_indices` refuses them.
        FileNotFoundError: ``path`` does not exist or holds no image files.
    """
    if center not in CENTERING:
        raise ValueError(f"center must be one of {CENTERING}, got {center!r}")
    check_sides(crop=crop, size=size)  # size=None failed as "'<' not supported between NoneType and int"
    ds = load_image_folder(path, size=size, crop=crop, grayscale=grayscale, labels_from_folders=False,
                           n=n, indices=indices, seed=seed, progress=progress)
    if center == "none":
        return ds
    x = ds.images.double()
    mean = x.mean(dim=0) if center == "pixel" else x.mean().expand(x.shape[1:])
    mean = mean.float().contiguous()
    return ImageDataset((ds.images - mean).contiguous(), None, None, ds.source, mean, ds.indices, ds.lossy)
