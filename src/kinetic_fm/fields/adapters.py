"""Adapters: other people's networks as our velocity field ``v(x, t)``.

Our convention (docs/ARCHITECTURE.md §2): t = 0 is noise, t = 1 is data, the path is
x_t = (1 − t)·x0 + t·x1, the ODE is dx/dt = v(x, t), and ``t`` is a float tensor of shape (B,).

Each adapter wraps a callable ``f(x, τ, *args, **kwargs)`` and is itself such a callable, so they
compose from the inside out, one concern each:

=====================  ======================================================================
how the net is called  ``ModelTX`` (``model(t, x)``: torchdiffeq / torchcfm),
                       ``ModelXT`` (``model(x, t, **extras)``: flow_matching's ``ModelWrapper``)
which clock it reads   ``DiscreteTime`` (τ = int(t·(T − 1))), ``ReversedTime`` (σ = 1 − t, dx/dσ)
what it predicts       ``NoisePrediction`` (ε̂ = x0), ``DataPrediction`` (x̂1)
=====================  ======================================================================

Example: a DDPM-style U-Net ``unet(x, step)`` trained on the linear path to predict noise with
T = 1000 integer steps becomes ``NoisePrediction(DiscreteTime(ModelXT(unet), 1000))``.

Extra positional and keyword arguments given to an adapter are passed on to the wrapped callable
unchanged, which lets ``ClassifierFreeGuidance`` sit outside them (it calls ``f(x, t, y)``).

A wrong convention is not an error Python can see: a σ-time net run without ``ReversedTime``
integrates backwards in its own clock and returns wrong samples and a wrong KPE without any
warning (tests/test_adapters.py shows how far off). Check a new net on a case you can judge.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import sys
from typing import Any, Callable, Iterable

import torch

from ..checks import (add_note, as_scalar, check_flag, check_integer, declares, declares_singular_at_one,
                      inside_unit_interval, is_real, one_evaluation_of, optional_attribute, start_run_of,
                      tensor_output, wrapper_chain)

TIME_MODES = ("batch", "scalar", "shared")


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a (B,) tensor on x's device; floats and 0-dim tensors are broadcast to the batch.

    A floating ``t`` takes x's floating dtype; integer times keep theirs (``DiscreteTime``'s
    step indices stay int64 on their way to the net). A number is read with ``float``: it is a
    floating time, so x of an integer dtype does not truncate it.

    Two relatives differ on purpose: the nets' :func:`kinetic_fm.models.embedding.embedding_times`
    casts every time, integer ones included, to x's dtype; the analytic fields'
    ``_time_column`` keeps a number in float64, takes only (B,) tensors and returns a
    (B, 1, ..., 1) column.
    """
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t), dtype=torch.float64, device=x.device)  # rounded once, to x's dtype below
    if t.dim() not in (0, 1) or (t.dim() == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must have shape ({x.shape[0]},) or be a scalar, got shape {tuple(t.shape)}")
    dtype = x.dtype if t.is_floating_point() and x.is_floating_point() else t.dtype
    t = t.to(device=x.device, dtype=dtype)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def _broadcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) times as (B, 1, ..., 1) so they multiply x of shape (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def _check_callable(model: Any, name: str = "model") -> None:
    if not callable(model):
        raise TypeError(f"{name} must be callable, got {type(model).__name__}")


def _compiled_module_type() -> type | None:
    """torch.compile's module class, where torch._dynamo is imported already (a compiled module cannot
    exist before it is): ``import kinetic_fm`` does not import it."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def unwrapped_module(model: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The module a ``DataParallel`` or ``DistributedDataParallel`` wraps, or ``torch.compile`` compiled
    (its ``_orig_mod``): their own ``forward(*args, **kwargs)`` hands both on unchanged to it; any other
    model itself. Read for its signature only: the model is still called as given."""
    compiled = _compiled_module_type()
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif compiled is not None and isinstance(model, compiled):
            model = model._orig_mod
        else:
            return model


def signature_of(model: Callable[..., torch.Tensor]) -> inspect.Signature | None:
    """The signature ``model`` is called by: a module's ``forward`` (a parallel wrapper's: its
    module's, see :func:`unwrapped_module`), or its own ``__call__`` where its class overrides
    ``nn.Module``'s (its ``forward`` is then torch's placeholder); None for a builtin or C extension
    without one, or a proxy whose attributes cannot be read."""
    model = unwrapped_module(model)
    try:
        calls_forward = isinstance(model, torch.nn.Module) and type(model).__call__ is torch.nn.Module.__call__
        return inspect.signature(model.forward if calls_forward else model)
    except Exception:
        return None


def check_extras_taken(model: Callable[..., torch.Tensor], names: Iterable[str], built_by: str) -> None:
    """ValueError, when the field is built (``built_by``: "kfm.ModelXT", "from_model_wrapper", for the
    remedy), for extras ``names`` that ``model`` has no keyword parameter and no ``**kwargs`` for: every
    call would fail with "got an unexpected keyword argument". Read from the signature, the model is
    not called; a signature that cannot be read passes (a compiled module is read by the module it compiles)."""
    from .guidance import ClassifierFreeGuidance

    names = list(names)
    if not names:  # nothing to read: a proxy whose attributes cannot be read is built as before
        return
    signature = signature_of(model)
    if signature is None:
        return
    parameters = signature.parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [name for name in names if name not in parameters or parameters[name].kind not in by_name]
    if not missing:
        return
    unwrapped = unwrapped_module(model)
    bare = signature.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in parameters.values()],
                             return_annotation=inspect.Signature.empty)
    shown = f"{type(unwrapped).__name__}{bare}"
    if isinstance(unwrapped, ClassifierFreeGuidance):
        first = missing[0]
        remedy = (f"; a guidance's extras belong to the model inside it, which it calls on a doubled batch: "
                  f"{built_by}(net, {first}=torch.cat([{first}, {first}])), or the condition in its labels")
    else:
        remedy = "; give only extras its signature names"
    raise ValueError(f"the model takes no extra named {missing}: {shown}{remedy}")


class DoubledExtraError(ValueError):
    """A positional extra (a guidance's labels) filling a model parameter that a fixed extra or a keyword of the
    call also gives: the remedy is to give it once, so a guidance adds no note on doubling the batch."""


def _positional_slots(model: Callable[..., torch.Tensor]) -> tuple[str | None, ...]:
    """The parameters that positional extras fill in ``model(x, t, *extras)``, in order: its positional
    parameters after the first two, up to a ``*args``; None for a positional-only one (a keyword extra never
    meets it). Empty where the signature cannot be read."""
    signature = signature_of(model)
    if signature is None:
        return ()
    slots = []
    for p in signature.parameters.values():
        if p.kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            break
        slots.append(p.name if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else None)
    return tuple(slots[2:])


def _check_time_mode(time: str) -> None:
    if time not in TIME_MODES:
        raise ValueError(f"time must be one of {TIME_MODES}, got {time!r}")


def has_rows(value: Any, batch: int) -> bool:
    """Whether ``value`` looks per-sample: a tensor whose first dimension is ``batch``."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch


def _rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """The ``rows`` of a per-sample tensor (first dim == batch); anything else unchanged."""
    return value[rows] if has_rows(value, batch) else value


def _call_time_mode(
    field: Callable[..., torch.Tensor], bind: Callable[[Any], Callable[..., torch.Tensor]], mode: str,
    x: torch.Tensor, t: torch.Tensor, args: tuple, kwargs: dict
) -> torch.Tensor:
    """Call ``bind(field)``, a callable ``(x, t, *args, **kwargs)``, with the time as ``mode`` says."""
    if mode == "scalar":
        return _call_per_time(field, bind, x, t, args, kwargs)
    t = batch_time(t, x)
    return tensor_output(bind(field)(x, _first_time(t) if mode == "shared" else t, *args, **kwargs),
                         "the wrapped net")


def _as_is(field: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return field


def _by_name(field: Callable[..., torch.Tensor], extra_names: tuple[str, ...] | None = None,
             positional_order: tuple[str, ...] | None = None) -> Callable[..., torch.Tensor]:
    """``field`` called as ``field(x=x, t=t, **kwargs)``, flow_matching's ``ODESolver`` convention.

    Positional extras (which that solver never passes; ``ClassifierFreeGuidance``'s labels) go by
    position after x and t where ``extra_names`` is None (x and t lead the signature, in that
    order), else by the names of the parameters they fill: for ``forward(t, x, y)`` or a
    keyword-only ``forward(*, x, t, y)`` a positional call would have handed x to t and y to x
    (or failed). More extras than names go into the model's ``*args`` where it has one:
    ``positional_order`` then names its parameters before it, which are passed by position in
    that order (x and t, where not among them, by name), the extras after them, as
    ``forward(t, x, *args)`` or ``forward(*args, x, t)`` takes them. Else: TypeError saying so."""
    def call(x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not args:
            return field(x=x, t=t, **kwargs)
        if extra_names is None:
            return field(x, t, *args, **kwargs)
        if len(args) <= len(extra_names):
            return field(x=x, t=t, **dict(zip(extra_names, args)), **kwargs)
        if positional_order is None:
            raise TypeError(f"the model takes x and t by name and {len(extra_names)} further argument(s) "
                            f"{list(extra_names)} that a positional extra can fill, but was given {len(args)} "
                            "positional extra(s); pass the extras by keyword")
        values = {"x": x, "t": t, **dict(zip(extra_names, args))}
        leading = [values.pop(name) for name in positional_order]
        return field(*leading, *args[len(extra_names):], **values, **kwargs)
    return call


def _first_time(t: torch.Tensor) -> torch.Tensor:
    """The 0-dim time of a (B,) batch; an empty batch has none, and its net sees t = 0 (no row
    depends on it) so that the net still gives its output's shape."""
    return t[0] if t.shape[0] else t.new_zeros(())


def _call_per_time(
    field: Callable[..., torch.Tensor], bind: Callable[[Any], Callable[..., torch.Tensor]],
    x: torch.Tensor, t: torch.Tensor, args: tuple, kwargs: dict
) -> torch.Tensor:
    """Call a net that accepts one 0-dim time per call, grouping rows by their distinct t.

    ``torch.unique`` synchronises with the host once per call (the price of a net that cannot
    take per-sample times); rows at several times (dopri5) cost one more, for the group sizes.
    Per-sample tensors among args/kwargs (first dim == B) are sliced with their rows. A field with
    ``select(active)`` is called for each time's rows through ``select`` of that time's (B,) mask,
    as dopri5 calls it for the samples in flight (per-sample data it holds, a recorder's rows,
    follow), and the groups are one evaluation (``one_evaluation``: one record of a recorder).
    """
    t = batch_time(t, x)
    values, inverse, counts = torch.unique(t, return_inverse=True, return_counts=True)
    if values.numel() <= 1:
        return tensor_output(bind(field)(x, _first_time(values), *args, **kwargs), "the wrapped net")
    batch = x.shape[0]
    out = None
    select = optional_attribute(field, "select")
    groups = torch.argsort(inverse, stable=True).split(counts.tolist())  # one sync, not one per time
    with one_evaluation_of(field) if select is not None else contextlib.nullcontext():
        for k, rows in enumerate(groups):
            # rows ascend within a group (a stable sort), the order of select's mask
            call = bind(field if select is None else select(inverse == k))
            part = tensor_output(call(
                x[rows],
                values[k],
                *(_rows(a, rows, batch) for a in args),
                **{key: _rows(v, rows, batch) for key, v in kwargs.items()},
            ), "the wrapped net")
            if out is None:
                out = part.new_empty((batch, *part.shape[1:]))
            out[rows] = part
    return out


class _Adapter:
    """Base: holds the wrapped callable and prints as the composition it stands for."""

    inner: Callable[..., torch.Tensor]

    @property
    def singular_at_one(self) -> bool:
        """Whether the wrapped field blows up at t = 1 (see ``kfm.sample``); passed through."""
        return declares_singular_at_one(self.inner)

    @property
    def one_time_per_call(self) -> bool:
        """Whether the net sees one time for the whole batch (``time="shared"``, here or in the
        wrapped field), which is wrong where rows sit at different times (dopri5 refuses it)."""
        return getattr(self, "time", None) == "shared" or declares(self.inner, "one_time_per_call")

    @property
    def track_parts(self) -> bool:
        """Whether a wrapped guidance tracks part energies, which dopri5's rejected tries would
        restart (``kfm.sample`` refuses it up front); passed through."""
        return declares(self.inner, "track_parts")

    @property
    def calls_model_by_name(self) -> bool:
        """Whether the net inside is called by name, ``model(x=x, t=t, ...)`` (a ``ModelXT`` from
        ``from_model_wrapper`` for a signature naming x and t), so that its parameters' order cannot be
        what failed (``kfm.sample``'s hints say so); passed through."""
        return declares(self.inner, "calls_model_by_name")

    def start_run(self) -> None:
        """Passed through to the wrapped field, which may keep per-run state (``kfm.sample`` calls
        it before a run: a ``PosteriorRecorder`` inside refuses a second run over its first)."""
        start_run_of(self.inner)

    def one_evaluation(self):
        """A context whose calls are one evaluation of the field (see :func:`_call_per_time`); passed
        through to the wrapped field (a ``PosteriorRecorder`` inside makes them one record)."""
        return one_evaluation_of(self.inner)

    def select(self, active: torch.Tensor) -> "_Adapter":
        """This adapter for the samples where the (B,) bool mask ``active`` is True (dopri5
        evaluates only the samples still in flight); passed through to the wrapped field."""
        part, select = copy.copy(self), optional_attribute(self.inner, "select")
        if select is not None:
            part.inner = select(active)
        return part

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._describe()
        return f"{type(self).__name__}({self.inner!r}{', ' + extra if extra else ''})"


class ModelTX(_Adapter):
    """A net called as ``model(t, x)`` (torchdiffeq's ``odeint`` / torchcfm convention).

    Args:
        model: callable ``model(t, x) -> Tensor`` of x's shape.
        time: ``"batch"`` passes t of shape (B,); ``"scalar"`` passes a 0-dim t, as
            ``torchdiffeq.odeint`` does, calling the net once per distinct time in the batch
            (one host synchronisation per call, two when rows sit at several times, as under
            dopri5; a wrapped field with ``select`` is called through ``select`` of each time's
            rows); ``"shared"`` passes ``t[0]`` as a 0-dim t without checking that all rows
            share it (no synchronisation: fixed-step grids only; ``kfm.sample`` refuses it under dopri5).

    Calling ``adapter(x, t)`` returns ``model(t, x)`` (any further args go after x).
    """

    def __init__(self, model: Callable[..., torch.Tensor], *, time: str = "batch"):
        _check_callable(model)
        _check_time_mode(time)
        self.inner, self.time = model, time

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, *args: Any, **kwargs: Any) -> torch.Tensor:
        """v(x, t) in kinetic_fm's clock: x (B, ...), t (B,) or one number; (B, ...) like the net's output."""
        def swapped(inner):
            return lambda x_, t_, *a, **k: inner(t_, x_, *a, **k)
        return _call_time_mode(self.inner, swapped, self.time, x, t, args, kwargs)

    def _describe(self) -> str:
        return f"time={self.time!r}"


class ModelXT(_Adapter):
    """A net called as ``model(x, t, **extras)`` (flow_matching's ``ModelWrapper`` convention).

    Args:
        model: callable ``model(x, t, *args, **extras) -> Tensor`` of x's shape.
        time: ``"batch"`` passes t of shape (B,); ``"scalar"`` passes a 0-dim t, as
            ``flow_matching.solver.ODESolver`` does, calling the net once per distinct time in the
            batch (one host synchronisation per call, two when rows sit at several times, as under
            dopri5; a wrapped field with ``select`` is called through ``select`` of each time's
            rows, and a ``PosteriorRecorder`` records the call as one); ``"shared"`` passes
            ``t[0]`` as a 0-dim t without checking (no synchronisation: fixed-step grids only;
            ``kfm.sample`` refuses it under dopri5).
        per_sample: names of the extras that hold one row per sample; they follow ``select``
            (dopri5 evaluates only the samples in flight) and the per-time groups of
            ``time="scalar"``, and the others reach every call whole. None (the default) guesses:
            a tensor whose first dimension is the batch size is per-sample, which slices a shared
            tensor that happens to have B rows (a class-embedding table with B classes); name
            them to be sure.
        **extras: fixed keyword arguments for every call (e.g. a condition tensor); a keyword
            given at call time replaces the extra of that name for that call. One the model's
            signature does not name (and no ``**kwargs`` takes) is a ValueError when built; a
            positional extra at call time (a guidance's labels) filling a parameter that an extra or
            a keyword of the call also names is a ValueError at the call.
    """

    def __init__(self, model: Callable[..., torch.Tensor], *, time: str = "batch",
                 per_sample: Iterable[str] | None = None, **extras: Any):
        _check_callable(model)
        _check_time_mode(time)
        check_extras_taken(model, extras, "kfm.ModelXT")
        self.inner, self.time = model, time
        self._slots = _positional_slots(model)  # the parameters positional extras fill (by name: see below)
        self._take_extras(per_sample, extras)

    _selected_from: int | None = None   # the batch size select() cut this adapter from
    # how the model is called, given the callable: as it is, model(x, t, ...), unless
    # _take_keyword_call says by name. The rule is chosen once, when built (a class-level default);
    # applying it to the callable (_by_name's closure) still happens per call, per time group under
    # time="scalar"
    _convention: Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]] = staticmethod(_as_is)

    def _take_keyword_call(self, by_name: bool, extra_names: tuple[str, ...] | None,
                           positional_order: tuple[str, ...] | None = None) -> None:
        """Call the model as flow_matching's ``ODESolver`` does, ``model(x=x, t=t, **extras)``, where
        ``by_name`` (integrations.flow_matching says so for a model whose signature names x and t: a
        keyword-only forward, or t before x), ``extra_names`` being the names positional extras fill
        (None: they follow x and t, which lead the signature; see :func:`_by_name`) and
        ``positional_order``, for a model with ``*args``, its positional parameters before it, in order
        (None: it has none); else by position."""
        self._convention = (functools.partial(_by_name, extra_names=extra_names, positional_order=positional_order)
                            if by_name else _as_is)
        if by_name and extra_names is not None:
            self._slots = extra_names

    @property
    def calls_model_by_name(self) -> bool:
        """True where ``from_model_wrapper`` set the call by name (:meth:`_take_keyword_call`)."""
        return self._convention is not _as_is or super().calls_model_by_name

    def _take_extras(self, per_sample: Iterable[str] | None, extras: dict[str, Any]) -> None:
        """Check ``per_sample`` against ``extras`` and hold both (also for extras named ``time`` or
        ``per_sample``, which the constructor's own keywords keep out of ``**extras``)."""
        if per_sample is not None:
            if isinstance(per_sample, str):  # "cond" would read as the names c, o, n, d
                raise ValueError(f"per_sample must be a list of extra names, got the string {per_sample!r}")
            per_sample = tuple(per_sample)
            for name in per_sample:
                if name not in extras:
                    raise ValueError(f"per_sample names {name!r}, which is not among the extras {sorted(extras)}")
                if not (isinstance(extras[name], torch.Tensor) and extras[name].dim() >= 1):
                    raise ValueError(f"per_sample extra {name!r} must be a tensor with a batch dimension, "
                                     f"got {type(extras[name]).__name__}")
        self.per_sample, self.extras = per_sample, extras

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, *args: Any, **kwargs: Any) -> torch.Tensor:
        """v(x, t) in kinetic_fm's clock: x (B, ...), t (B,) or one number; (B, ...) like the net's output."""
        if args:  # before the try: the notes on cut extras below do not apply to a parameter given twice
            self._refuse_doubled_parameter(len(args), kwargs)
        try:
            return self._call(x, t, args, kwargs)
        except (RuntimeError, IndexError, ValueError, TypeError) as err:
            note = self._extras_hint(x.shape[0])
            if note:
                add_note(err, note)
            raise

    def _call(self, x: torch.Tensor, t: torch.Tensor | float, args: tuple, kwargs: dict) -> torch.Tensor:
        how = self._convention
        if self.per_sample is None:
            return _call_time_mode(self.inner, how, self.time, x, t, args, {**self.extras, **kwargs})
        shared = {k: v for k, v in self.extras.items() if k not in self.per_sample}
        rows = self._rows_for(x.shape[0])

        def bind(inner):  # bound into the callable, shared extras are never sliced by the per-time grouping
            return how(functools.partial(inner, **shared) if shared else inner)
        return _call_time_mode(self.inner, bind, self.time, x, t, args, {**rows, **kwargs})

    def _refuse_doubled_parameter(self, count: int, kwargs: dict) -> None:
        """ValueError where one of ``count`` positional extras fills a parameter that a keyword of the call
        or a fixed extra also gives. By position Python said "got multiple values", naming neither source;
        by name the positional extra, passed as a keyword, replaced a shared fixed extra without a word."""
        for place, name in enumerate(self._slots[:count], start=1):
            if name is not None and (name in kwargs or name in self.extras):
                given = f"keyword {name}= of this call" if name in kwargs else f"extra {name}= the field was built with"
                raise DoubledExtraError(f"the positional extra {place} fills the model's parameter {name!r}, which the "
                                 f"{given} also gives; give {name} once, by position (a guidance's labels) or by name")

    def select(self, active: torch.Tensor) -> "ModelXT":
        """As for every adapter; per-sample extras are sliced to the active rows."""
        part = super().select(active)
        batch = active.shape[0]
        if self.per_sample is None:
            part.extras = {key: _rows(value, active, batch) for key, value in self.extras.items()}
        else:
            rows = {key: value[active] for key, value in self._rows_for(batch).items()}
            part.extras = {**self.extras, **rows}
        part._selected_from = batch
        return part

    def _extras_hint(self, rows: int) -> str | None:
        """A note for an error raised by a call on ``rows`` rows that met the net on part of a
        batch (dopri5's samples still running, time="scalar"'s groups by time): the extras that
        were cut with the rows by the guess, or passed whole beside the declared per-sample
        ones; None when the call was on a whole batch or no extra is suspect."""
        how = []
        if self._selected_from is not None:
            how.append(f"dopri5 calls the net with only the {rows} of {self._selected_from} samples still running")
        if self.time == "scalar":
            how.append("time='scalar' calls it once per distinct time, with that time's rows")
        if not how:
            return None
        how = " and ".join(how)
        if self.per_sample is None:
            cut = [key for key, value in self.extras.items() if has_rows(value, rows)]
            if cut:
                return (f"{how}; the extras {cut} have as many rows as the call, so by the guess they hold one "
                        "per sample and were cut with its rows; if one of them is shared (a table), list only the "
                        "per-sample ones, e.g. ModelXT(net, ..., per_sample=['y']), and the rest reach every call "
                        "whole")
            return None
        sizes = {rows, self._selected_from} - {None}
        whole = [key for key, value in self.extras.items()
                 if key not in self.per_sample and any(has_rows(value, n) for n in sizes)]
        if whole:
            return (f"{how}; the extras {whole} have a row per sample but are not in per_sample, so they "
                    f"reached the net whole; if they hold one row per sample, add them: "
                    f"per_sample={[*self.per_sample, *whole]}")
        return None

    def _rows_for(self, batch: int) -> dict[str, torch.Tensor]:
        """The per-sample extras, each checked to have ``batch`` rows."""
        rows = {name: self.extras[name] for name in self.per_sample}
        for name, value in rows.items():
            if value.shape[0] != batch:
                raise ValueError(f"per_sample extra {name!r} has {value.shape[0]} rows for a batch of {batch}")
        return rows

    def _describe(self) -> str:
        keys = ", ".join(f"{k}=..." for k in self.extras)
        rows = f", per_sample={list(self.per_sample)}" if self.per_sample is not None else ""
        return f"time={self.time!r}{rows}" + (f", {keys}" if keys else "")


class DiscreteTime(_Adapter):
    """A net indexed by integer steps: calls ``inner(x, int(t·(T − 1)))`` with a long tensor.

    The map truncates, as the paper's U-Nets are called (t = 0 ↦ 0, t = 1 ↦ T − 1); t is first
    clamped to [0, 1]. Args: ``inner`` callable ``(x, step, ...)``; ``num_timesteps`` T ≥ 2.
    """

    def __init__(self, inner: Callable[..., torch.Tensor], num_timesteps: int = 1000):
        _check_callable(inner, "inner")
        _refuse_guidance_parts_within(inner, "DiscreteTime", "sum its part energies over the net's integer steps, "
                                      "not over t")
        if _clock_within(inner, ReversedTime) is not None:
            # the reversed clock would read integer steps as times: 1000, −98000, ... and samples near 1e18
            raise ValueError("DiscreteTime around ReversedTime hands integer steps to a clock that reads times in "
                             "[0, 1]; for a net whose step T − 1 is noise (DiT) the order is "
                             "ReversedTime(DiscreteTime(net, num_timesteps), timestep_scale=1)")
        # at most 2**53: t·(T − 1) exact in float64
        self.inner, self.num_timesteps = inner, check_integer("num_timesteps", num_timesteps, 2, 2**53)

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        """int(t·(T − 1)) as int64 in [0, T − 1], t clamped to [0, 1].

        The product is formed in float32 for float32 and half-precision t (exact for a half t,
        and a float32 rounding of a step's time j/(T − 1) maps to j as before), in float64 for
        float64 t or T − 1 beyond 2**24 (where float32 cannot hold every step). In bfloat16
        999·0.5 rounded to 500 and float16 overflowed beyond 65504."""
        wide = t.dtype == torch.float64 or self.num_timesteps - 1 > 2**24
        product = t.to(torch.float64 if wide else torch.float32).clamp(0.0, 1.0) * (self.num_timesteps - 1)
        return product.to(torch.int64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, *args: Any, **kwargs: Any) -> torch.Tensor:
        """v(x, t) in kinetic_fm's clock: x (B, ...), t (B,) or one number; (B, ...) like the net's output."""
        return self.inner(x, self.step_index(batch_time(t, x)), *args, **kwargs)

    def _describe(self) -> str:
        return f"num_timesteps={self.num_timesteps}"


class ReversedTime(_Adapter):
    """A net on the reversed clock σ = 1 − t (σ = 1 noise, σ = 0 data), as diffusers' SD3/Flux.

    Calls ``inner(x, timestep_scale·(1 − t))``. Such a net's velocity is dx/dσ = −dx/dt, so its
    output is negated (``flip_sign=True``); pass ``flip_sign=False`` when it predicts noise or
    data instead (those mean the same in both clocks) and wrap with ``NoisePrediction`` /
    ``DataPrediction`` outside. The scale is what the net's ``timestep`` argument expects, which
    differs between diffusers' transformers: ``SD3Transformer2DModel`` takes ``1000·σ``
    (``timestep_scale=1000``), ``FluxTransformer2DModel`` takes σ itself and multiplies by 1000
    inside (``timestep_scale=1``; ``FluxPipeline`` passes ``timestep / 1000``). When unsure, read
    the ``timestep`` its own pipeline passes. A wrong scale raises nothing and samples wrongly.
    """

    # the inner clock runs the other way: a field singular at its own σ = 1 is singular at our
    # t = 0, which no solver's last step touches
    singular_at_one = False

    def __init__(
        self, inner: Callable[..., torch.Tensor], *, timestep_scale: float = 1000.0, flip_sign: bool = True
    ):
        _check_callable(inner, "inner")
        _refuse_guidance_parts_within(inner, "ReversedTime", "sum its part energies over the net's σ = 1 − t, "
                                      "which decreases (each call would restart them), not over t")
        timestep_scale = as_scalar(timestep_scale)
        if not (is_real(timestep_scale, finite=True) and timestep_scale > 0):
            raise ValueError(f"timestep_scale must be a finite number > 0, got {timestep_scale!r}")
        flip_sign = check_flag("flip_sign", flip_sign)
        clock = _clock_within(inner, DiscreteTime) if timestep_scale != 1 else None
        if clock is not None:
            # DiscreteTime clamps its time to [0, 1]: 1000·σ read as 1, step T − 1 at every call;
            # a scale below 1 is not clamped but compresses the steps (0.5: σ = 1 read as step 499)
            if timestep_scale > 1:
                effect = "which DiscreteTime clamps to [0, 1] (step T − 1 at every call)"
            else:
                top = int(clock.step_index(torch.tensor([timestep_scale], dtype=torch.float64)))
                effect = (f"which DiscreteTime maps to steps 0 to {top} only, compressed (σ = 1, pure noise, "
                          f"reads as step {top}, not {clock.num_timesteps - 1})")
            raise ValueError(f"ReversedTime(timestep_scale={timestep_scale:g}) around DiscreteTime hands it "
                             f"{timestep_scale:g}·σ, {effect}; "
                             "DiscreteTime maps σ in [0, 1] to its steps itself: use timestep_scale=1")
        self.inner, self.timestep_scale, self.flip_sign = inner, float(timestep_scale), flip_sign

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, *args: Any, **kwargs: Any) -> torch.Tensor:
        """v(x, t) in kinetic_fm's clock: x (B, ...), t (B,) or one number; (B, ...) like the net's output."""
        sigma = 1.0 - batch_time(t, x)
        out = tensor_output(self.inner(x, sigma * self.timestep_scale, *args, **kwargs), "the wrapped net")
        return -out if self.flip_sign else out

    def _describe(self) -> str:
        return f"timestep_scale={self.timestep_scale:g}, flip_sign={self.flip_sign}"


_DEFAULT_CLAMP = 1e-3




def _prediction(out: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """The net's ``what`` prediction, which must have x's shape: a (B, 1) output would broadcast
    against x, and kfm.sample only sees the adapter's correctly shaped result."""
    out = tensor_output(out, "the wrapped net")
    if out.shape != x.shape:
        shape = tuple(out.shape)
        raise ValueError(f"the wrapped net must return its {what} prediction with x's shape {tuple(x.shape)}, "
                         f"got {shape}")
    return out


def _clock_within(field, clock: type) -> "_Adapter | None":
    """The ``clock`` adapter (:class:`DiscreteTime` or :class:`ReversedTime`) that ``field`` hands
    its time to unchanged, through call-convention adapters and guidance, or None."""
    from .guidance import ClassifierFreeGuidance

    def inner_of(obj) -> tuple[str, object] | None:
        if isinstance(obj, (ModelTX, ModelXT)):
            return "inner", obj.inner
        if isinstance(obj, ClassifierFreeGuidance):
            return "model", obj.model
        return None
    return next((obj for _, obj in wrapper_chain(field, inner_of) if isinstance(obj, clock)), None)


def _refuse_guidance_parts_within(inner, adapter: str, why: str) -> None:
    """ValueError for ``adapter`` around a ``ClassifierFreeGuidance(track_parts=True)``, saying
    ``why`` its part energies would not be the ½∫‖v_c‖², ½∫‖v_u‖² it promises: inside a
    prediction adapter the guidance combines ε̂ or x̂1 (92 % off the velocities' in one case);
    inside a clock adapter it sums over the net's own clock (σ decreasing: each call restarted the
    sums, a third of the energy; integer steps: Δ 999× too large, then refused)."""
    from .guidance import ClassifierFreeGuidance

    def inner_of(obj) -> tuple[str, object] | None:
        return ("inner", obj.inner) if isinstance(obj, _Adapter) else None
    guidance = next((obj for _, obj in wrapper_chain(inner, inner_of) if isinstance(obj, ClassifierFreeGuidance)),
                    None)
    if guidance is not None and guidance.track_parts:
        raise ValueError(
            f"{adapter} around ClassifierFreeGuidance(track_parts=True) would {why}; put the guidance "
            f"outside: ClassifierFreeGuidance({adapter}(net), labels, scale, null_label, track_parts=True) "
            "guides the same field")


@functools.lru_cache(maxsize=64)
def _rounded(bound: float, dtype: torch.dtype, *, up: bool) -> float:
    """``bound`` as a value of ``dtype``, rounded up (``up``) or down, not to nearest: in
    bfloat16 1 − 1e-3 rounds to 1 (DataPrediction divided by 1 − t = 0) and a float16 t_min just
    above 1/(T − 1) rounds below it (NoisePrediction's DiscreteTime net saw step 0 again)."""
    value = torch.tensor(bound, dtype=dtype)
    if (float(value) < bound) if up else (float(value) > bound):
        value = torch.nextafter(value, torch.tensor(math.inf if up else -math.inf, dtype=dtype))
    return float(value)


class NoisePrediction(_Adapter):
    """A net predicting the noise ε̂ ≈ x0 of the linear path, turned into a velocity.

    On x_t = (1 − t)·ε + t·x1:  x̂1 = (x − (1 − t)·ε̂)/t,  so  v = x̂1 − ε̂ = (x − ε̂)/t.
    The division is singular at t = 0 (where x = ε and v cannot be recovered from ε̂ alone:
    an exact net returns ε̂ = x there, so the formula gives v = 0). The field is therefore
    evaluated at max(t, ``t_min``), net included: v(x, t) := v(x, max(t, t_min)), finite on
    grids that start at 0 and off by O(t_min) on the first step. In x's dtype the clamp is
    ``t_min`` rounded up (a half-precision t_min never falls below it).

    ``t_min`` defaults to 1e-3, raised when ``inner`` is a :class:`DiscreteTime` (or hands its time
    unchanged to one: ``ModelXT``/``ModelTX``, classifier-free guidance) to just above its
    first step 1/(T − 1): with T = 1000, 1e-3 truncates to step 0, where the net sees t = 0 and
    the first velocity would be 0 again. ``t_min`` must lie in (0, 1) (ValueError otherwise).
    """

    def __init__(self, inner: Callable[..., torch.Tensor], *, t_min: float | None = None):
        _check_callable(inner, "inner")
        if t_min is None:
            t_min = _DEFAULT_CLAMP
            stepped = _clock_within(inner, DiscreteTime)
            if stepped is not None and stepped.num_timesteps > 2:
                # a relative 1e-6 above 1/(T − 1) keeps int(t·(T − 1)) at 1 in float32 as in float64
                t_min = max(t_min, (1.0 + 1e-6) / (stepped.num_timesteps - 1))
        _refuse_guidance_parts_within(inner, "NoisePrediction", "track the energies of the noise predictions, not "
                                      "of velocities")
        self.inner, self.t_min = inner, inside_unit_interval("t_min", t_min)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, *args: Any, **kwargs: Any) -> torch.Tensor:
        """v(x, t) in kinetic_fm's clock: x (B, ...), t (B,) or one number; (B, ...) like the net's output."""
        t = batch_time(t, x)
        t = t.clamp(min=_rounded(self.t_min, t.dtype, up=True))
        noise = _prediction(self.inner(x, t, *args, **kwargs), x, "noise")
        return (x - noise) / _broadcast(t, x)

    def _describe(self) -> str:
        return f"t_min={self.t_min:g}"


class DataPrediction(_Adapter):
    """A net predicting the data x̂1 of the linear path, turned into a velocity.

    On x_t = (1 − t)·ε + t·x1:  ε̂ = (x − t·x̂1)/(1 − t),  so  v = x̂1 − ε̂ = (x̂1 − x)/(1 − t).
    Singular at t = 1 (an exact net returns x̂1 = x there, so the formula gives v = 0): the
    field is evaluated at min(t, 1 − ``gap_min``), net included (1 − gap_min rounded down in x's
    dtype: in bfloat16 1 − 1e-3 is 0.99609375, not 1), and declares ``singular_at_one`` so that
    ``kfm.sample`` takes the last step of heun with Euler, of rk4 with Heun's third-order method
    and of dopri5 with its stages before the step's end (``tableau.DOPRI5_END``), instead of
    evaluating the end stage at t = 1 (rk4 stays fourth order). ``inner`` is a callable
    ``inner(x, t, ...)`` returning x̂1 with x's shape; ``gap_min`` must lie in (0, 1) (ValueError
    otherwise).

    ``gap_min`` trades two errors. Inside 1 − gap_min the step divides x̂1 − x by gap_min, not by
    1 − t, so a run whose grid goes there (the last steps of a cosine grid of ~50 steps or more, a
    uniform grid of over ~330 rk4 or 1,000 Euler steps, a dopri5 run whose last step is shorter
    than 9·gap_min, its last stage lying at 8/9 of it) ends short of x̂1: with the default 1e-3 an
    exact x̂1 field missed its data by 1e-3 and its energy after t = 0.999 read 56 % low, at any
    number of steps. A smaller gap_min removes that but lets a trained net's error δ in x̂1 reach
    the velocity as δ/(1 − t): with 1e-6 a net off by 0.01·tanh(x) read a KPE of 134 for the
    exact 2.1 under dopri5 (2.4 with the default). Keep the default for trained nets; pass e.g.
    1e-6 for an exact x̂1.
    """

    singular_at_one = True

    def __init__(self, inner: Callable[..., torch.Tensor], *, gap_min: float = 1e-3):
        _check_callable(inner, "inner")
        _refuse_guidance_parts_within(inner, "DataPrediction", "track the energies of the data predictions, not "
                                      "of velocities")
        self.inner, self.gap_min = inner, inside_unit_interval("gap_min", gap_min)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, *args: Any, **kwargs: Any) -> torch.Tensor:
        """v(x, t) in kinetic_fm's clock: x (B, ...), t (B,) or one number; (B, ...) like the net's output."""
        t = batch_time(t, x)
        t = t.clamp(max=_rounded(1.0 - self.gap_min, t.dtype, up=False))
        data = _prediction(self.inner(x, t, *args, **kwargs), x, "data")
        return (data - x) / _broadcast(1.0 - t, x)

    def _describe(self) -> str:
        return f"gap_min={self.gap_min:g}"


__all__ = [
    "DataPrediction",
    "DiscreteTime",
    "ModelTX",
    "ModelXT",
    "NoisePrediction",
    "ReversedTime",
    "batch_time",
]
