"""The README's `kfm train` timings on MNIST, and two training processes sharing the cores.

The README's two MNIST jobs (the defaults give 2,000 steps):

    kfm train --data mnist:data/mnist --n 1024 --batch-size 64 --out runs/mnist               # U-Net (auto)
    kfm train --data mnist:data/mnist --n 1024 --batch-size 64 --model mlp --out runs/mnist-mlp

Every training runs in a fresh process with torch's default thread count (OMP_NUM_THREADS and
MKL_NUM_THREADS taken out of its environment, as a user's shell has them) unless said otherwise.

(a) MLP job: the README's command whole (`python -m kinetic_fm.cli train ...`), launch to exit,
    in ``--repeats`` runs; beside it the median step of the same training times 2,000, to show
    what an extrapolation leaves out (start-up, decoding the data, hashing it, the saves).
(b) U-Net job: the median step over ``--unet-steps`` steps of the same training (each step timed
    by ``train``'s callback; the first, which includes the set-up, left out), times 2,000: an
    EXTRAPOLATION of the job, not a run of it. The median of ``--repeats`` processes' medians.
(c) Oversubscription: two identical processes training ``--contention-steps`` steps of the
    ``--contention-model`` net, started together once both have loaded, first each with the
    default threads, then each with OMP_NUM_THREADS=1; beside one process alone under each
    setting, in ``--rounds`` alternating rounds. Slowdown = the median step of the pair (both
    processes' steps, those that ended while both still trained) / the lone process's median.

    python benchmarks/readme_timings.py --mnist ../shared/data/mnist   # the full run, alone on the machine
    python benchmarks/readme_timings.py --quick                        # smoke run: 9 short processes, no figures

``--mnist`` is the folder of the IDX files (default ``../shared/data/mnist`` beside the repository);
where it is absent a synthetic stand-in of the same shape (60,000 uniform random 28 x 28 bytes,
raw IDX) is written to a temporary folder and a note says so: the step times depend on the shapes,
not the pixels, but the start-up then decodes a raw file instead of a .gz one.
Prints medians and ratios; quote those (BENCHMARKS.md), with the machine's core count it prints.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO

JOB_STEPS = 2000  # kfm train's default --steps: neither README command sets it
JOB_FLAGS = ["--n", "1024", "--batch-size", "64"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _environment(threads: int | None) -> dict[str, str]:
    """This process's environment for a child: ``threads`` None takes the thread variables out
    (torch's default, one thread per core), a number sets them; this checkout's src comes first."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def write_standin(folder: Path, n: int = 60_000) -> None:
    """A synthetic MNIST training split in ``folder``: ``n`` uniform random 28 x 28 images and labels
    0..9, raw (uncompressed) IDX files with the official names and headers."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    (folder / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + n.to_bytes(4, "big")
                                                     + labels.tobytes())


# --- one training process -------------------------------------------------------------------------

def worker(spec: dict) -> None:
    """Train as `kfm train` does (same loader, subset seed, net, config) and print one JSON line:
    the thread count and the end of every step on ``time.monotonic``'s clock (system-wide, so the
    processes of a pair share it). With ``spec["wait"]`` it prints "ready" once loaded and starts
    on a line from stdin."""
    import torch

    from kinetic_fm.data import dataset_rows, load_dataset
    from kinetic_fm.models import TrainConfig, default_model, train

    ds = load_dataset(spec["data"], n=1024, seed=0, progress=False)
    data = dataset_rows(ds)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = default_model(spec["model"], data.shape[1:])
    config = TrainConfig(steps=spec["steps"], batch_size=64, seed=0)
    stamps: list[float] = []
    if spec["wait"]:
        print("ready", flush=True)
        sys.stdin.readline()
    train(model, data, config, out=spec["out"], callback=lambda step, loss: stamps.append(time.monotonic()))
    print(json.dumps({"threads": torch.get_num_threads(), "kind": model.kind, "stamps": stamps}), flush=True)


def _launch(data: str, model: str, steps: int, out: Path, threads: int | None, wait: bool) -> subprocess.Popen:
    spec = {"data": data, "model": model, "steps": steps, "out": str(out), "wait": wait}
    return subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=_environment(threads),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"a training process failed (exit {proc.returncode}); its stderr is above")
    return json.loads(stdout.strip().splitlines()[-1])


def run_together(data: str, model: str, steps: int, tmp: Path, threads: int | None, copies: int) -> list[dict]:
    """``copies`` identical training processes, released at once after all have loaded."""
    procs = [_launch(data, model, steps, Path(tempfile.mkdtemp(dir=tmp)) / "run", threads, wait=True)
             for _ in range(copies)]
    for proc in procs:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.wait()
            raise RuntimeError(f"a training process failed to load (exit {proc.returncode}); its stderr is above")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return [_result(proc) for proc in procs]


def median_step(results: list[dict]) -> float:
    """The median step (seconds) of processes that ran at once: the times between consecutive
    steps (the first step, which includes the set-up, left out) that ended while all of them were
    still training, pooled."""
    overlap_end = min(r["stamps"][-1] for r in results)
    steps = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:]) if b <= overlap_end]
    return statistics.median(steps)


# --- the three measurements -----------------------------------------------------------------------

def mlp_job(data: str, tmp: Path, repeats: int, job_steps: int, mlp_steps: int) -> None:
    command = [sys.executable, "-m", "kinetic_fm.cli", "train", "--data", data, *JOB_FLAGS, "--model", "mlp",
               "--no-progress"] + ([] if job_steps == JOB_STEPS else ["--steps", str(job_steps)])
    walls = []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(dir=tmp)) / "run"
        start = time.perf_counter()
        subprocess.run(command + ["--out", str(out)], env=_environment(None), check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
    whole = statistics.median(walls)
    runs = [_result(_launch(data, "mlp", mlp_steps, Path(tempfile.mkdtemp(dir=tmp)) / "run", None, wait=False))
            for _ in range(repeats)]
    step = statistics.median(median_step([r]) for r in runs)
    label = "the README's job" if job_steps == JOB_STEPS else f"{job_steps} steps, NOT the README's {JOB_STEPS}"
    print(f"(a) MLP job, `kfm train --model mlp` whole ({label}), {runs[0]['threads']} threads: "
          f"median {whole:.1f} s wall of {repeats} ({', '.join(f'{w:.1f}' for w in walls)} s)")
    print(f"    its median step {1e3 * step:.2f} ms (medians of {repeats} processes x {mlp_steps} steps); "
          f"x {job_steps} = {step * job_steps:.1f} s: the whole job / that = {whole / (step * job_steps):.2f}")


def unet_job(data: str, tmp: Path, repeats: int, unet_steps: int) -> None:
    runs = [_result(_launch(data, "auto", unet_steps, Path(tempfile.mkdtemp(dir=tmp)) / "run", None, wait=False))
            for _ in range(repeats)]
    medians = [median_step([r]) for r in runs]
    step = statistics.median(medians)
    print(f"(b) U-Net job (`--model auto` picks {runs[0]['kind']}), {runs[0]['threads']} threads: median step "
          f"{step:.3f} s (median of {repeats} processes' medians over steps 2..{unet_steps}: "
          f"{', '.join(f'{m:.3f}' for m in medians)} s)")
    print(f"    x {JOB_STEPS} steps = {step * JOB_STEPS:.0f} s = {step * JOB_STEPS / 60:.1f} min: an EXTRAPOLATION "
          "(no whole run; start-up and the saves every 100 steps not included; see (a) for their share)")


def contention(data: str, tmp: Path, model: str, steps: int, rounds: int) -> None:
    settings = {"default threads": None, "OMP_NUM_THREADS=1": 1}
    per_round: dict[str, list[tuple[float, float, int]]] = {name: [] for name in settings}
    for _ in range(rounds):  # alternating, so a drift in the machine's load hits both settings alike
        for name, threads in settings.items():
            alone = run_together(data, model, steps, tmp, threads, copies=1)
            pair = run_together(data, model, steps, tmp, threads, copies=2)
            per_round[name].append((median_step(alone), median_step(pair), alone[0]["threads"]))
    print(f"(c) two `{model}` trainings at once vs one alone, {os.cpu_count()} CPUs, medians of {rounds} rounds "
          f"x {steps} steps:")
    lone = {}
    for name, rows in per_round.items():
        alone, pair = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        lone[name] = alone
        ratios = ", ".join(f"{p / a:.1f}x" for a, p, _ in rows)
        print(f"    {name} ({rows[0][2]} per process): step alone {1e3 * alone:.2f} ms, in the pair "
              f"{1e3 * pair:.2f} ms: slowdown {pair / alone:.1f}x (per round {ratios})")
    print(f"    alone, default threads / OMP_NUM_THREADS=1 step: "
          f"{lone['default threads'] / lone['OMP_NUM_THREADS=1']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder of the MNIST IDX files (default ../shared/data/mnist); a synthetic stand-in "
                             "where absent")
    parser.add_argument("--repeats", type=int, default=3, help="processes per measurement in (a) and (b)")
    parser.add_argument("--mlp-steps", type=int, default=300, help="steps of (a)'s per-step timing")
    parser.add_argument("--unet-steps", type=int, default=40, help="steps of (b)'s per-step timing")
    parser.add_argument("--contention-model", choices=("mlp", "auto"), default="mlp",
                        help="(c)'s net: mlp, or auto (the U-Net; slow when oversubscribed)")
    parser.add_argument("--contention-steps", type=int, default=60, help="steps of each process in (c)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (c)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every part in seconds: no figures")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    for name in ("repeats", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("mlp_steps", "unet_steps", "contention_steps"):  # median_step leaves the first step out
        if getattr(args, name) < 2:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 2 (the first step, which holds the set-up, "
                             f"is left out), got {getattr(args, name)}")
    job_steps = JOB_STEPS
    if args.quick:
        args.repeats, args.mlp_steps, args.unet_steps, args.contention_steps, args.rounds = 1, 4, 2, 3, 1
        job_steps = 4
    import torch

    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, the jobs' threads: torch's default"
          + (" (--quick: a smoke run; these numbers are not figures)" if args.quick else ""))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.mnist.is_dir():
            data = f"mnist:{args.mnist.resolve()}"
        else:
            (tmp / "mnist").mkdir()
            write_standin(tmp / "mnist")
            data = f"mnist:{tmp / 'mnist'}"
            print(f"NOTE: no MNIST folder at {args.mnist}; using a synthetic stand-in of the same shape "
                  "(60,000 random 28 x 28 images, raw IDX)")
        mlp_job(data, tmp, args.repeats, job_steps, args.mlp_steps)
        unet_job(data, tmp, args.repeats, args.unet_steps)
        contention(data, tmp, args.contention_model, args.contention_steps, args.rounds)


if __name__ == "__main__":
    main()
