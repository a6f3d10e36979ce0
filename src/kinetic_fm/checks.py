"""What counts as an integer or a real number in an argument check (one rule, everywhere).

Python and NumPy numbers both count; ``bool`` does not, although Python makes it an ``int``
(``steps=True`` is a mistake, not one step).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import torch


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


def torch_readable(value):
    """``value`` in a form ``torch.as_tensor`` reads without error or warning, copied only where
    it must be; one rule for every public function that takes arrays.

    - A pandas DataFrame or Series becomes its values (``torch.as_tensor`` reads a DataFrame by
      its column labels), copied when pandas hands out a read-only view, as it does under
      copy-on-write: torch warns of a non-writable array.
    - A DataFrame or Series of pandas' nullable numbers (``Int64``, ``Float64``, ``boolean``, as
      ``read_parquet(dtype_backend="numpy_nullable")`` or ``convert_dtypes()`` give) becomes int64
      values, or float64 with NaN where a value is missing (caught then by the finiteness checks):
      its plain values are Python objects, which torch refused with a TypeError naming no argument.
    - A NumPy array in non-native byte order (``'>f8'`` on a little-endian machine, e.g. read from
      a FITS file or written on another machine) is converted to native order: torch refuses it.
    - A NumPy view with a negative stride (``np.flip(images, 3)``, ``a[::-1]``) is copied: torch
      refuses those too.
    - An object array (a pandas object column, ``np.array(ints, dtype=object)``) whose every element
      is a real number (:func:`is_real`: no bools, strings or None) becomes int64 where all are
      integers within its range, else float64: torch refuses object arrays. One holding anything
      else is returned as it is; :func:`first_non_number` finds what to name in the refusal.

    Anything else (tensors, native arrays, lists, numbers) is returned unchanged.
    """
    import numpy as np

    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray) and not _is_tensor(value):
        frame, value = value, value.to_numpy()
        if isinstance(value, np.ndarray) and value.dtype == object:
            value = _nullable_numbers(frame, value)
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            value = value.copy()
    if isinstance(value, np.ndarray) and not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    if isinstance(value, np.ndarray) and any(stride < 0 for stride in value.strides):
        value = np.ascontiguousarray(value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = _object_numbers(value)
    return value


def first_non_number(values) -> tuple[tuple[int, ...], object] | None:
    """``(index, element)`` of the first element of the NumPy array ``values`` that is not a real
    number (:func:`is_real`), in C order; None when every element is one."""
    import numpy as np

    for i, element in enumerate(values.flat):
        if not is_real(element):
            return tuple(int(j) for j in np.unravel_index(i, values.shape)), element
    return None


def _object_numbers(values):
    """The object array ``values`` as int64 (all integers) or float64 (other real numbers), or as
    it is when an element is no real number or does not fit (int64 beyond 2**63: float64 would
    round it without a word)."""
    import numpy as np

    if values.size == 0 or first_non_number(values) is not None:
        return values
    try:
        return values.astype(np.int64 if all(is_integer(v) for v in values.flat) else np.float64)
    except OverflowError:
        return values


def is_number_kind(kind) -> bool:
    """Whether a pandas column ``kind`` (dtype) holds numbers or booleans, nullable kinds included."""
    import pandas as pd

    return pd.api.types.is_numeric_dtype(kind) or pd.api.types.is_bool_dtype(kind)


def _nullable_numbers(frame, values):
    """The values of a pandas ``frame`` whose columns are all numbers or booleans, some of pandas'
    nullable kinds, as int64 (integers without a missing value) or float64 (NaN where missing);
    ``values`` (its object array) for anything else, e.g. a column of strings."""
    import numpy as np
    import pandas as pd

    kinds = list(frame.dtypes) if isinstance(frame, pd.DataFrame) else [getattr(frame, "dtype", None)]
    if not kinds or not all(is_number_kind(kind) for kind in kinds):
        return values
    whole = all(pd.api.types.is_integer_dtype(kind) or pd.api.types.is_bool_dtype(kind) for kind in kinds)
    if whole and not bool(np.asarray(frame.isna()).any()):
        return frame.to_numpy(dtype=np.int64)
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def optional_attribute(velocity: object, name: str, default: object = None) -> object:
    """``velocity.name``, or ``default`` when it has none or it cannot be read: a proxy or remote
    handle may raise something other than AttributeError. Like the training-mode walk, the
    sampler does not stop over an object it cannot look at; it calls it as a plain field.
    Here, under every layer, for the adapters and CFG that pass attributes through."""
    try:
        return getattr(velocity, name, default)
    except Exception:
        return default


def start_run_of(velocity: object) -> None:
    """Call ``velocity.start_run()`` where it has one: a field that keeps per-run state
    (``PosteriorRecorder``'s records, ``ClassifierFreeGuidance``'s part energies) is told that a
    run starts. ``kfm.sample`` calls it on the field it is given, and the library's wrappers
    (adapters, guidance, ``as_model_wrapper``) pass it on to what they wrap."""
    start = optional_attribute(velocity, "start_run")
    if callable(start):
        start()


def held_inside(function: object, kind: type) -> object | None:
    """An instance of ``kind`` that ``function`` holds where a caller sees only a function: what a
    lambda's or a nested function's closure holds, the module globals its code loads (nested code
    included) and its defaults; a ``functools.partial``'s function and arguments; a bound method's
    object and that object's own attributes; for any other callable (a class with ``__call__``, a
    dataclass), its own attributes (instance ``__dict__`` and ``__slots__``: ``self.kts``). One
    level deep: a container, or an ``nn.Module``'s submodules, are not looked into (a net's
    attributes are many, and a gain holds its KTS where its code reads it). No code runs (no
    property, ``__getattr__`` or ``__getattribute__``); None where none is found. The steps are
    those of :mod:`kinetic_fm.holdings`, which the training-mode walk follows further."""
    import functools
    import types

    from .holdings import closure_values, loaded_globals, own_attributes, partial_parts

    if isinstance(function, types.MethodType):
        held = [function.__self__, *own_attributes(function.__self__)]
    elif isinstance(function, functools.partial):
        held = partial_parts(function)
    elif isinstance(function, types.FunctionType):
        held = [value for value, _ in (*closure_values(function), *loaded_globals(function))]
        held += [*(function.__defaults__ or ()), *(function.__kwdefaults__ or {}).values()]
    else:
        held = own_attributes(function)
    # by type(): isinstance() falls back to reading __class__, which a proxy or closed handle may raise on
    return next((value for value in held if issubclass(type(value), kind)), None)


def one_evaluation_of(velocity: object):
    """``velocity.one_evaluation()`` where it has one, else a context that does nothing: the calls
    made inside, on ``velocity`` and its ``select`` views, are one evaluation of the field (the
    per-time calls of an adapter with ``time="scalar"``), which a ``PosteriorRecorder`` records as
    one; the adapters pass it on to what they wrap."""
    enter = optional_attribute(velocity, "one_evaluation")
    return enter() if callable(enter) else contextlib.nullcontext()


def declares(velocity: object, name: str) -> bool:
    """Whether ``velocity`` declares the flag ``name`` True (``singular_at_one``: v blows up at
    t = 1; ``one_time_per_call``: the net sees one time for the whole batch; ``unit_times_only``: v is
    defined for t in [0, 1] only, as the analytic fields are); an attribute that cannot be read, or has
    no truth value, declares nothing."""
    try:
        return bool(optional_attribute(velocity, name, False))
    except Exception:
        return False


def wrapper_chain(outer: object, inner_of: Callable[[object], tuple[str, object] | None],
                  name: str = "velocity") -> Iterator[tuple[str, object]]:
    """(path, object) for ``outer`` and each object down its chain of wrappers, outermost first:
    ``inner_of(obj)`` gives the attribute name and the object ``obj`` wraps, or None where the
    chain ends. Paths start at ``name`` ("velocity", "velocity.inner", "velocity.inner.model"). At most
    32 objects: a chain of wrappers, not a cycle. One walk for the adapters, the guidance and the
    dopri5 check that look through what they wrap."""
    path, obj = name, outer
    for _ in range(32):
        yield path, obj
        step = inner_of(obj)
        if step is None:
            return
        attribute, obj = step
        path = f"{path}.{attribute}"


def declares_singular_at_one(velocity: object) -> bool:
    """Whether ``velocity`` declares ``singular_at_one = True`` (v blows up at t = 1)."""
    return declares(velocity, "singular_at_one")


def check_flag(name: str, value) -> bool:
    """``value`` as a bool if it is one (Python or NumPy); else ValueError naming ``name``.

    A string such as ``"no"`` is truthy, so ``if value`` would quietly read it as True.
    """
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


# torch's CPU generator (mt19937) is seeded from the low 32 bits of a seed: s and s + 2**32 draw
# the same numbers, so a seed that reaches it lies in [0, 2**32) (2**63 allowed silent duplicates)
SEED_LIMIT = 2**32
SEED_NOTE = "torch's generator keeps 32 bits of a seed: s and s + 2**32 would draw the same numbers"


def check_seed(name: str, value, count: int = 1) -> int:
    """``value`` as an int if ``value .. value + count − 1`` are seeds in [0, 2**32) (see
    :data:`SEED_LIMIT`); else ValueError naming ``name``, the range and why."""
    return check_integer(name, value, 0, SEED_LIMIT - count,
                         note=SEED_NOTE if count == 1 else f"its {count} seeds stay below 2**32; {SEED_NOTE}")


def check_integer(name: str, value, low: int | None = None, high: int | None = None, *,
                  note: str = "") -> int:
    """``value`` as an int if it is an integer in [low, high] (a bound of None is open): a Python
    or NumPy integer, or a 0-d integer tensor or array (``k=torch.tensor(3)``); not a bool, not
    2.0. Else ValueError naming ``name`` and the range: "seed must be a non-negative integer"
    (low 0), "chunk must be a positive integer" (low 1), "k must be an integer in [1, 9]".
    ``note`` says what a bound is, in parentheses after the range: "n must be an integer in
    [1, 6] (the available items), got 9"."""
    number = as_scalar(value)
    if is_integer(number) and (low is None or number >= low) and (high is None or number <= high):
        return int(number)
    raise ValueError(f"{name} must be {_integers(low, high)}{_noted(note)}, got {value!r}")


def optional_integer(name: str, value, low: int | None = None, high: int | None = None, *,
                     note: str = "") -> int | None:
    """None, or ``value`` as an int read by :func:`check_integer`; a refusal says that None is
    allowed too ("truncate must be None or an integer in [1, 9], got 0")."""
    if value is None:
        return None
    try:
        return check_integer(name, value, low, high)
    except ValueError:
        raise ValueError(f"{name} must be None or {_integers(low, high)}{_noted(note)}, got {value!r}") from None


def _noted(note: str) -> str:
    return f" ({note})" if note else ""


def _integers(low: int | None, high: int | None) -> str:
    """The integers in [low, high] in words (a bound of None is open)."""
    if high is not None:
        return f"an integer in [{'-inf' if low is None else _bound(low)}, {_bound(high)}]"
    if low == 0:
        return "a non-negative integer"
    if low == 1:
        return "a positive integer"
    return "an integer" if low is None else f"an integer >= {low:_}"


def _bound(value: int) -> str:
    """A range end as a reader takes it in: 2**53 and 2**63 - 1 rather than 16 or 19 digits."""
    for power, offset in ((value, ""), (value + 1, " - 1")):
        if power >= 2**20 and power & (power - 1) == 0:
            return f"2**{power.bit_length() - 1}{offset}"
    return f"{value:_}"


def check_real(name: str, value, low: float, high: float, what: str, *, open_low: bool = False) -> float:
    """``value``, one real number (as :func:`check_unit_number` reads it), as a float in
    [low, high) ((low, high) when ``open_low``); else ValueError "``name`` must be ``what``, got
    ...". NaN fails; ``high=math.inf`` asks for a finite number."""
    number = as_scalar(value)
    if is_real(number) and (number > low if open_low else number >= low) and number < high:
        return float(number)
    raise ValueError(f"{name} must be {what}, got {value!r}")


# A refused fraction from this value up reads as a percent (confidence=95 meant 0.95); one in (1, 2)
# is a fraction mistyped (split=1.5), not 1.5 %.
PERCENT_FROM = 2.0
# A split time τ reads as a percent from 10 only: 0.02 to 0.1 are times a user means.
SPLIT_PERCENT_FROM = 10.0
# A confidence reads as a percent from 50 only: no one asks for a coverage below one half, and a 2 is
# rather "2 sigma" or a slip for 0.95 than 0.02.
CONFIDENCE_PERCENT_FROM = 50.0


def inside_unit_interval(name: str, value, *, percent_from: float | None = None, ratio: bool = False) -> float:
    """``value``, one real number (as :func:`check_unit_number` reads it), as a float in the open
    interval (0, 1): a threshold, a confidence, a clamp. Else ValueError naming ``name``: "must be
    a real number in (0, 1)" for what is not one real number, "must lie in (0, 1)" for one outside
    (NaN included), and with ``percent_from`` (a fraction a user may give as a percent: the least
    value read as one, :data:`PERCENT_FROM` for most) the fraction such a value meant
    (:func:`percent_hint`); with ``ratio`` (a ratio a user may give the other way up, d2/d1 for
    d1/d2) a value in (1, 10) is read as that, "; did you mean 1/3 = 0.333?"
    (:func:`reciprocal_hint`), and only one from 10 as a percent (at 10 the two readings agree)."""
    number = as_scalar(value)
    if not is_real(number):
        raise ValueError(f"{name} must be a real number in (0, 1), got {value!r}")
    if not 0.0 < number < 1.0:
        hint = reciprocal_hint(value) if ratio else ""
        if percent_from is not None and not hint:
            hint = percent_hint(value, open_high=True, percent_from=percent_from)
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}{hint}")
    return float(number)


def check_unit_number(name: str, value, what: str = "a number in [0, 1]", *,
                      percent_from: float | None = None) -> float:
    """``value``, one real number (a Python or NumPy number, or a 0-d tensor or array), as a float
    in [0, 1]; else ValueError "``name`` must be ``what``, got ...", with ``percent_from`` (the least
    value read as a percent) followed by the fraction such a value meant (:func:`percent_hint`).
    NaN fails too. For a time on the path, a split, a share: outside [0, 1] formulas extrapolate
    rather than fail."""
    number = as_scalar(value)
    if is_real(number) and 0.0 <= number <= 1.0:
        return float(number)
    hint = percent_hint(value, percent_from=percent_from) if percent_from is not None else ""
    raise ValueError(f"{name} must be {what}, got {value!r}{hint}")


def unit_times(t: torch.Tensor) -> torch.Tensor:
    """Which of the times ``t`` lie in [0, 1]: a bool tensor of t's shape, False for NaN (which fails
    both comparisons). On t's device, nothing read on the host."""
    return (t >= 0) & (t <= 1)


def check_unit_times(t: torch.Tensor, name: str = "t", *, inside: torch.Tensor | None = None) -> None:
    """ValueError "t must lie in [0, 1], got 1.5 at row 0" naming the first of the (B,) times ``t``
    outside [0, 1] or NaN. ``inside``: ``unit_times(t)`` where the caller has it already. One reduction,
    read on the host: on an accelerator a synchronisation."""
    inside = unit_times(t) if inside is None else inside
    if bool(inside.all()):
        return
    row = int((~inside).nonzero()[0, 0])
    raise ValueError(f"{name} must lie in [0, 1], got {float(t[row])!r} at row {row}")


def percent_hint(value, high: float = 1.0, *, open_high: bool = False, percent_from: float = PERCENT_FROM) -> str:
    """"; did you mean 0.95?" for a refused ``value`` in [``percent_from``, 100] whose hundredth the
    argument admits, being at most its upper bound ``high`` (below it where ``open_high``): a fraction
    plainly given as a percent (confidence=95, threshold=33), for its refusal to end with; else "". A
    value in (1, 2) reads as a fraction mistyped (split=1.5), not as a percent, and gets none; an
    argument whose small hundredths no one means (a split time of 0.02, a confidence of 0.02) raises
    ``percent_from`` (:data:`SPLIT_PERCENT_FROM`, :data:`CONFIDENCE_PERCENT_FROM`). The value itself
    stays refused: 95 is not read as 0.95."""
    number = as_scalar(value)
    if not (is_real(number) and percent_from <= number <= 100.0):
        return ""
    fraction = float(number) / 100.0
    admitted = fraction < high if open_high else fraction <= high
    return f"; did you mean {fraction:g}?" if admitted else ""


def reciprocal_hint(value, most: float = 10.0) -> str:
    """"; did you mean 1/3 = 0.333?" for a refused ``value`` in (1, ``most``): a ratio below 1 given
    the other way up (a gap ratio d1/d2 < 1/3 stated as d2 > 3 d1); else "", also where the reciprocal
    shown rounds to 1, which the open interval refuses (1.0001). The value stays refused."""
    number = as_scalar(value)
    if not (is_real(number) and 1.0 < number < most):
        return ""
    shown = f"{1.0 / float(number):.3g}"
    return f"; did you mean 1/{float(number):g} = {shown}?" if float(shown) < 1.0 else ""


def split_spec(spec: str) -> tuple[str, str]:
    """``(kind, path)`` of a ``KIND:PATH`` spec (a data spec, a classifier's ``resnet56:PATH``): the
    kind before the first colon, the path everything after it, colons included, less the spaces around
    it (``folder: /x `` is ``/x``: a path that starts or ends with a space is almost never meant, and
    a quoted or configured spec may carry one); path "" where there is no colon. Nothing is checked."""
    kind, _, path = spec.partition(":")
    return kind, path.strip()


def check_device(device, name: str = "device") -> torch.device | None:
    """None, or ``device`` as a ``torch.device``; else ValueError naming ``name``. torch's own
    error listed every device type it knows and named no argument."""
    import torch

    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None


# the forms of a --device flag the commands accept (resolve_device in runs.distributed): one
# wording for their help and their errors
DEVICE_FORMS = "cpu, cpu:N, cuda or cuda:N"


def names_the_cpu(device) -> bool:
    """Whether a device string names the CPU: "cpu" or "cpu:N", which torch maps to the one CPU
    (so a run or cache made with one is the other's). CUDA strings are never merged: under
    torchrun "cuda" means cuda:<LOCAL_RANK>, so it and "cuda:1" can differ."""
    import torch

    try:
        return isinstance(device, str) and torch.device(device).type == "cpu"
    except RuntimeError:  # not a device; the caller's own check names it
        return False


def positive_integer(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1 (see :func:`check_integer`); else ValueError
    naming ``name`` ("chunk must be a positive integer, got 2.5")."""
    return check_integer(name, value, 1)


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


class ValueRangeWarning(UserWarning):
    """Two sets a metric compares look as if they were stored on different value scales."""


def check_same_space(first: tuple[str, object], second: tuple[str, object]) -> bool:
    """:func:`check_same_layout`, then warn (:class:`ValueRangeWarning`) when the two sets' values
    look like one kind of data on two scales; returns whether it warned. Each set's range is read
    as the 0.1 % and 99.9 % quantiles of its finite values (of up to 100,000 at seeded random
    positions, so one outlier or a larger set does not move it). Two patterns are flagged:

    - magnitudes over 20× apart: uint8 0..255 against [-1, 1];
    - one set non-negative, up to s, the other reaching below −s/2 but not above 1.5·s: [0, 1]
      against [-1, 1]. Gaussian noise, or an untrained model's samples, against [0, 1] data
      spread above 1.5·s and pass.

    Distances between such sets measure the scale, not the items: exact copies of training images
    saved as uint8 gave F_mem = 0. Sets that cannot be read as numbers, or hold fewer than 64
    finite values, are skipped.
    """
    check_same_layout(first, second)
    (name_a, a), (name_b, b) = first, second
    extent_a, extent_b = _extent(a), _extent(b)
    if extent_a is None or extent_b is None:
        return False
    (lo_a, hi_a), (lo_b, hi_b) = extent_a, extent_b
    size_a, size_b = max(abs(lo_a), abs(hi_a)), max(abs(lo_b), abs(hi_b))
    if not (math.isfinite(size_a) and math.isfinite(size_b)) or size_a == 0 or size_b == 0:
        return False
    ranges = (f"{name_a} spans [{lo_a:.4g}, {hi_a:.4g}] and {name_b} [{lo_b:.4g}, {hi_b:.4g}] "
              "(0.1 % to 99.9 % quantiles)")
    hint = ("bring both to one scale first (images in [-1, 1]: x / 127.5 - 1 from uint8, 2x - 1 from [0, 1]); "
            "the distances would otherwise measure the scale, not the items")

    def half_signed(lo_p, hi_p, size_p, lo_q, hi_q):  # p non-negative up to hi_p, q about [-hi_p, hi_p]
        return lo_p >= -0.05 * size_p and hi_p > 0 and lo_q < -0.5 * hi_p and hi_q <= 1.5 * hi_p

    if max(size_a, size_b) > 20 * min(size_a, size_b):
        warnings.warn(f"{ranges}: magnitudes over 20x apart (uint8 against [-1, 1]?); {hint}",
                      ValueRangeWarning, stacklevel=3)
    elif half_signed(lo_a, hi_a, size_a, lo_b, hi_b) or half_signed(lo_b, hi_b, size_b, lo_a, hi_a):
        warnings.warn(f"{ranges}: one is non-negative, the other spans about as far below zero "
                      f"([0, 1] against [-1, 1]?); {hint}", ValueRangeWarning, stacklevel=3)
    else:
        return False
    return True


_EXTENT_VALUES = 100_000
_EXTENT_MIN_VALUES = 64  # a handful of values says little about a scale: six N(0, 1) draws can all be positive


def _extent(array) -> tuple[float, float] | None:
    """The 0.1 % and 99.9 % quantiles of a tensor's or array's finite values (of at most 100,000
    of them at seeded random positions: an even stride can meet the same pixel of every image),
    as floats; None when not real numbers or with fewer than 64 finite values."""
    import numpy as np

    try:
        import torch

        if isinstance(array, torch.Tensor):
            if array.is_complex():
                return None
            values = array.detach()
            if values.numel() > _EXTENT_VALUES:  # picked by index: no copy of a strided tensor
                g = torch.Generator().manual_seed(0)
                where = torch.randint(values.numel(), (_EXTENT_VALUES,), device="cpu", generator=g).to(values.device)
                values = values[torch.unravel_index(where, values.shape)]
            values = values.reshape(-1).to(torch.float64).cpu().numpy()
        else:
            values = np.asarray(array)
    except (TypeError, ValueError, RuntimeError):
        return None
    if values.dtype.kind not in "biuf":
        return None
    if values.size > _EXTENT_VALUES:  # as above, for arrays (ndarray.flat reads in place)
        values = values.flat[np.random.default_rng(0).integers(values.size, size=_EXTENT_VALUES)]
    values = values.reshape(-1).astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size < _EXTENT_MIN_VALUES:
        return None
    lo, hi = np.quantile(values, [0.001, 0.999])
    return float(lo), float(hi)


class VelocityOutputError(TypeError, ValueError):
    """A velocity, or the net inside an adapter, returned something other than a tensor (a
    TypeError, and a ValueError as the prediction adapters raised before)."""


def shortened(text: str, width: int = 80) -> str:
    """``text`` (a value's JSON or repr) cut to ``width`` characters for an error message, "…" marking the cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def add_note(err: BaseException, note: str) -> None:
    """Attach a hint to an exception on its way out: ``err.add_note(note)`` (Python >= 3.11 prints
    notes under the message). Python 3.10 has no notes, and there the hint went missing: the note
    is appended to the message instead when that is the exception's one argument (torch's errors,
    ``ValueError(text)``; others, ``OSError(errno, text)`` or ``ValueError(text, 3)``, would print
    it garbled), and kept in ``err.__notes__``, as 3.11 keeps it."""
    if hasattr(err, "add_note"):
        err.add_note(note)
        return
    notes = getattr(err, "__notes__", None)
    err.__notes__ = [*(notes if isinstance(notes, list) else []), note]
    if len(err.args) == 1 and isinstance(err.args[0], str):
        err.args = (f"{err.args[0]}\n{note}",)


def tensor_output(out: object, who: str = "velocity") -> torch.Tensor:
    """``out`` if it is a tensor; else :class:`VelocityOutputError` saying how to get the tensor
    out of what came back (a tuple, or a diffusers output object with ``.sample``)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(getattr(out, "sample", None), torch.Tensor):
        hint = ("; a diffusers model returns an output object unless called with return_dict=False "
                "(then take [0]), or take its .sample")
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        hint = "; wrap the net to return its first element: lambda *a, **k: net(*a, **k)[0]"
    else:
        hint = "; wrap the net to return the velocity tensor"
    raise VelocityOutputError(f"{who} must return a torch.Tensor, got {type(out).__name__}{hint}")


def _shape(array) -> tuple[int, ...]:
    """``array``'s shape; () for a ragged nested list (its refusal, naming the argument, follows)."""
    shape = getattr(array, "shape", None)
    if shape is None:
        import numpy as np

        try:
            shape = np.shape(array)
        except ValueError:  # "inhomogeneous shape": NumPy's words named no argument
            return ()
    return tuple(shape)


def caller_outside_the_package() -> int:
    """``stacklevel`` for a warning raised inside kinetic_fm that points at the first frame outside
    kinetic_fm, torch's decorators and ``nn.Module.__call__`` (the user's call, however deep inside us it
    is raised: through an integration such as ``KineticODESolver.sample`` as through ``kfm.sample``, through
    ``net(x)`` as through ``net.features(x)``)."""
    import os
    import sys

    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the kinetic_fm folder
    torch_frames = (os.path.join("torch", "utils", "_contextlib.py"),  # no_grad and other decorators
                    os.path.join("torch", "nn", "modules", "module.py"))  # nn.Module.__call__
    frame, level = sys._getframe(2), 2  # stacklevel 1 is the function calling warnings.warn, 2 its caller
    while frame is not None and (frame.f_code.co_filename.startswith(ours)
                                 or frame.f_code.co_filename.endswith(torch_frames)):
        frame, level = frame.f_back, level + 1
    return level


# column names that hold a class label rather than a feature (compared in lower case)
LABEL_NAMES = frozenset({"label", "labels", "y", "target", "targets", "class", "classes", "class_id", "category"})


def warn_of_label_columns(source: str, columns: dict, names: list, remedy: Callable[[list[str]], str]) -> list[str]:
    """Warn that a column among the features read side by side is a class label, and return those
    columns' names (empty: no warning); one rule for a Parquet table read by ``load_array`` and a
    pandas DataFrame given to a metric or a field.

    ``columns`` maps each column taken as a feature to its values (a 1-D NumPy array); ``names``
    are all the table's column names. A label is a column named in :data:`LABEL_NAMES` (any case)
    holding whole numbers only; ``y`` beside an ``x`` (a point's two coordinates) is none. The
    warning is led by ``source`` (a file, an argument's name) and ends with ``remedy(labels)``, how to
    leave those columns out there. It points at the first caller outside kinetic_fm.
    """
    import numpy as np

    lower = {name.lower() for name in names if isinstance(name, str)}
    labels = [name for name, values in columns.items()
              if isinstance(name, str) and name.lower() in LABEL_NAMES and not (name.lower() == "y" and "x" in lower)
              and bool(np.all(np.mod(values, 1) == 0))]
    if labels:  # a label beside the features: (rows, D + 1), its class gaps in every distance
        warnings.warn(f"{source}: the column {labels} (whole numbers, named like a class label) is read as a "
                      f"feature, one of {len(columns)} columns taken side by side; to leave it out, {remedy(labels)}",
                      UserWarning, stacklevel=caller_outside_the_package())
    return labels
