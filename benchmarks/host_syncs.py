"""Host synchronisations of the sampling loops on "cuda", counted by tests/fake_cuda.py.

A synchronisation stalls the host until the GPU catches up; the README promises none inside the
fixed-step loop. Without a GPU, fake_cuda runs the cuda code paths on the CPU and records each
synchronisation with its source line. Prints, per built-in field and solver, the syncs per step
(a 32-step run minus a 16-step run, over 16), dopri5's syncs per attempted step, and a
time="scalar" adapter's syncs per call with rows at several times, and precision_recall's
syncs per call (its two k-NN searches and its sweep of ball tests) at several block sizes.

    python benchmarks/host_syncs.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_cuda import fake_cuda  # noqa: E402

import kinetic_fm as kfm  # noqa: E402


def fields() -> dict:
    means = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return {"GaussianTarget": kfm.GaussianTarget(means[0], 0.5), "PointTarget": kfm.PointTarget(means[0]),
            "GaussianMixtureTarget": kfm.GaussianMixtureTarget(means, 0.3)}


def main() -> None:
    kts = kfm.KTS(alpha0=0.02, beta0=0.01)
    with fake_cuda(record_stacks=False) as fc:
        x0 = kfm.noise(range(64), (4,), device="cuda", dtype=torch.float64)
        print("fixed-step syncs per step (KTS, profile=True; target 0)")
        for name, velocity in fields().items():
            counts = []
            for solver in ("euler", "heun", "rk4"):
                kfm.sample(velocity, x0, steps=2, solver=solver)  # one-off copies to the device
                per_run = []
                for steps in (16, 32):
                    fc.reset()
                    kfm.sample(velocity, x0, steps=steps, solver=solver, shaping=kts, profile=True)
                    per_run.append(fc.count())
                counts.append(f"{solver} {(per_run[1] - per_run[0]) / 16:g}")
            print(f"  {name:22s} " + ", ".join(counts))

        velocity = fields()["GaussianMixtureTarget"]
        kfm.sample(velocity, x0, steps=2)
        fc.reset()
        res = kfm.sample(velocity, x0, solver="dopri5", profile=True)
        attempts = int((res.nfe.max() - 2) // 6)                  # 6 new stages per attempt
        print(f"dopri5: {fc.count()} syncs over {attempts} attempted steps = "
              f"{fc.count() / attempts:.2f} per iteration (the loop's 3 plus a one-off ~8)")

        adapter = kfm.ModelXT(lambda x, t: x * t, time="scalar")
        x = torch.ones(64, 4, device="cuda")
        t = (torch.arange(64, device="cuda") % 8).float() / 8      # 8 distinct times
        fc.reset()
        adapter(x, t)
        print(f'ModelXT(time="scalar"), rows at 8 times: {fc.count()} syncs per call')

        g = torch.Generator().manual_seed(0)
        real = torch.randint(0, 3, (600, 8), generator=g).float().to("cuda")  # ties at the balls' edges
        fake = torch.randint(0, 3, (500, 8), generator=g).float().to("cuda")
        print("precision_recall(k=3) of 600 real and 500 fake quantised rows, syncs per call:")
        for chunk, batch_chunk in ((1000, 1000), (200, 100), (50, 25)):
            blocks = -(-500 // batch_chunk) * -(-600 // chunk)
            fc.reset()
            kfm.precision_recall(real, fake, k=3, chunk=chunk, batch_chunk=batch_chunk)
            print(f"  chunk={chunk:4d} batch_chunk={batch_chunk:4d} ({blocks:3d} ball-test blocks): {fc.count()}")


if __name__ == "__main__":
    main()
