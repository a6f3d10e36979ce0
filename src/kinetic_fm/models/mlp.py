"""An MLP velocity network for 2-D points and small flattened images."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_integer, optional_integer
from .embedding import SinusoidalTimeEmbedding, conditioning


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.cond = nn.Linear(cond_dim, width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        z = self.fc1(self.norm(h)) + self.cond(c)
        return h + self.fc2(torch.nn.functional.silu(z))


class VelocityMLP(nn.Module):
    """v(x, t) for x of shape (B, *shape): flatten, residual MLP with time (and class) conditioning.

    Args:
        shape: one sample's shape, e.g. 2 or (2,) for points, (1, 8, 8) for digits.
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        time_dim: size of the sinusoidal time embedding.
        num_classes: enables class conditioning with labels 0..num_classes-1 and a null class
            ``num_classes`` (used when ``y`` is None; guide with ``kinetic_fm.fields.guidance.ClassifierFreeGuidance``).

    ``forward(x, t, y=None)``: x (B, *shape) float, t (B,) in [0, 1] (t = 0 noise, t = 1 data),
    returns (B, *shape).
    """

    kind = "mlp"

    def __init__(self, shape: int | Sequence[int], hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None):
        super().__init__()
        # Python ints throughout: the config is saved as JSON beside the weights
        try:
            sizes = tuple(shape)
        except TypeError:  # one size: 2, np.int64(2), a 0-d tensor
            sizes = (shape,)
        if not sizes:
            raise ValueError(f"shape must be a positive integer or a non-empty sequence of them, got {shape!r}")
        shape = tuple(check_integer(f"shape[{i}]", size, 1) for i, size in enumerate(sizes))
        hidden, depth = check_integer("hidden", hidden, 1), check_integer("depth", depth, 1)
        time_dim = check_integer("time_dim", time_dim, 2)
        if time_dim % 2:
            raise ValueError(f"time_dim must be an even integer >= 2, got {time_dim}")
        num_classes = optional_integer("num_classes", num_classes, 1)
        self.shape = shape
        self.config = dict(shape=list(shape), hidden=hidden, depth=depth, time_dim=time_dim, num_classes=num_classes)
        dim = math.prod(shape)
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, hidden), nn.SiLU(),
                                        nn.Linear(hidden, hidden))
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    @property
    def null_class(self) -> int | None:
        """The label meaning "no class" (``num_classes``; what ``y=None`` uses), None for an unconditional net."""
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """v(x, t) of shape (B, *shape) for x (B, *shape), t a number or (B,) in [0, 1] (t = 0 noise),
        y None or (B,) integer labels in [0, num_classes] (num_classes = no class). ValueError for
        another shape of x or t, or labels out of range."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        c = conditioning(self.time_embed, self.class_embed, self.num_classes, t, x, y)
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(torch.nn.functional.silu(self.out_norm(h))).reshape(x.shape)
