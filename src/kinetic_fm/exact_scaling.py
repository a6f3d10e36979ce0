"""Exact rescaling by powers of two, for metrics whose arithmetic leaves a dtype's normal range.

Distances, covariances and kernel exponents of data far from unit scale overflow (features at
1e77 gave NaN Fréchet distances) or underflow (float32 rows at 1e-22 gave wrong neighbours,
certified). Multiplying every entry by 2**e changes no digit, so the metric of the scaled data is
the original's times a known power of two: the metrics measure in units where the data are about
1 and scale back. It sits at the package root, below ``knn`` and ``metrics``, which both use it.
"""
from __future__ import annotations

import math

import torch

TINY, HUGE = 2.0 ** -30, 2.0 ** 30  # the magnitudes beyond which a metric measures rescaled data


def unit_exponent(largest: float, low: float = TINY, high: float = math.inf) -> int:
    """The e with ``largest``·2**e in [1, 2) when ``largest`` (a magnitude ≥ 0) lies outside
    [low, high], else 0 (also for 0, inf and NaN, which no scaling helps)."""
    if not (math.isfinite(largest) and largest > 0) or low <= largest <= high:
        return 0
    return 1 - math.frexp(largest)[1]  # largest = m·2**p with m in [0.5, 1)


def times_power_of_two(t: torch.Tensor, e: int) -> torch.Tensor:
    """``t``·2**e, exact wherever the result is a normal number of ``t``'s dtype, for any e: in
    float64 and in two factors (2**149, which brings float32's smallest subnormal to 1, is inf
    in float32, and 2**1074, float64's, overflows even a Python float)."""
    if e == 0:
        return t
    half = e // 2
    return (t.to(torch.float64) * 2.0 ** half * 2.0 ** (e - half)).to(t.dtype)


def ldexp(value: float, e: int) -> float:
    """``value``·2**e for a Python float, exact; ±inf when it overflows a float (a distance too
    large for float64 is reported as such, not raised)."""
    try:
        return math.ldexp(value, e)
    except OverflowError:
        return math.copysign(math.inf, value)
