"""EFM velocity: ours vs the naive broadcast and vs the GEMM floor; peak memory at N = 50,000.

    python benchmarks/efm_speed.py            # N = 10,000, D = 3,072, B = 256, float32
    python benchmarks/efm_speed.py --quick    # N = 2,000, B = 64, N_mem = 10,000
    python benchmarks/efm_speed.py --device cuda --batch 2048 --atoms 50000   # where the overhead amortises
    python benchmarks/efm_speed.py --device-blocks   # peak memory with a GPU's block sizes, on the CPU
    python benchmarks/efm_speed.py --previous 8eaafc0 # also the field as committed then (or a file of it)

Inputs: atoms uniform in [−1, 1]^D (CIFAR-sized), queries on the conditional paths
x_t = (1 − t)·noise + t·y_j at several t (where a sampler evaluates the field).

* ours:  ``kfm.EmpiricalFlow(atoms)(x, t)``.
* naive: materialise x − t·y (one query at a time: (N, D) per query, since (B, N, D) would need
         B·N·D·4 bytes), float32 softmax, weighted sum; timed on ``--naive-queries`` queries and
         extrapolated per query to B (the cost is linear in B).
* floor: one ``torch.mm`` of shape (B, D) x (D, N), the GEMM every exact method must do.
* same-BLAS floor: that product through the BLAS ours uses (``kinetic_fm.gemm``: on CPU the
         faster of torch's and NumPy's, timed once). ours / floor is what a user gains over
         torch.mm; ours / same-BLAS floor is the method's own overhead (2 at small t, where the
         exact Σ w_j y_j is a second product of the same size).
* previous (``--previous REV``): ``fields/empirical.py`` as committed at REV (or read from the
         file REV, for a machine without the history), timed in the same rounds; its results are
         asserted equal to ours, bit for bit.
* run:   a whole ``kfm.sample`` Euler run from noise (``--run-steps`` steps) on the same atoms:
         every field call is timed, and the run's field time is compared with NFE x floor. This
         is what a user pays per trajectory batch; the per-t rows above show where it goes.

Peak memory (CPU), measured in a child process started with MALLOC_MMAP_THRESHOLD_=65536 so
that every block over 64 KiB is mmap'ed and returned to the OS when freed (otherwise glibc keeps
freed memory resident and a later peak hides in it): the peak resident set (VmHWM in
/proc/self/status) is reset through /proc/self/clear_refs right before the call, with the atoms
already resident; the figure is that peak minus the resident set before the call, i.e. the call's
extra working memory. On CUDA, torch.cuda.max_memory_allocated is used instead.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from _common import interleaved_medians, median_time, module_at, synced

import kinetic_fm as kfm
from kinetic_fm import blocks, gemm
from kinetic_fm.fields import empirical


def naive_velocity(atoms, x, t):
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        diff = x[i] - t[i] * atoms                            # (N, D), the materialised x − t·y
        logits = -diff.pow(2).sum(dim=1) / (2 * (1 - t[i]) ** 2)
        w = torch.softmax(logits, dim=0)
        out[i] = (w @ atoms - x[i]) / (1 - t[i])
    return out


def states(atoms, batch, t, generator):
    j = torch.randint(0, atoms.shape[0], (batch,), generator=generator)
    noise = torch.randn(batch, atoms.shape[1], generator=generator)
    return (1 - t) * noise + t * atoms[j]


def _status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_extra_bytes(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as fh:          # reset VmHWM to the current RSS
        fh.write("5")
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-queries", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run-steps", type=int, default=50)
    parser.add_argument("--memory-only", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help="queries per call (default 256; 64 with --quick)")
    parser.add_argument("--atoms", type=int, default=None, help="N for the speed part (default 10,000; 2,000 with --quick)")
    parser.add_argument("--previous", metavar="REV", help="also time fields/empirical.py as committed at REV "
                        "(or read from the file REV)")
    parser.add_argument("--device-blocks", action="store_true",
                        help="only the memory part, on the CPU with an accelerator's block budget "
                             "(kinetic_fm.blocks.DEVICE_BLOCK_BYTES): the peak a GPU's passes hold, without a GPU")
    args = parser.parse_args()
    if args.memory_only:
        if args.device_blocks:
            blocks.CPU_BLOCK_BYTES = blocks.DEVICE_BLOCK_BYTES
        return memory(args.memory_only, 3_072, args.batch or 256, torch.device("cpu"))
    n, dim, batch, n_mem = (2_000, 3_072, 64, 10_000) if args.quick else (10_000, 3_072, 256, 50_000)
    n, batch = args.atoms or n, args.batch or batch
    device = torch.device(args.device)
    if not args.device_blocks:
        speed(n, dim, batch, device, args)            # its atoms are freed before the memory part
    if device.type == "cpu":
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        cmd = [sys.executable, __file__, "--memory-only", str(n_mem), "--batch", str(batch)]
        subprocess.run(cmd + ["--device-blocks"] * args.device_blocks, env=env, check=True)
    else:
        memory(n_mem, dim, batch, device)


def speed(n, dim, batch, device, args):
    g = torch.Generator().manual_seed(0)
    atoms = (torch.rand(n, dim, generator=g) * 2 - 1).to(device)
    field = kfm.EmpiricalFlow(atoms)
    previous = None
    if args.previous:
        previous = module_at(args.previous, "src/kinetic_fm/fields/empirical.py").EmpiricalFlow(atoms)
    print(f"EFM velocity, N={n}, D={dim}, B={batch}, float32, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    x_floor = torch.randn(batch, dim, generator=g).to(device)

    floors = {"floor": synced(lambda: torch.mm(x_floor, atoms.T), device)}
    blas = gemm.choose(atoms.dtype, device, 2.0 * batch * n * dim, empirical._CALIBRATE_FLOPS)
    if blas != "torch":
        floors["same-BLAS floor"] = synced(lambda: gemm.matmul(x_floor, atoms.T, blas=blas), device)

    floor = median_time(floors["floor"], args.repeats)
    print(f"GEMM floor, torch.mm ({batch},{dim})x({dim},{n}): {floor * 1e3:.1f} ms "
          "(re-timed beside ours at each t: ours / floor uses the floor of the same rounds)")
    print(f"ours' products run through {blas}'s BLAS (kinetic_fm.gemm)"
          + ("; /same-BLAS is ours / that product through it" if blas != "torch" else ""))
    print(f"{'t':>6} {'ours ms':>9} {'/floor':>7} {'/same-BLAS':>10} {'naive ms (extrap.)':>19} {'naive/ours':>10} "
          f"{'max rel err':>11} {'exact rows':>10}" + (f" {'previous/ours':>13}" if previous else ""))
    for t_value in (0.05, 0.2, 0.5, 0.9, 0.99):
        x = states(atoms.cpu(), batch, t_value, g).to(device)
        t = torch.full((batch,), t_value, device=device)
        ways = {"ours": synced(lambda: field(x, t), device), **floors}
        if previous:
            ways["previous"] = synced(lambda: previous(x, t), device)
            assert torch.equal(previous(x, t), field(x, t)), f"the previous field differs at t = {t_value}"
        timed = interleaved_medians(ways, args.repeats)
        ours, floor_t = timed["ours"], timed["floor"]
        same = ours / timed.get("same-BLAS floor", floor_t)
        q = args.naive_queries
        naive = median_time(lambda: naive_velocity(atoms, x[:q], t[:q]), max(1, args.repeats // 2)) * batch / q
        v = field(x[:q], t[:q]).double()
        ref = naive_velocity(atoms.double(), x[:q].double(), t[:q].double())
        err = ((v - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
        exact = field.diagnostics(x, t).exact.float().mean().item()
        print(f"{t_value:>6} {ours * 1e3:>9.1f} {ours / floor_t:>7.2f} {same:>10.2f} {naive * 1e3:>19.0f} {naive / ours:>10.1f} "
              f"{err:>11.1e} {exact:>10.2f}" + (f" {timed['previous'] / ours:>13.2f}" if previous else ""))

    run_cost(field, atoms, batch, args.run_steps, floors, device)
    if previous:
        print("the previous field:", end=" ")
        run_cost(previous, atoms, batch, args.run_steps, floors, device)


def run_cost(field, atoms, batch, steps, floors, device):
    """Time every field call of one Euler run from noise, each beside one product of each floor."""
    calls, same = [], []

    def timed(x, t):
        out = []
        t0 = time.perf_counter()
        synced(lambda: out.append(field(x, t)), device)()
        t1 = time.perf_counter()
        floors["floor"]()
        t2 = time.perf_counter()
        calls.append((float(t[0]), t1 - t0, t2 - t1))
        if "same-BLAS floor" in floors:
            floors["same-BLAS floor"]()
            same.append(time.perf_counter() - t2)
        return out[0]

    # the same for every field
    x0 = torch.randn(batch, atoms.shape[1], generator=torch.Generator().manual_seed(7)).to(device)
    kfm.sample(field, x0, steps=2, solver="euler")                          # warm-up
    kfm.sample(timed, x0, steps=steps, solver="euler")
    ratios = [seconds / floor for _, seconds, floor in calls]
    over = [f"{t:.2f}" for t, seconds, floor in calls if seconds / floor > 1.7]
    whole = sum(seconds for _, seconds, _ in calls) / sum(floor for _, _, floor in calls)
    print(f"Euler run, {steps} steps from noise: field time = {whole:.2f} x (NFE x floor); "
          f"per call median {statistics.median(ratios):.2f}, max {max(ratios):.2f}; "
          f"calls above 1.7 x floor: {len(over)} of {len(calls)}" + (f" (t = {', '.join(over)})" if over else ""))
    if same:
        print(f"  against the same-BLAS floor: field time = "
              f"{sum(seconds for _, seconds, _ in calls) / sum(same):.2f} x (NFE x same-BLAS floor)")


def memory(n_mem, dim, batch, device):
    g = torch.Generator().manual_seed(1)
    atoms = (torch.rand(n_mem, dim, generator=g) * 2 - 1).to(device)
    train_bytes = atoms.numel() * atoms.element_size()
    out_bytes = batch * dim * 4
    extra = peak_extra_bytes(lambda: kfm.EmpiricalFlow(atoms), device)
    print(f"peak extra memory, construction at N={n_mem}: {extra / 2**20:.0f} MiB "
          f"= {extra / train_bytes:.3f} x train ({train_bytes / 2**20:.0f} MiB)")
    field = kfm.EmpiricalFlow(atoms)
    for t_value in (0.05, 0.2, 0.5, 0.99):
        x = states(atoms.cpu(), batch, t_value, g).to(device)
        t = torch.full((batch,), t_value, device=device)
        extra = peak_extra_bytes(lambda: field(x, t), device)
        ratio = (train_bytes + extra) / (train_bytes + out_bytes)
        print(f"peak memory, velocity call at N={n_mem}, B={batch}, t={t_value}: train + {extra / 2**20:.0f} MiB "
              f"= {ratio:.3f} x (train + output)")

if __name__ == "__main__":
    main()
