"""``kfm sample`` stopped at chosen points of its writes, then resumed, ends with the bytes of an
uninterrupted run (helper-188).

The stops are deterministic: a hook on the run's atomic writes raises KeyboardInterrupt (Ctrl-C,
in-process) or kills its own process with SIGKILL (in a child) at a named point, instead of a
signal timed from outside. The reference is an uninterrupted run of the same command, compared
byte for byte (results.parquet) and value for value (read_run, x included).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kinetic_fm.cli import main
from kinetic_fm.runs import read_run, read_samples
from kinetic_fm.runs.manifest import RunManifest

FLAGS = ["--field", "mixture", "--dim", "2", "--n", "10", "--shard-size", "3", "--batch-size", "3", "--steps", "12",
         "--solver", "heun", "--alpha0", "0.05", "--beta0", "0.02", "--no-progress"]

# (file the stop comes at, which of its writes, when): "before" its temporary is renamed into place,
# "after" it is (the shard's receipt, its commit record, not yet written)
STOPS = {
    "manifest": ("manifest.json", 1, "before"),
    "shard 2 half-written": ("shard-00001-of-00004.parquet", 1, "before"),
    "shard 2 without its receipt": ("shard-00001-of-00004.parquet", 1, "after"),
    "last receipt": ("shard-00003-of-00004.json", 1, "before"),
    "results": ("results.parquet", 1, "before"),
}

# what each stop leaves finished (a shard counts once its receipt is written): shards, samples
KEPT = {"manifest": (0, 0), "shard 2 half-written": (1, 3), "shard 2 without its receipt": (1, 3),
        "last receipt": (3, 9), "results": (4, 10)}


def _sample(out: Path, *extra: str) -> int:
    return main(["sample", *FLAGS, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert _sample(out) == 0
    return out


def _assert_same_run(run: Path, reference: Path) -> None:
    assert (run / "results.parquet").read_bytes() == (reference / "results.parquet").read_bytes()
    got, want = read_run(run), read_run(reference)
    pd.testing.assert_frame_equal(got.drop(columns="x"), want.drop(columns="x"), check_exact=True)
    np.testing.assert_array_equal(read_samples(run), read_samples(reference))
    assert not list(run.rglob("*.tmp-*"))  # a killed writer's temporaries are gone


def _stopping_writes(monkeypatch, name: str, nth: int, when: str, stop) -> None:
    """The run's atomic writes, with ``stop()`` called at the nth write of the file ``name``."""
    import kinetic_fm.runs.atomic as atomic
    import kinetic_fm.runs.shards as shards

    real = atomic.atomic_write
    seen = {"count": 0}

    def write(path, fill):
        if Path(path).name != name:
            return real(path, fill)
        seen["count"] += 1
        if seen["count"] != nth:
            return real(path, fill)
        if when == "before":
            def half(tmp):
                fill(tmp)
                stop()
            return real(path, half)
        done = real(path, fill)
        stop()
        return done

    monkeypatch.setattr(atomic, "atomic_write", write)
    monkeypatch.setattr(shards, "atomic_write", write)  # results.parquet's, imported by name


def _interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("stop", STOPS)
def test_ctrl_c_at_any_write_resumes_to_the_uninterrupted_run(tmp_path, reference, monkeypatch, capsys, stop):
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        _stopping_writes(patched, *STOPS[stop], _interrupt)
        assert _sample(run) == 130
    shards, samples = KEPT[stop]
    assert (f"interrupted: {shards} of 4 shard(s) finished ({samples} of 10 samples), kept; the samples of unfinished "
            "shards are lost (--shard-size bounds that loss); rerun the same command with --resume"
            ) in capsys.readouterr().err
    assert _sample(run, "--resume") == 0
    _assert_same_run(run, reference)


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import pytest
    import test_runs_interrupt as t

    t._stopping_writes(pytest.MonkeyPatch(), *t.STOPS[{stop!r}], lambda: os.kill(os.getpid(), signal.SIGKILL))
    sys.exit(t._sample(Path({out!r})))
""")


@pytest.mark.slow  # a child process importing torch: 5-15 s each
@pytest.mark.parametrize("stop", ["shard 2 half-written", "shard 2 without its receipt"])
def test_sigkill_inside_a_shard_write_resumes_to_the_uninterrupted_run(tmp_path, reference, capsys, stop):
    run = tmp_path / "run"
    code = _CHILD.format(tests=str(Path(__file__).parent), stop=stop, out=str(run))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = sorted(p.name for p in (run / "shards").iterdir())
    if stop == "shard 2 half-written":
        assert any(".tmp-" in name for name in left)  # the kill came with the temporary on disk
    else:
        assert "shard-00001-of-00004.parquet" in left and "shard-00001-of-00004.json" not in left
    assert _sample(run, "--resume") == 0
    if stop == "shard 2 without its receipt":  # named as what it is, then redone
        assert "shard-00001-of-00004.parquet is invalid (no receipt" in capsys.readouterr().err
    _assert_same_run(run, reference)


_TERM_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import pytest
    import test_runs_interrupt as t

    t._stopping_writes(pytest.MonkeyPatch(), *t.STOPS["shard 2 without its receipt"],
                       lambda: os.kill(os.getpid(), signal.SIGTERM))
    sys.exit(t._sample(Path({out!r})))
""")


@pytest.mark.slow  # a child process importing torch: 5-15 s
def test_sigterm_says_how_to_resume_as_ctrl_c_does_and_exits_143(tmp_path, reference):
    # SIGTERM (a scheduler's stop, `kill`) ended the run as SIGKILL does: nothing lost, but no
    # hint, and no status of its own (helper-188)
    run = tmp_path / "run"
    code = _TERM_CHILD.format(tests=str(Path(__file__).parent), out=str(run))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    assert child.stderr.strip().splitlines()[-1] == (
        "kfm sample: interrupted (SIGTERM): 1 of 4 shard(s) finished (3 of 10 samples), kept; the samples of "
        "unfinished shards are lost (--shard-size bounds that loss); rerun the same command with --resume to continue")
    assert _sample(run, "--resume") == 0
    _assert_same_run(run, reference)


_TERM_TRAIN_CHILD = textwrap.dedent("""
    import os, signal, sys
    import kinetic_fm.models as models
    from kinetic_fm.cli import main

    real = models.train

    def train(*args, **kwargs):  # SIGTERM as step 5 ends (--save-every 2 writes the resume state of step 4)
        def callback(step, loss):
            if step == 5:
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, callback=callback, **kwargs)

    models.train = train
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow  # a child process importing torch: 5-15 s
def test_kfm_train_stopped_by_sigterm_says_how_to_resume_and_resumes_bit_identically(tmp_path):
    from kinetic_fm.models import load_model

    flags = ["train", "--data", "moons", "--n", "64", "--steps", "8", "--batch-size", "8", "--width", "8",
             "--save-every", "2", "--checkpoints", "none", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", _TERM_TRAIN_CHILD, *flags, "--out", str(tmp_path / "cut")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    # it waits for the step's end and writes step 5's resume state: no step is lost
    assert child.stderr.strip().splitlines()[-1] == (
        "kfm train: interrupted (SIGTERM): step 5 of 8 was finished and its resume state saved, no step is lost; "
        "rerun the same command with --resume to continue")
    assert not (tmp_path / "cut" / "final.safetensors").exists()
    assert main([*flags, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert main([*flags, "--out", str(tmp_path / "full")]) == 0
    cut, full = load_model(tmp_path / "cut"), load_model(tmp_path / "full")
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(cut.state_dict().values(),
                                                                  full.state_dict().values()))


def test_a_full_disk_keeps_the_finished_shards_and_says_resume_continues(tmp_path, reference, monkeypatch, capsys):
    run = tmp_path / "run"

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        _stopping_writes(patched, "shard-00002-of-00004.json", 1, "before", full)
        assert _sample(run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert "the shards finished so far are kept" in err and "--resume" in err
    assert _sample(run, "--resume") == 0
    _assert_same_run(run, reference)


def test_a_run_refused_before_its_manifest_gets_no_resume_hint_for_a_full_disk(tmp_path, monkeypatch, capsys):
    # a disk full before the manifest is written has kept nothing: the hint would mislead
    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        _stopping_writes(patched, "manifest.json", 1, "before", full)
        assert _sample(tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" not in err


def test_a_deleted_or_truncated_shard_is_redone_to_the_same_bytes(tmp_path, reference, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shards = run / "shards"
    (shards / "shard-00000-of-00004.parquet").unlink()          # the user deleted a shard
    (shards / "shard-00002-of-00004.json").unlink()             # ... or its receipt
    half = shards / "shard-00003-of-00004.parquet"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])  # ... or cut one short
    (run / "results.parquet").unlink()
    assert _sample(run, "--resume") == 0
    out = capsys.readouterr().out
    assert "this process computed 3, kept 1" in out
    _assert_same_run(run, reference)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_manifest_is_refused_saying_how_to_go_on(tmp_path, reference, capsys, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    text = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(text[: len(text) // 2] if damage == "truncated" else "")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert _sample(run, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json" in err and "not valid JSON" in err
    assert "put back" in err and "choose a new --out" in err   # the way on, not only what is wrong
    # it read "RUN/manifest.json: the run manifest is ..." without the flag, where --samples and --train
    # read "FLAG RUN: its manifest.json is ...": so, before the field loads and under --repair's read (the
    # settings, --steps 9, not the run's)
    assert err.startswith(f"kfm sample: error: --out {run}: its manifest.json is not valid JSON ("), err
    assert _sample(run, "--resume", "--steps", "9", "--repair") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kfm sample: error: --out {run}: its manifest.json is not valid JSON ("), err
    assert "none of its 4 shard receipts records the run id" in err and "choose a new --out" in err, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched


_DAMAGES = {"truncated": lambda text: text[: len(text) // 2],
            "not an object": lambda text: json.dumps([json.loads(text)]),
            "missing key": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "shard_size"}),
            "no format": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "format"}),
            "no seeds": lambda text: json.dumps({**json.loads(text), "n": 0})}


@pytest.mark.parametrize("shards", [True, False], ids=["with shards", "without shards"])
@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_run_sharded_refuses_a_damaged_manifest_as_such_touching_nothing(tmp_path, damage, shards):
    # "no format" read as "unsupported manifest format None" and "no seeds" as a bare "n must be >= 1":
    # neither said that the file was damaged nor how to go on
    import pyarrow as pa

    from kinetic_fm.runs import run_sharded
    from kinetic_fm.runs.manifest import DamagedManifestError

    manifest = RunManifest(kind="test", config={"a": 1}, identity={}, seed_start=0, n=4, shard_size=2)

    def compute(seeds, advance):
        advance(len(seeds))
        return pa.table({"seed": seeds, "y": seeds * 2.0})

    def never(seeds, advance):
        raise AssertionError("a run with a damaged manifest computed a shard")

    run = tmp_path / "run"
    run_sharded(run, manifest, compute, progress=False, log=lambda _: None)
    if not shards:   # stopped after its manifest, before its first shard
        for path in (run / "shards").iterdir():
            path.unlink()
        (run / "results.parquet").unlink()
    path = run / "manifest.json"
    path.write_text(_DAMAGES[damage](path.read_text()))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for repair in (False, True):   # --repair with other settings than the run's: no receipt vouches
        with pytest.raises(DamagedManifestError, match=f"{path}: the run manifest.*put back a good copy"):
            run_sharded(run, manifest.__class__(**{**manifest.__dict__, "config": {"a": 2}}), never, resume=True,
                        repair=repair, progress=False, log=lambda _: None)
    said = "this command's settings give the run id its 2 shard receipts record" if shards else "hold no receipt"
    with pytest.raises(DamagedManifestError, match=said):   # the run's own settings, without repair
        run_sharded(run, manifest, never, resume=True, progress=False, log=lambda _: None)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_damaged_manifest_is_written_again_by_repair_when_the_shards_vouch_for_the_settings(tmp_path, reference,
                                                                                              capsys):
    # the shards' receipts record the run id (a sha256 of every compared setting): the command that made
    # the run rebuilds a manifest giving that id, which proves its settings the run's
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    good = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(good[: len(good) // 2])
    (run / "shards" / "shard-00001-of-00004.parquet").unlink()   # and one shard lost, to be redone
    (run / "results.parquet").unlink()
    for steps in ("12", "9"):   # refused before the field loads, the run's settings or not: --repair checks them
        assert _sample(run, "--resume", "--steps", steps) == 2
        err = capsys.readouterr().err
        assert ("if this command made the run, rerun it with --repair (repair=True): that writes manifest.json again "
                "from its settings only when they give the run id its 4 shard receipts record") in err, err
    assert _sample(run, "--resume", "--steps", "9", "--repair") == 2      # other settings are not the run's
    assert "none of its 4 shard receipts" in capsys.readouterr().err
    assert (run / "manifest.json").read_text() == good[: len(good) // 2]   # refused: nothing touched
    assert _sample(run, "--resume", "--repair") == 0
    captured = capsys.readouterr()
    assert "manifest.json was damaged: written again from this command's settings" in captured.err
    assert "this process computed 1, kept 3" in captured.out
    _assert_same_run(run, reference)
    assert (run / "manifest.json.damaged").read_text() == good[: len(good) // 2]
    repaired, original = (json.loads(text) for text in ((run / "manifest.json").read_text(), good))
    assert repaired["run_id"] == original["run_id"]
    assert {key: repaired[key] for key in ("kind", "config", "identity", "seed_start", "n", "shard_size")} == \
        {key: original[key] for key in ("kind", "config", "identity", "seed_start", "n", "shard_size")}
    written = (run / "manifest.json").read_text()
    assert _sample(run, "--resume", "--repair") == 0        # a readable manifest is left as it is
    assert (run / "manifest.json").read_text() == written and "was damaged" not in capsys.readouterr().err
    # --repair applies to a --resume only
    assert _sample(tmp_path / "new", "--repair") == 2
    assert "--repair applies to --resume only" in capsys.readouterr().err


def test_a_repair_scans_the_shard_receipts_once_under_the_lock(tmp_path, reference, monkeypatch, capsys):
    # kfm sample's early read under --repair scanned every shard receipt to build a refusal it then
    # discarded (read as "no run yet"); run_sharded scans them again under the lock, where it counts
    import shutil

    import kinetic_fm.runs.runner as runner

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    good = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(good[: len(good) // 2])
    scans, scan = [], runner._receipts_of
    monkeypatch.setattr(runner, "_receipts_of", lambda *args: scans.append(args) or scan(*args))
    assert _sample(run, "--resume", "--repair") == 0
    assert "manifest.json was damaged: written again" in capsys.readouterr().err
    assert len(scans) == 1
    _assert_same_run(run, reference)


def test_a_resume_reads_the_manifest_once_before_the_lock_and_once_under_it(tmp_path, monkeypatch):
    # it was read 4 times for a built-in field, 5 for a --model run (6 under dopri5), 6 for --field empirical
    import copy

    import torch

    from kinetic_fm.models import VelocityMLP, save_model

    torch.manual_seed(0)
    net = VelocityMLP((2,), hidden=8, depth=1)
    save_model(net, tmp_path / "net.safetensors", ema=copy.deepcopy(net))
    reads = []
    real = RunManifest.from_json.__func__

    def counted(cls, text):
        reads.append(json.loads(text)["run_id"])
        return real(cls, text)

    np.save(tmp_path / "items.npy", np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32))
    monkeypatch.setattr(RunManifest, "from_json", classmethod(counted))
    for name, flags in [("field", FLAGS),
                        ("net", ["--model", str(tmp_path / "net.safetensors"), "--n", "4", "--shard-size", "2",
                                 "--solver", "dopri5", "--no-progress"]),
                        ("empirical", ["--field", "empirical", "--train", str(tmp_path / "items.npy"), "--n", "4",
                                       "--shard-size", "2", "--steps", "4", "--no-progress"])]:
        run = tmp_path / name
        assert main(["sample", *flags, "--out", str(run)]) == 0
        assert reads == []  # a new run reads none
        assert main(["sample", *flags, "--out", str(run), "--resume"]) == 0
        assert len(reads) == 2, name
        reads.clear()


def test_resuming_a_fixed_step_net_run_with_another_batch_size_warns_that_the_last_bits_may_move(
        tmp_path, monkeypatch, capsys):
    # a net's GEMMs round by batch: the resumed table differed from the uninterrupted one in its
    # last bits, without a word (the EFM field and dopri5 nets warned already)
    import copy

    import torch

    from kinetic_fm.models import VelocityMLP, save_model

    torch.manual_seed(0)
    net = VelocityMLP((2,), hidden=16, depth=2)
    save_model(net, tmp_path / "net.safetensors", ema=copy.deepcopy(net))
    flags = ["--model", str(tmp_path / "net.safetensors"), "--n", "8", "--shard-size", "4", "--steps", "4",
             "--solver", "heun", "--no-progress"]
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        _stopping_writes(patched, "shard-00000-of-00002.json", 1, "after", _interrupt)
        assert main(["sample", *flags, "--batch-size", "4", "--out", str(run)]) == 130
    capsys.readouterr()
    assert main(["sample", *flags, "--batch-size", "3", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning: this run of a net started with --batch-size 4; the net's round-off depends on" in err
    assert "resume with --batch-size 4 for an identical table" in err
    assert main(["sample", *flags, "--batch-size", "4", "--out", str(run), "--resume"]) == 0
    assert "warning" not in capsys.readouterr().err


_CTRL_C_IN_NUMPYS_IMPORT = textwrap.dedent("""
    import sys

    class CtrlC:  # Ctrl-C arriving while numpy's package body imports numpy.linalg
        def find_spec(self, name, path=None, target=None):
            if name == "numpy.linalg":
                sys.meta_path.remove(self)
                raise KeyboardInterrupt
            return None

    sys.meta_path.insert(0, CtrlC())
    import kinetic_fm
    print("went on")
""")


def test_ctrl_c_while_numpy_loads_stops_kfm_instead_of_being_swallowed_by_torch():
    # torch imports numpy from C and clears any error it raises: a Ctrl-C in the first second of
    # `kfm sample` was dropped, and the run went on to the end (exit 0) or, numpy half-imported,
    # failed later with "module 'numpy' has no attribute 'unique'" (exit 1, a traceback)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", _CTRL_C_IN_NUMPYS_IMPORT], env=env, capture_output=True,
                           text=True, timeout=300)
    assert "went on" not in child.stdout
    assert child.returncode != 0 and child.stderr.strip().splitlines()[-1] == "KeyboardInterrupt", child.stderr
