"""PrincipalSpace.fit with fewer items than values: the SVD of the rows vs the covariance's eigh.

`kfm reproduce` fits the memorizing net's training images' span (all N − 1 directions) once per
run, and `kfm memorization --space pca:K` fits the training items'. With N items of D values and
N < D, ``PrincipalSpace.fit`` takes the SVD of the centred (N, D) rows (N²·D work); the
covariance route it used before builds the (D, D) covariance and solves its eigenproblem (D³).
Both run here on the same random images, in alternation, and the script prints their median
times, the ratio, and how far the two fits' directions (sign-fixed) and variances differ.

    python benchmarks/principal_fit.py [--n 128] [--shape 3 32 32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from _common import interleaved_rounds
from kinetic_fm.metrics.features import PrincipalSpace
from kinetic_fm.metrics.fidelity import feature_statistics


def covariance_route(x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k directions (D, k), sign-fixed as ``PrincipalSpace.fit`` fixes them, and
    variances from the float64 covariance's eigh: the fit's route for N ≥ D."""
    _, cov = feature_statistics(x.reshape(len(x), -1))
    values, vectors = np.linalg.eigh(cov)
    top = vectors[:, ::-1][:, :k]
    top = top * np.sign(top[np.abs(top).argmax(axis=0), np.arange(k)])
    return top, values[::-1][:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="training items (default 128)")
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32], help="item shape (default 3 32 32)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = torch.rand(args.n, *args.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    k = min(args.n - 1, x[0].numel())
    times, results = interleaved_rounds({
        "svd of the rows (now)": lambda: PrincipalSpace.fit(x, k),
        "covariance eigh (before)": lambda: covariance_route(x, k),
    }, args.repeats)
    space, (directions, variances) = results["svd of the rows (now)"], results["covariance eigh (before)"]
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"N = {args.n} items of D = {x[0].numel()} values, k = {k}, {args.repeats} rounds in alternation")
    for name, median in medians.items():
        print(f"  {name:26s} median {median:8.3f} s")
    before, now = medians["covariance eigh (before)"], medians["svd of the rows (now)"]
    print(f"  ratio before / now: {before / now:.1f}x")
    print(f"  max |direction difference| {np.abs(space.components.numpy() - directions).max():.1e}, "
          f"max relative variance difference {np.abs(space.variance.numpy() / variances - 1).max():.1e}")


if __name__ == "__main__":
    main()
