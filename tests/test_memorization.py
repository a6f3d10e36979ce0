"""Gap-ratio memorization (kinetic_fm.metrics.memorization) and the `kfm memorization` command."""
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.cli import main


def brute(samples, train):
    s, y = samples.double().flatten(1), train.double().flatten(1)
    d = (s[:, None, :] - y[None]).pow(2).sum(dim=2).sqrt()
    top = d.topk(2, dim=1, largest=False)
    return top.values[:, 0], top.values[:, 1], top.indices[:, 0]


@pytest.fixture(scope="module")
def case():
    """Exact copies, copies + small noise, copies + large noise, fresh points."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(800, 3, 8, 8, generator=g, dtype=torch.float64)
    copies = train[:20]
    near = train[20:40] + 0.01 * torch.randn(20, 3, 8, 8, generator=g, dtype=torch.float64)
    far = train[40:60] + 1.0 * torch.randn(20, 3, 8, 8, generator=g, dtype=torch.float64)
    fresh = torch.randn(40, 3, 8, 8, generator=g, dtype=torch.float64)
    return torch.cat([copies, near, far, fresh]), train


def test_ratios_equal_brute_force(case):
    samples, train = case
    rep = kfm.memorization(samples, train)
    d1, d2, nearest = brute(samples, train)
    torch.testing.assert_close(rep.d1, d1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rep.d2, d2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rep.ratio, d1 / d2, rtol=1e-10, atol=1e-10)
    assert torch.equal(rep.nearest, nearest)
    # constructed truth: copies and near-copies memorized, the others not
    expected = torch.arange(100) < 40
    assert torch.equal(rep.memorized, expected)
    assert rep.fraction == pytest.approx(0.4)
    assert torch.equal(rep.nearest[:40], torch.arange(40))
    assert (rep.d1[:20] == 0).all()


def test_numpy_arrays_and_data_frames_give_the_tensors_report(case):
    # the accepted forms the type hints name: a NumPy array (any layout) or a DataFrame of rows
    import pandas as pd

    samples, train = case
    want = kfm.memorization(samples, train, bootstrap=100, seed=1)
    for s, t in ((samples.numpy(), train.numpy()),
                 (pd.DataFrame(samples.flatten(1).numpy()), pd.DataFrame(train.flatten(1).numpy()))):
        got = kfm.memorization(s, t, bootstrap=100, seed=1)
        assert torch.equal(got.ratio, want.ratio) and torch.equal(got.nearest, want.nearest)
        assert (got.fraction, got.ci) == (want.fraction, want.ci)


@pytest.mark.filterwarnings("ignore:train holds .* rows equal to an earlier row")   # 30 rows of 5 bits repeat
def test_data_frames_of_pandas_nullable_numbers_are_audited_as_their_values():
    # Int64 / Float64 / boolean columns (read_parquet(dtype_backend="numpy_nullable"), convert_dtypes())
    # hand torch Python objects: a TypeError that named neither the argument nor the dtype
    import pandas as pd

    gen = torch.Generator().manual_seed(4)
    train = torch.randint(0, 9, (30, 5), generator=gen)
    samples = torch.cat([train[[2, 7]], torch.randint(0, 9, (6, 5), generator=gen)])
    for s, t in ((pd.DataFrame(samples.numpy()).astype("Int64"), pd.DataFrame(train.numpy()).astype("Int64")),
                 (pd.DataFrame(samples.numpy()).astype("Float64"), train.numpy()),
                 (pd.DataFrame(samples.numpy() > 4).astype("boolean"), train.numpy() > 4)):
        rep = kfm.memorization(s, t, bootstrap=0)
        rows = [torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in (s, t)]
        d = torch.cdist(*rows, compute_mode="donot_use_mm_for_euclid_dist")
        d, order = d.sort(dim=1, stable=True)                  # ties: the lower index first, as documented
        torch.testing.assert_close(rep.d1, d[:, 0])
        torch.testing.assert_close(rep.d2, d[:, 1])
        assert torch.equal(rep.nearest, order[:, 0])
    missing = pd.DataFrame(samples.numpy()).astype("Float64")
    missing.iloc[3, 1] = pd.NA
    with pytest.raises(ValueError, match=r"samples contains NaN or inf in 1 row.*row 3"):
        kfm.memorization(missing, train)


def test_float32_inputs_give_the_same_verdicts(case):
    samples, train = case
    rep32 = kfm.memorization(samples.float(), train.float())
    rep64 = kfm.memorization(samples, train)
    assert torch.equal(rep32.memorized, rep64.memorized)
    torch.testing.assert_close(rep32.ratio, kfm.memorization(samples.float().double(), train.float().double()).ratio,
                               rtol=1e-12, atol=1e-12)


def test_bootstrap_interval_brackets_the_fraction_and_is_seeded(case):
    samples, train = case
    rep = kfm.memorization(samples, train, bootstrap=2000, seed=3)
    low, high = rep.ci
    assert low < rep.fraction < high
    # binomial standard error sqrt(p(1-p)/n) = 0.049 at n = 100: a 95% interval about ±0.1 wide
    assert 0.07 < high - rep.fraction < 0.13 and 0.07 < rep.fraction - low < 0.13
    assert kfm.memorization(samples, train, bootstrap=2000, seed=3).ci == rep.ci
    assert all(np.isnan(kfm.memorization(samples, train, bootstrap=0).ci))


def test_a_ratio_exactly_on_the_threshold_is_not_memorized():
    # d1 = 1 and d2 = 3 exactly, so d1/d2 is the float 1/3, the default threshold: "d1/d2 < 1/3"
    origin = torch.zeros(1, 1, dtype=torch.float64)
    on = kfm.memorization(origin, torch.tensor([[1.0], [-3.0]], dtype=torch.float64))
    assert on.ratio.item() == 1 / 3 and not on.memorized.any() and on.fraction == 0.0
    assert kfm.memorization(origin, torch.tensor([[1.0], [-3.001]], dtype=torch.float64)).memorized.all()


def test_exact_ties_at_one_third_on_integer_data_are_never_memorized_and_near_ties_are_decided_exactly():
    # d1² = a² + b² and d2² = 9·d1²: d1/d2 is exactly 1/3, but √d1²/√d2² rounded below the float
    # 1/3 in 1.6 % of such ties (helper-130). Each sample sits 10,000 from the next, its own two
    # items beside it; the float threshold 1/3 is a hair below the real 1/3, so any tie is not memorized
    pairs = [(a, b) for a in range(1, 41) for b in range(0, 41)]
    samples = torch.tensor([[10_000.0 * i, 0.0] for i in range(len(pairs))], dtype=torch.float64)
    train = torch.tensor([row for i, (a, b) in enumerate(pairs)
                          for row in ([10_000.0 * i + a, b], [10_000.0 * i - 3 * a, -3.0 * b])], dtype=torch.float64)
    report = kfm.memorization(samples, train, interval="wilson")
    assert not report.memorized.any() and report.fraction == 0.0
    # a second neighbour one unit² closer than the tie (d2² = 9·d1² − 1): ratio above 1/3, not
    # memorized; one unit² farther: below 1/3, memorized
    origin = torch.zeros(1, 3, dtype=torch.float64)
    for second, want in (([6.0, 8.0, 4.0], False), ([6.0, 9.0, 1.0], True)):   # d1² = 13; d2² = 116 or 118
        items = torch.tensor([[2.0, 3.0, 0.0], second], dtype=torch.float64)
        assert bool(kfm.memorization(origin, items, interval="wilson").memorized[0]) is want
    uint8 = kfm.memorization(torch.tensor([[[[100, 100], [100, 100]]]], dtype=torch.uint8),
                             torch.tensor([[[[105, 102], [101, 101]]], [[[115, 106], [103, 103]]]], dtype=torch.uint8),
                             interval="wilson")                     # 31 and 279 = 9·31, helper-130's case
    assert not uint8.memorized.any()
    # at a threshold exact in binary (0.5, 0.25) the tie's ratio is the threshold itself, not a
    # hair above it as at 1/3: "d1/d2 < τ" must still hold strictly (the exact test `sq1 <= τ²·sq2`
    # survived, since at 1/3 the float τ² is below the real 1/9 and no tie reaches it)
    origin = torch.zeros(1, 1, dtype=torch.float64)
    for tau, far in ((0.5, -2.0), (0.25, -4.0)):                  # d1 = 1, d2 = 1/τ
        tie = kfm.memorization(origin, torch.tensor([[1.0], [far]], dtype=torch.float64), threshold=tau,
                               interval="wilson")
        assert tie.ratio.item() == tau and not tie.memorized.any()
    tie = kfm.memorization(torch.tensor([[0, 0]], dtype=torch.uint8), torch.tensor([[3, 4], [6, 8]], dtype=torch.uint8),
                           threshold=0.5, interval="wilson")         # d1 = 5, d2 = 10
    assert tie.ratio.item() == 0.5 and not tie.memorized.any()


def test_the_bootstrap_interval_is_the_binomial_quantiles():
    # resampling n indicators, count of them 1, makes count* ~ Binomial(n, count/n): the percentile
    # interval is its (α/2, 1 − α/2) quantiles over n, to resampling noise and the 1/n lattice
    # (at most 1/n over seeds 0–29; the one-sided α of a 90 % interval is 4.6/n off)
    from scipy import stats

    n, count = 1000, 300
    low, high = kfm.fraction_interval(count, n, "bootstrap", bootstrap=20_000, seed=1)
    want_low, want_high = stats.binom.ppf([0.025, 0.975], n, count / n) / n
    assert abs(low - want_low) <= 1.5 / n and abs(high - want_high) <= 1.5 / n
    # at the ends every resample agrees: exactly [0, 0] and [1, 1]
    assert kfm.fraction_interval(0, 7, "bootstrap") == (0.0, 0.0)
    assert kfm.fraction_interval(7, 7, "bootstrap") == (1.0, 1.0)


def test_all_memorized_shows_the_wilson_interval_not_the_zero_width_bootstrap():
    train = 10.0 * torch.eye(6, dtype=torch.float64)
    rep = kfm.memorization(train.clone(), train)                      # copies: d1 = 0, ratio 0
    assert rep.fraction == 1.0 and rep.ci == (1.0, 1.0)
    assert rep.shown_interval() == ("Wilson", *kfm.fraction_interval(6, 6, "wilson"))


@pytest.mark.parametrize("memorized", [0, 6])
def test_a_zero_width_bootstrap_interval_says_so_with_the_wilson_interval_beside_it(memorized):
    # the summary line showed "95% Wilson CI" alone, as if the bootstrap interval asked for had given it
    train = 10.0 * torch.eye(6, dtype=torch.float64)
    samples = train.clone() if memorized else train + 4.0
    rep = kfm.memorization(samples, train)
    end = memorized // 6
    assert rep.ci == (end, end)
    low, high = kfm.fraction_interval(memorized, 6, "wilson")
    said = f"(95% bootstrap CI {end}–{end}: zero width at {memorized}/6; Wilson {low:.4f}–{high:.4f})"
    assert f"F_mem = {rep.fraction:.4f} {said}, {memorized}/6 samples" in str(rep)
    for other in (kfm.memorization(samples, train, interval="wilson"), kfm.memorization(samples, train, bootstrap=0)):
        assert "zero width" not in str(other)


def test_the_summary_line_computes_the_wilson_interval_beside_a_zero_width_one_once(monkeypatch):
    # reviewer-333: str(report) computed shown_interval() itself and again through _zero_width()
    from kinetic_fm.metrics import memorization as module

    train = 10.0 * torch.eye(6, dtype=torch.float64)
    rep = kfm.memorization(train.clone(), train)
    wilson = []
    interval = module.fraction_interval
    monkeypatch.setattr(module, "fraction_interval", lambda *a, **k: wilson.append(a) or interval(*a, **k))
    assert "zero width at 6/6" in str(rep)
    assert len(wilson) == 1


def test_the_coverage_quoted_for_the_bootstrap_interval_is_the_exact_binomial_sum():
    # memorization's docstring: at n = 50, F_mem = 0.02 the bootstrap covers 0.635, Wilson 0.922
    # (sums over Binomial(50, 0.02) of whether each count's interval holds 0.02, not a simulation)
    from scipy import stats

    n, p = 50, 0.02
    covered = {kind: sum(stats.binom.pmf(count, n, p) for count in range(n + 1)
                         if (lambda ends: ends[0] <= p <= ends[1])(kfm.fraction_interval(count, n, kind)))
               for kind in ("bootstrap", "wilson")}
    assert round(covered["bootstrap"], 3) == 0.635 and round(covered["wilson"], 3) == 0.922
    doc = " ".join(kfm.memorization.__doc__.split())
    assert "n = 50 and F_mem = 0.02 it covers 63.5 % (Wilson 92.2 %)" in doc


def test_binomial_intervals_at_the_ends_have_their_closed_forms():
    # 0 of n memorized: the bootstrap collapses to [0, 0]; the binomial intervals keep a width whose
    # upper end is known in closed form (Clopper–Pearson: 1 − (α/2)^(1/n); Wilson: z²/(n + z²))
    train = torch.eye(6, dtype=torch.float64)
    fresh = torch.full((10, 6), 5.0, dtype=torch.float64) + torch.arange(10.0, dtype=torch.float64)[:, None]
    assert kfm.memorization(fresh, train).ci == (0.0, 0.0)
    exact = kfm.memorization(fresh, train, interval="clopper-pearson")
    assert exact.fraction == 0.0 and exact.ci[0] == 0.0
    assert exact.ci[1] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    z2 = 1.959963984540054 ** 2
    wilson = kfm.memorization(fresh, train, interval="wilson")
    assert wilson.ci[0] == 0.0 and wilson.ci[1] == pytest.approx(z2 / (10 + z2), rel=1e-9)
    assert "95% Clopper–Pearson CI 0.0000–0.3085" in str(exact)
    # all memorized: the mirror image
    copies = kfm.memorization(train[:4], train, interval="clopper-pearson", confidence=0.9)
    assert copies.ci == (pytest.approx(0.05 ** (1 / 4), rel=1e-9), 1.0)
    z2 = 1.6448536269514722 ** 2
    assert kfm.memorization(train[:4], train, interval="wilson", confidence=0.9).ci == (pytest.approx(4 / (4 + z2), rel=1e-9), 1.0)


def test_gap_ratio_and_fraction_interval_are_the_audits_own(case):
    # the audit's pieces, public for distances and flags computed elsewhere
    samples, train = case
    d1, d2, _ = brute(samples, train)
    torch.testing.assert_close(kfm.gap_ratio(d1, d2), d1 / d2, rtol=1e-15, atol=0)
    torch.testing.assert_close(kfm.gap_ratio(d1[:, None], d2[:, None]), (d1 / d2)[:, None], rtol=1e-15, atol=0)
    assert kfm.gap_ratio(torch.zeros(2), torch.tensor([0.0, 2.0])).tolist() == [0.0, 0.0]
    # NumPy distances in, a tensor of their dtype out (as the docstring and hint say)
    from_arrays = kfm.gap_ratio(d1.numpy(), d2.numpy())
    assert isinstance(from_arrays, torch.Tensor) and from_arrays.dtype == d1.dtype
    torch.testing.assert_close(from_arrays, d1 / d2, rtol=1e-15, atol=0)
    assert kfm.gap_ratio(d1.float(), d2.float()).dtype == torch.float32
    for interval in ("bootstrap", "wilson", "clopper-pearson"):
        rep = kfm.memorization(samples, train, interval=interval, seed=5)
        assert kfm.fraction_interval(int(rep.memorized.sum()), len(rep), interval, seed=5) == rep.ci
    # textbook values: 5 of 10 at 95 % (Wilson 0.2366–0.7634, Clopper–Pearson 0.1871–0.8129)
    assert kfm.fraction_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert kfm.fraction_interval(5, 10, "clopper-pearson") == pytest.approx((0.18709, 0.81291), abs=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: kfm.gap_ratio(torch.ones(3), torch.ones(2)), "one shape"),
    (lambda: kfm.gap_ratio(torch.tensor([2.0]), torch.tensor([1.0])), "0 <= d1 <= d2"),
    (lambda: kfm.gap_ratio(torch.tensor([float("nan")]), torch.tensor([1.0])), "0 <= d1 <= d2"),
    # an infinite d2 gave ratio 0 (memorized), inf and inf NaN
    (lambda: kfm.gap_ratio(torch.tensor([1.0]), torch.tensor([float("inf")])), "finite"),
    (lambda: kfm.gap_ratio(torch.tensor([float("inf")]), torch.tensor([float("inf")])), "finite"),
    (lambda: kfm.fraction_interval(11, 10), "0 <= count <= n"),
    (lambda: kfm.fraction_interval(0, 0), "n >= 1"),
    (lambda: kfm.fraction_interval(1, 10, "normal"), "interval must be one of"),
    (lambda: kfm.fraction_interval(1, 10, confidence=1.0), "confidence must lie in"),
])
def test_gap_ratio_and_fraction_interval_name_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("n", [7, 10, 25])
def test_wilson_ends_are_exactly_0_and_1(n):
    # at 0 of n and n of n the two terms cancel in exact arithmetic; in floats they left 2.8e-17
    # (n = 7, 25) or 1 − 1.1e-16 (n = 10) in the report's tables
    train = torch.eye(n + 2, dtype=torch.float64)
    fresh = torch.full((n, n + 2), 5.0, dtype=torch.float64)
    assert kfm.memorization(fresh, train, interval="wilson").ci[0] == 0.0
    assert kfm.memorization(train[:n], train, interval="wilson").ci[1] == 1.0


@pytest.mark.parametrize("interval", ["wilson", "clopper-pearson"])
def test_binomial_intervals_solve_their_defining_equations(case, interval):
    from scipy import stats

    samples, train = case
    rep = kfm.memorization(samples, train, interval=interval, confidence=0.9)
    low, high = rep.ci
    k, n, z = 40, 100, stats.norm.ppf(0.95)
    assert low < rep.fraction < high and rep.bootstrap == 1000 and rep.interval == interval
    if interval == "clopper-pearson":
        # each end is where observing ≥ k (resp. ≤ k) memorized has probability α/2
        assert stats.binom.sf(k - 1, n, low) == pytest.approx(0.05, rel=1e-8)
        assert stats.binom.cdf(k, n, high) == pytest.approx(0.05, rel=1e-8)
    else:
        # the score interval's ends solve (p̂ − p)² = z² p(1 − p)/n
        for p in (low, high):
            assert (0.4 - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-10)


@pytest.mark.parametrize("space_chunk,progress", [(512, False), (7, True)])
def test_feature_space_is_applied_to_both_sets(case, capsys, space_chunk, progress):
    samples, train = case
    # a feature map that only keeps the first channel: ratios follow that space, in any blocks
    rep = kfm.memorization(samples, train, space=lambda x: x[:, 0], bootstrap=0,
                           space_chunk=space_chunk, progress=progress)
    d1, d2, _ = brute(samples[:, 0], train[:, 0])
    torch.testing.assert_close(rep.ratio, d1 / d2, rtol=1e-10, atol=1e-10)
    err = capsys.readouterr().err
    assert ("features (train)" in err and "nearest neighbours" in err) == progress


def test_duplicated_training_item_copied_counts_as_memorized():
    train = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    with pytest.warns(UserWarning, match=r"train holds 1 row equal to an earlier row; for 1 of the 1 samples .*"
                                         r"\(1 an exact copy, first at row 0\)"):
        rep = kfm.memorization(torch.tensor([[0.0, 0.0]]), train, bootstrap=0)
    assert rep.ratio.item() == 0 and rep.memorized.item()


def _duplicated_case(dtype):
    """train: 50 distinct rows, then rows 0 and 1 again and row 0 a third time (3 rows repeat an
    earlier one); samples: a near-copy of row 0, an exact copy of row 1, a near-copy of row 5 (not
    duplicated) and a fresh point."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(50, 6, generator=g, dtype=torch.float64)
    train = torch.cat([base, base[[0, 1, 0]]])
    samples = torch.cat([base[:1] + 1e-3 * torch.randn(1, 6, generator=g, dtype=torch.float64), base[1:2],
                         base[5:6] + 1e-3 * torch.randn(1, 6, generator=g, dtype=torch.float64),
                         torch.randn(1, 6, generator=g, dtype=torch.float64)])
    return samples.to(dtype), train.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_copies_of_a_duplicated_training_item_are_warned_of_and_keep_the_reference_ratio(dtype):
    samples, train = _duplicated_case(dtype)
    with pytest.warns(UserWarning, match=r"train holds 3 rows equal to an earlier row; for 2 of the 4 samples the "
                                         r"nearest and second-nearest items are two such rows \(1 an exact copy"):
        rep = kfm.memorization(samples, train, bootstrap=0)
    d1, d2, _ = brute(samples, train)                              # float64 brute force over every row
    assert d1[0] == d2[0] > 0 and d1[1] == d2[1] == 0              # the duplicates give d2 = d1 exactly
    expected = torch.where(d2 > 0, d1 / d2.clamp_min(1e-300), torch.zeros_like(d1))  # 0/0 read 0
    assert torch.equal(rep.ratio, expected)
    assert rep.memorized.tolist() == [False, True, True, False]   # near-copy of a duplicate: ratio 1


def test_duplicates_no_sample_is_nearest_to_are_not_warned_of(case):
    samples, train = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        far = train[:3] + 10                                    # repeated rows no sample is near
        kfm.memorization(samples, torch.cat([train, far, far]), bootstrap=0)
        kfm.memorization(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0], [-1.0, 1.0]]), bootstrap=0)


def test_repeated_rows_counts_rows_equal_to_an_earlier_one():
    from kinetic_fm.metrics.memorization import repeated_rows

    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 3, (400, 4), generator=g, dtype=torch.uint8)     # many repeats and norm ties
    distinct = len({tuple(r) for r in rows.tolist()})                      # Python's own set of rows
    assert repeated_rows(rows) == 400 - distinct
    assert repeated_rows(rows.double() * 1e-3) == 400 - distinct
    signed_zero = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0 + 2 ** -52]], dtype=torch.float64)
    assert repeated_rows(signed_zero) == 1                 # -0.0 equals 0.0; one ulp apart is another row
    assert repeated_rows(torch.tensor([[1e300, 0.0], [1e300, 0.0], [-1e300, 1.0]], dtype=torch.float64)) == 1


def test_to_frame_has_one_row_per_sample(case):
    samples, train = case
    frame = kfm.memorization(samples, train, bootstrap=100).to_frame()
    assert list(frame.columns) == ["sample", "d1", "d2", "ratio", "nearest", "memorized"]
    assert len(frame) == 100 and frame["memorized"].sum() == 40
    assert frame["sample"].tolist() == list(range(100))
    copies = frame[frame["d1"] == 0]                 # the 20 exact copies of train[:20] are samples 0..19
    assert copies["sample"].tolist() == copies["nearest"].tolist() == list(range(20))


@pytest.mark.parametrize("samples,train,kwargs,match", [
    (torch.randn(4, 3), torch.tensor([[0.0, 1, 2], [float("nan"), 0, 0], [1, 1, 1]]), {}, "train contains NaN"),
    (torch.tensor([[float("inf"), 0, 0]]), torch.randn(5, 3), {}, "samples contains NaN"),
    (torch.randn(4, 3), torch.randn(5, 4), {}, "same number of features"),
    (torch.randn(0, 3), torch.randn(5, 3), {}, "samples is empty"),
    (torch.randn(4, 3), torch.randn(0, 3), {}, "train is empty"),
    (torch.randn(4, 3), torch.randn(1, 3), {}, "at least 2"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(threshold=0.0), "threshold"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(threshold=1.5), "threshold"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(bootstrap=-1), "bootstrap"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(bootstrap=True), "bootstrap"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(interval="bca"), "interval must be one of"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(confidence=1.0), "confidence"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(seed=-1), "seed must be a non-negative integer, got -1"),
    (torch.randn(4, 3), torch.randn(5, 3), dict(seed=1.5), "seed must be a non-negative integer"),
])
def test_bad_input_is_a_clear_error(samples, train, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kfm.memorization(samples, train, **kwargs)


def _write(path, array, fmt):
    if fmt == "npz":
        np.savez(path, first=array, other=np.zeros(3))
    elif fmt == "pt":
        torch.save(torch.from_numpy(array), path)
    elif fmt == "parquet-list":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"x": pa.array(list(array.reshape(len(array), -1)))}), path)
    elif fmt == "parquet-columns":
        import pandas as pd
        pd.DataFrame(array.reshape(len(array), -1), columns=[f"c{i}" for i in range(array[0].size)]).to_parquet(path)


@pytest.mark.parametrize("fmt,suffix", [("npz", ".npz"), ("pt", ".pt"),
                                        ("parquet-list", ".parquet"), ("parquet-columns", ".parquet")])
def test_cli_reads_each_format_and_writes_the_table(tmp_path, capsys, case, fmt, suffix):
    import pandas as pd

    samples, train = case
    s_path, t_path, out = tmp_path / f"s{suffix}", tmp_path / "train.npz", tmp_path / "table.parquet"
    _write(s_path, samples.flatten(1).numpy(), fmt)
    np.savez(t_path, train.flatten(1).numpy())
    key = ["--key", "first"] if fmt == "npz" else []          # the archive also holds "other"
    assert main(["memorization", "--samples", str(s_path), "--train", str(t_path), "--out", str(out),
                 "--bootstrap", "200", *key]) == 0
    captured = capsys.readouterr()
    assert "F_mem = 0.4000 (95% bootstrap CI" in captured.out
    assert "nearest neighbours" in captured.err                    # the CLI shows a progress bar
    table = pd.read_parquet(out)
    assert len(table) == 100 and int(table["memorized"].sum()) == 40
    assert table.columns[0] == "sample" and table["sample"].tolist() == list(range(100))


def test_a_key_on_a_single_array_file_is_refused(tmp_path):
    from kinetic_fm.data.arrays import load_array

    np.save(tmp_path / "one.npy", np.zeros((3, 2)))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")          # an .npz name on .npy bytes
    with pytest.raises(ValueError, match="holds one array .* key='images' does not apply"):
        load_array(tmp_path / "one.npz", key="images")
    assert load_array(tmp_path / "one.npz").shape == (3, 2)


def test_a_key_naming_a_dict_entry_that_is_no_tensor_says_what_it_holds(tmp_path):
    from kinetic_fm.data.arrays import load_array

    torch.save({"x": [torch.zeros(2, 3), torch.ones(2, 3)], "labels": torch.arange(4)}, tmp_path / "d.pt")
    # it used to say "no tensor named 'x'", of a dict that has an 'x'
    with pytest.raises(ValueError, match=r"d.pt: its entry 'x' is a list of 2 items, not a tensor: torch.cat "
                                         r"\(or torch.stack\) them into one; its tensors are \['labels'\]"):
        load_array(tmp_path / "d.pt", key="x")
    with pytest.raises(ValueError, match=r"no tensor named 'y'; it holds \['labels'\]"):
        load_array(tmp_path / "d.pt", key="y")
    assert torch.equal(load_array(tmp_path / "d.pt", key="labels"), torch.arange(4))


def test_cli_interval_choice_reaches_the_report(tmp_path, capsys, case):
    samples, train = case
    np.save(tmp_path / "s.npy", samples.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--interval", "wilson", "--no-progress"]) == 0
    assert str(kfm.memorization(samples, train, interval="wilson")) in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:                         # argparse's own usage error
        main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
              "--interval", "bca"])
    assert stop.value.code == 2 and "invalid choice: 'bca'" in capsys.readouterr().err
    # resamples for an interval that draws none were ignored without a word
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--interval", "wilson", "--bootstrap", "50", "--no-progress"]) == 2
    assert "--bootstrap applies to --interval bootstrap only" in capsys.readouterr().err
    # and so was the bootstrap's seed
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--interval", "clopper-pearson", "--seed", "3", "--no-progress"]) == 2
    assert ("--seed applies to --interval bootstrap only (the clopper-pearson interval draws no resamples)"
            in capsys.readouterr().err)
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--bootstrap", "100", "--seed", "3", "--no-progress"]) == 0
    assert str(kfm.memorization(samples, train, bootstrap=100, seed=3)) in capsys.readouterr().out


def test_cli_says_what_a_zero_width_bootstrap_interval_hides(tmp_path, capsys, case):
    # "F_mem = 0 (95% bootstrap CI 0.0000–0.0000)" read as "certainly no memorization"
    samples, train = case
    np.save(tmp_path / "fresh.npy", samples[60:].numpy())          # the 40 fresh points: 0 of 40
    np.save(tmp_path / "some.npy", samples[:60].numpy())           # 40 of 60 memorized
    np.save(tmp_path / "t.npy", train.numpy())
    flags = ["memorization", "--train", str(tmp_path / "t.npy"), "--no-progress"]
    assert main([*flags, "--samples", str(tmp_path / "fresh.npy")]) == 0
    out = capsys.readouterr().out
    assert "F_mem = 0.0000 (95% bootstrap CI 0–0: zero width at 0/40; Wilson 0.0000–0.0876), 0/40" in out
    assert ("note: the bootstrap interval has no width at F_mem = 0 (every resample agrees) and covers far "
            "less than 95% near it; --interval wilson gives the Wilson interval quoted beside it, 0.0000–0.0876"
            in out)
    assert "CI 0.0000–0.0000" not in out
    assert main([*flags, "--samples", str(tmp_path / "some.npy")]) == 0
    assert "note:" not in capsys.readouterr().out
    # --bootstrap 0 computes no interval: the note said "the bootstrap interval has no width at
    # F_mem = 0" of a bootstrap that never ran, and the figure's title showed a Wilson interval
    # at F_mem 0 or 1 but none in between
    assert main([*flags, "--samples", str(tmp_path / "fresh.npy"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("F_mem = 0.0000, 0/40 samples") and "note:" not in out and "CI" not in out
    for samples in (samples[60:], samples[:60]):
        kind, low, high = kfm.memorization(samples, train, bootstrap=0).shown_interval()
        assert kind == "bootstrap" and math.isnan(low) and math.isnan(high)


def test_cli_user_errors_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", np.zeros((3, 2)))
    assert main(["memorization", "--samples", str(tmp_path / "missing.npz"), "--train", str(tmp_path / "a.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["memorization", "--samples", str(tmp_path / "a.npz"), "--train", str(tmp_path / "a.npz"),
                 "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["memorization", "--samples", str(tmp_path / "a.npz"), "--train", str(tmp_path / "a.npz"),
                 "--key", "nope"]) == 2
    assert "no array named 'nope'" in capsys.readouterr().err
    np.savez(tmp_path / "two.npz", images=np.zeros((3, 2)), labels=np.zeros(3))
    assert main(["memorization", "--samples", str(tmp_path / "two.npz"), "--train", str(tmp_path / "a.npz")]) == 2
    assert "['images', 'labels']; name one with --key" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a tensor file")
    assert main(["memorization", "--samples", str(tmp_path / "junk.pt"), "--train", str(tmp_path / "a.npz")]) == 2
    assert "junk.pt: not a torch checkpoint" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["memorization", "--samples", str(tmp_path / "a.npz"), "--train", str(tmp_path / "a.npz"),
                 "--out", str(tmp_path / "afile" / "table.csv")]) == 2
    err = capsys.readouterr().err
    assert f"kfm memorization: error: --out {tmp_path / 'afile' / 'table.csv'}: {tmp_path / 'afile'} is a file" in err
    assert "Traceback" not in err
    np.save(tmp_path / "chw.npy", np.zeros((5, 3, 4, 4)))
    np.save(tmp_path / "hwc.npy", np.zeros((2, 4, 4, 3)))
    assert main(["memorization", "--samples", str(tmp_path / "hwc.npy"), "--train", str(tmp_path / "chw.npy")]) == 2
    assert "--samples holds items of shape (4, 4, 3) and --train items of shape (3, 4, 4)" in capsys.readouterr().err


def test_cli_figure_shows_the_closest_pairs_of_image_inputs(tmp_path, capsys, case):
    from PIL import Image

    samples, train = case
    np.save(tmp_path / "s.npy", samples.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    np.save(tmp_path / "s_flat.npy", samples.flatten(1).numpy())
    widths = []
    for name in ("s.npy", "s_flat.npy"):                 # images, then the same rows flattened
        figure = tmp_path / "figs" / f"{name}.png"
        assert main(["memorization", "--samples", str(tmp_path / name), "--train", str(tmp_path / "t.npy"),
                     "--bootstrap", "0", "--no-progress", "--figure", str(figure)]) == 0
        assert f"figure: {figure}" in capsys.readouterr().out
        widths.append(Image.open(figure).size[0])
    assert widths[0] > widths[1]                         # only images get the pairs panel
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--figure", str(tmp_path / "audit.jpg")]) == 2
    assert "--figure must end in .png" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """A U-Net trained by kfm train on a 16-digit subset (seed 3), and 6 samples of it by kfm sample."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--data", "digits", "--n", "16", "--seed", "3", "--steps", "1", "--batch-size", "4",
                 "--width", "8", "--model", "unet", "--checkpoints", "none", "--no-progress",
                 "--out", str(root / "net")]) == 0
    assert main(["sample", "--model", str(root / "net"), "--n", "6", "--steps", "2", "--shard-size", "4",
                 "--no-progress", "--out", str(root / "samples")]) == 0
    return root / "net", root / "samples"


def test_cli_names_a_run_folder_given_to_the_other_flag(digits_runs, tmp_path, capsys):
    # a kfm sample run folder as --train was read as a folder of images: "contains no image files";
    # a kfm train run folder as --samples said what it is but not where it belongs
    net, run = digits_runs
    assert main(["memorization", "--samples", str(run), "--train", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--train {str(run)!r} is a kfm sample run folder (samples, not training items" in err
    assert "kfm memorization takes it as --samples" in err and "kfm train run folder" in err
    assert "no image files" not in err
    assert main(["memorization", "--samples", str(net), "--train", str(net), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--samples {str(net)!r} is a kfm train run folder (a net, not samples)" in err
    assert "as --train it gives the items the net trained on" in err
    import shutil
    reproduced = tmp_path / "general-0"                  # kfm reproduce's nets record their items beside
    shutil.copytree(net, reproduced)
    (reproduced / "training_items.json").write_text("{}")
    assert main(["memorization", "--samples", str(reproduced), "--train", str(net), "--no-progress"]) == 2
    assert f"--samples {str(reproduced)!r} is a kfm reproduce net's folder (a net" in capsys.readouterr().err


def test_a_kfm_sample_runs_results_table_as_train_is_refused_and_named(digits_runs, tmp_path, capsys):
    # its x column was read as training items without a word: the run's samples audited against
    # themselves gave F_mem = 1
    import shutil

    _, run = digits_runs
    table = run / "results.parquet"
    assert main(["memorization", "--samples", str(run), "--train", str(table), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--train {str(table)!r} is the results table of a kfm sample run (samples, not training items; " \
           f"its run folder {str(run)!r} goes to kfm memorization --samples)" in err
    assert "pass as --train what the net was trained on: its kfm train run folder" in err
    alone = tmp_path / "copied.parquet"                  # away from its run: known by its columns alone
    shutil.copy(table, alone)
    assert main(["memorization", "--samples", str(run), "--train", str(alone), "--no-progress"]) == 2
    assert f"--train {str(alone)!r} is the results table of a kfm sample run" in capsys.readouterr().err
    energies = tmp_path / "no_x.parquet"                 # a run made with --no-save-x: its energies
    pd.read_parquet(table).drop(columns="x").to_parquet(energies)
    assert main(["memorization", "--samples", str(run), "--train", str(energies), "--no-progress"]) == 2
    assert f"--train {str(energies)!r} is the results table of a kfm sample run" in capsys.readouterr().err
    # as --samples the table is what it is, and a table of features is training items as before
    features = tmp_path / "features.parquet"
    pd.DataFrame(np.arange(12.0).reshape(6, 2), columns=["a", "b"]).to_parquet(features)
    flat = tmp_path / "flat.npy"
    np.save(flat, pd.read_parquet(table)["x"].map(list).tolist())
    assert main(["memorization", "--samples", str(table), "--train", str(flat), "--no-progress"]) == 0
    assert "F_mem = 1.0000" in capsys.readouterr().out  # each sample is its own nearest item
    assert main(["memorization", "--samples", str(features), "--train", str(features), "--no-progress"]) == 0


def test_a_kfm_sample_runs_results_table_restores_its_samples_shape(digits_runs):
    from kinetic_fm.data.arrays import load_array
    from kinetic_fm.runs import read_samples

    _, run = digits_runs
    images = read_samples(run)                                     # the manifest's shape: (6, 1, 8, 8)
    assert images.shape == (6, 1, 8, 8)
    stored = load_array(run / "results.parquet")                   # the file alone, as --samples reads it
    assert stored.shape == (6, 1, 8, 8) and np.array_equal(stored.numpy(), images)


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
def test_a_profile_runs_results_table_gives_its_samples_without_a_key(digits_runs, tmp_path, solver):
    # --profile adds list columns (profile; dopri5 also times) beside x: the samples were refused
    # as "several list columns" though only x records a sample shape
    from kinetic_fm.data.arrays import load_array
    from kinetic_fm.runs import read_samples

    net, _ = digits_runs
    run = tmp_path / solver
    assert main(["sample", "--model", str(net), "--n", "3", "--steps", "2", "--solver", solver, "--profile",
                 "--no-progress", "--out", str(run)]) == 0
    stored = load_array(run / "results.parquet")
    assert stored.shape == (3, 1, 8, 8) and np.array_equal(stored.numpy(), read_samples(run))
    if solver == "euler":   # a key still picks any column (dopri5's profiles differ in length)
        assert load_array(run / "results.parquet", "profile").shape == (3, 2)


def test_a_results_table_without_a_recorded_shape_reads_flat_as_before(digits_runs, tmp_path):
    import pyarrow.parquet as pq

    from kinetic_fm.data.arrays import load_array
    from kinetic_fm.runs.shards import samples_from_table

    _, run = digits_runs
    old = pq.read_table(run / "results.parquet")
    old = old.cast(old.schema.remove_metadata().set(old.schema.get_field_index("x"),
                                                    old.schema.field("x").remove_metadata()))
    pq.write_table(old, tmp_path / "old.parquet")
    assert load_array(tmp_path / "old.parquet").shape == (6, 64)
    with pytest.raises(ValueError, match="records no sample shape: pass shape"):
        samples_from_table(old)
    assert samples_from_table(old, (1, 8, 8)).shape == (6, 1, 8, 8)


def test_cli_gives_a_kfm_sample_runs_samples_their_shape_and_the_image_panel(digits_runs, tmp_path, capsys):
    from PIL import Image

    from kinetic_fm.runs import read_samples

    _, run = digits_runs
    images = read_samples(run)
    np.save(tmp_path / "flat.npy", images.reshape(6, -1))
    widths = []
    for samples in (run, run / "results.parquet", tmp_path / "flat.npy"):
        figure = tmp_path / f"{samples.name}.png"
        assert main(["memorization", "--samples", str(samples), "--train", "digits", "--bootstrap", "0",
                     "--no-progress", "--figure", str(figure)]) == 0
        assert f"figure: {figure}" in capsys.readouterr().out
        widths.append(Image.open(figure).size[0])
    assert widths[0] == widths[1] > widths[2]                      # the run's samples get the pairs panel


def test_cli_audits_against_the_subset_a_kfm_train_run_trained_on(digits_runs, tmp_path, capsys):
    from kinetic_fm.data.digits import load_digits

    net, run = digits_runs
    out = tmp_path / "table.csv"
    assert main(["memorization", "--samples", str(run), "--train", str(net), "--bootstrap", "0",
                 "--no-progress", "--out", str(out)]) == 0
    assert "the 16 items it trained on (digits, n=16, seed=3)" in capsys.readouterr().out
    subset = load_digits(n=16, seed=3).images                    # what kfm train --n 16 --seed 3 drew
    assert not torch.equal(subset, load_digits(n=16, seed=0).images)
    d1, d2, nearest = brute(torch.from_numpy(kfm.read_samples(run)), subset)
    table = np.genfromtxt(out, delimiter=",", names=True)
    np.testing.assert_array_equal(table["nearest"], nearest.numpy())
    np.testing.assert_allclose(table["ratio"], (d1 / d2).numpy(), rtol=1e-5)
    assert main(["memorization", "--samples", str(net), "--train", str(net)]) == 2
    assert "is a kfm train run folder (a net, not samples)" in capsys.readouterr().err
    assert main(["memorization", "--samples", str(run), "--train", str(net), "--train-key", "x"]) == 2
    assert "is a run folder" in capsys.readouterr().err


def test_cli_names_a_whole_split_run_by_its_data_spec_alone(tmp_path, capsys):
    # a run trained on a whole split (no --n) was described as "digits, n=None, seed=0"
    from kinetic_fm.data.digits import load_digits

    net = tmp_path / "net"
    assert main(["train", "--data", "digits", "--steps", "1", "--batch-size", "4", "--width", "8", "--model", "mlp",
                 "--checkpoints", "none", "--no-progress", "--out", str(net)]) == 0
    whole = load_digits().images
    np.save(tmp_path / "s.npy", whole[:3].reshape(3, -1).numpy())
    capsys.readouterr()
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(net), "--bootstrap", "0",
                 "--no-progress"]) == 0
    assert f"the {len(whole)} items it trained on (digits)" in capsys.readouterr().out


def test_a_kfm_train_run_finds_its_relative_data_path_from_any_folder(tmp_path, monkeypatch, capsys):
    # kfm train recorded --data folder:faces as given, so kfm memorization --train read "faces"
    # from wherever it ran: from any other folder the run could not be audited
    from PIL import Image

    from kinetic_fm.data.images import load_image_folder

    rng = np.random.default_rng(1)
    faces = tmp_path / "work" / "faces"
    faces.mkdir(parents=True)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(faces / f"{i:02d}.png")
    train = ["train", "--data", "folder:faces", "--n", "12", "--seed", "2", "--batch-size", "4", "--width", "8",
             "--model", "mlp", "--checkpoints", "none", "--no-progress", "--out", "net"]
    monkeypatch.chdir(faces.parent)
    assert main(train + ["--steps", "1"]) == 0
    subset = load_image_folder(faces, n=12, seed=2, grayscale=None).images   # what --n 12 --seed 2 drew (folder:)
    samples = torch.cat([subset[[3, 7]], torch.rand(4, *subset.shape[1:], generator=torch.Generator().manual_seed(0))])
    np.save(tmp_path / "s.npy", samples.numpy())
    monkeypatch.chdir(tmp_path)                                   # "faces" is not here
    assert main(["memorization", "--samples", "s.npy", "--train", "work/net", "--bootstrap", "0", "--no-progress",
                 "--out", "table.csv"]) == 0
    assert "the 12 items it trained on" in capsys.readouterr().out
    table = np.genfromtxt(tmp_path / "table.csv", delimiter=",", names=True)
    d1, d2, nearest = brute(samples, subset)
    np.testing.assert_array_equal(table["nearest"], nearest.numpy())
    np.testing.assert_allclose(table["ratio"], (d1 / d2).numpy(), rtol=1e-5, atol=1e-7)
    assert list(table["nearest"][:2]) == [3, 7]

    # a folder written before, which recorded the path as given: tried as recorded, and the error
    # says why it fails; it still works, and resumes, from where it was trained
    from kinetic_fm.data import registry

    monkeypatch.chdir(faces.parent)
    with monkeypatch.context() as old_code:
        old_code.setattr(registry, "absolute_spec", lambda spec: spec)
        assert main(train[:-1] + ["old", "--steps", "1"]) == 0
    config_path = faces.parent / "old" / "config.json"
    assert json.loads(config_path.read_text())["info"]["data"] == "folder:faces"
    monkeypatch.chdir(tmp_path)
    assert main(["memorization", "--samples", "s.npy", "--train", "work/old", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "trained on 'folder:faces', which is not found from here" in err and "relative path" in err
    monkeypatch.chdir(faces.parent)
    assert main(["memorization", "--samples", "../s.npy", "--train", "old", "--bootstrap", "0",
                 "--no-progress"]) == 0
    assert main(train[:-1] + ["old", "--steps", "2", "--resume"]) == 0   # its resume state names the same data
    assert json.loads(config_path.read_text())["info"]["data"] == "folder:faces"


def test_cli_reads_image_folders_zips_and_data_specs(tmp_path, capsys):
    """PNG samples in a folder and in a zip, the training set as an .npy or as the `digits` spec:
    copies of training images are memorized (ratio 0), fresh images are not."""
    import zipfile

    from PIL import Image

    from kinetic_fm.data.digits import load_digits

    digits = load_digits().images                                 # (1797, 1, 8, 8), 17 levels in [-1, 1]
    pixels = ((digits + 1) * 127.5).round().to(torch.uint8)
    quantized = pixels.float() / 127.5 - 1                         # what a PNG of them holds
    rng = np.random.default_rng(0)
    fresh = rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(10):                                            # 10 copies, then 6 fresh
        Image.fromarray(pixels[100 + 7 * i, 0].numpy(), mode="L").save(folder / f"{i:02d}.png")
    for i, image in enumerate(fresh):
        Image.fromarray(image, mode="L").save(folder / f"{10 + i:02d}.png")
    with zipfile.ZipFile(tmp_path / "samples.zip", "w") as archive:
        for png in sorted(folder.iterdir()):
            archive.write(png, f"gen/{png.name}")
    np.save(tmp_path / "train.npy", quantized.numpy())
    for samples, train_arg in ((folder, tmp_path / "train.npy"), (tmp_path / "samples.zip", "digits")):
        out = tmp_path / f"{Path(samples).stem}.csv"
        assert main(["memorization", "--samples", str(samples), "--train", str(train_arg), "--bootstrap", "0",
                     "--no-progress", "--out", str(out)]) == 0
        assert "F_mem = 0.6250" in capsys.readouterr().out
        table = np.genfromtxt(out, delimiter=",", names=True)
        np.testing.assert_array_equal(table["nearest"][:10], 100 + 7 * np.arange(10))
        if train_arg == "digits":                                  # off by the PNG's rounding only
            assert (table["ratio"][:10] < 0.05).all()
        else:
            np.testing.assert_array_equal(table["ratio"][:10], 0.0)
        assert (table["ratio"][10:] > 1 / 3).all()
        named = pd.read_csv(out)                                   # rows named by their files
        prefix = "gen/" if str(samples).endswith(".zip") else ""
        assert named["sample"].tolist() == list(range(16))
        assert named["file"].tolist() == [f"{prefix}{i:02d}.png" for i in range(16)]
    # a folder of training images: the nearest one is named too (sample 3 copies digit 121)
    train_folder = tmp_path / "train_images"
    train_folder.mkdir()
    for j in range(100, 200):
        Image.fromarray(pixels[j, 0].numpy(), mode="L").save(train_folder / f"digit{j}.png")
    assert main(["memorization", "--samples", str(folder), "--train", str(train_folder), "--bootstrap", "0",
                 "--no-progress", "--out", str(tmp_path / "named.parquet")]) == 0
    named = pd.read_parquet(tmp_path / "named.parquet")
    assert named["nearest_file"].tolist()[:10] == [f"digit{100 + 7 * i}.png" for i in range(10)]
    assert main(["memorization", "--samples", str(folder), "--key", "x", "--train", "digits"]) == 2
    assert "--key names an array inside a file" in capsys.readouterr().err
    assert main(["memorization", "--samples", str(folder), "--train", "cifar10:/no/such/folder"]) == 2
    assert "/no/such/folder" in capsys.readouterr().err


ANY_SPACE = "--space must be 'pca:K', 'pca:K+residual', 'resnet20:PATH' or 'resnet56:PATH', got"
PCA_FORM = "--space must be 'pca:K' or 'pca:K+residual' with K a positive integer"


@pytest.mark.parametrize("spec, message", [
    ("resnet32:/weights.th", ANY_SPACE),
    ("resnet20:", "--space must be 'resnet20:PATH' or 'resnet56:PATH'"),
    ("/weights.th", ANY_SPACE),
    ("PCA:3", ANY_SPACE),
    ("resnet20:/no/such/weights.th", "--space: no such file: /no/such/weights.th"),
    ("pca:", PCA_FORM), ("pca:0", PCA_FORM), ("pca:-1", PCA_FORM), ("pca:1.5", PCA_FORM), ("pca:x", PCA_FORM),
    ("pca:٣", PCA_FORM), ("pca:2+resid", PCA_FORM), ("pca:2+", PCA_FORM), ("pca:+residual", PCA_FORM),
    ("pca:3", "--space pca:3: K must be an integer from 1 to min(N − 1, D) = 2 for the N = 3 training items of "
              "D = 3072 values, got 3"),
])
def test_cli_space_spec_is_checked(tmp_path, capsys, spec, message):
    np.save(tmp_path / "a.npy", np.zeros((3, 3072), dtype=np.float32))
    assert main(["memorization", "--samples", str(tmp_path / "a.npy"), "--train", str(tmp_path / "a.npy"),
                 "--space", spec]) == 2
    assert message in capsys.readouterr().err


def test_cli_pca_space_of_one_training_item_names_what_it_needs(tmp_path, capsys):
    # one item has no principal directions: the refusal says why, not "K from 1 to 0"
    np.save(tmp_path / "one.npy", np.zeros((1, 4), dtype=np.float32))
    assert main(["memorization", "--samples", str(tmp_path / "one.npy"), "--train", str(tmp_path / "one.npy"),
                 "--space", "pca:1"]) == 2
    assert "--space pca:1 needs at least 2 training items of at least 1 value, got shape (1, 4)" in \
        capsys.readouterr().err


@pytest.fixture(scope="module")
def drowned():
    """16 binary 28x28 training images; samples: a copy of each, then 16 fresh binary images,
    all under heavy salt-and-pepper noise (10 % of the pixels set to -5 or 5 at random)."""
    g = torch.Generator().manual_seed(1)

    def binary(n):
        return torch.randint(0, 2, (n, 1, 28, 28), generator=g).double() * 2 - 1

    def salt_and_pepper(x):
        hit = torch.rand(x.shape, generator=g) < 0.1
        return torch.where(hit, torch.where(torch.rand(x.shape, generator=g) < 0.5, -5.0, 5.0).double(), x)

    train = binary(16)
    return torch.cat([salt_and_pepper(train), salt_and_pepper(binary(16))]), train


def _principal_brute(samples, train, k):
    """Samples and training items projected on the top k right singular vectors of the centred
    training items (NumPy's SVD, not the covariance's eigh), as float64 rows."""
    y = train.flatten(1).numpy()
    _, _, vt = np.linalg.svd(y - y.mean(0), full_matrices=False)

    def project(x):
        return torch.from_numpy((x.flatten(1).numpy() - y.mean(0)) @ vt[:k].T)
    return project(samples), project(train)


def _saved_with_figure_titles(tmp_path, samples, train, monkeypatch) -> list:
    """Save ``samples`` and ``train`` as s.npy and t.npy under ``tmp_path``; the returned list
    collects the title of every memorization figure the CLI draws."""
    import kinetic_fm.studies.figures as figures

    np.save(tmp_path / "s.npy", samples.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    titles = []
    drawn = figures.memorization_figure
    monkeypatch.setattr(figures, "memorization_figure",
                        lambda *args, **kwargs: titles.append(kwargs["title"]) or drawn(*args, **kwargs))
    return titles


def test_cli_pca_space_finds_copies_drowned_in_salt_and_pepper_noise(tmp_path, capsys, drowned, monkeypatch):
    """In pixels the noise hides every copy (d1/d2 > 1/3); projected on the 15 principal directions
    of the 16 training items (their whole affine span), each copy is found, on its own item, and
    no fresh image is flagged; the ratios equal a brute force in an SVD basis."""
    import pandas as pd

    samples, train = drowned
    d1, d2, _ = brute(samples, train)
    assert ((d1 / d2) > 1 / 3).all()                                    # the pixel audit misses them
    titles = _saved_with_figure_titles(tmp_path, samples, train, monkeypatch)
    flags = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
             "--bootstrap", "0", "--no-progress"]
    assert main([*flags, "--space", "pca:15", "--out", str(tmp_path / "pca.csv"),
                 "--figure", str(tmp_path / "pca.png")]) == 0
    out = capsys.readouterr().out
    assert "--space pca:15: pixels-PCA15, the top 15 principal directions of the 16 training items (100.0% " in out
    assert "F_mem = 0.5000" in out and "16/32 samples" in out
    table = pd.read_csv(tmp_path / "pca.csv")
    want_d1, want_d2, want_nearest = brute(*_principal_brute(samples, train, 15))
    np.testing.assert_allclose(table["ratio"], (want_d1 / want_d2).numpy(), rtol=1e-9)
    np.testing.assert_array_equal(table["nearest"][:16], np.arange(16))
    np.testing.assert_array_equal(table["nearest"], want_nearest.numpy())
    assert table["memorized"].tolist() == [True] * 16 + [False] * 16
    assert (table["space"] == "pixels-PCA15").all()
    # the table's columns as before MemorizationReport recorded its space: space beside clamped, at the end
    assert list(table.columns) == ["sample", "d1", "d2", "ratio", "nearest", "memorized", "space", "clamped"]
    assert titles == ["audited in pixels-PCA15"]

    assert main([*flags, "--out", str(tmp_path / "pixels.csv"), "--figure", str(tmp_path / "pixels.png")]) == 0
    pixels = pd.read_csv(tmp_path / "pixels.csv")
    assert (pixels["space"] == "pixels").all() and not pixels["memorized"].any()
    assert titles[-1] == "audited in pixels"


def test_cli_pca_space_with_the_residual_at_n_minus_1_directions_is_pixels(tmp_path, capsys, drowned):
    """Training items lie in their own affine span, so K = N − 1 directions plus the length of
    the rest keep every sample-to-item distance: the pixel ratios come back."""
    import pandas as pd

    samples, train = drowned
    np.save(tmp_path / "s.npy", samples.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--space", "pca:15+residual", "--bootstrap", "0", "--no-progress",
                 "--out", str(tmp_path / "table.parquet")]) == 0
    assert "pixels-PCA15+residual, the top 15 principal directions" in capsys.readouterr().out
    table = pd.read_parquet(tmp_path / "table.parquet")
    d1, d2, nearest = brute(samples, train)
    np.testing.assert_allclose(table["ratio"], (d1 / d2).numpy(), rtol=1e-9)
    np.testing.assert_array_equal(table["nearest"], nearest.numpy())
    assert (table["space"] == "pixels-PCA15+residual").all()


def test_cli_clamp_audits_the_samples_clamped_to_the_training_range(tmp_path, capsys, drowned, monkeypatch):
    """--clamp audits min(max(x, lo), hi) with [lo, hi] the training items' range (here [-1, 1]),
    as kfm reproduce does; the table and the figure say so; without it samples are audited as given."""
    import pandas as pd

    samples, train = drowned
    titles = _saved_with_figure_titles(tmp_path, samples, train, monkeypatch)
    flags = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
             "--bootstrap", "0", "--no-progress", "--out", str(tmp_path / "table.csv")]
    assert main([*flags, "--clamp", "--space", "pca:15", "--figure", str(tmp_path / "a.png")]) == 0
    outside = int((samples.abs() > 1).sum())
    assert 0 < outside
    assert (f"--clamp: samples clamped to the training items' range [-1, 1] ({outside:,} of 25,088 values changed)"
            in capsys.readouterr().out)
    table = pd.read_csv(tmp_path / "table.csv")
    d1, d2, _ = brute(*_principal_brute(samples.clamp(-1, 1), train, 15))
    np.testing.assert_allclose(table["ratio"], (d1 / d2).numpy(), rtol=1e-9)     # fresh ones may tie
    assert table["clamped"].all() and (table["space"] == "pixels-PCA15").all()
    assert titles == ["audited in pixels-PCA15; samples clamped to [-1, 1]"]
    assert main(flags) == 0
    table = pd.read_csv(tmp_path / "table.csv")
    d1, d2, _ = brute(samples, train)
    np.testing.assert_allclose(table["ratio"], (d1 / d2).numpy(), rtol=1e-9)
    assert not table["clamped"].any()


def test_cli_clamp_counts_only_the_values_it_moved_and_refuses_a_non_finite_range(tmp_path, capsys):
    # a NaN sample (NaN != NaN) was counted as "changed", and a NaN in --train printed the range
    # "[nan, nan]" with every sample "changed" (clamped to NaN) before the audit refused --train
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20, 4)).astype(np.float32)
    samples = np.concatenate([train[:3] * 3, train[3:5]])
    samples[0, 0] = np.nan
    np.save(tmp_path / "s.npy", samples)
    np.save(tmp_path / "t.npy", train)
    flags = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"), "--clamp",
             "--bootstrap", "0", "--no-progress"]
    assert main(flags) == 2
    out, err = capsys.readouterr()
    moved = int(((samples < train.min()) | (samples > train.max())).sum())   # False for the NaN
    assert moved > 0
    assert f"({moved:,} of 20 values changed)" in out and "--samples contains NaN" in err
    train[7, 2] = np.inf
    np.save(tmp_path / "t.npy", train)
    assert main(flags) == 2
    out, err = capsys.readouterr()
    assert "--clamp:" not in out and "--train contains NaN or inf in 1 row(s), first at row 7" in err


def test_cli_clamp_warns_of_the_samples_scale_as_given(tmp_path, capsys):
    """uint8 copies of [-1, 1] training images with --clamp: the scale warning is about the samples
    as given, 0..255 ("magnitudes over 20x apart"); it came after the clamp, which had moved them
    to [0, 1], so it read "[0, 1] against [-1, 1]?" and advised 2x − 1, a wrong remedy."""
    train = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    copies = ((train[:10] + 1) * 127.5).round().to(torch.uint8)
    np.save(tmp_path / "s.npy", copies.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--clamp", "--bootstrap", "0", "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    as_given = r"--samples spans \[[0-9.]+, 25[0-9.]+\] and --train \["   # uint8's 0.1 % to 99.9 % quantiles
    assert len(warned) == 1 and __import__("re").search(as_given, warned[0]), warned
    assert "magnitudes over 20x apart (uint8 against [-1, 1]?)" in warned[0]


def test_images_for_the_resnet_space_in_0_1_are_warned_about():
    import warnings

    from kinetic_fm.commands.memorization import _cifar_images

    unit = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"--samples has no negative value .* rescaled first \(2x − 1\)"):
        _cifar_images("--samples", unit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _cifar_images("--samples", 2 * unit - 1)


def test_cli_resnet_space_with_clamp_warns_of_the_samples_scale_once(tmp_path, capsys):
    """uint8 copies of [-1, 1] training images, --clamp and a ResNet space: the scale warning read
    before the clamp is the only one; the ResNet's "[0, 1] images ... 2x − 1" followed it, about
    samples the clamp had moved into [0, 1] (not [0, 1] images, and 2x − 1 not the remedy). Where
    the samples' scale raised no warning (both sets in [0, 1]), both sets are still warned about."""
    from kinetic_fm.models.resnet_cifar import CifarResNet

    torch.manual_seed(0)
    state = CifarResNet(20).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "r20.th")
    train = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.save(tmp_path / "t.npy", train.numpy())
    flags = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"), "--clamp",
             "--space", f"resnet20:{tmp_path / 'r20.th'}", "--bootstrap", "0", "--no-progress"]
    np.save(tmp_path / "s.npy", ((train[:4] + 1) * 127.5).round().to(torch.uint8).numpy())
    assert main(flags) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "magnitudes over 20x apart (uint8 against [-1, 1]?)" in warned[0], warned
    np.save(tmp_path / "t.npy", ((train + 1) / 2).numpy())
    np.save(tmp_path / "s.npy", ((train[:4] + 1) / 2).numpy())
    assert main(flags) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert [name for name in ("--train", "--samples") if any(f"{name} has no negative value" in w for w in warned)] \
        == ["--train", "--samples"], warned


def test_cli_audit_in_a_cifar_resnet_feature_space(shared_data, tmp_path, capsys):
    """--space resnet20:PATH gives the Python audit with space=net.features, row for row."""
    from kinetic_fm.data.cifar10 import load_cifar10
    from kinetic_fm.models import load_cifar_resnet

    archive = shared_data / "cifar10" / "cifar10_jpeg_q75.zip"
    weights = next((shared_data / "weights" / "akamaster_resnet_cifar10").glob("resnet20-*.th"), None)
    if not archive.is_file() or weights is None:
        pytest.skip("CIFAR-10 archive or ResNet-20 weights not found")
    train = load_cifar10(archive, "train", n=300, seed=0).images
    g = torch.Generator().manual_seed(0)
    copies = (train[:20] + 0.01 * torch.randn(20, 3, 32, 32, generator=g)).clamp(-1, 1)
    samples = torch.cat([copies, load_cifar10(archive, "test", n=20, seed=0).images])
    np.save(tmp_path / "s.npy", samples.flatten(1).numpy())              # flattened rows are reshaped
    np.save(tmp_path / "t.npy", train.numpy())
    out = tmp_path / "table.csv"
    args = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
            "--space", f"resnet20:{weights}", "--bootstrap", "0", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    import pandas as pd

    table = pd.read_csv(out)
    net = load_cifar_resnet(weights)
    want = kfm.memorization(samples, train, space=net.features, bootstrap=0)
    np.testing.assert_allclose(table["ratio"].to_numpy(), want.ratio.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(table["nearest"].to_numpy()[:20], np.arange(20))
    assert "samples with d1/d2 < 0.3333 in resnet20\n" in capsys.readouterr().out   # not its bound method's "features"
    assert table["space"].tolist() == ["resnet20"] * 40
    # the CLI names the space where it builds it (reviewer-333: it patched the report's name afterwards); a
    # library caller names it the same way, and gets the same features, chunk for chunk
    from kinetic_fm.metrics.features import feature_space

    assert want.space == "features"                                 # a bound method's documented default name
    named = kfm.memorization(samples, train, space=feature_space(net.features, name="resnet20", batch_size=512),
                             bootstrap=0)
    assert named.space == "resnet20" and torch.equal(named.ratio, want.ratio)

    np.save(tmp_path / "bad.npy", samples.flatten(1).numpy() * 127.5 + 127.5)  # [0, 255], not [-1, 1]
    assert main([*args[:2], str(tmp_path / "bad.npy"), *args[3:]]) == 2
    assert "--space needs images scaled to [-1, 1]; --samples spans [0" in capsys.readouterr().err
    np.save(tmp_path / "small.npy", np.zeros((4, 784), dtype=np.float32))
    assert main([*args[:2], str(tmp_path / "small.npy"), *args[3:]]) == 2
    assert "--samples has shape (4, 784)" in capsys.readouterr().err


def test_array_files_in_foreign_byte_order_and_a_key_for_npy(tmp_path):
    from kinetic_fm.data.arrays import load_array

    values = np.arange(12, dtype=">f8").reshape(3, 4)             # big-endian, as some tools write
    np.save(tmp_path / "big.npy", values)
    np.savez(tmp_path / "big.npz", x=values)
    for name in ("big.npy", "big.npz"):
        loaded = load_array(tmp_path / name)
        assert loaded.dtype == torch.float64 and loaded.tolist() == values.tolist()
    with pytest.raises(ValueError, match="a .npy file holds one array; key='x' does not apply"):
        load_array(tmp_path / "big.npy", key="x")


def test_a_key_on_a_pt_file_of_one_tensor_is_refused(tmp_path, capsys):
    """--train-key x on a .pt file holding a bare tensor (not a dict) was ignored without a word,
    as a key on a .npy file is refused: the user who names an array expects that one read."""
    from kinetic_fm.data.arrays import load_array

    torch.save(torch.zeros(3, 2), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare.pt: holds one tensor \(not a dict\), so key='x' does not apply"):
        load_array(tmp_path / "bare.pt", key="x")
    assert load_array(tmp_path / "bare.pt").shape == (3, 2)
    torch.save({"x": torch.ones(4, 2)}, tmp_path / "named.pt")
    assert main(["memorization", "--samples", str(tmp_path / "named.pt"), "--key", "x",
                 "--train", str(tmp_path / "bare.pt"), "--train-key", "x", "--no-progress"]) == 2
    assert "so --train-key 'x' does not apply" in capsys.readouterr().err


def test_a_numpy_array_pickled_by_torch_save_is_refused_with_advice_for_arrays(tmp_path, capsys):
    """torch.save(np_array) pickles numpy's own classes, which the weights-only reader refuses; the
    way out named was re-saving model weights with torch.save(model.state_dict(), ...), which an
    array file has no use for. The array routes name np.save and torch.from_numpy instead."""
    from kinetic_fm.data.arrays import load_array
    from kinetic_fm.models.checkpoint import UnsafeCheckpointError, load_state

    array = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    torch.save(array, tmp_path / "np.pt")
    np.save(tmp_path / "train.npy", array)
    with pytest.raises(UnsafeCheckpointError, match=r"np.pt: it contains Python objects") as refused:
        load_array(tmp_path / "np.pt")
    message = str(refused.value)
    assert "state_dict" not in message and "re-save the weights" not in message
    assert "np.save(" in message and "torch.save(torch.from_numpy(" in message
    assert main(["memorization", "--samples", str(tmp_path / "np.pt"), "--train", str(tmp_path / "train.npy"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--samples: refusing to load" in err and "np.save(" in err and "state_dict" not in err
    # a weights file keeps the advice for weights
    with pytest.raises(UnsafeCheckpointError, match=r"re-save the weights with torch.save\(model.state_dict\(\)"):
        load_state(tmp_path / "np.pt")
    # the advice is sound: the array re-saved either way reads back unchanged
    torch.save(torch.from_numpy(array), tmp_path / "tensor.pt")
    assert torch.equal(load_array(tmp_path / "tensor.pt"), torch.from_numpy(array))


def _write_bad(path):
    """Files `kfm memorization` must refuse with one line naming the file (audit F6)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = path.name
    if name == "corrupt.npz":
        path.write_bytes(b"PK\x03\x04garbage")
    elif name == "truncated.npy":
        np.save(path, np.arange(100.0))
        path.write_bytes(path.read_bytes()[:300])
    elif name == "strings.npy":
        np.save(path, np.array(["apple", "pear"]))
    elif name == "complex.npy":
        np.save(path, np.ones((3, 2), dtype=np.complex64))
    elif name == "scalar.npy":
        np.save(path, np.float64(3.0))
    elif name == "nested-ragged.parquet":                           # 3 values in row 0, 2 in row 1
        pq.write_table(pa.table({"x": pa.array([[[1.0, 2.0], [3.0]], [[4.0], [5.0]]])}), path)
    elif name == "nested-null.parquet":
        pq.write_table(pa.table({"x": pa.array([[[1.0], None], [[4.0], [5.0]]])}), path)
    elif name == "nested-strings.parquet":
        pq.write_table(pa.table({"x": pa.array([[["a"], ["b"]], [["c"], ["d"]]])}), path)
    elif name == "corrupt.parquet":
        path.write_bytes(b"PAR1 not a table PAR1")
    elif name == "string-key.parquet":
        pq.write_table(pa.table({"a": [1.0, 2.0], "s": ["one", "two"]}), path)


@pytest.mark.parametrize("name,key,message", [
    ("corrupt.npz", None, "corrupt.npz: not a valid .npz archive"),
    ("truncated.npy", None, "truncated.npy: not a readable .npy file"),
    ("strings.npy", None, "strings.npy: holds <U5 values, need real numbers"),
    ("complex.npy", None, "complex.npy: holds complex64 values, need real numbers"),
    ("scalar.npy", None, r"scalar.npy: holds a single value \(shape \(\)\); needs shape \(n, ...\)"),
    ("nested-ragged.parquet", None, r"rows of column 'x' have different lengths \(2..3\)"),
    ("nested-null.parquet", None, "column 'x' has null lists inside its rows"),
    ("nested-strings.parquet", None, "column 'x' holds lists of string, need numbers"),
    ("string-key.parquet", "s", "column 's' holds string, need numbers or lists of numbers"),
    ("corrupt.parquet", None, r"corrupt.parquet: not a readable Parquet file \("),
])
def test_cli_unreadable_or_non_numeric_files_are_one_line_errors(tmp_path, capsys, name, key, message):
    _write_bad(tmp_path / name)
    np.save(tmp_path / "train.npy", np.zeros((4, 3)))
    code = main(["memorization", "--samples", str(tmp_path / name), "--train", str(tmp_path / "train.npy"),
                 "--no-progress", *(["--key", key] if key else [])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"kfm memorization: error: --samples {tmp_path / name}")
    assert __import__("re").search(message, err), err


def test_parquet_columns_left_out_are_named(tmp_path, capsys):
    import pandas as pd

    features = np.arange(12.0).reshape(4, 3)
    frame = pd.DataFrame(features, columns=["a", "b", "c"]).assign(name=list("wxyz"))
    frame.to_parquet(tmp_path / "s.parquet")
    from kinetic_fm.data.arrays import load_array

    with pytest.warns(UserWarning, match=r"read the 3 numeric columns \['a', 'b', 'c'\] as features; left out "
                      r"\['name'\] \(not numbers\); .* name one column with a key to read it alone"):
        assert load_array(tmp_path / "s.parquet").tolist() == features.tolist()
    np.save(tmp_path / "t.npy", np.arange(15.0).reshape(5, 3))     # distinct rows: no duplicate-item warning
    assert main(["memorization", "--samples", str(tmp_path / "s.parquet"), "--train", str(tmp_path / "t.npy"),
                 "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [f"kfm memorization: warning: --samples {tmp_path / 's.parquet'}: read the 3 numeric columns "
                      "['a', 'b', 'c'] as features; left out ['name'] (not numbers); a label or seed column among "
                      "them counts as a feature: name one column with --key to read it alone (no option picks "
                      "several: save a file holding only the feature columns)"]


def test_parquet_features_taken_are_named_first_few_then_a_count(tmp_path, capsys):
    # the warning said only "read the 12 numeric columns": a seed or label column among them was not seen
    import pandas as pd

    from kinetic_fm.data.arrays import load_array

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(6, 10)), columns=[f"f{i}" for i in range(10)])
    frame = frame.assign(seed=np.arange(6), label=np.arange(6) % 2, file=list("uvwxyz"))
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.warns(UserWarning) as caught:
        rows = load_array(tmp_path / "t.parquet")
    assert rows.shape == (6, 12) and rows[:, 10].tolist() == list(range(6))   # the seed column, read as one
    message = str(caught[0].message)
    assert "read the 12 numeric columns ['f0', 'f1', 'f2', 'f3', 'f4'] and 7 more as features" in message
    assert "left out ['file']" in message
    np.save(tmp_path / "s.npy", rng.normal(size=(3, 12)))
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.parquet"),
                 "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "numeric columns" in line]
    assert len(warned) == 1 and warned[0].startswith(f"kfm memorization: warning: --train {tmp_path / 't.parquet'}: ")
    assert "name one column with --train-key to read it alone" in warned[0], warned


def test_a_pandas_index_saved_in_parquet_is_no_feature(tmp_path, recwarn):
    # a filtered or shuffled DataFrame keeps its row labels as a column that pandas reads back as the
    # index; they were read as a 4th coordinate: 20 near-copies audited F_mem 0.05, not 1
    import pandas as pd

    from kinetic_fm.data.arrays import load_array

    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 3))
    samples = train[:20] + 0.01 * rng.normal(size=(20, 3))
    shuffled = pd.DataFrame(train, columns=list("abc")).sample(frac=1, random_state=0)
    shuffled.to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(samples, columns=list("abc"), index=range(0, 40, 2)).to_parquet(tmp_path / "samples.parquet")
    pd.DataFrame(train, columns=list("abc"), index=pd.Index(np.arange(50) * 7, name="item")).to_parquet(
        tmp_path / "named.parquet")
    assert load_array(tmp_path / "train.parquet").tolist() == shuffled.to_numpy().tolist()
    assert load_array(tmp_path / "named.parquet").tolist() == train.tolist()
    assert not recwarn.list                                           # nothing "left out" to warn of
    assert main(["memorization", "--samples", str(tmp_path / "samples.parquet"), "--train",
                 str(tmp_path / "train.parquet"), "--no-progress"]) == 0
    assert kfm.memorization(load_array(tmp_path / "samples.parquet"), train, bootstrap=0).fraction == 1.0


def test_a_sample_runs_table_without_x_is_named_as_such(tmp_path, capsys):
    # its seeds and energies read as 9 features: "got 9 and 64 features" said nothing of --no-save-x
    assert main(["sample", "--field", "gaussian", "--dim", "4", "--n", "3", "--steps", "2", "--no-save-x",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    np.save(tmp_path / "t.npy", np.zeros((5, 4)))
    capsys.readouterr()
    results = tmp_path / "run" / "results.parquet"
    assert main(["memorization", "--samples", str(results), "--train", str(tmp_path / "t.npy"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kfm memorization: error: --samples {results}: a kfm sample results table without its samples' 'x' column "
        "(was the run made with --no-save-x?)")


def test_nested_list_parquet_columns_are_flattened_row_by_row(tmp_path, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kinetic_fm.data.arrays import load_array

    samples = case[0].numpy()                                       # (100, 3, 8, 8), as HF Array3D stores it
    pq.write_table(pa.table({"x": pa.array([[[list(r) for r in c] for c in image] for image in samples])}),
                   tmp_path / "nested.parquet")
    loaded = load_array(tmp_path / "nested.parquet")
    assert loaded.dtype == torch.float64 and torch.equal(loaded, case[0].flatten(1))
    fixed = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(samples.reshape(-1)), 64),
                                              3)
    pq.write_table(pa.table({"x": fixed}), tmp_path / "fixed.parquet")
    assert torch.equal(load_array(tmp_path / "fixed.parquet"), case[0].flatten(1))


@pytest.mark.filterwarnings("ignore::kinetic_fm.checks.ValueRangeWarning")  # deliberately far-apart sets
def test_binary_rows_are_audited_as_zeros_and_ones_like_the_other_metrics():
    # bool rows were refused here and in nearest_neighbors, but read as 0/1 by local_support,
    # kde_log_density and the Fréchet distance; here the uint8 audit is the reference
    generator = torch.Generator().manual_seed(3)
    train = torch.rand(40, 12, generator=generator) > 0.5
    samples = torch.cat([train[:5], torch.rand(6, 12, generator=generator) > 0.5])   # 5 exact copies
    expected = kfm.memorization(samples.to(torch.uint8), train.to(torch.uint8), bootstrap=0)
    audit = kfm.memorization(samples, train, bootstrap=0)
    assert torch.equal(audit.ratio, expected.ratio) and torch.equal(audit.nearest, expected.nearest)
    assert audit.memorized[:5].all()
    for mixed in ((samples, train.to(torch.uint8)), (samples.to(torch.float32), train)):
        assert torch.equal(kfm.memorization(*mixed, bootstrap=0).ratio, expected.ratio)
    found = kfm.nearest_neighbors(samples, train, 3)
    brute = torch.cdist(samples.double(), train.double()).topk(3, largest=False)
    torch.testing.assert_close(found.distances, brute.values, rtol=0, atol=1e-12)


@pytest.mark.parametrize("value, says", [
    (np.array([["a", "b"], ["c", "d"]]), "got a NumPy array of dtype <U1"),
    (pd.DataFrame({"a": [1.0, 2.0], "label": ["cat", "dog"]}), "its column label holds no numbers"),
    (pd.DataFrame({"u": ["1"], "v": ["2"]}), "its columns u, v hold no numbers"),
    (np.array([[1.0, None], [2.0, 3.0]], dtype=object), "got a NumPy array of dtype object"),
    ([[1.0, 2.0], [3.0]], "got a nested sequence that is not a rectangular array"),
    # samples gathered batch by batch: the list is rectangular, but torch reads no list of tensors
    ([torch.zeros(1, 2), torch.ones(1, 2)], r"got a list of 2 tensors: torch.cat \(or torch.stack\) them into one"),
])
@pytest.mark.parametrize("side", ["samples", "train"])
def test_inputs_torch_cannot_read_are_refused_by_their_own_name(value, says, side):
    # torch's own TypeError ("can't convert np.ndarray of type numpy.str_ ...") named neither input
    sets = {"samples": np.random.rand(2, 2), "train": np.random.rand(5, 2), side: value}
    with pytest.raises(ValueError, match=rf"^{side} must be an \(n, \.\.\.\) array of numbers; {says}"):
        kfm.memorization(sets["samples"], sets["train"])
    # a ragged list reached nearest_neighbors' layout check first: NumPy's "inhomogeneous shape", no name
    named = "queries" if side == "samples" else "reference"
    with pytest.raises(ValueError, match=rf"^{named} must be an \(n, \.\.\.\) array of numbers; {says}"):
        kfm.nearest_neighbors(sets["samples"], sets["train"], 1)


@pytest.mark.parametrize("side", ["samples", "train"])
def test_object_arrays_and_columns_of_numbers_are_read_as_numbers(side):
    # a pandas object column of ints (a table built row by row, or read from CSV-derived data) and
    # np.array(ints, dtype=object) were refused: "its column b holds no numbers", "dtype object"
    rng = np.random.default_rng(0)
    sets = {"samples": rng.integers(0, 9, (6, 3)), "train": rng.integers(0, 9, (9, 3))}
    want = kfm.memorization(sets["samples"], sets["train"], bootstrap=0)
    ints = sets[side]
    objects = {side: pd.DataFrame({"a": ints[:, 0], "b": pd.Series(ints[:, 1].tolist(), dtype=object),
                                   "c": ints[:, 2].astype(np.float64)})}
    objects[side]["b"] = objects[side]["b"].astype(object)
    assert objects[side]["b"].dtype == object
    for given in (objects[side], np.array(ints.tolist(), dtype=object),
                  np.array([[int(v) if j else float(v) for j, v in enumerate(row)] for row in ints], dtype=object)):
        report = kfm.memorization(**{**sets, side: given}, bootstrap=0)
        assert torch.equal(report.d1, want.d1) and torch.equal(report.d2, want.d2)
        assert torch.equal(report.nearest, want.nearest)
    found = kfm.nearest_neighbors(np.array(sets["samples"].tolist(), dtype=object), sets["train"], 2)
    assert torch.equal(found.distances, kfm.nearest_neighbors(sets["samples"], sets["train"], 2).distances)


@pytest.mark.parametrize("value, says", [
    (pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": pd.Series([1, None, "x"], dtype=object)}),
     r"its column b holds values other than numbers \(row 1: None, a NoneType\)"),
    (pd.DataFrame({"a": pd.Series([1, 2, "3"], dtype=object), "b": [1.0, 2.0, 3.0]}),
     r"its column a holds values other than numbers \(row 2: '3', a str\)"),
    (pd.DataFrame({"a": pd.Series([1, True, 0], dtype=object), "b": [1.0, 2.0, 3.0]}),
     r"its column a holds values other than numbers \(row 1: True, a bool\)"),
    (np.array([[1, 2], ["3", 4], [5, 6]], dtype=object),
     r"got a NumPy array of dtype object holding values other than numbers \(\[1, 0\]: '3', a str\)"),
])
def test_object_columns_of_other_values_are_refused_naming_the_first(value, says):
    for side in ("samples", "train"):
        sets = {"samples": np.random.rand(3, 2), "train": np.random.rand(5, 2), side: value}
        with pytest.raises(ValueError, match=rf"^{side} must be an \(n, \.\.\.\) array of numbers; {says}"):
            kfm.memorization(sets["samples"], sets["train"])


@pytest.mark.parametrize("dtype", [torch.complex64])
@pytest.mark.parametrize("side", ["samples", "train"])
def test_non_real_inputs_are_refused_by_their_own_name(dtype, side):
    sets = {"samples": torch.randn(4, 3), "train": torch.randn(5, 3)}
    sets[side] = sets[side].to(dtype)
    with pytest.raises(ValueError, match=f"^{side} must hold real numbers, got dtype {dtype}$"):
        kfm.memorization(sets["samples"], sets["train"])
    with pytest.raises(ValueError, match=rf"^space\({side}\) must hold real numbers"):
        kfm.memorization(torch.randn(4, 3), torch.randn(5, 3), space=lambda x: x.to(dtype) if len(x) == len(sets[side])
                         else x)


def test_wide_unsigned_integers_are_audited_like_int64():
    samples, train = torch.tensor([[1, 2], [7, 9]]), torch.tensor([[1, 2], [3, 5], [0, 0], [8, 9]])
    expected = kfm.memorization(samples, train, bootstrap=0).ratio
    for dtype in (torch.uint16, torch.uint32, torch.uint64):
        assert torch.equal(kfm.memorization(samples.to(dtype), train.to(dtype), bootstrap=0).ratio, expected)


@pytest.mark.parametrize("name", ["threshold", "confidence"])
def test_threshold_and_confidence_take_any_real_scalar(name):
    from fractions import Fraction

    samples, train = torch.randn(30, 4, dtype=torch.float64), torch.randn(40, 4, dtype=torch.float64)
    expected = kfm.memorization(samples, train, interval="wilson", **{name: 0.25})
    for value in (np.float32(0.25), np.float64(0.25), np.array(0.25), torch.tensor(0.25), Fraction(1, 4)):
        report = kfm.memorization(samples, train, interval="wilson", **{name: value})
        assert getattr(report, name) == 0.25 and type(getattr(report, name)) is float
        assert report.ci == expected.ci and torch.equal(report.memorized, expected.memorized)
    for value in (0, 1, 1.5, -0.1, float("nan"), np.float32(2.0), torch.tensor(1.0)):
        with pytest.raises(ValueError, match=rf"^{name} must lie in \(0, 1\), got "):
            kfm.memorization(samples, train, **{name: value})
    for value in (True, np.bool_(False), torch.tensor(True), "0.3", None, torch.tensor([0.3]), np.array([0.3]),
                  complex(0.3, 0)):
        with pytest.raises(ValueError, match=rf"^{name} must be a real number in \(0, 1\), got "):
            kfm.memorization(samples, train, **{name: value})


# --- input validation (audit D1, D13, C11) ---------------------------------------------------

@pytest.mark.filterwarnings("ignore::kinetic_fm.checks.ValueRangeWarning")  # deliberately far-apart sets
def test_huge_rows_are_refused_not_scored_zero():
    # at scale 1e20 the float32 squared distances overflowed and F_mem came out 0.0 silently
    g = torch.Generator().manual_seed(0)
    samples, train = torch.randn(20, 2, generator=g), torch.randn(40, 2, generator=g)
    with pytest.raises(ValueError, match="samples holds values up to .*float64"):
        kfm.memorization(samples * 1e20, train * 1e20, bootstrap=0)
    with pytest.raises(ValueError, match="train holds values up to"):
        kfm.memorization(samples, train * 1e20, bootstrap=0)
    # the remedy: float64 gives the scale-free answer
    assert (kfm.memorization(samples.double() * 1e20, train.double() * 1e20, bootstrap=0).fraction
            == kfm.memorization(samples, train, bootstrap=0).fraction)


@pytest.mark.parametrize("space_chunk", [True, 0, -1, 2.7])
def test_space_chunk_must_be_a_positive_integer(space_chunk):
    with pytest.raises(ValueError, match="space_chunk must be a positive integer"):
        kfm.memorization(torch.randn(4, 2), torch.randn(6, 2), bootstrap=0, space=lambda x: x,
                     space_chunk=space_chunk)


def test_space_must_be_callable_and_return_rows():
    with pytest.raises(TypeError, match="space must be a callable"):
        kfm.memorization(torch.randn(4, 2), torch.randn(6, 2), bootstrap=0, space="abc")
    with pytest.raises(ValueError, match="space must return one row per input"):
        kfm.memorization(torch.randn(4, 2), torch.randn(6, 2), bootstrap=0, space=lambda x: x.sum())
    with pytest.raises(ValueError, match=r"space\(samples\) contains NaN"):
        kfm.memorization(torch.randn(4, 2), torch.randn(6, 2), bootstrap=0,
                     space=lambda x: x * float("nan") if x.shape[0] == 4 else x)


@pytest.mark.parametrize("which", ["samples", "train"])
def test_a_non_finite_input_is_named_before_the_space_maps_it(which):
    # the finiteness check came after the feature map: NaN in the samples read "space(samples)
    # contains NaN", as if the map had made it (and "--samples in --space" on the command line),
    # after the map's work. The inputs are checked first, by their own names; the features still are
    calls = []

    def space(x):
        calls.append(x.shape[0])
        return 2 * x

    samples, train = torch.randn(6, 3), torch.randn(8, 3)
    (samples if which == "samples" else train)[4, 1] = float("nan")
    first = r"first at row 4 \(NaN at column 1\)$"           # the row, the value and its place
    with pytest.raises(ValueError, match=rf"^{which} contains NaN or inf in 1 row\(s\), {first}"):
        kfm.memorization(samples, train, bootstrap=0, space=space)
    assert calls == []                                   # refused before any mapping
    with pytest.raises(ValueError, match=r"^space\(samples\) contains NaN or inf in 1 row\(s\), first at row 2 \(inf"):
        kfm.memorization(torch.randn(6, 3), train.nan_to_num(0.0), bootstrap=0,
                         space=lambda x: x.index_fill(0, torch.tensor([2]), math.inf) if x.shape[0] == 6 else x)


@pytest.mark.parametrize("space", [lambda x: (x, x), lambda x: [x[:, 0], x[:, 1]], lambda x: (2 * x,)])
def test_a_space_returning_a_tuple_of_tensors_is_named(space):
    # a plain function returning (features, extra), as many networks' forward does, failed in
    # torch.as_tensor with "only one element tensors can be converted to Python scalars"; a
    # module returning one was already refused by name
    with pytest.raises(TypeError, match="space must return one tensor of features.*got a tuple|got a list"):
        kfm.memorization(torch.randn(4, 2), torch.randn(6, 2), bootstrap=0, space=space)


def test_a_bootstrap_of_few_resamples_is_warned_about(tmp_path, capsys):
    # bootstrap=1 printed a zero-width "95 % bootstrap CI" that need not contain F_mem, without a word
    import warnings

    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(40, 3)))
    samples = torch.cat([train[:5] + 1e-3, torch.from_numpy(rng.normal(size=(15, 3)))])
    few = r"^bootstrap=(1|99): a percentile interval from fewer than 100 resamples is unreliable"
    for count in (1, 99):
        with pytest.warns(UserWarning, match=few):
            report = kfm.memorization(samples, train, bootstrap=count, seed=2)
        with pytest.warns(UserWarning, match=few):
            assert kfm.fraction_interval(report.memorized.sum(), 20, "bootstrap", bootstrap=count, seed=2) == report.ci
    memorized = int(report.memorized.sum())
    assert 5 <= memorized < 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for count in (0, 100, 1000):
            report = kfm.memorization(samples, train, bootstrap=count, seed=2)
            draws = np.random.default_rng(2).binomial(20, memorized / 20, size=count) / 20   # as before
            want = tuple(np.quantile(draws, [0.025, 0.975])) if count else None
            assert report.ci == want or (want is None and all(math.isnan(v) for v in report.ci))
        kfm.memorization(samples, train, bootstrap=1, interval="wilson")         # draws no resamples
    np.save(tmp_path / "s.npy", samples.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--bootstrap", "1", "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "--bootstrap 1: a percentile interval from fewer than 100 resamples" in warned[0]


def test_bootstrap_has_an_upper_bound_instead_of_a_memory_error():
    from kinetic_fm.metrics.memorization import MAX_BOOTSTRAP

    with pytest.raises(ValueError, match=r"bootstrap must be an integer in \[0, 10_000_000\]"):
        kfm.memorization(torch.randn(4, 2), torch.randn(6, 2), bootstrap=10**12)
    assert kfm.memorization(torch.randn(4, 2), torch.randn(6, 2), bootstrap=MAX_BOOTSTRAP // 1000).bootstrap == 10**4


def test_a_feature_map_in_training_mode_is_warned_about():
    # batch norm in training mode normalises each chunk by its own statistics: F_mem moved from
    # 0.22 to 0.03 with the chunk size, without a word
    import warnings

    from kinetic_fm.sampling.guards import TrainingModeWarning

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    x, y = torch.randn(50, 4), torch.randn(80, 4)
    for measure in (lambda: kfm.memorization(x, y, space=net, bootstrap=0),
                    lambda: kfm.frechet_distance(x, y, space=net),
                    lambda: kfm.local_support(x, y, k=2, space=net)):
        with pytest.warns(TrainingModeWarning, match=r"feature map's network .*BatchNorm1d at '1'") as got:
            measure()
        assert got[0].filename == __file__                # points at the caller's line
        with warnings.catch_warnings():
            warnings.simplefilter("error", TrainingModeWarning)
            net.eval()
            measure()
            net.train()


def test_a_feature_map_in_training_mode_is_warned_about_once_a_call():
    # it was warned about once per set, and through a FeatureSpace once more per chunk (10 times here)
    import warnings

    from kinetic_fm.metrics.features import FeatureSpace
    from kinetic_fm.sampling.guards import TrainingModeWarning

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    x, y = torch.randn(10, 4), torch.randn(20, 4)
    for space in (net, net.forward, lambda rows: net(rows), FeatureSpace(net, batch_size=4)):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            kfm.memorization(x, y, space=space, bootstrap=0, space_chunk=4)
        assert [w.category for w in got] == [TrainingModeWarning], (space, [str(w.message)[:60] for w in got])


def test_a_chunk_of_one_row_through_batch_norm_in_training_mode_is_refused_by_name():
    # torch's own words, "Expected more than 1 value per channel when training", named neither space nor .eval()
    import warnings

    from kinetic_fm.metrics.features import FeatureSpace
    from kinetic_fm.sampling.guards import TrainingModeWarning

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    x, y = torch.randn(9, 4), torch.randn(20, 4)   # 9 rows in chunks of 4: the last holds one
    refused = r"space.*batch norm in training mode.* one row.*\.eval\(\)"
    for space in (net, lambda rows: net(rows), FeatureSpace(net, batch_size=4)):
        with pytest.warns(TrainingModeWarning), pytest.raises(ValueError, match=refused):
            kfm.memorization(x, y, space=space, bootstrap=0, space_chunk=4)
    with pytest.warns(TrainingModeWarning), pytest.raises(ValueError, match=refused):
        FeatureSpace(net, batch_size=4)(x)
    with pytest.warns(TrainingModeWarning), pytest.raises(ValueError, match=r"row 4 of the 10 rows of samples"):
        kfm.memorization(torch.randn(10, 4), y, space=FeatureSpace(net, batch_size=4), bootstrap=0, space_chunk=5)
    net.eval()   # in eval mode one row is normalised by the running statistics, as any other
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = kfm.memorization(x, y, space=net, bootstrap=0, space_chunk=4)
    with torch.no_grad():
        d1, d2, nearest = brute(net(x), net(y))
    torch.testing.assert_close(report.ratio, d1 / d2, rtol=1e-6, atol=1e-9)
    assert report.nearest.tolist() == nearest.tolist()


def test_gap_ratio_of_subnormal_distances_is_their_ratio():
    # float32 distances below finfo.tiny (1.2e-38) were clamped before dividing: 1e-40 / 1e-40 gave
    # 0.0085, a memorized sample, instead of 1
    d = torch.tensor([1e-40, 3e-41], dtype=torch.float32)
    assert d[0] > 0 and d[0] < torch.finfo(torch.float32).tiny
    ratio = kfm.gap_ratio(d, d)
    assert ratio.tolist() == [1.0, 1.0]
    assert kfm.gap_ratio(torch.tensor([0.0, 2.8e-45]), torch.tensor([0.0, 5.6e-45])).tolist() == [0.0, 0.5]


def test_fraction_interval_takes_the_counts_of_a_report_as_tensors(case):
    # the natural call passes memorized.sum(), a 0-d tensor, as the other scalar arguments may be
    samples, train = case
    rep = kfm.memorization(samples, train, interval="wilson")
    assert kfm.fraction_interval(rep.memorized.sum(), rep.memorized.numel()) == rep.ci
    assert kfm.fraction_interval(torch.tensor(5), np.int64(10)) == kfm.fraction_interval(5, 10)
    with pytest.raises(ValueError, match="0 <= count <= n"):
        kfm.fraction_interval(torch.tensor(True), 10)


@pytest.mark.parametrize("suffix, method", [(".csv", "to_csv"), (".parquet", "to_parquet")])
def test_cli_out_table_interrupted_midway_leaves_the_previous_table(tmp_path, monkeypatch, suffix, method):
    # --out was written straight into the target: a failed or killed write left half a table
    import pandas as pd

    gen = torch.Generator().manual_seed(0)
    np.save(tmp_path / "s.npy", torch.randn(6, 4, generator=gen).numpy())
    np.save(tmp_path / "t.npy", torch.randn(9, 4, generator=gen).numpy())
    out = tmp_path / f"table{suffix}"
    flags = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
             "--bootstrap", "0", "--no-progress", "--out", str(out)]
    assert main(flags) == 0
    before = out.read_bytes()

    def killed(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a table")
        raise OSError("killed mid-write")

    monkeypatch.setattr(pd.DataFrame, method, killed)
    assert main(flags) == 2
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.npy", "t.npy", out.name]


def test_cli_figure_is_drawn_before_the_table_is_written(tmp_path, monkeypatch):
    # drawn after the table, a Ctrl-C in the second it takes left the new table beside the previous
    # run's figure; a figure that fails to draw must not cost the table
    import pandas as pd

    from kinetic_fm.studies import figures

    gen = torch.Generator().manual_seed(0)
    np.save(tmp_path / "s.npy", torch.randn(6, 4, generator=gen).numpy())
    np.save(tmp_path / "t.npy", torch.randn(9, 4, generator=gen).numpy())
    out, png = tmp_path / "table.parquet", tmp_path / "figure.png"
    flags = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
             "--bootstrap", "0", "--no-progress", "--out", str(out), "--figure", str(png)]
    drawn, draw = [], figures.memorization_figure

    def drawing(*args, **kwargs):
        drawn.append(out.exists())
        return draw(*args, **kwargs)

    monkeypatch.setattr(figures, "memorization_figure", drawing)
    assert main(flags) == 0
    assert drawn == [False] and png.read_bytes().startswith(b"\x89PNG") and len(pd.read_parquet(out)) == 6
    out.unlink()

    def broken(*args, **kwargs):
        raise RuntimeError("a figure bug")

    monkeypatch.setattr(figures, "memorization_figure", broken)
    with pytest.raises(RuntimeError, match="a figure bug"):   # a bug: its traceback, after the table
        main(flags)
    assert len(pd.read_parquet(out)) == 6


def test_cli_out_never_replaces_an_input(digits_runs, tmp_path, capsys):
    # --out s.parquet beside --samples s.parquet (or RUN/results.parquet beside --samples RUN)
    # replaced the samples with the per-sample table, without a word
    import pandas as pd

    _, run = digits_runs
    rows = kfm.read_samples(run).reshape(6, -1)
    samples = tmp_path / "s.parquet"
    pd.DataFrame({"x": list(rows)}).to_parquet(samples)
    results = run / "results.parquet"
    kept = {path: path.read_bytes() for path in (samples, results)}
    for given, out in ((samples, samples), (run, results), (run, run / "shards" / "audit.parquet"),
                       (tmp_path / ".." / tmp_path.name / "s.parquet", samples)):
        assert main(["memorization", "--samples", str(given), "--train", "digits", "--bootstrap", "0",
                     "--no-progress", "--out", str(out)]) == 2
        assert f"--out {out} would overwrite" in capsys.readouterr().err
    assert main(["memorization", "--samples", str(tmp_path / "t.npy"), "--train", str(samples), "--no-progress",
                 "--out", str(samples)]) == 2
    assert f"which --train {samples} reads" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in kept} == kept
    assert main(["memorization", "--samples", str(samples), "--train", "digits", "--bootstrap", "0",
                 "--no-progress", "--out", str(tmp_path / "audit.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "audit.parquet")) == 6


def test_cli_figure_never_replaces_or_adds_an_input_image(tmp_path, capsys):
    # --figure imgs/0.png with --samples imgs (or --train folder:imgs) replaced a sample image with
    # the figure, without a word; a new PNG there would be read as a sample the next time
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("s", "t"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*.png")}
    for samples, train, figure, what in (
            ("s", "t", "s/0.png", "overwrite one of the images, which --samples"),
            ("s", "folder:" + str(tmp_path / "t"), "t/1.png", "overwrite one of the images, which --train"),
            ("s", "folder: " + str(tmp_path / "t"), "t/2.png", "overwrite one of the images, which --train"),
            ("s", "t", "t/sub/new.png", "add an image to the folder of images, which --train")):
        samples = samples if ":" in samples else str(tmp_path / samples)
        train = train if ":" in train else str(tmp_path / train)
        assert main(["memorization", "--samples", samples, "--train", train, "--bootstrap", "0",
                     "--no-progress", "--figure", str(tmp_path / figure)]) == 2
        assert f"--figure {tmp_path / figure} would {what}" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.png")} == kept



def test_cli_a_folder_spec_with_a_space_after_its_colon_is_named_as_without(tmp_path, capsys):
    # "folder: X" was the path " X" (not found); loaded now, its refusal read "--train folder: X: X: ..."
    samples = tmp_path / "s.npy"
    np.save(samples, np.random.default_rng(0).normal(size=(5, 4)))
    said = []
    for spec in (f"folder:{samples}", f"folder: {samples}", f"folder: {samples} "):   # spaces after it too
        assert main(["memorization", "--samples", str(samples), "--train", spec, "--no-progress"]) == 2
        said.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert said[0] == said[1] == said[2] == (f"kfm memorization: error: --train {samples}: expected a folder of images "
                                  "or a zip archive of images")


def test_cli_out_never_replaces_an_input_reached_by_another_name(tmp_path, capsys):
    # the paths were compared as strings once resolved: a hard link to the samples (or, on a
    # case-insensitive file system, their name in another case) passed as another file
    import os

    import pandas as pd

    samples = tmp_path / "s.parquet"
    pd.DataFrame({"x": list(np.random.default_rng(0).normal(size=(6, 4)))}).to_parquet(samples)
    np.save(tmp_path / "t.npy", np.random.default_rng(1).normal(size=(9, 4)))
    os.link(samples, tmp_path / "linked.parquet")
    others = [tmp_path / "linked.parquet"]
    (tmp_path / "CASE").touch()
    if (tmp_path / "case").exists():                                  # a case-insensitive file system
        others.append(tmp_path / "S.parquet")
    kept = samples.read_bytes()
    for out in others:
        assert main(["memorization", "--samples", str(samples), "--train", str(tmp_path / "t.npy"),
                     "--bootstrap", "0", "--no-progress", "--out", str(out)]) == 2
        assert f"--out {out} would overwrite that file, which --samples {samples} reads" in capsys.readouterr().err
    assert samples.read_bytes() == kept


def test_cli_figure_never_adds_an_image_to_the_data_a_training_run_read(tmp_path, capsys):
    # --train RUN reads the folder of images its config.json names: a figure written there was
    # read as a training image the next time, and the run's subset no longer matched
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(4, 4), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", f"folder:{tmp_path / 'imgs'}", "--steps", "1", "--batch-size", "2", "--width", "8",
                 "--checkpoints", "none", "--no-progress", "--out", str(run)]) == 0
    np.save(tmp_path / "s.npy", rng.uniform(-1, 1, size=(3, 1, 4, 4)))   # folder: loads grey images as one channel
    Image.fromarray(rng.integers(0, 256, size=(4, 4), dtype=np.uint8)).save(tmp_path / "elsewhere.png")
    (tmp_path / "imgs" / "link.png").symlink_to(tmp_path / "elsewhere.png")  # the write would replace the link
    kept = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    for figure, what in (("imgs/new.png", "add an image to the folder of images"),
                         ("imgs/0.png", "overwrite one of the images"),
                         ("imgs/link.png", "overwrite one of the images")):
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(run), "--bootstrap", "0",
                     "--no-progress", "--figure", str(tmp_path / figure)]) == 2
        assert (f"--figure {tmp_path / figure} would {what}, which --train {run} reads (the data it trained on, "
                f"folder:{tmp_path / 'imgs'})") in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == kept
    # beside the net's weights a figure is no input: --train RUN reads its config.json and the data it
    # names, and it was refused as "would add an image to the folder of images"
    (tmp_path / "imgs" / "link.png").unlink()            # the 6 images the run trained on
    for _ in range(2):                                   # the second audit reads the run as the first did
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(run), "--bootstrap",
                     "0", "--no-progress", "--figure", str(run / "audit.png")]) == 0
        assert (run / "audit.png").is_file() and "would add an image" not in capsys.readouterr().err


def test_cli_figure_and_out_never_replace_the_items_an_empirical_run_was_made_of(tmp_path, capsys):
    # --train RUN of kfm sample --field empirical reads the source its manifest records: a figure in
    # that folder of images was read as one more item next time (and the run's items no longer matched)
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(4, 4), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    pd.DataFrame(rng.normal(size=(8, 2)), columns=["a", "b"]).to_parquet(tmp_path / "points.parquet")
    for run, source in (("from_imgs", tmp_path / "imgs"), ("from_table", tmp_path / "points.parquet")):
        assert main(["sample", "--field", "empirical", "--train", str(source), "--n", "2", "--steps", "2",
                     "--no-progress", "--out", str(tmp_path / run)]) == 0
    capsys.readouterr()
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for run, flag, target, what in (
            ("from_imgs", "--figure", tmp_path / "imgs" / "new.png", "add an image to the folder of images"),
            ("from_imgs", "--figure", tmp_path / "imgs" / "0.png", "overwrite one of the images"),
            ("from_table", "--out", tmp_path / "points.parquet", "overwrite that file")):
        source = tmp_path / ("imgs" if run == "from_imgs" else "points.parquet")
        assert main(["memorization", "--samples", str(tmp_path / run), "--train", str(tmp_path / run),
                     "--bootstrap", "0", "--no-progress", flag, str(target)]) == 2
        assert (f"{flag} {target} would {what}, which --train {tmp_path / run} reads (the items its field was "
                f"made of, {source.resolve()})") in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == kept


def test_a_folder_data_spec_names_the_nearest_training_files_as_the_folder_does(tmp_path):
    """--train folder:PATH loads the same images as --train PATH; its table names them alike."""
    import pandas as pd
    from PIL import Image

    from kinetic_fm.cli import main

    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, size=(12, 6, 6), dtype=np.uint8)
    folder = tmp_path / "train"
    (folder / "b").mkdir(parents=True)
    names = [f"b/img{j}.png" if j % 3 == 0 else f"img{j}.png" for j in range(12)]
    for image, name in zip(train, names):
        Image.fromarray(image, mode="L").save(folder / name)
    picks = [7, 0, 11, 3]
    grey = train[picks].astype(np.float32)[:, None] / 127.5 - 1.0 + 0.01  # near copies
    np.save(tmp_path / "grey.npy", grey)                   # both forms read grey images as one channel,
    np.save(tmp_path / "rgb.npy", grey.repeat(3, axis=1))  # and as three beside colour samples
    tables = []
    for samples, form in (("grey.npy", str(folder)), ("rgb.npy", f"folder:{folder}"),
                          ("grey.npy", f"folder:{folder}"), ("rgb.npy", str(folder))):
        out = tmp_path / f"{len(tables)}.parquet"
        assert main(["memorization", "--samples", str(tmp_path / samples), "--train", form,
                     "--bootstrap", "0", "--no-progress", "--out", str(out)]) == 0
        tables.append(pd.read_parquet(out))
    by_path, by_spec = tables[:2]
    for other in tables[2:]:     # one channel or three: the same neighbours and ratios (d1 and d2 scale by √3)
        assert other.columns.tolist() == by_path.columns.tolist()
        assert other["nearest"].tolist() == by_path["nearest"].tolist()
        np.testing.assert_allclose(other["ratio"], by_path["ratio"], rtol=1e-6)
        assert other["nearest_file"].tolist() == [names[j] for j in picks]
    assert by_spec.columns.tolist() == by_path.columns.tolist()
    columns = by_path.columns.tolist()                     # each name beside what it names
    assert columns[columns.index("nearest") + 1] == "nearest_file"
    assert by_spec["nearest"].tolist() == by_path["nearest"].tolist()
    assert by_spec["nearest_file"].tolist() == by_path["nearest_file"].tolist() == [names[j] for j in picks]


def test_a_run_folders_table_names_each_nearest_item_in_its_whole_split(digits_runs, tmp_path):
    """--train RUN audits the subset it trained on; ``nearest`` is a row of that subset, which the
    table alone could not map back to the data: ``nearest_item`` is its position in the split
    (as --train SPEC's ``nearest``), and a folder's run names the file too."""
    import pandas as pd
    from PIL import Image

    from kinetic_fm.data.digits import load_digits

    net, _ = digits_runs
    subset = load_digits(n=16, seed=3)                       # what the run trained on
    picks = [9, 0, 15, 4]
    np.save(tmp_path / "s.npy", (subset.images[picks] + 0.01).numpy())
    tables = []
    for train in (str(net), "digits"):
        out = tmp_path / f"{len(tables)}.csv"
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", train, "--bootstrap", "0",
                     "--no-progress", "--out", str(out)]) == 0
        tables.append(pd.read_csv(out))
    by_run, whole = tables
    assert by_run["nearest"].tolist() == picks and "nearest_item" not in whole.columns
    assert by_run["nearest_item"].tolist() == subset.indices[picks].tolist() == whole["nearest"].tolist()

    rng = np.random.default_rng(1)
    folder = tmp_path / "faces"
    folder.mkdir()
    images = rng.integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    for j, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / f"{j:02d}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", f"folder:{folder}", "--n", "5", "--seed", "2", "--steps", "1", "--model", "mlp",
                 "--width", "8", "--checkpoints", "none", "--no-progress", "--out", str(run)]) == 0
    from kinetic_fm.data.registry import load_dataset

    trained = load_dataset(f"folder:{folder}", n=5, seed=2, progress=False)
    np.save(tmp_path / "f.npy", trained.images[[3, 1]].numpy())
    out = tmp_path / "f.csv"
    assert main(["memorization", "--samples", str(tmp_path / "f.npy"), "--train", str(run), "--bootstrap", "0",
                 "--no-progress", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    positions = trained.indices[[3, 1]].tolist()
    assert table["nearest_item"].tolist() == positions
    assert table["nearest_file"].tolist() == [f"{j:02d}.png" for j in positions]


def test_image_files_against_a_centred_celeba_spec_are_centred_alike(tmp_path, capsys):
    """celeba: centres its items by their mean image; image files decode to [-1, 1], uncentred, so
    exact copies of the training faces read d1 = ‖mean‖ and F_mem = 0. A folder of them is centred
    by the same mean; uncentred arrays are warned about, centred ones (a net's samples) are not."""
    import pandas as pd
    from PIL import Image

    from kinetic_fm.data import load_dataset

    rng = np.random.default_rng(8)
    faces = tmp_path / "faces"
    faces.mkdir()
    for j in range(40):      # bright, smooth-ish faces of CelebA's aligned size: a mean image far from 0
        base = rng.integers(120, 230) + rng.integers(-25, 25, size=(218, 178))
        Image.fromarray(base.clip(0, 255).astype(np.uint8), mode="L").save(faces / f"{j:06d}.png")
    spec = f"celeba:{faces}"
    data = load_dataset(spec, progress=False)
    assert data.mean is not None and float(data.mean.norm()) > 5
    picks = [4, 31, 17]
    folder = tmp_path / "samples"
    folder.mkdir()
    for j in picks:          # the training faces as a user saves them: [-1, 1] images, uncentred
        image = ((data.images[j, 0] + data.mean[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(image, mode="L").save(folder / f"{j}.png")
    out = tmp_path / "t.csv"
    assert main(["memorization", "--samples", str(folder), "--train", spec, "--bootstrap", "0", "--no-progress",
                 "--out", str(out)]) == 0
    assert "images centred by the mean image" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert table["nearest"].tolist() == [int(name[:-4]) for name in table["file"]] and table["memorized"].all()
    assert sorted(table["nearest"]) == sorted(picks)
    np.testing.assert_allclose(table["d1"], 0.0, atol=1e-5)

    # flat (n, H·W) arrays, which the search compares as the items, too: they were not looked at.
    # Centred copies of the brightest face (a memorizing net's samples) are centred: a first rule,
    # the samples' mean coefficient on the mean image above 0.5, called them uncentred
    flat = (data.images + data.mean).reshape(data.images.shape[0], -1)
    along = data.mean.reshape(-1)
    brightest = int((data.images.reshape(len(data.images), -1) @ along).argmax())
    copies = data.images[[brightest] * 8]
    assert float(copies[0].reshape(-1) @ along / (along @ along)) > 0.5
    for rows, uncentred in ((data.images + data.mean, True), (data.images, False), (flat, True), (copies, False),
                            (copies + data.mean, True)):
        np.save(tmp_path / "s.npy", rows.numpy())
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", spec, "--bootstrap", "0",
                     "--no-progress"]) == 0
        assert ("look uncentred" in capsys.readouterr().err) is uncentred
    bad = data.images.clone()
    bad[1, 0, 0, 0] = float("nan")      # the centring check's own search named it "queries"
    np.save(tmp_path / "s.npy", bad.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", spec, "--no-progress"]) == 2
    assert "error: --samples contains NaN or inf in 1 row(s), first at row 1" in capsys.readouterr().err


def _bright_faces(folder, count, seed=8):
    """Bright, smooth-ish greyscale faces of CelebA's aligned size: a mean image far from 0."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir()
    for j in range(count):
        base = rng.integers(120, 230) + rng.integers(-25, 25, size=(218, 178))
        Image.fromarray(base.clip(0, 255).astype(np.uint8), mode="L").save(folder / f"{j:06d}.png")


def _audit(tmp_path, rows, spec, capsys):
    """(table, stderr) of kfm memorization of the array ``rows`` against ``spec``."""
    np.save(tmp_path / "s.npy", rows.numpy())
    out = tmp_path / "t.csv"
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", spec, "--bootstrap", "0",
                 "--no-progress", "--out", str(out)]) == 0
    return pd.read_csv(out), capsys.readouterr().err


def test_samples_centred_by_a_subsets_mean_against_a_celeba_spec_are_warned_about(tmp_path, capsys):
    """load_celeba(n=...) centres by its subset's mean image, celeba:PATH by all the faces': copies
    of the subset's faces audited against the spec sat ‖difference of the means‖ off their items
    (d1 = 0.33 on the shared 6,000 faces, not 0), without a word. The memorized samples' common
    offset is named; samples in the spec's frame, or whose offsets differ, are not warned about."""
    from kinetic_fm.data import load_celeba, load_dataset

    _bright_faces(tmp_path / "faces", 40)
    spec = f"celeba:{tmp_path / 'faces'}"
    whole = load_dataset(spec, progress=False)
    subset = load_celeba(tmp_path / "faces", n=12, seed=0)
    offset = float((subset.mean - whole.mean).norm())
    assert offset > 0.1                       # the two means differ: the subset's own is not the spec's
    copies = subset.images[:8]
    table, err = _audit(tmp_path, copies, spec, capsys)
    assert table["memorized"].all()
    np.testing.assert_allclose(table["d1"], offset, rtol=1e-4)   # d1 is the means' difference, not 0
    assert f"sit one common offset from their nearest training items (its norm {offset:.3g})" in err
    assert "load_celeba(n=...) centres by its subset's mean image" in err

    # moved into the spec's frame (the remedy the warning names): on their items, nothing to say
    table, err = _audit(tmp_path, copies + subset.mean - whole.mean, spec, capsys)
    np.testing.assert_allclose(table["d1"], 0.0, atol=1e-5)
    assert "common offset" not in err
    # near-copies each off its item its own way (a net's memorized samples) show no common offset
    noise = torch.randn(copies.shape, generator=torch.Generator().manual_seed(3)) * 0.005
    table, err = _audit(tmp_path, copies + subset.mean - whole.mean + noise, spec, capsys)
    assert table["memorized"].all() and (table["d1"] > 0.1).all() and "common offset" not in err
    # one memorized sample cannot show an offset common to several
    table, err = _audit(tmp_path, copies[:1], spec, capsys)
    assert table["memorized"].all() and "common offset" not in err
    # repeated copies of a face, each off it the same way (a collapsed net's), and one of another:
    # their misses are their items', not one offset common to all (estimated from the other
    # samples alone, the first face's six fellow copies read as one)
    repeated = copies[[0] * 7 + [5]] + subset.mean - whole.mean + noise[[0] * 7 + [1]]
    table, err = _audit(tmp_path, repeated, spec, capsys)
    assert table["memorized"].all() and "common offset" not in err


def test_the_shared_celeba_subset_against_the_celeba_spec_names_the_offset(shared_data, tmp_path, capsys,
                                                                          monkeypatch):
    """On the real faces: copies of load_celeba(n=1000)'s faces read d1 = ‖mean(1000) − mean(6000)‖
    (0.33) against celeba:PATH, and the warning names that offset. Where a face has a near twin
    (d2 = 0.81) the offset turns a copy's verdict: d1/d2 = 0.40, not memorized."""
    import dataclasses
    import hashlib

    from kinetic_fm.data import images, load_celeba, load_dataset

    # the test and each audit load the 6,000 faces: each file's pixels are decoded once (19,000
    # JPEG decodes were two thirds of its time); loading, centring and auditing run every time
    decode, decoded = images._decode, {}

    def decode_once(data, **options):
        key = (hashlib.sha256(data).digest(), tuple(sorted(options.items())))
        if key not in decoded:
            decoded[key] = decode(data, **options)
        kept = decoded[key]
        return dataclasses.replace(kept, array=kept.array.copy())

    monkeypatch.setattr(images, "_decode", decode_once)
    path = shared_data / "celeba" / "celeba_align_subset6000.zip"
    spec = f"celeba:{path}"
    subset = load_celeba(path, n=1000, seed=0)
    whole = load_dataset(spec, progress=False)
    offset = float((subset.mean.double() - whole.mean.double()).norm())
    assert 0.2 < offset < 0.5
    table, err = _audit(tmp_path, subset.images[::40], spec, capsys)
    np.testing.assert_allclose(table["d1"], offset, rtol=1e-4)
    assert table["memorized"].sum() == 24 and not table["memorized"][10]
    assert f"(its norm {offset:.3g})" in err and "load_dataset" in err
    # in the spec's frame, as the warning says: every copy on its face, all 25 memorized
    table, err = _audit(tmp_path, subset.images[::40] + subset.mean - whole.mean, spec, capsys)
    np.testing.assert_allclose(table["d1"], 0.0, atol=1e-5)
    assert table["memorized"].all() and "common offset" not in err


def test_a_cifar10_image_tree_spec_names_the_nearest_training_files(tmp_path):
    """--train cifar10:TREE names each nearest item's file (train/<class>/<file>); python batches
    have no file names, so their table has no such column."""
    import pandas as pd
    from PIL import Image

    from kinetic_fm.cli import main
    from kinetic_fm.data import CIFAR10_CLASSES

    rng = np.random.default_rng(5)
    tree = tmp_path / "cifar"
    names = []
    for c, cls in enumerate(CIFAR10_CLASSES):
        for j in range(2):
            (tree / "train" / cls).mkdir(parents=True, exist_ok=True)
            names.append(f"train/{cls}/{c}{j}.png")
            Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(tree / names[-1])
        (tree / "test" / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(tree / "test" / cls / "t.png")
    picks = [13, 0, 19, 6]
    near = np.stack([np.asarray(Image.open(tree / names[j]), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
                     for j in picks]) + 0.01
    np.save(tmp_path / "near.npy", near)
    out = tmp_path / "table.parquet"
    assert main(["memorization", "--samples", str(tmp_path / "near.npy"), "--train", f"cifar10:{tree}",
                 "--bootstrap", "0", "--no-progress", "--out", str(out)]) == 0
    table = pd.read_parquet(out)
    assert table["nearest"].tolist() == picks                       # the loader's order is the listing's
    assert table["nearest_file"].tolist() == [names[j] for j in picks]


@pytest.mark.parametrize("flags, message", [
    (["--threshold", "1"], "--threshold must lie in (0, 1), got 1.0"),
    (["--threshold", "nan"], "--threshold must lie in (0, 1), got nan"),
    (["--bootstrap", "-1"], "--bootstrap must be an integer in [0, 10_000_000], got -1"),
    (["--out", "{tmp}/a.csv/t.csv"], "--out {tmp}/a.csv/t.csv: {tmp}/a.csv is a file, so no folder can be made inside it"),
    (["--out", "{tmp}/d.parquet"], "--out {tmp}/d.parquet is a folder; name a file"),
    (["--figure", "{tmp}/a.csv/f.png"], "--figure {tmp}/a.csv/f.png: {tmp}/a.csv is a file"),
])
def test_cli_flags_out_of_range_are_named_before_the_inputs_load(tmp_path, capsys, flags, message):
    # the library named "threshold" and "bootstrap", and the OS an --out path ("[Errno 17] File
    # exists"), each after the inputs had loaded (--samples here is missing: its error came first)
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "d.parquet").mkdir()
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert main(["memorization", "--samples", str(tmp_path / "missing.npy"), "--train", str(tmp_path / "missing.npy"),
                 *flags]) == 2
    assert capsys.readouterr().err.startswith(f"kfm memorization: error: {message.format(tmp=tmp_path)}")


def test_cli_seed_and_backend_reach_the_audit(tmp_path, capsys, case, monkeypatch):
    samples, train = case
    np.save(tmp_path / "s.npy", samples.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    flags = ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"), "--no-progress",
             "--bootstrap", "100"]
    assert main([*flags, "--seed", "5"]) == 0
    seeded = str(kfm.memorization(samples, train, bootstrap=100, seed=5))
    assert seeded != str(kfm.memorization(samples, train, bootstrap=100, seed=0))   # the seed shows in the CI
    assert seeded in capsys.readouterr().out
    import kinetic_fm.metrics.memorization as module

    calls = []
    real = module.memorization
    monkeypatch.setattr(module, "memorization", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert main([*flags, "--backend", "faiss"]) == 0
    assert calls[0]["backend"] == "faiss"


def test_cli_wilson_interval_asked_for_gets_no_note_about_the_bootstrap(tmp_path, capsys, case):
    samples, train = case
    np.save(tmp_path / "fresh.npy", samples[60:].numpy())      # F_mem = 0: the bootstrap interval has no width
    np.save(tmp_path / "t.npy", train.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "fresh.npy"), "--train", str(tmp_path / "t.npy"),
                 "--interval", "wilson", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Wilson" in out and "note:" not in out


def test_a_file_named_like_a_data_spec_is_read_as_the_file(tmp_path, capsys, monkeypatch):
    # --train digits is the data spec, unless ./digits exists: then it is that folder of images
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, dtype=np.uint8)).save(tmp_path / "digits" / f"{i}.png")
    np.save(tmp_path / "s.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert main(["memorization", "--samples", "s.npy", "--train", "digits", "--bootstrap", "0", "--no-progress",
                 "--out", "t.csv"]) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "t.csv")
    assert set(table["nearest_file"]) <= {"0.png", "1.png", "2.png"}


def test_a_kfm_train_run_whose_data_changed_since_is_refused(digits_runs, tmp_path, capsys):
    import shutil

    net, samples = digits_runs
    copy = tmp_path / "net"
    shutil.copytree(net, copy)
    config = json.loads((copy / "config.json").read_text())
    config["data_shape"] = [15, 1, 8, 8]                        # as if the subset had been one item smaller
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["memorization", "--samples", str(samples), "--train", str(copy), "--bootstrap", "0",
                 "--no-progress"]) == 2
    assert "now loads [16, 1, 8, 8], but the run trained on [15, 1, 8, 8]: the data changed since" in capsys.readouterr().err


def test_resnet_space_images_beyond_1_are_refused():
    from kinetic_fm.commands.memorization import _cifar_images

    assert _cifar_images("--samples", torch.zeros(2, 3072)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"--space needs images scaled to \[-1, 1\]; --samples spans \[0, 2\]"):
        _cifar_images("--samples", torch.linspace(0, 2, 2 * 3072).reshape(2, 3072))
    with pytest.raises(ValueError, match=r"--samples spans \[-2, 0\] \(generated samples overshoot: --clamp"):
        _cifar_images("--samples", torch.linspace(-2, 0, 2 * 3072).reshape(2, 3072))
    with pytest.raises(ValueError, match=r"--train spans \[-2, 0\]$"):           # --clamp moves samples only
        _cifar_images("--train", torch.linspace(-2, 0, 2 * 3072).reshape(2, 3072))


def test_resnet_space_refuses_channels_last_images_rather_than_scrambling_them():
    # a (32, 32, 3) item has 3,072 values and was reshaped to (3, 32, 32): its pixels scrambled,
    # the audit ran on them (0/200 copies of the training images themselves) without a word
    from kinetic_fm.commands.memorization import _cifar_images

    assert _cifar_images("--samples", torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"--samples has shape \(2, 32, 32, 3\) \(channels-last: bring it to "
                                         r"\(n, 3, 32, 32\) first"):
        _cifar_images("--samples", torch.zeros(2, 32, 32, 3))
    for shape in ((2, 96, 32), (2, 1, 3072)):                  # 3,072 values, not a CIFAR image's layout
        with pytest.raises(ValueError, match=rf"--train has shape \({shape[0]}, {shape[1]}, {shape[2]}\)$"):
            _cifar_images("--train", torch.zeros(shape))


def test_kfm_memorization_of_an_incomplete_run_is_one_error_line(tmp_path, capsys):
    # IncompleteRunError is a RuntimeError, which the CLI re-raised as a bug: 21 lines of traceback
    run = tmp_path / "run"
    assert main(["sample", "--n", "6", "--steps", "2", "--shard-size", "2", "--no-progress", "--out", str(run)]) == 0
    for part in (run / "shards").glob("shard-00001-of-00003.*"):
        part.unlink()
    np.save(tmp_path / "train.npy", np.zeros((5, 2)))
    capsys.readouterr()
    code = main(["memorization", "--samples", str(run), "--train", str(tmp_path / "train.npy"), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("kfm memorization: error: ") and err.count("\n") == 1
    assert "shard-00001-of-00003.parquet (missing" in err
    assert "running its command again with --resume (`kfm sample`" in err   # a kfm sample flag, said so


def test_a_grey_folder_is_audited_against_colour_items_in_colour(tmp_path, capsys):
    # a folder of images was dropped to one channel when that folder alone was grey throughout, so
    # RGB copies of grey training images met "64 and 192 features" (helper-106)
    from PIL import Image

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    train[:3] = train[:3, :, :, :1]                                   # three grey training images
    (tmp_path / "train").mkdir()
    (tmp_path / "samples").mkdir()
    for i, image in enumerate(train):
        Image.fromarray(image, "RGB").save(tmp_path / "train" / f"{i:03d}.png")
    for i in range(3):
        Image.fromarray(train[i], "RGB").save(tmp_path / "samples" / f"{i:03d}.png")
    copies = (train[:3].transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float32)
    np.save(tmp_path / "copies.npy", copies)
    grey_train = tmp_path / "grey_train"
    grey_train.mkdir()
    for i in range(3):
        Image.fromarray(train[i], "RGB").save(grey_train / f"{i:03d}.png")
    for samples, train_path in ((tmp_path / "samples", tmp_path / "train"), (tmp_path / "copies.npy", grey_train)):
        assert main(["memorization", "--samples", str(samples), "--train", str(train_path), "--bootstrap", "0",
                     "--no-progress"]) == 0
        assert "F_mem = 1.0000" in capsys.readouterr().out


def test_grey_folders_are_audited_without_their_three_channel_copies(tmp_path, monkeypatch):
    # a grey folder given by its path loaded as RGB and was cut to its first channel afterwards, a view: the
    # audit held the float32 (N, 3, H, W) images to its end (50,000 CIFAR-sized ones: 586 MiB for 195 MiB of values)
    from PIL import Image

    import kinetic_fm.metrics.memorization as metric

    rng = np.random.default_rng(0)
    for name, count in (("samples", 3), ("train", 8)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    audited = []
    real = metric.memorization
    monkeypatch.setattr(metric, "memorization", lambda samples, train, **kw: audited.append((samples, train))
                        or real(samples, train, **kw))
    assert main(["memorization", "--samples", str(tmp_path / "samples"), "--train", str(tmp_path / "train"),
                 "--bootstrap", "0", "--no-progress"]) == 0
    (samples, train), = audited
    assert samples.shape == (3, 1, 4, 4) and train.shape == (8, 1, 4, 4)
    for images in (samples, train):   # the tensor's memory is its one channel, no more
        assert images.untyped_storage().nbytes() == images.numel() * images.element_size()


def _bad_inputs(tmp_path):
    """Files for test_cli_names_the_flag_behind_a_bad_input, by name."""
    rng = np.random.default_rng(0)
    arrays = {"s": rng.normal(size=(5, 4)), "t": rng.normal(size=(20, 4)), "s3": rng.normal(size=(5, 3)),
              "empty": np.zeros((0, 4)), "t1": rng.normal(size=(1, 4)), "cplx": np.ones((5, 4), np.complex64),
              "big": np.full((5, 4), 2 ** 60), "hwc": rng.normal(size=(5, 8, 8, 3)),
              "chw": rng.normal(size=(20, 3, 8, 8)), "s01": rng.uniform(0, 1, (100, 4)),
              "t11": rng.uniform(-1, 1, (200, 4)), "line": rng.normal(size=80), "one": rng.normal(size=4)}
    arrays["snan"], arrays["tinf"] = arrays["s"].copy(), arrays["t"].copy()
    arrays["snan"][2, 1], arrays["tinf"][3, 0] = np.nan, np.inf
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    torch.save(torch.zeros(5, 4), tmp_path / "one.pt")
    torch.save({"x": torch.zeros(5, 4), "y": torch.ones(5, 4)}, tmp_path / "two.pt")
    (tmp_path / "empty_folder").mkdir()


@pytest.mark.parametrize("samples, train, extra, message", [
    ("snan.npy", "t.npy", [], "--samples contains NaN or inf in 1 row(s), first at row 2 (NaN at column 1)"),
    ("s.npy", "tinf.npy", [], "--train contains NaN or inf in 1 row(s), first at row 3 (inf at column 0)"),
    ("empty.npy", "t.npy", [], "--samples is empty (0 rows)"),
    ("s.npy", "empty.npy", [], "--train is empty (0 rows)"),
    # N numbers are N one-value items: "must have the same number of features, got 4 and 1" said not why
    ("s.npy", "line.npy", [], "--train {train}: a 1-D array of 80 numbers is read as 80 one-value items, but "
                              "--samples holds items of 4 values; if it holds 20 items of 4 values, save it as "
                              "shape (20, 4)"),
    ("one.npy", "t.npy", [], "--samples {samples}: a 1-D array of 4 numbers is read as 4 one-value items, but "
                             "--train holds items of 4 values; if it is one item of 4 values, save it as shape (1, 4)"),
    ("s.npy", "t1.npy", [], "--train must hold at least 2 items for the gap ratio (k = 2), got 1"),
    ("s3.npy", "t.npy", [], "--samples and --train must have the same number of features, got 3 and 4"),
    ("big.npy", "t.npy", [], "--samples holds integers beyond 2**53"),
    ("hwc.npy", "chw.npy", [], "--samples holds items of shape (8, 8, 3) and --train items of shape (3, 8, 8)"),
    ("s.npy", "cplx.npy", [], "--train {train}: holds complex64 values, need real numbers"),
    ("s.npy", "t.npy", ["--key", "x"], "--samples {samples}: a .npy file holds one array; --key 'x' does not apply"),
    ("s.npy", "one.pt", ["--train-key", "x"],
     "--train {train}: holds one tensor (not a dict), so --train-key 'x' does not apply"),
    ("two.pt", "t.npy", ["--key", "z"], "--samples {samples}: no tensor named 'z'; it holds ['x', 'y']"),
    ("s.npy", "missing.npy", [], "--train: no such file: {train}"),
    ("empty_folder", "t.npy", [], "--samples {samples}: contains no image files"),
    ("s.npy", "folder:{tmp}/missing", [], "--train: image source not found: {tmp}/missing"),
    # the PCA fit's words ("has non-finite features in rows [3]") named neither the value nor that it was the input
    ("s.npy", "tinf.npy", ["--space", "pca:2"],
     "--train contains NaN or inf in 1 row(s), first at row 3 (inf at column 0)"),
    ("snan.npy", "t.npy", ["--space", "pca:2"],
     "--samples contains NaN or inf in 1 row(s), first at row 2 (NaN at column 1)"),
    ("s3.npy", "t.npy", ["--space", "pca:2"],
     "--space pca:2 projects rows of --train's size, but --samples has rows of 3 values and --train of 4"),
])
def test_cli_names_the_flag_behind_a_bad_input(tmp_path, capsys, samples, train, extra, message):
    # the library's words reached the terminal: "samples contains NaN ...", "key='x' does not apply",
    # "pixels-PCA2 projects rows of 4 values, got 3", or a file's error without the flag that named it
    _bad_inputs(tmp_path)
    train = train.format(tmp=tmp_path) if ":" in train else str(tmp_path / train)
    samples = str(tmp_path / samples)
    assert main(["memorization", "--samples", samples, "--train", train, "--bootstrap", "0", "--no-progress",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kfm memorization: error: {message.format(samples=samples, train=train, tmp=tmp_path)}"), err


def test_cli_names_the_flags_in_a_value_range_warning(tmp_path, capsys):
    _bad_inputs(tmp_path)
    assert main(["memorization", "--samples", str(tmp_path / "s01.npy"), "--train", str(tmp_path / "t11.npy"),
                 "--bootstrap", "0", "--no-progress"]) == 0
    assert "kfm memorization: warning: --samples spans [" in capsys.readouterr().err


def test_cli_backend_faiss_without_faiss_names_the_flag_before_the_audit(tmp_path, capsys, monkeypatch):
    # "ImportError: backend='faiss' needs faiss" came as a traceback, once both sets had loaded
    _bad_inputs(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)   # import faiss fails, as where it is missing
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--backend", "faiss", "--no-progress"]) == 2
    assert capsys.readouterr().err == ("kfm memorization: error: --backend faiss needs the faiss-cpu package: "
                                       "pip install faiss-cpu (or pip install kinetic_fm[faiss])\n")


@pytest.mark.parametrize("label", ["label", "y", "class", "Target"])
def test_parquet_label_column_among_numeric_features_is_warned_of(tmp_path, label):
    # f0..f3 plus a class label, all numbers: read as (rows, 5) without a word, the label one more pixel
    import warnings

    import pandas as pd

    from kinetic_fm.data.arrays import load_array

    rng = np.random.default_rng(1)
    features = rng.integers(0, 256, size=(6, 4)).astype(np.float64)
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(4)]).assign(**{label: np.arange(6) % 3})
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.warns(UserWarning, match=rf"the column \['{label}'\] \(whole numbers, named like a class "
                      rf"label\) is read as a feature, one of 5 columns taken side by side; "
                      rf".*frame.drop\(columns=\['{label}'\]\)"):
        rows = load_array(tmp_path / "t.parquet")
    assert rows.tolist() == np.column_stack([features, np.arange(6) % 3]).tolist()   # behaviour kept: warned only
    # features alone, a label-named column of real values, and x beside y (a point) are read without a word
    others = {"features.parquet": pd.DataFrame(features, columns=[f"f{i}" for i in range(4)]),
              "real.parquet": pd.DataFrame({"f0": features[:, 0], "y": rng.normal(size=6)}),
              "points.parquet": pd.DataFrame({"x": np.arange(6.0), "y": np.arange(6.0) % 2})}
    for name, table in others.items():
        table.to_parquet(tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert load_array(tmp_path / name).tolist() == table.to_numpy().tolist()


def test_cli_names_the_label_column_read_as_a_feature(tmp_path, capsys):
    import pandas as pd

    rng = np.random.default_rng(2)
    pd.DataFrame(rng.normal(size=(5, 3)), columns=["a", "b", "c"]).assign(label=[0, 1, 0, 1, 1]).to_parquet(
        tmp_path / "s.parquet")
    np.save(tmp_path / "t.npy", rng.normal(size=(6, 4)))
    assert main(["memorization", "--samples", str(tmp_path / "s.parquet"), "--train", str(tmp_path / "t.npy"),
                 "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith(
        f"kfm memorization: warning: --samples {tmp_path / 's.parquet'}: the column ['label'] (whole numbers, named "
        "like a class label) is read as a feature, one of 4 columns")


def test_float64_arrays_beside_other_float_types_keep_their_precision(tmp_path, capsys):
    # a .npz/.pt of float64 items beside float32 labels (or float16 extras): each array keeps its own dtype, so
    # values 1e-9 apart, one float32 value, stay apart (cast to float32 the sample would sit on two equal items)
    import pandas as pd

    from kinetic_fm.data.arrays import load_array

    train = np.array([[1.0], [1.0 + 3e-9], [2.0], [4.0]])
    samples = np.array([[1.0 + 1e-9], [3.0]])
    np.savez(tmp_path / "train.npz", x=train, y=np.arange(4, dtype=np.float32), z=train.astype(np.float16))
    torch.save({"x": torch.from_numpy(samples), "y": torch.zeros(2), "h": torch.ones(2, dtype=torch.bfloat16)},
               tmp_path / "samples.pt")
    for path, key, want in ((tmp_path / "train.npz", "x", train), (tmp_path / "samples.pt", "x", samples)):
        got = load_array(path, key)
        assert got.dtype == torch.float64 and np.array_equal(got.numpy(), want)        # bit for bit
    assert load_array(tmp_path / "train.npz", "y").dtype == torch.float32
    assert load_array(tmp_path / "train.npz", "z").dtype == torch.float16
    assert load_array(tmp_path / "samples.pt", "h").dtype == torch.bfloat16
    out = tmp_path / "table.csv"
    assert main(["memorization", "--samples", str(tmp_path / "samples.pt"), "--key", "x", "--train",
                 str(tmp_path / "train.npz"), "--train-key", "x", "--bootstrap", "0", "--no-progress",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    table = pd.read_csv(out)
    d = np.abs(samples - train.T)                                     # float64 brute force
    d.sort(axis=1)
    np.testing.assert_allclose(table["d1"], d[:, 0], rtol=1e-12)
    np.testing.assert_allclose(table["ratio"], d[:, 0] / d[:, 1], rtol=1e-6)   # 0.5, not 0 (memorized)
    assert table["memorized"].tolist() == [False, False]


def test_nested_lists_of_python_floats_are_read_as_float64_as_numpy_reads_them():
    # torch.as_tensor reads Python floats as float32: 1 + 1e-12 became 1.0, so the two training items
    # 1 and 1 + 1e-12 merged (a duplicate warning, d2 = d1 = 0) and the metric's float64 ratios were moot
    train = [[0.0], [1.0], [1.0 + 1e-12], [5.0]]
    samples = [[1.0 + 1e-12], [3.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no duplicate-rows warning: the items are distinct
        from_lists = kfm.memorization(samples, train, bootstrap=0)
    from_arrays = kfm.memorization(np.array(samples), np.array(train), bootstrap=0)
    for field in ("d1", "d2", "ratio", "nearest", "memorized"):
        assert torch.equal(getattr(from_lists, field), getattr(from_arrays, field)), field
    assert from_lists.d1.tolist() == [0.0, 3.0 - (1.0 + 1e-12)] and from_lists.nearest.tolist() == [2, 2]
    assert from_lists.d2[0].item() == pytest.approx(1e-12, rel=1e-3)   # (1 + 1e-12) − 1 in float64
    found = kfm.nearest_neighbors(samples, train, 2)
    assert found.indices[0].tolist() == [2, 1] and found.distances[0, 1].item() == pytest.approx(1e-12, rel=1e-3)
    # integers and bools stay what NumPy makes of them (exact either way)
    ints = kfm.memorization([[1, 2]], [[0, 0], [1, 1], [4, 4]], bootstrap=0)
    # √5 within an ulp (torch's root may round the other way than math's); float32 would be ~1e-8 off
    assert ints.d1.tolist() == [1.0] and abs(ints.d2.item() - math.sqrt(5.0)) <= math.ulp(math.sqrt(5.0))


@pytest.mark.parametrize("label", ["label", "y", "class", "Target"])
def test_dataframe_label_column_is_warned_of_as_in_a_parquet_file(tmp_path, label):
    # the same table read from Parquet was warned of (load_array); passed as a DataFrame, silently one more feature
    from kinetic_fm.data.arrays import load_array

    rng = np.random.default_rng(3)
    features = rng.integers(0, 256, size=(6, 4)).astype(np.float64)
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(4)]).assign(**{label: np.arange(6) % 3})
    train = pd.DataFrame(rng.normal(size=(8, 5)), columns=[f"g{i}" for i in range(5)])
    frame.to_parquet(tmp_path / "s.parquet")
    with pytest.warns(UserWarning) as from_file:
        load_array(tmp_path / "s.parquet")
    with pytest.warns(UserWarning) as from_frame:
        report = kfm.memorization(frame, train, bootstrap=0)
    assert [w.filename for w in from_frame] == [__file__]          # pointed at the call, not inside kinetic_fm
    said = [str(w.message) for w in from_frame]
    assert len(said) == 1 and said[0].startswith("samples: ")
    common = rf"the column \['{label}'\] \(whole numbers, named like a class label\) is read as a feature, one of 5 "
    assert re.match(rf"samples: {common}.*frame.drop\(columns=\['{label}'\]\)", said[0])
    assert re.match(rf"{re.escape(str(tmp_path / 's.parquet'))}: {common}", str(from_file[0].message))
    # one rule, one sentence: the two warnings differ only in what leads them and the remedy
    assert said[0].split("; to leave it out")[0][len("samples: "):] == \
        str(from_file[0].message).split("; to leave it out")[0][len(str(tmp_path / "s.parquet")) + 2:]
    assert report.d1.tolist() == kfm.memorization(frame.to_numpy(), train.to_numpy(), bootstrap=0).d1.tolist()
    with pytest.warns(UserWarning, match=rf"^train: {common}"):
        kfm.memorization(train, frame, bootstrap=0)
    with pytest.warns(UserWarning, match=rf"^train: {common}"):
        kfm.EmpiricalFlow(frame)
    # features alone, a label-named column of real values, and x beside y (a point) are read without a word
    for quiet in (pd.DataFrame(features, columns=[f"f{i}" for i in range(4)]),
                  pd.DataFrame({"f0": features[:, 0], "y": rng.normal(size=6)}),
                  pd.DataFrame({"x": np.arange(6.0), "y": np.arange(6.0) % 2})):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kfm.nearest_neighbors(quiet, quiet, 1)


def test_cli_warns_of_a_tree_of_splits_given_by_its_path_as_by_folder_spec(tmp_path, capsys):
    # --train folder:PATH warned of train/<class>/, test/<class>/ folders; --train PATH (loaded without labels)
    # audited the samples against every split, test images counted as training items, without a word
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, name in enumerate(("train/cat", "train/dog", "test/cat", "test/dog")):
        for tree in ("splits", "classes"):
            folder = tmp_path / tree / (name if tree == "splits" else name.replace("/", "_"))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    np.save(tmp_path / "s.npy", rng.uniform(-1, 1, (3, 3, 4, 4)).astype(np.float32))
    for train, words in ((tmp_path / "splits", "the folders"), (f"folder:{tmp_path / 'splits'}", "the class folders"),
                         (tmp_path / "classes", None), (f"folder:{tmp_path / 'classes'}", None)):
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(train), "--bootstrap", "0",
                     "--no-progress"]) == 0
        err = capsys.readouterr().err
        warned = f"warning: --train {tmp_path / 'splits'}: {words} ('test', 'train') are named like splits"
        assert (warned in err) if words else "named like splits" not in err, (train, err)
        assert err.count("named like splits") == (1 if words else 0)


def test_cli_names_the_spec_a_misspelt_folder_spec_meant(tmp_path, capsys):
    from kinetic_fm.data.registry import DATA_SPECS, parse_spec

    # --train folde:PATH (or Folder:, cifar:) is no spec, so it was read as a file's name: "no such file:
    # folde:/x", not a word of the spec it meant
    np.save(tmp_path / "s.npy", np.zeros((2, 4), np.float32))
    for train, meant in (("folde:/x", "folder:/x"), ("Folder:/x", "folder:/x"), ("cifar:/d", "cifar10:/d")):
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", train, "--no-progress"]) == 2
        err = capsys.readouterr().err
        # the words parse_spec refuses the same spec with, after the file's name
        with pytest.raises(ValueError) as refused:
            parse_spec(train)
        hint = f" (did you mean {meant}?); expected one of {', '.join(DATA_SPECS)}"
        assert str(refused.value) == f"unknown data spec {train!r}{hint}"
        assert f"no such file: {train}, nor a data spec{hint}" in err, err
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", "/no/such.npy"]) == 2
    assert "did you mean" not in capsys.readouterr().err                  # a path that is none: the path alone


@pytest.mark.parametrize("text, said", [
    ('{\n  "model": {\n    "kind": "mlp",\n',
     r"its config.json is not valid JSON \(.*\); was it edited or cut short\? Put back a good copy of it, or pass "
     r"the training items themselves"),
    ('{"model": {}, "data_shape": [4, 2]}', r"its config.json lacks 'train'; was it edited\? Put back a good copy"),
    ('{"architectures": ["CLIPModel"]}', r"its config.json names no data spec \(kfm train writes one\)"),
])
def test_a_run_folder_s_damaged_config_json_is_named_as_damaged(tmp_path, capsys, text, said):
    # a damaged config.json was said to name "no data spec (kfm train writes one)", as another program's is
    # (helper-273); "--train RUN: RUN/config.json: the training run's config.json ..." named the file after the
    # flag's value, where --train's other refusals say "--train RUN: its config.json ..." (helper-292)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    np.save(tmp_path / "s.npy", np.zeros((4, 2), dtype=np.float32))
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(run), "--bootstrap", "0",
                 "--no-progress", "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"kfm memorization: error: --train {re.escape(str(run))}: {said}.*\n", err), err


def test_cli_names_a_missing_file_as_typed(tmp_path, monkeypatch, capsys):
    # "--train ./a:b" said "no such file: a:b": Path drops "./", which "a:b" needs to be read as a path (helper-273)
    np.save(tmp_path / "s.npy", np.zeros((2, 4), np.float32))
    monkeypatch.chdir(tmp_path)
    for train in ("./a:b", "./missing.npy"):
        assert main(["memorization", "--samples", "s.npy", "--train", train, "--no-progress"]) == 2
        assert capsys.readouterr().err == f"kfm memorization: error: --train: no such file: {train}\n"


def test_a_spec_s_kind_and_colon_read_as_the_spec_even_where_a_file_is_so_named(tmp_path, capsys, monkeypatch):
    # --train folder:t.npy read the file named "folder:t.npy" where one existed, while parse_spec (kfm train
    # --data) read the spec: one rule now, the spec; the file is given by its path (helper-273)
    from kinetic_fm.commands._rows import is_spec
    from kinetic_fm.data.registry import parse_spec

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "s.npy", np.zeros((2, 4), np.float32))
    np.save(tmp_path / "folder:t.npy", np.ones((3, 4), np.float32))
    assert is_spec("folder:t.npy", True) and parse_spec("folder:t.npy") == ("folder", "t.npy")
    assert not is_spec("./folder:t.npy", True)
    assert main(["memorization", "--samples", "s.npy", "--train", "folder:t.npy", "--no-progress"]) == 2
    assert "image source not found: t.npy" in capsys.readouterr().err   # the spec's path, which is not here
    assert main(["memorization", "--samples", "s.npy", "--train", "./folder:t.npy", "--bootstrap", "0",
                 "--no-progress", "--out", "t.csv"]) == 0                # the file, by its path
    assert len(pd.read_csv(tmp_path / "t.csv")) == 2


def test_cli_says_to_give_the_split_s_folder_as_the_path(tmp_path, capsys):
    # the split-folders warning said "subdir='train'", which no kfm flag takes (helper-273); the split's own folder
    from PIL import Image

    for name in ("train/cat/0.png", "train/dog/1.png", "test/cat/2.png"):
        (tmp_path / "splits" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "splits" / name)
    np.save(tmp_path / "s.npy", np.zeros((2, 3, 4, 4), np.float32))
    for train in (str(tmp_path / "splits"), f"folder:{tmp_path / 'splits'}"):
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", train, "--bootstrap", "0",
                     "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert f"(load {tmp_path / 'splits'}/train (the split's own folder))\n" in err, err
        assert "subdir" not in err


# --- the report records the space it was measured in (helper-321) ------------------------------

def _first_half(x):
    return x[:, :2]


def test_the_report_records_its_space_named_as_local_support_names_it():
    from kinetic_fm.metrics.density import local_support
    from kinetic_fm.metrics.features import PrincipalSpace, feature_space

    g = torch.Generator().manual_seed(0)
    samples, train = torch.randn(6, 4, generator=g), torch.randn(30, 4, generator=g)
    net = torch.nn.Linear(4, 3)
    principal = PrincipalSpace.fit(train, 2)
    named = feature_space(_first_half, name="half")
    for space, name in ((None, "pixels"), (_first_half, "_first_half"), (lambda x: x, "<lambda>"),
                        (net, "Linear"), (principal, "pixels-PCA2"), (named, "half")):
        report = kfm.memorization(samples, train, bootstrap=0, space=space)
        assert report.space == name == local_support(samples, train, space=space).space
        assert f"space={name!r}" in repr(report)
        assert str(report).endswith(f"samples with d1/d2 < 0.3333 in {name}")
        # the space is the report's, not a column (reviewer-328: joined, a constant column misled)
        assert list(report.to_frame().columns) == ["sample", "d1", "d2", "ratio", "nearest", "memorized"]


def test_reports_in_two_spaces_join_in_one_table_each_under_its_space():
    from kinetic_fm.metrics.table import per_sample_table

    g = torch.Generator().manual_seed(1)
    samples, train = torch.randn(5, 4, generator=g), torch.randn(20, 4, generator=g)
    pixels = kfm.memorization(samples, train, bootstrap=0)
    half = kfm.memorization(samples, train, bootstrap=0, space=_first_half)
    table = per_sample_table(pixels, half, seeds=[3, 1, 4, 15, 9])
    assert table["seed"].tolist() == [3, 1, 4, 15, 9]
    for report in (pixels, half):
        for column in ("d1", "d2", "ratio", "nearest", "memorized"):
            assert table[f"{report.space}_{column}"].tolist() == report.to_frame()[column].tolist()
    # no column says one space for every row: the memorization columns are in pixels, the support's in half
    from kinetic_fm.metrics.density import local_support
    joined = per_sample_table(pixels, local_support(samples, train, k=2, ks=(), space=_first_half),
                              seeds=range(5))
    assert not [column for column in joined.columns if column.endswith("space")]
    assert not [column for column in table.columns if column.endswith("space")]
    with pytest.raises(ValueError, match=r"column 'sample' appears in part 0 \(MemorizationReport\) and part 1"):
        per_sample_table(pixels, pixels, seeds=range(5))             # one space twice: nothing tells them apart


def test_a_space_spec_string_is_refused_with_the_principal_space_that_spells_it():
    message = ("space must be a callable feature map or None, got str 'pca:5'; the CLI's --space pca:K is "
               "space=kinetic_fm.metrics.features.PrincipalSpace.fit(train, K) here (residual=True for "
               "pca:K+residual)")
    with pytest.raises(TypeError, match="^" + re.escape(message) + "$"):
        kfm.memorization(torch.randn(4, 6), torch.randn(6, 6), bootstrap=0, space="pca:5")
