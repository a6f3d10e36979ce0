"""Dormand–Prince 5(4) with per-sample step-size control.

Every sample carries its own time t_b and step h_b, and the error test is per sample, so a
sample's trajectory, step sequence and KPE do not depend on its batch-mates (as long as the
field's output for a row does not either: float32 GEMMs in a net round by batch size). Each iteration
evaluates only the samples still in flight; choosing them, the finite check and selecting the
accepted rows synchronise with the host three times per iteration (unavoidable for adaptive
stepping; the fixed-step solvers never do), four on a field singular at t = 1, whose try that
ends a sample's run takes the stages before t = 1 only (``tableau.DOPRI5_END``). The energy
integral never enters the error control.

A field that holds per-sample data (class labels, conditions, recorders) must see those rows
only: it provides ``select(active)``, returning the field restricted to the samples where the
(B,) bool mask ``active`` is True (``ClassifierFreeGuidance``, the adapters and
``PosteriorRecorder`` do). Fields without it are called on the active rows as they are.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..checks import add_note, declares_singular_at_one, optional_attribute
from ..norms import row_mean_square, squared_norm
from .energy import EnergyLedger, quadrature_weights, step_energy
from .fixed_step import Trace
from .guards import (NonFiniteVelocityError, StepLimitError, check_outputs_unchanged, check_state_unchanged,
                     check_velocity_output, first_velocity, stage_velocity, state_version)
from .shaping import KTS, gain_tau
from .tableau import DOPRI5, DOPRI5_END

SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
PROBE_CAP_SINGULAR = 0.5  # the starting-step probe's longest reach on a field singular at t = 1


def _rms(z: torch.Tensor) -> torch.Tensor:
    return row_mean_square(z.reshape(z.shape[0], -1).double()).sqrt()


def integrate_dopri5(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    gain: Callable[[torch.Tensor], torch.Tensor] | None,
    quadrature: str,
    split: float,
    keep_profile: bool,
    rtol: float,
    atol: float,
    first_step: float | None,
    max_steps: int,
    raise_nonfinite: bool,
    progress: float | None,
) -> Trace:
    """Integrate dx/dt = η(t)·v(x, t) from t = 0 to 1 with Dormand–Prince 5(4), each sample with
    its own time, step size and error test; ``sample(solver="dopri5")`` calls it after checking
    the arguments.

    Args:
        velocity: the field v(x, t), x (B', ...) and t (B',) in x0's dtype for the B' samples still
            in flight (through ``velocity.select(active)`` when the field has it).
        x0: (B, ...) the states at t = 0.
        gain: η(t) on a float64 (B',) tensor, or None for η = 1. A ``KTS`` makes steps land on its
            τ_split; another gain is checked to be finite and > 0 at every stage (ValueError).
        quadrature: "solver" or "left" (see :func:`~kinetic_fm.sampling.energy.quadrature_weights`).
        split: τ splitting early from late energy; steps land on it when it lies in (0, 1).
        keep_profile: keep each accepted step's applied-energy increment.
        rtol, atol: the per-sample error tolerances (RMS norm over a sample's coordinates).
        first_step: the first step of every sample, or None for the Hairer–Nørsett–Wanner estimate
            (one more field evaluation per sample).
        max_steps: the most attempted steps (rejected tries included) before ``StepLimitError``
            names the samples not yet at t = 1.
        raise_nonfinite: raise ``NonFiniteVelocityError`` on a non-finite ‖v‖² (formed in float64)
            at t = 0, or in a try that shorter retries cannot avoid; False flags the sample in
            ``Trace.bad_step`` / ``bad_time``, sets its x to NaN and stops it there.
        progress: seconds before a tqdm bar shows, or None for no bar: the least t reached by the
            unfinished samples, and how many have finished (``_TimeBar``; it adds no synchronisation).

    Returns:
        :class:`~kinetic_fm.sampling.fixed_step.Trace` with per-sample ``nfe`` and ``steps`` (B,),
        ``step_times`` (B, max steps + 1) float64 NaN-padded and ``profile`` (B, max steps)
        zero-padded (or None).
    """
    tab = DOPRI5
    batch, device, dtype = x0.shape[0], x0.device, x0.dtype
    weights = quadrature_weights(quadrature, tab.b)
    # On a field singular at t = 1 (v ~ 1/(1 − t), clamped there), a step that ends the run at
    # t = 1 uses DOPRI5_END: the first five stages (c ≤ 8/9) with third-order weights and their
    # own error estimate, never the two stages at t = 1, where the clamped field is not the
    # trajectory's limit (the fixed-step solvers' end tableau, fixed_step.step_tableaus).
    end_tab = DOPRI5_END if declares_singular_at_one(velocity) else None
    end_weights = quadrature_weights(quadrature, end_tab.b) if end_tab is not None else None
    eta_of = (lambda t: lane_safe(_tensor_gain(gain), t, 0.5)) if gain is not None else torch.ones_like

    ledger = EnergyLedger.zeros(batch, device)
    bad_step = torch.full((batch,), -1, dtype=torch.int64, device=device)
    bad_time = torch.full((batch,), float("nan"), dtype=torch.float64, device=device)
    t = torch.zeros(batch, dtype=torch.float64, device=device)
    steps = torch.zeros(batch, dtype=torch.int64, device=device)
    nfe = torch.zeros(batch, dtype=torch.int64, device=device)
    capacity = 64
    profile = torch.zeros(batch, capacity, dtype=torch.float64, device=device) if keep_profile else None
    step_times = torch.full((batch, capacity + 1), float("nan"), dtype=torch.float64, device=device)
    step_times[:, 0] = 0.0

    select = optional_attribute(velocity, "select")
    call = stage_velocity(velocity)   # dopri5's own times lie in [0, 1]: an analytic field need not check them
    check_gains = gain is not None and not isinstance(gain, KTS)
    # A KTS gain (or one declaring tau_split) has a kink at τ (a jump for the constant forms): steps
    # land on τ, never across it, and a step ending there takes η's left limit, so the error control
    # sees a smooth problem.
    # Steps land on the early/late split too, so early and late part exactly there (up to each
    # step's quadrature error) rather than by whole steps; under a KTS whose τ is not the split, on both.
    tau = gain_tau(gain)
    below_tau = math.nextafter(tau, 0.0) if tau is not None else None
    stops = sorted({s for s in (tau, float(split)) if s is not None and 0.0 < s < 1.0})

    def f(x: torch.Tensor, tt: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        field = call if active is None or select is None else select(active)
        # a copy: tt is the solver's own clock (a stage's end time becomes the sample's time), and
        # a net that rescales or clamps its t in place would move it
        try:
            v = field(x, tt.to(dtype, copy=True))
            check_velocity_output(v, x, " during dopri5's steps", field=velocity)  # metadata only, no sync
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            if active is not None and select is None and x.shape[0] < batch:
                add_note(err, f"dopri5 calls the velocity with only the {x.shape[0]} of {batch} samples still "
                             "running: per-sample inputs held in a closure (lambda x, t: net(x, t, y)) no longer "
                             "line up; pass them as kfm.ModelXT(net, y=y, per_sample=['y']), or give the velocity a "
                             "select(active) method (kfm.sample's docstring)")
            raise
        return v

    read_after = [tab.read_after(j) for j in range(tab.stages)]
    x = x0.clone()
    version = state_version(x)
    k1 = first_velocity(f, x, t.clone(), velocity)  # not the time buffer itself, which moves forward in place
    check_state_unchanged(x, version, 0, 0.0)
    k1 = k1.clone()  # updated in place below; never alias the caller's buffer
    nfe += 1
    h = _initial_step(f, x, t, k1, eta_of, rtol, atol, first_step, end_tab is not None)
    nfe += 0 if first_step is not None else 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    rejected = torch.zeros(batch, dtype=torch.bool, device=device)  # the last try of a sample failed its error test
    _flag_rows(squared_norm(k1), torch.arange(batch, device=device), 0, t, bad_step, bad_time, done, raise_nonfinite)

    bar = _TimeBar(batch, progress, device) if progress is not None else None
    iteration = 0
    while True:
        if bar is not None:
            bar.post(t, done)  # queued before the nonzero below, whose synchronisation it rides on
        rows = torch.nonzero(~done).squeeze(1)
        n_active = rows.numel()  # a synchronisation (nonzero), like the accepted rows' below
        if bar is not None:
            bar.show(batch - n_active)
        if n_active == 0:
            break
        iteration += 1
        if iteration > max_steps:
            raise StepLimitError(max_steps, rows.tolist())
        ta, xa = t[rows], x[rows]
        active = None if n_active == batch else ~done
        proposed = h[rows]
        ha = torch.minimum(proposed, 1.0 - ta)
        if stops:
            stop = torch.full_like(ta, stops[-1])  # each sample's next stop
            for s in stops[-2::-1]:
                stop = torch.where(ta < s, s, stop)
            before = ta < stops[-1]
            ha = torch.where(before, torch.minimum(ha, stop - ta), ha)
            at_stop = before & (ha >= stop - ta)
        last = ha >= 1.0 - ta
        t_end = torch.where(last, torch.ones_like(ta), ta + ha)
        if stops:
            t_end = torch.where(at_stop, stop, t_end)
        before_tau = ta < tau if tau is not None else None
        kv = [k1[rows]]
        versions = [None]  # a copy of k1's rows: no field reaches it
        etas = [eta_of(ta)]
        norms = [squared_norm(kv[0])]
        ending = last if end_tab is not None else None  # rows whose try takes DOPRI5_END's stages only
        for j in range(1, tab.stages):
            tj = t_end if tab.c[j] == 1.0 else ta + tab.c[j] * ha
            xj = xa
            for l, a_jl in enumerate(tab.a[j]):
                if a_jl != 0.0:
                    xj = xj + _bcast(ha * a_jl * etas[l], xa) * kv[l]
            if ending is not None and j == end_tab.stages:
                # one synchronisation, on singular fields only: the rows that take the stages at t_end
                going_on = torch.nonzero(~ending).squeeze(1)
                calls_all = going_on.numel() == n_active
            if ending is not None and j >= end_tab.stages and not calls_all:
                v = _stage_on_rows(f, xj, tj, going_on, rows, batch)  # zeros on the ending rows
                versions_v = None  # a copy: the field never holds it
            else:
                v = f(xj, tj, active)
                versions_v = state_version(v)
            check_outputs_unchanged(kv, versions, read_after[j], iteration)
            kv.append(v)
            versions.append(versions_v)
            etas.append(eta_of(tj if tau is None else torch.where(before_tau & (tj >= tau), below_tau, tj)))
            norms.append(squared_norm(v))
        if ending is None:
            nfe.index_add_(0, rows, torch.full_like(rows, tab.stages - 1))
        else:
            nfe.index_add_(0, rows, torch.where(ending, end_tab.stages - 1, tab.stages - 1))

        x_new, err = _update(tab, xa, ha, etas, kv)
        if ending is not None:
            x_end, err_end = _update(end_tab, xa, ha, etas, kv)
            ending_b = _bcast(ending, xa)
            x_new, err = torch.where(ending_b, x_end, x_new), torch.where(ending_b, err_end, err)
        scale = atol + rtol * torch.maximum(xa.abs(), x_new.abs())
        ratio = _rms(err / scale)

        finite = torch.isfinite(ratio)
        for n in norms:
            finite &= torch.isfinite(n)
        all_ok = finite.all()
        if check_gains:  # a custom gain may be NaN or <= 0 somewhere (a KTS is > 0 by construction)
            gains_ok = torch.stack([(e > 0) & torch.isfinite(e) for e in etas]).all()
            all_ok = all_ok & gains_ok
        if not bool(all_ok):  # one synchronisation for both checks
            if check_gains and not bool(gains_ok):
                raise ValueError(f"shaping gave a gain that is not finite and > 0 at t in "
                                 f"[{float(ta.min()):g}, {float(t_end.max()):g}]; a gain must be finite and > 0")
            # A non-finite try is rejected and retried 5× shorter, as SciPy's RK45 does (a long
            # try may leave the field's domain, e.g. sqrt(x) past x = 0, while the path stays in
            # it); the sample fails only when the step can shrink no further.
            exhausted = ~finite & (ha < _min_step(ta))
            bad_at = _first_bad_stage_time(norms, [ta] + [ta + c * ha for c in tab.c[1:]], t_end, tab.c)
            _flag_rows(torch.where(exhausted, float("nan"), 0.0), rows, steps[rows], bad_at, bad_step, bad_time, done,
                       raise_nonfinite)
            ratio = torch.where(finite, ratio, float("inf"))
        accept = (ratio <= 1.0) & finite

        applied, raw = step_energy(ha, etas, norms, weights)
        if ending is not None:
            applied_end, raw_end = step_energy(ha, etas[:end_tab.stages], norms[:end_tab.stages], end_weights)
            applied, raw = torch.where(ending, applied_end, applied), torch.where(ending, raw_end, raw)
        acc = torch.nonzero(accept).squeeze(1)  # one synchronisation; a mask per array was one each
        acc_rows, acc_ta, acc_applied = rows[acc], ta[acc], applied[acc]
        ledger.add(acc_applied, raw[acc], acc_ta < split, acc_ta, rows=acc_rows)
        col = steps[acc_rows]
        if iteration + 1 > capacity:  # a sample has at most `iteration` accepted steps
            step_times = torch.cat([step_times, step_times.new_full((batch, capacity), float("nan"))], 1)
            if profile is not None:
                profile = torch.cat([profile, profile.new_zeros(batch, capacity)], 1)
            capacity *= 2
        if profile is not None:
            profile[acc_rows, col] = acc_applied
        step_times[acc_rows, col + 1] = t_end[acc]
        steps.index_add_(0, acc_rows, torch.ones_like(acc_rows))

        acc_b = _bcast(accept, xa)
        x[rows] = torch.where(acc_b, x_new, xa)
        k1[rows] = torch.where(acc_b, kv[-1], kv[0])
        t[rows] = torch.where(accept, t_end, ta)
        factor = _step_factor(ratio, tab.order)
        if ending is not None:  # a rejected end try: its estimate is of order 2, local error ∝ h³
            factor = torch.where(ending, _step_factor(ratio, end_tab.order), factor)
        # a step accepted after a rejection does not grow the next one (Hairer–Nørsett–Wanner
        # II.4; SciPy's RK45 too): the error just seen was the controller's misjudgement
        retried = rejected[rows]
        factor = torch.where(accept & retried, factor.clamp(max=1.0), factor)
        rejected[rows] = ~accept
        h_next = ha * factor  # a non-finite try's ratio is inf: factor MIN_FACTOR
        if stops:
            # A step cut short to land on τ (or the split) has a tiny error (its growth held at ×10: a ratio below
            # 6e-6, or rounding), and growing ×10 a step from there took ~log10(proposed / ha)
            # steps to get back (τ = 1e-300: 300 steps on a straight line plain FM crosses in 3;
            # τ = 1e-9, or a sample that came within 1e-9 of τ: 8 more). Such a step resumes the
            # step proposed before the cut, from the error of the last full step. Only a step cut to
            # under a tenth of its proposal, whose growth was held at ×10, steps otherwise.
            regrow = accept & at_stop & (factor == MAX_FACTOR)
            h_next = torch.where(regrow, torch.maximum(h_next, proposed), h_next)
        h[rows] = h_next
        done[rows] = done[rows] | (accept & last)

    if bar is not None:
        bar.close()
    width = int(steps.max())
    # a flagged sample stopped where its last accepted step left it, mid-way: its x is no state at
    # t = 1, and the fixed-step solvers' is NaN already (a filter on isfinite(x) kept it)
    x = torch.where(_bcast(bad_step >= 0, x), float("nan"), x)
    return Trace(
        x=x,
        ledger=ledger,
        profile=profile[:, :width] if profile is not None else None,
        step_times=step_times[:, : width + 1],
        nfe=nfe,
        steps=steps,
        bad_step=bad_step,
        bad_time=bad_time,
    )


class _TimeBar:
    """dopri5's tqdm bar: the least time t reached by the batch's unfinished samples, over [0, 1]
    in steps of 1/``MARKS``, with the count of finished samples beside it.

    Samples that finish together (a batch of one field's samples often does) left a bar of finished
    samples at 0 until the batch ended; the least t moves with every accepted step of the slowest
    sample, and never back (a sample's t only grows, and a finished one leaves the minimum).
    ``post`` queues the minimum on the device before the loop's first synchronisation (the nonzero
    of the unfinished rows) and ``show`` reads it after it: on CUDA through a non-blocking copy
    into pinned host memory, so the bar adds no synchronisation; on the CPU a read is free (on
    another accelerator, one small read per iteration, after the nonzero has drained its queue).
    """

    MARKS = 1000  # t shows to 3 decimals

    def __init__(self, batch: int, delay: float, device: torch.device):
        from tqdm.auto import tqdm

        self.batch = batch
        self.bar = tqdm(total=1.0, desc="dopri5 sampling", leave=False, delay=delay,
                        bar_format="{desc}: t {n:.3f}/1 |{bar}| [{elapsed}<{remaining}{postfix}]")
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.host = _pinned_scalar()
            self.copied = torch.cuda.Event()
        self.least: torch.Tensor | None = None

    def post(self, t: torch.Tensor, done: torch.Tensor) -> None:
        """Queue min(t) over the samples not ``done`` ((B,) float64 and bool; inf when all are)."""
        least = torch.where(done, math.inf, t).min()
        if self.cuda:
            self.host.copy_(least.reshape(1), non_blocking=True)
            self.copied.record(torch.cuda.current_stream(t.device))  # t's stream, not the current device's
        else:
            self.least = least

    def show(self, n_done: int) -> None:
        """Move the bar to the posted least t (to 1 when every sample is done) and name ``n_done``."""
        if self.cuda:
            self.copied.synchronize()  # done already: the nonzero after post waited for the stream
            least = float(self.host[0])
        else:
            least = float(self.least)
        # floor to the resolution: the bar redraws when the slowest sample passes a mark, and 0.9999
        # reads 0.999, never 1, until the batch is done (t < 1 gives t·1000 < 1000 in float64 too)
        reached = 1.0 if n_done == self.batch else math.floor(least * self.MARKS) / self.MARKS
        self.bar.set_postfix_str(f"{n_done}/{self.batch} samples done", refresh=False)
        if reached > self.bar.n:
            self.bar.update(reached - self.bar.n)  # update, not refresh: a refresh would draw before the delay

    def close(self) -> None:
        self.bar.close()


def _pinned_scalar() -> torch.Tensor:
    """A (1,) float64 tensor in page-locked host memory, which a non-blocking copy from CUDA fills
    without a synchronisation (into pageable memory the copy waits)."""
    return torch.empty(1, dtype=torch.float64, pin_memory=True)


def _step_factor(ratio: torch.Tensor, order: int) -> torch.Tensor:
    """(B',) factor for the next step from the error ratios of a pair whose estimate ∝ h^order."""
    return torch.where(
        ratio == 0.0,
        torch.full_like(ratio, MAX_FACTOR),
        (SAFETY * lane_safe(lambda r: r.pow(-1.0 / order), ratio, 1.0)).clamp(MIN_FACTOR, MAX_FACTOR),
    )


def _update(tab, xa, ha, etas, kv) -> tuple[torch.Tensor, torch.Tensor]:
    """The new state and the error estimate of ``tab``'s step from its stages ``kv``, (B', ...)."""
    x_new, err = xa, torch.zeros_like(xa)
    for j in range(tab.stages):
        if tab.b[j] != 0.0:
            x_new = x_new + _bcast(ha * tab.b[j] * etas[j], xa) * kv[j]
        if tab.b_error[j] != 0.0:
            err = err + _bcast(ha * tab.b_error[j] * etas[j], xa) * kv[j]
    return x_new, err


def _stage_on_rows(f, xj, tj, going_on, rows, batch) -> torch.Tensor:
    """A stage evaluated on the in-flight rows ``going_on`` (indices into ``rows``) only: the field
    sees them as the samples ``rows[going_on]`` of ``batch``; the others' velocity is zero (unread)."""
    if going_on.numel() == 0:
        return torch.zeros_like(xj)
    mask = torch.zeros(batch, dtype=torch.bool, device=rows.device)
    mask[rows[going_on]] = True
    v_on = f(xj[going_on], tj[going_on], mask)
    return v_on.new_zeros(xj.shape).index_copy_(0, going_on, v_on)


def lane_safe(fn: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, fill: float) -> torch.Tensor:
    """Apply an element-wise transcendental ``fn`` to a (B',) vector so each element's result does
    not depend on B'.

    On the CPU, ATen runs full SIMD blocks vectorised and the remainder through a scalar loop, and
    the two paths of exp/log/pow may differ in the last bit. Padding to a multiple of 64 sends
    every element through the vector path, so a sample's step control is batch-invariant.
    """
    n = v.shape[0]
    if v.device.type != "cpu" or n % 64 == 0:
        return fn(v)
    padded = torch.cat([v, v.new_full((64 - n % 64,), fill)])
    return fn(padded)[:n]


def _tensor_gain(gain: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """η(t) on a (B',) tensor of times as a (B',) float64 tensor (a constant gain is broadcast).
    A KTS is evaluated without its range check (the times are dopri5's own, in [0, 1]): that
    check would be a host synchronisation at every stage on an accelerator."""
    if isinstance(gain, KTS):
        gain = gain.unchecked

    def eta(t: torch.Tensor) -> torch.Tensor:
        try:
            value = gain(t)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError("dopri5 evaluates the shaping gain on a tensor of per-sample times; "
                            f"this gain failed on one ({err}); write it with torch operations") from err
        value = torch.as_tensor(value, dtype=torch.float64, device=t.device)
        if value.numel() != 1 and value.shape != t.shape:   # expand_as's message named padded sizes
            # n, not a size: the times may be padded (lane_safe), which the caller never sees
            shape = ", ".join("n" if i == 0 and size == t.shape[0] else str(size) for i, size in enumerate(value.shape))
            raise ValueError("dopri5 evaluates the shaping gain on a (n,) tensor of per-sample times and expects "
                             f"one gain per time, shape (n,), or one number; this gain returned shape ({shape}"
                             f"{',' if value.dim() == 1 else ''})")
        return value.reshape(()).expand_as(t) if value.numel() == 1 else value
    return eta


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B',) per-sample factor reshaped to broadcast against (B', ...) and cast to its dtype."""
    v = v.reshape(-1, *([1] * (like.dim() - 1)))
    return v if v.dtype == torch.bool else v.to(like.dtype)


def _initial_step(f, x, t, k1, eta_of, rtol, atol, first_step, singular_at_one=False) -> torch.Tensor:
    """Per-sample starting step (Hairer, Nørsett & Wanner, II.4), or ``first_step`` for all.

    The estimate probes the field once, an Euler step h0 ahead, h0 ≤ 1 (the field's domain); on a
    field singular at t = 1, h0 ≤ ½, so the probe stays where the field is its trajectory's
    velocity (at t = 1 a strict (y − x)/(1 − t) gave 0/0 and every sample started at 1e-6)."""
    batch = x.shape[0]
    if first_step is not None:
        return torch.full((batch,), float(first_step), dtype=torch.float64, device=x.device)
    f0 = _bcast(eta_of(t), x) * k1
    # a 16-bit state's x/scale overflowed (|x|/atol passes 65504 from |x| ≈ 0.65), and every
    # sample started at the 1e-6 fallback: the ratios are formed in float32 at least
    wide = torch.promote_types(x.dtype, torch.float32)
    scale = atol + rtol * x.abs().to(wide)
    d0, d1 = _rms(x.to(wide) / scale), _rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    # a large state under a small velocity (|x0| ≥ 100·|v|) gives 0.01·d0/d1 ≥ 1
    h0 = h0.clamp(max=PROBE_CAP_SINGULAR if singular_at_one else 1.0)
    t1 = t + h0
    f1 = _bcast(eta_of(t1), x) * f(x + _bcast(h0, x) * f0, t1)
    d2 = _rms((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     lane_safe(lambda d: (0.01 / d).pow(1 / 5), dmax, 1.0))
    h = torch.minimum(100 * h0, h1).clamp(max=1.0)
    # extreme tolerances (rtol = atol = 1e-100) make the estimate inf/inf: start small instead
    return torch.where(torch.isfinite(h) & (h > 0), h, torch.full_like(h, 1e-6))


def _min_step(t: torch.Tensor) -> torch.Tensor:
    """The shortest step a non-finite try is retried with: ten float64 spacings of t (SciPy's
    RK45 rule), with t floored at 2**-10 so a failure at t = 0 ends after ~25 tries, not ~460."""
    t = t.clamp(min=2.0 ** -10)
    return 10.0 * (torch.nextafter(t, torch.full_like(t, 2.0)) - t)


def _first_bad_stage_time(norms, times, t_end, c) -> torch.Tensor:
    """Per sample, the time of the first stage whose velocity was non-finite."""
    out = torch.full_like(t_end, float("nan"))
    for n, tj, cj in zip(norms, times, c):
        tj = t_end if cj == 1.0 else tj
        out = torch.where(torch.isnan(out) & ~torch.isfinite(n), tj, out)
    return torch.where(torch.isnan(out), t_end, out)


def _flag_rows(norm, rows, step, time, bad_step, bad_time, done, raise_nonfinite) -> None:
    bad = ~torch.isfinite(norm)
    if not bool(bad.any()):
        return
    bad_rows = rows[bad]
    step_b = step[bad] if isinstance(step, torch.Tensor) else torch.full_like(bad_rows, step)
    time_b = time[bad] if time.dim() else time
    if raise_nonfinite:  # named by the earliest time: the samples' steps do not line up in time
        time_b = time_b.expand_as(bad_rows)
        first = int(torch.argmin(time_b))
        raise NonFiniteVelocityError(int(step_b[first]), float(time_b[first]), bad_rows.tolist())
    bad_step[bad_rows] = step_b
    bad_time[bad_rows] = time_b.to(torch.float64)
    done[bad_rows] = True
