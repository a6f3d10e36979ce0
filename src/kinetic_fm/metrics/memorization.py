"""Memorization by the gap ratio: a sample is memorized when d1/d2 < threshold (default 1/3).

d1 ≤ d2 are the Euclidean distances (flattened, float64, exact) from a sample to its two nearest
training items, in the space the caller names (raw coordinates, or a feature map ``space``).
F_mem is the memorized fraction, with a confidence interval: a percentile bootstrap by default,
or the Wilson score or Clopper–Pearson (exact binomial) interval. The bootstrap collapses to
[0, 0] when no sample is memorized (and to [1, 1] when all are); the two binomial intervals keep
an honest width there (for 0 of n, Clopper–Pearson's upper end is 1 − (α/2)^(1/n) ≈ 3.7/n at 95 %).

Duplicated training items: d2 is measured over every row, as the reference's broadcast search
does, so a training item held twice (or more) is its own second neighbour. A sample whose two
nearest rows are such equal rows has d1 = d2 exactly (the distances are exact, in float32 as in
float64): its ratio is 1, not memorized, however close it lies to the item; and at the item itself
d1 = d2 = 0, where the ratio is defined as 0, i.e. memorized. :func:`memorization` warns when any
sample is in this case, naming how many rows of the training set repeat an earlier one: remove the
repeats (keep one row of each) to measure d2 to the next distinct item. Near-duplicates (rows
that differ slightly) act the same way, unwarned: the gap ratio cannot tell them apart.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from ..checks import (CONFIDENCE_PERCENT_FROM, PERCENT_FROM, as_scalar, caller_outside_the_package, check_integer,
                      check_same_space, inside_unit_interval, is_integer, positive_integer)
from ..knn import as_rows, check_exact_integers, check_finite, nearest_neighbors, row_sq_norms
from ..result_repr import result_repr
from ..sampling.guards import feature_map_as_found
from .features import FeatureSpace, feature_space, module_of, one_row_batch_norm_named

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["INTERVALS", "MemorizationReport", "fraction_interval", "gap_ratio", "memorization", "repeated_rows"]

INTERVALS = ("bootstrap", "wilson", "clopper-pearson")
# the resampled fractions are held at once (8 bytes each): 10**7 is 80 MB, and far more resamples
# than a percentile interval needs; 10**12 used to fail with a 7 TiB MemoryError inside NumPy
MAX_BOOTSTRAP = 10**7
# fewer resamples than this are warned about: the interval's ends are then among the few most
# extreme resampled fractions (from one resample it has no width and need not contain F_mem)
FEW_BOOTSTRAP = 100
_INTERVAL_NAMES = {"bootstrap": "bootstrap", "wilson": "Wilson", "clopper-pearson": "Clopper–Pearson"}


@dataclass(frozen=True)
class MemorizationReport:
    """Per-sample gap ratios and the memorized fraction.

    Attributes:
        d1, d2: (B,) float64 distances to the nearest and second-nearest training item.
        ratio: (B,) float64 d1/d2 (0 when d1 = d2 = 0).
        nearest: (B,) int64 index of the nearest training item.
        memorized: (B,) bool, ratio < threshold (rows within rounding of it decided on exact
            squared distances, so an exact tie is not memorized even where ``ratio`` reads below).
        fraction: F_mem, the mean of ``memorized``.
        ci: (low, high) interval of F_mem at ``confidence``, of kind ``interval`` (NaN when
            ``interval`` is "bootstrap" and ``bootstrap`` is 0).
        threshold: the gap-ratio threshold used.
        confidence: the interval's coverage, e.g. 0.95.
        bootstrap: number of bootstrap resamples (0: no bootstrap interval).
        interval: "bootstrap" (percentile), "wilson" (score) or "clopper-pearson" (exact binomial).
        space: name of the feature space the distances were measured in, as
            :class:`~kinetic_fm.metrics.density.LocalSupport` names it ("pixels" without one).
    """

    d1: torch.Tensor
    d2: torch.Tensor
    ratio: torch.Tensor
    nearest: torch.Tensor
    memorized: torch.Tensor
    fraction: float
    ci: tuple[float, float]
    threshold: float
    confidence: float = 0.95
    bootstrap: int = 1000
    interval: str = "bootstrap"
    space: str = "pixels"

    __repr__ = result_repr  # shapes and dtypes, not every element (str says what a zero-width ci hides)

    def __len__(self) -> int:
        return self.ratio.shape[0]

    def __str__(self) -> str:
        shown = kind, low, high = self.shown_interval()
        note = self._zero_width(shown)
        if note is not None:  # a zero-width bootstrap interval read as certainty
            end = self.ci[0]
            interval = f" ({self.confidence:.0%} bootstrap CI {end:g}–{end:g}: {note})"
        else:
            interval = "" if math.isnan(low) else f" ({self.confidence:.0%} {kind} CI {low:.4f}–{high:.4f})"
        return (f"F_mem = {self.fraction:.4f}{interval}, {int(self.memorized.sum())}/{len(self)} "
                f"samples with d1/d2 < {self.threshold:.4g} in {self.space}")

    def _zero_width(self, shown: tuple[str, float, float]) -> str | None:
        """"zero width at 0/50; Wilson 0.0000–0.0711" where ``ci`` is a bootstrap interval without
        width (F_mem 0 or 1), else None. ``shown``: the report's :meth:`shown_interval`."""
        kind, low, high = shown
        if kind != "Wilson" or self.interval != "bootstrap":
            return None
        return f"zero width at {int(self.memorized.sum())}/{len(self)}; Wilson {low:.4f}–{high:.4f}"

    def shown_interval(self) -> tuple[str, float, float]:
        """(kind, low, high) of the interval to show beside F_mem: ``ci`` with its kind's name, or,
        where a bootstrap interval has no width (F_mem 0 or 1: every resample agrees, which would
        read as certainty), the Wilson interval at the same confidence, named "Wilson". Without a
        bootstrap (``bootstrap=0``) there is no interval to show: ("bootstrap", NaN, NaN), as ``ci``."""
        if self.interval == "bootstrap" and self.bootstrap > 0 and self.fraction in (0.0, 1.0):
            low, high = fraction_interval(int(self.memorized.sum()), len(self), "wilson", confidence=self.confidence)
            return "Wilson", low, high
        return (_INTERVAL_NAMES.get(self.interval, self.interval), *self.ci)

    def to_frame(self) -> "pd.DataFrame":
        """One row per sample: sample (its row in the audited samples, as ``nearest`` is a row of
        the training set), d1, d2, ratio, nearest, memorized. The space measured in is the report's
        ``space``, not a column: in a joined table a constant column would read as if it held for every
        part's columns (``per_sample_table`` leads each part's columns by its space's name instead)."""
        import numpy as np
        import pandas as pd

        return pd.DataFrame({
            "sample": np.arange(len(self)),
            "d1": self.d1.cpu().numpy(),
            "d2": self.d2.cpu().numpy(),
            "ratio": self.ratio.cpu().numpy(),
            "nearest": self.nearest.cpu().numpy(),
            "memorized": self.memorized.cpu().numpy(),
        })


SPACE_CHUNK = 512   # rows a feature map of memorization() takes at once by default


def memorization(
    samples: torch.Tensor | np.ndarray | pd.DataFrame,
    train: torch.Tensor | np.ndarray | pd.DataFrame,
    threshold: float = 1 / 3,
    bootstrap: int = 1000,
    space: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    interval: str = "bootstrap",
    chunk: int = 8192,
    space_chunk: int = SPACE_CHUNK,
    backend: str = "torch",
    progress: bool = False,
) -> MemorizationReport:
    """Gap-ratio memorization audit of ``samples`` against ``train``.

    Args:
        samples: (B, ...) generated samples (a tensor, NumPy array, nested list or pandas DataFrame
            of real numbers; a list is read as ``np.asarray`` reads it, Python floats as float64; a
            DataFrame's rows are the samples, and a whole-number column of it named like a class
            label, ``label``, ``class``, ..., is warned of), B ≥ 1, finite.
        train: (N, ...) training items with the same trailing size, N ≥ 2, finite.
        threshold: memorized when d1/d2 < threshold; a real number in (0, 1) (a float, a NumPy
            scalar or a 0-d tensor). Rows whose ratio lies within rounding of it are decided on
            exact squared distances, so an exact tie (d1/d2 = threshold) is not memorized.
        bootstrap: bootstrap resamples for the CI of F_mem, an integer in [0, 10**7] (0
            disables it; from 1 to 99 a UserWarning: such an interval is unreliable); used only
            when ``interval`` is "bootstrap".
        space: optional feature map applied to both sets (in chunks of ``space_chunk`` rows,
            without gradients); distances are then measured between its flattened outputs. The
            report records its name (``report.space``) as :func:`~kinetic_fm.metrics.features.feature_space`
            names it (a bound method by the method's name, ``"features"`` for ``net.features``: pass
            ``feature_space(net.features, name="resnet20")`` to name the network). For the CLI's ``--space pca:K`` pass
            ``kinetic_fm.metrics.features.PrincipalSpace.fit(train, K)``.
        seed: seed of the bootstrap generator, a non-negative integer.
        confidence: coverage of the interval, a real number in (0, 1).
        interval: "bootstrap" (percentile bootstrap, the reference's choice), "wilson" (score
            interval) or "clopper-pearson" (exact binomial, conservative). Prefer a binomial
            interval when F_mem is small (or near 1): the bootstrap then covers far less than
            ``confidence`` (asked for 95 %, at n = 50 and F_mem = 0.02 it covers 63.5 % (Wilson
            92.2 %): exact sums over Binomial(50, 0.02)), and at 0 or n of n memorized it has zero
            width, which the report's summary line (str) says, with the Wilson interval beside it.
        chunk, backend: passed to :func:`kinetic_fm.nearest_neighbors`.
        progress: tqdm bars (on stderr) over the feature map, if any, and the search.

    Returns:
        :class:`MemorizationReport` (tensors on the samples' device).

    Raises:
        ValueError: an argument out of range, NaN/inf rows, sets of different layouts or
            feature counts, fewer than 2 training items (each named). TypeError: ``space`` not
            callable, or returning a tuple or list of tensors rather than one tensor.
    """
    threshold = inside_unit_interval("threshold", threshold, percent_from=PERCENT_FROM, ratio=True)
    bootstrap, seed, confidence = _interval_settings(bootstrap, seed, confidence, interval)
    space_chunk = positive_integer("space_chunk", space_chunk)
    if space is not None and not callable(space):
        spec = (f" {space!r}; the CLI's --space pca:K is space=kinetic_fm.metrics.features.PrincipalSpace.fit("
                "train, K) here (residual=True for pca:K+residual)" if isinstance(space, str) else "")
        raise TypeError(f"space must be a callable feature map or None, got {type(space).__name__}{spec}")
    space_name = feature_space(space).name
    samples, train = as_rows("samples", samples), as_rows("train", train)
    check_same_space(("samples", samples), ("train", train))
    if train.shape[0] < 2:
        raise ValueError(f"train must hold at least 2 items for the gap ratio (k = 2), got {train.shape[0]}")
    if space is not None:
        # the inputs first, by their own names (the features' check below would name the map), and
        # before the map's work; a map can still make NaN of finite rows
        check_finite("train", train)
        check_finite("samples", samples)
        with feature_map_as_found(space):  # warned once for both sets
            samples = _features(space, samples, space_chunk, "samples", progress)
            train = _features(space, train, space_chunk, "train", progress)
    if samples.shape[1:].numel() != train.shape[1:].numel():
        raise ValueError(
            f"samples and train must have the same number of features, got "
            f"{samples.shape[1:].numel()} and {train.shape[1:].numel()}"
        )
    names = ("samples", "train") if space is None else ("space(samples)", "space(train)")
    samples = _real_rows(names[0], samples)
    train = _real_rows(names[1], train)
    check_finite(names[1], train)
    check_finite(names[0], samples)
    train = train.to(samples.device)

    nn = nearest_neighbors(samples, train, 2, chunk=chunk, backend=backend, progress=progress,
                           check_inputs=False, names=names)  # checked above, by name
    d1, d2 = nn.distances[:, 0], nn.distances[:, 1]
    ratio = gap_ratio(d1, d2)
    _warn_of_duplicated_nearest(samples, train, nn.indices, d1, d2, names)
    memorized = _decided_exactly(ratio < threshold, ratio, threshold, samples, train, nn.indices)
    fraction = float(memorized.double().mean())
    ci = _interval(int(memorized.sum()), memorized.numel(), interval, confidence, bootstrap, seed)
    return MemorizationReport(d1, d2, ratio, nn.indices[:, 0], memorized, fraction, ci,
                              threshold, confidence, bootstrap, interval, space_name)


def gap_ratio(d1: torch.Tensor | np.ndarray, d2: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B,) d1/d2 from each sample's nearest and second-nearest distances, (B,) each, d1 ≤ d2.

    Tensors or NumPy arrays of one floating shape ((B,), or any, element by element); returns a
    tensor of their floating dtype and shape (ValueError for other dtypes, differing shapes, or a
    row without finite 0 ≤ d1 ≤ d2, NaN included).
    0 where d1 = d2 = 0 (a copy of a duplicated training item counts as memorized). Distances
    from any search work, e.g. :func:`kinetic_fm.nearest_neighbors` with k = 2.
    """
    d1, d2 = torch.as_tensor(d1), torch.as_tensor(d2)
    if d1.shape != d2.shape or not (d1.is_floating_point() and d2.is_floating_point()):
        raise ValueError(f"d1 and d2 must be float tensors of one shape, got {tuple(d1.shape)} {d1.dtype} "
                         f"and {tuple(d2.shape)} {d2.dtype}")
    if not bool(((d1 >= 0) & (d2 >= d1)).all()):  # NaN fails too
        raise ValueError("d1 and d2 must satisfy 0 <= d1 <= d2 in every row (nearest, then second-nearest)")
    if not bool(torch.isfinite(d2).all()):  # d1/inf read 0, memorized
        raise ValueError("d1 and d2 must be finite distances")
    # divide by d2 itself where it is positive (a subnormal d2 too: clamping it to finfo.tiny gave
    # 1e-40 / 1e-40 = 0.0085 in float32), by 1 where it is 0 (that row's ratio is 0)
    positive = d2 > 0
    return torch.where(positive, d1 / torch.where(positive, d2, torch.ones_like(d2)), torch.zeros_like(d1))


def fraction_interval(count: int, n: int, interval: str = "wilson", *, confidence: float = 0.95,
                      bootstrap: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(low, high) interval of a fraction ``count / n`` (e.g. F_mem from memorized flags).

    ``interval`` is "wilson" (score), "clopper-pearson" (exact binomial, conservative) or
    "bootstrap" (percentile, ``bootstrap`` resamples from ``seed``: [0, 0] at 0 of n, and NaNs
    when ``bootstrap`` is 0), as in :func:`memorization`; ``confidence`` its coverage in (0, 1).
    ValueError unless 0 ≤ count ≤ n, n ≥ 1 (integers), and for settings out of range. ``count`` and ``n`` may be 0-d tensors
    or arrays, e.g. ``fraction_interval(report.memorized.sum(), report.memorized.numel())``.
    """
    count, n = as_scalar(count), as_scalar(n)
    if not (is_integer(n) and n >= 1 and is_integer(count) and 0 <= count <= n):
        raise ValueError(f"count and n must be integers with 0 <= count <= n and n >= 1, got {count!r} and {n!r}")
    bootstrap, seed, confidence = _interval_settings(bootstrap, seed, confidence, interval)
    return _interval(int(count), int(n), interval, confidence, bootstrap, seed)


def _interval_settings(bootstrap, seed, confidence, interval: str) -> tuple[int, int, float]:
    """The interval's settings checked (each error names its argument), as (bootstrap, seed, confidence)."""
    bootstrap, seed = check_integer("bootstrap", bootstrap, 0, MAX_BOOTSTRAP), check_integer("seed", seed, 0)
    confidence = inside_unit_interval("confidence", confidence, percent_from=CONFIDENCE_PERCENT_FROM)
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    if interval == "bootstrap" and 0 < bootstrap < FEW_BOOTSTRAP:
        warnings.warn(few_resamples(f"bootstrap={bootstrap}"), UserWarning, stacklevel=caller_outside_the_package())
    return bootstrap, seed, confidence


def few_resamples(setting: str) -> str:
    """The warning about a bootstrap of fewer than :data:`FEW_BOOTSTRAP` resamples, led by ``setting``
    (``"bootstrap=1"``, ``"--bootstrap 1"``)."""
    return (f"{setting}: a percentile interval from fewer than {FEW_BOOTSTRAP} resamples is unreliable: its "
            "ends are among the few most extreme resampled fractions (from one resample it has no width and need "
            "not contain F_mem); use 1000 or more (the default), or the Wilson or Clopper–Pearson interval, "
            "which draw none")


def _interval(count: int, n: int, interval: str, confidence: float, bootstrap: int, seed: int) -> tuple[float, float]:
    if interval == "bootstrap":
        return _bootstrap_ci(count, n, bootstrap, confidence, seed)
    return _binomial_ci(count, n, confidence, interval)


def _decided_exactly(memorized: torch.Tensor, ratio: torch.Tensor, threshold: float, samples: torch.Tensor,
                     train: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """``memorized`` with each row whose ratio lies within rounding of ``threshold`` decided on its
    exact squared distances: d1/d2 < τ ⇔ d1² < τ²·d2², in rational arithmetic. The ratio passes
    through two square roots and a division, so an exact tie d2² = 9·d1² (quantised data) read
    below 1/3 in 1.6 % of cases and counted as memorized; the rows this decides are rare."""
    dim = samples[0].numel()
    near = ((ratio - threshold).abs() <= (dim + 8) * torch.finfo(torch.float64).eps * threshold).nonzero()
    if near.numel() == 0:
        return memorized
    from fractions import Fraction

    memorized = memorized.clone()
    tau_sq = Fraction(threshold) ** 2
    for i in near.flatten().tolist():
        x = samples[i].reshape(-1).tolist()  # Python ints or floats: exact
        sq1, sq2 = (sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x, train[j].reshape(-1).tolist()))
                    for j in nearest[i, :2].tolist())
        memorized[i] = sq2 == 0 or sq1 < tau_sq * sq2
    return memorized


def repeated_rows(rows: torch.Tensor) -> int:
    """Number of rows of ``rows`` (N, ...) of finite numbers equal to an earlier row: N minus the
    number of distinct rows (-0.0 equals 0.0; exact, in the rows' own dtype).

    Equal rows have equal squared norms up to the float64 sums' rounding, so only rows whose norm
    lies that close to another's are compared, exactly (``torch.unique``): about 50 times less work
    than sorting every row when few norms coincide."""
    flat = rows.reshape(rows.shape[0], -1)
    if flat.shape[0] < 2:
        return 0
    sq, order = row_sq_norms(flat, torch.float64).sort()
    if not bool(torch.isfinite(sq[-1])):      # norms beyond float64 (entries past 1e154): compare every row
        return flat.shape[0] - torch.unique(flat, dim=0).shape[0]
    # one row's norm summed in two orders differs by at most 2·D·u·‖y‖² (u = 2**-53); twice that
    close = (sq[1:] - sq[:-1]) <= 4 * (flat.shape[1] + 1) * 2.0 ** -53 * sq[1:]
    candidates = torch.cat([order[:-1][close], order[1:][close]]).unique()
    if candidates.numel() < 2:
        return 0
    return candidates.numel() - torch.unique(flat[candidates], dim=0).shape[0]


def _warn_of_duplicated_nearest(samples: torch.Tensor, train: torch.Tensor, indices: torch.Tensor,
                                d1: torch.Tensor, d2: torch.Tensor, names: tuple[str, str]) -> None:
    """A UserWarning when a sample's nearest and second-nearest rows of ``train`` are equal rows
    (then d1 = d2 exactly: ratio 1, or 0 at d1 = d2 = 0; see the module docs), naming how many.
    Ordinary data costs one comparison of d1 with d2; equal rows are looked for only where they tie."""
    ties = (d1 == d2).nonzero().flatten()
    if not ties.numel():
        return
    flat = train.reshape(train.shape[0], -1)
    # equal distances from distinct rows are common on quantised data: compare in blocks of rows
    copied = torch.cat([block[(flat[indices[block, 0]] == flat[indices[block, 1]]).all(dim=1)]
                        for block in ties.split(1024)])
    if not copied.numel():
        return
    exact, repeats = int((d1[copied] == 0).sum()), repeated_rows(train)
    warnings.warn(
        f"{names[1]} holds {repeats} row{'s' if repeats != 1 else ''} equal to an earlier row; for "
        f"{copied.numel()} of the {samples.shape[0]} {names[0]} the nearest and second-nearest items are two "
        f"such rows ({exact} an exact copy, first at row {int(copied[0])}), so d2 = d1 there: the ratio reads "
        "1 (not memorized) however close such a sample lies to the item, and 0 (memorized) for an exact copy; "
        "remove the repeated rows "
        f"(keep one of each) from {names[1]} to measure d2 to the next distinct item",
        UserWarning, stacklevel=caller_outside_the_package())


def _real_rows(name: str, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` if it holds real numbers, widened to float64 where the search lacks the integer type
    (bool rows are binary data: 0/1, as in the other metrics)."""
    if rows.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {rows.dtype}")
    if rows.dtype == torch.bool:
        return rows.to(torch.uint8)
    check_exact_integers(name, rows)
    if rows.dtype in (torch.uint16, torch.uint32, torch.uint64):
        return rows.to(torch.float64)  # exact for uint16/uint32; the distances are float64 in any case
    return rows


@torch.no_grad()
def _features(space, x: torch.Tensor, rows: int, name: str, progress: bool = False) -> torch.Tensor:
    """``space`` applied to ``x`` (the argument ``name``) in blocks of ``rows``, flattened; a tqdm bar if ``progress``.
    The caller has warned about a network in training mode (a FeatureSpace's __call__ would per block)."""
    from tqdm.auto import tqdm

    if module_of(space) is not None:  # a network takes chunks in its own dtype and on its device
        space = functools.partial(feature_space(space, batch_size=rows).map, check_training=False)
    elif isinstance(space, FeatureSpace) and not space.is_identity:
        space = functools.partial(space.map, check_training=False)
    out = []
    with tqdm(total=x.shape[0], desc=f"features ({name})", unit="row", leave=False, disable=not progress) as shown:
        for r0 in range(0, x.shape[0], rows):
            with one_row_batch_norm_named("space", r0, f"the {x.shape[0]} rows of {name}"):
                feats = space(x[r0:r0 + rows])
            if isinstance(feats, (tuple, list)) and any(isinstance(f, torch.Tensor) for f in feats):
                # torch.as_tensor's own words: "only one element tensors can be converted to Python scalars"
                raise TypeError(f"space must return one tensor of features, got a {type(feats).__name__} "
                                f"of {len(feats)} items: return the features alone (e.g. lambda x: net(x)[0])")
            feats = torch.as_tensor(feats)
            if feats.dim() == 0 or feats.shape[0] != min(rows, x.shape[0] - r0):
                raise ValueError(f"space must return one row per input, got shape {tuple(feats.shape)} "
                                 f"for {min(rows, x.shape[0] - r0)} inputs")
            out.append(feats)
            shown.update(out[-1].shape[0])
    return torch.cat([o.reshape(o.shape[0], -1) for o in out])


def _bootstrap_ci(count: int, n: int, bootstrap: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap of the mean of n 0/1 indicators, ``count`` of them 1.

    Resampling n indicators with replacement gives a memorized count ~ Binomial(n, F_mem), so the
    bootstrap distribution is drawn from that law directly: identical in distribution, O(bootstrap).
    """
    if bootstrap == 0:
        return (float("nan"), float("nan"))
    import numpy as np

    fraction = count / n
    rng = np.random.default_rng(seed)
    means = rng.binomial(n, fraction, size=bootstrap) / n
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def _binomial_ci(count: int, n: int, confidence: float, kind: str) -> tuple[float, float]:
    """Wilson score or Clopper–Pearson interval for ``count`` successes out of ``n``."""
    from scipy import stats

    alpha = 1.0 - confidence
    if kind == "clopper-pearson":
        low = 0.0 if count == 0 else float(stats.beta.ppf(alpha / 2, count, n - count + 1))
        high = 1.0 if count == n else float(stats.beta.ppf(1 - alpha / 2, count + 1, n - count))
        return (low, high)
    z = float(stats.norm.ppf(1 - alpha / 2))
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at 0 of n (n of n) centre and half are equal in exact arithmetic; round-off left 7e-18
    low = 0.0 if count == 0 else max(0.0, centre - half)
    high = 1.0 if count == n else min(1.0, centre + half)
    return (low, high)
