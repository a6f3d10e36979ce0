"""A ``kfm sample`` run killed with SIGKILL mid-way and resumed equals an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from kinetic_fm.cli import main
from kinetic_fm.runs import IncompleteRunError, read_run

FLAGS = ["--field", "mixture", "--n", 12, "--shard-size", 2, "--batch-size", 2, "--steps", 50,
         "--solver", "rk4", "--alpha0", 0.05, "--beta0", 0.02, "--dtype", "float64", "--no-progress"]
ARGS = [str(a) for a in FLAGS]


def _kill_after_first_shard(out, timeout_s: float = 120.0) -> int:
    """Start ``kfm sample`` in a child process, SIGKILL it once a shard is committed; return #committed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "kinetic_fm.cli", "sample", *ARGS, "--out", str(out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = out / "shards"
    deadline = time.monotonic() + timeout_s
    try:
        while not (shards.is_dir() and any(shards.glob("shard-*.json"))):
            if child.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"child ended or stalled before its first shard: {child.stderr.read().decode()}")
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return len(list(shards.glob("shard-*.json")))


def test_sigkill_then_resume_gives_the_uninterrupted_table(tmp_path, capsys):
    killed = tmp_path / "killed"
    committed = _kill_after_first_shard(killed)
    assert 1 <= committed < 6, "the child must be killed mid-run for this test to mean anything"
    assert not (killed / "results.parquet").exists()
    with pytest.raises(IncompleteRunError):
        read_run(killed)

    assert main(["sample", *ARGS, "--out", str(killed), "--resume"]) == 0
    assert f"kept {committed}" in capsys.readouterr().out
    assert main(["sample", *ARGS, "--out", str(tmp_path / "reference")]) == 0

    resumed, reference = read_run(killed), read_run(tmp_path / "reference")
    assert resumed["seed"].tolist() == list(range(12))
    pd.testing.assert_frame_equal(resumed.drop(columns="x"), reference.drop(columns="x"), check_exact=True)
    assert resumed["x"].map(list).tolist() == reference["x"].map(list).tolist()
    assert not list(killed.rglob("*.tmp-*"))  # no temporaries left behind
