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
