"""Squared-distance blocks (precision/recall's ball tests) vs the GEMMs they are built on.

``density.sq_distance_blocks`` yields exact float64 squared distances block by block. Its floor
is the GEMM of every block through the same BLAS; the baseline is the same algorithm with
whole-array float64 passes (centre the reference whole, cast each block whole), which is what the
function did before its float64 work moved to cache-sized blocks.

    python benchmarks/distance_blocks_speed.py             # 4,096 x 16,384, D = 2,048, 5 repeats
    python benchmarks/distance_blocks_speed.py --quick     # 1,024 x 8,192

Also times ``precision_recall`` (k = 3) on real = fake sizes of ``--queries``, against the GEMMs
of its three sweeps: the k-NN radii of each set and the ball tests, one fake × real sweep for
both directions (four sweeps, two of them ball tests, before the one-sweep change).
"""
from __future__ import annotations

import argparse
import statistics

import torch
from _common import interleaved_rounds

from kinetic_fm import gemm
from kinetic_fm.metrics.density import sq_distance_blocks
from kinetic_fm.metrics.fidelity import precision_recall

CHUNK, BATCH_CHUNK = 8192, 1024


def _blas(x: torch.Tensor, y: torch.Tensor) -> str:
    """The BLAS ``sq_distance_blocks`` picks for these inputs (:func:`kinetic_fm.gemm.choose`)."""
    return gemm.choose(torch.float32, x.device, 2.0 * x.shape[0] * x.shape[1] * y.shape[0])


def whole_array_blocks(x: torch.Tensor, y: torch.Tensor):
    """The baseline: the same centred GEMM blocks, float64 passes over whole arrays."""
    centre = y.to(torch.float64).mean(dim=0)
    yc = (y.to(torch.float64) - centre).to(torch.float32)
    y_sq = yc.to(torch.float64).pow(2).sum(dim=1)
    blas = _blas(x, y)
    for q0 in range(0, x.shape[0], BATCH_CHUNK):
        xb = (x[q0:q0 + BATCH_CHUNK].to(torch.float64) - centre).to(torch.float32)
        x_sq = xb.to(torch.float64).pow(2).sum(dim=1, keepdim=True)
        for c0 in range(0, y.shape[0], CHUNK):
            cross = gemm.matmul(xb, yc[c0:c0 + CHUNK].T, blas=blas)
            d2 = (x_sq + y_sq[c0:c0 + CHUNK]).sub_(cross.to(torch.float64), alpha=2.0)
            yield q0, c0, d2.clamp_(min=0.0)


def gemm_floor(x: torch.Tensor, y: torch.Tensor) -> None:
    """Only the block GEMMs, into one reused buffer, through the BLAS the others use."""
    blas = _blas(x, y)
    out = torch.empty(min(BATCH_CHUNK, x.shape[0]), min(CHUNK, y.shape[0]))
    for q0 in range(0, x.shape[0], BATCH_CHUNK):
        xb = x[q0:q0 + BATCH_CHUNK]
        for c0 in range(0, y.shape[0], CHUNK):
            yb = y[c0:c0 + CHUNK]
            gemm.matmul(xb, yb.T, out=out[:xb.shape[0], :yb.shape[0]], blas=blas)


def sweep(blocks) -> float:
    """Consume the blocks as a ball test does (one reduction each); returns the global minimum."""
    return min(float(d2.min()) for _, _, d2 in blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--reference", type=int, default=16_384)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1,024 x 8,192, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.queries, args.reference, args.repeats = 1024, 8192, 3

    g = torch.Generator().manual_seed(0)
    y = torch.randn(args.reference, args.dim, generator=g) + 3.0
    x = torch.randn(args.queries, args.dim, generator=g) + 3.0
    blas = _blas(x, y)
    print(f"{args.queries} x {args.reference} squared distances, D = {args.dim}, float32, "
          f"{torch.get_num_threads()} threads, BLAS {blas}, torch {torch.__version__}")

    jobs = {
        "sq_distance_blocks (ours)": lambda: sweep(sq_distance_blocks(x, y)),
        "whole-array float64 passes": lambda: sweep(whole_array_blocks(x, y)),
        "GEMM floor (same BLAS)": lambda: gemm_floor(x, y),
    }
    times, results = interleaved_rounds(jobs, args.repeats, warmup=True)
    assert results["sq_distance_blocks (ours)"] == results["whole-array float64 passes"]
    floor = statistics.median(times["GEMM floor (same BLAS)"])
    print(f"\n{'measurement':30s} {'median s':>9s} {'/ floor':>8s}")
    for name, ts in times.items():
        print(f"{name:30s} {statistics.median(ts):9.2f} {statistics.median(ts) / floor:8.2f}")

    # precision/recall: 3 sweeps of the same size (k-NN radii of each set, then the ball tests)
    real, fake = y[:args.queries], x
    pr = {
        "precision_recall (k = 3)": lambda: precision_recall(real, fake, k=3),
        "its GEMM floor (3 sweeps)": lambda: [gemm_floor(a, b) for a, b in ((real, real), (fake, fake), (fake, real))],
    }
    times, _ = interleaved_rounds(pr, args.repeats, warmup=True)
    ours, floor = (statistics.median(ts) for ts in times.values())
    print(f"\nprecision_recall on {args.queries} real and {args.queries} fake: {ours:.2f} s, "
          f"{ours / floor:.2f}x the GEMMs of its three sweeps")


if __name__ == "__main__":
    main()
