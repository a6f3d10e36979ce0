"""KTS gain against an independent transcription of the paper's reference formulas."""
import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from kinetic_fm import KTS


def reference_eta(t, alpha0, beta0, tau, launch, landing, k):
    if t < tau:
        if launch == "linear":
            a = alpha0 * (1 - t / tau)
        elif launch == "constant":
            a = alpha0
        else:
            a = alpha0 * (math.exp(k * (1 - t / tau)) - 1) / (math.exp(k) - 1)
        return 1 + a
    s = (t - tau) / (1 - tau)
    if landing == "exponential":
        b = beta0 * (math.exp(k * s) - 1)
    elif landing == "linear":
        b = beta0 * s
    else:
        b = beta0
    return 1 - b


FORMS = [(l, d) for l in ("linear", "constant", "exponential") for d in ("exponential", "linear", "constant")]


@pytest.mark.parametrize("launch, landing", FORMS)
def test_gain_equals_reference_formulas(launch, landing):
    k = 2.5 if "exponential" in (launch, landing) else 3.0   # another k, where no form reads it, warns
    kts = KTS(alpha0=0.02, beta0=0.03, tau_split=0.4, launch=launch, landing=landing, k=k)
    ts = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ref = torch.tensor([reference_eta(t, 0.02, 0.03, 0.4, launch, landing, k) for t in ts.tolist()],
                       dtype=torch.float64)
    assert torch.allclose(kts(ts), ref, rtol=0, atol=1e-15)
    for t in (0.0, 0.2, 0.4, 0.7, 1.0):
        assert kts(t) == pytest.approx(reference_eta(t, 0.02, 0.03, 0.4, launch, landing, k), abs=1e-15)
        assert isinstance(kts(t), float)


def test_defaults_match_the_paper():
    kts = KTS()
    assert (kts.alpha0, kts.beta0, kts.tau_split, kts.launch, kts.landing, kts.k) == (0.01, 0.01, 0.6, "linear", "exponential", 3.0)
    assert kts(0.0) == pytest.approx(1.01)
    assert kts(1.0) == pytest.approx(1 - 0.01 * (math.e**3 - 1))


def test_exponential_landing_limit_is_named():
    limit = 1 / (math.e**3 - 1)
    KTS(beta0=limit * 0.999)
    with pytest.raises(ValueError, match=r"just below 1/\(e\^k − 1\) ≈ 0\.05239569\b"):
        KTS(beta0=0.06)
    with pytest.raises(ValueError):
        KTS(beta0=0.0524)                                # above the limit, though it printed as 0.0524
    KTS(beta0=0.05239569)                                # the printed value is admissible


@pytest.mark.parametrize("k", [0.5, 50.0, 696.0, 700.0])
def test_exponential_landing_limit_is_named_over_the_whole_range_of_k(k):
    """k may be anything in (0, 700] (`kfm sample --help`): the refusal names its bound there too.

    Up to k ≈ 695 the bound's rounding overflowed a float, so KTS(k=700) raised OverflowError
    (and `kfm sample --k 700` said the run did not fit in memory)."""
    with pytest.raises(ValueError, match=r"just below 1/\(e\^k − 1\) ≈ ") as refusal:
        KTS(beta0=2.0, k=k)
    printed = float(str(refusal.value).split("1/(e^k − 1) ≈ ", 1)[1].split(",")[0])
    limit = 1 / math.expm1(k)
    assert limit * (1 - 1e-6) <= printed < limit       # seven significant digits, rounded down
    KTS(beta0=printed, k=k)                            # the printed value is admissible


def test_a_beta0_just_below_the_limit_is_refused_unless_its_gain_at_one_is_positive_as_computed():
    # β0 < 1/(e^k − 1) is the exact condition, but 1 − β0·expm1(k) may round to 0 or below for the
    # largest float under it: accepted, then a sampler's stage at t = 1 raised "a gain must be > 0"
    rng = np.random.default_rng(0)
    refused = 0
    for k in rng.uniform(0.01, 20.0, 400):
        try:
            kts = KTS(beta0=math.nextafter(1 / math.expm1(k), 0.0), k=float(k))
        except ValueError as err:
            assert "largest admissible beta0" in str(err)
            refused += 1
            continue
        assert kts(1.0) > 0 and float(kts(torch.tensor([1.0], dtype=torch.float64))) > 0
    assert 0 < refused < 400


@pytest.mark.parametrize("k", [1e-6, 1e-12, 1e-15])
def test_the_float_gain_is_accurate_for_small_k_as_the_tensor_gain_is(k):
    # e^x − 1 as exp(x) − 1 cancels for small x (η(1) 0.445 for 0.5 at k = 1e-15); expm1 does not
    kts = KTS(alpha0=0.0, beta0=0.5 / math.expm1(k), k=k)
    assert kts(1.0) == pytest.approx(0.5, abs=1e-15)
    assert kts(1.0) == float(kts(torch.tensor([1.0], dtype=torch.float64)))
    launch = KTS(alpha0=1.0, beta0=0.0, launch="exponential", k=k * 1e-2)   # → the linear form 1 + (1 − t/τ)
    assert launch(0.3) == pytest.approx(1.5, abs=1e-7)
    # ∫η → 1 + α0·τ/2 − β0·(1 − τ)·k/2 (the linear forms' means), here 1 + 0.3 − 0.1
    both = KTS(alpha0=1.0, beta0=0.5 / math.expm1(k), launch="exponential", k=k)
    assert both.mean_gain() == pytest.approx(1.2, abs=1e-6)


def test_kts_errors_name_its_parameters():
    # the library's words (the command line's flags replace them there)
    with pytest.raises(ValueError, match=r"^beta0 = 0.2 makes η\(t\) ≤ 0 near t = 1 for the exponential landing "
                                         r"with k = 3; the largest admissible beta0 is just below 1/\(e\^k − 1\)"):
        KTS(beta0=0.2)
    with pytest.raises(ValueError, match=r"^beta0 must be >= 0 and below 1/\(e\^k − 1\) ≈ 0.1565176 for the "
                                         r"exponential landing with k = 2, got -0.1"):
        KTS(beta0=-0.1, k=2)


def test_a_k_that_the_default_beta0_cannot_take_says_beta0_was_the_default():
    # KTS(k=5) said "beta0 = 0.01 makes η(t) ≤ 0", a number the caller never gave; it also says the k that
    # this beta0 allows: β0 < 1/(e^k − 1) ⇔ k < ln(1 + 1/β0); one spelling of beta0 throughout (it said "1/β0")
    from kinetic_fm.sampling.shaping import InadmissibleBeta0Error

    with pytest.raises(InadmissibleBeta0Error) as default:
        KTS(k=5)
    assert 0.006783654 < 1 / math.expm1(5) < 0.006783655 and 4.61512 < math.log1p(100) < 4.615121
    consequence = (" makes η(t) ≤ 0 near t = 1 for the exponential landing with k = 5; the largest admissible beta0 "
                   "is just below 1/(e^k − 1) ≈ 0.006783654, and at this beta0 the rate (k) must stay below "
                   "ln(1 + 1 / beta0) ≈ 4.61512")
    assert str(default.value) == f"beta0 = 0.01 (the default){consequence}"
    # the parts, for a caller that names the value its own way (kfm sample: "the default --beta0 0.01")
    assert (default.value.beta0, default.value.is_default, default.value.consequence) == (0.01, True, consequence)
    again = pickle.loads(pickle.dumps(default.value))
    assert (type(again), str(again), again.consequence) == (InadmissibleBeta0Error, str(default.value), consequence)
    with pytest.raises(ValueError, match=r"^beta0 = 0.02 makes .* below ln\(1 \+ 1 / beta0\) ≈ 3.931825$") as caught:
        KTS(beta0=0.02, k=5)
    limit = float(str(caught.value).rsplit("≈ ", 1)[1])
    assert limit < math.log1p(1 / 0.02) < limit + 1e-6   # rounded down: the printed k is itself admissible
    KTS(beta0=0.02, k=limit)
    KTS(k=4.61512)


@pytest.mark.parametrize("landing", ["linear", "constant"])
def test_linear_and_constant_landing_limit_is_one(landing):
    KTS(beta0=0.99, landing=landing)
    with pytest.raises(ValueError, match="largest admissible beta0 is just below 1"):
        KTS(beta0=1.0, landing=landing)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tau_split": 0.0}, "tau_split"),
        ({"tau_split": 1.0}, "tau_split"),
        ({"tau_split": -0.2}, "tau_split"),
        ({"alpha0": -0.01}, "alpha0"),
        ({"beta0": -0.01}, "beta0"),
        ({"k": 0.0}, r"k must lie in \(0, 700\]"),
        ({"k": 800.0}, r"k must lie in \(0, 700\]"),
        ({"k": 0.0, "launch": "exponential", "landing": "linear"}, r"k must lie in \(0, 700\]"),
        ({"launch": "cubic"}, "launch"),
        ({"landing": "cubic"}, "landing"),
        ({"alpha0": float("nan")}, "alpha0"),
        ({"alpha0": 1e308}, r"alpha0 must lie in \[0, 1e\+06\]"),   # overflowed inside the solver
        ({"renormalize": "no"}, "renormalize must be True or False, got 'no'"),  # was read as True
        ({"renormalize": 1}, "renormalize must be True or False"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KTS(**kwargs)


@pytest.mark.parametrize("launch, landing", FORMS)
def test_renormalized_gain_integrates_to_one(launch, landing):
    kts = KTS(alpha0=0.05, beta0=0.02, launch=launch, landing=landing, renormalize=True)
    # fine trapezoid on each side of the possible jump at tau
    tau = kts.tau_split
    left = torch.linspace(0, tau, 200_001, dtype=torch.float64)[:-1]
    right = torch.linspace(tau, 1, 200_001, dtype=torch.float64)
    left_val = torch.cat([kts(left), torch.tensor([kts(tau - 1e-15)], dtype=torch.float64)])
    left_t = torch.cat([left, torch.tensor([tau], dtype=torch.float64)])
    integral = torch.trapezoid(left_val, left_t) + torch.trapezoid(kts(right), right)
    assert integral.item() == pytest.approx(1.0, abs=1e-8)
    plain = KTS(alpha0=0.05, beta0=0.02, launch=launch, landing=landing)
    assert kts(0.3) == pytest.approx(plain(0.3) / plain.mean_gain())


@pytest.mark.parametrize("launch, landing", FORMS)
def test_integer_and_numpy_times_give_the_float_gain(launch, landing):
    # in an integer tensor the constant forms' full_like truncated α0 and β0 to 0 (η = 1, 1)

    kts = KTS(alpha0=0.1, beta0=0.02, launch=launch, landing=landing)
    expected = [reference_eta(t, 0.1, 0.02, 0.6, launch, landing, 3.0) for t in (0.0, 1.0)]
    assert kts(torch.tensor([0, 1])).tolist() == pytest.approx(expected, abs=1e-15)
    assert kts(np.array([0.0, 1.0])).tolist() == pytest.approx(expected, abs=1e-15)
    assert kts(np.float32(0.0)) == pytest.approx(expected[0]) and kts(torch.tensor(1.0)) == pytest.approx(expected[1])


@pytest.mark.parametrize("t", [1.5, -0.1, float("nan"), "0.3", True, None])
def test_a_time_outside_zero_one_or_not_a_number_is_refused(t):
    # kts(1.5) extrapolated the landing to a negative gain
    with pytest.raises(ValueError, match=r"t must be a real number in \[0, 1\]"):
        KTS()(t)
    # alpha and beta promise the same range: beta(1.5) extrapolated past the brake's end,
    # alpha(-0.1) past its start, and NaN came back as NaN
    for part in (KTS().alpha, KTS().beta):
        with pytest.raises(ValueError, match=r"t must be a real number in \[0, 1\], got"):
            part(t)


@pytest.mark.parametrize("launch, landing", FORMS)
def test_alpha_and_beta_are_the_gains_parts(launch, landing):
    k = 2.5 if "exponential" in (launch, landing) else 3.0   # another k, where no form reads it, warns
    kts = KTS(alpha0=0.02, beta0=0.03, tau_split=0.4, launch=launch, landing=landing, k=k)
    for t in (0.0, 0.2, 0.4, 0.7, 1.0, np.float64(0.3), torch.tensor(0.9)):
        assert 1.0 + kts.alpha(t) - kts.beta(t) == pytest.approx(
            reference_eta(float(t), 0.02, 0.03, 0.4, launch, landing, k), abs=1e-15)


@pytest.mark.parametrize("times", [torch.tensor([0.5, 1.5]), torch.tensor([-0.25, 0.5], dtype=torch.float16),
                                   torch.tensor([0.0, float("nan")]), torch.tensor([0, 2]),
                                   torch.tensor(1.0000001, dtype=torch.float64)])
def test_a_tensor_or_array_of_times_outside_zero_one_is_refused_too(times):
    # only a number was checked: kts(torch.tensor([1.5])) extrapolated the landing silently
    kts = KTS(alpha0=0.1, beta0=0.05)
    with pytest.raises(ValueError, match=r"t must hold times in \[0, 1\], got a tensor with 1 value\(s\) outside"):
        kts(times)
    if times.dim():
        with pytest.raises(ValueError, match=r"t must hold times in \[0, 1\]"):
            kts(times.numpy())


def test_the_unchecked_gain_is_the_gain_on_a_samplers_times():
    kts = KTS(alpha0=0.1, beta0=0.05, renormalize=True)
    times = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(kts.unchecked(times), kts(times))
    assert torch.equal(kts.unchecked(torch.tensor([0, 1])), kts(torch.tensor([0.0, 1.0], dtype=torch.float64)))
    assert kts.unchecked(torch.tensor([1.5])).shape == (1,)  # the caller vouches for the range


def test_parameters_may_be_numpy_numbers_or_zero_dimensional_tensors():

    plain = KTS(alpha0=0.02, beta0=0.01, tau_split=0.5, k=2.0)
    given = KTS(alpha0=torch.tensor(0.02, dtype=torch.float64), beta0=np.array(0.01), tau_split=np.float32(0.5),
                k=torch.tensor(2))
    assert given == plain and all(type(v) is float for v in (given.alpha0, given.beta0, given.tau_split, given.k))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kwargs", [{"beta0": 1e-6, "k": 12.0}, {"beta0": 1 - 1e-9, "landing": "constant"}])
def test_low_precision_times_get_the_float64_gain_rounded_once(dtype, kwargs):
    # expm1(12) overflowed float16 (η(1) = −inf for a valid gain), and 1 − β0 cancelled to 0 in float32
    kts = KTS(**kwargs)
    t = torch.tensor([0.0, 0.3, 0.9, 0.95, 1.0], dtype=torch.float64)
    low = kts(t.to(dtype))
    assert low.dtype == dtype
    assert torch.equal(low, kts(t.to(dtype).double()).to(dtype))
    if dtype == torch.float32:
        assert (low > 0).all()


def test_a_gain_is_built_under_any_default_device():
    # the η(1) check made a tensor on the default device and read it back: meta has no values
    with torch.device("meta"):
        kts = KTS(alpha0=0.02, beta0=0.03)
    assert kts(1.0) == pytest.approx(1 - 0.03 * math.expm1(3.0), rel=1e-15)


@pytest.mark.parametrize("alpha0,k", [(1e6, 700.0), (2e4, 700.0), (1e6, 697.0)])
def test_the_exponential_launch_stays_finite_at_the_largest_admissible_settings(alpha0, k):
    # α0·(e^{ku} − 1) overflowed before the division by e^k − 1 for k·u ≳ 709.8 − ln α0: η(0) was
    # inf (1 + α0 exactly); against the same formula in 50-digit arithmetic
    mpmath = pytest.importorskip("mpmath")
    kts = KTS(alpha0=alpha0, beta0=0.0, launch="exponential", k=k)
    times = [0.0, 0.001, 0.003, 0.1, 0.59]
    with mpmath.workdps(50):
        expected = [float(1 + alpha0 * mpmath.expm1(k * (1 - mpmath.mpf(t) / mpmath.mpf(0.6))) / mpmath.expm1(k))
                    for t in times]
    got = kts(torch.tensor(times, dtype=torch.float64)).tolist()
    # e^{ku} amplifies the rounding of k·u ≈ 700 by 700: a few 1e-14 relative
    assert got == pytest.approx(expected, rel=1e-12) and [kts(t) for t in times] == got
    assert math.isfinite(kts.mean_gain()) and kts(0.0) == 1.0 + alpha0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kwargs", [{"alpha0": 1e6}, {"alpha0": 0.3, "beta0": 0.04, "launch": "exponential"}])
def test_the_renormalized_gain_on_low_precision_times_is_rounded_once(dtype, kwargs):
    # η was rounded to the times' dtype and then divided by ∫η: twice rounded, and in float16 the
    # launch η = 1 + 1e6 overflowed to inf before the division brought it back to ≈ 3.3
    kts = KTS(**kwargs, renormalize=True)
    times = torch.tensor([0.0, 0.1, 0.3, 0.59, 0.6, 0.8, 1.0], dtype=torch.float64).to(dtype)
    by_hand = torch.tensor([reference_eta(float(t), kts.alpha0, kts.beta0, 0.6, kts.launch, kts.landing, 3.0)
                            for t in times.double()], dtype=torch.float64) / kts._mean_gain
    got = kts(times)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got, by_hand.to(dtype), rtol=0, atol=0)
    assert torch.equal(kts.unchecked(times), got)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha0": float("nan")}, r"alpha0 must be a finite number in \[0, 1e\+06\], got nan"),
    ({"alpha0": True}, r"alpha0 must be a finite number in \[0, 1e\+06\], got True"),
    ({"beta0": float("inf")}, r"beta0 must be a finite number >= 0 \(below 1/\(e\^k − 1\) for the exponential "
                              r"landing, 1 for the others\), got inf"),
    ({"tau_split": "0.5"}, r"tau_split must be a finite number in \(0, 1\), got '0.5'"),
    ({"k": float("nan")}, r"k must be a finite number in \(0, 700\], got nan"),
])
def test_a_parameter_that_is_not_a_finite_number_is_refused_with_its_range(kwargs, message):
    # "alpha0 must be a finite number, got nan" named the argument but not the values it may take
    with pytest.raises(ValueError, match=message):
        KTS(**kwargs)


@pytest.mark.parametrize("landing, limit", [("exponential", r"1/\(e\^k − 1\) ≈ 0.05239569 for the exponential landing "
                                                            r"with k = 3"),
                                            ("linear", "1 for the linear landing"),
                                            ("constant", "1 for the constant landing")])
def test_a_negative_beta0_is_refused_with_its_whole_range(landing, limit):
    # "beta0 must be >= 0" left out the upper end, which depends on the landing form and k
    with pytest.raises(ValueError, match=rf"beta0 must be >= 0 and below {limit}, got -0.01"):
        KTS(beta0=-0.01, landing=landing)


@pytest.mark.parametrize("kwargs, ignored", [
    ({"k": 5.0, "landing": "linear"}, True),
    ({"k": 5.0, "launch": "constant", "landing": "constant", "beta0": 0.5}, True),
    ({"k": 5.0, "beta0": 0.005}, False),                             # the default landing is exponential
    ({"k": 2.0, "launch": "exponential", "landing": "linear"}, False),
    ({"landing": "linear"}, False),                                  # k left at its default
])
def test_k_that_no_form_reads_is_said_to_be_ignored(kwargs, ignored):
    # KTS(k=5, landing="linear") gave the gain of k = 3 without a word (only `kfm sample --k` warned):
    # a sweep over k ran one gain under every value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kts = KTS(**kwargs)
    said = [str(w.message) for w in caught]
    assert len(said) == int(ignored), said
    if ignored:
        assert said[0].startswith("k applies to the exponential launch or landing only") and "k = 5" in said[0]
        assert caught[0].filename == __file__                        # points at the caller's line
        assert kts(0.7) == KTS(**{**kwargs, "k": 3.0})(0.7)            # and indeed no form reads it


# helper-226: beyond calling the gain, the solvers read a KTS's τ (stages on τ take η's sides, dopri5's
# steps land on it, the early/late split defaults to it); a function of the user's around the KTS lost
# all three without a word
HIDDEN = KTS(alpha0=0.3, beta0=0.02, tau_split=0.5, launch="constant", landing="constant")


def _hidden_settings():
    import kinetic_fm as kfm

    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    return x0, (lambda x, t: torch.cos(3 * t)[:, None] - x)


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4", "dopri5"])
def test_a_function_that_declares_its_kts_tau_samples_as_the_kts_does(solver):
    import kinetic_fm as kfm

    x0, velocity = _hidden_settings()
    settings = {} if solver == "dopri5" else {"steps": 10}
    reference = kfm.sample(velocity, x0, solver=solver, shaping=HIDDEN, profile=True, **settings)

    def gain(t):
        return HIDDEN(t)
    gain.tau_split = HIDDEN.tau_split
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # declared: no warning
        ours = kfm.sample(velocity, x0, solver=solver, shaping=gain, profile=True, **settings)
    assert ours.split == reference.split == 0.5
    for name in ("x", "kpe", "kpe_raw", "early", "late", "profile", "nfe"):
        assert torch.equal(torch.as_tensor(getattr(ours, name)), torch.as_tensor(getattr(reference, name))), name


@pytest.mark.parametrize("wrap", [
    lambda: (lambda t: HIDDEN(t)),                          # a global the code names
    lambda: (lambda t, k=HIDDEN: k(t)),                     # a default
    lambda: (lambda kts: (lambda t: kts(t)))(HIDDEN),       # a closure
    lambda: __import__("functools").partial(KTS.__call__, HIDDEN),
    lambda: HIDDEN.__call__,                                # a bound method
], ids=["global", "default", "closure", "partial", "method"])
def test_a_function_around_a_kts_that_hides_its_tau_is_warned_of(wrap):
    import kinetic_fm as kfm

    x0, velocity = _hidden_settings()
    reference = kfm.sample(velocity, x0, solver="rk4", steps=10, shaping=HIDDEN)
    with pytest.warns(UserWarning, match=r"around a KTS \(tau_split = 0.5\) that does not declare its tau_split.*"
                                         r"split defaults to 0.6.*f.tau_split = kts.tau_split") as caught:
        hidden = kfm.sample(velocity, x0, solver="rk4", steps=10, shaping=wrap())
    assert caught[0].filename == __file__
    # what the warning says: the split moved, and rk4's step ending on τ took the landing gain
    assert hidden.split == 0.6 and reference.split == 0.5
    assert (hidden.x - reference.x).abs().max() > 1e-3


def test_a_gain_without_a_kts_is_not_warned_of_and_a_declared_tau_out_of_range_is_refused():
    import kinetic_fm as kfm

    x0, velocity = _hidden_settings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = kfm.sample(velocity, x0, steps=4, shaping=lambda t: 1.0 + 0 * t)
    assert plain.split == 0.6

    def gain(t):
        return HIDDEN(t)
    for bad in (1.0, 0.0, float("nan"), "0.5"):
        gain.tau_split = bad
        with pytest.raises(ValueError, match=r"shaping declares tau_split = .*must be a number in \(0, 1\)"):
            kfm.sample(velocity, x0, steps=4, shaping=gain)


class _ClosedHandle:
    """An object every attribute read of which raises, ``__class__`` included (a closed remote handle)."""

    def __getattribute__(self, name):
        raise RuntimeError("remote handle closed")


@pytest.mark.parametrize("wrap", [
    lambda handle: (lambda t, h=handle: 1.0 + 0 * torch.as_tensor(t)),            # a default
    lambda handle: (lambda h: (lambda t: (h, 1.0 + 0 * torch.as_tensor(t))[1]))(handle),  # a closure
    lambda handle: __import__("functools").partial(lambda t, h: 1.0 + 0 * torch.as_tensor(t), h=handle),
], ids=["default", "closure", "partial"])
def test_a_gain_holding_an_object_that_cannot_be_looked_at_samples_as_before(wrap):
    # helper-227: the hidden-KTS check asked isinstance() of what the gain holds, which reads __class__:
    # an object raising there stopped kfm.sample, which ran such a gain before the check came
    import kinetic_fm as kfm

    x0, velocity = _hidden_settings()
    reference = kfm.sample(velocity, x0, steps=4, shaping=lambda t: 1.0 + 0 * torch.as_tensor(t))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # nothing to warn of: it holds no KTS
        held = kfm.sample(velocity, x0, steps=4, shaping=wrap(_ClosedHandle()))
    assert torch.equal(held.x, reference.x) and held.split == reference.split == 0.6


# a global KTS named eta beside a smooth gain of the same attribute name (a notebook's reused names)
eta = HIDDEN


def test_a_gain_that_reads_an_attribute_named_like_a_global_kts_is_not_warned_of():
    # helper-227: the check took every name in the code's co_names for a global it reads, attribute names
    # included: schedule.eta named the global KTS eta, and a smooth gain was warned of as one around it
    import types

    import kinetic_fm as kfm

    x0, velocity = _hidden_settings()
    schedule = types.SimpleNamespace(eta=lambda t: 1.0 + 0 * torch.as_tensor(t))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smooth = kfm.sample(velocity, x0, steps=4, shaping=lambda t: schedule.eta(t))
    assert smooth.split == 0.6
    with pytest.warns(UserWarning, match=r"around a KTS \(tau_split = 0.5\)"):     # the global itself: warned of
        kfm.sample(velocity, x0, steps=4, shaping=lambda t: eta(t))


class _GainObject:
    """A gain written as a class: ``__call__`` reads the KTS it holds as ``self.kts``."""

    def __init__(self, kts):
        self.kts = kts

    def __call__(self, t):
        return self.kts(t)

    def eta(self, t):
        return self.kts(t)


def _dataclass_gain():
    import dataclasses

    @dataclasses.dataclass
    class Gain:
        kts: KTS
        scale: float = 1.0

        def __call__(self, t):
            return self.scale * self.kts(t)
    return Gain(HIDDEN)


def _module_gain():
    class Gain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(1, 1)
            self.kts = HIDDEN

        def forward(self, t):
            return self.kts(t)
    return Gain()


@pytest.mark.parametrize("wrap", [
    lambda: _GainObject(HIDDEN),                    # an attribute of a callable object
    _dataclass_gain,                                # a dataclass field
    _module_gain,                                   # a plain attribute of an nn.Module
    lambda: _GainObject(HIDDEN).eta,                # a bound method whose object holds it
], ids=["object", "dataclass", "module", "method-of-holder"])
def test_a_callable_object_holding_a_kts_as_an_attribute_is_warned_of(wrap):
    # helper-239: the check looked inside functions, partials and bound methods only; a class with
    # __call__ (or a dataclass) whose self.kts is a KTS hid its tau_split from the solvers without a word
    import kinetic_fm as kfm

    x0, velocity = _hidden_settings()
    reference = kfm.sample(velocity, x0, solver="rk4", steps=10, shaping=HIDDEN)
    with pytest.warns(UserWarning, match=r"around a KTS \(tau_split = 0.5\) that does not declare its tau_split") \
            as caught:
        hidden = kfm.sample(velocity, x0, solver="rk4", steps=10, shaping=wrap())
    assert caught[0].filename == __file__
    assert hidden.split == 0.6 and (hidden.x - reference.x).abs().max() > 1e-3


class _PropertyGain:
    """A gain whose attribute is a property that raises: the check must not run it."""

    @property
    def kts(self):
        raise RuntimeError("a property ran")

    def __call__(self, t):
        return 1.0 + 0 * torch.as_tensor(t)


def test_a_callable_object_is_looked_at_without_running_its_code_and_one_level_deep():
    import kinetic_fm as kfm

    x0, velocity = _hidden_settings()
    reference = kfm.sample(velocity, x0, steps=4, shaping=lambda t: 1.0 + 0 * torch.as_tensor(t))
    declared = _GainObject(HIDDEN)
    declared.tau_split = HIDDEN.tau_split
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(kfm.sample(velocity, x0, steps=4, shaping=_PropertyGain()).x, reference.x)
        assert kfm.sample(velocity, x0, steps=4, shaping=declared).split == 0.5     # declares its τ: no warning
