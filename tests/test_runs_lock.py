"""One writer per run folder: the ``.lock`` flock of kinetic_fm.runs.

The holders are real processes (this file run as a script, see the end), synchronised by a line
they print once they hold the lock and by their stdin, never by sleeps. The per-seed
"computation" is test_runs_shards' deterministic function of the seed.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kinetic_fm.cli import main
from kinetic_fm.runs import RunLock, RunLockedError, RunManifest, World, merge_shards, read_run, run_sharded
from kinetic_fm.runs import lock as lock_module
from kinetic_fm.runs.lock import LOCK_NAME, read_holder
from test_runs_shards import Recorder, expected_frame  # the same deterministic per-seed computation


def assert_rows(frame: pd.DataFrame, seeds) -> None:
    """``frame`` holds exactly the rows of ``seeds`` (x compared as lists: Parquet gives arrays)."""
    want = expected_frame(seeds)
    pd.testing.assert_frame_equal(frame.drop(columns="x"), want.drop(columns="x"), check_exact=True)
    assert [list(x) for x in frame["x"]] == want["x"].tolist()


def _manifest() -> RunManifest:
    return RunManifest(kind="test", config={"a": 1}, identity={"h": "0"}, seed_start=3, n=10, shard_size=3)


def _run(run_dir, resume=False, compute=None, coordinator=None):
    return run_sharded(run_dir, _manifest(), compute or Recorder(), resume=resume, coordinator=coordinator,
                       progress=False, log=lambda m: None)


@contextmanager
def holder(mode: str, folder: Path):
    """A child process holding ``folder``'s lock: ``"lock"`` holds the bare lock, ``"run"`` is a
    run stopped inside its second shard (the first one committed). Yields the Popen."""
    child = subprocess.Popen([sys.executable, __file__, mode, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # blocks until the child holds the lock (or ends)
        if line != "held\n":
            child.kill()
            raise AssertionError(f"the holder did not start: {line!r} {child.stderr.read()}")
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout, child.stderr):
            pipe.close()


def test_a_second_writer_stops_at_once_naming_folder_and_holder(tmp_path):
    run = tmp_path / "run"
    with holder("run", run) as child:
        compute = Recorder()
        with pytest.raises(RunLockedError) as caught:
            _run(run, resume=True, compute=compute)
        message = str(caught.value)
        assert str(run) in message and f"process {child.pid} on host {socket.gethostname()}" in message
        assert "writing since" in message and "Wait for it to finish" in message and "another --out" in message
        assert caught.value.holder.pid == child.pid
        assert compute.calls == []  # refused before any sampling work
        assert sorted(p.name for p in (run / "shards").glob("*.json")) == ["shard-00000-of-00004.json"]


def test_a_killed_holder_blocks_nothing_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    run = tmp_path / "run"
    with holder("run", run) as child:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert read_holder(run).pid == child.pid  # its record is left behind, yet the lock is gone

    compute = Recorder()
    out = _run(run, resume=True, compute=compute)
    assert out.skipped == (0,) and out.computed == (1, 2, 3)
    assert compute.calls == [[6, 7, 8], [9, 10, 11], [12]]
    reference = _run(tmp_path / "reference")
    pd.testing.assert_frame_equal(out.table.to_pandas(), reference.table.to_pandas(), check_exact=True)
    pd.testing.assert_frame_equal(read_run(run), read_run(tmp_path / "reference"), check_exact=True)
    assert read_holder(run) is None and (run / LOCK_NAME).read_text() == ""  # emptied when released


@pytest.mark.skipif(lock_module.fcntl is None, reason="needs flock")
def test_a_refusal_does_not_name_a_killed_writer_whose_record_is_left(tmp_path):
    # a SIGKILL leaves the holder's record in .lock; a new writer takes the lock, then writes its
    # own record: a refusal in between named the dead writer as the one "writing since" then
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from kinetic_fm.runs.lock import LockHolder

    (tmp_path / LOCK_NAME).write_text(LockHolder(socket.gethostname(), dead.pid, "2020-01-01T00:00:00+00:00").to_json())
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)    # the new writer, between its flock and its record
    try:
        lock_module.fcntl.flock(fd, lock_module.fcntl.LOCK_EX | lock_module.fcntl.LOCK_NB)
        with pytest.raises(RunLockedError) as caught:
            RunLock(tmp_path).acquire()
    finally:
        os.close(fd)
    assert caught.value.holder is None
    assert str(dead.pid) not in str(caught.value) and "just starting" in str(caught.value)
    alive = LockHolder(socket.gethostname(), os.getppid(), "2020-01-01T00:00:00+00:00")
    (tmp_path / LOCK_NAME).write_text(alive.to_json())    # a live holder is still named
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
    try:
        lock_module.fcntl.flock(fd, lock_module.fcntl.LOCK_EX | lock_module.fcntl.LOCK_NB)
        with pytest.raises(RunLockedError, match=f"process {os.getppid()} on host"):
            RunLock(tmp_path).acquire()
    finally:
        os.close(fd)


def test_the_cli_reports_a_busy_folder_in_one_line_and_exits_non_zero(tmp_path, capsys):
    from kinetic_fm.cli import main

    run = tmp_path / "run"
    flags = ["sample", "--field", "gaussian", "--n", "4", "--steps", "2", "--shard-size", "2", "--no-progress",
             "--out", str(run)]
    assert main(flags) == 0
    capsys.readouterr()
    with holder("lock", run) as child:
        assert main([*flags, "--resume"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"kfm sample: error: run folder {run} is in use by another writer: "
                                   f"process {child.pid} on host ")
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1 and captured.out == ""


_EMPIRICAL = ["--field", "empirical", "--train", "train.npy"]


@pytest.mark.parametrize("made, resumed", [
    (_EMPIRICAL, _EMPIRICAL),
    (_EMPIRICAL, [*_EMPIRICAL, "--steps", "3"]),                         # a changed setting
    (_EMPIRICAL, ["--field", "empirical", "--train", "other.npy"]),      # other training items (by the header)
    (_EMPIRICAL, ["--field", "gaussian"]),                               # another kind of run
    (["--field", "gaussian"], _EMPIRICAL),
    (["--field", "gaussian"], ["--field", "gaussian", "--n", "6"]),
])
def test_kfm_sample_resuming_a_busy_folder_is_told_of_its_writer_whatever_the_settings(tmp_path, capsys, made,
                                                                                       resumed):
    # README: the lock is taken "from before it looks into the folder". The resume checks that come
    # before the --train items load read the manifest first: another writer's folder was refused over
    # its settings (exit 2, "the run ... samples the exact field of --train items"), where the user
    # needs to hear that another process writes there
    from kinetic_fm.cli import main

    np.save(tmp_path / "train.npy", np.arange(12.0).reshape(6, 2))
    np.save(tmp_path / "other.npy", np.arange(14.0).reshape(7, 2))
    run = tmp_path / "run"
    settings = ["--n", "4", "--steps", "2", "--shard-size", "2", "--no-progress", "--out", str(run)]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["sample", *made, *settings]) == 0
        capsys.readouterr()
        resume = ["sample", *settings, *resumed, "--resume"]   # later flags win: --n 6, --steps 3
        with holder("lock", run) as child:
            assert main(resume) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kfm sample: error: run folder {run} is in use by another writer: "
                              f"process {child.pid} "), err
        assert main(resume) == (0 if resumed == made else 2)   # free: the settings are judged
        assert "in use" not in capsys.readouterr().err
    finally:
        os.chdir(cwd)


def test_kfm_sample_into_a_busy_folder_stops_before_loading_the_model(tmp_path, capsys, monkeypatch):
    # the lock was met inside run_sharded, after --model had been loaded and hashed: minutes for
    # a large checkpoint, only to be refused
    import copy

    from kinetic_fm.cli import main
    from kinetic_fm.models import VelocityMLP, checkpoint, save_model

    net = VelocityMLP(2, hidden=8, depth=1)
    save_model(net, tmp_path / "net.safetensors", ema=copy.deepcopy(net))
    loaded = []
    real = checkpoint.load_model

    def recording(*args, **kwargs):
        loaded.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_model", recording)
    run = tmp_path / "run"
    flags = ["sample", "--model", str(tmp_path / "net.safetensors"), "--n", "4", "--steps", "2",
             "--no-progress", "--out", str(run)]
    with holder("lock", run) as child:
        assert main(flags) == 2
    assert capsys.readouterr().err.startswith(f"kfm sample: error: run folder {run} is in use by another "
                                              f"writer: process {child.pid} ")
    assert loaded == [] and sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    assert main(flags) == 0 and len(loaded) == 1   # free again: loaded once, and the run goes through
    assert read_run(run).shape[0] == 4


def test_kfm_sample_holds_the_lock_from_its_early_check_through_the_run(tmp_path, capsys, monkeypatch):
    # the early check took the lock and let it go, and run_sharded took it again after --model had
    # been loaded: a second writer starting in between got the folder, and this run was refused
    # only after loading. A second process trying the lock while the model loads is refused now.
    import copy

    from kinetic_fm.cli import main
    from kinetic_fm.models import VelocityMLP, checkpoint, save_model

    net = VelocityMLP(2, hidden=8, depth=1)
    save_model(net, tmp_path / "net.safetensors", ema=copy.deepcopy(net))
    run = tmp_path / "run"
    flags = ["sample", "--model", str(tmp_path / "net.safetensors"), "--n", "4", "--steps", "2",
             "--no-progress", "--out", str(run)]
    assert main(flags) == 0                                       # the folder now has its .lock file
    answers, real = [], checkpoint.load_model
    probe = ("import sys; from kinetic_fm.runs import RunLock, RunLockedError\n"
             "try:\n    RunLock(sys.argv[1]).acquire().release(); print('got it')\n"
             "except RunLockedError: print('refused')")

    def load_while_another_process_tries_the_lock(*args, **kwargs):
        done = subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True)
        answers.append(done.stdout.strip() or done.stderr[-500:])
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_model", load_while_another_process_tries_the_lock)
    assert main([*flags, "--resume"]) == 0
    assert answers == ["refused"]
    capsys.readouterr()
    assert read_holder(run) is None and RunLock(run).acquire().release() is None   # let go at the end

    def failing(*args, **kwargs):
        raise OSError("the disk went away")

    monkeypatch.setattr(checkpoint, "load_model", failing)       # an error before run_sharded lets go too
    assert main([*flags, "--resume"]) == 2
    assert "the disk went away" in capsys.readouterr().err
    assert read_holder(run) is None and RunLock(run).acquire().release() is None


def test_kfm_train_into_a_busy_folder_stops_before_writing(tmp_path, capsys):
    # two `kfm train --resume` on one folder used to overwrite each other's resume states
    from kinetic_fm.cli import main

    run = tmp_path / "train"
    with holder("lock", run) as child:
        assert main(["train", "--data", "gmm", "--n", "64", "--steps", "3", "--batch-size", "8", "--width", "8",
                     "--no-progress", "--resume", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kfm train: error: run folder {run} is in use by another writer: process {child.pid} ")
    assert "then --resume if it stopped early" in err and err.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]   # no config, state or checkpoint written


def test_kfm_train_on_centred_data_into_a_busy_folder_keeps_the_holders_data_mean(tmp_path, monkeypatch):
    # `kfm train` wrote <out>/data_mean.safetensors (CelebA's mean, which `kfm sample --model` adds
    # back) before train() took the lock: a refused second run replaced the running one's mean
    import dataclasses

    import torch

    import kinetic_fm.data as data
    from kinetic_fm.cli import main
    from kinetic_fm.models import load_weights

    real = data.load_dataset

    def centred(name, n=None, seed=0, **kwargs):
        ds = real("digits", n=n, seed=seed)
        return dataclasses.replace(ds, mean=torch.full(ds.images.shape[1:], 0.25))

    monkeypatch.setattr(data, "load_dataset", centred)
    args = ["train", "--data", "digits", "--n", "32", "--steps", "2", "--batch-size", "8", "--width", "8",
            "--no-progress", "--out"]
    run = tmp_path / "train"
    with holder("lock", run):
        assert main(args + [str(run)]) == 2
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    assert main(args + [str(run)]) == 0          # free: the mean is written with the run
    assert float(load_weights(run / "data_mean.safetensors")["mean"].mean()) == 0.25


def test_kfm_reproduce_into_a_busy_folder_stops_before_training(tmp_path):
    from kinetic_fm.studies.config import ReproduceConfig
    from kinetic_fm.studies.reproduce import reproduce

    with holder("lock", tmp_path):
        with pytest.raises(RunLockedError, match="then run the same command again if it stopped early"):
            reproduce(ReproduceConfig.preset("tiny"), tmp_path, progress=False)
    assert not any((tmp_path / "cache").iterdir()) and not any((tmp_path / "models").iterdir())


class ThreadJob:
    """The collectives of a job whose ranks are threads of this process (see Coordinator)."""

    def __init__(self, size: int):
        self.size, self.box, self.boxes = size, None, [None] * size
        self._barrier = threading.Barrier(size, timeout=60)  # a hang guard only

    def coordinator(self, rank: int):
        job = self

        class Rank:
            world = World(rank, job.size)

            def barrier(self):
                job._barrier.wait()

            def from_main(self, value):
                if self.world.is_main:
                    job.box = value
                job._barrier.wait()
                return job.box

            def from_all(self, value):
                job.boxes[self.world.rank] = value
                job._barrier.wait()
                values = list(job.boxes)
                job._barrier.wait()  # all have read before a next call writes
                return values

        return Rank()

    def run(self, run_dir, computes):
        with ThreadPoolExecutor(self.size) as pool:
            futures = [pool.submit(_run, run_dir, False, computes[r], self.coordinator(r)) for r in range(self.size)]
            return [f.exception() or f.result() for f in futures]


def test_the_ranks_of_one_job_share_the_folder_and_a_second_job_stops_on_every_rank(tmp_path):
    run = tmp_path / "run"
    held_while_rank_1_wrote = []

    def rank_1(seeds, advance):
        try:
            RunLock(run).acquire().release()
            held_while_rank_1_wrote.append(False)
        except RunLockedError:
            held_while_rank_1_wrote.append(True)
        return expected_frame(seeds)

    rank_0 = Recorder()
    outcomes = ThreadJob(2).run(run, [rank_0, rank_1])
    assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
    assert rank_0.calls == [[3, 4, 5], [9, 10, 11]] and held_while_rank_1_wrote == [True, True]
    assert outcomes[0].computed == (0, 2) and outcomes[1].computed == (1, 3) and outcomes[1].table is None
    assert_rows(outcomes[0].table.to_pandas(), range(3, 13))

    (run / "shards" / "shard-00001-of-00004.json").unlink()  # leave work that a second job would redo
    computes = [Recorder(), Recorder()]
    with holder("lock", run):
        outcomes = ThreadJob(2).run(run, computes)
    assert isinstance(outcomes[0], RunLockedError) and str(run) in str(outcomes[0])
    assert isinstance(outcomes[1], ValueError) and "rank 0 refused the run directory" in str(outcomes[1])
    assert computes[0].calls == computes[1].calls == []


def test_rank_0_merges_only_after_every_rank_has_written(tmp_path):
    # rank 1 finishes its last shard only once rank 0 waits at the barrier: a rank 0 that merged
    # without waiting would miss that shard (and refuse the run as incomplete)
    rank_0_waits = threading.Event()

    class WatchedJob(ThreadJob):
        def coordinator(self, rank):
            inner = super().coordinator(rank)
            if rank != 0:
                return inner

            class Rank0:
                world = inner.world
                from_main = inner.from_main
                from_all = inner.from_all

                def barrier(self):
                    rank_0_waits.set()
                    inner.barrier()

            return Rank0()

    def rank_1(seeds, advance):
        if seeds[0] == 12:                  # its last shard
            rank_0_waits.wait(timeout=60)   # a hang guard only
        return expected_frame(seeds)

    outcomes = WatchedJob(2).run(tmp_path / "run", [Recorder(), rank_1])
    assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
    assert outcomes[1].computed == (1, 3)
    assert_rows(outcomes[0].table.to_pandas(), range(3, 13))


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(lock_module.fcntl is None, reason="needs flock")
def test_a_refusal_names_holders_it_cannot_prove_gone_and_its_own_process_only_on_its_host(tmp_path, monkeypatch):
    def refusal(host, pid):
        (tmp_path / LOCK_NAME).write_text(lock_module.LockHolder(host, pid, "then").to_json())
        with pytest.raises(RunLockedError) as err:
            RunLock(tmp_path).acquire()
        return err.value

    with RunLock(tmp_path):
        # another host's process: a pid that is free here says nothing about it
        gone_here = _exited_pid()
        err = refusal("elsewhere.invalid", gone_here)
        assert err.holder == lock_module.LockHolder("elsewhere.invalid", gone_here, "then")
        assert not err.same_process
        err = refusal("elsewhere.invalid", os.getpid())  # this pid, on another host: not this process
        assert err.holder is not None and not err.same_process
        err = refusal(socket.gethostname(), os.getpid())
        assert err.same_process

        def not_permitted(pid, sig):  # another user's live process
            raise PermissionError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(lock_module.os, "kill", not_permitted)
        assert refusal(socket.gethostname(), 1).holder.pid == 1


@pytest.mark.skipif(lock_module.fcntl is None, reason="needs flock")
def test_a_new_holder_replaces_a_longer_record_whole_and_a_lock_is_acquired_once(tmp_path):
    long = lock_module.LockHolder("a-much-longer-host-name-than-this-one.example.invalid", 4_000_000, "then")
    (tmp_path / LOCK_NAME).write_text(long.to_json())  # a killed writer's record
    with RunLock(tmp_path) as lock:
        assert read_holder(tmp_path) is not None and read_holder(tmp_path).pid == os.getpid()
        with pytest.raises(RuntimeError, match="already acquired by this RunLock"):
            lock.acquire()
    assert lock_module.LockHolder.from_json('{"host": "h", "since": "then"}') is None  # no pid: no one


def test_without_fcntl_runs_go_unlocked(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "fcntl", None)
    with RunLock(tmp_path) as first, RunLock(tmp_path) as second:  # nothing excludes anything
        assert not first.held and not second.held
    out = _run(tmp_path / "run")
    assert out.computed == (0, 1, 2, 3) and not (tmp_path / "run" / LOCK_NAME).exists()
    assert_rows(read_run(tmp_path / "run"), range(3, 13))


def test_a_file_system_refusing_flock_warns_once_and_runs(tmp_path, monkeypatch):
    import fcntl

    class NoLocks:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(fd, operation):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module, "fcntl", NoLocks)
    monkeypatch.setattr(lock_module, "_warned_unlockable", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _run(tmp_path / "run")
        second = _run(tmp_path / "run", resume=True)
    assert [str(w.message) for w in caught] == [
        f"cannot lock run folder {tmp_path / 'run'} (No locks available); going on without the one-writer "
        "lock, so make sure no other process writes into it (this file system may not support flock; "
        "warned once per process)"]
    assert caught[0].category is RuntimeWarning
    assert first.computed == (0, 1, 2, 3) and second.skipped == (0, 1, 2, 3)


def test_reading_a_run_takes_no_lock(tmp_path):
    _run(tmp_path / "run")
    with RunLock(tmp_path / "run") as held:  # a writer holds it
        assert held.held
        assert_rows(read_run(tmp_path / "run"), range(3, 13))
        assert merge_shards(tmp_path / "run").num_rows == 10


def test_one_process_is_refused_too_and_the_lock_is_released_on_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        with pytest.raises(RunLockedError, match=f"process {os.getpid()} on host"):
            _run(run)
    assert not (run / "manifest.json").exists()  # refused before the folder was looked into

    def failing(seeds, advance):
        raise RuntimeError("the sampler broke")

    with pytest.raises(RuntimeError, match="the sampler broke"):
        _run(run, compute=failing)
    assert _run(run, resume=True).computed == (0, 1, 2, 3)  # not locked out by the failed run


def test_run_sharded_keeps_the_lock_it_is_handed_and_refuses_another_folders(tmp_path):
    # kfm sample hands run_sharded the lock of its early check; the lock of another folder would
    # let the run write unlocked, so it is refused before anything is read or written
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    foreign = RunLock(other).acquire()
    with pytest.raises(ValueError, match="is the lock of .*other, not of the run folder .*run$"):
        run_sharded(run, _manifest(), Recorder(), progress=False, log=lambda m: None, lock=foreign)
    assert list(run.iterdir()) == []
    foreign.release()
    held = RunLock(run).acquire()
    outcome = run_sharded(run, _manifest(), Recorder(), progress=False, log=lambda m: None, lock=held)
    assert outcome.computed == (0, 1, 2, 3) and not held.held   # kept through the run, let go at its end
    RunLock(run).acquire().release()


def test_a_lock_file_alone_is_no_foreign_content_and_a_foreign_folder_gets_none(tmp_path):
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / LOCK_NAME).write_text("")  # a run that died before its manifest
    assert _run(tmp_path / "stopped").computed == (0, 1, 2, 3)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no manifest.json"):
        _run(tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]

    # a user's file whose name holds ".tmp-" is not a killed writer's temporary (it did count as one)
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "a.tmp-1.png").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no manifest.json"):
        _run(tmp_path / "png")
    assert [p.name for p in (tmp_path / "png").iterdir()] == ["a.tmp-1.png"]


def test_a_lock_this_process_already_holds_is_named_as_its_own(tmp_path):
    # train(out=...) takes its folder's lock itself now: a caller that wrapped it in its own
    # RunLock (as the runner's docs advise for other writers) was told "another writer: process
    # <its own pid>", a process it could not find to wait for
    import torch

    from kinetic_fm.models import TrainConfig, default_model, train

    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=f"process {os.getpid()} .*this very process") as refused:
            train(default_model("mlp", (2,), width=8), torch.randn(16, 2), TrainConfig(steps=1, batch_size=4),
                  out=tmp_path, progress=False)
    assert refused.value.same_process
    assert str(pickle.loads(pickle.dumps(refused.value))) == str(refused.value)
    with holder("lock", tmp_path / "other") as child:   # another process's lock reads as before
        with pytest.raises(RunLockedError, match=f"process {child.pid} ") as refused:
            RunLock(tmp_path / "other").acquire()
    assert not refused.value.same_process and "this very process" not in str(refused.value)


def test_a_refusal_with_no_holder_recorded_yet_still_says_what_to_do(tmp_path):
    err = RunLockedError(tmp_path, None)
    assert "a process that is just starting" in str(err) and "another --out" in str(err)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    err = RunLockedError(tmp_path, None, "rerun it")
    assert "(then rerun it if it stopped early)" in str(err) and str(pickle.loads(pickle.dumps(err))) == str(err)


@pytest.mark.skipif(lock_module.fcntl is None, reason="needs flock")
@pytest.mark.parametrize("record, shown", [(b'{"host": "h", "pid', """'{"host": "h", "pid'"""),
                                           (b"\xff\xfe", "'\ufffd\ufffd'")])
def test_a_damaged_holder_record_is_named_unreadable_not_a_process_just_starting(tmp_path, record, shown):
    # it read as no holder: "a process that is just starting (no holder recorded yet)"; the lock held all the same
    # (helper-269)
    with RunLock(tmp_path):
        (tmp_path / LOCK_NAME).write_bytes(record)
        assert read_holder(tmp_path) is None
        with pytest.raises(RunLockedError, match=rf"in use by another writer: a process whose holder record in "
                           rf".*{LOCK_NAME} is unreadable \({re.escape(shown)}: damaged or edited, so it cannot be "
                           r"named\)") as refused:
            RunLock(tmp_path).acquire()
    assert "just starting" not in str(refused.value)
    assert str(pickle.loads(pickle.dumps(refused.value))) == str(refused.value)
    (tmp_path / LOCK_NAME).write_bytes(b"")  # emptied: a holder that has not written its record yet
    with RunLock(tmp_path):
        (tmp_path / LOCK_NAME).write_bytes(b" \n")
        with pytest.raises(RunLockedError, match="a process that is just starting"):
            RunLock(tmp_path).acquire()


if __name__ == "__main__":  # a holder for the tests above: python test_runs_lock.py lock|run FOLDER
    mode, folder = sys.argv[1], Path(sys.argv[2])

    def hold():
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin or kills this process

    if mode == "lock":
        folder.mkdir(parents=True, exist_ok=True)
        with RunLock(folder):
            hold()
    else:
        def stop_in_second_shard(seeds, advance):
            if seeds[0] != 3:  # shard 0 is committed by now
                hold()
            return expected_frame(seeds)

        _run(folder, compute=stop_in_second_shard)


@pytest.mark.skipif(not hasattr(os, "fork") or lock_module.fcntl is None, reason="needs fork and flock")
def test_a_child_forked_under_the_lock_does_not_keep_it_after_release(tmp_path):
    """A DataLoader worker or a 'fork' pool started while a run writes shares the lock's
    descriptor; once the run releases the lock, the next run on the folder must get it."""
    lock = RunLock(tmp_path).acquire()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the forked worker: alive, holding its copy, until the parent lets it go
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        lock.release()
        with RunLock(tmp_path) as again:
            assert again.held
    finally:
        os.close(write_end)
        os.waitpid(child, 0)


@pytest.mark.skipif(not hasattr(os, "fork") or lock_module.fcntl is None, reason="needs fork and flock")
def test_a_forked_child_leaving_through_release_keeps_the_parents_lock(tmp_path):
    """A child forked inside ``with RunLock`` (or run_sharded) that unwinds through it (sys.exit,
    an exception) must not unlock the parent, which still writes."""
    with RunLock(tmp_path) as held:
        child = os.fork()
        if child == 0:
            try:
                held.release()
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        with pytest.raises(RunLockedError, match=str(os.getpid())):   # still held, record intact
            RunLock(tmp_path).acquire()


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "folder", "fifo"])
def test_a_lock_that_is_no_regular_file_is_refused_and_nothing_is_written_through_it(tmp_path, kind, capsys):
    # .lock was opened following links and truncated: a run folder unpacked with a .lock link to
    # ../notes.txt emptied notes.txt, for a new run as for a --resume (helper-142)
    run, victim = tmp_path / "run", tmp_path / "notes.txt"
    run.mkdir()
    victim.write_text("precious\n")
    lock = run / ".lock"
    if kind == "symlink":
        lock.symlink_to("../notes.txt")
    elif kind == "dangling symlink":
        lock.symlink_to("../missing.txt")
    elif kind == "folder":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    with pytest.raises(OSError, match=r"\.lock is (a symbolic link|not a regular file), where a run's lock file "
                                      r"belongs.*remove"):
        RunLock(run).acquire()
    assert main(["sample", "--field", "gaussian", "--n", "2", "--steps", "2", "--no-progress", "--out", str(run)]) != 0
    assert "where a run's lock file belongs" in capsys.readouterr().err
    assert victim.read_text() == "precious\n" and not (tmp_path / "missing.txt").exists()
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's open descriptors in /proc")
@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_a_refused_lock_that_is_no_regular_file_leaves_no_descriptor_open(tmp_path, kind):
    # a FIFO opens (O_RDWR does not wait for a writer) before fstat refuses it: without closing that
    # descriptor each refusal would leak one (a mutant dropping the os.close survived); links and
    # folders fail in os.open itself and open nothing
    lock = tmp_path / LOCK_NAME
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "symlink":
        lock.symlink_to("elsewhere")
    else:
        lock.mkdir()
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(OSError, match="where a run's lock file belongs"):
            RunLock(tmp_path).acquire()
    assert sorted(os.listdir("/proc/self/fd")) == before
