"""Input checks and the non-finite velocity error."""
from __future__ import annotations

import torch


class NonFiniteVelocityError(FloatingPointError):
    """The velocity field returned NaN or Inf.

    The fixed-step solvers detect it from ‖v‖², formed in float32 for float32 and half-precision
    samples (float64 for float64 ones), so a finite float32 velocity with ‖v‖ > 1.8e19 is
    reported too; dopri5 forms ‖v‖² in float64.

    Attributes: ``step`` (index of the first bad step), ``time`` (the t at which it was
    evaluated), ``indices`` (sample indices in the batch that went non-finite there).
    """

    def __init__(self, step: int, time: float, indices: list[int]):
        self.step, self.time, self.indices = step, time, indices
        shown = indices[:20] + (["..."] if len(indices) > 20 else [])
        super().__init__(
            f"velocity is non-finite at step {step} (t = {time:.6g}) for sample indices {shown} "
            "(or, in float32, so large that its squared norm overflows: ‖v‖ > 1.8e19); "
            "pass on_nonfinite='flag' to mark these samples and continue"
        )


def check_initial_state(x0: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must have a non-empty batch dimension, got shape {tuple(x0.shape)}")
    if not torch.is_floating_point(x0):
        raise ValueError(f"x0 must be floating point, got dtype {x0.dtype}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or Inf")


CONVENTION_HINT = ("kfm.sample calls velocity(x, t) with x of shape (B, ...) and t of shape (B,), t = 0 at the "
                   "noise; a net written forward(t, x) (torchcfm) needs kfm.ModelTX(net), and the README's "
                   "'Other conventions' lists the adapters for the rest")


def first_velocity(velocity, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The sampler's first call ``velocity(x, t)``, its output checked; an error raised inside the
    velocity (a net given another call convention fails there, often obscurely) gets a note
    that states the convention (Python ≥ 3.11 shows notes under the traceback)."""
    try:
        v = velocity(x, t)
    except (RuntimeError, TypeError, IndexError) as err:
        if hasattr(err, "add_note"):
            err.add_note(CONVENTION_HINT)
        raise
    check_velocity_output(v, x)
    return v


def check_velocity_output(v: object, x: torch.Tensor) -> None:
    """Shape, dtype and device of v(x, t) must match x (checked once, on the first call)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"velocity must return a torch.Tensor, got {type(v).__name__}")
    if v.shape != x.shape:
        raise ValueError(
            f"velocity returned shape {tuple(v.shape)} but x has shape {tuple(x.shape)}; "
            f"v(x, t) must return one velocity per coordinate of x ({CONVENTION_HINT})"
        )
    if v.dtype != x.dtype:
        raise ValueError(f"velocity returned dtype {v.dtype} but x has dtype {x.dtype}")
    if v.device != x.device:
        raise ValueError(f"velocity returned a tensor on {v.device} but x is on {x.device}")
