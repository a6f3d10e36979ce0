"""Exact power-of-two rescaling (kinetic_fm.exact_scaling) against Python's own float arithmetic."""
import math

import pytest
import torch

from kinetic_fm.exact_scaling import ldexp, times_power_of_two, unit_exponent


@pytest.mark.parametrize("largest", [1e-45, 2.0 ** -1074, 1e-22, 3e-10, 5e40, 1e300])
def test_unit_exponent_brings_any_magnitude_outside_the_range_into_1_2(largest):
    e = unit_exponent(largest, 2.0 ** -30, 2.0 ** 30)
    assert 1.0 <= math.ldexp(largest, e) < 2.0


@pytest.mark.parametrize("largest", [0.0, math.inf, math.nan, 1.0, 2.0 ** -30, 2.0 ** 30])
def test_unit_exponent_leaves_zero_non_finite_and_in_range_magnitudes(largest):
    assert unit_exponent(largest, 2.0 ** -30, 2.0 ** 30) == 0


@pytest.mark.parametrize("dtype,smallest", [(torch.float32, 2.0 ** -149), (torch.float64, 2.0 ** -1074),
                                            (torch.bfloat16, 2.0 ** -133), (torch.float16, 2.0 ** -24)])
def test_times_power_of_two_is_exact_from_the_smallest_subnormal(dtype, smallest):
    # 2**149 is inf in float32 and 2**1074 overflows a Python float: a one-factor product gave inf/NaN
    t = torch.tensor([smallest, 3 * smallest, 0.0, -5 * smallest], dtype=dtype)
    e = unit_exponent(float(t.abs().max()))
    up = times_power_of_two(t, e)
    assert up.dtype == dtype and torch.isfinite(up).all()
    assert up.tolist() == [math.ldexp(v, e) for v in t.tolist()]
    assert torch.equal(times_power_of_two(up, -e), t)


def test_ldexp_reports_overflow_as_infinity():
    assert ldexp(1.5, 10) == 1536.0 and ldexp(1.0, 5000) == math.inf and ldexp(-1.0, 5000) == -math.inf
    assert ldexp(1.0, -1074) == 2.0 ** -1074
