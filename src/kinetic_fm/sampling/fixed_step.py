"""One table-driven fixed-step integrator for euler, midpoint, heun, rk4 and rk4_38."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..checks import declares_singular_at_one
from ..norms import row_dot
from .energy import EnergyLedger, quadrature_weights
from .guards import (check_outputs_unchanged, check_state_unchanged, check_velocity_output, first_velocity,
                     stage_velocity, state_version)
from .shaping import TAU_TOLERANCE, gain_tau
from .tableau import EULER, HEUN3, Tableau

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


def stage_times(grid: list[float], tableaus: list[Tableau], n_stages: int) -> list[list[float]]:
    """t_i + c_j h_i for every step i (with its own tableau's c), c = 0 and c = 1 mapped exactly
    onto grid points; a step with fewer than ``n_stages`` stages is padded with t_i (unused)."""
    out = []
    for t0, t1, tab in zip(grid[:-1], grid[1:], tableaus):
        h = t1 - t0
        row = [t0 if cj == 0.0 else t1 if cj == 1.0 else t0 + cj * h for cj in tab.c]
        out.append(row + [t0] * (n_stages - len(row)))
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
    progress: float | None,
) -> Trace:
    """Integrate dx/dt = η(t)·v(x, t) over ``grid`` (CPU float64, (S + 1,)) from x0 (B, ...).

    Step sizes, stage times and gains are precomputed on the host from the grid, and the loop
    only writes each stage's ‖v‖² into a preallocated (S, stages, B) buffer: no host
    synchronisation and no bookkeeping on the hot path. Energies, the non-finite check and the
    early/late split (step index i < int(split·S), the reference rule) are computed from that
    buffer once, after the loop. The buffer costs S·stages·B numbers of x's dtype (float32 for
    half-precision x).
    """
    batch, device, dtype = x0.shape[0], x0.device, x0.dtype
    times = grid.tolist()
    n_steps, n_stages = len(times) - 1, tableau.stages
    tableaus = step_tableaus(velocity, tableau, n_steps)
    call = stage_velocity(velocity)   # the grid's times are checked: an analytic field need not look at them again
    t_stage = stage_times(times, tableaus, n_stages)
    eta = stage_gains(gain, times, t_stage, tableaus)
    # half-precision squares overflow (‖v‖² > 65504 in float16) and round coarsely (bfloat16)
    norm_dtype = torch.promote_types(dtype, torch.float32)
    norms = torch.zeros(n_steps, n_stages, batch, dtype=norm_dtype, device=device)
    # row i·stages + j holds step i's stage j; views of a block of steps' rows are made at once
    # (one unbind), not one indexing op per stage
    norm_rows = norms.view(n_steps * n_stages, batch)
    block_steps = max(1, _ROW_BLOCK // n_stages)

    steps_iter = range(n_steps)
    if progress is not None:  # the seconds before the bar shows
        from tqdm.auto import tqdm

        steps_iter = tqdm(steps_iter, desc=f"{tableau.name} sampling", unit="step", leave=False, delay=progress)

    shape, flat_shape, half = x0.shape, (batch, -1), dtype in _HALF
    x = x0
    for i in steps_iter:
        h = times[i + 1] - times[i]
        step, eta_i, t_i = tableaus[i], eta[i], t_stage[i]
        if i % block_steps == 0:
            block_rows = norm_rows[i * n_stages:(i + block_steps) * n_stages].unbind()
        step_row = (i % block_steps) * n_stages
        stage_v: list[torch.Tensor] = []
        versions: list[int | None] = []
        for j, (inputs, kept) in enumerate(step.stage_plan):
            if inputs:
                xj = _stage_state(x, [(stage_v[l], h * a_jl * eta_i[l]) for l, a_jl in inputs])
                version = None
            else:
                xj, version = x, state_version(x)
            # a new tensor for every stage, made here (S·stages made ahead cost ~750 bytes each
            # whatever B: 300 MB at 10**5 rk4 steps); a fill, no synchronisation. Not shared with
            # the stage before at the same time: a net may change its t unseen (through NumPy,
            # .data, requires_grad_) and the next stage would read that
            t_j = torch.full((batch,), t_i[j], dtype=dtype, device=device)
            if i == 0 and j == 0:
                v = first_velocity(call, xj, t_j, velocity)
            else:  # metadata only: no synchronisation
                v = call(xj, t_j)
                if type(v) is not torch.Tensor or v.shape != shape or v.dtype != dtype or v.device != device:
                    check_velocity_output(v, xj, step=i, time=t_i[j], field=velocity)
            if version is not None and xj._version != version:
                check_state_unchanged(xj, version, i, t_i[j], is_x0=xj is x0)
            for l in kept:
                if versions[l] is not None and stage_v[l]._version != versions[l]:
                    check_outputs_unchanged(stage_v, versions, kept, i, t_i[j])
            flat = v.reshape(flat_shape)
            row_dot(flat.float() if half else flat, out=block_rows[step_row + j])
            stage_v.append(v)
            versions.append(state_version(v))
        x = _update(x, h, step, stage_v, eta_i)

    return _account(x, norms, times, t_stage, eta, tableaus, quadrature, split, keep_profile)


def stage_gains(gain: Gain | None, times: list[float], t_stage: list[list[float]],
                tableaus: list[Tableau]) -> list[list[float]]:
    """η at every stage time, as floats.

    A KTS gain (or one that declares ``tau_split``, see ``gain_tau``) has a kink at τ (a jump for
    the constant forms). A step that ends on τ belongs to the launch phase, so its stage at τ takes
    η's left limit, as dopri5's steps do; evaluated on
    the landing side, that one stage cost rk4 its order (first order with a jump). A stage at τ
    inside a step across τ (midpoint's, rk4's c = ½) is in the landing phase and takes η(τ).
    A stage time within 1e-6·τ of τ counts as τ (``np.linspace`` and float32 grids hold it a few
    ulps off, and t0 + h/2 may round below it). ``heun`` keeps the reference rule, η(t_{i+1}) in
    the corrector.
    """
    tau = gain_tau(gain)
    if tau is None:
        return [[_gain_at(gain, t) for t in row] for row in t_stage]
    below_tau = math.nextafter(tau, 0.0)
    known: dict[float, float] = {}  # η by time: a step's end is the next one's start, rk4 has c = ½ twice
    rows = []
    for t0, t1, row, tab in zip(times[:-1], times[1:], t_stage, tableaus):
        # a time a rounding off τ is τ (np.linspace's 0.6000000000000001, a float32 grid's
        # 0.6000000238, t0 + h/2 = 0.6499999999999999): across η's jump, its other side cost rk4
        # three orders. On τ a stage takes the landing gain η(τ), except the one ending a step
        # from before τ, the launch phase's last (heun keeps the reference rule: η at the times)
        ends_on_tau = _on_tau(t1, tau) and t0 < tau and not _on_tau(t0, tau) and not tab.mean_gain_update
        gains = []
        for t in row:
            if _on_tau(t, tau):
                t = below_tau if t == t1 and ends_on_tau else tau
            eta = known.get(t)
            if eta is None:
                eta = known[t] = _gain_at(gain, t)
            gains.append(eta)
        rows.append(gains)
    return rows


def _on_tau(t: float, tau: float) -> bool:
    """Whether stage time ``t`` stands for τ (in (0, 1)): within ``TAU_TOLERANCE``·τ."""
    return abs(t - tau) <= TAU_TOLERANCE * tau


def _gain_at(gain: Gain | None, t: float) -> float:
    """η(t) as a float, checked: a gain must be finite and > 0 (the error names ``shaping``)."""
    if gain is None:
        return 1.0
    try:
        value = gain(t)
    except TypeError as err:  # e.g. torch.sin(t): the fixed-step solvers pass a float, dopri5 a tensor
        raise TypeError(f"the fixed-step solvers call the shaping gain with one time as a Python float "
                        f"(t = {t:g}) and this gain failed on it ({err}); write it for floats as well as "
                        "tensors (math and torch.as_tensor both take a float)") from err
    try:
        eta = float(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"shaping returned {type(value).__name__} at t = {t:g}, not one number ({err})") from err
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"shaping gave η({t:g}) = {eta!r}; a gain must be finite and > 0")
    return eta


def step_tableaus(velocity: Callable, tableau: Tableau, n_steps: int) -> list[Tableau]:
    """The tableau of every step: ``tableau``, except on a field declaring ``singular_at_one``
    (EFM, a point target, data prediction: v ~ 1/(1 − t)) when the tableau has a stage at the
    step's end, which would evaluate the field at t = 1. The last step then has no end stage:
    Euler after heun (order 2), as EDM's sampler skips its last correction, and Heun's
    third-order method (stages at 0, 1/3, 2/3) after rk4 and rk4_38. One last step of order p − 1
    adds a local error O(h^p), so the run keeps the solver's order p; an Euler end made rk4 second
    order on a smooth x̂-predictor. Stages past a step's own count stay zero in the norm buffer."""
    if 1.0 in tableau.c and declares_singular_at_one(velocity):
        last = EULER if tableau.order <= 2 else HEUN3
        assert last.order >= tableau.order - 1, "no end step keeps this tableau's order"
        return [tableau] * (n_steps - 1) + [last]
    return [tableau] * n_steps


def early_step_count(split: float, n_steps: int) -> int:
    """How many of a fixed grid's ``n_steps`` steps count as early for the split τ = ``split``: those
    with index i < int(τ·S), the reference's rule, in floating point (0.29·100 is 28.999…, so 28)."""
    return int(split * n_steps)


def _account(x, norms, times, t_stage, eta, tableaus, quadrature, split, keep_profile) -> Trace:
    """Energies from the stage norms: applied ½ h Σ w η²‖v‖², raw ½ h Σ w ‖v‖² per step."""
    n_steps, n_stages, batch = norms.shape
    device = norms.device
    weights = torch.tensor(_per_tableau(tableaus, lambda tab: _padded(quadrature_weights(quadrature, tab.b), n_stages)),
                           dtype=torch.float64)  # (S, stages)
    h = torch.tensor(times, dtype=torch.float64).diff()
    raw_coef = 0.5 * h[:, None] * weights
    applied_coef = raw_coef * torch.tensor(eta, dtype=torch.float64) ** 2
    # what the device needs from the host, in one copy: per stage j the (2, S, 1) column of the
    # applied and raw coefficients, then the step start times and the stage times (S·stages,)
    stage_t = torch.tensor(t_stage, dtype=torch.float64).reshape(-1)
    host = torch.cat([torch.stack([applied_coef, raw_coef]).movedim(2, 0).reshape(-1),
                      torch.tensor(times[:-1], dtype=torch.float64), stage_t]).to(device)
    coef_size = 2 * n_steps * n_stages
    coef = host[:coef_size].view(n_stages, 2, n_steps, 1)
    step_starts, stage_t = host[coef_size:coef_size + n_steps], host[coef_size + n_steps:]
    # the first non-finite (step, stage) per sample, in time order, as the row i·stages + j (0 if
    # none), and the steps with one, (S, B); found before the energies are made, which peak higher
    finite = torch.isfinite(norms)
    all_finite, first = finite.view(n_steps * n_stages, batch).min(dim=0)
    nonfinite_steps = ~finite.all(dim=1)
    del finite
    # Element-wise products and a sequential scan over steps: every sample's numbers come from the
    # same correctly rounded operations in the same order, whatever the batch size (a GEMM or a
    # tree reduction here would change the last bits with the batch). One stage at a time: a
    # float64 copy of the whole (S, stages, B) buffer held the peak at ~8× it. The product with
    # the float64 coefficients reads a stage's norms in float64, exactly.
    energy = None  # (2, S, B): applied and raw increments
    for j in range(n_stages):
        terms = coef[j] * norms[:, j, :]
        energy = terms if energy is None else energy.add_(terms)
        del terms
    # a step with a non-finite stage reads NaN in both energies, whatever its stages' weights
    # (0·inf is NaN, w·inf is not)
    energy.masked_fill_(nonfinite_steps, torch.nan)
    applied, raw = energy.unbind()
    running = torch.cumsum(applied, dim=0)  # (S, B), sequential along the steps

    early_steps = early_step_count(split, n_steps)
    early = running[early_steps - 1] if early_steps > 0 else torch.zeros_like(running[0])
    kpe = running[-1]
    peak, peak_step = applied.max(dim=0)
    ledger = EnergyLedger(
        kpe=kpe,
        kpe_raw=torch.cumsum(raw, dim=0)[-1],
        early=early,
        late=kpe - early,
        peak=peak,
        peak_time=step_starts[peak_step],
    )
    return Trace(
        x=x,
        ledger=ledger,
        profile=applied.T.contiguous() if keep_profile else None,
        step_times=torch.tensor(times, dtype=torch.float64),
        nfe=sum(tab.stages for tab in tableaus),
        steps=n_steps,
        bad_step=torch.where(all_finite, -1, first // n_stages),
        bad_time=torch.where(all_finite, torch.nan, stage_t[first]),
    )


def _per_tableau(tableaus: list[Tableau], row_of: Callable[[Tableau], tuple]) -> list[tuple]:
    """``row_of(tab)`` for every step's tableau, worked out once for each distinct one."""
    known: dict[int, tuple] = {}
    rows = []
    for tab in tableaus:
        row = known.get(id(tab))
        if row is None:
            row = known[id(tab)] = row_of(tab)
        rows.append(row)
    return rows


def _padded(weights: tuple[float, ...], stages: int) -> tuple[float, ...]:
    return weights + (0.0,) * (stages - len(weights))


_HALF = (torch.float16, torch.bfloat16)
_ROW_BLOCK = 256  # stage-norm rows viewed at once


def _stage_state(x: torch.Tensor, terms: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """x + Σ c·v over ``terms`` ((v, c) pairs), x itself when there are none.

    A 16-bit state sums in float32 and rounds once: ATen's ``add(x, v, alpha=c)`` on 16-bit
    tensors rounds differently in its vectorised body and its scalar tail, so an element's bits
    depended on its row's place in the batch (64 of 64 float16 rows differed between a batch and
    one sample at a time); float32 and float64 are summed in their own dtype, as before."""
    if not terms:
        return x
    if x.dtype in _HALF:
        out = x.float()
        for v, c in terms:
            out.add_(v.float(), alpha=c)
        return out.to(x.dtype)
    (v, c), *rest = terms
    out = torch.add(x, v, alpha=c)
    for v, c in rest:  # into the sum just made: the same additions, without a new tensor each
        out.add_(v, alpha=c)
    return out


def _update(x, h, tableau: Tableau, stage_v, etas) -> torch.Tensor:
    if tableau.mean_gain_update:
        gain = sum(b * e for b, e in zip(tableau.b, etas))
        half = x.dtype in _HALF
        mean_v = None
        for b, v in zip(tableau.b, stage_v):
            if b != 0.0:
                v = v.float() if half else v
                mean_v = b * v if mean_v is None else mean_v.add_(v, alpha=b)
        return _stage_state(x, [(mean_v, h * gain)])
    return _stage_state(x, [(v, h * b * e) for b, e, v in zip(tableau.b, etas, stage_v) if b != 0.0])
