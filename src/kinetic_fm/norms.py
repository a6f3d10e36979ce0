"""‖v_i‖² per sample: the quantity every kinetic energy in kinetic_fm is made of.

It sits at the package root, below every layer, because the solvers (``sampling``), the guided
field's part energies (``fields.guidance``) and the diffusers scheduler (``integrations``) must
all measure a velocity the same way: summed over all coordinates (not averaged), in float64.
``kinetic_fm.sampling.energy`` re-exports it.
"""
from __future__ import annotations

import torch


def squared_norm(v: torch.Tensor) -> torch.Tensor:
    """‖v_i‖² per sample in float64, shape (B,); computed in float64 so large values do not overflow."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1, dtype=torch.float64).square()
