"""Image datasets: the common container and a loader for any image folder or zip of images.

Every image loader in :mod:`kinetic_fm.data` returns an :class:`ImageDataset` whose ``images`` are
float32 of shape (N, C, H, W) with values in [-1, 1] (pixel value p in 0..255 maps to
p / 127.5 - 1). A loader that centres the data (CelebA) subtracts a per-pixel training mean and
keeps that mean in ``ImageDataset.mean`` so :meth:`ImageDataset.to_unit` can undo it.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..checks import is_integer
from .subset import select_indices

JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")
IMAGE_EXTENSIONS = (".png", *JPEG_EXTENSIONS, ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm")
# ends the refusal of images of two sizes (ImageSizesDiffer); the callers that take no size argument put
# RESIZE_FILES in its place (ImageSizesDiffer.telling_to_resize_files): load_dataset's folder: spec, and the kfm
# commands' folder of images (commands._rows)
RESIZE_ALL = "pass size= to resize all images to one size"
RESIZE_FILES = "resize the files to one size first"


class ImageSizesDiffer(ValueError):
    """Images of two sizes met by :func:`decode_many` without ``size``: the image ``name`` of ``shape``
    (H, W, C) differs from the first one decoded, ``first`` of ``first_shape``, both named as the source
    describes them. The message ends with ``way_out`` (:data:`RESIZE_ALL` unless the raiser gives another);
    each is kept as an attribute of that name."""

    def __init__(self, name: str, shape: tuple[int, ...], first: str, first_shape: tuple[int, ...],
                 way_out: str = RESIZE_ALL):
        super().__init__(f"{name}: image of shape {shape} differs from the first image's {first_shape}; {way_out}")
        self.name, self.shape, self.first, self.first_shape, self.way_out = name, shape, first, first_shape, way_out

    def __reduce__(self):  # the sizes survive pickling (ValueError's would call __init__ with the message alone)
        return type(self), (self.name, self.shape, self.first, self.first_shape, self.way_out)

    def telling_to_resize_files(self) -> "ImageSizesDiffer":
        """The same refusal ending with :data:`RESIZE_FILES`: for a caller whose own caller cannot pass ``size``."""
        return ImageSizesDiffer(self.name, self.shape, self.first, self.first_shape, RESIZE_FILES)


@dataclass(frozen=True)
class ImageDataset:
    """A set of images with optional integer labels.

    Attributes:
        images: (N, C, H, W) float32. In [-1, 1] unless ``mean`` is set, in which case the
            stored values are ``x - mean`` with x in [-1, 1] (so within [-2, 2]).
        labels: (N,) int64 class indices into ``classes``, or None.
        classes: class names (index = label), or None.
        source: where the data came from (file or folder, for messages and reports).
        mean: (C, H, W) float32 per-pixel mean that was subtracted, or None.
        indices: (N,) int64 positions of these images in the full source (after any subset).
        lossy: "JPEG" when the images are JPEG files decoded at their own size, whose compression
            artefacts (CIFAR-10 q75: 5.8/255 mean error) are part of any distance to them; None
            otherwise (lossless files, or resized ones: resizing smooths most artefacts away). A
            loader given ``size`` counts as resizing even where ``size`` is the files' own side
            (no file is opened to compare): pass ``size=None`` to keep the mark.
    """

    images: Tensor
    labels: Tensor | None
    classes: tuple[str, ...] | None
    source: str
    mean: Tensor | None = None
    indices: Tensor | None = None
    lossy: str | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one image, (C, H, W)."""
        return tuple(self.images.shape[1:])

    def to_unit(self, x: Tensor | None = None) -> Tensor:
        """Map images (these, or ``x`` (B, C, H, W) in the same space) back to pixel intensities in [0, 1]:
        (x + mean + 1)/2 clamped, same shape, in x's dtype."""
        x = self.images if x is None else x
        if self.mean is not None:
            x = x + self.mean.to(x)
        return ((x + 1) / 2).clamp(0, 1)


def uint8_to_signed(array: np.ndarray) -> Tensor:
    """(N, H, W, C) or (N, H, W) uint8 -> (N, C, H, W) float32 in [-1, 1]."""
    if array.ndim == 3:
        array = array[..., None]
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    x = torch.from_numpy(array).permute(0, 3, 1, 2)
    # one float tensor, filled from the permuted view: x.to(float32).contiguous() made two
    # (50,000 CIFAR-10 images: 586 MiB more at the peak)
    return torch.empty(x.shape, dtype=torch.float32).copy_(x).div_(127.5).sub_(1.0)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class ImageSource:
    """Read image files from a folder or a zip archive with the same relative paths.

    ``names`` are POSIX-style paths relative to the folder (or archive root), sorted naturally
    (so ``2.png`` comes before ``10.png``); ``zipped`` says whether ``path`` is an archive (told by its
    contents, whatever its name), after :meth:`close` too.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"image source not found: {self.path} (expected a folder or a .zip)")
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}  # name with "/" separators -> the archive's own member name
        if self.path.is_dir():
            names = _folder_images(self.path)
        elif zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            # Windows PowerShell 5 writes "train\cat\0.png", which zipfile turns into "/" on Windows
            # only: elsewhere such a tree read as flat, unlabelled files
            self._members = {n.replace("\\", "/"): n for n in self._zip.namelist()}
            names = [
                n for n in self._members
                if not n.endswith("/") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
            ]
        else:
            raise ValueError(f"{self.path}: expected a folder of images or a zip archive of images")
        self.zipped = self._zip is not None
        # ties of the natural order (1.png, 01.png) by name: the listing order differs between a
        # folder and its zip, and so did the rows and every --n subset
        self.names: list[str] = sorted((n for n in names if not _metadata(n)),
                                       key=lambda n: (_natural_key(n), n))

    def read(self, name: str) -> bytes:
        """The bytes of the file ``name`` (one of :attr:`names`); ValueError when an archive member is
        damaged, encrypted or compressed in a way zipfile cannot read."""
        if self._zip is not None:
            try:
                return self._zip.read(self._members.get(name, name))
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as err:
                # a damaged member (bad CRC), an encrypted one, an unsupported compression
                raise ValueError(f"{self.describe(name)}: cannot be read from the archive ({err})") from None
        return (self.path / name).read_bytes()

    def describe(self, name: str) -> str:
        """Where ``name`` lives, for messages: ``archive.zip:name`` or the file's path."""
        return f"{self.path}:{name}" if self._zip is not None else str(self.path / name)

    def close(self) -> None:
        """Close the archive (nothing to do for a folder); the source is a context manager too."""
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _folder_images(root: Path) -> list[str]:
    """Image files under ``root`` as POSIX paths relative to it, linked folders followed (a tree of
    links to class folders lost those classes under Path.rglob, which does not enter them), a link
    back into its own ancestry walked no further (it would loop); ValueError naming a folder that
    cannot be listed."""
    names = []
    chains = {str(root): (os.path.realpath(root),)}  # each folder's real path and its ancestors'

    def refuse(err: OSError):  # os.walk skipped a folder it could not list: a class lost without a word
        raise ValueError(f"{root}: cannot list {err.filename} ({err.strerror or err})") from None

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=refuse):
        chain = chains.pop(folder)
        keep = []
        for d in dirs:
            real = os.path.realpath(os.path.join(folder, d))
            inside = real.rstrip(os.sep) + os.sep
            if not _metadata(d + "/") and not any(c == real or c.startswith(inside) for c in chain):
                keep.append(d)
                chains[os.path.join(folder, d)] = (*chain, real)
        dirs[:] = keep
        relative = Path(folder).relative_to(root)
        names += [(relative / f).as_posix() for f in files
                  if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, f))]
    return names


def _metadata(name: str) -> bool:
    """Whether ``name`` (a path relative to the folder or archive root) is metadata that carries an
    image's extension: a Finder zip's ``__MACOSX/`` tree, or anything hidden (a part starting with
    "."): AppleDouble ``._name`` files, Jupyter's ``.ipynb_checkpoints/`` copies, ``.thumbnails/``.
    Such a folder was read as a class of its own and its copies as items."""
    parts = name.split("/")
    return "__MACOSX" in parts[:-1] or any(part.startswith(".") and part not in (".", "..") for part in parts)


def decode_image(
    data: bytes,
    *,
    name: str,
    grayscale: bool = False,
    crop: int | None = None,
    size: int | None = None,
) -> np.ndarray:
    """Decode one image file to an (H, W, C) uint8 array.

    An alpha channel (RGBA, LA, a palette or colour key with transparency) is dropped, not blended:
    every pixel keeps the colour stored in the file, as torchvision's ImageFolder reads it, so a
    transparent pixel's colour, which viewers do not show, is an image pixel. An image with a pixel
    of alpha below 255 (in the crop taken) is warned of (:func:`load_image_folder`: once per load);
    flatten such files onto a background first where that is not what is wanted. A 16-bit file is
    read at 8 bits and warned of likewise: a grey one rounds each value v to round(v / 257), a
    colour one (16-bit RGB or RGBA PNG, grey with alpha) keeps its high byte, v // 256, as Pillow
    reads it: the low byte is lost either way.

    Args:
        data: the encoded file.
        name: shown in the error if the file cannot be decoded.
        grayscale: convert to one channel (PIL "L"); otherwise RGB.
        crop: side of a centred square crop applied before resizing (pixels), or None.
        size: side of the square output after resizing (bicubic, antialiased), or None to keep.
    """
    decoded = _decode(data, name=name, grayscale=grayscale, crop=crop, size=size)
    if decoded.see_through:
        _warn_of_alpha([name], 1)
    if decoded.sixteen_bit:
        _warn_of_sixteen_bits([(name, decoded.sixteen_bit)], 1)
    return decoded.array


@dataclass(frozen=True)
class _Decoded:
    """One decoded image: ``array`` (H, W, C) uint8; ``see_through``: a pixel of alpha < 255 (in the
    crop taken); ``sixteen_bit``: "grey" or "colour" for a file of 16 bits per sample (read at 8), else None."""

    array: np.ndarray
    see_through: bool
    sixteen_bit: str | None


def _decode(data: bytes, *, name: str, grayscale: bool, crop: int | None, size: int | None) -> _Decoded:
    """:func:`decode_image`'s array, whether the image (its crop) has a pixel of alpha < 255 and
    whether the file holds 16 bits per sample."""
    from PIL import Image, UnidentifiedImageError

    check_sides(crop=crop, size=size)
    try:
        with Image.open(io.BytesIO(data)) as img:
            sixteen_bit = _sixteen_bit(img)  # before anything loads the pixels: the tile says how they are stored
            img = _upright(img)
            img = _eight_bit(img, name)
            alpha = _alpha(img)
            img = img.convert("L" if grayscale else "RGB")
            if crop is not None:
                w, h = img.size
                if crop > min(w, h):
                    raise ValueError(f"{name}: crop={crop} is larger than the image ({w}x{h})")
                left, top = (w - crop) // 2, (h - crop) // 2
                img = img.crop((left, top, left + crop, top + crop))
                alpha = None if alpha is None else alpha.crop((left, top, left + crop, top + crop))
            see_through = alpha is not None and alpha.getextrema()[0] < 255
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{name}: not a readable image file ({err})") from None
    return _Decoded(array[..., None] if array.ndim == 2 else array, see_through, sixteen_bit)


# how Pillow names 16 bits per sample in a file: I;16 (grey), I;16B / I;16L / I;16N, RGB;16B, RGBA;16B,
# LA;16B (PNG), RGB;16L (TIFF); BMP's "BGR;16" is 16 bits per pixel (5-6-5), not per sample
_SIXTEEN_BIT_RAWMODE = re.compile(r"^I;16[BLN]?$|;16[BLN]$")


def _sixteen_bit(img) -> str | None:
    """"grey" or "colour" when ``img`` (opened, not yet loaded) stores 16 bits per sample, else None."""
    args = [tile[3] for tile in (img.tile or []) if len(tile) > 3]  # Pillow 10's tuples, 11's named tuples
    modes = [a if isinstance(a, str) else a[0] if isinstance(a, tuple) and a else "" for a in args]
    if not (img.mode.startswith("I;16") or any(isinstance(m, str) and _SIXTEEN_BIT_RAWMODE.search(m) for m in modes)):
        return None
    return "grey" if img.mode.startswith("I") else "colour"


def _warn_of_sixteen_bits(deep: list[tuple[str, str]], count: int) -> None:
    """One UserWarning for the ``deep`` images (name, "grey" or "colour") of the ``count`` decoded that
    store 16 bits per sample: the loaders work in 8 bits, so each value's low byte is lost."""
    import warnings

    from ..checks import caller_outside_the_package

    kinds = {kind for _, kind in deep}
    how = []
    if "grey" in kinds:
        how.append("grey ones rounded to the nearest of 256 levels (round(v / 257))")
    if "colour" in kinds:
        how.append("colour ones (and alpha) cut to their high byte (v // 256, as Pillow reads them)")
    warnings.warn(f"{len(deep)} of {count} images are 16-bit files (the first: {deep[0][0]}): they are read at 8 bits, "
                  f"{' and '.join(how)}, so each value's low byte is lost; convert them to 8 bits yourself if "
                  "another mapping is wanted (kinetic_fm reads images at 8 bits only)", UserWarning,
                  stacklevel=caller_outside_the_package())


def _alpha(img):
    """The alpha channel of ``img`` as a PIL "L" image, or None for an image without transparency:
    an alpha band (RGBA, LA, PA; premultiplied RGBa, La), a colour key ("transparency" in its info)
    or a palette holding alpha. (Pillow 10.1's ``has_transparency_data`` says the same; pillow>=10
    is what kinetic_fm asks for.)"""
    bands = img.getbands()
    if "A" in bands:
        return img.getchannel("A")
    palette_alpha = img.mode == "P" and getattr(img.palette, "mode", None) == "RGBA"
    if "a" in bands or "transparency" in img.info or palette_alpha:
        return img.convert("RGBA").getchannel("A")
    return None


def _warn_of_alpha(names: list[str], count: int) -> None:
    """One UserWarning for the ``names`` of the ``count`` images decoded that have transparent pixels,
    pointed at the first caller outside kinetic_fm (through a data spec, kfm train, the studies)."""
    import warnings

    from ..checks import caller_outside_the_package

    warnings.warn(f"{len(names)} of {count} images have pixels of alpha below 255 (the first: {names[0]}): their "
                  "alpha is dropped, not blended, so those pixels keep the colour stored under the transparency, "
                  "which viewers do not show; flatten the files onto a background first if that is not what you "
                  "want", UserWarning, stacklevel=caller_outside_the_package())


def _upright(img):
    """``img`` turned as its EXIF Orientation tag says viewers show it (a phone's portrait photo is
    stored as landscape pixels plus "rotate 90°"), unchanged (no copy) without such a tag."""
    from PIL import ImageOps

    try:
        orientation = img.getexif().get(0x0112, 1)  # 0x0112: Orientation; 1 = as stored
    except Exception:  # a damaged EXIF block: the pixels as stored, as they were read before
        return img
    if orientation in (1, None):
        return img
    return ImageOps.exif_transpose(img)


def check_sides(**sides: int | None) -> None:
    """ValueError naming the first of ``sides`` (crop, size) that is neither None nor an integer >= 1."""
    for argument, side in sides.items():
        if side is not None and (not is_integer(side) or side < 1):
            raise ValueError(f"{argument} must be None or an integer >= 1 (pixels), got {side!r}")


def _eight_bit(img, name: str):
    """A 16-bit grey image (PIL modes "I;16*" and "I", as 16-bit PNGs open) as 8-bit "L", each
    value v as round(v / 257): PIL's own conversion clips at 255, which left such an image at two
    levels. Other modes pass unchanged (16-bit RGB PNGs already open as 8-bit "RGB")."""
    from PIL import Image

    if img.mode == "F":  # its range is anyone's guess ([0, 1], [0, 255], ...): PIL's "L" read [0, 1] as 0
        raise ValueError(f"{name}: a 32-bit float image (PIL mode F); save it as an 8- or 16-bit image")
    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{name}: a 32-bit integer image with values in [{values.min()}, {values.max()}], "
                         "outside the 16-bit range [0, 65535]")
    return Image.fromarray(((values * 2 + 257) // 514).astype(np.uint8))   # a 2-D uint8 array: "L"


def decode_many(
    source: ImageSource,
    names: Sequence[str],
    *,
    grayscale: bool = False,
    crop: int | None = None,
    size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Decode ``names`` from ``source`` into one (N, H, W, C) uint8 array; all must share a size
    (:class:`ImageSizesDiffer` otherwise).
    Images with transparent pixels, and 16-bit images, are warned of once each, by count (see
    :func:`decode_image`)."""
    from tqdm.auto import tqdm

    out: np.ndarray | None = None
    translucent: list[str] = []  # images with transparent pixels: one warning for them all, not one each
    deep: list[tuple[str, str]] = []  # 16-bit images: likewise
    for i, name in enumerate(tqdm(names, desc="decode", disable=not progress, leave=False)):
        decoded = _decode(source.read(name), name=source.describe(name), grayscale=grayscale, crop=crop, size=size)
        array = decoded.array
        if decoded.see_through:
            translucent.append(source.describe(name))
        if decoded.sixteen_bit:
            deep.append((source.describe(name), decoded.sixteen_bit))
        if out is None:
            out = np.empty((len(names), *array.shape), dtype=np.uint8)
        elif array.shape != out.shape[1:]:
            raise ImageSizesDiffer(source.describe(name), array.shape, source.describe(names[0]), out.shape[1:])
        out[i] = array
    if out is None:
        raise ValueError(f"{source.path}: no images selected")
    if translucent:
        _warn_of_alpha(translucent, len(names))
    if deep:
        _warn_of_sixteen_bits(deep, len(names))
    return out


def _under(names: list[str], subdir: str | None, path) -> list[tuple[str, str]]:
    """(name, path relative to subdir) for the files under ``subdir`` (or all files)."""
    if subdir is None:
        return [(x, x) for x in names]
    prefix = subdir.strip("/") + "/"
    pairs = [(x, x[len(prefix):]) for x in names if x.startswith(prefix)]
    if not pairs:  # allow one wrapping top-level folder, e.g. cifar10/train/...
        pairs = [(x, x.split("/", 1)[1][len(prefix):]) for x in names
                 if "/" in x and x.split("/", 1)[1].startswith(prefix)]
    if not pairs:
        raise FileNotFoundError(f"{path}: no images under '{prefix}' (expected {prefix}<class>/<image>)")
    return pairs


def _above(pairs: list[tuple[str, str]]) -> str:
    """The folder of the root that the (name, path relative to subdir) ``pairs`` of :func:`_under` lie below:
    ``subdir``, or the wrapper and ``subdir`` where :func:`_under` found it below one; "" for the root (and
    for no pairs: an empty folder, which the callers then refuse as such)."""
    if not pairs:
        return ""
    name, relative = pairs[0]
    return name[:len(name) - len(relative)].strip("/")


def _described(path, above: str, zipped: bool) -> str:
    """The folder or (``zipped``) zip ``path``, where the images loaded lie below its folder ``above``
    (:func:`_above`: subdir, and the wrapper it was found below), as messages and :attr:`ImageDataset.source`
    name it: ``data/top`` for a folder, ``data.zip (member folder top/)`` for a zip, whatever its name (its
    members are named ``data.zip:top/...``)."""
    if not above:
        return str(path)
    return f"{path} (member folder {above}/)" if zipped else f"{path}/{above}"


def _folder_labels(relative: list[str], path, above: str, zipped: bool
                   ) -> tuple[tuple[str, ...] | None, Tensor | None, str | None]:
    """(classes sorted, (N,) labels, None) of files given by their paths ``relative`` to the folder ``above``
    (:func:`_above`) of the folder or (``zipped``) zip ``path`` (both named in the warning): each file's class is
    its top folder below the folders every file sits in (wrappers such as ``zip -r data.zip data/``), however deep the
    file lies inside it (``cat/kittens/1.png`` is a cat; ``n01/images/0.png``, Tiny ImageNet's layout, is an n01), as
    torchvision's ImageFolder labels a tree (ImageFolder takes the root's own folders, so it reads a wrapped tree as one
    class). (None, None, why in words) when a file lies beside the class folders or all lie in one folder: one class is
    no labelling (the studies refuse it). One class holding folders (``cat/kittens/``, ``cat/adults/``) is labelled by
    them: the class folder reads as a wrapper, as ``data/`` of ``data/cat/``, ``data/dog/`` does, and nothing tells the
    two apart. Class folders all named like a data set's splits are warned of (:func:`_check_split_folders`): such a
    tree is labelled by split."""
    folders, shared = _folders(relative)
    reason = _unlabelled(relative, folders, shared)
    if reason is not None:
        return None, None, reason
    names = [f[shared] for f in folders]
    classes = tuple(sorted(set(names)))
    _check_split_folders(folders, shared, path, above, zipped, labelled=True)
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, torch.tensor([lookup[c] for c in names], dtype=torch.int64), None


def _folders(relative: list[str]) -> tuple[list[list[str]], int]:
    """The folders of each file at ``relative`` (paths below the root), and how many wrapping folders
    every file is under (0 for no files)."""
    folders = [r.split("/")[:-1] for r in relative]
    shared = 0
    while folders and all(len(f) > shared and f[shared] == folders[0][shared] for f in folders):
        shared += 1
    return folders, shared


def _unlabelled(relative: list[str], folders: list[list[str]], shared: int) -> str | None:
    """Why the files at ``relative`` (paths below the root; ``folders`` their folders, ``shared`` how
    many of those every file is under) get no labels from :func:`_folder_labels`, in words, or None."""
    if not folders:
        return "it holds no images"
    beside = next((r for r, f in zip(relative, folders) if len(f) == shared), None)
    if beside is not None and len(set(map(tuple, folders))) == 1:  # one class is no labelling
        where = f"one folder, {'/'.join(folders[0])}/" if folders[0] else "no folder, at the top level"
        return f"all its images lie in {where} (one class is no labelling; class folders hold them: <class>/<image>)"
    if beside is not None:
        return f"{beside} lies beside the class folders (every image must lie in one: <class>/<image>)"
    return None


# folder names that mark a data set's splits rather than its classes
_SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation"})


def _check_split_folders(folders: list[list[str]], shared: int, path, above: str, zipped: bool, *,
                         labelled: bool) -> None:
    """Warn (UserWarning) when the top folders below the ``shared`` wrappers of the folder ``above`` (:func:`_above`)
    of the folder or (``zipped``) zip ``path`` (``folders``: each file's folders below ``above``, as :func:`_folders`
    gives them) are all named like a data set's splits (train, test, ...) and every file lies in a folder inside one
    (``train/<class>/...``): loaded whole, the splits are one set, and, where the tree is ``labelled``, labelled by
    split, as ImageFolder labels it. One check for the loads with labels (a ``folder:`` spec) and without (a folder
    given by its path: ``kfm memorization --train PATH``). Its remedy, the split's own folder below every wrapper
    (extracted from a zip), works on every route: a ``kfm`` flag takes no subdir, and ``subdir=`` looks through one
    wrapping folder only."""
    import warnings

    from ..checks import caller_outside_the_package

    if not folders or not all(len(f) > shared + 1 for f in folders):
        return
    tops = tuple(sorted({f[shared] for f in folders}))
    if not all(top.lower() in _SPLIT_NAMES for top in tops):
        return
    if labelled:
        what = ("the class folders", "every split is loaded and the images are labelled by split (the top folder, "
                "as torchvision's ImageFolder labels the tree), not by the folders inside; to label them by class "
                "load one split")
    else:
        what = ("the folders", "every split is loaded, as one set; to load one split alone")
    split = _first_split(tops)
    own = "/".join([*([above] if above else []), *folders[0][:shared], split])
    remedy = (f"extract {own}/ from {path} and load it (the split's own folder)" if zipped
              else f"load {path}/{own} (the split's own folder)")
    where = _described(path, above, zipped)
    warnings.warn(f"{where}: {what[0]} {tops} are named like splits of a data set and hold folders of their own: "
                  f"{what[1]} ({remedy})", UserWarning, stacklevel=caller_outside_the_package())


def _first_split(tops: tuple[str, ...]) -> str:
    """The split of ``tops`` a message suggests loading: the training one where there is one."""
    return next((top for top in tops if top.lower() in ("train", "training")), tops[0])


def load_image_folder(
    path: str | os.PathLike,
    *,
    subdir: str | None = None,
    size: int | None = None,
    crop: int | None = None,
    grayscale: bool | None = False,
    labels_from_folders: bool = True,
    n: int | None = None,
    indices: Sequence[int] | Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
    check_listing: Callable[[list[tuple[str, str]]], None] | None = None,
) -> ImageDataset:
    """Load images from a folder or zip, e.g. a ``<class>/<file>.png`` tree.

    Args:
        path: a folder or a .zip archive.
        subdir: only files under this relative folder (e.g. ``"train"``); it may also sit under
            one top-level folder of the archive (``cifar10/train/...``).
        size, crop: see :func:`decode_image`. Without ``size`` all images must share a size.
        grayscale: True: one channel (PIL "L"); False: three (RGB, as torchvision's ImageFolder reads
            any file); None: one channel where every image loaded is grey (R = G = B in every pixel:
            "L" files, and grey ones saved as RGB), else three (what the ``folder:`` spec asks: an
            MNIST-style folder tripled D with three copies of each pixel). The images loaded decide:
            a subset (``n``) of a folder mixing grey and colour files may be all grey.
        labels_from_folders: label each image by its class folder (classes sorted alphabetically):
            the top folder below those every image sits in (a wrapping ``data/`` of ``zip -r
            data.zip data/``), whatever the image's depth inside it (``cat/kittens/1.png`` is a cat,
            ``n01/images/0.png`` an n01), as torchvision's ImageFolder labels a tree. An image
            beside the class folders, or all in one folder (``zip -r faces.zip faces/``, or
            ``wrapper/cat/*.png``, which ImageFolder reads as one class ``wrapper``), make the
            labels None: one class is no labelling (:func:`why_unlabelled` says which). A tree of
            one class with folders inside it (``cat/kittens/``, ``cat/adults/``, wrapped or not)
            is labelled by those folders: it cannot be told from a wrapped tree of classes
            (``data/cat/``, ``data/dog/``); ImageFolder reads both as one class. Labelled or not, top
            folders all named like splits that hold folders (``train/<class>/``, ``test/<class>/``) are
            warned of (UserWarning): every split is loaded, and labelled by split where labelled.
        n, indices, seed: subset selection before decoding, see :func:`~kinetic_fm.data.subset.select_indices`.
        check_listing: called with the (file, path under ``subdir``) pairs before any image is
            decoded, to refuse a tree by raising (one listing: a 60,000-file zip takes seconds to list).

    Returns:
        :class:`ImageDataset`, images in [-1, 1]. 16-bit files are read at 8 bits (see
        :func:`decode_image`) with one UserWarning per load, giving their count and the first.

    Raises:
        ValueError: ``path`` is neither a folder nor a zip, or a folder in it cannot be listed;
            ``grayscale`` is not True, False or None; ``size`` or ``crop`` is neither None nor an
            integer >= 1; an image cannot be read (a damaged or encrypted archive member, not an
            image, a 32-bit float image, 32-bit integer values outside [0, 65535]) or is smaller
            than ``crop``; images of different sizes without ``size`` (:class:`ImageSizesDiffer`);
            ``n``, ``indices`` or ``seed`` as :func:`~kinetic_fm.data.subset.select_indices`
            refuses them, or an empty ``indices`` (no images selected).
        FileNotFoundError: ``path`` does not exist, or holds no image files (under ``subdir``).
        Exception: whatever ``check_listing`` raises to refuse the tree, as it raises it.
    """
    if grayscale not in (True, False, None):
        raise ValueError(f"grayscale must be True, False or None (one channel where every image is grey), "
                         f"got {grayscale!r}")
    with ImageSource(path) as source:
        pairs = _under(source.names, subdir, path)
        if not pairs:
            raise FileNotFoundError(f"{path}: contains no image files ({', '.join(IMAGE_EXTENSIONS)})")
        if check_listing is not None:
            check_listing(pairs)
        names = [name for name, _ in pairs]
        relative = [rel for _, rel in pairs]
        above = _above(pairs)
        if labels_from_folders:
            classes, all_labels, _ = _folder_labels(relative, path, above, source.zipped)
        else:  # no labels, but the same warning of the tree's layout
            classes, all_labels = None, None
            _check_split_folders(*_folders(relative), path, above, source.zipped, labelled=False)
        chosen = select_indices(len(names), n=n, indices=indices, seed=seed)
        array = decode_many(source, [names[i] for i in chosen.tolist()],
                            grayscale=bool(grayscale), crop=crop, size=size, progress=progress)
    if grayscale is None and is_grey(array):
        array = array[..., :1]
    return ImageDataset(
        images=uint8_to_signed(array),
        labels=None if all_labels is None else all_labels[chosen],
        classes=classes,
        source=_described(path, above, source.zipped),
        indices=chosen,
        lossy="JPEG" if size is None and any(names[i].lower().endswith(JPEG_EXTENSIONS)
                                              for i in chosen.tolist()) else None,
    )


def is_grey(images, channel_axis: int = -1, block: int = 1024) -> bool:
    """Whether every image of ``images`` (a NumPy array or tensor, N images first, their channels on
    ``channel_axis``: (N, H, W, 3) or, with ``channel_axis=1``, (N, 3, H, W)) has R = G = B in every
    pixel; checked ``block`` images at a time, so the comparison's boolean array stays small."""
    axis = channel_axis % images.ndim
    rest, first = [slice(None)] * images.ndim, [slice(None)] * images.ndim
    rest[axis], first[axis] = slice(1, None), slice(0, 1)
    return all(bool((part[tuple(rest)] == part[tuple(first)]).all()) for part in
               (images[start:start + block] for start in range(0, images.shape[0], block)))


def why_unlabelled(path: str | os.PathLike, subdir: str | None = None) -> str | None:
    """Why :func:`load_image_folder` gives the images of ``path`` (under ``subdir``) no labels, in
    words naming the folder or file (for messages), or None when it labels them; lists, decodes nothing."""
    with ImageSource(path) as source:
        relative = [rel for _, rel in _under(source.names, subdir, path)]
    return _unlabelled(relative, *_folders(relative))


def image_names(path: str | os.PathLike, subdir: str | None = None) -> list[str]:
    """The image files of a folder or zip in the loader's order (row i of
    :func:`load_image_folder` without a subset is file i), as paths relative to the root."""
    with ImageSource(path) as source:
        return [name for name, _ in _under(source.names, subdir, path)]


def list_image_labels(path: str | os.PathLike, subdir: str | None = None) -> tuple[tuple[str, ...], Tensor]:
    """Class names and per-file labels of a ``[subdir/]<class>/<file>`` tree, without decoding.

    Returns (classes, labels) with labels (N,) int64 in the loader's file order.

    Raises:
        ValueError: ``path`` is neither a folder nor a zip, or a folder in it cannot be listed;
            its images do not lie in ``<class>/<file>`` folders of at least two classes.
        FileNotFoundError: ``path`` does not exist, or holds no images under ``subdir``.
    """
    with ImageSource(path) as source:
        pairs = _under(source.names, subdir, path)
    above = _above(pairs)
    classes, labels, unlabelled = _folder_labels([rel for _, rel in pairs], path, above, source.zipped)
    if unlabelled is not None:
        raise ValueError(f"{_described(path, above, source.zipped)}: expected images in <class>/<file> folders, at "
                         f"least two classes: {unlabelled}")
    return classes, labels
