"""MNIST from the standard IDX files (``train-images-idx3-ubyte[.gz]`` and friends)."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .digits import DIGIT_CLASSES
from .images import ImageDataset, uint8_to_signed
from .subset import select_indices

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip or raw) into a uint8 array.

    gzip is told by the file's first two bytes (1f 8b), not its name: a browser that unpacks
    ``….gz`` may keep the name.

    Raises:
        ValueError: naming the file, when it cannot be read (missing, a folder, damaged gzip data)
            or its magic number, header or length is wrong.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        packed = data[:2] == GZIP_MAGIC
        if packed:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: cannot read IDX file ({err})") from None
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raw = (f"not gzip-compressed (it does not start with {GZIP_MAGIC.hex(' ')}); read as a raw IDX file: "
               if path.suffix == ".gz" and not packed else "")
        raise ValueError(f"{path}: {raw}IDX magic number {magic} (0x{magic:08x}), expected {expected_magic} "
                         f"(0x{expected_magic:08x})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise ValueError(f"{path}: IDX header says {dims} = {size} bytes of data, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    """The IDX file ``stem`` (gzip or raw, ``-idx`` or ``.idx`` spelling) in ``root``, or in
    ``root/MNIST/raw`` where torchvision.datasets.MNIST(root) keeps it."""
    for folder in (root, root / "MNIST" / "raw"):
        for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {root} (nor in its MNIST/raw, torchvision's layout)")


def load_mnist(
    root: str | os.PathLike,
    split: str = "train",
    *,
    n: int | None = None,
    indices: Sequence[int] | Tensor | None = None,
    seed: int = 0,
) -> ImageDataset:
    """MNIST as (N, 1, 28, 28) float32 in [-1, 1] (0 = background = -1) with labels 0..9.

    Args:
        root: folder holding the IDX files, gzip-compressed or raw (or torchvision's root, which
            holds them in ``MNIST/raw``).
        split: "train" (60,000 images) or "test" (10,000).
        n, indices, seed: subset selection (see :func:`~kinetic_fm.data.subset.select_indices`).

    Raises:
        ValueError: ``split`` is neither "train" nor "test"; ``root`` is a file; an IDX file is
            damaged (:func:`read_idx`); the images and labels differ in number or a label exceeds 9;
            ``n``, ``indices`` or ``seed`` as :func:`~kinetic_fm.data.subset.select_indices` refuses them.
        FileNotFoundError: ``root`` does not exist, or holds the split's IDX files neither itself
            nor in ``MNIST/raw``.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if root.is_file():  # "not found" misled when the path exists
        raise ValueError(f"{root} is a file; MNIST is read from the folder holding its IDX files "
                         "(train-images-idx3-ubyte[.gz] and the rest)")
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {root}")
    image_path = _find(root, _FILES[split][0])
    label_path = _find(image_path.parent, _FILES[split][1])  # the labels beside their images
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: labels must be 0..9, found {int(labels.max())}")
    chosen = select_indices(images.shape[0], n=n, indices=indices, seed=seed)
    pick = chosen.numpy()
    return ImageDataset(uint8_to_signed(images[pick]), torch.as_tensor(labels[pick], dtype=torch.int64),
                        DIGIT_CLASSES, str(image_path), indices=chosen)
