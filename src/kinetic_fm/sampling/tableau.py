"""Butcher tableaux of the explicit Runge–Kutta solvers.

A solver advances x by h·Σ_j b_j k_j with stages k_j = η(t + c_j h)·v(x + h Σ_l a_jl k_l, t + c_j h).
``heun`` keeps the reference code's rule instead: its update is h·(Σ b_j η_j)·(Σ b_j v_j), the mean
gain times the mean velocity (identical to the stage rule when there is no shaping).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Tableau:
    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]  # a[j] holds a_j0 .. a_j(j-1)
    b: tuple[float, ...]
    order: int
    mean_gain_update: bool = False  # heun: update with (Σ b η)(Σ b v), the reference rule
    b_error: tuple[float, ...] | None = None  # b − b̂ of an embedded pair (adaptive solvers)

    @property
    def stages(self) -> int:
        return len(self.c)

    @functools.cached_property
    def stage_plan(self) -> tuple[tuple[tuple[tuple[int, float], ...], tuple[int, ...]], ...]:
        """For each stage j: its inputs, the pairs (l, a_jl) with a_jl ≠ 0, and ``read_after(j)``
        (worked out once per tableau, not at every step)."""
        return tuple((tuple((l, a_jl) for l, a_jl in enumerate(self.a[j]) if a_jl != 0.0), self.read_after(j))
                     for j in range(self.stages))

    def read_after(self, j: int) -> tuple[int, ...]:
        """The earlier stages (< ``j``) whose outputs are read after stage ``j``'s evaluation: by a
        later stage's input, the update or the error estimate. A field that writes into one of
        them (a reused output buffer) changes the step."""
        later = range(j + 1, self.stages)
        error = self.b_error or (0.0,) * self.stages
        return tuple(l for l in range(j) if self.b[l] != 0.0 or error[l] != 0.0
                     or any(self.a[m][l] != 0.0 for m in later))


EULER = Tableau("euler", c=(0.0,), a=((),), b=(1.0,), order=1)
MIDPOINT = Tableau("midpoint", c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
HEUN = Tableau("heun", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2, mean_gain_update=True)
RK4 = Tableau(
    "rk4",
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)
RK4_38 = Tableau(  # Kutta's 3/8 rule (what torchdiffeq calls "rk4")
    "rk4_38",
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
)
# Heun's third-order method: no stage at the step's end. kfm.sample ends rk4 and rk4_38 with it
# on a field that is singular at t = 1 (see fixed_step.step_tableaus); not offered as a solver.
HEUN3 = Tableau(
    "heun3",
    c=(0.0, 1 / 3, 2 / 3),
    a=((), (1 / 3,), (0.0, 2 / 3)),
    b=(1 / 4, 0.0, 3 / 4),
    order=3,
)

# Dormand–Prince 5(4); the 7th stage is evaluated at the new point and reused (FSAL).
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5 = Tableau(
    "dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DP_B[:6],
    ),
    b=_DP_B,
    order=5,
    b_error=tuple(b - bh for b, bh in zip(_DP_B, _DP_B_HAT)),
)

# dopri5's step that ends a run at t = 1 on a field singular there (v ~ 1/(1 − t)): its first five
# stages as they are (c ≤ 8/9, no stage at the step's end) with weights of order 3, the member of
# that one-parameter family that also meets every fourth-order condition but Σ b·A·A·c = 1/24
# (Σ b c³ = 1/4: its energy quadrature is exact for cubics; all weights > 0), and an embedded
# second-order estimate (7/16, 0, 0, 0, 9/16). The estimate measures the lower order, as
# Bogacki–Shampine's 3(2) does: the step is still controlled, conservatively.
_END_B = (47 / 576, 0.0, 230 / 477, 35 / 96, 243 / 3392)
_END_B_HAT = (7 / 16, 0.0, 0.0, 0.0, 9 / 16)
DOPRI5_END = Tableau(
    "dopri5_end",
    c=DOPRI5.c[:5],
    a=DOPRI5.a[:5],
    b=_END_B,
    order=3,
    b_error=tuple(b - bh for b, bh in zip(_END_B, _END_B_HAT)),
)

FIXED_STEP = {t.name: t for t in (EULER, MIDPOINT, HEUN, RK4, RK4_38)}
SOLVERS = (*FIXED_STEP, "dopri5")
