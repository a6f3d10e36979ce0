"""Truncated EFM's neglected-mass bound against the exact neglected mass, in rational arithmetic.

    python benchmarks/efm_truncated_bound.py                       # today's field, 300 cases
    python benchmarks/efm_truncated_bound.py --previous 16668bd    # and the field at a revision
    python benchmarks/efm_truncated_bound.py --cases 1000 --seed 7

``EmpiricalFlow(train, truncate=k)`` keeps k atoms per query and reports ``neglected_bound``, a
bound on the posterior mass of the atoms it left out. Here each query's true neglected mass,
Σ_dropped w_j with w = softmax(ℓ), is computed exactly: x, t and the atoms are binary floats, so
every ‖x − t·y_j‖² is an integer over a common power of two, the logits relative to the largest are
exact rationals, and only their exponentials are rounded (``decimal`` at 60 digits). A row is
*short* when its float64 bound is below that mass.

Cases are small and hostile: 2 to 1,000 atoms of 1 to 16 features in float32 or float64, uniform,
in tight clusters (spread 1e-3 to 1e-7) or with exact duplicates, shifted up to 1e3 from the origin;
queries on the conditional paths and on (or beside) the bisector of two atoms' scaled positions, at
times from 1e-4 to 1 − 1e-7 and 1; random k, ``max_logit_error`` and backend (torch or faiss), and
sometimes a small ``_RESCORE_ALL_MAX`` so that the search route runs. Each query is checked through
``posterior`` (kept set: its k indices) and, alone, through ``evaluate`` (kept set: the atoms the
last re-scoring saw). With ``--previous`` the field at that revision runs on the same inputs.

Printed per route (the rows' route through today's field): rows, short rows and the largest
shortfall (truth − bound, and 1 − bound/truth) for each field, the median and 99th percentile of
bound / truth (rows whose truth is a normal float64), and the median, 99th percentile and largest
of today's bound / the previous one (tightness: 1 = no looser).
"""
from __future__ import annotations

import argparse
import decimal
import math
import random
import time
import warnings
from collections import defaultdict
from decimal import Decimal

import torch
from _common import module_at

from kinetic_fm.fields import empirical

TIMES = (1e-4, 1e-3, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-3, 1 - 1e-4, 1 - 1e-5, 1 - 3e-6,
         1 - 1e-6, 1 - 1e-7, 1.0)
decimal.getcontext().prec = 60


# ----------------------------------------------------------------------------- exact reference
def _scaled(values: list[float], e: int) -> list[int]:
    """The floats ``values`` times 2**e, as exact integers (e at least each one's binary exponent)."""
    out = []
    for v in values:
        num, den = v.as_integer_ratio()
        out.append(num << (e - (den.bit_length() - 1)))
    return out


def _exponent(values: list[float]) -> int:
    return max(v.as_integer_ratio()[1].bit_length() - 1 for v in values)


def exact_weights(atoms: list[list[float]], x: list[float], t: float) -> list[Decimal]:
    """Posterior weights over all atoms at (x, t), exact up to the exponentials (60 digits).

    ℓ_j = −‖x − t·y_j‖²/(2(1 − t)²) with x = a/2^e, y_j = b_j/2^e, t = p/2^q: x − t·y_j =
    (2^q·a − p·b_j)/2^(e+q), so ℓ_j − max ℓ = −(S_j − min S)/(2^(2e+1)·(2^q − p)²), S_j an integer."""
    e = max(_exponent(x), max(_exponent(row) for row in atoms))
    a = _scaled(x, e)
    p, q2 = t.as_integer_ratio()
    q = q2.bit_length() - 1
    sums = [sum(((ai << q) - p * bi) ** 2 for ai, bi in zip(a, _scaled(row, e))) for row in atoms]
    least = min(sums)
    denominator = Decimal((q2 - p) ** 2 << (2 * e + 1))
    terms = [(-(Decimal(s - least) / denominator)).exp() for s in sums]
    total = sum(terms)
    return [w / total for w in terms]


# ----------------------------------------------------------------------------- cases
def make_case(rng: random.Random) -> dict:
    g = torch.Generator().manual_seed(rng.getrandbits(31))
    dtype = rng.choice([torch.float32, torch.float64])
    n, dim = rng.choice([2, 3, 5, 10, 30, 100, 300, 1000]), rng.choice([1, 2, 3, 4, 8, 16])
    kind = rng.choice(["uniform", "clusters", "duplicates"])
    offset = rng.choice([0.0, 0.0, 1.0, 30.0, 1e3])
    if kind == "uniform":
        atoms = torch.rand(n, dim, generator=g, dtype=torch.float64) * 2 - 1
    else:
        centres = torch.randn(max(1, n // rng.choice([2, 4, 8, n])), dim, generator=g, dtype=torch.float64)
        which = torch.randint(0, centres.shape[0], (n,), generator=g)
        spread = rng.choice([1e-3, 1e-5, 1e-7])
        atoms = centres[which] + spread * torch.randn(n, dim, generator=g, dtype=torch.float64)
        if kind == "duplicates":
            copy = torch.rand(n, generator=g) < 0.3
            atoms[copy] = centres[which[copy]]
    direction = torch.ones(dim, dtype=torch.float64) if rng.random() < 0.5 else torch.randn(
        dim, generator=g, dtype=torch.float64)
    atoms = (atoms + offset * direction).to(dtype)
    b = rng.choice([2, 4, 8])
    t = torch.tensor([rng.choice(TIMES) for _ in range(b)], dtype=torch.float64)
    y = atoms.double()
    j, j2 = torch.randint(0, n, (b,), generator=g), torch.randint(0, n, (b,), generator=g)
    x = (1 - t[:, None]) * torch.randn(b, dim, generator=g, dtype=torch.float64) + t[:, None] * y[j]
    wiggle = rng.choice([0.0, 1e-3, 1.0]) * (1 - t[:, None]) * torch.randn(b, dim, generator=g, dtype=torch.float64)
    tie = (torch.rand(b, generator=g) < 0.4)[:, None]
    x = torch.where(tie, t[:, None] * (y[j] + y[j2]) / 2 + wiggle, x).to(rng.choice([dtype, torch.float64]))
    return dict(atoms=atoms, x=x, t=t, k=rng.randint(1, n - 1),
                options=dict(backend=rng.choice(["torch", "torch", "faiss"]),
                             max_logit_error=rng.choice([0.5, 0.5, 1e-6, 1e3])),
                rescore_all_max=rng.choice([4096, 4096, 4]))


# ----------------------------------------------------------------------------- the fields
class KeptSets:
    """Records the atoms each call of ``module``'s field kept last: the indices of its last exact
    re-scoring, or the best atom of a point mass (patched on the class, undone by ``close``)."""

    def __init__(self, module):
        self.cls, self.last = module.EmpiricalFlow, None
        self.originals = self.cls._exact, self.cls._point_masses
        exact, points = self.originals

        def record_exact(field, x, t, one_minus, idx, *args, **kwargs):
            self.last = idx
            return exact(field, x, t, one_minus, idx, *args, **kwargs)

        def record_points(field, best_index, top_k):
            self.last = best_index[:, None]
            return points(field, best_index, top_k)

        self.cls._exact, self.cls._point_masses = record_exact, record_points

    def close(self) -> None:
        self.cls._exact, self.cls._point_masses = self.originals


def bounds_and_kept(module, case) -> list[tuple[str, float, list[int], float]] | None:
    """(mode, t, kept indices, bound) per query and mode through ``module``'s field; None when the
    field refuses the case."""
    module._RESCORE_ALL_MAX = case["rescore_all_max"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            field = module.EmpiricalFlow(case["atoms"], truncate=case["k"], **case["options"])
        flat, t, values = field._check(case["x"], case["t"])
        _, diag, (_, kept) = field._solve(flat, t, case["k"], values)
        rows = [("posterior", float(t[i]), kept[i].tolist(), float(diag.neglected_bound[i]))
                for i in range(len(t))]
        recorder = KeptSets(module)
        try:
            for i in range(len(t)):
                bound = field.evaluate(case["x"][i:i + 1], case["t"][i:i + 1]).diagnostics.neglected_bound
                rows.append(("evaluate", float(t[i]), recorder.last[0].tolist(), float(bound[0])))
        finally:
            recorder.close()
        return rows
    except ValueError:   # logits that overflow the screening dtype are refused
        return None
    finally:
        module._RESCORE_ALL_MAX = 4096


def routes(case) -> list[str]:
    """Each query's route through today's truncated field (as ``_solve_block`` chooses it)."""
    field = empirical.EmpiricalFlow(case["atoms"], truncate=case["k"], **case["options"])
    if field.backend == "faiss":
        return ["faiss"] * len(case["t"])
    flat, t, _ = field._check(case["x"], case["t"])
    _, squared, a = field._coefficients(t)
    scores, c = field._screen(flat, t, squared, a, "torch")
    error = field._logit_error_bound(flat, a, c)
    threshold = (scores.max(dim=1).values.double() - field.cutoff) - 2 * error
    count = (scores >= threshold.to(scores.dtype)[:, None]).sum(dim=1)
    return ["few" if n <= field.truncate else
            ("screened" if e <= field.max_logit_error else
             "all" if n <= case["rescore_all_max"] else "search") for n, e in zip(count.tolist(), error.tolist())]


# ----------------------------------------------------------------------------- summary
def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--previous", metavar="REV", help="also the field at this git revision (or file)")
    args = parser.parse_args()
    fields = {"today": empirical}
    if args.previous:
        fields[args.previous] = module_at(args.previous, "src/kinetic_fm/fields/empirical.py")
    rng = random.Random(args.seed)
    rows = defaultdict(list)    # route -> [(field, (case, mode, row), truth, bound)]
    refused, start = 0, time.perf_counter()
    for number in range(args.cases):
        case = make_case(rng)
        found = {name: bounds_and_kept(module, case) for name, module in fields.items()}
        if any(f is None for f in found.values()):
            refused += 1
            continue
        atoms = case["atoms"].double().tolist()
        flat = case["x"].reshape(len(case["t"]), -1)
        cache = {}   # query -> exact weights
        route = routes(case)
        for i, entries in enumerate(zip(*found.values())):
            mode, t, _, _ = entries[0]   # the same query, mode and time for every field
            query = i % len(case["t"])
            if query not in cache:
                cache[query] = exact_weights(atoms, flat[query].double().tolist(), t)
            weights = cache[query]
            for name, (_, _, kept, bound) in zip(found, entries):
                kept = set(kept)
                truth = sum((w for j, w in enumerate(weights) if j not in kept), Decimal(0))
                rows[route[query]].append((name, (number, mode, i), truth, bound))
    print(f"{args.cases} cases (seed {args.seed}), {refused} refused, {time.perf_counter() - start:.0f} s; "
          f"torch {torch.__version__}")
    print(f"{'route':>9} | {'field':>9} | {'rows':>6} | {'short':>5} | {'short by':>9} | {'relative':>9} | "
          f"{'bound/truth median':>18} | {'p99':>9} | {'/ previous: median':>18} | {'p99':>9} | {'max':>9}")
    for route in sorted(rows):
        by_field = defaultdict(dict)
        for name, key, truth, bound in rows[route]:
            by_field[name][key] = (truth, bound)
        for name, entries in by_field.items():
            short = [(float(truth - Decimal(bound)), float((truth - Decimal(bound)) / truth))
                     for truth, bound in entries.values() if Decimal(bound) < truth]
            ratio = [bound / float(truth) for truth, bound in entries.values() if float(truth) >= 2.3e-308]
            line = (f"{route:>9} | {name[:9]:>9} | {len(entries):>6} | {len(short):>5} | "
                    f"{max(short, default=(0.0, 0.0))[0]:>9.3g} | {max((s[1] for s in short), default=0.0):>9.3g} | "
                    f"{_quantile(ratio, 0.5):>18.6g} | "
                    f"{_quantile(ratio, 0.99):>9.4g}")
            if name == "today" and args.previous:
                old = by_field[args.previous]
                tight = [bound / old[key][1] for key, (_, bound) in entries.items() if old[key][1] > 0]
                line += (f" | {_quantile(tight, 0.5):>18.12g} | {_quantile(tight, 0.99):>9.6g} | "
                         f"{max(tight, default=math.nan):>9.4g}")
            print(line)


if __name__ == "__main__":
    main()
