"""The shaping study's paired Fréchet-distance bootstrap: per-resample recomputation vs prepared.

The KTS claims read six paired differences FD(setting) − FD(base) over R resamples of n samples
in D feature dimensions (``kfm reproduce --quick``: R = 500, n = 500, D = 128, seven settings).
"before" recomputes both FDs of every pair with ``frechet_distance_from_stats`` (three symmetric
eigendecompositions each); "now" prepares the reference's square root once
(``FrechetReference``) and computes each setting's R resample FDs once (one eigenvalue problem
each). Prints the median time of each over alternating rounds, their ratio, and the largest
difference between the two sets of intervals' inputs.

``--per-call``: one FD per bootstrap resample of n rows instead, at each n of ``--sizes`` (the
studies' quintiles, jackknife groups and settings at D = 128): "old" is ``FrechetReference.distance``
of the resample's ``np.cov`` (its checks of Σ, Σ's rank and the trace term from D × D problems),
"new" ``FrechetReference.distance_of_rows`` (k × k Gram problems for k ≤ D distinct rows). Prints
each n's ratio old/new of the medians over alternating rounds, and the largest relative difference.

    python benchmarks/fd_bootstrap.py [--resamples 500] [--n 500] [--dim 128] [--rounds 3]
    python benchmarks/fd_bootstrap.py --per-call [--sizes 48 60 126 200 400] [--dim 128] [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from _common import interleaved_rounds
from kinetic_fm.metrics.fidelity import FrechetReference, frechet_distance_from_stats
from kinetic_fm.studies.output import feature_reference
from kinetic_fm.studies.shaping import bootstrap_fd

PAIRS = [("plain FM", "launch only"), ("plain FM", "landing only"), ("plain FM", "balanced"),
         ("balanced", "balanced τ=0.2"), ("balanced", "balanced τ=0.4"), ("balanced", "balanced τ=0.8")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-call", action="store_true", help="time one FD per resample, old route against new")
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 60, 126, 200, 400])
    args = parser.parse_args()
    if args.per_call:
        per_call(args.sizes, args.dim, args.rounds)
        return
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2000, args.dim))
    names = sorted({name for pair in PAIRS for name in pair})
    feats = {name: rng.standard_normal((args.n, args.dim)) * (1 + 0.05 * i) + 0.02 * i for i, name in enumerate(names)}
    boot = rng.integers(0, args.n, size=(args.resamples, args.n))
    ref_mu, ref_cov = ref.mean(0), np.cov(ref, rowvar=False)

    def before() -> np.ndarray:
        def fd(f):
            return frechet_distance_from_stats(f.mean(0), np.cov(f, rowvar=False), ref_mu, ref_cov)
        return np.stack([[fd(feats[other][i]) - fd(feats[base][i]) for i in boot] for base, other in PAIRS])

    def now() -> np.ndarray:
        reference = feature_reference(ref)
        resampled = {name: bootstrap_fd(feats[name], reference, boot) for name in names}
        return np.stack([resampled[other] - resampled[base] for base, other in PAIRS])

    times, results = interleaved_rounds({"before": before, "now": now}, args.rounds)
    old, new = (statistics.median(times[k]) for k in ("before", "now"))
    diff = np.abs(results["before"] - results["now"]).max()
    print(f"{len(PAIRS)} paired differences x {args.resamples} resamples, n = {args.n}, D = {args.dim}; "
          f"medians of {args.rounds} alternating rounds")
    print(f"  before {old:.2f} s, now {new:.2f} s: {old / new:.2f}x faster; "
          f"largest |difference| of the paired deltas {diff:.2g} (deltas of size {np.abs(results['now']).mean():.3g})")


def per_call(sizes: list[int], dim: int, rounds: int, resamples: int = 40) -> None:
    """Each n's ratio of the old route's time per FD to the new one's, over ``resamples`` resamples."""
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((2000, dim))
    reference = FrechetReference.from_stats(ref.mean(0), np.cov(ref, rowvar=False))
    print(f"one FD per bootstrap resample, D = {dim}; medians of {rounds} alternating rounds of {resamples} resamples")
    for n in sizes:
        rows = rng.standard_normal((n, dim)) * np.linspace(0.5, 2.0, dim) + 0.1
        sets = [rows[rng.integers(0, n, n)] for _ in range(resamples)]

        def old() -> np.ndarray:
            return np.array([reference.distance(x.mean(0), np.cov(x, rowvar=False)) for x in sets])

        def new() -> np.ndarray:
            return np.array([reference.distance_of_rows(x) for x in sets])

        times, results = interleaved_rounds({"old": old, "new": new}, rounds, warmup=True)
        before, now = (statistics.median(times[k]) / resamples for k in ("old", "new"))
        diff = np.abs(results["new"] / results["old"] - 1).max()
        distinct = np.mean([np.unique(x, axis=0).shape[0] for x in sets])
        print(f"  n = {n:4d} ({distinct:5.1f} distinct rows): old {before * 1e3:.3g} ms, new {now * 1e3:.3g} ms "
              f"per FD, old/new {before / now:.2f}; largest relative difference {diff:.2g}")


if __name__ == "__main__":
    main()
