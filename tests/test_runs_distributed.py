"""``kfm sample`` under torchrun (2 processes, gloo on CPU) equals the single-process run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from kinetic_fm.cli import main
from kinetic_fm.runs import RunLock, read_run

# dopri5 + KTS: ranks take different numbers of adaptive steps, and must not wait on each other
FLAGS = ["--field", "mixture", "--shard-size", 3, "--batch-size", 2, "--solver", "dopri5",
         "--alpha0", 0.05, "--dtype", "float64", "--no-progress"]
ARGS = [str(a) for a in FLAGS]


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    # "--num-samples", not "--n": torchrun's own parser would take "--n" for an abbreviation
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "kinetic_fm.cli", "sample", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_gloo_ranks_give_the_single_process_table_bit_for_bit(tmp_path):
    run = torchrun(2, *ARGS, "--num-samples", "10", "--out", str(tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "world size 2" in run.stdout and run.stdout.count("median") == 1  # rank 0 alone reports
    assert main(["sample", *ARGS, "--n", "10", "--out", str(tmp_path / "one")]) == 0

    two, one = read_run(tmp_path / "two"), read_run(tmp_path / "one")
    assert two["seed"].tolist() == list(range(10))
    pd.testing.assert_frame_equal(two.drop(columns="x"), one.drop(columns="x"), check_exact=True)
    assert two["x"].map(list).tolist() == one["x"].map(list).tolist()
    assert two["nfe"].nunique() > 1  # per-sample adaptive steps really differed
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["runtime"]["world_size"] == 2


@pytest.mark.slow
def test_mismatched_resume_under_torchrun_fails_on_every_rank(tmp_path):
    out = str(tmp_path / "run")
    assert torchrun(2, *ARGS, "--num-samples", "4", "--out", out).returncode == 0
    run = torchrun(2, *ARGS, "--num-samples", "4", "--out", out, "--resume", "--beta0", "0.02")
    assert run.returncode != 0
    assert "--beta0 (the run's 0.01, now 0.02)" in run.stdout + run.stderr   # the flag, not the manifest's field


@pytest.mark.slow
def test_resume_with_a_different_world_size_completes_the_same_table(tmp_path):
    out = tmp_path / "run"
    assert main(["sample", *ARGS, "--n", "12", "--out", str(tmp_path / "one")]) == 0
    assert main(["sample", *ARGS, "--n", "12", "--out", str(out)]) == 0
    for name in ("shard-00001-of-00004", "shard-00002-of-00004"):  # lose two shards
        (out / "shards" / f"{name}.parquet").unlink()
    run = torchrun(2, *ARGS, "--num-samples", "12", "--out", str(out), "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    pd.testing.assert_frame_equal(read_run(out), read_run(tmp_path / "one"), check_exact=True)


@pytest.mark.slow
def test_a_second_job_on_a_busy_folder_stops_on_every_rank_before_sampling(tmp_path):
    out = tmp_path / "run"
    assert main(["sample", *ARGS, "--n", "4", "--out", str(out)]) == 0
    lost = out / "shards" / "shard-00001-of-00002.parquet"
    lost.unlink()  # work that the second job would redo
    with RunLock(out):  # this process is the first writer
        run = torchrun(2, *ARGS, "--num-samples", "4", "--out", str(out), "--resume")
    assert run.returncode != 0
    text = run.stdout + run.stderr
    assert f"run folder {out} is in use by another writer: process {os.getpid()} on host" in text
    assert "rank 1: stopped because rank 0 refused the run directory" in text
    assert not lost.exists()


@pytest.mark.slow
def test_a_rank_started_with_other_settings_stops_every_rank_before_touching_a_shard(tmp_path):
    # only rank 0 compared the folder with its settings: a rank 1 given --beta0 0.02 found the
    # finished run's shards "written by a different run", deleted them, wrote its own and exited
    # 0, leaving the run unreadable (helper-150)
    out = tmp_path / "run"
    assert main(["sample", *ARGS, "--n", "8", "--out", str(out)]) == 0
    shards = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    cli = [sys.executable, "-m", "kinetic_fm.cli", "sample", *ARGS, "--n", "8", "--out", str(out), "--resume"]
    with socket.socket() as probe:  # a free port (torchrun's --standalone picks its own)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1", "KFM_DIST_TIMEOUT_S": "120"}
    ranks = [subprocess.Popen(cli + extra, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r, extra in ((0, []), (1, ["--beta0", "0.02"]))]
    texts = [p.communicate(timeout=240)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [2, 2], texts
    for text in texts:
        assert "rank 1 was started with other settings than rank 0 (config.shaping.beta0 (stored 0.01, now 0.02)" in text
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == shards
    assert read_run(out)["seed"].tolist() == list(range(8))  # still whole and readable


@pytest.mark.slow
def test_the_sampling_settings_warnings_come_once_under_torchrun(tmp_path):
    # each rank sampling a shard said "--quadrature 'left' takes each step's power ..." again; rank 0 says it once
    run = torchrun(2, *ARGS, "--num-samples", "4", "--out", str(tmp_path / "run"), "--quadrature", "left")
    assert run.returncode == 0, run.stderr[-3000:]
    said = run.stdout + run.stderr
    assert said.count("--quadrature 'left' takes each step's power at its start") == 1, said[-3000:]
