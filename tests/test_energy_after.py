"""Energy after / between given times from a kept profile (``kfm.energy_after``, ``res.energy_after``),
checked against fields whose power along the exact path is known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.cli import main

TIMES = (0.0, 0.05, 0.3, 0.6, 0.9, 0.97, 1.0)   # most of them off every grid below


def _gaussian_energy_after(x0: torch.Tensor, mean: torch.Tensor, std: float, t: float) -> torch.Tensor:
    """½∫_t^1 ‖ẋ‖² du on the exact path x_u = u·μ + s(u)·x0, s(u)² = (1 − u)² + u²σ², in float64.

    ‖ẋ‖² = ‖μ‖² + 2 s'(u) μ·x0 + s'(u)² ‖x0‖², and with a = 1 + σ²,
    s'² = (a u − 1)²/(a u² − 2u + 1) = a − σ²/(a u² − 2u + 1), whose integral over [t, 1] is
    a(1 − t) − σ[arctan(σ) − arctan((a t − 1)/σ)]."""
    a = 1 + std**2
    s = lambda u: math.sqrt((1 - u) ** 2 + (u * std) ** 2)  # noqa: E731
    speed2 = a * (1 - t) - std * (math.atan(std) - math.atan((a * t - 1) / std))
    z = x0.reshape(len(x0), -1).double()
    mu = mean.double().reshape(1, -1)
    return 0.5 * ((1 - t) * (mu**2).sum(1) + 2 * (s(1.0) - s(t)) * (z * mu).sum(1) + speed2 * (z**2).sum(1))


def test_the_closed_form_reference_starts_at_the_fields_own_kpe():
    # the reference above, written from the path, meets GaussianTarget.kinetic_energy at t = 0
    mean, x0 = torch.tensor([2.0, -1.0, 0.5]), kfm.noise(range(5), (3,), dtype=torch.float64)
    torch.testing.assert_close(_gaussian_energy_after(x0, mean, 0.5, 0.0),
                               kfm.GaussianTarget(mean, 0.5).kinetic_energy(x0), rtol=1e-13, atol=0)


@pytest.mark.parametrize("grid", ["uniform", "cosine", "custom", "dopri5"])
def test_a_constant_velocity_spends_its_power_evenly_on_any_grid(grid):
    # v = c everywhere: power ½‖c‖² at every t, so the energy in [t0, t1] is (t1 − t0)·½‖c‖² exactly,
    # also where t0, t1 fall inside a step
    c = torch.tensor([3.0, -4.0], dtype=torch.float64)             # ½‖c‖² = 12.5
    kwargs = {"dopri5": dict(solver="dopri5"), "uniform": dict(steps=8), "cosine": dict(steps=11, grid="cosine"),
              "custom": dict(grid=torch.tensor([0.0, 0.1, 0.15, 0.5, 0.55, 0.93, 1.0], dtype=torch.float64))}[grid]
    res = kfm.sample(lambda x, t: c.expand_as(x), seeds=range(3), shape=(2,), dtype=torch.float64,
                     profile=True, **kwargs)
    for t in TIMES:
        torch.testing.assert_close(res.energy_after(t), torch.full((3,), (1 - t) * 12.5, dtype=torch.float64),
                                   rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(res.energy_between(0.3, 0.37), torch.full((3,), 0.07 * 12.5, dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_the_point_target_spends_its_straight_line_energy_evenly_per_sample():
    # PointTarget: every path is the straight line x0 -> y at speed ‖y − x0‖, which Euler follows
    # exactly on any grid; the energy after t is (1 − t)·½‖y − x0‖², a different value per sample
    y = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    res = kfm.sample(kfm.PointTarget(y), seeds=range(6), shape=(3,), steps=13, grid="cosine", solver="euler",
                     dtype=torch.float64, profile=True)
    half_distance2 = 0.5 * (y - kfm.noise(range(6), (3,), dtype=torch.float64)).pow(2).sum(1)
    for t in TIMES:
        torch.testing.assert_close(res.energy_after(t), (1 - t) * half_distance2, rtol=1e-12, atol=1e-12)


def test_the_gaussian_targets_energy_after_t_converges_to_its_closed_form():
    mean, std = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64), 0.5
    res = kfm.sample(kfm.GaussianTarget(mean, std), seeds=range(8), shape=(3,), solver="rk4", steps=400,
                     dtype=torch.float64, profile=True)
    x0 = kfm.noise(range(8), (3,), dtype=torch.float64)
    for t in TIMES:
        # a step straddling t counts at its mean power: an error of O(h²) on that one step, h = 1/400
        torch.testing.assert_close(res.energy_after(t), _gaussian_energy_after(x0, mean, std, t),
                                   rtol=2e-5, atol=1e-9)


def test_dopri5s_own_steps_split_near_the_closed_form():
    # dopri5's steps are long here (up to 0.07): a step straddling t counted by its share of length
    # was up to 2 % off; split by the power its neighbouring steps imply, 1e-4
    mean, std = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64), 0.5
    res = kfm.sample(kfm.GaussianTarget(mean, std), seeds=range(8), shape=(3,), solver="dopri5",
                     rtol=1e-9, atol=1e-9, dtype=torch.float64, profile=True)
    assert res.steps.min() < res.steps.max()           # per-sample grids of their own
    x0 = kfm.noise(range(8), (3,), dtype=torch.float64)
    for t in TIMES:
        torch.testing.assert_close(res.energy_after(t), _gaussian_energy_after(x0, mean, std, t), rtol=2e-4, atol=1e-9)


def _fine_energy_after(field, x0: torch.Tensor, t: float, points: int = 4001) -> torch.Tensor:
    """½∫_t^1 ‖v(x_u, u)‖² du along the field's exact trajectory, by Simpson's rule on ``points`` times."""
    u = torch.linspace(t, 1.0, points, dtype=torch.float64)
    power = torch.stack([0.5 * field(field.trajectory(x0, float(ui)), float(ui)).pow(2).sum(1) for ui in u])
    weights = torch.ones(points, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return (weights[:, None] * power).sum(0) * (1 - t) / (points - 1) / 3


def test_the_auditors_dopri5_energy_after_09_is_near_the_trajectorys():
    # dopri5's steps from 0.6 ended at 0.9275, 0.9592, 1.0 and 0.9509 on these samples, and their share of length
    # put the energy after 0.9 at [0.4885, 0.4323, 0.4009, 0.4415], 3.3-9.3 % below the trajectory's
    # [0.5166, 0.4764, 0.4148, 0.4816]; split by the power, at most 0.5 % off
    field = kfm.GaussianTarget(2.0, 0.5)
    res = kfm.sample(field, seeds=range(4), shape=(2,), solver="dopri5", profile=True, dtype=torch.float64)
    x0 = kfm.noise(range(4), (2,), dtype=torch.float64)
    want = _fine_energy_after(field, x0, 0.9)
    torch.testing.assert_close(want, _gaussian_energy_after(x0, torch.full((2,), 2.0), 0.5, 0.9), rtol=1e-12, atol=0)
    torch.testing.assert_close(res.energy_after(0.9), want, rtol=6e-3, atol=0)


@pytest.mark.parametrize("options,bound", [(dict(solver="dopri5"), 2.5e-2), (dict(solver="rk4", steps=10), 1.5e-2),
                                           (dict(solver="heun", steps=10), 1.5e-2)])
def test_a_straddled_step_splits_by_the_power_of_its_neighbours(options, bound):
    # by the share of its length, the energy after t was up to 22 % (dopri5), 9 % (rk4) and 9.5 % (heun)
    # off the exact path's on these 8 samples
    mean, std = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64), 0.5
    res = kfm.sample(kfm.GaussianTarget(mean, std), seeds=range(8), shape=(3,), dtype=torch.float64, profile=True,
                     **options)
    x0 = kfm.noise(range(8), (3,), dtype=torch.float64)
    for t in TIMES[:-1]:
        want = _gaussian_energy_after(x0, mean, std, t)
        assert float(((res.energy_after(t) - want) / want).abs().max()) < bound, t


@pytest.mark.parametrize("options", [dict(solver="rk4", grid=torch.tensor([0.0, 0.1, 0.45, 0.5, 0.8, 1.0])),
                                     dict(solver="rk4", steps=3, grid="cosine"), dict(solver="dopri5")])
def test_a_power_quadratic_in_t_is_split_exactly(options):
    # v = c(1 + t) whatever x: power ½‖c‖²(1 + t)², which rk4's and dopri5's weights integrate exactly per
    # step, and the interpolation through four grid points of the energy spent keeps exactly
    c = torch.tensor([1.5, -2.0], dtype=torch.float64)
    res = kfm.sample(lambda x, t: c * (1 + t[:, None]), seeds=range(2), shape=(2,), dtype=torch.float64,
                     profile=True, **options)
    for t in TIMES:
        want = 0.5 * float(c.pow(2).sum()) * (8 - (1 + t) ** 3) / 3
        torch.testing.assert_close(res.energy_after(t), torch.full((2,), want, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-14)
    # two steps: the energy through three points, exact for a power linear in t (v = c·sqrt(1 + t))
    res = kfm.sample(lambda x, t: c * (1 + t[:, None]).sqrt(), seeds=range(2), shape=(2,), dtype=torch.float64,
                     profile=True, solver="rk4", grid=torch.tensor([0.0, 0.7, 1.0], dtype=torch.float64))
    for t in TIMES:
        want = 0.5 * float(c.pow(2).sum()) * (1.5 - t - t * t / 2)
        torch.testing.assert_close(res.energy_after(t), torch.full((2,), want, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-14)


def test_the_windows_add_up_and_span_the_kpe():
    shaping = kfm.KTS(alpha0=0.05, beta0=0.02)                      # a power that changes over t
    field = kfm.GaussianMixtureTarget(torch.tensor([[4.0, 0.0], [-2.0, 3.0]], dtype=torch.float64), std=0.3)
    for options in (dict(steps=17, grid="cosine", solver="heun"), dict(solver="dopri5")):
        res = kfm.sample(field, seeds=range(7), shape=(2,), shaping=shaping, dtype=torch.float64,
                         profile=True, **options)
        torch.testing.assert_close(res.energy_after(0.0), res.kpe, rtol=1e-14, atol=0)
        assert res.energy_after(1.0).eq(0).all()
        assert res.energy_between(0.42, 0.42).eq(0).all()
        cuts = (0.0, 0.123, 0.6, 0.61, 0.987, 1.0)
        pieces = torch.stack([res.energy_between(a, b) for a, b in zip(cuts[:-1], cuts[1:])])
        assert (pieces >= 0).all()
        torch.testing.assert_close(pieces.sum(0), res.kpe, rtol=1e-13, atol=0)
        torch.testing.assert_close(res.energy_between(0.123, 0.6) + res.energy_between(0.6, 0.987),
                                   res.energy_between(0.123, 0.987), rtol=1e-13, atol=0)
        torch.testing.assert_close(res.energy_after(0.6) + res.energy_between(0.0, 0.6), res.kpe,
                                   rtol=1e-13, atol=0)
    # dopri5 sums kpe step by step from zero, and so does the per-sample route: the same bits
    assert torch.equal(res.energy_after(0.0), res.kpe)


def test_a_dopri5_samples_energy_after_t_does_not_depend_on_its_batch_or_padding():
    field = kfm.GaussianMixtureTarget(torch.tensor([[4.0, 0.0], [-2.0, 3.0], [0.0, -4.0]]), std=0.3)
    together = kfm.sample(field, seeds=range(6), shape=(2,), solver="dopri5", profile=True)
    assert together.steps.min() < together.steps.max()             # rows padded by different amounts
    for seed in range(6):
        alone = kfm.sample(field, seeds=[seed], shape=(2,), solver="dopri5", profile=True)
        assert alone.profile.shape[1] < together.profile.shape[1] or seed == int(together.steps.argmax())
        for t in (0.0, 0.3, 0.9):
            assert torch.equal(alone.energy_after(t), together.energy_after(t)[seed:seed + 1])
        assert torch.equal(alone.energy_between(0.2, 0.7), together.energy_between(0.2, 0.7)[seed:seed + 1])


def test_a_fixed_grid_samples_energy_after_t_does_not_depend_on_its_batch():
    field = kfm.GaussianTarget(torch.tensor([2.0, -1.0]), 0.5)
    together = kfm.sample(field, seeds=range(9), shape=(2,), steps=20, solver="heun", profile=True)
    for cut in (1, 4, 9):
        part = kfm.sample(field, seeds=range(cut), shape=(2,), steps=20, solver="heun", profile=True)
        assert torch.equal(part.energy_after(0.93), together.energy_after(0.93)[:cut])
    # a dot product per row summed 100 steps in an order that followed the batch: energy after
    # 0.55 was ...142 alone and ...136 in a batch of 64 (helper-112); the running sum is the kpe's
    together = kfm.sample(field, seeds=range(64), shape=(2,), steps=100, profile=True)
    alone = kfm.sample(field, seeds=[0], shape=(2,), steps=100, profile=True)
    for t in (0.0, 0.3, 0.55, 0.9):
        assert torch.equal(alone.energy_after(t), together.energy_after(t)[:1])
    assert torch.equal(together.energy_after(0.0), together.kpe)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_a_kfm_sample_profile_run_reads_back_to_the_same_energy_after_t(tmp_path, solver):
    from kinetic_fm.runs import read_profile

    # the command's gaussian field: N(0, I) -> N(2·1, 0.5²I); batches of 2, so dopri5 rows are
    # padded in the file to the run's longest, not to their batch's
    assert main(["sample", "--out", str(tmp_path / "run"), "--no-progress", "--field", "gaussian", "--dim", "3",
                 "--n", "5", "--solver", solver, "--steps", "64", "--dtype", "float64", "--batch-size", "2",
                 "--profile"]) == 0
    times, increments = read_profile(tmp_path / "run")
    assert times.ndim == (2 if solver == "dopri5" else 1)
    mean = torch.full((3,), 2.0, dtype=torch.float64)
    direct = kfm.sample(kfm.GaussianTarget(mean, 0.5), seeds=range(5), shape=(3,), solver=solver, steps=64,
                        dtype=torch.float64, profile=True)
    x0 = kfm.noise(range(5), (3,), dtype=torch.float64)
    for t in (0.0, 0.25, 0.875, 0.9):
        after = kfm.energy_after(increments, times, t)
        assert isinstance(after, np.ndarray) and after.dtype == np.float64 and after.shape == (5,)
        np.testing.assert_array_equal(after, direct.energy_after(t).numpy())
        if solver == "rk4" and t != 0.9:     # grid points of rk4's 64 steps (the command has no --rtol
            # to make dopri5's few steps here fine enough for a closed-form check)
            np.testing.assert_allclose(after, _gaussian_energy_after(x0, mean, 0.5, t).numpy(), rtol=1e-7)
    np.testing.assert_array_equal(kfm.energy_between(increments, times, 0.25, 0.9),
                                  direct.energy_between(0.25, 0.9).numpy())


def test_the_studies_energy_after_is_the_shared_one():
    from kinetic_fm.studies.samples import energy_after

    res = kfm.sample(kfm.GaussianTarget(torch.tensor([1.0, 2.0]), 0.5), seeds=range(4), shape=(2,), steps=8,
                     profile=True)
    run = {"profile": res.profile, "times": res.times}
    assert torch.equal(energy_after(run, 0.9), res.energy_after(0.9))


def test_bad_arguments_are_named():
    res = kfm.sample(lambda x, t: torch.ones_like(x), seeds=range(2), shape=(2,), steps=4)
    with pytest.raises(ValueError, match=r"profile is None.*profile=True.*kfm sample --profile"):
        res.energy_after(0.5)
    profile, times = torch.ones(2, 4, dtype=torch.float64), torch.linspace(0, 1, 5, dtype=torch.float64)
    for bad in (-0.1, 1.5, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match=r"t must be a time in \[0, 1\]"):
            kfm.energy_after(profile, times, bad)
    with pytest.raises(ValueError, match=r"t1 must be a time in \[0, 1\]"):
        kfm.energy_between(profile, times, 0.2, 1.01)
    with pytest.raises(ValueError, match="t0 must not exceed t1"):
        kfm.energy_between(profile, times, 0.6, 0.4)
    with pytest.raises(ValueError, match=r"times must have shape \(5,\) or \(2, 5\)"):
        kfm.energy_after(profile, times[:-1], 0.5)
    with pytest.raises(ValueError, match=r"times must have shape \(5,\) or \(2, 5\)"):
        kfm.energy_after(profile, times.expand(3, 5), 0.5)
    with pytest.raises(ValueError, match=r"profile must be a real \(B, S\) array"):
        kfm.energy_after(profile[0], times, 0.5)
    with pytest.raises(ValueError, match="times must increase"):
        kfm.energy_after(profile, times.flip(0), 0.5)
    with pytest.raises(ValueError, match="times must increase"):
        kfm.energy_after(profile, times * 2, 0.5)
    # a 0-d tensor is a number
    assert kfm.energy_after(profile, times, torch.tensor(0.5)).tolist() == [2.0, 2.0]


def test_a_nan_time_is_padding_only_after_a_samples_last_step():
    # a NaN inside the times (a missing value, not dopri5's padding) used to drop the steps beside
    # it silently: one unit of energy a step, 4 steps, read as 2
    profile = torch.ones(2, 4, dtype=torch.float64)
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    holed = grid.clone()
    holed[1] = math.nan
    with pytest.raises(ValueError, match=r"times must increase.*NaN only as padding"):
        kfm.energy_between(profile, holed, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"times must increase.*NaN only as padding"):
        kfm.energy_between(profile, torch.stack([grid, holed]), 0.0, 1.0)
    # padding holds no energy: a profile that has some there is refused, not half counted
    padded = torch.stack([grid, torch.tensor([0.0, 0.5, 1.0, math.nan, math.nan], dtype=torch.float64)])
    with pytest.raises(ValueError, match="profile must hold 0 at the padded steps"):
        kfm.energy_between(profile, padded, 0.0, 1.0)
    profile[1, 2:] = 0.0  # as dopri5 pads it: the sample's two steps, then zeros
    assert kfm.energy_between(profile, padded, 0.0, 1.0).tolist() == [4.0, 2.0]
    assert kfm.energy_between(profile, padded, 0.25, 1.0).tolist() == [3.0, 1.5]


def _fails_after_03(x, t):
    """-x, but NaN for the samples with x[:, 1] > 0 (v = -x keeps its sign) once t > 0.3."""
    t = t.reshape(-1) if t.ndim else t.expand(x.shape[0])
    return torch.where(((x[:, 1] > 0) & (t > 0.3))[:, None], math.nan, -x)


def test_a_non_finite_samples_unknown_energy_is_nan_and_its_known_energy_a_number():
    # dopri5 stops a sample it flags: its times end before t = 1, and it used to read as having
    # spent 0 after t = 0.5 and a finite kpe, where res.kpe is NaN
    res = kfm.sample(_fails_after_03, seeds=range(6), shape=(2,), solver="dopri5", profile=True,
                     on_nonfinite="flag")
    flagged = res.nonfinite
    assert flagged.any() and not flagged.all()
    for window in ((0.5, 1.0), (0.0, 1.0), (0.3, 0.9)):
        energy = res.energy_between(*window)
        assert torch.isnan(energy[flagged]).all() and torch.isfinite(energy[~flagged]).all(), window
    torch.testing.assert_close(res.energy_between(0, 1), res.kpe, rtol=0, atol=0, equal_nan=True)
    # a fixed grid keeps stepping a flagged sample, with NaN increments from its first bad step
    # (t = 0.4 on 10 Euler steps) on: the energy before that is known, and used to read NaN
    res = kfm.sample(_fails_after_03, seeds=range(6), shape=(2,), solver="euler", steps=10, profile=True,
                     on_nonfinite="flag")
    flagged = res.nonfinite
    assert flagged.any() and torch.isnan(res.profile[flagged, 4:]).all()
    before = res.profile[:, :4].sum(dim=1)
    torch.testing.assert_close(res.energy_between(0.0, 0.4), before, rtol=1e-15, atol=0)
    # a step whose neighbours' increments are NaN is split by length: they imply no power
    torch.testing.assert_close(res.energy_between(0.0, 0.35)[flagged], (before - 0.5 * res.profile[:, 3])[flagged],
                               rtol=1e-14, atol=0)
    assert torch.isfinite(res.energy_between(0.0, 0.35)).all()
    assert torch.isnan(res.energy_between(0.0, 0.45)[flagged]).all()
    assert torch.isnan(res.energy_after(0.4)[flagged]).all() and torch.isfinite(res.energy_after(0.4)[~flagged]).all()


def test_times_that_do_not_span_the_window_give_nan():
    profile = torch.ones(2, 4, dtype=torch.float64)
    part = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9], dtype=torch.float64)  # used to give 4 for [0, 1]
    assert torch.isnan(kfm.energy_between(profile, part, 0.0, 1.0)).all()
    torch.testing.assert_close(kfm.energy_between(profile, part, 0.55, 0.85), torch.full((2,), 3.0, dtype=torch.float64))


def test_a_dopri5_run_whose_every_sample_failed_at_t0_reads_nan_not_an_error():
    # every sample flagged at its first evaluation: dopri5 keeps no step, so its profile is (B, 0)
    # and its times (B, 1), [0]. The energy after t is unknown (NaN, as its kpe); it raised
    # "profile must be ... S ≥ 1", where a fixed-step run of the same field reads NaN
    nan_field = lambda x, t: torch.full_like(x, math.nan)   # noqa: E731
    res = kfm.sample(nan_field, seeds=range(3), shape=(2,), dtype=torch.float64, solver="dopri5", profile=True,
                     on_nonfinite="flag")
    assert res.profile.shape == (3, 0) and res.times.tolist() == [[0.0]] * 3 and res.nonfinite.all()
    for window in ((0.5, 1.0), (0.0, 1.0), (0.0, 0.3)):
        assert torch.isnan(res.energy_between(*window)).all(), window
    torch.testing.assert_close(res.energy_between(0, 1), res.kpe, rtol=0, atol=0, equal_nan=True)
    assert res.energy_between(0.0, 0.0).tolist() == [0.0] * 3             # the one instant it knows
    fixed = kfm.sample(nan_field, seeds=range(3), shape=(2,), dtype=torch.float64, profile=True, on_nonfinite="flag")
    assert torch.isnan(fixed.energy_after(0.5)).all() and fixed.energy_between(0.0, 0.0).tolist() == [0.0] * 3
    # a fixed grid always has a step: an empty profile beside a shared grid is still refused
    with pytest.raises(ValueError, match=r"profile must be a real \(B, S\) array"):
        kfm.energy_after(torch.zeros(2, 0, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 0.5)
