"""Fréchet distance without a judge: raw pixels against the training split's principal space.

CelebA 32x32 grayscale (the ``celeba:`` loader, pixel-centred). ``--heldout`` images are never
used to fit the space; ``PrincipalSpace.fit`` (k = 64, with and without the residual coordinate)
sees the rest. For each n and each of ``--draws`` draws of two disjoint held-out sets A, B:

    floor = FD(A, B)            the true distance is 0: all of it is the estimator's bias
    worse = FD(A, degrade(B))   a known-worse set (blur, added noise)

It prints the mean floor, and for each degradation z = mean(worse − floor) / sd(worse − floor)
(negative: the worse set scores *better* than real images), and the median time of one FD in
pixels over one in the principal space, measured in alternation on the same sets.

    python benchmarks/fd_space_bias.py [--celeba ../shared/data/celeba/celeba_align_subset6000.zip]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import interleaved_rounds
from kinetic_fm.data.registry import load_dataset
from kinetic_fm.metrics.features import PrincipalSpace
from kinetic_fm.metrics.fidelity import frechet_distance

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba" / "celeba_align_subset6000.zip"


def blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of (n, 1, H, W) images, reflect-padded."""
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    x = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--celeba", type=Path, default=DEFAULT, help="CelebA aligned faces, a folder or zip")
    parser.add_argument("--images", type=int, default=4000, help="images decoded (default 4000)")
    parser.add_argument("--heldout", type=int, default=1024, help="of them, never used to fit the space")
    parser.add_argument("--draws", type=int, default=5, help="draws of the two held-out sets per n")
    args = parser.parse_args()
    if not args.celeba.exists():
        sys.exit(f"CelebA not found at {args.celeba}: pass --celeba PATH")
    warnings.simplefilter("ignore")  # FrechetBiasWarning at n <= D is the subject here
    images = load_dataset(f"celeba:{args.celeba}", n=args.images, seed=0, progress=False).images.double()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    held, train = images[order[: args.heldout]], images[order[args.heldout:]]
    spaces = {"pixels": None, "PCA64": PrincipalSpace.fit(train, 64),
              "PCA64+residual": PrincipalSpace.fit(train, 64, residual=True)}
    noise = torch.Generator().manual_seed(2)
    degrade = {"blur 1 px": blur, "noise 0.1": lambda x: x + 0.1 * torch.randn(x.shape, generator=noise, dtype=x.dtype)}
    print(f"CelebA 32x32, {len(train)} images fit the space ({spaces['PCA64'].share:.0%} of the pixel variance "
          f"in 64 directions), {len(held)} held out; {args.draws} draws per n")
    print(f"{'space':>15} {'n':>4} {'floor':>8} " + " ".join(f"{'z ' + d:>13}" for d in degrade) + "  pixel FD time / this")
    for n in (128, 512):
        draws = []
        for r in range(args.draws):
            p = torch.randperm(len(held), generator=torch.Generator().manual_seed(100 + r))
            a, b = held[p[:n]], held[p[n:2 * n]]
            draws.append((a, b, {d: f(b) for d, f in degrade.items()}))

        def fd(space, x, y):
            return frechet_distance(x.flatten(1) if space is None else space(x),
                                    y.flatten(1) if space is None else space(y)).value

        a, b, _ = draws[0]
        times, _ = interleaved_rounds({name: (lambda s=s: fd(s, a, b)) for name, s in spaces.items()}, 3,
                                      warmup=True)
        for name, space in spaces.items():
            floors = np.array([fd(space, a, b) for a, b, _ in draws])
            zs = []
            for d in degrade:
                gap = np.array([fd(space, a, worse[d]) for a, _, worse in draws]) - floors
                zs.append(gap.mean() / max(gap.std(ddof=1), 1e-300))
            ratio = statistics.median(times["pixels"]) / statistics.median(times[name])
            print(f"{name:>15} {n:4d} {floors.mean():8.2f} " + " ".join(f"{z:13.1f}" for z in zs) + f"  {ratio:8.0f}x")


if __name__ == "__main__":
    main()
