"""Closed-form empirical flow matching (EFM): the exact velocity of a finite training set.

For atoms y_1..y_N and the path x_t = (1 − t)·x0 + t·x1 with x1 uniform over the atoms,

    v*(x, t) = (ȳ(x, t) − x) / (1 − t),     ȳ = Σ_j w_j y_j,
    w = softmax_j(ℓ_j),                     ℓ_j = −‖x − t·y_j‖² / (2(1 − t)²).

How :class:`EmpiricalFlow` evaluates it (never a (B, N, D) tensor):

1. **Screening GEMM.** Per block of queries, ℓ̃_j = (t/(1−t)²)·x·y_j − (t²/(2(1−t)²))·‖y_j‖²
   (ℓ_j up to a per-query constant, which softmax ignores) is one GEMM per chunk of atoms in the
   train dtype, with ‖y‖² cached once. Its rounding error is bounded per query by
   e = (D + 4)·u·(a·‖x‖·max‖y‖ + c·max‖y‖²), a = t/(1−t)², c = t²/(2(1−t)²), u = unit round-off.
   The 1/(1−t)² factor makes e grow without bound as t → 1: this is the cancellation the
   expansion suffers near t → 1 and between near-duplicate atoms.
2. **Candidates.** Any atom with ℓ̃_j < max ℓ̃ − cutoff − 2e has true weight < e^(−cutoff) times
   the largest weight; with the default cutoff = ln N + 36 (float64 atoms) or ln N + 20 (float32
   atoms) their total is below 2.4e-16, resp. 2.1e-9 (under float32's resolution), of it.
3. **Exact re-scoring.** When a query has at most ``exact_max`` candidates (the case once the
   posterior concentrates: mid-to-late t, t → 1), or when its bound e exceeds ``max_logit_error``
   whatever the count (a cluster of more than ``exact_max`` near-duplicates late in a run), its
   candidates are re-scored in float64 relative to the best screened one, b:
   ℓ_j − ℓ_b = t·(y_j − y_b)·(2x − t·(y_j + y_b)) / (2(1 − t)²), which has no cancellation for
   near-duplicates (y_j − y_b is small and exact) nor for far-away x, and ȳ = y_b + Σ w_j (y_j − y_b)
   is formed in float64: exact to float64 round-off whatever t. Memory stays bounded for any
   number of candidates (float64 blocks of at most 16 MiB).
4. **Dense regime.** Otherwise (small t, where 1/(1−t)² is mild and many atoms matter) the
   screened logits are used, ȳ = exp(ℓ̃ − max) @ Y / Σ exp(ℓ̃ − max) as a second GEMM, and the
   logit error bound e (≤ ``max_logit_error``) is reported per sample in
   :class:`PosteriorDiagnostics`. For float64 training tensors the screening itself runs in float64.
   So is a bound on ȳ's own error, ``mean_error_bound``: ‖ȳ̂ − ȳ‖₂ ≤ max‖y‖·((N + 2)·u + 2ρ),
   ρ = e^(2(e + 84u)) − 1 + N·e^(−80). The GEMM sums N products per coordinate i, so it errs by at
   most (N + 2)·u·Σ_j w_j|y_ji| (any summation order; the 2 for the product and TF32's rounding of its
   inputs), which over the coordinates is at most (N + 2)·u·Σ_j w_j‖y_j‖: (N + 2)·u·max‖y‖ at most
   once divided by Σ_j w_j.
   Each weight is within e^(±(e + 84u)) of the truth up to a constant per row (e the logits; 80u the
   float32 difference ℓ̃ − max, which is clamped at −80; 4u the exponential), so the normalised
   weights are within a factor e^(±2(e + 84u)) and ȳ = Σ p_j y_j moves by at most that share of
   max_j‖y_j − ȳ‖ ≤ 2·max‖y‖ (the clamp adds at most N·e^(−80) of mass). The first term does not
   shrink with the atoms' spread, while v = (ȳ − x)/(1 − t) does: for a tight cluster of float32
   atoms (100 within 1e-6 of a point at ‖y‖ ≈ 3, D = 8) v is off by 8–47 % at t = 0.1–0.6 while e
   is at most 1.5e-5; the bound on v (over 1 − t) reads 6e-5 to 4e-4 there, 60–400 times the error.
   Pass such atoms as float64 (exact to ~1e-10), or centred on their mean m (the field of the atoms
   y − m at x − t·m is v − m).

The float32 products of steps 1 and 4 run on CPU through the faster of torch's and NumPy's BLAS
(:mod:`kinetic_fm.gemm`) once a call's product reaches 1e10 FLOPs; the bounds above hold for either.

At t = 0 every logit is equal, so ȳ is the training mean, cached in float64: those rows (the
first call of every run) cost no GEMM, in either mode. Truncated mode keeps all N atoms there
(the exact ȳ, nothing left out: ``neglected_bound`` 0, max_weight 1/N), and k from the first
t > 0 on, where the k kept atoms of a still near-uniform posterior hold about k/N and the bound
is about 1 − k/N: its ȳ moves from the mean of all N to that of the k kept.

A query whose screening leaves one candidate (most of a run once the posterior concentrates) is
a point mass on its best atom: ȳ is that atom, in float64, with no re-scoring pass. On an
accelerator a call synchronises with the host once per block of queries when its rows take one
route (it used to take seven and more): the value checks of x and t, whether any row is at
t = 0, and the rows' routes (one candidate, re-scored, dense) are read together after the
screening GEMM is launched, so that the host's small launches overlap it. A mix of routes or of
re-scored widths costs one more, as does ``posterior(k)`` with k ≥ 2. A call with rows at t = 0, or
one the checks refuse, is found out only then, by the first block that holds such a row, and goes
on from that block with its checks settled: the earlier blocks are kept, that block's GEMM is
wasted (the GEMM of a run's first call), and a refusal comes after them. A row whose screened
logits overflow (a = t/(1 − t)² reaches 1e12 near t = 1, so values that pass the magnitude checks
can) is refused: its screening cannot rank the atoms.

Behaviour as t → 1: times are clamped to t ≤ 1 − ``eps`` (default 1e-6), i.e. v(x, t) :=
v(x, min(t, 1 − eps)) (the posterior and the 1/(1 − t) factor alike): the velocity that carries x
to the posterior mean ȳ (≈ the nearest atom) in the remaining time eps. It is finite for every
finite x, and exactly 0 when x is an atom.
The field declares ``singular_at_one``, so ``kfm.sample`` takes the last step of heun with Euler
and of rk4 and rk4_38 with Heun's third-order method (no stage at the step's end): their end
stage at t = 1 would multiply the predictor's small miss of an atom
by 1/eps; dopri5 ends a run with its first five stages only (c ≤ 8/9, see ``kfm.sample``).
Euler and midpoint never evaluate at t = 1; dopri5 stages and user grids can come arbitrarily
close.
In float16 the velocity passes 65504 (inf) once ‖ȳ − x‖/(1 − t) does, near t = 1: the fixed-step
solvers end on finite states, but dopri5's next stage then holds an inf state, which this field
refuses (``ValueError``) before dopri5 can retry; run dopri5 in float32 or float64 with this field.

Truncated mode (``truncate=k``) keeps at most k atoms per query, and reports, per sample and per
call, a bound on the posterior mass it drops. After the same screening GEMM, a query with at most
k candidates (step 2) is re-scored exactly over them, as in step 3 (dropped mass < N·e^(−cutoff));
otherwise, where the screened logits are within ``max_logit_error`` (e), its k largest screened
logits are kept and re-scored exactly in float64. A dropped atom j then has
ℓ̃_j ≤ ℓ̃_(k), so ℓ_j ≤ ℓ_(k) + 2e and ℓ_j ≤ ℓ_b + (ℓ̃_(k) − ℓ̃_b) + 2e (ℓ_(k), ℓ_b the exact
logits of the last and the first kept atom), and the dropped mass is at most R/(1 + R) with
R = (N − k)·exp(min of those bounds − logsumexp(ℓ_kept)). The kept atoms are the exact k nearest
neighbours of x/t up to near-ties within 2e of the k-th, which the bound covers (the bounds are
formed from log weights, so a kept weight that underflows does not hide the dropped mass). Where
e is larger (late t, a cluster of more than k near-duplicates) the screened order cannot pick the
k largest: up to 4,096 candidates are all re-scored exactly, the exact top k kept, and the bound
is the candidates' mass left out plus N·e^(−cutoff); a row with more candidates takes the
certified k-nearest-neighbour search of x/t (:func:`kinetic_fm.nearest_neighbors`),
R = (N − k)·exp(ℓ_(k) − logsumexp(ℓ_kept)). Every row with ``backend="faiss"`` takes that search,
through faiss (but for a call so early that x/t would overflow faiss's float32 distances, t ≲ 1e-18
for data of unit size: it takes the torch backend's route). It skips step 4's second product and
exponentials; the screening GEMM is the same.

The bound is a true bound on the mass the exact posterior (of the x and t given, in exact
arithmetic) puts outside the kept atoms, not only on that of the float64 logits: "exact" above
means float64, whose relative logits near a tie late in a run, or far from the origin, can be off
by far more than their size (x on the bisector of two atoms near 1000·(1, 1, 1, 1) at
t = 1 − 1e-6: logits ~1e11, their difference off by 0.09, a bound of 0.4977 for 0.5207 left out).
Each re-scored logit carries a forward-error bound δ_j ≤ u·((D + 8)(λ_j + λ_b)² + 5μ(λ_j + λ_b)
+ 8|ℓ_j − ℓ_b|), u = 2⁻⁵³, λ = ‖x − t·y‖/(√2(1 − t)), μ = t‖y_b‖/(√2(1 − t)) (derived in
``_relative_logit_rounding``): ℓ_(k) is taken up to it, the kept mass down to it (logsumexp of
ℓ_kept − δ), the candidates left out up to it (their mass is R/(1 + R) with R the ratio of their
sum to the kept one's: no 1 − kept mass, whose normalisation rounds in absolute terms), and the
search's order of x/t up to its float64 rounding (``_search_rounding``: it could keep the lighter
atom of a near-tie). The log-space sums and the final R/(1 + R) are then raised by bounds on their
own rounding (8u relative; a mass below float64's normal range is e^z, not a sigmoid that flushes
it to 0). Where the logits are well conditioned this moves the bound in its last digits; where
they are not it loosens it by e^(2δ), as it must (at most 1.9× the truth on the bisector above).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from .. import gemm
from ..checks import (as_scalar, check_integer, check_unit_times, is_real, optional_integer, positive_integer,
                      unit_times)
from ..blocks import block_size
from ..knn import (
    abs_max,
    as_rows,
    check_exact_integers,
    check_finite,
    check_magnitude,
    column_mean,
    magnitude_limit,
    nearest_neighbors,
    row_sq_norms,
    unit_roundoff,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# per-call product size from which the float32 CPU products may go through NumPy's BLAS when it
# was measured faster (kinetic_fm.gemm): ≈ 80 ms of work, recurring at every step of a run
_CALIBRATE_FLOPS = 1e10

__all__ = [
    "EmpiricalFlow",
    "EmpiricalVelocity",
    "Posterior",
    "PosteriorDiagnostics",
    "PosteriorRecorder",
    "PosteriorTrace",
]


@dataclass(frozen=True)
class Posterior:
    """Top-k of the posterior over training atoms, p(x1 = y_j | x_t = x).

    In truncated mode (``EmpiricalFlow(truncate=m)``) it is the posterior the velocity uses: the m
    kept atoms' weights renormalised to sum to 1, so they read above the full posterior's (with
    m = 1 the top weight is always 1); the full posterior's weight of each is at least
    (1 − ``neglected_bound``) times it (``field.diagnostics(x, t)``). At t = 0 every atom weighs 1/N.

    Attributes:
        weights: (B, k) float64, descending; exact float64 where ``exact`` else screened.
        indices: (B, k) int64 atom indices into the training tensor; equal weights (an item held
            more than once) lowest index first, and exact weights that underflow to 0 by logit.
        exact: (B,) bool, weights from exact float64 re-scoring (see module docs).
    """

    weights: torch.Tensor
    indices: torch.Tensor
    exact: torch.Tensor


def _top_lowest_index_first(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of ``scores`` (r, m) per row, descending, and their positions (r, k) int64 in
    the row, equal scores (an item held more than once) in the order of their atom ``indices`` (r, m),
    lowest first, as ``nearest_neighbors`` orders ties: topk took them in no set order. The values
    are topk's, bit for bit; a sort of the m candidates, for the posterior only (never the velocity)."""
    by_index = indices.argsort(dim=1)
    top, pos = scores.gather(1, by_index).sort(dim=1, descending=True, stable=True)  # stable: ties by index
    return top[:, :k], by_index.gather(1, pos[:, :k])


@dataclass(frozen=True)
class PosteriorDiagnostics:
    """Per-sample summaries of the posterior (all (B,), on the query device).

    Attributes:
        max_weight: float64, the largest posterior weight (posterior dominance, in (0, 1]).
        entropy: float64, −Σ w log w in nats (0 = one atom; log N = uniform).
        candidates: int64, atoms within ``cutoff + 2e`` of the best screened logit.
        exact: bool, weights from exact float64 re-scoring (False: screened GEMM logits).
        logit_error_bound: float64, bound e on the screened logits' error (0 where ``exact``).
        neglected_bound: float64, bound on the posterior mass left out: N·e^(−cutoff) in full
            mode, R/(1 + R) in truncated mode (see module docs), float64 rounding included;
            0 at t = 0, where ȳ is the mean of all N atoms in either mode.
        mean_error_bound: float64, bound on ‖ȳ̂ − ȳ‖₂, the rounding error of the posterior mean of
            the screened rows (module docs, step 4; 0 where ``exact``, whose ȳ is formed in
            float64): the velocity's error is at most this over 1 − t, before its rounding to x's
            dtype. It does not shrink with the atoms' spread: about (N + 2)·u·max‖y‖, so a tight
            cluster of float32 atoms far from the origin (spread 1e-6 at ‖y‖ ≈ 3) can have a
            velocity off by a large part of itself while ``logit_error_bound`` is small.

    Equal atoms split their weight: at a training item held m times, ``max_weight`` reads 1/m and
    ``entropy`` log m where the velocity is that of one point mass (remove repeated rows from the
    training set to read dominance per distinct item; ``kfm.memorization`` names how many there are).

    In truncated mode ``max_weight`` and ``entropy`` are those of the kept atoms' weights,
    renormalised to sum to 1 (the posterior the velocity uses): the full posterior's largest
    weight is at least (1 − ``neglected_bound``) × ``max_weight``.
    """

    max_weight: torch.Tensor
    entropy: torch.Tensor
    candidates: torch.Tensor
    exact: torch.Tensor
    logit_error_bound: torch.Tensor
    neglected_bound: torch.Tensor
    mean_error_bound: torch.Tensor


@dataclass(frozen=True)
class EmpiricalVelocity:
    """One evaluation: ``velocity`` (B, ...) in x's dtype and its :class:`PosteriorDiagnostics`."""

    velocity: torch.Tensor
    diagnostics: PosteriorDiagnostics


def _beyond_float32(rows: torch.Tensor, name: str) -> bool:
    """Whether integer ``rows`` hold values float32 cannot (beyond 2**24 in magnitude), so that
    they must be float64 (2**24 + 1 read as 2**24); beyond 2**53 even float64 cannot, refused."""
    if rows.is_floating_point() or rows.numel() == 0 or rows.element_size() <= 2:
        return False  # 8- and 16-bit integers always fit (uint8 images: no int64 copy of the set)
    check_exact_integers(name, rows)
    if rows.dtype in (torch.uint32, torch.uint64):  # torch has no max of these
        return bool(rows.cpu().numpy().max() > 2 ** 24)
    return max(abs(int(rows.max())), abs(int(rows.min()))) > 2 ** 24


class EmpiricalFlow:
    """Exact closed-form EFM velocity over a training tensor; a velocity field for ``kfm.sample``.

    Args:
        train: (N, ...) training atoms, N ≥ 1, finite (a tensor of any real dtype, on any device,
            kept where given, and not copied when float32/float64: a call after the atoms were
            changed in place is refused when the change alters the norms or the mean cached at
            construction (a write to another part of the same storage does not); or a NumPy array,
            a nested list of numbers (read as ``np.asarray`` reads it: Python floats as float64) or a
            DataFrame, copied; a DataFrame's whole-number column named like a class label, ``label``,
            ``class``, ..., is warned of).
            Float64 atoms give float64 screening, as do integers beyond 2**24 (which float32 would
            round; beyond 2**53 they are refused); anything else screens in float32. In float32 the
            dense route's ȳ errs by up to about (N + 2)·u·max‖y‖ (u = 2⁻²⁴) whatever the atoms'
            spread, so a tight cluster far from the origin can give a velocity off by a large part
            of itself: ``mean_error_bound`` in the diagnostics bounds it (module docs, step 4).
        chunk: atoms per screening GEMM (bounds the temporary (batch_chunk, chunk) block).
        batch_chunk: queries per block; default from ``memory_budget``.
        memory_budget: bytes for the per-block (batch_chunk, N) screened-logit matrix (in the
            screening dtype: 4 bytes per logit, 8 for float64 atoms).
        eps: smallest 1 − t used (t is clamped to ≤ 1 − eps; see module docs).
        exact_max: candidates per query up to which they are re-scored exactly in float64.
        max_logit_error: largest screened-logit error bound accepted on the dense path; a query
            above it is re-scored exactly whatever its number of candidates (see module docs).
        cutoff: log-weight gap below which atoms are neglected; default ln N + 36 (float64 atoms)
            or ln N + 20 (float32).
        truncate: keep at most k atoms per query, those of largest logit (None: all N); see
            the module docs for the bound on the mass dropped.
        backend: how truncated mode picks its atoms: "torch" from the screening GEMM's logits,
            "faiss" by a faiss search of x/t (for a call with t ≲ 1e-18, which that search
            cannot take in float32, from the logits as "torch" does).

    ``field(x, t)`` takes x (B, ...) with the training tensor's trailing shape, on its device, and
    t (B,) (or a scalar) in [0, 1], and returns v*(x, t) with x's shape, dtype and device (for
    integer x the dtype the atoms are stored in: float32, or float64 for float64 atoms and for
    integers beyond 2**24); ValueError names a bad shape, device, time or entry. A row's velocity depends on
    its batch-mates only through the BLAS's blocking of the products: equal to rounding, not
    bit for bit, across batch sizes (the sampler itself is bitwise batch-invariant). ``field.evaluate`` also returns
    the per-sample :class:`PosteriorDiagnostics`; ``field.posterior(x, t, k)`` the top-k weights.
    """

    singular_at_one = True  # kfm.sample: heun/rk4 take a last step without a stage at t = 1

    def __init__(
        self,
        train: torch.Tensor | np.ndarray,
        *,
        chunk: int = 16384,
        batch_chunk: int | None = None,
        memory_budget: int = 64 << 20,
        eps: float = 1e-6,
        exact_max: int = 64,
        max_logit_error: float = 0.5,
        cutoff: float | None = None,
        truncate: int | None = None,
        backend: str = "torch",
    ):
        # an array is copied: torch would share its memory, and edits in NumPy leave no trace;
        # as_rows names train for what holds no numbers (a data set object rather than its .images)
        train = train.detach() if isinstance(train, torch.Tensor) else as_rows("train", train, copy=True)
        if train.is_complex():
            raise ValueError(f"train must hold real numbers, got dtype {train.dtype}")
        if train.dim() < 1 or train.shape[0] == 0:
            raise ValueError(f"train must have shape (N, ...) with N ≥ 1, got {tuple(train.shape)}")
        if math.prod(train.shape[1:]) == 0:   # it built, then failed its first call in vector_norm
            raise ValueError(f"train must hold at least one value per item, got shape {tuple(train.shape)}")
        check_finite("train", train)
        dtype = torch.float64 if train.dtype == torch.float64 or _beyond_float32(train, "train") else torch.float32
        self.atoms = train.reshape(train.shape[0], -1).to(dtype)  # a view when already float32/64
        self.shape = tuple(train.shape[1:])
        self.n, self.dim = self.atoms.shape
        check_magnitude("train", self.atoms, dtype)   # its squared norms and logits must stay finite
        self._x_limit = magnitude_limit(dtype, self.dim)
        eps, max_logit_error, cutoff = (as_scalar(v) for v in (eps, max_logit_error, cutoff))
        chunk, memory_budget, exact_max = (positive_integer(name, value) for name, value in (
            ("chunk", chunk), ("memory_budget", memory_budget), ("exact_max", exact_max)))
        batch_chunk = optional_integer("batch_chunk", batch_chunk, 1)
        truncate = optional_integer("truncate", truncate, 1, self.n, note="the training items")
        if not (is_real(eps) and 0.0 < eps < 1.0):
            raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
        # finite: inf would switch off the re-scoring (max_logit_error) or the neglect bound (cutoff)
        if not (is_real(max_logit_error, finite=True) and max_logit_error > 0):
            raise ValueError(f"max_logit_error must be a positive finite number, got {max_logit_error!r}")
        if cutoff is not None and not (is_real(cutoff, finite=True) and cutoff > 0):
            raise ValueError(f"cutoff must be None or a positive finite number, got {cutoff!r}")
        if backend not in ("torch", "faiss"):
            raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
        if backend == "faiss" and truncate is None:  # as kfm.sample warns of a setting its solver ignores
            import warnings

            warnings.warn("backend='faiss' is ignored without truncate: it picks the atoms of truncated mode, "
                          "and the exact field weighs all N (pass truncate=k to search the k nearest with faiss)",
                          stacklevel=2)
        self.chunk, self.eps, self.exact_max = chunk, float(eps), exact_max
        self.max_logit_error = float(max_logit_error)
        self.truncate, self.backend = truncate, backend
        # neglected atoms weigh < N·e^(−cutoff) of the top one: 2.4e-16 (float64), 2.1e-9 (float32,
        # below the output's resolution 6e-8)
        default_cutoff = math.log(self.n) + (36.0 if dtype == torch.float64 else 20.0)
        self.cutoff = float(cutoff) if cutoff is not None else default_cutoff
        self.batch_chunk = batch_chunk or max(1, memory_budget // (self.atoms.element_size() * self.n))
        self._sq_norms = row_sq_norms(self.atoms, dtype)    # cached ‖y_j‖², screening dtype
        self._norm_max = float(self._sq_norms.max().double().sqrt()) * (1 + 1e-3)
        self._mean = column_mean(self.atoms)                 # exact ȳ at t = 0
        # the caller's tensor (a view of it, when already float32/64) may change in place after
        # this; a copy cannot, and an inference tensor keeps no version counter
        shared = self.atoms.untyped_storage().data_ptr() == train.untyped_storage().data_ptr()
        self._atoms_version = self.atoms._version if shared and not self.atoms.is_inference() else None
        self.last_diagnostics: PosteriorDiagnostics | None = None

    # ------------------------------------------------------------------ public
    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """v*(x, t) = E[x1 − x0 | x_t = x]: (B, ...) in x's dtype, for x (B, ...) with the atoms' trailing
        shape and t (B,) or one number in [0, 1] (t = 0 noise; clamped to 1 − ``eps``). Diagnostics of
        the call are kept in ``last_diagnostics``. ValueError for another trailing shape of x, t of
        another shape or outside [0, 1], or NaN/inf in x (naming the rows)."""
        return self.evaluate(x, t).velocity

    def evaluate(self, x: torch.Tensor, t: torch.Tensor | float) -> EmpiricalVelocity:
        """Velocity (B, ...) and per-sample posterior diagnostics (B,) in one pass; x and t as for
        ``field(x, t)``."""
        flat, t64, values = self._check(x, t)
        ybar, diag, _ = self._solve(flat, t64, 0, values)
        one_minus = (1.0 - t64).clamp_min(self.eps)[:, None]
        velocity = ybar.sub_(flat).div_(one_minus).to(flat.dtype)
        self.last_diagnostics = diag
        return EmpiricalVelocity(velocity.reshape(x.shape), diag)

    def posterior(self, x: torch.Tensor, t: torch.Tensor | float, k: int = 1) -> Posterior:
        """Top-k posterior weights (B, k) float64 and atom indices (B, k) int64 per sample; x and t
        as for ``field(x, t)``, k an integer in [1, N] (at most ``truncate`` when set, and then the kept
        atoms' weights renormalised: see :class:`Posterior`)."""
        limit = self.truncate or self.n
        k = check_integer("k", k, 1, limit, note="the field's truncate" if self.truncate else "the training items")
        flat, t64, values = self._check(x, t)
        _, diag, top = self._solve(flat, t64, k, values)
        return Posterior(top[0], top[1], diag.exact)

    def diagnostics(self, x: torch.Tensor, t: torch.Tensor | float) -> PosteriorDiagnostics:
        """Posterior dominance (max weight), entropy and precision flags, (B,) each; x and t as for
        ``field(x, t)``."""
        return self.evaluate(x, t).diagnostics

    def __repr__(self) -> str:
        mode = f", truncate={self.truncate}" if self.truncate else ""
        return f"EmpiricalFlow(N={self.n}, shape={self.shape}, dtype={self.atoms.dtype}{mode})"

    # ------------------------------------------------------------------ checks
    def _check(self, x, t) -> tuple[torch.Tensor, torch.Tensor, _ValueCheck]:
        """x flattened to (B, D), t as (B,) float64 clamped to ≤ 1 − eps, and the check of their
        values, pending (see :meth:`_solve`); ValueError names a bad shape, type or device."""
        if self._atoms_version is not None and self.atoms._version != self._atoms_version:
            self._recheck_cache()
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            if isinstance(x, torch.Tensor):
                got = "a 0-d tensor"
            elif type(x).__module__ == "numpy" and hasattr(x, "shape"):   # kept light: numpy not imported
                got = f"a NumPy array of shape {tuple(x.shape)} (torch.from_numpy(x) on the atoms' device)"
            else:
                got = type(x).__name__
            raise ValueError(f"x must be a tensor of shape (B, ...), got {got}")
        batch = x.shape[0]
        # flat atoms (N, D) take any layout of D values; structured ones their own shape only, so a
        # channels-last batch against (N, C, H, W) atoms is refused rather than compared scrambled
        same_size = math.prod(x.shape[1:]) == self.dim
        if not same_size or (len(self.shape) > 1 and tuple(x.shape[1:]) != self.shape):
            raise ValueError(
                f"x must have the training atoms' trailing shape {self.shape} ({self.dim} features), "
                f"got {tuple(x.shape[1:])}"
            )
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
        flat = x.detach().reshape(batch, self.dim)
        if not flat.is_floating_point():  # as exact as the atoms, or float64 where float32 would round
            flat = flat.to(torch.float64 if _beyond_float32(flat, "x") else self.atoms.dtype)
        if x.device != self.atoms.device:
            raise ValueError(f"x is on {x.device} but the training atoms are on {self.atoms.device}")
        if isinstance(t, bool) or (isinstance(t, torch.Tensor) and (t.dtype == torch.bool or t.is_complex())):
            raise ValueError(f"t must hold real times in [0, 1], got {t!r}")
        # Python numbers become float64 directly (0.3 must not pass through float32)
        try:
            t = torch.as_tensor(t, dtype=None if isinstance(t, torch.Tensor) else torch.float64,
                                device=x.device).detach().double()
        except (TypeError, ValueError, RuntimeError) as err:   # None, a string: a bare TypeError before
            raise ValueError(f"t must be a number in [0, 1] or a ({batch},) tensor of times, got "
                             f"{type(t).__name__} ({err})") from None
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return flat, t.clamp_max(1.0 - self.eps), _ValueCheck(flat, t, self._x_limit, self.atoms.dtype)

    def _recheck_cache(self) -> None:
        """The storage of the atoms was written to since the last check (its version counter
        moved): keep going when the cached norms and mean still equal the atoms' own, bit for bit
        (another view of the storage was written, as with ``EmpiricalFlow(data[:50])`` after
        ``data[50:] *= 2``); RuntimeError otherwise. One pass over the atoms per such change."""
        if not (torch.equal(row_sq_norms(self.atoms, self.atoms.dtype), self._sq_norms)
                and torch.equal(column_mean(self.atoms), self._mean)):
            raise RuntimeError("train was changed in place after this EmpiricalFlow was built: the norms and "
                               "mean it cached then no longer match the atoms; build a new field (or pass "
                               "train.clone() to keep the field apart from later edits)")
        self._atoms_version = self.atoms._version

    # ------------------------------------------------------------------ core
    def _solve(self, x, t, top_k, values):
        """ȳ (B, D) float64, diagnostics, and (weights, indices) of the top_k atoms (if top_k);
        ``values`` the pending check of x and t (:class:`_ValueCheck`).

        On an accelerator each block's rows are checked in that block's synchronisation, not in one
        of their own before the GEMM: a call whose rows are not all fine (one at t = 0, or an input
        the check refuses) is only then found out, and goes on here from that block with its checks
        settled (the blocks before it are kept; its own GEMM is wasted: a run's first call, at
        t = 0, wastes its GEMM)."""
        if x.shape[0] == 0:
            return self._at_start(0, top_k, x.device)
        deferred = x.device.type != "cpu" and _DEFER_CHECKS and not (self.truncate and self.backend == "faiss")
        all_fine = None if deferred else values.settle()     # on a CPU a bad input is refused first
        blas = gemm.choose(self.atoms.dtype, x.device, 2.0 * x.shape[0] * self.n * self.dim, _CALIBRATE_FLOPS)
        done = []
        if deferred:
            try:
                return self._solve_moving(x, t, top_k, blas, values)
            except _NotAllFine as stop:
                # the rows before stop.start were all fine, so their blocks stand as computed
                # (and as a restart would block the rows with t > 0)
                all_fine, done = values.settle(), stop.done
                x, t = x[stop.start:], t[stop.start:]
        if all_fine:   # (never after a stop: a stopped block held a row at t = 0 or a refused one)
            return _joined([*done, self._solve_moving(x, t, top_k, blas)])
        moving = (t > 0).nonzero().flatten()
        # at t = 0 every atom has the same logit: ȳ is the cached float64 mean, no GEMM needed
        ybar, diag, top = self._at_start(x.shape[0], top_k, x.device)
        if moving.numel():
            yb, dg, tp = self._solve_moving(x[moving], t[moving], top_k, blas)
            ybar[moving] = yb
            for name in PosteriorDiagnostics.__dataclass_fields__:
                getattr(diag, name)[moving] = getattr(dg, name)
            top[0][moving], top[1][moving] = tp
        return _joined([*done, (ybar, diag, top)])

    def _at_start(self, b, top_k, device):
        """The t = 0 answer for b rows: the mean, uniform weights, nothing neglected."""
        ybar = self._mean.expand(b, -1).clone()
        max_w = torch.full((b,), 1.0 / self.n, dtype=torch.float64, device=device)
        diag = PosteriorDiagnostics(
            max_weight=max_w,
            entropy=torch.full_like(max_w, math.log(self.n)),
            candidates=torch.full((b,), self.n, dtype=torch.int64, device=device),
            exact=torch.ones(b, dtype=torch.bool, device=device),
            logit_error_bound=torch.zeros_like(max_w),
            neglected_bound=torch.zeros_like(max_w),
            mean_error_bound=torch.zeros_like(max_w),
        )
        top = (torch.full((b, top_k), 1.0 / self.n, dtype=torch.float64, device=device),
               torch.arange(top_k, device=device).expand(b, -1).clone())
        return ybar, diag, top

    def _solve_moving(self, x, t, top_k, blas, values=None):
        """:meth:`_solve` for rows with t > 0; ``blas`` runs the products (:mod:`kinetic_fm.gemm`);
        ``values``, when given, the rows' pending value check (:class:`_NotAllFine` when a row is
        not fine, holding the blocks done before its own)."""
        if self.truncate and self.backend == "faiss":
            # the search is of x/t: at t ≲ 1e-18 (unit data) its float32 squared distances would
            # overflow, and the screening GEMM, which never divides by t, picks the atoms instead
            if abs_max(x) <= float(t.min()) * magnitude_limit(torch.float32, self.dim):
                return self._solve_truncated_by_search(x, t, top_k)
        step, parts = self.batch_chunk, []
        for b0 in range(0, x.shape[0], step):
            try:
                parts.append(self._solve_block(x[b0:b0 + step], t[b0:b0 + step], top_k, blas, values,
                                               slice(b0, b0 + step)))
            except _NotAllFine as stop:
                stop.start, stop.done = b0, parts
                raise
        return _joined(parts)

    def _coefficients(self, t):
        """(b,) float64 1 − t (≥ eps), its square, and a = t/(1 − t)², which multiplies x·y_j in
        the logits."""
        one_minus = (1.0 - t).clamp_min(self.eps)
        squared = one_minus.pow(2)
        return one_minus, squared, t / squared

    def _screen(self, x, t, squared, a, blas):
        """Screened logits ℓ̃ (b, N) in the screening dtype, one GEMM per chunk of atoms, and
        c = t²/(2(1 − t)²) (b,) float64, which multiplies ‖y_j‖² (formed once the GEMM is launched:
        on a GPU the host's small launches then overlap it)."""
        dtype = self.atoms.dtype
        xa = x.to(dtype) * a.to(dtype)[:, None]
        scores = torch.empty(x.shape[0], self.n, dtype=dtype, device=x.device)
        for c0 in range(0, self.n, self.chunk):
            gemm.matmul(xa, self.atoms[c0:c0 + self.chunk].T, out=scores[:, c0:c0 + self.chunk], blas=blas)
        c = t.pow(2) / (2.0 * squared)
        return scores.addr_(c.to(dtype), self._sq_norms, alpha=-1.0), c

    def _logit_error_bound(self, x, a, c):
        """(b,) float64 bound e on each query's screened-logit error (module docs, step 1)."""
        x_norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)
        u = unit_roundoff(self.atoms.dtype, x.device)      # read per call: TF32 may be switched on later
        return (self.dim + 4) * u * (a * x_norm * self._norm_max + c * self._norm_max ** 2)

    def _mean_error_bound(self, bound):
        """(b,) float64 bound on ‖ȳ̂ − ȳ‖₂ of screened rows whose logits are within ``bound`` (b,)
        (module docs, step 4): the second GEMM's rounding plus the weights' error."""
        u = unit_roundoff(self.atoms.dtype, bound.device)
        moved = torch.expm1(2.0 * (bound + _EXP_ULPS * u)) + self.n * math.exp(-_LOGIT_FLOOR)
        return self._norm_max * ((self.n + 2) * u + 2.0 * moved)

    def _solve_block(self, x, t, top_k, blas, values=None, rows=None):
        b = x.shape[0]
        one_minus, squared, a = self._coefficients(t)
        scores, c = self._screen(x, t, squared, a, blas)
        best, best_index = scores.max(dim=1)
        bound = self._logit_error_bound(x, a, c)
        threshold = (best.double() - self.cutoff).sub_(bound, alpha=2.0)    # 2·bound is exact
        limit = threshold.to(scores.dtype)[:, None]
        count = sum((block >= limit).sum(dim=1) for block in _column_blocks(scores))
        # rescored: the rows whose candidates are re-scored exactly, some or all of them (the rest keep
        # their screened logits, or in truncated mode the screened top k)
        if self.truncate:   # every candidate when they are few, else the k best screened ones
            exact = count <= self.truncate
            rescored = exact | (bound > self.max_logit_error)
        else:
            exact = rescored = (count <= self.exact_max) | (bound > self.max_logit_error)
        # The block's one synchronisation when every row has one candidate (late t, and top_k ≤ 1)
        # or none is re-scored (small t); a mix takes one more, for its buckets. On a GPU each
        # waits for the GEMM, and the host then launches the rest while the device idles.
        summary = [count.max(), rescored.sum(), torch.isfinite(best).all().long()]
        if values is not None:
            summary.append(values.fine[rows].all().long())
        most, n_rescored, finite, *all_fine = torch.stack(summary).tolist()
        if all_fine and not all_fine[0]:
            raise _NotAllFine
        if not finite:
            self._refuse_overflow(x, t, a, best)
        if most == 1 and top_k <= 1:   # every posterior a point mass
            ybar, ones, zeros, top = self._point_masses(best_index, top_k)
            diag = PosteriorDiagnostics(
                max_weight=ones,
                entropy=zeros,
                candidates=count,
                exact=torch.ones_like(bound, dtype=torch.bool),
                logit_error_bound=torch.zeros_like(bound),
                neglected_bound=torch.full_like(bound, min(1.0, self.n * math.exp(-self.cutoff))),
                mean_error_bound=torch.zeros_like(bound),
            )
            return ybar, diag, top

        ybar = torch.empty(b, self.dim, dtype=torch.float64, device=x.device)
        max_w = torch.empty(b, dtype=torch.float64, device=x.device)
        entropy = torch.empty_like(max_w)
        neglected = torch.full_like(bound, min(1.0, self.n * math.exp(-self.cutoff)))
        mean_error = torch.zeros_like(bound)
        top_w = torch.zeros(b, top_k, dtype=torch.float64, device=x.device)
        top_i = torch.zeros(b, top_k, dtype=torch.int64, device=x.device)

        def exact_rows(rows, idx, rounding=False):
            """Re-score the atoms ``idx`` (sorted by screened logit) of ``rows`` exactly; their log
            weights, and with ``rounding`` the bound on their logits' rounding (``_exact``)."""
            yb, log_w, *error = self._exact(x[rows], t[rows], one_minus[rows], idx, rounding)
            w = log_w.exp()
            ybar[rows], max_w[rows] = yb, w.max(dim=1).values
            entropy[rows] = 0.0 - torch.special.xlogy(w, w).sum(dim=1)  # +0 for one atom, not -0
            if top_k:  # ranked by log weight: weights that underflow to 0 all tie, in no order
                top_log, pos = _top_lowest_index_first(log_w, idx, top_k)
                top_w[rows], top_i[rows] = top_log.exp(), idx.gather(1, pos)
            return (log_w, *error) if rounding else log_w

        # rows bucketed by route and width (_buckets), so that one wide row does not widen the others'
        # re-scoring; none re-scored (small t): all screened, with no synchronisation
        if n_rescored:
            width_log2 = torch.ceil(torch.log2(count.clamp_min(max(top_k, 1)).double())).long()
            route = torch.where(exact, width_log2, _SCREENED)
            if self.truncate:   # the rows re-scored beyond their screened top k
                everything = torch.where(count <= _RESCORE_ALL_MAX, width_log2 + _RESCORE_ALL, _SEARCHED)
                route = torch.where(rescored & ~exact, everything, route)
            buckets = _buckets(route, _SCREENED + 1)
        else:
            buckets = [(slice(None), _SCREENED)]
        plain = buckets.pop()[0] if buckets[-1][1] == _SCREENED else None     # the screened rows
        for rows, level in buckets:
            if level == 0 and top_k <= 1:     # one candidate
                ybar[rows], max_w[rows], entropy[rows], top = self._point_masses(best_index[rows], top_k)
                if top_k:
                    top_w[rows], top_i[rows] = top
            elif level < _RESCORE_ALL:
                k = min(2 ** level, self.truncate or self.n)                  # ≥ every row's count
                exact_rows(rows, torch.topk(scores[rows], k, dim=1).indices)
            elif level < _SEARCHED:
                # where the screened logits may be off by more than max_logit_error (late t, a cluster
                # of more than k near-duplicates) their order cannot pick the k largest: such a row
                # re-scores every candidate exactly (as the exact field does) and keeps the exact top
                # k; only one with very many candidates takes the certified search of x/t
                cand = torch.topk(scores[rows], min(2 ** (level - _RESCORE_ALL), self.n), dim=1).indices
                _, log_all, error = self._exact(x[rows], t[rows], one_minus[rows], cand, rounding=True)
                best_log, pos = torch.topk(log_all, self.truncate, dim=1)     # exact top k, descending
                exact_rows(rows, cand.gather(1, pos))
                # dropped: the candidates left out, plus at most N·e^(−cutoff) outside them. Their mass
                # is R/(1 + R), R the ratio of their total to the kept atoms', each logit moved by its
                # rounding bound against the kept ones (a ratio of two sums: no 1 − kept mass, whose
                # normalisation's rounding is absolute)
                kept = torch.logsumexp(best_log - error.gather(1, pos), dim=1)
                left = torch.logsumexp((log_all + error).scatter_(1, pos, -math.inf), dim=1)
                size = 4.0 * (left.abs() + kept.abs()) + 2.0 * cand.shape[1] + 16.0
                neglected[rows] = _mass_bound(left - kept, size, self.n * math.exp(-self.cutoff))
            else:
                yb, found, (tw, ti) = self._solve_truncated_by_search(x[rows], t[rows], top_k)
                ybar[rows], max_w[rows], entropy[rows] = yb, found.max_weight, found.entropy
                neglected[rows] = found.neglected_bound
                top_w[rows], top_i[rows] = tw, ti

        if plain is not None and self.truncate:
            rows = plain
            block = scores[rows]
            del scores
            screened, idx = torch.topk(block, self.truncate, dim=1)   # idx[:, 0]: the best
            log_w, error = exact_rows(rows, idx, rounding=True)
            # A dropped atom j has ℓ̃_j ≤ ℓ̃_(k); each screened logit is within e of the truth
            # up to one constant per row, so ℓ_j ≤ ℓ_(k) + 2e and ℓ_j ≤ ℓ_b + (ℓ̃_(k) − ℓ̃_b) + 2e,
            # ℓ_(k) and ℓ_b the exact logits of the last and the first kept atom (log weights:
            # a weight that underflows must not read as log 0 = −inf). ℓ_(k) is the float64 one
            # plus its rounding bound (ℓ_b, the reference, is exact); the screened gap, a float32
            # difference, is raised by its own rounding
            gap = (screened[:, -1] - screened[:, 0]).double()
            gap_up = gap + gap.abs() * (torch.finfo(screened.dtype).eps / 2)
            log_dropped = torch.minimum(log_w[:, -1] + error[:, -1], log_w[:, 0] + gap_up) + 2.0 * bound[rows]
            size = log_w[:, -1].abs() + log_w[:, 0].abs() + gap.abs() + error[:, -1] + 2.0 * bound[rows]
            neglected[rows] = self._dropped_mass_bound(log_dropped, log_w, error, size)
        elif plain is not None:
            # screened weights with max 1; in place when the whole block is dense (small t)
            rows = plain
            weights = scores[rows]
            del scores
            total, w_log_w = _exponentiate(weights, best[rows])
            ybar[rows] = gemm.matmul(weights, self.atoms, blas=blas).double() / total[:, None]
            mean_error[rows] = self._mean_error_bound(bound[rows])
            max_w[rows] = 1.0 / total
            entropy[rows] = total.log() - w_log_w / total
            if top_k:   # ties among the k taken lowest index first (sorting the whole block would double its memory)
                tw, ti = torch.topk(weights, top_k, dim=1)
                tw, pos = _top_lowest_index_first(tw, ti, top_k)
                top_w[rows], top_i[rows] = tw.double() / total[:, None], ti.gather(1, pos)

        if self.truncate:   # its weights are exact on the atoms it keeps
            exact = torch.ones_like(exact)
        diag = PosteriorDiagnostics(
            max_weight=max_w,
            entropy=entropy,
            candidates=count,
            exact=exact,
            logit_error_bound=bound.masked_fill(exact, 0.0),
            neglected_bound=neglected,
            mean_error_bound=mean_error,
        )
        return ybar, diag, (top_w, top_i)

    def _refuse_overflow(self, x, t, a, best):
        """ValueError for a block whose screened logits left the screening dtype's range: a·x·y_j
        with a = t/(1 − t)² up to 1e12 can overflow where x and the atoms passed the magnitude
        checks (which bound ‖x‖², ‖y‖² and x·y), and their inf − inf read as NaN picked an
        arbitrary atom, reported as exact."""
        row = int((~torch.isfinite(best)).nonzero()[0, 0])
        dtype = self.atoms.dtype
        remedy = "scale x and the training atoms down"
        if dtype == torch.float32:
            remedy += ", or pass the atoms as float64"
        raise ValueError(f"the screened logits overflow {dtype} at t = {float(t[row])!r}: t/(1 − t)² = "
                         f"{float(a[row]):.3g} times x·y_j leaves its range for x and atoms this large "
                         f"(|x| up to {float(x[row].abs().max()):.3g}); {remedy}")

    def _point_masses(self, best_index, top_k):
        """The posteriors of rows whose screening left one candidate (top_k ≤ 1): a point mass on
        the best atom ``best_index`` (r,), to within N·e^(−cutoff) (what ``_exact`` gives one atom,
        without its gathers and passes). Returns ȳ (r, D) float64, the max weights (ones) and the
        entropies (zeros), (r,) float64, and the top_k weights and indices (r, top_k)."""
        ones = torch.ones(best_index.shape[0], dtype=torch.float64, device=best_index.device)
        top_w, top_i = ones[:, None], best_index[:, None]
        top = (top_w.clone(), top_i) if top_k else (top_w[:, :0], top_i[:, :0])
        return self.atoms[best_index].double(), ones, torch.zeros_like(ones), top

    def _exact(self, x, t, one_minus, idx, rounding=False):
        """ȳ (r, D) float64 and normalised float64 weights (r, k) over the atoms ``idx`` (r, k).

        ``idx[:, 0]`` is the reference atom b (the best screened one, or the nearest in truncated
        mode); logits are taken relative to it (module docs, step 3). Rows go in blocks whose
        gathered float64 atoms stay under ``_EXACT_BLOCK_BYTES``; a row with more candidates than
        one block holds is done alone, its candidates in slices, in two passes (logits, then ȳ).
        With ``rounding``, also a (r, k) float64 bound on each relative logit's float64 rounding
        error (:func:`_relative_logit_rounding`), which truncated mode's neglect bound needs.
        """
        r, k = idx.shape
        per_atom = self.dim * 8
        width = max(1, min(k, _EXACT_BLOCK_BYTES // per_atom))        # candidates per gather
        rows = max(1, _EXACT_BLOCK_BYTES // (width * per_atom)) if width == k else 1
        ybar = torch.empty(r, self.dim, dtype=torch.float64, device=x.device)
        weights = torch.empty(r, k, dtype=torch.float64, device=x.device)
        error = torch.empty_like(weights) if rounding else None
        for r0 in range(0, r, rows):
            sl = slice(r0, r0 + rows)
            tt = t[sl, None]
            best = self.atoms[idx[sl, 0]].double()                           # (rows, D)
            twice_x = 2.0 * x[sl].double()
            scale = tt / (2.0 * one_minus[sl, None].pow(2))
            slices = [slice(c0, c0 + width) for c0 in range(0, k, width)]
            kept = None
            for cs in slices:
                gathered = self.atoms[idx[sl, cs]].double()                   # (rows, width, D)
                diff = gathered - best[:, None, :]                           # d = y_j − y_b
                # ℓ_j − ℓ_b = t/(2(1−t)²)·d·(2x − t·(y_j + y_b)), its second factor formed per
                # entry: near the bisector of y_j and y_b the expanded 2d·(x − t·y_b) − t‖d‖² is a
                # difference of two O(‖d‖²) terms whose rounding t/(2(1−t)²) (5e11 at t = 1 − 1e-6)
                # magnified into weights of (1, 0) for a tie. In place on the gathered copy.
                towards = torch.addcmul(twice_x[:, None, :], gathered.add_(best[:, None, :]), tt[..., None],
                                        value=-1.0, out=gathered)
                weights[sl, cs] = scale * towards.mul_(diff).sum(dim=2)
                kept = diff if len(slices) == 1 else None                   # reused for ȳ below
            if rounding:
                error[sl] = _relative_logit_rounding(x[sl].double(), t[sl], one_minus[sl], best, weights[sl])
            w = torch.log_softmax(weights[sl], dim=1)
            weights[sl] = w
            w = w.exp()
            ybar[sl] = best
            for cs in slices:
                diff = kept if kept is not None else self.atoms[idx[sl, cs]].double().sub_(best[:, None, :])
                ybar[sl] += torch.einsum("rk,rkd->rd", w[:, cs], diff)
        return (ybar, weights) if not rounding else (ybar, weights, error)  # log weights

    def _solve_truncated_by_search(self, x, t, top_k):
        """Truncated mode through the exact k-nearest-neighbour search of x/t (the faiss backend)."""
        b, k = x.shape[0], self.truncate
        one_minus, _, _ = self._coefficients(t)
        queries = x.double() / t[:, None]
        # the atoms were checked once, at construction; x/t is finite whenever x is
        found = nearest_neighbors(queries, self.atoms, k, chunk=self.chunk, backend=self.backend,
                                  check_inputs=False)
        idx = found.indices
        ybar, log_w, error = self._exact(x, t, one_minus, idx, rounding=True)
        w = log_w.exp()
        # the exact top k of ℓ: every dropped atom j is at least as far from x/t as the k-th kept
        # one, so ℓ_j ≤ ℓ_(k), to within the search's float64 rounding (_search_rounding)
        slack = _search_rounding(queries, t, one_minus, found.distances[:, -1])
        log_dropped = log_w[:, -1] + error[:, -1] + slack
        diag = PosteriorDiagnostics(
            max_weight=w.max(dim=1).values,
            entropy=0.0 - torch.special.xlogy(w, w).sum(dim=1),  # 0 - 0 is +0, where -(0) printed -0
            candidates=torch.full((b,), k, dtype=torch.int64, device=x.device),
            exact=torch.ones(b, dtype=torch.bool, device=x.device),
            logit_error_bound=torch.zeros(b, dtype=torch.float64, device=x.device),
            neglected_bound=self._dropped_mass_bound(log_dropped, log_w, error,
                                                     log_w[:, -1].abs() + error[:, -1] + slack),
            mean_error_bound=torch.zeros(b, dtype=torch.float64, device=x.device),
        )
        return ybar, diag, (w[:, :top_k], idx[:, :top_k])

    def _dropped_mass_bound(self, log_dropped, log_w, error, size):
        """Bound on the posterior mass outside the ``truncate`` kept atoms, (b,) float64.

        ``log_dropped`` (b,) bounds the true logit of every dropped atom on the scale of the kept
        atoms' float64 log weights ``log_w`` (b, k) (their relative logits less their log-sum-exp),
        whose logits are within ``error`` (b, k) of the truth; ``size`` (b,) is the sum of the
        magnitudes of the terms that formed ``log_dropped``. The kept atoms' true mass on that
        scale is at least exp(LSE(log_w − error)), so the mass dropped is at most R/(1 + R),
        R = (N − k)·exp(log_dropped − LSE(log_w − error)), taken as a sigmoid of log R so that it
        stays in [0, 1] for any bound, and made a bound on its own float64 rounding (``_mass_bound``).
        """
        if self.n == self.truncate:
            return torch.zeros_like(log_dropped)
        log_n = math.log(self.n - self.truncate)
        kept = torch.logsumexp(log_w - error, dim=1)
        # the rounding of log_w's entries (≤ 2u|log w| each), of this log-sum-exp (≤ (2k + 4)u plus
        # its entries' on average, weighted: ≤ 2u·log k) and of the sums, generously
        size = 4.0 * (size + kept.abs() + log_n) + 2.0 * self.truncate + 16.0
        return _mass_bound(log_n + log_dropped - kept, size)


_U64 = 2.0 ** -53   # float64's unit round-off


def _relative_logit_rounding(x, t, one_minus, best, rel):
    """(r, k) float64 bound on |r̂_j − r_j|, the float64 rounding of the relative logits
    r_j = ℓ_j − ℓ_b that :meth:`EmpiricalFlow._exact` forms as ``rel`` = S·Σ_i d_i·T_i, with
    S = t/(2(1 − t)²), d = y_j − y_b, T = 2x − t·(y_j + y_b); x and ``best`` = y_b (r, D) float64,
    t and ``one_minus`` (r,). Column 0, b itself (d = 0), is exact.

    Forward error analysis (u = 2⁻⁵³): T_i is formed with error ≤ u·(|T_i| + 2t·|y_j + y_b|_i) (the
    sum y_j + y_b, the product by t, the difference), d_i with ≤ u·|d_i|, and the products and the
    D-term sum add (D + 1)·u·Σ|d_i T_i| (in any summation order); S (1 − t, its square, the quotient)
    and the product by it are within 6u relative. To first order

        |r̂_j − r_j| ≤ u·S·((D + 2)·Σ_i |d_i T_i| + 2t·Σ_i |d_i|·|y_j + y_b|_i) + 6u·|r_j|.

    With ρ_j = ‖x − t·y_j‖, T = (x − t y_j) + (x − t y_b) and t·d = (x − t y_b) − (x − t y_j), so
    ‖T‖ and t‖d‖ are at most ρ_j + ρ_b, and t‖y_j + y_b‖ ≤ 2t‖y_b‖ + ρ_j + ρ_b. By Cauchy–Schwarz,
    in logit units λ = ρ/(√2(1 − t)) (λ_j² = −ℓ_j = λ_b² − r_j) and μ = t‖y_b‖/(√2(1 − t)):

        |r̂_j − r_j| ≤ u·((D + 4)·(λ_j + λ_b)² + 4μ·(λ_j + λ_b) + 6|r_j|).

    It is large exactly where the float64 logits lose digits: near-ties (r_j ≈ 0 with λ large:
    late t, x far from both atoms' paths) and a large common offset (μ). The constants are raised
    to D + 8, 5 and 8 to absorb second-order terms and the rounding of the bound's own inputs
    (ρ_b, formed in float64, with ≤ (D + 4)u relative and 2u·t‖y_b‖ absolute error, is raised by it).
    """
    dim = x.shape[1]
    tt = t[:, None]
    y_norm = torch.linalg.vector_norm(best, dim=1)
    rho_b = torch.linalg.vector_norm(x - tt * best, dim=1) * (1 + (dim + 4) * _U64) + 2 * _U64 * t * y_norm
    per_unit = 1.0 / (math.sqrt(2.0) * one_minus)                   # λ = ρ·per_unit
    lam_b, mu = (rho_b * per_unit)[:, None], (t * y_norm * per_unit)[:, None]
    both = torch.sqrt(lam_b.square() + (-rel).clamp_min(0.0)) + lam_b   # λ_j + λ_b
    error = _U64 * ((dim + 8) * both.square() + 5.0 * mu * both + 8.0 * rel.abs())
    error.nan_to_num_(nan=math.inf)   # λ² past float64's range with μ = 0: 0·inf is an unbounded error
    error[:, 0] = 0.0
    return error


def _search_rounding(queries, t, one_minus, kth):
    """(b,) float64 bound on how far a dropped atom's logit can exceed the k-th kept one's when
    the k nearest atoms to x/t come from :func:`~kinetic_fm.nearest_neighbors`: ``queries`` (b, D)
    = fl(x/t), within η = u·‖x/t‖ of x/t (u = 2⁻⁵³; 2η taken), ``kth`` (b,) the k-th float64
    distance d̂, √ of a sum of D rounded squares of differences (within γ = (D + 8)u relative of
    the distance to fl(x/t), sqrt included). Every dropped atom is then at least d̂(1 − γ) − η
    from x/t (certified, or ranked after the k-th), the k-th at most d̂(1 + γ) + η, so its logit
    ℓ = −t²‖x/t − y‖²/(2(1 − t)²) exceeds the k-th's by at most t²/(2(1 − t)²)·(A² − B²),
    A = d̂(1 + γ) + η, B = max(0, d̂(1 − γ) − η)."""
    gamma = (queries.shape[1] + 8) * _U64
    eta = 2.0 * _U64 * torch.linalg.vector_norm(queries, dim=1)
    far, near = kth * (1 + gamma) + eta, (kth * (1 - gamma) - eta).clamp_min(0.0)
    return t.square() / (2.0 * one_minus.square()) * (far - near) * (far + near)


def _mass_bound(log_ratio, size, floor=0.0):
    """R/(1 + R) + ``floor`` (b,), R = exp(``log_ratio``), made an upper bound on its value in exact
    arithmetic: ``log_ratio`` raised by u·``size`` (the caller's bound on its float64 rounding, u =
    2⁻⁵³), the result by 8u relative (float64's sigmoid 1/(1 + e^−z) and exp are within 2u, the sum
    within u) and by 2⁻¹⁰⁷³ absolute (the rounding of a subnormal result), and at most 1.

    Below z = −40, R/(1 + R) ≤ e^z is taken, equal to it in float64 there: float64's sigmoid
    flushes to 0 from z ≈ −709 (e^−z overflows), where the mass can still be a subnormal."""
    z = log_ratio + _U64 * size
    value = torch.where(z > -40.0, torch.sigmoid(z), torch.exp(z))
    return value.add_(floor).mul_(1.0 + 8 * _U64).add_(2.0 ** -1073).clamp_max_(1.0)


# Exact re-scoring gathers (rows, k, D) float64 atoms, plus their differences d of that size, per block.
# 16 MiB is as fast as 64 MiB (paired A/B at N = 10,000, B = 256: 0.94-1.01x) with a lower peak
# (N = 50,000, t = 0.2: train + 105 MiB instead of + 132 MiB); 4 MiB was 1.22x slower at t = 0.2,
# where ~64 candidates a row leave two rows a block.
_EXACT_BLOCK_BYTES = 16 << 20
# screened logits more than this below their row's best are clamped there (_exponentiate)
_LOGIT_FLOOR = 80.0
# a dense weight exp(ℓ̃ − best) is within a factor e^(±_EXP_ULPS·u) of the exponential of its
# screened logit: the difference, at most _LOGIT_FLOOR in size, rounds by ≤ _LOGIT_FLOOR·u and the
# exponential by ≤ 2 ulps (4u)
_EXP_ULPS = _LOGIT_FLOOR + 4.0

# logit matrices up to this size are passed over whole on an accelerator (kernel launches are what
# costs there); larger ones in two to four equal parts (``_column_blocks``). The CPU's blocks are
# smaller anyway.
_SPLIT_FLOOR_BYTES = 16 << 20

# truncated mode: rows whose screening cannot order their candidates re-score all of them exactly
# up to this many (a cluster of near-duplicates); beyond it, the certified search of x/t
_RESCORE_ALL_MAX = 4096

# The buckets of a block's rows (_solve_block): log2 of the width of the rows whose candidates are
# re-scored exactly (0-63: 2**64 would exceed any candidate count); in truncated mode _RESCORE_ALL
# + log2 width for the rows whose every candidate is re-scored to pick the exact top k (at most
# _RESCORE_ALL_MAX), _SEARCHED for those beyond; last, _SCREENED, the rows that keep their screened
# logits (or their screened top k)
_RESCORE_ALL = 64
_SEARCHED = _RESCORE_ALL + _RESCORE_ALL_MAX.bit_length()
_SCREENED = _SEARCHED + 1

# on an accelerator, check each block's values in that block's synchronisation (EmpiricalFlow._solve)
_DEFER_CHECKS = True


class _NotAllFine(Exception):
    """A block's rows are not all fine (``_ValueCheck``): the call goes on from that block, its first
    row ``start``, with its checks settled; ``done`` holds the answers of the blocks before it."""

    start: int    # set by EmpiricalFlow._solve_moving
    done: list


def _joined(parts: list) -> tuple:
    """The (ȳ, diagnostics, top) answers of consecutive blocks of rows, as one."""
    if len(parts) == 1:
        return parts[0]
    ybar = torch.cat([p[0] for p in parts])
    diag = PosteriorDiagnostics(*(torch.cat([getattr(p[1], f) for p in parts])
                                  for f in PosteriorDiagnostics.__dataclass_fields__))
    return ybar, diag, (torch.cat([p[2][0] for p in parts]), torch.cat([p[2][1] for p in parts]))


class _ValueCheck:
    """The check of one call's values, pending: ``fine`` (B,) bool marks rows with t in (0, 1] and
    x within the magnitude limit (``fine_x``), computed without a synchronisation."""

    def __init__(self, x: torch.Tensor, t: torch.Tensor, x_limit: float, dtype: torch.dtype):
        self.x, self.t, self.x_limit, self.dtype = x, t, x_limit, dtype

    @functools.cached_property
    def fine_x(self) -> torch.Tensor:
        # NaN fails every comparison, so one reduction (no |x| copy) covers NaN and entries too
        # large; compared in float64: in x's dtype a limit beyond its range (float16 x, or float32
        # x with float64 atoms) rounded to inf, and inf <= inf let an inf row through as NaN
        return torch.linalg.vector_norm(self.x, ord=math.inf, dim=1).double() <= self.x_limit

    @functools.cached_property
    def fine(self) -> torch.Tensor:
        # formed when first read: on a GPU after the first block's GEMM is launched, so overlapping it
        return (self.t > 0) & (self.t <= 1) & self.fine_x

    def settle(self) -> bool:
        """Whether every row is fine (one synchronisation); False when some are at t = 0, and a
        ValueError naming the first bad time, or the rows of x with NaN, inf or too large a
        magnitude, when some are not fine otherwise."""
        if bool(self.fine.all()):
            return True
        x, t = self.x, self.t
        inside = unit_times(t)
        if bool((inside & self.fine_x).all()):
            return False                 # rows at t = 0, nothing wrong
        check_unit_times(t, inside=inside)
        rows = (~self.fine_x).nonzero().flatten()[:10].tolist()
        if not bool(torch.isfinite(x[rows]).all()):
            raise ValueError(f"x has NaN or inf in rows {rows}")
        check_magnitude("x", x[rows], self.dtype)
        return False


def _buckets(level: torch.Tensor, levels: int) -> list[tuple[torch.Tensor | slice, int]]:
    """The rows of a block grouped by their ``level`` (b,) int64 in [0, ``levels``): a list of
    (rows, level) for the levels present, in increasing order, rows ascending within a bucket.
    Rows are ``slice(None)`` (views, not copies) when one level holds all b rows, else an index
    tensor. One synchronisation: the rows sorted by level on the device, the bounds read at once."""
    level, order = torch.sort(level, stable=True)
    ends = torch.searchsorted(level, torch.arange(levels, device=level.device), right=True).tolist()
    return [(slice(None) if end - start == level.shape[0] else order[start:end], level_)
            for level_, (start, end) in enumerate(zip([0, *ends[:-1]], ends)) if end > start]


def _column_blocks(matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of ``matrix`` (b, N) split along N into blocks sized by :func:`kinetic_fm.blocks.block_size`,
    and beyond ``_SPLIT_FLOOR_BYTES`` into two to four equal parts, as many as that size needs (on
    the CPU the byte budget is the smaller bound).

    Passes over the logits after their GEMM (a mask counted, exponentials summed in float64) then
    keep their temporaries in the cache on the CPU: whole-matrix ones cost about 12 ms each at
    (256, 10,000), a third of a GEMM, in page faults. On an accelerator a block's temporaries (its
    mask, and the int64 or float64 copy ATen makes of a block summed in a wider dtype) reach 2.25×
    the block: whole-matrix blocks held the peak at train + 3.2–4.1× the logits, 1.34 × (train +
    output) at N = 50,000, B = 256 on an H200, over the 1.3 the field promises. Quarters hold it
    at train + 1.8–2.3× the logits (1.14–1.18; simulated on the CPU with the device's block sizes,
    ``benchmarks/efm_speed.py --device-blocks``), for at most three more launches per pass."""
    column_bytes = matrix.shape[0] * matrix.element_size()
    columns = block_size(matrix.device, column_bytes, matrix.shape[1])
    parts = min(4, max(1, -(-column_bytes * matrix.shape[1] // _SPLIT_FLOOR_BYTES)))   # equal parts: no ragged tail
    return matrix.split(max(1, min(columns, -(-matrix.shape[1] // parts))), dim=1)


def _exponentiate(logits: torch.Tensor, best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place logits ← w = exp(logits − best), block by block; returns float64 (Σ w, Σ w·log w).

    logits: (b, N) screened logits, best: (b,) their row maxima, so max w = 1. Logits more than
    80 below the best are clamped there: such weights are negligible (< N·e^-80 in all) and their
    exponentials would be slow subnormal floats. Σ w·log w = Σ w·(clamped logit − best) needs no
    logarithm.
    """
    total = torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
    w_log_w = torch.zeros_like(total)
    for block in _column_blocks(logits):
        log_w = block.sub_(best[:, None]).clamp_(min=-_LOGIT_FLOOR)
        w = torch.exp(log_w)
        total += w.sum(dim=1, dtype=torch.float64)
        w_log_w += torch.linalg.vecdot(w, log_w).double()
        block.copy_(w)
    return total, w_log_w


@dataclass(frozen=True)
class PosteriorTrace:
    """Diagnostics recorded along a run: each field (calls, B), row i for the i-th field call.

    The fields are those of :class:`PosteriorDiagnostics`. Samples a call did not evaluate
    (dopri5 evaluates only those still in flight) hold NaN in the float fields, −1 in
    ``candidates`` and False in ``exact``.
    """

    t: torch.Tensor
    max_weight: torch.Tensor
    entropy: torch.Tensor
    neglected_bound: torch.Tensor
    exact: torch.Tensor
    # added later: after the first five, so that unpacking a trace by position keeps working
    candidates: torch.Tensor
    logit_error_bound: torch.Tensor
    mean_error_bound: torch.Tensor


_TRACED = ("max_weight", "entropy", "neglected_bound", "exact", "candidates", "logit_error_bound",
           "mean_error_bound")
_NOT_EVALUATED = {torch.bool: False, torch.int64: -1}   # float fields: NaN


class _RecorderLog:
    """The records a recorder and its :meth:`PosteriorRecorder.select` views share: one record per
    evaluation, each a list of parts (t, diagnostics, mask or None); ``pending`` collects the parts
    of the evaluation that :meth:`PosteriorRecorder.one_evaluation` holds open."""

    def __init__(self) -> None:
        self.records: list[list[tuple[torch.Tensor, PosteriorDiagnostics, torch.Tensor | None]]] = []
        self.pending: list[tuple[torch.Tensor, PosteriorDiagnostics, torch.Tensor | None]] | None = None


class PosteriorRecorder:
    """Wrap an :class:`EmpiricalFlow` so every ``v(x, t)`` call also records its diagnostics.

    The records stay on the device (no host synchronisation beyond the field's own); pass the
    recorder to ``kfm.sample`` in place of the field, then read :meth:`trace`. One recorder holds
    one run: ``kfm.sample`` refuses (ValueError) a recorder that still holds records, whose trace
    would stack two runs as one; :meth:`clear` it between runs, or make one per run. The
    library's wrappers around it (the adapters such as ``ModelXT``, ``as_model_wrapper``,
    ``KineticODESolver``, a ``ClassifierFreeGuidance`` model that gives ``start_run``) pass the
    run's start on to it, so it is refused there too. A function of your own around it (a lambda)
    hides it: give such a wrapper a ``start_run()`` that calls the recorder's, or clear it yourself.
    Called directly, or by a loop that does not call :meth:`start_run` (flow_matching's
    ``ODESolver``), its records accumulate over calls, and :meth:`trace` refuses (ValueError) records
    that return to t = 0 after later times, but for a run backwards in time that ends there, or where
    a sample is back at or before its first time after later times (two runs from t0 = 0.2): a second
    run nobody told it of.

    One record is one evaluation of the field by the sampler, also where an adapter splits it:
    ``ModelXT``/``ModelTX(time="scalar")`` calls what it wraps once per distinct time (dopri5's
    samples sit at several), each on a :meth:`select` view for that time's rows, inside
    :meth:`one_evaluation`, and those calls make one record, as under ``time="batch"``.
    """

    singular_at_one = True

    def __init__(self, field: EmpiricalFlow):
        if not isinstance(field, EmpiricalFlow):  # it reads the field's posterior diagnostics
            raise TypeError(f"PosteriorRecorder records an EmpiricalFlow, got {type(field).__name__}")
        self.field = field
        self._active: torch.Tensor | None = None  # the rows this view records, None = all
        self._log = _RecorderLog()                 # shared with the select() views

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The wrapped field's v*(x, t), (B, ...); this call's diagnostics are recorded."""
        out = self.field.evaluate(x, t)
        # a copy: a solver may move the time tensor it passed forward in place (dopri5 does)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float64).expand(x.shape[0]).clone()
        part = (t, out.diagnostics, self._active)
        if self._log.pending is not None:
            self._log.pending.append(part)
        else:
            self._log.records.append([part])
        return out.velocity

    def select(self, active: torch.Tensor) -> "PosteriorRecorder":
        """A recorder for the samples where the (B,) bool mask ``active`` is True, writing into
        this one's records (dopri5 evaluates only the samples still in flight). On a view, the
        mask is over the view's rows, and the new view records those of the whole batch; a mask of
        another length (one over the whole batch) is refused (ValueError), at the price of one host
        synchronisation on an accelerator (the view's row count lives on the device)."""
        if not (isinstance(active, torch.Tensor) and active.dtype == torch.bool and active.dim() == 1):
            # an integer 0/1 mask would be read as row indices when the trace is stacked
            got = (f"a {active.dim()}-D {active.dtype} tensor" if isinstance(active, torch.Tensor)
                   else type(active).__name__)
            raise ValueError(f"active must be a (B,) bool mask of the samples to record, got {got}")
        view = copy.copy(self)                  # shares the records
        if self._active is None:
            view._active = active.clone()
        else:  # the view's rows within the whole batch
            # masked_scatter reads the mask's first `rows` entries and drops the rest without a word
            # (a whole-batch mask recorded other samples' rows; trace() saw it, calls later)
            rows = int(self._active.sum())
            if active.shape[0] != rows:
                raise ValueError(f"active must be a mask over this select() view's {rows} rows, got one of "
                                 f"{active.shape[0]}: a view's select takes a mask of the rows it records, "
                                 f"not of the whole batch of {self._active.shape[0]}")
            view._active = self._active.masked_scatter(self._active, active.to(self._active.device))
        return view

    @contextlib.contextmanager
    def one_evaluation(self) -> Iterator[None]:
        """The calls made inside (on this recorder or its :meth:`select` views) make one record:
        the per-time calls of an adapter with ``time="scalar"`` are one evaluation of the field by
        the sampler. Inside another, it adds nothing: the outer one makes the record. An evaluation
        that raises (a later time's call failed, an interrupt) leaves no record, as one call that
        raises under ``time="batch"`` leaves none: a record of its first times' rows would hold NaN
        for rows that were in flight, which reads as rows dopri5 had finished. While it is open,
        ``len()`` counts it once it holds a call, and :meth:`clear`, :meth:`trace` and
        :meth:`start_run` (so ``kfm.sample``) are refused: the record is not made yet."""
        log = self._log
        if log.pending is not None:
            yield
            return
        log.pending = parts = []
        try:
            yield
        except BaseException:
            parts.clear()
            raise
        finally:
            log.pending = None
            if parts:
                log.records.append(parts)

    def __len__(self) -> int:
        """The number of records: evaluations of the field, one per call unless merged. An open
        :meth:`one_evaluation` that has recorded a call counts as the record it makes on closing."""
        return len(self._log.records) + bool(self._log.pending)

    def _refuse_open_evaluation(self, method: str) -> None:
        """ValueError for ``method`` called while a :meth:`one_evaluation` (of this recorder or a
        view) is open: its calls are one record in the making, which a run cannot start inside,
        ``clear()`` cannot half forget, nor ``trace()`` show."""
        if self._log.pending is not None:
            raise ValueError(f"{method}() inside an open one_evaluation() of the PosteriorRecorder: the calls "
                             f"made in it are one record, made when it closes; call {method}() after the "
                             "`with recorder.one_evaluation():` block")

    def start_run(self) -> None:
        """Called by ``kfm.sample`` before a run's first velocity call: refuses a recorder that
        still holds records, whose :meth:`trace` would return the runs stacked as one, or one
        inside an open :meth:`one_evaluation` (the run's calls would make one record)."""
        self._refuse_open_evaluation("start_run")
        calls = len(self._log.records)
        if calls:
            # kfm.sample may have been given a wrapper around the recorder, or the caller is not kfm.sample
            raise ValueError(f"a run starts on a PosteriorRecorder that already holds {calls} records "
                             "of an earlier run, and its trace() would mix the two runs: read its trace(), then "
                             "clear() it before the next run, or use a new PosteriorRecorder per run")

    def clear(self) -> None:
        """Forget every record (views made by :meth:`select` share them and forget them too);
        refused (ValueError) inside an open :meth:`one_evaluation`, whose record is not made yet."""
        self._refuse_open_evaluation("clear")
        self._log.records.clear()

    def trace(self) -> PosteriorTrace:
        """Stack the records; raises ValueError when nothing was recorded yet, or when the calls
        were on batches of different sizes (the records of several runs), or return to t = 0 after
        later times, or to a sample's first time or before it (a second run of the same size,
        started without :meth:`start_run`; a run backwards in time, which ends on 0, is one run), or
        a :meth:`select` view was called on other rows than its mask selects, or inside an open
        :meth:`one_evaluation` (its record is not made yet)."""
        self._refuse_open_evaluation("trace")
        if not self._log.records:
            raise ValueError("the recorder has not been called yet")
        parts = [(call, part) for call, record in enumerate(self._log.records) for part in record]
        sizes = sorted({t.shape[0] if active is None else active.shape[0] for _, (t, _, active) in parts})
        if len(sizes) > 1:
            raise ValueError(f"the recorder holds calls on batches of {', '.join(map(str, sizes[:-1]))} and "
                             f"{sizes[-1]} rows, so more than one run: record each run with its own "
                             "recorder, or clear() it between runs (or one dopri5 run through a function "
                             "around the recorder, which hides its select(): dopri5 evaluates the samples in "
                             "flight only; pass the recorder itself, or one of the library's adapters around it)")
        batch = sizes[0]
        # each select(active) view's rows against its mask's count, read back in one go (torch's own
        # words for a mismatch name no call)
        masked = [(call, t.shape[0], active) for call, (t, _, active) in parts if active is not None]
        counts = torch.stack([active.sum() for _, _, active in masked]).tolist() if masked else []
        for (call, rows, _), count in zip(masked, counts):
            if rows != count:
                raise ValueError(f"the recorder's call {call} evaluated {rows} rows but its select(active) "
                                 f"mask selects {count}: call a view only on the rows it selects")
        columns: dict[str, list[torch.Tensor]] = {name: [] for name in ("t", *_TRACED)}
        for record in self._log.records:
            for name in columns:
                values = [(t if name == "t" else getattr(diagnostics, name), active)
                          for t, diagnostics, active in record]
                if len(values) == 1 and values[0][1] is None:
                    columns[name].append(values[0][0])
                    continue
                full = values[0][0].new_full((batch,), _NOT_EVALUATED.get(values[0][0].dtype, math.nan))
                for value, active in values:
                    if active is None:
                        full.copy_(value)
                    else:
                        full[active] = value
                columns[name].append(full)
        trace = PosteriorTrace(**{name: torch.stack(values) for name, values in columns.items()})
        self._refuse_second_start(trace.t)
        return trace

    @staticmethod
    def _refuse_second_start(t: torch.Tensor) -> None:
        """ValueError where the (calls, B) times (NaN: a row the call did not evaluate) show a second
        run that nobody told the recorder of (a function around it, flow_matching's ``ODESolver``).

        Within one forward run no row is evaluated at or before its first time again: the solvers'
        times never decrease but on a rejected try or after dopri5's first-step probe, whose tries
        start past the step's start (their first stage is reused). So a row back at or before its
        first time, after later times, is a second start (two runs from t0 = 0.2 appended).
        A run backwards in time (data to noise, a ``time_grid`` from 0.95 to 0) ends on t = 0 (rk4's
        last stage) after later times: a return to 0 is a second start where the records began at 0
        (a forward run's start, again) or go on past 0 after it (a run after the backward one)."""
        at_start = ((t == 0) | t.isnan()).all(1)                # every row the record evaluated is at 0
        seen = (t > 0).any(1).cumsum(0)                         # the records so far that went past 0
        # seen[i] < seen[-1]: a later record goes past 0
        again = at_start[1:] & (seen[:-1] > 0) & (at_start[0] | (seen[1:] < seen[-1]))
        first = (~t.isnan()).to(torch.uint8).argmax(0)          # each row's first record (argmax: the first 1)
        began = t.gather(0, first[None])                        # (1, B), the time there
        back = (t <= began) & ((t > began).cumsum(0) > 0)       # at or before it, after a later time
        restart = torch.cat([again.new_zeros(1), again])
        starts = restart | back.any(1)
        if not bool(starts.any()):                              # one synchronisation, as trace()'s others
            return
        record = int(torch.nonzero(starts)[0])
        if restart[record]:
            where = f"its record {record} is at t = 0 again after later times"
        else:
            row = int(torch.nonzero(back[record])[0])
            where = (f"its record {record} is back at t = {float(t[record, row]):.6g} (sample {row}), at or "
                     f"before where that sample's records began (t = {float(began[0, row]):.6g}), after later times")
        raise ValueError(f"the recorder holds more than one run: {where}, a run it was not told of (kfm.sample tells "
                         "the recorder it is given, or one inside the library's wrappers; a function of your own "
                         "around it, or flow_matching's ODESolver, does not): read each run's trace() and clear() "
                         "it between runs, or use a recorder per run; a function of yours can pass the start on "
                         "with a start_run() that calls the recorder's")
