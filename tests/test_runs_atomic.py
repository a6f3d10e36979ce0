"""The one crash-safe write (kinetic_fm.runs.atomic) that every atomic writer in the library uses."""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

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


def _forbid(monkeypatch, folder) -> None:
    """Make ``folder`` act as another user's with mode 0o700, which this user may neither list nor
    search: with real permissions where the tests do not run as root (who passes them), else by
    answering EACCES, as the kernel does, to a listing of it and to any path inside it."""
    import errno

    if os.geteuid() != 0:
        folder.chmod(0)
        return
    inside = str(folder) + os.sep

    def refusing(call, listing: bool):
        def guarded(path, *args, **kwargs):
            text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
            if text.startswith(inside) or (listing and text == str(folder)):
                raise PermissionError(errno.EACCES, "Permission denied", text)
            return call(path, *args, **kwargs)
        return guarded

    for name, listing in (("stat", False), ("lstat", False), ("open", False), ("scandir", True), ("listdir", True)):
        monkeypatch.setattr(os, name, refusing(getattr(os, name), listing))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_recursive_cleanup_passes_folders_it_may_not_read(tmp_path, monkeypatch):
    # a workspace folder that holds another user's subfolder (mode 0o700): the old rglob skipped
    # it; the cleanup must not stop `kfm reproduce` with a PermissionError
    private = tmp_path / "private"
    private.mkdir()
    (private / ".lock").touch()
    (private / ".data.tmp-1-ab").write_bytes(b"theirs")
    (tmp_path / ".report.html.tmp-1-cd").write_bytes(b"half")
    _forbid(monkeypatch, private)
    try:
        assert atomic.remove_temporaries((tmp_path,), recursive=True) == 1
    finally:
        monkeypatch.undo()
        private.chmod(0o700)
    assert (private / ".data.tmp-1-ab").exists() and not (tmp_path / ".report.html.tmp-1-cd").exists()


@pytest.mark.skipif(run_lock.fcntl is None, reason="no flock on this platform: run folders go unlocked")
def test_a_recursive_cleanup_leaves_a_run_folder_whose_lock_it_may_not_open(tmp_path, monkeypatch):
    # models/theirs is another user's run (its .lock mode 0o644, theirs): this user cannot open the
    # lock to take it, so it cannot tell whether a writer is live there, and leaves the folder
    import errno

    theirs = tmp_path / "models" / "theirs"
    theirs.mkdir(parents=True)
    (theirs / ".lock").touch()
    (theirs / ".resume.pt.tmp-1-ab").write_bytes(b"half")
    (tmp_path / "models" / ".x.tmp-1-cd").write_bytes(b"half")
    lock_file, real_open = str(theirs / ".lock"), os.open

    def open_as_another_user(path, flags, *args, **kwargs):
        if os.fspath(path) == lock_file and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, "Permission denied", lock_file)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(run_lock.os, "open", open_as_another_user)
    assert atomic.remove_temporaries((tmp_path,), recursive=True) == 1
    assert (theirs / ".resume.pt.tmp-1-ab").exists() and not (tmp_path / "models" / ".x.tmp-1-cd").exists()


def test_cleanup_removes_only_hidden_temporary_files_and_goes_down_only_when_asked(tmp_path):
    sub = tmp_path / "plain"
    sub.mkdir()
    temporaries = [tmp_path / ".a.parquet.tmp-1-ab", sub / ".b.json.tmp-2-cd"]
    kept = [tmp_path / "notes.tmp-3.txt",   # a user's file: not hidden, so no temporary of ours
            tmp_path / "data.parquet"]
    for path in temporaries + kept:
        path.write_bytes(b"x")
    (tmp_path / ".c.tmp-4-ef").mkdir()     # a folder named like a temporary is no file to delete
    assert atomic.remove_temporaries((tmp_path,)) == 1
    assert not temporaries[0].exists() and temporaries[1].exists()   # not recursive: sub untouched
    assert atomic.remove_temporaries((tmp_path,), recursive=True) == 1
    assert not temporaries[1].exists() and all(path.exists() for path in kept)
    assert (tmp_path / ".c.tmp-4-ef").is_dir()
    assert not (sub / run_lock.LOCK_NAME).exists()  # a folder that is no run gets no lock file


@posix_only
def test_a_recursive_cleanup_does_not_follow_a_link_to_another_folder(tmp_path):
    outside, root = tmp_path / "outside", tmp_path / "workspace"
    outside.mkdir()
    root.mkdir()
    (outside / ".theirs.bin.tmp-1-ab").write_bytes(b"x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert atomic.remove_temporaries((root,), recursive=True) == 0
    assert (outside / ".theirs.bin.tmp-1-ab").exists()


def test_stale_temporaries_of_one_file_go_and_those_of_others_stay(tmp_path):
    mine = [tmp_path / ".shard-00001.parquet.tmp-1-ab", tmp_path / ".shard-00001.parquet.tmp-22-cd"]
    others = [tmp_path / ".shard-00002.parquet.tmp-1-ab", tmp_path / "shard-00001.parquet"]
    for path in mine + others:
        path.write_bytes(b"x")
    assert atomic.remove_stale_temporaries(tmp_path, "shard-00001.parquet") == 2
    assert not any(path.exists() for path in mine) and all(path.exists() for path in others)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_cleanup_passes_a_temporary_it_may_not_delete(tmp_path, monkeypatch):
    # a workspace subfolder this user may list but not write (another user's, mode 0o755): its
    # stale temporary cannot go, and that must not stop `kfm reproduce`; the others still go
    import errno

    shared = tmp_path / "shared"
    shared.mkdir()
    kept, gone = shared / ".data.bin.tmp-1-ab", tmp_path / ".report.html.tmp-1-cd"
    kept.write_bytes(b"theirs")
    gone.write_bytes(b"half")
    if os.geteuid() != 0:
        shared.chmod(0o555)
    else:  # root passes permissions: answer as the kernel would to an unlink in that folder
        real_unlink = os.unlink

        def unlink(path, *args, **kwargs):
            if os.path.dirname(os.fspath(path)) == str(shared):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_unlink(path, *args, **kwargs)
        monkeypatch.setattr(os, "unlink", unlink)
        # Python 3.10's pathlib calls the os.unlink it bound at import, not the module's
        monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: unlink(self))
    try:
        assert atomic.remove_temporaries((tmp_path,), recursive=True) == 1
    finally:
        monkeypatch.undo()
        shared.chmod(0o755)
    assert kept.exists() and not gone.exists()


@pytest.mark.parametrize("name", ["c" * 240 + ".png", "é" * 120 + ".parquet", "[x]" * 70 + ".png",
                                  "a" + "é" * 119 + ".png"])
def test_a_name_near_the_file_systems_limit_is_written_and_its_stale_temporaries_found(tmp_path, name):
    # the temporary added ~25 bytes to a legal 240-byte name: "[Errno 36] File name too long",
    # after a whole kfm sample run when it was --figure's (helper-142); "a" + "é" * 119 (243 bytes)
    # cuts its 150-byte head inside an "é", which the stem drops (a strict decode failed there)
    path = tmp_path / name
    assert len(name.encode()) <= 255
    atomic_write_bytes(path, b"data")
    assert path.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == [name]
    temporary = temporary_name(path)
    assert len(temporary.name.encode()) <= 255 and temporary.name.startswith(".")
    temporary.write_bytes(b"left by a killed writer")
    other = temporary_name(tmp_path / ("d" * 240 + ".png"))
    other.write_bytes(b"another file's")
    assert atomic.remove_stale_temporaries(tmp_path, name) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, other.name])


def test_a_leftover_is_the_lock_file_or_what_remove_temporaries_removes(tmp_path):
    # train's and kfm sample's folder checks took any name holding ".tmp-" for a killed writer's temporary,
    # so a user's "a.tmp-1.png" counted as ours (no one else's files) yet was never removed
    from kinetic_fm.runs.atomic import is_leftover, remove_temporaries, temporary_name
    from kinetic_fm.runs.lock import LOCK_NAME

    ours = temporary_name(tmp_path / "resume.pt")
    for name in (ours.name, "a.tmp-1.png", "notes.txt", "x.tmp-"):
        (tmp_path / name).write_text("")
    (tmp_path / LOCK_NAME).write_text("")
    assert [is_leftover(tmp_path / name) for name in (ours.name, LOCK_NAME, "a.tmp-1.png", "notes.txt", "x.tmp-")] == [
        True, True, False, False, False]
    assert remove_temporaries([tmp_path]) == 1 and not ours.exists()


def test_a_folder_named_as_a_temporary_is_no_leftover(tmp_path):
    # is_leftover went by the name alone, so a folder ".x.tmp-1" (no writer of ours makes one: atomic_write
    # writes files) counted as ours, yet remove_temporaries never removes it: a run took such a folder as empty
    from kinetic_fm.runs.atomic import is_leftover, remove_temporaries, temporary_name

    folder = temporary_name(tmp_path / "x")
    folder.mkdir()
    assert remove_temporaries([tmp_path]) == 0 and folder.is_dir()
    assert not is_leftover(folder)


def test_a_folder_holds_only_leftovers_when_all_it_holds_is_a_lock_file_or_a_killed_writers_temporary(tmp_path):
    # the one test of "a folder of ours that holds nothing" (reproduce's fresh folder, a spent model folder, a
    # run folder without its manifest, a checkpoints/ killed in its first write)
    from kinetic_fm.runs.atomic import holds_only_leftovers

    assert holds_only_leftovers(tmp_path)                         # empty
    (tmp_path / ".lock").write_text("")
    temporary_name(tmp_path / "final.safetensors").write_bytes(b"half")
    assert holds_only_leftovers(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert not holds_only_leftovers(tmp_path)


def test_a_folders_foreign_entries_are_what_it_holds_but_our_leftovers_named_three_then_a_count(tmp_path):
    # kfm reproduce's --out check and training's out= check each filtered and listed them in their own copy
    from kinetic_fm.runs.atomic import foreign_entries, named_few

    (tmp_path / ".lock").write_text("")
    temporary_name(tmp_path / "final.safetensors").write_bytes(b"half")
    assert foreign_entries(tmp_path) == []
    for name in ("d.csv", "b", "a.png", "c.txt", "e"):
        (tmp_path / name).write_text("")
    assert foreign_entries(tmp_path) == ["a.png", "b", "c.txt", "d.csv", "e"]
    assert foreign_entries(tmp_path, leftover=lambda p: p.name != "b") == ["b"]
    assert named_few(["a"]) == "a" and named_few(["a", "b", "c"]) == "a, b, c"
    assert named_few(foreign_entries(tmp_path)) == "a.png, b, c.txt and 2 more"
