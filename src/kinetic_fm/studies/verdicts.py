"""Plain verdicts from confidence intervals: an interval that excludes zero decides the sign."""
from __future__ import annotations

import math


def verdict_from_interval(low: float, high: float, expected_sign: int) -> str:
    """"reproduced" when the interval lies on the expected side of 0, "not reproduced" when it lies
    on the other side, "inconclusive" when it covers 0 (or is undefined)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if expected_sign > 0:
        return "reproduced" if low > 0 else "not reproduced" if high < 0 else "inconclusive"
    return "reproduced" if high < 0 else "not reproduced" if low > 0 else "inconclusive"


def fmt_ci(low: float, high: float, what: str = "95% CI", digits: int = 3) -> str:
    return f"{what} [{low:+.{digits}g}, {high:+.{digits}g}]"
