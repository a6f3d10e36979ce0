"""Velocity-net training steps: per-parameter AdamW and EMA loops vs the multi-tensor ones.

``kinetic_fm.models.train`` uses ``AdamW(foreach=True)`` and one ``torch._foreach_lerp_`` for the
EMA since the eleventh session (torch's CPU default is the per-parameter loop). Trains the
README's digits MLP both ways on the same data and seed, in alternating rounds, and prints the
median time ratio and whether the weights, EMA and losses agree bit for bit.

    python benchmarks/train_step.py [--steps 300] [--rounds 3]
"""
from __future__ import annotations

import argparse
import importlib
import statistics

import torch

from _common import interleaved_rounds
from kinetic_fm.data import load_digits
from kinetic_fm.models import TrainConfig, VelocityMLP

training = importlib.import_module("kinetic_fm.models.train")  # the module, not the function it exports
multi_tensor_ema = training._ema_update


@torch.no_grad()
def per_parameter_ema(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
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
