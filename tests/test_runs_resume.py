"""A ``kfm sample`` run killed with SIGKILL mid-way and resumed equals an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from kinetic_fm.cli import main
from kinetic_fm.runs import IncompleteRunError, read_run

FLAGS = ["--field", "mixture", "--n", 12, "--shard-size", 2, "--batch-size", 2, "--steps", 50,
         "--solver", "rk4", "--alpha0", 0.05, "--beta0", 0.02, "--dtype", "float64", "--no-progress"]
ARGS = [str(a) for a in FLAGS]


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import kinetic_fm.runs.atomic as atomic
    from kinetic_fm.cli import main

    real = atomic.atomic_write

    def write(path, fill):  # SIGKILL right after the first shard's receipt (its commit) is written
        done = real(path, fill)
        if Path(path).name.startswith("shard-00000-") and Path(path).suffix == ".json":
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    atomic.atomic_write = write
    sys.exit(main(sys.argv[1:]))
""")


def _kill_after_first_shard(out, timeout_s: float = 300.0) -> int:
    """Run ``kfm sample`` in a child process that SIGKILLs itself once its first shard is committed
    (deterministic: a kill timed from outside raced a child that finished all 6 shards between two
    polls on a busy machine); return #committed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", _CHILD, "sample", *ARGS, "--out", str(out)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    return len(list((out / "shards").glob("shard-*.json")))


def test_sigkill_then_resume_gives_the_uninterrupted_table(tmp_path, capsys):
    killed = tmp_path / "killed"
    committed = _kill_after_first_shard(killed)
    assert committed == 1
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


def test_kfm_sample_says_a_resume_with_other_library_versions_as_its_warning(tmp_path, capsys):
    # the runner printed "warning: resuming with different library versions: ..." without the command's
    # "kfm sample:" its other warnings carry (helper-273)
    import json

    import torch

    run = tmp_path / "run"
    flags = ["sample", "--field", "gaussian", "--n", "4", "--shard-size", "2", "--steps", "2", "--no-progress",
             "--out", str(run)]
    assert main(flags) == 0
    body = json.loads((run / "manifest.json").read_text())
    body["versions"]["torch"] = "0.0.1"
    (run / "manifest.json").write_text(json.dumps(body))
    capsys.readouterr()
    assert main([*flags, "--resume"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "library versions" in line]
    assert warned == [f"kfm sample: warning: resuming with different library versions: torch 0.0.1 -> "
                      f"{torch.__version__}"]
