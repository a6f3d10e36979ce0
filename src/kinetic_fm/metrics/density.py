"""Local support of samples with respect to a reference set: kNN radius/density and Gaussian KDE.

Both measure how densely the reference (e.g. the training set) populates the neighbourhood of
each sample, in any feature space (pixels, a feature network, a callable; see
:mod:`kinetic_fm.metrics.features`). Higher density = more local support.

- :func:`local_support`: the distance to the k-th nearest reference for several k from ONE
  exact search (:func:`kinetic_fm.knn.nearest_neighbors`), and the kNN density
  estimate ``p̂_k(x) = k / (N · V_D · r_k(x)^D)`` in log form,
  ``log p̂_k = log k − log N − log V_D − D · log r_k`` with ``V_D = π^{D/2} / Γ(D/2 + 1)`` the
  volume of the unit D-ball. Only the ``−D · log r_k`` term varies between samples, so ranks
  (Spearman) are those of ``−r_k``.
- :func:`kde_log_density`: ``log p̂(x) = log (1/N) Σ_j N(x; y_j, h² I)`` with an isotropic
  bandwidth ``h`` (Scott's rule, the median heuristic or a given value), summed over ALL
  references: squared distances are GEMMs by (query block, reference chunk), never a (B, N, D)
  tensor, and each query keeps an online log-sum-exp in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import gemm
from ..blocks import block_size
from ..checks import (as_scalar, check_flag, check_integer, check_same_space, check_seed, is_integer, is_real,
                      positive_integer)
from ..exact_scaling import HUGE, TINY, ldexp, times_power_of_two, unit_exponent
from ..knn import check_same_rows, column_mean, listed_rows, own_diagonal, row_sq_norms
from ..result_repr import result_repr
from ..sampling.guards import feature_map_as_found
from .features import SpaceLike, as_features, feature_space

if TYPE_CHECKING:  # pragma: no cover - pandas is imported where a table is built
    import pandas as pd

__all__ = ["LocalSupport", "KDELogDensity", "local_support", "kde_log_density",
           "knn_log_density", "scott_bandwidth", "median_bandwidth", "sq_distance_blocks"]


def _log_unit_ball_volume(dim: int) -> float:
    return 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)


def knn_log_density(radius: Tensor, k: int, n_reference: int, dim: int) -> Tensor:
    """``log p̂_k = log k − log N − log V_D − D log r_k`` (natural log, float64; +inf where ``r_k = 0``).

    Args:
        radius: (B,) distances (not squared, >= 0, not NaN) to the k-th nearest of ``n_reference`` references.
        k: the neighbour count, an integer in [1, n_reference]. n_reference: N >= 1. dim: D >= 1.

    Raises:
        ValueError: a count outside its range, or ``radius`` not of shape (B,) or holding negative
            or NaN values (named by their positions).
    """
    n_reference, dim = positive_integer("n_reference", n_reference), positive_integer("dim", dim)
    k = check_integer("k", k, 1, n_reference, note="n_reference")
    radius = radius.to(torch.float64)
    if radius.ndim != 1:
        raise ValueError(f"radius must be a (B,) tensor of distances, got shape {tuple(radius.shape)}")
    for bad, what in ((radius < 0, "negative values"), (radius.isnan(), "NaN")):
        where = bad.nonzero().flatten()
        if where.numel():  # -D·log r of them was NaN, without a word
            raise ValueError(f"radius must be distances >= 0, got {what} at positions {listed_rows(where)}")
    const = math.log(k) - math.log(n_reference) - _log_unit_ball_volume(dim)
    return const - dim * torch.log(radius)


@dataclass(frozen=True)
class LocalSupport:
    """kNN local support of B samples against N references in D features.

    Attributes:
        ks: the neighbour counts reported, ascending.
        radii: (B, len(ks)) float64, exact Euclidean distance to the k-th nearest reference.
        k: the headline neighbour count (``radius`` and ``log_density`` use it).
        n_reference: N (minus one when the samples are the reference, ``exclude_self``).
        dim: D, the feature dimension.
        space: name of the feature space.
        nearest: (B,) int64 index of the nearest reference.
    """

    ks: tuple[int, ...]
    radii: Tensor
    k: int
    n_reference: int
    dim: int
    space: str
    nearest: Tensor

    __repr__ = result_repr  # shapes and dtypes, not every element

    def radius_at(self, k: int) -> Tensor:
        """(B,) float64 distance to the k-th nearest reference (k must be in ``ks``).

        Raises:
            ValueError: ``k`` is not an integer (a float such as 5.0, a bool), or not one of ``ks``.
        """
        number = as_scalar(k)
        if not is_integer(number):  # True was read as k = 1 and 5.0 as 5, which log_density_at refused
            raise ValueError(f"k must be an integer, one of the computed ks {self.ks}, got {k!r}")
        if number not in self.ks:
            raise ValueError(f"k={number} was not computed; available ks = {self.ks}")
        return self.radii[:, self.ks.index(number)]

    def log_density_at(self, k: int) -> Tensor:
        """(B,) float64 kNN log-density estimate with k neighbours (see module docstring).

        Raises:
            ValueError: as :meth:`radius_at`, for a ``k`` that is not an integer or not one of ``ks``.
        """
        return knn_log_density(self.radius_at(k), int(as_scalar(k)), self.n_reference, self.dim)

    @property
    def radius(self) -> Tensor:
        """(B,) float64 distance to the ``k``-th nearest reference (the headline k)."""
        return self.radius_at(self.k)

    @property
    def log_density(self) -> Tensor:
        """(B,) float64 kNN log-density estimate with the headline ``k``."""
        return self.log_density_at(self.k)

    def to_frame(self) -> "pd.DataFrame":
        """pandas DataFrame: ``knn_radius_k{k}`` and ``knn_log_density_k{k}`` for every k."""
        import pandas as pd

        cols: dict[str, Any] = {}
        for k in self.ks:
            cols[f"knn_radius_k{k}"] = self.radius_at(k).cpu().numpy()
        for k in self.ks:
            cols[f"knn_log_density_k{k}"] = self.log_density_at(k).cpu().numpy()
        return pd.DataFrame(cols)


DEFAULT_KS = (1, 5, 10)


def local_support(samples: Any, reference: Any, k: int = 5, ks: Sequence[int] | None = None,
                  space: SpaceLike = None, *, exclude_self: bool = False, chunk: int = 8192,
                  batch_chunk: int = 1024, backend: Literal["torch", "faiss"] = "torch",
                  reference_features: Tensor | np.ndarray | None = None) -> LocalSupport:
    """kNN radii for every k in ``ks ∪ {k}`` from one exact neighbour search.

    Args:
        samples: (B, ...) generated samples (or their features when ``space`` is None).
        reference: (N, ...) reference set, same trailing shape.
        k: headline neighbour count, a positive integer (default 5).
        ks: further neighbour counts to report, positive integers (the search runs once, for
            ``max(ks ∪ {k})``, which must not exceed the usable references). None (the default):
            those of (1, 5, 10) that do not exceed the usable references (N, or N − 1 with
            ``exclude_self``), so a small reference set is measured at the k asked for; ks given
            explicitly are never clipped (one that does not fit is refused, as is such a k).
        space: feature space both sets are mapped through (None = flattened inputs).
        exclude_self: the samples ARE the reference (leave-one-out: row i never matches row i).
        chunk, batch_chunk, backend: passed to ``nearest_neighbors``.
        reference_features: precomputed ``space(reference)``, a tensor or array of shape (N, D)
            with N the reference's rows, to reuse across calls.

    Returns:
        :class:`LocalSupport` on the samples' device.
    """
    from ..knn import nearest_neighbors

    k = positive_integer("k", k)
    ks = None if ks is None else _neighbour_counts(ks)
    exclude_self = check_flag("exclude_self", exclude_self)
    fs, x, y = _samples_and_reference(samples, reference, reference_features, space)
    _check_leave_one_out_rows(exclude_self, y)
    n_ref = y.shape[0] - (1 if exclude_self else 0)
    if ks is None:
        ks = tuple(j for j in DEFAULT_KS if j <= n_ref)
    all_ks = tuple(sorted({k, *ks}))
    if all_ks[-1] > n_ref:
        usable = f"N − 1 = {n_ref} with exclude_self" if exclude_self else f"N = {n_ref}"
        raise ValueError(f"largest k ({all_ks[-1]}, of k={k} and ks={tuple(ks)}) exceeds the {n_ref} usable "
                         f"references: k and every ks must lie in [1, {n_ref}] ({usable}); pass smaller k/ks "
                         "(ks=() reports k alone)")
    nn = nearest_neighbors(x, y, all_ks[-1], chunk=chunk, batch_chunk=batch_chunk,
                           exclude_self=exclude_self, backend=backend,
                           names=("samples", "reference" if reference_features is None else "reference_features"))
    radii = nn.distances[:, [j - 1 for j in all_ks]].contiguous()
    return LocalSupport(all_ks, radii, k, n_ref, x.shape[1], fs.name, nn.indices[:, 0])


def _neighbour_counts(ks: Any) -> tuple[int, ...]:
    """``ks`` as a tuple of positive Python ints; ValueError naming ``ks`` otherwise (a string
    or a single number is not a sequence of counts)."""
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise ValueError(f"ks must be a sequence of positive integers, got {ks!r}")
    counts = [as_scalar(j) for j in ks]
    if not all(is_integer(j) and j >= 1 for j in counts):
        raise ValueError(f"ks must be a sequence of positive integers, got {ks!r}")
    return tuple(int(j) for j in counts)


def _samples_and_reference(samples: Any, reference: Any, reference_features: Any, space: Any):
    """``(fs, x, y)``: the feature space ``space`` names, the samples' feature rows ``x`` and the
    reference's ``y`` (``reference_features`` when given), checked to agree in width and device."""
    fs = feature_space(space)
    _check_batch_axis(samples, reference)
    if reference_features is None:
        check_same_space(("samples", samples), ("reference", reference))
    with feature_map_as_found(fs.fn):  # warned once for both sets
        x = as_features(samples, fs, argument="samples", check_training=False)
        y = _reference_features(reference, reference_features, fs)
    _check_dims(x, y, "reference" if reference_features is None else "reference_features")
    return fs, x, y


def _check_batch_axis(samples: Any, reference: Any) -> None:
    """Refuse one sample given without its batch axis (``y[i]`` for ``y[i:i + 1]``): shaped as one
    reference row, it was read as rows of its first axis and met "different feature sizes"."""
    shape, row = getattr(samples, "shape", None), getattr(reference, "shape", None)
    if shape is None or row is None or len(row) < 2 or tuple(shape) != tuple(row[1:]):
        return
    if math.prod(shape[1:]) != math.prod(row[1:]):  # else (N, 1) references and (1,) samples: one row of one
        raise ValueError(f"samples has shape {tuple(shape)}, the shape of one reference row: one sample needs its "
                         f"batch axis, shape {(1, *shape)} (samples[None], or x[i:i + 1] for x[i])")


def _reference_features(reference: Any, reference_features: Any, fs) -> Tensor:
    """The reference's features: ``reference`` mapped through ``fs``, or the precomputed
    ``reference_features`` (tensor or array of shape (N, D), N = the reference's rows), checked."""
    if reference_features is None:
        return as_features(reference, fs, argument="reference", check_training=False)  # the caller warned
    shape = getattr(reference_features, "shape", None)
    shape = tuple(np.shape(reference_features) if shape is None else shape)  # lists of rows have no .shape
    if len(shape) != 2:
        raise ValueError(f"reference_features must have shape (N, D), got shape {shape}")
    y = as_features(reference_features, None, argument="reference_features")
    n = (reference.shape[0] if getattr(reference, "ndim", 0)
         else len(reference) if hasattr(reference, "__len__") else None)
    if n is not None and n != y.shape[0]:
        raise ValueError(f"reference_features has {y.shape[0]} rows but reference has {n}; "
                         "pass the features of this reference")
    return y


@dataclass(frozen=True)
class KDELogDensity:
    """Gaussian KDE log-density of B samples under N references.

    Attributes:
        log_density: (B,) float64, ``log (1/N) Σ_j N(x; y_j, h² I)`` in the feature space's
            units (a density over R^D; compare values only within one space and bandwidth).
        bandwidth: h used (feature units).
        rule: ``"scott"``, ``"median"`` or ``"given"``.
        n_reference, dim, space: as in :class:`LocalSupport`.
    """

    log_density: Tensor
    bandwidth: float
    rule: str
    n_reference: int
    dim: int
    space: str

    __repr__ = result_repr  # shapes and dtypes, not every element

    def to_frame(self) -> "pd.DataFrame":
        """pandas DataFrame with one column, ``kde_log_density``."""
        import pandas as pd

        return pd.DataFrame({"kde_log_density": self.log_density.cpu().numpy()})


def scott_bandwidth(reference: Any) -> float:
    """Scott's rule for an isotropic kernel: ``h = σ̄ · N^(−1/(D+4))``, σ̄² = mean coordinate
    variance (unbiased, over N − 1); ``reference`` (N, ...) rows, finite (a tensor, array or list;
    flattened to features). In the features' units."""
    return _scott(as_features(reference, argument="reference"))


def _scott(reference: Tensor) -> float:
    n, dim = reference.shape
    if n < 2:
        raise ValueError("Scott's rule needs at least 2 references")
    if dim < 1:
        raise ValueError("Scott's rule needs at least one feature, got references of 0 features")
    # column blocks in the block budget: a float64 copy of a whole CIFAR training set is 1.2 GiB
    step = block_size(reference.device, 8 * n, dim)
    centre, e = _unit_scale(reference)

    def block(c0: int) -> Tensor:
        columns = reference[:, c0:c0 + step].to(torch.float64)
        return columns if e == 0 else times_power_of_two(columns - centre[c0:c0 + step], e)

    total = float(sum(block(c0).var(dim=0).sum() for c0 in range(0, dim, step)))  # read back once
    sigma = ldexp(math.sqrt(total / dim), -e)
    return sigma * n ** (-1.0 / (dim + 4))


def _unit_scale(rows: Tensor) -> tuple[Tensor, int]:
    """The column mean of ``rows`` (N, D) (float64) and the e that brings their largest entry
    about it into [1, 2) when it lies outside [TINY, HUGE], else 0: the bandwidth rules square
    the data, which under- or overflows float64 beyond about 1e±154 (Scott's rule gave 0 or inf,
    and the refusal blamed identical references)."""
    centre = column_mean(rows, block_size(rows.device, 8 * rows.shape[1], rows.shape[0]))
    return centre, unit_exponent(_centred_abs_max(rows, centre), TINY, HUGE)


def median_bandwidth(reference: Any, max_points: int = 2000, seed: int = 0) -> float:
    """Median heuristic: h = median Euclidean distance (not squared) over the pairs of different
    rows i < j of the references (Gretton et al.; duplicate rows count, at distance 0); for an even
    number of pairs the mean of the two middle distances. ``reference`` (N, ...) rows,
    finite (a tensor, array or list; flattened to features).

    Uses a seeded random subset of at most ``max_points`` (≥ 2) references (the median of ~2·10⁶
    pairs is stable to well under a percent).
    """
    max_points, seed = check_integer("max_points", max_points, 2), check_seed("seed", seed)
    return _median(as_features(reference, argument="reference"), max_points, seed)


def _median(reference: Tensor, max_points: int = 2000, seed: int = 0) -> float:
    n = reference.shape[0]
    if n < 2:
        raise ValueError("the median heuristic needs at least 2 references")
    y = reference
    if n > max_points:
        g = torch.Generator().manual_seed(seed)
        y = reference[torch.randperm(n, device="cpu", generator=g)[:max_points].to(reference.device)]
    y = y.to(torch.float64)
    centre, e = _unit_scale(y)
    if e != 0:
        y = times_power_of_two(y - centre, e)
    i, j = torch.triu_indices(y.shape[0], y.shape[0], offset=1, device=y.device)
    # the GEMM expansion ‖a‖² + ‖b‖² − 2a·b (on rows centred on their mean, which removes a common
    # offset) ranks the pairs; it cancels between near-duplicates (a median 3× off at a spread of
    # 1e-9), so the pairs that its error bound cannot place either side of the middle ranks are
    # measured again from their differences, as ARCHITECTURE §3 asks
    centred = y - centre if e == 0 else y  # a scaled y is centred already
    sq = (centred * centred).sum(dim=1)
    approx = (sq[:, None] + sq[None, :] - 2.0 * centred @ centred.T)[i, j]
    norms = sq.sqrt()
    bound = 4.0 * (y.shape[1] + 3) * 2.0 ** -53 * (norms[i] + norms[j]) ** 2
    pairs = approx.numel()
    middle, direct = [], None
    for k in sorted({(pairs - 1) // 2, pairs // 2}):  # np.median's middle ranks, 0-based
        low = torch.kthvalue(approx - bound, k + 1).values   # the exact k-th value lies in [low, high]
        high = torch.kthvalue(approx + bound, k + 1).values
        below = approx + bound < low                           # surely before it in the order
        unsure = torch.nonzero(~below & (approx - bound <= high)).flatten()
        # many ties at the middle (one-hot rows): all pairs at once, which is ~15× faster a pair than
        # gathering them one by one, and pays once more than a sixteenth of the pairs is unsure
        if unsure.numel() > pairs // 16:
            if direct is None:
                direct = torch.cdist(y, y, compute_mode="donot_use_mm_for_euclid_dist")
            exact = direct[i[unsure], j[unsure]]
        else:
            exact = torch.cat([((y[i[part]] - y[j[part]]) ** 2).sum(dim=1).sqrt()
                               for part in unsure.split(max(1, 2 ** 22 // max(y.shape[1], 1)))])
        middle.append(float(torch.kthvalue(exact, k - int(below.sum()) + 1).values))
    return ldexp(sum(middle) / len(middle), -e)  # the mean of the two middle distances for an even count


def sq_distance_blocks(x: Tensor, y: Tensor, *, chunk: int = 8192, batch_chunk: int = 1024
                       ) -> Iterator[tuple[int, int, Tensor]]:
    """Yield ``(q0, c0, d2)``: squared distances (float64, clamped at 0) between
    ``x[q0:q0+b]`` and ``y[c0:c0+c]`` by GEMM, block by block.

    The GEMM runs in float64 when both inputs are float64, else in float32, on inputs centred
    on the mean of ``y`` (shrinking the norms the expansion ``‖x‖² + ‖y‖² − 2x·y`` cancels);
    the norms are added in float64. Absolute error ≲ (D + 3)·u·(‖x‖ + ‖y‖)² with u the GEMM's
    unit round-off, norms measured from the centre (the 3 covers rounding the centred inputs to
    the GEMM's dtype, which D·u alone missed 2.3-fold at D = 1 in float32).

    The blocks come reference chunk by reference chunk (``c0`` ascending), and within a chunk
    query block by query block (``q0`` ascending): each chunk of ``y`` is centred once, into one
    reused buffer, where a centred copy of the whole of ``y`` was as large as ``y`` again. The
    values do not depend on the order.

    ``d2`` is a view of one buffer that the next block overwrites (a fresh block each time
    would be paid in page faults): reduce it or clone it before advancing the iterator.
    """
    chunk, batch_chunk = positive_integer("chunk", chunk), positive_integer("batch_chunk", batch_chunk)
    dtype = _gemm_dtype(x, y)
    reference = _CentredReference(y, dtype, column_mean(y, block_size(y.device, 8 * y.shape[1], y.shape[0])))
    queries = _CentredQueries(x, dtype, reference.centre, 0, batch_chunk, chunk, y.shape[0])
    blas = gemm.choose(dtype, x.device, 2.0 * x.shape[0] * x.shape[1] * y.shape[0])
    shape = (min(batch_chunk, x.shape[0]), min(chunk, y.shape[0]))
    cross_buffer = torch.empty(shape, dtype=dtype, device=x.device)
    d2_buffer = torch.empty(shape, dtype=torch.float64, device=x.device)
    x_sq = torch.empty(x.shape[0], 1, dtype=torch.float64, device=x.device)
    for c0 in range(0, y.shape[0], chunk):
        y_c = reference.chunk(c0, min(c0 + chunk, y.shape[0]))
        y_sq = reference.sq_norms[c0:c0 + chunk]
        for q0 in range(0, x.shape[0], batch_chunk):
            xb = queries.block(q0, first=c0 == 0)
            if c0 == 0:  # in the queries' scratch, free again once the block is centred (no 2 block-sized temporaries)
                _sq_norms_into(x_sq[q0:q0 + xb.shape[0], 0], xb, queries.scratch)
            cross = gemm.matmul(xb, y_c.T, out=cross_buffer[:xb.shape[0], :y_c.shape[0]], blas=blas)
            d2 = d2_buffer[:xb.shape[0], :y_c.shape[0]]
            rows = block_size(x.device, 8 * y_c.shape[0], xb.shape[0])
            for r in range(0, xb.shape[0], rows):  # row blocks: the float64 cast stays in cache
                part = d2[r:r + rows]
                torch.add(x_sq[q0 + r:q0 + r + part.shape[0]], y_sq, out=part)
                part.sub_(cross[r:r + rows].to(torch.float64), alpha=2.0).clamp_(min=0.0)
            yield q0, c0, d2


def _gemm_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    """float64 when both sets are, else float32: the dtype the distance GEMMs run in."""
    return torch.float64 if (x.dtype == torch.float64 and y.dtype == torch.float64) else torch.float32


# the centred rows handed to a GEMM start where they did when they were slices of a centred copy
# of the whole reference, or fresh query blocks, modulo this many bytes (BLAS kernels may take
# other paths for other alignments, and the results must not change)
_ALIGN_BYTES = 256


def _aligned_rows(flat: Tensor, rows: int, dim: int, offset: int) -> Tensor:
    """A (rows, dim) view of the 1-D buffer ``flat`` (``_ALIGN_BYTES`` elements longer than the
    largest view) whose address is ``offset`` elements past a multiple of ``_ALIGN_BYTES``."""
    size = flat.element_size()
    start = (offset * size - flat.data_ptr()) % _ALIGN_BYTES // size
    return flat[start:start + rows * dim].view(rows, dim)


def _centre_into(out: Tensor, rows: Tensor, centre: Tensor, e: int, scratch: Tensor) -> Tensor:
    """``out`` ← ``times_power_of_two(rows.to(float64) − centre, e)`` rounded to ``out``'s dtype,
    through the float64 ``scratch`` (at least as many elements as ``out``): the same values, with
    no fresh temporaries (element-wise, so any blocking gives the same bits)."""
    diff = scratch[:rows.numel()].view(rows.shape).copy_(rows).sub_(centre)
    return out.copy_(times_power_of_two(diff, e))


def _sq_norms_into(out: Tensor, block: Tensor, scratch: Tensor) -> None:
    """``out`` ← ``block.to(float64).pow(2).sum(dim=1)`` (the same bits), squared in ``scratch``."""
    torch.sum(scratch[:block.numel()].view(block.shape).copy_(block).pow_(2), dim=1, out=out)


class _CentredReference:
    """The (N, D) reference ``y`` centred on ``centre`` ((D,) float64), times 2**e, rounded to the
    GEMM's ``dtype``, one chunk of rows at a time, and its rows' float64 squared norms (of the
    rounded rows, the GEMM's own operands).

    A centred copy of the whole reference was as large as the reference again (586 MiB for the
    50,000 CIFAR-10 training images in float32); one chunk is ``chunk`` rows. Its values are that
    copy's bit for bit: the centring is element-wise, and each norm is summed in the same row block
    as it was there (:func:`~kinetic_fm.blocks.block_size` rows from row 0; a row's sum could depend
    on its block's shape), which is also the block of the float64 scratch.
    """

    def __init__(self, y: Tensor, dtype: torch.dtype, centre: Tensor, e: int = 0):
        self.y, self.dtype, self.centre, self.e = y, dtype, centre, e
        n, dim = y.shape
        self.rows = block_size(y.device, 8 * dim, n)
        self.sq_norms = torch.empty(n, dtype=torch.float64, device=y.device)
        self._summed = 0            # the norms of rows [0, _summed) are in sq_norms: whole row blocks
        self._scratch = torch.empty(min(self.rows, n) * dim, dtype=torch.float64, device=y.device)
        self._block: Tensor | None = None
        self._flat: Tensor | None = None

    def _centre(self, r0: int, r1: int, out: Tensor) -> Tensor:
        return _centre_into(out, self.y[r0:r1], self.centre, self.e, self._scratch)

    def _sum(self, r: int, block: Tensor) -> None:
        _sq_norms_into(self.sq_norms[r:r + block.shape[0]], block, self._scratch)
        self._summed = r + block.shape[0]

    def _centred_block(self, r: int) -> Tensor:
        """Row block r (a multiple of ``rows``) centred into a buffer of its own, its norms summed."""
        n, dim = self.y.shape
        if self._block is None:
            self._block = torch.empty(self.rows * dim + _ALIGN_BYTES, dtype=self.dtype, device=self.y.device)
        block = _aligned_rows(self._block, min(self.rows, n - r), dim, r * dim)
        self._sum(r, self._centre(r, r + block.shape[0], block))
        return block

    def all_sq_norms(self) -> Tensor:
        """(N,) float64 squared norms of every centred row, in one pass that keeps no chunk."""
        for r in range(self._summed, self.y.shape[0], self.rows):
            self._centred_block(r)
        return self.sq_norms

    def chunk(self, c0: int, c1: int) -> Tensor:
        """Rows [c0, c1) centred, a view of one buffer that the next call overwrites; their
        norms are in ``sq_norms[c0:c1]`` afterwards. Chunks come in increasing order from row 0
        (or after :meth:`all_sq_norms`)."""
        n, dim = self.y.shape
        if self._flat is None:
            self._flat = torch.empty((c1 - c0) * dim + _ALIGN_BYTES, dtype=self.dtype, device=self.y.device)
        out = _aligned_rows(self._flat, c1 - c0, dim, c0 * dim)
        r0 = c0
        while r0 < c1:                     # the parts of the chunk in each row block
            r = r0 - r0 % self.rows        # the row block r0 lies in: rows [r, end)
            end = min(r + self.rows, n)
            r1 = min(end, c1)
            if r >= self._summed and (r < c0 or end > c1):   # new, and not whole in the chunk
                out[r0 - c0:r1 - c0].copy_(self._centred_block(r)[r0 - r:r1 - r])
            else:
                self._centre(r0, r1, out[r0 - c0:r1 - c0])
                if r >= self._summed:      # new and whole in the chunk (r0 = r, r1 = end)
                    self._sum(r, out[r0 - c0:r1 - c0])
            r0 = r1
        return out


class _CentredQueries:
    """Query blocks of ``batch_chunk`` rows of the (B, D) ``x`` centred on ``centre``, times 2**e,
    rounded to ``dtype``, for a sweep over the reference in chunks of ``chunk`` of its ``n`` rows.

    Each reference chunk needs every query block. When the queries are no more rows than a chunk
    (and there are several chunks), every block is kept from the first chunk on, which takes no more
    memory than the chunk; else one buffer is reused and a block is centred again for each chunk.
    Each block starts at the alignment of a fresh tensor (``_ALIGN_BYTES``), as it did when it was one.
    """

    def __init__(self, x: Tensor, dtype: torch.dtype, centre: Tensor, e: int, batch_chunk: int,
                 chunk: int, n: int):
        self.x, self.centre, self.e, self.batch_chunk = x, centre, e, batch_chunk
        b, dim = x.shape
        self.keep = n > chunk and b <= chunk
        size = torch.finfo(dtype).bits // 8   # a block takes whole _ALIGN_BYTES
        self.stride = -(-min(batch_chunk, b) * dim * size // _ALIGN_BYTES) * _ALIGN_BYTES // size
        blocks = -(-b // batch_chunk) if self.keep else 1
        self.buffer = torch.empty(blocks * self.stride + _ALIGN_BYTES, dtype=dtype, device=x.device)
        # a whole block's float64 scratch: a block centred again for every chunk in cache-sized
        # parts took six times the kernel calls, which cost far more than their work when other
        # jobs share the cores (KDE 0.88x the previous speed with two other jobs)
        self.scratch = torch.empty(min(batch_chunk, b) * dim, dtype=torch.float64, device=x.device)

    def block(self, q0: int, first: bool) -> Tensor:
        """Rows [q0, q0 + batch_chunk) centred. ``first``: asked for the first time (the first
        chunk); a kept block is then handed back as the caller left it, else it is centred again
        into the one buffer, which the next call overwrites."""
        b, dim = min(self.batch_chunk, self.x.shape[0] - q0), self.x.shape[1]
        at = q0 // self.batch_chunk * self.stride if self.keep else 0
        xb = _aligned_rows(self.buffer[at:], b, dim, 0)
        if self.keep and not first:
            return xb
        return _centre_into(xb, self.x[q0:q0 + b], self.centre, self.e, self.scratch)


def _centred_abs_max(rows: Tensor, centre: Tensor) -> float:
    """max |rows − centre| over every entry, in float64 blocks (no full copy).

    Each block's max goes into one preallocated tensor: kept as a list of 0-d tensors, those
    small live allocations between the blocks' temporaries stopped glibc's heap from reusing
    them, and Scott's rule on 50,000 x 3,072 float32 rows (586 MiB) peaked 1.1-1.2 GiB above them."""
    step = block_size(rows.device, 8 * rows.shape[1], rows.shape[0])
    if rows.shape[0] == 0:
        return 0.0
    maxima = torch.empty(-(-rows.shape[0] // step), dtype=torch.float64, device=rows.device)
    for i, r in enumerate(range(0, rows.shape[0], step)):
        torch.amax((rows[r:r + step].to(torch.float64) - centre).abs_(), out=maxima[i])
    return float(maxima.max())  # read back once


def _log_sum_gaussian(x: Tensor, y: Tensor, h: float, exclude_self: bool, chunk: int,
                      batch_chunk: int) -> Tensor:
    """(B,) float64 ``log Σ_j exp(−‖x_i − y_j‖² / (2h²))`` over all rows of y, streaming.

    Per block one GEMM (through :mod:`kinetic_fm.gemm`) gives ``c(2 x·y − ‖y‖²)``
    (c = 1/(2h²)), the logit up to the row constant ``−c‖x‖²`` (added back in float64 at the
    end); each query keeps a running max and a float64 running sum of ``exp(logit − max)``
    across the reference chunks, which come in the outer loop (each is centred once). In
    float32 the exponentials and their per-block sums are float32 (terms in [0, 1],
    pairwise-summed: relative error ~1e-6, below the GEMM's own rounding); everything is
    float64 when both inputs are.

    The sum depends on the data only through (x − y)/h, so data whose entries about the
    reference mean lie beyond 2**±30 are measured in units where they are about 1: both sets
    and h are multiplied by a power of two (exact; :mod:`kinetic_fm.exact_scaling`). Other data
    are measured as given; scaled ones no longer under- or overflow (float32 data at 1e-20:
    1/h² ≈ 4e40 overflowed float32 to NaN).
    """
    chunk, batch_chunk = positive_integer("chunk", chunk), positive_integer("batch_chunk", batch_chunk)
    dtype = _gemm_dtype(x, y)
    centre = column_mean(y, block_size(y.device, 8 * y.shape[1], y.shape[0]))
    reference = _CentredReference(y, dtype, centre)
    x_sq = row_sq_norms(x, torch.float64, centre=centre)
    limit = torch.finfo(dtype).max / 8.0   # the logits c·(2x·y − ‖y‖²) are formed in `dtype`
    # the largest entry about the centre lies within [norm/√D, norm] of the largest norm: when
    # that range is inside [TINY, HUGE] the data are measured as given (e = 0), decided from the
    # norms at hand; else (or when the squares under- or overflowed) by two exact passes
    margin = 1.0 + 1e-5  # the norms are of the rows rounded to the GEMM's dtype
    low, high = TINY * TINY * y.shape[1] * margin, HUGE * HUGE / margin
    # the reference's norms: an upper bound from max |y| and max |centre| (a pass that copies
    # nothing) settles both checks for most data, and then they are summed chunk by chunk in the
    # sweep; else a pass of their own computes them first
    x_largest, y_bound = float(x_sq.max()), _sq_norm_bound(y, centre)
    settled = low <= x_largest and max(y_bound, x_largest) <= high and _logits_fit(
        0.5 / h / h, math.sqrt(y_bound) + math.sqrt(x_largest), limit)
    e = 0
    if not settled:
        y_sq = reference.all_sq_norms()
        largest_sq = max(float(y_sq.max()), x_largest)
        if not (low <= largest_sq <= high):
            e = unit_exponent(max(_centred_abs_max(y, centre), _centred_abs_max(x, centre)), TINY, HUGE)
        if e != 0:
            reference = _CentredReference(y, dtype, centre, e)
            y_sq = reference.all_sq_norms()
            x_sq = _scaled_sq_norms(x, centre, e)
        # refuse a bandwidth so small against the data's spread (norms from the centre) that the
        # logits overflow, instead of returning NaN
        reach, scaled = math.sqrt(float(y_sq.max())) + math.sqrt(float(x_sq.max())), ldexp(h, e)
        if not _logits_fit(0.5 / scaled / scaled, reach, limit):
            name = str(dtype).replace("torch.", "")
            smallest, shown, reach = ldexp(reach * math.sqrt(0.5 / limit), -e), ldexp(scaled, -e), ldexp(reach, -e)
            raise ValueError(
                f"bandwidth {shown:.3g} is too small for data spread over {reach:.3g} (norms about the reference "
                f"mean): the kernel exponents overflow {name}; use a bandwidth >= {smallest:.3g}"
                + (", or pass float64 samples and reference" if dtype != torch.float64 else ", or rescale the data"))
    h = ldexp(h, e)
    c = 0.5 / h / h
    blas = gemm.choose(dtype, x.device, 2.0 * x.shape[0] * x.shape[1] * y.shape[0])
    queries = _CentredQueries(x, dtype, centre, e, batch_chunk, chunk, y.shape[0])
    # one logit buffer for every block: a fresh (batch_chunk, chunk) block each time is a fresh
    # mmap, paid in page faults
    buffer = torch.empty(min(batch_chunk, x.shape[0]), min(chunk, y.shape[0]), dtype=dtype, device=x.device)
    # reference chunks outside, query blocks inside (each chunk is centred once): each query's
    # running max and sum persist across the chunks, which reach it in increasing order as before
    run_max = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    run_sum = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    x_sq = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)  # of the rows as rounded
    for c0 in range(0, y.shape[0], chunk):
        y_c = reference.chunk(c0, min(c0 + chunk, y.shape[0]))
        bias = (-c * reference.sq_norms[c0:c0 + chunk]).to(dtype)
        for q0 in range(0, x.shape[0], batch_chunk):
            xb_2c = queries.block(q0, first=c0 == 0)
            if c0 == 0 or not queries.keep:      # a kept block stays scaled by 2c
                if c0 == 0:
                    x_sq[q0:q0 + xb_2c.shape[0]] = xb_2c.to(torch.float64).pow(2).sum(dim=1)
                xb_2c.mul_(2.0 * c)
            part = gemm.matmul(xb_2c, y_c.T, out=buffer[:xb_2c.shape[0], :y_c.shape[0]], blas=blas)
            part.add_(bias)
            own = own_diagonal(q0, c0, *part.shape) if exclude_self else None
            if own is not None:
                part[own].diagonal().fill_(-math.inf)
            rows = slice(q0, q0 + part.shape[0])
            new_max = torch.maximum(run_max[rows], part.amax(dim=1).to(torch.float64))
            shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            # terms below e^-80 of the running max weigh < N·1.8e-35 and would only produce
            # subnormal exponentials, which are many times slower on x86 CPUs
            terms = part.sub_(shift.to(dtype)[:, None]).clamp_(min=-80.0).exp_()
            if own is not None:
                terms[own].diagonal().fill_(0.0)
            block = terms.sum(dim=1, dtype=dtype)
            run_sum[rows] = run_sum[rows] * torch.exp(run_max[rows] - shift) + block.to(torch.float64)
            run_max[rows] = new_max
    return run_max + torch.log(run_sum) - c * x_sq


def _logits_fit(c: float, reach: float, limit: float) -> bool:
    """Whether logits c·(2x·y − ‖y‖²) of norms up to ``reach`` (together) stay below ``limit``."""
    return reach <= math.sqrt(limit) and c * reach * reach <= limit


def _sq_norm_bound(y: Tensor, centre: Tensor) -> float:
    """An upper bound on the squared norm of every row of ``y`` (N, D) about ``centre``, also as
    rounded to float32 and summed in float64: D·(max |y| + max |centre|)², 1 % over (inf when it
    overflows). One reduction, no copy."""
    largest = float(torch.linalg.vector_norm(y, ord=math.inf)) if y.numel() else 0.0
    try:
        return y.shape[1] * (largest + float(centre.abs().max())) ** 2 * 1.01
    except OverflowError:
        return math.inf


def _scaled_sq_norms(x: Tensor, centre: Tensor, e: int) -> Tensor:
    """(B,) float64 ``row_sq_norms(times_power_of_two(x.to(float64) − centre, e), float64)``, bit for
    bit, without that float64 copy of the whole of ``x``: the same row blocks, each made at the
    address it had in the copy, modulo ``_ALIGN_BYTES`` (a library's dot products may depend on it)."""
    n, dim = x.shape
    rows = block_size(x.device, dim * 8, n)   # row_sq_norms' blocks of a float64 (B, D) tensor
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    flat = torch.empty(min(rows, n) * dim + _ALIGN_BYTES, dtype=torch.float64, device=x.device)
    for r0 in range(0, n, rows):
        block = _aligned_rows(flat, min(rows, n - r0), dim, r0 * dim)
        block.copy_(times_power_of_two(x[r0:r0 + rows].to(torch.float64) - centre, e))
        out[r0:r0 + rows] = torch.einsum("ij,ij->i", block, block)
    return out


def kde_log_density(samples: Any, reference: Any,
                    bandwidth: Union[Literal["scott", "median"], float] = "scott",
                    space: SpaceLike = None, *, exclude_self: bool = False, chunk: int = 8192,
                    batch_chunk: int = 1024, seed: int = 0,
                    reference_features: Tensor | np.ndarray | None = None) -> KDELogDensity:
    """Per-sample Gaussian KDE log-density over ALL references, chunked and streaming.

    Args:
        samples: (B, ...) samples (or features).
        reference: (N, ...) reference set.
        bandwidth: ``"scott"`` (:func:`scott_bandwidth`), ``"median"``
            (:func:`median_bandwidth`, subset seeded by ``seed``) or a positive finite number
            (a NumPy scalar or 0-d tensor counts), in feature units. A bandwidth so small
            against the data's spread that the kernel exponents overflow the GEMM's dtype is
            refused with the smallest usable value.
        space: feature space both sets are mapped through (None = flattened inputs).
        exclude_self: the samples ARE the reference; leave-one-out (term j = i dropped, N − 1).
        chunk: reference rows per GEMM; batch_chunk: query rows per block.
        seed: seed of the median rule's subset, an integer in [0, 2**32) (checked in any case).
        reference_features: precomputed ``space(reference)``, a tensor or array of shape
            (N, D) with N the reference's rows.

    Returns:
        :class:`KDELogDensity` with float64 log-densities on the samples' device.
        The GEMM runs on inputs centred on the reference mean, in float32 unless both sets
        are float64; its rounding moves a log-density by about u·(‖x‖² + ‖y‖²)/(2h²)
        (u = 6e-8 in float32, norms from the centre): e.g. 3e-5 to 6e-5 at Scott's bandwidth in
        D = 512 for Gaussian data (at most 4.5e-5 there), and up to a few times the formula on
        images (``benchmarks/kde_float32_rounding.py``: CIFAR-10 pixels, 200 test images against
        1,000 training images, Scott's h: at most 3.4e-4 over 512 of their values and 1.5e-3 over
        all 3,072, 3.2x and 2.3x the formula at its largest). That rounding also moves with the rows
        a sample shares its GEMM with: on the CPU (one thread), a sample scored in a query block of
        fewer than 16 rows (a small call, or the last block of a large one) differed by up to
        1.5e-3 from the same sample scored among 100 (same data, float32); float64 inputs gave the
        same values in any block to 3e-12.
        On a GPU whose float32 products run in TF32 (``torch.backends.cuda.matmul``;
        :func:`~kinetic_fm.metrics.neighbors.cuda_matmul_uses_tf32`) u is 4.9e-4, about 8,000×
        larger (4e-2 in the Gaussian example); this metric does not re-rank, so pass float64 inputs or
        switch TF32 off for it. For bandwidths far below the data's spread, pass float64 inputs.
        The running log-sum-exp is accumulated in float64.
    """
    exclude_self = check_flag("exclude_self", exclude_self)
    chunk, batch_chunk = positive_integer("chunk", chunk), positive_integer("batch_chunk", batch_chunk)
    seed = check_seed("seed", seed)
    bandwidth = as_scalar(bandwidth)
    rule_named = isinstance(bandwidth, str) and bandwidth in ("scott", "median")
    if not (rule_named or (is_real(bandwidth, finite=True) and bandwidth > 0)):
        raise ValueError(f"bandwidth must be 'scott', 'median' or a positive finite number, got {bandwidth!r}")
    fs, x, y = _samples_and_reference(samples, reference, reference_features, space)
    _check_leave_one_out_rows(exclude_self, y)
    if exclude_self and x.shape[0] != y.shape[0]:
        raise ValueError(f"exclude_self needs samples and reference of equal length, "
                         f"got {x.shape[0]} and {y.shape[0]}")
    if exclude_self:
        check_same_rows("samples", x, "reference", y)
    if isinstance(bandwidth, str):
        h = _scott(y) if bandwidth == "scott" else _median(y, seed=seed)  # y is checked features already
        rule = bandwidth
    else:
        h, rule = float(bandwidth), "given"
    if not (math.isfinite(h) and h > 0):
        why = ("are all references identical?" if rule != "median" else
               "more than half of the pairs of references (of 2,000 drawn, beyond that many) are identical, "
               "so the median distance is 0; use bandwidth='scott' or a number")
        raise ValueError(f"bandwidth must be a positive finite number, got {h} (rule {rule!r}); {why}")
    n, dim = y.shape[0] - (1 if exclude_self else 0), x.shape[1]
    if n < 1:
        raise ValueError("need at least one reference")

    log_sum = _log_sum_gaussian(x, y, h, exclude_self, chunk, batch_chunk)
    log_norm = math.log(n) + dim * (0.5 * math.log(2.0 * math.pi) + math.log(h))  # no h² (overflow)
    log_density = log_sum - log_norm
    return KDELogDensity(log_density, h, rule, n, dim, fs.name)


def _check_leave_one_out_rows(exclude_self: bool, y: Tensor) -> None:
    """Leave-one-out of a single reference row leaves nothing to measure against: say so, rather
    than that k exceeds 0 usable references (no k passes) or that there is no reference."""
    if exclude_self and y.shape[0] < 2:
        raise ValueError(f"exclude_self needs at least 2 reference rows, got {y.shape[0]} "
                         "(leave-one-out of one row leaves no reference)")


def _check_dims(x: Tensor, y: Tensor, name: str = "reference") -> None:
    """The samples' features ``x`` and the reference's ``y`` (named ``name``: the argument they came
    from) agree in width and device, and have features."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples and {name} have different feature sizes: "
                         f"{x.shape[1]} vs {y.shape[1]}")
    if x.shape[1] == 0:  # a density over no features read log p = 0 for every sample
        raise ValueError(f"samples and {name} have no features (shapes {tuple(x.shape)} and {tuple(y.shape)})")
    if x.device != y.device:
        raise ValueError(f"samples and {name} must be on one device, got {x.device} and {y.device}")
