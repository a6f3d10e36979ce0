"""One table-driven fixed-step integrator for euler, midpoint, heun and rk4."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .energy import EnergyLedger, quadrature_weights, squared_norm, step_energy
from .guards import check_velocity_output
from .tableau import Tableau

Gain = Callable[[float], float]


@dataclass
class Trace:
    """What an integrator hands back to ``sample``; tensors are on the sampling device."""

    x: torch.Tensor
    ledger: EnergyLedger
    profile: torch.Tensor | None  # (B, S) applied-energy increments
    step_times: torch.Tensor  # (S + 1,) shared grid, or (B, S + 1) per sample (NaN padded)
    nfe: int | torch.Tensor
    steps: int | torch.Tensor
    bad_step: torch.Tensor  # (B,) int64, first step with a non-finite velocity, −1 if none
    bad_time: torch.Tensor  # (B,) float64, the time of that evaluation


def stage_times(grid: list[float], c: tuple[float, ...]) -> list[list[float]]:
    """t_i + c_j h_i for every step, with c = 0 and c = 1 mapped exactly onto grid points."""
    out = []
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        out.append([t0 if cj == 0.0 else t1 if cj == 1.0 else t0 + cj * h for cj in c])
    return out


def integrate_fixed(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    grid: torch.Tensor,
    tableau: Tableau,
    gain: Gain | None,
    quadrature: str,
    split: float,
    keep_profile: bool,
    progress: bool,
) -> Trace:
    """Integrate dx/dt = η(t)·v(x, t) over ``grid`` (CPU float64, (S + 1,)) from x0 (B, ...).

    Step sizes, stage times and gains are precomputed on the host from the grid, so the loop
    never synchronises with the device. A step is "early" when its index i < int(split·S), the
    reference code's rule.
    """
    batch, device, dtype = x0.shape[0], x0.device, x0.dtype
    times = grid.tolist()
    n_steps = len(times) - 1
    t_stage = stage_times(times, tableau.c)
    eta = [[gain(t) if gain is not None else 1.0 for t in row] for row in t_stage]
    weights = quadrature_weights(quadrature, tableau.b)
    early_steps = int(split * n_steps)

    ledger = EnergyLedger.zeros(batch, device)
    profile = torch.zeros(batch, n_steps, dtype=torch.float64, device=device) if keep_profile else None
    bad_step = torch.full((batch,), -1, dtype=torch.int64, device=device)
    bad_time = torch.full((batch,), float("nan"), dtype=torch.float64, device=device)
    x = x0
    checked = False

    steps_iter = range(n_steps)
    if progress:
        from tqdm.auto import tqdm

        steps_iter = tqdm(steps_iter, desc=f"{tableau.name} sampling", unit="step", leave=False)

    for i in steps_iter:
        h = times[i + 1] - times[i]
        stage_v: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        for j in range(tableau.stages):
            xj = x
            for l, a_jl in enumerate(tableau.a[j]):
                if a_jl != 0.0:
                    xj = xj + (h * a_jl * eta[i][l]) * stage_v[l]
            t_vec = torch.full((batch,), t_stage[i][j], dtype=dtype, device=device)
            v = velocity(xj, t_vec)
            if not checked:
                check_velocity_output(v, x)
                checked = True
            n = squared_norm(v)
            _record_nonfinite(n, i, t_stage[i][j], bad_step, bad_time)
            stage_v.append(v)
            norms.append(n)
        x = _update(x, h, tableau, stage_v, eta[i])
        applied, raw = step_energy(h, eta[i], norms, weights)
        ledger.add(applied, raw, i < early_steps, times[i])
        if profile is not None:
            profile[:, i] = applied

    return Trace(
        x=x,
        ledger=ledger,
        profile=profile,
        step_times=grid.to(dtype=torch.float64),
        nfe=n_steps * tableau.stages,
        steps=n_steps,
        bad_step=bad_step,
        bad_time=bad_time,
    )


def _update(x, h, tableau: Tableau, stage_v, etas) -> torch.Tensor:
    if tableau.mean_gain_update:
        gain = sum(b * e for b, e in zip(tableau.b, etas))
        mean_v = None
        for b, v in zip(tableau.b, stage_v):
            if b != 0.0:
                mean_v = b * v if mean_v is None else mean_v + b * v
        return x + (h * gain) * mean_v
    for b, e, v in zip(tableau.b, etas, stage_v):
        if b != 0.0:
            x = x + (h * b * e) * v
    return x


def _record_nonfinite(norm, step, time, bad_step, bad_time) -> None:
    """Remember the first step at which each sample's velocity went non-finite (on the device)."""
    first = (~torch.isfinite(norm)) & (bad_step < 0)
    bad_step.masked_fill_(first, step)
    bad_time.masked_fill_(first, time)
