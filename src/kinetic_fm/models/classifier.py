"""A small CNN classifier for digits / MNIST: penultimate features, logits and the logit margin."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Two conv stages and an MLP head for (B, C, H, W) images in [-1, 1] (8x8 digits, 28x28 MNIST).

    ``features(x)`` is the (B, feature_dim) penultimate activation, ``logits(x)`` the (B, num_classes)
    scores; ``forward`` = ``logits``.
    """

    kind = "small_cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width, feature_dim=feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)


def logit_margin(logits: Tensor) -> Tensor:
    """(B,) top-1 minus top-2 logit: how decisively each sample is classified."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@dataclass(frozen=True)
class ClassifierFit:
    """Result of :func:`train_classifier`: the model (eval mode) and its held-out accuracy (or None)."""

    model: SmallCNN
    test_accuracy: float | None


def train_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    test: tuple[Tensor, Tensor] | None = None,
    augment_noise: float = 0.05,
    width: int = 32,
    progress: bool = False,
) -> ClassifierFit:
    """Train :class:`SmallCNN` on (N, C, H, W) images in [-1, 1] with (N,) int64 labels.

    ``augment_noise`` adds Gaussian noise of that std to training batches (so generated samples,
    which are never pixel-perfect, are judged fairly). ``width`` sets the CNN's channels.
    ``test`` = (images, labels) gives ``test_accuracy``. Deterministic for a seed.
    """
    from tqdm.auto import tqdm

    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmallCNN(images.shape[1], int(labels.max()) + 1, width=width, feature_dim=4 * width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        idx = torch.randint(images.shape[0], (batch_size,), generator=g)
        x = images[idx] + augment_noise * torch.randn(images[idx].shape, generator=g)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    accuracy = None
    if test is not None:
        with torch.no_grad():
            accuracy = float((model(test[0]).argmax(1) == test[1]).double().mean())
    return ClassifierFit(model, accuracy)
