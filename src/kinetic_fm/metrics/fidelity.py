"""Set-level quality: Fréchet distance and k-NN precision/recall between feature sets.

Every number carries its :class:`Protocol` (feature network, reference split, preprocessing) and
sample counts, because a Fréchet distance is only comparable under the same protocol. The name
says which network measured it: ``"FID"`` only for the standard TF-ported Inception-v3
(``inception-v3-compat``, as in torch-fidelity / pytorch-fid), ``"FD-<network>"`` otherwise
(``"FD-resnet56"``, ``"FD-lenet"``, ``"FD-pixels"``).

- Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
  ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}``, statistics in float64,
  the trace term from two symmetric eigendecompositions (no non-symmetric ``sqrtm``, so no
  complex round-off); tiny negative eigenvalues from round-off are clipped to 0. From feature
  rows where a set has no more rows than features, the trace term comes from that set's centred
  rows A (n × D) and the other's B: it is the nuclear norm of B Aᵀ over √((n₁ − 1)(n₂ − 1)), so
  the D − n + 1 zero eigenvalues of Σ₁^{1/2} Σ₂ Σ₁^{1/2} never meet a square root (through the
  D × D route their round-off, about √(ε λ_max) each, biased the value low) and no D × D
  eigendecomposition is needed. Rows measured against a prepared :class:`FrechetReference`
  (:meth:`FrechetReference.distance_of_rows`, the studies' bootstrap resamples) with k ≤ D distinct
  values take Σ's rank and the trace term from k × k Gram matrices, which share their non-zero eigenvalues.
- Precision/recall (Kynkäänniemi et al., 2019): each real feature owns a ball whose radius is
  the distance to its k-th nearest other real feature (exact, from ``nearest_neighbors``);
  precision = fraction of fakes inside some real ball, recall = fraction of reals inside some
  fake ball. Ball membership is tested by GEMM blocks (:func:`density.sq_distance_blocks`), one
  sweep over the fake × real blocks for both directions (rows against the real balls, columns
  against the fake ones), each of its buffers within ``BALL_TEST_BYTES`` on the CPU; the pairs
  within the GEMM's rounding bound of a ball's edge are decided on exact float64 differences,
  against the exact squared radius, so a copy of a real point always counts as inside and ties
  on quantised data (``d = r`` counts as inside) are decided exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..blocks import DEVICE_BLOCK_BYTES, block_size
from ..checks import check_flag, check_integer, check_same_space, positive_integer
from ..exact_scaling import HUGE, TINY, ldexp, times_power_of_two, unit_exponent
from ..knn import abs_max, column_mean, nearest_neighbors, row_sq_norms, unit_roundoff
from ..sampling.guards import feature_map_as_found
from .density import sq_distance_blocks
from .features import FeatureSpace, SpaceLike, as_features, feature_space
from .stats import to_numpy

if TYPE_CHECKING:  # pragma: no cover - pandas is imported where a table is built
    import pandas as pd

__all__ = ["Protocol", "FrechetDistance", "FrechetBiasWarning", "PrecisionRecall", "feature_statistics",
           "frechet_distance_from_stats", "FrechetReference", "frechet_distance", "precision_recall",
           "inception_feature_space", "STANDARD_INCEPTION"]

STANDARD_INCEPTION = ("inception-v3-compat",)


class FrechetBiasWarning(UserWarning):
    """A Fréchet distance was computed from a set with no more samples than features."""


@dataclass(frozen=True)
class Protocol:
    """How a set-level number was measured.

    Attributes:
        network: feature network name (``"pixels"``, ``"resnet56"``, ``"inception-v3-compat"``).
        split: the reference set, e.g. ``"cifar10/train"``.
        preprocessing: free text, e.g. ``"uint8 RGB, bilinear resize to 299"``.
    """

    network: str = "pixels"
    split: str | None = None
    preprocessing: str | None = None

    @property
    def fd_name(self) -> str:
        """How the distance is named in tables: "FID" for a standard Inception network, else "FD-<network>"."""
        return "FID" if self.network in STANDARD_INCEPTION else f"FD-{self.network}"


@dataclass(frozen=True)
class FrechetDistance:
    """A Fréchet distance with its protocol.

    Attributes:
        value: the distance ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½), float64, in squared
            feature units (``float(fd)`` gives it).
        name: ``"FID"`` for the standard Inception, else ``"FD-<network>"``.
        n_a, n_b: the two sets' sizes; dim: the feature dimension D.
        protocol: how the features were taken (:class:`Protocol`).
    """

    value: float
    name: str
    n_a: int
    n_b: int
    dim: int
    protocol: Protocol

    def __float__(self) -> float:
        return self.value

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (the protocol as a nested dict), for JSON and tables."""
        return asdict(self)

    def __str__(self) -> str:
        p = self.protocol
        extra = "".join(f", {k} {v}" for k, v in (("split", p.split), ("preprocessing", p.preprocessing)) if v)
        return f"{self.name} = {self.value:.4g} ({self.n_a} vs {self.n_b} samples, D={self.dim}{extra})"


@dataclass(frozen=True)
class PrecisionRecall:
    """k-NN manifold precision and recall with per-sample memberships.

    Attributes:
        precision: fraction of fakes inside the real manifold.
        recall: fraction of reals inside the fake manifold.
        k: neighbour count of the ball radii.
        fake_in_real: (n_fake,) bool, per generated sample (its precision contribution).
        real_in_fake: (n_real,) bool.
        n_real, n_fake: the two sets' sizes; protocol: as in :class:`FrechetDistance`.

    The membership tensors are on the inputs' (features') device.
    """

    precision: float
    recall: float
    k: int
    n_real: int
    n_fake: int
    protocol: Protocol
    fake_in_real: Tensor = field(repr=False)
    real_in_fake: Tensor = field(repr=False)

    def to_frame(self) -> "pd.DataFrame":
        """pandas DataFrame, one row per generated sample: ``in_real_manifold`` (its precision
        membership), for :func:`~kinetic_fm.per_sample_table`; ``real_in_fake`` is per real item
        and stays on the result."""
        import pandas as pd

        return pd.DataFrame({"in_real_manifold": self.fake_in_real.cpu().numpy()})

    def __str__(self) -> str:
        return (f"precision = {self.precision:.4f}, recall = {self.recall:.4f} (k={self.k}, "
                f"{self.n_real} real, {self.n_fake} fake, network {self.protocol.network})")


def feature_statistics(feats: Any, chunk: int = 8192, *, argument: str = "feats") -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64, streamed by chunks
    of ``chunk`` rows (a positive integer). Errors name the features ``argument``.

    Sums run around a pilot shift (the first chunk's mean), so a large common offset does not
    cancel the covariance.
    """
    chunk = positive_integer("chunk", chunk)
    x = as_features(feats, None, argument=argument)
    n, dim = x.shape
    if n < 2:
        raise ValueError(f"{argument} needs at least 2 rows for a covariance, got {n}")
    shift = _pilot_shift(x, chunk)
    total = torch.zeros(dim, dtype=torch.float64, device=x.device)
    outer = torch.zeros(dim, dim, dtype=torch.float64, device=x.device)
    for c0 in range(0, n, chunk):
        xc = x[c0:c0 + chunk].to(torch.float64, copy=True).sub_(shift)  # one float64 copy, not two
        total += xc.sum(0)
        outer += xc.T @ xc
    mean_shifted = total / n
    cov = (outer - n * torch.outer(mean_shifted, mean_shifted)) / (n - 1)
    cov = 0.5 * (cov + cov.T)
    return (mean_shifted + shift).cpu().numpy(), cov.cpu().numpy()


def _pilot_shift(x: Tensor, chunk: int) -> Tensor:
    """(D,) float64 mean of the first ``chunk`` rows: sums taken around it do not cancel a large
    common offset."""
    return x[:chunk].to(torch.float64).mean(0)


def _few_rows_distance(small: Tensor, other: Tensor) -> float:
    """Fréchet distance of (n, D) features ``small``, n ≤ D, and (m, D) features ``other``.

    With A (n × D) and B (m × D) the two sets' centred rows, the trace term's eigenvalues are
    those of A Σ_o Aᵀ/(n − 1), whose square roots are the singular values of B Aᵀ over
    √((n − 1)(m − 1)): tr (Σ_s^{1/2} Σ_o Σ_s^{1/2})^{1/2} is that nuclear norm. B Aᵀ is reduced
    to an n × n triangle R by a QR over chunks of B's rows, so neither m × n nor D × D is held,
    and singular values are exact to ε·σ_max (no square root of a round-off null eigenvalue).
    """
    n, dim = small.shape
    shift_s = _pilot_shift(small, n)
    a = small.to(torch.float64) - shift_s
    centre = a.mean(0)
    a -= centre
    mean_s = shift_s + centre
    shift = _pilot_shift(other, 8192)
    rows = max(n, block_size(other.device, 8 * dim, other.shape[0]))
    mean_o = shift + sum((other[r:r + rows].to(torch.float64) - shift).sum(0)
                         for r in range(0, other.shape[0], rows)) / other.shape[0]
    triangle = a.new_zeros(0, n)
    scatter_o = 0.0  # a 0-d float64 tensor after the first block: read back once, after the loop
    for r in range(0, other.shape[0], rows):
        b = other[r:r + rows].to(torch.float64) - mean_o
        scatter_o = scatter_o + b.square().sum()
        triangle = torch.linalg.qr(torch.cat([triangle, b @ a.T]), mode="r").R
    m = other.shape[0]
    trace_sqrt = float(torch.linalg.svdvals(triangle).sum()) / math.sqrt((n - 1) * (m - 1))
    diff = mean_s - mean_o
    value = float(diff @ diff) + float(a.square().sum()) / (n - 1) + float(scatter_o) / (m - 1) - 2.0 * trace_sqrt
    return max(value, 0.0)


def _check_psd(name: str, eigenvalues: np.ndarray) -> None:
    """Round-off may leave tiny negative eigenvalues; a clearly negative one is a wrong input."""
    floor = -1e-6 * max(float(np.abs(eigenvalues).max()), np.finfo(np.float64).tiny)
    if eigenvalues.min() < floor:
        raise ValueError(f"{name} is not a covariance: eigenvalue {eigenvalues.min():.3g} < 0 "
                         "(it must be symmetric positive semi-definite)")


def _sqrt_psd(s: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """The PSD square root of the symmetric ``s`` (D, D) and its numerical rank, the number of
    eigenvalues above D · ε · the largest (NumPy's ``matrix_rank`` rule)."""
    w, v = np.linalg.eigh(s)
    _check_psd(name, w)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T, _rank_of_eigenvalues(w)


def _rank_of_eigenvalues(w: np.ndarray, dim: int | None = None) -> int:
    """How many of the ascending eigenvalues ``w`` of a D × D matrix exceed D · ε · the largest
    (``matrix_rank``'s rule). D = ``dim``, default ``w.size``; ``w`` may be the eigenvalues of a smaller
    matrix that shares all the non-zero ones (a Gram matrix of the rows), the rest being 0."""
    dim = w.size if dim is None else dim
    return int((w > dim * np.finfo(np.float64).eps * max(float(w[-1]), 0.0)).sum()) if w.size else 0


def _numerical_rank(s: np.ndarray) -> int:
    """The numerical rank of the symmetric PSD ``s`` (D, D) by :func:`_rank_of_eigenvalues`' rule.

    A Cholesky factorisation of s − 4·D·ε·tr(s)·I (a third of an eigvalsh's cost) succeeds only when
    every eigenvalue lies above that shift less its backward error (about ε·‖s‖), so above D·ε·λ_max
    (λ_max ≤ tr s): full rank, and most covariances of more rows than features stop there; the rest
    pay for the eigenvalues."""
    dim = s.shape[0]
    shift = 4.0 * dim * np.finfo(np.float64).eps * float(np.trace(s))
    try:
        np.linalg.cholesky(s - shift * np.eye(dim))
        return dim
    except np.linalg.LinAlgError:
        return _rank_of_eigenvalues(np.linalg.eigvalsh(s))


def _covariance_factor(x: np.ndarray, mu: np.ndarray) -> np.ndarray | None:
    """Y (k × D), Σ = Yᵀ Y, of the (n, D) rows ``x`` with k ≤ D distinct ones (None when more): one
    row √(w / (n − 1)) (x_j − mu) per distinct row x_j of count w, ``mu`` the rows' mean, Σ their
    unbiased covariance."""
    n, dim = x.shape
    # the route only: more distinct row sums than features (most sets of more rows than features,
    # settled by one short sort) leave more distinct rows than that
    if np.unique(x.sum(1)).size > dim:
        return None
    # rows equal byte for byte are equal; the converse may fail (-0.0), which only leaves k larger
    keys = np.ascontiguousarray(x).view(np.dtype((np.void, x.itemsize * dim))).ravel()
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if first.size > dim:
        return None
    return np.sqrt(counts / (n - 1))[:, None] * (x[first] - mu)


def _factor_rank(y: np.ndarray, dim: int) -> int:
    """The numerical rank of Σ = Yᵀ Y (D × D, D = ``dim``) of the centred k × D rows ``y``, k ≤ D, by
    :func:`_numerical_rank`'s rule on Σ's eigenvalues, read from the k × k Gram matrix Y Yᵀ (the same
    non-zero ones); at most k − 1, centring having taken one."""
    return min(_rank_of_eigenvalues(np.linalg.eigvalsh(y @ y.T), dim), y.shape[0] - 1)


def _stats_array(name: str, value: Any) -> np.ndarray:
    """A mean or covariance given as an array, list or tensor (any dtype, device, gradient) as a
    finite float64 NumPy array; ValueError naming ``name`` for NaN or inf."""
    # a tensor through float64 on the CPU: bfloat16 has no NumPy dtype, a grad or CUDA tensor no .numpy()
    array = np.asarray(to_numpy(value), dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite entries")
    return array


def _check_symmetric(name: str, a: np.ndarray) -> None:
    if np.abs(a - a.T).max(initial=0.0) > 1e-6 * np.abs(a).max(initial=0.0):
        raise ValueError(f"{name} is not symmetric (a covariance must be)")


def _check_semidefinite(name: str, s: np.ndarray) -> None:
    """ValueError naming ``name`` unless the symmetric ``s`` is positive semi-definite up to
    round-off, by :func:`_check_psd`'s rule (no eigenvalue below −1e-6 × the largest in magnitude),
    as the reference's covariance is checked. A Cholesky factorisation of s + 1e-6·max(diag)·I (a
    third of an eigvalsh's cost) accepts at once every matrix whose eigenvalues stay above
    −1e-6·max(diag), a stricter floor; only the rest pay for the eigenvalues (a float32
    covariance of correlated features sits between the two floors)."""
    top = max(float(np.diag(s).max(initial=0.0)), np.finfo(np.float64).tiny)
    try:
        np.linalg.cholesky(s + 1e-6 * top * np.eye(s.shape[0]))
    except np.linalg.LinAlgError:
        _check_psd(name, np.linalg.eigvalsh(s))


def frechet_distance_from_stats(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64).

    Args:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) symmetric positive semi-definite covariances
            (symmetric to 1e-6 of their largest entry; round-off below that is averaged away).
    """
    mu1, mu2 = (np.atleast_1d(_stats_array(name, m)) for name, m in (("mu1", mu1), ("mu2", mu2)))
    for name, mu in (("mu1", mu1), ("mu2", mu2)):
        if sum(side > 1 for side in mu.shape) > 1:  # (1, D) and (D, 1), as torchmetrics keeps them, are vectors
            raise ValueError(f"{name} must be a (D,) vector, got shape {mu.shape}")
    mu1, mu2 = mu1.reshape(-1), mu2.reshape(-1)
    s1, s2 = (np.atleast_2d(_stats_array(name, s)) for name, s in (("sigma1", sigma1), ("sigma2", sigma2)))
    dim = mu1.size
    if mu2.size != dim or s1.shape != (dim, dim) or s2.shape != (dim, dim):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {s2.shape}")
    # cov^½ Σ cov^½ grows as the features' scale to the fourth: in units of about 1 (a power of
    # two, exact) it neither overflows (NaN from features at 1e77) nor underflows (5e-200 for
    # 1.1e-200 at 1e-100); the distance scales by the square
    e = unit_exponent(max(np.abs(mu1).max(initial=0.0), np.abs(mu2).max(initial=0.0),
                          math.sqrt(np.abs(s1).max(initial=0.0)), math.sqrt(np.abs(s2).max(initial=0.0))),
                      TINY, HUGE)
    mu1, mu2, s1, s2 = np.ldexp(mu1, e), np.ldexp(mu2, e), np.ldexp(s1, 2 * e), np.ldexp(s2, 2 * e)
    reference = FrechetReference.from_stats(mu1, s1, name="sigma1")
    return ldexp(reference._distance(mu2, s2, ("mu2", "sigma2")), -2 * e)


@dataclass(frozen=True)
class FrechetReference:
    """N(mean, cov) prepared once for many Fréchet distances to it (bootstrap resamples, checkpoints).

    d² = ‖μ − mean‖² + tr cov + tr Σ − 2 tr (cov^{1/2} Σ cov^{1/2})^{1/2}: the reference's square
    root is taken once, so each :meth:`distance` costs one symmetric eigenvalue problem instead
    of three. ``frechet_distance_from_stats(mu1, sigma1, ...)`` is this with (mu1, sigma1) as
    the reference.

    ``rank`` is the numerical rank of ``cov`` (eigenvalues above D·ε·the largest, from the
    eigendecomposition its root needs; None: taken as full). Each :meth:`distance` also takes Σ's
    numerical rank by the same rule (a Cholesky factorisation settles full rank; only a Σ it
    refuses pays for its eigenvalues). Below D, cov^½ Σ cov^½ has at most the smaller of the two
    ranks of non-zero eigenvalues and only that many of its largest are used: the others are
    round-off about 0 whose square roots read d² low (sets in 8 dimensions of 300, 500 to 3,000
    rows: 1.0e-5 relative low, now under 4e-14; the same set as Σ against itself plus noise of sd
    1e-3 in all 300 as the reference: 1.2e-5 absolute, 4 % of d² = 2.9e-4, now 2e-10), whichever
    set is deficient. Two full-rank covariances are measured as before, bit for bit.
    """

    mean: np.ndarray
    cov: np.ndarray
    root: np.ndarray
    trace: float
    rank: int | None = None

    @classmethod
    def from_stats(cls, mean: Any, cov: Any, *, name: str = "cov") -> "FrechetReference":
        """From a (D,) mean and a (D, D) symmetric PSD covariance, finite (arrays, lists or
        tensors; ``name`` is used in errors)."""
        mean = _stats_array("mean", mean).reshape(-1)
        cov = np.atleast_2d(_stats_array(name, cov))
        if cov.shape != (mean.size, mean.size):
            raise ValueError(f"shapes do not match: mean {mean.shape}, {name} {cov.shape}")
        _check_symmetric(name, cov)
        cov = 0.5 * (cov + cov.T)
        root, rank = _sqrt_psd(cov, name)
        return cls(mean, cov, root, float(np.trace(cov)), rank)

    def distance(self, mu: Any, sigma: Any) -> float:
        """Fréchet distance from N(mu, sigma) to this reference; mu (D,) and sigma (D, D) finite,
        sigma symmetric positive semi-definite (ValueError otherwise; round-off of a computed
        covariance, an eigenvalue down to −1e-6 × its largest eigenvalue in magnitude, is accepted).

        Statistics far from unit scale (features beyond 2**±30, as in
        :func:`frechet_distance_from_stats`) are measured scaled by a power of two (exact), the
        reference's square root taken again at that scale: cov^½ Σ cov^½ grows as the fourth power
        of the features and underflowed (trace term 0 for covariances of 1e-170) or overflowed."""
        names = ("mu", "sigma")
        mu, sigma = _stats_array(names[0], mu), _stats_array(names[1], sigma)
        size = max(np.abs(mu).max(initial=0.0), math.sqrt(np.abs(sigma).max(initial=0.0)))
        return self._at_unit_scale(size, lambda ref, e: ref._distance(np.ldexp(mu, e), np.ldexp(sigma, 2 * e), names))

    def distance_of_rows(self, rows: Any) -> float:
        """Fréchet distance from N(μ, Σ) of the (n, D) feature rows ``rows`` (n ≥ 2; their mean and
        unbiased covariance, ddof = 1) to this reference: :meth:`distance` of those statistics, without
        its checks of Σ (symmetric PSD by construction), the statistic a bootstrap recomputes per resample.

        With k distinct rows, k ≤ D, Σ = Yᵀ Y for the k × D rows Y = √(w / (n − 1)) (x − μ) (w: each
        distinct row's count), so Σ's rank (at most k − 1) comes from the eigenvalues of the k × k Gram
        matrix Y Yᵀ, by the rule of Σ's own (threshold D · ε · the largest), and the trace term from
        those of (Y cov^½)(Y cov^½)ᵀ, which shares the non-zero eigenvalues of cov^½ Σ cov^½: two k × k
        eigenvalue problems instead of D × D ones (a resample with replacement of n rows has about
        0.63 n distinct ones). With more than D distinct rows it is :meth:`distance` of ``np.cov``'s Σ."""
        x = _stats_array("rows", rows)
        if x.ndim != 2 or x.shape[1] != self.mean.size or x.shape[0] < 2:
            raise ValueError(f"rows must be (n, {self.mean.size}) feature rows with n >= 2, got shape {x.shape}")
        return self._at_unit_scale(np.abs(x).max(initial=0.0), lambda ref, e: ref._rows_distance(np.ldexp(x, e)))

    def _at_unit_scale(self, size: float, measure: Callable[[FrechetReference, int], float]) -> float:
        """``measure(reference, e)`` of statistics or rows scaled by 2**e, in squared units scaled back:
        e = 0 unless this reference or ``size`` (the other side's largest feature magnitude) is beyond
        2**±30, and then the reference's square root is taken again at that scale."""
        e = unit_exponent(max(np.abs(self.mean).max(initial=0.0), math.sqrt(np.abs(self.cov).max(initial=0.0)), size),
                          TINY, HUGE)
        if e == 0:
            return measure(self, 0)
        scaled = FrechetReference.from_stats(np.ldexp(self.mean, e), np.ldexp(self.cov, 2 * e))
        return ldexp(measure(scaled, e), -2 * e)

    def _rows_distance(self, x: np.ndarray) -> float:
        """:meth:`distance_of_rows` of the finite (n, D) float64 rows ``x`` at unit scale."""
        mu = x.mean(0)
        y = _covariance_factor(x, mu)
        if y is None:
            return self._distance(mu, np.atleast_2d(np.cov(x, rowvar=False)), ("mu", "sigma"), covariance=True)
        z = y @ self.root
        return self._from_eigenvalues(mu, float(np.square(y).sum()), np.linalg.eigvalsh(z @ z.T),
                                      _factor_rank(y, x.shape[1]))

    def _distance(self, mu: Any, sigma: Any, names: tuple[str, str], *, covariance: bool = False) -> float:
        """:meth:`distance`, naming ``names`` in errors; ``covariance``: sigma comes from
        :func:`feature_statistics` or ``np.cov`` of rows, symmetric PSD by construction, so its checks
        are skipped."""
        mu = _stats_array(names[0], mu).reshape(-1)
        sigma = _stats_array(names[1], sigma)
        if mu.shape != self.mean.shape or sigma.shape != self.cov.shape:
            raise ValueError(f"shapes do not match the reference's {self.mean.shape}: {names[0]} {mu.shape}, "
                             f"{names[1]} {sigma.shape}")
        if not covariance:
            _check_symmetric(names[1], sigma)
            sigma = 0.5 * (sigma + sigma.T)
            _check_semidefinite(names[1], sigma)
        middle = self.root @ sigma @ self.root
        eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
        return self._from_eigenvalues(mu, np.trace(sigma), eig, _numerical_rank(sigma))

    def _from_eigenvalues(self, mu: np.ndarray, trace_sigma: float, eig: np.ndarray, sigma_rank: int) -> float:
        """The distance from N(mu, Σ) given tr Σ, Σ's numerical rank and the ascending eigenvalues ``eig``
        of cov^½ Σ cov^½ (or of a smaller matrix sharing all its non-zero ones)."""
        # cov^½ Σ cov^½ has at most the smaller of the two covariances' ranks: its other eigenvalues
        # are round-off about 0 (up to ε·λ_max), whose square roots summed read d² low (1e-5 relative
        # for sets in 8 dimensions of 300, 4 % when only Σ spans them); only the largest are kept
        rank = min(eig.size if self.rank is None else self.rank, sigma_rank)
        if rank < eig.size:
            eig = eig[eig.size - rank:]
        trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        diff = self.mean - mu
        value = float(diff @ diff + self.trace + trace_sigma - 2.0 * trace_sqrt)
        return max(value, 0.0)


def _protocol(space: FeatureSpace, network: str | None, split: str | None,
              preprocessing: str | None) -> Protocol:
    for name, value in (("network", network), ("split", split), ("preprocessing", preprocessing)):
        if value is not None and not isinstance(value, str):  # they name the protocol in reports
            raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
    return Protocol(network or space.name, split, preprocessing)


def frechet_distance(feats_a: Any, feats_b: Any, *, space: SpaceLike = None,
                     network: str | None = None, split: str | None = None,
                     preprocessing: str | None = None) -> FrechetDistance:
    """Fréchet distance between two sets, mapped through ``space`` first.

    Args:
        feats_a, feats_b: (N_a, ...) and (N_b, ...) samples or features (e.g. generated vs
            reference).
        space: feature space (None = the inputs are already the features).
        network: name recorded in the protocol (defaults to the space's name); it decides the
            metric name (``"FID"`` only for ``"inception-v3-compat"``).
        split, preprocessing: recorded in the protocol.

    Returns:
        :class:`FrechetDistance`.

    Raises:
        ValueError: fewer than 2 rows in a set, feature sizes or layouts that differ.
        TypeError: ``network``, ``split`` or ``preprocessing`` not a string or None.

    Warns (``FrechetBiasWarning``) when a set has no more samples than features: its covariance
    is then singular and the distance is dominated by the estimator's bias (two sets of 20 draws
    from one 64-d Gaussian give about 77, not 0: mean 77.4, sd 3.2 over 300 pairs), so compare
    such values only at equal sizes. Covariances are unbiased (ddof = 1).

    ``feats_a`` is the reference of :class:`FrechetReference`. A set whose features span fewer
    dimensions than D (more rows than features, in a subspace) may be either: the smaller of the
    two covariances' numerical ranks is used (see :class:`FrechetReference` for the accuracy).
    """
    fs = feature_space(space)
    protocol = _protocol(fs, network, split, preprocessing)
    check_same_space(("feats_a", feats_a), ("feats_b", feats_b))
    with feature_map_as_found(fs.fn):  # warned once for both sets
        a = as_features(feats_a, fs, argument="feats_a", check_training=False)
        b = as_features(feats_b, fs, argument="feats_b", check_training=False)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a and feats_b have different feature sizes: {a.shape[1]} vs {b.shape[1]}")
    for name, rows in (("feats_a", a), ("feats_b", b)):
        if rows.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 rows for a covariance, got {rows.shape[0]}")
    if min(a.shape[0], b.shape[0]) <= a.shape[1]:
        import warnings

        warnings.warn(f"Fréchet distance from {a.shape[0]} and {b.shape[0]} samples of {a.shape[1]} features: "
                      "a set with no more samples than features has a singular covariance, and the value is "
                      "dominated by the estimator's bias; use more samples or fewer features, or compare "
                      "only values of equal sizes", FrechetBiasWarning, stacklevel=2)
    # features far from unit scale are measured scaled by a power of two (exact), as from stats
    e = unit_exponent(max(abs_max(a), abs_max(b)), TINY, HUGE)  # as_features gave floating rows
    a, b = times_power_of_two(a, e), times_power_of_two(b, e)
    if min(a.shape[0], b.shape[0]) <= a.shape[1]:
        value = _few_rows_distance(*((a, b) if a.shape[0] <= b.shape[0] else (b, a)))
    else:
        reference = FrechetReference.from_stats(*feature_statistics(a), name="sigma1")
        value = reference._distance(*feature_statistics(b), ("mu2", "sigma2"), covariance=True)
    value = ldexp(value, -2 * e)
    return FrechetDistance(value, protocol.fd_name, a.shape[0], b.shape[0], a.shape[1], protocol)


def _exact_sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """(P,) float64 ‖a_p − b_p‖² of paired (P, D) rows, from the raw values (no expansion)."""
    return (a.to(torch.float64) - b.to(torch.float64)).square_().sum(dim=1)


def _any(mask: Tensor, dim: int) -> Tensor:
    """``mask.any(dim)`` of a boolean mask, as the amax of its uint8 view: the same answer, 20x
    and more faster on the CPU than torch's bool reduction (a 1024 × 8192 block, torch 2.13:
    0.14-0.4 ms against 4-16 ms)."""
    return mask.view(torch.uint8).amax(dim=dim).view(torch.bool)


# the most bytes one buffer of the ball tests takes on the CPU (elsewhere blocks.DEVICE_BLOCK_BYTES):
# the reference chunk centred for the GEMM, the queries' float64 scratch, the float64 distance block
BALL_TEST_BYTES = 16 << 20


def _ball_test_blocks(device: torch.device, dim: int, item: int, chunk: int, batch_chunk: int) -> tuple[int, int]:
    """``(chunk, batch_chunk)`` cut so that each buffer of the ball tests' sweep fits the budget.

    The sweep holds a centred chunk of reference rows (chunk × D in the GEMM's ``item`` bytes), the
    queries' float64 scratch (batch_chunk × D × 8) and the float64 distance block (batch_chunk ×
    chunk × 8): at D = 3,072 with the default 8,192 and 1,024 they came to about 245 MiB whatever
    the sets' sizes. Every pair is decided as the float64 brute force decides it (the pairs near a
    ball's edge exactly), so the memberships do not depend on the blocks."""
    budget = BALL_TEST_BYTES if torch.device(device).type == "cpu" else DEVICE_BLOCK_BYTES
    chunk = max(1, min(chunk, budget // (item * dim)))
    return chunk, max(1, min(batch_chunk, budget // (8 * dim), budget // (8 * chunk)))


def _ball_memberships(fake: Tensor, real: Tensor, real_radius_sq: Tensor, fake_radius_sq: Tensor,
                      chunk: int, batch_chunk: int, progress: bool = False) -> tuple[Tensor, Tensor]:
    """Both directions of ball membership from one sweep over the fake × real distance blocks.

    Args:
        fake: (N_f, D) and real: (N_r, D) rows; real_radius_sq: (N_r,) and fake_radius_sq:
            (N_f,) float64 squared radii (exact) of the balls around each row.

    Returns:
        fake_in_real: (N_f,) bool, is ``fake[i]`` within ``real_radius_sq[j]`` of some
        ``real[j]``; real_in_fake: (N_r,) bool, is ``real[j]`` within ``fake_radius_sq[i]`` of
        some ``fake[i]``. A block's rows reduce to the first, its columns to the second.

    The GEMM blocks decide every pair farther than their rounding bound from its ball's edge;
    the pairs within it (copies of a centre whose ball is tiny, ties on quantised data) are
    decided on exact float64 differences, so the answer equals the float64 brute force.
    """
    dtype = torch.float64 if fake.dtype == real.dtype == torch.float64 else torch.float32
    chunk, batch_chunk = _ball_test_blocks(fake.device, fake.shape[1], torch.finfo(dtype).bits // 8, chunk, batch_chunk)
    u = unit_roundoff(dtype, fake.device)
    centre = column_mean(real)  # sq_distance_blocks centres both sides on the mean of real
    reach = (row_sq_norms(fake, torch.float64, centre=centre).sqrt()
             + row_sq_norms(real, torch.float64, centre=centre).max().sqrt())
    slack = 2.0 * (fake.shape[1] + 3) * u * reach.square()  # twice sq_distance_blocks' bound, per fake row
    # the bounds and memberships stay on the device: the sweep reads nothing back but the pairs
    # to re-check, and it writes True through indices whose misses point at a spare last slot
    n_f, n_r = fake.shape[0], real.shape[0]
    fake_in_real = torch.zeros(n_f + 1, dtype=torch.bool, device=fake.device)
    real_in_fake = torch.zeros(n_r + 1, dtype=torch.bool, device=fake.device)
    from tqdm.auto import tqdm

    blocks = -(-fake.shape[0] // batch_chunk) * -(-real.shape[0] // chunk)
    bar = tqdm(total=blocks, desc="precision and recall: fake in real balls, real in fake balls",
               unit="block", leave=False, disable=not progress)
    # two boolean buffers of the block's shape, reused (fresh block-sized masks were paid in page
    # faults); the masks are combined as uint8, whose bitwise_and_ ran 50x faster than the bool
    # logical_and_ on a CPU block (torch 2.13, one thread: 0.2 ms against 14 ms), and reduced by
    # _any
    shape = (min(batch_chunk, n_f), min(chunk, n_r))
    near_buffer = torch.empty(shape, dtype=torch.bool, device=fake.device)
    unsure_buffer = torch.empty(shape, dtype=torch.bool, device=fake.device)
    e_rows = None
    for q0, c0, d2 in sq_distance_blocks(fake, real, chunk=chunk, batch_chunk=batch_chunk):
        bar.update(1)
        rows, cols = slice(q0, q0 + d2.shape[0]), slice(c0, c0 + d2.shape[1])
        near = near_buffer[:d2.shape[0], :d2.shape[1]]
        unsure = unsure_buffer[:d2.shape[0], :d2.shape[1]]
        # the block's largest slack bounds every pair's rounding, so it serves both directions;
        # thresholds stay vectors (no block-sized float temporaries), and a wider band only sends
        # a few more pairs to the exact check
        if q0 != e_rows:
            e, e_rows = slack[rows].max(), q0  # a 0-d float64 tensor: comparisons as with its float
        r2_real, r2_fake = real_radius_sq[cols], fake_radius_sq[rows, None]
        fake_in_real[rows] |= _any(torch.le(d2, r2_real - e, out=near), dim=1)
        real_in_fake[cols] |= _any(torch.le(d2, r2_fake - e, out=near), dim=0)
        # a row (column) not yet inside has no pair below its edge minus e
        unsure_bytes, near_bytes = unsure.view(torch.uint8), near.view(torch.uint8)
        torch.le(d2, r2_real + e, out=unsure)
        unsure_bytes &= (~fake_in_real[rows, None]).view(torch.uint8)
        torch.le(d2, r2_fake + e, out=near)
        unsure_bytes |= near_bytes.bitwise_and_((~real_in_fake[None, cols]).view(torch.uint8))
        qi, cj = unsure.nonzero(as_tuple=True)  # the one host synchronisation per block
        step = block_size(fake.device, 8 * fake.shape[1], qi.numel())
        for s in range(0, qi.numel(), step):
            q, c = qi[s:s + step] + q0, cj[s:s + step] + c0
            d2_exact = _exact_sq_distances(fake[q], real[c])
            fake_in_real[torch.where(d2_exact <= real_radius_sq[c], q, n_f)] = True
            real_in_fake[torch.where(d2_exact <= fake_radius_sq[q], c, n_r)] = True
    bar.close()
    return fake_in_real[:n_f].clone(), real_in_fake[:n_r].clone()   # without the spare slot's storage


def _kth_neighbour_sq_radius(rows: Tensor, k: int, chunk: int, batch_chunk: int, name: str,
                             progress: bool = False) -> Tensor:
    """(N,) float64 exact squared distance from each row to its k-th nearest other row (``rows``
    finite: as_features checked them, so the search does not scan them again)."""
    kth = nearest_neighbors(rows, rows, k, chunk=chunk, batch_chunk=batch_chunk, progress=progress,
                            exclude_self=True, check_inputs=False, names=(name, name)).indices[:, -1]
    step = block_size(rows.device, 8 * rows.shape[1], rows.shape[0])
    # each block's radii go into one tensor, not a list for torch.cat: each small result kept above
    # its block's float64 temporaries kept glibc from reusing them, and its heap grew block by block
    # (480 MiB over 20,000 x 3,072 rows in 5 of 8 fresh processes; BENCHMARKS.md, metrics memory)
    radius_sq = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
    for r in range(0, rows.shape[0], step):
        radius_sq[r:r + step] = _exact_sq_distances(rows[r:r + step], rows[kth[r:r + step]])
    return radius_sq


def precision_recall(real: Any, fake: Any, k: int = 3, *, space: SpaceLike = None,
                     network: str | None = None, split: str | None = None,
                     preprocessing: str | None = None, chunk: int = 8192,
                     batch_chunk: int = 1024, progress: bool = False) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifolds.

    Args:
        real: (N_r, ...) reference samples or features; fake: (N_f, ...) generated ones.
        k: the ball around each point reaches its k-th nearest neighbour in its own set
            (itself excluded); default 3 as in the paper; an integer in [1, min(N_r, N_f) − 1].
        space, network, split, preprocessing: as in :func:`frechet_distance`.
        chunk, batch_chunk: GEMM block sizes (positive integers); the ball tests cut them so that
            none of their buffers exceeds ``BALL_TEST_BYTES`` (16 MiB) on the CPU, which bounds
            their memory whatever D (about 245 MiB at D = 3,072 with the defaults before).
        progress: tqdm bars (on stderr) over the two k-NN searches and the one sweep of ball
            tests (fake in real balls and real in fake balls from the same blocks).

    Returns:
        :class:`PrecisionRecall` (ValueError for sets of fewer than 2 samples, differing feature
        sizes, or arguments out of range).
    """
    fs = feature_space(space)
    protocol = _protocol(fs, network, split, preprocessing)  # before the features and the search
    check_same_space(("real", real), ("fake", fake))
    with feature_map_as_found(fs.fn):  # warned once for both sets
        r = as_features(real, fs, argument="real", check_training=False)
        f = as_features(fake, fs, argument="fake", check_training=False)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature sizes differ: {r.shape[1]} vs {f.shape[1]}")
    for name, rows in (("real", r), ("fake", f)):
        if rows.shape[0] < 2:
            raise ValueError(f"{name} must hold at least 2 samples (a ball reaches the k-th nearest "
                             f"other one), got {rows.shape[0]}")
    k_max = min(r.shape[0], f.shape[0]) - 1
    k = check_integer("k", k, 1, k_max)
    chunk, batch_chunk = positive_integer("chunk", chunk), positive_integer("batch_chunk", batch_chunk)
    progress = check_flag("progress", progress)
    # tiny rows' products underflow the ball tests' GEMM and huge rows' squared distances overflow
    # it (float32 from 1.8e19): test a copy scaled by a power of two, which moves no ball's edge
    e = (unit_exponent(max(abs_max(r), abs_max(f)), TINY, HUGE)
         if r.is_floating_point() and f.is_floating_point() else 0)
    r, f = times_power_of_two(r, e), times_power_of_two(f, e)
    real_radius_sq = _kth_neighbour_sq_radius(r, k, chunk, batch_chunk, "real", progress)
    fake_radius_sq = _kth_neighbour_sq_radius(f, k, chunk, batch_chunk, "fake", progress)
    fake_in_real, real_in_fake = _ball_memberships(f, r, real_radius_sq, fake_radius_sq, chunk, batch_chunk,
                                                   progress)
    return PrecisionRecall(float(fake_in_real.double().mean()), float(real_in_fake.double().mean()),
                           k, r.shape[0], f.shape[0], protocol,
                           fake_in_real, real_in_fake)


def inception_feature_space(weights_path: str | Path, *, device: torch.device | str | None = None,
                            batch_size: int = 64) -> FeatureSpace:
    """Inception-v3 pool features (2048-D) from a LOCAL weights file (nothing is downloaded).

    Inputs to the returned space: images (B, 3, H, W), float in [0, 1] or uint8 in [0, 255].

    - With ``torch-fidelity`` installed: its TF-ported ``inception-v3-compat`` network (the
      standard FID Inception; weights file ``weights-inception-2015-12-05-6726825d.pth``);
      numbers are named ``"FID"``.
    - Else with ``torchvision``: ``torchvision.models.inception_v3`` with the given state dict,
      inputs resized bilinearly to 299 and ImageNet-normalised; NOT the standard FID network,
      so numbers are named ``"FD-inception-v3-torchvision"``.

    ImportError where neither is installed (naming both), or where the one it would use is
    installed but fails to import (quoting why): a broken torch-fidelity is not passed over for
    torchvision's other network. A torch-fidelity without the extractor module is.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {path} (nothing is downloaded; "
                                "give the path of a local weights file)")
    from ..optional import import_optional, installed, optional_names

    user, extractor = "inception_feature_space", "torch_fidelity.feature_extractor_inceptionv3"
    FeatureExtractorInceptionV3 = None
    if installed("torch_fidelity"):
        import_optional("torch_fidelity", user)  # a broken install is an error that says so, not a fallback
        if installed(extractor):
            (FeatureExtractorInceptionV3,) = optional_names(extractor, user, "FeatureExtractorInceptionV3")
    if FeatureExtractorInceptionV3 is not None:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(path)).eval()
        if device is not None:
            net = net.to(device)

        def fidelity_inception(x: Tensor) -> Tensor:
            return net(_as_uint8(x))[0]

        return FeatureSpace(fidelity_inception, "inception-v3-compat", batch_size, device)
    if not installed("torchvision"):
        raise ImportError(f"{user} needs the torch-fidelity package (the standard FID network: pip install "
                          "torch-fidelity) or the torchvision package (pip install torchvision)")
    torchvision = import_optional("torchvision", user)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model = model.eval()
    if device is not None:
        model = model.to(device)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def torchvision_inception(x: Tensor) -> Tensor:
        x = _as_unit(x)
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return model((x - mean.to(x)) / std.to(x))

    return FeatureSpace(torchvision_inception, "inception-v3-torchvision", batch_size, device)


def _as_uint8(x: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        return x
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


def _as_unit(x: Tensor) -> Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
