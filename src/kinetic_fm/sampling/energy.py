"""Per-sample kinetic energy bookkeeping, kept on the device (no host synchronisation).

For a step of size h with stage velocities v_j, gains η_j and quadrature weights w_j:
    applied increment  ½ h Σ_j w_j η_j² ‖v_j‖²
    raw increment      ½ h Σ_j w_j ‖v_j‖²
with ‖·‖² summed over all coordinates. ``quadrature="solver"`` uses the solver's own weights b
(integrating the energy as an extra ODE component, so it converges at the solver's order and is
exact on Euler's piecewise-linear path); ``"left"`` keeps only the first stage (the reference code's
left Riemann sum of the predictor velocity).

After sampling, :func:`energy_between` and :func:`energy_after` read a kept profile (the per-step
increments) for the energy spent in any window of time, on any grid, fixed or per-sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..checks import check_unit_number, torch_readable
from ..norms import squared_norm  # below every layer, for the fields too; re-exported here

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["QUADRATURES", "EnergyLedger", "energy_after", "energy_between", "quadrature_weights",
           "squared_norm", "step_energy"]

QUADRATURES = ("solver", "left")
#: the band a kept profile's kinetic power is drawn in (its samples' 10 % and 90 % quantiles per step), and its
#: words: the figures' legend title and ``kfm sample --help`` (here, where ``kfm --help`` loads no figure code)
POWER_QUANTILES = (0.1, 0.9)
POWER_BAND = f"mean, {100 * POWER_QUANTILES[0]:g}–{100 * POWER_QUANTILES[1]:g} % band"


def quadrature_weights(quadrature: str, b: tuple[float, ...]) -> tuple[float, ...]:
    """The weights a step's stage energies η²‖v‖² get, one per stage: the tableau's ``b`` for
    "solver", (1, 0, ..., 0) for "left" (the reference's left Riemann sum: first stage only).
    ValueError for another ``quadrature``."""
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
        """A ledger of ``batch`` samples, every energy (B,) float64 zero on ``device``."""
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


def energy_between(profile: torch.Tensor | np.ndarray | None, times: torch.Tensor | np.ndarray,
                   t0: float, t1: float) -> torch.Tensor | np.ndarray:
    """(B,) float64 applied energy each sample spends between times ``t0`` and ``t1``.

    Args:
        profile: (B, S) per-step applied-energy increments: ``kfm.sample(..., profile=True).profile``,
            or the increments of ``kinetic_fm.runs.read_profile`` for a ``kfm sample --profile`` run.
            dopri5 profiles are zero-padded past each sample's last step (S = 0 when every sample
            failed at its first evaluation: each then knows only the instant t = 0, NaN elsewhere).
        times: the step times t_0 … t_S, (S + 1,) for a grid shared by all samples, or (B, S + 1)
            per sample (dopri5), NaN-padded past each sample's last step.
        t0, t1: the window, 0 ≤ t0 ≤ t1 ≤ 1 (t = 0 is noise, t = 1 is data).

    A step that straddles an end of the window counts by the share of its length inside it (its
    power ½η²‖v‖² taken as constant within the step, as Euler's is), so a grid whose points miss
    the window's ends still counts the stretch inside; on a grid through ``t0`` and ``t1`` this is
    the plain sum of the steps between them. So the result depends only on the times asked for,
    not on the sampler's early/late split (a step index) or its grid. Inside a step the split is
    only as good as that constant power: dopri5 at its default tolerances takes a few long steps on
    a smooth field (the longest about a third of [0, 1] on a 3-D Gaussian, mean 2 and sd 0.5,
    where the mean energy after t = 0.5–0.9 comes out up to 1.2 % off and single samples' up to 43 %),
    so tighten ``rtol``/``atol`` (``kfm sample --rtol``) or use a fixed grid through t for a sharp
    split; at the early/late split, where its steps land, it is exact. The whole run's ``kpe`` is not
    affected (1.2e-4 there). Windows add up exactly in
    real arithmetic: between(a, b) + between(b, c) = between(a, c), between(0, 1) = kpe.

    Unknown energy is NaN, never a number: a sample whose times do not span the window (dopri5
    stops a sample it flags non-finite, so its times end before t = 1) gets NaN, as its ``kpe``
    is; a NaN or inf increment counts only where its step overlaps the window (a fixed-step
    sample that turned non-finite at t = 0.4 has a finite energy before 0.4 and NaN after it).

    Rounding: each row is summed step by step in time order (a running sum, as dopri5 sums kpe),
    so a sample gives the same bits in any batch and a padded row whatever its batch's longest
    run, and ``energy_between(p, times, 0, 1)`` is dopri5's ``kpe`` bit for bit on the CPU
    (a fixed grid's to rounding). Returns a tensor on ``profile``'s device for a tensor profile,
    else a NumPy array.

    Raises ValueError for a ``profile`` of None (a run sampled without ``profile=True``), ``times`` of
    neither shape (S + 1,) nor (B, S + 1), or a window other than 0 ≤ t0 ≤ t1 ≤ 1.
    """
    profile_t, share, spanned = _window_shares(profile, times, t0, t1)
    # a step outside the window adds 0, not 0 * its increment (NaN for a non-finite one)
    profile_t = torch.where(share > 0, profile_t, 0.0)
    # a running sum in time order, not a dot product per row: a GEMV's reduction order follows
    # the batch size (a sample's energy after t moved in the last bits between batches of 1 and
    # 64), and its vector lanes would regroup per-sample steps with the padding
    weighted = profile_t * share
    # (no step at all: nothing spent, and NaN below wherever the window reaches past t = 0)
    energy = torch.cumsum(weighted, dim=-1)[..., -1] if weighted.shape[-1] else weighted.sum(dim=-1)
    energy = torch.where(spanned, energy, math.nan)
    return energy if isinstance(profile, torch.Tensor) else energy.cpu().numpy()


def energy_after(profile: torch.Tensor | np.ndarray | None, times: torch.Tensor | np.ndarray,
                 t: float) -> torch.Tensor | np.ndarray:
    """(B,) float64 applied energy each sample spends at times ≥ ``t``, 0 ≤ t ≤ 1:
    ``energy_between(profile, times, t, 1)`` (see there for the arguments, the straddling step and the
    ValueErrors, a ``profile`` of None among them)."""
    return energy_between(profile, times, check_unit_number("t", t, _TIME), 1.0)


_TIME = "a time in [0, 1]"


def _window_shares(profile, times, t0, t1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``profile`` as a float64 tensor, the share of each step inside [t0, t1], (S,) or (B, S), and
    whether the times span the window, () or (B,)."""
    if profile is None:
        raise ValueError("profile is None: the run kept no per-step energies; sample with "
                         "kfm.sample(..., profile=True) or `kfm sample --profile`")
    t0, t1 = check_unit_number("t0", t0, _TIME), check_unit_number("t1", t1, _TIME)
    if t0 > t1:
        raise ValueError(f"t0 must not exceed t1, got t0 = {t0} and t1 = {t1}")
    profile_t = torch.as_tensor(torch_readable(profile))
    times_t = torch.as_tensor(torch_readable(times))
    # S = 0 only with per-sample times (B, 1): a dopri5 run whose every sample failed at t = 0
    if profile_t.ndim != 2 or profile_t.is_complex() or (profile_t.shape[1] == 0 and times_t.ndim != 2):
        raise ValueError(f"profile must be a real (B, S) array of per-step increments, S ≥ 1 (S = 0 only "
                         f"beside per-sample times (B, 1)), got shape {tuple(profile_t.shape)}")
    profile_t = profile_t.to(torch.float64)
    times_t = times_t.to(torch.float64).to(profile_t.device)
    batch, steps = profile_t.shape
    if times_t.shape not in ((steps + 1,), (batch, steps + 1)):
        raise ValueError(f"times must have shape ({steps + 1},) or ({batch}, {steps + 1}) for a profile "
                         f"of {batch} samples and {steps} steps, got {tuple(times_t.shape)}")
    starts, ends = times_t[..., :-1], times_t[..., 1:]
    missing = torch.isnan(times_t)
    padding = torch.cumsum(missing, dim=-1) > 0  # from a row's first NaN on
    if (bool((ends <= starts).any()) or bool(((times_t < 0) | (times_t > 1)).any())
            or bool((padding & ~missing).any())):
        raise ValueError("times must increase from step to step within [0, 1] (NaN only as padding "
                         "after a sample's last step)")
    padded = padding[..., 1:]  # steps whose end time is padding
    if bool((padded & (profile_t != 0)).any()):
        raise ValueError("profile must hold 0 at the padded steps (a NaN end time in times): their "
                         "energy would count nowhere")
    inside = (torch.clamp(ends, max=t1) - torch.clamp(starts, min=t0)).clamp_min(0.0)
    share = inside / (ends - starts)
    last = torch.where(missing, -math.inf, times_t).amax(dim=-1)  # a row's last time before its padding
    spanned = (times_t[..., 0] <= t0) & (last >= t1)
    return profile_t, torch.where(padded, 0.0, share), spanned
