"""The analytic fields' parameters as documented (mutation audit of fields/analytic.py)."""
from __future__ import annotations

import re

import pytest
import torch

import kinetic_fm as kfm


def test_mixture_weights_are_normalised_and_keep_their_ratios():
    # the velocity (softmax) and sample_target (multinomial) both normalise again, so only the
    # documented attribute could tell an unnormalised copy
    means = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    field = kfm.GaussianMixtureTarget(means, std=0.3, weights=torch.tensor([1.0, 3.0, 4.0]))
    torch.testing.assert_close(field.weights, torch.tensor([0.125, 0.375, 0.5], dtype=torch.float64),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("field", [kfm.GaussianTarget(mean=0.5, std=0.7), kfm.PointTarget(torch.ones(2, 3)),
                                   kfm.GaussianMixtureTarget(torch.randn(4, 2, 3), std=0.3)])
def test_an_empty_batch_gets_an_empty_velocity(field):
    # the mixture failed in reshape(0, -1) ("the unspecified dimension size -1 can be any value")
    for t in (torch.zeros(0), 0.5):
        v = field(torch.zeros(0, 2, 3), t)
        assert v.shape == (0, 2, 3) and v.dtype == torch.float32


def test_a_negative_weight_is_refused_even_when_the_sum_is_positive():
    with pytest.raises(ValueError, match="weights must be .* non-negative"):
        kfm.GaussianMixtureTarget(torch.zeros(2, 3), weights=[-1.0, 2.0])


def test_trajectories_start_at_x0_and_move_with_the_field_at_every_time():
    # the flow map x_t = tμ + s_t·x0 (a point: (1 − t)x0 + t·y) checked against its own field by a
    # float64 central difference at interior times (t = 1 alone cannot tell tμ from μ)
    x0 = kfm.noise(range(5), (3,), dtype=torch.float64)
    mean = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    h = 1e-5
    for field in (kfm.GaussianTarget(mean=mean, std=0.4), kfm.PointTarget(mean)):
        assert torch.equal(field.trajectory(x0, 0.0), x0)
        for t in (0.2, 0.55, 0.9):
            x_t = field.trajectory(x0, t)
            rate = (field.trajectory(x0, t + h) - field.trajectory(x0, t - h)) / (2 * h)
            torch.testing.assert_close(rate, field(x_t, t), rtol=0, atol=1e-8)


FIELDS = [kfm.GaussianTarget(mean=torch.tensor([2.0, -1.0]), std=0.5), kfm.PointTarget(torch.tensor([1.0, 2.0])),
          kfm.GaussianMixtureTarget(means=torch.tensor([[1.0, 1.0], [-1.0, 2.0]]), std=0.3)]


@pytest.mark.parametrize("field", FIELDS, ids=["gaussian", "point", "mixture"])
def test_an_integer_or_non_tensor_state_and_a_bool_time_are_refused_by_name(field):
    # an int64 x made t an integer too (0.3 → 0): Gaussian [[1, 1], [2, -2]] for [[1.46, 1.35], ...]
    x = torch.tensor([[1, 2], [4, -3]])
    with pytest.raises(ValueError, match=r"x must be a \(B, \.\.\.\) floating tensor, got dtype torch.int64"):
        field(x, 0.3)
    with pytest.raises(ValueError, match=r"x must be a \(B, \.\.\.\) floating tensor, got list"):
        field(x.tolist(), 0.3)
    with pytest.raises(ValueError, match="t must hold real times in \\[0, 1\\], got a torch.bool tensor"):
        field(x.double(), torch.tensor([True, False]))
    assert field(x.double(), 0.3).dtype == torch.float64


def test_the_gaussian_rate_keeps_float32_accuracy_near_the_data():
    # the rate (t(1 + σ²) − 1)/s_t² rounded 1 + σ² first: at σ = 1e-3 in float32 it was 0.954 at
    # t = 1, where v(x, 1) = x exactly, and 5e-5 off float64 at t = 0.999
    field = kfm.GaussianTarget(mean=0.5, std=1e-3)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    for t in (0.999, 1.0):
        v32 = field(x, torch.full((64,), t))
        v64 = field(x.double(), torch.full((64,), t, dtype=torch.float64))
        rel = ((v32.double() - v64).norm(dim=1) / v64.norm(dim=1)).max()
        assert rel < 4 * torch.finfo(torch.float32).eps, (t, float(rel))
    assert torch.allclose(field(x.double(), torch.ones(64, dtype=torch.float64)), x.double(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_the_point_field_is_finite_at_one_and_unchanged_below_one_minus_eps(dtype):
    # dopri5's last stages evaluate at t = 1, where (y − x)/(1 − t) was inf or NaN for every sample
    y = torch.tensor([1.0, -2.0, 0.5])
    x = kfm.noise(range(4), (3,), dtype=dtype)
    field = kfm.PointTarget(y, eps=1e-4)
    at_one = field(x, torch.ones(4, dtype=dtype))
    assert torch.isfinite(at_one).all()
    gap = max(1e-4, torch.finfo(dtype).eps)  # float16: its machine epsilon, not below
    torch.testing.assert_close(at_one.double(), (y.double() - x.double()) / gap, rtol=2e-3, atol=0)
    t = torch.full((4,), 0.75, dtype=dtype)                              # 1 − t exact in every dtype
    assert torch.equal(field(x, t), (y.to(dtype) - x) / (1 - t[:, None]))
    for eps in (0, 1, -1e-6, float("nan")):
        with pytest.raises(ValueError, match="eps must"):
            kfm.PointTarget(y, eps=eps)


def test_dopri5_reaches_the_point_with_its_closed_form_energy():
    # every dopri5 sample failed non-finite at t = 1 (its stages with c = 1); the paths are straight
    # lines x0 -> y with KPE ½‖y − x0‖²
    y = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x0 = kfm.noise(range(6), (3,), dtype=torch.float64)
    field = kfm.PointTarget(y)
    result = kfm.sample(field, x0=x0, solver="dopri5", rtol=1e-8, atol=1e-8)
    assert not result.nonfinite.any()
    torch.testing.assert_close(result.x, y.expand(6, 3), rtol=0, atol=1e-5)
    torch.testing.assert_close(result.kpe, field.kinetic_energy(x0), rtol=1e-5, atol=0)


def test_dopri5_on_a_float32_state_keeps_its_kpe_near_the_closed_form_with_the_default_eps():
    # the default floor eps = 1e-6 on 1 − t was pinned by no test: with 1e-9 the float32 KPE's largest
    # relative error over these 8 samples grew from 6.3e-5 to 2.9e-4 (helper-147); the bound sits
    # between the two
    y = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x0 = kfm.noise(range(8), (3,), dtype=torch.float32)
    exact = 0.5 * ((y - x0.double()) ** 2).sum(1)                 # closed form ½‖y − x0‖², float64
    result = kfm.sample(kfm.PointTarget(y), x0=x0, solver="dopri5")
    assert not result.nonfinite.any()
    assert float(((result.kpe.double() - exact) / exact).abs().max()) < 1.5e-4


def test_dopri5_on_a_float16_state_reaches_the_point_with_about_its_closed_form_energy():
    # 1 − t floored at eps = 1e-6 is below float16's resolution near the point: (y − x)/eps turned
    # the state's rounding into velocities of ~1e3, and dopri5's KPE read 0.26–4.9× the closed form
    # without a flag (reviewer); the floor is now float16's machine epsilon there
    y = torch.tensor([3.0, -1.0, 2.0])
    x0 = kfm.noise(range(4), (3,), dtype=torch.float16)
    field = kfm.PointTarget(y)
    with pytest.warns(UserWarning, match="dopri5 on a torch.float16 state"):   # at default tolerances it holds
        result = kfm.sample(field, x0=x0, solver="dopri5")
    assert not result.nonfinite.any()
    torch.testing.assert_close(result.kpe, field.kinetic_energy(x0), rtol=2e-2, atol=0)


def test_closed_forms_refuse_a_start_of_another_shape_by_name():
    # trajectory and kinetic_energy failed in torch's expand where the field itself names the shape
    x0 = torch.zeros(4, 4)
    for call in (lambda: kfm.GaussianTarget(torch.zeros(3)).kinetic_energy(x0),
                 lambda: kfm.GaussianTarget(torch.zeros(3)).trajectory(x0, 0.5),
                 lambda: kfm.PointTarget(torch.zeros(3)).kinetic_energy(x0),
                 lambda: kfm.PointTarget(torch.zeros(3)).trajectory(x0, 0.5)):
        with pytest.raises(ValueError, match=r"(mean|point) of shape \(3,\) does not broadcast to one sample's shape \(4,\)"):
            call()


@pytest.mark.parametrize("field", FIELDS, ids=["gaussian", "point", "mixture"])
def test_a_tensor_time_outside_the_unit_interval_is_refused_as_a_number_is(field):
    # a number t = 1.5 was refused while a tensor of 1.5 returned values: the Gaussian's extrapolation,
    # the point's (y − x)/eps = 1e6 at eps 1e-6, and NaN for a NaN time
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"t must be a number in \[0, 1\]"):
        field(x, 1.5)
    for bad, shown in ((1.5, "1.5"), (-0.25, "-0.25"), (float("nan"), "nan")):
        t = torch.tensor([0.5, bad, 2.0], dtype=torch.float64)
        with pytest.raises(ValueError, match=rf"t must lie in \[0, 1\], got {shown} at row 1"):
            field(x, t)
    v = field(x, torch.tensor([0.0, 0.5, 1.0]))                 # the ends are times of the path
    assert bool(torch.isfinite(v).all())


@pytest.mark.parametrize("field", FIELDS, ids=["gaussian", "point", "mixture"])
def test_on_a_device_a_time_outside_the_unit_interval_gives_nan_without_a_sync(field):
    # reading the check there would wait for the device at every call of the samplers' loop: the
    # row outside [0, 1] gets NaN velocities instead (the samplers name it as non-finite)
    from fake_cuda import fake_cuda

    x = torch.zeros(3, 2, dtype=torch.float64)
    t = torch.tensor([0.5, 1.5, float("nan")], dtype=torch.float64)
    with fake_cuda() as fc:
        field(x.to("cuda"), t.to("cuda"))          # the parameters' one copy to the device
        xc, tc = x.to("cuda"), t.to("cuda")
        fc.reset()
        v = field(xc, tc)
        assert fc.count() == 0, fc.summary()
        v = v.cpu()
    assert bool(torch.isfinite(v[0]).all()) and bool(torch.isnan(v[1:]).all())
    torch.testing.assert_close(v[:1], field(x[:1], t[:1]), rtol=0, atol=0)


def test_the_analytic_and_empirical_fields_share_one_unit_time_predicate():
    # reviewer-328: "t in [0, 1]" was written three times (the empirical field's check, the analytic fields' device
    # branch, checks.check_unit_times, which recomputed the empirical field's mask with its own reduction)
    from kinetic_fm.checks import check_unit_times, unit_times

    bad = [-1e-300, 1 + 2**-52, float("nan"), float("inf"), float("-inf")]
    t = torch.tensor([0.0, -0.0, 1.0, 0.5, *bad], dtype=torch.float64)
    assert unit_times(t).tolist() == [True] * 4 + [False] * 5
    inside = torch.ones(9, dtype=torch.bool)
    check_unit_times(t, inside=inside)                 # the mask given is the one read, not computed again
    inside[3] = False
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\], got 0\.5 at row 3$"):
        check_unit_times(t, inside=inside)
    x = torch.zeros(2, 3, dtype=torch.float64)
    atoms = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for field in (kfm.GaussianTarget(1.0, 0.5), kfm.EmpiricalFlow(atoms)):
        for time in bad:
            with pytest.raises(ValueError, match=rf"^t must lie in \[0, 1\], got {re.escape(repr(time))} at row 1$"):
                field(x, torch.tensor([0.5, time], dtype=torch.float64))
        assert torch.isfinite(field(x, torch.tensor([0.0, 0.5], dtype=torch.float64))).all()


@pytest.mark.parametrize("field", FIELDS, ids=["gaussian", "point", "mixture"])
def test_the_samplers_stages_skip_the_time_check_that_a_direct_call_makes(field, monkeypatch):
    # kfm.sample checks its grid once (dopri5 makes its own times in [0, 1]); a check per stage was a
    # reduction and a host read at every call (+22 % per GaussianTarget call at B = 64)
    from kinetic_fm.fields import analytic

    calls = []

    def counted(t, *args, **kwargs):
        calls.append(t)
        return analytic_check(t, *args, **kwargs)

    analytic_check = analytic.check_unit_times
    monkeypatch.setattr(analytic, "check_unit_times", counted)
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for solver in ("rk4", "dopri5"):
        result = kfm.sample(field, x0=x0, steps=8, solver=solver)
        assert bool(torch.isfinite(result.x).all())
    assert calls == []
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got 1\.5 at row 1"):
        field(x0, torch.tensor([0.5, 1.5, 0.5, 0.5], dtype=torch.float64))     # a direct call is still checked
    assert len(calls) == 1


def test_a_subclass_with_its_own_call_is_what_the_sampler_calls():
    # the samplers' unchecked path is the analytic fields' own: a subclass's __call__ is not bypassed
    class Halved(kfm.GaussianTarget):
        def __call__(self, x, t):
            return 0.5 * super().__call__(x, t)

    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for solver in ("rk4", "dopri5"):
        whole = kfm.sample(kfm.GaussianTarget(2.0, 0.5), x0=x0, steps=8, solver=solver)
        half = kfm.sample(Halved(2.0, 0.5), x0=x0, steps=8, solver=solver)
        assert not torch.allclose(half.x, whole.x)
