"""Coverage of the report's one-set FD whiskers on a real judge's features, whose true FD is known
exactly: a sibling of ``fd_interval_coverage.py`` (Gaussian sets) for heavy-tailed ReLU features.

The judge is the quick preset's own: ``digits-cnn`` (SmallCNN, 128 ReLU features), trained here
as ``kfm reproduce --quick`` trains it (the digits split of ``ReproduceConfig.preset("quick")``,
its seed and steps; ``train_classifier``). Its features are read on MNIST's 70,000 images redrawn
in the scikit-learn digits' format (UCI optdigits: each digit's bounding box scaled, aspect kept,
into a 32 × 32 bitmap, thresholded, and each 4 × 4 block's count of set pixels, 0..16; the judge
reads 60–75 % of them right against 98 % of the digits'), split in two halves of 35,000:
  Y: the reference population, half A's clean images;
  X: half B, clean ("clean"), with Gaussian pixel noise of std σ in [-1, 1] units, clamped
     ("noise σ"), half B's digits 0–4 only ("digits 0-4", a class-skewed set), or half B with a
     share of its images (``--far-share``) replaced by uniform noise images (a few far rows).
Each repeat draws the report's sizes from the preset (a Goldilocks quintile: semantics.n_samples / 5
rows of X against n_heldout rows of Y; a KTS setting: shaping.n_samples rows against the training
split's rows), rows drawn with replacement, so every draw is i.i.d. from the two finite populations
and the truth is exact: the FD of the two populations' own means and covariances (divisor N). As
an estimate of the FD between the infinite laws the images come from, that truth has an error of
about the jackknife standard error printed beside it (the population halves' own sampling error).

The whisker is ``studies.output.jackknife_fd_intervals`` itself (the library's code, groups of
rows k, k + g, ...: ``jackknife_replicates``, whose FDs every line below reads, and ``replicate_intervals``).
Printed per case and size: coverage (± binomial SE), how often the truth lies below / above the
interval, the median width over the truth and over the plug-in FD, mean plug-in and bias-corrected
FDs, the repeats' SD of the corrected FD against the median jackknife SE (the width is honest when
these agree), and the largest delete-a-group term's median share of the jackknife variance (against
its value for g normal terms of equal weight; near 1 when a few far rows make the width).
``--methods`` adds ``fd_interval_coverage.intervals``' bootstrap methods on the same draws (slow:
hundreds of FDs a repeat).

    OMP_NUM_THREADS=1 python benchmarks/fd_interval_coverage_real.py [--repeats 200] \\
        [--sizes quintile setting] [--noise 0.3 0.6] [--far-share 0.05] [--seed 0] [--methods]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fd_interval_coverage import GROUPS, METHODS, intervals

from kinetic_fm.data.digits import load_digits
from kinetic_fm.data.mnist import load_mnist
from kinetic_fm.metrics.fidelity import FrechetReference
from kinetic_fm.models.classifier import train_classifier
from kinetic_fm.studies.assets import split_rows
from kinetic_fm.studies.config import ReproduceConfig
from kinetic_fm.studies.output import JACKKNIFE_GROUPS, jackknife_replicates, replicate_fds, replicate_intervals

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
THRESHOLD = 60  # of 255: a set bitmap pixel (thicker strokes than 127; the judge reads 73 % of them, 68 % at 127)


def optdigits_format(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1, 8, 8) float32 in [-1, 1] (count / 8 − 1) from (N, 1, H, W) pixels in [0, 255]: the UCI
    optdigits recipe (bounding box into 32 × 32 keeping the aspect, threshold, 4 × 4 block counts)."""
    out = torch.empty(len(pixels), 1, 8, 8)
    for i, image in enumerate(pixels[:, 0]):
        on = image > THRESHOLD
        rows, cols = torch.nonzero(on.any(1)).flatten(), torch.nonzero(on.any(0)).flatten()
        crop = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1][None, None]
        scale = 32 / max(crop.shape[-2:])
        h, w = (max(1, round(side * scale)) for side in crop.shape[-2:])
        bitmap = torch.zeros(1, 1, 32, 32)
        top, left = (32 - h) // 2, (32 - w) // 2
        bitmap[..., top:top + h, left:left + w] = F.interpolate(crop, size=(h, w), mode="bilinear")
        out[i] = F.avg_pool2d((bitmap > THRESHOLD).float(), 4)[0] * 16
    return out / 8 - 1


def quick_judge(cfg: ReproduceConfig):
    """The quick preset's digits-cnn, trained as ``load_assets`` trains it; its held-out accuracy."""
    digits = load_digits()
    held, rest = split_rows(cfg.assets, len(digits.images))
    fit = train_classifier(digits.images[rest], digits.labels[rest], steps=cfg.assets.classifier_steps,
                           seed=cfg.assets.seed, test=(digits.images[held], digits.labels[held]))
    return fit.model.eval(), fit.test_accuracy, len(rest)


def features(net, images: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([net.features(images[i:i + 4096]) for i in range(0, len(images), 4096)]).double().numpy()


def population_fd(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The exact FD of the populations' moments (divisor N) and the delete-a-group jackknife SE of
    the FD between the laws they were drawn from (groups of rows k, k + g, ...)."""
    def moments_fd(a, b):
        ref = FrechetReference.from_stats(b.mean(0), np.cov(b, rowvar=False, bias=True))
        return ref.distance(a.mean(0), np.cov(a, rowvar=False, bias=True))

    truth = moments_fd(x, y)
    leave = np.array([moments_fd(np.delete(x, slice(k, None, GROUPS), 0), np.delete(y, slice(k, None, GROUPS), 0))
                      for k in range(GROUPS)])
    return truth, math.sqrt((GROUPS - 1) / GROUPS * ((leave - leave.mean()) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--sizes", nargs="+", default=["quintile", "setting"], choices=["quintile", "setting"])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.3, 0.6], help="pixel noise stds of X")
    parser.add_argument("--far-share", type=float, default=0.05,
                        help="share of X's images replaced by uniform noise images (a case of few far rows; 0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", action="store_true", help="also fd_interval_coverage's bootstrap methods")
    args = parser.parse_args()
    start = time.perf_counter()
    cfg = ReproduceConfig.preset("quick")
    net, accuracy, n_train = quick_judge(cfg)
    sizes = {"quintile": (cfg.semantics.n_samples // 5, cfg.assets.n_heldout, 200),
             "setting": (cfg.shaping.n_samples, n_train, cfg.shaping.bootstrap)}  # n, m, resamples

    loaded = [load_mnist(MNIST, split) for split in ("train", "test")]
    images = optdigits_format(torch.cat([((d.images + 1) * 127.5).round() for d in loaded]))
    labels = torch.cat([d.labels for d in loaded])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2:]
    with torch.inference_mode():
        read = float((net.logits(images).argmax(1) == labels).float().mean())
    print(f"judge digits-cnn: held-out digits accuracy {accuracy:.1%}, MNIST in the digits' format {read:.1%}; "
          f"{time.perf_counter() - start:.0f} s")

    noise = torch.Generator().manual_seed(args.seed + 1)
    y_pop = features(net, images[half_a])
    cases = {"clean": features(net, images[half_b])}
    for sigma in args.noise:
        noisy = (images[half_b] + sigma * torch.randn(images[half_b].shape, generator=noise)).clamp(-1, 1)
        cases[f"noise {sigma:g}"] = features(net, noisy)
    cases["digits 0-4"] = features(net, images[half_b][labels[half_b] < 5])
    if args.far_share > 0:  # a few far rows: that share of half B's images replaced by pure noise
        far = torch.rand(len(half_b), generator=noise) < args.far_share
        mixed = images[half_b].clone()
        mixed[far] = (2 * torch.rand(mixed[far].shape, generator=noise) - 1)
        cases[f"{args.far_share:.0%} noise images"] = features(net, mixed)

    rng = np.random.default_rng(args.seed)
    for name, x_pop in cases.items():
        truth, truth_se = population_fd(x_pop, y_pop)
        for size in args.sizes:
            n, m, resamples = sizes[size]
            hit = below = above = 0
            width, plug, corrected, se_j, top_share = [], [], [], [], []
            others = {k: [0, []] for k in METHODS} if args.methods else {}
            began = time.perf_counter()
            for _ in range(args.repeats):
                x, y = x_pop[rng.integers(0, len(x_pop), n)], y_pop[rng.integers(0, len(y_pop), m)]
                replicates = jackknife_replicates([x], y)  # the library's plug-in FD and leave-group-k FDs
                (low,), (high,) = replicate_intervals(replicates)
                hit += low <= truth <= high
                below += truth < low
                above += truth > high
                width.append(high - low)
                ((theta, leave),) = replicates
                g = JACKKNIFE_GROUPS
                plug.append(theta)
                corrected.append(float(replicate_fds(replicates)[0]))
                spread = (leave - leave.mean()) ** 2
                se_j.append(math.sqrt((g - 1) / g * spread.sum()))
                top_share.append(spread.max() / spread.sum())
                for k, (lo, hi, _) in (intervals(x, y, resamples, rng).items() if args.methods else ()):
                    others[k][0] += lo <= truth <= hi
                    others[k][1].append(hi - lo)
            r = args.repeats
            c = hit / r
            z = np.random.default_rng(0).standard_normal((10_000, JACKKNIFE_GROUPS))  # even, normal group terms
            z = (z - z.mean(1, keepdims=True)) ** 2
            even_share = np.median(z.max(1) / z.sum(1))
            print(f"\n{name}, {size}: n = {n} vs m = {m}, {r} repeats, true FD {truth:.2f} "
                  f"(the laws': ± {truth_se:.2f}; populations {len(x_pop)} and {len(y_pop)} rows) "
                  f"({time.perf_counter() - began:.0f} s)")
            print(f"  jackknife whisker: coverage {c:.1%} ± {math.sqrt(c * (1 - c) / r):.1%} "
                  f"(truth below it {below / r:.1%}, above {above / r:.1%}); median width / true FD "
                  f"{np.median(width) / truth:.2f}, / plug-in FD {np.median(np.array(width) / np.array(plug)):.2f}")
            print(f"  mean plug-in FD {np.mean(plug):.2f}, mean corrected FD {np.mean(corrected):.2f}; "
                  f"SD of the corrected FD over repeats {np.std(corrected, ddof=1):.2f} vs median jackknife SE "
                  f"{np.median(se_j):.2f}; largest group's median share of the jackknife variance "
                  f"{np.median(top_share):.2f} ({even_share:.2f} for normal terms of equal weight)")
            for k, (hits, widths) in others.items():
                print(f"  {k:<11} coverage {hits / r:.1%}, median width / true FD {np.median(widths) / truth:.2f}")


if __name__ == "__main__":
    main()
