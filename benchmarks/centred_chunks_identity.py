"""Bit-identity of the metrics that centre the reference, ours against the package at a git revision.

The thirty-second session centres the reference chunk by chunk into one buffer, reference chunks
outside and query blocks inside, where the code before centred a copy of the whole reference
(``kde_log_density``, ``sq_distance_blocks`` and through it ``precision_recall``). This script runs
seeded random cases through both packages, each in a process of its own (``git archive REV src``
extracted to a temporary folder and put first on the path, or ``--old-src``), and compares every
output with ``torch.equal`` and the signs of its zeros; raised errors must have the same message.

Cases vary N, B, D, the dtypes (float32, float64, mixed), chunk and batch_chunk, exclude_self,
offsets far from the origin, scales far from 1 (1e-25, 1e25: the KDE's exact rescaling), integer
values with many ties and duplicated rows, the bandwidth rule, the CPU BLAS and the cache-block
budget (``kinetic_fm.blocks.CPU_BLOCK_BYTES``, so that row blocks straddle the chunks); every
fifth case runs again under ``tests/fake_cuda.py`` (device "cuda" on the CPU).

    python benchmarks/centred_chunks_identity.py --previous 16668bd [--cases 300] [--first 0] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _case(i: int) -> dict:
    rng = random.Random(i)
    exclude_self = rng.random() < 0.3
    n = rng.choice([1, 2, 3, 5, 17, 64, 100, 257, 600, 1500])
    b = n if exclude_self else rng.choice([1, 2, 7, 31, 100, 300, 700])
    dim = rng.choice([1, 2, 3, 5, 8, 17, 31, 64, 100, 257])
    dtypes = rng.choice([("float32", "float32")] * 3 + [("float64", "float64")] * 2
                        + [("float32", "float64"), ("float64", "float32")])
    if exclude_self:
        dtypes = (dtypes[1], dtypes[1])
    chunk, batch_chunk = rng.choice([1, 3, 7, 16, 64, 100, 8192]), rng.choice([1, 2, 5, 16, 64, 1024])
    while -(-max(n, b) // chunk) * -(-max(n, b) // batch_chunk) > 2000:   # at most 2,000 blocks a sweep
        chunk *= 2                                                       # (precision_recall's searches too)
    return {
        "seed": i, "n": n, "b": b, "dim": dim, "dtypes": dtypes, "exclude_self": exclude_self,
        "offset": rng.choice([0.0, 0.0, 1.0, 1000.0, -3e3, 1e4]),
        "scale": rng.choice([1.0, 1.0, 1.0, 1e-3, 1e-25, 1e25]),
        "values": rng.choice(["normal", "normal", "integers", "duplicates"]),
        "chunk": chunk, "batch_chunk": batch_chunk,
        "block_bytes": rng.choice([None, None, 3 * 8 * dim, 50 * 8 * dim, 1000, 7 * 8 * dim + 5]),
        "blas": rng.choice(["torch", "numpy"]),
        "bandwidth": rng.choice(["scott", "median", "given"]),
        "fake_cuda": i % 5 == 4,
    }


def _data(case: dict):
    import torch

    g = torch.Generator().manual_seed(case["seed"])
    n, b, dim = case["n"], case["b"], case["dim"]
    if case["values"] == "integers":          # many equal distances and ball-edge ties
        y = torch.randint(0, 3, (n, dim), generator=g).double()
        x = torch.randint(0, 3, (b, dim), generator=g).double()
    else:
        y = torch.randn(n, dim, generator=g, dtype=torch.float64)
        x = torch.randn(b, dim, generator=g, dtype=torch.float64)
        if case["values"] == "duplicates":    # queries that are reference rows, and repeated rows
            take = torch.randint(0, n, (b,), generator=g)
            x = torch.where(torch.rand(b, 1, generator=g) < 0.5, y[take], x)
            y[n // 2:] = y[:n - n // 2].clone()
    y = y * case["scale"] + case["offset"] * case["scale"]
    x = x * case["scale"] + case["offset"] * case["scale"]
    dx, dy = (getattr(torch, name) for name in case["dtypes"])
    y = y.to(dy)
    x = y if case["exclude_self"] else x.to(dx)
    return x, y


def _outputs(case: dict, device: str) -> dict:
    """Every output of the centring metrics on this case (a raised error as its message)."""
    import torch

    import kinetic_fm as kfm
    from kinetic_fm.metrics.density import sq_distance_blocks

    x, y = _data(case)
    x, y = x.to(device), (x.to(device) if case["exclude_self"] else y.to(device))
    out: dict = {}
    kw = {"chunk": case["chunk"], "batch_chunk": case["batch_chunk"]}

    def run(name, fn):
        try:
            out[name] = fn()
        except (ValueError, RuntimeError) as err:
            out[name] = f"error: {type(err).__name__}: {err}"

    if case["bandwidth"] == "given":
        spread = float((y.double() - y.double().mean(0)).abs().max()) if case["n"] > 1 else 1.0
        bandwidth = max(spread, 1e-300) * 0.3
    else:
        bandwidth = case["bandwidth"]
    run("kde", lambda: kfm.kde_log_density(x, y, bandwidth, exclude_self=case["exclude_self"], **kw)
        .log_density.cpu())
    run("blocks", lambda: {(q0, c0): d2.clone().cpu() for q0, c0, d2 in sq_distance_blocks(x, y, **kw)})
    if case["n"] >= 4 and case["b"] >= 4:
        def pr():
            res = kfm.precision_recall(y, x, k=3, **kw)
            return (torch.tensor([res.precision, res.recall], dtype=torch.float64),
                    res.fake_in_real.cpu(), res.real_in_fake.cpu())
        run("precision_recall", pr)
    return out


def emit(src: str, cases: range, path: str) -> None:
    """Run every case with the package in ``src``; save the outputs to ``path``."""
    sys.path.insert(0, src)
    sys.path.insert(0, str(REPO / "tests"))
    import torch

    import kinetic_fm
    from kinetic_fm import blocks, gemm

    assert Path(kinetic_fm.__file__).resolve().is_relative_to(Path(src).resolve()), kinetic_fm.__file__
    default_budget = blocks.CPU_BLOCK_BYTES
    results = {}
    for i in cases:
        case = _case(i)
        blocks.CPU_BLOCK_BYTES = case["block_bytes"] or default_budget
        gemm.CPU_GEMM = case["blas"]
        results[i, "cpu"] = _outputs(case, "cpu")
        if case["fake_cuda"]:
            from fake_cuda import fake_cuda

            with fake_cuda(record_stacks=False):
                results[i, "fake_cuda"] = _outputs(case, "cuda")
    torch.save(results, path)


def _same(a, b) -> bool:
    import torch

    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return torch.equal(a, b)
        nan = a.isnan()   # NaN where both have NaN; elsewhere equal values with equal signs (of zeros too)
        return (torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])
                and torch.equal(a[~nan].signbit(), b[~nan].signbit()))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--previous", metavar="REV", help="git revision of the package to compare with")
    parser.add_argument("--old-src", help="or: a folder holding that revision's kinetic_fm package")
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--first", type=int, default=0, help="seed of the first case (cases are seeded in a row)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both processes")
    parser.add_argument("--emit", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.emit:
        emit(args.emit[0], range(args.first, args.first + args.cases), args.emit[1])
        return
    if not (args.previous or args.old_src):
        parser.error("name the package to compare with: --previous REV or --old-src FOLDER")
    import torch

    with tempfile.TemporaryDirectory() as folder:
        old_src = args.old_src
        if old_src is None:
            archive = subprocess.run(["git", "archive", args.previous, "src"], cwd=REPO, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
            old_src = os.path.join(folder, "src")
        outputs = {}
        for name, src in (("previous", old_src), ("ours", str(REPO / "src"))):
            path = os.path.join(folder, f"{name}.pt")
            command = [sys.executable, __file__, "--cases", str(args.cases), "--first", str(args.first),
                       "--emit", src, path]
            if args.threads:
                command[2:2] = ["--threads", str(args.threads)]
            subprocess.run(command, check=True)
            outputs[name] = torch.load(path)
    old, new = outputs["previous"], outputs["ours"]
    assert old.keys() == new.keys()
    counts: dict[str, list[int]] = {}
    differ = []
    for key in old:
        for name in old[key].keys() | new[key].keys():
            same = name in old[key] and name in new[key] and _same(old[key][name], new[key][name])
            label = f"{name} ({key[1]})"
            tally = counts.setdefault(label, [0, 0, 0])
            tally[0] += same
            tally[1] += 1
            tally[2] += isinstance(old[key].get(name), str)
            if not same:
                differ.append((key, name))
    print(f"{args.cases} cases (seeds {args.first} to {args.first + args.cases - 1}), previous = "
          f"{args.previous or old_src}, torch threads {args.threads or 'default'}")
    for label, (same, total, errors) in sorted(counts.items()):
        print(f"  {label:<28} {same:4d} / {total:4d} identical ({errors} raised the same error)")
    if differ:
        print("DIFFER:", differ[:20])
        sys.exit(1)


if __name__ == "__main__":
    main()
