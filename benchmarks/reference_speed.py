"""Per-sample KPE for 100 trajectories x 100 Heun steps: kfm.sample (batched) vs a reference-style
loop (one trajectory at a time, `.item()` per step, as in the paper's research scripts).

    python benchmarks/reference_speed.py [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse

import torch

import kinetic_fm as kfm
from _common import SmallConvUNet, TimeMLP, median_time


def reference_heun(net, x0, steps, kts):
    """One trajectory at a time with a host sync (.item()) per step, left-Riemann KPE."""
    grid = kfm.time_grid("uniform", steps).tolist()
    energies = []
    for b in range(x0.shape[0]):
        x, energy = x0[b : b + 1], 0.0
        for i in range(steps):
            t0, t1 = grid[i], grid[i + 1]
            dt = t1 - t0
            e0, e1 = kts(t0), kts(t1)
            v0 = net(x, torch.tensor([t0], dtype=x.dtype, device=x.device))
            energy += 0.5 * e0**2 * (v0**2).sum().item() * dt
            v1 = net(x + e0 * dt * v0, torch.tensor([t1], dtype=x.dtype, device=x.device))
            x = x + 0.5 * (e0 + e1) * dt * 0.5 * (v0 + v1)
        energies.append(energy)
    return torch.tensor(energies, dtype=torch.float64)


def compare(name, net, shape, n, steps, repeats, device) -> float:
    x0 = kfm.noise(range(n), shape, device=device)
    kts = kfm.KTS()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        res = kfm.sample(net, x0, steps=steps, solver="heun", shaping=kts, quadrature="left")
        sync()
        return res.kpe.cpu()

    def reference():
        return reference_heun(net, x0, steps, kts)

    with torch.no_grad():
        assert torch.allclose(ours(), reference(), rtol=1e-4), "the two loops must agree before timing"
        t_ours = median_time(ours, repeats)
        t_ref = median_time(reference, max(1, repeats // 2), warmup=0)
    print(f"{name:28s} ours {t_ours * 1e3:9.1f} ms   reference {t_ref * 1e3:10.1f} ms   speed-up {t_ref / t_ours:7.1f}x")
    return t_ref / t_ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trajectories and steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    n, steps, repeats = (20, 20, 3) if args.quick else (100, 100, 3)
    print(f"device={device}, {n} trajectories x {steps} Heun steps, KTS default; ours: median of {repeats}, "
          f"reference: median of {max(1, repeats // 2)} (no warm-up)")
    mlp = TimeMLP(dim=64, width=256).to(device).eval()
    compare("64-d MLP (target >= 30x)", mlp, (64,), n, steps, repeats, device)
    unet = SmallConvUNet(width=32).to(device).eval()
    compare("small conv U-Net 3x32x32", unet, (3, 32, 32), n, steps, repeats, device)


if __name__ == "__main__":
    main()
