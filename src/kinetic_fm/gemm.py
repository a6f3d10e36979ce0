"""Large float32 matrix products on CPU through the faster of torch's BLAS and NumPy's.

torch's CPU wheels link MKL; NumPy's wheels link OpenBLAS. On AMD CPUs MKL's sgemm runs well
below OpenBLAS: on the 2-core AMD EPYC of BENCHMARKS.md, OpenBLAS is about 1.3× faster at the
shapes of the k-NN screening and of the EFM field. The heavy products of
:func:`kinetic_fm.nearest_neighbors` and :class:`kinetic_fm.EmpiricalFlow` therefore go through
:func:`matmul`, with the BLAS picked by :func:`choose`:

* only float32 products on CPU are ever routed to NumPy (float64 and CUDA stay with torch);
* ``CPU_GEMM = "auto"`` (the default) times both once per process and thread count
  (:func:`cpu_gemm`, ≈ 0.7 s) and picks NumPy's only when it is ≥ 5 % faster; work too small to
  repay that timing stays with torch without timing anything;
* ``CPU_GEMM = "torch"`` or ``"numpy"`` fixes the choice (tests and benchmarks use it).

NumPy's products run with its BLAS single-threaded, the output columns split over torch's thread
count of our own threads. OpenBLAS's own worker threads busy-wait for about 0.1 s after every
call (its OPENBLAS_THREAD_TIMEOUT), and on a machine with no spare core they halve the speed of
the torch operations that follow (measured 2.6× slower element-wise passes); threads waiting on
a queue do not spin. Results differ between the two BLAS only by float32 rounding; every
caller's error bound assumes nothing beyond the standard bound of a float32 dot product.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

BLAS = ("torch", "numpy")

CPU_GEMM = "auto"       # "auto" | "torch" | "numpy": who runs large float32 products on CPU

_ALIGN = 64             # column parts start on multiples of this (whole SIMD and cache blocks)

# one NumPy product at a time: each sets NumPy's BLAS to one thread and restores it afterwards,
# and overlapping set/restore pairs from two threads could leave it at the wrong count. Re-entrant:
# a product takes it again inside numpy_blas_single_threaded, which takes it to set and to restore.
_NUMPY_LOCK = threading.RLock()
_held = 0              # numpy_blas_single_threaded holds open in this process (under _NUMPY_LOCK) ...
_limiter = None        # ... and the limiter of the first, whose original counts the last one restores

# work from about this size (≈ 0.2 s of products) starts the one-time timing (≈ 0.7 s per process):
# a session seldom stops at one such call, and every later one runs 15-30 % faster
WORTH_TIMING = 2e10


def cpu_gemm(threads: int | None = None) -> str:
    """"torch" or "numpy": the BLAS for float32 products on CPU at ``threads`` threads.

    Follows ``CPU_GEMM`` unless it is "auto"; then both are timed once per thread count on a
    (256, 2048) x (2048, 8192) product, alternating, and NumPy's is chosen only when the median of
    the paired time ratios says it is at least 5 % faster.
    """
    if CPU_GEMM in BLAS:
        return CPU_GEMM
    if CPU_GEMM != "auto":
        raise ValueError(f"CPU_GEMM must be 'auto', 'torch' or 'numpy', got {CPU_GEMM!r}")
    return _calibrated(threads or torch.get_num_threads())


def choose(dtype: torch.dtype, device: torch.device, flops: float, worth: float = WORTH_TIMING) -> str:
    """The BLAS for products of ``dtype`` on ``device`` totalling ``flops``.

    torch's for anything but float32 on CPU, and (under "auto") for work below ``worth`` FLOPs,
    which would not repay the one-time timing of :func:`cpu_gemm`. Work that recurs (a field
    called at every step) may pass a lower ``worth``.
    """
    if device.type != "cpu" or dtype != torch.float32:
        return "torch"
    if CPU_GEMM == "auto" and flops < worth:
        return "torch"
    return cpu_gemm()


def matmul(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None,
           blas: str = "torch") -> torch.Tensor:
    """a @ b for 2-D tensors, through ``blas`` (see :func:`choose`).

    Args:
        a: (m, k); b: (k, n), any strides (a transposed view costs nothing).
        out: optional (m, n) destination, may be a view with a row stride (a column slice).
        blas: "torch", or "numpy" for float32 CPU tensors only.

    Returns:
        ``out`` when given, else a new (m, n) tensor.
    """
    if blas == "torch":
        return _mm_full_precision(a, b) if out is None else torch.mm(a, b, out=out)
    if out is None:
        out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)
    _numpy_matmul(a.detach().numpy(), b.detach().numpy(), out.numpy(), torch.get_num_threads())
    return out


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` here (False for a device type autocast
    does not know, or a torch whose ``is_autocast_enabled`` takes no device)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (TypeError, RuntimeError):
        return False


@contextlib.contextmanager
def numpy_blas_single_threaded(*, unless_user_set: bool = False) -> Iterator[None]:
    """Hold NumPy's and SciPy's BLAS (OpenBLAS in their wheels) at one thread inside the ``with`` block.

    Their previous thread counts come back on exit, also on an exception or Ctrl-C. torch's threads
    are not touched: its MKL is linked statically (threadpoolctl does not see it) and its OpenMP
    pool is not a BLAS. Every NumPy product of :func:`matmul` runs inside it; ``kfm reproduce``
    holds it for the whole run, whose covariances, eigenproblems and statistics call OpenBLAS
    between torch passes (its spinning workers slowed those passes: BENCHMARKS.md, OpenBLAS).

    Args:
        unless_user_set: leave the BLAS as it is when the environment sets OPENBLAS_NUM_THREADS
            (to anything non-empty). That variable concerns OpenBLAS alone, so a value there is the
            user's own choice for these threads (a machine with idle cores, where the workers' waits
            cost nothing, may keep them) and wins; OMP_NUM_THREADS, aimed at torch's OpenMP pool as
            well, does not count. :func:`matmul` passes False: it splits the columns over its own
            threads, and a BLAS call on more than one would oversubscribe the cores.

    Nests with itself and with :func:`matmul` from any thread, also when two holds overlap without
    nesting (A enters, B enters, A exits, B exits): one count of the holds open in the process, under
    a lock taken only while entering and exiting, sets the one thread at the first entry and gives
    the counts seen then back at the last exit.
    """
    global _held, _limiter
    if unless_user_set and os.environ.get("OPENBLAS_NUM_THREADS"):
        yield
        return
    blas = _numpy_blas()
    with _NUMPY_LOCK:
        if _held == 0:
            _limiter = _as_this_thread(lambda: blas.limit(limits=1))
        _held += 1
    try:
        yield
    finally:
        with _NUMPY_LOCK:
            _held -= 1
            if _held == 0:
                _as_this_thread(_limiter.restore_original_limits)
                _limiter = None


def _as_this_thread(change):
    """``change()`` of the BLAS thread counts, made from this thread whichever thread set them last.

    threadpoolctl (from 3.6) lets one thread alone change OpenBLAS's counts, the first to change
    them, until that thread leaves a ``with`` block of its own; the other threads' changes do nothing.
    A hold entered or left on another thread (the last exit may be on any) would then not set or not
    restore them: this thread takes the control for the change and gives it up after it.
    """
    import threadpoolctl

    controller = getattr(threadpoolctl, "OpenBLASController", None)
    release = getattr(controller, "clear_controlling_thread", None)
    if release is None:                                     # older threadpoolctl: any thread changes them
        return change()
    release(force=True)
    try:
        return change()
    finally:
        release()                                           # only if this thread holds it


def _mm_full_precision(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.mm in the inputs' dtype even inside ``torch.autocast``, which would run it in half
    precision (exact quantities such as the EFM velocity must not change with the caller's context)."""
    if not autocast_enabled(a.device.type):
        return torch.mm(a, b)
    with torch.autocast(a.device.type, enabled=False):
        return torch.mm(a, b)


def _numpy_matmul(a, b, out, threads: int) -> None:
    """out = a @ b (NumPy arrays): single-threaded BLAS calls on column parts, one per thread."""
    import numpy as np

    n = b.shape[1]
    width = -(-max(1, -(-n // threads)) // _ALIGN) * _ALIGN
    parts = [slice(c0, c0 + width) for c0 in range(0, n, width)]
    with _NUMPY_LOCK, numpy_blas_single_threaded():
        pool = _workers(threads, os.getpid())
        futures = [pool.submit(np.matmul, a, b[:, p], out=out[:, p]) for p in parts[1:]]
        np.matmul(a, b[:, parts[0]], out=out[:, parts[0]])       # this thread takes the first part
        for future in futures:
            future.result()


@functools.lru_cache(maxsize=None)
def _workers(threads: int, pid: int) -> ThreadPoolExecutor:
    """A pool per thread count and per process: a forked child inherits the parent's pool object
    but not its threads, and would wait forever on work it submitted there."""
    return ThreadPoolExecutor(max_workers=max(1, threads - 1), thread_name_prefix="kfm-gemm")


@functools.lru_cache(maxsize=1)
def _numpy_blas():
    """threadpoolctl's handle on the BLAS libraries loaded: NumPy's and SciPy's (two OpenBLAS in their wheels)."""
    # both loaded before the libraries are listed, once per process: SciPy's, imported later by a
    # study, would be missed
    importlib.import_module("numpy")
    try:
        importlib.import_module("scipy.linalg")
    except ImportError:  # pragma: no cover - scipy is a declared dependency
        pass
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


@functools.lru_cache(maxsize=None)
def _calibrated(threads: int) -> str:
    try:
        _numpy_blas()
    except ImportError:  # pragma: no cover - threadpoolctl is a declared dependency
        return "torch"
    # The shape matters: the NumPy path splits the output's columns over the threads, and its
    # lead grows with their number (on the 2-core AMD box: 0.87x at 2,048 columns, 1.0-1.17x at
    # 4,096, 1.2-1.3x at 8,192-10,000, where the k-NN chunks and EFM fields are). Ratios paired
    # round by round cancel the load drifts of a shared machine; 4,096 columns with medians
    # of separate timings picked torch in about half of fresh processes.
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 2048, device="cpu", generator=g), torch.randn(8192, 2048, device="cpu", generator=g)
    out = torch.empty(256, 8192)
    a_np, b_np, out_np = a.numpy(), b.numpy().T, out.numpy()
    ratios = []
    for round_ in range(4):                                  # the first round is a warm-up
        start = time.perf_counter()
        torch.mm(a, b.T, out=out)
        middle = time.perf_counter()
        _numpy_matmul(a_np, b_np, out_np, threads)
        if round_:
            ratios.append((middle - start) / (time.perf_counter() - middle))
    return "numpy" if statistics.median(ratios) > 1.0 / 0.95 else "torch"
