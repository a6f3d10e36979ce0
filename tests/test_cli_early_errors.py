"""Commands refuse a bad --device (and reproduce a bad --classifier) at once, naming the argument
(exit 2), before loading data or creating their output folders."""
import pytest
import torch

from kinetic_fm.cli import main


def _commands(tmp_path, device):
    samples = tmp_path / "s.npy"
    import numpy as np

    np.save(samples, np.zeros((3, 2), dtype=np.float32))
    return {
        "memorization": ["memorization", "--samples", str(samples), "--train", str(samples), "--device", device],
        "sample": ["sample", "--field", "mixture", "--dim", "2", "--n", "4", "--steps", "2",
                   "--out", str(tmp_path / "run"), "--device", device],
        "train": ["train", "--data", "moons", "--steps", "2", "--out", str(tmp_path / "train"), "--device", device],
        "reproduce": ["reproduce", "--tiny", "--out", str(tmp_path / "rep"), "--device", device],
    }


@pytest.mark.parametrize("device", ["gpu", "meta"])      # meta passed torch.device and failed much later
@pytest.mark.parametrize("command", ["memorization", "sample", "train", "reproduce"])
def test_unknown_device_is_a_clear_error(tmp_path, capsys, command, device):
    assert main(_commands(tmp_path, device)[command]) == 2
    assert f"--device must be cpu, cpu:N, cuda or cuda:N, got '{device}'" in capsys.readouterr().err
    assert not any(tmp_path.glob("rep*")) and not any(tmp_path.glob("train*"))   # nothing started


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])   # the device asked for is named (cuda:1 read "--device cuda")
@pytest.mark.parametrize("command", ["memorization", "sample", "train", "reproduce"])
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys, command, device):
    assert main(_commands(tmp_path, device)[command]) == 2
    assert f"--device {device} was requested but torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["memorization", "train", "reproduce"])
def test_single_process_commands_refuse_several_ranks(tmp_path, capsys, monkeypatch, command):
    # under torchrun each rank did the whole job into the same outputs, and train moved its model
    # to the raw "cuda" (not the rank's GPU)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(_commands(tmp_path, "cpu")[command]) == 2
    assert f"kfm {command} runs as one process, but WORLD_SIZE is 2" in capsys.readouterr().err
    assert not any(tmp_path.glob("rep*")) and not any(tmp_path.glob("train*"))   # nothing started
    monkeypatch.setenv("WORLD_SIZE", "1")   # a one-rank launch is one process, and stray ranks no launch
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "x")
    if command == "train":
        assert main(_commands(tmp_path, "cpu")[command] + ["--no-progress"]) == 0


@pytest.mark.parametrize("flag, spec, message", [
    ("--classifier", "resnet57:/w.th", "--classifier must be 'resnet20:PATH' or 'resnet56:PATH', got 'resnet57:/w.th'"),
    ("--classifier", "resnet56:/no/such/w.th", "--classifier: no such file: /no/such/w.th"),
    ("--data", "nope", "--data: unknown data spec 'nope'"),
    ("--data", "mnist", "data spec 'mnist' needs a path"),
    ("--data", "digits:/x", "data spec 'digits:/x': digits takes no path"),
    ("--data", "moons", "kfm reproduce needs an image data set"),
    ("--data", "celeba:/no/such/faces.zip", "--data 'celeba:/no/such/faces.zip': no such file or folder"),
])
def test_reproduce_checks_its_specs_first(tmp_path, capsys, flag, spec, message):
    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "rep"), flag, spec]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()



@pytest.mark.parametrize("mode, message", [
    ("--tiny", "--tiny loads 400 of them (300 to train on, 100 held out)"),
    ("--quick", "--quick loads 5,300 of them (5,000 to train on, 300 held out); --tiny loads 400 of them (300 to "
                "train on, 100 held out)"),
])
def test_reproduce_on_too_few_images_names_data_and_the_mode_flags(tmp_path, capsys, mode, message):
    # "the studies load n_train + n_heldout = 300 + 100 = 400 of them": sizes the command line sets by its mode
    import numpy as np
    from PIL import Image

    (tmp_path / "small").mkdir()
    for i in range(30):
        Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(tmp_path / "small" / f"{i}.png")
    data = f"folder:{tmp_path / 'small'}"
    assert main(["reproduce", mode, "--quiet", "--data", data, "--out", str(tmp_path / "rep")]) == 2
    assert capsys.readouterr().err == f"kfm reproduce: error: --data {data} has 30 images; kfm reproduce {message}\n"


@pytest.mark.parametrize("command,flag", [("train", "--seed"), ("reproduce", "--seed"),
                                          ("memorization", "--seed"), ("sample", "--seed-start")])
def test_seeds_are_checked_by_their_flag(tmp_path, capsys, command, flag):
    # train and reproduce took --seed -1; sample named the library's "seeds"
    with pytest.raises(SystemExit) as stop:
        main([*_commands(tmp_path, "cpu")[command], flag, "-1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    if command == "memorization":   # the bootstrap's NumPy generator keeps every bit
        assert f"argument {flag}: must be an integer in [0, 2**63), got -1" in err
    else:
        assert f"argument {flag}: must be an integer in [0, 2**32) (torch's generator keeps 32 bits" in err and "got -1" in err


@pytest.mark.parametrize("error,expected", [
    (MemoryError("Unable to allocate 7.28 TiB"), "the run does not fit in memory or in range (MemoryError"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
     "out of memory ([enforce fail"),
    # torch before 1.13 raised CUDA's as a plain RuntimeError, known by its words only
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), "out of memory (CUDA out of memory. Tried"),
    (OverflowError("cannot convert float infinity to integer"), "the run does not fit in memory or in range "
                                                                "(OverflowError"),
])
def test_runs_too_big_for_memory_are_one_line_errors(monkeypatch, capsys, error, expected):
    # --n 10**12 (numpy) and --steps 10**12 (torch's CPU allocator) escaped as tracebacks; raised
    # here by a stand-in rather than by allocating, which an overcommitting machine might allow
    from kinetic_fm.commands import sample as command

    def too_big(args):
        raise error

    monkeypatch.setattr(command, "run", too_big)
    assert main(["sample", "--field", "gaussian", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kfm sample: error: {expected}") and "Traceback" not in err


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    from kinetic_fm.commands import sample as command

    def bug(args):
        raise RuntimeError("shape mismatch in our own code")

    monkeypatch.setattr(command, "run", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["sample", "--field", "gaussian", "--out", "unused"])


def test_a_kts_gain_beyond_its_range_is_refused_before_sampling(tmp_path, capsys):
    assert main(["sample", "--field", "gaussian", "--alpha0", "1e308", "--out", str(tmp_path / "r")]) == 2
    assert "alpha0 must lie in [0, 1e+06], got 1e+308" in capsys.readouterr().err


def test_seeds_past_2_32_are_refused_naming_the_flags(tmp_path, capsys):
    # the run plan's message named "seed_start", an argument the command line does not have
    assert main([*_commands(tmp_path, "cpu")["sample"], "--seed-start", str(2**32 - 3)]) == 2
    # its range read "[0, 2**32 - --n]", a flag in the arithmetic: N is named and its number shown
    assert ("--seed-start must lie in [0, 4294967292] (0 to 2**32 - N, N being --n = 4: the seeds S .. S + N - 1 "
            "stay below 2**32; torch's generator keeps 32 bits") in capsys.readouterr().err
    assert not any(tmp_path.glob("run*"))


@pytest.mark.parametrize("command,extra,message", [
    ("sample", ["--shape", "1,2"], "--shape applies to --model only; a built-in --field takes --dim"),
    ("train", ["--label-dropout", "0.5"], "--label-dropout applies to --class-cond only"),
])
def test_a_flag_that_would_be_ignored_is_refused(tmp_path, capsys, command, extra, message):
    # both were dropped without a word: the run went ahead without what the user asked for
    assert main([*_commands(tmp_path, "cpu")[command], *extra]) == 2
    assert f"kfm {command}: error: {message}" in capsys.readouterr().err
    assert not any(tmp_path.glob("run*")) and not any(tmp_path.glob("train*"))


@pytest.mark.parametrize("argv, message", [
    (["sample", "--steps", "abc"], "kfm sample: error: argument --steps: invalid int value: 'abc'"),
    (["memorization"], "kfm memorization: error: the following arguments are required: --samples, --train"),
    (["nosuch"], "kfm: error: argument COMMAND: invalid choice: 'nosuch'"),
    # an unknown flag belongs to the sub-command's line: its own --help lists the valid ones
    (["sample", "--out", "o", "--stpes", "8"], "kfm sample: error: unrecognized arguments: --stpes 8"),
])
def test_a_malformed_command_line_is_one_line_and_a_pointer_to_help(capsys, argv, message):
    # argparse's stock error printed the whole usage block (a dozen lines for sample) first
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and len(err) == 2
    assert err[0].startswith(message) and err[1] == f"(see '{message.split(':')[0]} --help')"


@pytest.mark.parametrize("device", ["cuda:1", "cuda:7"])
@pytest.mark.parametrize("command", ["memorization", "sample", "train", "reproduce"])
def test_a_cuda_index_past_the_last_gpu_is_a_clear_error(tmp_path, capsys, command, device):
    # under fake_cuda torch sees one GPU; cuda:1 used to fail later with a traceback ("invalid
    # device ordinal"), for train after the data had loaded
    from fake_cuda import fake_cuda

    with fake_cuda():
        assert main(_commands(tmp_path, device)[command]) == 2
    assert f"--device {device} was requested, but torch sees 1 CUDA device (only cuda:0)" in capsys.readouterr().err
    assert not any(tmp_path.glob("rep*")) and not any(tmp_path.glob("train*"))   # nothing started


def test_a_local_rank_past_the_last_gpu_names_it():
    from fake_cuda import fake_cuda

    from kinetic_fm.runs.distributed import World, resolve_device

    with fake_cuda():
        assert resolve_device("cuda", World(0, 1, 0)) == torch.device("cuda", 0)
        with pytest.raises(ValueError, match=r"LOCAL_RANK 1 \(--device cuda\) asks for cuda:1, but torch sees 1 CUDA"):
            resolve_device("cuda", World(1, 2, 1))


def test_ctrl_c_in_kfm_reproduce_says_how_to_continue(tmp_path, capsys, monkeypatch):
    """kfm reproduce has no --resume: the same command on the same --out continues, and says so."""
    import kinetic_fm.studies.reproduce as study

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "reproduce", interrupted)
    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == ("kfm reproduce: interrupted: finished stages are kept in --out; rerun the "
                                       "same command to continue\n")


@pytest.mark.parametrize("command", ["memorization", "reproduce", "sample", "train"])
def test_help_names_every_default_and_prints_no_rst_markup(command, capsys):
    """`kfm <verb> --help` is what a newcomer reads first: every option that takes a value and has
    one by default says it (argparse does not), and the description shows no ``double backticks``
    from the module docstring it is built from."""
    import argparse

    from kinetic_fm.cli import build_parser

    verb = build_parser()._subparsers._group_actions[0].choices[command]
    silent = [a.option_strings for a in verb._actions
              if type(a) is argparse._StoreAction and a.default is not None and "default" not in (a.help or "")]
    assert silent == []
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "``" not in capsys.readouterr().out


def test_kfm_version_prints_the_package_version(capsys):
    # the version was only in a report's Run table: `kfm --version` was refused for want of a COMMAND
    import importlib.metadata

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"kfm (kinetic_fm) {importlib.metadata.version('kinetic_fm')}"


@pytest.mark.parametrize("flags, message", [
    (["--studies", "semantics,bogus"], "--studies must be a comma-separated subset of semantics, support, memorization, "
                                       "shaping, each once; got 'semantics,bogus' (unknown ['bogus'])"),
    # a repeated study failed late, on "two figures are named 'kpe_vs_margin'"
    (["--studies", "semantics,semantics"], "each once; got 'semantics,semantics' (['semantics'] named twice)"),
    (["--studies", " , "], "each once; got ' , ' (an empty name: two commas, or one at an end)"),
    (["--out", "{tmp}/afile"], "--out {tmp}/afile is a file; name a folder"),
    (["--out", "{tmp}/afile/rep"], "--out {tmp}/afile/rep: {tmp}/afile is a file, so no folder can be made inside it"),
])
def test_reproduce_names_a_bad_studies_or_out_flag_before_it_starts(tmp_path, capsys, flags, message):
    (tmp_path / "afile").write_text("x")
    argv = ["reproduce", "--tiny", "--out", str(tmp_path / "rep"), *[f.format(tmp=tmp_path) for f in flags]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kfm reproduce: error: --") and message.format(tmp=tmp_path) in err
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("flags, mode, seed, studies, progress", [
    ([], "quick", 0, ("semantics", "support", "memorization", "shaping"), True),
    (["--full", "--seed", "9", "--studies", " shaping , semantics", "--quiet"], "full", 9, ("shaping", "semantics"),
     False),
    (["--tiny", "--device", "cuda"], "tiny", 0, ("semantics", "support", "memorization", "shaping"), True),
])
def test_reproduce_flags_reach_the_study_config(tmp_path, monkeypatch, capsys, flags, mode, seed, studies, progress):
    """What kfm reproduce hands kinetic_fm.studies.reproduce, against the preset built directly."""
    from dataclasses import replace

    import kinetic_fm.studies.reproduce as study
    from kinetic_fm.studies.config import ReproduceConfig

    calls = []
    monkeypatch.setattr(study, "reproduce", lambda cfg, out, **kw: calls.append((cfg, out, kw)) or ("r.md", "r.html"))
    (tmp_path / "w.th").write_bytes(b"")
    faces = tmp_path / "faces"
    faces.mkdir()
    from fake_cuda import fake_cuda

    with fake_cuda():                                        # torch sees one GPU: --device cuda is taken
        assert main(["reproduce", "--out", str(tmp_path / "rep"), "--data", f"celeba:{faces}",
                     "--classifier", f"resnet56:{tmp_path / 'w.th'}", *flags]) == 0
    cfg, out, kwargs = calls[0]
    device = "cuda" if "cuda" in flags else "cpu"
    expected = ReproduceConfig.preset(mode, data=f"celeba:{faces}", device=device, seed=seed)
    assert cfg == replace(expected, assets=replace(expected.assets, classifier=f"resnet56:{tmp_path / 'w.th'}"))
    assert str(out) == str(tmp_path / "rep") and kwargs == {"studies": studies, "progress": progress}


@pytest.mark.parametrize("command, hint", [
    ("memorization", ""),                          # it keeps nothing to resume: no --resume hint
    ("train", ": the steps up to the last resume state (saved every --save-every steps) are kept, later ones are "
              "redone; rerun the same command with --resume to continue"),
])
def test_ctrl_c_says_how_to_continue_only_where_a_command_can(tmp_path, capsys, monkeypatch, command, hint):
    import importlib

    module = importlib.import_module(f"kinetic_fm.commands.{command}")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    assert main(_commands(tmp_path, "cpu")[command]) == 130
    assert capsys.readouterr().err == f"kfm {command}: interrupted{hint}\n"


def test_warnings_are_one_line_during_a_command_and_the_hook_is_restored_after(monkeypatch, capsys):
    import warnings

    from kinetic_fm.commands import sample as command

    def warns(args):
        warnings.warn("a thing to know", stacklevel=1)
        return 0

    monkeypatch.setattr(command, "run", warns)
    with warnings.catch_warnings():              # this test's own filters, undone at its end
        warnings.simplefilter("always")
        before = warnings.showwarning
        assert main(["sample", "--out", "unused"]) == 0
        assert warnings.showwarning is before    # an in-process caller keeps its own hook
    assert capsys.readouterr().err == "kfm sample: warning: a thing to know\n"


def test_kfm_without_a_command_names_what_is_missing(capsys):
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("kfm: error: the following arguments are required: COMMAND")


def test_seed_flags_take_0_to_2_32_minus_1_and_integers_only_and_the_bootstrap_seed_2_63():
    import argparse

    from kinetic_fm.commands._types import bootstrap_seed_number, seed_number

    assert seed_number("0") == 0 and seed_number(str(2**32 - 1)) == 2**32 - 1
    for text in (str(2**32), str(2**63), "-1", "1.5", "1e3", "one"):      # torch keeps 32 bits of a seed
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer in \[0, 2\*\*32\)"):
            seed_number(text)
    # kfm memorization's bootstrap seed feeds NumPy's generator, which keeps every bit (helper-135)
    assert bootstrap_seed_number(str(2**63 - 1)) == 2**63 - 1
    for text in (str(2**63), "-1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer in \[0, 2\*\*63\), got"):
            bootstrap_seed_number(text)


@pytest.mark.parametrize("command,flag", [("reproduce", "--out"), ("sample", "--out"), ("train", "--out"),
                                          ("memorization", "--samples"), ("memorization", "--train"),
                                          ("reproduce", "--classifier"), ("sample", "--figure")])
def test_an_empty_value_is_refused_by_its_flag_not_read_as_the_working_folder(tmp_path, capsys, monkeypatch,
                                                                               command, flag):
    # Path("") is ".": `--out "$OUT"` with OUT unset wrote a whole reproduce run into the working
    # folder, `--classifier ""` ran without the judge asked for, `--samples ""` read "." as images
    argv = _commands(tmp_path, "cpu")[command]
    argv = argv[:argv.index(flag) + 1] + [" "] + argv[argv.index(flag) + 2:] if flag in argv else argv + [flag, ""]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"kfm {command}: error: {flag} is empty (a shell variable left unset?)" in capsys.readouterr().err
    assert not any(work.iterdir())


@pytest.mark.parametrize("command", ["memorization", "reproduce", "sample", "train"])
def test_device_help_names_every_form_the_commands_accept(command):
    # the help said "cpu | cuda | cuda:N" (sample: "cpu | cuda"), but cpu:N is accepted too
    import re
    import sys
    from pathlib import Path

    from kinetic_fm.cli import build_parser
    from kinetic_fm.runs.distributed import World, resolve_device

    verb = build_parser()._subparsers._group_actions[0].choices[command]
    (device,) = [a for a in verb._actions if "--device" in a.option_strings]
    named = set(re.findall(r"\b(?:cpu|cuda)(?::N)?(?!\w)", device.help))
    assert named == {"cpu", "cpu:N", "cuda", "cuda:N"}, device.help
    assert resolve_device("cpu:1", World()).type == "cpu"           # each form named is accepted
    sys.path.insert(0, str(Path(__file__).parent))
    from fake_cuda import fake_cuda

    with fake_cuda():
        assert resolve_device("cuda", World()).type == resolve_device("cuda:0", World()).type == "cuda"


def test_python_dash_m_kinetic_fm_runs_the_kfm_command(tmp_path):
    # `python -m kinetic_fm ...` is the way to reach the kfm of one interpreter (a virtual environment's
    # `kfm` script may run another's); it stopped with "No module named kinetic_fm.__main__"
    import subprocess
    import sys

    missing = tmp_path / "missing.npy"
    done = subprocess.run([sys.executable, "-m", "kinetic_fm", "memorization", "--samples", str(missing),
                           "--train", str(missing), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kfm memorization: error:") and "missing.npy" in done.stderr
    assert "Traceback" not in done.stderr
