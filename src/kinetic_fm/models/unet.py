"""A small U-Net velocity network (GroupNorm, attention at low resolution, optional classes)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import as_scalar, check_integer, check_real, is_integer, optional_integer
from .embedding import SinusoidalTimeEmbedding, conditioning


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the conditioning added between, with a 1x1 skip on width change."""

    def __init__(self, cin: int, cout: int, cond_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.cond = nn.Linear(cond_dim, cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.cond(c)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, residual."""

    def __init__(self, channels: int, groups: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            heads = 1
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """U-Net v(x, t[, y]) for small images (B, C, H, W), sized for CPU training.

    Args:
        in_channels: image channels C.
        base_channels: width at full resolution.
        channel_mults: width multiplier per resolution level; each level after the first halves
            H and W, so H and W must be divisible by 2^(levels - 1).
        num_res_blocks: residual blocks per level (encoder; the decoder has one more).
        attention_levels: levels (0 = full resolution) with self-attention after each block;
            by default the lowest-resolution level only.
        num_classes: class conditioning with labels 0..num_classes-1 plus a null class
            ``num_classes`` used when ``y`` is None (guide with
            ``kinetic_fm.fields.guidance.ClassifierFreeGuidance(..., null_label=model.null_class)``).
        dropout, groups: dropout rate in the blocks; GroupNorm groups.

    ``forward(x, t, y=None)``: t (B,) in [0, 1] (t = 0 noise, t = 1 data); returns (B, C, H, W).
    """

    kind = "unet"

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, attention_levels: Sequence[int] | None = None,
                 num_classes: int | None = None, dropout: float = 0.0, groups: int = 8):
        super().__init__()
        # Python ints throughout: the config is saved as JSON beside the weights
        mults = tuple(check_integer(f"channel_mults[{i}]", m, 1) for i, m in enumerate(channel_mults))
        if not mults:
            raise ValueError(f"channel_mults must be a non-empty sequence of positive integers, got {channel_mults!r}")
        num_res_blocks = check_integer("num_res_blocks", num_res_blocks, 1)
        in_channels, groups = check_integer("in_channels", in_channels, 1), check_integer("groups", groups, 1)
        base_channels = as_scalar(base_channels)
        if not (is_integer(base_channels) and base_channels >= 2 and base_channels % 2 == 0):
            raise ValueError(f"base_channels must be an even integer >= 2 (it sizes the time embedding), "
                             f"got {base_channels!r}")
        base_channels = int(base_channels)
        levels = len(mults)
        attention = (levels - 1,) if attention_levels is None else tuple(
            check_integer(f"attention_levels[{i}]", a, 0, levels - 1, note="the levels of channel_mults")
            for i, a in enumerate(attention_levels))
        num_classes = optional_integer("num_classes", num_classes, 1)
        dropout = check_real("dropout", dropout, 0.0, 1.0, "a number in [0, 1)")
        self.config = dict(in_channels=in_channels, base_channels=base_channels, channel_mults=list(mults),
                           num_res_blocks=num_res_blocks, attention_levels=list(attention),
                           num_classes=num_classes, dropout=dropout, groups=groups)
        self.levels, self.num_classes = levels, num_classes
        cond_dim = 4 * base_channels
        self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(base_channels), nn.Linear(base_channels, cond_dim),
                                        nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.class_embed = nn.Embedding(num_classes + 1, cond_dim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        widths = [base_channels * m for m in mults]
        self.down_blocks, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skips, cin = [base_channels], base_channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down_blocks.append(ResBlock(cin, width, cond_dim, groups, dropout))
                self.down_attn.append(SelfAttention(width, groups) if level in attention else nn.Identity())
                cin = width
                skips.append(cin)
            if level < levels - 1:
                self.downsample.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
                skips.append(cin)
        self.mid1 = ResBlock(cin, cin, cond_dim, groups, dropout)
        self.mid_attn = SelfAttention(cin, groups)
        self.mid2 = ResBlock(cin, cin, cond_dim, groups, dropout)
        self.up_blocks, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(levels)):
            width = widths[level]
            for _ in range(num_res_blocks + 1):
                self.up_blocks.append(ResBlock(cin + skips.pop(), width, cond_dim, groups, dropout))
                self.up_attn.append(SelfAttention(width, groups) if level in attention else nn.Identity())
                cin = width
            if level > 0:
                self.upsample.append(nn.Conv2d(cin, cin, 3, padding=1))
        self.out_norm = _norm(cin, groups)
        self.out = nn.Conv2d(cin, in_channels, 3, padding=1)
        self.num_res_blocks = num_res_blocks

    @property
    def null_class(self) -> int | None:
        """The label meaning "no class" (``num_classes``; what ``y=None`` uses), None for an unconditional net."""
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """v(x, t) of shape (B, C, H, W) for x (B, C, H, W), t a number or (B,) in [0, 1] (t = 0 noise),
        y None or (B,) integer labels in [0, num_classes] (num_classes = no class). ValueError for x
        not 4-D, H or W not divisible by 2^(levels − 1), another shape of t, or labels out of range."""
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        factor = 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"H and W must be divisible by {factor} for {self.levels} levels, got {tuple(x.shape[-2:])}")
        c = conditioning(self.time_embed, self.class_embed, self.num_classes, t, x, y)

        h = self.stem(x)
        hs = [h]
        blocks = iter(zip(self.down_blocks, self.down_attn))
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                block, attn = next(blocks)
                h = attn(block(h, c))
                hs.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, c)), c)
        blocks = iter(zip(self.up_blocks, self.up_attn))
        for i, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.num_res_blocks + 1):
                block, attn = next(blocks)
                h = attn(block(torch.cat([h, hs.pop()], dim=1), c))
            if level > 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))
