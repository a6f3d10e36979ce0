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
