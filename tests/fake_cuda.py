"""fake_cuda: run "cuda" code paths on a CPU-only machine, with CUDA's device rules enforced.

A test utility. The project's machines and CI have no GPU, so without it the library's CUDA paths
would never run before a user's GPU ran them: ``tests/test_devices.py`` runs its cuda cases under
it, other tests use it for one device path or to count the host synchronisations a loop makes,
and ``tests/test_fake_cuda.py`` checks the harness itself. It relies on torch internals of the
2.13 series (``DisableTorchFunctionSubclass``, ``_nn._parse_to``, ``_foreach_utils``); revisit on a
torch upgrade.

Under ``with fake_cuda() as fc:`` code that asks for ``device="cuda"`` computes on the CPU, but
every tensor that would live on the GPU is an instance of the tensor subclass :class:`_OnCuda`,
whose ``.device`` reports ``cuda:0``. Whatever real CUDA refuses, the harness refuses too, with
the error text real CUDA gives:

* an op mixing a "cuda" tensor with a CPU tensor of ndim >= 1 (CPU 0-dim tensors and Python
  scalars are allowed, as CUDA allows them as scalars) -> ``RuntimeError: Expected all tensors
  to be on the same device ...``; ops that never accept CPU operands (index_select, gather,
  scatter, cat, mm, ...) refuse CPU 0-dim tensors as well;
* ``cpu_tensor[cuda_index]`` -> ``RuntimeError: indices should be either on cpu or on the same
  device as the indexed tensor (cpu)``; ``cuda_tensor[cpu_index]`` is allowed (CUDA moves the
  index), as is ``cuda[idx] = cpu_value`` when the index is basic (a copy_) or the value 0-dim;
* ``.numpy()`` / ``np.asarray`` on a "cuda" tensor -> ``TypeError: can't convert cuda:0 device
  type tensor to numpy ...``;
* a CPU generator driving a "cuda" random op, or a "cuda" generator driving a CPU one ->
  ``RuntimeError: Expected a 'cuda' device type for generator but found 'cpu'`` (and vice versa).

It also *counts host synchronisations* that involve "cuda" tensors, with the source line that
caused each (see :class:`SyncEvent`): reading values on the host (``item``, ``tolist``,
``bool()``/``int()``/``float()``/``__index__``, formatting), data-dependent output shapes
(``nonzero``, ``unique``, ``masked_select``, boolean-mask indexing, ``repeat_interleave`` without
``output_size``), comparisons returning Python bools (``torch.equal``, ``allclose``), device
to host copies (``.cpu()``, ``.to("cpu")``, ``copy_`` into a CPU tensor, ``torch.save``) and
blocking host to device copies (``.to("cuda")`` / ``torch.tensor(..., device="cuda")`` of host
data, CPU index tensors used on a "cuda" tensor), which PyTorch implements as
``cudaMemcpyAsync`` + ``cudaStreamSynchronize`` unless ``non_blocking=True``.

Further emulation (each can be switched off):

* ``emulate_tf32``: float32 matrix products (mm, matmul, bmm, addmm, linear, einsum,
  tensordot, cdist) are computed on inputs rounded to TF32 (10-bit mantissa) when
  ``torch.backends.cuda.matmul.fp32_precision == "tf32"`` (legacy: ``allow_tf32``), and float32
  convolutions when ``torch.backends.cudnn.conv.fp32_precision == "tf32"`` (torch's default, as
  on real Ampere+ GPUs). Rounding the inputs is what tensor cores do; the accumulation order of
  real kernels is not reproduced.
* ``separate_cuda_rng``: random ops whose output is on "cuda" and that are given no generator
  (dropout, ``torch.randn(..., device="cuda")``, ``normal_`` on a "cuda" tensor, ...) draw from a
  separate default "cuda" generator, seeded by ``torch.manual_seed`` / ``torch.cuda.manual_seed*``
  and saved by ``torch.cuda.get_rng_state``, exactly as on a GPU, where ``torch.get_rng_state()``
  does not cover them. (The numbers are CPU numbers, not what a GPU would draw.)

``torch.cuda`` is patched so that is_available() is True, device_count() is 1, and
synchronize / set_device / get_device_name / memory statistics / RNG functions work.
``nn.Module.to("cuda")`` / ``.cuda()`` move parameters and buffers (torch's
``overwrite_module_params_on_conversion`` is switched on inside the context so parameters
become "cuda" objects; they stay ``isinstance(p, nn.Parameter)`` and train with autograd and
torch.optim).

Known limits (things real CUDA does that are not emulated): kernel launch asynchrony and data
races, numerical differences of CUDA kernels (reduction orders, atomics, cuBLAS algorithms; the
CPU's numbers are returned), out-of-memory, CUDA generator streams (numbers differ from a GPU's),
multiple devices (only cuda:0 exists), streams/events, ``torch.load(map_location="cuda")``,
``pin_memory``. Positional ``device`` arguments are recognised only for ``Tensor.to`` and
``torch.as_tensor``.
"""
from __future__ import annotations

import collections
import contextlib
import copy as _copy
import dataclasses
import os
import threading
import traceback
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["fake_cuda", "FakeCuda", "SyncEvent", "is_fake_cuda", "active"]

CUDA0 = torch.device("cuda", 0)
_CPU = torch.device("cpu")
_HERE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))

_NUMPY_ERROR = ("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                "tensor to host memory first.")


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------
class _Local(threading.local):
    inside = 0          # > 0 while a real (CPU) kernel runs on behalf of a "cuda" op


_LOCAL = _Local()
_ACTIVE: "FakeCuda | None" = None


def active() -> "FakeCuda | None":
    """The harness currently entered, or None."""
    return _ACTIVE


@contextlib.contextmanager
def _inside() -> Iterator[None]:
    """Run real kernels: subclass dispatch off, and "cuda" tensors report their true device (cpu)
    to any Python code torch runs inside the op (F.group_norm, torch.functional.einsum, ...)."""
    _LOCAL.inside += 1
    try:
        with torch._C.DisableTorchFunctionSubclass():
            yield
    finally:
        _LOCAL.inside -= 1


def is_fake_cuda(t: Any) -> bool:
    return isinstance(t, _OnCuda)


# --------------------------------------------------------------------------------------------
# the "cuda" tensor
# --------------------------------------------------------------------------------------------
class _OnCuda(torch.Tensor):
    """A CPU tensor that the harness treats as living on cuda:0."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return _CPU if _LOCAL.inside else CUDA0

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return not _LOCAL.inside

    @property
    def is_cpu(self) -> bool:  # type: ignore[override]
        return bool(_LOCAL.inside)

    def __reduce_ex__(self, proto):
        # torch.save of a cuda tensor copies it to the host; saved as a plain tensor so that
        # torch.load(weights_only=True) of the file works as it does for a real cuda tensor
        # (which is saved with location "cuda:0"; loaded here with map_location="cpu").
        _record("d2h", "torch.save/pickle", self)
        with _inside():
            plain = torch.Tensor._make_subclass(torch.Tensor, self.detach(), False)
        return plain.__reduce_ex__(proto)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        harness = _ACTIVE
        if harness is None:
            # a "cuda" tensor that escaped the context behaves as a plain CPU tensor
            with _inside():
                return _strip(func(*args, **kwargs))
        return harness._op(func, args, kwargs)


def _to_fake(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a plain CPU tensor) as a "cuda" tensor sharing its storage and autograd history."""
    with _inside():
        if t.grad_fn is not None:
            return t.as_subclass(_OnCuda)
        return torch.Tensor._make_subclass(_OnCuda, t, t.requires_grad)


def _to_plain(t: torch.Tensor) -> torch.Tensor:
    with _inside():
        if t.grad_fn is not None:
            return t.as_subclass(torch.Tensor)
        return torch.Tensor._make_subclass(torch.Tensor, t, t.requires_grad)


def _strip(ret):
    if isinstance(ret, _OnCuda):
        return _to_plain(ret)
    if isinstance(ret, (tuple, list)):
        return _rebuild(ret, [_strip(r) for r in ret])
    return ret


def _rebuild(orig, items):
    if isinstance(orig, list):
        return items
    if hasattr(orig, "_fields"):              # a Python namedtuple
        return type(orig)(*items)
    try:
        return type(orig)(items)              # tuple, torch.return_types.*
    except TypeError:
        return tuple(items)


def _flat_tensors(obj, out: list) -> list:
    """Every tensor in args/kwargs (lists, tuples, dicts nested), cheaply."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flat_tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat_tensors(o, out)
    return out


# --------------------------------------------------------------------------------------------
# op tables (matched by function object where stable, else by name)
# --------------------------------------------------------------------------------------------
T = torch.Tensor
F = torch.nn.functional

_HOST_READ = {T.item: "item", T.tolist: "tolist", T.__bool__: "__bool__", T.__int__: "__int__",
              T.__float__: "__float__", T.__index__: "__index__", T.__complex__: "__complex__",
              T.is_nonzero: "is_nonzero", T.__contains__: "__contains__"}

# data-dependent output size: the host waits for the device to know it
_SHAPE_SYNC_NAMES = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount"}
_COMPARE_TO_BOOL = {torch.equal: "equal", T.equal: "equal", torch.allclose: "allclose",
                    T.allclose: "allclose"}

# ops that take tensors on different devices by design (copies), or only read sizes
_CROSS_DEVICE_OK_NAMES = {"copy_", "__setitem__", "__getitem__", "index_put_", "index_put",
                          "expand_as", "view_as", "reshape_as", "is_same_size", "result_type",
                          "can_cast", "type_as", "__deepcopy__", "is_set_to", "broadcast_tensors",
                          "_has_compatible_shallow_copy_type"}
# output device = device of args[0] for these (not "cuda because some input was")
_SELF_DEVICE_NAMES = {"copy_", "__setitem__", "__getitem__", "index_put_", "index_put",
                      "expand_as", "view_as", "reshape_as"}
# ops that never accept a CPU operand next to a CUDA one, not even a 0-dim scalar
_STRICT_NAMES = {"index_select", "gather", "scatter", "scatter_", "scatter_add", "scatter_add_",
                 "scatter_reduce", "scatter_reduce_", "index_add", "index_add_", "index_copy",
                 "index_copy_", "take", "take_along_dim", "cat", "concat", "concatenate", "stack",
                 "hstack", "vstack", "dstack", "mm", "matmul", "bmm", "addmm", "addmm_", "baddbmm",
                 "einsum", "embedding", "masked_scatter", "masked_scatter_", "linear", "conv1d",
                 "conv2d", "conv3d", "dot", "mv", "searchsorted", "bucketize", "put_", "put",
                 "index_reduce", "index_reduce_"}

_MATMUL_NAMES = {"mm", "matmul", "bmm", "addmm", "addmm_", "baddbmm", "addbmm", "linear", "einsum",
                 "tensordot", "__matmul__", "__rmatmul__", "cdist", "chain_matmul", "bilinear"}
_CONV_NAMES = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "convolution", "_convolution"}

_RANDOM_NAMES = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
                 "normal", "bernoulli", "multinomial", "poisson", "normal_", "uniform_",
                 "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_", "log_normal_",
                 "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                 "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_",
                 "feature_dropout", "feature_dropout_", "native_dropout", "rrelu", "rrelu_",
                 "gumbel_softmax", "rrelu_with_noise"}

_TO_DEVICE_FUNCS = {T.to, T.cuda, T.cpu}


def _name(func) -> str:
    name = getattr(func, "__name__", None)
    if name == "__get__" or name == "__set__":
        owner = getattr(func, "__self__", None)
        return f"{getattr(owner, '__name__', '?')}.{name}"
    return name or repr(func)


# --------------------------------------------------------------------------------------------
# sync bookkeeping
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SyncEvent:
    """One host synchronisation.

    kind: "host_read" (item, bool(), float(), tolist, format), "shape" (nonzero, unique,
        boolean-mask indexing, ...), "compare" (torch.equal / allclose), "d2h" (a device to
        host copy), "h2d" (a blocking host to device copy), "synchronize" (torch.cuda.synchronize).
    op: the torch function name. where: "file:line" of the innermost frame outside torch and
        this harness. stack: those frames, innermost last (only with ``record_stacks``).
    """

    kind: str
    op: str
    where: str
    stack: tuple[str, ...] = ()


def _user_frames() -> list[traceback.FrameSummary]:
    frames = traceback.extract_stack()
    return [f for f in frames
            if os.path.abspath(f.filename) != _HERE and not os.path.abspath(f.filename).startswith(_TORCH_DIR)
            and "contextlib" not in f.filename]


def _record(kind: str, op: str, tensor=None) -> None:
    h = _ACTIVE
    if h is None or h._paused:
        return
    frames = _user_frames()
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    stack = tuple(f"{f.filename}:{f.lineno} {f.name}" for f in frames[-h.stack_depth:]) if h.record_stacks else ()
    h.events.append(SyncEvent(kind, op, where, stack))


# --------------------------------------------------------------------------------------------
# TF32 emulation
# --------------------------------------------------------------------------------------------
def _tf32_round(t: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest TF32 value (1 sign, 8 exponent, 10 mantissa bits), ties to even."""
    bits = t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    out = bits.view(torch.float32).reshape(t.shape)
    return torch.where(torch.isfinite(t), out, t)


def _matmul_tf32_on() -> bool:
    m = torch.backends.cuda.matmul
    prec = getattr(m, "fp32_precision", None)   # torch >= 2.9; reading allow_tf32 can raise there
    return prec == "tf32" if prec is not None else bool(m.allow_tf32)


def _conv_tf32_on() -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    prec = getattr(conv, "fp32_precision", None) if conv is not None else None
    return prec == "tf32" if prec is not None else bool(torch.backends.cudnn.allow_tf32)


def _tf32_operands(name: str, args: tuple) -> tuple:
    """``args`` with the float32 product operands rounded to TF32 (biases and ``out`` untouched).

    The operands are the first two tensors (mm, matmul, linear, conv, cdist, tensordot, ...), the
    2nd and 3rd for the add-forms (addmm(bias, a, b), baddbmm, addbmm), every operand of einsum.
    A matmul with a 1-D operand is a GEMV/dot, which cuBLAS does not run on tensor cores.
    """
    def rnd(t):
        return _tf32_round(t) if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t

    args = list(args)
    if name == "einsum":
        ops = args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            return (args[0], type(ops[0])(rnd(o) for o in ops[0]))
        return (args[0], *(rnd(o) for o in ops))
    first = 1 if name in ("addmm", "addmm_", "baddbmm", "addbmm") else 0
    picked = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)][first:first + 2]
    if name in ("matmul", "__matmul__", "__rmatmul__") and any(args[i].dim() < 2 for i in picked):
        return tuple(args)
    for i in picked:
        args[i] = rnd(args[i])
    return tuple(args)


# --------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------
_RealGenerator = torch._C.Generator


class _FakeGenerator(_RealGenerator):
    """What ``torch.Generator`` builds inside the harness: a CPU generator that reports
    ``cuda:0`` when it was asked for with device="cuda"."""

    def __new__(cls, device="cpu"):
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            return _RealGenerator(device)
        if dev.type == "cuda" and dev.index not in (None, 0):
            raise RuntimeError("CUDA error: invalid device ordinal")
        g = super().__new__(cls, "cpu")
        g._fake_cuda = dev.type == "cuda"
        return g

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self):  # type: ignore[override]
        return CUDA0 if getattr(self, "_fake_cuda", False) else _CPU


def _gen_device_type(g) -> str:
    if isinstance(g, _FakeGenerator):
        return "cuda" if g._fake_cuda else "cpu"
    return g.device.type


# --------------------------------------------------------------------------------------------
# the harness
# --------------------------------------------------------------------------------------------
class FakeCuda:
    """State of one ``fake_cuda()`` context: sync events and options (see module docs)."""

    def __init__(self, *, record_stacks: bool = True, stack_depth: int = 12, emulate_tf32: bool = True,
                 separate_cuda_rng: bool = True):
        self.record_stacks, self.stack_depth = record_stacks, stack_depth
        self.emulate_tf32, self.separate_cuda_rng = emulate_tf32, separate_cuda_rng
        self.events: list[SyncEvent] = []
        self._paused = False
        self._cuda_rng = _RealGenerator("cpu")
        self._cuda_rng.manual_seed(torch.initial_seed())
        self._exit = contextlib.ExitStack()

    # ---------------------------------------------------------------- public helpers
    def count(self, *kinds: str) -> int:
        return sum(1 for e in self.events if not kinds or e.kind in kinds)

    def reset(self) -> None:
        self.events.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Do not record syncs inside (e.g. test bookkeeping)."""
        old, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = old

    @contextlib.contextmanager
    def window(self) -> Iterator[list]:
        """``with fc.window() as ev:`` -> ev holds the sync events of the block only."""
        start = len(self.events)
        box: list = []
        try:
            yield box
        finally:
            box.extend(self.events[start:])

    def summary(self, events=None, top: int = 30) -> str:
        events = self.events if events is None else events
        counter = collections.Counter((e.kind, e.op, e.where) for e in events)
        lines = [f"{n:6d}  {kind:11s} {op:22s} {where}" for (kind, op, where), n in counter.most_common(top)]
        return f"{len(events)} host synchronisations\n" + "\n".join(lines)

    # ---------------------------------------------------------------- enter / exit
    def __enter__(self) -> "FakeCuda":
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("fake_cuda() is already active")
        ex = self._exit
        ex.enter_context(_Patches(self))
        old = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(True)
        ex.callback(torch.__future__.set_overwrite_module_params_on_conversion, old)
        ex.enter_context(_Mode(self))
        _ACTIVE = self

        def _clear():
            global _ACTIVE
            _ACTIVE = None

        ex.callback(_clear)
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    # ---------------------------------------------------------------- RNG
    @contextlib.contextmanager
    def _cuda_rng_swapped(self) -> Iterator[None]:
        """Draw from the fake default cuda generator instead of torch.default_generator."""
        if not self.separate_cuda_rng:
            yield
            return
        cpu_state = torch.default_generator.get_state()
        torch.default_generator.set_state(self._cuda_rng.get_state())
        try:
            yield
        finally:
            self._cuda_rng.set_state(torch.default_generator.get_state())
            torch.default_generator.set_state(cpu_state)

    def _check_generator(self, name: str, kwargs: dict, target: str) -> None:
        g = kwargs.get("generator")
        if g is None:
            return
        have = _gen_device_type(g)
        if have != target:
            raise RuntimeError(f"Expected a '{target}' device type for generator but found '{have}'")

    # ---------------------------------------------------------------- ops on "cuda" tensors
    def _op(self, func, args, kwargs):
        """Handle a torch function with at least one "cuda" tensor among its arguments."""
        name = _name(func)
        self_t = args[0] if args else None

        # --- host reads and numpy
        if func in (T.numpy, T.__array__) and isinstance(self_t, _OnCuda):
            raise TypeError(_NUMPY_ERROR)
        if func in _HOST_READ and isinstance(self_t, _OnCuda):
            _record("host_read", _HOST_READ[func])
        elif func is T.__format__ and isinstance(self_t, _OnCuda):
            if self_t.dim() == 0:
                _record("host_read", "__format__")
                with _inside():
                    return self_t.detach().item().__format__(*args[1:])
        elif func in (T.__repr__, T.__str__) and isinstance(self_t, _OnCuda):
            _record("host_read", "__repr__")
            with _inside():
                text = torch.Tensor.__repr__(_to_plain(self_t.detach()))
            return text[:-1] + ", device='cuda:0')" if text.endswith(")") else text
        elif func is T.get_device and isinstance(self_t, _OnCuda):
            return 0
        elif func is T.__deepcopy__:
            return self._deepcopy(self_t, args[1] if len(args) > 1 else kwargs.get("memo", {}))
        elif func in _COMPARE_TO_BOOL:
            _record("compare", _COMPARE_TO_BOOL[func])

        tensors = _flat_tensors((args, kwargs), [])
        fake = [t for t in tensors if isinstance(t, _OnCuda)]
        cpu = [t for t in tensors if not isinstance(t, _OnCuda)]

        # --- indexing has its own device rules and syncs
        if func is T.__getitem__:
            self._check_index(self_t, args[1], None)
        elif func is T.__setitem__:
            self._check_index(self_t, args[1], args[2])
        elif name in ("index_put_", "index_put"):
            self._check_index(self_t, tuple(args[1]), args[2], explicit=True)
        elif name == "copy_" and isinstance(args[1], torch.Tensor):
            src = args[1]
            if isinstance(self_t, _OnCuda) != isinstance(src, _OnCuda) and not kwargs.get("non_blocking", False):
                _record("d2h" if isinstance(src, _OnCuda) else "h2d", "copy_")
        elif fake and cpu and name not in _CROSS_DEVICE_OK_NAMES:
            strict = name in _STRICT_NAMES
            with torch._C.DisableTorchFunction():
                bad = [t for t in cpu if strict or t.dim() > 0]
                shape = tuple(bad[0].shape) if bad else None
            if bad:
                raise RuntimeError(
                    "Expected all tensors to be on the same device, but found at least two devices, "
                    f"cuda:0 and cpu! (fake_cuda: {name} got a CPU tensor of shape {shape})")

        # --- data-dependent output sizes
        if name in _SHAPE_SYNC_NAMES and fake:
            _record("shape", name)
        elif name == "where" and len(args) + len(kwargs) == 1 and fake:
            _record("shape", "where(cond)")
        elif name == "repeat_interleave" and fake and kwargs.get("output_size") is None:
            if any(isinstance(a, torch.Tensor) for a in args[1:2]) or isinstance(kwargs.get("repeats"), torch.Tensor):
                _record("shape", "repeat_interleave")
        elif name in ("masked_fill", "masked_fill_") and len(args) > 2 and isinstance(args[2], _OnCuda):
            _record("host_read", "masked_fill(cuda value)")   # CUDA reads the value with .item()

        # --- generators
        if "generator" in kwargs and kwargs["generator"] is not None:
            target = "cuda" if fake and (isinstance(self_t, _OnCuda) or name in _RANDOM_NAMES) else "cpu"
            self._check_generator(name, kwargs, target)

        # --- run
        call_args, call_kwargs = args, kwargs
        if self.emulate_tf32 and fake and ((name in _MATMUL_NAMES and _matmul_tf32_on())
                                           or (name in _CONV_NAMES and _conv_tf32_on())):
            with _inside():
                call_args = _tf32_operands(name, args)
        random = name in _RANDOM_NAMES and kwargs.get("generator") is None
        with (self._cuda_rng_swapped() if random else contextlib.nullcontext()), _inside():
            ret = func(*call_args, **call_kwargs)

        # --- wrap results
        if name in _SELF_DEVICE_NAMES and not isinstance(self_t, _OnCuda):
            return ret
        if not fake:
            return ret
        inputs = {id(t) for t in tensors}
        return self._wrap(ret, inputs)

    def _wrap(self, ret, inputs: set):
        if isinstance(ret, torch.Tensor):
            if isinstance(ret, _OnCuda) or id(ret) in inputs:
                return ret
            return _to_fake(ret)
        if isinstance(ret, (tuple, list)) and ret and any(isinstance(r, torch.Tensor) for r in ret):
            return _rebuild(ret, [self._wrap(r, inputs) for r in ret])
        return ret

    def _deepcopy(self, t: torch.Tensor, memo: dict):
        if id(t) in memo:
            return memo[id(t)]
        with _inside(), torch.no_grad():
            new = t.detach().clone(memory_format=torch.preserve_format)
        new = _to_fake(new) if isinstance(t, _OnCuda) else new
        with _inside():
            new.requires_grad_(t.requires_grad)
        new.__dict__.update(_copy.deepcopy(t.__dict__, memo))
        memo[id(t)] = new
        return new

    def _check_index(self, self_t, index, value, explicit: bool = False) -> None:
        """Device rules and syncs of ``self_t[index]`` / ``self_t[index] = value``."""
        parts = index if isinstance(index, tuple) else (index,)
        self_cuda = isinstance(self_t, _OnCuda)
        advanced = False
        mask = False
        with torch._C.DisableTorchFunction():
            for p in parts:
                if isinstance(p, torch.Tensor):
                    if isinstance(p, _OnCuda) and not self_cuda:
                        raise RuntimeError("indices should be either on cpu or on the same device as the "
                                           "indexed tensor (cpu)")
                    is_mask = p.dtype in (torch.bool, torch.uint8)
                    if p.dim() == 0 and not explicit and (is_mask or not p.is_floating_point()):
                        if isinstance(p, _OnCuda):     # a 0-dim integer/bool index is read with item()
                            _record("host_read", "index by 0-dim tensor")
                        continue
                    advanced = True
                    mask = mask or is_mask
                    if self_cuda and not isinstance(p, _OnCuda):
                        _record("h2d", "cpu index tensor")       # moved with a blocking copy
                elif isinstance(p, (list,)) or type(p).__module__ == "numpy":
                    advanced = True
                    if self_cuda:
                        _record("h2d", "list/array index")
            if value is None:                                    # __getitem__
                if mask and self_cuda:
                    _record("shape", "boolean-mask index")
                return
            v_cuda = isinstance(value, _OnCuda)
            v_tensor = isinstance(value, torch.Tensor)
            scalar_value = not v_tensor or (value.dim() == 0 and not v_cuda)
            if advanced:
                if v_tensor and v_cuda != self_cuda and not (value.dim() == 0 and not v_cuda):
                    raise RuntimeError("Expected all tensors to be on the same device, but found at least "
                                       f"two devices, {'cuda:0' if self_cuda else 'cpu'} and "
                                       f"{'cuda:0' if v_cuda else 'cpu'}! (fake_cuda: index_put_ value)")
                if mask and self_cuda and not (len([p for p in parts if isinstance(p, torch.Tensor)]) == 1
                                               and scalar_value):
                    _record("shape", "boolean-mask index_put_")
            elif v_tensor and v_cuda != self_cuda and value.dim() > 0:
                _record("d2h" if v_cuda else "h2d", "setitem copy_")   # basic index: a copy_

    # ---------------------------------------------------------------- device-bearing calls
    def _device_call(self, func, args, kwargs):
        """Calls that name a device (factories, .to, .cuda, .cpu) or a generator: decided here."""
        name = _name(func)
        if func in _TO_DEVICE_FUNCS:
            return self._to(func, args, kwargs)
        if func is T.type_as:
            other = args[1]
            return self._to(T.to, (args[0],), {"device": other.device, "dtype": other.dtype})
        device = kwargs.get("device")
        if device is None and name == "as_tensor" and len(args) > 2:
            device, args = args[2], args[:2]
        dev = _parse_device(device)
        if dev is None or dev.type not in ("cpu", "cuda"):
            if "generator" in kwargs and kwargs["generator"] is not None:
                # a CPU factory, or an op on existing tensors (decided by _op when they are "cuda")
                tensors = _flat_tensors((args, {k: v for k, v in kwargs.items() if k != "generator"}), [])
                if not any(isinstance(t, _OnCuda) for t in tensors):
                    self._check_generator(name, kwargs, "cpu")
            return func(*args, **kwargs)
        kwargs = dict(kwargs)
        kwargs["device"] = _CPU
        to_cuda = dev.type == "cuda"
        self._check_generator(name, kwargs, dev.type)
        random = to_cuda and name in _RANDOM_NAMES and kwargs.get("generator") is None
        source = (args[1] if len(args) > 1 else kwargs.get("data")) if name == "new_tensor" else (
            args[0] if args else kwargs.get("data"))
        with (self._cuda_rng_swapped() if random else contextlib.nullcontext()), _inside():
            ret = func(*args, **kwargs)
        # a conversion of existing data (tensor/as_tensor/asarray/new_tensor) copies across devices
        converting = name in ("tensor", "as_tensor", "asarray", "new_tensor")
        if converting:
            src_cuda = isinstance(source, _OnCuda)
            if src_cuda != to_cuda:
                _record("h2d" if to_cuda else "d2h", name, source)
                if isinstance(source, torch.Tensor) and ret is source or (
                        isinstance(source, torch.Tensor) and isinstance(ret, torch.Tensor)
                        and _shares(ret, source)):
                    with _inside():
                        ret = ret.clone()
                elif not isinstance(source, torch.Tensor) and name in ("as_tensor", "asarray"):
                    with _inside():
                        ret = ret.clone()   # as_tensor(ndarray) shares memory on the CPU, not across devices
        if isinstance(ret, torch.Tensor):
            if to_cuda:
                return ret if isinstance(ret, _OnCuda) else _to_fake(ret)
            return _to_plain(ret) if isinstance(ret, _OnCuda) else ret
        return ret

    def _to(self, func, args, kwargs):
        t = args[0]
        src_cuda = isinstance(t, _OnCuda)
        copy = kwargs.get("copy", False)
        non_blocking = kwargs.get("non_blocking", False)
        memory_format = kwargs.get("memory_format", None)
        dtype = None
        if func is T.cpu:
            dev = _CPU
            memory_format = kwargs.get("memory_format", args[1] if len(args) > 1 else None)
        elif func is T.cuda:
            dev = _parse_device(kwargs.get("device", args[1] if len(args) > 1 else None)) or CUDA0
            if dev.type != "cuda":
                dev = torch.device("cuda", dev.index if dev.index is not None else 0)
            non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        else:
            rest = list(args[1:])
            if rest and isinstance(rest[0], torch.Tensor):            # to(other, non_blocking, copy)
                other = rest.pop(0)
                dev, dtype = other.device, other.dtype
                if rest:
                    non_blocking = rest.pop(0)
                if rest:
                    copy = rest.pop(0)
            else:
                with torch._C.DisableTorchFunction():
                    dev, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **{
                        k: v for k, v in kwargs.items() if k != "copy"})
                if "copy" not in kwargs:
                    # positional copy after non_blocking: to(device, dtype, non_blocking, copy)
                    bools = [a for a in rest if isinstance(a, bool)]
                    copy = bools[1] if len(bools) > 1 else False
        if dev is not None and dev.type not in ("cpu", "cuda"):
            return func(*args, **kwargs)
        if dev is not None and dev.type == "cuda" and dev.index not in (None, 0):
            raise RuntimeError("CUDA error: invalid device ordinal")
        dst_cuda = src_cuda if dev is None else dev.type == "cuda"
        kw = {}
        if dtype is not None:
            kw["dtype"] = dtype
        if memory_format is not None:
            kw["memory_format"] = memory_format
        with _inside():
            out = torch.Tensor.to(t, copy=bool(copy), **kw)
            if src_cuda != dst_cuda and (out is t or _shares(out, t)):
                out = out.clone()
        if src_cuda != dst_cuda and not non_blocking:
            _record("h2d" if dst_cuda else "d2h", f"{_name(func)}({'cuda' if dst_cuda else 'cpu'})")
        if dst_cuda:
            return out if isinstance(out, _OnCuda) else _to_fake(out)
        return _to_plain(out) if isinstance(out, _OnCuda) else out


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        with torch._C.DisableTorchFunction():
            return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.numel() > 0
    except Exception:
        return False


def _parse_device(device) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


class _Mode(TorchFunctionMode):
    """Sees every torch call first: routes the ones naming a device or a generator."""

    def __init__(self, harness: FakeCuda):
        super().__init__()
        self.h = harness

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._C._nn._parse_to:       # nn.Module.to parses its arguments: nothing to run
            return func(*args, **kwargs)
        if (func in _TO_DEVICE_FUNCS or func is T.type_as or "device" in kwargs or "generator" in kwargs
                or (_name(func) == "as_tensor" and len(args) > 2)):
            return self.h._device_call(func, args, kwargs)
        return func(*args, **kwargs)   # reaches _OnCuda.__torch_function__ when a "cuda" tensor is involved


# --------------------------------------------------------------------------------------------
# torch.cuda and friends
# --------------------------------------------------------------------------------------------
class _Patches:
    def __init__(self, harness: FakeCuda):
        self.h = harness
        self._saved: list[tuple[Any, str, Any]] = []

    def _set(self, obj, attr, value) -> None:
        self._saved.append((obj, attr, getattr(obj, attr, _MISSING)))
        setattr(obj, attr, value)

    def __enter__(self):
        h = self.h
        cuda = torch.cuda

        def _device_index(device=None) -> int:
            if device is None:
                return 0
            dev = _parse_device(device) if not isinstance(device, int) else torch.device("cuda", device)
            if dev.type != "cuda" or dev.index not in (None, 0):
                raise RuntimeError("CUDA error: invalid device ordinal")
            return 0

        def synchronize(device=None) -> None:
            _device_index(device)
            _record("synchronize", "torch.cuda.synchronize")

        def manual_seed(seed) -> None:
            h._cuda_rng.manual_seed(int(seed))

        def get_rng_state(device="cuda") -> torch.Tensor:
            _device_index(device)
            return h._cuda_rng.get_state()

        def set_rng_state(new_state, device="cuda") -> None:
            _device_index(device)
            h._cuda_rng.set_state(new_state)

        def seed() -> None:
            h._cuda_rng.seed()

        def _props(device=None):
            _device_index(device)
            return type("FakeCudaProperties", (), {"name": "fake cuda (CPU)", "total_memory": 80 << 30,
                                                   "major": 9, "minor": 0, "multi_processor_count": 132})()

        for attr, value in {
            "is_available": lambda: True,
            "is_initialized": lambda: True,
            "device_count": lambda: 1,
            "current_device": lambda: 0,
            "set_device": lambda device: _device_index(device),
            "synchronize": synchronize,
            "get_device_name": lambda device=None: (_device_index(device), "fake cuda (CPU)")[1],
            "get_device_capability": lambda device=None: (_device_index(device), (9, 0))[1],
            "get_device_properties": _props,
            "is_bf16_supported": lambda *a, **k: True,
            "memory_allocated": lambda device=None: 0,
            "max_memory_allocated": lambda device=None: 0,
            "memory_reserved": lambda device=None: 0,
            "max_memory_reserved": lambda device=None: 0,
            "reset_peak_memory_stats": lambda device=None: None,
            "reset_max_memory_allocated": lambda device=None: None,
            "empty_cache": lambda: None,
            # optimizers ask before each step (torch.optim's graph-capture check): a real call on
            # a CUDA build of torch without a driver raised cudaErrorInsufficientDriver (torch 2.11)
            "is_current_stream_capturing": lambda: False,
            "mem_get_info": lambda device=None: (80 << 30, 80 << 30),
            "manual_seed": manual_seed,
            "manual_seed_all": manual_seed,
            "seed": seed,
            "seed_all": seed,
            "initial_seed": lambda: h._cuda_rng.initial_seed(),
            "get_rng_state": get_rng_state,
            "set_rng_state": set_rng_state,
            "get_rng_state_all": lambda: [h._cuda_rng.get_state()],
            "set_rng_state_all": lambda states: h._cuda_rng.set_state(list(states)[0]),
        }.items():
            self._set(cuda, attr, value)
        self._set(torch, "Generator", _FakeGenerator)
        # torch >= 2.13's optimizers ask the device-generic API instead: on a CUDA build of torch
        # (which then sees an available "cuda") without a driver, its real stream call raised
        # cudaErrorInsufficientDriver at the first optimizer.step()
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None and hasattr(accelerator, "current_stream"):
            self._set(accelerator, "current_stream", lambda device=None: (_device_index(device), _FakeStream())[1])
        # clip_grad_norm_ & co. group tensors by their C++ device (always cpu here): report the
        # "cuda" groups under cuda:0 so those helpers move nothing across devices
        import torch.utils._foreach_utils as fu

        real_group = fu._group_tensors_by_device_and_dtype

        def group(tensorlistlist, with_indices=False):
            out = real_group(tensorlistlist, with_indices)
            fixed = {}
            for (device, dtype), value in out.items():
                lists = value[0]
                first = next((t for lst in lists for t in lst if t is not None), None)
                fixed[(CUDA0 if isinstance(first, _OnCuda) else device, dtype)] = value
            return fixed

        self._set(fu, "_group_tensors_by_device_and_dtype", group)
        import torch.nn.utils.clip_grad as cg
        if hasattr(cg, "_group_tensors_by_device_and_dtype"):
            self._set(cg, "_group_tensors_by_device_and_dtype", group)
        return self

    def __exit__(self, *exc):
        for obj, attr, value in reversed(self._saved):
            if value is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, value)


_MISSING = object()


class _FakeStream:
    """The current stream of the one fake device: never capturing a graph; ``synchronize`` is
    counted like ``torch.cuda.synchronize``."""

    def is_capturing(self) -> bool:
        return False

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        torch.cuda.synchronize()


def fake_cuda(**options) -> FakeCuda:
    """``with fake_cuda() as fc:`` -- see the module docstring. Options: ``record_stacks``
    (keep the calling frames of each sync, default True), ``stack_depth`` (12),
    ``emulate_tf32`` (True), ``separate_cuda_rng`` (True)."""
    return FakeCuda(**options)
