"""A small CNN classifier for digits / MNIST: penultimate features, logits and the logit margin."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_flag, check_integer, check_real, check_seed, torch_readable
from ..runs.lock import RunLock


def as_signed_pixels(x: Tensor, dtype: torch.dtype, *, name: str = "images") -> Tensor:
    """Images for a judge trained on [-1, 1], in ``dtype``: floating images keep their values,
    integer ones (uint8 as saved, any integer dtype) must lie in [0, 255] and become x/127.5 − 1.
    ValueError otherwise, naming ``name`` and the range. Fed as they were, uint8 images read as far
    above 1: the CIFAR-10 ResNet-56 called all 500 test images "bird" (accuracy 0.10 for 0.94)."""
    if x.is_floating_point():
        return x.to(dtype)
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must hold real numbers (float in [-1, 1], or integers in [0, 255]), "
                         f"got dtype {x.dtype}")
    if x.numel():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer {name} are read as pixels in [0, 255], got values in [{lo}, {hi}]; "
                             "pass floats in [-1, 1] otherwise")
    return x.to(dtype) / 127.5 - 1.0


class SmallCNN(nn.Module):
    """Two conv stages and an MLP head for (B, C, H, W) images in [-1, 1] (8x8 digits, 28x28 MNIST;
    integer images are read as pixels in [0, 255], see :func:`as_signed_pixels`).

    ``features(x)`` is the (B, feature_dim) penultimate activation, ``logits(x)`` the (B, num_classes)
    scores; ``forward`` = ``logits``.
    """

    kind = "small_cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                 dtype: torch.dtype | None = None):
        """``dtype``: the layers' (None: torch's default dtype). Not part of ``config``: pass it
        again when rebuilding a model to load weights into (``load_state_dict`` copies them into
        the layers' dtype)."""
        super().__init__()
        # Python ints: the config is saved as JSON beside the weights
        in_channels, width, feature_dim = (check_integer(name, value, 1) for name, value in (
            ("in_channels", in_channels), ("width", width), ("feature_dim", feature_dim)))
        num_classes = check_integer("num_classes", num_classes, 2, note="a logit margin needs two classes")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width, feature_dim=feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, dtype=dtype), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, dtype=dtype), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim, dtype=dtype), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes, dtype=dtype)

    def features(self, x: Tensor) -> Tensor:
        """(B, feature_dim) penultimate activations of (B, C, H, W) images (float in [-1, 1], or integer
        pixels in [0, 255]), in the layers' dtype. ValueError for images below 2 x 2 pixels or integer
        pixels outside [0, 255]."""
        _check_image_size(x.shape)
        return self.body(as_signed_pixels(x, self.head.weight.dtype))

    def logits(self, x: Tensor) -> Tensor:
        """(B, num_classes) class scores of (B, C, H, W) images, as :meth:`features` takes them."""
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`logits`: (B, num_classes) scores of (B, C, H, W) images."""
        return self.logits(x)


def _check_image_size(shape: torch.Size) -> None:
    """ValueError for (B, C, H, W) images below 2 x 2 pixels: torch's pooling error spoke of
    "(32x0x0)" outputs."""
    if len(shape) == 4 and min(shape[2:]) < 2:
        raise ValueError(f"SmallCNN needs images of at least 2 x 2 pixels (its 2 x 2 max pooling), got "
                         f"{shape[2]} x {shape[3]}")


def logit_margin(logits: Tensor) -> Tensor:
    """(B,) top-1 minus top-2 logit: how decisively each sample is classified.

    ValueError for logits that are not (B, C) with C >= 2 or not finite, as
    :func:`~kinetic_fm.metrics.semantics.classifier_margin` refuses them (a NaN margin said nothing)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C) with C >= 2 classes, got shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must be finite, got NaN or inf")
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
    out: str | Path | None = None,
    resume: bool = False,
    save_every: int = 100,
    callback: Callable[[int, Tensor], None] | None = None,
    num_classes: int | None = None,
) -> ClassifierFit:
    """Train :class:`SmallCNN` on (N, C, H, W) images in [-1, 1] (or integer pixels in [0, 255],
    read as the judge reads them: x/127.5 − 1) with (N,) integer labels.

    ``augment_noise`` adds Gaussian noise of that std to training batches (so generated samples,
    which are never pixel-perfect, are judged fairly). ``width`` sets the CNN's channels.
    ``test`` = (images, labels) gives ``test_accuracy``; it is checked as the training pair is
    before the first step. NumPy arrays are read as tensors. Deterministic for a seed. The net is
    built on the CPU (the same initial weights everywhere) and trained on ``images``' device; the
    test pair is moved there.
    ``num_classes``: the judge's outputs, the data set's class count (a split may lack its last
    classes); None takes the largest label + 1.

    ``out``: a folder for ``resume.pt``, written every ``save_every`` steps and at the last (the
    velocity nets' format, :func:`~kinetic_fm.models.train.save_resume_state`), under the folder's
    lock; ``resume=True`` continues from it, so an interrupted training ends with the weights of
    an uninterrupted one, bit for bit. Every setting must match the saved run's, ``steps``
    included (the one-cycle learning-rate schedule spans them), and the images and labels must be
    the same values, by their sha256 (recorded as ``train()`` records them; states from before are
    resumed unchecked). ``callback(step, loss)`` runs after
    each step (1-based; an exception there stops training, the last resume state stays).
    With ``out``, in the main thread, Ctrl-C (SIGINT) and SIGTERM wait for the step under way to end
    where their handler is a Python function, as :func:`~kinetic_fm.models.train.train`'s do
    (:class:`~kinetic_fm.models.train.SignalsAtStepEnd`): that step's resume state is written, then the
    handler runs, so no finished step is lost; a second signal runs its handler at once. A
    ``KeyboardInterrupt`` raised in the step loop leaves with ``interrupted_step`` (the step under way)
    and ``resume_step`` (the step of the resume state ``out`` keeps, 0 for none) set on it: equal when
    nothing was lost.
    """
    images, labels = torch.as_tensor(torch_readable(images)), torch.as_tensor(torch_readable(labels))
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}")
    if images.shape[0] == 0:  # torch's words: "random_ expects 'from' to be less than 'to'"
        raise ValueError(f"images must hold at least one image, got shape {tuple(images.shape)}")
    _check_image_size(images.shape)   # before any folder
    # integer pixels are scaled here as SmallCNN scales them when judging: the noise added below
    # made uint8 batches float 0..255, which SmallCNN keeps as they are (test accuracy 0.16 for 0.68)
    from .train import refuse_inference_mode

    refuse_inference_mode("train_classifier()")
    images = images if images.is_floating_point() else as_signed_pixels(images, torch.float32)
    _check_finite("images", images)
    labels = _class_indices("labels", labels)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) < 1):
        raise ValueError(f"labels must be class indices 0, 1, ... with at least two classes (0 and 1 at least), "
                         f"got labels in [{int(labels.min())}, {int(labels.max())}]")
    steps, batch_size, width, save_every = (check_integer(name, value, 1) for name, value in (
        ("steps", steps), ("batch_size", batch_size), ("width", width), ("save_every", save_every)))
    seed, resume = check_seed("seed", seed), check_flag("resume", resume)
    largest = int(labels.max()) if len(labels) else 1
    num_classes = largest + 1 if num_classes is None else check_integer(
        "num_classes", num_classes, largest + 1, note=f"one more than the largest label, {largest}")
    lr = check_real("lr", lr, 0.0, math.inf, "a finite number > 0", open_low=True)
    augment_noise = check_real("augment_noise", augment_noise, 0.0, math.inf, "a finite number >= 0")
    test = None if test is None else _test_pair(test, images.shape[1:], num_classes)
    settings = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, augment_noise=augment_noise,
                    width=width)
    if out is None:
        return _train_classifier(images, labels, num_classes, settings, test, progress, None, False, save_every,
                                 callback)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return _train_classifier(images, labels, num_classes, settings, test, progress, out, resume, save_every,
                                 callback)


def _check_finite(name: str, images: Tensor) -> None:
    """ValueError naming ``name`` when float (N, C, H, W) images hold NaN or inf: one such image
    made every loss NaN and trained NaN weights without a word (train() refuses them too)."""
    if not images.is_floating_point():
        return
    finite = torch.isfinite(images.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite).flatten()
        raise ValueError(f"{name} must be finite; {rows.numel()} row(s) hold NaN or inf, the first row {int(rows[0])}")


def _class_indices(name: str, labels: Tensor) -> Tensor:
    """``labels`` as int64, the only class indices cross_entropy takes; ValueError naming ``name``
    for float, bool or complex ones (float labels failed inside the loss)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    return labels.long()


def _test_pair(test: Any, item_shape: torch.Size, num_classes: int) -> tuple[Tensor, Tensor]:
    """``test`` = (images, labels) checked as the training pair is, before any step: (M, C, H, W)
    images of the training images' C, H, W, M >= 1, finite, and (M,) integer labels in [0, num_classes).
    Unchecked, (M, 1) labels broadcast to an (M, M) comparison (accuracy 0.10 for 0.65, silently)
    and a wrong length failed only after the last step."""
    if not isinstance(test, (tuple, list)) or len(test) != 2:
        raise ValueError(f"test must be None or a pair (images, labels), got {type(test).__name__}"
                         f"{f' of length {len(test)}' if isinstance(test, (tuple, list)) else ''}")
    images, labels = (torch.as_tensor(torch_readable(part)) for part in test)
    if images.ndim != 4 or images.shape[1:] != item_shape:
        raise ValueError(f"test[0] must be (M, {', '.join(map(str, item_shape))}) images, as the training "
                         f"images, got {tuple(images.shape)}")
    if images.shape[0] == 0:  # an accuracy of no image read NaN, after the whole training
        raise ValueError(f"test[0] must hold at least one image, got shape {tuple(images.shape)}")
    images = as_signed_pixels(images, torch.float32, name="test[0]") if not images.is_floating_point() else images
    _check_finite("test[0]", images)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"test[1] must be ({images.shape[0]},) labels, one per image of test[0], "
                         f"got {tuple(labels.shape)}")
    labels = _class_indices("test[1]", labels)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"test[1] must be classes in [0, {num_classes - 1}] (the judge's num_classes = "
                         f"{num_classes}), got labels in [{int(labels.min())}, {int(labels.max())}]")
    return images, labels


@torch.enable_grad()  # whatever the caller's grad mode, as train()
def _train_classifier(images: Tensor, labels: Tensor, num_classes: int, settings: dict[str, Any],
                      test: tuple[Tensor, Tensor] | None, progress: bool, out: Path | None, resume: bool, save_every: int,
                      callback: Callable[[int, Tensor], None] | None) -> ClassifierFit:
    """:func:`train_classifier`'s work, with ``out``'s lock held."""
    from tqdm.auto import tqdm

    from .train import (DATA_DIGEST, RESUME_FILE, RESUME_STACKLEVEL, ResumeStateOnDisk, SignalsAtStepEnd, data_digest,
                        load_resume_state, remove_leftover_temporaries, save_resume_state)

    steps, batch_size, lr, seed = settings["steps"], settings["batch_size"], settings["lr"], settings["seed"]
    width, augment_noise = settings["width"], settings["augment_noise"]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # built on the CPU under the seed (the same weights on every device), trained where the images
        # are; float32 whatever torch's default dtype (float64 drew other weights from the seed)
        model = SmallCNN(images.shape[1], num_classes, width=width, feature_dim=4 * width,
                         dtype=torch.float32).to(images.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    losses = torch.zeros(steps, dtype=torch.float32)
    # the loop draws from g alone (the model is built under its own seed), so the caller's global
    # generators are neither saved nor restored: a resumed run leaves them as a fresh one does
    parts, generators, device = {"model": model, "optimizer": opt, "scheduler": sched}, {"data": g}, images.device
    run_config = {"model": {"kind": model.kind, "config": model.config}, "train": settings,
                  "data_shape": list(images.shape)}
    state_path = None if out is None else out / RESUME_FILE
    if out is not None:
        # the values trained on (uint8 pixels as the floats they become), as train() records them: a resume
        # on other images or labels of the same shape went on without a word
        run_config[DATA_DIGEST] = data_digest(images, labels)
        remove_leftover_temporaries(out)  # resume.pt's, from writers killed mid-save
    if state_path is not None and state_path.is_file() and not resume:
        raise ValueError(f"{out} already holds a classifier training ({RESUME_FILE}); continue it with "
                         "resume=True or choose another folder")
    labels = labels.to(images.device)  # once, not per step
    on_disk = ResumeStateOnDisk(state_path)

    def save_resume(step: int) -> None:
        on_disk.write(step, lambda path: save_resume_state(path, step, parts, losses, generators, device, run_config,
                                                           global_rngs=False))

    model.train()
    # Ctrl-C and SIGTERM wait for the step under way (or the resume's load) to end, as train()'s: with a folder
    # no finished step is lost
    signals = SignalsAtStepEnd(on_disk)
    with signals:
        start = signals.load(lambda path: load_resume_state(
            path, steps, parts, losses, generators, device, run_config, free=(), optional=(DATA_DIGEST,),
            stacklevel=RESUME_STACKLEVEL))
        signals.at_step_end(start, save_resume)  # one held in the load: delivered before any step
        for i in tqdm(range(start, steps), initial=start, total=steps, desc="classifier", disable=not progress):
            step = signals.step = i + 1
            idx = torch.randint(images.shape[0], (batch_size,), device="cpu", generator=g)
            batch = images[idx]
            x = batch + augment_noise * torch.randn(batch.shape, device="cpu", dtype=torch.float32,
                                                    generator=g).to(images.device)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses[i] = loss.detach()
            if state_path is not None and (step % save_every == 0 or step == steps):
                save_resume(step)
            if callback is not None:
                callback(step, loss.detach())
            signals.at_step_end(step, save_resume)
    model.eval()
    accuracy = None
    if test is not None:
        with torch.no_grad():
            predicted = model(test[0].to(images.device)).argmax(1)
            accuracy = float((predicted == test[1].to(images.device)).double().mean())
    return ClassifierFit(model, accuracy)
