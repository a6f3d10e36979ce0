"""CIFAR-10 from the official python pickle batches (a folder or the tarball), an image-folder tree, or a
ConvNetJS sprite.

All loaders return (N, 3, 32, 32) float32 images in [-1, 1] with labels 0..9 in the standard
class order (:data:`CIFAR10_CLASSES`).
"""
from __future__ import annotations

import os
import pickle
import re
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..checks import optional_integer
from .images import ImageDataset, load_image_folder, uint8_to_signed
from .subset import select_indices

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# The official batches are pickles of numpy arrays; only the globals needed to rebuild those are
# allowed, so a tampered file cannot run code when it is read.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One official CIFAR-10 python batch -> (images (N, 32, 32, 3) uint8, labels (N,) int64).

    The file is unpickled with an allow-list of numpy globals only; anything else is refused.

    Raises:
        FileNotFoundError: ``path`` does not exist (other failures to open it, such as a file you
            may not read, raise Python's OSError).
        ValueError: naming the file, when it is a folder (``load_cifar10`` reads a batches folder)
            or no CIFAR-10 batch: not a pickle, a pickle holding globals outside the allow-list, no
            dict of 'data' (N, 3072) and 'labels' (N integers in 0..9).
    """
    path = Path(path)
    if path.is_dir():  # open() said only "[Errno 21] Is a directory"
        raise ValueError(f"path {path} is a folder; expected one CIFAR-10 python batch file (data_batch_1 .. 5, "
                         "test_batch): load_cifar10 reads a batches folder")
    try:
        with open(path, "rb") as fh:
            return _read_batch(fh, str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"CIFAR-10 batch not found: {path}") from None


def _read_batch(fh, path: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_cifar_batch` of an open binary file; ``path`` names it in errors."""
    try:
        batch = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise ValueError(f"{path}: expected keys 'data' (N x 3072 uint8 array) and 'labels'")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{path}: 'labels' must be {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _batches_folder(path: Path) -> Path | None:
    """The folder of python batches that ``path`` is or holds (torchvision's root and an unpacked
    tarball hold ``cifar-10-batches-py``), or None: one with any batch file in it, so that a
    missing one is named rather than the folder read as an image tree."""
    for folder in (path, path / "cifar-10-batches-py"):
        if folder.is_dir() and any((folder / name).is_file() for names in _BATCHES.values() for name in names):
            return folder
    return None


def _is_tarball(path: Path) -> bool:
    """Whether ``path`` is a tar archive (the official ``cifar-10-python.tar.gz``), not a zip."""
    return path.is_file() and not zipfile.is_zipfile(path) and tarfile.is_tarfile(path)


def _tarball_batches(path: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``split``'s python batches read from a tar archive in one pass (a .tar.gz cannot seek
    back without decompressing again), in :data:`_BATCHES` order; FileNotFoundError naming the
    missing ones."""
    wanted, found = set(_BATCHES[split]), {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and name not in found:
                    found[name] = _read_batch(tar.extractfile(member), f"{path}:{member.name}")
            # a compressed archive's checksum (gzip's CRC-32) is checked only once its stream is read to
            # the end, past the end-of-archive blocks where tarfile stops: a flipped bit in stored
            # (incompressible) pixel data loaded without a word
            while tar.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:  # zlib.error: damaged deflate data
        raise ValueError(f"{path}: cannot read the tar archive ({err})") from None
    missing = [name for name in _BATCHES[split] if name not in found]
    if missing:
        raise FileNotFoundError(f"{path}: a CIFAR-10 python batches archive without the {split} split's "
                                f"{', '.join(missing)}")
    return [found[name] for name in _BATCHES[split]]


def load_cifar10(
    path: str | os.PathLike,
    split: str = "train",
    *,
    n: int | None = None,
    indices: Sequence[int] | Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ImageDataset:
    """CIFAR-10 from a folder of python batches, or a folder/zip of ``<split>/<class>/*.png|jpg``.

    Args:
        path: the ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``) or the
            official ``cifar-10-python.tar.gz`` holding it, or a folder or zip holding
            ``train/<class>/...`` and ``test/<class>/...`` images.
        split: "train" or "test".
        n, indices, seed: subset selection, applied before decoding. Positions index the
            source's own order: the official order for python batches, the sorted
            ``<class>/<file>`` listing for an image tree, so the same ``n``/``seed``/``indices``
            select different images from different sources.

    Returns:
        :class:`ImageDataset` of (N, 3, 32, 32) in [-1, 1], labels in :data:`CIFAR10_CLASSES` order.

    Raises:
        ValueError: ``split`` is neither "train" nor "test"; ``path`` is none of the sources above;
            a batch or the tar archive is damaged (:func:`read_cifar_batch`); an image tree has
            files beside its class folders, class folders other than the 10 classes, images that
            are not 32x32 RGB or cannot be decoded; ``n``, ``indices`` or ``seed`` as
            :func:`~kinetic_fm.data.subset.select_indices` refuses them.
        FileNotFoundError: ``path`` does not exist; the batches (folder or archive) lack one of
            the split's; an image tree holds no images under ``<split>/``.
    """
    if split not in _BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 not found at {path} (expected a batches folder or its .tar.gz, "
                                "an image folder or a zip)")
    batches = _batches_folder(path)
    if batches is None and _is_tarball(path):
        batches, parts = path, _tarball_batches(path, split)
    elif batches is not None:
        missing = [name for name in _BATCHES[split] if not (batches / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{batches}: a CIFAR-10 python batches folder without the {split} split's "
                                    f"{', '.join(missing)}")
        parts = [read_cifar_batch(batches / name) for name in _BATCHES[split]]
    if batches is not None:
        images = np.concatenate([p[0] for p in parts])
        labels = torch.as_tensor(np.concatenate([p[1] for p in parts]))
        chosen = select_indices(images.shape[0], n=n, indices=indices, seed=seed)
        return ImageDataset(uint8_to_signed(images[chosen.numpy()]), labels[chosen], CIFAR10_CLASSES,
                            str(batches), indices=chosen)
    if not (path.is_dir() or zipfile.is_zipfile(path)):
        raise ValueError(f"{path}: expected a CIFAR-10 batches folder or its .tar.gz, an image folder or a zip")
    try:
        ds = load_image_folder(path, subdir=split, n=n, indices=indices, seed=seed, progress=progress,
                               check_listing=lambda pairs: _check_class_folders(pairs, path, split))
    except FileNotFoundError as err:  # no <split>/ tree: ConvNetJS sprites there are named, with what reads them
        sprites = _sprite_names(path)
        if not sprites:
            raise
        more = f" and {len(sprites) - 1} more" if len(sprites) > 1 else ""
        raise FileNotFoundError(
            f"{err}; it holds ConvNetJS CIFAR-10 sprite PNGs ({sprites[0]}{more}), which load_cifar10 (cifar10:) "
            f"does not read: load one with kinetic_fm.data.load_cifar10_sprite, or write its images once as a "
            f"{split}/<class>/<image> tree (README, \"Data, small velocity nets and flow-matching training\")"
        ) from None
    if ds.shape != (3, 32, 32):
        raise ValueError(f"{path}/{split}: images are {ds.shape}, expected (3, 32, 32)")
    return ds


def _sprite_names(path: Path) -> list[str]:
    """The files of the folder or zip ``path`` (or of one folder wrapping its contents, as an image
    tree may be wrapped) named as ConvNetJS names its CIFAR-10 sprites, ``cifar10_batch_<k>.png``."""
    from .images import ImageSource

    with ImageSource(path) as source:
        return [name for name in source.names
                if name.count("/") <= 1 and re.fullmatch(r"cifar10_batch_\d+\.png", name.rsplit("/", 1)[-1])]


def _check_class_folders(pairs: list[tuple[str, str]], path: Path, split: str) -> None:
    """ValueError unless the tree's ``<split>/<class>/<image>`` files (``pairs`` of file and path
    under ``split``) sit in the 10 CIFAR-10 class folders, told from the listing before any image
    is decoded (it was told after decoding all 50,000, and a stray ``train/preview.png`` was not named)."""
    loose = [name for name, relative in pairs if "/" not in relative]
    if loose:
        raise ValueError(f"{path}/{split}: {loose[0]} lies beside the class folders ({len(loose)} such "
                         f"file{'s' if len(loose) > 1 else ''}); expected {split}/<class>/<image> for the 10 "
                         f"CIFAR-10 classes {CIFAR10_CLASSES}")
    classes = tuple(sorted({relative.split("/")[-2] for _, relative in pairs}))  # each file's folder, as labelled
    if classes != CIFAR10_CLASSES:
        odd = [f"{c!r} is not one" for c in classes if c not in CIFAR10_CLASSES]
        odd += [f"{c!r} is missing" for c in CIFAR10_CLASSES if c not in classes]
        raise ValueError(f"{path}/{split}: class folders {classes} are not the 10 CIFAR-10 classes {CIFAR10_CLASSES}: "
                         + ", ".join(odd))


def item_files(path: str | os.PathLike, split: str, indices: Tensor) -> list[str] | None:
    """The image file of each item :func:`load_cifar10` loaded from an image tree at ``indices``
    (its dataset's ``indices``), as paths relative to ``path`` (``train/cat/0001.jpg``); None for
    python batches, whose items have no name beyond their position in the split."""
    from .images import image_names

    if split not in _BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if _batches_folder(Path(path)) is not None or _is_tarball(Path(path)):
        return None
    files = image_names(path, subdir=split)
    return [files[i] for i in indices.tolist()]


def load_cifar10_sprite(
    sprite: str | os.PathLike,
    labels_file: str | os.PathLike | None = None,
    *,
    label_offset: int | None = None,
) -> ImageDataset:
    """Images from a ConvNetJS CIFAR-10 sprite PNG (row r = image r, 1024 pixels of 32x32 RGB).

    Args:
        sprite: the PNG, e.g. ``cifar10_batch_50.png`` (1000 rows x 1024 columns, RGB).
        labels_file: optional text file with one integer label per line.
        label_offset: line of ``labels_file`` holding the first row's label. None (default):
            1000·k for a sprite named ``cifar10_batch_<k>.png`` (ConvNetJS's batch k holds images
            1000k.., and the test sprite ``cifar10_batch_50.png`` line 50000 of
            ``cifar10_labels_51000.txt``), else 0. An offset of 0 gave the test sprite the
            training labels: ResNet-56 read 9.8 % accurate for 92.6 %.

    Raises:
        ValueError: ``label_offset`` is not None or an integer >= 0; the sprite is not 1024 pixels
            wide; ``labels_file`` holds fewer labels than the rows from ``label_offset`` on, or a
            label that is not an integer in 0..9; the sprite is a folder or no image Pillow can
            read; ``labels_file`` is a folder or no text.
        FileNotFoundError: the sprite does not exist; ``labels_file`` does not.
    """
    from PIL import Image

    sprite = Path(sprite)
    if label_offset is None:
        numbered = re.fullmatch(r"cifar10_batch_(\d+)\.png", sprite.name)
        label_offset = 1000 * int(numbered.group(1)) if numbered else 0
    label_offset = optional_integer("label_offset", label_offset, 0)  # "0" was a TypeError
    lines = None if labels_file is None else _label_lines(Path(labels_file))  # checked before the sprite's decoding
    if sprite.is_dir():
        raise ValueError(f"sprite {sprite} is a folder; expected a ConvNetJS CIFAR-10 sprite PNG")
    if not sprite.is_file():
        raise FileNotFoundError(f"sprite not found: {sprite}")
    try:
        with Image.open(sprite) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except PermissionError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"sprite {sprite} is not an image Pillow can read ({err}); expected a ConvNetJS "
                         "CIFAR-10 sprite PNG (one 32x32 RGB image per row of 1024 pixels)") from None
    if array.shape[1] != 1024:
        raise ValueError(f"{sprite}: sprite is {array.shape[1]} pixels wide, expected 1024 (32x32 per row)")
    images = array.reshape(array.shape[0], 32, 32, 3)
    labels = None
    if lines is not None:
        if label_offset < 0 or label_offset + len(images) > len(lines):
            raise ValueError(f"{labels_file}: has {len(lines)} labels; rows {label_offset}.."
                             f"{label_offset + len(images) - 1} requested")
        read = lines[label_offset: label_offset + len(images)]
        for line, text in enumerate(read, start=label_offset + 1):
            if not (text.lstrip("-").isdigit() and 0 <= int(text) <= 9):
                shown = text if text.lstrip("-").isdigit() else repr(text)
                raise ValueError(f"{labels_file}: labels must be integers in 0..9, found {shown} at line {line}")
        labels = torch.tensor([int(v) for v in read], dtype=torch.int64)
    return ImageDataset(uint8_to_signed(images), labels, CIFAR10_CLASSES, str(sprite))


def _label_lines(labels_file: Path) -> list[str]:
    """The whitespace-separated words of ``labels_file``; errors name the argument and what it should be."""
    expected = "a text file with one integer label (0..9) per line"
    if labels_file.is_dir():
        raise ValueError(f"labels_file {labels_file} is a folder; expected {expected}")
    if not labels_file.is_file():
        raise FileNotFoundError(f"labels_file not found: {labels_file} (expected {expected})")
    try:
        return labels_file.read_text().split()
    except UnicodeDecodeError as err:   # a binary file, e.g. the sprite itself given for its labels
        raise ValueError(f"labels_file {labels_file} is not text ({err.reason} at byte {err.start}); "
                         f"expected {expected}") from None
