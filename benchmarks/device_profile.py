"""Where the time goes on a GPU: torch.profiler tables of one EmpiricalFlow call and of one
kfm.sample run beside the bare loop of kpe_overhead.py.

    python benchmarks/device_profile.py [--device cuda] [--rows 15]

On a GPU both are host-bound at the benchmarks' sizes (BENCHMARKS.md, "On a GPU"): the tables
show the kernels launched, the synchronising ops (nonzero, boolean indexing, .tolist()) and the
GPU's busy time against the wall, which is what a change to either loop must bring down.
Without a GPU ``--device cpu`` runs the same plumbing on smaller inputs.
"""
from __future__ import annotations

import argparse

import torch
from _common import SmallConvUNet, synced
from kpe_overhead import bare_heun
from torch.profiler import ProfilerActivity, profile

import kinetic_fm as kfm


def tables(fn, device, rows):
    """The profile of one call of ``fn`` after a warm-up (cuDNN/cuBLAS choices, caches): ops by
    self CPU time and, on CUDA, by self GPU time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        fn()
    sorts = ["self_cpu_time_total"] + (["self_cuda_time_total"] if device.type == "cuda" else [])
    averages = prof.key_averages()
    return "\n".join(averages.table(sort_by=key, row_limit=rows, max_name_column_width=48) for key in sorts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    small = device.type == "cpu"
    n, dim, batch = (2_000, 3_072, 64) if small else (10_000, 3_072, 256)

    g = torch.Generator().manual_seed(0)
    atoms = torch.rand(n, dim, generator=g) * 2 - 1
    field = kfm.EmpiricalFlow(atoms.to(device))
    for t_value in (0.2, 0.5):
        j = torch.randint(0, n, (batch,), generator=g)
        x = ((1 - t_value) * torch.randn(batch, dim, generator=g) + t_value * atoms[j]).to(device)
        t = torch.full((batch,), t_value, device=device)
        candidates = field.diagnostics(x, t).candidates.double().cpu()
        print(f"== EmpiricalFlow, N={n}, D={dim}, B={batch}, t={t_value}, {device}: candidates per row "
              f"min {candidates.min():.0f}, median {candidates.median():.0f}, max {candidates.max():.0f}")
        print(tables(synced(lambda: field(x, t), device), device, args.rows))

    torch.manual_seed(0)
    net = SmallConvUNet().to(device).eval()
    x0 = kfm.noise(range(8 if small else 32), (3, 32, 32), device=device)
    kts = kfm.KTS()
    runs = {"kfm.sample": lambda: kfm.sample(net, x0, steps=20, solver="heun", shaping=kts, profile=True),
            "bare loop": lambda: bare_heun(net, x0, 20, kts)}
    with torch.no_grad():
        for name, fn in runs.items():
            print(f"== {name}: conv U-Net, batch {x0.shape[0]}, 20 Heun steps with KTS, {device}")
            print(tables(synced(fn, device), device, args.rows))


if __name__ == "__main__":
    main()
