"""What counts as an integer or a real number in an argument check (one rule, everywhere).

Python and NumPy numbers both count; ``bool`` does not, although Python makes it an ``int``
(``steps=True`` is a mistake, not one step).
"""
from __future__ import annotations

import math
import numbers


def is_integer(value) -> bool:
    """An integral number (``int``, NumPy integer), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value, *, finite: bool = False) -> bool:
    """A real number (``int``, ``float``, NumPy scalar), not a bool; with ``finite``, not NaN or ±inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return not finite or math.isfinite(value)


def as_scalar(value):
    """``value`` with a 0-d tensor or 0-d NumPy array unwrapped to its Python number (``.item()``);
    anything else unchanged. Lets checks accept ``torch.tensor(0.5)`` wherever they accept 0.5."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def check_flag(name: str, value) -> bool:
    """``value`` as a bool if it is one (Python or NumPy); else ValueError naming ``name``.

    A string such as ``"no"`` is truthy, so ``if value`` would quietly read it as True.
    """
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def positive_integer(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1 (Python or NumPy, not a bool); else ValueError
    naming ``name`` ("chunk must be a positive integer, got 2.5")."""
    if not (is_integer(value) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_same_layout(first: tuple[str, object], second: tuple[str, object]) -> None:
    """Refuse two sets of items whose shapes hold the same number of values in different layouts.

    Each argument is ``(name, array)`` with the array of shape (n, ...). The metrics compare
    flattened items, so images saved channels-last (N, H, W, C) against a set loaded
    channels-first (N, C, H, W) would be compared value by value in a scrambled order, and
    every distance would be wrong without any error. Items that are already flat (n, D), or whose
    shapes agree once size-1 axes are dropped (e.g. (1, 28, 28) against (28, 28)), pass; sets
    of different sizes are left to the size checks that follow. Raises ValueError naming both.
    """
    (name_a, a), (name_b, b) = first, second
    shape_a, shape_b = tuple(_shape(a)[1:]), tuple(_shape(b)[1:])
    if len(shape_a) < 2 or len(shape_b) < 2 or math.prod(shape_a) != math.prod(shape_b):
        return
    if [s for s in shape_a if s != 1] == [s for s in shape_b if s != 1]:
        return
    raise ValueError(
        f"{name_a} holds items of shape {shape_a} and {name_b} items of shape {shape_b}: the same "
        "number of values in different layouts (channels-last against channels-first?), so the "
        "flattened items would be compared in a scrambled order. Bring them to one layout first "
        "(e.g. x.permute(0, 3, 1, 2) for (N, H, W, C) -> (N, C, H, W)); if the orders really "
        "match, flatten both to (n, D) yourself"
    )


def _shape(array) -> tuple[int, ...]:
    shape = getattr(array, "shape", None)
    if shape is None:
        import numpy as np

        shape = np.shape(array)
    return tuple(shape)
