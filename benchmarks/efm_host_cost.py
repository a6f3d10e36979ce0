"""EmpiricalFlow's own host cost per call: what a GPU waits on when the products are small.

On a GPU a call at B = 256, N = 10,000 was host-bound (BENCHMARKS.md, "On a GPU": 132 kernel
launches and 7 synchronisations at t = 0.5 for 0.70 ms of device work). Without a GPU this
measures the host's side on inputs so small that the arithmetic is negligible, for today's field
and the one committed at ``--previous``, on the same inputs at each t:

* host µs: median wall time of a call on the CPU, ours and previous timed in alternation;
* ops: top-level ATen operators a call dispatches (torch.profiler), and how many of them do work
  (views and other metadata-only operators left out): on a GPU each of those is a kernel launch;
* syncs: host synchronisations a call makes on "cuda", counted by tests/fake_cuda.py (each one
  makes a GPU's host wait for the queue to drain, and the device then idles while the host
  launches what follows).

    python benchmarks/efm_host_cost.py [--previous 8eaafc0] [--atoms 500 --dim 256 --batch 16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from _common import interleaved_rounds, module_at
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_cuda import fake_cuda  # noqa: E402

import kinetic_fm as kfm  # noqa: E402

# operators that only make views or read metadata: no kernel on a GPU
METADATA_ONLY = {"aten::detach", "aten::reshape", "aten::view", "aten::slice", "aten::select", "aten::unsqueeze",
                 "aten::squeeze", "aten::alias", "aten::numpy_T", "aten::t", "aten::transpose", "aten::expand",
                 "aten::split", "aten::resolve_conj", "aten::resolve_neg", "aten::lift_fresh", "aten::flatten",
                 "aten::as_strided", "aten::empty", "aten::empty_like", "aten::is_nonzero", "aten::item",
                 "aten::_local_scalar_dense", "aten::result_type"}


def operators(call) -> tuple[int, int]:
    """(top-level operators, those that do work) of one ``call()``, after a warm-up call."""
    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    names = [event.name for event in prof.events() if event.cpu_parent is None and event.name.startswith("aten::")]
    return len(names), sum(name not in METADATA_ONLY for name in names)


def synchronisations(make_field, atoms, x, t) -> int:
    """Host synchronisations of one call on "cuda" (fake_cuda), after a warm-up call."""
    with fake_cuda(record_stacks=False) as fc:
        field = make_field(atoms.to("cuda"))
        xc, tc = x.to("cuda"), t.to("cuda")
        field(xc, tc)
        fc.reset()
        field(xc, tc)
        return fc.count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--previous", default="8eaafc0", metavar="REV",
                        help="git revision (or file) of fields/empirical.py to compare with")
    parser.add_argument("--atoms", type=int, default=500)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    atoms = torch.rand(args.atoms, args.dim, generator=g) * 2 - 1
    previous = module_at(args.previous, "src/kinetic_fm/fields/empirical.py").EmpiricalFlow
    fields = {"ours": kfm.EmpiricalFlow, f"at {args.previous}": previous}
    print(f"EmpiricalFlow host cost per call: N={args.atoms}, D={args.dim}, B={args.batch}, float32, 1 thread, "
          f"torch {torch.__version__}; ours vs {args.previous}, {args.repeats} alternating rounds")
    print(f"{'t':>5} {'candidates':>18} | {'host µs':>15} {'ratio':>6} | {'ops (doing work)':>23} | {'syncs':>9}")
    for t_value in (0.0, 0.05, 0.2, 0.5, 0.9, 0.99):
        j = torch.randint(0, args.atoms, (args.batch,), generator=g)
        x = (1 - t_value) * torch.randn(args.batch, args.dim, generator=g) + t_value * atoms[j]
        t = torch.full((args.batch,), t_value)
        built = {name: make(atoms) for name, make in fields.items()}
        results = {name: field(x, t) for name, field in built.items()}
        assert torch.equal(*results.values()), f"the fields differ at t = {t_value}"
        times, _ = interleaved_rounds({name: (lambda f=field: f(x, t)) for name, field in built.items()},
                                      args.repeats, warmup=True)
        micro = {name: statistics.median(v) * 1e6 for name, v in times.items()}
        ops = {name: operators(lambda f=field: f(x, t)) for name, field in built.items()}
        syncs = {name: synchronisations(make, atoms, x, t) for name, make in fields.items()}
        counts = built["ours"].diagnostics(x, t).candidates
        ours, old = micro["ours"], micro[f"at {args.previous}"]
        (o_all, o_work), (p_all, p_work) = ops.values()
        print(f"{t_value:>5} {f'{int(counts.min())}-{int(counts.max())}':>18} | {ours:>6.0f} vs {old:>6.0f} "
              f"{old / ours:>6.2f} | {o_all:>3} ({o_work:>3}) vs {p_all:>3} ({p_work:>3}) | "
              f"{syncs['ours']:>2} vs {syncs[f'at {args.previous}']:>2}")


if __name__ == "__main__":
    main()
