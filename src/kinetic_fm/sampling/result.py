"""The result of ``kfm.sample``: final states and per-sample energies."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..result_repr import result_repr
from .energy import energy_after, energy_between
from .fixed_step import early_step_count

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd


@dataclass(frozen=True)
class SampleResult:
    """Per-sample outcome of integrating a flow-matching ODE from t = 0 to t = 1.

    Energies are float64 tensors of shape (B,) on the sampling device, in units of
    (data units)² per unit time, with ‖·‖² summed over all coordinates:

    x:        (B, ...) final state at t = 1, dtype of x0 (NaN for a sample flagged non-finite).
    kpe:      applied energy ½∫η²‖v‖² dt (the motion actually realised under shaping).
    kpe_raw:  ½∫‖v‖² dt of the raw field along the same realised path.
    early:    applied energy of the steps before the split τ (fixed grids: step index
              i < int(τ·S) in floating point, the reference rule. That is t < τ only on a
              uniform grid, and only when τ·S does not round down: 0.29·100 computes to
              28.999…, so τ = 0.29 splits at t = 0.28. A 100-step cosine grid splits at
              t = 0.65 for τ = 0.6. dopri5: t < τ exactly, as its steps land on τ (and on
              KTS's τ_split), up to each step's quadrature error.) Compare early/late across
              fixed-step runs on the same grid.
    late:     applied energy of the remaining steps (early + late = kpe). For the energy after
              (or between) given times, on any grid: ``energy_after(t)``, ``energy_between(t0, t1)``.
    peak:     the largest single-step applied-energy increment; ``peak_time`` its step's start time.
    profile:  (B, S) per-step applied-energy increments, or None; for dopri5 (B, max steps),
              zero-padded past each sample's ``steps``.
    times:    (S + 1,) float64 grid used by fixed-step solvers; for dopri5 (B, max steps + 1)
              per-sample accepted step times, NaN-padded.
    nfe:      velocity evaluations per sample: an int for fixed-step solvers, (B,) for dopri5.
    steps:    accepted steps per sample: an int, or (B,) for dopri5.
    nonfinite: (B,) bool, samples whose velocity went NaN/Inf (only with on_nonfinite="flag";
              their energies and peak_time are NaN); ``nonfinite_step`` the first such step,
              −1 if none.
    solver, quadrature: as passed to ``kfm.sample``; split: the τ used for early/late.
    seeds:    the B seeds x0 was drawn from, or None when x0 was given.
    shaped:   whether a gain η acted (``kfm.sample``'s ``shaping`` was given); False means η = 1, and
              figures then name ½‖v‖² rather than ½η²‖v‖².
    """

    x: torch.Tensor
    kpe: torch.Tensor
    kpe_raw: torch.Tensor
    early: torch.Tensor
    late: torch.Tensor
    peak: torch.Tensor
    peak_time: torch.Tensor
    profile: torch.Tensor | None
    times: torch.Tensor
    nfe: int | torch.Tensor
    steps: int | torch.Tensor
    nonfinite: torch.Tensor
    nonfinite_step: torch.Tensor
    solver: str
    quadrature: str
    split: float
    seeds: tuple[int, ...] | None = field(default=None)
    shaped: bool = False

    __repr__ = result_repr  # shapes and dtypes, not every element

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def split_time(self) -> float:
        """The time ``late`` is counted from. Fixed grids: the start t_i of the first late step,
        i = int(τ·S) (:func:`~kinetic_fm.sampling.fixed_step.early_step_count`), so 0.28 for τ = 0.29 on
        100 uniform steps and 0.65 for τ = 0.6 on a 100-step cosine grid; 1.0 when no step is late.
        dopri5: ``split`` itself (its steps land there)."""
        return split_time(self.times, self.split)

    def energy_between(self, t0: float, t1: float) -> torch.Tensor:
        """(B,) float64 applied energy each sample spent between times t0 ≤ t1 in [0, 1], on the
        profile's device, whatever the grid or solver (a step straddling t0 or t1 is split by the power
        its neighbouring steps imply); needs ``kfm.sample(..., profile=True)`` (ValueError otherwise, and for
        times outside 0 ≤ t0 ≤ t1 ≤ 1). See :func:`kinetic_fm.sampling.energy.energy_between`."""
        return energy_between(self.profile, self.times, t0, t1)

    def energy_after(self, t: float) -> torch.Tensor:
        """(B,) float64 applied energy each sample spent at times ≥ t in [0, 1] (``energy_between(t,
        1)``): unlike ``late``, split at a time rather than a step index, so it compares across grids
        and solvers. Needs ``kfm.sample(..., profile=True)`` (ValueError otherwise, and for t outside
        [0, 1])."""
        return energy_after(self.profile, self.times, t)

    def columns(self) -> dict[str, "np.ndarray"]:
        """The per-sample scalars of :meth:`to_frame` as NumPy arrays of length B, in its column
        order: seed (int64, when known), kpe, kpe_raw, early, late, peak, peak_time (float64),
        nfe and steps (int64; a fixed-step solver's one count repeated), nonfinite (bool)."""
        import numpy as np

        n = len(self)

        def col(v):
            if isinstance(v, torch.Tensor):
                return v.detach().cpu().numpy()
            return np.full(n, v, dtype=np.int64)  # nfe / steps of a fixed-step solver

        data = {}
        if self.seeds is not None:
            data["seed"] = np.array(self.seeds, dtype=np.int64)
        for name in ("kpe", "kpe_raw", "early", "late", "peak", "peak_time", "nfe", "steps", "nonfinite"):
            data[name] = col(getattr(self, name))
        return data

    def to_frame(self) -> "pd.DataFrame":
        """One row per sample: seed (when known), kpe, kpe_raw, early, late, peak, peak_time,
        nfe, steps, nonfinite (:meth:`columns`). Needs pandas. The per-sample arrays (``x``,
        ``profile``, ``times``) stay on the result; ``kfm.per_sample_table`` takes extra columns
        such as ``{"profile": list(res.profile.numpy())}``."""
        import pandas as pd

        return pd.DataFrame(self.columns())


def split_time(times: torch.Tensor, split: float) -> float:
    """:attr:`SampleResult.split_time` of a run with step ``times`` ((S + 1,) one fixed grid, or dopri5's
    (B, W + 1) per-sample steps) and early/late split τ = ``split``."""
    if times.dim() != 1:
        return float(split)
    return float(times[early_step_count(split, times.numel() - 1)])
