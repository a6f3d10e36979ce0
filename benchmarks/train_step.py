"""Velocity-net training steps: per-parameter AdamW and EMA loops vs the multi-tensor ones; or, with
``--nets``, the MLP vs the U-Net on the 8x8 digits.

``kinetic_fm.models.train`` uses ``AdamW(foreach=True)`` and one ``torch._foreach_lerp_`` for the
EMA since the eleventh session (torch's CPU default is the per-parameter loop). Trains the
README's digits MLP both ways on the same data and seed, in alternating rounds, and prints the
median time ratio and whether the weights, EMA and losses agree bit for bit.

``--nets``: the two nets ``kfm train --data digits`` can train, ``--model mlp`` (what ``auto``
picks for 8x8 images, ``default_model``'s docstring says why) and ``--model unet``, each built by
``default_model`` for (1, 8, 8) and trained on the same 1,797 digits with the same seed and
``kfm train``'s defaults (batch 256), in alternating rounds, in this process with torch's default
threads. Each step is timed by ``train``'s callback (the first, which holds the set-up, left out);
prints each net's median step (the median of its rounds' medians) and the ratio U-Net / MLP, per
round too. Run it alone on the machine.

    python benchmarks/train_step.py [--steps 300] [--rounds 3]
    python benchmarks/train_step.py --nets [--steps 40] [--rounds 3]
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from _common import interleaved_rounds
from kinetic_fm.data import load_digits
from kinetic_fm.models import TrainConfig, VelocityMLP, default_model

training = importlib.import_module("kinetic_fm.models.train")  # the module, not the function it exports
multi_tensor_ema = training._ema_update


@torch.no_grad()
def per_parameter_ema(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


DIGITS_SHAPE = (1, 8, 8)


def digits_nets() -> dict[str, torch.nn.Module]:
    """The nets ``kfm train --data digits --model mlp`` and ``--model unet`` build, seeded alike."""
    nets = {}
    for kind in ("mlp", "unet"):
        torch.manual_seed(0)
        nets[kind] = default_model(kind, DIGITS_SHAPE)
    return nets


def step_times(model: torch.nn.Module, data: torch.Tensor, steps: int) -> list[float]:
    """Seconds of each training step after the first (which holds the set-up), by ``train``'s callback."""
    stamps: list[float] = []
    training.train(model, data, TrainConfig(steps=steps, batch_size=256, seed=0),
                   callback=lambda step, loss: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def compare_nets(steps: int, rounds: int) -> None:
    """The median training step of the digits U-Net over the digits MLP's (see the module's ``--nets``)."""
    data = load_digits().images.reshape(-1, *DIGITS_SHAPE)
    medians: dict[str, list[float]] = {"mlp": [], "unet": []}
    for _ in range(rounds):  # alternating, so a drift in the machine's load hits both nets alike
        for kind, model in digits_nets().items():  # fresh nets each round: the same steps every round
            medians[kind].append(statistics.median(step_times(model, data, steps)))
    mlp, unet = (statistics.median(medians[k]) for k in ("mlp", "unet"))
    per_round = ", ".join(f"{u / m:.1f}" for m, u in zip(medians["mlp"], medians["unet"]))
    print(f"8x8 digits ({data.shape[0]} images), batch 256, {steps} steps a net, medians of {rounds} alternating "
          f"rounds, {torch.get_num_threads()} threads: median step MLP {1e3 * mlp:.2f} ms, U-Net {1e3 * unet:.2f} ms; "
          f"U-Net / MLP {unet / mlp:.2f} (per round {per_round})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="steps a training (default 300; 40 with --nets: a U-Net step takes seconds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nets", action="store_true",
                        help="time the digits MLP's training step against the digits U-Net's instead")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 40 if args.nets else 300
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    if args.nets:
        if args.steps < 2:  # the first step holds the set-up and is left out of the median
            raise SystemExit(f"--steps must be >= 2 with --nets (the first step, which holds the set-up, is left "
                             f"out), got {args.steps}")
        compare_nets(args.steps, args.rounds)
        return
    data = load_digits().images.reshape(1797, -1)
    adamw = torch.optim.AdamW

    def run(foreach: bool):
        def fit():
            training._ema_update = multi_tensor_ema if foreach else per_parameter_ema
            torch.optim.AdamW = lambda *a, **k: adamw(*a, **{**k, "foreach": foreach})
            try:
                torch.manual_seed(0)
                result = training.train(VelocityMLP((64,)), data, TrainConfig(steps=args.steps, batch_size=256))
            finally:
                torch.optim.AdamW, training._ema_update = adamw, multi_tensor_ema
            return result
        return fit

    times, results = interleaved_rounds({"per-parameter": run(False), "multi-tensor": run(True)}, args.rounds)
    old, new = (statistics.median(times[k]) for k in ("per-parameter", "multi-tensor"))
    a, b = results["per-parameter"], results["multi-tensor"]
    same = (torch.equal(a.losses, b.losses)
            and all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
            and all(torch.equal(x, y) for x, y in zip(a.ema.state_dict().values(), b.ema.state_dict().values())))
    print(f"{args.steps} steps of the digits MLP, medians of {args.rounds} alternating rounds, "
          f"{torch.get_num_threads()} threads: multi-tensor / per-parameter time {new / old:.3f}; "
          f"weights, EMA and losses bit-identical: {same}")


if __name__ == "__main__":
    main()
