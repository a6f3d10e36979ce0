"""Kinetic Path Energy against references made without the sampler: a float64 SciPy integration that
carries the energy as extra ODE components (under KTS, where no closed form exists), the closed form
of the straight-line Gaussian path, and the exact integral of a power that is a polynomial in t.

Each solver × quadrature × grid is checked for the order its quadrature should give, each step's
increment against the energy between its own time stamps, and the bookkeeping around a sample that
fails mid-run, dopri5's rejected tries and half-precision states."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import kinetic_fm as kfm

FIXED = ["euler", "midpoint", "heun", "rk4", "rk4_38"]
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "rk4_38": 4}
MEAN, STD = np.array([2.0, -1.0, 0.5]), 0.5
KTS = kfm.KTS(alpha0=0.3, beta0=0.04, tau_split=0.6)   # linear launch, exponential landing: η continuous at τ


def _gaussian_velocity(x: np.ndarray, t: float) -> np.ndarray:
    """v(x, t) from N(0, I) to N(MEAN, STD² I), written out here in NumPy (not the package's field)."""
    rate = (t * STD**2 - (1 - t)) / ((1 - t) ** 2 + (t * STD) ** 2)
    return MEAN + rate * (x - t * MEAN)


def _closed_form_kpe(x0: torch.Tensor) -> torch.Tensor:
    """½∫‖ẋ‖² on x_t = tμ + s_t·x0: ½[‖μ‖² + 2(σ − 1)μ·x0 + (1 + σ² − πσ/2)‖x0‖²], (B,) float64."""
    z, mu = x0.double(), torch.from_numpy(MEAN)
    return 0.5 * ((mu**2).sum() + 2 * (STD - 1) * (z @ mu) + (1 + STD**2 - math.pi * STD / 2) * (z**2).sum(1))


def _shaped_reference(x0: torch.Tensor, gain, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(applied, raw, early) energies of dx/dt = η(t)·v(x, t) per sample: the ODE with the two
    energies as extra components, integrated by SciPy's DOP853 in float64 on [0, τ] and [τ, 1]
    (η has a kink at τ) at tolerances far below any error asserted on."""
    from scipy.integrate import solve_ivp

    def rhs(t, y):
        eta, v = gain(t), _gaussian_velocity(y[:3], t)
        return np.concatenate([eta * v, [0.5 * eta**2 * v @ v, 0.5 * v @ v]])

    rows = []
    for start in x0.numpy():
        y = np.concatenate([start, [0.0, 0.0]])
        early = None
        for a, b in ((0.0, tau), (tau, 1.0)):
            y = solve_ivp(rhs, (a, b), y, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
            early = y[3] if early is None else early
        rows.append((y[3], y[4], early))
    applied, raw, early = torch.tensor(rows, dtype=torch.float64).T
    return applied, raw, early


def _applied_energy_until(start: torch.Tensor, t_end: float) -> float:
    """½∫₀^t_end η²‖v‖² dt of one sample under ``KTS`` (t_end < τ), as in :func:`_shaped_reference`."""
    from scipy.integrate import solve_ivp

    def rhs(t, y):
        eta, v = float(KTS(t)), _gaussian_velocity(y[:3], t)
        return np.concatenate([eta * v, [0.5 * eta**2 * v @ v]])

    y0 = np.concatenate([start.numpy(), [0.0]])
    return float(solve_ivp(rhs, (0.0, t_end), y0, method="DOP853", rtol=1e-13, atol=1e-13).y[3, -1])


@pytest.fixture(scope="module")
def x0():
    return kfm.noise(range(4), (3,), dtype=torch.float64)


@pytest.fixture(scope="module")
def shaped_reference(x0):
    return _shaped_reference(x0, lambda t: float(KTS(t)), KTS.tau_split)


def _orders(errors: list[float]) -> list[float]:
    return [math.log2(coarse / fine) for coarse, fine in zip(errors, errors[1:])]


@pytest.mark.parametrize("quadrature", ["solver", "left"])
@pytest.mark.parametrize("solver", FIXED)
def test_applied_and_raw_energy_under_kts_converge_at_their_quadratures_order(solver, quadrature, x0,
                                                                              shaped_reference):
    # uniform grids of 10·2^k steps hold τ = 0.6 as a grid point: the solver's stage weights give
    # its order for both energies, the reference's left sum first order; early is exact at τ
    applied, raw, early = shaped_reference
    expected = ORDER[solver] if quadrature == "solver" else 1
    errors = {"kpe": [], "kpe_raw": [], "early": []}
    for steps in (10, 20, 40, 80):
        res = kfm.sample(lambda x, t: torch.from_numpy(np.stack([_gaussian_velocity(r, s) for r, s in
                                                                   zip(x.numpy(), t.tolist())])),
                         x0, steps=steps, solver=solver, shaping=KTS, quadrature=quadrature)
        for name, exact in (("kpe", applied), ("kpe_raw", raw), ("early", early)):
            errors[name].append((getattr(res, name) - exact).abs().max().item())
    for name, errs in errors.items():
        assert _orders(errs)[-2:] == pytest.approx([expected] * 2, abs=0.3), (name, errs)


@pytest.mark.parametrize("solver", FIXED)
def test_kpe_converges_at_the_solver_order_on_a_cosine_grid(solver, x0):
    # a non-uniform grid keeps the order: steps short at both ends, long in the middle
    exact = _closed_form_kpe(x0)
    field = kfm.GaussianTarget(torch.from_numpy(MEAN), STD)
    errors = [(kfm.sample(field, x0, steps=n, grid="cosine", solver=solver).kpe - exact).abs().max().item()
              for n in (10, 20, 40, 80)]
    assert _orders(errors)[-2:] == pytest.approx([ORDER[solver]] * 2, abs=0.3), errors


def test_dopri5_kpe_under_kts_follows_its_tolerance(x0, shaped_reference):
    applied, raw, early = shaped_reference
    field = kfm.GaussianTarget(torch.from_numpy(MEAN), STD)
    for tol, bound in ((1e-6, 1e-4), (1e-9, 1e-7)):
        res = kfm.sample(field, x0, solver="dopri5", shaping=KTS, rtol=tol, atol=tol)
        for name, exact in (("kpe", applied), ("kpe_raw", raw), ("early", early)):
            assert ((getattr(res, name) - exact).abs() / exact).max() < bound, (name, tol)


@pytest.mark.parametrize("solver", ["rk4", "rk4_38", "dopri5"])
def test_each_steps_increment_is_the_energy_between_its_own_time_stamps(solver):
    # v = t^p·c has power ½‖c‖² t^(2p) whatever x; rk4's and rk4_38's weights integrate cubics
    # exactly (p = 1), dopri5's quartics (p = 2): each increment must be the exact energy of
    # [times[k], times[k + 1]], which pins the stamps to the increments on a non-uniform grid
    c = torch.tensor([3.0, -4.0], dtype=torch.float64)
    p = 2 if solver == "dopri5" else 1
    grid = torch.tensor([0.0, 0.1, 0.15, 0.5, 0.55, 0.93, 1.0], dtype=torch.float64)
    kwargs = dict(rtol=1e-3, atol=1e-3, first_step=0.3) if solver == "dopri5" else dict(grid=grid)
    res = kfm.sample(lambda x, t: t[:, None] ** p * c, seeds=range(3), shape=(2,), dtype=torch.float64,
                     solver=solver, profile=True, **kwargs)
    times = res.times if res.times.dim() == 2 else res.times.expand(3, -1)
    for b in range(3):
        n = res.steps if isinstance(res.steps, int) else int(res.steps[b])
        t = times[b, : n + 1]
        exact = 12.5 * (t[1:] ** (2 * p + 1) - t[:-1] ** (2 * p + 1)) / (2 * p + 1)
        torch.testing.assert_close(res.profile[b, :n], exact, rtol=1e-13, atol=1e-16)
        assert res.peak_time[b] == t[int(exact.argmax())]
    torch.testing.assert_close(res.kpe, torch.full((3,), 12.5 / (2 * p + 1), dtype=torch.float64), rtol=1e-13, atol=0)


def _fails_after(t_bad: float, marked_row: int):
    """The Gaussian field on the first 3 coordinates; a 4th coordinate holds the row's index
    (velocity 0), and the field is NaN from t_bad on for the row marked ``marked_row``."""
    field = kfm.GaussianTarget(torch.from_numpy(MEAN), STD)

    def velocity(x, t):
        v = torch.cat([field(x[:, :3], t), torch.zeros_like(x[:, 3:])], dim=1)
        bad = (x[:, 3] == marked_row) & (t >= t_bad)
        return torch.where(bad[:, None], torch.nan, v)
    return velocity


@pytest.mark.parametrize("solver", [*FIXED, "dopri5"])
def test_a_sample_failing_mid_run_leaves_every_other_sample_bit_identical(solver, x0):
    start = torch.cat([x0, torch.arange(4, dtype=torch.float64)[:, None]], dim=1)
    steps = {} if solver == "dopri5" else {"steps": 16}
    clean = kfm.sample(_fails_after(2.0, 2), start, solver=solver, shaping=KTS, profile=True, **steps)
    res = kfm.sample(_fails_after(0.45, 2), start, solver=solver, shaping=KTS, profile=True, on_nonfinite="flag",
                     **steps)
    assert res.nonfinite.tolist() == [False, False, True, False]
    others = torch.tensor([0, 1, 3])
    for name in ("x", "kpe", "kpe_raw", "early", "late", "peak", "peak_time"):
        assert torch.equal(getattr(res, name)[others], getattr(clean, name)[others]), name
        assert torch.isnan(getattr(res, name)[2]).all(), name
    width = res.profile.shape[1] if solver != "dopri5" else int(clean.steps.max())
    assert torch.equal(res.profile[others, :width], clean.profile[others, :width])
    # what the failing sample spent before it failed is known, and the same as in the clean run
    # (dopri5 retried its way up to t = 0.45 on steps of its own, so only its total up to there)
    # (a fixed step with a stage at t ≥ 0.45 is unknown as a whole: midpoint's from t = 7/16 on)
    # dopri5's flagged sample stops at its last accepted time, a hair below 0.45
    known = float(res.times[2, int(res.steps[2])]) if solver == "dopri5" else 0.4375
    before = res.energy_between(0.0, known)[2]
    assert torch.isfinite(before) and torch.isnan(res.energy_between(0.45, 1.0)[2])
    if solver != "dopri5":
        assert torch.equal(res.energy_between(0.0, known), clean.energy_between(0.0, known))
    else:
        assert 0.449 < known < 0.45
        # against the reference, not the clean run's energy_between(0, known): that shares out a long
        # step straddling 0.45 by its length, 2e-5 off even at rtol = 1e-12
        assert before.item() == pytest.approx(_applied_energy_until(x0[2], known), rel=1e-4)


@pytest.mark.parametrize("shaping", [None, KTS])
def test_dopri5_rejected_tries_add_no_energy(shaping, x0, shaped_reference):
    # a first try over the whole interval is rejected down to tolerance: every try costs 6
    # evaluations (FSAL) and with first_step given there is no starting probe, so nfe = 1 + 6·tries
    field = kfm.GaussianTarget(torch.from_numpy(MEAN), STD)
    res = kfm.sample(field, x0, solver="dopri5", shaping=shaping, first_step=1.0, rtol=1e-9, atol=1e-9,
                     profile=True)
    tries = (res.nfe - 1) // 6
    assert (tries > res.steps).all()                                   # some tries were rejected
    exact = _closed_form_kpe(x0) if shaping is None else shaped_reference[0]
    assert ((res.kpe - exact).abs() / exact).max() < 1e-7
    torch.testing.assert_close(res.profile.sum(1), res.kpe, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("solver", FIXED)
def test_the_energy_of_an_exactly_held_velocity_does_not_depend_on_the_state_dtype(solver, dtype):
    # v = (3, −4) is exact in every dtype and its norm squares exactly (25), so a 16-bit or float32
    # state must give the float64 run's energies bit for bit, shaped or not, for any step count
    c = torch.tensor([3.0, -4.0])
    for steps, shaping in ((1, None), (7, KTS), (20, KTS)):
        runs = [kfm.sample(lambda x, t: c.to(x.dtype).expand_as(x), torch.zeros(3, 2, dtype=d), steps=steps,
                           solver=solver, shaping=shaping, profile=True) for d in (dtype, torch.float64)]
        for name in ("kpe", "kpe_raw", "early", "late", "peak", "peak_time", "profile"):
            assert torch.equal(getattr(runs[0], name), getattr(runs[1], name)), (name, steps)
        if shaping is None:   # one step: ½‖c‖² exactly, all of it after the split τ = 0.6 (step 0 < int(0.6) is none)
            # (to rounding: rk4's weights 1/6, 1/3 do not add up to 1 exactly in binary)
            torch.testing.assert_close(runs[0].kpe, torch.full((3,), 12.5, dtype=torch.float64), rtol=1e-15, atol=0)
            assert runs[0].early.tolist() == [0.0] * 3
            assert runs[0].times.tolist() == [0.0, 1.0] and runs[0].profile.shape == (3, 1)


def test_dopri5_energy_of_a_half_precision_state_follows_the_float64_run():
    c = torch.tensor([3.0, -4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # dopri5 on a half-precision state is warned of
        for dtype in (torch.float16, torch.bfloat16):
            res = kfm.sample(lambda x, t: c.to(x.dtype).expand_as(x), torch.zeros(3, 2, dtype=dtype), solver="dopri5")
            torch.testing.assert_close(res.kpe, torch.full((3,), 12.5, dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("rtol", [1e-3, 1e-5, 1e-8])
def test_dopri5_gives_the_straight_line_energy_of_a_point_target(rtol):
    # every path of PointTarget is the straight line x0 -> y at constant speed: KPE = ½‖y − x0‖²
    # and x(1) = y whatever the steps, as every fixed-step solver gives to 1e-15. dopri5's last
    # step read the field at t = 1, clamped to (y − x)/eps: 73/84 of its share (1 − b₆), 6e-6 of
    # the KPE at rtol = 1e-5 and 6e-7 at 1e-8, x 1e-6 from y; its end step has no stage at t = 1
    y = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x0 = kfm.noise(range(3), (3,), dtype=torch.float64)
    res = kfm.sample(kfm.PointTarget(y), x0, solver="dopri5", rtol=rtol, atol=rtol)
    exact = 0.5 * ((y - x0) ** 2).sum(1)
    assert ((res.kpe - exact) / exact).abs().max() < 1e-13
    assert ((res.kpe_raw - exact) / exact).abs().max() < 1e-13
    torch.testing.assert_close(res.x, y.expand_as(x0), rtol=0, atol=1e-13)


def test_dopri5_energy_of_a_point_target_under_a_constant_gain_follows_the_tolerance():
    # under η = g, y − x = (y − x0)(1 − t)^g:
    # KPE = ½g²‖y − x0‖² ∫(1 − t)^(2g − 2) dt = ½g²/(2g − 1)‖y − x0‖²
    # and x(1) = y (the integrand's derivative is singular at t = 1: the end step sees it)
    g = 1.5
    y = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x0 = kfm.noise(range(3), (3,), dtype=torch.float64)
    exact = 0.5 * g * g / (2 * g - 1) * ((y - x0) ** 2).sum(1)
    errors = []
    for rtol in (1e-5, 1e-7, 1e-9):
        res = kfm.sample(kfm.PointTarget(y), x0, solver="dopri5", rtol=rtol, atol=rtol, shaping=lambda t: g)
        errors.append(float(((res.kpe - exact) / exact).abs().max()))
        assert errors[-1] < 5 * rtol
        assert float((res.x - y).abs().max()) < 5 * rtol
    assert errors[0] > errors[1] > errors[2]


def test_dopri5_never_calls_a_field_singular_at_one_at_one():
    # the fixed-step solvers end such a field with a tableau without an end stage; dopri5 did call
    # it at t = 1 (its two c = 1 stages), where the field's clamp is not the trajectory's limit
    y = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    field = kfm.PointTarget(y)
    for singular in (True, False):
        times = []

        class Recorded:
            singular_at_one = singular

            def __call__(self, x, t):
                times.append(t.detach().clone().reshape(-1))
                return field(x, t)

        res = kfm.sample(Recorded(), seeds=range(5), shape=(3,), dtype=torch.float64, solver="dopri5", rtol=1e-6,
                         atol=1e-6)
        assert (res.times.nan_to_num(-1.0).max(dim=1).values == 1.0).all()   # every sample ran to t = 1
        latest = float(torch.cat(times).max())
        assert latest < 1.0 if singular else latest == 1.0


def test_dopri5_end_tableau_has_the_orders_it_claims():
    # c ≤ 8/9 < 1; order conditions in exact rationals: weights of order 3 (and Σ b c³ = 1/4, the
    # energy's quadrature), the embedded estimate of order 2 exactly, so b − b̂ measures h³
    from fractions import Fraction

    from kinetic_fm.sampling.tableau import DOPRI5, DOPRI5_END as tab

    def exact(v):
        return Fraction(v).limit_denominator(10**6)

    c = [exact(v) for v in tab.c]
    a = [[exact(v) for v in row] + [Fraction(0)] * (tab.stages - len(row)) for row in tab.a]
    assert max(c) < 1 and tab.c == DOPRI5.c[:5] and tab.a == DOPRI5.a[:5]
    assert all(sum(row) == ci for row, ci in zip(a, c))

    def conditions(b):
        ac = [sum(a[i][j] * c[j] for j in range(tab.stages)) for i in range(tab.stages)]
        return [sum(b) - 1, sum(bi * ci for bi, ci in zip(b, c)) - Fraction(1, 2),
                sum(bi * ci**2 for bi, ci in zip(b, c)) - Fraction(1, 3),
                sum(bi * v for bi, v in zip(b, ac)) - Fraction(1, 6),
                sum(bi * ci**3 for bi, ci in zip(b, c)) - Fraction(1, 4)]

    b = [exact(v) for v in tab.b]
    b_hat = [exact(v) - exact(e) for v, e in zip(tab.b, tab.b_error)]
    assert conditions(b) == [0] * 5 and all(bi >= 0 for bi in b)
    assert conditions(b_hat)[:2] == [0, 0] and conditions(b_hat)[2] != 0
    assert tab.order == 3
