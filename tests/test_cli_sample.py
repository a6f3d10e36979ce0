"""``kfm sample``: per-sample KPE of a built-in field into a run directory (in-process CLI)."""
from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.cli import main
from kinetic_fm.models import VelocityMLP, save_model
from kinetic_fm.runs import read_run, read_samples


def kfm_sample(out, *flags) -> int:
    return main(["sample", "--out", str(out), "--no-progress", *map(str, flags)])


def _ring() -> torch.Tensor:
    """The CLI's default mixture means, written independently: 8 atoms on a circle of radius 4."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * torch.pi / 8)
    return torch.stack([4 * angle.cos(), 4 * angle.sin()], 1)


def test_gaussian_kpe_matches_the_closed_form_and_x_is_stored(tmp_path, capsys):
    flags = ["--field", "gaussian", "--dim", 3, "--n", 7, "--seed-start", 11, "--steps", 60,
             "--solver", "rk4", "--dtype", "float64", "--shard-size", 4, "--batch-size", 3]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    out = capsys.readouterr().out
    for word in ("median", "q05", "q95", "kpe_raw", "early", "late"):
        assert word in out
    df = read_run(tmp_path / "run")
    seeds = list(range(11, 18))
    assert df["seed"].tolist() == seeds
    x0 = kfm.noise(seeds, (3,), dtype=torch.float64)
    exact = kfm.GaussianTarget(2.0 * torch.ones(3, dtype=torch.float64), 0.5).kinetic_energy(x0)
    np.testing.assert_allclose(df["kpe"].to_numpy(), exact.numpy(), rtol=1e-6)  # rk4, h = 1/60
    np.testing.assert_array_equal(df["kpe"], df["kpe_raw"])  # plain FM: η = 1
    np.testing.assert_allclose(df["early"] + df["late"], df["kpe"], rtol=1e-12)
    # the stored final samples are exactly what the sampler returns for these seeds
    direct = kfm.sample(kfm.GaussianTarget(2.0 * torch.ones(3, dtype=torch.float64), 0.5), seeds=seeds,
                        shape=(3,), steps=60, solver="rk4", dtype=torch.float64)
    np.testing.assert_array_equal(read_samples(tmp_path / "run"), direct.x.numpy())
    np.testing.assert_array_equal(df["kpe"].to_numpy(), direct.kpe.numpy())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["shaping"] is None and manifest["n"] == 7


def test_shaping_flags_build_a_kts_recorded_in_full(tmp_path):
    flags = ["--field", "mixture", "--n", 4, "--steps", 20, "--solver", "heun", "--beta0", 0.02,
             "--quadrature", "left", "--dtype", "float64"]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    shaping = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["shaping"]
    assert shaping == {"alpha0": 0.01, "beta0": 0.02, "tau_split": 0.6, "launch": "linear",
                       "landing": "exponential", "k": 3.0, "renormalize": False}
    df = read_run(tmp_path / "run")
    kts = kfm.KTS(beta0=0.02)
    field = kfm.GaussianMixtureTarget(_ring(), std=0.3)
    direct = kfm.sample(field, seeds=range(4), shape=(2,), steps=20, solver="heun", shaping=kts,
                        quadrature="left", dtype=torch.float64)
    np.testing.assert_array_equal(df["kpe"].to_numpy(), direct.kpe.numpy())
    assert not np.array_equal(df["kpe"], df["kpe_raw"])


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_results_do_not_depend_on_batch_or_shard_cut(tmp_path, solver):
    common = ["--field", "mixture", "--n", 7, "--solver", solver, "--steps", 10, "--dtype", "float64"]
    assert kfm_sample(tmp_path / "a", *common, "--batch-size", 7, "--shard-size", 7) == 0
    assert kfm_sample(tmp_path / "b", *common, "--batch-size", 2, "--shard-size", 3, "--no-save-x") == 0
    a, b = read_run(tmp_path / "a"), read_run(tmp_path / "b")
    assert "x" in a.columns and "x" not in b.columns
    exact = ["seed", "kpe", "kpe_raw", "early", "late", "peak", "nfe", "steps", "nonfinite"]
    pd.testing.assert_frame_equal(a[exact], b[exact], check_exact=True)
    direct = kfm.sample(kfm.GaussianMixtureTarget(_ring(), std=0.3), seeds=range(7), shape=(2,), steps=10,
                        solver=solver, dtype=torch.float64)
    np.testing.assert_array_equal(read_samples(tmp_path / "a"), direct.x.numpy())


def test_resume_with_a_changed_kts_parameter_is_refused_naming_it(tmp_path, capsys):
    common = ["--field", "gaussian", "--n", 3, "--steps", 5, "--alpha0", 0.05]
    assert kfm_sample(tmp_path / "run", *common) == 0
    assert kfm_sample(tmp_path / "run", *common[:-1], 0.06, "--resume") == 2
    err = capsys.readouterr().err
    assert "--alpha0 (the run's 0.05, now 0.06)" in err
    assert kfm_sample(tmp_path / "run", *common) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "run", *common, "--resume", "--batch-size", 1) == 0  # batch size is free


def test_a_bad_split_is_refused_before_the_run_folder_is_written(tmp_path, capsys):
    # "split must be a number in [0, 1]" came after manifest.json and shards/ were written: the
    # corrected command was then refused as another run, and --resume as a changed split
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--n", 3, "--steps", 5, "--split", 1.5) == 2
    assert "--split must be a number in [0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--n", 3, "--steps", 5, "--split", 0.5) == 0


def test_a_folder_holding_a_users_file_named_like_a_temporary_is_refused_as_foreign(tmp_path, capsys):
    # "a.tmp-1.png" holds ".tmp-" but is no killed writer's temporary (those are hidden: ".<name>.tmp-...");
    # the folder was taken as empty and the run written among the user's files
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.tmp-1.png").write_bytes(b"mine")
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--n", 3, "--steps", 5) == 2
    assert f"{tmp_path / 'run'} is not empty and holds no manifest.json" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["a.tmp-1.png"]


def test_resume_of_a_folder_holding_no_run_says_it_starts_one(tmp_path, capsys):
    # a typo in --out with --resume started a fresh run without a word (helper-100)
    common = ["--field", "gaussian", "--n", 3, "--steps", 5]
    assert kfm_sample(tmp_path / "typo", *common, "--resume") == 0
    assert f"--resume: {tmp_path / 'typo'} holds no run yet; starting a new one" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "typo", *common, "--resume") == 0
    assert "holds no run yet" not in capsys.readouterr().err


def test_a_resume_stopped_by_the_lock_does_not_say_it_starts_a_new_run(tmp_path, monkeypatch, capsys):
    # several --resume runs on an empty folder at once: those the lock stopped first said "holds no
    # run yet; starting a new one", then that the folder is locked (helper-188). The lock is taken
    # here after the command has looked into the still empty folder, as a twin run would
    import kinetic_fm.commands.sample as sample
    from kinetic_fm.runs.lock import RunLock

    out = tmp_path / "run"
    real = sample._lock_a_busy_folder
    twin = RunLock(out)

    def then_a_twin_takes_the_lock(*args, **kwargs):
        found = real(*args, **kwargs)
        out.mkdir(exist_ok=True)
        twin.acquire()
        return found

    monkeypatch.setattr(sample, "_lock_a_busy_folder", then_a_twin_takes_the_lock)
    try:
        assert kfm_sample(out, "--field", "gaussian", "--dim", 2, "--n", 3, "--steps", 5, "--resume") == 2
    finally:
        twin.release()
    err = capsys.readouterr().err
    assert "is in use by another writer" in err, err
    assert "holds no run yet" not in err
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("flags,message", [
    (["--n", 0], "--n must lie in [1, 2**32], got 0"),
    (["--n", 2**32 + 1], "--n must lie in [1, 2**32], got 4294967297"),   # it blamed --seed-start 0
    (["--steps", 0], "--steps must be >= 1"),
    (["--dim", 0], "--dim must be >= 1"),
    (["--beta0", 0.2], "error: --beta0 = 0.2 makes η(t) ≤ 0"),      # it named KTS's beta0
    (["--tau", 1.5], "--tau must lie in (0, 1), got 1.5"),              # it named KTS's tau_split
    (["--k", 0, "--landing", "linear", "--launch", "exponential"], "--k must lie in (0, 700]"),
    (["--alpha0", "nan"], "--alpha0 must be a finite number in [0, 1e+06], got nan"),   # no range was given
    (["--tau", "inf"], "--tau must be a finite number in (0, 1), got inf"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, flags, message):
    assert kfm_sample(tmp_path / "run", *flags) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("kfm sample: error:")


@pytest.mark.parametrize("flags,message", [
    (["--beta0", 0.2], "--beta0 = 0.2 makes η(t) ≤ 0 near t = 1 for the exponential landing with --k = 3; the "
                       "largest admissible --beta0 is just below 1/(e^k − 1) ≈ 0.05239569"),
    (["--beta0", -0.1, "--k", 2], "--beta0 must be >= 0 and below 1/(e^k − 1) ≈ 0.1565176 for the exponential "
                                  "landing with --k = 2, got -0.1"),
    (["--beta0", 1, "--landing", "linear"], "the largest admissible --beta0 is just below 1"),
    (["--beta0", "nan"], "--beta0 must be a finite number >= 0 (below 1/(e^k − 1) for the exponential landing"),
    (["--k", 0, "--landing", "linear", "--launch", "exponential"], "--k must lie in (0, 700]"),
    (["--alpha0", -1], "--alpha0 must lie in [0, 1e+06], got -1.0"),
    (["--tau", 0], "--tau must lie in (0, 1), got 0.0"),
])
def test_kts_errors_name_the_flags_throughout(tmp_path, capsys, flags, message):
    # the opening named the flag, the tail KTS's parameters: "the largest admissible beta0", "with k = 3"
    import re

    assert kfm_sample(tmp_path / "run", *flags) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert re.search(r"(?<![\w-])(alpha0|beta0|tau_split)\b|(?<![\w^-])k\b", err) is None, err


def test_a_k_alone_that_the_default_brake_cannot_take_says_the_brake_was_the_default(tmp_path, capsys):
    # "--beta0 = 0.01 makes η(t) ≤ 0 ... with --k = 5" named a flag the user never typed; the way out is a
    # smaller --k (β0 < 1/(e^k − 1) ⇔ k < ln(1 + 1/β0)) or a --beta0 of one's own
    assert kfm_sample(tmp_path / "run", "--k", 5) == 2
    assert capsys.readouterr().err.strip() == (
        "kfm sample: error: the default --beta0 0.01 makes η(t) ≤ 0 near t = 1 for the exponential landing with "
        "--k = 5; the largest admissible --beta0 is just below 1/(e^k − 1) ≈ 0.006783654, and at this --beta0 the "
        "rate (--k) must stay below ln(1 + 1 / --beta0) ≈ 4.61512")
    assert kfm_sample(tmp_path / "run", "--k", 5, "--beta0", 0.01) == 2   # typed: its own words, the default noted
    assert "error: --beta0 = 0.01 (the default) makes" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "run", "--k", 4.6151, "--n", 2, "--steps", 4) == 0   # just under the limit


def test_help_gives_the_largest_k_the_default_brake_takes(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())   # argparse wraps the lines
    # rounded down to 7 digits as KTS's refusal of a larger k prints it (the help hard-coded 4.615)
    assert kfm.KTS().beta0 == 0.01 and 4.61512 < math.log1p(100) < 4.615121
    assert "k < ln(1 + 1/β0) ≈ 4.61512 at the default β0 0.01" in helptext, helptext


def test_figure_help_words_the_power_panel_as_its_legend_does(capsys):
    # the help said "mean and 10–90% band" in its own words, the legend "mean, 10–90 % band"
    from kinetic_fm.sampling.energy import POWER_BAND

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())   # argparse wraps the lines
    assert f"over t ({POWER_BAND};" in helptext, helptext


def test_kfm_help_loads_no_study_module(tmp_path):
    # commands/sample.py took POWER_BAND from studies.figures at module level: `kfm --help` loaded the studies
    # package (figures, report, verdicts) and the runs package's lock and atomic writes, against cli.py's rule
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom kinetic_fm.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['--help'])\n"
            "print(' '.join(sorted(m for m in sys.modules\n"
            "                      if m.startswith(('kinetic_fm.studies', 'kinetic_fm.runs')))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.strip() == "", out.stdout


def test_a_trained_model_is_sampled_like_the_library_does(tmp_path):
    from kinetic_fm.models import VelocityMLP, load_model, save_model

    torch.manual_seed(0)
    net = VelocityMLP((2, 3), hidden=16, depth=1)
    path = tmp_path / "net.safetensors"
    save_model(net, path, ema=copy.deepcopy(net))
    assert kfm_sample(tmp_path / "run", "--model", path, "--n", 5, "--steps", 8, "--solver", "heun",
                      "--alpha0", 0.05) == 0
    table = read_run(tmp_path / "run")
    direct = kfm.sample(load_model(path), seeds=range(5), shape=(2, 3), steps=8, solver="heun",
                        shaping=kfm.KTS(alpha0=0.05))
    np.testing.assert_array_equal(table["kpe"].to_numpy(), direct.kpe.numpy())
    samples = read_samples(tmp_path / "run")
    assert samples.shape == (5, 2, 3) and samples.flags.writeable   # Arrow's buffer is read-only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(torch.from_numpy(samples), direct.x, rtol=0, atol=0)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(manifest["identity"]["weights_sha256"]) == 64


def test_a_missing_model_file_is_named(tmp_path, capsys):
    assert kfm_sample(tmp_path / "run", "--model", tmp_path / "missing.safetensors") == 2
    assert "no such file" in capsys.readouterr().err


def _saved_net(path, seed=0):
    from kinetic_fm.models import VelocityMLP, save_model

    torch.manual_seed(seed)
    net = VelocityMLP((2,), hidden=8, depth=1)
    save_model(net, path, ema=copy.deepcopy(net))
    return path


def test_a_run_folder_still_training_pins_the_checkpoint_it_sampled(tmp_path, capsys):
    # no final.safetensors yet: the latest checkpoint is sampled and its hash recorded, so a
    # resume after training wrote a newer checkpoint is refused instead of mixing two nets
    folder = tmp_path / "training"
    _saved_net(folder / "checkpoints" / "step_0000001.safetensors")
    args = ("--model", folder, "--n", 8, "--shard-size", 4, "--steps", 3)
    assert kfm_sample(tmp_path / "run", *args) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    from kinetic_fm.models.checkpoint import weights_digest

    assert manifest["identity"]["weights_sha256"] == weights_digest(folder / "checkpoints" / "step_0000001.safetensors")
    _saved_net(folder / "checkpoints" / "step_0000002.safetensors", seed=1)
    capsys.readouterr()
    assert kfm_sample(tmp_path / "run", *args, "--resume") == 2
    assert "--model (the run's weights sha256 " in capsys.readouterr().err  # the flag, not the field (helper-203)


def test_the_same_weights_by_another_path_resume_the_run(tmp_path, monkeypatch, capsys):
    # the run is pinned by the weights' hash, not by how the path was spelled: an absolute path,
    # the folder instead of its final file, or another working directory resume it
    folder = tmp_path / "trained"
    _saved_net(folder / "final.safetensors")
    monkeypatch.chdir(tmp_path)
    args = ("--n", 8, "--shard-size", 4, "--steps", 3)
    assert kfm_sample(tmp_path / "run", "--model", "trained/final.safetensors", *args) == 0
    first = read_run(tmp_path / "run")
    monkeypatch.chdir(folder)
    capsys.readouterr()
    assert kfm_sample(tmp_path / "run", "--model", folder, *args, "--resume") == 0
    assert "this process computed 0, kept 2" in capsys.readouterr().out
    np.testing.assert_array_equal(first["kpe"].to_numpy(), read_run(tmp_path / "run")["kpe"].to_numpy())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["runtime"]["model"] == "trained/final.safetensors"   # kept for the record
    _saved_net(folder / "final.safetensors", seed=1)                     # other weights: refused
    assert kfm_sample(tmp_path / "run", "--model", folder, *args, "--resume") == 2
    assert "--model (the run's weights sha256 " in capsys.readouterr().err  # the flag, not the field (helper-203)


def test_resuming_a_dopri5_net_run_with_another_batch_size_warns(tmp_path, capsys):
    # a net's round-off depends on the batch size and can move dopri5's adaptive steps: said of a resume that
    # samples, not of one that finds every shard done (nothing is computed with the new batch size)
    def lose_a_shard(run):
        next((run / "shards").glob("shard-00001-*.parquet")).unlink()

    path = _saved_net(tmp_path / "net.safetensors")
    args = ("--model", path, "--n", 4, "--shard-size", 2, "--solver", "dopri5")
    assert kfm_sample(tmp_path / "run", *args, "--batch-size", 4) == 0
    capsys.readouterr()
    lose_a_shard(tmp_path / "run")
    assert kfm_sample(tmp_path / "run", *args, "--batch-size", 4, "--resume") == 0
    assert "warning" not in capsys.readouterr().err
    assert kfm_sample(tmp_path / "run", *args, "--batch-size", 1, "--resume") == 0
    assert "warning" not in capsys.readouterr().err                     # finished: nothing computed with 1
    lose_a_shard(tmp_path / "run")
    assert kfm_sample(tmp_path / "run", *args, "--batch-size", 1, "--resume") == 0
    err = capsys.readouterr().err
    assert "kfm sample: warning: this dopri5 run of a net started with --batch-size 4; with 1" in err
    fixed = ("--model", path, "--n", 4, "--shard-size", 2, "--steps", 3)
    assert kfm_sample(tmp_path / "fixed", *fixed) == 0
    capsys.readouterr()
    lose_a_shard(tmp_path / "fixed")
    assert kfm_sample(tmp_path / "fixed", *fixed, "--batch-size", 1, "--resume") == 0
    err = capsys.readouterr().err                                       # fixed steps: round-off only, said so
    assert "warning: this run of a net started with --batch-size 256" in err and "last bits" in err


def test_a_model_samples_in_float64_and_a_wrong_shape_fails_before_the_folder(tmp_path, capsys):
    path = _saved_net(tmp_path / "net.safetensors")
    assert kfm_sample(tmp_path / "run64", "--model", path, "--n", 3, "--steps", 3, "--dtype", "float64") == 0
    assert read_samples(tmp_path / "run64").dtype == np.float64
    assert kfm_sample(tmp_path / "bad", "--model", path, "--n", 3, "--steps", 3, "--shape", "3") == 2
    assert "x must have shape (B, 2), got (1, 3)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    (tmp_path / "config.json").write_text("{}")
    assert kfm_sample(tmp_path / "bad", "--model", tmp_path / "config.json", "--n", 3, "--steps", 3) == 2
    # torch's own words follow the path, worded by release ("Weights only load failed ..." in 2.4)
    err = capsys.readouterr().err
    assert "config.json: not a torch checkpoint (" in err and "Unsupported operand" in err


def test_a_text_file_given_as_the_model_is_one_error_line(tmp_path, capsys):
    # "hello" escaped the checkpoint's error handling as a raw KeyError traceback, exit 1
    for text in ("hello\n", "airplane\n", "root:x:0:0\n"):
        (tmp_path / "notes.txt").write_text(text)
        assert kfm_sample(tmp_path / "run", "--model", tmp_path / "notes.txt", "--n", 2, "--steps", 2) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "notes.txt: not a torch checkpoint (" in err[0]
        assert not (tmp_path / "run").exists()



def test_a_model_that_is_no_net_is_named_by_the_flag(tmp_path, capsys):
    # "one.pt: expected a state dict of tensors": the loader's words, without the flag that named the file
    torch.save(torch.zeros(3), tmp_path / "one.pt")
    (tmp_path / "empty").mkdir()
    for model, message in (("one.pt", "expected a state dict of tensors"),
                           ("empty", "no final.safetensors or checkpoints/step_*.safetensors")):
        assert kfm_sample(tmp_path / "run", "--model", tmp_path / model, "--n", 2, "--steps", 2) == 2
        assert capsys.readouterr().err == f"kfm sample: error: --model {tmp_path / model}: {message}\n"


def test_a_non_finite_velocity_names_seeds_and_the_flag_and_flagged_warns(tmp_path, capsys):
    from safetensors.torch import save_file

    path = _saved_net(tmp_path / "net.safetensors")
    from kinetic_fm.models.checkpoint import read_metadata

    tensors = kfm.models.load_weights(path)
    tensors = {k: torch.full_like(v, float("nan")) if k.endswith("bias") else v for k, v in tensors.items()}
    meta = {f"kinetic_fm.{k}": (v if k == "kind" else json.dumps(v)) for k, v in read_metadata(path).items()}
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    assert kfm_sample(tmp_path / "run", "--model", tmp_path / "nan.safetensors", "--n", 3, "--steps", 2,
                      "--seed-start", 40) == 2
    err = capsys.readouterr().err
    assert "seed(s) [40, 41, 42]" in err and "--on-nonfinite flag" in err
    # flagged, the run goes through and says so as the command's other warnings do: it printed "warning: ..."
    # without "kfm sample: " before it
    assert kfm_sample(tmp_path / "flagged", "--model", tmp_path / "nan.safetensors", "--n", 3, "--steps", 2,
                      "--on-nonfinite", "flag") == 0
    err = capsys.readouterr().err
    assert "kfm sample: warning: 3 sample(s) hit a non-finite velocity (energies NaN)\n" in err, err
    assert err.count("hit a non-finite velocity") == 1


def test_out_pointing_at_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert kfm_sample(tmp_path / "afile", "--n", 2, "--steps", 2) == 2
    err = capsys.readouterr().err
    assert err.startswith("kfm sample: error:") and "Traceback" not in err


def test_ctrl_c_says_how_to_continue(tmp_path, capsys, monkeypatch):
    import kinetic_fm.commands.sample as command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run", interrupted)
    assert main(["sample", "--field", "gaussian", "--n", "2", "--out", str(tmp_path / "run")]) == 130
    assert "interrupted: finished work is kept; rerun the same command with --resume" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["load_model", "weights_digest"])
def test_an_interruption_while_the_model_loads_says_nothing_was_sampled(tmp_path, capsys, monkeypatch, stage):
    # it said "finished work is kept; rerun the same command with --resume to continue" of a run folder
    # that did not exist yet: the weights are read and hashed (a big file takes long) before any sample
    import kinetic_fm.commands.sample as command
    import kinetic_fm.models.checkpoint as checkpoint
    from kinetic_fm.cli import _Terminated

    net = VelocityMLP(2, hidden=8, depth=1)
    save_model(net, tmp_path / "net.safetensors", ema=net)
    flags = ["--model", tmp_path / "net.safetensors", "--n", 2, "--steps", 2]
    for signal_, code, how in ((KeyboardInterrupt, 130, ""), (_Terminated, 128 + 15, " (SIGTERM)")):
        def interrupted(*args, **kwargs):
            raise signal_

        with monkeypatch.context() as patched:
            patched.setattr(checkpoint, stage, interrupted)
            assert kfm_sample(tmp_path / "run", *flags) == code
        err = capsys.readouterr().err
        assert (f"kfm sample: interrupted{how}: while reading --model {tmp_path / 'net.safetensors'}, before any "
                "sample was computed: rerun the same command") in err
        assert "finished work is kept" not in err and not (tmp_path / "run").exists()
    # once the net is read, the usual hint: the folder keeps finished shards
    def interrupted_sampling(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(command, "_shard_sampler", interrupted_sampling)
        assert kfm_sample(tmp_path / "run", *flags) == 130
    assert "while reading --model" not in capsys.readouterr().err


def test_a_unet_trained_by_kfm_train_is_sampled_at_its_recorded_shape(tmp_path):
    assert main(["train", "--data", "digits", "--n", "16", "--steps", "1", "--batch-size", "4", "--width", "8",
                 "--model", "unet", "--checkpoints", "none", "--no-progress", "--out", str(tmp_path / "net")]) == 0
    assert kfm_sample(tmp_path / "run", "--model", tmp_path / "net", "--n", 2, "--steps", 2) == 0
    assert read_samples(tmp_path / "run").shape == (2, 1, 8, 8)


def test_a_wrong_shape_for_a_net_names_the_shape_flag(tmp_path, capsys):
    # our nets refuse a wrong shape with a ValueError, which came out as "x must have shape (B, 2)"
    from kinetic_fm.models import VelocityMLP, save_model

    net = VelocityMLP(2, hidden=8, depth=1)
    save_model(net, tmp_path / "net.safetensors", ema=net)
    assert kfm_sample(tmp_path / "run", "--model", tmp_path / "net.safetensors", "--shape", 3, "--n", 2) == 2
    assert ("the velocity failed on one sample of shape (3,) (the shape given by --shape): x must have shape "
            "(B, 2)") in capsys.readouterr().err


@pytest.mark.parametrize("shape", ["0,2", "-1"])
def test_a_shape_without_positive_dimensions_names_the_shape_flag(tmp_path, capsys, shape):
    # it reached kfm.noise, which refused it as "shape must have positive dimensions"
    from kinetic_fm.models import VelocityMLP, save_model

    net = VelocityMLP(2, hidden=8, depth=1)
    save_model(net, tmp_path / "net.safetensors", ema=net)
    assert kfm_sample(tmp_path / "run", "--model", tmp_path / "net.safetensors", "--shape", shape, "--n", 2) == 2
    assert f"--shape must be positive integers such as 1,28,28, got '{shape}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["final.safetensors", "checkpoints/step_0000004.safetensors"])
def test_older_unet_runs_take_their_shape_from_the_run_config(tmp_path, capsys, where):
    # nets trained before the shape was written into the weights' metadata: config.json's data_shape
    from kinetic_fm.models import UNet, save_model

    torch.manual_seed(0)
    net = UNet(1, base_channels=8, channel_mults=(1,))
    save_model(net, tmp_path / "old" / where, ema=copy.deepcopy(net))
    assert kfm_sample(tmp_path / "run", "--model", tmp_path / "old", "--n", 2, "--steps", 2) == 2
    assert "does not record its sample shape; give --shape" in capsys.readouterr().err
    (tmp_path / "old" / "config.json").write_text(json.dumps({"data_shape": [30, 1, 6, 6]}))
    assert kfm_sample(tmp_path / "run2", "--model", tmp_path / "old", "--n", 2, "--steps", 2) == 0
    assert read_samples(tmp_path / "run2").shape == (2, 1, 6, 6)


def _class_conditional_net(path):
    from kinetic_fm.models import VelocityMLP, save_model

    torch.manual_seed(0)
    net = VelocityMLP((3,), hidden=16, depth=1, num_classes=4)
    save_model(net, path, ema=copy.deepcopy(net))
    return path


@pytest.mark.parametrize("solver", ["heun", "dopri5"])
def test_a_class_conditional_net_samples_the_classes_asked_for(tmp_path, solver):
    from kinetic_fm.fields.guidance import ClassifierFreeGuidance
    from kinetic_fm.models import load_model

    path = _class_conditional_net(tmp_path / "cc.safetensors")
    net, seeds = load_model(path), range(10, 16)
    common = ("--model", path, "--n", 6, "--seed-start", 10, "--steps", 4, "--solver", solver, "--batch-size", 4)
    assert kfm_sample(tmp_path / "one", *common, "--label", 2) == 0
    table = read_run(tmp_path / "one")
    assert table["label"].tolist() == [2] * 6

    def batched(field_of):  # the command's batches of 4 (a net's round-off moves dopri5's steps)
        return np.concatenate([kfm.sample(field_of(part), seeds=part, shape=(3,), steps=4, solver=solver).kpe.numpy()
                               for part in (seeds[:4], seeds[4:])])

    direct = batched(lambda part: kfm.ModelXT(net, per_sample=["y"], y=torch.full((len(part),), 2)))
    np.testing.assert_array_equal(table["kpe"].to_numpy(), direct)

    assert kfm_sample(tmp_path / "cfg", *common, "--label", "seed", "--guidance", 2.5) == 0
    table = read_run(tmp_path / "cfg")
    labels = torch.tensor([s % 4 for s in seeds])
    assert table["label"].tolist() == labels.tolist()
    guided = batched(lambda part: ClassifierFreeGuidance(net, torch.tensor([s % 4 for s in part]), 2.5, null_label=4))
    np.testing.assert_array_equal(table["kpe"].to_numpy(), guided)
    assert not np.allclose(table["kpe"].to_numpy(), read_run(tmp_path / "one")["kpe"].to_numpy())


def test_class_flags_are_checked_and_pinned_by_the_run(tmp_path, capsys):
    path = _class_conditional_net(tmp_path / "cc.safetensors")
    args = ("--model", path, "--n", 4, "--steps", 2)
    for flags, message in [((), "is class-conditional (4 classes): pass --label K (0..3)"),
                           (("--label", 4), "--label must be a class index in [0, 3], 'seed' or 'null', got '4'"),
                           (("--label", "null", "--guidance", 2), "--guidance needs a class to guide towards"),
                           (("--label", 1, "--guidance", "nan"), "--guidance must be a finite number")]:
        assert kfm_sample(tmp_path / "bad", *args, *flags) == 2
        assert message in capsys.readouterr().err
    assert kfm_sample(tmp_path / "bad", "--n", 4, "--label", 1) == 2
    assert "--label applies to a class-conditional --model only; a built-in --field" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "run", *args, "--label", "null") == 0
    assert read_run(tmp_path / "run")["label"].tolist() == [4] * 4       # the null class's index
    assert kfm_sample(tmp_path / "run", *args, "--label", 0, "--resume") == 2
    assert "label" in capsys.readouterr().err


def _rewrite_header_in_reverse_order(path):
    """The same tensors and metadata with the header's keys in reverse order: what another
    process's safetensors writer may produce for identical weights (its map order is random)."""
    import struct

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    flipped = {k: dict(reversed(list(v.items()))) if k == "__metadata__" else v for k, v in reversed(list(header.items()))}
    text = json.dumps(flipped, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])


def test_identical_weights_written_in_another_header_order_resume_the_run(tmp_path, capsys):
    """A resumed or repeated kfm train writes bit-identical tensors, but safetensors orders the
    header's metadata differently in each process: the run was refused as 'other weights'."""
    from kinetic_fm.models.checkpoint import load_weights, weights_digest
    from kinetic_fm.runs.manifest import sha256_file

    path = _saved_net(tmp_path / "final.safetensors")
    args = ("--model", path, "--n", 8, "--shard-size", 4, "--steps", 3)
    assert kfm_sample(tmp_path / "run", *args) == 0
    before, digest = sha256_file(path), weights_digest(path)
    tensors = load_weights(path)
    _rewrite_header_in_reverse_order(path)
    assert sha256_file(path) != before and weights_digest(path) == digest
    assert all(torch.equal(tensors[k], v) for k, v in load_weights(path).items())
    shards = sorted((tmp_path / "run" / "shards").glob("*.parquet"))
    shards[-1].unlink()
    assert kfm_sample(tmp_path / "run", *args, "--resume") == 0
    assert "this process computed 1, kept 1" in capsys.readouterr().out


def test_a_run_pinned_by_the_files_bytes_still_resumes_with_that_file(tmp_path, capsys):
    """Runs started before the header-order-free digest stored the sha256 of the file's bytes."""
    from kinetic_fm.runs.manifest import sha256_file

    path = _saved_net(tmp_path / "final.safetensors")
    args = ("--model", path, "--n", 8, "--shard-size", 4, "--steps", 3)
    assert kfm_sample(tmp_path / "run", *args) == 0
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["identity"]["weights_sha256"] = sha256_file(path)   # as an older kinetic_fm wrote it
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert kfm_sample(tmp_path / "run", *args, "--resume") == 0, capsys.readouterr().err
    _saved_net(path, seed=1)                                      # other weights: still refused
    assert kfm_sample(tmp_path / "run", *args, "--resume") == 2
    assert "--model (the run's weights sha256 " in capsys.readouterr().err  # the flag, not the field (helper-203)


# --profile and --figure ------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_stored_profile_is_what_the_sampler_returns_and_sums_to_kpe(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kinetic_fm.runs import read_profile

    flags = ["--field", "gaussian", "--dim", 3, "--n", 7, "--seed-start", 5, "--steps", 12, "--solver", "heun",
             "--grid", "cosine", "--alpha0", 0.05, "--dtype", "float64", "--shard-size", 4, "--batch-size", 3,
             "--profile"]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    times, increments = read_profile(tmp_path / "run")
    direct = kfm.sample(kfm.GaussianTarget(2.0 * torch.ones(3, dtype=torch.float64), 0.5), seeds=range(5, 12),
                        shape=(3,), steps=12, solver="heun", grid="cosine", shaping=kfm.KTS(alpha0=0.05),
                        dtype=torch.float64, profile=True)
    np.testing.assert_array_equal(increments, direct.profile.numpy())   # per seed, whatever the batch cut
    np.testing.assert_array_equal(times, direct.times.numpy())
    df = read_run(tmp_path / "run")
    np.testing.assert_array_equal(np.stack(df["profile"]), increments)  # the documented pandas route
    np.testing.assert_allclose(increments.sum(axis=1), df["kpe"], rtol=1e-13)
    stored = pq.read_table(tmp_path / "run" / "results.parquet").schema.field("profile").type
    assert pa.types.is_fixed_size_list(stored) and stored.list_size == 12 and stored.value_type == pa.float64()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["profile"] is True
    assert manifest["runtime"]["profile_times"] == times.tolist()


def test_the_point_field_samples_under_dopri5_with_its_closed_form_energy(tmp_path):
    # it was refused ("singular at t = 1, where dopri5 evaluates"): the field now clamps 1 − t
    assert kfm_sample(tmp_path / "run", "--field", "point", "--dim", 2, "--n", 4, "--solver", "dopri5",
                      "--dtype", "float64") == 0
    x0 = kfm.noise(range(4), (2,), dtype=torch.float64).numpy()
    np.testing.assert_allclose(read_run(tmp_path / "run")["kpe"], 0.5 * ((2.0 - x0) ** 2).sum(axis=1), rtol=1e-4)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_the_point_field_spends_energy_at_a_constant_power(tmp_path, solver):
    """PointTarget y = 2·1: v = (y − x)/(1 − t) keeps every path on the straight line x0 -> y at the
    constant velocity y − x0, so the power ½‖v‖² is ½‖y − x0‖² at all t, and a step of length Δt_i
    holds ½‖y − x0‖²·Δt_i; on a cosine grid the increments vary but the power does not."""
    from kinetic_fm.runs import read_profile

    assert kfm_sample(tmp_path / "run", "--field", "point", "--dim", 2, "--n", 5, "--steps", 16, "--grid", "cosine",
                      "--solver", solver, "--dtype", "float64", "--profile") == 0
    times, increments = read_profile(tmp_path / "run")
    x0 = kfm.noise(range(5), (2,), dtype=torch.float64).numpy()
    power = 0.5 * ((2.0 - x0) ** 2).sum(axis=1)                        # ½‖y − x0‖², closed form
    np.testing.assert_allclose(increments, power[:, None] * np.diff(times)[None, :], rtol=1e-12)
    np.testing.assert_allclose(increments / np.diff(times), np.repeat(power[:, None], 16, axis=1), rtol=1e-12)
    assert np.ptp(np.diff(times)) > 0.1 * np.diff(times).max()         # the grid is far from uniform


def test_resuming_with_another_profile_setting_is_refused_and_plain_runs_resume_as_before(tmp_path, capsys):
    from kinetic_fm.runs import read_profile

    common = ["--field", "gaussian", "--n", 4, "--steps", 3, "--shard-size", 2]
    assert kfm_sample(tmp_path / "prof", *common, "--profile") == 0
    capsys.readouterr()
    assert kfm_sample(tmp_path / "prof", *common, "--resume") == 2
    assert "--profile (the run's on, now off)" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "prof", *common, "--profile", "--resume") == 0

    assert kfm_sample(tmp_path / "plain", *common) == 0
    first = read_run(tmp_path / "plain")
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "profile" not in manifest["config"] and "profile_times" not in manifest["runtime"]  # as before the flag
    assert "profile" not in first.columns
    with pytest.raises(ValueError, match="made without --profile"):
        read_profile(tmp_path / "plain")
    capsys.readouterr()
    assert kfm_sample(tmp_path / "plain", *common, "--profile", "--resume") == 2
    assert "--profile (the run's off, now on)" in capsys.readouterr().err
    sorted((tmp_path / "plain" / "shards").glob("*.parquet"))[-1].unlink()
    assert kfm_sample(tmp_path / "plain", *common, "--resume") == 0   # the kept shard's run id still matches
    assert "this process computed 1, kept 1" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_run(tmp_path / "plain"), first, check_exact=True)


_GAUSSIAN_3D = ["--field", "gaussian", "--dim", 3, "--solver", "dopri5", "--dtype", "float64"]


def _gaussian_3d(seeds, **kwargs):
    """The command's gaussian field at D = 3, sampled by kfm.sample with dopri5 in float64."""
    field = kfm.GaussianTarget(2.0 * torch.ones(3, dtype=torch.float64), 0.5)
    return kfm.sample(field, seeds=seeds, shape=(3,), solver="dopri5", dtype=torch.float64, profile=True, **kwargs)


@pytest.mark.parametrize("flag,name,value", [
    ("--rtol", "rtol", 1e-3), ("--atol", "atol", 1e-3), ("--first-step", "first_step", 0.05),
])
def test_dopri5_step_control_flags_reach_kfm_sample(tmp_path, capsys, flag, name, value):
    # with the defaults dopri5 takes 4-5 steps on this smooth field; each of these flags moves them
    assert kfm_sample(tmp_path / "run", *_GAUSSIAN_3D, "--n", 4, "--profile", flag, value) == 0
    assert f"dopri5, {name.replace('_', ' ')} {value:g}," in capsys.readouterr().out
    df = read_run(tmp_path / "run")
    direct, default = _gaussian_3d(range(4), **{name: value}), _gaussian_3d(range(4))
    np.testing.assert_array_equal(read_samples(tmp_path / "run"), direct.x.numpy())
    for column in ("kpe", "kpe_raw", "early", "late", "peak", "nfe", "steps"):
        np.testing.assert_array_equal(df[column].to_numpy(), getattr(direct, column).numpy())
    assert not np.array_equal(df["kpe"].to_numpy(), default.kpe.numpy())   # the flag was not dropped
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    others = {"rtol", "atol", "first_step", "max_steps"} - {name}
    assert config[name] == value and not others & set(config)   # only the one given


def test_max_steps_stops_the_run_naming_the_seeds_and_a_resume_may_raise_it(tmp_path, capsys):
    flags = [*_GAUSSIAN_3D, "--n", 4, "--shard-size", 2, "--seed-start", 7]
    assert kfm_sample(tmp_path / "run", *flags, "--max-steps", 3) == 2   # each sample takes 4 or 5 steps (and rejects some)
    err = capsys.readouterr().err
    assert err.startswith("kfm sample: error: dopri5 made more than --max-steps 3 attempted steps with seed(s) [7, 8]")
    assert "loosen --rtol/--atol or raise --max-steps" in err and "Traceback" not in err
    # a limit, not a setting of the numbers: not in the config, so a resume may raise it
    assert kfm_sample(tmp_path / "run", *flags, "--max-steps", 20, "--resume") == 0
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert "max_steps" not in config
    direct = _gaussian_3d(range(7, 11))
    np.testing.assert_array_equal(read_run(tmp_path / "run")["kpe"].to_numpy(), direct.kpe.numpy())
    np.testing.assert_array_equal(read_run(tmp_path / "run")["steps"].to_numpy(), direct.steps.numpy())


@pytest.mark.parametrize("flags,message", [
    (["--rtol", 0], "--rtol must be a positive finite number, got 0.0"),
    (["--rtol", "inf"], "--rtol must be a positive finite number, got inf"),
    (["--atol", -0.001], "--atol must be a positive finite number, got -0.001"),
    (["--atol", "nan"], "--atol must be a positive finite number, got nan"),
    (["--first-step", 0], "--first-step must be a number in (0, 1], got 0.0"),
    (["--first-step", 1.5], "--first-step must be a number in (0, 1], got 1.5"),
    (["--max-steps", 0], "--max-steps must be >= 1, got 0"),
])
def test_dopri5_step_control_out_of_range_is_one_line_and_exit_2(tmp_path, capsys, flags, message):
    assert kfm_sample(tmp_path / "run", "--solver", "dopri5", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kfm sample: error: {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_dopri5_step_control_with_a_fixed_step_solver_is_refused(tmp_path, capsys, solver):
    # kfm.sample ignores them there: the command would have run 100 fixed steps without a word
    assert kfm_sample(tmp_path / "run", "--solver", solver, "--rtol", 1e-3) == 2
    assert f"--rtol applies to --solver dopri5 only; {solver} takes --steps fixed steps" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "run", "--solver", solver, "--atol", 1e-3, "--max-steps", 50) == 2
    assert "--atol, --max-steps apply to --solver dopri5 only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resuming_with_other_dopri5_tolerances_is_refused_and_older_runs_resume_as_before(tmp_path, capsys):
    flags = [*_GAUSSIAN_3D, "--n", 4, "--shard-size", 2]
    assert kfm_sample(tmp_path / "tight", *flags, "--rtol", 1e-4) == 0
    capsys.readouterr()
    assert kfm_sample(tmp_path / "tight", *flags, "--rtol", 1e-3, "--resume") == 2
    assert "--rtol (the run's 0.0001, now 0.001)" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "tight", *flags, "--resume") == 2
    assert "--rtol (the run's 0.0001, now default)" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "tight", *flags, "--rtol", 1e-4, "--first-step", 0.1, "--resume") == 2
    assert "--first-step (the run's default, now 0.1)" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "tight", *flags, "--rtol", 1e-4, "--resume") == 0

    # a run without the flags records none of them: its config is what the command wrote before
    # they existed, so such a run folder keeps its run id and resumes (also with the defaults spelled out)
    assert kfm_sample(tmp_path / "plain", *flags) == 0
    first = read_run(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "manifest.json").read_text())["config"]
    assert set(config) == {"field", "dim", "sample_shape", "steps", "solver", "grid", "quadrature", "split",
                           "on_nonfinite", "dtype", "device", "shaping", "save_x"}
    sorted((tmp_path / "plain" / "shards").glob("*.parquet"))[-1].unlink()
    capsys.readouterr()
    assert kfm_sample(tmp_path / "plain", *flags, "--rtol", 1e-5, "--atol", 1e-5, "--max-steps", 10_000,
                      "--resume") == 0
    assert "this process computed 1, kept 1" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_run(tmp_path / "plain"), first, check_exact=True)
    assert kfm_sample(tmp_path / "plain", *flags, "--atol", 1e-6, "--resume") == 2
    assert "--atol (the run's default, now 1e-06)" in capsys.readouterr().err


def test_field_and_dim_beside_a_model_are_refused_and_a_model_run_records_dim_2_as_before(tmp_path, capsys):
    # --field point --model X sampled the net without a word about --field
    net = tmp_path / "net.safetensors"
    model = VelocityMLP(3, hidden=8, depth=1)
    save_model(model, net, ema=copy.deepcopy(model))
    for flags, named in ((["--field", "point"], "--field applies"), (["--dim", "3"], "--dim applies"),
                         (["--field", "gaussian", "--dim", "2"], "--field and --dim apply")):
        assert kfm_sample(tmp_path / "refused", "--model", net, *flags) == 2
        assert capsys.readouterr().err.startswith(f"kfm sample: error: {named} to a built-in field only")
    assert not (tmp_path / "refused").exists()
    assert kfm_sample(tmp_path / "run", "--model", net, "--n", 2, "--steps", 2) == 0
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert (config["field"], config["dim"]) == (None, 2)   # the run id of earlier model runs holds


def test_resume_takes_the_runs_record_of_settings_that_change_no_number(tmp_path, capsys):
    # dopri5 ignores --steps, yet it is recorded (the run id is unchanged since it was): a resume
    # with another --steps was refused as "config.steps (stored 100, now 50)"; likewise --split
    # spelled out at its default (--tau under shaping) against a run that left it out
    flags = [*_GAUSSIAN_3D, "--n", 4, "--shard-size", 2, "--tau", 0.7]
    assert kfm_sample(tmp_path / "run", *flags, "--steps", 30) == 0
    err = capsys.readouterr().err
    assert "--steps does not apply to --solver dopri5" in err
    assert "steps is ignored by solver" not in err                 # said once, by the command
    first = read_run(tmp_path / "run")
    sorted((tmp_path / "run" / "shards").glob("*.parquet"))[-1].unlink()
    assert kfm_sample(tmp_path / "run", *flags, "--steps", 50, "--split", 0.7, "--resume") == 0
    out, err = capsys.readouterr()
    assert "this process computed 1, kept 1" in out and "--steps does not apply" in err
    pd.testing.assert_frame_equal(read_run(tmp_path / "run"), first, check_exact=True)
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert (config["steps"], config["split"]) == (30, None)
    # a split that means another τ still changes the numbers, and is refused
    assert kfm_sample(tmp_path / "run", *flags, "--split", 0.5, "--resume") == 2
    assert "--split (the run's unset, now 0.5)" in capsys.readouterr().err

    # and the other way round: a fixed-step run that spelled out --split 0.6 resumes without it
    fixed = ["--field", "gaussian", "--dim", 3, "--steps", 4, "--n", 4, "--shard-size", 2]
    assert kfm_sample(tmp_path / "fixed", *fixed, "--split", 0.6) == 0
    assert kfm_sample(tmp_path / "fixed", *fixed, "--resume") == 0
    assert kfm_sample(tmp_path / "fixed", *fixed, "--steps", 5, "--resume") == 2   # steps count here
    assert "--steps (the run's 4, now 5)" in capsys.readouterr().err


@pytest.mark.parametrize("made,resumed", [("cpu", "cpu:0"), ("cpu:0", "cpu"), ("cpu:0", "cpu:0"), ("cpu", "cpu:1")])
def test_cpu_and_cpu_0_are_one_device_on_resume(tmp_path, capsys, made, resumed):
    # --device cpu:0 against a run made with --device cpu was refused as
    # "config.device (stored 'cpu', now 'cpu:0')"; torch puts a tensor of any cpu:N on the one CPU
    run = tmp_path / "run"
    flags = ["--field", "gaussian", "--dim", 3, "--steps", 4, "--n", 4, "--shard-size", 2]
    assert kfm_sample(run, *flags, "--device", made) == 0
    written, first = (run / "manifest.json").read_bytes(), read_run(run)
    sorted((run / "shards").glob("*.parquet"))[-1].unlink()
    capsys.readouterr()
    assert kfm_sample(run, *flags, "--device", resumed, "--resume") == 0
    assert "this process computed 1, kept 1" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_run(run), first, check_exact=True)
    assert (run / "manifest.json").read_bytes() == written  # its record, and so its run id, as made


def test_only_cpu_device_names_are_merged_on_resume():
    from kinetic_fm.checks import names_the_cpu

    assert [names_the_cpu(d) for d in ["cpu", "cpu:0", "cpu:3"]] == [True] * 3
    # "cuda" is cuda:<LOCAL_RANK> under torchrun: it and cuda:0 or cuda:1 may be other GPUs
    assert [names_the_cpu(d) for d in ["cuda", "cuda:0", "cuda:1", "cpu:00", "CPU", None]] == [False] * 6


def test_one_kts_flag_takes_the_other_defaults_and_beta0_0_launches_only(tmp_path, capsys):
    # recorded behaviour, kept: --alpha0 alone also brakes the landing with KTS's beta0 = 0.01
    flags = ["--field", "gaussian", "--dim", 3, "--n", 3, "--steps", 20, "--solver", "heun", "--dtype", "float64"]
    assert kfm_sample(tmp_path / "both", *flags, "--alpha0", 0.5) == 0
    shaping = json.loads((tmp_path / "both" / "manifest.json").read_text())["config"]["shaping"]
    assert shaping["alpha0"] == 0.5 and shaping["beta0"] == 0.01
    assert kfm_sample(tmp_path / "launch", *flags, "--alpha0", 0.5, "--beta0", 0) == 0
    field = kfm.GaussianTarget(2.0 * torch.ones(3, dtype=torch.float64), 0.5)
    direct = kfm.sample(field, seeds=range(3), shape=(3,), steps=20, solver="heun", dtype=torch.float64,
                        shaping=kfm.KTS(alpha0=0.5, beta0=0.0))
    np.testing.assert_array_equal(read_run(tmp_path / "launch")["kpe"].to_numpy(), direct.kpe.numpy())
    assert not np.array_equal(read_run(tmp_path / "both")["kpe"], read_run(tmp_path / "launch")["kpe"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--alpha0 0.05 --beta0 0" in capsys.readouterr().out   # --help shows launch-only shaping


def _png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("profile", [False, True])
def test_figure_writes_a_png_and_redraws_on_resume(tmp_path, capsys, profile):
    figure = tmp_path / "figures" / "run.png"   # its folder is made
    flags = ["--field", "mixture", "--n", 6, "--steps", 4, "--figure", figure, *(["--profile"] if profile else [])]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    assert f"figure: {figure}" in capsys.readouterr().out
    data = figure.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    width, height = _png_size(figure)
    assert (width > 2 * height) == profile     # two panels side by side with the power curve, else one
    figure.unlink()
    assert kfm_sample(tmp_path / "run", *flags, "--resume") == 0   # a finished run: nothing sampled, redrawn
    assert "this process computed 0, kept 1" in capsys.readouterr().out
    assert figure.read_bytes().startswith(PNG_SIGNATURE)


def test_a_figure_that_is_not_a_png_fails_before_sampling(tmp_path, capsys):
    assert kfm_sample(tmp_path / "run", "--n", 3, "--steps", 2, "--profile", "--figure", tmp_path / "run.pdf") == 2
    err = capsys.readouterr().err
    assert err.startswith("kfm sample: error: --figure must end in .png, got") and "run.pdf" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.pdf").exists()


def test_dopri5_profiles_keep_each_samples_own_steps(tmp_path, capsys):
    from kinetic_fm.runs import read_profile

    figure = tmp_path / "dopri5.png"
    assert kfm_sample(tmp_path / "run", "--field", "mixture", "--n", 5, "--solver", "dopri5", "--dtype", "float64",
                      "--batch-size", 2, "--shard-size", 3, "--profile", "--figure", figure) == 0
    direct = kfm.sample(kfm.GaussianMixtureTarget(_ring(), std=0.3), seeds=range(5), shape=(2,), solver="dopri5",
                        dtype=torch.float64, profile=True)
    steps = direct.steps.numpy()
    assert steps.min() < steps.max()   # the samples took different numbers of steps
    df = read_run(tmp_path / "run")
    np.testing.assert_array_equal(df["steps"], steps)
    for i, k in enumerate(steps):      # each row holds its own steps, unpadded
        np.testing.assert_array_equal(df["profile"][i], direct.profile[i, :k].numpy())
        np.testing.assert_array_equal(df["times"][i], direct.times[i, :k + 1].numpy())
    times, increments = read_profile(tmp_path / "run")   # padded as kfm.sample pads them
    np.testing.assert_array_equal(times, direct.times.numpy())
    np.testing.assert_array_equal(increments, direct.profile.numpy())
    np.testing.assert_allclose(increments.sum(axis=1), df["kpe"], rtol=1e-13)
    assert "profile_times" not in json.loads((tmp_path / "run" / "manifest.json").read_text())["runtime"]
    assert figure.read_bytes().startswith(PNG_SIGNATURE)


def _pandas_route_shard(velocity_of, seeds, batch_size: int, *, save_x: bool, profile: bool, **sample_kwargs):
    """A shard's table as kfm sample built it before it built Arrow arrays directly: each batch's
    scalars as a pandas frame (plus its labels), the frames concatenated and turned into Arrow by
    ``pa.Table.from_pandas``, then the list columns appended. ``velocity_of(chunk)`` -> (field, labels)."""
    import pyarrow as pa

    frames, finals, profiles, grids = [], [], [], []
    dopri5 = sample_kwargs.get("solver") == "dopri5"
    for lo in range(0, len(seeds), batch_size):
        chunk = [int(s) for s in seeds[lo:lo + batch_size]]
        field, labels = velocity_of(chunk)
        res = kfm.sample(field, seeds=chunk, profile=profile, **sample_kwargs)
        frame = pd.DataFrame({"seed": chunk, **{name: getattr(res, name).numpy() for name in
                                                ("kpe", "kpe_raw", "early", "late", "peak", "peak_time")}})
        for name in ("nfe", "steps"):
            value = getattr(res, name)
            frame[name] = value.numpy() if isinstance(value, torch.Tensor) else [value] * len(chunk)
        frame["nonfinite"] = res.nonfinite.numpy()
        if labels is not None:
            frame["label"] = labels.numpy()
        frames.append(frame)
        finals.append(res.x.reshape(len(chunk), -1).numpy())
        if profile and dopri5:
            profiles += [res.profile[i, :k].numpy() for i, k in enumerate(res.steps.tolist())]
            grids += [res.times[i, :k + 1].numpy() for i, k in enumerate(res.steps.tolist())]
        elif profile:
            profiles.append(res.profile.numpy())
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)

    def fixed(rows):
        rows = np.concatenate(rows)
        return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])

    if save_x:
        table = table.append_column("x", fixed(finals))
    if profile and dopri5:
        table = table.append_column("profile", pa.array(profiles, type=pa.list_(pa.float64())))
        table = table.append_column("times", pa.array(grids, type=pa.list_(pa.float64())))
    elif profile:
        table = table.append_column("profile", fixed(profiles))
    return table


def _write_pandas_route_shards(run_dir, manifest, indices, velocity_of, batch_size, *, save_x, profile, **kwargs):
    """A run folder holding ``manifest`` and the shards ``indices`` as the pandas route wrote them."""
    from kinetic_fm.runs.manifest import write_manifest
    from kinetic_fm.runs.shards import SHARD_DIR, write_shard

    (run_dir / SHARD_DIR).mkdir(parents=True)
    write_manifest(run_dir, manifest)
    for index in indices:
        table = _pandas_route_shard(velocity_of, manifest.plan.seeds(index), batch_size, save_x=save_x,
                                    profile=profile, **kwargs)
        write_shard(run_dir, manifest, index, table)


_MIXTURE = ("--field", "mixture", "--dim", 2)


@pytest.mark.parametrize("case", ["rk4 x profile", "dopri5 profile", "heun classes"])
def test_shards_hold_the_bytes_the_pandas_route_wrote(tmp_path, case):
    """Built as Arrow arrays, a shard keeps the old files' schema, column order, dtypes and
    metadata (pandas' included): its Parquet bytes, hence its receipt, are the old ones."""
    import pyarrow.parquet as pq

    from kinetic_fm.models import load_model
    from kinetic_fm.runs import read_manifest

    solver = case.split()[0]
    save_x, profile = case != "dopri5 profile", "profile" in case
    flags = ["--n", 7, "--shard-size", 4, "--batch-size", 3, "--steps", 6, "--solver", solver]
    flags += [] if save_x else ["--no-save-x"]
    flags += ["--profile"] if profile else []
    if case == "heun classes":
        path = _class_conditional_net(tmp_path / "cc.safetensors")
        net = load_model(path)
        flags += ["--model", path, "--label", "seed"]
        shape, dtype = (3,), torch.float32

        def velocity_of(chunk):
            labels = torch.tensor([s % 4 for s in chunk], dtype=torch.int64)
            return kfm.ModelXT(net, per_sample=["y"], y=labels), labels
    else:
        flags += [*_MIXTURE, "--dtype", "float64"]
        shape, dtype = (2,), torch.float64

        def velocity_of(chunk):
            return kfm.GaussianMixtureTarget(_ring(), std=0.3), None
    assert kfm_sample(tmp_path / "new", *flags) == 0
    manifest = read_manifest(tmp_path / "new")
    _write_pandas_route_shards(tmp_path / "old", manifest, range(manifest.plan.count), velocity_of, 3,
                               save_x=save_x, profile=profile, shape=shape, steps=6, solver=solver, dtype=dtype)
    for index in range(manifest.plan.count):
        name = manifest.plan.name(index)
        new, old = tmp_path / "new" / "shards" / name, tmp_path / "old" / "shards" / name
        new_table, old_table = pq.read_table(new), pq.read_table(old)
        assert new_table.schema.equals(old_table.schema, check_metadata=True), (new_table.schema, old_table.schema)
        assert b"pandas" in new_table.schema.metadata
        for column in old_table.column_names:
            assert new_table.column(column).equals(old_table.column(column)), column
        assert new.read_bytes() == old.read_bytes()
        assert new.with_suffix(".json").read_text() == old.with_suffix(".json").read_text()


def test_a_run_whose_first_shards_the_pandas_route_wrote_resumes_to_the_same_table(tmp_path, capsys):
    from kinetic_fm.runs import read_manifest

    flags = [*_MIXTURE, "--n", 10, "--shard-size", 3, "--batch-size", 2, "--steps", 5, "--solver", "rk4",
             "--dtype", "float64", "--profile"]
    assert kfm_sample(tmp_path / "whole", *flags) == 0
    manifest = read_manifest(tmp_path / "whole")
    _write_pandas_route_shards(tmp_path / "mixed", manifest, [0, 1], lambda chunk: (kfm.GaussianMixtureTarget(_ring(), std=0.3), None),
                               2, save_x=True, profile=True, shape=(2,), steps=5, solver="rk4", dtype=torch.float64)
    capsys.readouterr()
    assert kfm_sample(tmp_path / "mixed", *flags, "--resume") == 0
    captured = capsys.readouterr()
    assert "2 complete shard(s) kept, 2 to compute" in captured.err
    assert "this process computed 2, kept 2" in captured.out
    pd.testing.assert_frame_equal(read_run(tmp_path / "mixed"), read_run(tmp_path / "whole"), check_exact=True)
    assert (tmp_path / "mixed" / "results.parquet").read_bytes() == (tmp_path / "whole" / "results.parquet").read_bytes()


def test_readers_parse_only_the_columns_they_need_and_hand_back_arrays_of_their_own(tmp_path):
    import pyarrow.parquet as pq

    from kinetic_fm.runs import IncompleteRunError, merge_shards, read_profile

    run = tmp_path / "run"
    assert kfm_sample(run, *_MIXTURE, "--n", 8, "--shard-size", 3, "--steps", 4, "--profile", "--dtype", "float64") == 0
    shards = sorted((run / "shards").glob("*.parquet"))
    stored = [pq.read_table(path) for path in shards]  # three shards: the merged columns come in three chunks
    assert merge_shards(run, columns=["profile", "times", "kpe"]).column_names == ["seed", "kpe", "profile"]

    times, increments = read_profile(run)
    np.testing.assert_array_equal(increments, np.concatenate([np.stack(t.column("profile").to_pylist()) for t in stored]))
    samples = read_samples(run)
    np.testing.assert_array_equal(samples, np.concatenate([np.stack(t.column("x").to_pylist()) for t in stored]))
    for array in (increments, samples):  # the caller's own: writing into it changes no later read
        assert array.flags.writeable
        array[...] = -1.0
    np.testing.assert_array_equal(read_profile(run)[1], np.concatenate([np.stack(t.column("profile").to_pylist()) for t in stored]))
    assert (read_samples(run) != -1.0).all()

    pd.testing.assert_frame_equal(read_run(run, columns=["kpe", "seed"]), read_run(run)[["kpe", "seed"]])
    with pytest.raises(ValueError, match=r"has no column\(s\) \['nope'\]; it holds \['seed', 'kpe', .*'x', 'profile'\]"):
        read_run(run, columns=["kpe", "nope"])
    with pytest.raises(ValueError, match="columns must be a list"):
        merge_shards(run, columns="profile")

    # damage in a column a reader leaves unparsed (x) is still caught: the whole file is hashed
    meta = pq.ParquetFile(shards[1]).metadata.row_group(0)
    x_at = next(meta.column(i).data_page_offset for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith("x"))
    data = bytearray(shards[1].read_bytes())
    data[x_at + 20] ^= 0xFF
    shards[1].write_bytes(bytes(data))
    with pytest.raises(IncompleteRunError, match=r"shard-00001-of-00003.parquet \(invalid: corrupt"):
        read_profile(run)


def test_steps_and_grid_given_with_dopri5_are_ignored_with_a_warning(tmp_path, capsys):
    # dopri5 picks each sample's steps: a given --steps or --grid changed nothing, without a word
    assert kfm_sample(tmp_path / "plain", *_GAUSSIAN_3D, "--n", 3) == 0
    assert "warning" not in capsys.readouterr().err
    assert kfm_sample(tmp_path / "given", *_GAUSSIAN_3D, "--n", 3, "--steps", 7, "--grid", "uniform") == 0
    err = capsys.readouterr().err
    assert "kfm sample: warning: --steps and --grid do not apply to --solver dopri5" in err
    np.testing.assert_array_equal(read_run(tmp_path / "given")["kpe"], read_run(tmp_path / "plain")["kpe"])
    # another grid was refused by kfm.sample once the run had started; now before anything is written
    assert kfm_sample(tmp_path / "cosine", *_GAUSSIAN_3D, "--grid", "cosine") == 2
    assert "kfm sample: error: --grid cosine applies to fixed-step solvers only" in capsys.readouterr().err
    assert not (tmp_path / "cosine").exists()
    # a fixed-step solver takes them without a warning, and the defaults stay 100 uniform steps
    assert kfm_sample(tmp_path / "euler", "--field", "gaussian", "--n", 2, "--steps", 7) == 0
    assert "warning" not in capsys.readouterr().err
    assert kfm_sample(tmp_path / "default", "--field", "gaussian", "--n", 2) == 0
    config = json.loads((tmp_path / "default" / "manifest.json").read_text())["config"]
    assert (config["steps"], config["grid"]) == (100, "uniform")


def test_split_and_a_first_step_of_1_reach_kfm_sample(tmp_path):
    """--split is the τ of early/late (a plain run's default 0.6 is another split), and
    --first-step takes its whole range (0, 1]: both checked against kfm.sample called directly."""
    target = kfm.GaussianTarget(2.0 * torch.ones(2, dtype=torch.float64), 0.5)
    assert kfm_sample(tmp_path / "split", "--n", 3, "--steps", 10, "--split", 0.3) == 0
    direct = kfm.sample(target, seeds=range(3), shape=(2,), steps=10, split=0.3)
    df = read_run(tmp_path / "split")
    np.testing.assert_array_equal(df["early"].to_numpy(), direct.early.numpy())
    assert not np.array_equal(direct.early.numpy(), kfm.sample(target, seeds=range(3), shape=(2,), steps=10).early.numpy())
    assert kfm_sample(tmp_path / "first", "--n", 3, "--solver", "dopri5", "--first-step", 1) == 0
    direct = kfm.sample(target, seeds=range(3), shape=(2,), solver="dopri5", first_step=1.0)
    np.testing.assert_array_equal(read_run(tmp_path / "first")["kpe"].to_numpy(), direct.kpe.numpy())


def test_a_reader_that_leaves_early_does_not_cost_the_figure(tmp_path):
    # `kfm sample ... | head -1`: the summary's next print met a closed pipe, the command failed
    # with "[Errno 32] Broken pipe" (exit 2) and the figure that comes after it was never drawn
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "kinetic_fm.cli", "sample", "--field", "gaussian", "--n", "8", "--steps", "4",
           "--out", str(tmp_path / "run"), "--figure", str(tmp_path / "kpe.png"), "--no-progress"]
    import os

    # the three commands run at once: each spends most of its 3 s importing torch, pandas and matplotlib
    readers = []
    for unbuffered in ("1", None):                   # a pipe's stdout is block-buffered by default
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        if unbuffered:
            env["PYTHONUNBUFFERED"] = unbuffered
        out = tmp_path / f"unbuffered-{unbuffered}"
        args = [*cmd[:-5], "--out", str(out / "run"), "--figure", str(out / "kpe.png"), "--no-progress"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stdout.close()                          # the reader is gone before the first line
        readers.append((proc, out))
    # stdout closed altogether (>&-): output dropped, the command done
    closed = subprocess.Popen([*cmd[:-5], "--out", str(tmp_path / "closed"), "--no-progress"], stdout=None,
                              stderr=subprocess.PIPE, pass_fds=(), close_fds=True, preexec_fn=lambda: os.close(1))
    for proc, out in readers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        assert b"Broken pipe" not in err and b"BrokenPipeError" not in err and b"Traceback" not in err
        assert (out / "kpe.png").stat().st_size > 0
        assert len(read_run(out / "run")) == 8
    _, err = closed.communicate(timeout=300)
    assert closed.returncode == 0, err.decode()
    assert len(read_run(tmp_path / "closed")) == 8


@pytest.mark.parametrize("flags, shown, hidden", [
    (["--k", 4, "--renormalize"], ["KTS α0 = 0.01 (linear), β0 = 0.01 (exponential, k = 4), τ = 0.6",
                                   "renormalized"], []),
    (["--launch", "exponential", "--landing", "linear", "--k", 2], ["α0 = 0.01 (exponential, k = 2)",
                                                                     "β0 = 0.01 (linear)"], ["renormalized"]),
    (["--alpha0", 0.05, "--landing", "constant", "--k", 9], ["α0 = 0.05 (linear), β0 = 0.01 (constant)"],
     ["k = ", "renormalized"]),
])
def test_the_figure_title_names_every_setting_that_changes_the_gain(tmp_path, monkeypatch, flags, shown, hidden):
    # two runs with the same α0, β0 and τ but another k, or renormalized, had the same title
    from kinetic_fm.commands import sample as sample_command

    titles = []
    monkeypatch.setattr(sample_command, "_write_figure", lambda path, *a, title, **kw: titles.append(title) or path)
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--n", 2, "--steps", 2, *flags,
                      "--figure", tmp_path / "run.png") == 0
    (title,) = titles
    assert all(text in title for text in shown) and not any(text in title for text in hidden), title


@pytest.mark.parametrize("flags, warned", [
    (["--k", 5, "--landing", "linear"], True),
    (["--k", 5, "--landing", "constant", "--launch", "constant", "--beta0", 0.5], True),
    (["--k", 2, "--launch", "exponential", "--landing", "linear"], False),
    (["--k", 2], False),                      # the default landing is exponential
    (["--landing", "linear"], False),        # --k not given
    (["--k", 3, "--landing", "linear"], True),   # the default value, given
])
def test_k_without_an_exponential_form_is_said_to_be_ignored(tmp_path, capsys, flags, warned):
    # --k 5 --landing linear ran the same gain as --k 3 without a word (no form reads k)
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--n", 2, "--steps", 2, *flags) == 0
    err = capsys.readouterr().err
    assert ("--k applies to the exponential launch or landing only" in err) == warned, err
    # once, naming the flag: KTS itself warns too (naming k), for a k other than 3
    assert err.count("applies to the exponential launch or landing only") == int(warned), err


_MIXTURE_RUN = ["--field", "mixture", "--dim", 2, "--n", 4, "--shard-size", 2, "--steps", 4, "--solver", "heun"]
_KTS_RUN = [*_MIXTURE_RUN, "--alpha0", 0.05]
_DOPRI5_RUN = ["--field", "gaussian", "--dim", 2, "--n", 2, "--shard-size", 2, "--solver", "dopri5", "--rtol", 1e-4]
_KTS_DEFAULTS = "--alpha0 0.05 --beta0 0.01 --tau 0.6 --launch linear --landing exponential --k 3"
# (run made with, flags changed on --resume, the one line the refusal must give)
_CHANGED = [
    (_MIXTURE_RUN, ["--n", 6], "--n (the run's 4, now 6)"),
    (_MIXTURE_RUN, ["--seed-start", 3], "--seed-start (the run's 0, now 3)"),
    (_MIXTURE_RUN, ["--shard-size", 3], "--shard-size (the run's 2, now 3)"),
    (_MIXTURE_RUN, ["--steps", 5], "--steps (the run's 4, now 5)"),
    (_MIXTURE_RUN, ["--solver", "euler"], "--solver (the run's heun, now euler)"),
    (_MIXTURE_RUN, ["--grid", "cosine"], "--grid (the run's uniform, now cosine)"),
    (_MIXTURE_RUN, ["--quadrature", "left"], "--quadrature (the run's solver, now left)"),
    (_MIXTURE_RUN, ["--split", 0.5], "--split (the run's unset, now 0.5)"),
    (_MIXTURE_RUN, ["--on-nonfinite", "flag"], "--on-nonfinite (the run's raise, now flag)"),
    (_MIXTURE_RUN, ["--dtype", "float64"], "--dtype (the run's float32, now float64)"),
    (_MIXTURE_RUN, ["--no-save-x"], "--no-save-x (the run's off, now on)"),
    (_MIXTURE_RUN, ["--profile"], "--profile (the run's off, now on)"),
    (_MIXTURE_RUN, ["--field", "gaussian"], "--field (the run's mixture, now gaussian)"),   # not its identity hashes
    (_MIXTURE_RUN, ["--dim", 3], "--dim (the run's 2, now 3)"),                           # nor its sample shape
    (_MIXTURE_RUN, ["--alpha0", 0.05], f"the KTS flags (the run's none: plain FM, now {_KTS_DEFAULTS})"),
    (_KTS_RUN, ["--alpha0", 0.06], "--alpha0 (the run's 0.05, now 0.06)"),
    (_KTS_RUN, ["--beta0", 0.02], "--beta0 (the run's 0.01, now 0.02)"),
    (_KTS_RUN, ["--tau", 0.5], "--tau (the run's 0.6, now 0.5)"),
    (_KTS_RUN, ["--launch", "constant"], "--launch (the run's linear, now constant)"),
    (_KTS_RUN, ["--landing", "linear"], "--landing (the run's exponential, now linear)"),
    (_KTS_RUN, ["--k", 2], "--k (the run's 3, now 2)"),
    (_KTS_RUN, ["--renormalize"], "--renormalize (the run's off, now on)"),
    (_DOPRI5_RUN, ["--rtol", 1e-3], "--rtol (the run's 0.0001, now 0.001)"),
    (_DOPRI5_RUN, ["--atol", 1e-6], "--atol (the run's default, now 1e-06)"),
    (_DOPRI5_RUN, ["--first-step", 0.1], "--first-step (the run's default, now 0.1)"),
    (_DOPRI5_RUN[:-2], ["--rtol", 1e-3], "--rtol (the run's default, now 0.001)"),
]


def _resume_refusal(err: str) -> str:
    """What a refused resume names: the text between "other settings: " and ". Resume with"."""
    head, found, rest = err.partition("was made with other settings: ")
    assert found, err
    return rest.partition(". Resume with")[0]


def test_a_resume_refusal_names_each_changed_flag_with_both_values(tmp_path, capsys):
    # "config.steps (stored 4, now 5)", "seeds.n (stored 4, now 6)", "shard_size (...)": the
    # manifest's fields, not the flags typed (helper-188); a --field change listed its identity
    # hashes and sample shape beside it
    folders: dict[tuple, str] = {}
    for made, changed, named in _CHANGED:
        run = tmp_path / folders.setdefault(tuple(map(str, made)), f"run{len(folders)}")
        if not run.exists():
            assert kfm_sample(run, *made) == 0
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
        capsys.readouterr()
        # a flag given twice takes its last value
        assert kfm_sample(run, *made, *changed, "--resume") == 2, changed
        err = capsys.readouterr().err
        assert err.startswith(f"kfm sample: error: --resume: the run in {run} was made with other settings: "), err
        assert _resume_refusal(err) == named, changed
        assert "(stored" not in err and "config." not in err and "seeds." not in err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_resume_refusal_names_a_nets_flags_and_a_removed_gains(tmp_path, capsys):
    torch.manual_seed(0)
    nets = [VelocityMLP((2,), hidden=8, depth=1) for _ in range(2)]
    for k, net in enumerate(nets):
        save_model(net, tmp_path / f"net{k}.safetensors", ema=copy.deepcopy(net))
    from kinetic_fm.models.checkpoint import weights_digest

    digests = [weights_digest(tmp_path / f"net{k}.safetensors")[:16] for k in range(2)]
    common = ["--n", 2, "--steps", 2]
    assert kfm_sample(tmp_path / "net", "--model", tmp_path / "net0.safetensors", *common) == 0
    capsys.readouterr()
    assert kfm_sample(tmp_path / "net", "--model", tmp_path / "net1.safetensors", *common, "--resume") == 2
    recorded = json.loads((tmp_path / "net" / "manifest.json").read_text())["identity"]["weights_sha256"]
    assert recorded.startswith(digests[0])
    assert _resume_refusal(capsys.readouterr().err) == (
        f"--model (the run's weights sha256 {digests[0]}…, now weights sha256 {digests[1]}…)")

    path = _class_conditional_net(tmp_path / "cc.safetensors")
    flags = ["--model", path, "--n", 2, "--steps", 2, "--label", 1]
    assert kfm_sample(tmp_path / "cc", *flags, "--guidance", 2) == 0
    # and the other way round, the stored gain (its keys sorted in manifest.json) in --help's order
    assert kfm_sample(tmp_path / "kts", *_KTS_RUN) == 0
    capsys.readouterr()
    assert kfm_sample(tmp_path / "kts", *_MIXTURE_RUN, "--resume") == 2
    assert _resume_refusal(capsys.readouterr().err) == f"the KTS flags (the run's {_KTS_DEFAULTS}, now none: plain FM)"
    capsys.readouterr()
    for changed, named in ((["--label", 2, "--guidance", 2], "--label (the run's 1, now 2)"),
                           (["--guidance", 3], "--guidance (the run's 2, now 3)")):
        assert kfm_sample(tmp_path / "cc", *flags, *changed, "--resume") == 2
        assert _resume_refusal(capsys.readouterr().err) == named


def test_every_setting_a_sample_run_compares_has_its_flag():
    # enumerated from the code: _config's keys (every optional one switched on), the seeds, the shard
    # size and the identities' keys; a new compared key without a flag would be named as a field
    import argparse

    import kinetic_fm.commands.sample as sample

    args = argparse.Namespace(truncate=2, backend="faiss", field=sample.EMPIRICAL, model=None, dim=None, steps=4,
                              solver="dopri5", grid="uniform", quadrature="solver", split=None, on_nonfinite="raise",
                              dtype="float32", device="cpu", save_x=True, profile=True, rtol=1e-3, atol=1e-3,
                              first_step=0.1, max_steps=None)
    target = sample._Target(None, (2,), {})
    config = sample._config(args, target, kfm.KTS(), sample._Conditioning(1, 2.0, 3))
    fields = [f"config.{key}" for key in config] + [f"config.shaping.{key}" for key in config["shaping"]]
    fields += ["seeds.n", "seeds.seed_start", "shard_size"]
    fields += ["identity.field", "identity.class", "identity.params_sha256", "identity.kind",
               "identity.weights_sha256", "identity.train_sha256", "identity.train_shape", "identity.train_dtype"]
    unnamed = [field for field in fields if not sample._flag_of(field)]
    assert unnamed == []


@pytest.mark.parametrize("flags, shaped", [([], False), (["--alpha0", 0.05], True)])
def test_the_figure_names_eta_only_when_a_gain_acts(tmp_path, monkeypatch, flags, shaped):
    # a plain-FM run's figure read "KPE ½∫η²‖v‖² dt" and "½η²‖v‖²", an η no step of the run applies
    from kinetic_fm.studies import figures as F

    labels, render = [], F._render

    def keep(fig, name, caption):
        labels.extend(label for ax in fig.axes for label in (ax.get_xlabel(), ax.get_ylabel()))
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", keep)
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--n", 4, "--steps", 4, "--profile", *flags,
                      "--figure", tmp_path / "run.png") == 0
    kpe = F.KPE_LABEL if shaped else F.PLAIN_KPE_LABEL
    power = F.POWER_LABEL if shaped else F.PLAIN_POWER_LABEL
    assert any(label.startswith(kpe) for label in labels) and any(label.startswith(power) for label in labels)
    assert any("η" in label for label in labels) == shaped, labels


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("stage", ["_validate", "_conditioning", "_trial_call", "moving the net"])
def test_ctrl_c_before_the_run_starts_says_nothing_was_sampled(tmp_path, capsys, monkeypatch, stage, resume):
    # only the reading of --model and --train said so; a Ctrl-C in the trial call, the class check or
    # while the net moved to its device said "finished work is kept; rerun ... with --resume" of a run
    # folder that did not exist yet; so did one in the command's first seconds (its imports of torch and
    # pyarrow, the flags' checks: _validate), which a `timeout -s INT 3 kfm sample ...` met (helper-268)
    import kinetic_fm.commands.sample as command
    from kinetic_fm.models import VelocityMLP, save_model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    torch.manual_seed(0)
    path, net = tmp_path / "net.safetensors", VelocityMLP((2,), hidden=8, depth=1)
    save_model(net, path, ema=copy.deepcopy(net))
    if stage == "moving the net":   # the command's .to(device=, dtype=), not the loader's .to(dtype)
        to = VelocityMLP.to
        monkeypatch.setattr(VelocityMLP, "to",
                            lambda net, *a, **kw: interrupted() if "device" in kw else to(net, *a, **kw))
    else:
        monkeypatch.setattr(command, stage, interrupted)
    # a --resume into a folder that holds no run yet (allowed: "starting a new one") keeps no shard either
    resuming = ["--resume"] if resume else []
    assert kfm_sample(tmp_path / "run", "--model", path, "--n", 2, "--steps", 2, *resuming) == 130
    err = capsys.readouterr().err
    assert "interrupted: while preparing the run, before any sample was computed: rerun the same command" in err, err
    assert "--resume" not in err and "finished shards" not in err and not (tmp_path / "run").exists()


def test_ctrl_c_before_a_resume_samples_says_the_folder_keeps_its_finished_shards(tmp_path, capsys, monkeypatch):
    # it said "before any sample was computed: rerun the same command" as of a fresh run, whose folder
    # keeps nothing, of a folder that holds the run's finished shards
    import kinetic_fm.commands.sample as command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    flags = ["--field", "gaussian", "--n", 4, "--shard-size", 2, "--steps", 2]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    capsys.readouterr()
    monkeypatch.setattr(command, "_trial_call", interrupted)
    assert kfm_sample(tmp_path / "run", *flags, "--resume") == 130
    err = capsys.readouterr().err
    assert ("interrupted: while preparing the run, before this run computed a sample; the folder keeps its "
            "finished shards: rerun the same command") in err, err
    assert "before any sample was computed" not in err
    assert len(read_run(tmp_path / "run")) == 4


def test_the_sampling_settings_warnings_come_only_when_the_run_samples(tmp_path, capsys):
    # they were said before the folder's verdict: a refused --resume said "--quadrature 'left' ..." and then
    # its refusal, a resume of a finished run (nothing to sample) said them too
    run, said = tmp_path / "run", "warning: --quadrature 'left' takes each step's power at its start"
    flags = ["--field", "gaussian", "--dim", 2, "--n", 4, "--shard-size", 2, "--solver", "dopri5",
             "--quadrature", "left"]
    assert kfm_sample(run, *flags) == 0
    assert capsys.readouterr().err.count(said) == 1
    assert kfm_sample(run, *flags, "--resume", "--n", 6) == 2
    err = capsys.readouterr().err
    assert "--n" in err and said not in err, err
    assert kfm_sample(run, *flags, "--resume") == 0
    assert said not in capsys.readouterr().err
    next((run / "shards").glob("shard-00001-*.parquet")).unlink()
    assert kfm_sample(run, *flags, "--resume") == 0
    assert capsys.readouterr().err.count(said) == 1


def test_the_sampling_warnings_name_the_flags_not_the_library_arguments(tmp_path, capsys):
    # they read "quadrature='left' ... use quadrature='solver' with dopri5" and "(a smaller beta0)"
    assert kfm_sample(tmp_path / "left", "--field", "gaussian", "--dim", 2, "--n", 2, "--solver", "dopri5",
                      "--quadrature", "left") == 0
    err = capsys.readouterr().err
    assert "warning: --quadrature 'left' takes each step's power at its start" in err, err
    assert "use --quadrature 'solver' with dopri5" in err and "quadrature=" not in err
    assert kfm_sample(tmp_path / "singular", "--field", "point", "--n", 2, "--steps", 4,
                      "--launch", "constant", "--landing", "constant", "--beta0", 0.7) == 0
    err = capsys.readouterr().err
    assert "use a gain with η(1) > 1/2 (a smaller --beta0)" in err, err


@pytest.mark.parametrize("rank, samples", [(0, True), (0, False), (1, True)])
def test_under_torchrun_the_sampling_settings_warnings_come_once_from_rank_0(tmp_path, capsys, monkeypatch, rank,
                                                                             samples):
    # kfm.sample's warnings on the run's settings ("quadrature='left' ... under dopri5") came from every rank
    # that sampled a shard, once per rank; rank 0 may sample none. A two-rank world without processes: the
    # session, the folder's lock and run_sharded (which samples two batches here, or none) are stood in for
    import contextlib
    import warnings

    import kinetic_fm.commands.sample as command
    import kinetic_fm.runs as runs
    from kinetic_fm.runs.distributed import Coordinator, World

    @contextlib.contextmanager
    def two_ranks(device=None, **kwargs):
        yield Coordinator(World(rank=rank, world_size=2, local_rank=rank)), torch.device("cpu")

    def sharded(out, manifest, compute, on_start=None, **kwargs):
        if rank == 0 and on_start is not None:   # as run_sharded calls it, once the folder takes the run
            on_start()
        if samples:
            compute(np.arange(4), lambda n: None)   # two batches of 2
        raise KeyboardInterrupt

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(runs, "world_session", two_ranks)
    monkeypatch.setattr(runs, "run_sharded", sharded)
    monkeypatch.setattr(command, "_lock_a_busy_folder", lambda *args: None)
    filters = list(warnings.filters)
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--dim", 2, "--n", 4, "--batch-size", 2,
                      "--solver", "dopri5", "--quadrature", "left") == 130
    err = capsys.readouterr().err
    assert err.count("takes each step's power at its start") == (rank == 0), err
    assert warnings.filters == filters


def test_a_single_process_run_says_each_sampling_settings_warning_once(tmp_path, capsys):
    # four batches in two shards, each a kfm.sample call: the warning once, in the flags' words
    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--dim", 2, "--n", 4, "--batch-size", 1,
                      "--shard-size", 2, "--solver", "dopri5", "--quadrature", "left") == 0
    err = capsys.readouterr().err
    assert err.count("warning: --quadrature 'left' takes each step's power at its start") == 1, err
    assert "use --quadrature 'solver' with dopri5" in err and "quadrature=" not in err


def test_a_warning_raised_while_sampling_is_said_once_per_run_not_once_per_shard(tmp_path):
    # the filter hiding kfm.sample's settings warnings was set around each shard's batches: every change of the
    # warnings filters makes Python forget which warnings it has shown, so a field's own warning came once per
    # shard. Run as its own process: pytest's warning capture shows every warning inside a test anyway
    import os
    import subprocess
    import sys

    code = f"""
import sys, warnings
from kinetic_fm.fields.analytic import GaussianTarget
from kinetic_fm.cli import main
call = GaussianTarget.__call__
def warning_call(self, x, t):
    warnings.warn("the field's own note", UserWarning)
    return call(self, x, t)
GaussianTarget.__call__ = warning_call
sys.exit(main(["sample", "--field", "gaussian", "--dim", "2", "--n", "16", "--shard-size", "2", "--steps", "3",
               "--no-progress", "--out", {str(tmp_path / "run")!r}]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    # the trial call's, then the run's (the filters change twice before the first shard); it was once per shard (8)
    assert done.stderr.count("the field's own note") <= 3, done.stderr
