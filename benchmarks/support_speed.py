"""Local-support speed: kNN radii (k = 1, 5, 10) and Gaussian KDE vs the exact 2-NN search.

Target (issue 5): support for 10,000 samples against 50,000 references at D = 512 within 2× of
the time of ``nearest_neighbors(samples, reference, 2)`` on the same inputs.

    python benchmarks/support_speed.py            # 10,000 x 50,000 x 512, 3 repeats
    python benchmarks/support_speed.py --quick    # 2,000 x 10,000 x 512

Each repeat runs the three measurements back to back (interleaved, so load changes on a shared
machine hit all three alike); the script prints medians and ratios to the 2-NN time.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from _common import interleaved_rounds

from kinetic_fm.knn import nearest_neighbors
from kinetic_fm.metrics.density import kde_log_density, local_support


def clustered(n: int, dim: int, centres: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Points around random cluster centres (feature-like data, not isotropic noise)."""
    pick = torch.randint(0, centres.shape[0], (n,), generator=generator)
    return centres[pick] + 0.5 * torch.randn(n, dim, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--reference", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--quick", action="store_true", help="2,000 x 10,000 samples, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.reference = 2_000, 10_000
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(100, args.dim, generator=g)
    reference = clustered(args.reference, args.dim, centres, g)
    samples = clustered(args.samples, args.dim, centres, g)
    print(f"{args.samples} samples x {args.reference} references, D = {args.dim}, float32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    jobs = {
        "2-NN (nearest_neighbors, k=2)": lambda: nearest_neighbors(samples, reference, 2),
        "kNN support (k = 1, 5, 10)": lambda: local_support(samples, reference, k=5, ks=(1, 5, 10)),
        "KDE log-density (Scott)": lambda: kde_log_density(samples, reference, "scott"),
    }
    times, results = interleaved_rounds(jobs, args.repeats, after_round=lambda i, times: print(
        f"  repeat {i + 1}: " + ", ".join(f"{t[-1]:.2f}s" for t in times.values())))

    # sanity: the support's 1-NN radius is the 2-NN search's first distance
    nn, sup = results["2-NN (nearest_neighbors, k=2)"], results["kNN support (k = 1, 5, 10)"]
    assert torch.equal(sup.radius_at(1), nn.distances[:, 0])
    kde = results["KDE log-density (Scott)"]
    check = kde_log_density(samples[:64].double(), reference.double(), kde.bandwidth)
    err = (check.log_density - kde.log_density[:64]).abs().max().item()

    base = statistics.median(times["2-NN (nearest_neighbors, k=2)"])
    print(f"\n{'measurement':34s} {'median s':>9s} {'/ 2-NN':>7s}")
    for name, ts in times.items():
        print(f"{name:34s} {statistics.median(ts):9.2f} {statistics.median(ts) / base:7.2f}")
    both = statistics.median([a + b for a, b in zip(times["kNN support (k = 1, 5, 10)"],
                                                     times["KDE log-density (Scott)"])])
    print(f"{'kNN + KDE (both supports)':34s} {both:9.2f} {both / base:7.2f}")
    print(f"\nKDE float32 path vs float64 on 64 samples: max |Δ log p| = {err:.2e} "
          f"(log p ~ {kde.log_density.mean().item():.1f}, h = {kde.bandwidth:.3f})")


if __name__ == "__main__":
    main()
