"""dopri5 lands a step on the early/late split, so ``early`` and ``late`` part at the split time."""
import math

import pytest
import torch

import kinetic_fm as kfm

X0 = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.1], [0.05, 0.02]], dtype=torch.float64)


def growth(x, t):
    """dx/dt = x: x(t) = x0·e^t, so ½∫_0^s ‖v‖² dt = ¼‖x0‖²(e^{2s} − 1)."""
    return x


def cubic(x, t):
    """A nonlinear field: samples take different steps, so the batch test means something."""
    return -x ** 3 + torch.cos(3 * t).to(x.dtype).unsqueeze(1)


def energy_on(x0, s0, s1):
    return 0.25 * (x0 ** 2).sum(1) * (math.exp(2 * s1) - math.exp(2 * s0))


@pytest.mark.parametrize("rtol", [1e-5, 1e-8])
@pytest.mark.parametrize("split", [0.6, 0.37])
def test_early_and_late_split_at_the_split_time(rtol, split):
    res = kfm.sample(growth, X0, solver="dopri5", rtol=rtol, atol=rtol, split=split, profile=True)
    total = energy_on(X0, 0.0, 1.0)
    # by whole steps, early was 0.63 of the total off at rtol 1e-5 (a step from ~0.3 to ~0.7)
    assert ((res.early - energy_on(X0, 0.0, split)) / total).abs().max() < 20 * rtol
    assert ((res.late - energy_on(X0, split, 1.0)) / total).abs().max() < 20 * rtol
    assert ((res.energy_after(split) - energy_on(X0, split, 1.0)) / total).abs().max() < 20 * rtol
    for b in range(X0.shape[0]):  # a step ends exactly at the split
        assert (res.times[b] == split).any()


def test_under_kts_with_another_split_steps_land_on_both():
    kts = kfm.KTS(alpha0=0.3, beta0=0.04, tau_split=0.6)
    res = kfm.sample(growth, X0, solver="dopri5", shaping=kts, split=0.35, rtol=1e-8, atol=1e-8)
    for b in range(X0.shape[0]):
        assert (res.times[b] == 0.35).any() and (res.times[b] == 0.6).any()
    # an independent reference: rk4 on a fine uniform grid with 0.35 and τ as grid points
    ref = kfm.sample(growth, X0, solver="rk4", steps=2000, shaping=kts, split=0.35)
    # the energy never enters the error control: late came out 1.4e-7 off at rtol 1e-8
    assert ((res.early - ref.early) / ref.kpe).abs().max() < 50 * 1e-8
    assert ((res.late - ref.late) / ref.kpe).abs().max() < 50 * 1e-8


def test_under_kts_a_split_at_tau_changes_nothing():
    # the split adds no stop of its own: the same bits as a split that lands nowhere (0 or 1)
    kts = kfm.KTS(alpha0=0.3, beta0=0.04, tau_split=0.6)
    runs = [kfm.sample(cubic, X0, solver="dopri5", shaping=kts, split=s, profile=True) for s in (None, 0.6, 1.0)]
    for other in runs[1:]:
        for name in ("x", "kpe", "kpe_raw", "profile", "nfe", "steps"):
            assert torch.equal(getattr(runs[0], name), getattr(other, name)), name
        assert torch.equal(runs[0].times.nan_to_num(-1.0), other.times.nan_to_num(-1.0))
    assert torch.equal(runs[0].early, runs[1].early)


def test_landing_on_the_split_costs_at_most_two_steps():
    for field in (growth, cubic):
        for rtol in (1e-3, 1e-5, 1e-8):
            landed = kfm.sample(field, X0, solver="dopri5", rtol=rtol, atol=rtol, split=0.6)
            free = kfm.sample(field, X0, solver="dopri5", rtol=rtol, atol=rtol, split=1.0)  # no stop inside (0, 1)
            extra = landed.steps - free.steps
            assert (extra >= 0).all() and (extra <= 2).all(), (field.__name__, rtol, extra.tolist())


def test_a_sample_alone_matches_it_in_a_batch():
    x0 = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    batch = kfm.sample(cubic, x0, solver="dopri5", split=0.45, profile=True)
    assert len(set(batch.steps.tolist())) > 1  # the samples step differently
    for b in range(x0.shape[0]):
        alone = kfm.sample(cubic, x0[b:b + 1], solver="dopri5", split=0.45, profile=True)
        n = int(alone.steps[0])
        assert torch.equal(alone.x[0], batch.x[b]) and int(batch.steps[b]) == n
        for name in ("kpe", "early", "late"):
            assert torch.equal(getattr(alone, name)[0], getattr(batch, name)[b]), name
        assert torch.equal(alone.times[0, :n + 1], batch.times[b, :n + 1])
