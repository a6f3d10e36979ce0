"""Coverage of 95% intervals for a paired difference of Fréchet distances, FD(X_b, Y) − FD(X_a, Y),
on Gaussian sets whose true difference is known.

The KTS claims judge ΔFD = FD(shaped setting) − FD(plain FM) (or − FD(τ = 0.6)), both against the
same reference, from a paired basic bootstrap: the samples' rows redrawn with the same indices in
both settings (they share seeds), the reference held fixed. At the quick preset's sizes a setting
has n = 500 rows against the m = 1,497 training rows (D = 128, 500 resamples); ``quintile`` is the
Goldilocks quintile's size (n = 200 against m = 300 held-out rows, 200 resamples), for a plain
difference of two FDs of paired rows (the claim's T takes minima over quintiles; not modelled here).

Each repeat draws z ~ N(0, I) (n rows), X_a = μ_a + L_a z and X_b = μ_b + s L_a (ρ z + √(1 − ρ²) e),
e independent: paired rows of correlation ρ (shared seeds), X_b ~ N(μ_b, s² Σ_a). Y ~ N(μ_2, Σ_2),
m rows, independent. (μ_a, Σ_a, μ_2, Σ_2) come from ``fd_interval_coverage.population`` (true FD_a
= ``--fd``); each case sets s and |μ_b − μ_a|; the truth is the difference of the closed forms.

Methods:
  basic        paired resamples of the rows of X_a, X_b (same indices), Y fixed; 2Δ̂ − their quantiles
               (the report's now)
  percentile   the same resamples' quantiles
  basic-2s     basic, Y's rows also redrawn in each resample (the same Y rows for both FDs)
  jack-t       delete-a-group jackknife: group k = rows k, k + g, ... of X_a and X_b (the same rows)
               and of Y; Δ_J = gΔ̂ − (g − 1) mean Δ_(−k) ± t_{g−1} se_J (not cut: a difference may be < 0)

Why the reference matters: held fixed, Y's noise biases both FDs, and that part cancels in the
difference only as far as the two sets' spreads agree (X_b's cross term tr(Σ_Y^½ s²Σ_a Σ_Y^½)^½ is s
times X_a's, and so is the part of its bias that Y's noise makes); the cases "much wider" and
"much narrower" test where it does not.

Prints coverage (± binomial SE), median width, mean estimate (and jack-t's corrected mean), and how
often each interval excludes 0 on each side.

    OMP_NUM_THREADS=1 python benchmarks/fd_paired_interval_coverage.py [--repeats 40] \\
        [--sizes setting quintile] [--cases same wider narrower shifted 'much wider' 'much narrower'] \\
        [--rho 0.9] [--fd 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats

from fd_interval_coverage import Reference, population, true_fd

SIZES = {"setting": (500, 1497, 500), "quintile": (200, 300, 200)}  # n, m, resamples
# case → (s, |μ_b − μ_a|): X_b's spread as a multiple of X_a's, and its mean shift
CASES = {"same": (1.0, 0.0), "wider": (1.05, 0.0), "narrower": (0.95, 0.0), "shifted": (1.0, 0.3),
         "much wider": (1.3, 0.0), "much narrower": (0.75, 0.0)}
METHODS = ("basic", "percentile", "basic-2s", "jack-t")
GROUPS = 10


def intervals(xa: np.ndarray, xb: np.ndarray, y: np.ndarray, resamples: int, rng: np.random.Generator) -> dict:
    """Each method's (low, high, estimate) for FD(X_b, Y) − FD(X_a, Y) at 95%."""
    n, m = len(xa), len(y)
    ref = Reference(y)
    delta = ref.fd(xb) - ref.fd(xa)
    out = {}
    idx = rng.integers(0, n, size=(resamples, n))
    one = np.array([ref.fd(xb[i]) - ref.fd(xa[i]) for i in idx])
    q = np.quantile(one, [0.025, 0.975])
    out["basic"] = (2 * delta - q[1], 2 * delta - q[0], delta)
    out["percentile"] = (q[0], q[1], delta)
    both = []
    for i in idx:
        r = Reference(y[rng.integers(0, m, m)])
        both.append(r.fd(xb[i]) - r.fd(xa[i]))
    q = np.quantile(both, [0.025, 0.975])
    out["basic-2s"] = (2 * delta - q[1], 2 * delta - q[0], delta)
    leave = []
    for k in range(GROUPS):
        r = Reference(y[np.arange(m) % GROUPS != k])
        keep = np.arange(n) % GROUPS != k
        leave.append(r.fd(xb[keep]) - r.fd(xa[keep]))
    leave = np.array(leave)
    corrected = GROUPS * delta - (GROUPS - 1) * leave.mean()
    se = math.sqrt((GROUPS - 1) / GROUPS * ((leave - leave.mean()) ** 2).sum())
    t = stats.t.ppf(0.975, GROUPS - 1)
    out["jack-t"] = (corrected - t * se, corrected + t * se, corrected)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--sizes", nargs="+", default=["setting"], choices=list(SIZES))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rho", type=float, default=0.9, help="correlation of paired rows (shared seeds)")
    parser.add_argument("--fd", type=float, default=2.0, help="true FD of X_a to the reference's law")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--resamples", type=int, default=None, help="override the report's resample count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    mu_a, s_a, mu2, s2, fd_a = population(args.dim, args.fd, rng)
    l_a, l2 = np.linalg.cholesky(s_a), np.linalg.cholesky(s2)
    direction = rng.standard_normal(args.dim)
    direction /= np.linalg.norm(direction)
    for size in args.sizes:
        n, m, resamples = SIZES[size]
        resamples = args.resamples or resamples
        for case in args.cases:
            scale, shift = CASES[case]
            mu_b = mu_a + shift * direction
            truth = true_fd(mu_b, scale ** 2 * s_a, mu2, s2) - fd_a
            hits = {k: 0 for k in METHODS}
            below = {k: 0 for k in METHODS}
            above = {k: 0 for k in METHODS}
            widths = {k: [] for k in METHODS}
            estimates = {k: [] for k in METHODS}
            start = time.perf_counter()
            for _ in range(args.repeats):
                z = rng.standard_normal((n, args.dim))
                e = rng.standard_normal((n, args.dim))
                xa = mu_a + z @ l_a.T
                xb = mu_b + scale * (args.rho * z + math.sqrt(1 - args.rho ** 2) * e) @ l_a.T
                y = mu2 + rng.standard_normal((m, args.dim)) @ l2.T
                for k, (low, high, est) in intervals(xa, xb, y, resamples, rng).items():
                    hits[k] += low <= truth <= high
                    below[k] += high < 0
                    above[k] += low > 0
                    widths[k].append(high - low)
                    estimates[k].append(est)
            print(f"\n{size} / {case} (s = {scale}, shift {shift}): n = {n}, m = {m}, D = {args.dim}, ρ = {args.rho}, "
                  f"{resamples} resamples, {args.repeats} repeats; FD_a {fd_a:.3f}, true ΔFD {truth:+.4f} "
                  f"({time.perf_counter() - start:.0f} s)")
            print(f"  {'method':<11} {'coverage':>15} {'median width':>13} {'mean estimate':>14} {'<0':>4} {'>0':>4}")
            for k in METHODS:
                c = hits[k] / args.repeats
                se = math.sqrt(c * (1 - c) / args.repeats)
                print(f"  {k:<11} {c:>8.0%} ± {se:>4.0%} {np.median(widths[k]):>13.4f} {np.mean(estimates[k]):>+14.4f}"
                      f" {below[k]:>4} {above[k]:>4}")


if __name__ == "__main__":
    main()
