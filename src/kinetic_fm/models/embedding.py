"""Sinusoidal time embedding shared by the velocity networks."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_LOW_PRECISION = (torch.float16, torch.bfloat16)  # nets of these dtypes embed their time in float32


def embedding_times(t: Tensor | float, x: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """The (B,) times a velocity net's time embedding reads: ``t`` in x's dtype (or ``dtype``)
    and on x's device, a scalar or 0-d tensor broadcast to the batch.

    Anything ``torch.as_tensor`` reads is taken (numbers, (B,) tensors, lists, arrays), and
    integer step indices (``DiscreteTime``'s) are cast to x's dtype too. That is where it
    differs from :func:`kinetic_fm.fields.adapters.batch_time`, which keeps integer times
    integer, reads only numbers and tensors, and words its shape error differently (each is
    tested); fields sit above models, so the nets could not import it anyway.

    Raises ValueError when ``t`` has another shape than (B,) for x of shape (B, ...).
    """
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype if dtype is None else dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape (B,) = ({x.shape[0]},) or be a scalar, got {tuple(t.shape)}")
    return t


batch_times = embedding_times  # its name until the fourteenth session, kept for code that imports it


class SinusoidalTimeEmbedding(nn.Module):
    """t in [0, 1] -> (B, dim) features [sin(s·t·f_k), cos(s·t·f_k)], f_k = max_period^(-k/(dim/2)).

    ``scale`` (default 1000) stretches [0, 1] so the fastest frequencies resolve small time steps.
    Float64 times (a float64 net's) are embedded in float64 throughout; any other dtype in float32,
    as the weights were trained. A float16 or bfloat16 embedding (``.half()``, in such a net)
    still computes in float32 from float32 frequencies and returns its features in its own dtype,
    as it does for times of those dtypes.
    """

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even integer >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim, self.scale, self.max_period = dim, scale, max_period

    def forward(self, t: Tensor) -> Tensor:
        """(B, dim) features [sin, cos] of (B,) times t in [0, 1]; float64 for float64 times, else
        float32 (or the module's float16/bfloat16 dtype)."""
        if t.dtype == torch.float64:  # t.float() made a float64 net a step function of t (steps ~6e-8)
            half = self.dim // 2
            freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float64, device=t.device)
                              / half)
            angle = (self.scale * t)[:, None] * freqs[None, :]
        else:
            freqs = self.freqs
            if freqs.dtype not in (torch.float32, torch.float64):  # .half() rounded them (0.25 rad off at t = 1)
                half = self.dim // 2
                freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32,
                                                                             device=t.device) / half)
            angle = (self.scale * t.float())[:, None] * freqs[None, :]
        features = torch.cat([angle.sin(), angle.cos()], dim=1)
        # a float16/bfloat16 net's Linear layers refuse float32 features
        low = next((d for d in (self.freqs.dtype, t.dtype) if d in _LOW_PRECISION), None)
        return features if low is None else features.to(low)


def conditioning(time_embed: nn.Module, class_embed: nn.Module | None, null_class: int | None,
                 t: Tensor | float, x: Tensor, y: Tensor | None) -> Tensor:
    """The activated (B, hidden) conditioning vector of a velocity net: time embedding plus,
    for class-conditional nets, the label embedding (the null class when ``y`` is None)."""
    # a float16/bfloat16 net reads its time in float32: 0.77 rounded to float16 put 1000·t 0.3 rad off
    c = time_embed(embedding_times(t, x, dtype=torch.float32 if x.dtype in _LOW_PRECISION else None))
    if class_embed is not None:
        if y is None:
            y = torch.full((x.shape[0],), null_class, dtype=torch.long, device=x.device)
        _check_labels(y, x.shape[0], null_class)
        c = c + class_embed(y.long())  # nn.Embedding takes int64 or int32 only (uint8 labels failed there)
    return torch.nn.functional.silu(c)


def _check_labels(y: Tensor, batch: int, null_class: int) -> None:
    """``y`` must be (B,) integer classes in [0, null_class] (null_class = no class): a (B, 1)
    column broadcast into a (B, B, hidden) conditioning and failed far away, out-of-range and
    float labels in nn.Embedding's own words."""
    if not isinstance(y, Tensor) or y.shape != (batch,) or y.is_floating_point() or y.is_complex() \
            or y.dtype == torch.bool:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        dtype = f" {y.dtype}" if isinstance(y, Tensor) else ""
        raise ValueError(f"y must be a ({batch},) integer tensor of classes in [0, {null_class}] "
                         f"({null_class} = no class), got {shape}{dtype}")
    if y.numel() and (y.device.type == "cpu") and not bool(((y >= 0) & (y <= null_class)).all()):
        raise ValueError(f"y must hold classes in [0, {null_class}] ({null_class} = no class), "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
