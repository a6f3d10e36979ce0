"""Velocity fields with known solutions: the ground truth of the tests.

All fields transport N(0, I) at t = 0 to their target at t = 1 along the linear path
x_t = (1 − t)·x0 + t·x1 with independent coupling; they are exact marginal velocities.

For an isotropic Gaussian component N(μ, σ²I) the noisy marginal at time t is N(tμ, s_t² I) with
s_t² = (1 − t)² + t²σ², and the velocity is v(x, t) = μ + (s_t'/s_t)(x − tμ). Its flow map is
x_t = tμ + s_t·x0, so a sample's kinetic path energy has the closed form
    KPE = ½ [‖μ‖² + 2(σ − 1) μ·x0 + (1 + σ² − πσ/2)‖x0‖²],
using ∫₀¹ s_t'² dt = 1 + σ² − πσ/2 (and 1 when σ = 0).
"""
from __future__ import annotations

import math

import torch

from ..checks import (as_scalar, check_unit_number, check_unit_times, inside_unit_interval, is_real, positive_integer,
                      unit_times)


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


class _Placed:
    """A field's float64 CPU parameters, copied once per (device, dtype) that calls ask for.

    Copying them on every call is a blocking host-to-device transfer on a GPU: a host
    synchronisation per stage inside the sampler's otherwise sync-free loop. A copy is redone when
    the parameter is reassigned or changed in place (its version counter moves); copies are not
    pickled or deep-copied (a field saved after a GPU run loads on a CPU-only machine).
    """

    def __init__(self) -> None:
        self._copies: dict = {}

    def __call__(self, name: str, value: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if value.is_inference():  # made under inference mode: no version counter, copied per call
            return value.to(device=device, dtype=dtype)
        key = (name, device, dtype)
        held = self._copies.get(key)
        if held is None or held[0] is not value or held[1] != value._version:
            with torch.inference_mode(False):  # a copy made under inference mode would refuse autograd later
                copy = value.to(device=device, dtype=dtype, copy=True)
            held = self._copies[key] = (value, value._version, copy)
        return held[2]

    def __reduce__(self):
        return (_Placed, ())


def _location(name: str, value) -> torch.Tensor:
    """A mean or point as a finite float64 tensor; ValueError naming ``name`` otherwise."""
    try:
        loc = torch.as_tensor(value, device="cpu")  # the fields keep float64 CPU parameters
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a real number or tensor, got {value!r}") from None
    if loc.dtype == torch.bool or loc.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {loc.dtype}")
    loc = loc.to(torch.float64)
    if not torch.isfinite(loc).all():
        raise ValueError(f"{name} must be finite")
    return loc


def _positive_std(value) -> float:
    std = as_scalar(value)
    if not (is_real(std, finite=True) and std > 0):
        raise ValueError(f"std must be a positive finite number, got {value!r}")
    return float(std)


def _check_sample_shape(name: str, loc: torch.Tensor, x: torch.Tensor) -> None:
    """``loc`` must broadcast to ONE sample's shape: a (B, D) mean would give each row its own.

    Plain Python on the shapes: ``torch.broadcast_shapes`` costs ~22 µs per call, on every field
    call, and imports sympy (~0.6 s) the first time."""
    sample = x.shape[1:]
    if loc.dim() > len(sample) or any(a not in (1, b) for a, b in zip(reversed(loc.shape), reversed(sample))):
        raise ValueError(f"{name} of shape {tuple(loc.shape)} does not broadcast to one sample's shape "
                         f"{tuple(sample)}")


def _time_column(t, x: torch.Tensor, check: bool = True) -> torch.Tensor:
    """``t`` as a (B, 1, ..., 1) column that multiplies x, for the closed-form fields.

    Not :func:`~kinetic_fm.fields.adapters.batch_time`: a number becomes float64 (the mixture
    computes in float64 and must not see it rounded to x's dtype first), and a tensor must
    already be (B,) (a 0-d tensor is refused) and keeps its dtype and device (callers cast it).
    A time outside [0, 1], NaN included, is refused: a number as such, a CPU tensor naming its first
    such row. On an accelerator reading that check would be a host synchronisation per call (the
    samplers' loop makes none): there such a row's time becomes NaN, so its velocity is NaN, which
    the samplers' non-finite check names, rather than an extrapolation that looks like an answer.
    ``check=False`` (:meth:`ClosedForm.unchecked`, the samplers' stages) skips the range of a tensor's
    times, which the caller has checked.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        # an integer x made t an integer too (t → 0) and the velocity an integer, without a word
        got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, ...) floating tensor, got {got}")
    if not isinstance(t, torch.Tensor):  # a number: one time for the whole batch
        t = torch.full((x.shape[0],), _unit_time(t, "a number in [0, 1] or a (B,) tensor"), dtype=torch.float64,
                       device=x.device)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"t must hold real times in [0, 1], got a {t.dtype} tensor")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    if check and t.device.type == "cpu":
        check_unit_times(t)
    elif check:
        t = torch.where(unit_times(t), t, math.nan)   # an integer t becomes float
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def _unit_time(t, what: str = "a number in [0, 1]") -> float:
    """A number ``t`` as a float in [0, 1]; else ValueError saying ``t`` must be ``what``. The
    closed forms hold on the path's time only: NaN came out as NaN velocities, and t = 1.5 as an
    extrapolation that looked like an answer."""
    return check_unit_number("t", t, what)


def _scale(t: torch.Tensor, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """s_t and s_t'/s_t for the path N(0, I) -> N(·, σ²I)."""
    var = (1 - t) ** 2 + (t * std) ** 2
    # t·σ² − (1 − t), not t(1 + σ²) − 1: rounding 1 + σ² first cancelled near t = 1 (float32, σ = 1e-3:
    # a rate of 0.954 at t = 1, where it is exactly 1)
    return var.sqrt(), (t * std**2 - (1 - t)) / var


class ClosedForm:
    """What the analytic fields share: ``field(x, t)`` checks its times, ``field.unchecked(x, t)`` does
    not. Each field computes v from x (B, ...) and t as a (B, 1, ..., 1) column in :meth:`_velocity`."""

    unit_times_only = True   # the closed form holds on [0, 1]: a wrapper refuses t > 1 before the call

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """v(x, t): x (B, ...) float, t (B,) or one number in [0, 1]; (B, ...) in x's dtype."""
        return self._velocity(x, _time_column(t, x))

    def unchecked(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t) for (B,) times the caller knows to lie in [0, 1] (a sampler's own stage times, on a
        grid checked once), as ``field(x, t)`` but without its range check: a reduction and a host
        read at every stage (on an accelerator a synchronisation). ``kfm.sample`` calls this; anything
        else calls ``field(x, t)``."""
        return self._velocity(x, _time_column(t, x, check=False))

    def _velocity(self, x: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianTarget(ClosedForm):
    """Exact velocity from N(0, I) to N(mean, std² I).

    Args:
        mean: scalar or tensor broadcastable to one sample's shape.
        std: σ > 0 (use ``PointTarget`` for σ = 0).
    """

    def __init__(self, mean: float | torch.Tensor = 0.0, std: float = 1.0):
        self.std = _positive_std(std)
        self.mean = _location("mean", mean)
        self._placed = _Placed()

    def _velocity(self, x: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
        tc = tc.to(x.dtype)
        _check_sample_shape("mean", self.mean, x)
        mu = self._placed("mean", self.mean, x.device, x.dtype)
        _, rate = _scale(tc, self.std)
        return mu + rate * (x - tc * mu)

    def trajectory(self, x0: torch.Tensor, t: float) -> torch.Tensor:
        """The exact state x_t, (B, ...) in x0's dtype, of the samples starting at x0 (B, ...);
        t one number in [0, 1] (ValueError otherwise)."""
        t = _unit_time(t)
        _check_sample_shape("mean", self.mean, x0)
        s, _ = _scale(torch.tensor(t, dtype=torch.float64), self.std)
        return t * _as_tensor(self.mean, x0) + s.item() * x0

    def kinetic_energy(self, x0: torch.Tensor) -> torch.Tensor:
        """Closed-form KPE ½∫‖ẋ‖² dt of the samples starting at x0 (B, ...): (B,) float64 on x0's
        device."""
        _check_sample_shape("mean", self.mean, x0)
        return _gaussian_kpe(x0, self.mean, self.std)


class PointTarget(ClosedForm):
    """Exact velocity toward a single training point y: v = (y − x)/(1 − t).

    Every trajectory is the straight line from x0 to y, KPE = ½‖y − x0‖². The field is
    singular at t = 1 and declares ``singular_at_one``: ``kfm.sample`` takes the last step of
    heun/rk4/dopri5 without their end stage, so its solvers never evaluate it there. A caller
    may: there, as in ``EmpiricalFlow``, 1 − t is taken as at least ``eps``
    (v carries x to y in the remaining time eps), which leaves every time below 1 − eps as it
    was and keeps the velocity finite at t = 1 (in float16 and bfloat16 the floor is the dtype's
    machine epsilon, 9.8e-4 and 7.8e-3). ``eps`` must lie in (0, 1).
    """

    singular_at_one = True

    def __init__(self, point: torch.Tensor | float, *, eps: float = 1e-6):
        self.point = _location("point", point)
        self.eps = inside_unit_interval("eps", eps)
        self._placed = _Placed()

    def _velocity(self, x: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
        tc = tc.to(x.dtype)
        _check_sample_shape("point", self.point, x)
        # in half precision x sits an ulp (~1e-3) off the point at best: below that resolution
        # (y − x)/eps only amplifies rounding (dopri5's KPE read 0.26–4.9× the closed form on 4 float16 samples)
        gap = max(self.eps, torch.finfo(x.dtype).eps)
        return (self._placed("point", self.point, x.device, x.dtype) - x) / (1 - tc).clamp_min(gap)

    def trajectory(self, x0: torch.Tensor, t: float) -> torch.Tensor:
        """The exact state x_t, (B, ...) in x0's dtype, of the samples starting at x0 (B, ...);
        t one number in [0, 1] (ValueError otherwise)."""
        t = _unit_time(t)
        _check_sample_shape("point", self.point, x0)
        return (1 - t) * x0 + t * _as_tensor(self.point, x0)

    def kinetic_energy(self, x0: torch.Tensor) -> torch.Tensor:
        """Closed-form KPE ½‖y − x0‖² of the samples starting at x0 (B, ...): (B,) float64 on x0's
        device."""
        _check_sample_shape("point", self.point, x0)
        return _gaussian_kpe(x0, self.point, 0.0)


class GaussianMixtureTarget(ClosedForm):
    """Exact velocity from N(0, I) to Σ_k π_k N(μ_k, σ² I) (small K; dense over components).

    v(x, t) = Σ_k w_k(x, t)·[μ_k + (s'/s)(x − tμ_k)], w = posterior of component k given x_t.
    Its σ → 0 limit is the empirical flow-matching velocity of the atoms μ_k. Every sample's
    velocity has the same bits in any batch (no GEMM), so runs are bitwise batch-invariant.

    Args:
        means: (K, ...) component means, same trailing shape as a sample.
        std: shared σ > 0.
        weights: (K,) mixture weights (normalised here); uniform by default.
    """

    def __init__(self, means: torch.Tensor, std: float = 0.1, weights: torch.Tensor | None = None):
        means = _location("means", means)
        if means.dim() < 2 or means.shape[0] == 0:
            raise ValueError(f"means must have shape (K, ...) with K >= 1, got {tuple(means.shape)}")
        std = _positive_std(std)
        w = torch.ones(means.shape[0], dtype=torch.float64) if weights is None else _location("weights", weights)
        if w.shape != (means.shape[0],) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be (K,) = ({means.shape[0]},) finite, non-negative, with a positive sum")
        self.means, self.std, self.weights = means, float(std), w / w.sum()
        self._placed = _Placed()

    def _velocity(self, x: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
        tc = tc.to(torch.float64)
        b = x.shape[0]
        s, rate = _scale(tc.reshape(b, 1), self.std)  # (B, 1)
        xf = x.reshape(b, math.prod(x.shape[1:])).to(torch.float64)   # (b, -1) cannot infer D at b = 0
        mu = self._placed("means", self.means, x.device, torch.float64).reshape(self.means.shape[0], -1)  # (K, D)
        if mu.shape[1] != xf.shape[1]:
            raise ValueError(f"means hold {mu.shape[1]} values per component but a sample holds {xf.shape[1]}")
        diff = xf.unsqueeze(1) - tc.reshape(b, 1, 1) * mu.unsqueeze(0)  # (B, K, D), K is small
        log_weights = self._placed("weights", self.weights, x.device, torch.float64).log()
        logits = log_weights - 0.5 * diff.pow(2).sum(-1) / s.pow(2)
        post = torch.softmax(logits, dim=1)  # (B, K)
        mean = post[:, :1] * mu[0]
        for k in range(1, mu.shape[0]):  # not post @ mu: a GEMM's blocking, and so its bits, follow B
            mean = mean + post[:, k:k + 1] * mu[k]
        v = mean + rate * (xf - tc.reshape(b, 1) * mean)
        return v.reshape(x.shape).to(x.dtype)

    def sample_target(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact draws from the target: (n, ...) float64 CPU points and their (n,) int64 component
        labels; ``n`` ≥ 1, ``generator`` a CPU ``torch.Generator`` (None: torch's global one)."""
        n = positive_integer("n", as_scalar(n))
        labels = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        eps = torch.randn((n, *self.means.shape[1:]), dtype=torch.float64, device="cpu", generator=generator)
        return self.means.cpu()[labels] + self.std * eps, labels


def _gaussian_kpe(x0: torch.Tensor, mean, std: float) -> torch.Tensor:
    b = x0.shape[0]
    z = x0.reshape(b, -1).to(torch.float64)
    mu = torch.as_tensor(mean, dtype=torch.float64, device=x0.device).expand(x0.shape[1:]).reshape(1, -1)
    speed2 = 1.0 + std**2 - math.pi * std / 2.0 if std > 0 else 1.0
    return 0.5 * ((mu**2).sum(1) + 2 * (std - 1) * (z * mu).sum(1) + speed2 * (z**2).sum(1))
