"""Coverage of 95% intervals for one Fréchet distance, on Gaussian sets whose true FD is known.

The report's per-quintile (Goldilocks) and per-setting (KTS) FD whiskers were basic bootstrap
intervals (the set's rows redrawn, the reference held fixed) and are now "jack-t" below; the
sibling ``fd_interval_coverage_real.py`` checks them on a real judge's features. At the quick preset's sizes
(digits, 128 classifier features) a quintile has n = 200 rows against m = 300 held-out rows
(200 resamples), a KTS setting n = 500 against the m = 1,497 training rows (500 resamples).
Each repeat draws a fresh set X ~ N(μ1, Σ1) of n rows and reference Y ~ N(μ2, Σ2) of m rows,
and every method's interval is checked against the closed-form FD of the two Gaussians
(‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1^½ Σ2 Σ1^½)^½), float64, scipy's sqrtm). Σ2 has a power-law
spectrum (λ_i ∝ 1/i, tr Σ2 = 10) in a random basis; Σ1 is Σ2 scaled by s² and rotated a little
(less for small FDs; FD 0: the same law), μ1 − μ2 chosen so that the true FD is each ``--fds``
value. The jackknife groups here are a random split; the report's are rows k, k + g, ... (the same
law for independent rows).

Methods (R resamples of X; "two-sample" also redraws Y in each):
  basic        2θ̂ − the resamples' quantiles (the report's now)
  percentile   the resamples' quantiles
  BCa          percentile with bias and acceleration (acceleration from a delete-a-group jackknife of X)
  basic-2s     basic, X and Y both redrawn (the reference's own bias and noise then count)
  jack-t       delete-a-group jackknife (g groups, each deleting 1/g of X and of Y) bias-corrected
               estimate ± t_{g−1} × its jackknife standard error, cut at 0 (the report's since this script)
  jack-shift   the jackknife-corrected estimate with basic-2s's spread about its resamples' median
  extrap       FD∞-style (Chong & Forsyth 2020): FD of both sets subsampled to fractions f in [0.5, 1]
               (without replacement), a line in 1/f extrapolated to 1/f = 0; basic-2s's spread about it

Prints coverage (share of repeats whose interval holds the true FD; ± its binomial standard error),
the median width, and the mean estimate (plain, and the corrected one where there is one).

    OMP_NUM_THREADS=1 python benchmarks/fd_interval_coverage.py [--repeats 40] [--fds 0.1 0.5 2 8] \\
        [--sizes quintile setting] [--dim 128] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import linalg, stats

SIZES = {"quintile": (200, 300, 200), "setting": (500, 1497, 500)}  # n, m, resamples
METHODS = ("basic", "percentile", "BCa", "basic-2s", "jack-t", "jack-shift", "extrap")
GROUPS = 10
FRACTIONS = (0.5, 0.625, 0.75, 0.875)
DRAWS_PER_FRACTION = 3


def true_fd(mu1, s1, mu2, s2) -> float:
    root = linalg.sqrtm(s1)
    cross = linalg.sqrtm(root @ s2 @ root)
    # round-off left −1e-15 for equal laws, which an interval cut at 0 would "miss"
    return max(float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross).real), 0.0)


def population(dim: int, fd: float, rng: np.random.Generator):
    """(μ1, Σ1, μ2, Σ2) with FD(N(μ1, Σ1), N(μ2, Σ2)) = ``fd``: Σ1 a slightly wider, slightly rotated
    Σ2 (contributing at most half of ``fd``), the rest from a mean shift."""
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    lam = 1.0 / np.arange(1, dim + 1)
    lam *= 10.0 / lam.sum()
    s2 = (basis * lam) @ basis.T
    skew = rng.standard_normal((dim, dim)) * 0.02 * min(1.0, math.sqrt(fd / 0.5))  # small FDs: a smaller turn
    turn = linalg.expm(skew - skew.T)
    mu2 = np.zeros(dim)

    def shape_only(scale):
        s1 = scale ** 2 * turn @ s2 @ turn.T
        return s1, true_fd(mu2, s1, mu2, s2)

    lo, hi = 1.0, 2.0  # scale whose shape part is half of fd (bisection: it grows with the scale)
    for _ in range(60 if fd > 0 else 0):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if shape_only(mid)[1] < fd / 2 else (lo, mid)
    s1, shape_fd = shape_only(lo)
    direction = rng.standard_normal(dim)
    mu1 = direction / np.linalg.norm(direction) * math.sqrt(max(fd - shape_fd, 0.0))
    s1 = 0.5 * (s1 + s1.T)
    return mu1, s1, mu2, s2, true_fd(mu1, s1, mu2, s2)


class Reference:
    """N(mean, cov) of rows with its square root, for many FDs to it (the report's recipe)."""

    def __init__(self, rows: np.ndarray):
        self.mean = rows.mean(0)
        cov = np.cov(rows, rowvar=False)
        w, v = np.linalg.eigh(cov)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        self.trace = float(np.trace(cov))

    def fd(self, rows: np.ndarray) -> float:
        mu, cov = rows.mean(0), np.cov(rows, rowvar=False)
        middle = self.root @ cov @ self.root
        eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
        diff = mu - self.mean
        return max(float(diff @ diff + self.trace + np.trace(cov) - 2 * np.sqrt(np.clip(eig, 0, None)).sum()), 0.0)


def fd(x: np.ndarray, y: np.ndarray) -> float:
    return Reference(y).fd(x)


def intervals(x: np.ndarray, y: np.ndarray, resamples: int, rng: np.random.Generator) -> dict:
    """Each method's (low, high, estimate) for FD(X, Y) at 95%."""
    n, m = len(x), len(y)
    ref = Reference(y)
    theta = ref.fd(x)
    one = np.array([ref.fd(x[rng.integers(0, n, n)]) for _ in range(resamples)])
    both = np.array([fd(x[rng.integers(0, n, n)], y[rng.integers(0, m, m)]) for _ in range(resamples)])
    out = {}
    q1 = np.quantile(one, [0.025, 0.975])
    out["basic"] = (2 * theta - q1[1], 2 * theta - q1[0], theta)
    out["percentile"] = (q1[0], q1[1], theta)
    q2 = np.quantile(both, [0.025, 0.975])
    out["basic-2s"] = (2 * theta - q2[1], 2 * theta - q2[0], theta)
    below, above = np.median(both) - q2[0], q2[1] - np.median(both)  # the spread basic-2s reflects

    # delete-a-group jackknife over both sets (each group deletes 1/g of X's rows and of Y's)
    gx, gy = np.array_split(rng.permutation(n), GROUPS), np.array_split(rng.permutation(m), GROUPS)
    leave = np.array([fd(np.delete(x, gx[k], 0), np.delete(y, gy[k], 0)) for k in range(GROUPS)])
    corrected = GROUPS * theta - (GROUPS - 1) * leave.mean()
    se = math.sqrt((GROUPS - 1) / GROUPS * ((leave - leave.mean()) ** 2).sum())
    t = stats.t.ppf(0.975, GROUPS - 1)
    out["jack-t"] = (max(corrected - t * se, 0.0), max(corrected + t * se, 0.0), corrected)  # no FD is negative
    out["jack-shift"] = (corrected - above, corrected + below, corrected)

    # BCa on X's resamples, acceleration from the jackknife of X alone (groups)
    leave_x = np.array([ref.fd(np.delete(x, gx[k], 0)) for k in range(GROUPS)])
    d = leave_x.mean() - leave_x
    accel = (d ** 3).sum() / (6 * ((d ** 2).sum()) ** 1.5) if (d ** 2).sum() > 0 else 0.0
    z0 = stats.norm.ppf(np.clip((one < theta).mean() + 0.5 * (one == theta).mean(), 1e-6, 1 - 1e-6))
    ends = []
    for a in (0.025, 0.975):
        z = stats.norm.ppf(a)
        ends.append(stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))))
    qb = np.quantile(one, ends)
    out["BCa"] = (qb[0], qb[1], theta)

    # FD∞-style: a line in 1/f through subsampled FDs, extrapolated to 1/f = 0
    inv, values = [1.0], [theta]
    for f in FRACTIONS:
        for _ in range(DRAWS_PER_FRACTION):
            xs = x[rng.choice(n, round(f * n), replace=False)]
            ys = y[rng.choice(m, round(f * m), replace=False)]
            inv.append(1 / f)
            values.append(fd(xs, ys))
    slope, intercept = np.polyfit(inv, values, 1)
    # the line's value at 1/f = 0, taken as the FD of infinitely many rows of both sets
    out["extrap"] = (intercept - above, intercept + below, intercept)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--fds", type=float, nargs="+", default=[0.1, 0.5, 2.0, 8.0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--resamples", type=int, default=None, help="override the report's resample count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for size in args.sizes:
        n, m, resamples = SIZES[size]
        resamples = args.resamples or resamples
        for target in args.fds:
            mu1, s1, mu2, s2, truth = population(args.dim, target, rng)
            l1, l2 = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
            hits = {k: 0 for k in METHODS}
            widths = {k: [] for k in METHODS}
            estimates = {k: [] for k in METHODS}
            start = time.perf_counter()
            for _ in range(args.repeats):
                x = mu1 + rng.standard_normal((n, args.dim)) @ l1.T
                y = mu2 + rng.standard_normal((m, args.dim)) @ l2.T
                for k, (low, high, est) in intervals(x, y, resamples, rng).items():
                    hits[k] += low <= truth <= high
                    widths[k].append(high - low)
                    estimates[k].append(est)
            print(f"\n{size}: n = {n}, reference m = {m}, D = {args.dim}, {resamples} resamples, "
                  f"{args.repeats} repeats, true FD {truth:.3f} ({time.perf_counter() - start:.0f} s)")
            print(f"  {'method':<11} {'coverage':>15} {'median width':>13} {'mean estimate':>14}")
            for k in METHODS:
                c = hits[k] / args.repeats
                se = math.sqrt(c * (1 - c) / args.repeats)
                print(f"  {k:<11} {c:>8.0%} ± {se:>4.0%} {np.median(widths[k]):>13.3f} {np.mean(estimates[k]):>14.3f}")


if __name__ == "__main__":
    main()
