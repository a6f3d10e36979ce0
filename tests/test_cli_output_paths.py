"""Every command's output paths are checked before anything loads (a file in the way, a folder the
user may not write into, a kfm sample folder that holds another run), and a refusal only writing
shows (a full disk, /proc as root) names the flag, not only the OS's "[Errno 13] Permission denied"."""
import errno
import os
import shutil

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
    monkeypatch.setattr(memorization, "load_rows", loaded)
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


# the commands whose own refusals of an argument end as argparse's do
_HELP = {"reproduce": "(see 'kfm reproduce --help')\n"}


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


@pytest.mark.parametrize("command, flag, name", [
    ("sample", "--out", "run"), ("sample", "--figure", "f.png"), ("train", "--out", "run"),
    ("memorization", "--out", "t.csv"), ("memorization", "--figure", "f.png"), ("reproduce", "--out", "rep"),
])
def test_a_folder_the_user_may_not_write_into_is_named_before_anything_loads(tmp_path, monkeypatch, capsys,
                                                                             command, flag, name):
    # it came as "[Errno 13] Permission denied: ..." once the data, net or samples had loaded
    # (kfm sample --figure: after the whole run), naming no flag
    locked = tmp_path / "locked"
    locked.mkdir()
    _forbid_writing_in(monkeypatch, locked)
    _no_loading(monkeypatch)
    path = str(locked / "new" / name)
    try:
        assert main(_argv(command, tmp_path, flag, path)) == 2
    finally:
        locked.chmod(0o755)
    assert capsys.readouterr().err == (f"kfm {command}: error: {flag} {path}: {locked} is a folder this user may "
                                       f"not write into\n{_HELP.get(command, '')}")
    assert list(locked.iterdir()) == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["sample", "train", "reproduce"])
def test_an_existing_output_folder_the_user_may_not_write_into_is_named(tmp_path, monkeypatch, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    _forbid_writing_in(monkeypatch, out)
    _no_loading(monkeypatch)
    try:
        assert main(_argv(command, tmp_path, "--out", str(out))) == 2
    finally:
        out.chmod(0o755)
    assert capsys.readouterr().err == (f"kfm {command}: error: --out {out} is a folder this user may not write "
                                       f"into\n{_HELP.get(command, '')}")


def test_a_read_only_file_system_is_called_so(tmp_path, monkeypatch):
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real_statvfs(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False)
    monkeypatch.setattr(os, "statvfs", ReadOnly)
    with pytest.raises(ValueError, match=r"^--out .*/run: .* is on a read-only file system$"):
        check_output_path("--out", str(tmp_path / "run"), folder=True)


@pytest.mark.parametrize("flag, where, message", [
    ("--out", "afile", "--out {tmp}/afile is a file; name a folder (new, empty, or one this command wrote)"),
    ("--out", "afile/run", "--out {tmp}/afile/run: {tmp}/afile is a file, so no folder can be made inside it"),
    ("--figure", "afile/f.png",
     "--figure {tmp}/afile/f.png: {tmp}/afile is a file, so no folder can be made inside it"),
    ("--figure", "adir.png", "--figure {tmp}/adir.png is a folder; name a file"),
])
def test_kfm_sample_checks_its_paths_before_the_field_or_net_loads(tmp_path, monkeypatch, capsys, flag, where, message):
    # "[Errno 20] Not a directory: ..." came after the net had loaded and (--figure) the run had ended
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.png").mkdir()
    _no_loading(monkeypatch)
    assert main(_argv("sample", tmp_path, flag, str(tmp_path / where))) == 2
    assert capsys.readouterr().err == f"kfm sample: error: {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "run").exists()


def test_kfm_sample_refuses_a_folder_holding_a_run_or_other_files_before_the_net_loads(tmp_path, monkeypatch, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert main([*SAMPLE, "--out", str(run)]) == 0
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    capsys.readouterr()
    _no_loading(monkeypatch)
    assert main([*SAMPLE, "--out", str(run)]) == 2
    assert capsys.readouterr().err == (f"kfm sample: error: --out {run} already holds a run; pass --resume to "
                                       "continue it, or choose a new --out\n")
    assert main([*SAMPLE, "--out", str(other), "--resume"]) == 2
    assert capsys.readouterr().err == (f"kfm sample: error: --out {other} is not empty and holds no manifest.json; "
                                       "choose a new --out\n")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_kfm_sample_still_resumes_and_redraws_into_its_own_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*SAMPLE, "--out", str(run)]) == 0
    assert main([*SAMPLE, "--out", str(run), "--resume", "--figure", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()


def test_a_run_whose_shards_folder_became_a_file_is_named_before_the_net_loads(tmp_path, monkeypatch, capsys):
    # the resume failed with mkdir's bare "[Errno 17] File exists: '<run>/shards'"
    run = tmp_path / "run"
    assert main([*SAMPLE, "--out", str(run)]) == 0
    shutil.rmtree(run / "shards")
    (run / "results.parquet").unlink()
    (run / "shards").write_text("not a folder")
    capsys.readouterr()
    with monkeypatch.context() as patched:
        _no_loading(patched)
        assert main([*SAMPLE, "--out", str(run), "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"kfm sample: error: --out {run} holds a run, but its shards is a file, not a folder ({run / 'shards'}): "
        "move or delete it and resume (the run's shards are computed again), or choose a new --out\n")
    assert (run / "shards").read_text() == "not a folder"  # left as found

    # the library's own entry refuses it in the same words
    from kinetic_fm.runs import read_manifest, read_run, run_sharded

    with pytest.raises(ValueError, match=r"its shards is a file, not a folder"):
        run_sharded(run, read_manifest(run), lambda seeds, advance: None, resume=True, progress=False)
    (run / "shards").unlink()
    assert main([*SAMPLE, "--out", str(run), "--resume"]) == 0
    assert read_run(run)["seed"].tolist() == [0, 1, 2, 3]  # recomputed in full


def test_a_run_whose_manifest_was_deleted_is_named_as_such(tmp_path, monkeypatch, capsys):
    # it read "is not empty and holds no manifest.json", as for a folder of someone else's files
    run = tmp_path / "run"
    assert main([*SAMPLE, "--out", str(run), "--shard-size", "2"]) == 0
    (run / "manifest.json").unlink()
    before = sorted(run.rglob("*"))
    capsys.readouterr()
    _no_loading(monkeypatch)
    for resume in [["--resume"], []]:
        assert main([*SAMPLE, "--out", str(run), "--shard-size", "2", *resume]) == 2
        assert capsys.readouterr().err == (
            f"kfm sample: error: --out {run} looks like a run whose manifest.json is missing (it holds results.parquet "
            "and shards/ with 2 shard files): without it the run's settings are unknown, so it cannot be resumed; "
            "put manifest.json back to resume it, or choose a new --out (or remove the folder) to start over\n")
    assert sorted(run.rglob("*")) == before  # left as found


def test_kfm_train_refuses_a_folder_holding_a_training_run_before_the_data_loads(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": {}, "train": {}, "data_shape": [4, 2]}')
    (run / "final.safetensors").write_bytes(b"")
    _no_loading(monkeypatch)
    assert main(_argv("train", tmp_path, "--out", str(run))) == 2
    # the flag alone: "resume=True (kfm train --resume)" named the Python argument to a shell user (helper-273)
    assert capsys.readouterr().err == (f"kfm train: error: --out {run} already holds a training run "
                                       "(config.json, final.safetensors); "
                                       "continue it with --resume or choose another folder\n")


@pytest.mark.parametrize("resume, why", [
    ([], "training would write its own over it"),
    (["--resume"], "--resume continues training runs only"),
])
def test_kfm_train_names_another_program_s_config_json_as_that_program_s(tmp_path, monkeypatch, capsys, resume, why):
    # without --resume it said "already holds a training run (config.json)" of a Hugging Face folder's (helper-273)
    run = tmp_path / "hf"
    run.mkdir()
    (run / "config.json").write_text('{"architectures": ["CLIPModel"]}')
    _no_loading(monkeypatch)
    assert main([*_argv("train", tmp_path, "--out", str(run)), *resume]) == 2
    assert capsys.readouterr().err == (f"kfm train: error: --out {run} holds a config.json that is not a training "
                                       f"run's (another program's, or damaged beyond recognition); {why}: move it "
                                       "away, or choose another folder\n")
    assert (run / "config.json").read_text() == '{"architectures": ["CLIPModel"]}'


def _refuse(error):
    def refused(*args, **kwargs):
        raise error
    return refused


def test_a_refusal_at_write_time_names_kfm_sample_s_flag(tmp_path, monkeypatch, capsys):
    # as root, or on a full disk, only the write shows it: the OS's words alone named no flag
    import kinetic_fm.runs.runner as runner
    from kinetic_fm.commands import sample

    run = tmp_path / "run"
    shard = str(run / "shards" / "shard-00000.parquet")
    monkeypatch.setattr(runner, "write_shard", _refuse(PermissionError(errno.EACCES, "Permission denied", shard)))
    assert main([*SAMPLE, "--out", str(run)]) == 2
    # the run's manifest is written: the finished shards stay, and --resume goes on from them
    assert capsys.readouterr().err == (f"kfm sample: error: --out {run} cannot be written (Permission denied: "
                                       f"{shard}); the shards finished so far are kept in it: rerun the same "
                                       "command with --resume once that is fixed\n")

    figure = str(tmp_path / "f.png")
    monkeypatch.undo()
    monkeypatch.setattr(sample, "_write_figure", _refuse(OSError(errno.ENOSPC, "No space left on device")))
    assert main([*SAMPLE, "--out", str(tmp_path / "run2"), "--figure", figure]) == 2
    assert capsys.readouterr().err.endswith(f"kfm sample: error: --figure {figure} cannot be written (No space left on "
                                            "device)\n")


def test_a_refusal_at_write_time_names_kfm_train_s_flag(tmp_path, monkeypatch, capsys):
    import importlib

    train = importlib.import_module("kinetic_fm.models.train")   # the module: kinetic_fm.models.train is the function
    run = tmp_path / "run"
    monkeypatch.setattr(train, "atomic_write_text", _refuse(OSError(errno.EROFS, "Read-only file system", str(run))))
    assert main(_argv("train", tmp_path, "--out", str(run))) == 2
    assert capsys.readouterr().err.endswith(f"kfm train: error: --out {run} cannot be written (Read-only file "
                                            f"system: {run})\n")


@pytest.mark.parametrize("flag, name", [("--out", "t.csv"), ("--figure", "f.png")])
def test_a_refusal_at_write_time_names_kfm_memorization_s_flag(tmp_path, monkeypatch, capsys, flag, name):
    import kinetic_fm.runs.atomic as atomic
    import kinetic_fm.studies.report as report

    path = tmp_path / name
    temporary = str(tmp_path / f".{name}.tmp-1-ab")        # an atomic write's temporary, beside the file
    refusal = _refuse(PermissionError(errno.EACCES, "Permission denied", temporary))
    monkeypatch.setattr(atomic, "atomic_write", refusal)
    monkeypatch.setattr(report.Figure, "save", refusal)
    assert main([*_argv("memorization", tmp_path, flag, str(path)), "--bootstrap", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err.endswith(f"kfm memorization: error: {flag} {path} cannot be written (Permission "
                                            f"denied: {temporary})\n")


def test_kfm_reproduce_names_its_flag_for_its_folder_only(tmp_path, monkeypatch, capsys):
    import kinetic_fm.studies.reproduce as study

    out, data = tmp_path / "rep", tmp_path / "data" / "faces.zip"
    monkeypatch.setattr(study, "reproduce", _refuse(PermissionError(errno.EACCES, "Permission denied",
                                                                    str(out / "tables"))))
    assert main(["reproduce", "--tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"kfm reproduce: error: --out {out} cannot be written (Permission denied: "
                                       f"{out / 'tables'})\n")
    # a file it reads is not --out's: the OS's words stay
    monkeypatch.setattr(study, "reproduce", _refuse(PermissionError(errno.EACCES, "Permission denied", str(data))))
    assert main(["reproduce", "--tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"kfm reproduce: error: [Errno 13] Permission denied: '{data}'\n"


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


def test_a_tilde_after_the_equals_sign_is_the_home_folder(tmp_path, monkeypatch):
    # the shell leaves "--out=~/run" as it is, and kfm sample made a folder named "~" in the
    # working directory
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert main([*SAMPLE, "--out=~/run", "--figure=~/run.png"]) == 0
    assert (home / "run" / "manifest.json").is_file() and (home / "run.png").is_file()
    np.save(home / "s.npy", np.eye(3, dtype=np.float32))
    assert main(["memorization", "--samples=~/s.npy", "--train=~/s.npy", "--out=~/m.parquet", "--no-progress"]) == 0
    assert (home / "m.parquet").is_file()
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("argv, dest, name", [
    (["reproduce", "--tiny", "--out=~/r"], "out", "r"),
    (["train", "--data", "moons", "--out=~/t"], "out", "t"),
    (["sample", "--model=~/net.safetensors", "--out", "o"], "model", "net.safetensors"),
    (["memorization", "--samples", "s.npy", "--train", "s.npy", "--figure=~/f.png"], "figure", "f.png"),
])
def test_a_tilde_after_the_equals_sign_is_the_home_folder_in_every_path_flag(tmp_path, monkeypatch, argv, dest, name):
    # parse only: the flags the test above does not run; without type=user_path each of them kept
    # "~/..." and kfm wrote into a folder named "~" in the working directory (mutants survived)
    from kinetic_fm.cli import build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    assert getattr(build_parser().parse_args(argv), dest) == str(tmp_path / name)


@pytest.mark.parametrize("command, flag, name", [
    ("sample", "--out", "link"), ("sample", "--figure", "link.png"), ("train", "--out", "link"),
    ("memorization", "--out", "link.csv"), ("reproduce", "--out", "link"),
])
def test_a_dangling_link_as_output_is_named_with_its_target(tmp_path, monkeypatch, capsys, command, flag, name):
    # the folder was made with mkdir(exist_ok=True) through the link: "[Errno 17] File exists"
    _no_loading(monkeypatch)
    link = tmp_path / name
    link.symlink_to(tmp_path / "scratch" / "missing")
    assert main(_argv(command, tmp_path, flag, str(link))) == 2
    err = capsys.readouterr().err
    assert f"{flag} {link} is a symbolic link to {tmp_path / 'scratch' / 'missing'}, which does not exist" in err
    assert not (tmp_path / "scratch").exists()


def test_the_temporary_of_a_long_output_name_is_named_as_the_output(tmp_path):
    # names over 200 bytes get a shortened temporary, which the flag's naming no longer
    # recognised: a refusal under /proc came out as the OS's words about a hidden file (reviewer)
    from kinetic_fm.runs.atomic import temporary_name

    out = tmp_path / ("a" * 240 + ".png")
    temporary = temporary_name(out)
    assert _refused_writing(OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(temporary)), str(out))
    with pytest.raises(OSError) as caught, writing("--figure", str(out)):
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(temporary))
    assert str(caught.value).startswith(f"--figure {out} cannot be written")
