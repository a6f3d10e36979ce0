"""Accuracy of ``energy_after`` inside dopri5's long steps: the step split by its power vs by its length.

    python benchmarks/energy_split_accuracy.py

The field is ``kfm.GaussianTarget(2.0, 0.5)`` in 3-D (`kfm sample --field gaussian --dim 3`'s), sampled
by ``kfm.sample(..., solver="dopri5")`` at its default tolerances in float32 over seeds 0..999. Its paths are
known in closed form, x_u = u·μ + s(u)·x0 with s(u)² = (1 − u)² + u²σ², so the energy each sample spends
after t is exact (float64, from the run's own float32 x0). Printed per t = 0.5, 0.55, ..., 0.9: the
relative error of the mean energy after t and the worst single sample's, for ``SampleResult.energy_after``
(a straddling step split by the power the run's steps imply) and for the same step counted by its share
of length (the rule before); then the worst over those times. First the steps: their count per sample,
and each sample's longest (median and largest).
Deterministic on a given platform: one run.
"""
from __future__ import annotations

import math

import torch

import kinetic_fm as kfm

MEAN, STD, DIM = 2.0, 0.5, 3
SEEDS = range(1000)
TIMES = [0.5 + 0.05 * i for i in range(9)]


def exact_energy_after(x0: torch.Tensor, t: float) -> torch.Tensor:
    """(B,) ½∫_t^1 ‖ẋ‖² du on the exact path from x0 (B, DIM), float64.

    ‖ẋ‖² = ‖μ‖² + 2 s'(u) μ·x0 + s'(u)² ‖x0‖², and with a = 1 + σ², s'² = a − σ²/(a u² − 2u + 1),
    whose integral over [t, 1] is a(1 − t) − σ[arctan(σ) − arctan((a t − 1)/σ)]."""
    a = 1 + STD**2
    s = lambda u: math.sqrt((1 - u) ** 2 + (u * STD) ** 2)  # noqa: E731
    speed2 = a * (1 - t) - STD * (math.atan(STD) - math.atan((a * t - 1) / STD))
    z = x0.double()
    mu = torch.full((1, DIM), MEAN, dtype=torch.float64)
    return 0.5 * ((1 - t) * (mu**2).sum(1) + 2 * (s(1.0) - s(t)) * (z * mu).sum(1) + speed2 * (z**2).sum(1))


def by_length_energy_after(res: kfm.SampleResult, t: float) -> torch.Tensor:
    """(B,) energy after t with the straddling step counted by the share of its length after t."""
    times = res.times.double()
    starts, ends = times[:, :-1], times[:, 1:]
    after = ((ends - t) / (ends - starts)).clamp(0.0, 1.0).nan_to_num(0.0)     # padded steps: NaN times
    return (res.profile.double() * after).sum(dim=1)


def relative_errors(energy: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """|relative error| of the mean and the largest of the samples'."""
    return abs(energy.mean().item() / exact.mean().item() - 1), (energy / exact - 1).abs().max().item()


def main() -> None:
    field = kfm.GaussianTarget(MEAN, STD)
    res = kfm.sample(field, seeds=SEEDS, shape=(DIM,), solver="dopri5", profile=True)
    x0 = kfm.noise(SEEDS, (DIM,), dtype=res.x.dtype)
    longest = res.times.diff(dim=1).nan_to_num(0.0).amax(dim=1)           # each sample's longest step
    print(f"GaussianTarget({MEAN}, {STD}), shape ({DIM},), seeds {SEEDS.start}..{SEEDS.stop - 1}; "
          f"solver {res.solver} at kfm.sample's default rtol/atol, dtype {res.x.dtype}; torch {torch.__version__}")
    print(f"steps per sample {res.steps.min().item()}-{res.steps.max().item()}; a sample's longest step: "
          f"median {longest.median().item():.3f}, up to {longest.max().item():.3f}")
    print("relative error against the closed form, %: mean energy after t | worst sample")
    print(f"{'t':>6}{'mean, split':>14}{'mean, length':>14}{'worst, split':>14}{'worst, length':>15}")
    worst = {"split": [0.0, 0.0], "length": [0.0, 0.0]}
    for t in TIMES:
        exact = exact_energy_after(x0, t)
        rows = {"split": relative_errors(res.energy_after(t), exact),
                "length": relative_errors(by_length_energy_after(res, t), exact)}
        for rule, (mean_error, sample_error) in rows.items():
            worst[rule] = [max(worst[rule][0], mean_error), max(worst[rule][1], sample_error)]
        print(f"{t:>6.2f}{100 * rows['split'][0]:>14.3f}{100 * rows['length'][0]:>14.3f}"
              f"{100 * rows['split'][1]:>14.2f}{100 * rows['length'][1]:>15.2f}")
    print(f"{'worst':>6}{100 * worst['split'][0]:>14.3f}{100 * worst['length'][0]:>14.3f}"
          f"{100 * worst['split'][1]:>14.2f}{100 * worst['length'][1]:>15.2f}")


if __name__ == "__main__":
    main()
