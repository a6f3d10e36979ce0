"""Per-sample kinetic energy bookkeeping, kept on the device (no host synchronisation).

For a step of size h with stage velocities v_j, gains η_j and quadrature weights w_j:
    applied increment  ½ h Σ_j w_j η_j² ‖v_j‖²
    raw increment      ½ h Σ_j w_j ‖v_j‖²
with ‖·‖² summed over all coordinates. ``quadrature="solver"`` uses the solver's own weights b
(integrating the energy as an extra ODE component, so it converges at the solver's order and is
exact on Euler's piecewise-linear path); ``"left"`` keeps only the first stage (the reference code's
left Riemann sum of the predictor velocity).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..norms import squared_norm  # below every layer, for the fields too; re-exported here

__all__ = ["QUADRATURES", "EnergyLedger", "quadrature_weights", "squared_norm", "step_energy"]

QUADRATURES = ("solver", "left")


def quadrature_weights(quadrature: str, b: tuple[float, ...]) -> tuple[float, ...]:
    if quadrature == "solver":
        return b
    if quadrature == "left":
        return (1.0,) + (0.0,) * (len(b) - 1)
    raise ValueError(f"quadrature must be one of {QUADRATURES}, got {quadrature!r}")


@dataclass
class EnergyLedger:
    """Running per-sample energies, shape (B,) float64, on the sampling device."""

    kpe: torch.Tensor
    kpe_raw: torch.Tensor
    early: torch.Tensor
    late: torch.Tensor
    peak: torch.Tensor
    peak_time: torch.Tensor

    @classmethod
    def zeros(cls, batch: int, device: torch.device) -> "EnergyLedger":
        z = lambda: torch.zeros(batch, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z(), z(), z(), z())

    def add(
        self,
        applied: torch.Tensor,
        raw: torch.Tensor,
        early: torch.Tensor,
        start_time: torch.Tensor,
        rows: torch.Tensor,
    ) -> None:
        """Add one accepted step's increments (B',) to the samples ``rows`` (the adaptive solver's
        bookkeeping; fixed-step solvers reduce their stage norms after the loop instead)."""
        self.kpe.index_add_(0, rows, applied)
        self.kpe_raw.index_add_(0, rows, raw)
        self.early.index_add_(0, rows, torch.where(early, applied, 0.0))
        self.late.index_add_(0, rows, torch.where(early, 0.0, applied))
        higher = applied > self.peak[rows]
        self.peak[rows] = torch.where(higher, applied, self.peak[rows])
        self.peak_time[rows] = torch.where(higher, start_time, self.peak_time[rows])


def step_energy(
    h: float | torch.Tensor,
    etas: list,
    norms: list[torch.Tensor],
    weights: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applied and raw energy increments of one step; ``etas`` are floats or (B',) tensors."""
    applied = raw = None
    for w, eta, n in zip(weights, etas, norms):
        if w == 0.0:
            continue
        a_term = (w * eta * eta) * n
        r_term = w * n
        applied = a_term if applied is None else applied + a_term
        raw = r_term if raw is None else raw + r_term
    return 0.5 * h * applied, 0.5 * h * raw
