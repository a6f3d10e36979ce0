"""Coverage of the Goldilocks claim's 95% interval for T by KPE − T by ‖x1‖², on Gaussian features
whose quintiles' true Fréchet distances are known in closed form.

The report (``memorization.goldilocks_tests``) sorts the samples into quintiles by KPE and, as a
content control, by ‖x1‖²; T = min(FD_Q1, FD_Q5) − min(FD_Q2..Q4) of each split's FDs to the held-out
reference; the claim reads a paired bootstrap interval of the difference, the samples' rows
redrawn (each keeping both its quintiles) and the reference's too (``jfd+boot`` below). At the quick preset a quintile
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

Methods (the basic ones reflect about the point estimate, all use the library's T: ``interior_margin``
of ``fd_to_reference`` per quintile, resamples with fewer than two rows in a quintile dropped):
  basic      rows of the samples redrawn, the reference fixed (the report's until the 36th session)
  basic-2s   the same row redraws, and the reference's rows redrawn too in each resample (one
             redraw shared by both splits' ten FDs; the report's in the 36th session)
  plain+boot basic-2s's spread about its resamples' mean, centred on the plain point below
             (basic-2s is the same spread centred on the bootstrap bias-corrected point, boot-bc)
  jfd+boot   the same, centred on the jack-fd point (the report's now)
  jT+boot    the same, centred on the jack-T point
  jack-t     jack-T ± t(g−1)·(its jackknife standard error)
Points (bias and RMSE against the truth, printed with each quintile's mean FD error by split):
  plain      T by s − T by ‖z‖² of the plug-in FDs (the report's T)
  boot-bc    2·plain − mean of the basic-2s resamples (the basic-2s interval's centre)
  jack-fd    T of each quintile's delete-a-group jackknife FD (g = ``JACKKNIFE_GROUPS`` groups of the
             quintile's rows and of the reference's, as the bar chart's whiskers), by s minus by ‖z‖²
  jack-T     the same jackknife of the difference itself: g·plain − (g − 1)·mean_k of its leave-group-k values
The plain point's bias splits into the FDs' own bias ("FD part": T of the true FDs plus each
quintile's mean error, minus the truth) and the rest ("min/edges part": the minima of noisy FDs sit
below the minimum of their means, and the samples' own quintile edges are not the population's).

    OMP_NUM_THREADS=1 python benchmarks/goldilocks_interval_coverage.py [--repeats 40] \\
        [--taus 0 3] [--n 1000] [--m 300] [--dim 128] [--resamples 200] [--seed 0] \\
        [--spread-power 0] [--truth-draws 200000] [--methods basic basic-2s plain+boot jfd+boot jT+boot jack-t]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import linalg, stats

from kinetic_fm.studies.memorization import quintile_bins, quintile_replicates
from kinetic_fm.studies.output import (JACKKNIFE_GROUPS, fd_to_reference, feature_reference, full_reference,
                                      jackknife_reference, replicate_fds)
from kinetic_fm.studies.verdicts import basic_bootstrap, interior_margin

METHODS = ("basic", "basic-2s", "plain+boot", "jfd+boot", "jT+boot", "jack-t")
POINTS = ("plain", "boot-bc", "jack-fd", "jack-T")


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


def intervals(feats, bins, control, ref, resamples: int, rng: np.random.Generator,
              methods=METHODS) -> tuple[dict, dict, np.ndarray]:
    """Each point's value (``POINTS``), each method's 95% (low, high), and the (2, 2, 5) plug-in
    and jackknife FDs of each quintile by s and by ‖z‖²."""
    n, m = len(feats), len(ref)
    # the library's jackknife of each quintile (the report's bars and jack-fd point): plain FD and the
    # g FDs leaving out group k of the quintile's rows and of the reference's; the reference fitted once
    # for both splits, as the study does
    fits = jackknife_reference(ref)
    reference = full_reference(ref, fits)
    replicates = [quintile_replicates(feats, split, ref, fits) for split in (bins, control)]
    if any(fd_k is None for split in replicates for _, fd_k in split):
        raise SystemExit(f"a quintile of n = {n} or the reference's m = {m} rows has too few rows for the "
                         f"jackknife at D = {feats.shape[1]}: raise --n / --m or lower --dim")
    plain_fds = np.array([[theta for theta, _ in split] for split in replicates])  # (2, 5)
    estimate = float(interior_margin(plain_fds[:1])[0] - interior_margin(plain_fds[1:])[0])
    g = JACKKNIFE_GROUPS
    left_out = np.array([[fd_k for _, fd_k in split] for split in replicates]).transpose(2, 0, 1)  # (g, 2, 5)
    jack_fds = np.array([replicate_fds(split) for split in replicates])
    diff_k = interior_margin(left_out[:, 0]) - interior_margin(left_out[:, 1])  # (g,)
    points = {"plain": estimate,
              "jack-fd": float(interior_margin(jack_fds[:1])[0] - interior_margin(jack_fds[1:])[0]),
              "jack-T": float(g * estimate - (g - 1) * diff_k.mean())}
    out = {}
    boot = rng.integers(0, n, size=(resamples, n))
    ref_boot = rng.integers(0, m, size=(resamples, m))
    drawn = {}
    for method in ("basic", "basic-2s"):
        if method == "basic" and "basic" not in methods:
            continue
        values = []
        for idx, jdx in zip(boot, ref_boot):
            r = feature_reference(ref[jdx]) if method == "basic-2s" else reference
            values.append(margin(feats, idx, bins[idx], r) - margin(feats, idx, control[idx], r))
        values = np.array(values)
        drawn[method] = values = values[~np.isnan(values)]
        out[method] = tuple(np.quantile(basic_bootstrap(estimate, values), [0.025, 0.975]))
    two_sided = drawn["basic-2s"]
    points["boot-bc"] = 2 * estimate - float(two_sided.mean())
    low_dev, high_dev = np.quantile(two_sided, [0.025, 0.975]) - two_sided.mean()
    for method, point in (("plain+boot", estimate), ("jfd+boot", points["jack-fd"]), ("jT+boot", points["jack-T"])):
        out[method] = (point - high_dev, point - low_dev)
    se = math.sqrt((g - 1) / g * ((diff_k - diff_k.mean()) ** 2).sum())
    t = float(stats.t.ppf(0.975, g - 1))
    out["jack-t"] = (points["jack-T"] - t * se, points["jack-T"] + t * se)
    return points, {k: v for k, v in out.items() if k in methods}, np.array([plain_fds, jack_fds])


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
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="intervals to score (basic-2s is always drawn: the others use its resamples)")
    args = parser.parse_args()
    methods = tuple(args.methods)
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
        hits = {k: 0 for k in methods}
        widths = {k: [] for k in methods}
        above = {k: 0 for k in methods}
        below = {k: 0 for k in methods}
        estimates = {k: [] for k in POINTS}
        fds = []
        start = time.time()
        for _ in range(args.repeats):
            z = rng.standard_normal((args.n, args.dim))
            feats = features(z, a, args.spread_power)
            ref = features(rng.standard_normal((args.m, args.dim)), a, args.spread_power)
            score = z[:, 0] + tau * rng.standard_normal(args.n)
            bins = quintile_bins(score)[1]
            control = quintile_bins((z ** 2).sum(1))[1]
            points, out, quintile_fd = intervals(feats, bins, control, ref, args.resamples, rng, methods)
            for k in POINTS:
                estimates[k].append(points[k])
            fds.append(quintile_fd)
            for k, (lo, hi) in out.items():
                hits[k] += lo <= truth <= hi
                widths[k].append(hi - lo)
                above[k] += lo > 0
                below[k] += hi < 0
        r = args.repeats
        true_fds = np.array([by_score, by_norm])
        fd_error = np.mean(fds, axis=0) - true_fds  # (2 plug-in/jackknife, 2 splits, 5)
        print(f"  {time.time() - start:.0f} s; mean FD error by quintile (plug-in | jackknife):")
        for s, name in enumerate(("score", "‖z‖²")):
            print(f"    by {name:5s} {np.round(fd_error[0, s], 3)} | {np.round(fd_error[1, s], 3)}")
        smooth = float(interior_margin(true_fds[:1] + fd_error[0, :1])[0]
                       - interior_margin(true_fds[1:] + fd_error[0, 1:])[0]) - truth
        plain_bias = np.mean(estimates["plain"]) - truth
        print(f"  plain bias {plain_bias:+.4f} = FD part {smooth:+.4f} + min/edges part {plain_bias - smooth:+.4f}")
        for k in POINTS:
            e = np.array(estimates[k]) - truth
            print(f"  point {k:8s} bias {e.mean():+.4f} ± {e.std(ddof=1) / math.sqrt(r):.4f}  "
                  f"sd {e.std(ddof=1):.4f}  RMSE {math.sqrt((e ** 2).mean()):.4f}")
        for k in methods:
            cov = hits[k] / r
            print(f"  {k:9s} coverage {cov:.0%} ± {math.sqrt(cov * (1 - cov) / r):.0%}  "
                  f"median width {np.median(widths[k]):.4f}  low>0 {above[k]}/{r}  high<0 {below[k]}/{r}")


if __name__ == "__main__":
    main()
