"""benchmarks/readme_timings.py's and train_step.py's argument checks (the scripts themselves are
run by hand: minutes)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("flag", ["--mlp-steps", "--unet-steps", "--contention-steps"])
def test_a_timing_of_one_step_is_refused_up_front_naming_the_flag(flag, monkeypatch):
    # a per-step median leaves out the first step: --mlp-steps 1 or --unet-steps 1 passed the check
    # (">= 1") and ended, after minutes of training, in statistics' "no median for empty data"
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import readme_timings

    monkeypatch.setattr(sys, "argv", ["readme_timings.py", flag, "1"])
    monkeypatch.setattr(readme_timings, "mlp_job", lambda *a: pytest.fail("the check let it run"))
    with pytest.raises(SystemExit) as stop:
        readme_timings.main()
    assert str(stop.value) == f"{flag} must be >= 2 (the first step, which holds the set-up, is left out), got 1"


def test_train_steps_net_comparison_times_the_nets_kfm_train_builds_for_digits(monkeypatch):
    # benchmarks/train_step.py --nets backs default_model's reason for "auto" picking the MLP on 8x8 digits
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_step

    from kinetic_fm.models import default_model

    nets = train_step.digits_nets()
    assert type(default_model("auto", (1, 8, 8))) is type(nets["mlp"])
    for kind, net in nets.items():
        assert net.kind == kind and net.config == default_model(kind, (1, 8, 8)).config
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--nets", "--steps", "1"])
    monkeypatch.setattr(train_step, "compare_nets", lambda *a: pytest.fail("the check let it run"))
    with pytest.raises(SystemExit, match="--steps must be >= 2 with --nets"):
        train_step.main()
