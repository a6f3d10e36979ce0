"""Coverage of 95 % intervals for Spearman's and Pearson's correlation at small n.

``kfm.spearman`` / ``kfm.pearson`` give a bootstrap interval over (x, y) pairs: ``ci_method="auto"``
is BCa up to n = 2000, else percentile; "basic" on request. The studies report ρ(KPE, margin) and
the like with these intervals at n of tens to a few hundred. This script draws many data sets whose
population correlation is known and counts how often each method's interval holds it.

Cases (``--cases``): bivariate normal with ρ = 0, 0.5, 0.8 (Pearson's population value ρ, Spearman's
(6/π)·asin(ρ/2)); "lognormal": (exp Z1, exp Z2) of a normal pair with ρ = 0.5 (a monotone transform
with a heavy right tail: Pearson's population value (e^ρ − 1)/(e − 1), Spearman's unchanged); "t3": a
bivariate t with 3 degrees of freedom and ρ = 0.5 (heavy tails, no fourth moment: Pearson's value is ρ,
Spearman's is not in closed form and is taken from one seeded draw of 4 million pairs).

Methods. The library's, computed here as SciPy's ``bootstrap`` computes them (same formulas, B
resamples of the pairs; the resamples' ranks for Spearman; BCa's acceleration from the
leave-one-out jackknife):
  BCa          bias-corrected and accelerated percentile (the library's "auto" at these n)
  percentile   the resamples' 2.5 % and 97.5 % quantiles
  basic        2r − those quantiles, cut at ±1
Candidates:
  pct-z        percentile of atanh(r*), back-transformed (equals percentile up to the interpolation
               between two order statistics: quantiles commute with a monotone map)
  basic-z      basic on the z scale: tanh(2·atanh r − the quantiles of atanh r*)
  boot-t-z     studentized on the z scale: t* = (atanh r* − atanh r) / se*, se from the delta method
               (the influence function uv − r(u² + v²)/2 of standardized u, v; of the ranks for
               Spearman), interval tanh(atanh r − t*_{97.5 %}·se, atanh r − t*_{2.5 %}·se)
  fisher       no resampling: tanh(atanh r ± 1.96·s), s² = 1/(n − 3) (Pearson) or the Bonett–Wright
               (1 + r²/2)/(n − 3) (Spearman)

Every method sees the same data sets and the same resamples; each run first checks that the library's
three come out as ``kfm.spearman`` / ``kfm.pearson`` give them on the same resamples. Prints coverage
in % (± its binomial standard error) and, with ``--widths``, the median width.

    OMP_NUM_THREADS=1 python benchmarks/correlation_interval_coverage.py [--repeats 2000] \\
        [--bootstrap 400] [--sizes 20 60 200] [--cases normal0 normal0.5 normal0.8 lognormal t3] \\
        [--seed 0] [--quick] [--widths]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

from kinetic_fm.metrics.stats import _ranks_of_codes

CASES = ("normal0", "normal0.5", "normal0.8", "lognormal", "t3")
METHODS = ("BCa", "percentile", "basic", "pct-z", "basic-z", "boot-t-z", "fisher")
STATISTICS = ("spearman", "pearson")
CONFIDENCE = 0.95
_ELEMENTS = 3_000_000  # data sets x resamples x n held at once
_T_DOF = 3


def draw(case: str, rng: np.random.Generator, size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of shape ``size`` (data sets, n) from ``case``."""
    rho = float(case[len("normal"):]) if case.startswith("normal") else 0.5
    z1 = rng.standard_normal(size)
    z2 = rho * z1 + math.sqrt(1 - rho * rho) * rng.standard_normal(size)
    if case == "lognormal":
        return np.exp(z1), np.exp(z2)
    if case == "t3":
        scale = np.sqrt(_T_DOF / rng.chisquare(_T_DOF, size))  # one chi-square per pair: elliptical
        return z1 * scale, z2 * scale
    return z1, z2


def population(case: str, seed: int) -> dict[str, float]:
    """The population Spearman and Pearson correlations of ``case``."""
    rho = float(case[len("normal"):]) if case.startswith("normal") else 0.5
    normal_spearman = 6 / math.pi * math.asin(rho / 2)
    if case == "lognormal":
        return {"spearman": normal_spearman, "pearson": (math.exp(rho) - 1) / (math.e - 1)}
    if case == "t3":
        x, y = draw(case, np.random.default_rng(seed + 10_007), (4_000_000,))
        rx, ry = rankdata(x), rankdata(y)
        return {"spearman": float(np.corrcoef(rx, ry)[0, 1]), "pearson": rho}
    return {"spearman": normal_spearman, "pearson": rho}


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    return (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))


def _delta_se_z(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Delta-method standard error of atanh r along the last axis: sqrt(mean(IF²)/n)/(1 − r²)."""
    n = x.shape[-1]
    u = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    v = (y - y.mean(-1, keepdims=True)) / y.std(-1, keepdims=True)
    influence = u * v - r[..., None] * (u * u + v * v) / 2
    return np.sqrt((influence ** 2).mean(-1) / n) / (1 - r * r)


def _leave_one_out_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(D, n) Pearson's r of each data set without pair i (sums less pair i's terms)."""
    m = x.shape[-1] - 1
    x = x - x.mean(-1, keepdims=True)  # centred: the sums below lose nothing to cancellation
    y = y - y.mean(-1, keepdims=True)
    sx, sy = x.sum(-1, keepdims=True) - x, y.sum(-1, keepdims=True) - y
    sxx = (x * x).sum(-1, keepdims=True) - x * x
    syy = (y * y).sum(-1, keepdims=True) - y * y
    sxy = (x * y).sum(-1, keepdims=True) - x * y
    return (sxy - sx * sy / m) / np.sqrt((sxx - sx * sx / m) * (syy - sy * sy / m))


def _leave_one_out_spearman(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """(D, n) Spearman's ρ without pair i, from (D, n) tie-free ranks: the others' ranks above i's drop
    by one; ρ = 1 − 6Σd²/(m(m² − 1)), m = n − 1."""
    m = rx.shape[-1] - 1
    ax = rx[:, None, :] - (rx[:, None, :] > rx[:, :, None])
    ay = ry[:, None, :] - (ry[:, None, :] > ry[:, :, None])
    d = ax - ay
    d2 = (d * d).sum(-1) - np.diagonal(d * d, axis1=1, axis2=2)
    return 1 - 6 * d2 / (m * (m * m - 1))


def _quantiles(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(D, L) linear-interpolated quantiles of each row of (D, B) ``values`` at (D, L) ``levels``
    (np.percentile's default, which SciPy's bootstrap uses), per row."""
    ordered = np.sort(values, axis=-1)
    b = ordered.shape[-1]
    position = np.clip(levels, 0, 1) * (b - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, b - 1)
    frac = position - low
    lo_v = np.take_along_axis(ordered, low, -1)
    hi_v = np.take_along_axis(ordered, high, -1)
    return lo_v + frac * (hi_v - lo_v)


def intervals(stat: str, x: np.ndarray, y: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's (D, 2) interval for (D, n) data sets, resampled by (D, B, n) ``index``."""
    d, n = x.shape
    b = index.shape[1]
    tail = (1 - CONFIDENCE) / 2
    if stat == "spearman":
        rx, ry = rankdata(x, axis=-1) - 1, rankdata(y, axis=-1) - 1  # tie-free codes 0..n−1
        codes_x = np.take_along_axis(rx[:, None, :], index, -1).astype(np.intp)
        codes_y = np.take_along_axis(ry[:, None, :], index, -1).astype(np.intp)
        xs, ys = _ranks_of_codes(codes_x, n), _ranks_of_codes(codes_y, n)
        x0, y0 = rx, ry
        jack = _leave_one_out_spearman(rx + 1, ry + 1)
    else:
        xs = np.take_along_axis(x[:, None, :], index, -1)
        ys = np.take_along_axis(y[:, None, :], index, -1)
        x0, y0 = x, y
        jack = _leave_one_out_pearson(x, y)
    r = _pearson(x0, y0)
    rs = np.clip(_pearson(xs, ys), -1 + 1e-12, 1 - 1e-12)
    levels = np.broadcast_to(np.array([tail, 1 - tail]), (d, 2))
    q = _quantiles(rs, levels)
    out = {"percentile": q, "basic": np.clip(2 * r[:, None] - q[:, ::-1], -1, 1)}

    share_below = ((rs < r[:, None]).sum(-1) + (rs <= r[:, None]).sum(-1)) / (2 * b)
    z0 = ndtri(share_below)[:, None]
    dev = jack.mean(-1, keepdims=True) - jack
    accel = ((dev ** 3).sum(-1) / (6 * ((dev ** 2).sum(-1)) ** 1.5))[:, None]
    z_alpha = ndtri(levels)
    out["BCa"] = _quantiles(rs, ndtr(z0 + (z0 + z_alpha) / (1 - accel * (z0 + z_alpha))))

    z, zs = np.arctanh(np.clip(r, -1 + 1e-12, 1 - 1e-12)), np.arctanh(rs)
    qz = _quantiles(zs, levels)
    out["pct-z"] = np.tanh(qz)
    out["basic-z"] = np.tanh(2 * z[:, None] - qz[:, ::-1])
    se = _delta_se_z(x0, y0, r)
    ses = _delta_se_z(xs, ys, rs)
    qt = _quantiles((zs - z[:, None]) / ses, levels)
    out["boot-t-z"] = np.tanh(z[:, None] - qt[:, ::-1] * se[:, None])
    s = np.sqrt((1 + r * r / 2 if stat == "spearman" else np.ones_like(r)) / (n - 3))
    out["fisher"] = np.tanh(z[:, None] + np.array([-1, 1]) * ndtri(1 - tail) * s[:, None])
    return out


def check_against_the_library(seed: int) -> None:
    """The script's BCa, percentile and basic intervals are the library's on the same resamples
    (SciPy's bootstrap draws ``rng.integers(0, n, (B, n))`` from the seeded generator)."""
    from kinetic_fm.metrics.stats import pearson, spearman

    rng = np.random.default_rng(seed)
    for case in ("normal0.5", "t3"):
        for n in (20, 60):
            x, y = draw(case, rng, (1, n))
            index = np.random.default_rng(seed + n).integers(0, n, (1, 400, n))
            for stat, correlation in (("spearman", spearman), ("pearson", pearson)):
                ours = intervals(stat, x, y, index)
                for m in ("BCa", "percentile", "basic"):
                    c = correlation(x[0], y[0], bootstrap=400, permutations=0, seed=seed + n, ci_method=m)
                    np.testing.assert_allclose(ours[m][0], [c.ci_low, c.ci_high], rtol=0, atol=1e-12,
                                               err_msg=f"{stat} {case} n = {n} {m}")
    print("# BCa, percentile and basic agree with kfm.spearman / kfm.pearson on the same resamples")


def run(args: argparse.Namespace) -> None:
    check_against_the_library(args.seed)
    print(f"# {args.repeats} data sets per cell, B = {args.bootstrap}, 95 % intervals, seed {args.seed}")
    widths = "; median width after /" if args.widths else ""
    print(f"# coverage % (± binomial se); value: the population correlation{widths}")
    header = f"{'stat':9s} {'case':10s} {'n':>4s} {'value':>7s} " + " ".join(f"{m:>14s}" for m in METHODS)
    print(header)
    for stat in STATISTICS:
        for case in args.cases:
            truth = population(case, args.seed)[stat]
            for n in args.sizes:
                rng = np.random.default_rng([args.seed, CASES.index(case), n])
                covered = {m: 0 for m in METHODS}
                widths = {m: [] for m in METHODS}
                chunk = max(1, _ELEMENTS // (args.bootstrap * n))
                done = 0
                start = time.perf_counter()
                while done < args.repeats:
                    d = min(chunk, args.repeats - done)
                    x, y = draw(case, rng, (d, n))
                    index = rng.integers(0, n, (d, args.bootstrap, n))
                    for m, ci in intervals(stat, x, y, index).items():
                        covered[m] += int(((ci[:, 0] <= truth) & (truth <= ci[:, 1])).sum())
                        widths[m].append(ci[:, 1] - ci[:, 0])
                    done += d
                cells = []
                for m in METHODS:
                    p = covered[m] / args.repeats
                    cell = f"{100 * p:5.1f} ±{100 * math.sqrt(p * (1 - p) / args.repeats):3.1f}"
                    if args.widths:
                        cell += f" /{np.median(np.concatenate(widths[m])):.2f}"
                    cells.append(f"{cell:>14s}")
                print(f"{stat:9s} {case:10s} {n:4d} {truth:7.4f} " + " ".join(cells)
                      + f"   ({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000, help="data sets per cell")
    parser.add_argument("--bootstrap", type=int, default=400, help="resamples per data set")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 60, 200])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widths", action="store_true", help="also print each method's median width")
    parser.add_argument("--quick", action="store_true", help="200 data sets, B = 200, n = 20 and 60, two cases")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.bootstrap, args.sizes, args.cases = 200, 200, [20, 60], ["normal0.5", "t3"]
    run(args)


if __name__ == "__main__":
    main()
