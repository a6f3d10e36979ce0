"""Exact k-nearest-neighbour search of queries against a reference set (L2, flattened).

One implementation, shared by memorization, local density, precision/recall and the EFM field's
truncated mode with ``backend="faiss"``. The field is why it lives at the package root, below
every layer (``fields`` may not import ``metrics``); its checks and reductions over sets of rows
(:func:`check_finite`, :func:`check_magnitude`, :func:`column_mean`, :func:`row_sq_norms`,
:func:`unit_roundoff`) serve the field's own GEMM screening too. ``kinetic_fm.metrics.neighbors``
re-exports its public names.

How it stays exact and fast:

1. **Screening.** Squared distances are expanded as ``‖x‖² + ‖y‖² − 2 x·y`` and computed as one
   GEMM per (query block, reference chunk) in the inputs' precision (float32 unless both inputs are
   float64). A running set of the ``k + margin`` best candidates per query is kept; nothing of size
   (B, N, D) and nothing of size (B, N) beyond one chunk ever exists.
2. **Exact re-ranking.** The candidates are re-scored as ``‖x − y‖²`` in float64 from the raw
   vectors (no expansion, so no cancellation) and sorted.
3. **Certification.** The expansion's rounding error is bounded per query by
   ``e = (D·u + 3u)(‖x‖ + max‖y‖)²`` (u = unit round-off of the screening dtype). Every atom that
   is not a candidate has screened score ≥ the worst candidate's, hence true squared distance
   ≥ that score − e. If that lower bound is not above the k-th exact distance, the query is
   searched again, after the last query block, by the cheapest route that can settle it: the
   same screening with more candidates (in high dimensions distances crowd, and k + margin
   candidates may all lie within e of the k-th), certified the same way; then, for the few
   queries still open, direct float64 differences against every reference row, or, for many,
   float64 screening of both sets centred on the reference mean (so a large common offset, e.g.
   raw coordinates far from the origin, does not swamp the gaps), certified, with direct
   differences for any query that still fails. The number of re-searched queries is reported
   as ``Neighbors.rechecked``.

Works unchanged on CPU and CUDA tensors (the reference stays on the device it is given). The
optional ``backend="faiss"`` screens with faiss's brute-force ``faiss.knn`` (CPU) and then the same
exact re-ranking and certification, so both backends return identical results.

The float32 screening products on CPU may run through NumPy's BLAS where it was measured faster
than torch's (:mod:`kinetic_fm.gemm`). The results do not depend on it: the screening is
certified against the same rounding bound and re-ranked exactly.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from . import gemm
from .blocks import block_size
from .checks import (as_scalar, check_flag, check_integer, check_same_layout, first_non_number, is_integer,
                     is_number_kind, is_real, positive_integer, torch_readable, warn_of_label_columns)
from .exact_scaling import TINY, times_power_of_two, unit_exponent
from .result_repr import result_repr

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

BACKENDS = ("torch", "faiss")


@dataclass(frozen=True)
class Neighbors:
    """Result of :func:`nearest_neighbors`.

    Attributes:
        distances: (B, k) float64, exact Euclidean distances, ascending along each row.
        indices: (B, k) int64, row indices into ``reference``; equal float64 distances are
            ordered by lower index first (among the screened candidates, i.e. whenever no more
            than ``k + margin`` rows tie).
        rechecked: number of queries whose screening could not be certified and were searched
            again (a diagnostic: it costs time, never exactness).
    """

    distances: torch.Tensor
    indices: torch.Tensor
    rechecked: int = 0

    __repr__ = result_repr  # shapes and dtypes, not every element


def as_rows(name: str, value: Any, *, copy: bool = False) -> torch.Tensor:
    """``value`` as a tensor of shape (n, ...) with n ≥ 1; ValueError naming ``name`` otherwise.
    A pandas DataFrame or Series counts as its values (rows as rows), and a read-only array
    (``np.load(path, mmap_mode="r")``) is read without torch's warning of one: nothing here writes
    to it. A nested list or tuple of Python numbers is read as NumPy reads it (``np.asarray``):
    floats as float64, not torch's default float32, which would round 1 + 1e-12 to 1 and merge
    near-duplicates. ``copy``: a value that is not a tensor is copied (``torch.tensor``), never
    sharing an array's memory."""
    # a tensor as it is: torch.as_tensor would move it under torch.set_default_device
    convert = torch.tensor if copy else torch.as_tensor
    try:
        read = value
        if isinstance(value, (list, tuple)) and not _holds_tensors(value):
            import numpy as np

            read = np.asarray(value)  # ragged or non-numeric lists raise here, or below, as before
        with warnings.catch_warnings():  # a read-only array (np.load(mmap_mode="r")) is only read here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            tensor = read if isinstance(read, torch.Tensor) else convert(torch_readable(read))
    except (TypeError, ValueError, RuntimeError) as err:  # torch's own words name no argument
        first = str(err).split(". ")[0]
        raise ValueError(f"{name} must be an (n, ...) array of numbers; {_not_numbers(value)} ({first})") from None
    if tensor.dim() == 0:
        raise ValueError(f"{name} must have shape (n, ...), got a scalar")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    _warn_of_label_columns(name, value, tensor)
    return tensor


def _warn_of_label_columns(name: str, value: Any, tensor: torch.Tensor) -> None:
    """A pandas DataFrame whose columns, read side by side, include a class label: warned of as
    ``load_array`` warns of one in a Parquet table (the same frame saved and read back)."""
    columns = getattr(value, "columns", None)
    if columns is None or getattr(value, "ndim", None) != 2 or tuple(tensor.shape) != tuple(value.shape):
        return
    flat = tensor.detach().cpu().numpy()
    warn_of_label_columns(name, {label: flat[:, j] for j, label in enumerate(columns)}, list(columns),
                          lambda labels: f"pass the frame without it (frame.drop(columns={labels}))")


def _holds_tensors(items: list | tuple) -> bool:
    """Whether a tensor lies anywhere in the nested lists and tuples ``items`` (NumPy would read
    tensors of several values silently; torch refuses them, and :func:`_not_numbers` says why)."""
    stack = [items]
    while stack:
        for item in stack.pop():
            if isinstance(item, torch.Tensor):
                return True
            if isinstance(item, (list, tuple)):
                stack.append(item)
    return False


def _not_numbers(value) -> str:
    """What keeps ``value`` from being a tensor of numbers, in a few words."""
    import numpy as np

    dtypes = getattr(value, "dtypes", None)   # a pandas DataFrame: name the columns that are not numbers
    if dtypes is not None and hasattr(dtypes, "items"):
        flagged = [j for j, kind in enumerate(dtypes) if not is_number_kind(kind)]
        if flagged:
            text = [str(value.columns[j]) for j in flagged]
            listed = ", ".join(text[:5]) + (" ..." if len(text) > 5 else "")
            held = {j: value.iloc[:, j].to_numpy(dtype=object) for j in range(value.shape[1])}
            # the first value that is no number, in those columns first (a missing value of a
            # nullable column beside an object column of numbers is elsewhere)
            found = next(((str(value.columns[j]), hit) for j in flagged + sorted(set(held) - set(flagged))
                          if (hit := first_non_number(held[j])) is not None), None)
            if found is None:
                what = _BEYOND
            elif found[0] not in text:
                return (f"its column {found[0]} holds values other than numbers "
                        f"(row {found[1][0][0]}: {_shown(found[1][1])})")
            elif not any(is_real(v) for j in flagged for v in held[j]):
                what = "no numbers"
            else:
                what = "values other than numbers"
            column = "" if found is None or len(text) == 1 else f"column {found[0]}, "
            where = "" if found is None else f" ({column}row {found[1][0][0]}: {_shown(found[1][1])})"
            return (f"its column {listed} holds {what}" if len(text) == 1
                    else f"its columns {listed} hold {what}") + where
    if isinstance(value, np.ndarray) and value.dtype == object:
        found = first_non_number(value)
        if found is None:
            return f"got a NumPy array of dtype object holding {_BEYOND}"
        what = "values other than numbers" if any(is_real(v) for v in value.flat) else "no numbers"
        return f"got a NumPy array of dtype object holding {what} ({list(found[0])}: {_shown(found[1])})"
    if isinstance(value, np.ndarray):
        return f"got a NumPy array of dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(item, torch.Tensor) for item in value):  # e.g. samples kept batch by batch
            return f"got a {type(value).__name__} of {len(value)} tensors: torch.cat (or torch.stack) them into one"
        return "got a nested sequence that is not a rectangular array of numbers"
    return f"got {type(value).__name__}"


# every element a number, and still no array of them: what torch_readable's conversion overflowed
_BEYOND = "integers beyond int64's range, or numbers beyond float64's"


def _shown(element) -> str:
    """An element that is not a number, as an error names it: its repr (shortened) and its type."""
    text = repr(element)
    return f"{text if len(text) <= 40 else text[:37] + '...'}, a {type(element).__name__}"


def check_exact_integers(name: str, tensor: torch.Tensor) -> None:
    """ValueError naming ``name`` when a 64-bit integer ``tensor`` holds values beyond 2**53 in
    magnitude, which float64 (every distance here) rounds: nanosecond times near 1.7e18 are 256
    apart there, so a distance of 150 read 0. Narrower integers always fit."""
    if tensor.numel() == 0 or tensor.dtype not in (torch.int64, torch.uint64):
        return
    if tensor.dtype == torch.uint64:              # torch has no max of uint64
        largest = int(tensor.cpu().numpy().max())
    else:
        largest = max(abs(int(tensor.max())), abs(int(tensor.min())))
    if largest > 2 ** 53:
        raise ValueError(f"{name} holds integers beyond 2**53 in magnitude (up to {largest}), which float64 "
                         "distances cannot hold exactly; subtract a common offset (e.g. the smallest value) "
                         "from both sets first")


def _flatten(name: str, value) -> torch.Tensor:
    tensor = as_rows(name, value).detach()       # distances are not differentiable here
    check_exact_integers(name, tensor)
    if tensor.dtype in (torch.uint16, torch.uint32, torch.uint64):
        tensor = tensor.to(torch.float64)        # few kernels take them; exact up to uint32
    elif tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)          # 0/1, as the metrics' feature maps read binary data
    if not (tensor.is_floating_point() or tensor.dtype in (torch.uint8, torch.int8, torch.int16,
                                                           torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    return tensor.reshape(tensor.shape[0], -1)


def _working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit round-off of a GEMM in ``dtype`` on ``device`` (TF32 counts when torch enables it)."""
    if dtype == torch.float64:
        return 2.0 ** -53
    if device.type == "cuda" and cuda_matmul_uses_tf32():
        return 2.0 ** -11
    return 2.0 ** -24


def cuda_matmul_uses_tf32() -> bool:
    """Whether torch runs float32 CUDA matrix products in TF32, however that was switched on.

    torch ≥ 2.9 has a second API (``fp32_precision``, which also reflects ``allow_tf32`` and
    ``set_float32_matmul_precision``); once it has been used, reading the legacy ``allow_tf32``
    raises, so the new attribute is read where it exists.
    """
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is None:  # torch < 2.9
        return bool(torch.backends.cuda.matmul.allow_tf32)
    return precision == "tf32"


def check_same_rows(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    """ValueError unless ``a`` and ``b`` hold the same rows: leave-one-out (``exclude_self``) drops
    row i of the reference for query i, which is right only when the queries ARE the reference."""
    if _same_memory(a, b):  # e.g. two flattened views of one tensor: nothing to compare
        return
    if not torch.equal(a, b):
        raise ValueError(f"exclude_self=True drops reference row i for query i, so {a_name} must be "
                         f"{b_name} itself; these are two different sets of the same length (for "
                         "another set, leave exclude_self off)")


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` read the same elements of the same memory (so hold equal values)."""
    return a is b or (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
                      and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


def own_diagonal(q0: int, c0: int, rows: int, columns: int) -> tuple[slice, slice] | None:
    """Where a (rows, columns) block of queries q0.. against reference rows c0.. pairs query i
    with reference row i (leave-one-out: the queries are the reference), as (row slice, column
    slice) of a square sub-block whose diagonal those pairs are; None when the block has none.
    Worked out on the host: no index tensor, no synchronisation."""
    first, last = max(c0 - q0, 0), min(c0 + columns - q0, rows)
    if first >= last:
        return None
    return slice(first, last), slice(q0 + first - c0, q0 + last - c0)


def nonfinite_rows(tensor: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """Indices (increasing, int64) of the rows of ``tensor`` that hold NaN or ±inf.

    A row holding NaN or ±inf has a non-finite sum, so row sums screen the tensor in one
    reduction (20x faster than an element-wise test on the CPU, and without an element-wise
    mask of the whole set: 1 GiB for 50,000 CIFAR-10 images); only rows whose sum is not finite,
    which includes finite rows whose sum overflows, are tested element by element.
    """
    if not tensor.is_floating_point() or tensor.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=tensor.device)
    flat = tensor.reshape(tensor.shape[0], -1)
    suspects = (~torch.isfinite(flat.sum(dim=1))).nonzero().flatten()
    if not suspects.numel():  # the usual case: the host knows it from the nonzero, nothing more to read back
        return suspects
    bad = [ids[~torch.isfinite(flat[ids]).all(dim=1)] for ids in suspects.split(rows)]
    return torch.cat(bad)


def listed_rows(rows: torch.Tensor) -> str:
    """The first ten of the indices ``rows`` (as :func:`nonfinite_rows` gives them) as a list, " ..." after
    them when there are more: ``[1, 4]``, ``[0, 1, ..., 9] ...``; one wording for every refusal naming rows."""
    return f"{rows[:10].tolist()}{' ...' if rows.numel() > 10 else ''}"


def refuse_nonfinite_rows(tensor: torch.Tensor, said: str) -> None:
    """ValueError "``said`` [rows]" (:func:`listed_rows`) when rows of ``tensor`` hold NaN or inf
    (screened by :func:`nonfinite_rows`); ``said`` ends where the rows are named ("x has non-finite
    values in rows")."""
    bad = nonfinite_rows(tensor)
    if bad.numel():
        raise ValueError(f"{said} {listed_rows(bad)}")


def check_finite(name: str, tensor: torch.Tensor, rows: int = 4096) -> None:
    """Raise ValueError naming ``name``, the first offending row and its first non-finite value
    and place when ``tensor`` has NaN/inf (screened by :func:`nonfinite_rows`)."""
    where = nonfinite_rows(tensor, rows)
    if where.numel():
        first = int(where[0])
        raise ValueError(f"{name} contains NaN or inf in {where.numel()} row(s), first at row {first} "
                         f"({first_nonfinite(tensor[first])})")


def first_nonfinite(item: torch.Tensor) -> str:
    """The first NaN or ±inf of one row ``item`` and where it lies in the row, in words: "inf at
    column 0" for a row of values, "NaN at (0, 4, 7)" for an image: NaN reads as missing data,
    inf as an overflow, so which one it is says where to look."""
    place = [int(i) for i in (~torch.isfinite(item)).nonzero()[0]] if item.dim() else []
    value = float(item[tuple(place)])
    word = "NaN" if value != value else "inf" if value > 0 else "-inf"
    if not place:
        return word
    return f"{word} at column {place[0]}" if len(place) == 1 else f"{word} at {tuple(place)}"


def magnitude_limit(dtype: torch.dtype, dim: int) -> float:
    """Largest |entry| of (n, ``dim``) rows whose squared norms and pairwise products stay finite
    in ``dtype`` with room to spare: sqrt(finfo(dtype).max / (8·dim)), so ‖x‖² ≤ max/8 and
    ‖y‖² + 2|x·y| ≤ 3·max/8."""
    return math.sqrt(torch.finfo(dtype).max / (8.0 * max(1, dim)))


def abs_max(rows: torch.Tensor) -> float:
    """max |entry| of ``rows`` as a float (one reduction, no copy; 0.0 for integer types narrower
    than 64 bits, which cannot reach any overflow limit)."""
    if rows.is_floating_point():
        return float(torch.linalg.vector_norm(rows, ord=math.inf)) if rows.numel() else 0.0
    if rows.dtype == torch.int64 and rows.numel():
        return float(max(abs(int(rows.max())), abs(int(rows.min()))))
    return 0.0


def check_magnitude(name: str, rows: torch.Tensor, dtype: torch.dtype, *, largest: float | None = None,
                    wider: str = "pass every input as float64") -> None:
    """ValueError naming ``name`` when the (n, D) ``rows`` hold entries so large that squared
    distances formed in ``dtype`` would overflow (see :func:`magnitude_limit`); the message gives
    the magnitude, the limit and the remedy (``wider``: how to get float64 distances, offered
    when they would not overflow). ``largest``: max |entry| if already known. NaN is left to
    :func:`check_finite`."""
    dim = rows.shape[1] if rows.dim() > 1 else 1
    limit = magnitude_limit(dtype, dim)
    largest = abs_max(rows) if largest is None else largest
    if largest > limit:
        remedy = "rescale the data (distances scale with it)"
        if dtype != torch.float64 and largest <= magnitude_limit(torch.float64, dim):
            remedy += f", or {wider}"
        raise ValueError(
            f"{name} holds values up to {largest:.3g} in magnitude; with {dim} features, squared "
            f"distances in {str(dtype).replace('torch.', '')} overflow above {limit:.3g}: {remedy}"
        )


def column_mean(rows: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """(D,) float64 mean of the rows of a (N, D) tensor, summed in float64 ``block`` rows at a
    time (no full float64 copy)."""
    total = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    for r0 in range(0, rows.shape[0], block):
        total += rows[r0:r0 + block].to(torch.float64).sum(dim=0)
    return total / max(1, rows.shape[0])


def row_sq_norms(rows: torch.Tensor, dtype: torch.dtype, *, centre: torch.Tensor | None = None) -> torch.Tensor:
    """‖y_j‖² (or ‖y_j − centre‖² for a (D,) ``centre``) of each row of a (N, D) tensor,
    accumulated in ``dtype`` (in blocks of :func:`kinetic_fm.blocks.block_size`, no full copy).

    Used for screening and rounding bounds only: in float32 its error (≤ D·u·‖y‖²) is inside the
    screening bound.
    """
    out = torch.empty(rows.shape[0], dtype=dtype, device=rows.device)
    block = block_size(rows.device, rows.shape[1] * torch.finfo(dtype).bits // 8, rows.shape[0])
    for r0 in range(0, rows.shape[0], block):
        blk = rows[r0:r0 + block].to(dtype)
        if centre is not None:
            blk = blk - centre
        out[r0:r0 + block] = torch.einsum("ij,ij->i", blk, blk)
    return out


def nearest_neighbors(
    queries: torch.Tensor | np.ndarray | pd.DataFrame,
    reference: torch.Tensor | np.ndarray | pd.DataFrame,
    k: int = 1,
    *,
    chunk: int = 8192,
    batch_chunk: int = 1024,
    margin: int = 4,
    exclude_self: bool = False,
    backend: str = "torch",
    progress: bool = False,
    check_inputs: bool = True,
    names: tuple[str, str] = ("queries", "reference"),
) -> Neighbors:
    """The k nearest rows of ``reference`` for every row of ``queries``, exact in float64.

    Args:
        queries: (B, ...) tensor (or NumPy array, nested list read as ``np.asarray`` reads it, or
            DataFrame of rows, a whole-number column named like a class label warned of); flattened
            to (B, D). Any real dtype (bool read as 0/1) and device.
        reference: (N, ...) rows with the same number of features D, on the same device.
        k: number of neighbours, 1 ≤ k ≤ N (≤ N − 1 with ``exclude_self``).
        chunk: reference rows per GEMM (bounds the (batch_chunk, chunk) score block).
        batch_chunk: query rows per block.
        margin: extra candidates kept per query for the exact re-ranking (≥ 0; at least one is
            kept, which the certificate needs).
        exclude_self: queries and reference are the same set (B == N); query i never matches
            reference row i. Exclusion is by index: duplicates at other rows still count.
        backend: "torch" (GEMM on the inputs' device) or "faiss" (``faiss.knn``'s brute force on CPU,
            needs ``pip install faiss-cpu``); both end with the same exact re-ranking.
        progress: show a tqdm bar over the queries (on stderr; off by default). Queries whose
            screening is not certified are searched again after the last block; the bar's total
            then grows by their number, its description says it re-checks them, and it fills
            only when they are done.
        check_inputs: scan both sets for NaN/inf first (one pass over each); callers that
            checked them already (memorization, the EFM field's fixed atoms) skip it.
        names: what to call the two sets in error messages (callers pass their own argument names).

    Returns:
        :class:`Neighbors` with (B, k) float64 distances and int64 indices on the queries' device.

    Raises:
        ValueError: empty inputs, NaN or inf in either set, mismatched features or devices,
            entries so large that squared distances overflow the working dtype (float32 unless
            both sets are float64; see :func:`magnitude_limit`), or arguments out of range (each
            named).
    """
    q_name, r_name = names
    check_same_layout((q_name, queries), (r_name, reference))
    x = _flatten(q_name, queries)
    y = _flatten(r_name, reference)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{q_name} and {r_name} must have the same number of features, got {x.shape[1]} and {y.shape[1]}"
        )
    if x.shape[1] == 0:  # every distance would read 0
        raise ValueError(f"{q_name} and {r_name} have no features (shapes {tuple(x.shape)} and {tuple(y.shape)})")
    if x.device != y.device:
        raise ValueError(f"{q_name} and {r_name} must be on the same device, got {x.device} and {y.device}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    exclude_self = check_flag("exclude_self", exclude_self)
    if exclude_self and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"exclude_self needs {q_name} and {r_name} of equal length, got {x.shape[0]} and {y.shape[0]}"
        )
    if exclude_self and y.shape[0] < 2:
        raise ValueError(f"exclude_self needs a {r_name} of at least 2 rows, got {y.shape[0]}")
    n_ref = y.shape[0] - (1 if exclude_self else 0)
    count = as_scalar(k)  # a 0-d tensor or array counts, as in checks.check_integer
    if not (is_integer(count) and 1 <= count <= n_ref):
        raise ValueError(f"k must be an integer in [1, {n_ref}] (reference size{' − 1' if exclude_self else ''}), got {k!r}")
    chunk, batch_chunk = positive_integer("chunk", chunk), positive_integer("batch_chunk", batch_chunk)
    k, margin = int(count), check_integer("margin", margin, 0)
    if check_inputs:
        check_finite(q_name, x)
        check_finite(r_name, y)
    if exclude_self:
        check_same_rows(q_name, x, r_name, y)
    dtype = _working_dtype(x, y)
    screen_dtype = torch.float32 if backend == "faiss" else dtype
    # a certificate compares the k-th exact distance with the screened one of a candidate beyond
    # it, so one more is kept even at margin 0 (with k alone every query went to the re-search)
    n_candidates = min(k + max(margin, 1), n_ref)
    # rows so large that ‖x‖², ‖y‖² or x·y overflow the screening dtype would rank by inf/NaN:
    # refuse them (one max-|x| reduction over the queries; the reference's norms are at hand)
    x_largest = abs_max(x)
    # faiss screens in float32 whatever the inputs; float64 screening is the torch backend's
    wider = "pass every input as float64"
    if backend == "faiss":
        wider = ("use backend='torch', which screens float64 inputs in float64" if dtype == torch.float64
                 else "use backend='torch' and pass every input as float64")
    check_magnitude(q_name, x, screen_dtype, largest=x_largest, wider=wider)
    y_sq = row_sq_norms(y, dtype)                             # computed once per call
    if not float(y_sq.max()) <= torch.finfo(screen_dtype).max / 8.0:
        check_magnitude(r_name, y, screen_dtype, wider=wider)
    y_norm_max = float(y_sq.max().double().sqrt()) * (1 + 1e-3)
    # rows this small leave the dtype's normal range in their products, where the certificate's
    # relative rounding bound fails (float32 at 1e-22 certified wrong neighbours) and float64's d²
    # loses digits (1e-160): search a copy scaled by a power of two, which is exact. The norms
    # bound every entry, so the exact pass over the reference runs only for such small sets.
    if x.is_floating_point() and y.is_floating_point() and max(x_largest, y_norm_max) < TINY:
        e = unit_exponent(max(x_largest, abs_max(y)))
        if e:
            found = nearest_neighbors(times_power_of_two(x, e), times_power_of_two(y, e), k, chunk=chunk,
                                      batch_chunk=batch_chunk, margin=margin, exclude_self=exclude_self,
                                      backend=backend, progress=progress, check_inputs=False, names=names)
            return Neighbors(times_power_of_two(found.distances, -e), found.indices, found.rechecked)

    blas = "torch" if backend == "faiss" else gemm.choose(dtype, x.device, 2.0 * x.shape[0] * x.shape[1] * y.shape[0])
    from tqdm.auto import tqdm

    y_rows = _faiss_rows(y) if backend == "faiss" else None

    def screen(xb, n, query_ids):
        if backend == "faiss":
            return _screen_faiss(xb, y_rows, n, exclude_self, query_ids)
        return _screen_gemm(xb, y, dtype, y_sq, n, chunk, exclude_self, query_ids, blas)

    # each block's results go into these, not into lists for torch.cat: small results kept between
    # the blocks' temporaries kept glibc from reusing their memory (after a 20,000 x 3,072 self-search
    # its heap held 57-78 MiB free, now 22-33; BENCHMARKS.md, metrics memory)
    d2 = torch.empty(x.shape[0], k, dtype=torch.float64, device=x.device)
    idx = torch.empty(x.shape[0], k, dtype=torch.int64, device=x.device)
    ok = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
    blocks = range(0, x.shape[0], batch_chunk)
    with tqdm(total=x.shape[0], desc="nearest neighbours", unit="query", leave=False, disable=not progress) as bar:
        for q0 in blocks:
            xb = x[q0:q0 + batch_chunk]
            cand, worst, u = screen(xb, n_candidates, q0)
            rows = slice(q0, q0 + xb.shape[0])
            d2[rows], idx[rows], ok[rows] = _rerank_and_certify(xb, y, cand, worst, k, u, y_norm_max)
            if q0 != blocks[-1]:  # the last block counts once the re-check's size is on the bar
                bar.update(xb.shape[0])
        # searched together after the last block: the float64 re-screen, when it comes to that,
        # then centres the reference's chunks once per call rather than once per query block
        # (and the host learns which queries are left once per call)
        ids = (~ok).nonzero().flatten()
        if ids.numel():  # the bar then counts each uncertified query twice: screened, re-checked
            bar.total += ids.numel()
            bar.set_description(f"nearest neighbours: re-checking {ids.numel()} uncertified", refresh=False)
        bar.update(xb.shape[0])
        if ids.numel():
            d2[ids], idx[ids] = _search_again(x, ids, y, k, screen, y_norm_max, n_candidates, batch_chunk, chunk,
                                              exclude_self)
            bar.update(ids.numel())
    return Neighbors(d2.sqrt(), idx, ids.numel())


def _screen_gemm(xb, y, dtype, y_sq, n_candidates, chunk, exclude_self, q0, blas, centre=None):
    """Running top-`n_candidates` by screened score ‖y‖² − 2x·y; returns (indices, worst score, u).

    One product per reference chunk through ``blas`` (:mod:`kinetic_fm.gemm`). ``worst`` is the
    screened squared distance (‖x‖² added back, float64) of the last candidate, or +inf when
    every reference row is a candidate. ``q0``: the queries' first index, or (b,) their indices
    (for ``exclude_self``). With a (D,) ``centre``, both sets are screened minus it (``y_sq``
    then holds the centred ‖y − centre‖²).
    """
    x_work = xb.to(dtype) if centre is None else xb.to(dtype) - centre
    x_neg2 = -2.0 * x_work                        # exact (a power of two)
    n = y.shape[0]
    query_ids = torch.arange(x_work.shape[0], device=x_work.device) + q0 if isinstance(q0, int) else q0
    # one score buffer for all chunks: a fresh (b, chunk) block per chunk costs page faults
    buffer = torch.empty(x_work.shape[0], min(chunk, n), dtype=dtype, device=xb.device)
    best_val = best_idx = None
    for c0 in range(0, n, chunk):
        if centre is None:
            y_c = y[c0:c0 + chunk].to(dtype)                  # a no-op unless dtypes differ
        else:  # the subtraction promotes to the centre's dtype: one temporary, not a cast and a copy
            y_c = (y[c0:c0 + chunk] - centre).to(dtype)
        scores = gemm.matmul(x_neg2, y_c.T, out=buffer[:, :y_c.shape[0]], blas=blas)
        scores.add_(y_sq[c0:c0 + chunk].to(dtype))
        if exclude_self and isinstance(q0, int):  # query r is reference row q0 + r: a diagonal of the block
            own = own_diagonal(q0, c0, scores.shape[0], y_c.shape[0])
            if own is not None:
                scores[own].diagonal().fill_(math.inf)
        elif exclude_self:  # scattered queries: each row's own column, or its current score where outside
            local = query_ids - c0
            inside = (local >= 0) & (local < y_c.shape[0])
            own = local.clamp(0, y_c.shape[0] - 1)[:, None]
            scores.scatter_(1, own, scores.gather(1, own).masked_fill_(inside[:, None], math.inf))
        take = min(n_candidates, scores.shape[1])
        val, idx = torch.topk(scores, take, dim=1, largest=False, sorted=False)
        idx = idx + c0
        if best_val is not None:
            val, idx = torch.cat([best_val, val], 1), torch.cat([best_idx, idx], 1)
            if val.shape[1] > n_candidates:
                val, pos = torch.topk(val, n_candidates, dim=1, largest=False, sorted=False)
                idx = idx.gather(1, pos)
        best_val, best_idx = val, idx
    if best_idx.shape[1] + (1 if exclude_self else 0) >= n:       # everything is a candidate
        worst = torch.full((x_work.shape[0],), math.inf, dtype=torch.float64, device=x_work.device)
    else:
        x_sq = row_sq_norms(x_work, torch.float64)   # a float64 sum of squares, in blocks (no full copy)
        worst = best_val.double().max(dim=1).values + x_sq
    return best_idx, worst, unit_roundoff(dtype, y.device)


def faiss_module(user: str = "backend='faiss'") -> ModuleType:
    """The optional faiss package, for ``user`` (the argument or flag that asks for it);
    ImportError saying what to install where it is missing, or what failed where it is broken."""
    from .optional import import_optional

    return import_optional("faiss", user)


def _screen_faiss(xb, y_rows, n_candidates, exclude_self, q0):
    """faiss's screening of the queries ``xb`` against ``y_rows`` (:func:`_faiss_rows`); returns as
    :func:`_screen_gemm` does."""
    faiss = faiss_module()
    import numpy as np

    want = n_candidates + (1 if exclude_self else 0)
    xq = np.ascontiguousarray(xb.detach().cpu().to(torch.float32).numpy())
    # brute force on the rows where they lie: an IndexFlatL2 copies them into itself (a second
    # training set in memory), and its search runs the same knn_L2sqr, with the same bits
    dist, idx = faiss.knn(xq, y_rows, want)
    dist = torch.from_numpy(dist).to(xb.device, torch.float64)
    idx = torch.from_numpy(idx).to(xb.device)
    if exclude_self:
        own = (torch.arange(xb.shape[0], device=xb.device) + q0 if isinstance(q0, int) else q0)[:, None]
        is_self = idx == own
        # drop the self match if present, else the last column
        drop = torch.where(is_self.any(1), is_self.float().argmax(1), torch.full_like(own[:, 0], want - 1))
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[torch.arange(idx.shape[0], device=idx.device), drop] = False
        idx = idx[keep].view(idx.shape[0], want - 1)
        dist = dist[keep].view(idx.shape[0], want - 1)
    if idx.shape[1] + (1 if exclude_self else 0) >= y_rows.shape[0]:
        worst = torch.full((xb.shape[0],), math.inf, dtype=torch.float64, device=xb.device)
    else:
        worst = dist.max(dim=1).values
    return idx, worst, 2.0 ** -24


_FAISS_CACHE: dict = {}


def _faiss_rows(y: torch.Tensor) -> np.ndarray:
    """The (N, D) reference ``y`` as the float32 C-contiguous NumPy rows faiss reads.

    A contiguous float32 CPU tensor is read where it lies (a view: the set is never held twice,
    and it is always the current data). Any other ``y`` (float64, integers, strided, on a GPU) is
    copied, and the copy reused while the same data is passed again (the EFM field's truncated
    mode searches its atoms at every call).

    The cache entry keeps ``y`` itself alive (so the last such set searched stays in memory until
    another replaces it): its memory cannot be freed and handed to another tensor at the same
    address, where a stale copy returned another set's neighbours, certified. The key adds
    shape, strides, dtype and in-place version; writes that bypass the version counter (through a
    NumPy view or ``.data``) are caught by :func:`_fingerprint`, which must still match.
    """
    if y.device.type == "cpu" and y.dtype == torch.float32 and y.is_contiguous():
        return y.detach().numpy()
    key = (y.data_ptr(), tuple(y.shape), y.stride(), y.dtype, y.device, y._version)
    sums = _fingerprint(y)
    entry = _FAISS_CACHE.get(key)
    if entry is not None and torch.equal(entry[2], sums):
        return entry[0]
    import numpy as np

    _FAISS_CACHE.clear()
    rows = np.ascontiguousarray(y.detach().to("cpu", torch.float32).numpy())
    _FAISS_CACHE[key] = (rows, y, sums)
    return rows


def _fingerprint(y: torch.Tensor) -> torch.Tensor:
    """(2, D) column sums of the (N, D) reference set ``y`` and its sums weighted by fixed random
    row weights, in one pass over ``y`` in its own float dtype (no copy: a float64 sum copied the
    set), integer sets in float64 blocks. Plain sums miss a permutation of rows (a shuffle through
    a NumPy view); the weighted ones see it unless the swapped rows are (nearly) equal, which
    moves no distance. A change small enough to vanish in the sums moves the answer as little."""
    weights = torch.rand(y.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                         device="cpu")  # the generator's device, whatever the default device is
    work = y.dtype if y.is_floating_point() else torch.float64
    weights = weights.to(device=y.device, dtype=work)
    sums = torch.zeros(2, y.shape[1], dtype=work, device=y.device)
    rows = y.shape[0] if y.is_floating_point() else 4096
    for r0 in range(0, y.shape[0], rows):
        block = y[r0:r0 + rows].to(work)
        sums[0] += block.sum(dim=0)
        sums[1] += torch.mv(block.T, weights[r0:r0 + rows])
    return sums


def _rerank_and_certify(xb, y, cand, worst, k, u, y_norm_max, centre=None):
    """Exact float64 squared distances to the candidates, the k best, and a per-query certificate.

    ``u``, ``y_norm_max`` and ``centre`` describe the screening that chose ``cand`` (its rounding
    bound is taken on the centred queries when it was centred). Equal distances keep the lower
    reference index first.
    """
    cand = cand.sort(dim=1).values                # index order, so the stable sort below breaks ties by index
    n_cand, dim = cand.shape[1], y.shape[1]
    rows = block_size(xb.device, n_cand * dim * 8, xb.shape[0])   # (rows, n_cand, D) float64 blocks
    d2_all = torch.empty(cand.shape, dtype=torch.float64, device=xb.device)
    # index_select into reused buffers, then in place: same bits as y[c].double() − x, without
    # a fresh (rows, n_cand, D) block each time (page faults: 1.4-3x slower re-ranking, measured
    # alone; 1.02-1.11x on whole searches)
    gathered = torch.empty(rows * n_cand, dim, dtype=y.dtype, device=xb.device)
    diff = torch.empty(rows, n_cand, dim, dtype=torch.float64, device=xb.device)
    for r0 in range(0, xb.shape[0], rows):
        xs = xb[r0:r0 + rows].double()
        c = cand[r0:r0 + rows].clamp_min(0)                   # faiss's −1 padding, masked below
        m = c.shape[0]
        ys = torch.index_select(y, 0, c.flatten(), out=gathered[:m * n_cand]).view(m, n_cand, dim)
        part = diff[:m].copy_(ys).sub_(xs[:, None, :]).square_()
        torch.sum(part, dim=2, out=d2_all[r0:r0 + m])
    d2_all = torch.where(cand < 0, torch.full_like(d2_all, math.inf), d2_all)  # faiss pads with -1
    d2, order = torch.sort(d2_all, dim=1, stable=True)
    d2, idx = d2[:, :k], cand.gather(1, order[:, :k])
    x_work = xb.double() if centre is None else xb.double() - centre
    error = _screening_error(torch.linalg.vector_norm(x_work, dim=1), y_norm_max, xb.shape[1], u)
    # a tie with an unseen row passes only past a rounding bound (all-zero rows have none: there
    # an equal worst candidate may hide lower-indexed ties)
    margin = worst - error
    ok = (margin > d2[:, -1]) | ((margin == d2[:, -1]) & (error > 0)) | torch.isinf(worst)
    return d2, idx, ok


def _screening_error(x_norm: torch.Tensor, y_norm_max: float, dim: int, u: float) -> torch.Tensor:
    """(b,) float64 bound on |screened − exact| squared distance from queries of norms ``x_norm``
    (b,) to any reference row of norm ≤ ``y_norm_max`` (both about the screening's centre, if
    any), in ``dim`` features, screened with unit round-off ``u``: (D + 6)·u·(‖x‖ + R)².

    D·u covers the GEMM's −2x·y and ‖y‖², and the rest the centring of x and y, the score's add,
    ‖x‖² (a float64 sum of squares, :func:`row_sq_norms`) and its add: measured against exact
    rational arithmetic on adversarial float64 cases (queries ~1 from a tight cluster far from the
    origin), the error reaches 0.52 of this bound
    at D = 1–4; the earlier (D + 3)·u, with ‖x‖² formed as a squared norm, was exceeded (1.1× at
    D = 2), though no wrong neighbour was found."""
    return (dim + 6) * u * (x_norm + y_norm_max).pow(2)


@dataclass(frozen=True)
class _Centred:
    """The reference's float64 column mean, and its rows' squared norms and largest norm about it."""

    centre: torch.Tensor
    sq_norms: torch.Tensor
    norm_max: float

    @classmethod
    def of(cls, y: torch.Tensor) -> "_Centred":
        centre = column_mean(y)
        sq = row_sq_norms(y, torch.float64, centre=centre)
        return cls(centre, sq, float(sq.max().sqrt()) * (1 + 1e-3))


# the float64 re-screening centres each reference chunk in a temporary: at most this many bytes
_RESCREEN_BLOCK_BYTES = 64 << 20

# uncertified queries are screened again as the first time, keeping this many times the candidates
# (1: not at all). In high dimensions distances crowd together, and k + margin candidates can all
# fall within the rounding bound of the k-th; a cluster of near-duplicates smaller than the wider
# set is settled too. Twice as many settled every such query of 2,000 uniform ones against 20,000
# at D = 3,072 (31 at k = 2; 756 at k = 10, a one-off run) and of blurred CIFAR-10 images; 4x
# leaves room, and re-ranking them stays small beside a pass over the reference. Queries under a
# large common offset gain nothing from it and pay one more screening of themselves.
_WIDER_CANDIDATES = 4
# ... within this many bytes of one query's float64 candidate differences (the re-ranking's
# (rows, candidates, D) block has at least one row): at k = 2,000, D = 3,072 the fourfold set
# would hold 197 MB a row
_WIDER_ROW_BYTES = 64 << 20

# direct differences for this many queries cost about as much as centring the reference in float64
# and re-screening it, so fewer still-uncertified queries than this skip the re-screen. Both grow
# with N·D, the re-screen hardly with the queries. On one thread of a 2-core CPU
# (benchmarks/nn_recheck.py --break-even) the two cost the same at 10-13 queries at N = 20,000,
# D = 3,072 (about 1.3 s); at N = 50,000, D = 256 at 4-7 (about 0.2 s)
_BRUTE_FORCE_BREAK_EVEN = 8


def _search_again(x, ids, y, k, screen, y_norm_max, n_candidates, batch_chunk, chunk, exclude_self):
    """(b, k) exact squared distances and indices for the queries ``x[ids]`` ((b,) int64 indices
    into the (B, D) ``x``) whose first screening, ``screen(xs, n, query_ids)`` with
    ``n_candidates`` candidates and the reference's norms bounded by ``y_norm_max``, was not
    certified.

    Cheapest route first: (1) the same screening with :data:`_WIDER_CANDIDATES` times the
    candidates (within :data:`_WIDER_ROW_BYTES`), certified; (2) what is left, by direct float64 differences when fewer than
    :data:`_BRUTE_FORCE_BREAK_EVEN` queries, else by float64 screening about the reference mean,
    certified, and direct differences for any query still uncertified. The screenings walk
    ``batch_chunk`` queries at a time.
    """
    d2 = torch.empty(ids.shape[0], k, dtype=torch.float64, device=x.device)
    idx = torch.empty(ids.shape[0], k, dtype=torch.int64, device=x.device)
    left = torch.arange(ids.shape[0], device=x.device)          # positions in ids not yet certified
    n_wider = min(_WIDER_CANDIDATES * n_candidates, max(n_candidates, _WIDER_ROW_BYTES // (8 * y.shape[1])),
                  y.shape[0] - (1 if exclude_self else 0))
    if n_wider > n_candidates:
        left = _certify_in_blocks(left, d2, idx, ids, x, y, k, batch_chunk,
                                  lambda xs, query_ids: screen(xs, n_wider, query_ids), y_norm_max)
    if left.numel() >= _BRUTE_FORCE_BREAK_EVEN:
        centred = _Centred.of(y)
        # the search's own chunk (16k rows) made two 384 MiB float64 temporaries at D = 3,072
        rows = min(chunk, max(256, _RESCREEN_BLOCK_BYTES // (8 * max(1, y.shape[1]))))

        def about_the_mean(xs, query_ids):
            return _screen_gemm(xs, y, torch.float64, centred.sq_norms, n_candidates, rows, exclude_self,
                                query_ids, "torch", centre=centred.centre)

        left = _certify_in_blocks(left, d2, idx, ids, x, y, k, batch_chunk, about_the_mean, centred.norm_max,
                                  centred.centre)
    if left.numel():   # _brute_force blocks its queries itself
        d2[left], idx[left] = _brute_force(x[ids[left]], y, k, ids[left] if exclude_self else None)
    return d2, idx


def _certify_in_blocks(positions, d2, idx, ids, x, y, k, batch_chunk, screen, norm_max, centre=None):
    """Screen the queries ``x[ids[positions]]`` ``batch_chunk`` at a time with
    ``screen(xs, query_ids)`` -> (candidates, worst, u), about ``centre`` (or the origin) where
    the reference's norms are at most ``norm_max``; re-rank and certify. Writes the certified
    queries' rows of the (b, k) ``d2`` and ``idx`` and returns the positions left uncertified.

    The uncertified queries' rows are written too, to be overwritten by the next stage: so the
    host learns which are left once per call, not per block."""
    if not positions.numel():
        return positions
    certified = []
    for p0 in range(0, positions.shape[0], batch_chunk):
        at = positions[p0:p0 + batch_chunk]
        xs = x[ids[at]]
        cand, worst, u = screen(xs, ids[at])
        d2[at], idx[at], ok = _rerank_and_certify(xs, y, cand, worst, k, u, norm_max, centre=centre)
        certified.append(ok)
    return positions[(~torch.cat(certified)).nonzero().flatten()]


# direct differences make a (queries, rows, D) float64 block; only uncertifiable queries come here
_BRUTE_BLOCK_BYTES = 16 << 20


def _brute_force(xs, y, k, own=None, queries_per_block: int = 16):
    """(b, k) exact float64 squared distances and indices by direct differences, reference rows in
    blocks (lower index first among equal distances); ``own``: (b,) indices to skip (exclude_self)."""
    n, dim = y.shape
    out_d = torch.empty(xs.shape[0], k, dtype=torch.float64, device=xs.device)
    out_i = torch.empty(xs.shape[0], k, dtype=torch.int64, device=xs.device)
    for q0 in range(0, xs.shape[0], queries_per_block):
        x64 = xs[q0:q0 + queries_per_block].double()
        b = x64.shape[0]
        best_d = torch.empty(b, 0, dtype=torch.float64, device=xs.device)
        best_i = torch.empty(b, 0, dtype=torch.int64, device=xs.device)
        rows = max(1, _BRUTE_BLOCK_BYTES // (b * dim * 8))
        for c0 in range(0, n, rows):
            ys = y[c0:c0 + rows].double()
            d2 = (ys[None] - x64[:, None, :]).square_().sum(dim=2)             # (b, rows)
            ids = torch.arange(c0, c0 + ys.shape[0], device=xs.device).expand(b, -1)
            if own is not None:
                d2 = torch.where(ids == own[q0:q0 + b, None], torch.full_like(d2, math.inf), d2)
            # earlier blocks hold lower indices, so a stable sort keeps ties in index order
            d2, order = torch.sort(torch.cat([best_d, d2], dim=1), dim=1, stable=True)
            best_d = d2[:, :k]
            best_i = torch.cat([best_i, ids], dim=1).gather(1, order[:, :k])
        out_d[q0:q0 + b], out_i[q0:q0 + b] = best_d, best_i
    return out_d, out_i
