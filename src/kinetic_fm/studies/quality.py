"""Are the generalising model's samples data-like? The check that says when verdicts are evidence.

A small net trained for minutes on a CPU can still draw noise (MNIST or CIFAR-10 at ``--quick``
with the MLP), and a judge that has never seen noise scores it confidently: its margins, local
support and quality splits then follow how noisy a sample is, and the studies' verdicts describe
that, not the paper's claims. The check places the samples between two levels, by Fréchet
distance to the held-out images in the judge's feature space, all at equal sizes: real training
images (the floor) and the noise the samples start from (the ceiling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .output import feature_reference, fd_to_reference, image_range
from .samples import Run, start_noise
from .verdicts import fmt_significant

if TYPE_CHECKING:  # pragma: no cover
    from .assets import Assets


@dataclass(frozen=True)
class SampleQuality:
    """Fréchet distances (squared feature units) to ``n`` held-out images in ``network``'s space,
    each from ``n`` rows: ``samples`` (the model's), ``real`` (training images) and ``noise`` (the
    samples' starting noise); ``dim`` features per row (None: not recorded)."""

    samples: float
    real: float
    noise: float
    n: int
    network: str
    dim: int | None = None

    @property
    def position(self) -> float:
        """Where the samples sit from real images (0) to noise (1) on a log scale (may leave [0, 1])."""
        low, high = math.log(max(self.real, 1e-12)), math.log(max(self.noise, 1e-12))
        if not high > low:
            return math.nan
        return (math.log(max(self.samples, 1e-12)) - low) / (high - low)

    @property
    def data_like(self) -> bool:
        """The samples are closer to real images than to noise (``position`` ≤ ½: below the
        geometric mean of the two levels)."""
        return self.position <= 0.5

    def sentence(self) -> str:
        """One line for the report."""
        # the FDs span orders of magnitude: the sides are split at their geometric mean (a reader
        # comparing plain differences read 43.8 between 9.57 and 94.8 as nearer the real images)
        # (one level of brackets: the sentence itself sits in the report's parentheses)
        middle = fmt_significant(math.sqrt(self.real * self.noise))
        where = (f"closer to real images than to noise on a log scale: below {middle}, the geometric mean "
                 "of the two" if self.data_like
                 else f"closer to noise than to real images on a log scale: above {middle}, the geometric "
                 "mean of the two" if not math.isnan(self.position)
                 else "not placed: the judge does not tell noise from real images")
        biased = (f"; {self.n} rows of {self.dim} features, no more rows than features: each value carries a "
                  "large bias of the estimator" if self.dim is not None and self.n <= self.dim else "")
        samples, real, noise = (fmt_significant(v) for v in (self.samples, self.real, self.noise))
        return (f"FD-{self.network} to {self.n} held-out images, from {self.n} rows each: the generalising "
                f"model's samples {samples}, real training images {real}, the noise the "
                f"samples start from {noise} ({where}{biased})")


def sample_quality(assets: Assets, run: Run, n: int = 300, seed: int = 0) -> SampleQuality:
    """:class:`SampleQuality` of a cached run of the generalising model (``studies.samples``), with
    ``n`` rows (fewer where a set is smaller) of its samples, of randomly chosen training images
    (``seed``) and of its starting noise, against the first ``n`` held-out images."""
    n = min(n, len(assets.heldout), len(assets.train), len(run["x"]))
    pick = torch.randperm(len(assets.train), device="cpu", generator=torch.Generator().manual_seed(seed))[:n]
    # rows of sets that other studies judge whole: read from their features when those are held
    features = {"samples": assets.sample_features(run["x"], slice(n)), "real": assets.train_features(pick),
                "noise": assets.features(image_range(start_noise(run)[:n].to(run["x"].dtype), assets))}
    # equal sizes, so the three FDs compare at one n (the estimator's bias still moves with each
    # set's spread; these are context, no verdict reads them)
    reference = feature_reference(assets.heldout_features(slice(n)).double().numpy())
    fd = {name: fd_to_reference(f.double().numpy(), reference) for name, f in features.items()}
    return SampleQuality(fd["samples"], fd["real"], fd["noise"], n, assets.classifier_name, reference.mean.size)
