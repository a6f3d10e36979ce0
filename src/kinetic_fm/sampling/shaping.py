"""Kinetic Trajectory Shaping (KTS): a training-free gain η(t) on the velocity.

Launch phase t < τ:  η = 1 + α(t), with
    linear       α0 (1 − t/τ)                         (default)
    constant     α0
    exponential  α0 (e^{k(1 − t/τ)} − 1) / (e^k − 1)
Landing phase t ≥ τ, s = (t − τ)/(1 − τ):  η = 1 − β(t), with
    exponential  β0 (e^{k s} − 1)                     (default)
    linear       β0 s
    constant     β0
These are the formulas of the paper's reference code. The realised motion is ẋ = η(t) v(x, t).
"""
from __future__ import annotations

import decimal
import math
import warnings
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from ..checks import (SPLIT_PERCENT_FROM, as_scalar, check_flag, check_unit_number, is_real, optional_attribute,
                      percent_hint, torch_readable, unit_times)

LAUNCH_FORMS = ("linear", "constant", "exponential")
LANDING_FORMS = ("exponential", "linear", "constant")


# a time within this share of τ stands for τ in the solvers (about 16 float32 ulps): a grid written
# in float32 or as i·h, or a stage t0 + c·h, holds τ a few ulps off; no useful grid has two points
# that close
TAU_TOLERANCE = 1e-6

_K_DEFAULT = 3.0
_BETA0_DEFAULT = 0.01
_K_MAX = 700.0  # e^k must stay finite in float64 (e^709.8 overflows)
_ALPHA0_MAX = 1e6  # η = 1 + α0 multiplies the velocity; far beyond any use, and float32-safe
_RANGES = {  # the values each numeric parameter may take, as its errors state them
    "alpha0": f"in [0, {_ALPHA0_MAX:g}]",
    "beta0": ">= 0 (below 1/(e^k − 1) for the exponential landing, 1 for the others)",
    "tau_split": "in (0, 1)",
    "k": f"in (0, {_K_MAX:g}]",
}


class InadmissibleBeta0Error(ValueError):
    """KTS's refusal of a ``beta0`` that makes η ≤ 0 near t = 1: "beta0 = VALUE[ (the default)]
    CONSEQUENCE". ``beta0``: the value; ``is_default``: whether it is KTS's default, which a caller may
    not have typed; ``consequence``: the words after the value (" makes η(t) ≤ 0 ... with k = 5; the
    largest admissible beta0 ..."), for a caller that names the value its own way."""

    def __init__(self, beta0: float, consequence: str):
        self.beta0, self.consequence = beta0, consequence
        # the default is a value the user may not have typed
        super().__init__(f"beta0 = {beta0!r}{' (the default)' if self.is_default else ''}{consequence}")

    @property
    def is_default(self) -> bool:
        return self.beta0 == _BETA0_DEFAULT

    def __reduce__(self):
        return type(self), (self.beta0, self.consequence)


# the start of the warning for a k that no form of the gain reads (a reload of a saved gain filters it)
UNUSED_K = "k applies to the exponential launch or landing only"


@dataclass(frozen=True)
class KTS:
    """The KTS gain η(t) on [0, 1].

    Args:
        alpha0: launch boost α0 in [0, 1e6].
        beta0: landing brake β0 ≥ 0; must keep η > 0 on [0, 1] (see ``max_beta0``): below
            1/(e^k − 1) for the exponential landing, below 1 for the others.
        tau_split: τ in (0, 1), where launch ends and landing begins.
        launch: "linear" | "constant" | "exponential".
        landing: "exponential" | "linear" | "constant".
        k: rate of the exponential forms, in (0, 700]; a finite number that no form reads when
            neither is exponential (checked against (0, 700] only when one is; a k other than 3
            then warns, UserWarning, that it is ignored; not again when a diffusers scheduler
            reloads a saved gain).
        renormalize: opt-in (not in the paper): divide η by ∫₀¹ η dt so the gain only
            redistributes motion in time and the mean gain is exactly 1.

    ``kts(t)`` accepts a number t in [0, 1] (returns a float), a tensor of times in [0, 1]
    (returns a tensor of its dtype; integer times give float64; checking the range of a tensor on
    an accelerator is one host synchronisation, which samplers avoid through :meth:`unchecked`)
    or a NumPy array of times (returns an array of their shape; a 0-d array, like a NumPy
    number, counts as one number and returns a float). The numeric parameters may be Python or
    NumPy numbers or 0-d tensors; α0 ≤ 1e6.

    A tensor's η is formed in float64 and rounded once to the dtype of t: in float16 a gain below
    about 3e-8 (half float16's smallest subnormal) reads 0, which an admissible β0 near its limit
    reaches at t → 1 (with k = 3, β0 within 1e-9 relative of 1/(e^3 − 1) gives η(1) ≈ 1e-9, read
    as 0 in float16); pass float32 or float64 times where the gain near the limit matters.

    Raises ValueError naming the parameter for a value out of its range (or not a finite number), a
    form not listed, a ``renormalize`` that is not True or False, or a ``beta0`` that makes η ≤ 0
    somewhere on [0, 1] (the message gives the largest admissible β0); ``kts(t)`` raises ValueError
    for a time outside [0, 1].
    """

    alpha0: float = 0.01
    beta0: float = _BETA0_DEFAULT
    tau_split: float = 0.6
    launch: str = "linear"
    landing: str = "exponential"
    k: float = _K_DEFAULT
    renormalize: bool = False

    def __post_init__(self) -> None:
        for name, allowed in _RANGES.items():
            value = as_scalar(getattr(self, name))
            if not is_real(value, finite=True):
                raise ValueError(f"{name} must be a finite number {allowed}, got {getattr(self, name)!r}")
            object.__setattr__(self, name, float(value))  # NumPy scalars, 0-d tensors: plain floats
        object.__setattr__(self, "renormalize", check_flag("renormalize", self.renormalize))
        if self.launch not in LAUNCH_FORMS:
            raise ValueError(f"launch must be one of {LAUNCH_FORMS}, got {self.launch!r}")
        if self.landing not in LANDING_FORMS:
            raise ValueError(f"landing must be one of {LANDING_FORMS}, got {self.landing!r}")
        if not 0.0 < self.tau_split < 1.0:
            raise ValueError(f"tau_split must lie in (0, 1), got {self.tau_split!r}"
                             f"{percent_hint(self.tau_split, open_high=True, percent_from=SPLIT_PERCENT_FROM)}")
        if not 0 <= self.alpha0 <= _ALPHA0_MAX:
            raise ValueError(f"alpha0 must lie in [0, {_ALPHA0_MAX:g}], got {self.alpha0!r}")
        uses_k = self.launch == "exponential" or self.landing == "exponential"
        if uses_k and not 0 < self.k <= _K_MAX:
            raise ValueError(f"k must lie in (0, {_K_MAX:g}] for the exponential forms, got {self.k!r}")
        if not uses_k and self.k != _K_DEFAULT:
            # a sweep over k would run one gain under every value without a word (the default
            # cannot be told from a k given equal to it, and gives the same gain anyway)
            warnings.warn(f"{UNUSED_K}, and this gain has neither "
                          f"(launch={self.launch!r}, landing={self.landing!r}); k = {self.k:g} is ignored",
                          stacklevel=3)  # __post_init__ < the dataclass's __init__ < the caller
        if self.beta0 < 0:
            with_k = f" with k = {self.k:g}" if self.landing == "exponential" else ""
            raise ValueError(f"beta0 must be >= 0 and below {_describe_limit(self.landing, self.k)} for the "
                             f"{self.landing} landing{with_k}, got {self.beta0!r}")
        limit = max_beta0(self.landing, self.k)
        # β0 < limit is the exact condition; for the largest floats under it 1 − β0·(e^k − 1) can
        # still round to 0 or below, which each path that computes η must not meet at t = 1
        end = torch.ones(1, dtype=torch.float64, device="cpu")  # not the default device (meta, cuda)
        if self.beta0 >= limit or not (self._gain_float(1.0) > 0 and float(self._gain_tensor(end)) > 0):
            exponential = self.landing == "exponential"
            # β0 < 1/(e^k − 1) ⇔ k < ln(1 + 1/β0): the way out for a user who set k alone
            raise InadmissibleBeta0Error(
                self.beta0,
                f" makes η(t) ≤ 0 near t = 1 for the {self.landing} landing"
                + (f" with k = {self.k:g}" if exponential else "")
                + f"; the largest admissible beta0 is just below {_describe_limit(self.landing, self.k)}"
                + (f", and at this beta0 the rate (k) must stay below ln(1 + 1 / beta0) ≈ "
                   f"{max_k_as_printed(self.beta0)}"
                   if exponential else ""))

    # --- the gain -------------------------------------------------------------------------
    @overload
    def __call__(self, t: float) -> float: ...
    @overload
    def __call__(self, t: torch.Tensor) -> torch.Tensor: ...
    @overload
    def __call__(self, t: np.ndarray) -> np.ndarray: ...

    def __call__(self, t: float | torch.Tensor | np.ndarray) -> float | torch.Tensor | np.ndarray:
        """The gain η(t) > 0 at times t in [0, 1] (t = 0 noise), divided by ∫₀¹ η dt under ``renormalize``.

        A number gives a float; a tensor gives a tensor of its shape and dtype (float64 for integer
        times); a NumPy array gives an array of its shape. ValueError for a time outside [0, 1]
        (NaN included) or a bool or complex tensor.
        """
        if isinstance(t, np.ndarray) and t.ndim > 0:
            return self(torch.from_numpy(torch_readable(t))).numpy()
        if isinstance(t, torch.Tensor):
            return self._gain_of_times(t, check=True)
        eta = self._gain_float(check_unit_number("t", t, "a real number in [0, 1] or a tensor of times"))
        return eta / self._mean_gain if self.renormalize else eta

    def unchecked(self, t: torch.Tensor) -> torch.Tensor:
        """η on a tensor of times the caller knows to lie in [0, 1] (a sampler's own stage
        times), as ``kts(t)`` but without its range check: on an accelerator that check reads a
        flag back to the host, a synchronisation that a sampling loop must not make at every
        stage. dopri5 and the flow_matching wrapper call this; anything else calls ``kts(t)``."""
        return self._gain_of_times(t, check=False)

    def _gain_of_times(self, t: torch.Tensor, check: bool) -> torch.Tensor:
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"t must hold real times in [0, 1], got a {t.dtype} tensor")
        if not t.is_floating_point():
            t = t.to(torch.float64)  # in an integer tensor, full_like would truncate α0 and β0 to 0
        if check:
            # times of any shape, not (B,) rows: the offending values are listed, not checks.check_unit_times' row
            inside = unit_times(t)
            if not bool(inside.all()):  # one host synchronisation on an accelerator
                outside = t[~inside]
                shown = ", ".join(f"{v:g}" for v in outside[:5].tolist()) + (", ..." if outside.numel() > 5 else "")
                raise ValueError(f"t must hold times in [0, 1], got a tensor with {outside.numel()} "
                                 f"value(s) outside it: {shown}")
        return self._gain_tensor(t, renormalized=self.renormalize)

    def alpha(self, t: float) -> float:
        """Launch boost α(t) for t < τ (0 elsewhere); t one number in [0, 1] (for a tensor of times
        use the gain itself: ``kts(t)`` is 1 + α(t) − β(t), divided by its mean under ``renormalize``).
        ValueError for a t outside [0, 1] or NaN, as ``kts(t)``."""
        return self._alpha(check_unit_number("t", t, _ONE_TIME))

    def _alpha(self, t: float) -> float:
        tau, a0, k = self.tau_split, self.alpha0, self.k
        if t >= tau:
            return 0.0
        u = 1.0 - t / tau
        if self.launch == "linear":
            return a0 * u
        if self.launch == "constant":
            return a0
        rise = math.expm1(k * u)  # as the tensor gain: exp(x) − 1 cancels for small x
        # α0·(e^{ku} − 1) overflows for k·u ≳ 709.8 − ln α0 (α0 = 1e6, k = 700 at t = 0): the
        # ratio first then, which keeps the usual order's last bits everywhere else
        grown = a0 * rise
        return grown / math.expm1(k) if math.isfinite(grown) else a0 * (rise / math.expm1(k))

    def beta(self, t: float) -> float:
        """Landing brake β(t) for t ≥ τ (0 elsewhere); t one number in [0, 1], as for ``alpha``."""
        return self._beta(check_unit_number("t", t, _ONE_TIME))

    def _beta(self, t: float) -> float:
        tau, b0, k = self.tau_split, self.beta0, self.k
        if t < tau:
            return 0.0
        s = (t - tau) / (1.0 - tau)
        if self.landing == "exponential":
            return b0 * math.expm1(k * s)
        if self.landing == "linear":
            return b0 * s
        return b0

    def _gain_float(self, t: float) -> float:
        return 1.0 + self._alpha(t) - self._beta(t)

    def _gain_tensor(self, times: torch.Tensor, renormalized: bool = False) -> torch.Tensor:
        # formed in float64 and rounded once: expm1(k) overflows float16 for k > 11, and 1 − β0
        # cancels in float32 when β0 is within 1e-7 of its limit; divided by ∫η before that
        # rounding too (η = 1 + 1e6 is inf in float16, η / ∫η ≈ 3.3 is not)
        t = times.to(torch.float64)
        tau, a0, b0, k = self.tau_split, self.alpha0, self.beta0, self.k
        u = 1.0 - t / tau
        if self.launch == "linear":
            a = a0 * u
        elif self.launch == "constant":
            a = torch.full_like(t, a0)
        else:
            rise = torch.expm1(k * u)
            grown = a0 * rise  # the ratio first where this overflows, as in _alpha
            a = torch.where(torch.isfinite(grown), grown / math.expm1(k), a0 * (rise / math.expm1(k)))
        s = (t - tau) / (1.0 - tau)
        if self.landing == "exponential":
            b = b0 * torch.expm1(k * s)
        elif self.landing == "linear":
            b = b0 * s
        else:
            b = torch.full_like(t, b0)
        eta = torch.where(t < tau, 1.0 + a, 1.0 - b)
        return (eta / self._mean_gain if renormalized else eta).to(times.dtype)

    # --- integrals --------------------------------------------------------------------------
    @property
    def _mean_gain(self) -> float:
        """∫₀¹ η dt of the un-normalised gain, in closed form."""
        tau, a0, b0, k = self.tau_split, self.alpha0, self.beta0, self.k
        if self.launch == "linear":
            launch = a0 * tau / 2.0
        elif self.launch == "constant":
            launch = a0 * tau
        else:
            launch = a0 * tau * _expm1_excess(k) / math.expm1(k)
        if self.landing == "exponential":
            landing = b0 * (1.0 - tau) * _expm1_excess(k)
        elif self.landing == "linear":
            landing = b0 * (1.0 - tau) / 2.0
        else:
            landing = b0 * (1.0 - tau)
        return 1.0 + launch - landing

    def mean_gain(self) -> float:
        """∫₀¹ η dt of the gain as applied (exactly 1 when ``renormalize=True``)."""
        return 1.0 if self.renormalize else self._mean_gain


def _expm1_excess(k: float) -> float:
    """(e^k − 1)/k − 1 = ∫₀¹ (e^{ks} − 1) ds, without the cancellation of its closed form for small
    k (0 at k = 1e-15, for 5e-16): below 1e-4 its series k/2 + k²/6 + k³/24, off by < k⁴/120."""
    return k / 2.0 + k * k / 6.0 + k ** 3 / 24.0 if k < 1e-4 else math.expm1(k) / k - 1.0


# α(t) and β(t) take one time: outside [0, 1] the forms extrapolate (β(1.5) > β0·(e^k − 1))
_ONE_TIME = "a real number in [0, 1]"


def gain_tau(gain: object) -> float | None:
    """τ, where a shaping gain has its kink (a jump for KTS's constant forms), as the solvers read it:
    a ``KTS``'s ``tau_split``, or the ``tau_split`` another callable declares (a function of yours
    around a KTS: ``f.tau_split = kts.tau_split``); None for a gain that declares none, which the
    solvers take to be smooth. The steps then treat τ as for a KTS (fixed-step stages on τ take
    its sides, dopri5's steps land on it) and the early/late split defaults to it. ValueError for a
    declared ``tau_split`` that is not a number in (0, 1)."""
    if gain is None:
        return None
    if isinstance(gain, KTS):
        return gain.tau_split
    declared = optional_attribute(gain, "tau_split")
    if declared is None:
        return None
    tau = as_scalar(declared)
    if not (is_real(tau, finite=True) and 0.0 < tau < 1.0):
        raise ValueError(f"shaping declares tau_split = {declared!r}, where its gain has its kink; it must be a "
                         "number in (0, 1)")
    return float(tau)


def max_beta0(landing: str, k: float = 3.0) -> float:
    """Supremum of admissible β0: η = 1 − β stays > 0 on the landing phase iff β0 < this."""
    if landing == "exponential":
        return 1.0 / math.expm1(k) if k > 0 else math.inf
    return 1.0


def _describe_limit(landing: str, k: float) -> str:
    if landing == "exponential":
        return f"1/(e^k − 1) ≈ {_rounded_down(max_beta0(landing, k))}"
    return "1"


def max_k_as_printed(beta0: float) -> str:
    """Supremum of admissible k for the exponential landing at ``beta0`` > 0, ln(1 + 1/β0) (β0 < 1/(e^k − 1)
    ⇔ k < ln(1 + 1/β0)), as KTS's errors print it: rounded down to 7 significant digits."""
    return _rounded_down(math.log1p(1 / beta0))


def _rounded_down(limit: float) -> str:
    """A positive supremum rounded down to 7 significant digits, so that the printed value is itself
    admissible (0.0524 was not); in Decimal, since 10^(6 − log10 limit) overflows a float for k ≳ 695."""
    exact = decimal.Decimal(limit)
    last_digit = decimal.Decimal(1).scaleb(exact.adjusted() - 6)
    return f"{float(exact.quantize(last_digit, rounding=decimal.ROUND_FLOOR)):.7g}"
