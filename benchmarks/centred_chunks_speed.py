"""Speed of the metrics that centre the reference: ours (one centred chunk at a time) against
``metrics/density.py`` as committed at a git revision (a centred copy of the whole reference).

Three calls, each run by both in alternation, on the same inputs, ``--repeats`` rounds after a
warm-up of each; medians of wall and process CPU time (steadier on a shared machine) and of the
rounds' paired ratios, previous over ours (above 1: ours is faster). Outputs must be identical.

- ``kde``: ``kde_log_density`` at a given bandwidth (Scott's value, computed once);
- ``ball_tests``: ``precision_recall``'s one sweep of ball tests (``fidelity._ball_memberships``,
  through ``sq_distance_blocks``) on fixed radii (each real ball reaching 0.97 of the distance
  to the next real row, each fake ball that of the next fake row), the k-NN searches left out;
- ``blocks``: a sweep of ``sq_distance_blocks`` reduced block by block (its minimum).

    python benchmarks/centred_chunks_speed.py --previous 16668bd [--rows N] [--samples B] [--dim D]
        [--calls kde ball_tests blocks] [--repeats R]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import module_at
from kinetic_fm import gemm
from kinetic_fm.metrics import fidelity
from kinetic_fm.metrics.density import kde_log_density, scott_bandwidth, sq_distance_blocks


def _ball_tests(blocks, fake, real, r2_real, r2_fake):
    """``_ball_memberships`` with ``fidelity.sq_distance_blocks`` set to ``blocks`` for the call."""
    saved = fidelity.sq_distance_blocks
    fidelity.sq_distance_blocks = blocks
    try:
        return fidelity._ball_memberships(fake, real, r2_real, r2_fake, 8192, 1024)
    finally:
        fidelity.sq_distance_blocks = saved


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        signs = not a.is_floating_point() or torch.equal(a.signbit(), b.signbit())
        return torch.equal(a, b) and signs
    if isinstance(a, tuple):
        return all(_same(u, v) for u, v in zip(a, b))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--previous", metavar="REV", required=True,
                        help="git revision (or file) of metrics/density.py to compare with")
    parser.add_argument("--rows", type=int, default=50_000, help="reference rows (real)")
    parser.add_argument("--samples", type=int, default=4_096, help="samples (fake, queries)")
    parser.add_argument("--dim", type=int, default=3_072)
    parser.add_argument("--calls", nargs="+", default=["kde", "ball_tests", "blocks"],
                        choices=["kde", "ball_tests", "blocks"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    old = module_at(args.previous, "src/kinetic_fm/metrics/density.py")
    g = torch.Generator().manual_seed(args.seed)
    y = torch.empty(args.rows, args.dim).uniform_(-1.0, 1.0, generator=g)
    x = torch.empty(args.samples, args.dim).uniform_(-1.0, 1.0, generator=g)
    print(f"{args.samples} samples x {args.rows} references, D = {args.dim}, float32, "
          f"{torch.get_num_threads()} threads, CPU BLAS {gemm.cpu_gemm()}, torch {torch.__version__}, "
          f"previous = density.py at {args.previous}; {args.repeats} rounds after a warm-up")
    h = scott_bandwidth(y)

    def next_row_sq(rows):
        return (rows - rows.roll(-1, 0)).double().square().sum(dim=1) * 0.97 ** 2

    r2_real, r2_fake = next_row_sq(y), next_row_sq(x)
    calls = {
        "kde": (lambda: old.kde_log_density(x, y, h).log_density,
                lambda: kde_log_density(x, y, h).log_density),
        "ball_tests": (lambda: _ball_tests(old.sq_distance_blocks, x, y, r2_real, r2_fake),
                       lambda: _ball_tests(sq_distance_blocks, x, y, r2_real, r2_fake)),
        "blocks": (lambda: min(float(d2.min()) for _, _, d2 in old.sq_distance_blocks(x, y)),
                   lambda: min(float(d2.min()) for _, _, d2 in sq_distance_blocks(x, y))),
    }
    print(f"{'call':<12}{'previous s':>11}{'ours s':>8}{'ratio':>7}{'paired':>8}"
          f"{'prev CPU s':>11}{'ours CPU s':>11}{'ratio':>7}{'paired':>8}")
    for name in args.calls:
        fns = dict(zip(("previous", "ours"), calls[name]))
        results = {variant: fn() for variant, fn in fns.items()}   # the warm-up
        assert _same(results["previous"], results["ours"]), f"{name}: the outputs differ"
        wall = {variant: [] for variant in fns}
        cpu = {variant: [] for variant in fns}
        for i in range(args.repeats):
            for variant, fn in (fns.items() if i % 2 == 0 else reversed(fns.items())):
                w, c = time.perf_counter(), time.process_time()
                out = fn()
                wall[variant].append(time.perf_counter() - w)
                cpu[variant].append(time.process_time() - c)
                assert _same(out, results[variant])
        line = f"{name:<12}"
        for clock in (wall, cpu):
            a, b = statistics.median(clock["previous"]), statistics.median(clock["ours"])
            paired = statistics.median(p / o for p, o in zip(clock["previous"], clock["ours"]))
            line += f"{a:>11.2f}{b:>{8 if clock is wall else 11}.2f}{a / b:>7.3f}{paired:>8.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
