"""Every command's output paths are checked before anything loads (a file in the way, a folder the
user may not write into, a kfm sample folder that holds another run), and a refusal only writing
shows (a full disk, /proc as root) names the flag, not only the OS's "[Errno 13] Permission denied"."""
import errno
import os

import numpy as np
import pytest

from kinetic_fm.cli import main
from kinetic_fm.commands._types import _refused_writing, check_output_path, writing

SAMPLE = ["sample", "--field", "gaussian", "--n", "4", "--steps", "2", "--no-progress"]


def _no_loading(monkeypatch):
    """Each command's first heavy step, replaced by one that fails the test: the field or net of
    kfm sample, the data of kfm train and kfm memorization, the studies of kfm reproduce."""
    import kinetic_fm.data
    import kinetic_fm.studies.reproduce
    from kinetic_fm.commands import memorization, sample

    def loaded(*args, **kwargs):
        raise AssertionError("loaded before the output path was checked")

    monkeypatch.setattr(sample, "_builtin_field", loaded)
    monkeypatch.setattr(sample, "_model_target", loaded)
    monkeypatch.setattr(kinetic_fm.data, "load_dataset", loaded)
    monkeypatch.setattr(memorization, "_load_rows", loaded)
    monkeypatch.setattr(kinetic_fm.studies.reproduce, "reproduce", loaded)


def _argv(command, tmp_path, flag, path):
    samples = tmp_path / "s.npy"
    np.save(samples, np.zeros((3, 2), dtype=np.float32))
    out = {"--out": path} if flag == "--out" else {"--out": str(tmp_path / "run"), flag: path}
    if command == "memorization":
        out = {flag: path}
    given = [item for pair in out.items() for item in pair]
    return {"sample": [*SAMPLE, *given],
            "train": ["train", "--data", "moons", "--steps", "2", "--no-progress", *given],
            "memorization": ["memorization", "--samples", str(samples), "--train", str(samples), *given],
            "reproduce": ["reproduce", "--tiny", *given]}[command]


def _forbid_writing_in(monkeypatch, folder):
    """``folder`` as one this user may not write into: mode 0o555 where the tests do not run as
    root (who passes every permission), else by answering as the kernel would to access()."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(path) == str(folder) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_read_only_file_system_is_called_so(tmp_path, monkeypatch):
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real_statvfs(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False)
    monkeypatch.setattr(os, "statvfs", ReadOnly)
    with pytest.raises(ValueError, match=r"^--out .*/run: .* is on a read-only file system$"):
        check_output_path("--out", str(tmp_path / "run"), folder=True)


def _refuse(error):
    def refused(*args, **kwargs):
        raise error
    return refused


@pytest.mark.parametrize("code, name, named", [
    (errno.EACCES, "{out}", True),
    (errno.EACCES, "{out}/shards/s.parquet", True),
    (errno.EACCES, "{tmp}", True),                              # a parent folder made for it
    (errno.EACCES, "{tmp}/other", False),                       # a neighbour: not the output
    (errno.ENOENT, "{out}", True),                              # /proc refuses a new entry so
    (errno.ENOENT, "{out}/manifest.json", False),               # a file read inside it: its own words
    (errno.ENOENT, "{tmp}/.run.tmp-7-ab", True),                # the output's temporary
    (errno.ENOSPC, None, True),                                 # write() on a full disk names no file
    (errno.EACCES, None, False),
    (errno.EISDIR, "{out}", False),
])
def test_which_os_errors_are_the_output_s(tmp_path, code, name, named):
    out = tmp_path / "run"
    filename = None if name is None else name.format(out=out, tmp=tmp_path)
    assert _refused_writing(OSError(code, os.strerror(code), filename), str(out)) is named
    with pytest.raises(OSError) as caught, writing("--out", str(out)):
        raise OSError(code, os.strerror(code), filename)
    assert str(caught.value).startswith(f"--out {out} cannot be written") is named
