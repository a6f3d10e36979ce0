"""Cost of deciding ball-edge pairs exactly in kfm.precision_recall: ours vs the same k-NN radii and
GEMM blocks with the rounding left to decide (the method before the seventh session), on the same
inputs, continuous and binary (where exact ties d = r are common).

    python benchmarks/precision_recall_speed.py [--quick]
"""
from __future__ import annotations

import argparse
import statistics

import torch

import kinetic_fm as kfm
from _common import interleaved_rounds
from kinetic_fm.metrics.density import sq_distance_blocks


def gemm_only(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Ball membership straight from the GEMM blocks against squared exact radii (no edge check)."""
    def inside(points, centres):
        r2 = kfm.nearest_neighbors(centres, centres, k, exclude_self=True).distances[:, -1].pow(2)
        hit = torch.zeros(points.shape[0], dtype=torch.bool)
        for q0, c0, d2 in sq_distance_blocks(points, centres):
            hit[q0:q0 + d2.shape[0]] |= (d2 <= r2[c0:c0 + d2.shape[1]]).any(dim=1)
        return float(hit.double().mean())

    return inside(fake, real), inside(real, fake)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 points per set instead of 10,000")
    args = parser.parse_args()
    n, repeats = (2000, 3) if args.quick else (10_000, 5)
    g = torch.Generator().manual_seed(0)
    cases = {
        "continuous D=64 float32": (torch.randn(n, 64, generator=g), torch.randn(n, 64, generator=g) * 1.1),
        "binary D=100 (ties)": ((torch.rand(n, 100, generator=g) < 0.1).float(),
                                (torch.rand(n, 100, generator=g) < 0.1).float()),
    }
    print(f"{n} real and {n} fake points, k = 3, {repeats} interleaved rounds")
    for name, (real, fake) in cases.items():
        times, results = interleaved_rounds({
            "ours": lambda: kfm.precision_recall(real, fake, k=3),
            "GEMM only": lambda: gemm_only(real, fake, 3),
        }, repeats, warmup=True)
        ours, plain = statistics.median(times["ours"]), statistics.median(times["GEMM only"])
        res, old = results["ours"], results["GEMM only"]
        print(f"{name:26s} ours {ours * 1e3:8.1f} ms  GEMM only {plain * 1e3:8.1f} ms  ratio {ours / plain:5.2f}  "
              f"precision {res.precision:.4f} vs {old[0]:.4f}, recall {res.recall:.4f} vs {old[1]:.4f}")


if __name__ == "__main__":
    main()
