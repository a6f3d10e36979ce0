"""Peak memory of a fixed-step run against the stage-norm buffer it needs.

A fixed-step run keeps one ‖v‖² per (step, stage, sample), the (S, stages, B) buffer the docstring
of ``integrate_fixed`` states, and accounts the energies from it after the loop. Until the
twenty-third session the accounting took a float64 copy of the whole buffer with its masks, and the
loop's time tensors were made ahead, one (B,) tensor per (step, stage): ~8× the buffer at
S = 5,000, B = 2,048 and ~300 MB at 10**5 steps of one sample.

    python benchmarks/fixed_step_memory.py

Each run is a fresh process (rk4, a linear field, float32 state of 2 features); the peak resident
memory above a one-step run's is reported beside the buffer's size, and their ratio. One run each:
memory is what this script claims.
"""
from __future__ import annotations

import subprocess
import sys

RUN = """
import resource, sys, torch, kinetic_fm as kfm
steps, batch = int(sys.argv[1]), int(sys.argv[2])
kfm.sample(lambda x, t: -x, torch.randn(batch, 2), steps=steps, solver="rk4")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_bytes(steps: int, batch: int) -> int:
    done = subprocess.run([sys.executable, "-c", RUN, str(steps), str(batch)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


def main() -> None:
    print(f"{'steps':>7} {'batch':>6} {'buffer MB':>10} {'peak above 1 step, MB':>22} {'ratio':>6}")
    for steps, batch in ((5000, 2048), (2000, 2048), (100_000, 1)):
        base = peak_bytes(1, batch)
        grew = (peak_bytes(steps, batch) - base) / 2**20
        buffer = steps * 4 * batch * 4 / 2**20          # (S, 4 stages, B) float32
        print(f"{steps:>7} {batch:>6} {buffer:>10.1f} {grew:>22.0f} {grew / buffer:>6.1f}")


if __name__ == "__main__":
    main()
