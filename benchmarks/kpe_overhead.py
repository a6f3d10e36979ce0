"""Cost of per-sample energy accounting: kfm.sample vs the same batched loop without it.

Both run the same solver steps on the same conv U-Net and inputs; ours also accumulates applied
and raw KPE, early/late, peak and non-finite flags per sample. Prints the median-time ratio.

    python benchmarks/kpe_overhead.py [--quick] [--device cuda]
    python benchmarks/kpe_overhead.py --net negation --batch 2   # v = −x: the loops' host cost alone
    python benchmarks/kpe_overhead.py --net negation --batch 2 --ops   # and the aten ops each makes

With ``--net negation`` the network does no work, so the times are each loop's own per-step host
cost (Python, dispatch, launches): what a GPU pays for a network too small to keep it busy.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import kinetic_fm as kfm
from _common import SmallConvUNet, interleaved_medians


def bare_heun(net, x0, steps, kts):
    """The batched Heun loop with KTS and nothing else (no energy, no checks)."""
    grid = kfm.time_grid("uniform", steps).tolist()
    x, b = x0, x0.shape[0]
    for i in range(steps):
        t0, t1 = grid[i], grid[i + 1]
        h = t1 - t0
        e0, e1 = kts(t0), kts(t1)
        v0 = net(x, torch.full((b,), t0, dtype=x.dtype, device=x.device))
        v1 = net(x + (h * e0) * v0, torch.full((b,), t1, dtype=x.dtype, device=x.device))
        x = x + (h * 0.5 * (e0 + e1)) * (0.5 * v0 + 0.5 * v1)
    return x


def print_op_counts(fns, steps: int) -> None:
    """Top-level aten ops (each a dispatch, most a kernel launch on a GPU) of each loop: per step
    (the difference between 2·steps and steps) and per run besides; the net's own included."""
    from torch.profiler import ProfilerActivity, profile

    for name, fn in fns.items():
        counts = []
        for n in (steps, 2 * steps):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(n)
            counts.append(sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")))
        per_step = (counts[1] - counts[0]) / steps
        print(f"aten ops of {name}: {per_step:g} a Heun step + {counts[0] - per_step * steps:g} a run")


class Negation(torch.nn.Module):
    """v(x, t) = −x: no work, so a run's time is the sampling loop's own."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--net", choices=["unet", "negation"], default="unet")
    parser.add_argument("--ops", action="store_true", help="also count the top-level aten ops of each loop")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = (SmallConvUNet(width=args.width) if args.net == "unet" else Negation()).to(device).eval()
    steps, repeats = (10, 3) if args.quick else (20, 7)
    x0 = kfm.noise(range(args.batch), (3, 32, 32), device=device)
    kts = kfm.KTS()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def ours(n=steps):
        kfm.sample(net, x0, steps=n, solver="heun", shaping=kts, profile=True)
        sync()

    @torch.no_grad()
    def bare(n=steps):
        bare_heun(net, x0, n, kts)
        sync()

    # same samples, so the comparison is like for like; on a GPU cuDNN's default TF32 convolutions
    # (10-bit inputs) turn the two loops' last-bit differences into about 2e-5
    atol = 1e-4 if device.type == "cuda" else 1e-5
    with torch.no_grad():
        assert torch.allclose(kfm.sample(net, x0, steps=steps, solver="heun", shaping=kts).x, bare_heun(net, x0, steps, kts), atol=atol)
    if args.ops:
        print_op_counts({"kfm.sample": ours, "bare loop": bare}, steps)
    med = interleaved_medians({"kfm.sample (with KPE)": ours, "bare loop": bare}, repeats)
    params = sum(p.numel() for p in net.parameters())
    name = f"SmallConvUNet(width={args.width}, {params / 1e6:.2f} M params)" if args.net == "unet" else "negation (v = -x)"
    print(f"device={device} net={name} batch={args.batch} heun steps={steps} repeats={repeats}")
    for name, t in med.items():
        print(f"  {name:24s} median {t * 1e3:9.1f} ms")
    ratio = med["kfm.sample (with KPE)"] / med["bare loop"]
    if args.net == "unet":
        print(f"overhead of energy accounting: {100 * (ratio - 1):+.2f}%  (ratio {ratio:.4f}; target <= +3%)")
        return
    # per step: a least-squares line through the medians at 1, 2, 4 and 8 x the steps (interleaved
    # rounds), so the fixed per-run costs fall into the intercept
    counts = [steps * k for k in (1, 2, 4, 8)]
    fns = {f"{name} {n}": (lambda fn=fn, n=n: fn(n)) for n in counts for name, fn in (("ours", ours), ("bare", bare))}
    medians = interleaved_medians(fns, repeats)
    for name in ("ours", "bare"):
        slope, intercept = np.polyfit(counts, [medians[f"{name} {n}"] for n in counts], 1)
        label = "kfm.sample" if name == "ours" else "bare loop"
        print(f"host cost of {label}: {slope * 1e6:.0f} us a Heun step + {intercept * 1e3:.2f} ms a run"
              + ("  (not positive: the machine was too noisy, run again)" if slope <= 0 else ""))


if __name__ == "__main__":
    main()
