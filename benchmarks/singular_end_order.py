"""Accuracy of rk4/rk4_38 on a field singular at t = 1: Heun's third-order last step vs Euler's.

A net predicting the data x̂1 (``DataPrediction``) must not be evaluated at t = 1, so the last
step drops its end stage. The library ends rk4/rk4_38 with Heun's third-order method; before the
tenth session it ended them with Euler, reproduced here by swapping that step back in. The net is
exact (x̂1 = x + (1 − t)·v of a Gaussian target), so the errors are the solver's alone; the plain
velocity field (no singular end) is the reference. Prints max |x − x_exact| and the KPE relative
error per step count, and the error ratio per halving (16 for order 4, 4 for order 2).

    python benchmarks/singular_end_order.py
"""
from __future__ import annotations

import contextlib

import torch

import kinetic_fm as kfm
from kinetic_fm.sampling import fixed_step
from kinetic_fm.sampling.tableau import EULER

STEPS = (10, 20, 40, 80)


@contextlib.contextmanager
def euler_end():
    """The scheme before the change: the last step of heun/rk4/rk4_38 is Euler's."""
    kept = fixed_step.step_tableaus

    def before(velocity, tableau, n_steps):
        if getattr(velocity, "singular_at_one", False) and 1.0 in tableau.c:
            return [tableau] * (n_steps - 1) + [EULER]
        return [tableau] * n_steps

    fixed_step.step_tableaus = before
    try:
        yield
    finally:
        fixed_step.step_tableaus = kept


def errors(velocity, solver, x0, exact_x, exact_kpe):
    out = []
    for steps in STEPS:
        res = kfm.sample(velocity, x0, steps=steps, solver=solver)
        out.append(((res.x - exact_x).abs().max().item(), ((res.kpe - exact_kpe) / exact_kpe).abs().max().item()))
    return out


def main() -> None:
    field = kfm.GaussianTarget(mean=torch.tensor([1.5, -0.5, 0.25], dtype=torch.float64), std=0.4)
    x0 = kfm.noise(range(64), (3,), dtype=torch.float64)
    exact_x, exact_kpe = field.trajectory(x0, 1.0), field.kinetic_energy(x0)
    data_net = kfm.DataPrediction(kfm.ModelXT(lambda x, t: x + (1 - t)[:, None] * field(x, t)))
    print(f"exact x̂1-predictor of N(μ, 0.4² I) in D = 3, 64 samples, float64; steps {STEPS}")
    for solver in ("rk4", "rk4_38"):
        rows = {"plain velocity": errors(field, solver, x0, exact_x, exact_kpe),
                "x̂1 net, Heun-3 end (now)": errors(data_net, solver, x0, exact_x, exact_kpe)}
        with euler_end():
            rows["x̂1 net, Euler end (before)"] = errors(data_net, solver, x0, exact_x, exact_kpe)
        print(f"\n{solver}")
        for name, errs in rows.items():
            x_err = "  ".join(f"{e[0]:.2e}" for e in errs)
            ratios = " ".join(f"{a[0] / b[0]:5.1f}" for a, b in zip(errs[:-1], errs[1:]))
            kpe_ratios = " ".join(f"{a[1] / b[1]:5.1f}" for a, b in zip(errs[:-1], errs[1:]))
            print(f"  {name:28s} x error {x_err}   per halving x {ratios} | KPE {kpe_ratios}")


if __name__ == "__main__":
    main()
