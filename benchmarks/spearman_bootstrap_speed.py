"""Spearman's bootstrap interval and permutation p: ranks by sorting each resample vs by counting.

``kfm reproduce --quick`` takes eight Spearman correlations of n = 1,000 pairs (200 for the 2-D
mixture), each with 1,000 bootstrap resamples, a BCa jackknife of n leave-one-out sets and 1,000
permutations. "before" ranks every resample with ``scipy.stats.rankdata`` (a sort per row);
"now" resamples each value's place among the distinct values (``metrics.stats._codes``) and
ranks a row by counting those codes (``_SpearmanOfCodes``). Prints the median seconds of each
over alternating rounds, their ratio, and whether the two ``Correlation`` results are identical.

    python benchmarks/spearman_bootstrap_speed.py [--n 1000] [--bootstrap 1000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
from unittest import mock

import numpy as np

from _common import interleaved_rounds
from kinetic_fm.metrics import stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=args.n)
    y = np.round(-0.3 * x + rng.normal(size=args.n), 1)  # ties, as a rounded score has

    def now():
        return stats.spearman(x, y, bootstrap=args.bootstrap, permutations=args.bootstrap, seed=1)

    def before():
        # the old path: the values themselves resampled, each resample ranked by rankdata
        with mock.patch.object(stats, "_codes", lambda values: (values, 0)), \
                mock.patch.object(stats, "_SpearmanOfCodes", lambda k_x, k_y: stats._spearman_along):
            return now()

    times, results = interleaved_rounds({"before": before, "now": now}, args.rounds, warmup=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"spearman, n = {args.n}, {args.bootstrap} resamples and permutations, {args.rounds} rounds")
    print(f"  before (rankdata per resample): {med['before']:.3f} s   now (counted ranks): {med['now']:.3f} s   "
          f"ratio {med['before'] / med['now']:.2f}x")
    print(f"  results identical: {results['before'] == results['now']}  ({results['now']})")


if __name__ == "__main__":
    main()
