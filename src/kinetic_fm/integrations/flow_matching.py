"""Interop with facebookresearch/flow_matching: per-sample KPE and KTS for ``ModelWrapper`` models.

flow_matching shares our clock (t = 0 source/noise, t = 1 data, velocity dx/dt); its
``ODESolver`` calls ``velocity_model(x=x, t=t, **extras)`` with a 0-dim t through torchdiffeq.

- ``KineticODESolver(model).sample(...)``: the ``ODESolver.sample`` call you know, run by
  ``kfm.sample``; returns a ``SampleResult`` (x, per-sample kpe / kpe_raw, profile, ...). On the same
  time grid it gives the same samples as ``ODESolver`` for euler, midpoint, heun2 and rk4.
- ``from_model_wrapper(model, **extras)``: the model as our field ``v(x, t)``.
- ``as_model_wrapper(velocity, shaping=kts)``: one of our fields (optionally KTS-shaped,
  η(t)·v) as a ``ModelWrapper``, for flow_matching's own solvers.

Method names follow torchdiffeq: ``"euler"``, ``"midpoint"``, ``"heun2"`` (our ``"heun"``),
``"rk4"`` (Kutta's 3/8 rule, our ``"rk4_38"``) and ``"dopri5"``. Our ``"dopri5"`` controls the step
per sample where torchdiffeq controls it per batch: equal to tolerance, not to rounding.
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..optional import optional_names
from ..checks import (add_note, declares, declares_singular_at_one, one_evaluation_of, optional_attribute,
                      start_run_of)
from ..fields.adapters import TIME_MODES, ModelXT, batch_time, check_extras_taken, signature_of
from ..sampling.grids import as_typed, validate_grid
from ..sampling.guards import stage_velocity, state_remedy
from ..sampling.result import SampleResult
from ..sampling.sample import sample, shared_time_refusal
from ..sampling.shaping import KTS, TAU_TOLERANCE, gain_tau

if TYPE_CHECKING:  # pragma: no cover
    from flow_matching.utils import ModelWrapper

# a final fixed step shorter than this fraction of step_size is a rounding artefact (see fixed_grid)
ROUNDING_STEP = 1e-6

METHODS = {"euler": "euler", "midpoint": "midpoint", "heun2": "heun", "rk4": "rk4_38", "dopri5": "dopri5"}


def from_model_wrapper(model: Callable[..., torch.Tensor], *, time: str = "shared",
                       model_kwargs: Mapping[str, Any] | None = None, **extras: Any) -> ModelXT:
    """A flow_matching ``ModelWrapper`` (or any ``model(x, t, **extras)``) as our field ``v(x, t)``.

    ``time="shared"`` passes a 0-dim t like ``ODESolver`` (fixed-step grids, no host sync; dopri5 refuses it);
    use ``"scalar"`` with per-sample times (dopri5), ``"batch"`` for models that accept t of shape (B,).
    ``per_sample=[names]`` among the extras says which hold one row per sample (see ``kfm.ModelXT``).
    ``model_kwargs``: more extras as a dict, the way to give the model one named ``time``,
    ``per_sample`` or ``model_kwargs``. A model whose signature names ``x`` and ``t`` (a module's
    ``forward``) is called as ``model(x=x, t=t, **extras)``, as ``ODESolver`` calls it (a keyword-only
    ``forward``, or one taking t before x, works); others by position, ``model(x, t, **extras)``.
    Positional extras (the labels of a ``ClassifierFreeGuidance`` around the field) follow x and t
    by position where those two lead the signature, else fill its further parameters by name
    (``forward(t, x, y)``, ``forward(*, x, t, y)``: y), and any beyond them go into its ``*args``, after
    its own positional parameters (``forward(t, x, *args)`` is called as ``forward(t, x, y)``).
    """
    per_sample = extras.pop("per_sample", None)  # kfm's option, not an extra: model_kwargs may hold one so named
    named = _model_kwargs(model_kwargs, extras)
    check_extras_taken(model, [*extras, *named], "from_model_wrapper")
    field = ModelXT(model, time=time)
    field._take_extras(per_sample, {**extras, **named})
    field._take_keyword_call(*_keyword_call(model))
    return field


def _model_kwargs(model_kwargs: Mapping[str, Any] | None, extras: Mapping[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` as a dict, checked to share no name with the keyword ``extras``."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, Mapping) or not all(isinstance(key, str) for key in model_kwargs):
        raise ValueError(f"model_kwargs must be a dict of keyword arguments for the model, got "
                         f"{type(model_kwargs).__name__}")
    both = sorted(set(model_kwargs) & set(extras))
    if both:
        raise ValueError(f"{both} given both as keywords and in model_kwargs; give each extra once")
    return dict(model_kwargs)


def _keyword_call(model: Callable[..., torch.Tensor]
                  ) -> tuple[bool, tuple[str, ...] | None, tuple[str, ...] | None]:
    """Whether ``model`` (a module: its ``forward``) takes parameters named x and t by keyword, and
    if so where positional extras go: None when x and t are its first two positional parameters
    (the extras follow them by position), else the names of its other parameters that take a
    keyword, in the signature's order, which the extras fill by name (``forward(t, x, y)`` and
    ``forward(*, x, t, y)``: ("y",)); third, for a model with ``*args``, its positional
    parameters before it (the extras beyond those names go into it, as ``model(t, x, y, *rest)``
    passes them), else None. For such a model the names are those positional parameters only: a
    positional extra never reaches a keyword-only one. A ``DataParallel``, ``DistributedDataParallel``
    or ``torch.compile``d module is read by the module it wraps: its own ``forward(*args, **kwargs)``
    hands both on unchanged."""
    signature = signature_of(model)
    if signature is None:  # a builtin or C extension without a signature: by position
        return False, None, None
    parameters = signature.parameters
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if not all(name in parameters and parameters[name].kind in by_keyword for name in ("x", "t")):
        return False, None, None
    positional = tuple(name for name, p in parameters.items()
                       if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    if positional[:2] == ("x", "t"):
        return True, None, None
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters.values()):
        return True, tuple(name for name in positional if name not in ("x", "t")), positional
    return True, tuple(name for name, p in parameters.items()
                       if name not in ("x", "t") and p.kind in by_keyword), None


def fixed_grid(time_grid: torch.Tensor, step_size: float | None) -> torch.Tensor:
    """The grid a torchdiffeq fixed-step solver walks for this ``time_grid`` and ``step_size``.

    ``step_size=None``: the grid itself. Otherwise t_k = k·h from time_grid[0] for
    k < ⌈(end − start)/h + 1⌉, the last point moved onto the end (a shorter final step). A final
    step shorter than ``ROUNDING_STEP``·h comes of (end − start)/h = n rounding up to n + ε (h = 1/49:
    (1 − 0)/h + 1 = 50.000000000000004, so 51 points), not a step: its start is dropped, n steps remain.
    """
    if step_size is None:
        return time_grid
    if isinstance(step_size, bool) or not isinstance(step_size, numbers.Real) or not (
        math.isfinite(step_size) and step_size > 0
    ):
        raise ValueError(f"step_size must be a finite number > 0 or None, got {step_size!r}")
    step_size = float(step_size)  # a NumPy scalar, say, as ODESolver takes it
    start, end = time_grid[0], time_grid[-1]
    count = int(torch.ceil((end - start) / step_size + 1).item())
    grid = torch.arange(count, dtype=time_grid.dtype) * step_size + start
    grid[-1] = end
    if grid.numel() > 2 and float(grid[-1] - grid[-2]) < ROUNDING_STEP * step_size:
        # torchdiffeq takes such a step too, a network evaluation for nothing (at other n in float32)
        grid = torch.cat([grid[:-2], grid[-1:]])
    return grid


class KineticODESolver:
    """``flow_matching.solver.ODESolver`` with per-sample kinetic energy and KTS.

    Args:
        velocity_model: a ``ModelWrapper`` or any callable ``model(x, t, **extras)`` taking a 0-dim t
            (pass ``time="batch"`` if it takes per-sample times of shape (B,)).
        time: how t reaches the model (see ``kfm.ModelXT``): None (default) passes a 0-dim t as
            ``ODESolver`` does, ``"shared"`` on fixed-step grids and ``"scalar"`` under dopri5;
            or ``"batch"`` | ``"scalar"`` for every method, ``"shared"`` for the fixed-step ones
            (dopri5 refuses it). ValueError otherwise. Under dopri5 the samples sit at different times
            and ``"scalar"`` calls the model once per distinct time (the rows ``ODESolver`` evaluates,
            in up to B calls per stage): give ``"batch"`` to a model that takes t of shape (B,).
    """

    def __init__(self, velocity_model: Callable[..., torch.Tensor], *, time: str | None = None):
        if not callable(velocity_model):
            raise TypeError(f"velocity_model must be callable, got {type(velocity_model).__name__}")
        # checked here, not at the first sample() call, so a typo is named where it is made
        if time is not None and time not in TIME_MODES:
            raise ValueError(f"time must be None or one of {TIME_MODES}, got {time!r}")
        self.velocity_model, self.time = velocity_model, time

    def sample(
        self,
        x_init: torch.Tensor,
        step_size: float | None = None,
        method: str = "euler",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        time_grid: torch.Tensor | None = None,
        *,
        shaping: Callable | None = None,
        quadrature: str = "solver",
        profile: bool = False,
        on_nonfinite: str = "raise",
        max_steps: int = 10_000,
        return_intermediates: bool = False,
        enable_grad: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
        **model_extras: Any,
    ) -> SampleResult:
        """Integrate from t = 0 to 1 as ``ODESolver.sample`` would, measuring each sample's KPE.

        Args:
            x_init: (B, ...) source samples at t = 0.
            step_size: fixed step h (grid as torchdiffeq builds it), or None to step on ``time_grid``.
                Must be None for dopri5.
            method: "euler" | "midpoint" | "heun2" | "rk4" (3/8 rule) | "dopri5" (see the module notes).
            atol, rtol: dopri5 tolerances.
            time_grid: increasing 1-D tensor from 0 to 1 (default [0, 1]); the step grid when
                ``step_size`` is None.
            shaping: a ``kfm.KTS`` gain (or callable η(t)); None = plain flow matching.
            quadrature, profile, on_nonfinite, max_steps: as in ``kfm.sample`` (its errors name the last
                two as remedies; ``max_steps`` bounds dopri5's attempted steps).
            return_intermediates, enable_grad: ``ODESolver.sample``'s flags, accepted for a
                drop-in call; only False is supported (``profile=True`` keeps the per-step
                energies; sampling runs without gradients).
            model_kwargs: keyword arguments for every model call, as a dict, merged with
                ``**model_extras``: the way to give the model one named like an option of this
                method (``shaping``, ``quadrature``, ``profile``, ``on_nonfinite``, ``max_steps``,
                ``per_sample``, ``time``, ``model_kwargs``), which ``ODESolver`` would pass on and a
                keyword of that name here sets instead.
            **model_extras: keyword arguments for every model call (e.g. a condition); tensors
                whose first dimension is the batch size are taken as per-sample, unless
                ``per_sample=[names]`` lists the per-sample ones (see ``kfm.ModelXT``).

        The model is called as ``ODESolver`` calls it, ``model(x=x, t=t, **extras)``, when its
        signature names x and t (see ``from_model_wrapper``).
        """
        if "time" in model_extras:  # from_model_wrapper's own keyword: "got multiple values for 'time'"
            raise ValueError("time is KineticODESolver's option, given to its constructor; a model extra named "
                             "time goes in model_kwargs={'time': ...}")
        for name, flag in (("return_intermediates", return_intermediates), ("enable_grad", enable_grad)):
            if flag:
                raise ValueError(f"{name}=True is not supported: kfm returns the final state with "
                                 "per-sample energies (profile=True keeps the per-step energies)")
        if not isinstance(x_init, torch.Tensor):  # named here: kfm.sample's message names its own x0
            raise TypeError(f"x_init must be a torch.Tensor of shape (B, ...), got {type(x_init).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
        solver = METHODS[method]
        if time_grid is None:
            time_grid = torch.tensor([0.0, 1.0], dtype=torch.float64)
        if not isinstance(time_grid, torch.Tensor) or time_grid.dim() != 1 or time_grid.numel() < 2:
            got = (f"shape {tuple(time_grid.shape)}" if isinstance(time_grid, torch.Tensor)
                   else type(time_grid).__name__)
            raise ValueError(f"time_grid must be a 1-D tensor from 0 to 1 with at least 2 points, got {got}")
        start, end = float(time_grid[0]), float(time_grid[-1])
        if start > end:  # ODESolver also integrates backwards (time_grid [1, 0], for inversion or likelihood)
            typed = time_grid.dtype  # its times are quoted in it (a float32 0.7 is not 0.699999988079071)
            raise ValueError(f"time_grid must run from 0 to 1 (noise to data), got {as_typed(start, typed)} to "
                             f"{as_typed(end, typed)}; kinetic_fm measures the generating direction only")
        # checked here so that the message names this call's argument (kfm.sample's names its own, grid);
        # an integer grid is read as float64, as ODESolver's would be
        if not torch.is_floating_point(time_grid):
            time_grid = time_grid.double()
        time_grid = validate_grid(time_grid, name="time_grid").to(torch.float64)
        if solver == "dopri5":
            if step_size is not None:
                raise ValueError("step_size must be None for dopri5 (an adaptive method)")
            if declares(self.velocity_model, "one_time_per_call"):  # named from the user's argument, not ours
                raise ValueError(shared_time_refusal(self.velocity_model, "velocity_model",
                                                     time_given=self.time is not None))
            field = from_model_wrapper(self.velocity_model, time=self.time or "scalar", model_kwargs=model_kwargs,
                                       **model_extras)
            with state_remedy(X_INIT_REMEDY):
                return sample(field, x_init, solver=solver, rtol=rtol, atol=atol, shaping=shaping,
                              quadrature=quadrature, profile=profile, on_nonfinite=on_nonfinite, max_steps=max_steps)
        grid = fixed_grid(time_grid, step_size)
        field = from_model_wrapper(self.velocity_model, time=self.time or "shared", model_kwargs=model_kwargs,
                                   **model_extras)
        with state_remedy(X_INIT_REMEDY):
            return sample(field, x_init, grid=grid, solver=solver, shaping=shaping,
                          quadrature=quadrature, profile=profile, on_nonfinite=on_nonfinite, max_steps=max_steps)


class _PassedThrough:
    """What a wrapped field declares, passed through by the ``ModelWrapper`` and its ``select``
    views alike: both hold ``velocity`` (the field) and ``shaping`` (η or None)."""

    velocity: Callable
    shaping: Callable | None

    @property
    def singular_at_one(self) -> bool:  # passed through: kfm.sample's last step skips t = 1
        return declares_singular_at_one(self.velocity)

    @property
    def track_parts(self) -> bool:  # passed through: kfm.sample's dopri5 refuses it before the run
        return declares(self.velocity, "track_parts")

    @property
    def one_time_per_call(self) -> bool:  # passed through: dopri5 refuses it (rows at their own times)
        return declares(self.velocity, "one_time_per_call")

    def start_run(self) -> None:
        """Passed through to the field, which may keep per-run state (``kfm.sample`` calls
        it before a run; flow_matching's ``ODESolver`` does not)."""
        start_run_of(self.velocity)

    @property
    def select(self) -> Callable[[torch.Tensor], "_SelectedWrapper"]:
        """``select(active)``: the wrapper of the field's ``select(active)``, the samples where the
        (B,) bool mask is True (dopri5 evaluates those in flight; per-sample data the field holds,
        a recorder's rows, follow). Absent, AttributeError, where the field has none, so that
        dopri5 says what a field without it can miss. The view is a plain callable, not a module:
        dopri5 selects at every stage, and building a ``ModelWrapper`` took ~0.1 ms each time."""
        select = optional_attribute(self.velocity, "select")
        if select is None:
            raise AttributeError(f"the wrapped {type(self.velocity).__name__} has no select")
        return lambda active: _SelectedWrapper(select(active), self.shaping, self._gain_tau)

    def one_evaluation(self):
        """Passed through to the field: the calls made inside are one evaluation (a
        ``time="scalar"`` adapter's per-time calls; a ``PosteriorRecorder`` makes them one record)."""
        return one_evaluation_of(self.velocity)


# the dtype and device errors' remedy: x_init is the state here, and this sample() takes no dtype= or device=
X_INIT_REMEDY = ("pass x_init in the network's dtype and device (x_init.to(dtype=..., device=...): "
                 "KineticODESolver.sample takes no dtype= or device=), or convert inside the model, "
                 "e.g. a forward returning net(x.to(net_dtype), t).to(x.dtype)")

# torchdiffeq's adaptive methods step over the end and interpolate back
PAST_THE_END = ("the field was called at t > 1: flow_matching's ODESolver under dopri5 (torchdiffeq's adaptive "
                "methods) steps past the end of time_grid and interpolates back, and a field defined on [0, 1] only "
                "(EmpiricalFlow, a PosteriorRecorder, GaussianTarget, PointTarget, GaussianMixtureTarget) refuses "
                "such a time; use KineticODESolver(...).sample("
                "method='dopri5') or kfm.sample(solver='dopri5'), whose steps end on t = 1")


class _Shaped:
    """The gain a wrapper applies and its τ (:func:`gain_tau`), read once, on the first
    evaluation (where a bad declared τ was refused before): not at every stage of every step."""

    _UNREAD = object()

    def _gain_tau(self) -> float | None:
        tau = self.__dict__.get("_tau", self._UNREAD)
        if tau is self._UNREAD:
            tau = self.__dict__["_tau"] = gain_tau(self.shaping)
        return tau


def _shaped_velocity(velocity: Callable, shaping: Callable | None, x: torch.Tensor, t: torch.Tensor | float,
                     extras: dict[str, Any], tau: Callable[[], float | None]) -> torch.Tensor:
    """η(t)·v(x, t) (B, ...), t broadcast to (B,) for the field; v alone without a gain. ``tau()``
    gives the gain's τ (a KTS's, or one a callable declares), or None."""
    given = t
    # one time for the batch, as torchdiffeq passes it: a closed-form field at a time outside [0, 1] (past
    # t = 1, before 0, NaN) is refused here, on every device (on an accelerator the field itself makes that
    # time NaN without a word, to spare the samplers' loop a synchronisation, and dopri5 then shrank its step
    # to "underflow in dt"). Reading the time is a synchronisation there: torchdiffeq makes one every step
    # anyway; kfm.sample passes (B,) times
    if (not isinstance(given, torch.Tensor) or given.dim() == 0) and declares(velocity, "unit_times_only"):
        time = float(given)
        if not 0.0 <= time <= 1.0:   # NaN fails too
            outside = ValueError(f"t must lie in [0, 1], got {time!r}")
            if time > 1:
                add_note(outside, PAST_THE_END)
            raise outside
        velocity = stage_velocity(velocity)   # its one time checked here: an analytic field need not look again
    t = batch_time(t, x)
    try:
        v = velocity(x, t, **extras)
    except (ValueError, RuntimeError) as err:
        if bool((torch.as_tensor(given) > 1).any()):   # read only on the way out: no synchronisation otherwise
            add_note(err, PAST_THE_END)
        raise
    if shaping is None:
        return v
    # η at the solver's own time, not rounded to x's dtype (float32(0.7) lies below τ =
    # 0.7), a time within TAU_TOLERANCE·τ counting as τ, as kfm.sample's stages do
    times = given if isinstance(given, torch.Tensor) else torch.tensor(float(given))
    times = times.to(device=v.device, dtype=torch.float64)
    tau = tau()
    if tau is not None:
        times = torch.where((times - tau).abs() <= TAU_TOLERANCE * tau, torch.full_like(times, tau), times)
    # a KTS without its range check: called at every stage, that check would be a host
    # synchronisation on an accelerator (the times are the solver's grid, from 0 to 1)
    gain = shaping.unchecked if isinstance(shaping, KTS) else shaping
    eta = torch.as_tensor(gain(times), dtype=v.dtype, device=v.device).expand(v.shape[0])
    return eta.reshape(-1, *([1] * (v.dim() - 1))) * v


class _SelectedWrapper(_PassedThrough, _Shaped):
    """A ``select(active)`` view of the ``ModelWrapper`` from :func:`as_model_wrapper`: η(t)·v of
    the field's own view, called as the wrapper is, ``view(x, t, **extras)``."""

    def __init__(self, velocity: Callable, shaping: Callable | None, tau: Callable[[], float | None]):
        self.velocity, self.shaping, self.tau = velocity, shaping, tau

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, **extras: Any) -> torch.Tensor:
        return _shaped_velocity(self.velocity, self.shaping, x, t, extras, self.tau)


_WRAPPER_CLASS: type | None = None


def _model_wrapper_class() -> type:
    """flow_matching's ModelWrapper subclass for our fields, built on first use."""
    global _WRAPPER_CLASS
    if _WRAPPER_CLASS is None:
        # tests/test_integration_optional_packages.py and tests/test_optional.py block it
        (ModelWrapper,) = optional_names("flow_matching.utils", "as_model_wrapper", "ModelWrapper")

        class KineticModelWrapper(_PassedThrough, _Shaped, ModelWrapper):
            """Our field ``v(x, t)`` (t broadcast to (B,)) as a ModelWrapper returning η(t)·v."""

            def __init__(self, velocity: Callable, shaping: Callable | None = None):
                module = velocity if isinstance(velocity, torch.nn.Module) else None
                super().__init__(module)
                # a module is held once, as ModelWrapper's model: registered a second time, every
                # parameter was saved twice and the state_dict did not load into a plain ModelWrapper
                self._field = None if module is not None else velocity
                self.shaping = shaping

            @property
            def velocity(self) -> Callable:
                """The wrapped field (``model`` when it is a module)."""
                return self.model if self._field is None else self._field

            def forward(self, x: torch.Tensor, t: torch.Tensor, **extras: Any) -> torch.Tensor:
                return _shaped_velocity(self.velocity, self.shaping, x, t, extras, self._gain_tau)

        _WRAPPER_CLASS = KineticModelWrapper
    return _WRAPPER_CLASS


def as_model_wrapper(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     shaping: Callable | None = None) -> ModelWrapper:
    """One of our fields as a flow_matching ``ModelWrapper``, optionally KTS-shaped.

    The wrapper returns η(t)·v(x, t), the realised KTS motion, so flow_matching's ``ODESolver``
    with method euler, midpoint or rk4 follows the path ``kfm.sample(..., shaping=kts)`` follows
    with solver euler, midpoint or rk4_38 (their rk4 is Kutta's 3/8 rule; to round-off, tested),
    with three exceptions: our heun uses the reference code's mean-gain rule; with the constant
    KTS forms a stage of ours that ends a step at τ takes η's left limit, theirs η(τ); and a field
    singular at t = 1 is evaluated there by their solver, never by ours. The field's ``start_run``,
    ``select`` and ``one_evaluation`` pass through, so a ``PosteriorRecorder`` inside traces our
    sampler's runs (dopri5's included) as a bare one; so do ``singular_at_one``, ``track_parts`` and
    ``one_time_per_call``, so that ``kfm.sample`` (and ``KineticODESolver``) with dopri5 refuses a
    ``ClassifierFreeGuidance(track_parts=True)`` or a ``time="shared"`` adapter inside before the run
    starts. Their ``ODESolver`` cannot be told: under its dopri5 the wrapper cannot refuse them, and
    such a guidance's part energies restart at each rejected step (a call at an earlier time). That
    dopri5 (torchdiffeq's) also steps past t = 1 and interpolates back: a field defined on [0, 1] only
    (``EmpiricalFlow``, a recorder) refuses the time, with a note saying why, and the guidance's
    ``part_energies()`` refuses a run that went past 1. ``ODESolver`` never calls ``start_run``, so a
    recorder's :meth:`~kinetic_fm.PosteriorRecorder.trace` refuses the records of a second run.
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable, got {type(velocity).__name__}")
    if shaping is not None and not callable(shaping):
        raise TypeError(f"shaping must be a KTS gain or callable, got {type(shaping).__name__}")
    return _model_wrapper_class()(velocity, shaping)


__all__ = ["KineticODESolver", "as_model_wrapper", "fixed_grid", "from_model_wrapper"]
