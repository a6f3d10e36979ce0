"""Classifier-free guidance (CFG) as a velocity field, so KPE is per generated sample.

A class-conditional net ``model(x, t, y)`` is evaluated once on a doubled batch (conditional rows,
then null-label rows) and combined as

    v = v_u + w·(v_c − v_u)

with guidance scale w (w = 1: conditional, w = 0: unconditional). Only the B guided rows are
returned, so ``kfm.sample`` measures the energy of the motion each sample actually makes.
"""
from __future__ import annotations

import copy
import math
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch

from ..checks import (add_note, as_scalar, check_flag, declares, declares_singular_at_one, is_real, one_evaluation_of,
                      optional_attribute, start_run_of, tensor_output, wrapper_chain)
from ..norms import squared_norm
from .adapters import DoubledExtraError, batch_time, has_rows

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


@dataclass(frozen=True)
class GuidanceEnergies:
    """Raw kinetic energies ½∫‖v‖² dt of the two parts of a guided run, (B,) float64 each.

    Left Riemann sums over the successive evaluation times of the run (see
    ``ClassifierFreeGuidance``), measured along the guided path.
    """

    conditional: torch.Tensor
    unconditional: torch.Tensor


class ClassifierFreeGuidance:
    """Guided velocity ``v(x, t)`` from a class-conditional ``model(x, t, y)``.

    Args:
        model: callable ``model(x, t, y)`` in our clock (t = 0 noise, t of shape (2B,)); wrap a
            net with another convention in the adapters of ``kinetic_fm.fields.adapters`` first
            (they pass ``y`` through).
        labels: the condition of each sample, a tensor with first dimension B (class indices
            (B,), or embeddings (B, ...)). A list or NumPy array becomes a tensor: integers as
            int64, reals in x's dtype at each call, a list of tensors stacked; these follow x to
            its device. Row i of x is generated with ``labels[i]``.
        scale: guidance scale w, any finite number; at w = 1 (w = 0) the result is the
            conditional (unconditional) velocity bit for bit.
        null_label: the "no condition" input: a number (filled into a tensor like ``labels``,
            e.g. the extra class index of DiT/SiT) or a tensor broadcastable to ``labels``.
        track_parts: also accumulate the raw energies of the conditional and unconditional
            velocities (see ``part_energies``). Off by default: it costs two norms per call.

    With ``track_parts=True`` each call at times t adds ½‖v_prev‖²·(t − t_prev) per sample, for the
    velocities of the previous call; ``part_energies()`` closes the last interval at t = 1. Along
    an Euler run this is exactly the reference left Riemann sum; for multi-stage solvers it is the
    left sum over all stage times (an approximation), and adaptive runs with rejected steps are
    not supported. The times are those the model sees, in x's dtype: in half precision they are
    rounded (the sampler steps in float64), so the sums differ from the sampler's by that
    rounding. Everything stays on the device. ``kfm.sample`` starts a new run through
    :meth:`start_run`; for callers that do not (flow_matching's ``ODESolver`` over
    ``as_model_wrapper``, a loop of your own), a call at an earlier time than the previous one
    starts a new run (``reset()`` does the same explicitly). After each call,
    ``last_conditional`` and ``last_unconditional`` hold the two (B, ...) velocities for callers
    who accumulate their own statistics: row i those of sample i's last evaluation. A fixed-step
    run evaluates every row at each call, so they are the last call's; dopri5 evaluates the samples
    in flight through :meth:`select` views, whose calls write their rows into the guidance they
    came from, so after a run row i holds sample i's last stage (at its end point, t = 1; on a
    model that declares ``singular_at_one``, the last step's stage at 8/9 of it), as a run of
    sample i alone would. A view's own attributes hold its call's rows only.
    """

    # a select() view's guidance it came from and its rows of that batch; None on the guidance itself
    # (not a reference to itself: a cycle would keep the model alive until the garbage collector runs).
    # Class defaults, so that a guidance unpickled from a state saved without them still runs
    _origin: "ClassifierFreeGuidance | None" = None
    _rows: torch.Tensor | None = None

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        labels: torch.Tensor | np.ndarray | Sequence,
        scale: float,
        null_label: int | float | torch.Tensor,
        *,
        track_parts: bool = False,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        self._labels_converted = not isinstance(labels, torch.Tensor)
        labels, self._labels_follow_x = _as_label_tensor(labels)
        if not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] == 0:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a tensor with a non-empty batch dimension (B, ...), got {shape}")
        scale = as_scalar(scale)
        if not is_real(scale, finite=True):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        null = _null_labels(null_label, labels)
        self.model, self.labels, self.scale = model, labels, float(scale)
        self.null_labels = null
        self.track_parts = check_flag("track_parts", track_parts)
        self.reset()

    @property
    def singular_at_one(self) -> bool:
        """Whether the model blows up at t = 1 (see ``kfm.sample``); passed through."""
        return declares_singular_at_one(self.model)

    @property
    def one_time_per_call(self) -> bool:
        """Whether the model sees one time for the whole batch (see ``kfm.sample``); passed through."""
        return declares(self.model, "one_time_per_call")

    @property
    def calls_model_by_name(self) -> bool:
        """Whether the model is called by name (see ``kfm.ModelXT``); passed through."""
        return declares(self.model, "calls_model_by_name")

    def select(self, active: torch.Tensor) -> "ClassifierFreeGuidance":
        """The guided field for the samples where the (B,) bool mask ``active`` is True, with
        their labels (dopri5 evaluates only the samples still in flight)."""
        if self.track_parts:
            raise ValueError("track_parts is not supported with adaptive solvers (dopri5): its rejected tries "
                             "restart the part energies; use a fixed-step solver, or track_parts=False")
        if not (isinstance(active, torch.Tensor) and active.dtype == torch.bool and active.dim() == 1
                and active.shape[0] == self.labels.shape[0]):
            # torch's IndexError on the labels named no argument; on a view, the mask is over its rows
            got = (f"a {active.dim()}-D {active.dtype} tensor of shape {tuple(active.shape)}"
                   if isinstance(active, torch.Tensor) else type(active).__name__)
            raise ValueError(f"active must be a ({self.labels.shape[0]},) bool mask, one entry per sample this "
                             f"guidance holds labels for (a select() view's rows, not its whole batch), got {got}")
        part = copy.copy(self)
        rows = active.to(self.labels.device)  # list labels not yet moved to the samples' device
        part.labels, part.null_labels = self.labels[rows], self.null_labels[rows]
        # the view's rows within the origin's batch, for its last velocities; no host synchronisation
        part._origin = self if self._origin is None else self._origin
        part._rows = active.clone() if self._rows is None else self._rows.masked_scatter(
            self._rows, active.to(self._rows.device))
        select = optional_attribute(self.model, "select")
        if select is not None:  # the model sees the doubled batch [x; x]
            with self._noting_undoubled_extras():
                part.model = select(torch.cat([active, active]))
        return part

    def reset(self) -> None:
        """Forget the accumulated part energies and the last velocities (start of a new run):
        ``last_conditional`` and ``last_unconditional`` read None until the run's first call, and
        rows a run never evaluates read NaN, never an earlier run's values."""
        self.last_conditional: torch.Tensor | None = None
        self.last_unconditional: torch.Tensor | None = None
        self._t_prev: torch.Tensor | None = None
        self._norm_c: torch.Tensor | None = None
        self._norm_u: torch.Tensor | None = None
        self._energy_c: torch.Tensor | None = None
        self._energy_u: torch.Tensor | None = None

    def start_run(self) -> None:
        """Called by ``kfm.sample`` before a run: passed on to the model (which may keep per-run
        state), then the part energies and the last velocities restart, as with :meth:`reset`."""
        # the model first: a model that refuses the run leaves the last run's energies readable
        start_run_of(self.model)
        # a run's first call at no earlier time than the last one's (a one-step Euler run calls at
        # t = 0 only) was not read as a new run, and carried a NaN ½·0·‖v‖² over
        self.reset()

    def one_evaluation(self) -> AbstractContextManager[None]:
        """A context whose calls (an adapter's per-time calls under ``time="scalar"``) are one
        evaluation of the field; passed on to the model (a ``PosteriorRecorder`` in it makes them one
        record, as under ``time="batch"``)."""
        return one_evaluation_of(self.model)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Guided v(x, t): x (B, ...), t (B,) or one number; (B, ...) in x's dtype (and, with
        ``track_parts``, the part energies advance)."""
        batch = x.shape[0]
        if self.labels.shape[0] != batch:
            raise ValueError(
                f"x has {batch} rows but labels has {self.labels.shape[0]}; give one label per sample"
            )
        t = batch_time(t, x)
        if self._labels_converted and self.labels.device != x.device:
            # made here from a list or array: they go where x is, once (a copy per call was a
            # host synchronisation per step)
            self.labels, self.null_labels = self.labels.to(x.device), self.null_labels.to(x.device)
        labels = torch.cat([self.labels, self.null_labels])
        if self._labels_follow_x:
            labels = labels.to(x.dtype)
        with self._noting_undoubled_extras():
            out = tensor_output(self.model(torch.cat([x, x]), torch.cat([t, t]), labels), "model")
        if out.shape[0] != 2 * batch:
            raise ValueError(f"model returned {out.shape[0]} rows for a doubled batch of {2 * batch}")
        v_c, v_u = out[:batch], out[batch:]
        self.last_conditional, self.last_unconditional = v_c, v_u
        if self._rows is not None:
            self._write_back(v_c, v_u)
        if self.track_parts:
            self._accumulate(t, v_c, v_u)
        # w = 1 and w = 0 are the conditional and unconditional velocities exactly, as documented
        # (the blend rounded them: bfloat16 x ended 0.03 off a plain conditional run)
        if self.scale == 1.0:
            return v_c.clone()
        if self.scale == 0.0:
            return v_u.clone()
        return v_u + self.scale * (v_c - v_u)

    @contextmanager
    def _noting_undoubled_extras(self) -> Iterator[None]:
        """An error raised inside gets a note where the model (or an adapter it wraps) holds extras with
        one row per sample of the whole batch: they do not double with the batch the model is called on."""
        try:
            yield
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            batch = (self._origin or self).labels.shape[0]
            # labels and an extra both filling one parameter (DoubledExtraError): its own message says the remedy
            names = [] if isinstance(err, DoubledExtraError) else _extras_with_rows(self.model, batch)
            if names:
                add_note(err, f"ClassifierFreeGuidance calls its model on a doubled batch of {2 * batch} rows (the "
                              f"conditional rows, then the null-label rows), and the model's extras {names} hold "
                              f"{batch} rows, one per sample, which do not double with it; repeat them for both "
                              f"halves, e.g. {names[0]}=torch.cat([{names[0]}, {names[0]}]), or pass the condition "
                              "in labels")
            raise

    def _write_back(self, v_c: torch.Tensor, v_u: torch.Tensor) -> None:
        """A view's velocities into the rows ``self._rows`` of its origin's last velocities (rows
        never evaluated read NaN), as new tensors: one a caller holds is not changed."""
        origin = self._origin
        rows = self._rows.to(v_c.device)
        full_shape = (rows.shape[0], *v_c.shape[1:])
        mask = rows.reshape(-1, *([1] * (v_c.dim() - 1))).expand(full_shape)
        for name, part in (("last_conditional", v_c), ("last_unconditional", v_u)):
            held = getattr(origin, name)
            fits = (isinstance(held, torch.Tensor) and held.shape == full_shape and held.dtype == part.dtype
                    and held.device == part.device)
            base = held if fits else part.new_full(full_shape, math.nan if part.is_floating_point() else 0)
            setattr(origin, name, base.masked_scatter(mask, part))

    def _accumulate(self, t: torch.Tensor, v_c: torch.Tensor, v_u: torch.Tensor) -> None:
        t64 = t.to(torch.float64)
        if self._t_prev is None:
            self._energy_c = torch.zeros_like(t64)
            self._energy_u = torch.zeros_like(t64)
        else:
            # stage times never decrease within a fixed-step run, so an earlier t starts a new run
            # (a reused wrapper without reset() went negative); decided on the device, no sync
            new_run = t64 < self._t_prev
            dt = t64 - self._t_prev
            self._energy_c = torch.where(new_run, 0.0, self._energy_c + 0.5 * dt * self._norm_c)
            self._energy_u = torch.where(new_run, 0.0, self._energy_u + 0.5 * dt * self._norm_u)
        self._t_prev, self._norm_c, self._norm_u = t64, squared_norm(v_c), squared_norm(v_u)

    def part_energies(self, t_end: float = 1.0) -> GuidanceEnergies:
        """Raw energies of the conditional and unconditional velocities, closing the run at t_end."""
        if not self.track_parts:
            raise ValueError("part energies were not tracked; construct with track_parts=True")
        if self._t_prev is None:
            raise ValueError("no velocity has been evaluated since the last reset()")
        t_end = as_scalar(t_end)
        last = float(self._t_prev.max())
        if last > 1.0:
            # the sums then cover some interval ending past 1, and a rejected step (a call at an
            # earlier time) restarted them too: no t_end makes them the run's
            raise ValueError(f"the last call was at t = {last:g} > 1: the solver stepped past the end (flow_matching's "
                             "ODESolver under dopri5: torchdiffeq's adaptive methods step over it and interpolate "
                             "back; their rejected steps, calls at earlier times, restart the part energies too), so "
                             "these are no energies of [0, 1]; use a fixed-step method, or kfm.sample")
        if not (is_real(t_end) and last <= t_end <= 1.0):  # beyond 1 (or NaN) would extrapolate
            raise ValueError(f"t_end must be a number in [{last:g}, 1] (from the last call's time to 1), "
                             f"got {t_end!r}")
        tail = 0.5 * (t_end - self._t_prev)
        return GuidanceEnergies(
            conditional=self._energy_c + tail * self._norm_c,
            unconditional=self._energy_u + tail * self._norm_u,
        )

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance({self.model!r}, scale={self.scale:g}, batch={self.labels.shape[0]})"


__all__ = ["ClassifierFreeGuidance", "GuidanceEnergies"]


def _as_label_tensor(labels) -> tuple[object, bool]:
    """Labels given as a list or a NumPy array, as a tensor, and whether real ones should follow
    x's dtype: class indices become int64 (nn.Embedding refuses uint8); embeddings are cast to
    x's dtype at each call (NumPy's float64 would fail in a float32 net); a list of per-sample
    tensors is stacked. Tensors pass unchanged."""
    if isinstance(labels, (list, tuple)) and labels and all(isinstance(v, torch.Tensor) for v in labels):
        out = torch.stack(list(labels))
    elif isinstance(labels, (list, tuple)) or type(labels).__module__ == "numpy":
        out = torch.as_tensor(labels)
    else:
        return labels, False
    if out.is_floating_point():
        return out, True
    return (out if out.dtype == torch.bool else out.to(torch.int64)), False


def _null_labels(null_label, labels: torch.Tensor) -> torch.Tensor:
    """``null_label`` (a number, or a tensor broadcastable to ``labels``) as a tensor like ``labels``;
    ValueError when it does not fit their dtype exactly (2.7 would become class 2)."""
    null_label = as_scalar(null_label)
    if isinstance(null_label, torch.Tensor):
        try:
            null = null_label.to(labels.device, labels.dtype).expand_as(labels)
        except RuntimeError as err:
            raise ValueError(
                f"null_label of shape {tuple(null_label.shape)} does not broadcast to labels of "
                f"shape {tuple(labels.shape)}"
            ) from err
        exact = labels.is_floating_point() or torch.equal(null.to(null_label.dtype),
                                                          null_label.to(labels.device).expand_as(labels))
        if not exact:  # 2.7 would become class 2
            raise ValueError(f"null_label changes value in the labels' dtype {labels.dtype}: "
                             f"{null_label.flatten()[:4].tolist()}")
    elif is_real(null_label):
        try:
            null = torch.full_like(labels, null_label)
            exact = labels.is_floating_point() or null.flatten()[0].item() == null_label
        except (RuntimeError, OverflowError):  # NaN, 1e30 or 2**70 into int64
            exact = False
        if not (math.isfinite(null_label) and exact):  # 2.7 would become class 2
            raise ValueError(f"null_label must be representable in the labels' dtype {labels.dtype}, "
                             f"got {null_label!r}")
    else:
        raise ValueError(f"null_label must be a number or a tensor, got {type(null_label).__name__}")
    return null


def _extras_with_rows(model: object, batch: int) -> list[str]:
    """The names of the tensor extras with ``batch`` rows that ``model``, or an adapter it wraps
    (through ``inner``), holds for every call (a ``kfm.ModelXT``'s ``extras``)."""
    def inner_of(obj: object) -> tuple[str, object] | None:
        inner = optional_attribute(obj, "inner")
        return None if inner is None else ("inner", inner)

    names: list[str] = []
    for _, held in wrapper_chain(model, inner_of):
        extras = optional_attribute(held, "extras")
        if isinstance(extras, dict):
            names += [name for name, value in extras.items() if has_rows(value, batch)]
    return names
