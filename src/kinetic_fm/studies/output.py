"""What a study hands back: tables (one row per sample or per setting), claims, report sections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StudyOutput:
    name: str
    tables: dict[str, Any] = field(default_factory=dict)  # name -> pandas DataFrame
    claims: list = field(default_factory=list)  # report.Claim
    sections: list = field(default_factory=list)  # report.Section


def image_range(x: torch.Tensor, assets) -> torch.Tensor:
    """Clamp generated images to the training data's value range before judging them."""
    return x.clamp(float(assets.train.min()), float(assets.train.max()))


def feature_reference(feats):
    """The Fréchet reference (mean, covariance, its square root once) of (n, D) numpy features."""
    import numpy as np

    from ..metrics.fidelity import FrechetReference

    return FrechetReference.from_stats(feats.mean(0), np.cov(feats, rowvar=False))


def fd_to_reference(feats, reference) -> float:
    """Fréchet distance of (n, D) numpy features to a :func:`feature_reference`, the statistic
    every bootstrap resample of a study recomputes (one eigenvalue problem each)."""
    import numpy as np

    return reference.distance(feats.mean(0), np.cov(feats, rowvar=False))
