"""Correlations and group contrasts against scipy and against population values."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as sps

from kinetic_fm.metrics.stats import _pearson_along, compare_groups, pearson, spearman


def _bivariate_normal(rng, n, rho):
    cov = np.array([[1.0, rho], [rho, 1.0]])
    xy = rng.multivariate_normal([0.0, 0.0], cov, size=n)
    return xy[:, 0], xy[:, 1]


def test_spearman_and_pearson_match_scipy():
    rng = np.random.default_rng(1)
    x, y = _bivariate_normal(rng, 300, -0.6)
    y = y ** 3 + 0.1 * x  # monotone distortion: Spearman != Pearson
    s = spearman(x, y, bootstrap=200, permutations=200)
    p = pearson(x, y, bootstrap=200, permutations=200)
    ref_s, ref_p = sps.spearmanr(x, y), sps.pearsonr(x, y)
    assert s.rho == pytest.approx(ref_s.statistic, abs=1e-12)
    assert p.rho == pytest.approx(ref_p.statistic, abs=1e-12)
    assert s.p_value == pytest.approx(ref_s.pvalue, rel=1e-9)
    assert s.n == p.n == 300
    assert s.ci_low < s.rho < s.ci_high and p.ci_low < p.rho < p.ci_high
    # strong correlation: no re-pairing in 200 reaches it, so each tail is 1/(200+1) and
    # scipy's two-sided p doubles the smaller tail
    assert s.p_perm == pytest.approx(2 / 201)
    assert not math.isclose(s.rho, p.rho, abs_tol=1e-3)


def test_accepts_tensors_and_ties():
    x = torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 7.0])
    y = torch.tensor([2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 8.0, 6.0])
    s = spearman(x, y, bootstrap=100, permutations=100)
    assert s.rho == pytest.approx(sps.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)


def test_permutation_p_value_is_uniformish_under_independence():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=200), rng.normal(size=200)
    s = spearman(x, y, bootstrap=0, permutations=500)
    assert math.isnan(s.ci_low) and math.isnan(s.ci_high)
    # the permutation p-value and the asymptotic one agree for n = 200
    assert abs(s.p_perm - s.p_value) < 0.08
    assert s.ci_method == "BCa"


def test_seeded_results_are_reproducible():
    rng = np.random.default_rng(4)
    x, y = _bivariate_normal(rng, 100, 0.3)
    a = spearman(x, y, bootstrap=300, permutations=300, seed=7)
    b = spearman(x, y, bootstrap=300, permutations=300, seed=7)
    assert a == b


def test_permutation_p_value_raises_no_overflow_warning():
    # SciPy 1.10 (our floor, run in CI's second stage) counts the pairings as a power of n! and
    # warned "overflow encountered in scalar power" at n = 100
    import warnings

    rng = np.random.default_rng(5)
    x, y = _bivariate_normal(rng, 100, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = spearman(x, y, bootstrap=0, permutations=200, seed=1)
    assert 0.0 < result.p_perm <= 1.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        spearman([1, 2, 3, np.nan], [1, 2, 3, 4])
    s = spearman([1, 2, 3, np.nan, 5], [1, 3, 2, 4, 5], nan_policy="omit", bootstrap=0,
                 permutations=0)
    assert s.n == 4
    with pytest.raises(ValueError, match="confidence"):
        pearson([1, 2, 3], [1, 2, 3], confidence=1.5)


def test_compare_groups_against_direct_computation():
    rng = np.random.default_rng(5)
    kpe = rng.gamma(2.0, size=1000)
    score = 0.5 * kpe + rng.normal(size=1000)
    g = compare_groups(score, kpe, quantile=0.2)
    order = np.argsort(kpe)
    low, high = score[order[:200]], score[order[-200:]]
    assert g.n_low == g.n_high == 200
    assert g.low_mean == pytest.approx(low.mean()) and g.high_mean == pytest.approx(high.mean())
    assert g.low_std == pytest.approx(low.std(ddof=1))
    pooled = np.sqrt((low.var(ddof=1) + high.var(ddof=1)) / 2)
    assert g.cohens_d == pytest.approx((high.mean() - low.mean()) / pooled)
    assert g.p_value == pytest.approx(sps.ttest_ind(high, low, equal_var=False).pvalue)
    assert g.by_low_max < g.by_high_min
    assert g.cohens_d > 1.0 and g.p_value < 1e-10
    with pytest.raises(ValueError, match="quantile"):
        compare_groups(score, kpe, quantile=0.7)


def test_auto_interval_falls_back_to_percentile_where_bca_is_undefined():
    x = np.arange(40.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # no DegenerateDataWarning escapes
        r = spearman(x, x ** 3, bootstrap=200, permutations=0)
    assert r.rho == pytest.approx(1.0) and r.ci_method == "percentile"
    assert r.ci_low == pytest.approx(1.0) and r.ci_high == pytest.approx(1.0)
    ordinary = spearman(x, np.sin(x), bootstrap=200, permutations=0)
    assert ordinary.ci_method == "BCa" and ordinary.ci_low < ordinary.rho < ordinary.ci_high


def _flag_near_the_top(flagged: int):
    """200 normal x and a binary partner with ``flagged`` ones spread among the 40 largest x."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    flag = np.zeros(200)
    flag[np.argsort(x)[-40:][:: 40 // flagged][:flagged]] = 1.0
    return x, flag


def _widest_reference(x, flag, level, rho, how, resamples=20000):
    """A brute-force bootstrap of our own (another generator) in which each resample holding no
    flagged row takes the value that widens the interval most: -inf for the low end, +inf for
    the high one."""
    rows = np.random.default_rng(1).integers(0, 200, size=(resamples, 200))
    xs, fs = x[rows], flag[rows]
    keep = fs.max(axis=1) > 0
    ranks = [sps.rankdata(a, axis=1) for a in (xs[keep], fs[keep])]
    centred = [a - a.mean(axis=1, keepdims=True) for a in ranks]
    defined = (centred[0] * centred[1]).sum(1) / np.sqrt((centred[0] ** 2).sum(1) * (centred[1] ** 2).sum(1))
    missing = resamples - defined.size
    low = np.quantile(np.concatenate([defined, np.full(missing, -np.inf)]), (1 - level) / 2)
    high = np.quantile(np.concatenate([defined, np.full(missing, np.inf)]), (1 + level) / 2)
    if how == "basic":
        low, high = 2 * rho - high, 2 * rho - low
    return low, high


@pytest.mark.parametrize("ci_method", ["auto", "percentile", "basic"])
def test_a_rare_binary_partner_gets_the_widest_interval_its_undefined_resamples_allow(ci_method):
    # 6 flagged of 200: ~0.2 % of resamples hold no flagged row, where a correlation is undefined
    # (SciPy's interval is NaN for every method). The interval over the defined ones alone is
    # conditional on the flagged rows being drawn, and too narrow (helper-111: with no link it
    # excluded 0 in 20 % of data sets at 3 flagged of 40).
    x, flag = _flag_near_the_top(6)
    with pytest.warns(RuntimeWarning, match=r"(\d+) of 4000 bootstrap resamples had a constant x or y, .*; the "
                                            r"\w+ interval is the widest") as got:
        r = spearman(x, flag, bootstrap=4000, permutations=0, ci_method=ci_method)
    dropped = int(str(got[0].message).split()[0])
    assert 0 < dropped < 4000 * 0.01                    # (194/200)^200 = 0.23 %
    how = "percentile" if ci_method == "auto" else ci_method
    low, high = _widest_reference(x, flag, 0.95, r.rho, how)
    assert r.ci_low == pytest.approx(low, abs=0.02) and r.ci_high == pytest.approx(high, abs=0.02)
    assert r.ci_method == how


def test_undefined_resamples_that_could_fill_a_tail_leave_no_interval():
    # 3 flagged of 200: 4.9 % of resamples undefined, more than the 2.5 % tail: whatever they hold
    # decides the end, so there is none; three points that agree in order likewise (n = 3: a
    # third of resamples constant; the defined ones all read rho = 1, "[+1, +1]" before)
    x, flag = _flag_near_the_top(3)
    for a, b in ((x, flag), ([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])):
        with pytest.warns(RuntimeWarning, match="could fill a whole tail, so there is no interval"):
            r = spearman(a, b, bootstrap=2000, permutations=0, ci_method="percentile")
        assert math.isnan(r.ci_low) and math.isnan(r.ci_high)


def test_the_widest_interval_has_the_asked_confidence():
    # at confidence 0.5 the tails are the quartiles (not the median, nor the 2.5 % points), and
    # 4.9 % undefined resamples fit inside a 25 % tail; tolerance 0.15 of the bootstrap sd
    x, flag = _flag_near_the_top(3)
    with pytest.warns(RuntimeWarning, match="bootstrap resamples had a constant x or y"):
        r = spearman(x, flag, bootstrap=4000, permutations=0, ci_method="percentile", confidence=0.5)
    low, high = _widest_reference(x, flag, 0.5, r.rho, "percentile")
    tolerance = 0.15 * np.std([r.ci_low, r.ci_high, low, high]) + 0.02
    assert abs(r.ci_low - low) < tolerance and abs(r.ci_high - high) < tolerance


@pytest.mark.parametrize("n, quantile, size", [(7, 0.5, 3), (11, 0.5, 5), (10, 0.25, 3), (10, 0.35, 4)])
def test_compare_groups_sizes_round_half_up_and_never_overlap(n, quantile, size):
    by = np.arange(n, dtype=float)[::-1].copy()         # distinct values: the groups are known
    g = compare_groups(by * 2.0, by, quantile=quantile)
    assert g.n_low == g.n_high == size
    assert g.by_low_max == size - 1 and g.by_high_min == n - size
    assert g.by_low_max < g.by_high_min                 # no sample in both groups


def _coverage(n_reps: int, n: int, rho: float) -> int:
    population = 6 / math.pi * math.asin(rho / 2)  # Spearman's rho of a bivariate normal
    covered = 0
    for rep in range(n_reps):
        rng = np.random.default_rng(1000 + rep)
        x, y = _bivariate_normal(rng, n, rho)
        s = spearman(x, y, bootstrap=1000, permutations=0, seed=rep)
        covered += s.ci_low <= population <= s.ci_high
    return covered


@pytest.mark.slow
def test_bootstrap_ci_covers_population_spearman():
    assert _coverage(100, 200, 0.5) >= 90


# --- input validation (audit D10, D11, C15) --------------------------------------------------

def _xy(n=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + rng.normal(size=n)


@pytest.mark.parametrize("fn", [spearman, pearson])
def test_x_and_y_must_be_1d_real_and_equal_length(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x must be 1-D, \(n,\) values, got shape \(15, 2\)"):
        fn(x.reshape(15, 2), y)                       # was flattened and paired with y
    with pytest.raises(ValueError, match="y must hold real numbers"):
        fn(x, [str(v) for v in y])                    # strings were parsed
    with pytest.raises(ValueError, match="x must hold real numbers"):
        fn(x + 1j, y)
    with pytest.raises(ValueError, match="x must hold real numbers"):
        fn(torch.tensor(x + 1j), y)
    with pytest.raises(ValueError, match="x must hold real numbers"):
        fn(None, y)
    with pytest.raises(ValueError, match="same length"):
        fn(x[:-1], y)


@pytest.mark.parametrize("kwargs,name", [
    ({"bootstrap": True}, "bootstrap"), ({"bootstrap": float("nan")}, "bootstrap"),
    ({"bootstrap": 2.7}, "bootstrap"), ({"bootstrap": "10"}, "bootstrap"), ({"bootstrap": None}, "bootstrap"),
    ({"bootstrap": float("inf")}, "bootstrap"), ({"permutations": True}, "permutations"),
    ({"permutations": 2.7}, "permutations"), ({"seed": -1}, "seed"), ({"seed": 2.7}, "seed"),
    ({"seed": "a"}, "seed"), ({"seed": None}, "seed"), ({"seed": True}, "seed"),
    ({"confidence": "0.9"}, "confidence"), ({"confidence": 1.0}, "confidence"), ({"confidence": 0.0}, "confidence"),
    ({"nan_policy": "propagate"}, "nan_policy"),
    ({"nan_policy": "x"}, "nan_policy"),
])
def test_counts_seed_confidence_and_nan_policy_checked_up_front(kwargs, name):
    x, y = _xy()                                        # finite data: nan_policy was never looked at
    with pytest.raises(ValueError, match=rf"^{name} must"):
        spearman(x, y, **kwargs)


def test_numpy_and_0d_tensor_counts_work():
    x, y = _xy()
    a = spearman(x, y, bootstrap=np.int64(50), permutations=torch.tensor(50), seed=np.int32(3),
                 confidence=np.float32(0.9))
    b = spearman(x, y, bootstrap=50, permutations=50, seed=3, confidence=float(np.float32(0.9)))
    assert (a.rho, a.ci_low, a.ci_high, a.p_perm) == (b.rho, b.ci_low, b.ci_high, b.p_perm)


def test_compare_groups_is_scale_invariant_at_any_magnitude():
    # d and Welch's t are scale-invariant; the pooled std squared the stds and SciPy's t-test the
    # values: s = 1e-170 gave d = inf, p = 0; 1e-160..1e-90 and 1e80..1e150 p = 0.332; >= 1e160 d = 0, p = 1
    rng = np.random.default_rng(2)
    by = np.arange(50.0)
    base = rng.standard_normal(50) + np.linspace(0.0, 1.0, 50)
    low, high = base[:10], base[-10:]
    pooled = np.sqrt((low.var(ddof=1) + high.var(ddof=1)) / 2)
    d = (high.mean() - low.mean()) / pooled
    p = sps.ttest_ind(high, low, equal_var=False).pvalue
    assert d == pytest.approx(0.7777, abs=1e-4) and p == pytest.approx(0.0991, abs=1e-4)
    for k in range(-990, 991, 30):
        scale = 2.0 ** k                                      # 1e-298 .. 1e298
        g = compare_groups(base * scale, by, 0.2)
        assert g.cohens_d == pytest.approx(d, rel=1e-12), k
        assert g.p_value == pytest.approx(p, rel=1e-12), k
        assert g.low_std == pytest.approx(low.std(ddof=1) * scale, rel=1e-12), k
        assert g.difference == pytest.approx((high.mean() - low.mean()) * scale, rel=1e-12), k


@pytest.mark.parametrize("fn", [spearman, pearson])
def test_constant_input_is_refused(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match="y is constant .* undefined"):
        fn(x, np.full_like(y, 2.0))


def test_compare_groups_refuses_a_constant_by_and_reads_a_constant_score_as_no_difference():
    # a constant by was split by input order: score = arange gave d = +12.4, Welch p = 2e-6
    with pytest.raises(ValueError, match=r"^by is constant \(20 values all 3\): there are no low and high groups"):
        compare_groups(np.arange(20.0), np.full(20, 3.0))
    with pytest.raises(ValueError, match="by is constant"):                 # constant once the NaN pair is omitted
        compare_groups(np.arange(20.0), np.r_[np.full(19, 3.0), np.nan], nan_policy="omit")


@pytest.mark.parametrize("value", [1.5, 0.1, 1e10, -3.7e-8])
def test_a_constant_score_compares_as_no_difference_without_a_warning(value):
    # SciPy's t-test of two constant groups warned of "precision loss" and gave p = NaN (and d was
    # NaN); a mean of 0.1 repeated can miss 0.1 in its last bit, which left stds of ~1e-17
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare_groups(np.full(20, value), np.arange(20.0))
    assert (same.low_mean, same.high_mean, same.low_std, same.high_std) == (value, value, 0.0, 0.0)
    assert (same.difference, same.cohens_d, same.p_value, same.p_mannwhitney) == (0.0, 0.0, 1.0, 1.0)


def test_groups_without_spread_give_exact_results_without_a_warning():
    # two constant groups that differ: Welch's limit; one constant group beside one with spread:
    # Welch's test, which SciPy's two-sample test gets right but with a "precision loss" warning
    by = np.arange(20.0)
    apart = np.r_[np.full(10, 0.1), np.full(10, 0.3)]
    spread = np.r_[np.full(10, 0.1), 0.1 + np.random.default_rng(3).normal(size=10)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = compare_groups(apart, by)
        one = compare_groups(spread, by, quantile=0.4)
        mirrored = compare_groups(spread[::-1].copy(), by, quantile=0.4)
    assert (split.difference, split.cohens_d, split.p_value) == (0.3 - 0.1, math.inf, 0.0)
    low, high = spread[:8], spread[-8:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reference = sps.ttest_ind(high, low, equal_var=False).pvalue
    assert one.low_std == 0.0 and one.high_std == pytest.approx(high.std(ddof=1), rel=1e-12)
    assert one.p_value == pytest.approx(reference, rel=1e-9) and 0.0 < one.p_value < 1.0
    assert one.cohens_d == pytest.approx((high.mean() - 0.1) / math.sqrt(high.var(ddof=1) / 2), rel=1e-12)
    assert mirrored.high_std == 0.0 and mirrored.p_value == pytest.approx(one.p_value, rel=1e-12)
    assert mirrored.cohens_d == pytest.approx(-one.cohens_d, rel=1e-12)


def test_huge_values_give_the_scale_free_result():
    # x*1e300 overflowed the sums of squares: rho 0.97 with CI (0, 0) and p_perm 1.0
    x, y = _xy()
    big = pearson(x * 1e300, y, bootstrap=100, permutations=100)
    ref = pearson(x, y, bootstrap=100, permutations=100)
    assert big.rho == pytest.approx(ref.rho, rel=1e-12)
    assert big.ci_low == pytest.approx(ref.ci_low, rel=1e-9) and big.ci_high == pytest.approx(ref.ci_high, rel=1e-9)
    assert big.p_perm == ref.p_perm


def test_values_of_very_different_magnitudes_keep_the_scale_free_result():
    # the rescaling takes the largest magnitude; scaled by the smallest, 5e300/1e-300 overflowed
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 6.0])
    x = np.array([1e-300, 1e300, 2e300, 3e300, 4e300, 5e300])
    wide = pearson(x, y, bootstrap=200, permutations=0)
    ref = pearson(x / x.max(), y, bootstrap=200, permutations=0)
    assert wide.rho == pytest.approx(sps.pearsonr(x / x.max(), y).statistic, rel=1e-12)
    # x / x.max() rounds where the exact power-of-two scaling does not, which moves the BCa ends by 4e-4
    assert (wide.ci_low, wide.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-2)
    assert ref.ci_low < ref.ci_high


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_permutation_p_values_match_an_independent_re_pairing(method):
    # one outlier makes the two coefficients disagree (Pearson p ≈ 0.04, Spearman p ≈ 0.8), so a
    # p-value computed for the wrong coefficient is caught; the reference re-pairs with its own
    # generator, so the two agree to Monte Carlo error only
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=30), rng.normal(size=30)
    x[0], y[0] = 6.0, 6.0
    fn = {"pearson": pearson, "spearman": spearman}[method]
    ours = fn(x, y, bootstrap=0, permutations=4000, seed=2).p_perm
    a, b = (x, y) if method == "pearson" else (sps.rankdata(x), sps.rankdata(y))
    observed = np.corrcoef(a, b)[0, 1]
    draws = np.array([np.corrcoef(a, rng.permutation(b))[0, 1] for _ in range(20000)])
    tails = [(1 + (draws <= observed + 1e-12).sum()), (1 + (draws >= observed - 1e-12).sum())]
    reference = min(1.0, 2 * min(tails) / (1 + draws.size))   # two-sided: twice the smaller tail
    assert abs(ours - reference) < 0.03                        # 3 sd of the two Monte Carlo errors
    assert (reference < 0.1) == (method == "pearson")          # the case separates the two


def test_compare_groups_checks_shapes_quantile_and_nan_policy():
    x, y = _xy(40)
    with pytest.raises(ValueError, match="^nan_policy must"):
        compare_groups(x, y, nan_policy="x")
    with pytest.raises(ValueError, match="^quantile must be a real number"):
        compare_groups(x, y, quantile="0.2")
    with pytest.raises(ValueError, match="score must be 1-D"):
        compare_groups(x.reshape(20, 2), np.arange(40.0))
    with pytest.raises(ValueError, match="by must hold real numbers"):
        compare_groups(x, y + 1j)


@pytest.mark.parametrize("fn,value", [(spearman, "rho"), (pearson, "rho"), (compare_groups, "cohens_d")])
def test_pandas_series_with_different_indexes_are_refused_not_paired_by_position(fn, value):
    import pandas as pd

    x, y = _xy(40)
    a = pd.Series(x, index=range(40))
    b = pd.Series(y, index=range(40))[::-1]           # the same pairs, stored in another order
    with pytest.raises(ValueError, match="different indexes, and pairs are taken by position"):
        fn(a, b)
    # a Series beside a list, an array or a tensor is paired by position, as arrays are
    for other in (list(y), y, torch.from_numpy(y)):
        assert getattr(fn(a, other), value) == getattr(fn(x, y), value)
    aligned = fn(*a.align(b, join="inner"))
    direct = fn(x, y)
    assert getattr(aligned, value) == getattr(direct, value)


def test_counted_ranks_are_rankdata_on_resamples_with_ties():
    from kinetic_fm.metrics.stats import _codes, _ranks_of_codes

    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=300), 1)                  # about 50 distinct values: many ties
    codes, k = _codes(x)
    rows = rng.integers(0, 300, size=(64, 300))
    assert np.array_equal(_ranks_of_codes(codes[rows], k), sps.rankdata(x[rows], axis=1))
    assert np.array_equal(_ranks_of_codes(codes, k), sps.rankdata(x))
    leave_one_out = np.array([np.delete(np.arange(300), i) for i in range(0, 300, 7)])
    assert np.array_equal(_ranks_of_codes(codes[leave_one_out], k), sps.rankdata(x[leave_one_out], axis=1))


@pytest.mark.parametrize("ci_method", ["BCa", "percentile"])
def test_spearman_bootstrap_sorts_no_resample_and_gives_scipys_interval(monkeypatch, ci_method):
    from kinetic_fm.metrics.stats import _seeded

    # SciPy's bootstrap of the values with a rankdata statistic (a sort per resample and per
    # jackknife set) is the reference; ours resamples each value's place among the distinct
    # values and counts ranks, and must give the very same interval
    rng = np.random.default_rng(4)
    x = rng.gamma(2.0, size=150)
    y = np.round(-0.4 * x + rng.normal(size=150), 1)

    def statistic(a, b, axis=-1):
        ra, rb = sps.rankdata(a, axis=axis), sps.rankdata(b, axis=axis)
        return np.array([np.corrcoef(u, v)[0, 1] for u, v in zip(ra.reshape(-1, a.shape[-1]),
                                                                  rb.reshape(-1, b.shape[-1]))]).reshape(ra.shape[:-1])

    ref = sps.bootstrap((x, y), statistic, n_resamples=300, paired=True, vectorized=True, method=ci_method,
                        **_seeded(sps.bootstrap, 9)).confidence_interval
    ranked = []
    real_rankdata = sps.rankdata
    monkeypatch.setattr(sps, "rankdata", lambda a, *args, **kw: ranked.append(np.ndim(a)) or real_rankdata(a, *args, **kw))
    ours = spearman(x, y, bootstrap=300, permutations=0, seed=9, ci_method=ci_method)
    assert max(ranked, default=1) == 1                      # whole rows only: no resample was sorted
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-12, abs=1e-12)


# --- gaps found by the mutation audit (briefs18 G) --------------------------------------------

@pytest.mark.parametrize("fn", [spearman, pearson])
def test_fewer_than_three_finite_pairs_are_refused(fn):
    with pytest.raises(ValueError, match="need at least 3 finite pairs, got 2"):
        fn([1.0, 2.0], [2.0, 1.0], bootstrap=0, permutations=0)
    with pytest.raises(ValueError, match="need at least 3 finite pairs, got 2"):
        fn([1.0, 2.0, np.nan], [2.0, 1.0, 3.0], bootstrap=0, permutations=0, nan_policy="omit")
    assert fn([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], bootstrap=0, permutations=0).n == 3


def test_auto_interval_is_bca_up_to_2000_pairs_and_percentile_above():
    # the docstring's threshold, on both sides of it
    rng = np.random.default_rng(8)
    x = rng.normal(size=2001)
    y = x + rng.normal(size=2001)
    assert spearman(x[:2000], y[:2000], bootstrap=20, permutations=0).ci_method == "BCa"
    assert spearman(x, y, bootstrap=20, permutations=0).ci_method == "percentile"


def test_no_defined_resample_gives_a_nan_interval_not_an_error():
    # one flagged row of 200 is missing from a resample with probability 0.37: find a seed where
    # it is missing from both, where no interval exists
    flag = np.zeros(200)
    flag[-1] = 1.0
    for seed in range(40):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = spearman(np.arange(200.0), flag, bootstrap=2, permutations=0, seed=seed, ci_method="percentile")
        if math.isnan(r.ci_low):
            break
    else:
        pytest.fail("no seed in 0..39 left both resamples without the flagged row (chance 1e-8)")
    assert math.isnan(r.ci_high) and r.rho == pytest.approx(sps.spearmanr(np.arange(200.0), flag).statistic)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_permutation_p_value_is_scipys_test_seeded_with_seed_plus_one(method):
    # the docstring's contract: permutation_test over the orders of y (of the ranks for Spearman)
    # against x fixed, two-sided, its generator seeded with seed + 1
    from kinetic_fm.metrics.stats import _seeded

    rng = np.random.default_rng(6)
    x, y = rng.normal(size=25), rng.normal(size=25)     # independent: p well above its floor 2/1000
    a, b = (x, y) if method == "pearson" else (sps.rankdata(x), sps.rankdata(y))
    reference = sps.permutation_test((b,), lambda v: np.corrcoef(a, v)[0, 1], permutation_type="pairings",
                                     n_resamples=999, alternative="two-sided",
                                     **_seeded(sps.permutation_test, 4)).pvalue
    fn = {"pearson": pearson, "spearman": spearman}[method]
    assert reference > 0.1
    assert fn(x, y, bootstrap=0, permutations=999, seed=3).p_perm == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_permutation_p_value_is_exact_once_permutations_reach_n_factorial(method):
    # every one of the 6! = 720 re-pairings, enumerated here: the p-value at 720 permutations or
    # more is their two-sided tail share, whatever the seed (it was a seeded Monte Carlo value
    # below (6!)² = 518,400: 0.075 or 0.111 against the exact 0.103 for Spearman)
    import itertools

    rng = np.random.default_rng(1)
    x = rng.normal(size=6)
    y = x + rng.normal(size=6)
    a, b = (x, y) if method == "pearson" else (sps.rankdata(x), sps.rankdata(y))
    observed = np.corrcoef(a, b)[0, 1]
    null = np.array([np.corrcoef(a, b[list(order)])[0, 1] for order in itertools.permutations(range(6))])
    tails = (null <= observed + 1e-12).mean(), (null >= observed - 1e-12).mean()
    exact = min(1.0, 2 * min(tails))
    fn = {"pearson": pearson, "spearman": spearman}[method]
    for permutations, seed in ((720, 0), (1000, 0), (1000, 7), (10_000, 3)):
        assert fn(x, y, bootstrap=0, permutations=permutations, seed=seed).p_perm == pytest.approx(exact, rel=1e-12)


def test_spearman_of_values_far_below_the_largest_keeps_their_order():
    # a power-of-two rescaling by the largest |value| sent 1e-300.. to 0, tying them: ρ 0.77
    x, y = [1e300, 1e-300, 2e-300, 3e-300], [4.0, 1.0, 2.0, 3.0]
    assert spearman(x, y, bootstrap=0, permutations=0).rho == sps.spearmanr(x, y).statistic == 1.0


def test_compare_groups_p_value_is_welchs_not_students():
    # equal group sizes give Welch and Student the same t but not the same degrees of freedom;
    # very unequal spreads and a moderate p make the two p-values differ (an approx of a p below
    # 1e-12 is vacuous: pytest.approx's default abs tolerance is 1e-12)
    rng = np.random.default_rng(2)
    by = np.arange(20.0)
    score = np.r_[0.1 * rng.normal(size=10), 0.8 + 3.0 * rng.normal(size=10)]
    g = compare_groups(score, by, quantile=0.5)
    low, high = score[:10], score[10:]
    welch = sps.ttest_ind(high, low, equal_var=False).pvalue
    student = sps.ttest_ind(high, low, equal_var=True).pvalue
    assert abs(welch - student) > 0.01                  # the case separates the two
    assert g.p_value == pytest.approx(welch, rel=1e-9, abs=0.0)
    assert g.p_mannwhitney == pytest.approx(sps.mannwhitneyu(high, low).pvalue, rel=1e-9, abs=0.0)


def test_groups_without_spread_keep_the_sign_of_their_difference():
    by = np.arange(20.0)
    falling = compare_groups(np.r_[np.full(10, 0.3), np.full(10, 0.1)], by)
    assert (falling.difference, falling.cohens_d, falling.p_value) == (0.1 - 0.3, -math.inf, 0.0)


@pytest.mark.parametrize("fn", [spearman, pearson])
def test_huge_negative_values_give_the_scale_free_result(fn):
    # the rescaling takes the largest magnitude, which here is the most negative value (the
    # largest value is 0, which would leave the values unscaled and their squares overflowing)
    x, y = _xy()
    x = x.min() - x                                      # in [-range, 0]
    big = fn(x * 1e300, y, bootstrap=100, permutations=100)
    ref = fn(x, y, bootstrap=100, permutations=100)
    assert big.rho == pytest.approx(ref.rho, rel=1e-12)
    assert (big.ci_low, big.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-9)
    assert big.p_perm == ref.p_perm


def test_percentile_bounds_of_an_exact_line_stay_within_minus_one_and_one():
    # float rounding puts some resamples' Pearson r of an exact line at 1 + 2e-16
    rng = np.random.default_rng(0)
    for seed in range(5):
        x = rng.normal(size=int(rng.integers(5, 60)))
        for slope in (3.7, -0.31):
            r = pearson(x, slope * x + 1.3, bootstrap=200, permutations=0, ci_method="percentile", seed=seed)
            assert -1.0 <= r.ci_low <= r.ci_high <= 1.0


def test_a_group_without_spread_is_its_value_exactly():
    # NumPy's mean of 0.1 three times is 0.10000000000000002, and the deviations from it leave a
    # std of 1.7e-17: the low group (the constant one) must read 0.1 and 0 exactly
    by = np.arange(12.0)
    score = np.r_[np.full(3, 0.1), np.random.default_rng(1).normal(size=9)]
    assert np.full(3, 0.1).mean() != 0.1                 # the case is the one NumPy rounds
    g = compare_groups(score, by, quantile=0.25)
    assert g.n_low == 3 and (g.low_mean, g.low_std) == (0.1, 0.0)
    high = score[-3:]
    assert g.p_value == pytest.approx(sps.ttest_1samp(high, 0.1).pvalue, rel=1e-12)


def test_ties_in_by_are_broken_by_input_order():
    # three distinct values of by: the groups cut through ties, which go to the earlier samples;
    # reference: a plain sort on (by, position)
    rng = np.random.default_rng(4)
    by = rng.integers(0, 3, size=200).astype(float)
    score = rng.normal(size=200)
    g = compare_groups(score, by, quantile=0.2)
    order = sorted(range(200), key=lambda i: (by[i], i))
    assert g.low_mean == pytest.approx(score[order[:40]].mean(), rel=1e-12)
    assert g.high_mean == pytest.approx(score[order[-40:]].mean(), rel=1e-12)


@pytest.mark.parametrize("correlation", [spearman, pearson])
def test_a_basic_interval_stays_within_minus_one_and_one(correlation):
    # the basic interval reflects the resamples' quantiles about rho: near |rho| = 1 it passed 1
    # (Spearman 0.90 from 10 pairs gave [0.81, 1.33]); its ends are cut to [-1, 1], and only there
    rng = np.random.default_rng(0)
    x = np.arange(10.0)
    y = x + rng.normal(0.0, 1.5, 10)
    c = correlation(x, y, ci_method="basic", bootstrap=2000, seed=0)
    assert c.ci_high == 1.0 and -1.0 < c.ci_low < c.rho
    mirrored = correlation(x, -y, ci_method="basic", bootstrap=2000, seed=0)
    assert mirrored.ci_low == -1.0 and mirrored.rho < mirrored.ci_high < 1.0


@pytest.mark.parametrize("how", ["percentile", "basic"])
@pytest.mark.parametrize("undefined", [1, 7, 24])
def test_the_widest_interval_puts_each_undefined_resample_at_the_far_end_of_its_tail(how, undefined):
    # the interval whatever the undefined resamples hold is the quantile of the whole set with them
    # at -inf for the low end and +inf for the high one (an exact statement: no bootstrap noise;
    # the defined ones alone, the old interval, are narrower by the undefined share)
    from kinetic_fm.metrics.stats import _interval_whatever_the_undefined

    rng = np.random.default_rng(3)
    resampled = rng.normal(0.2, 0.1, size=1000)
    resampled[rng.choice(1000, undefined, replace=False)] = np.nan
    defined = resampled[np.isfinite(resampled)]
    low = np.quantile(np.concatenate([defined, np.full(undefined, -np.inf)]), 0.025, method="inverted_cdf")
    high = np.quantile(np.concatenate([defined, np.full(undefined, np.inf)]), 0.975, method="inverted_cdf")
    rho = 0.21
    if how == "basic":
        low, high = 2 * rho - high, 2 * rho - low
    got = _interval_whatever_the_undefined(resampled, rho, how, 0.95)
    if undefined >= 25:
        assert all(math.isnan(v) for v in got)
        return
    step = np.diff(np.sort(defined)).max()            # interpolation moves an end by at most one gap
    assert abs(got[0] - low) <= step and abs(got[1] - high) <= step
    alone = np.quantile(defined, [0.025, 0.975])
    if how == "basic":
        alone = 2 * rho - alone[::-1]
    assert got[0] <= alone[0] and got[1] >= alone[1]
    if undefined >= 7:                                 # wider than the defined ones alone, visibly
        assert got[1] - got[0] > alone[1] - alone[0] + 1e-3


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (0.123456, 2.0), (-7.3, 1e-3)])
def test_pearsons_undefined_resamples_do_not_depend_on_how_the_flag_is_coded(low, high):
    # Pearson's r is affine-invariant, so a flag coded {0.123456, 2} must resample as {0, 1} does.
    # The mean of 40 equal values 0.123456 is an ulp off them: constant resamples read r ≈ 1e-17
    # and counted as r = 0, and the interval came out finite and narrow, without a warning
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    flag = np.zeros(40)
    flag[[3, 17]] = 1
    with pytest.warns(RuntimeWarning, match="could fill a whole tail"):
        r = pearson(x, np.where(flag == 1, high, low), bootstrap=1000, permutations=0, ci_method="percentile")
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high)
    assert np.isnan(_pearson_along(np.full(40, 0.061728), x))  # 5.7e-17 before


def test_a_degenerate_bca_falls_back_under_numpy_errors_set_to_raise():
    # a two-valued score makes SciPy's BCa divide by zero; under a caller's np.seterr(all="raise")
    # that FloatingPointError escaped instead of the documented fallback to percentile (helper-148)
    flag, score = np.r_[np.zeros(10), np.ones(10)], np.arange(20.0)
    expected = spearman(flag, score, bootstrap=200, permutations=0, seed=0)
    with np.errstate(all="raise"):
        got = spearman(flag, score, bootstrap=200, permutations=0, seed=0)
    assert got.ci_method == "percentile"
    assert (got.ci_low, got.ci_high) == (expected.ci_low, expected.ci_high)


@pytest.mark.parametrize("n, quantile, size", [(50, 0.29, 15), (90, 0.35, 32), (100, 0.145, 15), (300, 0.205, 62),
                                               (50, 0.27, 14), (10, 0.35, 4)])
def test_compare_groups_rounds_the_written_quantile_half_up(n, quantile, size):
    # 0.29 × 50 is 14.5, which rounds half up to 15; the float 0.29 times 50 is 14.499999999999998,
    # which gave 14 (as did 15 of the 1,000-ths in (0, 0.5] against n < 400)
    by = np.arange(n, dtype=float)
    g = compare_groups(by, by, quantile=quantile)
    assert g.n_low == g.n_high == size
    assert g.by_low_max == size - 1 and g.by_high_min == n - size


@pytest.mark.parametrize("correlation", [spearman, pearson])
def test_the_basic_interval_is_the_percentile_interval_reflected_about_rho(correlation):
    # the documented relation: the same seed draws the same resamples, and the basic interval is
    # 2ρ minus the percentile interval's ends (swapped), away from the cut at ±1
    rng = np.random.default_rng(12)
    x, y = _bivariate_normal(rng, 80, 0.4)
    p = correlation(x, y, bootstrap=500, permutations=0, seed=5, ci_method="percentile")
    b = correlation(x, y, bootstrap=500, permutations=0, seed=5, ci_method="basic")
    assert (p.ci_method, b.ci_method) == ("percentile", "basic") and p.rho == b.rho
    assert -1.0 < b.ci_low < b.ci_high < 1.0
    assert b.ci_low == pytest.approx(2 * p.rho - p.ci_high, abs=1e-12)
    assert b.ci_high == pytest.approx(2 * p.rho - p.ci_low, abs=1e-12)
    assert p.ci_low != pytest.approx(b.ci_low, abs=1e-3)              # skewed resamples: they differ


@pytest.mark.parametrize("correlation, ci_method", [(pearson, "percentile"), (spearman, "BCa")])
def test_bootstrap_intervals_cover_the_population_correlation(correlation, ci_method):
    # 200 seeded data sets of 60 pairs from a bivariate normal with ρ = 0.5 (Spearman's population
    # value (6/π) asin(ρ/2)): a 95 % interval covers it in 95 % ± 3 binomial sd (4.6 points)
    rho = 0.5
    population = rho if correlation is pearson else 6 / math.pi * math.asin(rho / 2)
    rng = np.random.default_rng(11)
    covered = 0
    for rep in range(200):
        x, y = _bivariate_normal(rng, 60, rho)
        c = correlation(x, y, bootstrap=400, permutations=0, seed=rep, ci_method=ci_method)
        covered += c.ci_low <= population <= c.ci_high
    assert abs(covered / 200 - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / 200)
