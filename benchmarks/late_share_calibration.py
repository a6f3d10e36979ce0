"""Calibration and power of intervals for the late-spike claim's share R = Σ late / Σ energy.

``kfm reproduce`` calls the late spike "reproduced" when the interval's low end lies above one half,
"not reproduced" when its high end lies below (one subset: 2.5% each side). This script simulates
subsets of n samples whose per-sample energies follow a law below and whose per-sample shares
after t = 0.9 have mean ``share``, so that the batch's expected share E[late] / E[energy] is
``share``; at ``share`` = 0.5 it counts how often each interval's low end lies above one half
(false "reproduced") and its high end below (false "not reproduced"), elsewhere how often the low
end lies above one half (power). Every method sees the same data and, where it resamples, the same
bootstrap indices (``np.random.default_rng(seed).integers(0, n, (resamples, n))``, as the
bootstrap-t ``late_share_interval`` of commit 128b2ed drew them).

Laws of the energies (shares Beta(κ·share, κ·(1 − share)), κ = 4 unless said):
  efm       Gamma(32, 1), as exact EFM's KPE ≈ ½‖x1 − x0‖² at D = 64
  efm-U     Gamma(32, 1), U-shaped shares (κ = 1)
  ln0.5, ln1, ln1.5   lognormal(0, σ)
  ln1-U     lognormal(0, 1), U-shaped shares
  outliers  Gamma(32, 1), each sample 100× with probability 2% (a few huge outliers)
  skewed    lognormal(0, 1); shares Beta(2, 8) (mean 0.2) with probability w, else Beta(19, 1)
            (mean 0.95), w chosen for the mean share: an asymmetric null

Methods (each two-sided at 95%, so 2.5% per side):
  boot-t        bootstrap-t with the ratio's jackknife SE (late_share_interval's in commit 128b2ed)
  boot-t logit  the same on the logit scale (SE by the delta method, se / (R(1 − R)))
  BCa           bias-corrected and accelerated percentile interval (jackknife acceleration)
  Wald          R ± z·se (jackknife se)
  Wald logit    expit(logit R ± z·se / (R(1 − R)))
  Fieller       the shipped late_share_interval: Fieller's interval for the ratio of means
                Σ late / Σ energy with Student t(n − 1)
                quantiles: the ρ whose d_i = late_i − ρ·energy_i have a mean that a one-sample
                t-test does not reject; its low end passes one half iff the t-test of
                late − early > 0 rejects one-sided at 2.5%

    python benchmarks/late_share_calibration.py [--n 32 128 500 2000] [--laws ...] [--shares 0.5 0.55 0.6 0.7]
        [--null-reps 2000] [--power-reps 400] [--resamples 1000] [--first-rep 0] [--out results.jsonl]

Seeds: the data of cell (law, n, share) rep r come from default_rng([law index, n, round(1000·share), r]),
its bootstrap from default_rng(r).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from scipy import stats

from kinetic_fm.studies.memorization import late_share_interval


LAWS = ["efm", "efm-U", "ln0.5", "ln1", "ln1.5", "ln1-U", "outliers", "skewed"]
METHODS = ["boot-t", "boot-t logit", "BCa", "Wald", "Wald logit", "Fieller"]


def draw(law: str, n: int, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(late, energy), each (n,), of one simulated subset whose expected share is ``share``."""
    kappa = 1.0 if law.endswith("-U") else 4.0
    if law.startswith("efm") or law == "outliers":
        energy = rng.gamma(32.0, 1.0, n)
        if law == "outliers":
            energy = energy * np.where(rng.random(n) < 0.02, 100.0, 1.0)
    else:
        sigma = {"ln0.5": 0.5, "ln1": 1.0, "ln1.5": 1.5, "ln1-U": 1.0, "skewed": 1.0}[law]
        energy = rng.lognormal(0.0, sigma, n)
    if law == "skewed":
        w = (0.95 - share) / 0.75
        shares = np.where(rng.random(n) < w, rng.beta(2.0, 8.0, n), rng.beta(19.0, 1.0, n))
    else:
        shares = rng.beta(kappa * share, kappa * (1 - share), n)
    return energy * shares, energy


def share_and_se(late: np.ndarray, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R over the last axis, its jackknife SE and the leave-one-out ratios."""
    n = late.shape[-1]
    total_late, total = late.sum(-1, keepdims=True), energy.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = (total_late - late) / (total - energy)
    spread = ((loo - loo.mean(-1, keepdims=True)) ** 2).sum(-1)
    return total_late[..., 0] / total[..., 0], np.sqrt((n - 1) / n * spread), loo


def tail_quantiles(t: np.ndarray, tail: float) -> tuple[float, float]:
    """The ``tail`` and 1 − ``tail`` quantiles of sorted ``t``; where a neighbour is ±inf (NaN from
    the interpolation), the neighbour on the tail's side: the bootstrap-t interval's rule, kept
    here so that the script measures it whatever ``late_share_interval`` computes."""
    with np.errstate(invalid="ignore"):
        q = np.quantile(t, [tail, 1 - tail])
    position = np.array([tail, 1 - tail]) * (len(t) - 1)
    outer = np.array([t[int(np.floor(position[0]))], t[int(np.ceil(position[1]))]])
    q = np.where(np.isnan(q), outer, q)
    return float(q[0]), float(q[1])


def logit(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(p) - np.log1p(-p)


def expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def intervals(late: np.ndarray, energy: np.ndarray, resamples: int, seed: int, tail: float = 0.025) -> dict:
    """Each method's (low, high) for one subset."""
    n = len(energy)
    z = stats.norm.ppf(1 - tail)
    ratio, se, loo = share_and_se(late, energy)
    out = {}
    out["Wald"] = (ratio - z * se, ratio + z * se)
    se_logit = se / (ratio * (1 - ratio))
    out["Wald logit"] = (expit(logit(ratio) - z * se_logit), expit(logit(ratio) + z * se_logit))
    out["Fieller"] = late_share_interval(late, energy, tail)  # the shipped interval (clipped to [0, 1])
    if resamples == 0:
        return {k: (float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))) for k, (lo, hi) in out.items()}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    ratio_b, se_b, _ = share_and_se(late[idx], energy[idx])
    if se > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.sort((ratio_b - ratio) / se_b)
        t = t[~np.isnan(t)]
        q_low, q_high = tail_quantiles(t, tail)
        out["boot-t"] = (ratio - q_high * se, ratio - q_low * se)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_logit = np.sort((logit(ratio_b) - logit(ratio)) / (se_b / (ratio_b * (1 - ratio_b))))
        t_logit = t_logit[~np.isnan(t_logit)]
        q_low, q_high = tail_quantiles(t_logit, tail)
        out["boot-t logit"] = (expit(logit(ratio) - q_high * se_logit), expit(logit(ratio) - q_low * se_logit))
    else:
        out["boot-t"] = out["boot-t logit"] = (ratio, ratio)
    # BCa
    prop = np.mean(ratio_b < ratio) + 0.5 * np.mean(ratio_b == ratio)
    z0 = stats.norm.ppf(np.clip(prop, 1 / (2 * resamples), 1 - 1 / (2 * resamples)))
    dev = loo.mean() - loo
    denom = 6 * (dev ** 2).sum() ** 1.5
    accel = (dev ** 3).sum() / denom if denom > 0 else 0.0
    levels = []
    for zq in (-z, z):
        levels.append(stats.norm.cdf(z0 + (z0 + zq) / (1 - accel * (z0 + zq))))
    out["BCa"] = tuple(np.quantile(ratio_b, levels))
    return {k: (float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))) for k, (lo, hi) in out.items()}


def run_cell(law: str, n: int, share: float, reps: int, resamples: int, first_rep: int = 0) -> dict:
    methods = METHODS if resamples else [m for m in METHODS if not m.startswith(("boot", "BCa"))]
    above = {m: 0 for m in methods}
    below = {m: 0 for m in methods}
    for r in range(first_rep, first_rep + reps):
        rng = np.random.default_rng([LAWS.index(law), n, round(1000 * share), r])
        late, energy = draw(law, n, share, rng)
        for m, (lo, hi) in intervals(late, energy, resamples, r).items():
            above[m] += lo > 0.5
            below[m] += hi < 0.5
    return {"law": law, "n": n, "share": share, "reps": reps, "above": above, "below": below}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[32, 128, 500, 2000])
    parser.add_argument("--laws", nargs="+", default=LAWS)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.55, 0.6, 0.7])
    parser.add_argument("--null-reps", type=int, default=2000)
    parser.add_argument("--power-reps", type=int, default=400)
    parser.add_argument("--resamples", type=int, default=1000, help="0: only the methods without resampling")
    parser.add_argument("--first-rep", type=int, default=0, help="rep r uses data seed [law, n, share, r]")
    parser.add_argument("--out", default=None, help="append one JSON line per cell")
    args = parser.parse_args()
    for n in args.n:
        for law in args.laws:
            for share in args.shares:
                start = time.perf_counter()
                reps = args.null_reps if share == 0.5 else args.power_reps
                cell = run_cell(law, n, share, reps, args.resamples, args.first_rep)
                cell["seconds"] = time.perf_counter() - start
                line = json.dumps(cell)
                print(f"{law:9s} n={n:5d} share={share:.2f} reps={reps}  "
                      + "  ".join(f"{m}: {100 * cell['above'][m] / reps:.1f}/{100 * cell['below'][m] / reps:.1f}"
                                  for m in cell["above"]) + f"  ({cell['seconds']:.0f} s)", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
