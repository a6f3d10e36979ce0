"""Statistics that join per-sample measurements to KPE: correlations and low/high-group contrasts.

Built on scipy: the point estimates and asymptotic p-values are ``scipy.stats.spearmanr`` /
``pearsonr``; confidence intervals are ``scipy.stats.bootstrap`` over (x, y) pairs; the
permutation p-value is ``scipy.stats.permutation_test`` over the orders of y against x fixed
(two-sided: twice the smaller tail). It is exact when n! <= permutations (every re-pairing once);
otherwise random re-pairings, with the observed statistic counted in the null, so
p >= 2 / (permutations + 1).
"""
from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Callable, Literal

import numpy as np

from ..checks import CONFIDENCE_PERCENT_FROM, as_scalar, check_integer, inside_unit_interval, is_real, percent_hint

__all__ = ["Correlation", "GroupComparison", "spearman", "pearson", "compare_groups"]

_BCA_MAX_N = 2000  # BCa's jackknife costs O(n^2); above this "auto" uses the percentile interval
_RESAMPLE_ELEMENTS = 4_000_000  # rows x n held at once while resampling


@dataclass(frozen=True)
class Correlation:
    """A correlation with its uncertainty.

    Attributes:
        method: ``"spearman"`` or ``"pearson"``.
        rho: the coefficient on all ``n`` pairs (scipy's value).
        ci_low, ci_high: bootstrap confidence interval at ``confidence`` (NaN when
            ``bootstrap=0``), by ``ci_method`` (``"BCa"``, ``"percentile"`` or ``"basic"``: the
            one used, which ``"auto"`` resolves to BCa or percentile), within [−1, 1]: the basic
            interval, 2ρ minus the resamples' quantiles, passes the ends near |ρ| = 1 (a
            Spearman ρ of 0.90 from 10 pairs gave 1.33) and is cut there.
        p_perm: two-sided permutation p-value of rho = 0 (NaN when ``permutations=0``).
        p_value: scipy's asymptotic two-sided p-value.
        n: number of pairs used (after dropping non-finite pairs when ``nan_policy="omit"``).
        confidence, bootstrap, permutations: the settings the call used.
    """

    method: str
    rho: float
    ci_low: float
    ci_high: float
    p_perm: float
    p_value: float
    n: int
    confidence: float
    ci_method: str
    bootstrap: int
    permutations: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, for JSON and tables."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.method} rho = {self.rho:+.3f} "
                f"[{self.ci_low:+.3f}, {self.ci_high:+.3f}] ({self.confidence:.0%} CI, "
                f"{self.ci_method}), p_perm = {self.p_perm:.3g}, n = {self.n}")


def _pearson_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson's r along ``axis``; NaN where x or y is constant. The mean of n equal values can
    be an ulp off them, which left tiny equal deviations and r ≈ 1e-17 instead of 0/0: a constant
    resample then counted as r = 0 (Pearson's r is affine-invariant, and recoding a rare flag
    {0, 1} as {0.123456, 2} turned an undefined interval into a narrow one)."""
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis) / np.sqrt((xc * xc).sum(axis) * (yc * yc).sum(axis))
    constant = (x.max(axis=axis) == x.min(axis=axis)) | (y.max(axis=axis) == y.min(axis=axis))
    return np.clip(np.where(constant, np.nan, r), -1.0, 1.0)


def _spearman_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.stats import rankdata

    return _pearson_along(rankdata(x, axis=axis), rankdata(y, axis=axis), axis=axis)


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(n,) each value's place 0..k−1 among the k distinct ``values`` (equal values share one), and k."""
    distinct, codes = np.unique(values, return_inverse=True)
    return codes.reshape(-1), distinct.size


def _ranks_of_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """Average ranks (``scipy.stats.rankdata``'s "average") along the last axis of integer
    ``codes`` in 0..k−1, the same half-integers exactly: a code's rank is the count of smaller
    codes in its row plus (its own count + 1) / 2. One count per row, no sort: O(n + k) a row."""
    rows = codes.reshape(-1, codes.shape[-1]).astype(np.intp, copy=False)
    offsets = (np.arange(len(rows)) * k)[:, None]
    counts = np.bincount((rows + offsets).ravel(), minlength=len(rows) * k).reshape(len(rows), k)
    rank_of_code = (np.cumsum(counts, axis=1) - counts) + 0.5 * (counts + 1)
    return np.take_along_axis(rank_of_code, rows, axis=1).reshape(codes.shape)


class _SpearmanOfCodes:
    """Spearman's ρ along the last axis of resampled codes (:func:`_codes` of x and of y):
    Pearson's ρ of their ranks, the value :func:`_spearman_along` gives on the values themselves
    (ρ reads only the order), without sorting every bootstrap or jackknife resample."""

    def __init__(self, k_x: int, k_y: int):
        self.k_x, self.k_y = k_x, k_y

    def __call__(self, x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
        return _pearson_along(_ranks_of_codes(x, self.k_x), _ranks_of_codes(y, self.k_y), axis=-1)


def _check_nan_policy(nan_policy: Any) -> None:
    if not (isinstance(nan_policy, str) and nan_policy in ("raise", "omit")):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")


def _values(name: str, a: Any) -> np.ndarray:
    """``a`` as a 1-D float64 array of real numbers; ValueError naming ``name`` for any other
    shape, for strings/objects (no parsing of '1.0') and for complex values."""
    if hasattr(a, "detach") and getattr(a, "is_complex", lambda: False)():
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    arr = np.asarray(to_numpy(a))
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got {arr.dtype} values")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, (n,) values, got shape {arr.shape}")
    return arr.astype(np.float64)


def _check_aligned(x: Any, y: Any, names: tuple[str, str]) -> None:
    """Pairs are taken by position; two pandas Series whose indexes differ would pair rows that
    pandas itself would not, so they are refused rather than silently mismatched."""
    # a list's .index is a method: only two pandas indexes (they have .equals) are compared
    index_x, index_y = getattr(x, "index", None), getattr(y, "index", None)
    if not (hasattr(index_x, "equals") and hasattr(index_y, "equals")):
        return
    if not index_x.equals(index_y):
        raise ValueError(f"{names[0]} and {names[1]} are pandas objects with different indexes, and pairs "
                         f"are taken by position: align them first ({names[0]}, {names[1]} = "
                         f"{names[0]}.align({names[1]}, join='inner')) or pass .to_numpy() if the order is right")


def _pairs(x: Any, y: Any, nan_policy: str, names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    _check_nan_policy(nan_policy)
    _check_aligned(x, y, names)
    x, y = _values(names[0], x), _values(names[1], y)
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {x.size} and {y.size}")
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        if nan_policy == "raise":
            raise ValueError(f"{int((~finite).sum())} non-finite pair(s) in {names[0]}/{names[1]} "
                             "(pass nan_policy='omit' to drop them)")
        x, y = x[finite], y[finite]
    if x.size < 3:
        raise ValueError(f"need at least 3 finite pairs, got {x.size}")
    return x, y


def to_numpy(a: Any) -> Any:
    """``a`` as NumPy values where it is a torch tensor (float64, on the CPU, detached: bfloat16 has
    no NumPy dtype, a CUDA or grad tensor no ``.numpy()``) or a pandas Series; anything else (an
    array, a list, a number) as it is, for ``np.asarray``. Imports neither torch nor pandas."""
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        return a.detach().cpu().double().numpy()
    if hasattr(a, "to_numpy"):  # pandas Series
        return a.to_numpy()
    return a


def _unit_exponent(values: np.ndarray) -> int:
    """The exponent e with max |value| in [2^(e − 1), 2^e) (0 when all are 0)."""
    return int(np.frexp(np.max(np.abs(values)))[1])


def _unit_scaled(values: np.ndarray) -> np.ndarray:
    """``values`` times the power of two that brings max |value| into [0.5, 1): exact (no rounding
    unless a value underflows), and Pearson's r is invariant to it, but the sums of squares no
    longer overflow (x ~ 1e300 gave rho 0.97 with a (0, 0) CI)."""
    return np.ldexp(values, -_unit_exponent(values))


def _correlation(method: str, x: Any, y: Any, bootstrap: int, permutations: int, seed: int,
                 confidence: float, ci_method: str, nan_policy: str) -> Correlation:
    from scipy import stats

    bootstrap, permutations, seed = (check_integer(name, value, 0) for name, value in (
        ("bootstrap", bootstrap), ("permutations", permutations), ("seed", seed)))
    confidence = inside_unit_interval("confidence", confidence, percent_from=CONFIDENCE_PERCENT_FROM)
    if not (isinstance(ci_method, str) and ci_method in ("auto", "BCa", "percentile", "basic")):
        raise ValueError(f"ci_method must be 'auto', 'BCa', 'percentile' or 'basic', got {ci_method!r}")
    x, y = _pairs(x, y, nan_policy)
    for name, values in (("x", x), ("y", y)):
        if values.min() == values.max():
            raise ValueError(f"{name} is constant ({values.size} values all {values[0]:g}): "
                             f"the {method} correlation is undefined")
    if method == "pearson":  # Spearman reads ranks: scaling could only underflow small values into ties
        x, y = _unit_scaled(x), _unit_scaled(y)
    n = x.size
    if method == "spearman":
        res = stats.spearmanr(x, y)
        # resampled: each value's place among the distinct values, which ρ reads as it reads the
        # values (only their order counts), so each resample is ranked by counting, not sorting
        (code_x, k_x), (code_y, k_y) = _codes(x), _codes(y)
        resampled_data, statistic = (code_x, code_y), _SpearmanOfCodes(k_x, k_y)
    else:
        res = stats.pearsonr(x, y)
        resampled_data, statistic = (x, y), _pearson_along
    rho, p_value = float(res.statistic), float(res.pvalue)
    batch = max(1, _RESAMPLE_ELEMENTS // n)
    auto = ci_method == "auto"
    if auto:
        ci_method = "BCa" if n <= _BCA_MAX_N else "percentile"

    ci_low = ci_high = math.nan
    if bootstrap > 0 and math.isfinite(rho):
        def interval(how: str) -> tuple[float, float, np.ndarray]:
            # a caller's np.seterr(all="raise") made SciPy's degenerate BCa (handled below) raise
            with np.errstate(divide="ignore", invalid="ignore"):
                boot = stats.bootstrap(resampled_data, statistic, n_resamples=bootstrap, batch=batch,
                                       vectorized=True, paired=True, confidence_level=confidence,
                                       method=how, **_seeded(stats.bootstrap, seed))
            return (float(boot.confidence_interval.low), float(boot.confidence_interval.high),
                    np.asarray(boot.bootstrap_distribution))

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ci_low, ci_high, resampled = interval(ci_method)
            if auto and ci_method == "BCa" and not (math.isfinite(ci_low) and math.isfinite(ci_high)):
                ci_method = "percentile"  # a degenerate BCa (|rho| = 1, tiny n) falls back instead of warning
                caught.clear()
                ci_low, ci_high, resampled = interval(ci_method)
        undefined = int(np.isnan(resampled).sum())
        if ci_method != "BCa" and 0 < undefined < resampled.size:
            # resamples in which x or y is constant (a rare binary y) have no correlation, and SciPy
            # then returns a NaN interval (warning about BCa for any method). The interval over the
            # others alone is conditional on the rare rows being drawn, and too narrow (3 flagged of
            # 40, no link: it excluded 0 in 20 % of data sets): take the widest interval any values
            # of the undefined resamples could give, NaN when they could fill a whole tail
            ci_low, ci_high = _interval_whatever_the_undefined(resampled, rho, ci_method, confidence)
            outcome = (f"the {ci_method} interval is the widest their values could give" if math.isfinite(ci_low)
                       else "they could fill a whole tail, so there is no interval (NaN): judge by the "
                            "permutation p-value")
            warnings.warn(f"{undefined} of {resampled.size} bootstrap resamples had a constant x or y, where "
                          f"the {method.capitalize()} correlation is undefined; {outcome}", RuntimeWarning,
                          stacklevel=3)
        elif not auto:
            for w in caught:  # an explicit method's own warnings reach the caller
                warnings.warn(w.message, w.category, stacklevel=3)

    p_perm = math.nan
    if permutations > 0 and math.isfinite(rho):
        if method == "spearman":  # ranks travel with their values under re-pairing
            x, y = stats.rankdata(x), stats.rankdata(y)
        fixed = x

        def re_paired(y_orders: np.ndarray, axis: int = -1) -> np.ndarray:
            return _pearson_along(fixed, y_orders, axis=axis)

        # y's n! orders are each pairing once, so the test is exact when n! <= permutations (given
        # both samples SciPy counts (n!)² orders, each pairing n! times). n! overflows to inf
        # already at moderate n (SciPy warns); inf only means "too many to enumerate"
        with np.errstate(over="ignore"):
            perm = stats.permutation_test((y,), re_paired, permutation_type="pairings",
                                          vectorized=True, n_resamples=permutations, batch=batch,
                                          alternative="two-sided",
                                          **_seeded(stats.permutation_test, seed + 1))
        p_perm = float(perm.pvalue)
    ci_low, ci_high = (float(np.clip(end, -1.0, 1.0)) for end in (ci_low, ci_high))  # NaN stays NaN
    return Correlation(method, rho, ci_low, ci_high, p_perm, p_value, n, confidence, ci_method,
                       bootstrap, permutations)


def _interval_whatever_the_undefined(resampled: np.ndarray, rho: float, how: str,
                                     confidence: float) -> tuple[float, float]:
    """The percentile or basic bootstrap interval of ``resampled`` whose undefined (NaN) share u
    could hold any values: its tail quantile lies between the defined resamples' quantiles at
    (a − u)/(1 − u) and a/(1 − u) (a = (1 − confidence)/2), so the outer one of each tail is
    taken. NaN when u ≥ a (the undefined resamples could make up a whole tail)."""
    tail = (1.0 - confidence) / 2.0
    defined = resampled[np.isfinite(resampled)]
    share = 1.0 - defined.size / resampled.size
    if share >= tail:
        return math.nan, math.nan
    level = (tail - share) / (1.0 - share)
    low, high = np.quantile(defined, [level, 1.0 - level])
    if how == "basic":
        low, high = 2.0 * rho - high, 2.0 * rho - low
    return float(low), float(high)


def _seeded(function: Callable, seed: int) -> dict:
    """A generator seeded with ``seed``, under the keyword ``function`` takes it by: ``rng`` since
    SciPy 1.15, ``random_state`` before."""
    name = "rng" if "rng" in inspect.signature(function).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def spearman(x: Any, y: Any, bootstrap: int = 1000, permutations: int = 1000, seed: int = 0, *,
             confidence: float = 0.95, ci_method: Literal["auto", "BCa", "percentile", "basic"] = "auto",
             nan_policy: Literal["raise", "omit"] = "raise") -> Correlation:
    """Spearman's rank correlation of paired samples with a bootstrap CI and permutation p-value.

    Args:
        x, y: (n,) paired real values of equal length (1-D array-likes, tensors or Series; cast
            to float64; other shapes, strings and complex values are refused). Neither may be
            constant (ValueError: the correlation is undefined). Values of any magnitude work
            (Spearman reads ranks; Pearson rescales both by a power of two first).
        bootstrap: number of paired bootstrap resamples for the CI, a non-negative integer
            (0 skips it; a bool is refused).
        permutations: number of random re-pairings for the permutation p-value, a non-negative
            integer (0 skips it; the exact test over all n! re-pairings runs instead when
            n! <= permutations: n <= 6 at the default).
        seed: a non-negative integer; seeds the bootstrap (``seed``) and permutation
            (``seed + 1``) generators.
        confidence: CI level, in (0, 1).
        ci_method: ``"auto"`` is BCa for n <= 2000 (its jackknife is O(n^2)), percentile above
            and wherever BCa is undefined (|rho| = 1, tiny n); the result names the one used.
            Resamples in which x or y is constant (likely when one is a rare binary flag) have
            no correlation: a percentile or basic interval is then the widest that any values of
            theirs could give, and NaN when they are (1 − confidence)/2 of the resamples or more
            (they could fill a tail; judge by ``p_perm``), with a RuntimeWarning saying how many
            there were (an explicit BCa stays NaN).
            ``"basic"`` covers less than asked at small n: asked for 95 %, it covered 83.3 % at
            n = 10 (BCa 94.3 %, percentile 95.7 %) and 89.3 % at n = 30 (bivariate normal pairs,
            ρ = 0.5, 300 repetitions of 500 resamples); prefer the default there.
        nan_policy: ``"raise"`` on non-finite pairs, or ``"omit"`` to drop them (checked even
            when every pair is finite).

    Returns:
        :class:`Correlation`.
    """
    return _correlation("spearman", x, y, bootstrap, permutations, seed, confidence, ci_method,
                        nan_policy)


def pearson(x: Any, y: Any, bootstrap: int = 1000, permutations: int = 1000, seed: int = 0, *,
            confidence: float = 0.95, ci_method: Literal["auto", "BCa", "percentile", "basic"] = "auto",
            nan_policy: Literal["raise", "omit"] = "raise") -> Correlation:
    """Pearson's linear correlation; arguments and result as :func:`spearman`.

    Its bootstrap intervals cover less than asked on skewed or heavy-tailed data: asked for 95 %,
    BCa covered 85.5–89.8 % of lognormal and bivariate-t3 pairs at n = 20 to 200, the percentile
    interval 88.8–93.5 % (``benchmarks/correlation_interval_coverage.py``, BENCHMARKS.md). On such
    data prefer :func:`spearman` (BCa 93.8–96.1 % in every case measured) or
    ``ci_method="percentile"``."""
    return _correlation("pearson", x, y, bootstrap, permutations, seed, confidence, ci_method,
                        nan_policy)


@dataclass(frozen=True)
class GroupComparison:
    """``score`` in the low vs the high group of ``by`` (e.g. bottom vs top 20% of KPE).

    Attributes:
        quantile: the fraction of samples in each group.
        n_low, n_high: group sizes (⌊quantile·n + ½⌋ each, at most n // 2; ties in ``by``
            broken by order).
        by_low_max, by_high_min: the group boundaries in ``by``.
        low_mean, low_std, high_mean, high_std: ``score`` per group (std with ddof = 1).
        difference: ``high_mean - low_mean``.
        cohens_d: ``difference`` over the pooled standard deviation; for groups without
            spread, ±inf when they differ and 0 when they are one and the same value.
        p_value: Welch's two-sided t-test; for groups without spread, its limit 0 when they
            differ and 1 when they are one and the same value (no difference: every relabelling
            of the samples gives the same groups; Welch's t is 0/0 there). A group without spread
            beside one with spread is exact (the one-sample test against its value).
        p_mannwhitney: Mann-Whitney U two-sided (1 for one and the same value).
    """

    quantile: float
    n_low: int
    n_high: int
    by_low_max: float
    by_high_min: float
    low_mean: float
    low_std: float
    high_mean: float
    high_std: float
    difference: float
    cohens_d: float
    p_value: float
    p_mannwhitney: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, for JSON and tables."""
        return asdict(self)

    def __str__(self) -> str:
        q = f"{self.quantile:.0%}"
        return (f"low {q}: {self.low_mean:.4g} ± {self.low_std:.3g} (n={self.n_low}); "
                f"high {q}: {self.high_mean:.4g} ± {self.high_std:.3g} (n={self.n_high}); "
                f"d = {self.cohens_d:+.3f}, Welch p = {self.p_value:.3g}")


def compare_groups(score: Any, by: Any, quantile: float = 0.2, *,
                   nan_policy: Literal["raise", "omit"] = "raise") -> GroupComparison:
    """Compare ``score`` between the samples lowest and highest in ``by``.

    Args:
        score: (n,) the measurement compared (e.g. CLIP score); 1-D real values. A constant
            score compares as no difference (d = 0, both p-values 1), without a warning.
        by: (n,) the grouping variable (e.g. KPE), the same length; not constant (ValueError:
            the groups would be the first and last samples in input order).
        quantile: fraction in each group, in (0, 0.5]; each group holds ``quantile * n``
            samples rounded half up (``quantile`` read as the decimal it prints as: 0.29 of 50
            is 14.5, so 15), at most ``n // 2`` so the groups never share a sample;
            fewer than 2 is a ValueError (no group is padded: n = 5 needs quantile ≥ 0.3).
        nan_policy: as in :func:`spearman`.

    Returns:
        :class:`GroupComparison` (high minus low).
    """
    from scipy import stats

    quantile = check_group_quantile("quantile", quantile)
    score, by = _pairs(score, by, nan_policy, names=("score", "by"))
    if by.min() == by.max():
        raise ValueError(f"by is constant ({by.size} values all {by[0]:g}): there are no low and high "
                         "groups, only the first and last samples in input order")
    n = score.size
    m = min(group_size(quantile, n), n // 2)
    if m < 2:
        raise ValueError(f"quantile={quantile} of n={n} samples leaves {m} per group; need >= 2")
    order = np.argsort(by, kind="stable")
    # d and Welch's t are scale-invariant: on unit-scaled values the squared stds and SciPy's sums
    # of squares neither overflow nor underflow (beyond ~1e±80 they did: d = inf or 0, p = 0.332 or 1)
    exponent = _unit_exponent(score)
    scaled = np.ldexp(score, -exponent)
    low, high = scaled[order[:m]], scaled[order[-m:]]
    (low_mean, low_std), (high_mean, high_std) = _mean_and_std(low), _mean_and_std(high)
    difference = high_mean - low_mean
    pooled = math.sqrt(((m - 1) * low_std ** 2 + (m - 1) * high_std ** 2) / (2 * m - 2))
    if pooled > 0:
        d, p_t = difference / pooled, _welch_p(high, low, high_std, low_std)
    elif difference:  # two groups without spread that differ: Welch's limit
        d, p_t = math.copysign(math.inf, difference), 0.0
    else:  # one and the same value in both groups: no difference (t would be 0/0)
        d, p_t = 0.0, 1.0
    p_u = float(stats.mannwhitneyu(high, low, alternative="two-sided").pvalue)
    # back in score's unit: the same power of two, exact (the unscaled values' own statistics)
    low_mean, low_std, high_mean, high_std, difference = (
        float(np.ldexp(v, exponent)) for v in (low_mean, low_std, high_mean, high_std, difference))
    return GroupComparison(quantile, m, m, float(by[order[m - 1]]), float(by[order[-m]]),
                           low_mean, low_std, high_mean, high_std, difference, d, p_t, p_u)


def check_group_quantile(name: str, value: Any) -> float:
    """``value``, one real number (a 0-d tensor or array included), as a float in (0, 0.5]: the
    share of the samples in each of :func:`compare_groups`' low and high groups; else ValueError
    naming ``name``, with the fraction a value in [2, 50] meant. One check and message for
    compare_groups and :class:`~kinetic_fm.studies.config.SemanticsConfig`."""
    quantile = as_scalar(value)
    if is_real(quantile) and 0.0 < quantile <= 0.5:
        return float(quantile)
    raise ValueError(f"{name} must be a real number in (0, 0.5] (the share of the samples in each of the low "
                     f"and high groups), got {value!r}{percent_hint(value, 0.5)}")


def group_size(quantile: float, n: int) -> int:
    """``quantile`` · ``n`` rounded half up, ``quantile`` read as the decimal it prints as: the
    float 0.29 is a little below 0.29, and 0.29 × 50 = 14.5 read 14.499999999999998, which
    rounded down. (:class:`~kinetic_fm.studies.config.SemanticsConfig` checks its groups by it.)"""
    return math.floor(Fraction(repr(float(quantile))) * n + Fraction(1, 2))


def _mean_and_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (ddof = 1) of one group; a group without spread gives its value
    and 0 exactly (NumPy's mean of 0.1 repeated can differ from 0.1 in the last bit, and the
    deviations from it then leave a std of about 1e-17)."""
    if values.min() == values.max():
        return float(values[0]), 0.0
    return float(values.mean()), float(values.std(ddof=1))


def _welch_p(high: np.ndarray, low: np.ndarray, high_std: float, low_std: float) -> float:
    """Welch's two-sided p of two groups, at least one with spread. A group without spread is its
    value exactly: Welch's test is then the one-sample t-test of the other group against it,
    which SciPy computes without its "precision loss" warning (its two-sample test warns about
    the constant group, whose variance is exactly 0)."""
    from scipy import stats

    if low_std == 0.0:
        return float(stats.ttest_1samp(high, low[0]).pvalue)
    if high_std == 0.0:
        return float(stats.ttest_1samp(low, high[0]).pvalue)
    return float(stats.ttest_ind(high, low, equal_var=False).pvalue)
