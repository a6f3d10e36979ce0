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

    A step that straddles an end of the window is split by the power the run's steps imply: the energy
    spent from t = 0 is known at every grid point (the running sum of the increments), and inside the
    step it is read from the cubic through four grid points around it (this step and its neighbours;
    a quadratic for a run of two steps), exact where the power is a quadratic in t, a linear or
    constant one included, and the same rule whatever the window, so windows still add up. Counting
    such a step by the share of its length inside the window (its power taken as constant, as before)
    was 3.3–9.3 % low at t = 0.9 for 4 samples of a 2-D Gaussian (mean 2, sd 0.5) under dopri5, whose steps
    from 0.6 ended at 0.9275, 0.9592, 1.0 and 0.9509 (0.5 % now). A step is still split by length in a run
    of one step, where it spent nothing, where a neighbouring increment is not finite, or where the cubic
    would spend less than nothing somewhere inside it. On a grid through ``t0`` and ``t1`` the result is
    the plain sum of the steps between them, so it depends only on the times asked for, not on the sampler's early/late
    split (a step index) or its grid. Inside a long step the split is only as good as that cubic: dopri5
    at its default tolerances in float32 takes steps of about a third of [0, 1] on a 3-D Gaussian (mean 2,
    sd 0.5; seeds 0..999 against the closed form at t = 0.5, 0.55, …, 0.9, ``python
    benchmarks/energy_split_accuracy.py``, BENCHMARKS.md: a third is the median sample's longest step, 0.40
    the longest; by length 1.2 % and 43 % off, split so the mean energy after t = 0.5–0.9 comes out up to
    0.36 % off and single samples' up to 5 %), and coarse fixed grids stay a few % off inside steps where the
    power bends (rk4 on 5 uniform steps, 8 samples of a Gaussian of mean (2, −1, 0.5) and sd 0.5: up to 6 %
    at t = 0.9 and 11 % at 0.97, by length 13 % and 21 %); tighten ``rtol``/``atol`` (``kfm sample
    --rtol``) or use a grid through t for a sharp split; at the early/late split, where dopri5's steps land,
    it is exact. The whole run's ``kpe`` is not affected (1.2e-4 there). Windows add up exactly in real
    arithmetic: between(a, b) + between(b, c) = between(a, c), between(0, 1) = kpe.

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
    rows_times = times_t.expand(batch, steps + 1)
    share = _share_before(profile_t, rows_times, t1) - _share_before(profile_t, rows_times, t0)
    last = torch.where(missing, -math.inf, times_t).amax(dim=-1)  # a row's last time before its padding
    spanned = (times_t[..., 0] <= t0) & (last >= t1)
    return profile_t, torch.where(padded, 0.0, share), spanned


def _share_before(profile: torch.Tensor, times: torch.Tensor, t: float) -> torch.Tensor:
    """(B, S) share of each step's energy spent before time ``t``: 1 for a step that ends by t, 0 for
    one that starts at or after it, and for the step [a, b] that straddles t, F((t − a)/(b − a)) from
    the power its row's steps imply (:func:`_straddled_split`); NaN at padded steps. ``times`` (B, S + 1)."""
    starts, ends = times[:, :-1], times[:, 1:]
    by_length = ((t - starts) / (ends - starts)).clamp(0.0, 1.0)
    straddled = (starts < t) & (t < ends)          # at most one step per row
    if not bool(straddled.any()):
        return by_length
    k = straddled.to(torch.int64).argmax(dim=1, keepdim=True)
    split, known = _straddled_split(profile, times, k, t)
    return by_length.scatter(1, k, torch.where(known & straddled.gather(1, k), split, by_length.gather(1, k)))


def _straddled_split(profile: torch.Tensor, times: torch.Tensor, k: torch.Tensor,
                     t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The share F(s) of step k's energy (per row, k (B, 1)) spent before time ``t``, the first fraction
    s = (t − a)/(b − a) of the step [a, b], and whether it is known, both (B, 1).

    The increments are integrals of the power over the steps, so the energy spent from a grid point on,
    E(u), is known at every grid point; E is interpolated by the cubic through four grid points around
    the step (three steps: this one and its neighbours, one-sided at a row's ends; a quadratic for a row
    of two steps), exact where the power is a quadratic in t (a constant or linear one included). On
    the step, F(s) = (E(a + s·h) − E(a))/(E(b) − E(a)) is a cubic with F(0) = 0 and F(1) = 1, so
    F(s) = s + s(1 − s)(A + B·s), read at s = 1/3 and 2/3. Not known (the caller counts by length)
    for a row of one step, a step without energy, a non-finite increment among the four points, or
    where that F would decrease (a negative power reconstructed inside the step): the rule depends on
    the step only, not on s, so windows still add up."""
    steps = profile.shape[1]
    count = (~torch.isnan(times[:, 1:])).sum(dim=1, keepdim=True)       # a row's steps before its padding
    first = torch.minimum((k - 1).clamp_min(0), (count - 3).clamp_min(0))
    slot = torch.arange(4, device=profile.device)
    valid = slot < (count + 1).clamp(max=4)                                # (B, 4): grid points in the stencil
    x = times.gather(1, (first + slot).clamp(max=steps))
    increments = profile.gather(1, (first + slot[:3]).clamp(max=steps - 1))
    energy = torch.cat([torch.zeros_like(increments[:, :1]), torch.cumsum(torch.where(valid[:, 1:], increments, 0.0),
                                                                           dim=1)], dim=1)
    a, b = times.gather(1, k), times.gather(1, k + 1)
    s = (t - a) / (b - a)
    spent = profile.gather(1, k)
    at_a = energy.gather(1, k - first)
    third, two_thirds = ((_interpolate(x, energy, valid, a + f * (b - a)) - at_a) / spent - f for f in (1 / 3, 2 / 3))
    g1, g2 = 4.5 * third, 4.5 * two_thirds          # A + B/3 and A + 2B/3
    big_a, big_b = 2 * g1 - g2, 3 * (g2 - g1)
    # F'(s) = 1 + A + 2(B − A)s − 3B s² must not go negative on [0, 1]: its ends, and its vertex where B < 0
    vertex = ((big_b - big_a) / (3 * big_b)).clamp(0.0, 1.0)
    slope = lambda u: 1 + big_a + 2 * (big_b - big_a) * u - 3 * big_b * u * u  # noqa: E731
    rising = (slope(0.0) >= 0) & (slope(1.0) >= 0) & ((big_b >= 0) | (slope(vertex) >= 0))
    known = (count >= 2) & (spent > 0) & torch.isfinite(big_a) & torch.isfinite(big_b) & rising
    return s + s * (1 - s) * (big_a + big_b * s), known


def _interpolate(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, 1) value at u (B, 1) of the polynomial through the points (x, y), (B, 4), where ``valid``:
    Lagrange's form, row by row (no reduction across rows: a sample's value is the same in any batch)."""
    pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(4, dtype=torch.bool, device=x.device)
    factors = torch.where(pairs, (u[:, :, None] - x[:, None, :]) / (x[:, :, None] - x[:, None, :]), 1.0)
    basis = factors[:, :, 0] * factors[:, :, 1] * factors[:, :, 2] * factors[:, :, 3]
    terms = torch.where(valid, y * basis, 0.0)
    return ((terms[:, 0] + terms[:, 1]) + (terms[:, 2] + terms[:, 3]))[:, None]
