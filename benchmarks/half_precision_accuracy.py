"""KPE accuracy of each solver on a half-precision state, against the closed form.

    python benchmarks/half_precision_accuracy.py

The field is ``kfm.PointTarget(y)`` (y ~ N(0, I) in 16 dimensions, seed 0): every path is the
straight line from x0 to y, so KPE = ½‖y − x0‖² exactly, with x0 the state's own noise (drawn in
its dtype). Printed per dtype, solver and tolerance: the largest and the median relative KPE error
over 64 samples, and the largest distance of the end point from y. ``kfm.sample`` warns of dopri5
on a float16/bfloat16 state; this shows why (its stage times round to the state's dtype, and its
error control cannot see below the rounding), beside Euler's and Heun's 20 steps.
"""
from __future__ import annotations

import warnings

import torch

import kinetic_fm as kfm


def main() -> None:
    torch.manual_seed(0)
    y = torch.randn(16)
    field = kfm.PointTarget(y)
    seeds = range(64)
    settings = [("euler", {"steps": 20}), ("heun", {"steps": 20})]
    settings += [("dopri5", {"rtol": tol, "atol": tol}) for tol in (1e-5, 1e-3, 1e-2)]
    print(f"{'dtype':<16}{'solver':<22}{'max rel KPE err':>16}{'median rel err':>16}{'max |x1 - y|':>14}")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        exact = 0.5 * (y.double() - kfm.noise(seeds, (16,), dtype=dtype).double()).pow(2).sum(dim=1)
        for solver, options in settings:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # the half-precision dopri5 warning, expected here
                res = kfm.sample(field, seeds=seeds, shape=(16,), solver=solver, dtype=dtype, **options)
            rel = (res.kpe.double() - exact).abs() / exact
            end = (res.x.double() - y.double()).abs().max().item()
            label = solver + "".join(f" {k}={v:g}" for k, v in options.items() if k != "atol")
            print(f"{str(dtype):<16}{label:<22}{rel.max().item():>16.3g}{rel.median().item():>16.3g}{end:>14.3g}")


if __name__ == "__main__":
    main()
