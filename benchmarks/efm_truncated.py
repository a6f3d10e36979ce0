"""Truncated EFM (``EmpiricalFlow(truncate=k)``): atoms chosen by screened logits vs by a search of x/t.

    python benchmarks/efm_truncated.py            # N = 10,000, D = 3,072, B = 256, k = 64, float32
    python benchmarks/efm_truncated.py --n 50000  # CIFAR-10 sized training set
    python benchmarks/efm_truncated.py --quick    # N = 2,000, B = 64
    python benchmarks/efm_truncated.py --previous 16668bd   # also the truncated field as committed then

Inputs: atoms uniform in [−1, 1]^D, queries on the conditional paths x_t = (1 − t)·noise + t·y_j
at several t, all rows of a call at one t (as in a sampling run). Three ways, run in alternation
on the same inputs, median of ``--repeats`` calls each:

* screened: ``EmpiricalFlow(atoms, truncate=k)`` — the k largest screened GEMM logits, re-scored
            exactly in float64 (the torch backend since the fourteenth session).
* search:   the same field's route through the exact k-nearest-neighbour search of x/t
            (``kinetic_fm.nearest_neighbors``, certified, float64 re-search where float32 cannot
            order the k-th and (k+1)-th neighbours), then the same re-scoring: what the torch
            backend did before, and what the faiss backend still does.
* full:     ``EmpiricalFlow(atoms)``, the exact field over all N atoms.
* previous: (``--previous REV``) ``fields/empirical.py`` as committed at REV (or read from the file
            REV), truncated as the screened way; its velocities must equal ours.

Also printed: the largest neglected-mass bound of each truncated way, and the largest relative
difference of the two truncated velocities (both within their bounds of the exact one).
"""
from __future__ import annotations

import argparse

import torch
from _common import interleaved_medians, module_at

import kinetic_fm as kfm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=3_072)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="N = 2,000, B = 64")
    parser.add_argument("--previous", metavar="REV", help="also time fields/empirical.py as committed at REV")
    args = parser.parse_args()
    n, batch = (2_000, 64) if args.quick else (args.n, args.batch)
    g = torch.Generator().manual_seed(0)
    atoms = torch.rand(n, args.dim, generator=g) * 2 - 1
    screened = kfm.EmpiricalFlow(atoms, truncate=args.k)
    full = kfm.EmpiricalFlow(atoms)
    previous = None
    if args.previous:
        previous = module_at(args.previous, "src/kinetic_fm/fields/empirical.py").EmpiricalFlow(atoms, truncate=args.k)
    print(f"N = {n:,}, D = {args.dim:,}, B = {batch}, k = {args.k}, float32, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"{'t':>5} | {'search / screened':>17} | {'full / screened':>15} | "
          f"{'bound screened':>14} | {'bound search':>12} | {'max rel diff':>12}"
          + (f" | {'previous / ours':>15}" if previous else ""))
    for t in (0.05, 0.2, 0.5, 0.9):
        noise = torch.randn(batch, args.dim, generator=g)
        x = (1 - t) * noise + t * atoms[torch.randint(0, n, (batch,), generator=g)]
        times = torch.full((batch,), t, dtype=torch.float64)
        flat = x.reshape(batch, -1)

        def by_search():
            # the private route the faiss backend takes, here with the torch search
            return screened._solve_truncated_by_search(flat, times, 0)

        ways = {"screened": lambda: screened(x, times), "search": by_search, "full": lambda: full(x, times)}
        if previous:
            ways["previous"] = lambda: previous(x, times)
            assert torch.equal(previous(x, times), screened(x, times)), f"the previous field differs at t = {t}"
        medians = interleaved_medians(ways, args.repeats)
        ours = screened.evaluate(x, times)
        ybar, diag, _ = by_search()
        theirs = (ybar - flat.double()) / (1 - t)
        diff = ((ours.velocity.double() - theirs).norm(dim=1) / theirs.norm(dim=1)).max()
        print(f"{t:>5} | {medians['search'] / medians['screened']:>16.2f}x | "
              f"{medians['full'] / medians['screened']:>14.2f}x | "
              f"{ours.diagnostics.neglected_bound.max():>14.3g} | {diag.neglected_bound.max():>12.3g} | "
              f"{diff:>12.2g}" + (f" | {medians['previous'] / medians['screened']:>14.3f}x" if previous else ""))


if __name__ == "__main__":
    main()
