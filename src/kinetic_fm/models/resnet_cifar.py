"""CIFAR-10 ResNet-20/56 (He et al. 2016, option-A shortcuts) and a loader for pretrained weights.

Re-implemented from the architecture description in shared/data/README.md; the weight files
(akamaster/pytorch_resnet_cifar10 ``resnet{20,56}-*.th``) load into it after stripping ``module.``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import caller_outside_the_package, split_spec
from .checkpoint import load_weights
from .classifier import as_signed_pixels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# float images reaching beyond [-1 - a, 1 + a] are taken for another range: ImageNet-normalised ones
# (about [-2.12, 2.64], _NORMALISED) or pixels as floats (0..255); generated samples overshoot [-1, 1]
# by a few tenths
_OVERSHOOT = 0.5
# the image size the pretrained weights were trained on; the global pooling takes any other
IMAGE_SIZE = 32
# the span of [0, 1] images normalised with IMAGENET_MEAN and IMAGENET_STD: about [-2.12, 2.64]
_NORMALISED = (min(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)),
               max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)))


def _warn_of_another_range(x: Tensor, said: set[str]) -> None:
    """UserWarning when float (B, 3, H, W) images look like [0, 1], ImageNet-normalised or 0..255 ones
    rather than [-1, 1], once per kind of range (``said`` holds the kinds already warned of, and gets
    this one): the text names each batch's own range, so Python's registry, which repeats a warning of
    another text, let a loop of batches warn at every forward. The pretrained nets read such images
    without error and judged them wrongly (``benchmarks/resnet_input_forms.py``, ResNet-20 on 500
    lossless CIFAR-10 test images: accuracy 0.774 for [0, 1] floats, 0.764 for normalised ones and
    0.128 for 0..255 ones, for 0.91).
    Not one of the 5,000 lossless CIFAR-10 images lies in [0, 1] once read as [-1, 1] (every one has a
    pixel below mid-grey); a constant image is left alone. Outputs are unchanged."""
    if not x.is_floating_point() or not x.numel() or said >= {"unit", "normalised", "far"}:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # one host synchronisation
    outside = lo < -1.0 - _OVERSHOOT or hi > 1.0 + _OVERSHOOT
    if 0.0 <= lo < hi <= 1.0:
        kind, found = "unit", "within [0, 1]; map [0, 1] images with 2 * x - 1"
    elif outside and _NORMALISED[0] - 0.01 <= lo and hi <= _NORMALISED[1] + 0.01:
        # the net normalises inside: such images are normalised twice
        kind, found = "normalised", (
            f"within [{_NORMALISED[0]:.2f}, {_NORMALISED[1]:.2f}], the span of [0, 1] images normalised with the "
            f"ImageNet mean {IMAGENET_MEAN} and std {IMAGENET_STD}, which the net applies itself: undo it with "
            "2 * (x * std + mean) - 1; generated samples that overshoot, clamp to [-1, 1]")
    elif outside:
        kind, found = "far", ("far beyond [-1, 1]; pass pixels in [0, 255] as uint8 or map them with x / 127.5 - 1, "
                              "and clamp generated samples that overshoot to [-1, 1]")
    else:
        return
    if kind in said:
        return
    said.add(kind)
    warnings.warn(f"CifarResNet reads float images in [-1, 1] (the data loaders' range); these span "
                  f"[{round(lo, 2):.3g}, {round(hi, 2):.3g}], {found} (said once per net)", UserWarning,
                  stacklevel=caller_outside_the_package())


def _warn_of_another_size(x: Tensor, said: set[tuple[int, int]]) -> None:
    """UserWarning when (B, 3, H, W) images are not 32x32, once per net for each size (``said`` holds the
    sizes already warned of, and gets this one). The global pooling takes any size, and the pretrained
    nets judged such images badly (``benchmarks/resnet_input_forms.py``): ResNet-20 on 500 lossless
    CIFAR-10 test images upsampled to 64x64 scored 0.27 (nearest) and 0.18 (bilinear), 0.91 at 32x32.
    Outputs are unchanged."""
    size = (x.shape[2], x.shape[3])
    if size == (IMAGE_SIZE, IMAGE_SIZE) or size in said:
        return
    said.add(size)
    warnings.warn(f"CifarResNet's weights are for {IMAGE_SIZE}x{IMAGE_SIZE} images; these are {size[0]}x{size[1]}, "
                  "which its global pooling takes but the pretrained nets judge badly; resize them first, e.g. "
                  f"torch.nn.functional.interpolate(x, size=({IMAGE_SIZE}, {IMAGE_SIZE}), mode='area') "
                  "(said once per net)", UserWarning, stacklevel=caller_outside_the_package())


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU; option-A (parameter-free) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.pad is not None:
            # subsample by 2 and zero-pad the channels equally on both sides
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 RGB images given in [-1, 1] (the data loaders' range), or as integer
    pixels in [0, 255] (:func:`~kinetic_fm.models.classifier.as_signed_pixels`). Float images that
    look like [0, 1], ImageNet-normalised or 0..255 ones are judged as given, with a warning, given once
    per net for each kind (a loop over batches warns once; ``warn_of_range = False`` silences it, for
    callers that check the range of a whole set themselves). Images of another size than 32x32 are
    judged too (the global pooling takes any), with a warning once per net for each size.

    Inputs are mapped to [0, 1] and normalised with the ImageNet mean/std inside, as the
    pretrained weights expect. ``features(x)`` is the (B, 64) global-average-pooled feature,
    ``logits(x)`` the (B, 10) class scores; ``forward`` = ``logits``.
    """

    def __init__(self, depth: int = 56, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.warn_of_range = True
        self._ranges_said: set[str] = set()   # the kinds of range warned of: once each per net
        self._sizes_said: set[tuple[int, int]] = set()   # the image sizes other than 32x32 warned of
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, width, stride if i == 0 else 1))
                cin = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def __setstate__(self, state: dict) -> None:
        # a net pickled whole (torch.save(net)) before the once-per-net warnings has none of their state
        super().__setstate__(state)
        self.__dict__.setdefault("warn_of_range", True)
        self.__dict__.setdefault("_ranges_said", set())
        self.__dict__.setdefault("_sizes_said", set())

    def features(self, x: Tensor) -> Tensor:
        """(B, 64) global-average-pooled features of (B, 3, H, W) images (float in [-1, 1], or integer
        pixels in [0, 255]), in the layers' dtype. ValueError for another shape."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape (B, 3, H, W), got {tuple(x.shape)}")
        signed = as_signed_pixels(x, self.conv1.weight.dtype)  # e.g. float64 samples; refused ones warn of nothing
        _warn_of_another_size(x, self._sizes_said)
        if self.warn_of_range:
            _warn_of_another_range(x, self._ranges_said)
        x = ((signed + 1) / 2 - self.mean) / self.std
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return h.mean(dim=(2, 3))

    def logits(self, x: Tensor) -> Tensor:
        """(B, num_classes) class scores of (B, 3, H, W) images, as :meth:`features` takes them."""
        return self.linear(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`logits`: (B, num_classes) scores of (B, 3, H, W) images."""
        return self.logits(x)


def load_cifar_resnet(path: str | os.PathLike, depth: int | None = None) -> CifarResNet:
    """Pretrained CIFAR-10 ResNet from a ``.th`` file (``{'state_dict': ...}``, ``module.`` keys).

    ``depth`` defaults to what the weights imply (the blocks of their first stage); given, it
    must agree. Loaded with ``weights_only=True``; returned in eval mode. ValueError naming the
    file for one that holds no CIFAR ResNet's weights.
    """
    file = Path(path)
    state = load_weights(file)
    blocks = {k.split(".")[1] for k in state if k.startswith("layer1.")}
    if not blocks or "conv1.weight" not in state:  # read as depth 2: "depth must be 6n + 2, got 2"
        raise ValueError(f"{file}: not a CIFAR-10 ResNet's weights (no conv1 and layer1 tensors)")
    implied = 6 * len(blocks) + 2
    if depth is None:
        depth = implied
    elif depth != implied:
        raise ValueError(f"{path}: holds a ResNet-{implied}, but depth={depth} was asked")
    model = CifarResNet(depth)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{file}: does not fit a CIFAR-10 ResNet-{depth} ({' '.join(str(err).split())})") from err
    return model.eval()


RESNET_SPECS = ("resnet20", "resnet56")


def parse_cifar_resnet_spec(spec: str, *, name: str = "classifier") -> tuple[str, Path]:
    """``(kind, path)`` of a ``"resnet20:PATH"`` or ``"resnet56:PATH"`` spec, as the CLIs take it;
    ``name`` is the argument it came from, for the error messages. The file must exist (a folder is
    refused as such, naming the ``resnet56-*.th`` file it holds, if one); spaces around the path are
    dropped (:func:`~kinetic_fm.checks.split_spec`) and a leading ``~`` is expanded (the shell does not
    after ``resnet56:``), as in the data specs."""
    kind, path = split_spec(spec)
    if kind not in RESNET_SPECS or not path:
        raise ValueError(f"{name} must be 'resnet20:PATH' or 'resnet56:PATH', got {spec!r}")
    path = Path(path).expanduser()
    if path.is_dir():  # "no such file" for a folder that exists, maybe holding the file
        found = sorted(path.glob(f"{kind}-*.th"))
        hint = f": {kind}:{found[0]}" if len(found) == 1 else (
            f"; this folder holds {', '.join(p.name for p in found)}" if found else " (none in this folder)")
        raise ValueError(f"{name}: {path} is a folder; name the weights file in it, a {kind}-*.th file "
                         f"(akamaster/pytorch_resnet_cifar10's, or any {kind} state dict, .th or .safetensors){hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    return kind, path


def load_cifar_resnet_spec(spec: str, *, name: str = "classifier") -> tuple[CifarResNet, str]:
    """``(net, kind)`` from a spec (see :func:`parse_cifar_resnet_spec`). The depth in the spec
    must match the weights (see :func:`load_cifar_resnet`); the net is returned in eval mode."""
    kind, path = parse_cifar_resnet_spec(spec, name=name)
    depth = int(kind.removeprefix("resnet"))
    net = load_cifar_resnet(path)   # of the depth its weights imply
    if net.depth != depth:
        raise ValueError(f"{name} {spec}: the file holds a ResNet-{net.depth}'s weights; "
                         f"write resnet{net.depth}:{path}")
    return net, kind
