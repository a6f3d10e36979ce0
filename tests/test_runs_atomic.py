"""The one crash-safe write (kinetic_fm.runs.atomic) that every atomic writer in the library uses."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from kinetic_fm.runs import atomic
from kinetic_fm.runs import lock as run_lock
from kinetic_fm.runs.atomic import TMP_MARKER, atomic_write, atomic_write_bytes, temporary_name

posix_only = pytest.mark.skipif(os.name != "posix", reason="folder fsync and umask are POSIX")


def test_bytes_are_written_exactly_and_replace_the_old_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_bytes(b"old")
    data = "é\n\r\n".encode("utf-8") + bytes(range(256))
    assert atomic_write_bytes(target, data) == target
    assert target.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "stage.pt"
    target.write_bytes(b"the previous result")
    seen = []

    def failing(tmp):
        seen.append(tmp)
        with open(tmp, "wb") as fh:  # a writer handed the path that opens it itself
            fh.write(b"half a file")
        raise KeyboardInterrupt  # BaseException too: an interrupted run must not leave debris

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing)
    assert target.read_bytes() == b"the previous result"
    assert list(tmp_path.iterdir()) == [target]
    assert seen[0].parent == tmp_path and seen[0].name.startswith(f".{target.name}{TMP_MARKER}")


@posix_only
def test_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def counting(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", counting)
    atomic_write(tmp_path / "w.safetensors", lambda tmp: tmp.write_bytes(b"x"))
    assert synced == [False, True]  # the temporary's data, then the rename in the folder


def test_temporaries_are_unique_per_call_and_keep_no_suffix(tmp_path):
    path = tmp_path / "figure.png"
    names = {temporary_name(path).name for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(f".figure.png{TMP_MARKER}{os.getpid()}-") and not n.endswith(".png") for n in names)


def test_concurrent_writers_of_one_path_never_share_a_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    errors = []

    def write(k):
        try:
            atomic_write_bytes(target, bytes([k]) * 4096)
        except Exception as err:  # pragma: no cover - shown by the assert below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = target.read_bytes()
    assert len(data) == 4096 and len(set(data)) == 1  # one writer's whole file, never a mix
    assert list(tmp_path.iterdir()) == [target]


@posix_only
def test_the_final_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.pt", lambda tmp: tmp.write_bytes(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o644


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root opens read-only files for writing anyway")
def test_a_temporary_without_write_permission_is_still_synced_and_renamed(tmp_path):
    # a umask such as 0o277, or a writer copying a read-only file's mode, leaves the owner unable
    # to open the temporary for writing; fsync needs no write access on POSIX
    def write(tmp):
        tmp.write_bytes(b"abc")
        tmp.chmod(0o400)

    path = atomic_write(tmp_path / "shard.bin", write)
    assert path.read_bytes() == b"abc" and sorted(p.name for p in tmp_path.iterdir()) == ["shard.bin"]


@pytest.mark.skipif(run_lock.fcntl is None, reason="no flock on this platform: run folders go unlocked")
def test_a_recursive_cleanup_leaves_a_run_folder_another_process_writes(tmp_path):
    # another process holds models/live's lock (as `kfm train --out` does while it writes): its
    # temporaries are files about to be renamed; a run folder whose lock is free is a killed writer's
    import subprocess
    import sys

    live, dead = tmp_path / "models" / "live", tmp_path / "models" / "dead"
    for folder in (live / "checkpoints", dead / "checkpoints"):
        folder.mkdir(parents=True)
    (dead / ".lock").touch()
    names = (".resume.pt.tmp-1-ab", "checkpoints/.step_0000004.safetensors.tmp-1-cd")
    for folder in (live, dead, tmp_path):
        for name in names:
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_bytes(b"half")
    hold = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(live / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert atomic.remove_temporaries((tmp_path,), recursive=True) == 4
        assert all((live / name).read_bytes() == b"half" for name in names)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not [p for p in (dead, tmp_path) for name in names if (p / name).exists()]
    assert atomic.remove_temporaries((tmp_path,), recursive=True) == 2    # its writer has let go
