"""KineticODESolver against flow_matching's ODESolver with ``step_size``: the default grid's dtype.

``ODESolver``'s default ``time_grid`` is a float32 [0, 1], from which torchdiffeq builds the steps of
``step_size`` in float32 (0.05 becomes 0.0500000007); ``KineticODESolver`` builds them in float64.
With float64 samples the two then differ by round-off of the times, and agree to float64 round-off
on a float64 ``time_grid``. Prints max |x_ours − x_theirs| for both grids (needs flow_matching).

    python benchmarks/odesolver_grid_parity.py
"""
from __future__ import annotations

import torch

import kinetic_fm as kfm


def main() -> None:
    try:
        from flow_matching.solver import ODESolver
    except ImportError:
        raise SystemExit("needs flow_matching: pip install flow_matching")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()

    def velocity(x, t):
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))

    x0 = torch.randn(8, 3, dtype=torch.float64)
    print("method    | default float32 grid | float64 time_grid")
    for method in ("euler", "midpoint", "rk4"):
        gaps = []
        for grid in (None, torch.tensor([0.0, 1.0], dtype=torch.float64)):
            extra = {} if grid is None else {"time_grid": grid}
            with torch.no_grad():
                theirs = ODESolver(velocity).sample(x0, step_size=0.05, method=method, **extra)
                ours = kfm.KineticODESolver(velocity).sample(x0, step_size=0.05, method=method, **extra).x
            gaps.append(float((ours - theirs).abs().max()))
        print(f"{method:9s} | {gaps[0]:20.2e} | {gaps[1]:.2e}")


if __name__ == "__main__":
    main()
