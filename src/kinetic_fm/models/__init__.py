"""Velocity networks, CFM training, safe checkpoints and feature networks.

- :class:`VelocityMLP`, :class:`UNet`: ``forward(x, t[, y])`` with t (B,) in [0, 1]; plug into
  :func:`kinetic_fm.sample` directly, or guided through
  ``kinetic_fm.fields.guidance.ClassifierFreeGuidance(model, labels, w, null_label=model.null_class)``.
- :func:`load_into`: load your own net from a safe checkpoint; one taking integer steps
  int(t·(T−1)), as the paper's, comes back wrapped in ``kinetic_fm.DiscreteTime`` as ``v(x, t)``.
- :func:`train` / :class:`TrainConfig`: conditional flow matching with EMA and exact resume.
- :func:`load_model`, :func:`load_weights`, :func:`load_state`: checkpoints, never executing code.
- :class:`SmallCNN`, :func:`train_classifier`, :class:`CifarResNet`, :func:`load_cifar_resnet`:
  feature networks for quality and semantics.
"""
from .checkpoint import (UnsafeCheckpointError, load_into, load_model, load_state, load_weights, read_metadata, save_model,
                         save_state, save_weights)
from .classifier import ClassifierFit, SmallCNN, logit_margin, train_classifier
from .embedding import SinusoidalTimeEmbedding
from .mlp import VelocityMLP
from .registry import MODELS, build_model, default_model
from .resnet_cifar import CifarResNet, load_cifar_resnet
from .train import TrainConfig, TrainResult, checkpoint_steps, train
from .unet import UNet

__all__ = [
    "CifarResNet", "ClassifierFit", "MODELS",
    "SinusoidalTimeEmbedding", "SmallCNN", "TrainConfig", "TrainResult", "UNet", "UnsafeCheckpointError",
    "VelocityMLP", "build_model", "checkpoint_steps", "default_model", "load_cifar_resnet", "load_into", "load_model",
    "load_state", "load_weights", "logit_margin", "read_metadata", "save_model", "save_state", "save_weights",
    "train", "train_classifier",
]
