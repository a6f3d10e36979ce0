"""Coverage of the Goldilocks claim's 95% interval for T by KPE − T by ‖x1‖², on Gaussian features
whose quintiles' true Fréchet distances are known in closed form.

The report (``memorization.goldilocks_tests``) sorts the samples into quintiles by KPE and, as a
content control, by ‖x1‖²; T = min(FD_Q1, FD_Q5) − min(FD_Q2..Q4) of each split's FDs to the held-out
reference; the claim reads a paired basic bootstrap interval of the difference, the samples' rows
redrawn (each keeping both its quintiles), the reference held fixed. At the quick preset a quintile
has 200 of n = 1,000 samples, the reference m = 300 held-out rows, 200 resamples (the memorization
bootstrap capped at 200), D = 128 features.

Model: z ~ N(0, I_D) per sample, features f = A z (Σ = AAᵀ from ``fd_interval_coverage.population``'s
spectrum, trace 10); the reference rows are m more draws of f (so every FD is to N(0, Σ)).
- stand-in for KPE: s = u·z + τ e (u the first axis, the largest feature direction; e ~ N(0, 1)
  independent; τ sets how weakly the score tracks the features). Given s, z is Gaussian, so a
  quintile of s (its population quintile) has f-mean A u E[s|q]/(1+τ²) and covariance
  A (I − uuᵀ/(1+τ²) + uuᵀ Var[s|q]/(1+τ²)²) Aᵀ (truncated-normal moments): exact FDs.
- ‖x1‖² control: ‖z‖² (x1 is the image, f its features). A quintile of ‖z‖² ~ χ²_D has mean 0 and
  covariance c_q Σ with c_q = E[‖z‖²|q]/D = (F_{D+2}(b) − F_{D+2}(a)) / (F_D(b) − F_D(a)): FD =
  tr Σ (√c_q − 1)². Its end quintiles are the narrower and wider sets by construction.
The truth is T of the exact FDs by s minus T of those by ‖z‖² (population quintiles; the study's
quintiles are the samples' own, ``quintile_bins``).
``--spread-power k`` > 0 ties the features' spread to ‖z‖ harder: f = (‖z‖²/D)^(k/2) A z (k = 2: the
‖z‖² quintiles' spreads then differ about 1.7-fold, the "much wider/narrower" case of
``fd_paired_interval_coverage``); the reference law is then N(0, E[(‖z‖²/D)^(k+1)] Σ) (its exact
covariance; f is not Gaussian) and the truth a Monte-Carlo one, ``--truth-draws`` draws of f (each
quintile's sample mean and covariance, FD to the exact reference law; its own error is about
0.02 at the defaults: 2.690 against the exact 2.710 at k = 0, τ = 0).

Methods (both reflect about the point estimate, both use the library's T: ``interior_margin`` of
``fd_to_reference`` per quintile, resamples with fewer than two rows in a quintile dropped):
  basic      the report's now: rows of the samples redrawn, the reference fixed
  basic-2s   the same row redraws, and the reference's rows redrawn too in each resample (one
             redraw shared by both splits' ten FDs)

    OMP_NUM_THREADS=1 python benchmarks/goldilocks_interval_coverage.py [--repeats 40] \\
        [--taus 0 3] [--n 1000] [--m 300] [--dim 128] [--resamples 200] [--seed 0] \\
        [--spread-power 0] [--truth-draws 200000]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import linalg, stats

from kinetic_fm.studies.memorization import quintile_bins
from kinetic_fm.studies.output import fd_to_reference, feature_reference
from kinetic_fm.studies.verdicts import basic_bootstrap, interior_margin

METHODS = ("basic", "basic-2s")


def feature_map(dim: int, rng: np.random.Generator) -> np.ndarray:
    """(D, D) A with AAᵀ of eigenvalues ∝ 1/k (trace 10) in a random basis, its first column the
    largest direction."""
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    lam = 1.0 / np.arange(1, dim + 1)
    lam *= 10.0 / lam.sum()
    return basis * np.sqrt(lam)


def true_fd(mu: np.ndarray, cov: np.ndarray, sigma_root: np.ndarray, sigma_trace: float) -> float:
    """FD(N(mu, cov), N(0, Σ)) with Σ^½ given."""
    cross = linalg.sqrtm(sigma_root @ cov @ sigma_root).real
    return float(mu @ mu + np.trace(cov) + sigma_trace - 2 * np.trace(cross))


def true_difference(a: np.ndarray, tau: float) -> tuple[float, np.ndarray, np.ndarray]:
    """True T by s minus T by ‖z‖², and the (5,) true FDs of each split."""
    dim = a.shape[0]
    sigma = a @ a.T
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace = float(np.trace(sigma))
    u = np.zeros(dim)
    u[0] = 1.0
    var_s = 1.0 + tau ** 2
    edges = stats.norm.ppf(np.linspace(0, 1, 6))  # standardized quintile edges of s
    by_score = []
    for q in range(5):
        lo, hi = edges[q], edges[q + 1]
        p = 0.2
        phi_lo, phi_hi = stats.norm.pdf(lo), stats.norm.pdf(hi)
        lo_t = lo * phi_lo if np.isfinite(lo) else 0.0
        hi_t = hi * phi_hi if np.isfinite(hi) else 0.0
        mean_std = (phi_lo - phi_hi) / p
        var_std = 1.0 + (lo_t - hi_t) / p - mean_std ** 2
        mean_s, v_s = math.sqrt(var_s) * mean_std, var_s * var_std
        mu = a @ u * (mean_s / var_s)
        inner = np.eye(dim) - np.outer(u, u) / var_s + np.outer(u, u) * v_s / var_s ** 2
        by_score.append(true_fd(mu, a @ inner @ a.T, root, trace))
    chi_edges = stats.chi2.ppf(np.linspace(0, 1, 6), dim)
    upper = np.diff(stats.chi2.cdf(chi_edges, dim + 2))
    c = upper / np.diff(stats.chi2.cdf(chi_edges, dim))
    by_norm = trace * (np.sqrt(c) - 1) ** 2
    by_score = np.array(by_score)
    diff = float(interior_margin(by_score[None])[0] - interior_margin(by_norm[None])[0])
    return diff, by_score, by_norm


def features(z: np.ndarray, a: np.ndarray, power: float) -> np.ndarray:
    """(n, D) features A z, scaled by (‖z‖²/D)^(power/2)."""
    f = z @ a.T
    return f if power == 0 else f * ((z ** 2).sum(1, keepdims=True) / z.shape[1]) ** (power / 2)


def monte_carlo_difference(a: np.ndarray, tau: float, power: float, draws: int, rng) -> tuple:
    """True T by s minus T by ‖z‖² of ``features(power)`` from ``draws`` draws (quintiles at the draw's
    own quantiles; FDs to the exact law N(0, E[(‖z‖²/D)^(power+1)] Σ))."""
    dim = a.shape[0]
    z = rng.standard_normal((draws, dim))
    f = features(z, a, power)
    norm = (z ** 2).sum(1)
    score = z[:, 0] + tau * rng.standard_normal(draws)
    scale = np.prod([(dim + 2 * j) / dim for j in range(int(power) + 1)])  # E[(r²/D)^(k+1)], integer k
    sigma = scale * (a @ a.T)
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace = float(np.trace(sigma))

    def fds(values):
        bins = quintile_bins(values)[1]
        return np.array([true_fd(f[bins == q].mean(0), np.cov(f[bins == q], rowvar=False), root, trace)
                         for q in range(5)])

    by_score, by_norm = fds(score), fds(norm)
    diff = float(interior_margin(by_score[None])[0] - interior_margin(by_norm[None])[0])
    return diff, by_score, by_norm


def margin(feats: np.ndarray, rows: np.ndarray, bins: np.ndarray, reference) -> float:
    """T of the rows ``rows`` of ``feats`` split by ``bins`` (the rows' quintiles), as the report's."""
    groups = [rows[bins == q] for q in range(5)]
    if min(len(g) for g in groups) < 2:
        return float("nan")
    return float(interior_margin(np.array([[fd_to_reference(feats[g], reference) for g in groups]]))[0])


def intervals(feats, bins, control, ref, resamples: int, rng: np.random.Generator) -> tuple[float, dict]:
    """The point difference and each method's 95% (low, high)."""
    n, m = len(feats), len(ref)
    reference = feature_reference(ref)
    rows = np.arange(n)
    estimate = margin(feats, rows, bins, reference) - margin(feats, rows, control, reference)
    out = {}
    boot = rng.integers(0, n, size=(resamples, n))
    ref_boot = rng.integers(0, m, size=(resamples, m))
    for method in METHODS:
        values = []
        for idx, jdx in zip(boot, ref_boot):
            r = feature_reference(ref[jdx]) if method == "basic-2s" else reference
            values.append(margin(feats, idx, bins[idx], r) - margin(feats, idx, control[idx], r))
        values = np.array(values)
        values = basic_bootstrap(estimate, values[~np.isnan(values)])
        out[method] = tuple(np.quantile(values, [0.025, 0.975]))
    return estimate, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--m", type=int, default=300)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread-power", type=int, default=0)
    parser.add_argument("--truth-draws", type=int, default=200_000)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    a = feature_map(args.dim, rng)
    print(f"n={args.n} m={args.m} D={args.dim} resamples={args.resamples} repeats={args.repeats}")
    for tau in args.taus:
        if args.spread_power:
            truth, by_score, by_norm = monte_carlo_difference(a, tau, args.spread_power, args.truth_draws, rng)
        else:
            truth, by_score, by_norm = true_difference(a, tau)
        print(f"\ntau={tau}: true FDs by score {np.round(by_score, 3)}, by ‖z‖² {np.round(by_norm, 3)}; "
              f"true difference {truth:.4f}")
        hits = {k: 0 for k in METHODS}
        widths = {k: [] for k in METHODS}
        above = {k: 0 for k in METHODS}
        below = {k: 0 for k in METHODS}
        estimates = []
        start = time.time()
        for _ in range(args.repeats):
            z = rng.standard_normal((args.n, args.dim))
            feats = features(z, a, args.spread_power)
            ref = features(rng.standard_normal((args.m, args.dim)), a, args.spread_power)
            score = z[:, 0] + tau * rng.standard_normal(args.n)
            bins = quintile_bins(score)[1]
            control = quintile_bins((z ** 2).sum(1))[1]
            estimate, out = intervals(feats, bins, control, ref, args.resamples, rng)
            estimates.append(estimate)
            for k, (lo, hi) in out.items():
                hits[k] += lo <= truth <= hi
                widths[k].append(hi - lo)
                above[k] += lo > 0
                below[k] += hi < 0
        r = args.repeats
        print(f"  mean estimate {np.mean(estimates):.4f} (bias {np.mean(estimates) - truth:+.4f}); "
              f"{time.time() - start:.0f} s")
        for k in METHODS:
            cov = hits[k] / r
            print(f"  {k:9s} coverage {cov:.0%} ± {math.sqrt(cov * (1 - cov) / r):.0%}  "
                  f"median width {np.median(widths[k]):.4f}  low>0 {above[k]}/{r}  high<0 {below[k]}/{r}")


if __name__ == "__main__":
    main()
