"""Input checks, the non-finite velocity error and the training-mode warning."""
from __future__ import annotations

import collections
import functools
import itertools
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ..checks import VelocityOutputError, add_note, caller_outside_the_package, declares, tensor_output
from ..gemm import autocast_enabled
from ..holdings import attribute_uses, closure_values, loaded_globals, own_attributes, partial_parts


class NonFiniteVelocityError(FloatingPointError):
    """The velocity field returned NaN or Inf.

    The fixed-step solvers detect it from ‖v‖², formed in float32 for float32 and half-precision
    samples (float64 for float64 ones), so a finite float32 velocity with ‖v‖ > 1.8e19 is
    reported too; dopri5 forms ‖v‖² in float64.

    Attributes: ``step`` (index of the first bad step), ``time`` (the t at which it was
    evaluated), ``indices`` (sample indices in the batch that went non-finite there).
    """

    def __init__(self, step: int, time: float, indices: list[int]):
        self.step, self.time, self.indices = step, time, indices
        shown = indices[:20] + (["..."] if len(indices) > 20 else [])
        super().__init__(
            f"velocity is non-finite at step {step} (t = {time:.6g}) for sample indices {shown} "
            "(or, in float32, so large that its squared norm overflows: ‖v‖ > 1.8e19); "
            "pass on_nonfinite='flag' to mark these samples and continue"
        )


class StepLimitError(RuntimeError):
    """dopri5 made more than ``max_steps`` attempted steps before every sample reached t = 1.

    A RuntimeError, as before it had a class of its own. Attributes: ``max_steps`` (the limit),
    ``indices`` (sample indices in the batch still short of t = 1).
    """

    def __init__(self, max_steps: int, indices: list[int]):
        self.max_steps, self.indices = max_steps, indices
        shown = indices[:20] + (["..."] if len(indices) > 20 else [])
        super().__init__(
            f"dopri5 exceeded max_steps = {max_steps} attempted steps with {len(indices)} samples "
            f"unfinished (sample indices {shown}); loosen rtol/atol or raise max_steps"
        )


def check_initial_state(x0: torch.Tensor) -> None:
    """Check the (B, ...) starting states ``x0`` that ``sample`` was given, before any field call.

    Raises:
        TypeError: ``x0`` is not a ``torch.Tensor``.
        ValueError: it has no dimension or an empty batch (B = 0), is not floating point, or holds
            NaN or Inf.
    """
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must have a non-empty batch dimension, got shape {tuple(x0.shape)}")
    if not torch.is_floating_point(x0):
        raise ValueError(f"x0 must be floating point, got dtype {x0.dtype}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or Inf")


CONVENTION_HINT = ("kfm.sample calls velocity(x, t) with x of shape (B, ...) and t of shape (B,), t = 0 at the "
                   "noise; a net written forward(t, x) (torchcfm) needs kfm.ModelTX(net), and the README's "
                   "section 'Adapters: use a network written for another convention' lists the rest")
# for a field that calls its net by name (from_model_wrapper, KineticODESolver): the order of the
# net's parameters is not in question, its clock and its output still are
BY_NAME_HINT = ("the model is called by name, model(x=x, t=t, ...), as flow_matching's ODESolver calls it, so the "
                "order of its parameters is not the cause; t = 0 at the noise, and the README's section "
                "'Adapters: use a network written for another convention' lists adapters for other clocks and "
                "predictions")


def convention_hint(velocity) -> str:
    """The note on the call convention for an error of ``velocity`` (the field ``kfm.sample`` was
    given): :data:`BY_NAME_HINT` where it declares ``calls_model_by_name``, else :data:`CONVENTION_HINT`."""
    return BY_NAME_HINT if declares(velocity, "calls_model_by_name") else CONVENTION_HINT


def stage_velocity(velocity: Callable) -> Callable:
    """What a sampler calls at its stages for the field ``velocity``: an analytic field's
    ``unchecked``, which skips the check of times that the sampler's grid (checked once) or dopri5's
    own clock keeps in [0, 1]; any other field itself, a subclass's own ``__call__`` included."""
    from ..fields.analytic import ClosedForm

    kind = type(velocity)   # not isinstance: it reads __class__, which a field's own __getattribute__ may refuse
    closed_form = issubclass(kind, ClosedForm) and kind.__call__ is ClosedForm.__call__
    return velocity.unchecked if closed_form else velocity


def first_velocity(velocity, x: torch.Tensor, t: torch.Tensor, field=None) -> torch.Tensor:
    """The sampler's first call ``velocity(x, t)``, its output checked; an error raised inside the
    velocity (a net given another call convention fails there, often obscurely) gets a note
    that states the convention, unless it carries a note already (the library's adapters and
    guidance name a closer cause) (Python ≥ 3.11 shows notes under the traceback). ``field``: the
    field ``kfm.sample`` was given, where ``velocity`` is a solver's closure around it (for the
    note, :func:`convention_hint`)."""
    field = velocity if field is None else field
    try:
        v = velocity(x, t)
    except VelocityOutputError:
        raise  # says what came back and how to fix it; the call order was fine
    except (RuntimeError, TypeError, IndexError, ValueError) as err:
        text = str(err)
        # a net that reads t as one number: float(t) (ValueError) or t.item() (RuntimeError)
        one_number = "only one element tensors" in text or "cannot be converted to Scalar" in text
        if isinstance(err, ValueError) and not one_number:
            raise  # a ValueError of the velocity's own checks says what it means
        if getattr(err, "__notes__", None):
            raise  # a note from inside (a guidance's doubled batch, an adapter's extras) names the cause
        if one_number:
            scalar = ("time='scalar' where the field is built" if declares(field, "calls_model_by_name")
                      else "kfm.ModelXT(net, time='scalar')")
            add_note(err, f"{convention_hint(field)}; a net taking t as one number needs {scalar}")
        else:
            add_note(err, _dtype_hint(x) if _about_types(text) else convention_hint(field))
        raise
    check_velocity_output(v, x, field=field)
    return v


def _about_types(text: str) -> bool:
    """Whether torch's message ``text`` is about dtypes or devices: "Expected all tensors to be on
    the same device", "expected m1 and m2 to have the same dtype", and convolutions' "Input type
    (float) and bias type (c10::BFloat16) should be the same"."""
    return any(word in text for word in ("dtype", "device", "Expected all tensors", "Input type (",
                                         "weight type", "bias type", "scalar type"))


def state_version(x: torch.Tensor) -> int | None:
    """``x``'s version counter, which every in-place operation on it or on a view of it moves;
    None for a tensor made under ``torch.inference_mode`` (it keeps no counter)."""
    return None if x.is_inference() else x._version


def check_state_unchanged(x: torch.Tensor, version: int | None, step: int, time: float, *,
                          is_x0: bool = False) -> None:
    """ValueError if the velocity changed the state ``x`` it was called with in place (``version``
    from :func:`state_version` before the call; None skips the check). The solvers hand a stage
    the state itself, not a copy, so such a change would move every later step silently.
    ``is_x0``: ``x`` is the caller's x0 itself (the fixed-step solvers' first step; dopri5 works
    on a copy), which the message then says has changed too."""
    if version is not None and x._version != version:
        also = " (here x0 itself: an x0 passed in is now changed too)" if is_x0 else ""
        raise ValueError(
            f"the velocity changed its input x in place (step {step}, t = {time:.6g}); x is the sampler's "
            f"state{also}, so the run would go on from altered "
            "values. Make that operation out of place (x = x * s, not x.mul_(s); no inplace=True on an "
            "activation applied to the input), or call the net on a copy: lambda x, t: net(x.clone(), t)"
        )


def check_outputs_unchanged(outputs: list[torch.Tensor], versions: list[int | None], kept: tuple[int, ...],
                            step: int, time: float | None = None) -> None:
    """ValueError if the velocity wrote into a tensor it returned for an earlier stage of this
    step that the solver still reads (``kept`` indexes ``outputs``; ``versions`` from
    :func:`state_version` when each came back; None skips; ``step`` and ``time`` name the step,
    dopri5's try without a time). A wrapper that returns one preallocated buffer for every call
    does that, and the step would use the last answer for all: metadata only, no synchronisation."""
    for l in kept:
        if versions[l] is not None and outputs[l]._version != versions[l]:
            where = f"dopri5's try {step}" if time is None else f"step {step}, t = {time:.6g}"
            raise ValueError(
                f"the velocity wrote into the tensor it returned for an earlier stage ({where}), which the "
                "solver still reads: it reuses one output buffer across calls (a "
                "static-buffer, CUDA-graph or TensorRT wrapper?). Return a new tensor from every call, e.g. "
                "lambda x, t: field(x, t).clone()")


# what to do about a state in another dtype or on another device than the network, in the words of the
# entry the user called: kfm.sample's here; KineticODESolver.sample sets its own around its run (state_remedy)
_STATE_REMEDY: ContextVar[str] = ContextVar("state_remedy", default=(
    "make x0 in the network's dtype and device (kfm.sample's dtype= and device=), or keep x0 and convert "
    "inside the call, e.g. lambda x, t: net(x.to(net_dtype), t).to(x.dtype)"))


@contextmanager
def state_remedy(remedy: str) -> Iterator[None]:
    """Within the block, the dtype and device errors of the velocity say ``remedy`` (what to do, in the
    words of the entry that samples) in place of kfm.sample's dtype= and device=."""
    token = _STATE_REMEDY.set(remedy)
    try:
        yield
    finally:
        _STATE_REMEDY.reset(token)


def _dtype_hint(x: torch.Tensor) -> str:
    """What to do when the velocity's network works in another dtype or on another device than x."""
    where = (" (torch.autocast is on: it makes the network return a lower precision)"
             if autocast_enabled(x.device.type) else "")
    return f"x is {x.dtype} on {x.device}{where}; {_STATE_REMEDY.get()} (README: 'A network in reduced precision')"


def check_velocity_output(v: object, x: torch.Tensor, at: str = "", *, step: int | None = None,
                          time: float | None = None, field=None) -> None:
    """Shape, dtype and device of v(x, t) must match x. The solvers check every call: it reads
    only the tensors' metadata (no host synchronisation), and a later call returning (B, 1) or
    float64 would otherwise be broadcast or promoted into the state without an error. ``at``
    names the call in the message (e.g. " during dopri5's steps"; empty for the first call);
    ``step`` and ``time`` name it as " at step 2 (t = 0.5)", formatted only when a check fails
    (the fixed-step loop calls this at every stage). ``field``: the field ``kfm.sample`` was given,
    for the wrong shape's note (:func:`convention_hint`)."""
    tensor_output(v)
    if v.shape == x.shape and v.dtype == x.dtype and v.device == x.device:
        return
    if step is not None:
        at = f" at step {step} (t = {time:.6g})"
    if v.shape != x.shape:
        raise ValueError(
            f"velocity returned shape {tuple(v.shape)}{at} but x has shape {tuple(x.shape)}; "
            f"v(x, t) must return one velocity per coordinate of x ({convention_hint(field)})"
        )
    if v.dtype != x.dtype:
        raise ValueError(f"velocity returned dtype {v.dtype}{at} but x has dtype {x.dtype}; {_dtype_hint(x)}")
    raise ValueError(f"velocity returned a tensor on {v.device}{at} but x is on {x.device}")


class TrainingModeWarning(UserWarning):
    """The velocity's network has layers that are random (dropout, in training mode) or
    batch-dependent (batch norm in training mode, or without running statistics), so samples and
    KPE are neither reproducible nor per sample."""


# attributes by which DiT/SiT's label embedder and timm's DropPath hold their drop probability
_DROP_ATTRIBUTES = ("dropout_prob", "drop_prob", "drop_path_prob", "drop_rate")


# torch.jit.script turns every layer into a RecursiveScriptModule that keeps the class name only
_SCRIPTED_DROPOUTS = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                                "FeatureAlphaDropout"})
_SCRIPTED_BATCH_NORMS = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})


def _layer_name(module: torch.nn.Module) -> str:
    """The layer's class name; for a scripted layer, the name of the class it was scripted from."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", type(module).__name__)
    return type(module).__name__


def _stochastic_layer(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.jit.ScriptModule):
        name = _layer_name(module)
        if name in _SCRIPTED_BATCH_NORMS:
            no_statistics = getattr(module, "running_mean", None) is None and getattr(module, "running_var", None) is None
            return module.training or no_statistics
        if name == "RReLU":
            return module.training and getattr(module, "lower", 0.0) != getattr(module, "upper", 0.0)
        return name in _SCRIPTED_DROPOUTS and module.training and float(getattr(module, "p", 0.0)) > 0
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # batch statistics, as torch decides
        return module.training or (module.running_mean is None and module.running_var is None)
    if not module.training:
        return False
    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, torch.nn.MultiheadAttention):
        return module.dropout > 0
    if isinstance(module, torch.nn.RReLU):  # a random negative slope per element while training
        return module.lower != module.upper
    return any(isinstance(p := getattr(module, name, None), float) and p > 0 for name in _DROP_ATTRIBUTES)


_NOT_HOLDERS = (torch.Tensor, str, bytes, int, float, bool, type, types.ModuleType)


def _identity(obj: object) -> object:
    """What the walk has seen: a bound method by its function and object (each attribute read
    makes a new method object, which may be freed and its id reused), anything else by id (the
    walk makes no other objects, so those stay alive through the velocity)."""
    if type(obj) is types.MethodType:  # not isinstance: that reads __class__, which a proxy may refuse
        return ("method", id(obj.__func__), id(obj.__self__))
    return id(obj)


def _same_object_method(parent: object, child: object) -> bool:
    return (type(parent) is types.MethodType and type(child) is types.MethodType
            and child.__self__ is parent.__self__)


def _reachable_modules(root: object, budget: int = 2000, fan_out: int = 32) -> list[torch.nn.Module]:
    """The ``nn.Module``s a velocity callable holds: itself, the attributes of adapters and
    guidance wrappers (``__dict__`` and ``__slots__``), a partial's function and arguments, and
    what a function or bound method reads: the globals it loads, its closure's cells and the
    method's object, each followed along the chains of attributes the code reads on it
    (``self.ema``, ``Registry.Inner.net``: classes and staticmethods included; a Python module's
    objects but not its functions and classes) or taken whole where the code uses it otherwise
    (a class or Python module is then skipped), and the first
    ``fan_out`` items of lists, tuples, deques, sets and dicts. Four levels deep (a method calling
    a method of its own object spends none), at most ``budget`` objects looked at, an object that
    cannot be looked at skipped; a module's own children come from ``named_modules``."""
    found, seen, queue = [], set(), collections.deque([(root, 0)])
    while queue and budget > 0:
        obj, depth = queue.popleft()
        budget -= 1
        try:  # an exotic object (a proxy that refuses any attribute, even __class__): not ours to judge
            key = _identity(obj)
            if key in seen or obj is None or isinstance(obj, _NOT_HOLDERS):
                continue
            seen.add(key)
            if isinstance(obj, torch.nn.Module):
                found.append(obj)
                continue
            children = _held_objects(obj, fan_out) if depth < 4 else []
        except Exception:
            continue
        # a method calling another method of its object stays on the object: no level spent
        queue.extend((child, depth if _same_object_method(obj, child) else depth + 1) for child in children)
    return found


# a container's methods (dict.get, list.__getitem__) hand out what it holds
_CONTAINERS = (dict, list, tuple, collections.deque, set, frozenset)


def _used_part(obj: object, chains: frozenset[tuple[str, ...]] | None) -> list:
    """What of ``obj`` a function can reach that reads only the attribute ``chains`` on it (None: it
    uses ``obj`` some other way too): the end of each chain (a closure over a training module
    that calls only ``self.ema`` reaches ``self.ema``), else the whole object. Links are looked
    up without running any code: where one would run some (a property, ``__getattr__``), the
    object the chain has reached is taken whole. A container is taken whole."""
    if chains is None or isinstance(obj, _CONTAINERS):
        return [obj]
    parts: list = []
    for chain in sorted(chains):
        value = obj
        for attr in chain:
            try:
                value = _static_attribute(value, attr)
            except AttributeError:
                break
        parts.append(value)
    return parts


def _static_attribute(obj: object, attr: str) -> object:
    """``obj.attr`` where it can be had without running code; AttributeError where it cannot (a
    property, cached_property, ``__getattr__``, a C method: the caller takes ``obj`` whole)."""
    import inspect

    if isinstance(obj, types.ModuleType):  # the objects a Python module holds (checkpoints.net), not its code
        value = inspect.getattr_static(obj, attr)  # (torch.cat, F.dropout: they lead into library code)
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type, types.ModuleType)):
            raise AttributeError(attr)
        return value
    if isinstance(obj, torch.nn.Module):  # what torch's __getattr__ serves: parameters, buffers, submodules
        for store in ("_parameters", "_buffers", "_modules"):
            held = getattr(obj, store, None)
            if isinstance(held, dict) and attr in held:
                return held[attr]
    value = inspect.getattr_static(obj, attr)
    if isinstance(value, types.FunctionType):  # a method of obj's class: follow it bound
        own = getattr(obj, "__dict__", None)   # a function held by a class, or by the object itself, is not bound
        unbound = isinstance(obj, type) or (isinstance(own, dict) and own.get(attr) is value)
        return value if unbound else types.MethodType(value, obj)
    if isinstance(value, staticmethod):
        return value.__func__
    if isinstance(value, classmethod):
        return types.MethodType(value.__func__, obj if isinstance(obj, type) else type(obj))
    if isinstance(value, types.MemberDescriptorType) and not isinstance(obj, type):
        return value.__get__(obj, type(obj))  # a __slots__ entry (C code; AttributeError when unset)
    if isinstance(value, torch.nn.Module) or not hasattr(type(value), "__get__"):
        return value  # a value held on the object or its class
    raise AttributeError(attr)  # any other descriptor runs code


def _held_objects(obj: object, fan_out: int) -> list:
    children: list = []
    if isinstance(obj, functools.partial):
        children += partial_parts(obj, fan_out)
    if isinstance(obj, types.MethodType):
        function, bound = obj.__func__, obj.__self__
        if not isinstance(function, types.FunctionType):
            return children + [function, bound]
        code = function.__code__
        children += _used_part(bound, attribute_uses(code).get(code.co_varnames[0], frozenset())
                               if code.co_varnames else None)
        obj = function  # its globals and cells are read below, in this step: a chain of methods costs one each
    elif isinstance(obj, types.BuiltinMethodType):
        children.append(obj.__self__)
    if isinstance(obj, types.FunctionType):  # `lambda x, t: net(x, t)` with a global net
        for value, chains in (*loaded_globals(obj), *closure_values(obj)):
            children += _used_part(value, chains)
        return children
    if isinstance(obj, _CONTAINERS):  # a long list (a dataset, a cache) is not where nets live
        return children + list(itertools.islice(obj.values() if isinstance(obj, dict) else obj, fan_out))
    call = getattr(type(obj), "__call__", None)
    if isinstance(call, types.FunctionType):  # an instance of a Python class: what its __call__ loads
        children.append(call)
    return children + own_attributes(obj)


def training_layers(obj: object) -> list[str]:
    """The random or batch-dependent layers active in the networks ``obj`` holds (dropout and batch
    norm in training mode, batch norm without running statistics), as "Dropout at 'body.1'";
    what :func:`warn_if_training` warns about. Never raises: an object it cannot look at is skipped."""
    return _layers_of(_reachable_modules(obj))


def _layers_of(modules: list[torch.nn.Module]) -> list[str]:
    """:func:`training_layers` of the networks ``modules``."""
    layers, listed = [], set()
    for module in modules:
        try:
            for name, m in module.named_modules():
                if id(m) not in listed and _stochastic_layer(m):
                    listed.add(id(m))
                    layers.append(f"{_layer_name(m)} at {name!r}" if name else _layer_name(m))
        except Exception:  # a module that cannot list its children: no advice rather than no sample
            continue
    return layers


def _listed(layers: list[str]) -> str:
    more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
    return ", ".join(layers[:3]) + more


def warn_if_training(velocity: object) -> None:
    """Warn when a network inside ``velocity`` has dropout or batch norm in training mode (or batch
    norm without running statistics): each call then draws new dropout masks or normalises by the
    batch (and updates the running statistics), so KPE changes between identical runs and with the
    batch's composition. Layers that drop at random inside ``forward`` (``F.dropout``) are not seen.
    The walk itself never raises: an object it cannot look at is skipped."""
    _warn_velocity(training_layers(velocity))


def _warn_velocity(layers: list[str]) -> None:
    """:func:`warn_if_training` for a velocity whose active ``layers`` are given."""
    if layers:
        warnings.warn(
            f"the velocity's network has random or batch-dependent layers active ({_listed(layers)}): "
            "its samples and KPE change between identical runs or with the batch; call net.eval() before "
            "sampling (kfm.sample leaves a module's mode as it is, and puts back the running statistics "
            "that batch norm in training mode updates along the run; batch norm without running statistics "
            "normalises by the batch even in eval). If the net you sample is another one, in eval, held "
            "beside a training net, filter kfm.TrainingModeWarning",
            TrainingModeWarning, stacklevel=caller_outside_the_package(),
        )


def _warn_feature_map(layers: list[str]) -> None:
    """:func:`warn_if_training` for a metric's feature map, whose active ``layers`` are given: in
    training mode its features, and every distance, density or score taken from them, change
    between identical calls and with the chunk size the metric feeds it."""
    if layers:
        warnings.warn(
            f"the feature map's network has random or batch-dependent layers active ({_listed(layers)}): "
            "its features, and every number measured on them, change between identical calls and with "
            "the chunk size; call net.eval() first (the metrics leave a module's mode as it is, and put "
            "back the running statistics that batch norm in training mode updates)",
            TrainingModeWarning, stacklevel=caller_outside_the_package(),
        )


class _NetworksAsFound:
    """Base of :class:`feature_map_as_found` and :class:`velocity_as_found`: warns on entry of the
    random or batch-dependent layers of the networks ``held`` holds (``_warn``), and on leaving, by
    return, error or interrupt alike, puts back every buffer of each of those modules that is in
    training mode as it was (see :class:`feature_map_as_found`)."""

    _warn = staticmethod(_warn_feature_map)

    def __init__(self, held: object):
        self.held = held
        self._kept: list[tuple[torch.nn.Module, str, torch.Tensor, torch.Tensor]] = []

    def __enter__(self):
        modules = _reachable_modules(self.held)
        self._warn(_layers_of(modules))
        self._kept = _training_buffers(modules)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        """Puts every kept buffer back, each whatever the others do. One that cannot go back (the
        net resized it in place) never hides the error that ended the run: that error leaves with a
        note naming the buffers; after a run that returned, a RuntimeError names them, chained
        from the first failure."""
        kept, self._kept = self._kept, []
        if not kept:  # nothing in training mode: not even a mode switch
            return
        failures: list[tuple[str, Exception]] = []
        with torch.inference_mode():  # a buffer made under inference mode takes in-place writes only there
            for module, name, buffer, copy in kept:
                try:
                    if getattr(module, name, None) is not buffer:
                        setattr(module, name, buffer)
                    if buffer.shape != copy.shape:  # copy_ would broadcast (3,) into (2, 3) and call it put back
                        raise RuntimeError(f"the net resized it in place to {tuple(buffer.shape)}, from "
                                           f"{tuple(copy.shape)} when the run began")
                    buffer.copy_(copy)
                except Exception as err:  # noqa: BLE001 - reported below, after the others went back
                    failures.append((f"{name!r} of {type(module).__name__}", err))
        if not failures:
            return
        listed = "; ".join(f"{where}: {type(err).__name__}: {err}" for where, err in failures)
        message = (f"could not put back {len(failures)} buffer(s) of the training-mode network(s) as they were "
                   f"found ({listed}); the others went back, these hold what the run left")
        if exc is not None:
            add_note(exc, message)  # the run's own error is the one to read
            return
        raise RuntimeError(message) from failures[0][1]


class feature_map_as_found(_NetworksAsFound):
    """``with feature_map_as_found(space):`` around a metric's use of the networks ``space`` holds (a
    module, a bound method such as ``net.features``, a function or FeatureSpace holding nets, found
    as :func:`warn_if_training` finds them): warns once of their random or batch-dependent layers,
    and on leaving, by return, error or interrupt alike, puts back every buffer of each of those
    modules that is in training mode as it was: batch norm's running statistics and
    ``num_batches_tracked``, and whatever else a module updates while training (spectral norm's
    power-iteration vectors, a custom running average). Measuring then leaves the network's later
    outputs as they were; the features themselves are the training-mode ones the warning speaks of.

    Buffers are cloned once on entry and copied back in place, every one (batch norm's kernel moves
    its running statistics without moving their version counter under inference mode): a tensor the
    caller holds stays the one the module holds, and one the module rebinds is bound back. Modules in
    eval mode are not copied (no cost; torch's normalisation layers and spectral norm leave their
    buffers alone in eval), nor are lazy modules' uninitialised buffers."""

    @property
    def space(self) -> object:
        return self.held


class velocity_as_found(_NetworksAsFound):
    """``with velocity_as_found(velocity):`` around a run of ``kfm.sample``: as
    :class:`feature_map_as_found` for the networks a velocity holds, warning as
    :func:`warn_if_training` does. The run itself is the training-mode one, its buffers moving call
    by call as before; they are put back when it ends, so sampling leaves the caller's network (and
    its later outputs) as it found it. A velocity whose nets are all in eval mode costs the walk
    :func:`warn_if_training` made anyway, and no copy."""

    _warn = staticmethod(_warn_velocity)


def _training_buffers(modules: list[torch.nn.Module]
                      ) -> list[tuple[torch.nn.Module, str, torch.Tensor, torch.Tensor]]:
    """(module, name, buffer, a copy) for each buffer of the modules in training mode
    among ``modules`` and their children, each once; a module that cannot list them is skipped."""
    kept, seen = [], set()
    for root in modules:
        try:
            for module in root.modules():
                if id(module) in seen or not module.training:
                    continue
                seen.add(id(module))
                for name, buffer in list(module._buffers.items()):
                    if isinstance(buffer, torch.Tensor) and not torch.nn.parameter.is_lazy(buffer):
                        kept.append((module, name, buffer, buffer.detach().clone()))
        except Exception:  # as the walk: an object it cannot look at is skipped
            continue
    return kept
