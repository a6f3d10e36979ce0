"""Fréchet distance from a set with no more rows than features: the nuclear-norm route vs D × D.

``kfm.frechet_distance`` takes the trace term of a set of n ≤ D rows from its centred rows (the
nuclear norm of B Aᵀ, reduced by a chunked QR); the D × D route it replaced builds both
covariances and takes two D × D symmetric eigendecompositions (``FrechetReference``, which the
from-statistics path still uses). For each n the two run in alternation on the same features,
and each value is compared with the nuclear norm taken by a dense float64 SVD of B Aᵀ (the
definition, straight). Features: Gaussian rows with a power-law spectrum (sd ∝ 1/i), the other
set 1.1× wider and shifted.

    python benchmarks/fd_few_rows.py                 # D = 2,048, n in 100, 500, 2,000; other set 5,000
    python benchmarks/fd_few_rows.py --quick         # D = 512
"""
from __future__ import annotations

import argparse
import math
import statistics
import warnings

import numpy as np
import torch
from _common import interleaved_rounds

from kinetic_fm.metrics.fidelity import FrechetReference, feature_statistics, frechet_distance


def dense_reference(a: np.ndarray, b: np.ndarray) -> float:
    """FD from the nuclear-norm identity with a dense SVD, float64."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a), len(b)
    nuclear = np.linalg.svd(cb @ ca.T, compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca ** 2).sum() / (na - 1) + (cb ** 2).sum() / (nb - 1)
                 - 2 * nuclear / math.sqrt((na - 1) * (nb - 1)))


def covariance_route(a: torch.Tensor, b: torch.Tensor) -> float:
    return FrechetReference.from_stats(*feature_statistics(a)).distance(*feature_statistics(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--other", type=int, default=5_000, help="rows of the larger set")
    args = parser.parse_args()
    dim = 512 if args.quick else 2_048
    sizes = (50, 200, 500) if args.quick else (100, 500, 2_000)
    rng = np.random.default_rng(0)
    scale = 1.0 / np.arange(1, dim + 1)
    other = torch.from_numpy(rng.normal(size=(args.other, dim)) * scale * 1.1 + 0.01)
    warnings.simplefilter("ignore")  # FrechetBiasWarning: the regime this measures
    print(f"D = {dim}, other set {args.other} rows, float64, median of {args.repeats} alternating rounds")
    print(f"{'n':>6} {'nuclear-norm (ours)':>20} {'D x D route':>12} {'time ratio':>11} "
          f"{'ours rel. err':>14} {'D x D rel. err':>15}")
    for n in sizes:
        few = torch.from_numpy(rng.normal(size=(n, dim)) * scale)
        times, results = interleaved_rounds({"ours": lambda: frechet_distance(few, other).value,
                                             "dxd": lambda: covariance_route(few, other)}, args.repeats)
        ours, dxd = statistics.median(times["ours"]), statistics.median(times["dxd"])
        want = dense_reference(few.numpy(), other.numpy())
        print(f"{n:>6} {ours:>19.2f}s {dxd:>11.2f}s {dxd / ours:>10.1f}x "
              f"{abs(results['ours'] - want) / want:>14.1e} {abs(results['dxd'] - want) / want:>15.1e}")


if __name__ == "__main__":
    main()
