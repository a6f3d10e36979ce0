"""Sharded sampling throughput: 2 processes under torchrun vs 1 process, same job, same seeds.

The job is CPU-bound: per-sample KPE of Heun sampling through a seeded MLP velocity net
(dimension 64, width 512), written as Parquet shards by ``kinetic_fm.runs.run_sharded`` — the
same path ``kfm sample`` takes. Every process uses one torch thread in both configurations, so
the comparison is one core vs two. The time measured is rank 0's, from a barrier after start-up
to the merged table on disk (manifest, shards and merge included; interpreter start-up and
``torchrun``'s rendezvous excluded, and reported separately as end-to-end wall time).

On a shared machine wall-clock ratios are distorted (P processes get P shares of contested
cores), so the script also reports each rank's CPU time: 1-process CPU time over the busiest
rank's CPU time is the speed-up the job would see on dedicated cores.

    python benchmarks/distributed_speed.py            # n = 4096, 3 repeats
    python benchmarks/distributed_speed.py --quick    # n = 1024, 3 repeats

Prints medians of the repeats, the throughput ratio (target >= 1.6x on 2 cores) and whether the
2-process table equals the 1-process table bit for bit.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIM, WIDTH = 64, 512


def _mlp_velocity():
    import torch

    gen = torch.Generator().manual_seed(1234)

    def layer(n_in, n_out):
        w = torch.randn(n_in, n_out, generator=gen, dtype=torch.float64) / n_in ** 0.5
        return w.float(), torch.zeros(n_out)

    (w1, b1), (w2, b2), (w3, b3) = layer(DIM + 1, WIDTH), layer(WIDTH, WIDTH), layer(WIDTH, DIM)

    def velocity(x, t):
        h = torch.cat([x, t[:, None].to(x.dtype)], dim=1)
        h = torch.nn.functional.silu(h @ w1 + b1)
        h = torch.nn.functional.silu(h @ w2 + b2)
        return h @ w3 + b3

    return velocity, {"w1": w1, "w2": w2, "w3": w3}


def worker(args) -> None:
    """One process of the job (alone, or one rank under torchrun)."""
    import torch

    torch.set_num_threads(1)
    import pandas as pd  # imported before the clock starts, like everything the job uses
    importlib.import_module("tqdm.auto")

    import kinetic_fm as kfm
    from kinetic_fm.runs import RunManifest, fingerprint, run_sharded, world_session

    velocity, weights = _mlp_velocity()

    def compute(seeds, advance):
        frames = []
        for lo in range(0, len(seeds), args.batch_size):
            chunk = [int(s) for s in seeds[lo:lo + args.batch_size]]
            res = kfm.sample(velocity, seeds=chunk, shape=(DIM,), steps=args.steps, solver="heun")
            frames.append(res.to_frame())
            advance(len(chunk))
        return pd.concat(frames, ignore_index=True)

    with world_session("cpu") as (coord, _):
        manifest = RunManifest(kind="benchmark", config={"steps": args.steps, "solver": "heun"},
                               identity={"mlp": fingerprint(weights)}, seed_start=0, n=args.n,
                               shard_size=args.shard_size)
        coord.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        run_sharded(args.out, manifest, compute, coordinator=coord, progress=False)
        cpu = time.process_time() - cpu_start  # this rank's own work, barrier wait excluded (gloo sleeps)
        elapsed = time.perf_counter() - start
        Path(f"{args.timing}.{coord.world.rank}").write_text(json.dumps({"seconds": elapsed, "cpu": cpu}))


def launch(nproc: int, args, out: Path, timing: Path) -> float:
    """Run the job with ``nproc`` processes; returns the end-to-end wall time in seconds."""
    # "--num-samples", never "--n": torchrun's parser would take "--n" for one of its own options
    job = [str(Path(__file__).resolve()), "--worker", "--num-samples", str(args.n), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size),
           "--out", str(out), "--timing", str(timing)]
    if nproc == 1:
        cmd = [sys.executable, *job]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *job]
    start = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{nproc}-process job failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n = 1024 instead of 4096")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-samples", dest="n", type=int, default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=None, help="default: n / 8")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--timing", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.n = args.n or (1024 if args.quick else 4096)
    args.shard_size = args.shard_size or max(1, args.n // 8)
    if args.worker:
        worker(args)
        return

    import pandas as pd

    from kinetic_fm.runs import read_run

    print(f"job: {args.n} samples x {args.steps} Heun steps, MLP {DIM}-{WIDTH}-{WIDTH}-{DIM} (float32), "
          f"shards of {args.shard_size}, batches of {args.batch_size}, 1 torch thread per process; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    inside, wall, critical_cpu = {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            tables = {}
            for nproc in (1, 2):  # alternate, so drifting background load hits both alike
                out, timing = Path(tmp) / f"run-{r}-{nproc}", Path(tmp) / f"timing-{r}-{nproc}.json"
                wall[nproc].append(launch(nproc, args, out, timing))
                ranks = [json.loads(Path(f"{timing}.{r}").read_text()) for r in range(nproc)]
                inside[nproc].append(ranks[0]["seconds"])  # rank 0 finishes last: it merges
                critical_cpu[nproc].append(max(t["cpu"] for t in ranks))
                tables[nproc] = read_run(out)
            try:
                pd.testing.assert_frame_equal(tables[1], tables[2], check_exact=True)
            except AssertionError:
                identical = False
            print(f"repeat {r + 1}: 1 process {inside[1][-1]:.2f} s, 2 processes {inside[2][-1]:.2f} s "
                  f"(ratio {inside[1][-1] / inside[2][-1]:.2f}x); load average {os.getloadavg()[0]:.1f}")
    med = {k: statistics.median(v) for k, v in inside.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    print(f"median sampling phase: 1 process {med[1]:.2f} s ({args.n / med[1]:.0f} samples/s), "
          f"2 processes {med[2]:.2f} s ({args.n / med[2]:.0f} samples/s)")
    print(f"throughput ratio 2 vs 1 process: {med[1] / med[2]:.2f}x (target >= 1.6x); "
          f"median of per-repeat ratios {statistics.median(a / b for a, b in zip(inside[1], inside[2])):.2f}x")
    med_cpu = {k: statistics.median(v) for k, v in critical_cpu.items()}
    print(f"CPU-time view (robust to background load): 1 process {med_cpu[1]:.2f} s, busiest of 2 ranks "
          f"{med_cpu[2]:.2f} s -> speed-up on 2 dedicated cores ~ {med_cpu[1] / med_cpu[2]:.2f}x")
    print(f"end-to-end wall incl. start-up: 1 process {med_wall[1]:.2f} s, torchrun x2 {med_wall[2]:.2f} s "
          f"(ratio {med_wall[1] / med_wall[2]:.2f}x)")
    print(f"2-process table identical to 1-process table (KPE bit-identical): {identical}")


if __name__ == "__main__":
    main()
