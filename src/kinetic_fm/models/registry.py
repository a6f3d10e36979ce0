"""Build velocity networks by name, with CPU-sized defaults per data shape."""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import nn

from .classifier import SmallCNN
from .mlp import VelocityMLP
from .unet import UNet

MODELS: dict[str, type[nn.Module]] = {"mlp": VelocityMLP, "unet": UNet}
# judges that carry a kind and config too: save_model wrote them, so load_model must rebuild them
JUDGES: dict[str, type[nn.Module]] = {"small_cnn": SmallCNN}


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate ``MODELS[kind](**config)`` (the inverse of ``model.kind`` / ``model.config``),
    or ``JUDGES[kind](**config)`` for a classifier (:class:`SmallCNN`, ``"small_cnn"``)."""
    known = {**MODELS, **JUDGES}
    if kind not in known:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(known)}")
    return known[kind](**config)


def default_model(kind: str, shape: Sequence[int], *, num_classes: int | None = None, width: int | None = None) -> nn.Module:
    """A CPU-sized velocity net for samples of ``shape``.

    Args:
        kind: "mlp" (any shape), "unet" (images (C, H, W)) or "auto": mlp for points and for
            images of at most 256 values (8x8 digits, where its training step is ~20x shorter on
            a CPU than the U-Net's: ``python benchmarks/train_step.py --nets``, BENCHMARKS.md),
            unet for larger images.
        shape: one sample's shape, e.g. (2,) or (1, 8, 8).
        num_classes: enable class conditioning (classifier-free guidance) with this many classes.
        width: hidden width (mlp, default 256) or base channels
            (unet, default 32).
    """
    shape = tuple(int(s) for s in shape)
    if kind == "auto":
        kind = "unet" if len(shape) == 3 and math.prod(shape) > 256 else "mlp"
    if kind == "mlp":
        return VelocityMLP(shape, hidden=width or 256, depth=3, num_classes=num_classes)
    if kind == "unet":
        if len(shape) != 3:
            raise ValueError(f"unet needs image samples (C, H, W), got shape {shape}")
        levels = 3 if shape[1] % 4 == 0 and shape[2] % 4 == 0 else (2 if shape[1] % 2 == 0 and shape[2] % 2 == 0 else 1)
        return UNet(shape[0], base_channels=width or 32, channel_mults=(1, 2, 2)[:levels], num_classes=num_classes)
    raise ValueError(f"model must be 'mlp', 'unet' or 'auto', got {kind!r}")
