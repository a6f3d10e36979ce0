"""flow_matching interop: our sampler on a ModelWrapper matches ODESolver; KPE matches a direct sum."""
from __future__ import annotations

import math

import pytest
import torch

import kinetic_fm as kfm

flow_matching = pytest.importorskip("flow_matching")
from flow_matching.solver import ODESolver  # noqa: E402
from flow_matching.utils import ModelWrapper  # noqa: E402

from kinetic_fm.integrations.flow_matching import (  # noqa: E402
    KineticODESolver,
    as_model_wrapper,
    fixed_grid,
    from_model_wrapper,
)
from kinetic_fm.sampling.grids import validate_grid  # noqa: E402

DIM = 2


class ConditionedMLP(ModelWrapper):
    """The ModelWrapper pattern of flow_matching's examples: 0-dim t expanded, an extra condition."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(
            torch.nn.Sequential(
                torch.nn.Linear(DIM + 2, 32), torch.nn.SiLU(), torch.nn.Linear(32, DIM)
            ).double()
        )

    def forward(self, x, t, **extras):
        t_col = t.reshape(-1, 1).expand(x.shape[0], 1).to(x.dtype)
        return self.model(torch.cat([x, t_col, extras["cond"]], dim=1))


def _setup(batch: int = 5):
    model = ConditionedMLP()
    x0 = kfm.noise(list(range(batch)), (DIM,), dtype=torch.float64)
    cond = torch.linspace(-1.0, 1.0, batch, dtype=torch.float64)[:, None]
    return model, x0, cond


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "rk4"])
@pytest.mark.parametrize("grid", ["uniform", "cosine"])
def test_samples_match_flow_matching_ode_solver(method, grid):
    model, x0, cond = _setup()
    t = kfm.time_grid(grid, 16)
    with torch.no_grad():
        theirs = ODESolver(model).sample(x0, step_size=None, method=method, time_grid=t, cond=cond)
    ours = KineticODESolver(model).sample(x0, method=method, time_grid=t, cond=cond)
    torch.testing.assert_close(ours.x, theirs, rtol=1e-12, atol=1e-12)
    assert ours.kpe.shape == (5,) and torch.isfinite(ours.kpe).all()


def test_step_size_grid_matches_torchdiffeq():
    model, x0, cond = _setup()
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)  # ODESolver's default is float32
    for h in (0.1, 0.15, 1 / 3):
        with torch.no_grad():
            theirs = ODESolver(model).sample(x0, step_size=h, method="midpoint", time_grid=ends, cond=cond)
        ours = KineticODESolver(model).sample(x0, step_size=h, method="midpoint", cond=cond)
        torch.testing.assert_close(ours.x, theirs, rtol=1e-12, atol=1e-12)
    grid = fixed_grid(torch.tensor([0.0, 1.0], dtype=torch.float64), 0.15)
    assert grid.numel() == 8 and float(grid[-1]) == 1.0 and float(grid[-2]) == pytest.approx(0.9)


def test_kpe_equals_direct_sum_over_ode_solver_states():
    """Euler: ½Σ‖v(x_i, t_i)‖²Δt on ODESolver's own iterates; midpoint: ½Σ‖v(x_mid, t_mid)‖²h."""
    model, x0, cond = _setup()
    t = kfm.time_grid("cosine", 12)
    with torch.no_grad():
        states = ODESolver(model).sample(
            x0, step_size=None, method="euler", time_grid=t, return_intermediates=True, cond=cond
        )
        euler_direct = torch.zeros(5, dtype=torch.float64)
        midpoint_direct = torch.zeros(5, dtype=torch.float64)
        x = x0
        for i in range(t.numel() - 1):
            h = t[i + 1] - t[i]
            euler_direct += 0.5 * model(states[i], t[i], cond=cond).pow(2).sum(1) * h
            x_mid = x + 0.5 * h * model(x, t[i], cond=cond)
            v_mid = model(x_mid, t[i] + 0.5 * h, cond=cond)
            midpoint_direct += 0.5 * v_mid.pow(2).sum(1) * h
            x = x + h * v_mid
    solver = KineticODESolver(model)
    euler = solver.sample(x0, method="euler", time_grid=t, cond=cond)
    midpoint = solver.sample(x0, method="midpoint", time_grid=t, cond=cond, quadrature="solver")
    torch.testing.assert_close(euler.kpe, euler_direct, rtol=1e-12, atol=0)
    torch.testing.assert_close(euler.kpe_raw, euler_direct, rtol=1e-12, atol=0)
    torch.testing.assert_close(midpoint.kpe, midpoint_direct, rtol=1e-12, atol=0)


def test_kts_path_matches_ode_solver_on_a_shaped_wrapper():
    """Our field with KTS inside flow_matching's solver follows kfm.sample's shaped path."""
    field = kfm.GaussianTarget(torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5)
    kts = kfm.KTS(alpha0=0.2, beta0=0.02)
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64)
    t = kfm.time_grid("uniform", 20)
    wrapped = as_model_wrapper(field, shaping=kts)
    for method in ("euler", "midpoint"):
        theirs = ODESolver(wrapped).sample(x0, step_size=None, method=method, time_grid=t)
        ours = kfm.sample(field, x0, grid=t, solver=method, shaping=kts)
        torch.testing.assert_close(ours.x, theirs, rtol=1e-12, atol=1e-12)
    ours = KineticODESolver(as_model_wrapper(field)).sample(x0, method="euler", time_grid=t, shaping=kts)
    plain = kfm.sample(field, x0, grid=t, shaping=kts)
    torch.testing.assert_close(ours.kpe, plain.kpe, rtol=1e-14, atol=0)
    assert not torch.allclose(ours.kpe, ours.kpe_raw)  # the gain is really applied


@pytest.mark.parametrize("dtype, tau, steps, method", [
    (torch.float32, 0.7, 10, "euler"),       # float32(0.7) = 0.69999999: the launch gain was taken at τ
    (torch.float32, 0.9, 10, "euler"),
    (torch.float64, 0.65, 10, "midpoint"),   # the stage 0.6 + h/2 = 0.6499999999999999
])
def test_a_shaped_wrapper_takes_the_gain_at_tau_as_our_sampler_does(dtype, tau, steps, method):
    # with constant forms the wrapper's gain was read at the time rounded to x's dtype, or at a
    # stage a rounding below τ, on the launch side where kfm.sample takes η(τ): x 1.1-1.5 % off
    field = kfm.GaussianTarget(torch.tensor([2.0, -1.0], dtype=dtype), 0.5)
    kts = kfm.KTS(alpha0=0.1, beta0=0.05, tau_split=tau, launch="constant", landing="constant")
    x0 = kfm.noise(list(range(4)), (DIM,), dtype=dtype)
    grid = kfm.time_grid("uniform", steps)
    theirs = ODESolver(as_model_wrapper(field, shaping=kts)).sample(x0, step_size=None, method=method, time_grid=grid)
    ours = kfm.sample(field, x0, grid=grid, solver=method, shaping=kts)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(theirs, ours.x, rtol=tol, atol=tol)


def test_dopri5_reaches_the_analytic_solution():
    field = kfm.GaussianTarget(torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5)
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64)
    res = KineticODESolver(as_model_wrapper(field)).sample(x0, method="dopri5", atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(res.x, field.trajectory(x0, 1.0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.kpe, field.kinetic_energy(x0), rtol=1e-6, atol=1e-8)


def test_dopri5_slices_per_sample_conditions():
    model, x0, cond = _setup(6)
    x0 = x0 * torch.tensor([1.0, 4.0, 0.2, 2.0, 6.0, 1.0], dtype=torch.float64)[:, None]
    solver = KineticODESolver(model)
    batch = solver.sample(x0, method="dopri5", cond=cond, rtol=1e-9, atol=1e-9)
    assert len(set(batch.steps.tolist())) > 1                   # some calls saw a subset
    for i in range(6):
        alone = solver.sample(x0[i:i + 1], method="dopri5", cond=cond[i:i + 1], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(batch.x[i:i + 1], alone.x, rtol=0, atol=1e-12)
    reference = ODESolver(model).sample(x0, step_size=None, method="dopri5", atol=1e-9, rtol=1e-9, cond=cond)
    torch.testing.assert_close(batch.x, reference, rtol=0, atol=1e-6)


def test_dopri5_keeps_a_shared_extra_whole_when_the_per_sample_ones_are_named():
    # a (B, 2) shift shared by every row, beside the per-sample condition: ODESolver passes it
    # whole, and so do we once per_sample names the condition
    class Shifted(ConditionedMLP):
        def forward(self, x, t, **extras):
            return super().forward(x, t, cond=extras["cond"]) + extras["shift"].sum(0)

    model, x0, cond = _setup(6)
    x0 = x0 * torch.tensor([1.0, 4.0, 0.2, 2.0, 6.0, 1.0], dtype=torch.float64)[:, None]
    shift = torch.linspace(0.0, 0.1, 12, dtype=torch.float64).reshape(6, 2)
    ours = KineticODESolver(Shifted()).sample(x0, method="dopri5", cond=cond, shift=shift, per_sample=["cond"],
                                              rtol=1e-9, atol=1e-9)
    assert len(set(ours.steps.tolist())) > 1
    reference = ODESolver(Shifted()).sample(x0, step_size=None, method="dopri5", atol=1e-9, rtol=1e-9,
                                            cond=cond, shift=shift)
    torch.testing.assert_close(ours.x, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["heun2", "rk4"])
def test_a_wrapped_singular_field_is_never_evaluated_at_t_one(method):
    # as_model_wrapper passes singular_at_one through: no evaluation at t = 1, where the point
    # target's velocity is 0/0; straight lines are then exact
    y = torch.tensor([1.0, -2.0], dtype=torch.float64)
    wrapped = as_model_wrapper(kfm.PointTarget(y))
    assert wrapped.singular_at_one
    x0 = kfm.noise(list(range(4)), (DIM,), dtype=torch.float64)
    res = KineticODESolver(wrapped).sample(x0, step_size=0.125, method=method)
    torch.testing.assert_close(res.x, y.expand(4, DIM), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.kpe, 0.5 * ((y - x0) ** 2).sum(1), rtol=1e-12, atol=0)


class TimeProbe(ModelWrapper):
    """v = −x, recording the number of dimensions of every t it is called with (``seen``)."""

    def __init__(self):
        super().__init__(None)
        self.seen = []

    def forward(self, x, t, **extras):
        self.seen.append(t.dim())
        return -x


def test_from_model_wrapper_passes_a_scalar_time_like_ode_solver():
    probe = TimeProbe()
    field = from_model_wrapper(probe)
    field(torch.zeros(3, DIM), torch.full((3,), 0.5))
    assert probe.seen == [0]


def test_argument_checks():
    model, x0, cond = _setup()
    solver = KineticODESolver(model)
    with pytest.raises(ValueError, match="method must be one of"):
        solver.sample(x0, method="heun3", cond=cond)
    with pytest.raises(ValueError, match="step_size must be None for dopri5"):
        solver.sample(x0, step_size=0.1, method="dopri5", cond=cond)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        solver.sample(x0, step_size=0.0, cond=cond)
    for step_size in (None, 0.1):  # with a step size torch.arange failed first, with its own words
        with pytest.raises(ValueError, match="time_grid must run from 0 to 1 .*got 1.0 to 0.0; .*generating direction"):
            solver.sample(x0, time_grid=torch.tensor([1.0, 0.0]), step_size=step_size, cond=cond)
        with pytest.raises(ValueError, match=r"must start at 0, got time_grid\[0\] = 0.001$"):  # another start
            solver.sample(x0, time_grid=torch.tensor([1e-3, 1.0]), step_size=step_size, cond=cond)
    # an end just short of 1 printed as 1 (6 digits): "must run from 0 to 1, got 0 to 1"
    for typed, end in ((torch.float32, "0.9999999"), (torch.float64, "0.9999999"), (torch.float64, "0.99999999999")):
        with pytest.raises(ValueError, match=rf"must end at 1, got time_grid\[-1\] = {end}$"):
            solver.sample(x0, time_grid=torch.tensor([0.0, float(end)], dtype=typed), cond=cond)
    with pytest.raises(TypeError, match="velocity must be callable"):
        as_model_wrapper(None)
    with pytest.raises(ValueError, match=r"time must be None or one of \('batch', 'scalar', 'shared'\), got 'batched'"):
        KineticODESolver(model, time="batched")  # named at construction, before any sampling
    for flag in ("return_intermediates", "enable_grad"):
        with pytest.raises(ValueError, match=f"{flag}=True is not supported"):
            solver.sample(x0, step_size=0.5, cond=cond, **{flag: True})
    same = solver.sample(x0, step_size=0.5, cond=cond, return_intermediates=False, enable_grad=False)
    torch.testing.assert_close(same.x, solver.sample(x0, step_size=0.5, cond=cond).x, rtol=0, atol=0)


def test_model_wrapper_accepts_a_constant_gain():
    field = kfm.GaussianTarget(torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5)
    x = kfm.noise(list(range(3)), (DIM,), dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    shaped = as_model_wrapper(field, shaping=lambda t_: 1.25)(x, t)
    torch.testing.assert_close(shaped, 1.25 * field(x, t.expand(3)), rtol=0, atol=1e-15)


def test_a_training_mode_net_warns_at_the_callers_line():
    from kinetic_fm.sampling.guards import TrainingModeWarning

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    # a zero field, which dropout leaves zero: the guard still sees an active dropout, and dopri5
    # ends in a few steps (a random field made it reject steps for 48,000 calls, 14 s)
    torch.nn.init.zeros_(net[0].weight), torch.nn.init.zeros_(net[0].bias)
    for kwargs in ({"step_size": 0.5}, {"method": "dopri5"}):
        with pytest.warns(TrainingModeWarning) as caught:
            KineticODESolver(lambda x, t: net(x)).sample(torch.zeros(3, 2), **kwargs)
        assert caught[0].filename == __file__


def test_the_wrapper_reads_singular_at_one_as_the_sampler_does():
    # a bare getattr let an unreadable or truth-less attribute escape from wrapped.singular_at_one
    class Unanswerable:
        singular_at_one = torch.tensor([True, False])

        def __call__(self, x, t):
            return -x

    class Remote:
        def __getattr__(self, name):
            raise RuntimeError("attributes are remote")

        def __call__(self, x, t):
            return -x

    assert as_model_wrapper(Unanswerable()).singular_at_one is False
    assert as_model_wrapper(Remote()).singular_at_one is False


def test_the_solver_passes_a_zero_dimensional_time_like_ode_solver():
    # the default time mode, not only from_model_wrapper's: a ModelWrapper written for ODESolver
    # may assume a 0-dim t (mutation audit: time="batch" on fixed grids passed every other test)
    x0 = kfm.noise(range(3), (DIM,), dtype=torch.float64)
    for method in ("euler", "rk4", "dopri5"):
        probe = TimeProbe()
        step_size = None if method == "dopri5" else 0.25
        KineticODESolver(probe).sample(x0, step_size=step_size, method=method)
        assert probe.seen and set(probe.seen) == {0}, method


@pytest.mark.filterwarnings("ignore:quadrature='left'")  # the quadrature is passed on, not judged, here
@pytest.mark.parametrize("method", ["midpoint", "dopri5"])
def test_sample_arguments_reach_the_sampler(method):
    # shaping, quadrature, profile and the two tolerances must each reach kfm.sample; each is
    # first shown to change the result, so that dropping or swapping one is seen (mutation audit)
    field = kfm.GaussianTarget(torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5)
    kts = kfm.KTS(alpha0=0.2, beta0=0.02)
    x0 = 10.0 * kfm.noise(list(range(4)), (DIM,), dtype=torch.float64)   # |x| ≫ 1: rtol and atol differ
    if method == "dopri5":
        given = dict(rtol=1e-4, atol=1e-10)
        ours = dict(solver="dopri5", rtol=1e-4, atol=1e-10)
        swapped = kfm.sample(field, x0, solver="dopri5", rtol=1e-10, atol=1e-4, shaping=kts, quadrature="left")
    else:
        grid = kfm.time_grid("cosine", 10)
        given, ours = dict(time_grid=grid), dict(grid=grid, solver="midpoint")
        swapped = None
    want = kfm.sample(field, x0, shaping=kts, quadrature="left", profile=True, **ours)
    assert not torch.allclose(want.kpe, want.kpe_raw)                                   # shaping acts
    assert not torch.allclose(want.kpe, kfm.sample(field, x0, shaping=kts, **ours).kpe)  # quadrature acts
    if swapped is not None:
        assert not torch.allclose(swapped.kpe, want.kpe)                                 # rtol, atol act
    got = KineticODESolver(as_model_wrapper(field)).sample(
        x0, method=method, shaping=kts, quadrature="left", profile=True, **given)
    assert got.profile is not None
    torch.testing.assert_close(got.x, want.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.kpe, want.kpe, rtol=1e-12, atol=0)
    torch.testing.assert_close(got.profile, want.profile, rtol=1e-12, atol=1e-15)
    assert torch.equal(torch.as_tensor(got.nfe), torch.as_tensor(want.nfe))


def test_fixed_grid_counts_its_steps_from_the_grids_start():
    # KineticODESolver only passes grids from 0, where dropping the start is invisible; the public
    # function is documented for any start (mutation audit; hand-computed grid)
    grid = fixed_grid(torch.tensor([0.5, 1.0], dtype=torch.float64), 0.2)
    torch.testing.assert_close(grid, torch.tensor([0.5, 0.7, 0.9, 1.0], dtype=torch.float64), rtol=0, atol=1e-15)


def test_the_samplers_warnings_name_the_callers_line_through_the_solver():
    # kfm.sample's warnings took a fixed stacklevel, right for a direct call: through
    # KineticODESolver.sample they named this module's line inside the integration
    import inspect

    with pytest.warns(UserWarning, match="dopri5 on a torch.bfloat16 state") as caught:
        KineticODESolver(lambda x, t: 1.0 - x).sample(torch.zeros(3, 2, dtype=torch.bfloat16), method="dopri5")
        line = inspect.currentframe().f_lineno - 1
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_the_solver_refuses_a_recorder_for_a_second_run(method, second_run_refused):
    # the solver wraps its model in an adapter for kfm.sample, which told only the adapter of the
    # run's start: a second sample() appended its records to the first's, and trace() read both as one
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _, x0, _ = _setup()
    settings = dict(method=method, atol=1e-3, rtol=1e-3) if method == "dopri5" else dict(method=method, step_size=0.25)
    time = "batch" if method == "dopri5" else None   # dopri5's default "scalar" splits calls by time
    single = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    KineticODESolver(single, time=time).sample(x0, **settings)
    expected = single.trace()

    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    solver = KineticODESolver(recorder, time=time)
    solver.sample(x0, **settings)
    second_run_refused(lambda: solver.sample(x0, **settings), recorder, expected)


def test_a_recorder_under_dopri5s_default_scalar_time_traces_the_run_as_per_sample_times_do():
    # dopri5's default time="scalar" calls the model once per distinct time on that time's rows: the
    # recorder got calls of varying row counts and trace() read them as several runs. Each time's rows
    # now reach it through select(), one record per evaluation, as with time="batch"
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64)
    x0 = x0 * torch.linspace(0.5, 3.0, 6, dtype=torch.float64)[:, None]
    traces = {}
    for time in ("batch", None):
        recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
        res = KineticODESolver(recorder, time=time).sample(x0, method="dopri5", atol=1e-5, rtol=1e-5)
        traces[time] = res, recorder.trace(), len(recorder)
    (res, expected, calls), (res_default, trace, calls_default) = traces["batch"], traces[None]
    # one call per stage of each try; a try that ends a run skips the two stages at t = 1 for its
    # rows only (EFM is singular there), so a sample may be evaluated in fewer calls than were made
    assert calls_default == calls >= int(res.nfe.max()) and torch.equal(res_default.nfe, res.nfe)
    assert torch.equal((~torch.isnan(trace.t)).sum(0), res.nfe)
    for name, value in vars(expected).items():
        if value.is_floating_point():
            torch.testing.assert_close(getattr(trace, name), value, rtol=1e-9, atol=0, equal_nan=True, msg=name)
        else:
            assert torch.equal(getattr(trace, name), value), name


def test_a_recorder_in_a_model_wrapper_is_refused_for_a_second_run_of_our_sampler(second_run_refused):
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _, x0, _ = _setup()
    single = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    kfm.sample(as_model_wrapper(single, shaping=kfm.KTS()), x0, steps=4)
    expected = single.trace()

    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    wrapper = as_model_wrapper(recorder, shaping=kfm.KTS())
    kfm.sample(wrapper, x0, steps=4)
    second_run_refused(lambda: kfm.sample(wrapper, x0, steps=4), recorder, expected)


@pytest.mark.parametrize("how", ["sample", "solver", "solver-batch"])
def test_a_recorder_in_a_model_wrapper_traces_a_dopri5_run(how):
    # the wrapper gave no select(): dopri5 called the recorder with only the samples in flight, and
    # a time="scalar" adapter with each time's rows, on no mask, so trace() read calls of 1 to 6 rows as
    # several runs ("calls on batches of 2, 3, 4, 5 and 6 rows"); it now passes select() and
    # one_evaluation() on, and the trace is the bare recorder's
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64)
    x0 = x0 * torch.linspace(0.5, 3.0, 6, dtype=torch.float64)[:, None]
    single = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    expected_res, expected = kfm.sample(single, x0, solver="dopri5"), single.trace()

    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    wrapper = as_model_wrapper(recorder)
    if how == "sample":
        res = kfm.sample(wrapper, x0, solver="dopri5")
    else:
        res = KineticODESolver(wrapper, time="batch" if how == "solver-batch" else None).sample(x0, method="dopri5")
    trace = recorder.trace()
    assert torch.equal(res.x, expected_res.x) and len(recorder) == len(single) >= int(res.nfe.max())
    assert torch.equal((~torch.isnan(trace.t)).sum(0), res.nfe)   # a record per evaluation of a sample
    for name, value in vars(expected).items():
        assert torch.equal(getattr(trace, name).nan_to_num(-1.0), value.nan_to_num(-1.0)), name


def test_a_model_wrapper_gives_select_only_for_a_field_that_has_it():
    # a closure has no select: dopri5 then names the remedy for per-sample inputs it holds
    assert getattr(as_model_wrapper(lambda x, t: -x), "select", None) is None
    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(torch.randn(5, DIM, dtype=torch.float64)))
    shaping = kfm.KTS()
    part = as_model_wrapper(recorder, shaping=shaping).select(torch.tensor([True, False]))
    assert part.shaping is shaping and part.velocity._active.tolist() == [True, False]


def test_dopri5_refuses_a_model_wrapper_of_tracked_guidance_before_the_run_starts():
    # the wrapper did not pass track_parts through: kfm.sample started the run (start_run reached the
    # model) and refused it only at dopri5's first select(), with fewer words
    started = []

    class Model:
        def start_run(self):
            started.append(1)

        def __call__(self, x, t, y):
            return -x

    x0 = kfm.noise(range(3), (DIM,), dtype=torch.float64)
    guided = kfm.ClassifierFreeGuidance(Model(), torch.tensor([0, 1, 0]), 2.0, 5, track_parts=True)
    for run in (lambda: kfm.sample(as_model_wrapper(guided), x0, solver="dopri5"),
                lambda: KineticODESolver(as_model_wrapper(guided)).sample(x0, method="dopri5")):
        with pytest.raises(ValueError, match=r"^track_parts is not supported with adaptive solvers \(dopri5\).*"
                                             r"track_parts=False"):
            run()
        assert started == []
    assert as_model_wrapper(guided).track_parts and not as_model_wrapper(lambda x, t: -x).track_parts
    kfm.sample(as_model_wrapper(guided), x0, steps=2)   # fixed steps track the parts
    assert started == [1]


def test_dopri5_refuses_a_model_wrapper_of_a_shared_time_adapter():
    # the wrapper did not pass one_time_per_call through: dopri5 ran every row at the first row's time
    field = kfm.ModelXT(lambda x, t: -x * t, time="shared")
    x0 = kfm.noise(range(3), (DIM,), dtype=torch.float64)
    with pytest.raises(ValueError, match="time='shared'"):
        kfm.sample(field, x0, solver="dopri5")
    with pytest.raises(ValueError, match="time='shared'"):
        kfm.sample(as_model_wrapper(field), x0, solver="dopri5")


def test_guidance_in_a_model_wrapper_samples_dopri5_as_bare_guidance():
    # without the wrapper's select, dopri5 called the guidance with the samples in flight and all the
    # labels: "x has 3 rows but labels has 6"
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64)
    x0 = x0 * torch.linspace(0.5, 3.0, 6, dtype=torch.float64)[:, None]
    labels = torch.arange(6) % 2
    guided = kfm.ClassifierFreeGuidance(lambda x, t, y: -x * (1 + y.to(x.dtype))[:, None], labels, 2.0, 5)
    expected = kfm.sample(guided, x0, solver="dopri5")
    for res in (kfm.sample(as_model_wrapper(guided), x0, solver="dopri5"),
                KineticODESolver(as_model_wrapper(guided)).sample(x0, method="dopri5")):
        assert torch.equal(res.x, expected.x) and torch.equal(res.nfe, expected.nfe)


def test_a_step_size_of_one_over_n_takes_n_steps_with_no_step_of_rounding_length():
    # (1 − 0)/h + 1 for h = 1/49 is 50.000000000000004 in float64: the grid got a 51st point, a last
    # step 1.1e-16 long, and the run one network evaluation more than ODESolver's default (float32)
    # grid, which takes 49 steps (it has such a step for other n, h = 1/61 among them)
    for n in range(1, 301):
        grid = fixed_grid(torch.tensor([0.0, 1.0], dtype=torch.float64), 1.0 / n)
        assert grid.numel() == n + 1 and float(grid[-1]) == 1.0, n
        assert float((grid.diff() - 1.0 / n).abs().max()) < 1e-12, n
    calls = []

    def model(x, t, **extras):
        calls.append(float(t))
        return 1.0 - x

    x0 = torch.zeros(3, DIM, dtype=torch.float64)
    res = KineticODESolver(model).sample(x0, step_size=1 / 49)
    assert len(calls) == 49 and int(res.nfe) == 49
    with torch.no_grad():
        theirs = ODESolver(model).sample(x0, step_size=1 / 49)       # its default float32 time grid
    assert len(calls) == 2 * 49
    torch.testing.assert_close(res.x, theirs, rtol=0, atol=1e-6)      # float32 stage times against ours
    torch.testing.assert_close(res.x, (1 - (1 - 1 / 49) ** 49) * torch.ones_like(x0), rtol=1e-12, atol=0)  # Euler


@pytest.mark.parametrize("method, per_step", [("euler", 1), ("midpoint", 2), ("heun2", 2), ("rk4", 4)])
@pytest.mark.parametrize("how", ["step_size", "time_grid"])
def test_fixed_step_methods_evaluate_the_model_as_often_as_ode_solver(method, per_step, how):
    # the energy comes with the stages the solver evaluates anyway: no network evaluation is added
    model, x0, cond = _setup()
    given = dict(step_size=0.125, time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64)) if how == "step_size" \
        else dict(step_size=None, time_grid=kfm.time_grid("cosine", 7))
    steps = 8 if how == "step_size" else 7
    counted = []
    hook = model.model.register_forward_hook(lambda module, args, out: counted.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            ODESolver(model).sample(x0, method=method, cond=cond, **given)
        theirs, counted[:] = len(counted), []
        res = KineticODESolver(model).sample(x0, method=method, cond=cond, **given)
    finally:
        hook.remove()
    assert theirs == len(counted) == int(res.nfe) == per_step * steps
    assert set(counted) == {x0.shape[0]}                       # every call on the whole batch


@pytest.mark.parametrize("method, weights", [("heun2", (0.5, 0.5)), ("rk4", (1 / 8, 3 / 8, 3 / 8, 1 / 8))])
def test_kpe_is_the_stage_weighted_sum_over_ode_solvers_own_stage_velocities(method, weights):
    # ½ Σ_i h_i Σ_j b_j ‖k_ij‖² with k_ij the velocities ODESolver's torchdiffeq evaluates, recorded in
    # call order (Heun's trapezoid, Kutta's 3/8 weights); the euler and midpoint cases are above
    model, x0, cond = _setup()
    grid = kfm.time_grid("cosine", 6)
    stages = []
    hook = model.model.register_forward_hook(lambda module, args, out: stages.append(out.detach().clone()))
    try:
        with torch.no_grad():
            ODESolver(model).sample(x0, step_size=None, method=method, time_grid=grid, cond=cond)
    finally:
        hook.remove()
    assert len(stages) == len(weights) * (grid.numel() - 1)
    direct = torch.zeros(x0.shape[0], dtype=torch.float64)
    for i, h in enumerate(grid.diff().tolist()):
        for j, b in enumerate(weights):
            direct += 0.5 * h * b * stages[i * len(weights) + j].pow(2).sum(1)
    res = KineticODESolver(model).sample(x0, method=method, time_grid=grid, cond=cond)
    torch.testing.assert_close(res.kpe, direct, rtol=1e-12, atol=0)


def test_a_time_grid_out_of_order_is_named_as_the_callers_argument():
    # the check was kfm.sample's, which named its own argument: "grid must be strictly increasing"
    solver = KineticODESolver(lambda x, t: -x)
    for grid in (torch.tensor([0.0, 0.7, 0.3, 1.0]), torch.tensor([0.0, 0.5, 0.5, 1.0])):
        with pytest.raises(ValueError, match=r"^time_grid must be strictly increasing"):
            solver.sample(torch.ones(2, DIM), time_grid=grid)
    # quoted as typed: the float32 0.7 read through float64 was "0.699999988079071"
    with pytest.raises(ValueError, match=r"time_grid\[2\] = 0\.3 <= time_grid\[1\] = 0\.7$"):
        solver.sample(torch.ones(2, DIM), time_grid=torch.tensor([0.0, 0.7, 0.3, 1.0]))
    with pytest.raises(ValueError, match=r"^time_grid must be finite"):
        solver.sample(torch.ones(2, DIM), time_grid=torch.tensor([0.0, float("nan"), 1.0]))


def test_a_numpy_step_size_is_taken_as_ode_solver_takes_it():
    np = pytest.importorskip("numpy")
    model, x0, cond = _setup()
    ours = KineticODESolver(model).sample(x0, step_size=np.float32(0.25), cond=cond)
    torch.testing.assert_close(ours.x, KineticODESolver(model).sample(x0, step_size=0.25, cond=cond).x, rtol=0, atol=0)
    assert int(ours.nfe) == 4
    with pytest.raises(ValueError, match="step_size must be a finite number > 0 or None"):
        KineticODESolver(model).sample(x0, step_size=np.float64("nan"), cond=cond)


def test_dopri5_under_scalar_time_evaluates_the_rows_batch_time_does_in_more_calls():
    # what the README says of time="scalar" under dopri5: the same evaluations (rows, per-sample nfe) as
    # time="batch", whose calls are one per stage (20 here, as ODESolver's); scalar splits them by distinct
    # time (275 calls here)
    model, x0, cond = _setup(16)
    x0 = 3.0 * kfm.noise(list(range(16)), (DIM,), dtype=torch.float64)
    cond = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)[:, None]
    rows = {}
    for time in ("batch", None):
        calls = []
        hook = model.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        try:
            res = KineticODESolver(model, time=time).sample(x0, method="dopri5", cond=cond)
        finally:
            hook.remove()
        rows[time] = calls, res
    (batch_calls, batch), (scalar_calls, scalar) = rows["batch"], rows[None]
    assert torch.equal(scalar.nfe, batch.nfe) and sum(scalar_calls) == sum(batch_calls) == int(batch.nfe.sum())
    assert len(batch_calls) == int(batch.nfe.max()) and len(scalar_calls) > 4 * len(batch_calls)


def test_a_wrapped_module_is_saved_once_as_a_plain_model_wrappers():
    # the wrapper registered the module twice (as ModelWrapper's model and as velocity): its state_dict
    # held every parameter twice and did not load into a plain ModelWrapper of the same net
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(DIM, DIM).double()

        def forward(self, x, t):
            return self.net(x)

    field = Field()
    wrapped = as_model_wrapper(field, shaping=kfm.KTS())
    assert wrapped.velocity is field and wrapped.model is field
    plain = ModelWrapper(Field())
    assert list(wrapped.state_dict()) == list(plain.state_dict()) == ["model.net.weight", "model.net.bias"]
    plain.load_state_dict(wrapped.state_dict())
    x = torch.ones(3, DIM, dtype=torch.float64)
    torch.testing.assert_close(plain(x, torch.tensor(0.5)), field(x, None), rtol=0, atol=0)
    closure = as_model_wrapper(lambda x, t: -x)
    assert closure.model is None and list(closure.state_dict()) == []
    torch.testing.assert_close(closure(x, torch.tensor(0.5)), -x, rtol=0, atol=0)


def test_the_remedies_the_samplers_errors_name_can_be_passed_through_the_solver():
    # kfm.sample's errors say "pass on_nonfinite='flag'" and "raise max_steps"; through the solver both
    # went on into the model's extras: a TypeError from the model, or ignored by a **extras model
    seen = []

    def model(x, t, **extras):
        seen.append(sorted(extras))
        v = -x.clone()
        v[1] = float("nan")
        return v

    x0 = torch.ones(3, DIM, dtype=torch.float64)
    with pytest.raises(kfm.NonFiniteVelocityError, match="on_nonfinite='flag'"):
        KineticODESolver(model).sample(x0, step_size=0.25)
    res = KineticODESolver(model).sample(x0, step_size=0.25, on_nonfinite="flag")
    assert res.nonfinite.tolist() == [False, True, False] and set(map(tuple, seen)) == {()}
    torch.testing.assert_close(res.x[0], torch.full((DIM,), 0.75 ** 4, dtype=torch.float64))   # Euler on v = −x
    with pytest.raises(kfm.StepLimitError, match="raise max_steps"):
        KineticODESolver(lambda x, t: -x).sample(x0, method="dopri5", max_steps=2, rtol=1e-12, atol=1e-12)
    assert set(map(tuple, seen)) == {()}


class KeywordOnly(torch.nn.Module):
    """forward(*, x, t, profile): keyword-only, with an extra named like KineticODESolver's option."""

    def forward(self, *, x, t, profile):
        return profile * torch.cos(3 * t).to(x.dtype) - x


class TimeFirst(torch.nn.Module):
    """forward(t, x): ODESolver names its arguments, so the order of the parameters does not matter."""

    def forward(self, t, x):
        return torch.cos(3 * t).to(x.dtype) - x


@pytest.mark.parametrize("method", ["midpoint", "dopri5"])
def test_the_model_is_called_by_name_as_ode_solver_calls_it(method):
    # ModelXT called model(x, t) by position: a keyword-only forward raised TypeError and a forward(t, x)
    # ran with x and t swapped, without a word; an extra named `profile` was taken as kfm's option
    x0 = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    weight = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    settings = dict(step_size=1 / 32, method="midpoint") if method == "midpoint" else dict(
        step_size=None, method="dopri5", atol=1e-10, rtol=1e-10)
    for model, extras in ((KeywordOnly(), {"profile": weight}), (TimeFirst(), {})):
        with torch.no_grad():
            theirs = ODESolver(model).sample(x0, time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64),
                                             **settings, **extras)
        ours = KineticODESolver(model).sample(x0, **settings, model_kwargs=extras)
        tol = 1e-12 if method == "midpoint" else 1e-8
        torch.testing.assert_close(ours.x, theirs, rtol=0, atol=tol)
        # both follow dx/dt = w·cos(3t) − x: x(1) = x0/e + w·∫_0^1 e^(s − 1)·cos(3s) ds
        exact = math.exp(-1) * x0 + extras.get("profile", 1.0) * (math.cos(3) + 3 * math.sin(3) - math.exp(-1)) / 10
        torch.testing.assert_close(ours.x, exact, rtol=0, atol=1e-3 if method == "midpoint" else 1e-8)


def test_extras_named_like_the_solvers_options_go_in_model_kwargs():
    x0 = kfm.noise(range(3), (DIM,), dtype=torch.float64)
    solver = KineticODESolver(lambda x, t, time: time * x)
    with pytest.raises(ValueError, match=r"time is KineticODESolver's option.*model_kwargs=\{'time'"):
        solver.sample(x0, time=torch.tensor(2.0))
    res = solver.sample(x0, step_size=0.5, model_kwargs={"time": torch.tensor(-1.0, dtype=torch.float64)})
    torch.testing.assert_close(res.x, x0 * 0.5 ** 2, rtol=0, atol=1e-15)      # Euler on dx/dt = −x, h = ½
    with pytest.raises(ValueError, match=r"\['cond'\] given both as keywords and in model_kwargs"):
        solver.sample(x0, cond=1.0, model_kwargs={"cond": 2.0})


def test_a_wrappers_select_view_is_a_plain_callable_giving_the_wrappers_rows():
    # select built a ModelWrapper (an nn.Module, ~0.1 ms) for every dopri5 stage; the view is a plain
    # callable now, and gives the shaped velocity of the rows it selects (to the GEMM's rounding by batch size)
    from kinetic_fm.fields.guidance import ClassifierFreeGuidance

    net = ConditionedMLP()
    guided = ClassifierFreeGuidance(lambda x, t, y: net(x, t, cond=y[:, None].to(x.dtype)), torch.arange(5) % 3, 2.0, 3)
    wrapper = as_model_wrapper(guided, kfm.KTS(tau_split=0.6))
    x = kfm.noise(range(5), (DIM,), dtype=torch.float64)
    t = torch.tensor([0.1, 0.6, 0.3, 0.9, 0.6], dtype=torch.float64)
    mask, inner = torch.tensor([True, False, True, True, True]), torch.tensor([False, True, True, False])
    view = wrapper.select(mask)
    assert not isinstance(view, torch.nn.Module) and not view.singular_at_one
    with torch.no_grad():
        whole = wrapper(x, t)
        torch.testing.assert_close(view(x[mask], t[mask]), whole[mask], rtol=1e-13, atol=1e-15)
        rows = torch.nonzero(mask).squeeze(1)[inner]
        torch.testing.assert_close(view.select(inner)(x[rows], t[rows]), whole[rows], rtol=1e-13, atol=1e-15)


def test_per_sample_beside_a_model_extra_named_per_sample_in_model_kwargs():
    # model_kwargs is the way to give the model an extra named per_sample; with kfm's own per_sample
    # option beside it, the two were called "given both as keywords and in model_kwargs"
    def model(x, t, y, per_sample):
        return x * y[:, None] + per_sample

    x, t = torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    y, shift = torch.arange(3.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    field = from_model_wrapper(model, per_sample=["y"], model_kwargs={"per_sample": shift, "y": y})
    assert torch.equal(field(x, t), x * y[:, None] + shift)
    mask = torch.tensor([True, False, True])
    assert torch.equal(field.select(mask)(x[mask], t[mask]), x[mask] * y[mask][:, None] + shift)  # y's rows follow
    with pytest.raises(ValueError, match=r"\['y'\] given both as keywords and in model_kwargs"):
        from_model_wrapper(model, y=y, model_kwargs={"y": y})


class LabelledXT(torch.nn.Module):
    """forward(x, t, y): the guidance's labels follow x and t by position."""

    def forward(self, x, t, y):
        return torch.cos(3 * t).reshape(-1, 1).to(x.dtype) * (1 + y[:, None].to(x.dtype)) - x


class LabelledTX(LabelledXT):
    """forward(t, x, y): x and t by name, so y must go by name too."""

    def forward(self, t, x, y):
        return super().forward(x, t, y)


class LabelledKeywordOnly(LabelledXT):
    """forward(*, x, t, y): keyword-only, the labels included."""

    def forward(self, *, x, t, y):
        return super().forward(x, t, y)


class LabelledTXVarArgs(LabelledXT):
    """forward(t, x, *extras): the labels can only go by position, after t and x in its own order."""

    def forward(self, t, x, *extras):
        return super().forward(x, t, *extras)


class LabelledVarArgsKeywordXT(LabelledXT):
    """forward(*extras, x, t): x and t keyword-only, the labels by position."""

    def forward(self, *extras, x, t):
        return super().forward(x, t, *extras)


@pytest.mark.parametrize("time", ["batch", "scalar", "shared"])
@pytest.mark.parametrize("net", [LabelledXT, LabelledTX, LabelledKeywordOnly, LabelledTXVarArgs,
                                 LabelledVarArgsKeywordXT])
def test_a_positional_extra_reaches_a_model_called_by_name(net, time):
    # helper-226: a model named x and t was called by name only without positional extras; with the
    # guidance's labels it went by position, model(x, t, y): forward(t, x, y) got x as t and y as x (a
    # shape error, or wrong numbers when the shapes agreed) and a keyword-only forward a TypeError
    from kinetic_fm.fields.guidance import ClassifierFreeGuidance

    labels = torch.tensor([0, 1, 2, 1])
    x = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    expected = torch.cos(torch.tensor(0.9, dtype=torch.float64)) * (1 + labels[:, None].double()) - x
    field = from_model_wrapper(net(), time=time)
    torch.testing.assert_close(field(x, t, labels), expected, rtol=0, atol=1e-15)
    guided = ClassifierFreeGuidance(from_model_wrapper(net(), time=time), labels, scale=1.0, null_label=7)
    torch.testing.assert_close(guided(x, t), expected, rtol=0, atol=1e-15)      # w = 1: the conditional, bit for bit
    if time != "shared":   # dopri5: per-sample times, the labels of the rows in flight
        reference = kfm.sample(ClassifierFreeGuidance(LabelledXT(), labels, 1.0, 7), x, solver="dopri5")
        result = kfm.sample(guided, x, solver="dopri5")
        assert torch.equal(result.x, reference.x) and torch.equal(result.kpe, reference.kpe)


def test_positional_extras_beyond_the_named_parameters_go_to_the_models_var_positional():
    # forward(t, x, y, *rest): y by its place after t and x, the rest into *rest, as model(t, x, y, *rest)
    # would; helper-227's call by name raised "pass the extras by keyword", which *rest cannot take
    class Net(torch.nn.Module):
        def forward(self, t, x, y, *rest, scale=1.0):
            return scale * (x * y[:, None] + sum(rest) + t[:, None])

    field = from_model_wrapper(Net(), time="batch", scale=2.0)
    x, t, y = torch.ones(2, DIM), torch.full((2,), 0.25), torch.tensor([2.0, 3.0])
    assert torch.equal(field(x, t, y), 2.0 * (x * y[:, None] + t[:, None]))
    assert torch.equal(field(x, t, y, 10.0, 100.0), 2.0 * (x * y[:, None] + 110.0 + t[:, None]))


def test_more_positional_extras_than_a_keyword_model_names_are_refused():
    field = from_model_wrapper(LabelledKeywordOnly(), time="batch")
    x, t = torch.zeros(2, DIM), torch.zeros(2)
    with pytest.raises(TypeError, match=r"1 further argument\(s\) \['y'\].*given 2 positional extra"):
        field(x, t, torch.zeros(2), torch.zeros(2))


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_a_recorder_under_ode_solver_traces_one_run_and_names_a_second(method):
    # helper-226: flow_matching's ODESolver never calls start_run, so a second sample() appended its
    # records to the first's and trace() returned both as one run; one run, dopri5's rejected tries and
    # its first-step probe included, is traced as before
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64) * 2
    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    solver = ODESolver(as_model_wrapper(recorder))
    settings = dict(method=method, step_size=0.25 if method == "euler" else None, atol=1e-6, rtol=1e-6,
                    time_grid=torch.tensor([0.0, 0.5], dtype=torch.float64))
    with torch.no_grad():
        solver.sample(x0, **settings)
        first = recorder.trace()
        assert (first.t[0] == 0).all() and (first.t[1:] > 0).all()
        if method == "dopri5":   # times went back within the run (a rejected step, or the probe before the first)
            assert bool((first.t[1:, 0] < first.t[:-1, 0]).any())
        solver.sample(x0, **settings)
    with pytest.raises(ValueError, match=rf"more than one run: its record {len(first.t)} is at t = 0 again"):
        recorder.trace()


def test_ode_solvers_dopri5_past_the_end_is_named_for_a_recorder_and_for_guidance_part_energies():
    # helper-226: torchdiffeq's dopri5 steps over t = 1 and interpolates back. The empirical field
    # refused t = 1.02 with no word of why, and the guidance's part_energies() asked for a t_end in
    # [1.02, 1]; rejected steps had restarted its sums besides, so no t_end could make them right
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = kfm.noise(list(range(4)), (DIM,), dtype=torch.float64) * 3
    settings = dict(method="dopri5", step_size=None, atol=1e-8, rtol=1e-8,
                    time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64))
    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    with torch.no_grad(), pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got 1\.0\d*") as caught:
        ODESolver(as_model_wrapper(recorder)).sample(x0, **settings)
    assert "steps past the end of time_grid and interpolates back" in str(caught.value) + "".join(
        getattr(caught.value, "__notes__", []))

    def model(x, t, y):
        return torch.cos(3 * t)[:, None].to(x.dtype) * (1 + y[:, None].to(x.dtype)) - x
    guided = kfm.ClassifierFreeGuidance(model, torch.tensor([0, 1, 2, 1]), 1.5, 3, track_parts=True)
    with torch.no_grad():
        ODESolver(as_model_wrapper(guided)).sample(x0, **settings)
    assert float(guided._t_prev.max()) > 1
    with pytest.raises(ValueError, match=r"the last call was at t = 1\.\d+ > 1: the solver stepped past the end"):
        guided.part_energies()


def test_a_data_parallel_model_is_called_as_the_module_it_wraps():
    # helper-227: DataParallel's own forward(*inputs, **kwargs) names no x and t, so a wrapped forward(t, x)
    # was called by position, model(x, t): x went to t and t to x, without a word; ODESolver, which names
    # them, ran it right. The wrapper hands its arguments on: it is read by the module inside.
    x0 = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    settings = dict(step_size=1 / 32, method="midpoint")
    with torch.no_grad():
        theirs = ODESolver(torch.nn.DataParallel(TimeFirst())).sample(
            x0, time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64), **settings)
    ours = KineticODESolver(torch.nn.DataParallel(TimeFirst())).sample(x0, **settings)
    plain = KineticODESolver(TimeFirst()).sample(x0, **settings)
    torch.testing.assert_close(ours.x, theirs, rtol=0, atol=1e-12)
    assert torch.equal(ours.x, plain.x)
    # dx/dt = cos(3t) − x: x(1) = x0/e + ∫_0^1 e^(s − 1)·cos(3s) ds
    exact = math.exp(-1) * x0 + (math.cos(3) + 3 * math.sin(3) - math.exp(-1)) / 10
    torch.testing.assert_close(ours.x, exact, rtol=0, atol=1e-3)


def test_a_model_called_by_name_is_called_so_by_its_copies_pickles_and_views():
    # helper-239: the way the adapter calls the model (by name, with the extras' names) is bound once, not
    # per evaluation; a deep copy, a pickle round trip and a select() view call the model as the adapter does
    import copy
    import pickle

    labels = torch.tensor([0, 1, 2, 1])
    x = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    expected = torch.cos(torch.tensor(0.9, dtype=torch.float64)) * (1 + labels[:, None].double()) - x
    field = from_model_wrapper(LabelledTX(), time="batch")
    mask = torch.tensor([True, False, True, True])
    for same in (field, copy.deepcopy(field), pickle.loads(pickle.dumps(field))):
        torch.testing.assert_close(same(x, t, labels), expected, rtol=0, atol=1e-15)
        torch.testing.assert_close(same.select(mask)(x[mask], t[mask], labels[mask]), expected[mask], rtol=0,
                                   atol=1e-15)
    with pytest.raises(TypeError, match=r"1 further argument\(s\) \['y'\]"):
        copy.deepcopy(field)(x, t, labels, labels)


def test_dopri5_names_where_a_nested_shared_time_adapter_sits():
    # KineticODESolver(guided, time="scalar") with the guidance's model from from_model_wrapper (default
    # time="shared"): the error said "use time='scalar'", which the user had given, to the outer adapter
    labels = torch.tensor([0, 1, 1])
    guided = kfm.ClassifierFreeGuidance(from_model_wrapper(lambda x, t, y: -x * t), labels, 2.0, 2)
    x0 = kfm.noise(range(3), (DIM,), dtype=torch.float64)
    default = r"is a ModelXT with time='shared' \(one time for the whole batch; from_model_wrapper's default\)"
    outer = ", which a time given to a wrapper around it does not change, but dopri5"
    with pytest.raises(ValueError, match=rf"^velocity_model\.model {default}{outer}"):   # the user's argument
        kfm.KineticODESolver(guided, time="scalar").sample(x0, method="dopri5")
    with pytest.raises(ValueError, match=rf"^velocity_model\.model {default}, but dopri5"):   # no time given
        kfm.KineticODESolver(guided).sample(x0, method="dopri5")
    with pytest.raises(ValueError, match=rf"^velocity\.model {default}, but dopri5"):  # a guidance sets no time
        kfm.sample(guided, x0, solver="dopri5")
    with pytest.raises(ValueError, match=rf"^velocity\.inner\.model {default}{outer}"):
        kfm.sample(kfm.ModelXT(guided, time="scalar"), x0, solver="dopri5")
    # kfm.ModelXT's own default is time='batch': from_model_wrapper is not named
    own = kfm.ClassifierFreeGuidance(kfm.ModelXT(lambda x, t, y: -x * t, time="shared"), labels, 2.0, 2)
    with pytest.raises(ValueError, match=r"^velocity\.model is a ModelXT with time='shared' \(one time for the whole "
                                         r"batch\), but dopri5"):
        kfm.sample(own, x0, solver="dopri5")
    scalar = kfm.ClassifierFreeGuidance(from_model_wrapper(lambda x, t, y: -x * t, time="scalar"), labels, 2.0, 2)
    kfm.KineticODESolver(scalar).sample(x0, method="dopri5")   # the remedy the message gives


def test_sample_names_its_own_arguments_when_they_are_not_tensors():
    # x_init was refused as "x0 must be a torch.Tensor" (kfm.sample's name), and a list time_grid without
    # saying what it got
    solver = kfm.KineticODESolver(lambda x, t: -x)
    with pytest.raises(TypeError, match=r"^x_init must be a torch\.Tensor .*got list"):
        solver.sample([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"^time_grid must be a 1-D tensor .*got list"):
        solver.sample(torch.zeros(2, DIM), time_grid=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"^time_grid must be a 1-D tensor .*got shape \(2, 1\)"):
        solver.sample(torch.zeros(2, DIM), time_grid=torch.tensor([[0.0], [1.0]]))


def test_a_model_extra_the_model_cannot_take_is_refused_before_the_run_with_its_signature():
    # KineticODESolver(guided).sample(x0, cond=c) failed at the first step with "__call__() got an unexpected
    # keyword argument 'cond'" and a note pointing at kfm.ModelTX, which does not help
    guided = kfm.ClassifierFreeGuidance(from_model_wrapper(lambda x, t, y, cond=None: -x), torch.tensor([0, 1]), 2.0, 2)
    x0, cond = torch.zeros(2, DIM), torch.zeros(2, DIM)
    with pytest.raises(ValueError, match=r"^the model takes no extra named \['cond'\]: ClassifierFreeGuidance"
                                         r"\(x, t\).*torch\.cat\(\[cond, cond\]\)"):
        kfm.KineticODESolver(guided).sample(x0, step_size=0.5, cond=cond)

    class Net(torch.nn.Module):
        def forward(self, x, t, y):
            return -x

    with pytest.raises(ValueError, match=r"^the model takes no extra named \['cond'\]: Net\(x, t, y\)"):
        from_model_wrapper(Net(), cond=cond)
    # extras it can take, by name or through **kwargs, and a signature it cannot read: as before
    from_model_wrapper(Net(), y=cond)
    from_model_wrapper(lambda x, t, **extras: -x, cond=cond)
    from_model_wrapper(torch.nn.DataParallel(Net()), y=cond)


def test_a_compiled_model_is_called_as_the_module_it_compiles():
    # helper-256: torch.compile's module shows forward(*args, **kwargs), which names no x and t, so a compiled
    # forward(t, x) was called by position, model(x, t): x went to t and t to x, without a word. It is read by
    # the module it compiles (its _orig_mod), and the eager backend runs that module's own forward: bit-identical
    x0 = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    settings = dict(step_size=1 / 32, method="midpoint")
    compiled = torch.compile(TimeFirst(), backend="eager")
    plain = KineticODESolver(TimeFirst()).sample(x0, **settings)
    assert torch.equal(KineticODESolver(compiled).sample(x0, **settings).x, plain.x)
    for data_parallel in (torch.nn.DataParallel(compiled), torch.compile(torch.nn.DataParallel(TimeFirst()),
                                                                         backend="eager")):
        assert torch.equal(KineticODESolver(data_parallel).sample(x0, **settings).x, plain.x)
    # the labels of forward(t, x, y) go by name to the compiled module as to the plain one
    labels = torch.tensor([0, 1, 2, 1])
    t = torch.full((4,), 0.3, dtype=torch.float64)
    ours = from_model_wrapper(torch.compile(LabelledTX(), backend="eager"), time="batch")(x0, t, labels)
    assert torch.equal(ours, from_model_wrapper(LabelledTX(), time="batch")(x0, t, labels))
    # dx/dt = cos(3t) − x: x(1) = x0/e + ∫_0^1 e^(s − 1)·cos(3s) ds
    exact = math.exp(-1) * x0 + (math.cos(3) + 3 * math.sin(3) - math.exp(-1)) / 10
    torch.testing.assert_close(plain.x, exact, rtol=0, atol=1e-3)


def test_a_compiled_model_is_refused_extras_its_module_cannot_take():
    # helper-256: the extras check read torch.compile's (*args, **kwargs) and let any extra through, to fail
    # at the first step with "got an unexpected keyword argument"
    class Net(torch.nn.Module):
        def forward(self, x, t, y):
            return -x

    cond = torch.zeros(2, DIM)
    for build in (from_model_wrapper, kfm.ModelXT):
        with pytest.raises(ValueError, match=r"^the model takes no extra named \['cond'\]: Net\(x, t, y\)"):
            build(torch.compile(Net(), backend="eager"), cond=cond)
        build(torch.compile(Net(), backend="eager"), y=cond)


def test_a_time_grid_is_refused_in_time_grid_s_words_under_its_own_name():
    # KineticODESolver repeated kfm.time_grid's checks in its own words ("must run from 0 to 1, got 0.001 to 1.0",
    # "must be finite, got [...]"); only a grid run backwards keeps its own hint
    solver, nan, inf = KineticODESolver(lambda x, t: -x), float("nan"), float("inf")
    for bad in ([0.001, 1.0], [0.0, 0.5], [0.0, nan, 1.0], [0.0, inf], [0.0, 0.7, 0.3, 1.0], [0.0, 0.5, 0.5, 1.0]):
        for dtype in (torch.float32, torch.float64):
            with pytest.raises(ValueError) as theirs:
                validate_grid(torch.tensor(bad, dtype=dtype))
            with pytest.raises(ValueError) as ours:
                solver.sample(torch.ones(2, DIM), time_grid=torch.tensor(bad, dtype=dtype))
            assert str(ours.value) == str(theirs.value).replace("grid", "time_grid")
            assert str(ours.value).startswith("time_grid must ")
    with pytest.raises(ValueError, match=r"^time_grid must run from 0 to 1 \(noise to data\), got 1\.0 to 0\.5; "):
        solver.sample(torch.ones(2, DIM), time_grid=torch.tensor([1.0, 0.5]))
    # an integer grid from 0 to 1 runs, as it did (read as float64)
    assert torch.equal(solver.sample(torch.ones(2, DIM), time_grid=torch.tensor([0, 1])).x, torch.zeros(2, DIM))


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_a_dtype_mismatch_tells_what_to_do_with_x_init(method):
    # a float32 x_init against a float64 net ended in torch's "mat1 and mat2 must have the same dtype"
    # with a note to use kfm.sample's dtype=, which KineticODESolver.sample does not take
    net = torch.nn.Linear(DIM, DIM).double()
    solver = KineticODESolver(lambda x, t: net(x))
    step = 0.5 if method == "euler" else None
    with pytest.raises(RuntimeError, match="same dtype") as caught:
        solver.sample(torch.zeros(3, DIM), step_size=step, method=method)
    note = " ".join(caught.value.__notes__)
    assert "pass x_init in the network's dtype and device" in note, note
    assert "dtype= and device=" not in note, note
    # kfm.sample's own note is unchanged, and the solver's does not outlive its call
    with pytest.raises(RuntimeError, match="same dtype") as caught:
        kfm.sample(lambda x, t: net(x), torch.zeros(3, DIM), steps=2)
    assert "kfm.sample's dtype= and device=" in " ".join(caught.value.__notes__)


def test_one_time_before_the_start_or_nan_is_refused_for_an_analytic_field_on_every_device():
    # reviewer-333: the wrapper tested float(t) > 1 on its own, so a time below 0 or NaN went through to the field,
    # whose device branch makes it NaN without a word; the one [0, 1] predicate (checks.unit_times) refuses it
    class OnDevice(kfm.GaussianTarget):   # the device branch on the CPU: a time outside [0, 1] becomes NaN
        def __call__(self, x, t):
            inside = (t >= 0) & (t <= 1)
            return super().__call__(x, torch.where(inside, t, 0.5)) * torch.where(inside, 1.0, math.nan)[:, None]

    wrapped = as_model_wrapper(OnDevice(2.0, 0.5))
    x = torch.zeros(3, 2, dtype=torch.float64)
    for time, shown in ((-0.25, "-0.25"), (float("nan"), "nan")):
        with pytest.raises(ValueError, match=rf"^t must lie in \[0, 1\], got {shown}$") as caught:
            wrapped(x=x, t=torch.tensor(time, dtype=torch.float64))
        assert "past the end" not in "".join(getattr(caught.value, "__notes__", []))   # that note is for t > 1
    assert torch.isfinite(wrapped(x=x, t=torch.tensor(0.0, dtype=torch.float64))).all()


def test_ode_solvers_dopri5_past_the_end_of_an_analytic_field_is_refused_with_the_way_on():
    # reviewer-328: ODESolver(as_model_wrapper(GaussianTarget)) under torchdiffeq's dopri5 evaluates at t = 1.02 and
    # interpolates back. The closed forms hold on [0, 1] only (past 1 an extrapolation looked like an answer), so
    # the user sees "t must lie in [0, 1], got 1.02..." and a note naming the field and the way on: kfm's own
    # dopri5 (KineticODESolver or kfm.sample), whose steps end on t = 1. The note did not name the analytic fields;
    # on a GPU their time became NaN instead and torchdiffeq ended in "underflow in dt 0.0" with no word of why
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    settings = dict(step_size=None, method="dopri5", time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\], got 1\.0\d+") as caught:
        ODESolver(as_model_wrapper(kfm.GaussianTarget(2.0, 0.5))).sample(x0, **settings)
    said = str(caught.value) + "".join(getattr(caught.value, "__notes__", []))
    assert "GaussianTarget" in said and "KineticODESolver(...).sample(method='dopri5')" in said

    class OnDevice(kfm.GaussianTarget):   # the device branch on the CPU: a time past 1 becomes NaN, no error
        def __call__(self, x, t):
            return super().__call__(x, torch.where(t <= 1, t, 0.5)) * torch.where(t <= 1, 1.0, math.nan)[:, None]
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\], got 1\.0\d+") as caught:
        ODESolver(as_model_wrapper(OnDevice(2.0, 0.5))).sample(x0, **settings)
    assert "KineticODESolver" in "".join(getattr(caught.value, "__notes__", [])) + str(caught.value)
    # the way on the note names runs
    ours = kfm.KineticODESolver(as_model_wrapper(kfm.GaussianTarget(2.0, 0.5))).sample(x0, method="dopri5")
    assert torch.isfinite(ours.x).all()
