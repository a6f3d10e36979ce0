"""2-D synthetic distributions with exact samplers: Gaussian mixtures, two moons, checkerboard.

All samplers are deterministic functions of ``seed`` and return a :class:`PointDataset` with
float32 points of shape (N, 2) in the units of the distribution (no rescaling).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import check_integer, check_real, check_seed


@dataclass(frozen=True)
class PointDataset:
    """Points with optional labels.

    Attributes:
        points: (N, D) float32.
        labels: (N,) int64 (mixture component, moon, or square index) or None.
        source: a short description of the distribution.
        indices: (N,) int64 positions in the full set after a subset, or None.
        classes: a name for each label value 0, 1, ... of the distribution (not only those a
            subset holds), or None: a class-conditional net needs that many classes.
    """

    points: Tensor
    labels: Tensor | None
    source: str
    indices: Tensor | None = None
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """One point's shape, without the batch dimension: (2,) for the 2-D samplers."""
        return tuple(self.points.shape[1:])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(check_seed("seed", seed))  # int(1.5) was seed 1


def _count(n: int) -> int:
    return check_integer("n", n, 1)  # 1e4 failed inside torch's samplers


def _float64(name: str, value, what: str) -> Tensor:
    """``value`` as a float64 CPU tensor; ValueError "``name`` must be ``what``" for what is no
    numbers (std=None failed in torch's words, "must be real number, not NoneType")."""
    try:
        return torch.as_tensor(value, dtype=torch.float64, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be {what}, got {value!r}") from None


def _stds(name: str, value, k: int) -> Tensor:
    """(k,) float64 standard deviations from one number or k of them; ValueError naming ``name``
    (``std`` for :meth:`GaussianMixture.ring`, ``stds`` for the dataclass) otherwise."""
    what = f"one or {k} finite numbers > 0"
    stds = _float64(name, value, what).reshape(-1)
    if stds.numel() not in (1, k) or not bool(((stds > 0) & torch.isfinite(stds)).all()):
        raise ValueError(f"{name} must be {what}, got {stds.tolist()}")
    return stds.expand(k).clone()


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture sum_k w_k N(mu_k, sigma_k^2 I).

    Attributes:
        means: (K, D) float64 component means.
        weights: (K,) float64 mixture weights, positive, summing to 1.
        stds: (K,) float64 per-component standard deviations (> 0).
    """

    means: Tensor
    weights: Tensor
    stds: Tensor

    def __post_init__(self) -> None:
        means = _float64("means", self.means, "a (K, D) array of finite numbers")  # a CPU data set
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        if not bool(torch.isfinite(means).all()):  # NaN means drew NaN points without a word
            raise ValueError(f"means must be finite, got {means.tolist()}")
        k = means.shape[0]
        weights = _float64("weights", self.weights, f"{k} finite positive numbers").reshape(-1)
        if weights.shape != (k,) or not bool(((weights > 0) & torch.isfinite(weights)).all()):
            raise ValueError(f"weights must be {k} finite positive numbers, got {weights.tolist()}")
        stds = _stds("stds", self.stds, k)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "weights", weights / weights.sum())
        object.__setattr__(self, "stds", stds)

    @classmethod
    def ring(cls, k: int = 8, radius: float = 4.0, std: float = 0.4,
             weights: Tensor | Sequence[float] | None = None) -> "GaussianMixture":
        """k components evenly spaced on a circle of ``radius`` (first one on the +x axis), each with
        standard deviation ``std``; ``weights`` (k,) positive, normalised to sum 1 (None: equal).
        ValueError for k < 1, a non-finite radius, std ≤ 0 or weights of another length."""
        k = check_integer("k", k, 1)
        radius = check_real("radius", radius, -math.inf, math.inf, "a finite number")  # "4": a TypeError
        angle = torch.arange(k, dtype=torch.float64, device="cpu") * (2 * math.pi / k)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        stds = _stds("std", std, k)  # checked here so the error names the argument typed, not the field
        return cls(means, torch.ones(k, device="cpu") if weights is None else weights, stds)  # float64, not via float32

    @property
    def dim(self) -> int:
        """D, the dimension of the space the mixture lives in."""
        return int(self.means.shape[1])

    def sample(self, n: int, seed: int = 0) -> PointDataset:
        """n exact draws, points (n, D) float32; labels are the component indices.

        Raises:
            ValueError: ``n`` is not a positive integer, or ``seed`` not an integer in [0, 2**32 - 1].
        """
        n = _count(n)
        g = _generator(seed)
        component = torch.multinomial(self.weights, n, replacement=True, generator=g)
        eps = torch.randn(n, self.dim, device="cpu", generator=g, dtype=torch.float64)
        x = self.means[component] + self.stds[component, None] * eps
        return PointDataset(x.float(), component, f"gaussian mixture (K={len(self.weights)})",
                            classes=tuple(f"component {k}" for k in range(len(self.weights))))

    def log_prob(self, x: Tensor) -> Tensor:
        """(N,) log density at points x (N, D), computed in float64.

        Raises:
            ValueError: ``x`` is not of shape (N, D), D the mixture's dimension, holds no real
                numbers (complex values, text), or lies on another device than the CPU, where the
                mixture lives.
        """
        x = self._points(x)
        d = self.dim
        sq = self._squared_distances(x)
        log_comp = (-0.5 * sq / self.stds.square() - d * torch.log(self.stds)
                    - 0.5 * d * math.log(2 * math.pi) + torch.log(self.weights))
        return torch.logsumexp(log_comp, dim=1)

    def _points(self, x: Tensor) -> Tensor:
        """``x`` as (N, D) float64 points; ValueError naming ``x`` otherwise. Points of another width
        were broadcast against the means: a (N, 1) or (N, 2, 2) x gave numbers, or a result of another
        shape, without a word; complex ones lost their imaginary part with only torch's warning. A
        tensor on another device met torch's "not on the expected device", naming neither."""
        import numpy as np

        if x.is_complex() if isinstance(x, Tensor) else np.iscomplexobj(x):
            raise ValueError(f"x must hold real numbers, got complex values of shape {tuple(np.shape(x))}")
        if isinstance(x, Tensor) and x.device != self.means.device:
            raise ValueError(f"x is on {x.device}, the mixture on {self.means.device}: pass x.cpu() "
                             "(its parameters are float64 CPU tensors)")
        try:
            points = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):  # text, objects: torch's words named neither
            raise ValueError(f"x must be (N, {self.dim}) real numbers, got a {type(x).__name__}") from None
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), points in the mixture's {self.dim} dimensions, "
                             f"got {tuple(points.shape)}")
        return points

    def _squared_distances(self, x: Tensor) -> Tensor:
        """(N, K) ‖x_i − μ_k‖² from differences, one component at a time: torch.cdist's expansion
        ‖x‖² + ‖μ‖² − 2x·μ cancels within σ of a mean, and above 25 rows it is what cdist uses, so
        log_prob depended on the batch size (2e-3 at σ = 1e-6 for 40 rows, exact for 8)."""
        return torch.stack([(x - mean).square().sum(dim=1) for mean in self.means], dim=1)

    def assign(self, x: Tensor) -> Tensor:
        """(N,) int64 most probable component of each point of x (N, D).

        Raises:
            ValueError: ``x`` is not of shape (N, D), D the mixture's dimension, holds no real
                numbers (complex values, text), or lies on another device than the CPU, where the
                mixture lives.
        """
        x = self._points(x)
        sq = self._squared_distances(x)
        score = -0.5 * sq / self.stds.square() - self.dim * torch.log(self.stds) + torch.log(self.weights)
        return score.argmax(dim=1)


def gaussian_mixture(n: int, seed: int = 0, *, k: int = 8, radius: float = 4.0, std: float = 0.4,
                     weights: Tensor | Sequence[float] | None = None) -> PointDataset:
    """n points (n, 2) float32 from :meth:`GaussianMixture.ring` (k modes on a circle of ``radius``),
    drawn with ``seed``; labels are the component indices.

    Raises:
        ValueError: ``n`` or ``k`` is not a positive integer, ``seed`` not an integer in [0, 2**32 - 1],
            ``radius`` not a finite number, ``std`` not one or k finite numbers > 0, or ``weights`` not
            k finite positive numbers.
    """
    return GaussianMixture.ring(k, radius, std, weights).sample(n, seed)


def two_moons(n: int, seed: int = 0, *, noise: float = 0.05) -> PointDataset:
    """Two interleaved half circles (unit radius) plus isotropic Gaussian ``noise``.

    Moon 0: (cos a, sin a), moon 1: (1 - cos a, 0.5 - sin a), a ~ U[0, pi]; each point picks a
    moon with probability 1/2. Labels are the moon index.

    Raises:
        ValueError: ``n`` is not a positive integer, ``seed`` not an integer in [0, 2**32 - 1], or
            ``noise`` not a finite number >= 0.
    """
    n = _count(n)
    noise = check_real("noise", noise, 0.0, math.inf, "a finite number >= 0")  # "0.1": a TypeError
    g = _generator(seed)
    moon = torch.randint(0, 2, (n,), device="cpu", generator=g)
    a = torch.rand(n, device="cpu", generator=g, dtype=torch.float64) * math.pi
    x = torch.stack([a.cos(), a.sin()], dim=1)
    x = torch.where(moon[:, None] == 1, torch.tensor([1.0, 0.5], dtype=torch.float64, device="cpu") - x, x)
    x = x + noise * torch.randn(n, 2, device="cpu", generator=g, dtype=torch.float64)
    return PointDataset(x.float(), moon, f"two moons (noise={noise})", classes=("moon 0", "moon 1"))


def checkerboard(n: int, seed: int = 0, *, squares: int = 4, side: float = 4.0) -> PointDataset:
    """Uniform on the dark cells of a ``squares`` x ``squares`` board covering [-side, side]^2.

    Dark cells are those with (row + column) even. Labels number the dark cells 0, 1, ... in
    row-major order, and ``classes`` names each "cell (row, col)". (The label used to be the cell
    index row·squares + col, which left half the label values unused and half the classes of a
    class-conditional net untrained.)

    Raises:
        ValueError: ``n`` is not a positive integer, ``seed`` not an integer in [0, 2**32 - 1],
            ``squares`` not an integer >= 2, or ``side`` not a finite number > 0.
    """
    n = _count(n)
    squares = check_integer("squares", squares, 2)   # 4.5 failed in range()'s words
    side = check_real("side", side, 0.0, math.inf, "a finite number > 0", open_low=True)
    g = _generator(seed)
    cells = torch.tensor([r * squares + c for r in range(squares) for c in range(squares) if (r + c) % 2 == 0],
                         device="cpu")
    label = torch.randint(0, len(cells), (n,), device="cpu", generator=g)
    cell = cells[label]
    row, col = cell // squares, cell % squares
    u = torch.rand(n, 2, device="cpu", generator=g, dtype=torch.float64)
    width = 2 * side / squares
    x = torch.stack([col + u[:, 0], row + u[:, 1]], dim=1) * width - side
    return PointDataset(x.float(), label, f"checkerboard ({squares}x{squares})",
                        classes=tuple(f"cell ({int(c) // squares}, {int(c) % squares})" for c in cells))
