"""Short data specs for the command line: ``digits``, ``moons``, ``gmm``, ``mnist:PATH`` ..."""
from __future__ import annotations

import os
from typing import Sequence

from ..checks import split_spec
from .images import ImageDataset
from .synthetic import PointDataset

POINT_SETS = ("moons", "gmm", "checkerboard")  # 2-D samplers; the rest are image data sets
DATA_SPECS = ("digits", "moons", "gmm", "checkerboard", "mnist:PATH", "cifar10:PATH", "celeba:PATH", "folder:PATH")


def load_dataset(spec: str, *, n: int | None = None, seed: int = 0,
                 progress: bool = True) -> ImageDataset | PointDataset:
    """Load a data set named by a spec (one of :data:`DATA_SPECS`).

    Args:
        spec: ``digits``; ``moons``, ``gmm`` (8-mode ring) or ``checkerboard`` (2-D samplers, n
            points, default 20,000); ``mnist:DIR``, ``cifar10:PATH``, ``celeba:PATH`` or
            ``folder:PATH`` (training split; PATH a folder or zip as the loaders accept; ``folder:``
            loads one channel where every image it loads is grey, R = G = B, else RGB).
        n: subset size (images) or number of points (2-D); None = everything / 20,000 points. Image
            subsets are nested across n for one seed; 2-D points are drawn afresh for each n, so the
            n = 500 points are not among the n = 1000 ones.
        seed: seeds the subset or the 2-D sampler.
        progress: a decoding progress bar (stderr) for the image folders and archives.

    Raises:
        ValueError: ``spec`` names no data set of :data:`DATA_SPECS`, gives a path to one that takes
            none or none to one that needs it; ``n`` or ``seed`` out of range; whatever the loader
            refuses (:func:`~kinetic_fm.data.mnist.load_mnist`, :func:`~kinetic_fm.data.cifar10.load_cifar10`,
            :func:`~kinetic_fm.data.celeba.load_celeba`, :func:`~kinetic_fm.data.images.load_image_folder`;
            its images of two sizes end with "resize the files to one size first", as a spec takes no ``size``).
        FileNotFoundError: the loader's, for a path that does not exist or holds no data.
        ImportError: ``digits`` without scikit-learn.
    """
    from . import celeba, cifar10, digits, images, mnist, synthetic

    name, path = parse_spec(spec)
    if name in POINT_SETS:
        points = {"moons": synthetic.two_moons, "gmm": synthetic.gaussian_mixture, "checkerboard": synthetic.checkerboard}
        return points[name](20_000 if n is None else n, seed)
    if name == "digits":
        return digits.load_digits(n=n, seed=seed)
    loaders = {
        "mnist": lambda p: mnist.load_mnist(p, "train", n=n, seed=seed),
        "cifar10": lambda p: cifar10.load_cifar10(p, "train", n=n, seed=seed, progress=progress),
        "celeba": lambda p: celeba.load_celeba(p, n=n, seed=seed, progress=progress),
        # one channel where every image is grey: an MNIST-style folder as mnist: loads it, not three copies
        "folder": lambda p: images.load_image_folder(p, grayscale=None, n=n, seed=seed, progress=progress),
    }
    try:
        return loaders[name](path)
    except images.ImageSizesDiffer as err:   # a spec takes no size: the way out is the files'
        raise err.telling_to_resize_files() from None


def absolute_spec(spec: str) -> str:
    """``spec`` with its path made absolute against the current folder (``mnist:data/mnist`` ->
    ``mnist:/home/me/data/mnist``), unchanged when it has none: what a run folder records, so that
    reading the spec back works from any folder."""
    name, path = parse_spec(spec)
    return f"{name}:{os.path.abspath(path)}" if path else spec


def parse_spec(spec: str, *, accepted: Sequence[str] = DATA_SPECS) -> tuple[str, str]:
    """``(name, path)`` of a data spec, checked without loading anything (path "" when none; a
    leading ``~`` expanded, which the shell does not do after ``mnist:``). The path is everything after
    the first colon, colons included (``folder:C:/x``, ``folder:./a:b``), less the spaces around it
    (``folder: /x `` is ``/x``: :func:`~kinetic_fm.checks.split_spec`). A spec's kind and a colon
    read as a spec even where a file is so named (``kfm memorization --train`` reads such a file given
    by its path, ``./folder:x``: ``kinetic_fm.commands._rows.is_spec``).

    Raises:
        ValueError: ``spec`` is none of :data:`DATA_SPECS`, each message listing them: a path given without
            its kind (``C:/x``, ``./x.npy``) is pointed at ``folder:PATH`` where it is an existing folder or a
            ``.zip``, else at the kinds that take a path; a misspelt kind (``folde:``, ``CIFAR:``, ``MNIST``)
            at the likely spec (:func:`spec_hint`); a path to a set that takes none; no path to one that needs it.
            The messages list ``accepted``, the specs the caller takes, in its help's spelling (``mnist:DIR``).
    """
    name, path = split_spec(spec)
    if name not in SPEC_KINDS:
        raise ValueError(f"unknown data spec {spec!r}{spec_hint(spec, accepted)}")
    path = os.path.expanduser(path)
    if path and not SPEC_KINDS[name]:
        raise ValueError(f"data spec {spec!r}: {name} takes no path; {_forms(accepted)}")
    if SPEC_KINDS[name] and not path:
        raise ValueError(f"data spec {spec!r} needs a path, e.g. {name}:/path/to/data; {_forms(accepted)}")
    return name, path


def _forms(accepted: Sequence[str] = DATA_SPECS) -> str:
    return f"expected one of {', '.join(accepted)}"


# each kind of DATA_SPECS: whether it takes a path
SPEC_KINDS: dict[str, bool] = {s.partition(":")[0]: s.endswith(":PATH") for s in DATA_SPECS}


def spec_hint(spec: str, accepted: Sequence[str] = DATA_SPECS) -> str:
    """What follows the name of ``spec``, a string that is none of :data:`DATA_SPECS`, in a refusal:
    ``" (did you mean folder:/x?); expected one of digits, ..."``, the likely form in brackets where one
    reads (:func:`_likely_spec`), else ``"; expected one of ..."``. One wording for every route that
    refuses such a spec (:func:`parse_spec`, ``kfm memorization --train``)."""
    hint = _likely_spec(spec, accepted)
    return f" ({hint}); {_forms(accepted)}" if hint else f"; {_forms(accepted)}"


def _likely_spec(spec: str, accepted: Sequence[str] = DATA_SPECS) -> str | None:
    """What the unknown ``spec`` was likely meant to be, in words, else None:

    - a path given without its kind (a separator or a leading ``.`` or ``~`` in the part before the first
      colon, a Windows drive ``C:/``, or a path that exists): ``folder:PATH`` where it is an existing folder
      or a ``.zip`` (what ``folder:`` loads), an array file (:data:`~kinetic_fm.data.arrays.ARRAY_FORMATS`)
      as such (no spec loads one), else the kinds of ``accepted`` that take a path, for the one its data needs;
    - a misspelt kind: the likely spec of ``accepted`` (:func:`misspelt_spec`).
    """
    import re

    from .arrays import ARRAY_FORMATS

    name = spec.partition(":")[0]
    drive = re.match(r"[A-Za-z]:[\\/]", spec) is not None
    if drive or "/" in name or "\\" in name or name.startswith((".", "~")) or os.path.exists(spec):
        place = os.path.expanduser(spec)
        if os.path.isdir(place) or place.lower().endswith(".zip"):
            return f"a path? give it after its kind, e.g. folder:{spec}"
        if place.lower().endswith(ARRAY_FORMATS):
            return "an array file? no data spec loads one"
        kinds = [form for form in accepted if ":" in form]
        return f"a path? give it after the kind of data it holds: {', '.join(kinds[:-1])} or {kinds[-1]}"
    meant = misspelt_spec(spec, accepted)
    return None if meant is None else f"did you mean {meant}?"


def misspelt_spec(spec: str, accepted: Sequence[str] = DATA_SPECS) -> str | None:
    """The data spec ``spec`` likely meant where the part before its first colon is not a kind of
    :data:`DATA_SPECS` but close to one of ``accepted`` (the specs the caller takes, in its spelling), in that
    kind's form: its path kept after a kind that takes one (``folde:/x`` -> ``folder:/x``, ``CIFAR:/x`` ->
    ``cifar10:/x``), the form's placeholder where none was given (``MNIST`` -> ``mnist:PATH``, ``mnist:DIR`` where
    ``accepted`` writes it so), none after a kind that takes none (``digit:/x`` -> ``digits``); else None."""
    import difflib

    name, _, rest = spec.partition(":")
    forms = {form.partition(":")[0]: form for form in accepted}    # mnist -> mnist:DIR, digits -> digits
    close = difflib.get_close_matches(name.lower(), list(forms), n=1)
    if not close or name in SPEC_KINDS:
        return None
    kind, _, placeholder = forms[close[0]].partition(":")
    return f"{kind}:{rest or placeholder}" if placeholder else kind
