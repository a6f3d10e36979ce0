"""Adapter for networks trained with integer timesteps (the paper's nets take int(t·999))."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class DiscreteTimeVelocity(nn.Module):
    """Expose a net ``net(x, k)`` with integer steps k in {0, ..., T−1} as a velocity ``v(x, t)``.

    k = int(t·(T−1)) (truncation, as in the paper's code with T = 1000: t ↦ int(t·999)),
    computed in t's dtype and clamped to [0, T−1]. The net must already use this package's convention (t = 0 noise,
    t = 1 data, output = velocity); other conventions need their own adapter.

    Args:
        net: module or callable taking (x (B, ...), k (B,) int64) and returning (B, ...).
        num_timesteps: T >= 2.
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], num_timesteps: int = 1000):
        super().__init__()
        if int(num_timesteps) != num_timesteps or num_timesteps < 2:
            raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps}")
        self.net, self.num_timesteps = net, int(num_timesteps)

    def timesteps(self, t: Tensor) -> Tensor:
        """(B,) int64 steps for times t in [0, 1]."""
        # plain truncation in t's own dtype, exactly like the reference `int(t * 999)`
        return (t * (self.num_timesteps - 1)).long().clamp_(0, self.num_timesteps - 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(x, self.timesteps(t))
