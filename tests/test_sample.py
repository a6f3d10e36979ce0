"""kfm.sample against analytic solutions, torchdiffeq, and a transcription of the reference loop."""
import collections
import copy
import math
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import kinetic_fm as kfm
from kinetic_fm import GaussianTarget, PointTarget
from kinetic_fm.sampling.guards import StepLimitError

FIXED = ["euler", "midpoint", "heun", "rk4", "rk4_38"]
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "rk4_38": 4}


class TimeMLP(nn.Module):
    """A fixed random velocity net v(x, t) for parity tests (float64)."""

    def __init__(self, dim=3, width=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, dim))
        self.double()

    def forward(self, x, t):
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))


@pytest.fixture
def x0():
    return kfm.noise(range(16), (3,), dtype=torch.float64)


# --- analytic convergence -----------------------------------------------------------------
@pytest.mark.parametrize("solver", FIXED)
def test_kpe_converges_at_the_solver_order(solver, x0):
    field = GaussianTarget(mean=torch.tensor([2.0, -1.0, 0.5]), std=0.5)
    exact = field.kinetic_energy(x0)
    steps = [8, 16, 32, 64]
    errors = []
    for n in steps:
        res = kfm.sample(field, x0, steps=n, solver=solver)
        errors.append((res.kpe - exact).abs().max().item())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(ORDER[solver], abs=0.35), errors


def test_rk4_200_steps_is_within_1e8(x0):
    field = GaussianTarget(mean=1.5, std=0.3)
    res = kfm.sample(field, x0, steps=200, solver="rk4")
    rel = ((res.kpe - field.kinetic_energy(x0)) / field.kinetic_energy(x0)).abs().max()
    assert rel < 1e-8
    assert torch.allclose(res.x, field.trajectory(x0, 1.0), atol=1e-9)


def test_dopri5_accepts_a_first_step_of_the_whole_interval(x0):
    # first_step lies in (0, 1]: a step of 1 is tried (and rejected down to tolerance)
    field = GaussianTarget(mean=1.5, std=0.3)
    res = kfm.sample(field, x0, solver="dopri5", rtol=1e-8, atol=1e-8, first_step=1)
    assert torch.allclose(res.x, field.trajectory(x0, 1.0), atol=1e-6)


def test_dopri5_matches_the_analytic_solution(x0):
    field = GaussianTarget(mean=1.5, std=0.3)
    res = kfm.sample(field, x0, solver="dopri5", rtol=1e-8, atol=1e-8)
    assert torch.allclose(res.x, field.trajectory(x0, 1.0), atol=1e-6)
    assert torch.allclose(res.kpe, field.kinetic_energy(x0), rtol=1e-6)
    assert torch.allclose(res.kpe_raw, field.kinetic_energy(x0), rtol=1e-6)   # no gain: raw = applied
    assert res.nfe.shape == (16,) and (res.steps > 1).all()


@pytest.mark.parametrize("solver", ["euler", "heun", "dopri5"])
def test_peak_early_late_and_step_times_agree_with_the_profile(solver, x0):
    res = kfm.sample(GaussianTarget(mean=1.5, std=0.3), x0, steps=10, solver=solver, shaping=kfm.KTS(),
                     profile=True)
    rows = torch.arange(x0.shape[0])
    starts = res.times[rows, res.profile.argmax(1)] if res.times.dim() == 2 else res.times[res.profile.argmax(1)]
    assert torch.equal(res.peak, res.profile.max(1).values)
    assert torch.equal(res.peak_time, starts)                         # a step's increment sits at its start
    assert torch.allclose(res.early + res.late, res.kpe, rtol=1e-13)
    assert torch.allclose(res.profile.sum(1), res.kpe, rtol=1e-13)
    if solver == "dopri5":                                           # per-sample step times, NaN-padded
        assert res.times.shape == (x0.shape[0], int(res.steps.max()) + 1) and (res.times[:, 0] == 0).all()
        assert (res.times[rows, res.steps] == 1.0).all()
        for b in range(x0.shape[0]):
            walked = res.times[b, : int(res.steps[b]) + 1]
            assert (walked.diff() > 0).all() and torch.isnan(res.times[b, int(res.steps[b]) + 1:]).all()
    else:
        assert torch.equal(res.times, kfm.time_grid("uniform", 10).to(res.times.dtype))


@pytest.mark.parametrize("launch,landing", [("linear", "exponential"), ("constant", "constant")])
def test_dopri5_under_kts_meets_its_tolerance_across_the_kink_at_tau(launch, landing):
    # dx/dt = η(t)·(−c x) has x(1) = x0·exp(−c∫η) and energy ½∫η²c²‖x‖²; η has a kink at τ (a jump
    # for the constant forms). Stepping across it left x 2–15× rtol off; steps now land on τ.
    from scipy.integrate import quad

    c, rtol = 2.0, 1e-5
    kts = kfm.KTS(alpha0=0.3, beta0=0.04, tau_split=0.6, launch=launch, landing=landing)
    eta = lambda s: kts(s)                                            # noqa: E731
    gained = lambda s: quad(eta, 0, s, points=[0.6] if s > 0.6 else None, epsabs=1e-14)[0]  # noqa: E731
    x0 = torch.ones(1, 4, dtype=torch.float64)
    res = kfm.sample(lambda x, t: -c * x, x0, solver="dopri5", shaping=kts, rtol=rtol, atol=rtol * 1e-2,
                     profile=True)
    assert abs(float(res.x[0, 0]) - math.exp(-c * gained(1.0))) < rtol
    power = lambda s: 0.5 * eta(s) ** 2 * c**2 * 4 * math.exp(-2 * c * gained(s))  # noqa: E731
    early = quad(power, 0, 0.6, epsabs=1e-12)[0]
    late = quad(power, 0.6, 1, epsabs=1e-12)[0]
    # the energy is not error-controlled: its 5th-order quadrature on the accepted steps lands within a
    # few rtol; whole steps that straddled τ put 4–36 % of the late energy on the wrong side
    assert float(res.early[0]) == pytest.approx(early, rel=5 * rtol)
    assert float(res.late[0]) == pytest.approx(late, rel=5 * rtol)
    assert 0.6 in res.times[0].tolist()                                # a step boundary sits on τ
    # the raw energy ½∫‖v‖² of the unscaled velocity along the same (shaped) path
    raw_power = lambda s: 0.5 * c**2 * 4 * math.exp(-2 * c * gained(s))  # noqa: E731
    raw = quad(raw_power, 0, 0.6, epsabs=1e-12)[0] + quad(raw_power, 0.6, 1, epsabs=1e-12)[0]
    assert float(res.kpe_raw[0]) == pytest.approx(raw, rel=5 * rtol)
    assert abs(raw - early - late) > 100 * rtol * raw                  # raw and applied differ here


# scipy's RK45 is the same Dormand–Prince pair with the same controller (safety 0.9, factors in
# [0.2, 10], no growth on the step accepted after a rejection, exponent −1/5, rms error norm
# against atol + rtol·max(|x|, |x_new|)) and the same
# Hairer–Nørsett–Wanner starting step, integrating one sample: each sample's accepted step times,
# evaluation count and end point must be its. Times agree to ~1e-10, ~3e-6 at rtol = 1e-10 (the
# error estimate is a cancelling sum, rounded differently); a changed controller moves them by percents.
_SPIRAL = torch.tensor([[0.8, -3.0, 0.0], [3.0, 0.8, 0.0], [0.0, 0.0, -1.5]], dtype=torch.float64)


def _spiral(x, t):  # growing, rotating and decaying components, forced in time
    return x @ _SPIRAL.T + torch.stack([torch.sin(4 * t), torch.cos(3 * t), t * t], 1)


def _bump(x, t):  # a brief strong decay at t = 0.5: retried steps there often pass with a small error
    return -20 * torch.exp(-((t - 0.5) / 0.05) ** 2)[:, None] * x + torch.cos(5 * t)[:, None]


def _scipy_rk45(fun, y0, t_end, rtol, atol, first_step=None):
    from scipy.integrate import RK45

    kw = {} if first_step is None else {"first_step": first_step}
    solver = RK45(fun, 0.0, y0, t_end, rtol=rtol, atol=atol, **kw)
    times = [0.0]
    while solver.status == "running":
        solver.step()
        times.append(solver.t)
    return np.array(times), solver.y, solver.nfev


@pytest.mark.parametrize("field,rtol,atol", [(_spiral, 1e-6, 1e-8), (_spiral, 1e-3, 1e-5), (_bump, 1e-3, 1e-5),
                                             (_bump, 1e-5, 1e-7)], ids=["spiral", "spiral-loose", "bump", "bump-tight"])
def test_dopri5_takes_scipys_rk45_steps_sample_by_sample(field, rtol, atol):
    # while a step after a rejection could grow, the bump's samples took 4 to 44 % more evaluations,
    # and two of six stepped over the bump in 4 steps at rtol = 1e-3
    pytest.importorskip("scipy")
    x0 = kfm.noise(range(6), (3,), dtype=torch.float64)
    # split = 1: no step lands on the early/late split (RK45 has no such stop), so the controller is compared alone
    res = kfm.sample(field, x0, solver="dopri5", rtol=rtol, atol=atol, split=1.0)
    fun = lambda t, y: field(torch.from_numpy(y)[None], torch.tensor([t], dtype=torch.float64))[0].numpy()  # noqa: E731
    rejected = 0
    for b in range(x0.shape[0]):
        times, x1, nfev = _scipy_rk45(fun, x0[b].numpy(), 1.0, rtol, atol)
        assert int(res.steps[b]) == len(times) - 1 and int(res.nfe[b]) == nfev
        np.testing.assert_allclose(res.times[b, : len(times)].numpy(), times, rtol=1e-5, atol=0)
        # the bump's steps round ~1e-10 apart in time where |dx/dt| is ~1, moving x as much
        np.testing.assert_allclose(res.x[b].numpy(), x1, rtol=0, atol=1e-12 if field is _spiral else 1e-9)
        rejected += nfev - (2 + 6 * (len(times) - 1))
    assert rejected > 0                                               # the rejection path is compared too


def test_dopri5_runs_past_its_64_step_buffers_without_a_rejection():
    # dx/dt = 3x: x(1) = x0·e³, KPE = ½·9‖x0‖²·(e⁶ − 1)/6. At rtol = 1e-10 every sample takes 81
    # steps and none is rejected, so at iteration 65 a sample needs column 64 of the step-time and
    # profile buffers (a rejection anywhere would leave it slack to grow a step late)
    x0 = kfm.noise(range(4), (2,), dtype=torch.float64)
    res = kfm.sample(lambda x, t: 3 * x, x0, solver="dopri5", rtol=1e-10, atol=1e-12, profile=True)
    assert (res.steps > 64).all() and torch.equal(res.nfe, 2 + 6 * res.steps)    # no rejection
    torch.testing.assert_close(res.x, x0 * math.exp(3.0), rtol=1e-9, atol=0)
    kpe = 0.5 * 9 * (x0**2).sum(1) * math.expm1(6.0) / 6
    torch.testing.assert_close(res.kpe, kpe, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.profile.sum(1), res.kpe, rtol=1e-13, atol=0)
    assert res.times.shape == (4, int(res.steps.max()) + 1) and (res.times.diff(dim=1) > 0).all()


@pytest.mark.parametrize("tau, first_step", [(1e-300, None), (1e-9, None), (0.6, 0.6 - 1e-9)])
@pytest.mark.parametrize("field", ["line", "decay"])
def test_dopri5_under_kts_resumes_its_step_after_one_cut_short_to_land_on_tau(field, tau, first_step):
    # A step cut to land on τ is short and its error tiny; the next step grew from it at most ×10
    # per step: τ = 1e-300 took 300 steps where plain FM takes 3 or 4, τ = 1e-9 (or a first step
    # that ends 1e-9 before τ = 0.6) 6–8 more. With α0 = β0 = 0 the gain is 1 and the path is
    # plain FM's: x(1) = x0 + c on the line, x0·e^{−1} for dx/dt = −x (energy ‖x0‖²(1 − e^{−2})/4).
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    velocity = (lambda x, t: c.expand_as(x).clone()) if field == "line" else (lambda x, t: -x)
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    tolerances = {"rtol": 1e-8, "atol": 1e-8, "first_step": first_step}
    plain = kfm.sample(velocity, x0, solver="dopri5", **tolerances)
    res = kfm.sample(velocity, x0, solver="dopri5", shaping=kfm.KTS(alpha0=0.0, beta0=0.0, tau_split=tau),
                     **tolerances)
    exact = x0 + c if field == "line" else x0 * math.exp(-1.0)
    energy = 0.5 * (c**2).sum().expand(4) if field == "line" else (x0**2).sum(1) * (1 - math.exp(-2.0)) / 4
    torch.testing.assert_close(res.x, exact, rtol=0, atol=1e-7)
    torch.testing.assert_close(res.kpe, energy, rtol=1e-6, atol=0)   # the energy is not error-controlled
    assert tau in res.times[0].tolist()
    assert (res.steps <= plain.steps + 2).all(), (res.steps.tolist(), plain.steps.tolist())


@pytest.mark.parametrize("field,first_step", [(_spiral, None), (lambda x, t: -0.5 * x, 0.12355698520362282)],
                         ids=["spiral", "decay-rounding-pair"])
def test_dopri5_under_kts_steps_the_launch_side_until_it_lands_exactly_on_tau(field, first_step):
    # Before τ a constant-launch KTS makes the field (1 + α0)·v, a smooth problem whose steps on
    # [0, τ] are scipy's on that interval: the step ending on τ takes η's left limit (its landing
    # value there is a jump, which the error control would see and reject). With τ = 0.45, a first
    # step of 0.1235569852… is followed by one to τ for which ta + (τ − ta) rounds past τ: the step
    # must end on τ itself, not on that sum.
    pytest.importorskip("scipy")
    tau, alpha0, rtol, atol = 0.45, 0.3, 1e-5, 1e-7
    kts = kfm.KTS(alpha0=alpha0, beta0=0.04, tau_split=tau, launch="constant", landing="constant")
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    res = kfm.sample(field, x0, solver="dopri5", shaping=kts, rtol=rtol, atol=atol, first_step=first_step)
    fun = lambda t, y: (1 + alpha0) * field(torch.from_numpy(y)[None], torch.tensor([t], dtype=torch.float64))[0].numpy()  # noqa: E731
    for b in range(x0.shape[0]):
        times, _, _ = _scipy_rk45(fun, x0[b].numpy(), tau, rtol, atol, first_step=first_step)
        ours = res.times[b, : len(times)]
        assert float(ours[-1]) == tau                                 # exactly τ, not 1 ulp beside it
        np.testing.assert_allclose(ours.numpy(), times, rtol=0, atol=1e-8)
        if first_step is not None:
            assert len(times) == 3 and times[1] + (tau - times[1]) != tau


@pytest.mark.parametrize("solver", ["rk4", "rk4_38"])
@pytest.mark.parametrize("launch,landing", [("constant", "constant"), ("linear", "constant")])
def test_kts_keeps_rk4_fourth_order_when_tau_is_a_grid_point(solver, launch, landing):
    # dx/dt = −η(t)·x, η with a jump at τ = 0.6: x(1) = x0·exp(−∫η), energy ½∫η²‖x‖² in closed form
    # per phase. The step ending on τ evaluated its last stage on the landing side, an O(1) error in
    # one stage that made rk4 first order (error ratio 2.0 per halving); the launch side gives 16.
    kts = kfm.KTS(alpha0=0.2, beta0=0.04, tau_split=0.6, launch=launch, landing=landing)
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    from scipy.integrate import quad

    gained = lambda s: quad(kts, 0, s, points=[0.6] if s > 0.6 else None, epsabs=1e-15)[0]  # noqa: E731
    sq = (x0**2).sum(1)
    power = lambda s: 0.5 * kts(s) ** 2 * math.exp(-2 * gained(s))                        # noqa: E731
    kpe = sq * (quad(power, 0, 0.6, epsabs=1e-15)[0] + quad(power, 0.6, 1, epsabs=1e-15)[0])
    errors = []
    for steps in (10, 20, 40):
        res = kfm.sample(lambda x, t: -x, x0, steps=steps, solver=solver, shaping=kts)
        errors.append(((res.x - x0 * math.exp(-gained(1.0))).abs().max().item(),
                       ((res.kpe - kpe).abs() / kpe).max().item()))
    for coarse, fine in zip(errors, errors[1:]):
        assert coarse[0] / fine[0] > 12 and coarse[1] / fine[1] > 12


def test_euler_energy_is_exact_on_its_own_path(x0):
    # Euler moves on straight segments; the solver quadrature is the exact energy of that path.
    field = GaussianTarget(mean=1.0, std=0.7)
    res = kfm.sample(field, x0, steps=7, solver="euler", grid="cosine")
    grid = kfm.time_grid("cosine", 7)
    x, energy = x0.clone(), torch.zeros(16, dtype=torch.float64)
    for i in range(7):
        h = (grid[i + 1] - grid[i]).item()
        x_next = x + h * field(x, torch.full((16,), grid[i].item(), dtype=torch.float64))
        energy += 0.5 * ((x_next - x) ** 2).sum(1) / h
        x = x_next
    assert torch.allclose(res.kpe, energy, rtol=1e-12)


@pytest.mark.parametrize("solver", FIXED)
def test_point_target_gives_straight_lines(solver, x0):
    # v = (y − x)/(1 − t) is singular at t = 1: heun/rk4 take their last step without an end
    # stage (Euler, Heun's third order), exact on these constant-speed lines (t = 1 gives 0/0)
    y = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    res = kfm.sample(PointTarget(y), x0, steps=5, solver=solver)
    assert torch.allclose(res.x, y.expand_as(x0), atol=1e-12)
    assert torch.allclose(res.kpe, 0.5 * ((y - x0) ** 2).sum(1), rtol=1e-12)
    stages = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "rk4_38": 4}[solver]
    last_step = {"heun": 1, "rk4": 3, "rk4_38": 3}.get(solver, stages)
    assert res.nfe == 4 * stages + last_step


class SingularAtOne:
    """A smooth field that declares itself singular at t = 1 (to observe the scheme)."""

    singular_at_one = True

    def __init__(self, field):
        self.field, self.times = field, []

    def __call__(self, x, t):
        self.times.append(float(t[0]))
        return self.field(x, t)


def test_singular_fields_take_heuns_last_step_with_euler(x0):
    field = GaussianTarget(mean=0.5, std=0.7)
    wrapped = SingularAtOne(field)
    res = kfm.sample(wrapped, x0, steps=4, solver="heun", profile=True)
    assert max(wrapped.times) == 0.75                   # never evaluated at t = 1
    at = lambda s: torch.full((16,), s, dtype=torch.float64)  # noqa: E731
    x, h, energy = x0.clone(), 0.25, torch.zeros(16, dtype=torch.float64)
    for i in range(3):                                  # Heun by hand
        k1 = field(x, at(i * h))
        k2 = field(x + h * k1, at((i + 1) * h))
        energy += 0.25 * h * ((k1 ** 2).sum(1) + (k2 ** 2).sum(1))
        x = x + h / 2 * (k1 + k2)
    k1 = field(x, at(0.75))                             # then one Euler step
    energy += 0.5 * h * (k1 ** 2).sum(1)
    x = x + h * k1
    torch.testing.assert_close(res.x, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.kpe, energy, rtol=1e-14, atol=0)
    torch.testing.assert_close(res.profile[:, -1], 0.5 * h * (k1 ** 2).sum(1), rtol=1e-14, atol=0)
    assert res.nfe == 7


@pytest.mark.parametrize("solver", ["rk4", "rk4_38"])
def test_a_singular_field_keeps_rk4_fourth_order(solver, x0):
    # the end step without a stage at t = 1 is Heun's third-order method, whose one local error
    # O(h⁴) keeps the run fourth order; an Euler end (O(h²)) made it second order: ratio ≈ 4
    field = GaussianTarget(mean=0.5, std=0.7)
    exact_x, exact_kpe = field.trajectory(x0, 1.0), field.kinetic_energy(x0)
    errors = []
    for steps in (16, 32, 64):
        wrapped = SingularAtOne(field)
        res = kfm.sample(wrapped, x0, steps=steps, solver=solver)
        assert max(wrapped.times) < 1.0
        errors.append(((res.x - exact_x).abs().max().item(), ((res.kpe - exact_kpe) / exact_kpe).abs().max().item()))
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert coarse[0] / fine[0] > 12 and coarse[1] / fine[1] > 12     # 2⁴ = 16 per halving


def test_half_precision_squares_do_not_overflow():
    # ‖v‖² = 81 · 12288 ≈ 1e6 > 65504 (float16's largest), every v entry exact in float16
    x0 = torch.zeros(2, 3, 64, 64, dtype=torch.float16)
    for dtype in (torch.float16, torch.bfloat16):
        res = kfm.sample(lambda x, t: torch.full_like(x, 9.0), x0.to(dtype), steps=4, solver="heun")
        assert res.kpe.tolist() == [0.5 * 81 * 12288] * 2


def test_without_shaping_applied_equals_raw_and_split_adds_up(x0):
    field = GaussianTarget(mean=1.0, std=0.5)
    res = kfm.sample(field, x0, steps=50, solver="heun", profile=True)
    assert torch.equal(res.kpe, res.kpe_raw)
    assert torch.allclose(res.profile.sum(1), res.kpe, rtol=1e-14)
    assert torch.allclose(res.profile[:, :30].sum(1), res.early, rtol=1e-14)  # int(0.6 * 50) = 30
    assert torch.equal(res.peak, res.profile.max(1).values)


def test_the_split_is_the_reference_step_index_rule_in_floating_point(x0):
    # int(τ·S) as the reference computes it: 0.29·100 = 28.999… in binary, so 28 early steps
    field = GaussianTarget(mean=1.0, std=0.5)
    res = kfm.sample(field, x0, steps=100, split=0.29, profile=True)
    assert torch.allclose(res.profile[:, :28].sum(1), res.early, rtol=1e-14)
    assert res.split == 0.29                                          # the result records the τ it used
    assert kfm.sample(field, x0, steps=4, shaping=kfm.KTS(tau_split=0.35)).split == 0.35


def test_shaping_scales_applied_energy(x0):
    field = GaussianTarget(mean=1.0, std=0.5)
    kts = kfm.KTS(alpha0=0.3, beta0=0.0, tau_split=0.5, launch="constant")
    res = kfm.sample(field, x0, steps=40, solver="euler", shaping=kts, profile=True, quadrature="left")
    # during launch η = 1.3 exactly, so the applied increments there are 1.69 × the raw ones
    v = field(x0, torch.zeros(16, dtype=torch.float64))
    first = 0.5 * 1.69 * (v**2).sum(1) / 40
    assert torch.allclose(res.profile[:, 0], first, rtol=1e-13)
    assert (res.kpe > res.kpe_raw).all()


# --- torchdiffeq parity ---------------------------------------------------------------------
@pytest.mark.parametrize("ours, theirs", [("euler", "euler"), ("midpoint", "midpoint"), ("heun", "heun2"), ("rk4_38", "rk4")])
@pytest.mark.parametrize("grid", ["uniform", "cosine"])
def test_matches_torchdiffeq_on_the_same_grid(ours, theirs, grid, x0):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    net = TimeMLP()
    times = kfm.time_grid(grid, 25)
    res = kfm.sample(net, x0, steps=25, grid=grid, solver=ours)
    path = torchdiffeq.odeint(lambda t, x: net(x, t.expand(x.shape[0])), x0, times, method=theirs)
    assert torch.allclose(res.x, path[-1], rtol=0, atol=1e-12)


def test_classic_rk4_matches_a_hand_written_step(x0):
    net = TimeMLP()
    res = kfm.sample(net, x0, steps=3, solver="rk4")
    x, h = x0.clone(), 1 / 3
    for i in range(3):
        t = lambda s: torch.full((16,), s, dtype=torch.float64)  # noqa: E731
        k1 = net(x, t(i * h))
        k2 = net(x + h / 2 * k1, t(i * h + h / 2))
        k3 = net(x + h / 2 * k2, t(i * h + h / 2))
        k4 = net(x + h * k3, t((i + 1) / 3))
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert torch.allclose(res.x, x, atol=1e-13)


# --- reference parity -------------------------------------------------------------------------
def reference_eta(t, a0, b0, tau, launch, landing, k):
    if t < tau:
        u = 1 - t / tau
        a = {"linear": a0 * u, "constant": a0, "exponential": a0 * (math.exp(k * u) - 1) / (math.exp(k) - 1)}[launch]
        return 1 + a
    s = (t - tau) / (1 - tau)
    b = {"exponential": b0 * (math.exp(k * s) - 1), "linear": b0 * s, "constant": b0}[landing]
    return 1 - b


def reference_loop(net, x0, grid, method, eta):
    """One trajectory at a time, `.item()` per step: the paper's reference semantics."""
    xs, energies, earlies = [], [], []
    n = len(grid) - 1
    split = int(0.6 * n)
    for b in range(x0.shape[0]):
        x = x0[b : b + 1].clone()
        energy = early = 0.0
        for i in range(n):
            t, t_next = grid[i], grid[i + 1]
            dt = t_next - t
            v = net(x, torch.tensor([t], dtype=torch.float64))
            e = eta(t)
            inc = 0.5 * e**2 * (v**2).sum().item() * dt
            energy += inc
            if i < split:
                early += inc
            if method == "euler":
                x = x + e * dt * v
            else:
                x_pred = x + e * dt * v
                v2 = net(x_pred, torch.tensor([t_next], dtype=torch.float64))
                e2 = eta(t_next)
                x = x + 0.5 * (e + e2) * dt * 0.5 * (v + v2)
        xs.append(x)
        energies.append(energy)
        earlies.append(early)
    return torch.cat(xs), torch.tensor(energies, dtype=torch.float64), torch.tensor(earlies, dtype=torch.float64)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("grid", ["uniform", "cosine"])
@pytest.mark.parametrize(
    "launch, landing",
    [(l, d) for l in ("linear", "constant", "exponential") for d in ("exponential", "linear", "constant")],
)
def test_reference_parity_for_every_form(method, grid, launch, landing):
    net = TimeMLP(seed=1)
    x0 = kfm.noise(range(5), (3,), dtype=torch.float64)
    kts = kfm.KTS(alpha0=0.02, beta0=0.02, tau_split=0.6, launch=launch, landing=landing)
    eta = lambda t: reference_eta(t, 0.02, 0.02, 0.6, launch, landing, 3.0)  # noqa: E731
    times = kfm.time_grid(grid, 20).tolist()
    x_ref, e_ref, early_ref = reference_loop(net, x0, times, method, eta)
    res = kfm.sample(net, x0, steps=20, grid=grid, solver=method, shaping=kts, quadrature="left")
    assert torch.allclose(res.x, x_ref, rtol=0, atol=1e-12)
    assert torch.allclose(res.kpe, e_ref, rtol=1e-12, atol=0)
    assert torch.allclose(res.early, early_ref, rtol=1e-12, atol=1e-300)


# --- batch invariance ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [*FIXED, "dopri5"])
def test_batch_invariance(solver):
    net = TimeMLP(seed=2)
    kts = kfm.KTS()
    seeds = list(range(100, 164))
    whole = kfm.sample(net, seeds=seeds, shape=(3,), dtype=torch.float64, steps=20, solver=solver, shaping=kts)
    parts = [
        kfm.sample(net, seeds=seeds[i : i + 7], shape=(3,), dtype=torch.float64, steps=20, solver=solver, shaping=kts)
        for i in range(0, 64, 7)
    ]
    assert torch.allclose(whole.x, torch.cat([p.x for p in parts]), rtol=0, atol=1e-13)
    assert torch.allclose(whole.kpe, torch.cat([p.kpe for p in parts]), rtol=1e-13, atol=0)
    if solver == "dopri5":
        assert torch.equal(whole.steps, torch.cat([p.steps for p in parts]))


@pytest.mark.parametrize("solver", [*FIXED, "dopri5"])
def test_batch_invariance_is_bit_exact_for_an_elementwise_field(solver):
    # an element-wise field has no GEMM whose blocking could follow the batch size, so the
    # sampler's own arithmetic must give every sample the same bits in any batch
    # (128 dimensions: a GEMM over the mixture's components there rounds by batch size, audit F2)
    field = kfm.GaussianMixtureTarget(3 * torch.randn(8, 128, generator=torch.Generator().manual_seed(0)), std=0.3)
    kts = kfm.KTS()
    seeds = list(range(30))
    whole = kfm.sample(field, seeds=seeds, shape=(128,), dtype=torch.float64, steps=12, solver=solver, shaping=kts)
    for start, stop in ((0, 1), (3, 10), (10, 30), (29, 30)):
        part = kfm.sample(field, seeds=seeds[start:stop], shape=(128,), dtype=torch.float64, steps=12, solver=solver,
                          shaping=kts)
        for name in ("x", "kpe", "kpe_raw", "early", "late", "peak"):
            assert torch.equal(getattr(whole, name)[start:stop], getattr(part, name)), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", FIXED)
def test_a_half_precision_state_gives_every_sample_the_same_bits_in_any_batch(solver, dtype):
    # ATen's add(x, v, alpha=c) rounds 16-bit tensors differently in its vectorised body and its
    # scalar tail: 64 of 64 float16 rows (63 bfloat16) differed between a batch and one at a time
    x0 = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    field = lambda x, t: -x + t.to(x.dtype)[:, None]                    # noqa: E731  row-wise
    whole = kfm.sample(field, x0, steps=10, solver=solver)
    alone = [kfm.sample(field, x0[i:i + 1], steps=10, solver=solver) for i in range(64)]
    assert torch.equal(whole.x, torch.cat([a.x for a in alone]))
    assert torch.equal(whole.kpe, torch.cat([a.kpe for a in alone]))
    # one Euler step of length 1 is x0 + v(x0, 0), both 16-bit: exact in float32, rounded once
    one = kfm.sample(field, x0, steps=1, solver="euler")
    assert torch.equal(one.x, (x0.float() + field(x0, torch.zeros(64, dtype=dtype)).float()).to(dtype))
    # and one heun step is x0 + (v0 + v1)/2 summed in float32 and rounded once; a mean velocity
    # summed in 16 bits first (a mutant dropping the float32 in the mean-gain update survived)
    # misses it here in both dtypes
    v0 = field(x0, torch.zeros(64, dtype=dtype))
    v1 = field((x0.float() + v0.float()).to(dtype), torch.ones(64, dtype=dtype))
    one = kfm.sample(field, x0, steps=1, solver="heun")
    assert torch.equal(one.x, (x0.float() + (0.5 * v0.float() + 0.5 * v1.float())).to(dtype))


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_rows_longer_than_atens_grain_size_give_the_same_energy_in_any_batch_at_two_threads(solver):
    # beyond 32,768 values ATen splits a row's sum across threads when the batch is small, so
    # ‖v‖² (vecdot) and dopri5's error norm depended on the batch size at two threads: 1 of 8
    # KPEs, and for dopri5 2 of 8 x through the steps chosen (3 × 128 × 128 values; the suite
    # otherwise runs on one thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x0 = torch.randn(6, 3, 128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        field = lambda x, t: torch.sin(3 * x) * (1 + t.to(x.dtype).reshape(-1, 1, 1, 1)) - x   # noqa: E731
        kw = dict(steps=3) if solver != "dopri5" else dict(rtol=1e-4, atol=1e-4)
        whole = kfm.sample(field, x0, solver=solver, **kw)
        alone = [kfm.sample(field, x0[i:i + 1], solver=solver, **kw) for i in range(6)]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(whole.kpe, torch.cat([a.kpe for a in alone]))
    assert torch.equal(whole.x, torch.cat([a.x for a in alone]))
    # and the blocked sums are the float64 sums to round-off
    from kinetic_fm.norms import row_dot, row_mean_square
    flat = x0.reshape(6, -1)
    want = (flat.numpy() ** 2).sum(1)
    np.testing.assert_allclose(row_dot(flat).numpy(), want, rtol=1e-13)
    np.testing.assert_allclose(row_mean_square(flat).numpy(), want / flat.shape[1], rtol=1e-13)
    # a row that is not a multiple of the 16,384-value block (a 3 × 224 × 224 image): the tail
    # after the whole blocks is summed too (a row_dot dropping it read 147,783 for 150,840)
    odd = torch.randn(2, 3 * 224 * 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = (odd.numpy() ** 2).sum(1)
    np.testing.assert_allclose(row_dot(odd).numpy(), want, rtol=1e-13)
    np.testing.assert_allclose(row_mean_square(odd).numpy(), want / odd.shape[1], rtol=1e-13)
    short = flat[:, :32_768]                                 # up to the grain size: summed whole, as before
    assert torch.equal(row_dot(short), torch.linalg.vecdot(short, short))
    assert torch.equal(row_mean_square(short), short.pow(2).mean(dim=1))


def test_left_quadrature_over_dopri5_steps_is_warned_of():
    # dx/dt = x + 2t from 1.5: x(t) = 3.5eᵗ − 2t − 2, v = 3.5eᵗ − 2; ½∫v² in closed form. The left
    # sum over dopri5's few long steps came out 37 % low, silently (helper-128)
    field = lambda x, t: x + 2 * t.to(x.dtype)[:, None]                    # noqa: E731
    x0 = torch.tensor([[1.5]], dtype=torch.float64)
    e = math.e
    exact = 0.5 * (3.5 ** 2 * (e * e - 1) / 2 - 2 * 2 * 3.5 * (e - 1) + 4)
    assert float(kfm.sample(field, x0, solver="dopri5").kpe[0]) == pytest.approx(exact, rel=1e-4)
    with pytest.warns(UserWarning, match="quadrature='left' takes each step's power at its start"):
        left = kfm.sample(field, x0, solver="dopri5", quadrature="left")
    assert float(left.kpe[0]) < 0.7 * exact                              # what the warning is about
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfm.sample(field, x0, solver="euler", steps=1000, quadrature="left")  # the reference's own use


def test_a_singular_field_under_a_gain_with_eta_at_one_at_most_half_is_warned_of():
    # PointTarget: v = (y − x)/(1 − t), so under η the gap closes as (1 − t)^η(1) and η²‖v‖² grows
    # as (1 − t)^(2η(1) − 2): infinite energy for η(1) ≤ ½. β0 = 0.03 (η(1) = 0.43, admissible)
    # reported a KPE that kept growing with the steps, silently (helper-131)
    import warnings

    field = kfm.PointTarget(torch.full((2,), 2.0, dtype=torch.float64))
    x0 = kfm.noise([0], (2,), dtype=torch.float64)
    kts = kfm.KTS(alpha0=0.0, beta0=0.03)
    assert kts(1.0) == pytest.approx(1 - 0.03 * (math.e ** 3 - 1))        # the exponential landing's η(1)
    with pytest.warns(UserWarning, match=r"η\(1\) = 0.427 ≤ 1/2 and the field is singular at t = 1"):
        coarse = kfm.sample(field, x0, steps=100, shaping=kts).kpe
    with pytest.warns(UserWarning, match="energy is infinite"):
        fine = kfm.sample(field, x0, steps=10_000, shaping=kts).kpe
    assert float(fine) > 1.1 * float(coarse)                                 # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfm.sample(field, x0, steps=10, shaping=kfm.KTS(alpha0=0.0, beta0=0.02))       # η(1) = 0.62
        kfm.sample(kfm.GaussianTarget(mean=2.0, std=0.5), x0, steps=10, shaping=kts)  # not singular


def test_dopri5_on_a_half_precision_state_starts_with_the_step_a_float32_state_gets():
    # |x|/atol overflowed float16 in the starting-step estimate, which fell back to 1e-6 for every
    # sample (float32: 0.037-0.039) (helper-131)
    field = lambda x, t: 2.0 - x                                            # noqa: E731
    wide = kfm.sample(field, seeds=range(4), shape=(2,), dtype=torch.float32, solver="dopri5")
    with pytest.warns(UserWarning, match="dopri5 on a torch.float16 state"):
        half = kfm.sample(field, seeds=range(4), shape=(2,), dtype=torch.float16, solver="dopri5")
    torch.testing.assert_close(half.times[:, 1], wide.times[:, 1], rtol=1e-3, atol=0)
    with pytest.warns(UserWarning, match="dopri5 on a torch.bfloat16 state"):
        coarse = kfm.sample(field, seeds=range(4), shape=(2,), dtype=torch.bfloat16, solver="dopri5")
    assert (coarse.times[:, 1] > 0.02).all()                       # bfloat16 rounds x0 itself: near, not equal


def test_dopri5_starting_step_is_capped_by_100_h0_and_its_probe_stays_in_the_unit_interval():
    # Hairer–Nørsett–Wanner II.4 (SciPy's select_initial_step): h = min(100·h0, h1). From x0 = 0
    # under v = 1, d0 = 0 gives h0 = 1e-6, d2 = 0 gives h1 = (0.01/d1)^(1/5) = (0.01·atol)^(1/5):
    # the first step is 100·h0 = 1e-4, as SciPy's RK45 takes (a start at h1 alone, 0.0251, survived)
    pytest.importorskip("scipy")
    rtol, atol = 1e-3, 1e-6
    res = kfm.sample(lambda x, t: torch.ones_like(x), torch.zeros(1, 4, dtype=torch.float64), solver="dopri5",
                     rtol=rtol, atol=atol)
    times, _, _ = _scipy_rk45(lambda t, y: np.ones_like(y), np.zeros(4), 1.0, rtol, atol)
    assert float(res.times[0, 1]) == pytest.approx(times[1], rel=1e-12)
    assert float(res.times[0, 1]) == pytest.approx(min(100 * 1e-6, (0.01 * atol) ** 0.2), rel=1e-12)
    # a large state under a small velocity makes 0.01·d0/d1 ≫ 1: the probe at t + h0 is clamped to
    # t ≤ 1, the field's domain (without the clamp it was asked for t = 511)
    seen = []

    def field(x, t):
        seen.append(float(t.max()))
        return torch.full_like(x, 0.01)

    kfm.sample(field, 1000 * kfm.noise(range(2), (4,), dtype=torch.float64), solver="dopri5")
    assert max(seen) <= 1.0


def test_dopri5_starting_step_probe_stays_below_one_on_a_field_singular_there():
    # |x0| ≥ 100·|v(x0, 0)| makes 0.01·d0/d1 ≥ 1: the probe went to t = 1, where a strict
    # (y − x)/(1 − t) is 0/0, and every sample started at the 1e-6 fallback (8 steps, not 3)
    seen = []

    class Strict:
        singular_at_one = True

        def __call__(self, x, t):
            seen.append(float(t.max()))
            return (1000.0 - x) / (1 - t).unsqueeze(1)

    offset = torch.tensor([[0.5, -0.3], [3.0, 1.0]], dtype=torch.float64)
    x0 = 1000.0 + offset
    res = kfm.sample(Strict(), x0, solver="dopri5")
    assert max(seen) < 1.0
    # on these straight lines the probe's velocity is the start's (d2 = 0 up to rounding), so
    # Hairer–Nørsett–Wanner's step is min(100·h0, (0.01/d1)^(1/5)), h0 ≥ ½
    rtol = atol = 1e-5
    d1 = ((-offset / (atol + rtol * x0.abs())) ** 2).mean(1).sqrt()
    expected = torch.clamp((0.01 / d1) ** 0.2, max=0.6)          # the first step lands on the split at most
    torch.testing.assert_close(res.times[:, 1], expected, rtol=1e-9, atol=0)
    torch.testing.assert_close(res.x, torch.full_like(x0, 1000.0), rtol=0, atol=1e-9)
    torch.testing.assert_close(res.kpe, 0.5 * (offset ** 2).sum(1), rtol=1e-9, atol=0)
@pytest.mark.filterwarnings("ignore:quadrature='left'")
def test_dopri5_samples_do_not_depend_on_profile_or_quadrature(x0):
    net = TimeMLP(seed=3)
    a = kfm.sample(net, x0, solver="dopri5", shaping=kfm.KTS())
    b = kfm.sample(net, x0, solver="dopri5", shaping=kfm.KTS(), profile=True, quadrature="left")
    assert torch.equal(a.x, b.x) and torch.equal(a.steps, b.steps)
    assert torch.allclose(b.profile.sum(1), b.kpe, rtol=1e-13)
    assert torch.allclose(a.early + a.late, a.kpe, rtol=1e-13)


# --- guards -------------------------------------------------------------------------------------
class NaNAfter(nn.Module):
    """-x on the first coordinates; NaN from t_bad on for samples whose last (frozen) coordinate is 1."""

    def __init__(self, t_bad):
        super().__init__()
        self.t_bad = t_bad

    def forward(self, x, t):
        v = torch.cat([-x[:, :-1], torch.zeros_like(x[:, -1:])], dim=1)
        bad = (t >= self.t_bad) & (x[:, -1] > 0.5)
        return torch.where(bad.reshape(-1, 1), torch.nan, v)


def _marked(x0, rows):
    marker = torch.zeros(x0.shape[0], 1, dtype=x0.dtype)
    marker[rows] = 1.0
    return torch.cat([x0, marker], dim=1)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_the_message_shows_the_first_20_failing_samples_and_the_error_keeps_all(solver, x0):
    x0 = torch.cat([x0, x0[:9]])                                       # 25 samples, all failing at t = 0.5
    with pytest.raises(kfm.NonFiniteVelocityError) as err:
        kfm.sample(NaNAfter(0.5), _marked(x0, list(range(25))), steps=10, solver=solver)
    assert err.value.indices == list(range(25))
    assert f"sample indices {list(range(20)) + ['...']} " in str(err.value)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_nonfinite_velocity_names_step_time_and_samples(solver, x0):
    with pytest.raises(kfm.NonFiniteVelocityError, match=r"sample indices \[2, 5\]") as err:
        kfm.sample(NaNAfter(0.5), _marked(x0, [2, 5]), steps=10, solver=solver)
    assert err.value.indices == [2, 5]
    assert err.value.time >= 0.5
    if solver == "euler":
        assert err.value.step == 5 and err.value.time == pytest.approx(0.5)


def test_dopri5_retries_a_non_finite_try_until_it_pins_where_the_field_fails(x0):
    # a non-finite try is rejected and retried shorter (SciPy's RK45 rule), so each failing
    # sample creeps up to t = 0.5 and fails there, within ten float64 spacings; the error names
    # the first sample to run out of step, the flag each failing one at its own time
    with pytest.raises(kfm.NonFiniteVelocityError, match=r"sample indices \[[25]") as err:
        kfm.sample(NaNAfter(0.5), _marked(x0, [2, 5]), solver="dopri5")
    assert set(err.value.indices) <= {2, 5} and err.value.time == pytest.approx(0.5, abs=1e-14)
    res = kfm.sample(NaNAfter(0.5), _marked(x0, [2, 5]), solver="dopri5", on_nonfinite="flag")
    assert res.nonfinite.nonzero().flatten().tolist() == [2, 5]
    reached = res.times[[2, 5]].nan_to_num(-1.0).amax(1)             # their last accepted times
    assert ((reached < 0.5) & (reached > 0.5 - 1e-13)).all()
    fine = ~res.nonfinite
    assert torch.isfinite(res.kpe[fine]).all() and (res.times[fine].nan_to_num(0).amax(1) == 1).all()


def test_dopri5_rejects_a_try_that_leaves_the_fields_domain_as_scipy_does():
    # dx/dt = −1.95·√x from x = 1: x(t) = (1 − 0.975 t)² stays positive, but at rtol = 1e-3 a
    # long try takes a stage below 0 where √x is NaN; RK45 rejects that try and finishes, and so
    # must dopri5 (it flagged the sample at t ≈ 0.75)
    pytest.importorskip("scipy")
    field = lambda x, t: -1.95 * x.sqrt()                              # noqa: E731
    x0 = torch.ones(1, 1, dtype=torch.float64)
    res = kfm.sample(field, x0, solver="dopri5", rtol=1e-3, atol=1e-3, on_nonfinite="flag", split=1.0)  # RK45's steps
    fun = lambda t, y: -1.95 * np.sqrt(y)                              # noqa: E731
    times, x1, nfev = _scipy_rk45(fun, x0[0].numpy(), 1.0, 1e-3, 1e-3)
    assert not bool(res.nonfinite[0]) and int(res.steps[0]) == len(times) - 1 and int(res.nfe[0]) == nfev
    np.testing.assert_allclose(res.x[0].numpy(), x1, rtol=0, atol=1e-12)
    assert float(res.x[0]) == pytest.approx(0.025**2, abs=2e-6)


def test_a_float32_velocity_whose_square_overflows_is_named_as_such():
    # fixed-step solvers square float32 velocities in float32: finite 2e19 entries overflow there
    # (and the message says this can be why); float64 samples and dopri5 square in float64
    huge = lambda x, t: torch.full_like(x, 2e19)                      # noqa: E731
    with pytest.raises(kfm.NonFiniteVelocityError, match=r"squared norm overflows: ‖v‖ > 1.8e19"):
        kfm.sample(huge, kfm.noise(range(3), (2,)), steps=4)
    for x0, solver in ((kfm.noise(range(3), (2,), dtype=torch.float64), "euler"), (kfm.noise(range(3), (2,)), "dopri5")):
        kpe = kfm.sample(huge, x0, steps=4, solver=solver).kpe
        assert torch.allclose(kpe, torch.full_like(kpe, 0.5 * 2 * 2e19**2), rtol=1e-6)


@pytest.mark.parametrize("solver", ["euler", "heun", "dopri5"])
def test_a_velocity_non_finite_from_the_first_call_is_flagged_at_step_0(solver, x0):
    res = kfm.sample(NaNAfter(0.0), _marked(x0, [1]), steps=10, solver=solver, on_nonfinite="flag")
    assert res.nonfinite.nonzero().flatten().tolist() == [1] and int(res.nonfinite_step[1]) == 0
    assert torch.isnan(res.kpe[1]) and torch.isnan(res.kpe_raw[1]) and torch.isfinite(res.kpe[~res.nonfinite]).all()
    # and its x is NaN, as for a sample flagged later: it never left x0, which is no state at t = 1
    # (dopri5 kept x0 for a sample failing in its first step, a test `bad_step > 0` survived)
    assert torch.isnan(res.x[1]).all() and torch.isfinite(res.x[~res.nonfinite]).all()
    if solver == "dopri5":
        # finite at t = 0 and NaN at every t > 0: the first step fails however short dopri5 makes it
        late = kfm.sample(NaNAfter(5e-324), _marked(x0, [1]), solver=solver, on_nonfinite="flag")
        assert late.nonfinite.nonzero().flatten().tolist() == [1] and int(late.nonfinite_step[1]) == 0
        assert torch.isnan(late.x[1]).all() and torch.isfinite(late.x[~late.nonfinite]).all()


class NaNFrom(nn.Module):
    """-x; NaN for the marked samples from their own time on (last coordinate = that time, else 2)."""

    def __init__(self):
        super().__init__()
        self.first_bad = math.inf                          # the earliest time a NaN was returned

    def forward(self, x, t):
        v = torch.cat([-x[:, :-1], torch.zeros_like(x[:, -1:])], dim=1)
        bad = t >= x[:, -1]
        if bool(bad.any()):
            self.first_bad = min(self.first_bad, float(t[bad].min()))
        return torch.where(bad.reshape(-1, 1), torch.nan, v)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_the_error_names_the_earliest_failure_at_the_time_the_field_failed(solver, x0):
    start = torch.full((x0.shape[0], 1), 2.0, dtype=x0.dtype)
    start[3], start[1] = 0.33, 0.71                       # sample 3 fails first, sample 1 later
    field = NaNFrom()
    with pytest.raises(kfm.NonFiniteVelocityError) as err:
        kfm.sample(field, torch.cat([x0, start], dim=1), steps=10, solver=solver)
    if solver != "dopri5":
        assert err.value.indices == [3]
        assert err.value.time == pytest.approx(field.first_bad, abs=1e-12)   # the failing stage's time
    else:  # retried tries creep up to each sample's own failure time: the first to run out is named
        assert err.value.indices in ([3], [1])
        assert err.value.time == pytest.approx({3: 0.33, 1: 0.71}[err.value.indices[0]], abs=1e-12)
    if solver == "euler":
        assert err.value.step == 4 and err.value.time == pytest.approx(0.4)


def test_dopri5_retries_a_try_that_met_a_passing_nan_and_finishes():
    # one call returns NaN for every sample: the try is rejected and retried, as SciPy's RK45 would,
    # and the run ends as an exact decay (it raised NonFiniteVelocityError)
    calls = {"n": 0}

    def field(x, t):  # the last coordinate holds the sample's decay rate, frozen
        calls["n"] += 1
        v = torch.cat([-x[:, -1:] * x[:, :-1], torch.zeros_like(x[:, -1:])], dim=1)
        return v * torch.nan if calls["n"] == 12 else v

    rates = torch.tensor([[0.1], [30.0]], dtype=torch.float64)
    x0 = torch.cat([torch.ones(2, 3, dtype=torch.float64), rates], dim=1)
    res = kfm.sample(field, x0, solver="dopri5", rtol=1e-6, atol=1e-8)
    assert not res.nonfinite.any()
    torch.testing.assert_close(res.x[:, :-1], torch.exp(-rates).expand(2, 3), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("solver", ["heun", "dopri5"])
def test_nonfinite_can_be_flagged_instead(solver, x0):
    res = kfm.sample(NaNAfter(0.5), _marked(x0, [2, 5]), steps=10, solver=solver, on_nonfinite="flag")
    assert res.nonfinite.nonzero().flatten().tolist() == [2, 5]
    assert torch.isnan(res.kpe[[2, 5]]).all() and torch.isfinite(res.kpe[~res.nonfinite]).all()
    for name in ("kpe_raw", "early", "late", "peak", "peak_time"):   # every energy of a flagged sample
        assert torch.isnan(getattr(res, name)[[2, 5]]).all(), name
        assert torch.isfinite(getattr(res, name)[~res.nonfinite]).all(), name
    frame = res.to_frame()
    assert frame["nonfinite"].sum() == 2
    # no state at t = 1 either: dopri5 left the flagged rows where they stopped, finite
    assert torch.isnan(res.x[[2, 5]]).all() and torch.isfinite(res.x[~res.nonfinite]).all()


@pytest.mark.parametrize("solver", FIXED + ["dopri5"])
def test_a_flagged_sample_has_no_peak_time_and_its_infinite_velocity_reads_nan(solver, x0):
    # A flagged sample's peak is NaN, so its peak_time names no step: NaN as well (it was the
    # profile's first NaN for fixed-step solvers, the last accepted step's peak for dopri5). An
    # infinite velocity leaves NaN in a fixed-step profile from its step on, never +inf, which
    # would read as a real if huge energy.
    def infinite_after_half(x, t):
        v = torch.cat([-x[:, :-1], torch.zeros_like(x[:, -1:])], dim=1)
        bad = (t >= 0.5) & (x[:, -1] > 0.5)
        return torch.where(bad.reshape(-1, 1), torch.inf, v)

    res = kfm.sample(infinite_after_half, _marked(x0, [2, 5]), steps=10, solver=solver, on_nonfinite="flag",
                     profile=True)
    flagged = res.nonfinite
    assert flagged.nonzero().flatten().tolist() == [2, 5]
    assert torch.isnan(res.peak[flagged]).all() and torch.isnan(res.peak_time[flagged]).all()
    assert torch.isfinite(res.peak_time[~flagged]).all()
    if solver != "dopri5":
        bad_step = int(res.nonfinite_step[2])
        assert torch.isnan(res.profile[flagged, bad_step:]).all() and torch.isfinite(res.profile[~flagged]).all()


def test_bad_inputs_get_clear_errors(x0):
    field = GaussianTarget()
    with pytest.raises(ValueError, match="shape"):
        kfm.sample(lambda x, t: x[:, :2], x0, steps=2)
    with pytest.raises(ValueError, match="dtype"):
        kfm.sample(lambda x, t: x.float(), x0, steps=2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        kfm.sample(lambda x, t: x.numpy(), x0, steps=2)
    with pytest.raises(ValueError, match="non-empty batch"):
        kfm.sample(field, torch.zeros(0, 3), steps=2)
    with pytest.raises(ValueError, match="NaN"):
        kfm.sample(field, torch.full((2, 3), math.nan), steps=2)
    with pytest.raises(ValueError, match="solver must be one of"):
        kfm.sample(field, x0, solver="rk45")
    with pytest.raises(ValueError, match="quadrature"):
        kfm.sample(field, x0, quadrature="right")
    with pytest.raises(ValueError, match="either x0 or seeds"):
        kfm.sample(field, x0, seeds=[1], shape=(3,))
    with pytest.raises(ValueError, match="seeds and shape"):
        kfm.sample(field, seeds=[1])
    with pytest.raises(ValueError, match="on_nonfinite"):
        kfm.sample(field, x0, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="split"):
        kfm.sample(field, x0, split=1.5)
    with pytest.raises(ValueError, match="rtol"):
        kfm.sample(field, x0, solver="dopri5", rtol=0)
    with pytest.raises(ValueError, match="steps"):
        kfm.sample(field, x0, steps=0)
    for bad in (0, -0.1, math.nan, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match=r"first_step must be None or a number in \(0, 1\]"):
            kfm.sample(field, x0, solver="dopri5", first_step=bad)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        kfm.sample(field, x0, solver="dopri5", max_steps=True)
    with pytest.raises(ValueError, match="split must be a number"):
        kfm.sample(field, x0, split=True)
    with pytest.raises(ValueError, match="grid applies to fixed-step solvers only"):
        kfm.sample(field, x0, solver="dopri5", grid="cosine")
    with pytest.raises(ValueError, match=r"x0 \(torch.float64, cpu\) is used as given"):
        kfm.sample(field, x0, dtype=torch.float32)
    kfm.sample(field, x0, steps=2, dtype=torch.float64, device="cpu")   # matching values are fine
    for gain in (lambda t: torch.zeros_like(t), lambda t: torch.full_like(t, -1.0)):
        with pytest.raises(ValueError, match="a gain must be finite and > 0"):
            kfm.sample(field, x0, solver="dopri5", shaping=gain)
    for gain in (lambda t: math.nan, lambda t: -1.0, lambda t: 0.0):
        with pytest.raises(ValueError, match=r"shaping gave η\(0\) = .*finite and > 0"):
            kfm.sample(field, x0, steps=4, shaping=gain)
    with pytest.raises(TypeError, match="write it with torch operations"):
        kfm.sample(field, x0, solver="dopri5", shaping=lambda t: 1 + 0.1 * math.exp(-t))
    # one gain per time, or one number: a (n, 1) gain met expand_as's message about padded sizes
    for gain in (lambda t: (1 + t)[:, None], lambda t: torch.ones(3)):
        with pytest.raises(ValueError, match=r"expects one gain per time, shape \(n,\), or one number; this gain "
                                             r"returned shape \((n, 1|3,)\)$"):
            kfm.sample(field, x0, solver="dopri5", shaping=gain)
    one = kfm.sample(field, x0, solver="dopri5", shaping=lambda t: 1.5 + 0 * t[:1])   # one number, as a tensor
    torch.testing.assert_close(one.kpe, kfm.sample(field, x0, solver="dopri5", shaping=lambda t: 1.5).kpe,
                               rtol=0, atol=0)
    # the fixed-step solvers pass one float: a torch-only gain, or one returning no number, is
    # named as the shaping gain (it was torch's "sin(): argument 'input' must be Tensor")
    with pytest.raises(TypeError, match=r"call the shaping gain with one time as a Python float \(t = 0\)"):
        kfm.sample(field, x0, steps=4, shaping=lambda t: 1 + 0.1 * torch.sin(t))
    for gain in (lambda t: None, lambda t: torch.ones(2)):
        with pytest.raises(TypeError, match=r"shaping returned (NoneType|Tensor) at t = 0, not one number"):
            kfm.sample(field, x0, steps=4, shaping=gain)


@pytest.mark.parametrize("seeds", [[2.7, 0.2], [True, False], ["1", "2"], torch.tensor([0.5, 1.5])])
def test_seeds_are_checked_as_given_not_truncated(seeds):
    # int() ran before noise() checked them: [2.7, 0.2] sampled seeds (2, 0)
    with pytest.raises(ValueError, match=r"seeds must be integers in \[0, 2\*\*32\)"):
        kfm.sample(GaussianTarget(), seeds=seeds, shape=(2,), steps=2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(profile="no"), "profile must be True or False, got 'no'"),                 # was read as True
    (dict(dtype=torch.int64), "dtype must be a floating torch dtype"),               # integer noise before
    (dict(dtype=torch.complex64), "dtype must be a floating torch dtype"),
])
def test_flags_and_dtypes_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kfm.sample(GaussianTarget(), seeds=[0], shape=(2,), **{"steps": 2, **kwargs})


def test_extreme_tolerances_step_instead_of_failing_as_nan(x0):
    # the initial-step estimate was inf/inf, reported as a non-finite velocity at t = nan
    with pytest.raises(RuntimeError, match="dopri5 exceeded max_steps = 20 attempted steps with 16 samples unfinished") as info:
        kfm.sample(GaussianTarget(), x0, solver="dopri5", rtol=1e-100, atol=1e-100, max_steps=20)
    # its own class (still a RuntimeError), naming the samples short of t = 1: here all of them
    assert isinstance(info.value, StepLimitError) and kfm.StepLimitError is StepLimitError
    assert info.value.max_steps == 20 and info.value.indices == list(range(len(x0)))


def test_the_step_limit_error_names_the_unfinished_samples_in_its_message():
    # the README: StepLimitError names the samples short of t = 1 (as NonFiniteVelocityError
    # names its samples); rows 1 and 3 are stiff (rate 1e4), rows 0 and 2 finish in 4 steps
    x0 = torch.tensor([[1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)

    def stiff_where_marked(x, t):       # x[:, 1] never moves: it marks the stiff rows
        rate = torch.where(x[:, 1] > 0, 1e4, 1.0)
        return torch.stack([-rate * x[:, 0], torch.zeros_like(t)], dim=1)

    with pytest.raises(StepLimitError, match=r"2 samples unfinished \(sample indices \[1, 3\]\)") as info:
        kfm.sample(stiff_where_marked, x0, solver="dopri5", max_steps=30)
    assert info.value.indices == [1, 3]


def test_zero_dimensional_tensors_and_numpy_grids_are_accepted(x0):
    field = GaussianTarget()
    plain = kfm.sample(field, x0, steps=4, split=0.5)
    given = kfm.sample(field, x0, steps=4, split=torch.tensor(0.5), grid=np.linspace(0.0, 1.0, 5))
    assert torch.equal(plain.x, given.x) and torch.equal(plain.early, given.early)
    tight = kfm.sample(field, x0, solver="dopri5", rtol=torch.tensor(1e-6, dtype=torch.float64), max_steps=np.int64(1000))
    assert torch.equal(tight.x, kfm.sample(field, x0, solver="dopri5", rtol=1e-6).x)


def test_seeds_may_be_a_tensor_or_array_and_grids_an_array():
    # the accepted forms the type hints name: seeds as a list, range, NumPy array or tensor give
    # one result; a NumPy grid gives the tensor grid's
    field = GaussianTarget()
    want = kfm.sample(field, seeds=[4, 9, 2], shape=(2,), steps=4)
    for seeds in (range(4, 10, 5), np.array([4, 9]), torch.tensor([4, 9]), torch.tensor([4, 9], dtype=torch.int32)):
        got = kfm.sample(field, seeds=seeds, shape=(2,), steps=4)
        assert got.seeds == (4, 9) and torch.equal(got.x, want.x[:2]) and torch.equal(got.kpe, want.kpe[:2])
    assert torch.equal(kfm.noise(np.array([4, 9, 2]), (2,)), kfm.noise(torch.tensor([4, 9, 2]), (2,)))
    cosine = kfm.time_grid("cosine", 6)
    assert torch.equal(kfm.time_grid(cosine.numpy()), cosine)
    assert torch.equal(kfm.time_grid(cosine.numpy().astype(np.float32), dtype=torch.float32), cosine.float())
    on_array = kfm.sample(field, seeds=[4, 9], shape=(2,), grid=cosine.numpy())
    assert torch.equal(on_array.x, kfm.sample(field, seeds=[4, 9], shape=(2,), grid=cosine).x)


def test_numpy_scalars_and_constant_gains_are_accepted(x0):
    field = GaussianTarget(mean=1.0, std=0.5)
    plain = kfm.sample(field, x0, steps=10, split=0.5, shaping=lambda t: 1.2)
    numpy = kfm.sample(field, x0, steps=np.int64(10), split=np.float32(0.5), shaping=lambda t: 1.2)
    assert torch.equal(plain.x, numpy.x) and torch.equal(plain.early, numpy.early)
    const = kfm.sample(field, x0, solver="dopri5", shaping=lambda t: 1.2, first_step=np.float64(0.01))
    tensor = kfm.sample(field, x0, solver="dopri5", shaping=lambda t: torch.full_like(t, 1.2), first_step=0.01)
    assert torch.equal(const.x, tensor.x) and torch.equal(const.kpe, tensor.kpe)


def test_wrong_device_is_reported(x0):
    class Meta(nn.Module):
        def forward(self, x, t):
            return torch.empty_like(x, device="meta")

    with pytest.raises(ValueError, match="device|dtype|on meta"):
        kfm.sample(Meta(), x0, steps=2)


class ChangesOnThirdCall:
    """-x, except that the third call returns ``change(-x)``: one velocity per sample only, or
    float32 for float64 samples. Broadcast or promoted into the state, either went unnoticed."""

    def __init__(self, change):
        self.change, self.calls = change, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.change(-x) if self.calls == 3 else -x


@pytest.mark.parametrize("solver", [*FIXED, "dopri5"])
@pytest.mark.parametrize("change, message", [
    (lambda v: v[:, :1], r"returned shape \(16, 1\) .*but x has shape \(16, 3\)"),
    (lambda v: v.float(), r"returned dtype torch.float32 .*but x has dtype torch.float64"),
])
def test_every_velocity_call_is_checked_not_only_the_first(solver, change, message, x0):
    velocity = ChangesOnThirdCall(change)
    with pytest.raises(ValueError, match=message) as refused:
        kfm.sample(velocity, x0, steps=4, solver=solver)
    assert velocity.calls == 3  # stopped at the call that went wrong
    if solver == "euler":
        assert " at step 2 (t = 0.5)" in str(refused.value)


@pytest.mark.parametrize("solver", [*FIXED, "dopri5"])
def test_a_velocity_that_changes_its_input_in_place_is_refused(solver, x0):
    def halving(x, t):  # a net that rescales its input in place, then answers for the original x
        x.mul_(0.5)
        return -2.0 * x

    given = x0.clone()
    with pytest.raises(ValueError, match=r"changed its input x in place \(step 0, t = 0\)"):
        kfm.sample(halving, given, steps=4, solver=solver)
    later = lambda x, t: (x.mul_(1.0) if bool(t[0] > 0.5) else x).neg()  # noqa: E731
    if solver != "dopri5":  # dopri5 hands the state to the velocity at its first call only
        with pytest.raises(ValueError, match=r"in place \(step 3, t = 0.75\)"):
            kfm.sample(later, x0.clone(), steps=4, solver=solver)
    copying = lambda x, t: halving(x.clone(), t)  # noqa: E731
    res = kfm.sample(copying, given.clone(), steps=4, solver=solver)
    ref = kfm.sample(lambda x, t: -x, given.clone(), steps=4, solver=solver)
    assert torch.equal(res.x, ref.x) and torch.equal(res.kpe, ref.kpe)
    with torch.inference_mode():  # no version counters there: nothing to check, nothing refused
        assert kfm.sample(lambda x, t: -x, given.clone(), steps=4, solver=solver).kpe.shape == (16,)


@pytest.mark.parametrize("solver", [*FIXED, "dopri5"])
def test_a_velocity_that_changes_its_time_in_place_does_not_move_the_clock(solver):
    # dopri5 handed a float64 state's velocity its own stage-time tensor: a net clamping t in place
    # moved the samples' times (end points 0.07 off at rtol 1e-5, KPE 4–7 % low)
    w = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def clamping(x, t):
        t.clamp_(min=0.1)
        return 3 * torch.tanh(x @ w.T) * torch.cos(20 * t)[:, None]

    def copying(x, t):
        return 3 * torch.tanh(x @ w.T) * torch.cos(20 * t.clamp(min=0.1))[:, None]

    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    steps = {} if solver == "dopri5" else {"steps": 8}
    a, b = (kfm.sample(v, x0, solver=solver, **steps) for v in (clamping, copying))
    assert torch.equal(a.x, b.x) and torch.equal(a.kpe, b.kpe)
    torch.testing.assert_close(a.times, b.times, rtol=0, atol=0, equal_nan=True)  # dopri5 pads with NaN


@pytest.mark.parametrize("solver", FIXED)
@pytest.mark.parametrize("change", ["numpy", "data", "requires_grad"])
def test_a_velocity_that_changes_its_time_unseen_does_not_change_the_next_stages(solver, change):
    # changes torch's version counter does not see: each stage must get its own time tensor (one
    # shared between a step's end and the next step's start carried the net's ×1000 into the next
    # stage, KPE 2e5 instead of 0.8; helper-163)
    def net(x, t):
        if t.requires_grad:
            raise AssertionError("a stage received a time tensor that requires grad")
        if change == "numpy":
            t.numpy()[:] *= 1000.0
        elif change == "data":
            t.data.mul_(1000.0)
        else:
            t.requires_grad_()
        return -x * (t.detach() / (1000.0 if change != "requires_grad" else 1.0))[:, None]

    x0 = kfm.noise(range(2), (3,), dtype=torch.float64)
    res = kfm.sample(net, x0, steps=4, solver=solver)
    ref = kfm.sample(lambda x, t: -x * t[:, None], x0, steps=4, solver=solver)
    assert torch.equal(res.x, ref.x) and torch.equal(res.kpe, ref.kpe)


# aten ops a step makes besides the velocity's: per stage its input state (x + Σ c·v: one op,
# then in-place sums), its time tensor (a fill) and its ‖v‖² (reshape, vecdot into the buffer),
# then the update. 8eaafc0 made 6 / 12 / 14 / 27 / 30 (a fill every stage, two index ops per
# norm row, a new tensor for every partial sum).
OPS_PER_STEP = {"euler": 5, "midpoint": 10, "heun": 10, "rk4": 19, "rk4_38": 22}


@pytest.mark.parametrize("solver", FIXED)
def test_a_fixed_step_makes_few_aten_ops_besides_the_velocitys(solver):
    # on a GPU every op is a kernel launch or at least a dispatch, ~10 µs of host time that a small
    # net does not hide (BENCHMARKS.md, "KPE accounting overhead"); counted, not timed
    from torch.profiler import ProfilerActivity, profile

    x0 = kfm.noise(range(2), (3, 8))
    kts = kfm.KTS()

    def ops(steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            kfm.sample(lambda x, t: -x, x0, steps=steps, solver=solver, shaping=kts, profile=True)
        return sum(1 for e in prof.events()
                   if e.cpu_parent is None and e.name.startswith("aten::") and e.name != "aten::neg")

    kfm.sample(lambda x, t: -x, x0, steps=2, solver=solver)
    per_step = (ops(12) - ops(4)) / 8
    assert per_step <= OPS_PER_STEP[solver]


@pytest.mark.parametrize("solver", ["euler", "heun", "dopri5"])
def test_the_in_place_refusal_says_whether_the_callers_x0_changed(solver, x0):
    # dopri5 integrates a copy of x0: its refusal must not tell the caller that x0 was altered
    given = x0.clone()
    with pytest.raises(ValueError, match="changed its input x in place") as refused:
        kfm.sample(lambda x, t: x.mul_(0.5), given, steps=4, solver=solver)
    altered = not torch.equal(given, x0)
    assert altered == (solver != "dopri5")
    assert ("an x0 passed in is now changed too" in str(refused.value)) == altered


def test_seeds_path_records_seeds_in_the_frame():
    res = kfm.sample(GaussianTarget(), seeds=[4, 9], shape=(2,), steps=4)
    frame = res.to_frame()
    assert frame["seed"].tolist() == [4, 9]
    once = kfm.sample(GaussianTarget(), seeds=(s for s in [4, 9]), shape=(2,), steps=4)  # read only once
    assert once.seeds == (4, 9) and once.to_frame()["seed"].tolist() == [4, 9]
    assert torch.equal(once.x, res.x)
    assert set(frame.columns) >= {"kpe", "kpe_raw", "early", "late", "peak", "nfe"}
    assert res.x.dtype == torch.float32 and res.kpe.dtype == torch.float64



@pytest.mark.parametrize("solver", ["euler", "dopri5"])
def test_the_result_records_whether_a_gain_acted(solver):
    # figures name η only where a gain acts, and read it here; the per-sample table keeps its columns
    x0 = torch.zeros(2, 2)
    for shaping, shaped in ((None, False), (kfm.KTS(), True), (lambda t: 1.5 + 0 * t, True)):
        res = kfm.sample(GaussianTarget(), x0, solver=solver, shaping=shaping)
        assert res.shaped is shaped and "shaped" not in res.columns()


@pytest.mark.parametrize("solver", ["heun", "dopri5"])
def test_the_frame_columns_are_the_results_fields_in_the_documented_order_and_dtypes(solver):
    # under a gain kpe and kpe_raw differ, so a column that read the wrong field would show
    res = kfm.sample(GaussianTarget(mean=1.0), seeds=[4, 9, 2**32 - 1], shape=(2,), steps=4, solver=solver,
                     shaping=kfm.KTS())
    columns = res.columns()
    names = ["seed", "kpe", "kpe_raw", "early", "late", "peak", "peak_time", "nfe", "steps", "nonfinite"]
    assert list(columns) == names and list(res.to_frame().columns) == names
    assert columns["seed"].dtype == np.int64 and columns["seed"].tolist() == [4, 9, 2**32 - 1]
    assert not np.array_equal(columns["kpe"], columns["kpe_raw"])
    for name in names[1:]:
        value = getattr(res, name)
        expected = value.numpy() if isinstance(value, torch.Tensor) else np.full(3, value)
        assert np.array_equal(columns[name], expected), name
    for name in ("nfe", "steps"):
        assert columns[name].dtype == np.int64

# --- the analytic targets' arguments ------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda: GaussianTarget(std=True), "std must be a positive finite number, got True"),
    (lambda: GaussianTarget(mean=True), "mean must hold real numbers, got dtype torch.bool"),
    (lambda: GaussianTarget(mean=float("nan")), "mean must be finite"),
    (lambda: PointTarget(torch.tensor([1.0, math.inf])), "point must be finite"),
    (lambda: kfm.GaussianMixtureTarget(torch.zeros(2, 2), weights=[math.nan, 1.0]), "weights must be"),
    (lambda: kfm.GaussianMixtureTarget(torch.zeros(2, 2), weights=torch.tensor([True, False])), "weights must hold"),
    (lambda: kfm.GaussianMixtureTarget(torch.zeros(2, 2), std=True), "std must be a positive finite number"),
])
def test_bad_target_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_mean_with_one_row_per_sample_is_refused():
    # a (B, D) mean ran with a different mean per row when the batch size happened to match
    x0 = kfm.noise(range(4), (2,), dtype=torch.float64)
    for field in (GaussianTarget(torch.arange(8.0).reshape(4, 2)), PointTarget(torch.zeros(4, 2))):
        with pytest.raises(ValueError, match=r"of shape \(4, 2\) does not broadcast to one sample's shape \(2,\)"):
            kfm.sample(field, x0, steps=2)


def test_the_mean_shape_rule_is_torchs_broadcasting_and_imports_nothing_heavy():
    import itertools
    import subprocess
    import sys

    from kinetic_fm.fields.analytic import _check_sample_shape

    sizes = [(), (1,), (3,), (1, 3), (2, 3), (2, 1), (4, 2, 3), (1, 1, 3)]
    for loc, sample in itertools.product(sizes, sizes):
        try:
            expected = torch.broadcast_shapes(loc, sample) == sample
        except RuntimeError:
            expected = False
        try:
            _check_sample_shape("mean", torch.zeros(loc), torch.zeros((5, *sample)))
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == expected, (loc, sample)
    # torch.broadcast_shapes imported sympy (about 0.6 s) on the first field call of a process
    code = ("import sys, kinetic_fm as kfm; kfm.sample(kfm.GaussianTarget(1.0), seeds=range(2), shape=(2,), "
            "steps=2); print('sympy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_numpy_and_zero_dimensional_stds_and_number_times_work():
    x = kfm.noise(range(3), (2,), dtype=torch.float64)
    t = torch.full((3,), 0.25, dtype=torch.float64)
    plain = GaussianTarget(1.0, 0.5)(x, t)
    for std in (np.float32(0.5), torch.tensor(0.5)):
        assert torch.equal(GaussianTarget(1.0, std)(x, t), plain)
    assert torch.equal(GaussianTarget(1.0, 0.5)(x, 0.25), plain)          # a number t: one time for all
    means = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.equal(kfm.GaussianMixtureTarget(means, np.float32(0.25))(x, t),
                       kfm.GaussianMixtureTarget(means, 0.25)(x, t))


def test_settings_the_chosen_solver_ignores_are_still_checked(x0):
    # rtol='x' with euler and steps=-5 with dopri5 ran; a typo is a typo whichever solver runs
    with pytest.raises(ValueError, match="rtol must be a positive finite number, got 'x'"):
        kfm.sample(GaussianTarget(), x0, steps=4, rtol="x")
    with pytest.raises(ValueError, match="max_steps must be a positive integer, got -1"):
        kfm.sample(GaussianTarget(), x0, steps=4, max_steps=-1)
    with pytest.raises(ValueError, match="steps must be a positive integer, got -5"):
        kfm.sample(GaussianTarget(), x0, solver="dopri5", steps=-5)
    with pytest.raises(TypeError, match="velocity must be callable as velocity"):
        kfm.sample(None, x0, steps=2)
    with pytest.raises(TypeError, match="PosteriorRecorder records an EmpiricalFlow, got GaussianTarget"):
        kfm.PosteriorRecorder(GaussianTarget())


@pytest.mark.parametrize("n", [2.7, True, 0, "3"])
def test_mixture_draws_need_a_positive_integer_count(n):
    # torch.multinomial's own messages before ("only supports 1D or 2D", or a float count taken)
    with pytest.raises(ValueError, match=r"n must be a positive integer"):
        kfm.GaussianMixtureTarget(torch.zeros(2, 2)).sample_target(n)
    assert kfm.GaussianMixtureTarget(torch.zeros(2, 2)).sample_target(np.int64(3))[0].shape == (3, 2)


def test_built_in_fields_follow_their_parameters_through_the_device_copies():
    # the fields keep one copy of their parameters per (device, dtype), so a GPU run does not
    # copy them in every call; the copies must never go stale or travel with the field
    import copy
    import pickle

    field = GaussianTarget(mean=torch.zeros(3), std=0.5)
    x, t = torch.randn(4, 3), torch.full((4,), 0.3)
    expected = lambda mean: GaussianTarget(mean=mean, std=0.5)(x.double(), t.double()).float()  # noqa: E731
    field(x, t)
    field.mean.add_(1.0)                                   # in place
    torch.testing.assert_close(field(x, t), expected(torch.ones(3)))
    field.mean = torch.full((3,), 5.0, dtype=torch.float64)  # reassigned
    torch.testing.assert_close(field(x, t), expected(torch.full((3,), 5.0)))
    for twin in (copy.deepcopy(field), pickle.loads(pickle.dumps(field))):
        assert twin._placed._copies == {}
        torch.testing.assert_close(twin(x, t), field(x, t), rtol=0, atol=0)
    fresh = PointTarget(torch.ones(3))
    with torch.inference_mode():                           # a first call under inference mode
        fresh(x, t)
    xr = x.clone().requires_grad_(True)
    fresh(xr, t).sum().backward()                          # its copy can still join autograd
    torch.testing.assert_close(xr.grad, torch.full_like(x, -1 / 0.7))


def test_the_package_lists_its_public_names_and_not_its_own_imports():
    import kinetic_fm

    listed = dir(kinetic_fm)
    assert set(kinetic_fm.__all__) <= set(listed) and "KineticODESolver" in listed
    assert not {"annotations", "importlib", "Any"} & set(listed)
    for name in kinetic_fm.__all__:                   # each listed public name resolves
        assert getattr(kinetic_fm, name) is not None


def _mixture_velocity_reference(x, t, means, std, weights):
    """Float64 NumPy/SciPy: v = Σ_k π_k(x, t)·[μ_k + (tσ² − (1 − t))/s²·(x − tμ_k)], s² = (1 − t)² + t²σ²,
    π_k ∝ w_k·N(x; tμ_k, s²I) (the posterior of the component given x_t)."""
    from scipy.special import logsumexp

    x, t, mu = x.numpy(), t.numpy()[:, None, None], means.numpy()[None]
    s2 = (1 - t) ** 2 + t**2 * std**2
    diff = x[:, None, :] - t * mu
    logits = np.log(weights.numpy())[None] - 0.5 * (diff**2).sum(-1) / s2[:, :, 0]
    post = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    per_component = mu + (t * std**2 - (1 - t)) / s2 * diff
    return (post[:, :, None] * per_component).sum(1)


def test_mixture_velocity_is_the_posterior_mean_of_its_components():
    means = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [0.5, 3.0]], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    field = kfm.GaussianMixtureTarget(means, std=0.4, weights=weights)
    x = kfm.noise(range(6), (2,), dtype=torch.float64) * 2
    t = torch.tensor([0.0, 0.1, 0.4, 0.8, 0.95, 0.999], dtype=torch.float64)
    want = _mixture_velocity_reference(x, t, means, 0.4, weights)
    np.testing.assert_allclose(field(x, t).numpy(), want, rtol=1e-10, atol=1e-12)
    # one component is the Gaussian target
    one = kfm.GaussianMixtureTarget(means[:1], std=0.4)
    torch.testing.assert_close(one(x, t), kfm.GaussianTarget(means[0], 0.4)(x, t), rtol=1e-12, atol=1e-12)
    # draws: each component's spread is σ, and labels follow the weights
    points, labels = field.sample_target(40_000, generator=torch.Generator().manual_seed(0))
    assert (points.dtype, labels.dtype, points.device.type) == (torch.float64, torch.int64, "cpu")
    assert float((points - means[labels]).std()) == pytest.approx(0.4, rel=0.02)
    np.testing.assert_allclose(torch.bincount(labels, minlength=3).double().numpy() / 40_000, weights.numpy(), atol=0.01)


def test_point_target_trajectory_is_the_straight_line_to_its_point():
    point = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    torch.testing.assert_close(kfm.PointTarget(point).trajectory(x0, 0.3), 0.7 * x0 + 0.3 * point, rtol=0, atol=1e-15)


def test_analytic_trajectories_take_one_time_and_say_so():
    # the refusal offered "or a (B,) tensor", which only the field call takes
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    for field in (kfm.GaussianTarget(torch.ones(2), 0.5), kfm.PointTarget(torch.ones(2))):
        with pytest.raises(ValueError, match=r"^t must be a number in \[0, 1\], got tensor"):
            field.trajectory(x0, torch.full((3,), 0.5))
        with pytest.raises(ValueError, match=r"^t must be a number in \[0, 1\] or a \(B,\) tensor, got 1.5"):
            field(x0, 1.5)


# --- a network left in training mode --------------------------------------------------------------

def _stochastic_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Dropout(0.2), nn.Linear(16, 2))


def test_a_net_in_training_mode_warns_through_every_wrapper():
    """Dropout draws new masks and batch norm normalises by the batch in training mode: the same
    seeds give another KPE on each call (checked), so sampling says so, however the net is held."""
    from kinetic_fm.sampling.guards import TrainingModeWarning

    net = _stochastic_net()
    v_xt = lambda x, t: net(torch.cat([x, t[:, None]], 1))  # noqa: E731  (net in a closure)

    class Held:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x, t):
            return self.inner(torch.cat([x, t[:, None]], 1))

    wrappers = {
        "closure": v_xt,
        "adapter": kfm.ModelTX(lambda t, x: net(torch.cat([x, t[:, None]], 1))),
        "object": Held(net),
        "guidance": kfm.ClassifierFreeGuidance(lambda x, t, y: v_xt(x, t), torch.zeros(4), 2.0, 1.0),
    }
    for name, velocity in wrappers.items():
        with pytest.warns(TrainingModeWarning, match=r"BatchNorm1d at '1', Dropout at '2'.*net.eval\(\)"):
            kfm.sample(velocity, seeds=range(4), shape=(2,), steps=4)
        assert net.training, name  # the mode is left as it was
    with pytest.warns(TrainingModeWarning):
        a, b = (kfm.sample(v_xt, seeds=range(4), shape=(2,), steps=4).kpe for _ in range(2))
    assert not torch.equal(a, b)  # why the warning exists

    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        c, d = (kfm.sample(v_xt, seeds=range(4), shape=(2,), steps=4).kpe for _ in range(2))
    assert torch.equal(c, d)


def test_a_randomised_leaky_relu_in_training_mode_warns():
    # nn.RReLU draws a random negative slope per element while training: no warning was given
    from kinetic_fm.sampling.guards import TrainingModeWarning

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.RReLU(), nn.Linear(8, 2))
    for held in (net, torch.jit.script(net)):
        with pytest.warns(TrainingModeWarning, match=r"RReLU at '1'"):
            a, b = (kfm.sample(lambda x, t: held(x), seeds=range(4), shape=(2,), steps=4).kpe for _ in range(2))
        assert not torch.equal(a, b)  # why it warns
    fixed = nn.Sequential(nn.Linear(2, 8), nn.RReLU(0.2, 0.2), nn.Linear(8, 2))  # lower = upper: no draw
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(lambda x, t: fixed(x), seeds=range(4), shape=(2,), steps=4)


def test_the_training_mode_check_follows_only_what_the_velocity_reads():
    """A training module holds the net being trained (dropout active) and its EMA copy in eval;
    sampling the EMA copy through a closure or a method of that module is quiet, sampling the
    trained net or the module itself warns."""
    import copy

    from kinetic_fm.sampling.guards import TrainingModeWarning

    class Trainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = _stochastic_net()
            self.ema = copy.deepcopy(self.model)

        def ema_closure(self):
            return lambda x, t: self.ema(torch.cat([x, t[:, None]], 1))

        def ema_velocity(self, x, t):
            return self._ema_call(torch.cat([x, t[:, None]], 1))   # through another method

        def _ema_call(self, inputs):
            return self.ema(inputs)

        def model_velocity(self, x, t):
            return self.model(torch.cat([x, t[:, None]], 1))

        def forward(self, x, t):
            return self.model(torch.cat([x, t[:, None]], 1))

    trainer = Trainer().train()
    trainer.ema.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        for velocity in (trainer.ema_closure(), trainer.ema_velocity):
            kfm.sample(velocity, seeds=range(4), shape=(2,), steps=2)
    loud = {
        "method": trainer.model_velocity,
        "the module called whole": lambda x, t: trainer(x, t),
        "an attribute looked up by name": lambda x, t: getattr(trainer, "model")(torch.cat([x, t[:, None]], 1)),
    }
    for name, velocity in loud.items():
        with pytest.warns(TrainingModeWarning, match=r"Dropout at '(model\.)?2'"):
            kfm.sample(velocity, seeds=range(4), shape=(2,), steps=2)


def test_a_buffer_or_parameter_read_beside_the_sampled_net_does_not_pull_in_the_training_net():
    """An eval wrapper scales its EMA net's output by a buffer and a parameter while the net being
    trained sits beside it: buffers and parameters are tensors that hold no net, so reading them
    must not make the walk take the whole wrapper (and find the training net)."""
    from kinetic_fm.sampling.guards import TrainingModeWarning

    class Sampler(nn.Module):
        def __init__(self):
            super().__init__()
            self.ema = _stochastic_net().eval()
            self.trained = _stochastic_net()
            self.register_buffer("scale", torch.tensor(0.5))
            self.gain = nn.Parameter(torch.tensor(2.0))

        def velocity(self, x, t):
            return self.gain * self.scale * self.ema(torch.cat([x, t[:, None]], 1))

        def trained_velocity(self, x, t):
            return self.scale * self.trained(torch.cat([x, t[:, None]], 1))

    sampler = Sampler().eval()
    sampler.trained.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(sampler.velocity, seeds=range(4), shape=(2,), steps=2)
        kfm.sample(lambda x, t: sampler.scale * sampler.ema(torch.cat([x, t[:, None]], 1)),
                   seeds=range(4), shape=(2,), steps=2)
    with pytest.warns(TrainingModeWarning, match="Dropout at '2'"):
        kfm.sample(sampler.trained_velocity, seeds=range(4), shape=(2,), steps=2)


def test_the_training_mode_check_still_finds_nets_behind_methods_containers_and_descriptors():
    """Following only the attributes a velocity reads must not lose a training net that is reached
    some other way: through a container's methods, a cached_property, super(), or a chain of
    helper methods (found on every one of many identical checks: bound methods are made anew
    at each read, so the walk must not mistake a new one for one it has seen)."""
    import functools

    from kinetic_fm.sampling.guards import TrainingModeWarning, _reachable_modules

    def call(m, x, t):
        return m(torch.cat([x, t[:, None]], 1))

    nets, models = {"model": _stochastic_net()}, [_stochastic_net()]

    class Lazy:
        def __init__(self, trainer):
            self.trainer = trainer

        @functools.cached_property
        def model(self):
            return self.trainer

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = _stochastic_net()

        def velocity(self, x, t):
            return call(self.model, x, t)

    class Child(Base):
        def velocity(self, x, t):
            return super().velocity(x, t)

    class Chain:  # velocity -> four helpers -> the net
        def __init__(self):
            self.model = _stochastic_net()

        def velocity(self, x, t):
            return self._a(x, t)

        def _a(self, x, t):
            return self._b(x, t)

        def _b(self, x, t):
            return self._c(x, t)

        def _c(self, x, t):
            return self._d(x, t)

        def _d(self, x, t):
            return call(self.model, x, t)

    lazy, chain = Lazy(_stochastic_net()), Chain()
    velocities = {
        "dict.get": lambda x, t: call(nets.get("model"), x, t),
        "dict.values": lambda x, t: call([*nets.values()][0], x, t),
        "list.__getitem__": lambda x, t: call(models.__getitem__(0), x, t),
        "cached_property": lambda x, t: call(lazy.model, x, t),
        "super()": Child().train().velocity,
        "four helper methods": chain.velocity,
    }
    for name, velocity in velocities.items():
        with pytest.warns(TrainingModeWarning, match="Dropout"):
            kfm.sample(velocity, seeds=range(4), shape=(2,), steps=2)
    assert all(any(m is chain.model for m in _reachable_modules(chain.velocity)) for _ in range(300))


def test_the_training_mode_check_follows_static_and_class_methods():
    """A method that calls a staticmethod or classmethod of its class reaches the net they read
    (a class attribute, which the object's own attributes do not show), and a function held on
    the object is followed as a function, not as a method of the object that holds it."""
    from kinetic_fm.sampling.guards import TrainingModeWarning

    def call(m, x, t):
        return m(torch.cat([x, t[:, None]], 1))

    class Holder:
        net = _stochastic_net()

        @staticmethod
        def _static(x, t):
            return call(Holder.net, x, t)

        @classmethod
        def _class(cls, x, t):
            return call(cls.net, x, t)

        def static_velocity(self, x, t):
            return self._static(x, t)

        def class_velocity(self, x, t):
            return self._class(x, t)

    class Owner:  # the EMA net (eval) is called through a function it holds, the trained one sits beside
        def __init__(self):
            self.ema, self.trained = _stochastic_net().eval(), _stochastic_net()
            self.ema_call = lambda inputs: self.ema(inputs)

        def velocity(self, x, t):
            return self.ema_call(torch.cat([x, t[:, None]], 1))

    holder = Holder()
    for velocity in (holder.static_velocity, holder.class_velocity):
        with pytest.warns(TrainingModeWarning, match="Dropout at '2'"):
            kfm.sample(velocity, seeds=range(4), shape=(2,), steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(Owner().velocity, seeds=range(4), shape=(2,), steps=2)


def test_a_long_chain_of_helper_methods_is_followed_within_the_budget():
    """A thousand methods calling one another on the same object, the last calling the net (deeper
    than Python lets it run: only the check is called): the walk has no recursion to overflow,
    and a method costs it one object of its budget, so the net is still found."""
    from kinetic_fm.sampling.guards import TrainingModeWarning, warn_if_training

    source = "class Deep:\n" + "".join(
        f"    def m{i}(self, x, t):\n        return self.m{i + 1}(x, t)\n" for i in range(1000))
    namespace: dict = {}
    exec(source + "    def m1000(self, x, t):\n        return self.net(x)\n", namespace)
    deep = namespace["Deep"]()
    deep.net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with pytest.warns(TrainingModeWarning, match="Dropout"):
        warn_if_training(deep.m0)


def test_the_training_mode_check_finds_nets_in_containers_and_survives_odd_objects():
    from kinetic_fm.sampling.guards import TrainingModeWarning

    net = _stochastic_net()

    class Ensemble:  # nets in a dict, beside a long list the walk must not crawl through
        def __init__(self):
            self.nets, self.cache = {"main": net}, [torch.zeros(1)] * 100_000

        def __call__(self, x, t):
            return self.nets["main"](torch.cat([x, t[:, None]], 1))

    with pytest.warns(TrainingModeWarning, match="Dropout"):
        kfm.sample(Ensemble(), seeds=range(4), shape=(2,), steps=2)
    class Slotted:  # no __dict__: what it holds is in its slots
        __slots__ = ("unset", "net")

        def __init__(self, net):
            self.net = net

        def __call__(self, x, t):
            return self.net(torch.cat([x, t[:, None]], 1))

    slotted = Slotted(net)
    for velocity in (slotted, lambda x, t: slotted.net(torch.cat([x, t[:, None]], 1))):
        with pytest.warns(TrainingModeWarning, match="Dropout"):
            kfm.sample(velocity, seeds=range(4), shape=(2,), steps=2)
    queue, pool = collections.deque([net]), {net}  # a deque (a rolling buffer of checkpoints) and a set
    for velocity in (lambda x, t: queue[-1](torch.cat([x, t[:, None]], 1)),
                     lambda x, t: next(iter(pool))(torch.cat([x, t[:, None]], 1))):
        with pytest.warns(TrainingModeWarning, match="Dropout"):
            kfm.sample(velocity, seeds=range(4), shape=(2,), steps=2)

    class Proxy:  # refuses __dict__ through getattr: its attributes are read around that, and sampling goes on
        def __getattribute__(self, name):
            if name == "__dict__":
                raise RuntimeError("attributes are remote")
            return object.__getattribute__(self, name)

        def __call__(self, x, t):
            return -x

    assert kfm.sample(Proxy(), seeds=range(2), shape=(2,), steps=2).kpe.shape == (2,)


def test_a_training_net_held_by_an_object_that_hides_its_dict_is_found():
    # the walk read an object's attributes with getattr(obj, "__dict__"), which runs the class's
    # __getattribute__: a proxy raising there hid the training net it holds
    from kinetic_fm.sampling.guards import TrainingModeWarning

    class Proxy:
        def __init__(self, net):
            self.net = net

        def __getattribute__(self, name):
            if name == "__dict__":
                raise RuntimeError("attributes are remote")
            return object.__getattribute__(self, name)

        def __call__(self, x, t):
            return self.net(x)

    proxy = Proxy(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    with pytest.warns(TrainingModeWarning, match="Dropout"):
        kfm.sample(proxy, seeds=range(2), shape=(2,), steps=2)


def test_the_training_mode_check_never_stops_sampling():
    """An object that refuses every attribute, __class__ included (so isinstance fails on it too),
    is skipped: sampling goes on, and a training net held beside it is still found."""
    from kinetic_fm.sampling.guards import TrainingModeWarning, warn_if_training

    class Remote:
        def __getattribute__(self, name):
            raise RuntimeError("attributes are remote")

        def __call__(self, x, t):
            return -x

    remote, net = Remote(), nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        warn_if_training(remote)
        assert kfm.sample(lambda x, t: remote(x, t), seeds=range(2), shape=(2,), steps=2).kpe.shape == (2,)
    with pytest.warns(TrainingModeWarning, match="Dropout"):
        kfm.sample(lambda x, t: remote(x, t) + 0 * net(x), seeds=range(2), shape=(2,), steps=2)


@pytest.mark.parametrize("solver", [*FIXED, "dopri5"])
def test_a_field_whose_attributes_cannot_be_read_is_sampled_as_a_plain_field(solver):
    # the training-mode check skipped such an object, but the solvers read singular_at_one (and
    # dopri5 select) with a bare getattr, so the RuntimeError stopped sampling there
    class Remote:
        def __getattribute__(self, name):
            raise RuntimeError("attributes are remote")

        def __call__(self, x, t):
            return -x

    class Unanswerable:  # a truth value that cannot be had, as of a tensor of several values
        singular_at_one = torch.tensor([True, False])

        def __call__(self, x, t):
            return -x

    want = kfm.sample(lambda x, t: -x, seeds=range(3), shape=(2,), steps=4, solver=solver)
    for velocity in (Remote(), Unanswerable()):
        got = kfm.sample(velocity, seeds=range(3), shape=(2,), steps=4, solver=solver)
        assert torch.equal(got.x, want.x) and torch.equal(got.kpe, want.kpe)


model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))  # a global training net, for the next test


def test_an_attribute_spelled_like_a_global_training_net_is_not_that_net():
    """A periodic-sampling loop: the EMA copy (eval) sits in `self.model` while a global `model`
    trains. `co_names` lists attribute names too; only the globals a function loads count."""
    from kinetic_fm.sampling.guards import TrainingModeWarning

    class Held:
        def __init__(self, net):
            self.model = net

        def __call__(self, x, t):
            return self.model(x)

    ema = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(Held(ema), seeds=range(3), shape=(2,), steps=2)
    with pytest.warns(TrainingModeWarning) as caught:  # the global loaded inside a comprehension
        kfm.sample(lambda x, t: torch.stack([model(row) for row in x]), seeds=range(3), shape=(2,), steps=2)
    assert caught[0].filename == __file__  # the warning points at the caller's line


class Registry:  # module-level holders of nets, reached through a global read by attribute (next test)
    nets = {"a": nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))}

    class Inner:
        net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))

    @staticmethod
    def velocity(x, t):
        return Registry.Inner.net(x)


checkpoints = types.ModuleType("checkpoints")  # a Python module holding a net (next test)
checkpoints.net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))


class TrainingLoop:  # a global training loop: the net it trains and its EMA copy in eval (next test)
    def __init__(self):
        self.model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        self.ema = copy.deepcopy(self.model).eval()


training_loop = TrainingLoop()


def test_the_training_mode_check_follows_attribute_chains_and_globals_read_by_attribute():
    """A class is not walked whole (its methods lead everywhere), but the attributes a velocity
    reads on it are followed, chain by chain (Registry.Inner.net, self.Inner.net), as are the
    objects a Python module holds; a global read only by attribute is followed no further than
    those reads, like a closure's cells."""
    from kinetic_fm.sampling.guards import TrainingModeWarning

    class Outer:
        Inner = Registry.Inner

        def velocity(self, x, t):
            return self.Inner.net(x)

    class Sampler:  # reaches the EMA copy through the trainer it holds
        def __init__(self, trainer):
            self.trainer = trainer

        def velocity(self, x, t):
            return self.trainer.ema(x)

    loud = {
        "a class attribute's dict": lambda x, t: Registry.nets["a"](x),
        "a staticmethod reading a nested class": Registry.velocity,
        "the same, called on an instance": Registry().velocity,
        "a nested class through self": Outer().velocity,
        "the trained net through a global": lambda x, t: training_loop.model(x),
        "a Python module's net": lambda x, t: checkpoints.net(x),
        "the same, the module in a closure": (lambda module: lambda x, t: module.net(x))(checkpoints),
    }
    for name, velocity in loud.items():
        with pytest.warns(TrainingModeWarning, match="Dropout at '1'"):
            kfm.sample(velocity, seeds=range(3), shape=(2,), steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(lambda x, t: training_loop.ema(x), seeds=range(3), shape=(2,), steps=2)
        kfm.sample(Sampler(training_loop).velocity, seeds=range(3), shape=(2,), steps=2)


def test_drop_path_label_dropout_and_batch_statistics_are_recognised():
    from kinetic_fm.sampling.guards import TrainingModeWarning

    class DropPath(nn.Module):  # timm's, and DiT's label embedder (dropout_prob), keep a float
        def __init__(self, attribute):
            super().__init__()
            setattr(self, attribute, 0.1)

        def forward(self, x):
            return x

    class Many:  # the net is the 41st attribute: every attribute is looked at
        def __init__(self, net):
            for i in range(40):
                setattr(self, f"a{i}", i)
            self.net = net

        def __call__(self, x, t):
            return self.net(x)

    class WithAttention(nn.Module):  # an attention block with dropout, held beside the layer used
        def __init__(self, dropout):
            super().__init__()
            self.linear, self.attention = nn.Linear(2, 2), nn.MultiheadAttention(2, 1, dropout=dropout)

        def forward(self, x):
            return self.linear(x)

    tent = nn.BatchNorm1d(2).eval()
    tent.running_mean = tent.running_var = None  # test-time adaptation: batch statistics in eval
    for layer in (DropPath("drop_prob"), DropPath("dropout_prob"), nn.BatchNorm1d(2, track_running_stats=False).eval(),
                  tent):
        with pytest.warns(TrainingModeWarning, match=type(layer).__name__):
            kfm.sample(Many(nn.Sequential(nn.Linear(2, 2), layer)), seeds=range(3), shape=(2,), steps=2)
    with pytest.warns(TrainingModeWarning, match="MultiheadAttention"):
        kfm.sample(Many(WithAttention(0.1)), seeds=range(3), shape=(2,), steps=2)
    ModelOfX = lambda net: (lambda x, t: net(x))  # noqa: E731
    trained = nn.BatchNorm1d(2).eval()
    trained.track_running_stats = False  # the flag alone: eval still uses the running statistics
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(ModelOfX(nn.Sequential(nn.Linear(2, 2), trained)), seeds=range(3), shape=(2,), steps=2)
        kfm.sample(Many(WithAttention(0.0)), seeds=range(3), shape=(2,), steps=2)   # training, no dropout


def test_scripted_nets_in_training_mode_warn_by_their_layers_names():
    from kinetic_fm.sampling.guards import TrainingModeWarning

    class Net(nn.Module):
        def __init__(self, *layers):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 2), *layers)

        def forward(self, x, t):
            return self.body(torch.cat([x, t[:, None]], 1))

    for layer, name in ((nn.Dropout(0.5), "Dropout at 'body.1'"), (nn.BatchNorm1d(2), "BatchNorm1d at 'body.1'")):
        scripted = torch.jit.script(Net(layer))
        with pytest.warns(TrainingModeWarning, match=name):
            kfm.sample(scripted, seeds=range(3), shape=(2,), steps=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", TrainingModeWarning)
            kfm.sample(scripted.eval(), seeds=range(3), shape=(2,), steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(torch.jit.script(Net(nn.Dropout(0.0))), seeds=range(3), shape=(2,), steps=2)


def test_a_net_in_training_mode_without_stochastic_layers_does_not_warn():
    from kinetic_fm.sampling.guards import TrainingModeWarning

    net = TimeMLP()  # training mode (the default), but no dropout or batch norm
    quiet = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.Linear(4, 3)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(net, seeds=range(3), shape=(3,), steps=2, dtype=torch.float64)
        kfm.sample(lambda x, t: quiet(x), seeds=range(3), shape=(3,), steps=2, dtype=torch.float64)


# --- energy accounting at the edges (each test kills a mutant the suite above let through) -----
@pytest.mark.parametrize("solver", FIXED + ["dopri5"])
def test_a_split_at_zero_or_one_puts_the_whole_energy_late_or_early(solver, x0):
    # split = 0: no step starts before it, so early is exactly 0; split = 1: every step does.
    # (early = running[int(split·N) − 1] read running[−1], the total, when int(split·N) = 0.)
    field = GaussianTarget(mean=1.0, std=0.5)
    at_zero = kfm.sample(field, x0, steps=8, solver=solver, split=0.0)
    assert (at_zero.early == 0).all() and torch.equal(at_zero.late, at_zero.kpe) and (at_zero.kpe > 0).all()
    at_one = kfm.sample(field, x0, steps=8, solver=solver, split=1.0)
    assert torch.equal(at_one.early, at_one.kpe) and (at_one.late == 0).all()
    tiny_tau = kfm.sample(field, x0, steps=8, solver=solver, shaping=kfm.KTS(tau_split=0.1))  # int(0.1·8) = 0
    if solver != "dopri5":
        assert (tiny_tau.early == 0).all() and torch.equal(tiny_tau.late, tiny_tau.kpe)


@pytest.mark.parametrize("solver", FIXED + ["dopri5"])
def test_a_tied_peak_is_reported_at_the_first_step(solver, x0):
    # v = 0: every step's increment is 0, so the peak ties everywhere; like the profile's argmax
    # (torch returns the first maximum), peak_time is the first step's start, t = 0, for every solver.
    res = kfm.sample(lambda x, t: torch.zeros_like(x), x0, steps=5, solver=solver, profile=True)
    assert (res.peak == 0).all() and (res.kpe == 0).all()
    assert (res.peak_time == 0).all()
    assert (res.profile.argmax(1) == 0).all()


@pytest.mark.parametrize("solver", ["rk4", "rk4_38"])
def test_a_stage_at_a_steps_end_is_the_grid_point_itself(solver):
    # On the grid (0, 0.03, 0.3, 1), t0 + (t1 − t0) = 0.30000000000000004 ≠ t1 = τ: a stage at c = 1
    # formed as t0 + h fell past τ and took the landing gain. For v = 1 and a gain constant on each
    # phase, rk4 is exact: x(1) = x0 + ∫η and KPE = ½·D·∫η², with the left limit of η at τ.
    a0, b0, tau = 0.2, 0.1, 0.3
    assert 0.03 + (tau - 0.03) != tau                                   # the rounding this test needs
    kts = kfm.KTS(alpha0=a0, beta0=b0, tau_split=tau, launch="constant", landing="constant")
    grid = torch.tensor([0.0, 0.03, tau, 1.0], dtype=torch.float64)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    seen = []

    def unit(x, t):
        seen.extend(t.tolist())
        return torch.ones_like(x)

    res = kfm.sample(unit, x0, grid=grid, solver=solver, shaping=kts)
    gain_integral = tau * (1 + a0) + (1 - tau) * (1 - b0)
    assert torch.allclose(res.x, torch.full_like(x0, gain_integral), rtol=0, atol=1e-15)
    kpe = 0.5 * 3 * (tau * (1 + a0) ** 2 + (1 - tau) * (1 - b0) ** 2)
    assert torch.allclose(res.kpe, torch.full((2,), kpe, dtype=torch.float64), rtol=1e-14, atol=0)
    assert {0.03, tau, 1.0} <= set(seen) and 0.03 + (tau - 0.03) not in seen   # the field sees t1 too


@pytest.mark.parametrize("solver,expected", [
    ("midpoint", 0.8),                                      # its one stage, at τ: η(τ) = 1 − β0
    ("rk4", (1.5 + 2 * 0.8 + 2 * 0.8 + 0.8) / 6),           # stages at 0, τ, τ, 1
    ("rk4_38", (1.5 + 3 * 1.5 + 3 * 0.8 + 0.8) / 8),        # stages at 0, 1/3, 2/3, 1 (none at τ)
])
def test_a_stage_inside_a_step_at_tau_takes_the_landing_gain(solver, expected):
    # Only a stage ending a step on τ takes η's left limit; one inside a step across τ is at t = τ,
    # in the landing phase (t ≥ τ): η(τ) = 1 − β0. It took the launch gain 1 + α0 (midpoint x 1.5).
    kts = kfm.KTS(alpha0=0.5, beta0=0.2, tau_split=0.5, launch="constant", landing="constant")
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    res = kfm.sample(lambda x, t: torch.ones_like(x), x0, steps=1, solver=solver, shaping=kts)
    assert torch.allclose(res.x, torch.full_like(x0, expected), rtol=0, atol=1e-15)


@pytest.mark.parametrize("tau, steps", [(0.75, 2), (0.65, 10), (0.35, 10), (0.45, 10)])
def test_a_midpoint_stage_a_rounding_off_tau_takes_the_landing_gain(tau, steps):
    # t0 + h/2 gives 0.6499999999999999 for τ = 0.65 at 10 steps: that stage took the launch gain
    # (helper-103); v = 1, so x(1) = Σ h·η(midpoint of step i), each step before τ's at 1 + α0
    kts = kfm.KTS(alpha0=0.5, beta0=0.3, tau_split=tau, launch="constant", landing="constant")
    res = kfm.sample(lambda x, t: torch.ones_like(x), torch.zeros(1, 1, dtype=torch.float64), steps=steps,
                     solver="midpoint", shaping=kts)
    on_tau = round(tau * steps - 0.5)
    expected = sum(1.5 if j < on_tau else 0.7 for j in range(steps)) / steps
    assert float(res.x) == pytest.approx(expected, abs=1e-14)


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint", "rk4", "rk4_38"])
@pytest.mark.parametrize("grid, tol", [
    (np.linspace(0, 1, 11), 1e-13),                                  # point 6 is 0.6000000000000001
    (torch.arange(11, dtype=torch.float64) * 0.1, 1e-13),            # the same
    (torch.linspace(0, 1, 11), 1e-6),                                # float32: 0.6000000238
    (np.r_[np.linspace(0, 0.5, 6), np.nextafter(0.6, 0), np.linspace(0.7, 1, 4)], 1e-13),   # just below
])
def test_a_grid_point_a_rounding_off_tau_is_tau_for_the_gain(solver, grid, tol):
    # the usual ways to write ten steps hold τ = 0.6 a few ulps off; the step ending there took
    # the landing gain across η's jump (KPE 1,000× less accurate than grid="uniform", helper-102)
    kts = kfm.KTS(alpha0=0.2, beta0=0.3, launch="constant", landing="constant")
    target = kfm.GaussianTarget(mean=torch.tensor([2.0, -1.0], dtype=torch.float64), std=0.5)
    x0 = kfm.noise(range(3), (2,), dtype=torch.float64)
    uniform = kfm.sample(target, x0, steps=10, solver=solver, shaping=kts)
    given = kfm.sample(target, x0, steps=10, grid=grid, solver=solver, shaping=kts)
    for name in ("x", "kpe", "kpe_raw", "early", "late"):
        torch.testing.assert_close(getattr(given, name), getattr(uniform, name), rtol=tol, atol=tol, msg=name)


def _static_buffer_field(batch, dim):
    """A field that writes every answer into one preallocated tensor and returns it, as
    static-buffer (CUDA-graph, TensorRT, IO-binding) wrappers do."""
    buffer = torch.empty(batch, dim, dtype=torch.float64)

    def field(x, t):
        return buffer.copy_(-x + torch.sin(3 * t)[:, None])
    return field


@pytest.mark.parametrize("solver", ["heun", "rk4", "rk4_38", "dopri5"])
def test_a_field_writing_into_an_earlier_stages_output_is_refused(solver):
    # heun/rk4/dopri5 keep each stage's output until the step ends; a field that overwrote it gave
    # x 0.06-0.09 and KPE 0.008-0.011 off without a word (helper-102)
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"wrote into the tensor it returned for an earlier stage .*\.clone\(\)"):
        kfm.sample(_static_buffer_field(4, 3), x0, steps=5, solver=solver)


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_a_static_buffer_field_is_exact_where_no_earlier_output_is_read_again(solver):
    # euler has one stage, midpoint reads its first stage only to form the second's input
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    plain = kfm.sample(lambda x, t: -x + torch.sin(3 * t)[:, None], x0, steps=5, solver=solver)
    reused = kfm.sample(_static_buffer_field(4, 3), x0, steps=5, solver=solver)
    assert torch.equal(plain.x, reused.x) and torch.equal(plain.kpe, reused.kpe)


def test_no_stage_of_a_field_singular_at_one_evaluates_the_gain_at_one():
    # The last step drops its end stage (rk4 → Heun3, 3 of 4 stages); the unused slot is padded
    # with the step's start time, so a gain defined on [0, 1) — here η = 1 − t, 0 at t = 1 — is
    # never asked for η(1) (a pad at t_{i+1} = 1 raised "a gain must be finite and > 0").
    asked = []

    def to_rest(t):
        asked.append(t)
        return 1.0 - t

    for solver in ("heun", "rk4", "rk4_38"):
        asked.clear()
        res = kfm.sample(PointTarget(torch.ones(3, dtype=torch.float64)), seeds=range(2), shape=(3,), steps=6,
                         solver=solver, shaping=to_rest, dtype=torch.float64)
        assert torch.isfinite(res.kpe).all() and asked and max(asked) < 1.0


def test_a_half_precision_state_is_not_left_to_stall_silently():
    # each update below half an ulp of x rounds away: bfloat16 at 1000 Euler steps ended 47 % of
    # the way to a N(2, 0.5²) target with no error or warning (mean 0.95, single KPEs up to 80 % off)
    field = GaussianTarget(2.0, 0.5)
    for dtype, steps in ((torch.bfloat16, 1000), (torch.bfloat16, 256), (torch.float16, 5000)):
        with pytest.warns(UserWarning, match=f"median step .* below twice {dtype}'s resolution"):
            stalled = kfm.sample(field, seeds=range(256), shape=(2,), steps=steps, dtype=dtype)
        assert abs(float(stalled.x.float().mean()) - 2.0) > 0.05      # what the warning is about: off
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fine = kfm.sample(field, seeds=range(256), shape=(2,), steps=32, dtype=torch.bfloat16)
        assert abs(float(fine.x.float().mean()) - 2.0) < 0.05
        # cosine grids' short end steps collide in bfloat16 from 36 steps, harmlessly: no warning
        kfm.sample(field, seeds=range(4), shape=(2,), steps=50, grid="cosine", dtype=torch.bfloat16)
        # wider states take any increasing float64 grid, a last step of 1e-16 included
        grid = torch.tensor([0.0, 0.5, 1.0 - 1e-16, 1.0], dtype=torch.float64)
        for dtype in (torch.float32, torch.float64):
            kfm.sample(field, seeds=range(2), shape=(2,), grid=grid, dtype=dtype)


def _point_target_kpe_error(field, dtype, **options):
    """The largest relative KPE error over seeds 0..63 of kfm.sample on PointTarget ``field`` (16-d) with
    the start drawn in ``dtype``: every path is a straight line, so the exact KPE is ½‖y − x0‖²."""
    start = kfm.noise(range(64), (16,), dtype=dtype).double()
    exact = 0.5 * (field.point.double() - start).pow(2).sum(dim=1)
    result = kfm.sample(field, seeds=range(64), shape=(16,), dtype=dtype, **options)
    return float(((result.kpe.double() - exact).abs() / exact).max())


def test_dopri5_on_a_half_precision_state_is_warned_of():
    # its stage times round to the state's dtype (near 1 they read as 1, where PointTarget is
    # clamped) and its error control cannot see below the rounding: here the KPE came out 27 % off in
    # bfloat16 with no word, where Euler's 20 steps were within 1.2 % (the warning's figures: test_docs.py)
    field = PointTarget(torch.linspace(-1.0, 1.0, 16))
    for dtype, tol in ((torch.bfloat16, 1e-5), (torch.float16, 1e-2)):      # float16: 0.2 % at 1e-5
        dopri5 = {"solver": "dopri5", "rtol": tol, "atol": tol}
        with pytest.warns(UserWarning, match=f"dopri5 on a {dtype} state"):
            half = _point_target_kpe_error(field, dtype, **dopri5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            single = _point_target_kpe_error(field, torch.float32, **dopri5)
            euler = _point_target_kpe_error(field, dtype, steps=20)
        # what the warning is about: the state's precision is to blame, not dopri5 or its tolerance, for the
        # same solve in float32 is within 2.5e-6, and the tolerance asked for is missed (measured: bfloat16
        # 27 %, float16 11 % here and 5–21 % over other sets of 64 seeds, where a bound of 10 % flipped; at
        # least 1.6e4 times float32's error). float32 in place of the half dtype fails both bounds.
        assert half > 1000 * single and half > tol, (dtype, half, single)
        assert euler < 0.02, (dtype, euler)


def test_a_setting_the_solver_ignores_is_not_ignored_silently():
    # kfm sample refuses --rtol with a fixed-step solver and warns about --steps with dopri5; the
    # library ran them without a word (solver="euler", rtol=1e-8: a misspelt solver looks so)
    import inspect

    from kinetic_fm.sampling.sample import ADAPTIVE_ONLY, FIXED_ONLY

    defaults = inspect.signature(kfm.sample).parameters
    assert {k: defaults[k].default for k in {**ADAPTIVE_ONLY, **FIXED_ONLY}} == {**ADAPTIVE_ONLY, **FIXED_ONLY}
    field = GaussianTarget()
    with pytest.warns(UserWarning, match=r"rtol, max_steps are ignored by solver='euler'"):
        kfm.sample(field, seeds=range(2), shape=(2,), solver="euler", rtol=1e-3, max_steps=3)
    with pytest.warns(UserWarning, match=r"steps is ignored by solver='dopri5': dopri5 chooses its own steps"):
        kfm.sample(field, seeds=range(2), shape=(2,), solver="dopri5", steps=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfm.sample(field, seeds=range(2), shape=(2,), solver="dopri5", rtol=1e-3, atol=1e-4, max_steps=50)
        kfm.sample(field, seeds=range(2), shape=(2,), solver="rk4", steps=7)


def test_steps_beside_a_grid_tensor_is_not_ignored_silently():
    # a tensor grid sets the steps: steps=50 beside an 11-point grid ran 10 steps without a word, where
    # dopri5 warns of the steps it ignores; steps equal to the grid's, or left at its default, say nothing
    field = GaussianTarget()
    grid = torch.linspace(0, 1, 11, dtype=torch.float64)
    with pytest.warns(kfm.SamplerSettingsWarning,
                      match=r"steps is ignored by solver='heun': the grid given has 10 steps, not 50"):
        res = kfm.sample(field, seeds=range(2), shape=(2,), solver="heun", steps=50, grid=grid)
    assert res.steps == 10
    with pytest.warns(kfm.SamplerSettingsWarning, match=r"steps is ignored by solver='euler'"):
        kfm.sample(field, seeds=range(2), shape=(2,), steps=3, grid=grid.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfm.sample(field, seeds=range(2), shape=(2,), solver="heun", grid=grid)
        kfm.sample(field, seeds=range(2), shape=(2,), solver="heun", steps=10, grid=grid)
        kfm.sample(field, seeds=range(2), shape=(2,), solver="heun", steps=50, grid="cosine")


def test_the_sampling_warnings_name_the_callers_line():
    # the resolution warning named torch's no_grad wrapper (stacklevel one short), so the default
    # filter showed it once for every call site together
    import inspect

    with pytest.warns(UserWarning) as caught:
        kfm.sample(GaussianTarget(), seeds=range(2), shape=(2,), steps=200, dtype=torch.bfloat16)
        line = inspect.currentframe().f_lineno - 1
        kfm.sample(GaussianTarget(), seeds=range(2), shape=(2,), solver="euler", rtol=1e-3)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line), (__file__, line + 2)]


def test_a_device_that_is_no_torch_device_is_named_with_x0_given(x0):
    # with x0 given, device='gpu' raised torch's own error listing every device type
    with pytest.raises(ValueError, match=r"^device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'$"):
        kfm.sample(GaussianTarget(), x0, steps=2, device="gpu")


# --- a network in training mode is left as it was found -----------------------------------------

class _RunningShift(nn.Module):
    """Subtracts a running mean of its inputs that it updates in training mode: its training-mode
    output reads the buffer it moves (as spectral norm's does), unlike batch norm's."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("average", torch.zeros(width, dtype=torch.float64))

    def forward(self, rows):
        out = rows - self.average
        if self.training:
            self.average = 0.5 * self.average + 0.5 * rows.mean(0)   # rebinds the buffer
        return out


def _training_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 2),
                         _RunningShift(2)).double().train()


def _as_velocity(net):
    return lambda x, t: net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_sampling_puts_back_the_buffers_a_training_mode_network_moves(solver):
    # kfm.sample moved batch norm's running statistics (and any buffer a training module updates) with
    # every call, so the caller's net, and its later outputs, were changed by sampling with it
    from kinetic_fm.sampling.guards import TrainingModeWarning

    net = _training_net()
    before = copy.deepcopy(net.state_dict())
    held = net[1].running_mean
    x0 = kfm.noise(range(5), (2,), dtype=torch.float64)
    steps = {} if solver == "dopri5" else {"steps": 6}
    with pytest.warns(TrainingModeWarning, match=r"BatchNorm1d at '1'.*puts back"):
        first = kfm.sample(_as_velocity(net), x0, solver=solver, **steps)
    assert net.training and net[1].training
    after = net.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), solver
    assert net[1].running_mean is held
    # the run itself is the training-mode run, its buffers moving call by call: a second run gives
    # the same numbers (it read the shifted `average` before)
    with pytest.warns(TrainingModeWarning):
        second = kfm.sample(_as_velocity(net), x0, solver=solver, **steps)
    assert torch.equal(first.x, second.x) and torch.equal(first.kpe, second.kpe)


def test_sampling_a_training_mode_network_gives_the_samples_of_a_run_that_keeps_its_buffers_moving():
    # the buffers go back after the run, not after each call: Euler by hand on a twin whose buffers
    # move all along gives the same samples
    net, twin = _training_net(), _training_net()
    x0 = kfm.noise(range(5), (2,), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = kfm.sample(_as_velocity(net), x0, steps=6)
    x, h = x0.clone(), 1.0 / 6
    with torch.no_grad():
        for k in range(6):
            x = x + h * _as_velocity(twin)(x, torch.full((5,), k * h, dtype=torch.float64))
    assert not torch.equal(twin[4].average, net[4].average)   # the twin's did move
    torch.testing.assert_close(res.x, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_a_run_stopped_midway_leaves_the_training_mode_network_as_found(interrupt):
    net = _training_net()
    before = copy.deepcopy(net.state_dict())
    calls = []

    def velocity(x, t):
        calls.append(1)
        if len(calls) == 3:
            raise interrupt("stop")
        return net(torch.cat([x, t[:, None]], 1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(interrupt):
            kfm.sample(velocity, kfm.noise(range(5), (2,), dtype=torch.float64), steps=6)
    assert len(calls) == 3
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)


def test_sampling_an_eval_mode_network_writes_none_of_its_buffers():
    from kinetic_fm.sampling.guards import TrainingModeWarning

    net = _training_net().eval()
    buffers = dict(net.named_buffers())
    versions = {name: b._version for name, b in buffers.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingModeWarning)
        kfm.sample(_as_velocity(net), kfm.noise(range(5), (2,), dtype=torch.float64), steps=6)
    assert all(dict(net.named_buffers())[name] is b for name, b in buffers.items())
    assert {name: b._version for name, b in buffers.items()} == versions   # no copy written back


class _Resizer(nn.Module):
    """Grows its buffer in place at its ``grow_at``-th call (training mode): the buffer the guard
    kept cannot take its copy back."""

    def __init__(self, grow_at: int):
        super().__init__()
        self.register_buffer("seen", torch.zeros(3, dtype=torch.float64))
        self.grow_at, self.calls = grow_at, 0

    def forward(self, rows):
        self.calls += 1
        if self.training and self.calls == self.grow_at:
            self.seen.resize_(5)
        return rows


def _resizing_net(grow_at):
    torch.manual_seed(0)
    return nn.Sequential(_Resizer(grow_at), nn.Linear(3, 16), nn.BatchNorm1d(16), nn.SiLU(),
                         nn.Linear(16, 2)).double().train()


def test_a_run_error_is_not_hidden_by_a_buffer_that_cannot_be_put_back():
    # the restore's own RuntimeError (a (5,) buffer cannot take its (3,) copy) replaced the run's
    # error, which only showed as "During handling of the above exception"
    net = _resizing_net(grow_at=2)
    before = copy.deepcopy(net.state_dict())
    calls = []

    def velocity(x, t):
        calls.append(1)
        if len(calls) == 3:
            raise ZeroDivisionError("the run's own error")
        return net(torch.cat([x, t[:, None]], 1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ZeroDivisionError, match="the run's own error") as caught:
            kfm.sample(velocity, kfm.noise(range(5), (2,), dtype=torch.float64), steps=6)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "could not put back" in notes and "seen" in notes and "(5,)" in notes and "(3,)" in notes, notes
    # the other buffers went back all the same
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before if not k.endswith("seen"))


def test_a_buffer_that_cannot_be_put_back_after_a_good_run_is_an_error_that_names_it():
    net = _resizing_net(grow_at=2)
    before = copy.deepcopy(net.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"could not put back .*'seen' of _Resizer.*\(5,\).*\(3,\)") as caught:
            kfm.sample(_as_velocity(net), kfm.noise(range(5), (2,), dtype=torch.float64), steps=6)
    assert isinstance(caught.value.__cause__, RuntimeError)   # torch's own words, chained
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before if not k.endswith("seen"))


def test_a_buffer_grown_to_a_shape_its_copy_broadcasts_to_is_not_filled_by_broadcasting():
    # (3,) -> (2, 3): copy_ broadcast the kept (3,) into both rows and called it put back
    class Reshaper(_Resizer):
        def forward(self, rows):
            if self.training:
                self.seen.resize_(2, 3)
            return rows

    net = nn.Sequential(Reshaper(0), nn.Linear(3, 2)).double().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"'seen' of Reshaper.*\(2, 3\)"):
            kfm.sample(_as_velocity(net), kfm.noise(range(5), (2,), dtype=torch.float64), steps=2)


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
def test_progress_as_a_delay_hides_the_bar_of_a_short_call_and_changes_nothing(capsys, solver):
    """progress=d shows the bar only after d seconds (kfm sample's per-batch step bar); True at once."""
    field = GaussianTarget(mean=1.5, std=0.3)
    steps = {} if solver == "dopri5" else {"steps": 5}
    runs = {p: kfm.sample(field, seeds=range(3), shape=(2,), **steps, solver=solver, progress=p)
            for p in (False, None, 0.0, 3600.0, True)}
    shown = capsys.readouterr().err
    assert shown.count(f"{solver} sampling") >= 2  # 0.0 and True drew it, 3600 s did not get to
    kfm.sample(field, seeds=range(3), shape=(2,), **steps, solver=solver, progress=None)
    assert "sampling" not in capsys.readouterr().err  # None is no bar, as before progress took a delay
    for res in runs.values():
        assert torch.equal(res.x, runs[False].x) and torch.equal(res.kpe, runs[False].kpe)
    kfm.sample(field, seeds=range(3), shape=(2,), **steps, solver=solver, progress=3600.0)
    assert "sampling" not in capsys.readouterr().err
    for bad in (-1.0, float("nan"), "yes"):
        with pytest.raises(ValueError, match="progress must be"):
            kfm.sample(field, seeds=range(3), shape=(2,), **steps, solver=solver, progress=bad)


def test_progress_reads_a_delay_as_every_other_real_setting_does(capsys):
    # helper-239: progress had its own check, which refused a 0-d tensor or a Fraction that every other real
    # setting (checks.check_real) takes; the same words for what it still refuses
    import fractions

    field = GaussianTarget(mean=1.5, std=0.3)
    plain = kfm.sample(field, seeds=range(3), shape=(2,), steps=5, progress=False)
    for delay in (torch.tensor(0.0), np.float32(0.0), fractions.Fraction(0)):
        res = kfm.sample(field, seeds=range(3), shape=(2,), steps=5, progress=delay)
        assert "euler sampling" in capsys.readouterr().err
        assert torch.equal(res.x, plain.x) and torch.equal(res.kpe, plain.kpe)
    for bad in (float("inf"), torch.tensor(-1.0), torch.tensor([1.0]), np.bool_(True) + 0.5j):
        with pytest.raises(ValueError, match=r"progress must be True, False or a delay in seconds >= 0, got"):
            kfm.sample(field, seeds=range(3), shape=(2,), steps=5, progress=bad)


def test_a_dopri5_bar_moves_with_the_least_time_of_a_batch_whose_samples_finish_together(capsys, monkeypatch):
    """dopri5's bar counted finished samples: a batch whose samples finish together (one field's
    samples often do; EFM of CIFAR-10 for minutes) sat at 0/B until it ended. It shows the least t
    of the unfinished samples, to 1e-3, so it moves with every accepted step; here four copies of
    one sample take the same steps, so the bar's marks are the steps' end times."""
    import tqdm.auto

    marks = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            out = super().update(n)
            marks.append((self.n, self.postfix))
            return out

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    field = lambda x, t: torch.cos(6.0 * t)[:, None].expand_as(x)        # noqa: E731
    x0 = kfm.noise([3], (2,), dtype=torch.float64).repeat(4, 1)
    res = kfm.sample(field, x0, solver="dopri5", rtol=1e-6, atol=1e-6, progress=True)
    assert "dopri5 sampling: t" in capsys.readouterr().err
    times = res.times[0][1:int(res.steps[0]) + 1]
    assert (res.times.nan_to_num(-1) == res.times[0].nan_to_num(-1)).all() and len(times) >= 5  # the same steps
    expected = sorted({math.floor(float(s) * 1000) / 1000 for s in times[:-1]} - {0.0}) + [1.0]
    assert [pytest.approx(m, abs=1e-12) for m, _ in marks] == expected
    assert all(p == "0/4 samples done" for _, p in marks[:-1]) and marks[-1][1] == "4/4 samples done"
    quiet = kfm.sample(field, x0, solver="dopri5", rtol=1e-6, atol=1e-6, progress=False)
    assert marks[-1][0] == 1.0 and len(marks) == len(expected) and capsys.readouterr().err == ""
    assert torch.equal(quiet.x, res.x) and torch.equal(quiet.kpe, res.kpe) and torch.equal(quiet.nfe, res.nfe)


def test_a_dopri5_bar_never_goes_back_while_samples_finish_at_their_own_times(monkeypatch):
    import tqdm.auto

    marks = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            out = super().update(n)
            marks.append((self.n, int(self.postfix.split("/")[0])))
            return out

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    x0 = _marked(kfm.noise(range(6), (2,), dtype=torch.float64), [1, 4])
    res = kfm.sample(NaNAfter(0.5), x0, solver="dopri5", on_nonfinite="flag", progress=0.0)
    assert res.nonfinite.nonzero().flatten().tolist() == [1, 4]
    assert [m for m, _ in marks] == sorted(m for m, _ in marks) and marks[-1] == (1.0, 6)
    # the flagged samples, stopped just short of t = 0.5, held the minimum until they were flagged
    assert [d for _, d in marks] == sorted(d for _, d in marks) and all(m < 0.5 for m, d in marks if d < 6)
    assert any(d == 4 for _, d in marks)


@pytest.mark.parametrize("grid, split, shaping, expected", [
    ("uniform", 0.29, None, 0.28),                 # 0.29·100 computes to 28.999…: the split falls at t = 0.28
    ("uniform", None, None, 0.6),                  # the default τ without shaping
    ("uniform", None, kfm.KTS(tau_split=0.45), 0.45),
    ("cosine", 0.6, None, 0.5 * (1 - math.cos(math.pi * 0.6))),   # step 60 of 100 starts at ½(1 − cos 0.6π)
    ("uniform", 1.0, None, 1.0),                   # no late step
])
def test_split_time_is_where_the_sampler_starts_counting_late_energy(grid, split, shaping, expected):
    res = kfm.sample(GaussianTarget(mean=1.5, std=0.3), seeds=range(3), shape=(2,), steps=100, grid=grid,
                     split=split, shaping=shaping, profile=True, dtype=torch.float64)
    assert res.split_time == pytest.approx(expected, abs=1e-12)
    # independent of the index rule: late is the energy of the steps that start at or after split_time
    starts = res.times[:-1]
    torch.testing.assert_close(res.late, res.profile[:, starts >= res.split_time - 1e-12].sum(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(res.early, res.profile[:, starts < res.split_time - 1e-12].sum(1), rtol=1e-12, atol=0)


def test_split_time_of_dopri5_is_the_split_itself():
    res = kfm.sample(GaussianTarget(mean=1.5, std=0.3), seeds=range(2), shape=(2,), solver="dopri5", split=0.37)
    assert res.split_time == 0.37



def _shared_time_field():
    from kinetic_fm.fields.adapters import ModelXT
    return ModelXT(lambda x, t: -x, time="shared")


class _TrackedParts:
    track_parts = True

    def __call__(self, x, t):
        return -x


_KTS = kfm.KTS(beta0=0.05)
_POINT = PointTarget(torch.zeros(3, dtype=torch.float64))
_FLAT_HALF = kfm.KTS(launch="constant", landing="constant", beta0=0.7)   # η(1) = 0.3
# each call is warned of something (a hidden KTS, η(1) ≤ ½ on a singular field, an ignored setting,
# quadrature='left' under dopri5) and refused by a check after the warning: (velocity, the call's
# settings, the one that refuses it put right)
_WARNED_THEN_REFUSED = {
    "hidden KTS, grid under dopri5": (None, dict(shaping=lambda t: _KTS(t), solver="dopri5", grid="cosine"),
                                      dict(grid="uniform")),
    "η(1) ≤ ½, bad rtol": (_POINT, dict(shaping=_FLAT_HALF, steps=4, rtol=-1.0), dict(rtol=1e-5)),
    "ignored rtol, bad grid": (None, dict(solver="euler", steps=4, rtol=1e-8, grid="bogus"), dict(grid="uniform")),
    "ignored steps, grid under dopri5": (None, dict(solver="dopri5", steps=50, grid="cosine"), dict(grid="uniform")),
    "left quadrature, track_parts": (_TrackedParts(), dict(solver="dopri5", quadrature="left"), None),
    "left quadrature, time='shared'": (_shared_time_field(), dict(solver="dopri5", quadrature="left"), None),
}


@pytest.mark.parametrize("case", list(_WARNED_THEN_REFUSED))
def test_a_refused_call_warns_of_nothing(case, x0):
    # each warned first and was refused after: every check that can refuse comes before the warnings
    velocity, settings, _ = _WARNED_THEN_REFUSED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a warning would rise here instead of the refusal
        with pytest.raises(ValueError):
            kfm.sample(velocity or (lambda x, t: -x), x0, **settings)


@pytest.mark.parametrize("case", list(_WARNED_THEN_REFUSED))
def test_the_call_put_right_is_warned_of_in_the_sampler_settings_category(case, x0):
    velocity, settings, fixed = _WARNED_THEN_REFUSED[case]
    if fixed is None:   # the velocity was refused: a plain one
        velocity = None
    with pytest.warns(kfm.SamplerSettingsWarning):
        kfm.sample(velocity or (lambda x, t: -x), x0, **{**settings, **(fixed or {})})
    assert issubclass(kfm.SamplerSettingsWarning, UserWarning)   # a filter on UserWarning still takes it


def test_warn_of_settings_builds_the_grid_only_for_a_half_precision_state(monkeypatch):
    # every fixed-step call built and checked its grid again, which only the half-precision check reads
    import kinetic_fm.sampling.sample as S

    built, build = [], S.time_grid
    monkeypatch.setattr(S, "time_grid", lambda *args, **kwargs: built.append(args) or build(*args, **kwargs))
    field = kfm.GaussianTarget(mean=2.0, std=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (torch.float32, torch.float64):
            S.warn_of_settings(field, solver="euler", steps=1000, grid="cosine", dtype=dtype)
    assert built == []
    with pytest.warns(kfm.SamplerSettingsWarning, match="median step"):
        S.warn_of_settings(field, solver="euler", steps=1000, dtype=torch.bfloat16)
    assert len(built) == 1
    with pytest.raises(ValueError, match="grid"):   # a grid kfm.sample refuses, read by that check
        S.warn_of_settings(field, solver="euler", grid="log", dtype=torch.float16)
    # a grid tensor (kfm.sample's own, built) is read as given, not built again; still checked, with the steps
    # kfm.sample checks whatever the grid (the tensor's check skipped them: steps=0 went through)
    with pytest.raises(ValueError, match=r"^steps must be"):
        S.warn_of_settings(field, solver="euler", steps=0, dtype=torch.float16, grid=build("uniform", 10))
    with pytest.warns(kfm.SamplerSettingsWarning, match="median step 0.001 is below twice"):
        S.warn_of_settings(field, solver="euler", steps=1000, dtype=torch.bfloat16, grid=build("uniform", 1000))
    with pytest.raises(ValueError, match=r"grid must be strictly increasing"):
        S.warn_of_settings(field, solver="euler", dtype=torch.float16, grid=torch.tensor([0.0, 0.6, 0.5, 1.0]))
    # the two above built from a name; the tensors given went through time_grid's checks only
    assert [args for args in built if isinstance(args[0], str)] == [("uniform", 1000), ("log", 100)]


@pytest.mark.parametrize("grid", [torch.tensor(0.5), np.array(0.5), None, [0.0, 0.5, 1.0], torch.ones(2, 3)])
def test_warn_of_settings_reads_no_grid_it_cannot_count_on_a_state_that_reads_none(grid):
    # reviewer-328: the steps check took len(grid) - 1 of any grid not a name: a 0-d tensor raised "len() of a
    # 0-d tensor" and None "object of type 'NoneType' has no len()", on a float32 state, which reads no grid;
    # only a 1-D tensor or array (what kfm.sample takes besides a name) has steps to compare
    import kinetic_fm.sampling.sample as S

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.warn_of_settings(kfm.GaussianTarget(mean=2.0, std=0.5), solver="euler", steps=50, grid=grid,
                           dtype=torch.float32)
    with pytest.warns(kfm.SamplerSettingsWarning, match="the grid given has 2 steps, not 50"):
        S.warn_of_settings(kfm.GaussianTarget(mean=2.0, std=0.5), solver="euler", steps=50,
                           grid=np.array([0.0, 0.5, 1.0]), dtype=torch.float32)


@pytest.mark.parametrize("grid", ["uniform", torch.linspace(0, 1, 1001, dtype=torch.float64)])
def test_sample_builds_a_half_precision_state_s_grid_once(monkeypatch, grid):
    # kfm.sample built the grid, then its settings warning built (and checked) it again from the built one
    import kinetic_fm.sampling.sample as S

    built, build = [], S.time_grid
    monkeypatch.setattr(S, "time_grid", lambda *args, **kwargs: built.append(args) or build(*args, **kwargs))
    x0 = torch.zeros(2, 1, dtype=torch.bfloat16)
    with pytest.warns(kfm.SamplerSettingsWarning, match="median step 0.001 is below twice"):
        kfm.sample(lambda x, t: -x, x0, solver="euler", steps=1000, grid=grid)
    # built from its name once (the warning reads the built tensor, only checked again); a tensor is never built
    assert [args for args in built if isinstance(args[0], str)] == (
        [("uniform", 1000)] if isinstance(grid, str) else [])
