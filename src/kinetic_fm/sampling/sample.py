"""``kfm.sample``: integrate a flow-matching ODE while measuring each sample's kinetic energy."""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..checks import (SPLIT_PERCENT_FROM, as_scalar, caller_outside_the_package, check_device, check_flag,
                      check_integer, check_real, check_unit_number, declares, declares_singular_at_one, held_inside,
                      is_real, optional_attribute, start_run_of, wrapper_chain)
from .adaptive import integrate_dopri5
from .energy import QUADRATURES
from .fixed_step import integrate_fixed
from .grids import time_grid
from .guards import NonFiniteVelocityError, check_initial_state, velocity_as_found
from .noise import noise
from .result import SampleResult
from .shaping import KTS, gain_tau
from .tableau import FIXED_STEP, SOLVERS

if TYPE_CHECKING:
    import numpy as np

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NONFINITE_POLICIES = ("raise", "flag")
DEFAULT_SPLIT = 0.6  # τ splitting early from late energy where no KTS gives its own


@torch.no_grad()
def sample(
    velocity: Velocity,
    x0: torch.Tensor | None = None,
    *,
    seeds: Iterable[int] | torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    steps: int = 100,
    solver: str = "euler",
    grid: str | torch.Tensor | np.ndarray = "uniform",
    shaping: KTS | Callable | None = None,
    quadrature: str = "solver",
    profile: bool = False,
    split: float | None = None,
    on_nonfinite: str = "raise",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool | float | None = False,
) -> SampleResult:
    """Integrate dx/dt = η(t)·v(x, t) from t = 0 (noise) to t = 1 (data), per-sample KPE included.

    Args:
        velocity: callable ``v(x, t)`` with x (B, ...) and t (B,) of x's dtype; returns (B, ...).
            x is the sampler's state itself: a velocity that changes it in place is refused
            (ValueError), except under ``torch.inference_mode``, whose tensors cannot tell.
            dopri5 calls it with the B' ≤ B samples still in flight; a field holding per-sample
            data (labels, conditions) provides ``select(active)``, the field for the samples
            where the (B,) bool mask is True (``ClassifierFreeGuidance`` and the adapters do).
            dopri5 refuses a field that declares ``one_time_per_call`` (an adapter with
            ``time="shared"``): its net would see the first row's time for every row; and one
            with ``track_parts`` (``ClassifierFreeGuidance``'s part energies, which a rejected
            try restarts). A field must return a new tensor from each call (one that writes into
            an output the solver still reads is refused). A field with a ``start_run()`` method
            has it called once, after the arguments are checked and before the first velocity
            call (``PosteriorRecorder`` refuses there to record a second run over its first;
            ``ClassifierFreeGuidance`` restarts its part energies); the adapters, the guidance and
            ``as_model_wrapper`` pass it on to the field they wrap.
        x0: (B, ...) initial noise, a floating tensor (used as given: its dtype and device are the
            run's); or give ``seeds`` and ``shape`` to draw it with ``kfm.noise``.
        seeds: B integer seeds in [0, 2**32), one per sample: a list, range, generator (read once),
            NumPy array or 1-D integer tensor.
        shape: one sample's shape (without the batch dimension), with ``seeds``.
        steps: number of steps S for fixed-step solvers (ignored for a grid given as an array, and by
            dopri5: a SamplerSettingsWarning says so when it differs from its default and the grid's).
        solver: "euler" | "midpoint" | "heun" | "rk4" | "rk4_38" (fixed step; rk4_38 is Kutta's
            3/8 rule, torchdiffeq's "rk4") | "dopri5" (adaptive, per-sample step control).
        grid: "uniform" | "cosine" | a 1-D float tensor or NumPy array from 0 to 1 (fixed-step
            solvers only).
        shaping: a ``KTS`` gain (or any callable η(t) > 0 accepting floats and tensors); None = plain FM.
            Beyond calling it, the solvers read a KTS's ``tau_split``, where η has its kink: stages on
            τ take its sides, dopri5's steps land on it, and ``split`` defaults to it. A callable of
            yours around a KTS declares it the same way (``f.tau_split = kts.tau_split``); one that
            holds a KTS without declaring it (``lambda t: kts(t)``) is warned of (SamplerSettingsWarning).
        quadrature: "solver" (the solver's stage weights) or "left" (reference: first stage only,
            for fixed grids; with dopri5's few long steps a first-order sum, warned of).
        profile: keep the per-step applied-energy increments.
        split: τ at which energy is split into early/late; default the KTS τ_split, else 0.6.
            Fixed-step solvers split by step index (i < int(τ·S), the reference's rule); dopri5
            lands a step on a split in (0, 1), so early/late part there exactly (a split of 0 or
            1 adds no step, and gives SciPy RK45's step sequence without a KTS).
        on_nonfinite: "raise" (NonFiniteVelocityError naming step, t and samples) or "flag"
            (mark those samples in ``result.nonfinite``, give them NaN energies, go on). dopri5
            first rejects a non-finite try and retries it 5× shorter (SciPy's RK45 rule); a
            sample fails when the step falls below ten float64 spacings of its time (t floored at
            2⁻¹⁰), after ~90 attempted steps for a field failing from some t on, which count
            against ``max_steps``.
        rtol, atol, first_step, max_steps: dopri5 step control (per sample): rtol, atol > 0;
            first_step None (chosen) or in (0, 1]; max_steps ≥ 1 attempted steps, beyond which
            ``StepLimitError`` names the unfinished samples. Its steps land on ``split`` rather
            than cross it, so early/late part exactly there; under a KTS gain they land on
            τ_split too (η has a kink there, a jump for the constant forms, so x meets rtol), on
            both when an explicit split differs from τ_split. Each stop costs about one more
            step per sample; a step cut to under a tenth of its length to land on one is
            followed by the step proposed before the cut.
        dtype, device: for x0 drawn from seeds (default float32, CPU).
        progress: show a tqdm progress bar (True), none (False or None), or a number of seconds d >= 0:
            the bar appears only once the call has run d seconds, so short calls never draw one
            (``kfm sample`` passes 2 for its per-batch step bar). A fixed-step solver's bar counts
            steps; dopri5's shows the least t reached by the unfinished samples, to 1e-3, and how
            many samples have finished (they often finish together, at the end).

    Returns:
        :class:`SampleResult`: x (B, ...) at t = 1 in x0's dtype, and (B,) float64 energies on
        x0's device.

    Raises:
        ValueError: an argument out of range (each named), x0 with NaN/Inf, a velocity of the
            wrong shape, dtype or device. TypeError: a velocity or shaping that is not callable.
        NonFiniteVelocityError: NaN/Inf velocities under ``on_nonfinite="raise"``.
        StepLimitError: dopri5 needed more than ``max_steps`` steps.

    Fixed-step solvers never synchronise with the host inside the loop; energies accumulate on
    the device in float64 (squared norms of half-precision velocities in float32). Results do
    not depend on batch composition.

    The warnings on the call's settings (``kfm.SamplerSettingsWarning``: quadrature="left" under dopri5,
    an ignored setting, η(1) ≤ ½ on a singular field, a hidden KTS, a half-precision state) come after
    every check that can refuse the call, so a refused call warns of nothing.

    A network the velocity holds with dropout or batch norm in training mode is warned about
    (``kfm.TrainingModeWarning``) and run as it is; the buffers its modules in training mode update
    along the run (batch norm's running statistics) are put back when the run ends, by return,
    error or interrupt alike, so sampling leaves the network as it found it.

    A field whose velocity blows up at t = 1 may say so with an attribute ``singular_at_one =
    True`` (``EmpiricalFlow``, ``PointTarget``, ``DataPrediction`` do; adapters and
    ``ClassifierFreeGuidance`` pass it through). heun then takes its last step with Euler, as
    EDM-style samplers do, and rk4/rk4_38 with Heun's third-order method (which keeps them fourth
    order), instead of evaluating the field at t = 1. dopri5's try that would end a sample's run at
    t = 1 takes only its first five stages (c ≤ 8/9) with third-order weights, energy quadrature
    weights alike, and a second-order embedded estimate that still accepts or rejects it; a rejected
    end try retries shorter with dopri5 proper. Under a gain with η(1) ≤ ½ such a field's
    energy is infinite (near t = 1, y − x ∝ (1 − t)^η(1), so η²‖v‖² ∝ (1 − t)^(2η(1) − 2)) and
    ``kfm.sample`` warns for a KTS: the number it reports then grows with the steps. For ½ < η(1) < 1 it
    converges, at order 2η(1) − 1 rather than the solver's. (KTS's exponential landing has
    η(1) ≤ ½ from beta0 ≥ 1/(2(e^k − 1)), 0.026 at k = 3.)
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable as velocity(x, t), got {type(velocity).__name__}")
    # the run moves the buffers of a net in training mode (batch norm's running statistics) as any
    # forward pass does; they are put back when it ends, also on an error or an interrupt
    with velocity_as_found(velocity):
        x0, seed_tuple = _initial_state(x0, seeds, shape, dtype, device)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if quadrature not in QUADRATURES:
            raise ValueError(f"quadrature must be one of {QUADRATURES}, got {quadrature!r}")
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
        profile = check_flag("profile", profile)
        bar_delay = _bar_delay(progress)
        if shaping is not None and not callable(shaping):
            raise TypeError(f"shaping must be a KTS (or a callable gain), got {type(shaping).__name__}")
        split = check_unit_number("split", resolved_split(split, gain_tau(shaping)), percent_from=SPLIT_PERCENT_FROM)

        # checked whichever solver runs: a typo in a setting the chosen solver ignores is still a typo
        rtol, atol, first_step, max_steps = _check_tolerances(rtol, atol, first_step, max_steps)
        steps = check_integer("steps", steps, 1)
        if solver == "dopri5":
            if not (isinstance(grid, str) and grid == "uniform"):
                raise ValueError("grid applies to fixed-step solvers only; dopri5 chooses its own steps")
            if declares(velocity, "track_parts"):
                # a rejected try goes back in time, which restarts ClassifierFreeGuidance's part energies
                raise ValueError("track_parts is not supported with adaptive solvers (dopri5): its rejected tries "
                                 "restart the part energies; use a fixed-step solver, or track_parts=False")
            if declares(velocity, "one_time_per_call"):
                # every row would be integrated at the first row's time, without an error to show it
                raise ValueError(shared_time_refusal(velocity))
        else:
            grid = time_grid(grid, steps)   # as the tensor the loop steps along (a name or a tensor given)
        # after every check that can refuse the call: a refused call warns of nothing
        # the half-precision check reads the grid built above, not a second one built from it
        warn_of_settings(velocity, solver=solver, steps=steps, grid=grid, shaping=shaping, quadrature=quadrature,
                         dtype=x0.dtype, rtol=rtol, atol=atol, first_step=first_step, max_steps=max_steps)
        if solver == "dopri5":
            start_run_of(velocity)  # told on the host, a field needs no look at its times in the loop
            trace = integrate_dopri5(
                velocity, x0, shaping, quadrature, split, profile, rtol, atol, first_step, max_steps,
                raise_nonfinite=on_nonfinite == "raise", progress=bar_delay,
            )
        else:
            start_run_of(velocity)
            trace = integrate_fixed(
                velocity, x0, grid, FIXED_STEP[solver], shaping, quadrature, split, profile, bar_delay
            )
            if on_nonfinite == "raise":
                bad = trace.bad_step >= 0
                if bool(bad.any()):  # one synchronisation, after the loop
                    first = int(trace.bad_step[bad].min())
                    rows = torch.nonzero(trace.bad_step == first).squeeze(1)
                    raise NonFiniteVelocityError(first, float(trace.bad_time[rows[0]]), rows.tolist())

        nonfinite = trace.bad_step >= 0
        ledger = trace.ledger
        energies = {}
        for name in ("kpe", "kpe_raw", "early", "late", "peak", "peak_time"):  # a NaN peak has no time
            energies[name] = torch.where(nonfinite, math.nan, getattr(ledger, name))
        return SampleResult(
            x=trace.x,
            **energies,
            profile=trace.profile,
            times=trace.step_times,
            nfe=trace.nfe,
            steps=trace.steps,
            nonfinite=nonfinite,
            nonfinite_step=trace.bad_step,
            solver=solver,
            quadrature=quadrature,
            split=float(split),
            seeds=seed_tuple,
            shaped=shaping is not None,
        )


@dataclass(frozen=True)
class _SharedTimeHolder:
    """Where the adapter with ``time="shared"`` sits in a velocity: its ``path`` ("velocity",
    "velocity.inner.model"), the ``adapter`` itself, and whether a wrapper around it sets a time
    of its own (``outer_time``: a ``ModelXT(..., time="scalar")`` around it, whose time the
    shared one inside does not follow)."""

    path: str
    adapter: object
    outer_time: bool


def _shared_time_holder(velocity: object, name: str = "velocity") -> _SharedTimeHolder | None:
    """Where the adapter with ``time="shared"`` sits in ``velocity``, for an error to name it: the
    chain through the attributes the adapters, a guidance and a ``ModelWrapper`` hold what they
    wrap in (``inner``, ``model``, ``velocity``), followed where what they hold declares
    ``one_time_per_call``; ``name`` starts the path. None where no object on it has
    ``time="shared"``."""
    def sharing_part(obj: object) -> tuple[str, object] | None:
        return next(((attribute, inner) for attribute in ("inner", "model", "velocity")
                     if (inner := optional_attribute(obj, attribute)) is not None
                     and declares(inner, "one_time_per_call")), None)

    outer_time = False
    for path, obj in wrapper_chain(velocity, sharing_part, name):
        time = optional_attribute(obj, "time")
        if time == "shared":
            return _SharedTimeHolder(path, obj, outer_time)
        outer_time = outer_time or isinstance(time, str)
    return None


class SamplerSettingsWarning(UserWarning):
    """``kfm.sample``'s warning about the settings of a call it runs: quadrature='left' under dopri5, a
    KTS gain with η(1) ≤ ½ on a field singular at t = 1, a setting the solver ignores, a KTS hidden in
    a function, a half-precision state. A UserWarning; :func:`warn_of_settings` gives them without
    sampling (``kfm sample`` says them once per run, not once per batch or rank)."""


def warn_of_settings(
    velocity: Velocity,
    *,
    solver: str = "euler",
    steps: int = 100,
    grid: str | torch.Tensor | np.ndarray = "uniform",
    shaping: KTS | Callable | None = None,
    quadrature: str = "solver",
    dtype: torch.dtype = torch.float32,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
) -> None:
    """Warn (:class:`SamplerSettingsWarning`) as ``kfm.sample(velocity, ...)`` with these settings,
    which it has checked, does before it samples; ``dtype`` is the state's (x0's). Nothing is sampled.
    The settings are not checked here, with one exception: a fixed-step solver on a half-precision state
    reads the time grid (:func:`time_grid`: a name built, an array or a tensor validated and read as
    given; ``kfm.sample`` passes the tensor it built) for its resolution check, which raises ValueError
    on a ``grid`` or ``steps`` that ``kfm.sample`` would refuse. Other settings it refuses give no
    meaningful warnings."""
    if gain_tau(shaping) is None:   # a KTS, or a gain that declares its τ, hides none
        _warn_about_a_hidden_kts(shaping)
    _warn_about_infinite_energy(velocity, shaping)
    _warn_about_ignored_settings(solver, steps, grid, rtol=rtol, atol=atol, first_step=first_step, max_steps=max_steps)
    if solver == "dopri5":
        _warn_left_quadrature_over_long_steps(quadrature)
        _warn_adaptive_half_precision(dtype)
    elif torch.finfo(dtype).bits <= 16:   # the one check that reads the grid, built only for it
        _check_state_resolution(time_grid(grid, steps), dtype)


def shared_time_refusal(velocity: object, name: str = "velocity", time_given: bool = False) -> str:
    """dopri5's refusal of ``velocity``, which declares ``one_time_per_call`` (one time for the whole
    batch), naming the adapter with time='shared' by its path from ``name``, the argument the user
    passed it as; ``time_given``: a time was given to a wrapper around ``velocity`` (which does not
    change the inner adapter's)."""
    holder = _shared_time_holder(velocity, name)
    if holder is None or holder.adapter is velocity:
        where = f"{name} passes one time for the whole batch (an adapter with time='shared')"
    else:
        default = "; from_model_wrapper's default" if declares(holder.adapter, "calls_model_by_name") else ""
        outer = (", which a time given to a wrapper around it does not change"
                 if holder.outer_time or time_given else "")
        where = (f"{holder.path} is a {type(holder.adapter).__name__} with time='shared' (one time for the whole "
                 f"batch{default}){outer}")
    return (f"{where}, but dopri5 holds each sample at its own time; build it with time='scalar' (one net call "
            "per distinct time) or time='batch' (a net that takes per-sample times)")


def resolved_split(split, tau: float | None):
    """The early/late split τ a run takes (``kfm.sample``, a resumed ``kfm sample``, a study's cached
    run): ``split`` where given, else the gain's τ (``tau``, as
    :func:`~kinetic_fm.sampling.shaping.gain_tau` reads it; None for none), else
    :data:`DEFAULT_SPLIT`. ``split`` is returned as given, unchecked."""
    if split is not None:
        return split
    return tau if tau is not None else DEFAULT_SPLIT


def _initial_state(x0, seeds, shape, dtype, device) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    if x0 is not None:
        if seeds is not None or shape is not None:
            raise ValueError("give either x0 or seeds and shape, not both")
        asked = check_device(device)
        other_device = asked is not None and (asked.type, asked.index or 0) != (x0.device.type, x0.device.index or 0)
        if (dtype is not None and dtype != x0.dtype) or other_device:
            raise ValueError(f"dtype and device apply to noise drawn from seeds; x0 ({x0.dtype}, {x0.device}) "
                             "is used as given (convert it with x0.to(...))")
        check_initial_state(x0)
        return x0, None
    if seeds is None or shape is None:
        raise ValueError("give x0, or both seeds and shape to draw the initial noise")
    if isinstance(seeds, torch.Tensor):
        seed_list = seeds.tolist()
    elif isinstance(seeds, Iterator):
        seed_list = list(seeds)  # read once: a generator would give noise() its seeds and the result none
    else:
        seed_list = seeds
    # noise() checks the seeds as given: int() here turned 2.7 into 2 and True into 1
    x0 = noise(seed_list, shape, dtype=torch.float32 if dtype is None else dtype, device=device)
    return x0, tuple(int(s) for s in seed_list)


def _check_state_resolution(grid: torch.Tensor, dtype: torch.dtype) -> None:
    """Warn when a half-precision state (float16, bfloat16) is stepped finer than it resolves:
    a step moves x by about h·|v| ~ |x|·h, and with the grid's median step h below two ulps of 1
    (more than 64 uniform bfloat16 steps, 512 float16) updates round away and the samples drift
    or stall (bfloat16 at 1000 steps ended 47 % of the way to the data, silently; its grid times
    collide too). The median, not the smallest step: a cosine grid's short end steps are harmless.
    ``grid``: the (steps + 1,) grid :func:`time_grid` returns; the caller builds it for half
    precision only."""
    eps = torch.finfo(dtype).eps
    typical = float((grid[1:] - grid[:-1]).median())
    if typical < 2 * eps:
        warnings.warn(
            f"the grid's median step {typical:.3g} is below twice {dtype}'s resolution {eps:.3g}: the state's "
            "updates round coarsely or away and the samples can drift or stall; use fewer steps, or keep x0 in "
            "float32 and lower the precision inside the velocity call "
            "(README: 'A network in reduced precision')", SamplerSettingsWarning,
            stacklevel=caller_outside_the_package())


def _warn_adaptive_half_precision(dtype: torch.dtype) -> None:
    """Warn when dopri5 integrates a half-precision state (float16, bfloat16): its stage times
    round to the state's dtype, so times near 1 collapse onto 1 (bfloat16 reads every time above
    1 − 2**-9 as 1), where a field singular at t = 1 is clamped at eps; and its error estimates,
    differences of rounded stages, cannot meet a tolerance finer than the rounding. On a 16-d
    PointTarget over 64 samples (benchmarks/half_precision_accuracy.py) the KPE came out up to 50 %
    off in bfloat16 at rtol 1e-5 (31 % at 1e-2), its end points up to 0.12 off, and up to 6 % off in
    float16 at rtol 1e-2 (0.4 % at 1e-5), where Euler's 20 steps were within 1.2 %."""
    if torch.finfo(dtype).bits > 16:
        return
    warnings.warn(
        f"dopri5 on a {dtype} state: its stage times round to {dtype} (times near 1 read as 1) and its "
        "error control cannot see below the state's rounding, so energies and end points can be far off "
        "(a 16-d PointTarget's KPE up to 50 % off in bfloat16); keep x0 in float32 and lower the precision inside the "
        "velocity call (README: 'A network in reduced precision'), or use a fixed-step solver",
        SamplerSettingsWarning, stacklevel=caller_outside_the_package())


# the settings only one kind of solver reads, with sample()'s defaults
ADAPTIVE_ONLY = {"rtol": 1e-5, "atol": 1e-5, "first_step": None, "max_steps": 10_000}
FIXED_ONLY = {"steps": 100}


def _warn_about_ignored_settings(solver: str, steps: int, grid, **adaptive) -> None:
    """Warn when a setting the chosen solver ignores was changed from its default, as ``kfm
    sample`` refuses it: ``solver="euler", rtol=1e-8`` ran 100 Euler steps without a word (a
    misspelt solver name looks like that). A grid given as an array sets the steps: ``steps``
    changed from its default and unlike the grid's is ignored too (``steps=50`` beside an
    11-point grid ran 10 steps). Only a 1-D tensor or array, the grids ``kfm.sample`` takes besides a
    name, has steps to compare: anything else is left to the refusal of whoever reads it."""
    import numpy as np

    grid_steps = grid.shape[0] - 1 if isinstance(grid, (torch.Tensor, np.ndarray)) and grid.ndim == 1 else None
    if solver == "dopri5":
        changed = ["steps"] if steps != FIXED_ONLY["steps"] else []
        reads = "dopri5 chooses its own steps"
    else:
        if steps != FIXED_ONLY["steps"] and grid_steps not in (None, steps):
            warnings.warn(f"steps is ignored by solver={solver!r}: the grid given has {grid_steps} steps, not "
                          f"{steps}", SamplerSettingsWarning, stacklevel=caller_outside_the_package())
        changed = [name for name, value in adaptive.items() if value != ADAPTIVE_ONLY[name]]
        reads = "kfm.sample reads them only with solver='dopri5'"
    if changed:
        warnings.warn(f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} ignored by solver={solver!r}: "
                      f"{reads}", SamplerSettingsWarning, stacklevel=caller_outside_the_package())


def _warn_about_a_hidden_kts(shaping) -> None:
    """Warn when the gain is a function around a KTS (``lambda t: kts(t)``, a partial, a bound
    method such as ``kts.unchecked``, a callable object whose ``self.kts`` is one; see
    :func:`held_inside`) that does not declare its ``tau_split``: the solvers see a
    smooth callable, so steps no longer treat τ as η's kink and the split defaults to 0.6. On
    tests/test_shaping.py's case (a τ = 0.5 constant-form gain, v = cos 3t − x, 4 samples in 3-d)
    that moved rk4's 10-step x by 3.4e-3 and dopri5's by 9.4e-4 (62–80 field evaluations for 32–38),
    and single samples' early energy by 3–19 %, without a word. Called for a gain that declares no
    τ (``gain_tau`` None)."""
    if shaping is None:
        return
    kts = held_inside(shaping, KTS)
    if kts is not None:
        warnings.warn(f"shaping is a {type(shaping).__name__} around a KTS (tau_split = {kts.tau_split:g}) that does "
                      "not declare its tau_split, so the solvers take the gain to be smooth: steps no longer treat "
                      "τ as η's kink (dopri5 steps across it; a step ending on τ takes the landing gain) and the "
                      f"early/late split defaults to {DEFAULT_SPLIT:g}; pass the KTS itself, or declare τ on your "
                      "function (f.tau_split = kts.tau_split)", SamplerSettingsWarning,
                      stacklevel=caller_outside_the_package())


def _warn_about_infinite_energy(velocity, shaping) -> None:
    """Warn when a field singular at t = 1 runs under a KTS gain with η(1) ≤ ½, where its energy is
    infinite: with β0 = 0.03 (η(1) = 0.43) a PointTarget's KPE read 2.65 at 100 steps and 2.99 at
    10,000, still growing. Another gain is not called at t = 1, which no solver asks of it on
    such a field (it may not be defined there)."""
    if not isinstance(shaping, KTS) or not declares_singular_at_one(velocity):
        return
    end = shaping(1.0)
    if end <= 0.5:
        warnings.warn(f"the shaping gain has η(1) = {end:.3g} ≤ 1/2 and the field is singular at t = 1: its kinetic "
                      "energy is infinite there (η²‖v‖² grows as (1 − t)^(2η(1) − 2)), so the KPE reported depends on "
                      "the grid and grows with the steps; use a gain with η(1) > 1/2 (a smaller beta0)",
                      SamplerSettingsWarning, stacklevel=caller_outside_the_package())


def _warn_left_quadrature_over_long_steps(quadrature: str) -> None:
    """quadrature="left" is the reference's rule for its fixed grids; over dopri5's few long steps
    the power taken at each step's start is a first-order sum: on dx/dt = x + 2t the KPE came out
    37 % low at the default tolerances (5.97 for 9.54) while x was right to 7e-6."""
    if quadrature == "left":
        warnings.warn("quadrature='left' takes each step's power at its start, the reference's rule for fixed "
                      "grids; over dopri5's few long steps that is a first-order sum and the energies can be "
                      "far off (tens of %) while x is accurate: use quadrature='solver' with dopri5",
                      SamplerSettingsWarning, stacklevel=caller_outside_the_package())


def _check_tolerances(rtol: float, atol: float, first_step: float | None, max_steps: int):
    """The dopri5 settings as Python numbers (0-d tensors and NumPy scalars unwrapped), checked."""
    rtol, atol, first_step = (as_scalar(v) for v in (rtol, atol, first_step))
    if not (is_real(rtol, finite=True) and rtol > 0):
        raise ValueError(f"rtol must be a positive finite number, got {rtol!r}")
    if not (is_real(atol, finite=True) and atol > 0):
        raise ValueError(f"atol must be a positive finite number, got {atol!r}")
    if first_step is not None and not (is_real(first_step, finite=True) and 0 < first_step <= 1):
        raise ValueError(f"first_step must be None or a number in (0, 1], got {first_step!r}")
    return rtol, atol, first_step, check_integer("max_steps", max_steps, 1)


def _bar_delay(progress) -> float | None:
    """``progress`` as the seconds before the bar appears (a real number >= 0, as :func:`check_real` reads
    one: a 0-d tensor too), or None for no bar (None, False); True is 0. Else ValueError."""
    import numpy as np

    if progress is None:  # falsy, as before progress took a delay: no bar
        return None
    if isinstance(progress, (bool, np.bool_)):
        return 0.0 if progress else None
    # one real number as every other setting reads one: a 0-d tensor or NumPy scalar too; NaN and inf refused
    return check_real("progress", progress, 0.0, math.inf, "True, False or a delay in seconds >= 0")
