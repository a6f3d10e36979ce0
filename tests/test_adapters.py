"""Adapters: each convention, translated, reproduces the ecosystem's sampler or the analytic truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.fields.adapters import (
    DataPrediction,
    DiscreteTime,
    ModelTX,
    ModelXT,
    NoisePrediction,
    ReversedTime,
)



DIM = 3
MEAN = torch.tensor([1.5, -0.5, 0.25], dtype=torch.float64)
STD = 0.4


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(DIM + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM)
    ).double()


class TorchcfmStyleNet(torch.nn.Module):
    """A torchcfm ``torch_wrapper``-like net: ``forward(t, x)`` with a 0-dim t, appended as a column."""

    def __init__(self):
        super().__init__()
        self.mlp = _mlp()
        self.scalar_calls = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        assert t.dim() == 0, "this net takes one time per call"
        self.scalar_calls += 1
        return self.mlp(torch.cat([x, t.repeat(x.shape[0])[:, None]], dim=1))


def _x0(batch: int = 6) -> torch.Tensor:
    return kfm.noise(list(range(batch)), (DIM,), dtype=torch.float64)


def _left_kpe(velocity_tx, states: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """½ Σ ‖v(t_i, x_i)‖² Δt_i from an Euler trajectory (states at the grid points)."""
    total = torch.zeros(states.shape[1], dtype=torch.float64)
    for i in range(grid.numel() - 1):
        v = velocity_tx(grid[i], states[i])
        total += 0.5 * v.pow(2).sum(1) * (grid[i + 1] - grid[i])
    return total


# --- model(t, x): torchdiffeq / torchcfm ---------------------------------------------------------


@pytest.mark.parametrize("method", ["euler", "midpoint"])
@pytest.mark.parametrize("grid", ["uniform", "cosine"])
def test_time_first_net_matches_torchdiffeq(method, grid):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    net = TorchcfmStyleNet()
    x0 = _x0()
    t = kfm.time_grid(grid, 20)
    with torch.no_grad():
        states = torchdiffeq.odeint(net, x0, t, method=method)
    ours = kfm.sample(ModelTX(net, time="scalar"), x0, grid=t, solver=method, quadrature="left")
    torch.testing.assert_close(ours.x, states[-1], rtol=1e-12, atol=1e-12)
    if method == "euler":  # states at grid points are the Euler iterates: the left sum is direct
        with torch.no_grad():
            expected = _left_kpe(net, states, t)
        torch.testing.assert_close(ours.kpe, expected, rtol=1e-12, atol=0)


def test_rk4_parity_with_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    # torchdiffeq's "rk4" is Kutta's 3/8 rule: our "rk4_38" on any field; our classical "rk4" only
    # where every 4-stage order-4 rule coincides (an autonomous linear field: Taylor of exp(hA)).
    net = TorchcfmStyleNet()
    x0 = _x0()
    t = kfm.time_grid("cosine", 8)
    with torch.no_grad():
        states = torchdiffeq.odeint(net, x0, t, method="rk4")
    ours = kfm.sample(ModelTX(net, time="shared"), x0, grid=t, solver="rk4_38")
    torch.testing.assert_close(ours.x, states[-1], rtol=1e-12, atol=1e-12)

    torch.manual_seed(1)
    a = 0.5 * torch.randn(DIM, DIM, dtype=torch.float64)
    b = torch.randn(DIM, dtype=torch.float64)
    linear = lambda t_, x: x @ a.T + b  # noqa: E731
    states = torchdiffeq.odeint(linear, x0, t, method="rk4")
    classical = kfm.sample(ModelTX(linear), x0, grid=t, solver="rk4")
    torch.testing.assert_close(classical.x, states[-1], rtol=1e-12, atol=1e-12)


def test_time_first_batch_mode_passes_per_sample_times():
    seen = []

    def net(t, x):
        seen.append(t.shape)
        return -x

    ModelTX(net)(torch.zeros(4, 2), torch.rand(4))
    assert seen == [(4,)]


def test_scalar_mode_groups_rows_by_time():
    net = TorchcfmStyleNet()
    x = _x0(5)
    t = torch.tensor([0.1, 0.7, 0.1, 0.3, 0.7], dtype=torch.float64)
    out = ModelTX(net, time="scalar")(x, t)
    assert net.scalar_calls == 3  # one call per distinct time
    with torch.no_grad():
        expected = net.mlp(torch.cat([x, t[:, None]], dim=1))
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("mode", ["shared", "scalar"])
def test_time_modes_pass_an_empty_batch_through_the_net(mode):
    # an empty batch has no time to pass: the net still runs once, so the output has its shape
    def net(x, t):
        assert t.dim() == 0
        return torch.cat([x, x], dim=1)

    out = ModelXT(net, time=mode)(torch.empty(0, DIM, dtype=torch.float64), torch.empty(0, dtype=torch.float64))
    assert out.shape == (0, 2 * DIM) and out.dtype == torch.float64


# --- model(x, t, **extras) -----------------------------------------------------------------------


def test_model_xt_forwards_extras_and_slices_per_sample_ones_when_grouping():
    def net(x, t, shift, cond=None):
        assert t.dim() == 0
        return x * t + shift + cond

    x = _x0(4)
    cond = torch.arange(4, dtype=torch.float64)[:, None].expand(4, DIM)
    t = torch.tensor([0.2, 0.5, 0.2, 0.5], dtype=torch.float64)
    out = ModelXT(net, time="scalar", shift=1.0)(x, t, cond=cond)
    torch.testing.assert_close(out, x * t[:, None] + 1.0 + cond)


def _toward_table_rows(x, t, table, y):
    return table[y] - x                       # dx/dt = c − x: x(1) = c + (x0 − c)/e


@pytest.mark.parametrize("time", ["batch", "scalar"])
def test_named_per_sample_extras_follow_dopri5_and_shared_ones_stay_whole(time):
    # a class table with as many rows as the batch is shared, not per-sample: the first-dimension
    # guess slices it (here an IndexError; with other shapes silently wrong rows)
    table = torch.randn(4, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([2, 0, 3, 1])
    x0 = _x0(4)
    exact = table[y] + (x0 - table[y]) * math.exp(-1.0)
    named = ModelXT(_toward_table_rows, time=time, per_sample=["y"], table=table, y=y)
    res = kfm.sample(named, x0, solver="dopri5", rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.x, exact, rtol=0, atol=1e-7)
    assert int(res.nfe.min()) < int(res.nfe.max())            # rows finished apart: select was used
    guessed = ModelXT(_toward_table_rows, time=time, table=table, y=y)
    with pytest.raises(IndexError):
        kfm.sample(guessed, x0, solver="dopri5", rtol=1e-9, atol=1e-9)


def _decay_at_own_time(x, t):
    assert t.dim() == 0
    return -2.0 * t * x                       # x(1) = x0·e^(−1) whatever the steps


@pytest.mark.parametrize("wrap", ["plain", "ReversedTime", "DiscreteTime", "guidance"])
def test_dopri5_refuses_a_net_that_sees_one_time_for_the_whole_batch(wrap):
    # under dopri5 the rows sit at different times, and time="shared" gave each the first row's:
    # a wrong x and KPE with no error; fixed-step grids stay allowed
    shared = ModelXT(_decay_at_own_time, time="shared")
    guided = ModelXT(lambda x, t, y: _decay_at_own_time(x, t), time="shared")
    field = {"plain": shared, "ReversedTime": ReversedTime(shared), "DiscreteTime": DiscreteTime(shared, 1000),
             "guidance": kfm.ClassifierFreeGuidance(guided, torch.zeros(4), 1.0, -1)}[wrap]
    x0 = _x0(4) * torch.tensor([0.01, 1.0, 10.0, 100.0], dtype=torch.float64)[:, None]
    with pytest.raises(ValueError, match=r"time='shared'.*dopri5 holds each sample at its own time"):
        kfm.sample(field, x0, solver="dopri5")
    if wrap == "plain":
        res = kfm.sample(ModelXT(_decay_at_own_time, time="scalar"), x0, solver="dopri5", rtol=1e-9, atol=1e-9)
        assert int(res.nfe.min()) < int(res.nfe.max())        # rows apart: "shared" would be wrong here
        torch.testing.assert_close(res.x, x0 * math.exp(-1.0), rtol=1e-7, atol=1e-9)
        fixed = kfm.sample(shared, x0, steps=400, solver="rk4")
        torch.testing.assert_close(fixed.x, x0 * math.exp(-1.0), rtol=1e-9, atol=1e-9)


def _toward_table_rows_in_sigma(x, timestep, table, y):
    return x - table[y]                       # dx/dσ = −(c − x), read on the σ clock


def _toward_table_rows_by_step(x, step, table, y):
    assert step.dtype == torch.int64
    return table[y] - x


@pytest.mark.parametrize("outer", ["ReversedTime", "DiscreteTime"])
def test_an_outer_adapter_passes_dopri5s_selection_to_the_inner_model_xt(outer):
    # dopri5 calls select() on the outermost field; an adapter must pass it to the ModelXT inside,
    # whose per-sample extras would otherwise keep all B rows against fewer x rows (mutation audit)
    table = torch.randn(4, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([2, 0, 3, 1])
    x0 = _x0(4) * torch.tensor([0.01, 1.0, 10.0, 100.0], dtype=torch.float64)[:, None]
    exact = table[y] + (x0 - table[y]) * math.exp(-1.0)
    if outer == "ReversedTime":
        field = ReversedTime(ModelXT(_toward_table_rows_in_sigma, per_sample=["y"], table=table, y=y))
    else:
        field = DiscreteTime(ModelXT(_toward_table_rows_by_step, per_sample=["y"], table=table, y=y), 1000)
    res = kfm.sample(field, x0, solver="dopri5", rtol=1e-9, atol=1e-9)
    assert int(res.nfe.min()) < int(res.nfe.max())            # rows finished apart: select was used
    torch.testing.assert_close(res.x, exact, rtol=1e-7, atol=1e-7)


def test_scalar_time_groups_slice_only_the_named_extras():
    table = torch.randn(4, DIM, dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 2])
    t = torch.tensor([0.2, 0.5, 0.2, 0.5], dtype=torch.float64)
    x = _x0(4)
    out = ModelXT(_toward_table_rows, time="scalar", per_sample=("y",), table=table, y=y)(x, t)
    torch.testing.assert_close(out, table[y] - x, rtol=0, atol=0)


def _toward_table_rows_at_their_rates(x, t, y, table):
    return (table[y] - x) * (1.0 + y[:, None].to(x.dtype)) ** 2 * (1.0 + t[:, None] if t.dim() else 1.0 + t)


@pytest.mark.parametrize("inner", [
    lambda table, y: kfm.ClassifierFreeGuidance(ModelXT(_toward_table_rows_at_their_rates, table=table), y, 1.5, 3),
    lambda table, y: ModelXT(_toward_table_rows_at_their_rates, per_sample=["y"], table=table, y=y),
], ids=["guidance", "ModelXT-per-sample"])
def test_scalar_time_calls_a_field_holding_per_sample_data_through_its_select(inner):
    # time="scalar" called the wrapped field on each time's rows, but a field holding one row of
    # data per sample (guidance's labels, a ModelXT's per-sample extras) kept all of them: "x has 2
    # rows but labels has 4". Each time's rows now reach it through select(), as dopri5's do
    table = torch.randn(4, DIM, dtype=torch.float64)
    y = torch.tensor([1, 2, 0, 2])
    x = _x0(4)
    t = torch.tensor([0.2, 0.5, 0.2, 0.5], dtype=torch.float64)
    field = inner(table, y)
    out = ModelXT(field, time="scalar")(x, t)
    assert torch.equal(out, field(x, t))
    res = kfm.sample(ModelXT(field, time="scalar"), x, solver="dopri5")
    expected = kfm.sample(field, x, solver="dopri5")
    assert int(res.nfe.min()) < int(res.nfe.max())            # rows at several times
    assert torch.equal(res.x, expected.x) and torch.equal(res.kpe, expected.kpe)


@pytest.mark.parametrize("per_sample, extras, message", [
    ("y", {"y": torch.zeros(2)}, "list of extra names"),
    (["z"], {"y": torch.zeros(2)}, "'z', which is not among the extras"),
    (["y"], {"y": 3}, "must be a tensor with a batch dimension"),
    (["y"], {"y": torch.zeros(5)}, "has 5 rows for a batch of 2"),
])
def test_bad_per_sample_extras_are_named(per_sample, extras, message):
    with pytest.raises(ValueError, match=message):
        ModelXT(lambda x, t, y: x, per_sample=per_sample, **extras)(_x0(2), torch.rand(2))


# --- discrete time ---------------------------------------------------------------------------------


def test_discrete_time_truncates_to_integer_steps():
    seen = {}

    def net(x, step):
        seen["step"] = step
        return x

    t = torch.tensor([0.0, 0.5, 0.9995, 1.0, 1.2])
    DiscreteTime(ModelXT(net), num_timesteps=1000)(torch.zeros(5, 1), t)
    assert seen["step"].dtype == torch.int64
    assert seen["step"].tolist() == [0, 499, 998, 999, 999]
    DiscreteTime(net, num_timesteps=2)(torch.zeros(3, 1), torch.tensor([0.0, 0.99, 1.0]))
    assert seen["step"].tolist() == [0, 0, 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_discrete_time_steps_are_the_exact_truncation_in_every_dtype(dtype):
    # the product was formed in t's dtype: bfloat16 rounded 999·0.5 to 500 and 999·1 to 1000 (an
    # nn.Embedding(1000) raised IndexError), float16 overflowed to -2**63 beyond 65504, float32
    # rounded 0.5·(2**25 − 1) up to 2**24
    for T in (1000, 100_000, 2**25):
        t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=dtype)
        expected = [int(v * (T - 1)) for v in t.double().tolist()]     # exact: float64, T < 2**53
        step = DiscreteTime(lambda x, s: s, num_timesteps=T).step_index(t)
        assert step.tolist() == expected, (dtype, T)
        assert 0 <= int(step.min()) and int(step.max()) <= T - 1


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "1000", 10**30])
def test_discrete_time_rejects_bad_num_timesteps(bad):
    # 10**30 overflowed only at the first call
    with pytest.raises(ValueError, match=r"num_timesteps must be an integer in \[2, 2\*\*53\]"):
        DiscreteTime(lambda x, s: x, num_timesteps=bad)


def test_adapter_settings_take_numpy_and_zero_dimensional_numbers():
    # each was refused: only Python ints/floats (and np.float64, a float subclass) passed
    assert DiscreteTime(lambda x, s: x, num_timesteps=np.int64(1000)).num_timesteps == 1000
    assert ReversedTime(lambda x, s: x, timestep_scale=np.float32(1000)).timestep_scale == 1000.0
    assert ReversedTime(lambda x, s: x, timestep_scale=torch.tensor(1.0), flip_sign=np.False_).flip_sign is False
    assert NoisePrediction(lambda x, t: x, t_min=np.float32(0.5)).t_min == 0.5
    assert DataPrediction(lambda x, t: x, gap_min=torch.tensor(0.25)).gap_min == 0.25


@pytest.mark.parametrize("adapter", [NoisePrediction, DataPrediction])
def test_a_prediction_of_the_wrong_shape_is_named(adapter):
    # a (B, 1) prediction broadcast against x gave KPE ≈ 1e6; kfm.sample saw a correctly shaped output
    x0 = kfm.noise(range(4), (2,))
    with pytest.raises(ValueError, match=r"must return its (noise|data) prediction with x's shape \(4, 2\), got \(4, 1\)"):
        kfm.sample(adapter(lambda x, t: torch.zeros(4, 1)), x0, steps=2)


# --- noise and data prediction ------------------------------------------------------------------------


def _posterior_means(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[ε | x_t] and E[x1 | x_t] for x1 ~ N(MEAN, STD² I), ε ~ N(0, I), x_t = (1 − t)ε + t·x1."""
    tc = t[:, None]
    var = (1 - tc) ** 2 + (tc * STD) ** 2
    centred = x - tc * MEAN
    return (1 - tc) / var * centred, MEAN + tc * STD**2 / var * centred


def test_noise_and_data_prediction_recover_the_exact_velocity():
    field = kfm.GaussianTarget(MEAN, STD)
    x = _x0(8) * 2.0
    t = torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
    noise_net = lambda x_, t_: _posterior_means(x_, t_)[0]  # noqa: E731
    data_net = lambda x_, t_: _posterior_means(x_, t_)[1]  # noqa: E731
    torch.testing.assert_close(NoisePrediction(noise_net)(x, t), field(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(DataPrediction(data_net)(x, t), field(x, t), rtol=1e-12, atol=1e-12)


def test_data_prediction_sampling_reaches_the_analytic_kpe():
    field = kfm.GaussianTarget(MEAN, STD)
    x0 = _x0(16)
    data_net = lambda x_, t_: _posterior_means(x_, t_)[1]  # noqa: E731
    res = kfm.sample(DataPrediction(data_net), x0, steps=200, solver="midpoint")
    torch.testing.assert_close(res.kpe, field.kinetic_energy(x0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.x, field.trajectory(x0, 1.0), rtol=1e-4, atol=1e-5)


class _SmoothButSingularAtOne:
    """The exact field with DataPrediction's scheme (heun/rk4 end without a stage at t = 1)."""

    singular_at_one = True

    def __init__(self, field):
        self.field = field

    def __call__(self, x, t):
        return self.field(x, t)


@pytest.mark.parametrize("solver", ["heun", "rk4"])
def test_data_prediction_never_reaches_its_singular_end(solver):
    # an exact x1-predictor returns x at t = 1, so evaluating there gives v = 0; instead the last
    # step has no end stage, and the run equals the exact field under that scheme
    field = kfm.GaussianTarget(MEAN, STD)
    x0 = _x0(8)
    data_net = lambda x_, t_: _posterior_means(x_, t_)[1]  # noqa: E731
    adapter = DataPrediction(ModelXT(data_net))
    assert adapter.singular_at_one and not ModelXT(data_net).singular_at_one
    res = kfm.sample(adapter, x0, steps=10, solver=solver)
    ref = kfm.sample(_SmoothButSingularAtOne(field), x0, steps=10, solver=solver)
    torch.testing.assert_close(res.x, ref.x, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.kpe, ref.kpe, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.x, field.trajectory(x0, 1.0), rtol=0, atol=0.05)


def test_singularity_follows_the_clock():
    inner = lambda x_, t_: x_  # noqa: E731
    assert DataPrediction(ReversedTime(inner, flip_sign=False)).singular_at_one   # our t = 1
    assert not ReversedTime(DataPrediction(inner)).singular_at_one                # its σ = 1 is our t = 0
    assert not ModelXT(inner).singular_at_one and DataPrediction(ModelXT(inner)).singular_at_one


def test_noise_prediction_evaluates_its_net_at_t_min_on_the_first_step():
    # an exact ε-predictor returns x at t = 0, where the formula would give v = 0
    field = kfm.GaussianTarget(MEAN, STD)
    x0 = _x0(8)
    noise_net = lambda x_, t_: _posterior_means(x_, t_)[0]  # noqa: E731
    zero = torch.zeros(8, dtype=torch.float64)
    torch.testing.assert_close(NoisePrediction(noise_net)(x0, zero), field(x0, zero), rtol=0, atol=1e-2)
    res = kfm.sample(NoisePrediction(noise_net), x0, steps=10, solver="euler")
    ref = kfm.sample(field, x0, steps=10, solver="euler")
    torch.testing.assert_close(res.x, ref.x, rtol=0, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T", [50, 100, 500, 1000])
def test_noise_prediction_over_integer_steps_starts_from_step_1_in_half_precision(dtype, T):
    # t_min = (1 + 1e-6)/(T − 1) rounded to nearest in float16/bfloat16 fell below 1/(T − 1), so
    # the net saw step 0, where an exact ε-predictor returns x and the velocity is 0
    seen = {}

    def net(x, step):
        seen["step"] = step
        return torch.zeros_like(x)

    NoisePrediction(DiscreteTime(net, T))(torch.ones(3, 2, dtype=dtype), torch.zeros(3, dtype=dtype))
    assert seen["step"].tolist() == [1, 1, 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_data_prediction_stays_finite_at_t_1_in_every_dtype(dtype):
    # 1 − 1e-3 rounds to 1 in bfloat16: the clamp left t = 1 and v = (x̂1 − x)/0 = inf
    seen = {}

    def net(x, t):
        seen["t"] = t
        return x + 1.0

    v = DataPrediction(net)(torch.zeros(2, 2, dtype=dtype), torch.ones(2, dtype=dtype))
    assert torch.isfinite(v).all() and v.dtype == dtype
    assert (seen["t"].double() <= 1 - 1e-3).all() and (seen["t"] < 1).all()
    # the largest value of the dtype at or below 1 − gap_min: nothing larger was allowed
    assert (torch.nextafter(seen["t"], torch.ones_like(seen["t"])).double() > 1 - 1e-3).all()


@pytest.mark.parametrize("run", [dict(solver="rk4", steps=100, grid="cosine"), dict(solver="euler", steps=2000),
                                 dict(solver="dopri5", rtol=1e-10, atol=1e-10)])
def test_an_exact_data_prediction_lands_on_its_data_with_a_small_gap_min(run):
    # the docstring's advice for an exact x̂1: with the default clamp 1 − 1e-3 the last steps
    # divided x̂1 − x by 1e-3 instead of 1 − t, and the run missed its point by 1e-3, KPE 6e-4 low,
    # energy after 0.999 56 % low, at any number of steps (helper-137); gap_min=1e-6 lands
    y = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    power = 0.5 * ((y - x0) ** 2).sum(1)  # straight lines at constant speed y − x0
    res = kfm.sample(DataPrediction(lambda x, t: y.expand_as(x), gap_min=1e-6), x0, profile=True, **run)
    tol = 1e-12
    torch.testing.assert_close(res.x, y.expand(4, 3), rtol=0, atol=tol)
    torch.testing.assert_close(res.kpe, power, rtol=tol, atol=0)
    torch.testing.assert_close(res.energy_after(0.999), 1e-3 * power, rtol=1e-9, atol=0)
    default = kfm.sample(DataPrediction(lambda x, t: y.expand_as(x)), x0, **run)
    if run["solver"] != "dopri5":
        assert ((default.x - y).norm(dim=1) > 1e-4).all()  # what the default trades for its bound below
    else:  # its end step's stages (tableau.DOPRI5_END) lie at most 8/9 into a last step far longer than 9e-3
        torch.testing.assert_close(default.x, y.expand(4, 3), rtol=0, atol=tol)


def test_the_default_gap_min_bounds_a_trained_nets_error_near_the_data():
    # x̂1 off by δ = 0.01·tanh(x) (the exact posterior mean of a Gaussian target otherwise): the
    # velocity gains δ/(1 − t), δ/gap_min at most. With gap_min = 1e-6 dopri5 read a KPE ~80× the
    # exact field's; the default keeps it within ~15 %
    field = kfm.GaussianTarget(MEAN, STD)
    x0 = _x0(8)
    net = lambda x_, t_: _posterior_means(x_, t_)[1] + 0.01 * torch.tanh(x_)  # noqa: E731
    exact = field.kinetic_energy(x0).mean()
    kept = kfm.sample(DataPrediction(net), x0, solver="dopri5").kpe.mean()
    loose = kfm.sample(DataPrediction(net, gap_min=1e-6), x0, solver="dopri5").kpe.mean()
    assert abs(kept / exact - 1) < 0.25 and loose / exact > 10, (float(kept / exact), float(loose / exact))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_prediction_over_integer_steps_starts_from_step_1_not_0(dtype):
    # int(1e-3·999) = 0: the default clamp put a T = 1000 net at its step 0 (t = 0), where an
    # exact ε-predictor returns x and the first velocity was 0 (user journey audit)
    field = kfm.GaussianTarget(MEAN, STD)
    x0 = _x0(8).to(dtype)
    stepped = lambda x_, step: _posterior_means(x_.double(), step.double() / 999)[0].to(x_.dtype)  # noqa: E731
    adapter = NoisePrediction(DiscreteTime(stepped, 1000))
    assert adapter.t_min > 1 / 999 and NoisePrediction(stepped).t_min == 1e-3
    assert int(DiscreteTime(stepped, 1000).step_index(torch.tensor([adapter.t_min], dtype=dtype))) == 1
    zero = torch.zeros(8, dtype=dtype)
    v0 = adapter(x0, zero).double()
    assert (v0.norm(dim=1) > 0.1).all()
    torch.testing.assert_close(v0, field(x0.double(), zero.double()), rtol=0, atol=1e-2)
    res = kfm.sample(adapter, x0, steps=10, solver="euler")
    ref = kfm.sample(field, x0.double(), steps=10, solver="euler")
    torch.testing.assert_close(res.x.double(), ref.x, rtol=0, atol=5e-3)


def test_data_prediction_evaluates_its_net_at_one_minus_gap_min_at_the_end():
    # the mirror of NoisePrediction at t = 0: an exact x1-predictor returns x at t = 1, so a net
    # called at t = 1 (only the divisor clamped) would give v = 0 there (mutation audit)
    field = kfm.GaussianTarget(MEAN, STD)
    x = _x0(8) * 2.0
    data_net = lambda x_, t_: _posterior_means(x_, t_)[1]  # noqa: E731
    adapter = DataPrediction(data_net, gap_min=1e-2)
    one = torch.ones(8, dtype=torch.float64)
    torch.testing.assert_close(adapter(x, one), field(x, one - 1e-2), rtol=1e-12, atol=1e-12)
    assert (adapter(x, one).norm(dim=1) > 0.1).all()


def test_prediction_clamps_keep_the_singular_ends_finite():
    x = _x0(3)
    ends = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.isfinite(NoisePrediction(lambda x_, t_: x_ + 1.0, t_min=1e-2)(x, ends)).all()
    v = DataPrediction(lambda x_, t_: x_ + 1.0, gap_min=1e-2)(x, ends)
    torch.testing.assert_close(v[1:], torch.full_like(v[1:], 100.0))  # (x̂1 − x)/gap_min


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, math.nan])
def test_prediction_rejects_bad_clamps(bad):
    with pytest.raises(ValueError, match="t_min must lie in"):
        NoisePrediction(lambda x, t: x, t_min=bad)
    with pytest.raises(ValueError, match="gap_min must lie in"):
        DataPrediction(lambda x, t: x, gap_min=bad)


# --- reversed time (diffusers' σ = 1 − t clock) ---------------------------------------------------


def _sigma_time_net(field):
    """A diffusers-convention net: reads timestep = 1000σ and returns dx/dσ = −v."""

    def net(x, timestep):
        return -field(x, 1.0 - timestep / 1000.0)

    return net


def test_reversed_time_adapter_recovers_the_analytic_flow():
    field = kfm.GaussianTarget(MEAN, STD)
    x0 = _x0(16)
    res = kfm.sample(ReversedTime(ModelXT(_sigma_time_net(field))), x0, steps=100, solver="rk4")
    torch.testing.assert_close(res.kpe, field.kinetic_energy(x0), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.x, field.trajectory(x0, 1.0), rtol=1e-8, atol=1e-8)


def test_a_wrong_convention_guess_is_caught():
    """The failure the README warns about: a σ-time net without (or with half) its adapter."""
    field = kfm.GaussianTarget(MEAN, STD)
    x0 = _x0(64)
    truth_kpe, truth_x = field.kinetic_energy(x0), field.trajectory(x0, 1.0)
    net = _sigma_time_net(field)
    guesses = {
        "no adapter": ModelXT(net),
        "no sign flip": ReversedTime(net, flip_sign=False),
        "wrong timestep scale": ReversedTime(net, timestep_scale=1.0),
    }
    for name, velocity in guesses.items():
        res = kfm.sample(velocity, x0, steps=50, solver="heun", on_nonfinite="flag")
        x_err = (res.x - truth_x).norm(dim=1) / truth_x.norm(dim=1)
        kpe_err = (res.kpe - truth_kpe).abs() / truth_kpe
        assert not bool(torch.nan_to_num(x_err, nan=1.0).median() < 0.2), name
        assert not bool(torch.nan_to_num(kpe_err, nan=1.0).median() < 0.2), name
    good = kfm.sample(ReversedTime(net), x0, steps=50, solver="heun")
    assert ((good.kpe - truth_kpe).abs() / truth_kpe).max() < 1e-3


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, True])
def test_reversed_time_rejects_bad_scale(bad):
    with pytest.raises(ValueError, match="timestep_scale must be a finite number > 0"):
        ReversedTime(lambda x, s: x, timestep_scale=bad)


def test_signature_adapters_validate_arguments():
    with pytest.raises(ValueError, match="time must be one of"):
        ModelTX(lambda t, x: x, time="per-sample")
    with pytest.raises(ValueError, match="time must be one of"):
        ModelXT(lambda x, t: x, time=None)
    with pytest.raises(TypeError, match="model must be callable"):
        ModelXT(3)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        ModelXT(lambda x, t: x)(torch.zeros(4, 2), torch.zeros(3))


def test_adapters_compose_and_print_as_their_composition():
    net = lambda x, s: x  # noqa: E731
    adapter = NoisePrediction(DiscreteTime(ModelXT(net, time="scalar"), 1000))
    text = repr(adapter)
    assert text.startswith("NoisePrediction(DiscreteTime(ModelXT(") and "num_timesteps=1000" in text


class _TorchCFMStyleNet(torch.nn.Module):
    """forward(t, x) with t (B,) expanded against x, as torchcfm's nets do."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 4)

    def forward(self, t, x):
        return self.lin(torch.cat([x, t.reshape(-1, 1).expand(-1, 1)], dim=1))


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
def test_a_net_called_in_the_wrong_order_fails_with_a_note_on_the_convention(solver):
    net = _TorchCFMStyleNet()
    with pytest.raises((RuntimeError, IndexError)) as caught:   # torch raises either, by the shapes met
        kfm.sample(net, seeds=range(3), shape=(4,), steps=2, solver=solver)
    assert any("needs kfm.ModelTX(net)" in note for note in getattr(caught.value, "__notes__", []))
    kfm.sample(kfm.ModelTX(net), seeds=range(3), shape=(4,), steps=2, solver=solver)   # the fix works


def test_a_velocity_of_the_wrong_shape_names_the_convention():
    with pytest.raises(ValueError, match=r"returned shape \(3, 2\) .*needs kfm.ModelTX\(net\)"):
        kfm.sample(lambda x, t: x[:, :2], seeds=range(3), shape=(4,), steps=2)


class _ByNameNet(torch.nn.Module):
    """forward(t, x), its parameters named: from_model_wrapper calls it model(x=x, t=t)."""

    def __init__(self, out: int = 4, inner: int = 5):
        super().__init__()
        self.lin = torch.nn.Linear(inner, out)

    def forward(self, t, x, y=None):
        return self.lin(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], dim=1))


def _notes_and_text(err: BaseException) -> str:
    return " ".join([str(err), *getattr(err, "__notes__", [])])


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
@pytest.mark.parametrize("how", ["from_model_wrapper", "KineticODESolver"])
def test_a_model_called_by_name_gets_no_hint_to_swap_its_arguments(solver, how):
    # "a net written forward(t, x) needs kfm.ModelTX(net)" was the hint for a model whose forward(t, x)
    # from_model_wrapper and KineticODESolver already call by name, model(x=x, t=t)
    from kinetic_fm.integrations.flow_matching import KineticODESolver, from_model_wrapper

    time = "scalar" if solver == "dopri5" else "shared"
    for net, raised in ((_ByNameNet(out=2), ValueError), (_ByNameNet(inner=7), RuntimeError)):  # shape, in the net
        with pytest.raises(raised) as caught:
            if how == "KineticODESolver":
                KineticODESolver(net, time=time).sample(torch.randn(3, 4), method=solver,
                                                        step_size=None if solver == "dopri5" else 0.5)
            else:
                kfm.sample(from_model_wrapper(net, time=time), seeds=range(3), shape=(4,), steps=2, solver=solver)
        text = _notes_and_text(caught.value)
        assert "ModelTX" not in text and "forward(t, x)" not in text
        assert "the model is called by name, model(x=x, t=t, ...)" in text
    # the general hint stays where it applies: the same net called by position
    with pytest.raises(RuntimeError) as caught:
        kfm.sample(_ByNameNet(), seeds=range(3), shape=(4,), steps=2, solver=solver)
    assert "needs kfm.ModelTX(net)" in _notes_and_text(caught.value)


def test_a_guidance_around_a_field_called_by_name_passes_the_hint_on():
    from kinetic_fm.integrations.flow_matching import from_model_wrapper

    guided = kfm.ClassifierFreeGuidance(from_model_wrapper(_ByNameNet(out=2)), torch.zeros(3), 1.0, 0)
    with pytest.raises(ValueError) as caught:
        kfm.sample(guided, seeds=range(3), shape=(4,), steps=2)
    text = _notes_and_text(caught.value)
    assert "ModelTX" not in text and "the model is called by name" in text


def test_a_net_in_another_dtype_gets_a_note_on_dtypes_not_on_the_call_order():
    """A bfloat16 net fed float32 x fails inside torch with a dtype message: the note must point at
    the dtype (x0's dtype, or a converting wrapper), not at the call order."""
    net = torch.nn.Linear(2, 2).bfloat16().eval()
    with pytest.raises(RuntimeError) as caught:
        kfm.sample(lambda x, t: net(x), seeds=range(3), shape=(2,), steps=2)
    notes = getattr(caught.value, "__notes__", [])
    assert any("x is torch.float32 on cpu" in note and "reduced precision" in note for note in notes)
    assert not any("ModelTX" in note for note in notes)
    kfm.sample(lambda x, t: net(x.bfloat16()).float(), seeds=range(3), shape=(2,), steps=2)  # the fix works


@pytest.mark.parametrize("first", ["conv", "groupnorm", "linear"])
def test_every_dtype_mismatch_of_torch_gets_the_dtype_note(first):
    # a convolution's "Input type (float) and bias type (c10::BFloat16) should be the same" got the
    # note on the call order (forward(t, x), kfm.ModelTX)
    layer = {"conv": torch.nn.Conv2d(2, 2, 3, padding=1), "groupnorm": torch.nn.GroupNorm(1, 2),
             "linear": torch.nn.Linear(4, 4)}[first]
    net = layer.to(torch.bfloat16).eval()
    with pytest.raises(RuntimeError) as caught:
        kfm.sample(lambda x, t: net(x), seeds=range(2), shape=(2, 4, 4), steps=2)
    notes = getattr(caught.value, "__notes__", [])
    assert any("x is torch.float32 on cpu" in note for note in notes), notes
    assert not any("ModelTX" in note for note in notes)


def test_a_net_reading_t_as_one_number_gets_the_convention_note():
    # float(t) on the (B,) time raised a ValueError without any note
    class FloatTime(torch.nn.Module):
        def forward(self, x, t):
            return -x * float(t)

    with pytest.raises(ValueError, match="only one element tensors") as caught:
        kfm.sample(FloatTime(), seeds=range(2), shape=(2,), steps=2)
    assert any("kfm.ModelXT(net, time='scalar')" in note for note in getattr(caught.value, "__notes__", []))
    with pytest.raises(RuntimeError, match="cannot be converted to Scalar") as caught:  # t.item(), likewise
        kfm.sample(lambda x, t: -x * t.item(), seeds=range(2), shape=(2,), steps=2)
    assert any("kfm.ModelXT(net, time='scalar')" in note for note in getattr(caught.value, "__notes__", []))
    res = kfm.sample(ModelXT(FloatTime(), time="scalar"), seeds=range(2), shape=(2,), steps=2, dtype=torch.float64)
    x0 = kfm.noise(range(2), (2,), dtype=torch.float64)
    torch.testing.assert_close(res.x, x0 * (1 - 0.0) * (1 - 0.5 * 0.5))  # x ← x(1 − t_i·Δt), t = 0, ½


def test_a_closure_over_per_sample_labels_under_dopri5_is_told_what_to_use():
    # dopri5 evaluates only the samples still running; a closure's labels no longer line up, and
    # the broadcast error said nothing about why
    rates = torch.tensor([1.0, 5.0, 20.0, 60.0], dtype=torch.float64)   # very different step sizes
    net = lambda x, t, y: -x * y[:, None]  # noqa: E731
    with pytest.raises(RuntimeError) as caught:
        kfm.sample(lambda x, t: net(x, t, rates), seeds=range(4), shape=(2,), solver="dopri5", dtype=torch.float64)
    assert any("only the" in note and "ModelXT(net, y=y, per_sample=['y'])" in note
               for note in getattr(caught.value, "__notes__", []))
    res = kfm.sample(ModelXT(net, y=rates, per_sample=["y"]), seeds=range(4), shape=(2,), solver="dopri5",
                     dtype=torch.float64, rtol=1e-9, atol=1e-9)
    x0 = kfm.noise(range(4), (2,), dtype=torch.float64)
    torch.testing.assert_close(res.x, x0 * torch.exp(-rates)[:, None], rtol=1e-6, atol=1e-8)


def _notes(err: BaseException) -> str:
    return " ".join(getattr(err, "__notes__", []))


@pytest.mark.parametrize("time", ["batch", "scalar"])
def test_a_shared_table_guessed_per_sample_under_dopri5_is_named_in_a_note(time):
    # a (4, 1) table of rates for a batch of 4: the guess takes it as per-sample and cuts it to the
    # samples still running (and time="scalar" to each time's rows), and the net's table[y] then
    # raised a bare IndexError
    table = torch.tensor([[1.0], [5.0], [20.0], [60.0]], dtype=torch.float64)
    labels = torch.tensor([3, 2, 1, 0])
    net = lambda x, t, table, y: -x * table[y]  # noqa: E731
    with pytest.raises(IndexError) as caught:
        kfm.sample(ModelXT(net, time=time, table=table, y=labels), seeds=range(4), shape=(2,), solver="dopri5",
                   dtype=torch.float64)
    assert "['table', 'y']" in _notes(caught.value) and "per_sample=" in _notes(caught.value)
    res = kfm.sample(ModelXT(net, time=time, table=table, y=labels, per_sample=["y"]), seeds=range(4), shape=(2,),
                     solver="dopri5", dtype=torch.float64, rtol=1e-9, atol=1e-9)
    x0 = kfm.noise(range(4), (2,), dtype=torch.float64)
    torch.testing.assert_close(res.x, x0 * torch.exp(-table[labels]), rtol=1e-6, atol=1e-8)


def test_a_shared_table_with_as_many_rows_as_one_time_group_is_named_in_a_note():
    # a shared 2-row table, and 2 of the 4 rows at one time: time="scalar" cut the table with them
    table = torch.tensor([[1.0], [5.0]], dtype=torch.float64)
    net = lambda x, t, table, y: -x * table[y]  # noqa: E731
    with pytest.raises(IndexError) as caught:
        kfm.sample(ModelXT(net, time="scalar", table=table, y=torch.tensor([1, 1, 0, 0])), seeds=range(4),
                   shape=(2,), solver="dopri5", dtype=torch.float64)
    assert "'table'" in _notes(caught.value) and "time='scalar'" in _notes(caught.value)


@pytest.mark.parametrize("time", ["batch", "scalar"])
def test_a_per_sample_extra_left_out_of_per_sample_under_dopri5_is_named_in_a_note(time):
    rates = torch.tensor([1.0, 5.0, 20.0, 60.0], dtype=torch.float64)
    net = lambda x, t, a, b: -x * (a * b)[:, None]  # noqa: E731
    with pytest.raises(RuntimeError) as caught:
        kfm.sample(ModelXT(net, time=time, per_sample=["a"], a=rates, b=torch.ones(4, dtype=torch.float64)),
                   seeds=range(4), shape=(2,), solver="dopri5", dtype=torch.float64)
    assert "['b']" in _notes(caught.value) and "per_sample=['a', 'b']" in _notes(caught.value)
    # nothing to suspect, no note: the net's own error on a subset, its other extra not of 4 rows
    failing = lambda x, t, a, s: -x * a[:, None] if x.shape[0] == 4 else s[99]  # noqa: E731
    with pytest.raises(IndexError) as caught:
        kfm.sample(ModelXT(failing, time=time, per_sample=["a"], a=rates, s=torch.ones(5)), seeds=range(4),
                   shape=(2,), solver="dopri5", dtype=torch.float64)
    assert "per_sample" not in _notes(caught.value)


def test_a_half_precision_output_under_autocast_is_refused_with_the_fix():
    net = torch.nn.Linear(2, 2).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=r"returned dtype torch.bfloat16 .*torch.autocast is on"):
            kfm.sample(lambda x, t: net(x), seeds=range(3), shape=(2,), steps=2)
        res = kfm.sample(lambda x, t: net(x).float(), seeds=range(3), shape=(2,), steps=2)
    assert res.x.dtype == torch.float32


class _DiffusersStyleOutput:
    """What a diffusers model returns by default (return_dict=True): an object holding .sample."""

    def __init__(self, sample):
        self.sample = sample


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
@pytest.mark.parametrize("case,hint", [
    ("guidance", r"model must return a torch.Tensor, got tuple; .*\[0\]"),
    ("reversed", r"wrapped net must return a torch.Tensor, got _DiffusersStyleOutput; .*return_dict=False"),
    ("tx", r"wrapped net must return a torch.Tensor, got tuple; .*\[0\]"),
    ("scalar", r"wrapped net must return a torch.Tensor, got dict"),
    ("noise", r"wrapped net must return a torch.Tensor, got _DiffusersStyleOutput"),
])
def test_a_wrapped_net_returning_a_container_is_named_with_the_way_out(case, hint, solver):
    """Through the adapters and guidance, a tuple or an output object failed deep inside
    ('tuple' object has no attribute 'shape', bad operand type for unary -) with a note on the
    call order; the error now says what came back and how to take the tensor out."""
    field = {"guidance": kfm.ClassifierFreeGuidance(lambda x, t, y: (-x,), torch.zeros(3), 2.0, 1.0),
             "reversed": kfm.ReversedTime(ModelXT(lambda x, t: _DiffusersStyleOutput(-x))),
             "tx": kfm.ModelTX(lambda t, x: (x,)),
             "scalar": ModelXT(lambda x, t: {"v": x}, time="scalar"),
             "noise": NoisePrediction(ModelXT(lambda x, t: _DiffusersStyleOutput(x)))}[case]
    with pytest.raises(TypeError, match=hint) as caught:
        kfm.sample(field, seeds=range(3), shape=(2,), steps=2, solver=solver)
    assert not any("ModelTX(net)" in note for note in getattr(caught.value, "__notes__", []))
    assert isinstance(caught.value, ValueError)  # what the prediction adapters raised before


class _Remote:
    """A proxy whose own attributes cannot be read (reading one raises RuntimeError), called as -x."""

    def __getattribute__(self, name):
        if name.startswith("__"):  # its class and the like are local
            return object.__getattribute__(self, name)
        raise RuntimeError("attributes are remote")

    def __call__(self, x, *args, **kwargs):
        return -x


class _Unanswerable:
    """``singular_at_one`` without a truth value, as a tensor of several values has none."""

    singular_at_one = torch.tensor([True, False])

    def __call__(self, x, *args, **kwargs):
        return -x


def _pass_through_wrappers():
    from kinetic_fm.fields.guidance import ClassifierFreeGuidance

    return {
        "ModelXT": ModelXT, "ModelTX": ModelTX, "DiscreteTime": DiscreteTime, "NoisePrediction": NoisePrediction,
        "CFG": lambda inner: ClassifierFreeGuidance(inner, torch.zeros(3, dtype=torch.long), 1.5, 9),
    }


@pytest.mark.parametrize("name", ["ModelXT", "ModelTX", "DiscreteTime", "NoisePrediction", "CFG"])
def test_a_wrapper_reads_its_inner_singular_at_one_as_the_sampler_does(name):
    # the wrappers read it with a bare getattr: a proxy's RuntimeError, or bool() of a tensor of
    # several values, escaped from wrapper.singular_at_one, where the sampler reading the field
    # itself calls it a plain field
    wrap = _pass_through_wrappers()[name]
    assert wrap(_SmoothButSingularAtOne(lambda x, t: -x)).singular_at_one is True
    assert wrap(lambda x, *a: -x).singular_at_one is False
    for inner in (_Remote(), _Unanswerable()):
        assert wrap(inner).singular_at_one is False


@pytest.mark.parametrize("name", ["ModelXT", "CFG"])
def test_dopri5_samples_a_wrapped_proxy_as_a_plain_field(name):
    # select() asked hasattr(inner, "select"), which lets the proxy's RuntimeError through once
    # dopri5 drops the samples that have finished
    x0 = torch.tensor([[0.01], [1.0], [100.0]], dtype=torch.float64)
    want = kfm.sample(lambda x, t: -x, x0, solver="dopri5")
    assert len(set(want.nfe.tolist())) > 1                       # some calls saw a subset
    got = kfm.sample(_pass_through_wrappers()[name](_Remote()), x0, solver="dopri5")
    assert torch.equal(got.x, want.x) and torch.equal(got.kpe, want.kpe)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int64])
def test_batch_time_reads_a_python_number_as_one_floating_time(dtype):
    from kinetic_fm.fields.adapters import batch_time

    x = torch.zeros(4, 2, dtype=dtype)
    t = batch_time(0.3, x)
    want_dtype = dtype if dtype.is_floating_point else torch.float64   # int x truncated 0.3 to 0
    assert t.shape == (4,) and t.dtype == want_dtype
    assert torch.equal(t, torch.full((4,), 0.3, dtype=torch.float64).to(want_dtype))  # rounded once from 0.3
    assert torch.equal(batch_time(np.float64(0.3), x), t) and torch.equal(batch_time(1, x), torch.ones(4, dtype=want_dtype))


def test_a_zero_dimensional_extra_reaches_every_per_time_call_whole():
    # time="scalar" slices per-sample extras by each time's rows; a 0-d tensor extra has no rows
    seen = []

    def net(x, t, scale, cond):
        seen.append((t.dim(), scale.dim(), cond.shape[0], x.shape[0]))
        return scale * t * x + cond

    x = torch.arange(8.0).reshape(4, 2)
    t = torch.tensor([0.25, 0.5, 0.25, 0.5])
    cond = torch.arange(4.0)[:, None]
    out = ModelXT(net, time="scalar", scale=torch.tensor(2.0), cond=cond)(x, t)
    torch.testing.assert_close(out, 2.0 * t[:, None] * x + cond, rtol=0, atol=0)
    assert sorted(seen) == [(0, 0, 2, 2), (0, 0, 2, 2)]


def test_guidance_takes_a_number_for_the_time_as_the_same_time_for_every_sample():
    from kinetic_fm.fields.guidance import ClassifierFreeGuidance

    times = []

    def model(x, t, y):
        times.append(t)
        return x * t[:, None] + y[:, None].to(x.dtype)

    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    guided = ClassifierFreeGuidance(model, labels, 2.0, 5, track_parts=True)
    by_number = [guided(x, s) for s in (0.0, 0.5, 1.0)]
    energies = guided.part_energies()
    assert all(t.shape == (6,) and t.dtype == torch.float64 for t in times)
    guided.reset()
    by_tensor = [guided(x, torch.full((3,), s, dtype=torch.float64)) for s in (0.0, 0.5, 1.0)]
    for a, b in zip(by_number, by_tensor):
        assert torch.equal(a, b)
    assert torch.equal(energies.conditional, guided.part_energies().conditional)
    torch.testing.assert_close(by_number[1], x * 0.5 + (2.0 * labels[:, None] - 5.0), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("bad", [math.nan, 1.5, -0.25, math.inf, True, "0.5"])
def test_the_closed_form_fields_refuse_a_number_for_t_off_the_path(bad):
    # NaN gave NaN velocities and 1.5 or -0.25 an extrapolation that read like an answer
    x = _x0(3)
    fields = [kfm.GaussianTarget(MEAN, STD), kfm.PointTarget(MEAN), kfm.GaussianMixtureTarget(MEAN[None], STD)]
    for field in fields:
        with pytest.raises(ValueError, match=r"^t must be a number in \[0, 1\] or a \(B,\) tensor"):
            field(x, bad)
    for field in fields[:2]:
        with pytest.raises(ValueError, match=r"^t must be a number in \[0, 1\]"):
            field.trajectory(x, bad)
    for field in fields:                                       # the ends and a 0-d array are times on the path
        for t in (0.0, 1.0, np.array(0.25)):
            if not (t == 1.0 and isinstance(field, kfm.PointTarget)):
                want = field(x, torch.full((3,), float(t), dtype=x.dtype))
                assert torch.equal(field(x, t), want)


def test_noise_prediction_finds_the_integer_steps_through_guidance_and_call_adapters():
    # NoisePrediction(CFG(DiscreteTime(net))) kept t_min = 1e-3, which T = 1000 truncates to
    # step 0, where an exact ε-predictor returns x and the first velocity is 0
    from kinetic_fm.fields.guidance import ClassifierFreeGuidance

    seen = []

    def net(x, step, y=None):
        seen.append(step.clone())
        return torch.zeros_like(x)

    stepped = DiscreteTime(net, 1000)
    for inner in (ClassifierFreeGuidance(stepped, [0, 1], scale=2.0, null_label=2),
                  ModelXT(stepped), ClassifierFreeGuidance(ModelXT(stepped), [0, 1], scale=1.5, null_label=2)):
        adapter = NoisePrediction(inner)
        assert adapter.t_min > 1 / 999
        seen.clear()
        adapter(torch.ones(2, 3), torch.zeros(2))
        assert all(int(s.min()) == 1 for s in seen)
    # a clock that runs the other way stops the search: its σ = 1 − t is not the steps' t
    assert NoisePrediction(ReversedTime(stepped, timestep_scale=1)).t_min == 1e-3


def test_a_dit_style_reversed_integer_clock_has_one_order_and_scale_and_the_others_are_refused():
    # step T − 1 = noise: ReversedTime(DiscreteTime(net), timestep_scale=1) hands σ to DiscreteTime,
    # which maps it to steps. With the default scale 1000 DiscreteTime clamped 1000σ to 1 (step 999
    # at every call); the other order passed 1000, -98000, ... to the net, samples near 1e18 (helper-136)
    seen = []

    def dit(x, step):
        seen.append(int(step[0]))
        return x                                           # dx/dσ = x: dx/dt = −x, a decay toward 0

    good = kfm.ReversedTime(kfm.DiscreteTime(dit, num_timesteps=1000), timestep_scale=1)
    res = kfm.sample(good, seeds=range(2), shape=(2,), steps=10, dtype=torch.float64)
    assert seen == [int((1 - i / 10) * 999) for i in range(10)]      # σ = 1 − t_i on the steps
    torch.testing.assert_close(res.x, kfm.noise(range(2), (2,), dtype=torch.float64) * 0.9 ** 10)   # x ← x − 0.1x
    with pytest.raises(ValueError, match=r"ReversedTime\(timestep_scale=1000\) around DiscreteTime .* use timestep_scale=1"):
        kfm.ReversedTime(kfm.DiscreteTime(dit, num_timesteps=1000))
    # a scale below 1 is refused too, and not as a clamp: 0.5·σ compresses the steps, so the net
    # saw [499, 374, 249, 124] for [999, 749, 499, 249] (a refusal of scales above 1 only survived)
    with pytest.raises(ValueError, match=r"ReversedTime\(timestep_scale=0.5\) around DiscreteTime hands it 0.5·σ, "
                                         r"which DiscreteTime maps to steps 0 to 499 only, compressed \(σ = 1, pure "
                                         r"noise, reads as step 499, not 999\); .* use timestep_scale=1"):
        kfm.ReversedTime(kfm.DiscreteTime(dit, num_timesteps=1000), timestep_scale=0.5)
    with pytest.raises(ValueError, match=r"DiscreteTime around ReversedTime .* ReversedTime\(DiscreteTime\(net, "
                                         r"num_timesteps\), timestep_scale=1\)"):
        kfm.DiscreteTime(kfm.ModelXT(kfm.ReversedTime(dit)), num_timesteps=1000)


class _NetXTY(torch.nn.Module):
    def forward(self, x, t, y):
        return -x


class _ScriptableNet(torch.nn.Module):
    def forward(self, x, t, cond: torch.Tensor):
        return -x + 0 * cond


def test_model_xt_refuses_an_extra_its_model_cannot_take_when_built():
    # kfm.ModelXT(net, cond=c) took any extra and failed at the first call ("got an unexpected keyword
    # argument 'cond'", with a note on the call order); from_model_wrapper refused it when built
    c = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"^the model takes no extra named \['cond'\]: _NetXTY\(x, t, y\); "
                                         r"give only extras its signature names"):
        ModelXT(_NetXTY(), cond=c)
    with pytest.raises(ValueError, match=r"^the model takes no extra named \['y'\]: RecursiveScriptModule"):
        ModelXT(torch.jit.script(_ScriptableNet()), y=c)
    guided = kfm.ClassifierFreeGuidance(ModelXT(_NetXTY()), torch.tensor([0, 1, 0]), 2.0, 2)
    with pytest.raises(ValueError, match=r"kfm\.ModelXT\(net, cond=torch\.cat\(\[cond, cond\]\)\)"):
        ModelXT(guided, cond=c)
    # by name, through **kwargs, a parallel wrapper's module, TorchScript: built, and the run goes through
    for net, extras in ((_NetXTY(), {"y": c}), (lambda x, t, **extras: -x, {"cond": c}),
                        (torch.nn.DataParallel(_NetXTY()), {"y": c}),
                        (torch.jit.script(_ScriptableNet()), {"cond": c})):
        assert torch.equal(kfm.sample(ModelXT(net, **extras), seeds=range(3), shape=(2,), steps=2).x,
                           kfm.sample(lambda x, t: -x, seeds=range(3), shape=(2,), steps=2).x)
    # torch.compile's forward(*args, **kwargs) and a builtin without a signature: built as before
    ModelXT(torch.compile(_NetXTY()), y=c)
    ModelXT(torch.neg, cond=c)


class _ByNameNetTXY(torch.nn.Module):
    """forward(t, x, y, scale): from_model_wrapper calls it by name, a positional extra filling y."""

    def forward(self, t, x, y, scale=1.0):
        return scale * (x + y.reshape(-1, 1))


@pytest.mark.parametrize("per_sample", [None, ["y"], []])
@pytest.mark.parametrize("by_name", [True, False])
def test_a_positional_extra_and_a_fixed_extra_for_one_parameter_are_refused_by_name(by_name, per_sample):
    # helper-262: under the call by name a fixed extra y and a positional one (a guidance's labels) for the
    # same parameter: per_sample=[] (y shared) ran on the positional y silently, the others raised Python's
    # "got multiple values for keyword argument 'y'"; by position, "got multiple values for argument 'y'"
    from kinetic_fm.integrations.flow_matching import from_model_wrapper

    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    fixed, positional = torch.full((3,), 5.0), torch.full((3,), 7.0)
    field = (from_model_wrapper(_ByNameNetTXY(), time="batch", y=fixed, per_sample=per_sample) if by_name
             else ModelXT(_NetXTY(), y=fixed, per_sample=per_sample))
    with pytest.raises(ValueError, match=r"^the positional extra 1 fills the model's parameter 'y', which the extra "
                                         r"y= the field was built with also gives; give y once"):
        field(x, t, positional)
    with pytest.raises(ValueError, match=r"^the positional extra 1 fills the model's parameter 'y', which the "
                                         r"keyword y= of this call also gives; give y once"):
        (from_model_wrapper(_ByNameNetTXY(), time="batch") if by_name else ModelXT(_NetXTY()))(
            x, t, positional, y=fixed)
    if by_name:  # an extra for another parameter is no clash: y from the position, scale from the extra
        field = from_model_wrapper(_ByNameNetTXY(), time="batch", scale=2.0, per_sample=per_sample and [])
        assert torch.equal(field(x, t, positional), torch.full((3, 2), 14.0))
        assert torch.equal(field(x, t, y=fixed), torch.full((3, 2), 10.0))


def test_a_module_that_defines_its_own_call_is_read_by_that_call():
    # signature_of read every module's forward: one that overrides __call__ (no forward) showed torch's
    # placeholder, _forward_unimplemented(*input), and every extra was refused when the field was built
    class CallNet(torch.nn.Module):
        def __call__(self, x, t, cond):
            return -x * t.reshape(-1, 1) + cond

    class ForwardNet(torch.nn.Module):
        def forward(self, x, t, cond):
            return -x * t.reshape(-1, 1) + cond

    x0, cond = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.full((3, 4), 0.5)
    expected = kfm.sample(kfm.ModelXT(ForwardNet(), cond=cond), x0, steps=4)
    got = kfm.sample(kfm.ModelXT(CallNet(), cond=cond), x0, steps=4)
    assert torch.equal(got.x, expected.x) and torch.equal(got.kpe, expected.kpe)
    with pytest.raises(ValueError, match=r"the model takes no extra named \['label'\]: CallNet\(x, t, cond\)"):
        kfm.ModelXT(CallNet(), label=cond)
