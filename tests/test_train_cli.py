import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.cli import main
from kinetic_fm.models import load_model, load_weights
from kinetic_fm.models.checkpoint import load_state

COMMON = ["--data", "gmm", "--n", "500", "--batch-size", "16", "--width", "16", "--save-every", "4", "--no-progress"]


def _same_weights(a, b):
    wa, wb = load_weights(a), load_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kfm_train_writes_a_loadable_run_and_resumes_identically(tmp_path, capsys):
    assert main(["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "full")]) == 0
    assert "20 steps" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert names == [f"step_{s:07d}.safetensors" for s in (1, 2, 4, 8, 16, 20)]
    model = load_model(tmp_path / "full")
    assert kfm.sample(model, seeds=range(8), shape=(2,), steps=4).x.shape == (8, 2)

    assert main(["train", *COMMON, "--steps", "12", "--out", str(tmp_path / "cut")]) == 0
    assert "resumed" not in capsys.readouterr().out
    assert main(["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert "resuming from step 12 of 20" in capsys.readouterr().out
    assert _same_weights(tmp_path / "full" / "final.safetensors", tmp_path / "cut" / "final.safetensors")


def test_kfm_train_says_it_resumed_before_it_trains_on(tmp_path, capsys, monkeypatch):
    # "resumed from step 12 of 20" came after the last step: a --no-progress resume of a long run showed
    # no sign, while it ran, that it went on from its resume state rather than from step 1
    import kinetic_fm.models as models

    assert main(["train", *COMMON, "--steps", "12", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    real, said = models.train, {}

    def train(*args, **kwargs):
        def callback(step, loss):
            said.setdefault(step, capsys.readouterr().out)
        return real(*args, callback=callback, **kwargs)

    monkeypatch.setattr(models, "train", train)
    assert main(["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert min(said) == 13 and "resuming from step 12 of 20" in said[13]
    assert "resum" not in capsys.readouterr().out.replace(str(tmp_path), "")  # said once, not in the summary too


def test_kfm_train_resume_reads_the_runs_config_once(tmp_path, monkeypatch):
    # the command parsed config.json twice: once for the recorded data shape, once for the recorded data spec
    import pathlib

    assert main(["train", *COMMON, "--steps", "4", "--out", str(tmp_path)]) == 0
    reads = []
    read_bytes = pathlib.Path.read_bytes

    def counted(self, *args, **kwargs):
        caller = sys._getframe(1)  # the command, or read_train_config, which the command calls
        callers = {caller.f_globals["__name__"], caller.f_back.f_globals["__name__"]}
        if self.name == "config.json" and "kinetic_fm.commands.train" in callers:
            reads.append(self)
        return read_bytes(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_bytes", counted)
    assert main(["train", *COMMON, "--steps", "8", "--out", str(tmp_path), "--resume"]) == 0
    assert reads == [tmp_path / "config.json"]


def test_kfm_train_resume_loads_resume_pt_once(tmp_path, monkeypatch):
    # the command loaded the whole resume.pt for its step, and again for the record where config.json is
    # damaged, before train() loaded it: a resume read it two or three times
    assert main(["train", *COMMON, "--steps", "4", "--out", str(tmp_path)]) == 0
    real_load, loads = torch.load, []

    def counted(path, *args, **kwargs):
        loads.append((sys._getframe(1).f_globals["__name__"], kwargs.get("mmap", False)))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    assert main(["train", *COMMON, "--steps", "8", "--out", str(tmp_path), "--resume"]) == 0
    assert loads == [("kinetic_fm.models.checkpoint", False)]          # train()'s own
    # a damaged config.json: the record is read from resume.pt, its tensors mapped, not read
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text()[:50])
    loads.clear()
    assert main(["train", *COMMON, "--steps", "12", "--out", str(tmp_path), "--resume"]) == 0
    assert loads == [("kinetic_fm.models.checkpoint", True), ("kinetic_fm.models.checkpoint", False)]


def test_kfm_train_counts_the_checkpoints_its_folder_holds(tmp_path, capsys):
    # extended from 12 to 20 steps, it counted 6: log2's last of the first 12 steps was left out
    assert main(["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "full")]) == 0
    assert "; 6 checkpoints;" in capsys.readouterr().out
    assert main(["train", *COMMON, "--steps", "12", "--out", str(tmp_path / "cut")]) == 0
    assert "; 5 checkpoints;" in capsys.readouterr().out
    assert main(["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert "; 7 checkpoints;" in capsys.readouterr().out
    assert len(list((tmp_path / "cut" / "checkpoints").iterdir())) == 7


def test_resume_refusals_name_the_flags(tmp_path, capsys):
    # they read "(train.lr): train.lr: saved 0.001, now 0.002" and "beyond steps=12"
    assert main(["train", *COMMON, "--steps", "12", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["train", *COMMON, "--steps", "12", "--lr", "0.002", "--out", str(tmp_path), "--resume"]) == 2
    said = capsys.readouterr()
    assert "settings differ from the saved run: --lr (the run's 0.001, now 0.002)" in said.err
    assert "resuming from" not in said.out   # it said "resuming from step 12 of 12", then refused
    assert main(["train", *COMMON, "--steps", "8", "--out", str(tmp_path), "--resume"]) == 2
    said = capsys.readouterr()
    assert "it is at step 12, beyond --steps 8" in said.err and "resuming from" not in said.out


def test_resume_refusals_name_the_flags_of_every_compared_setting(tmp_path, capsys):
    # --seed, --grad-clip, the net's and the data's flags read as "train.seed", "train.grad_clip",
    # "model", "data_shape, info" (helper-203)
    assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    # (helper-296: each in the form kfm sample's refusal names its flags, "--n (the run's 9, now 12)")
    for changed, named in ((["--seed", "3"], "--seed (the run's 0, now 3)"),
                           (["--grad-clip", "0.5"], "--grad-clip (the run's 1, now 0.5)"),
                           (["--grad-clip", "0"], "--grad-clip (the run's 1, now 0)"),
                           (["--width", "8"], "--width (the run's 16, now 8)"),
                           (["--model", "unet"], None),   # refused before the resume compares anything
                           (["--n", "400"], "--n (the run's 500, now 400)"),
                           (["--n", "400", "--lr", "0.002"], "--n (the run's 500, now 400); --lr (the run's 0.001, "
                                                             "now 0.002)")):
        assert main(["train", *COMMON, "--steps", "4", *changed, "--out", str(tmp_path), "--resume"]) == 2
        err = capsys.readouterr().err
        if named is None:
            assert err == ("kfm train: error: --model unet needs image data (C, H, W), but --data gmm holds vectors "
                           "of shape (2,); for vector data use --model mlp (or auto, which picks it)\n"), err
            continue
        assert f"settings differ from the saved run: {named};" in err, err
        assert "train." not in err and "info" not in err and "data_shape" not in err

def test_kfm_train_images_and_class_conditioning(tmp_path):
    args = ["train", "--data", "digits", "--n", "16", "--steps", "2", "--batch-size", "4", "--width", "8",
            "--checkpoints", "none", "--class-cond", "--no-progress", "--model", "unet", "--out", str(tmp_path)]
    assert main(args) == 0
    model = load_model(tmp_path)
    assert model.kind == "unet" and model.null_class == 10


def test_class_cond_counts_the_data_sets_classes_not_the_subsets_largest_label(tmp_path):
    # digits --n 6 --seed 3 draws labels [0, 3, 6, 6, 7, 8]: the net had 9 classes, and 9, a digit,
    # was its null class (kfm sample --label 9 sampled unconditionally)
    from kinetic_fm.data import load_dataset

    assert int(load_dataset("digits", n=6, seed=3).labels.max()) == 8
    assert main(["train", "--data", "digits", "--n", "6", "--seed", "3", "--steps", "2", "--batch-size", "4",
                 "--width", "8", "--checkpoints", "none", "--class-cond", "--no-progress", "--out", str(tmp_path)]) == 0
    model = load_model(tmp_path)
    assert (model.num_classes, model.null_class) == (10, 10)
    # 2-D point sets too: gmm --n 6 --seed 1 holds components {0, 1, 4} of 8 (the net had 5)
    assert main(["train", "--data", "gmm", "--n", "6", "--seed", "1", "--steps", "2", "--batch-size", "4",
                 "--width", "8", "--checkpoints", "none", "--class-cond", "--no-progress",
                 "--out", str(tmp_path / "gmm")]) == 0
    assert load_model(tmp_path / "gmm").num_classes == 8


def test_kfm_train_user_errors_exit_2(tmp_path, capsys):
    assert main(["train", "--data", "nope", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "unknown data spec" in capsys.readouterr().err
    assert main(["train", "--data", "mnist:" + str(tmp_path / "missing"), "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["train", "--data", "gmm", "--checkpoints", "1,x", "--out", str(tmp_path)]) == 2
    assert "--checkpoints must be log2, none or comma-separated steps" in capsys.readouterr().err
    assert main(["train", "--data", "gmm", "--width", "0", "--out", str(tmp_path)]) == 2
    assert "--width must be >= 1" in capsys.readouterr().err
    # a U-Net's width is its base_channels, even: the message named that internal argument
    assert main(["train", "--data", "digits", "--model", "unet", "--width", "3", "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "odd")]) == 2
    assert "kfm train: error: --width must be an even integer >= 2" in capsys.readouterr().err
    assert main(["train", "--data", "gmm", "--grad-clip=-1", "--out", str(tmp_path)]) == 2
    assert "--grad-clip must be a finite number >= 0 (0 disables clipping), got -1" in capsys.readouterr().err



def test_a_unet_on_vector_data_names_the_flags_and_the_models_that_suit_it(tmp_path, capsys):
    # "unet needs image samples (C, H, W), got shape (2,)" named neither flag nor what to use instead
    assert main(["train", "--data", "moons", "--model", "unet", "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "kfm train: error: --model unet needs image data (C, H, W), but --data moons holds vectors of shape (2,); "
        "for vector data use --model mlp (or auto, which picks it)\n")
    assert not (tmp_path / "run").exists()



def test_a_data_spec_that_loads_nothing_names_data(tmp_path, capsys):
    # "unknown data spec 'nope'", "EMPTY: contains no image files": the loader's words, without --data
    (tmp_path / "empty").mkdir()
    for data, message in (("nope", "--data: unknown data spec 'nope'"),
                          (f"folder:{tmp_path / 'empty'}", f"--data {tmp_path / 'empty'}: contains no image files")):
        assert main(["train", "--data", data, "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")]) == 2
        assert capsys.readouterr().err.startswith(f"kfm train: error: {message}")


@pytest.mark.slow
def test_sigkilled_training_resumes_bit_identically(tmp_path):
    base = [sys.executable, "-m", "kinetic_fm.cli", "train", *COMMON, "--steps", "400"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*base, "--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*base, "--out", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "cut" / "resume.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and load_state(state)["step"] >= 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_state(state)["step"]
    assert 40 <= killed_at < 400, "the run should be killed mid-way"
    subprocess.run([*base, "--out", str(tmp_path / "cut"), "--resume"], check=True, env=env, capture_output=True)
    assert _same_weights(tmp_path / "full" / "final.safetensors", tmp_path / "cut" / "final.safetensors")


def _ctrl_c_at(monkeypatch, stop, times=1):
    """kfm train's net trains as the command asks, until Ctrl-C (SIGINT) comes ``times`` times as step
    ``stop`` ends (in its callback)."""
    import kinetic_fm.models as models

    real = models.train

    def train(*args, **kwargs):
        def callback(step, loss):
            if step == stop:
                for _ in range(times):
                    signal.raise_signal(signal.SIGINT)  # its handler runs before this returns
        return real(*args, callback=callback, **kwargs)

    monkeypatch.setattr(models, "train", train)


_SECOND = "(a second Ctrl-C or SIGTERM stops at once, without waiting for the step under way to end and be saved)"


@pytest.mark.parametrize("stop, kept", [(7, 4), (3, 0)])
def test_a_second_ctrl_c_names_the_step_the_folder_keeps_and_the_steps_lost(tmp_path, capsys, monkeypatch, stop,
                                                                            kept):
    # it said "the steps up to the last resume state ... are kept": not which step, nor how many were lost
    flags = ["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "cut")]
    with monkeypatch.context() as patched:
        _ctrl_c_at(patched, stop, times=2)
        assert main(flags) == 130
    kept_words = (f"the resume state of step {kept} of 20 is kept (saved every --save-every 4 steps)" if kept else
                  "no resume state was saved yet (the first comes at step 4, --save-every 4)")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"kfm train: interrupted: {kept_words}; steps {kept + 1} to {stop} are lost, redone by the resume "
        f"{_SECOND}; rerun the same command with --resume to continue")
    assert main([*flags, "--resume"]) == 0
    assert (f"resuming from step {kept} of 20" in capsys.readouterr().out) == bool(kept)
    assert main(["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "full")]) == 0
    assert _same_weights(tmp_path / "full" / "final.safetensors", tmp_path / "cut" / "final.safetensors")


def test_ctrl_c_keeps_the_step_under_way_and_says_nothing_is_lost(tmp_path, capsys, monkeypatch):
    # Ctrl-C in step 7 kept the resume state of step 4 (--save-every 4): steps 5 to 7 were lost
    flags = ["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "cut")]
    with monkeypatch.context() as patched:
        _ctrl_c_at(patched, 7)
        assert main(flags) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "kfm train: interrupted: step 7 of 20 was finished and its resume state saved, no step is lost; "
        "rerun the same command with --resume to continue")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert main([*flags, "--resume"]) == 0
    assert "resuming from step 7 of 20" in capsys.readouterr().out
    assert main(["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "full")]) == 0
    assert _same_weights(tmp_path / "full" / "final.safetensors", tmp_path / "cut" / "final.safetensors")


def test_ctrl_c_of_a_resumed_run_counts_from_the_step_it_resumed(tmp_path, capsys, monkeypatch):
    flags = ["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "cut")]
    assert main(["train", *COMMON, "--steps", "9", "--out", str(tmp_path / "cut")]) == 0
    with monkeypatch.context() as patched:
        _ctrl_c_at(patched, 11, times=2)
        assert main([*flags, "--resume"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "kfm train: interrupted: the resume state of step 9 of 20 is kept (saved every --save-every 4 steps); "
        f"steps 10 to 11 are lost, redone by the resume {_SECOND}; rerun the same command with --resume to continue")


def test_kfm_train_on_centred_celeba_saves_the_mean(tmp_path):
    import numpy as np
    from PIL import Image

    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(faces / f"{i:06d}.jpg")
    args = ["train", "--data", f"celeba:{faces}", "--steps", "1", "--batch-size", "2", "--width", "8",
            "--model", "unet", "--checkpoints", "none", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    from kinetic_fm.data import load_celeba
    mean = load_weights(tmp_path / "run" / "data_mean.safetensors")["mean"]
    assert torch.equal(mean, load_celeba(faces).mean)


def _grey_pngs(folder, count: int):
    """``folder`` (made) holding ``count`` random grey 8×8 PNGs, 0.png, 1.png, ...; returns it."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_kfm_train_no_progress_hides_the_decoding_bar_too(tmp_path, capfd):
    """--no-progress promises no bar; an image folder's decoding bar went to stderr anyway."""
    images = _grey_pngs(tmp_path / "images", 4)
    args = ["train", "--data", f"folder:{images}", "--steps", "1", "--batch-size", "2", "--width", "8",
            "--model", "mlp", "--checkpoints", "none", "--out", str(tmp_path / "run")]
    assert main([*args, "--no-progress"]) == 0
    assert "decode" not in capfd.readouterr().err
    assert main([*args[:-1], str(tmp_path / "shown")]) == 0      # without it, the bar is there
    assert "decode" in capfd.readouterr().err


@pytest.mark.parametrize("flags, message", [
    # each named the library's argument ("batch_size must be ..."), --grad-clip offered "None",
    # which the flag spells 0, and --checkpoints named neither itself nor --steps
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--save-every", "0"], "--save-every must be a positive integer, got 0"),
    (["--warmup", "-1"], "--warmup must be a non-negative integer, got -1"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    # a traceback from AdamW at step 1 ("value cannot be converted to type float without overflow")
    (["--lr", "1e300"], "--lr must be a finite number in (0, 3.4e+37], got 1e+300: AdamW's first step, lr / (1 - β1) "
                        "with β1 = 0.9, must not exceed float32's largest number, 3.4e+38"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
    (["--ema-decay", "1"], "--ema-decay must be in [0, 1), got 1.0"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number >= 0 (0 disables clipping), got nan"),
    (["--class-cond", "--label-dropout", "1"], "--label-dropout must be in [0, 1), got 1.0"),
    (["--n", "0"], "--n must be >= 1, got 0"),
    (["--data", "digits", "--n", "5000"], "--n must be an integer in [1, 1_797] (the available items), got 5000"),
    (["--steps", "4", "--checkpoints", "2,5"], "--checkpoints steps must lie in [1, --steps] = [1, 4], got [5]"),
    (["--checkpoints", "0"], "--checkpoints steps must lie in [1, --steps] = [1, 2000], got [0]"),
])
def test_a_flag_out_of_range_is_named_with_its_range(tmp_path, capsys, flags, message):
    assert main(["train", "--data", "gmm", "--no-progress", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"kfm train: error: {message}\n"
    assert not (tmp_path / "run").exists()                        # refused before anything started


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_out_that_cannot_be_a_folder_is_named_before_the_data_loads(tmp_path, capsys, monkeypatch, where):
    # "[Errno 17] File exists: ..." came after the data had loaded, naming no flag
    import kinetic_fm.data as data

    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" if where == "file" else tmp_path / "afile" / "run"
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("the data was loaded"))
    assert main(["train", "--data", "gmm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    expected = (f"--out {out} is a file; name a folder" if where == "file"
                else f"--out {out}: {tmp_path / 'afile'} is a file, so no folder can be made inside it")
    assert err.startswith(f"kfm train: error: {expected}")


def test_every_training_flag_is_recorded_as_given(tmp_path):
    """Each flag reaches TrainConfig (config.json is written from the config train() ran with),
    and the defaults are the documented ones; --grad-clip 0 is no clipping (None)."""
    import json

    from kinetic_fm.models import TrainConfig

    flags = ["--batch-size", "8", "--lr", "0.002", "--warmup", "1", "--weight-decay", "0.01", "--ema-decay", "0.9",
             "--grad-clip", "0", "--class-cond", "--label-dropout", "0.25", "--seed", "5", "--checkpoints", "1,3",
             "--save-every", "2"]
    assert main(["train", "--data", "gmm", "--n", "64", "--steps", "3", "--width", "8", "--no-progress", *flags,
                 "--out", str(tmp_path / "given")]) == 0
    given = json.loads((tmp_path / "given" / "config.json").read_text())
    assert given["train"] == {"steps": 3, "batch_size": 8, "lr": 0.002, "weight_decay": 0.01, "betas": [0.9, 0.999],
                              "warmup": 1, "ema_decay": 0.9, "grad_clip": None, "label_dropout": 0.25, "seed": 5,
                              "checkpoints": [1, 3], "save_every": 2}
    assert given["info"]["n"] == 64 and given["model"]["config"]["num_classes"] == 8
    assert main(["train", "--data", "gmm", "--n", "64", "--steps", "3", "--width", "8", "--no-progress",
                 "--class-cond", "--out", str(tmp_path / "defaults")]) == 0
    defaults = json.loads((tmp_path / "defaults" / "config.json").read_text())["train"]
    expected = TrainConfig(steps=3, batch_size=256, lr=1e-3, weight_decay=0.0, warmup=0, ema_decay=0.999,
                           grad_clip=1.0, label_dropout=0.1, seed=0, checkpoints="log2", save_every=100)
    assert defaults == json.loads(json.dumps(expected.__dict__))


def test_seed_draws_the_subset_and_the_initial_weights(tmp_path, monkeypatch):
    """--seed picks the --n subset (which kfm memorization --train RUN loads again with it) and the
    initial weights: both checked against the library called directly with that seed."""
    import kinetic_fm.models as models
    from kinetic_fm.data import dataset_rows, load_dataset
    from kinetic_fm.models import default_model

    seen = {}
    real_train = models.train

    def spy(model, data, config, **kwargs):
        seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["data"] = data.clone()
        return real_train(model, data, config, **kwargs)

    monkeypatch.setattr(models, "train", spy)
    assert main(["train", "--data", "digits", "--n", "16", "--seed", "7", "--steps", "1", "--batch-size", "4",
                 "--width", "8", "--model", "mlp", "--checkpoints", "none", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    expected = dataset_rows(load_dataset("digits", n=16, seed=7, progress=False))
    assert torch.equal(seen["data"], expected)
    assert not torch.equal(expected, dataset_rows(load_dataset("digits", n=16, seed=0, progress=False)))
    torch.manual_seed(7)
    fresh = default_model("mlp", expected.shape[1:], width=8).state_dict()
    assert all(torch.equal(seen["weights"][k], fresh[k]) for k in fresh)


def test_a_rerun_without_resume_or_with_other_data_is_refused(tmp_path, capsys):
    # the record of a relative spec is kept only when it names the same data as this run's
    assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    assert main(["train", *COMMON, "--steps", "4", "--out", str(tmp_path / "run")]) == 2   # without --resume
    assert "already holds" in capsys.readouterr().err
    flags = [*COMMON, "--steps", "4", "--resume", "--out", str(tmp_path / "run")]
    assert main(["train", *[("moons" if f == "gmm" else f) for f in flags]]) == 2
    assert "settings differ from the saved run: --data (the run's gmm, now moons);" in capsys.readouterr().err


def test_class_cond_on_data_without_labels_is_refused(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    assert main(["train", "--data", f"folder:{images}", "--class-cond", "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    assert f"--class-cond: data 'folder:{images}' has no labels" in capsys.readouterr().err


def test_kfm_train_then_kfm_sample_on_the_run_folder_samples_its_final_ema(tmp_path):
    # the round trip a user does: the folder, not a file, names the net; its EMA is what is sampled
    import numpy as np

    from kinetic_fm.runs import read_run, read_samples

    assert main(["train", *COMMON, "--steps", "6", "--ema-decay", "0.5", "--out", str(tmp_path / "net")]) == 0
    assert main(["sample", "--model", str(tmp_path / "net"), "--n", "4", "--steps", "5", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    final = tmp_path / "net" / "final.safetensors"
    ema, raw = load_model(final, weights="ema"), load_model(final, weights="model")
    want = kfm.sample(ema, seeds=range(4), shape=(2,), steps=5)
    np.testing.assert_array_equal(read_run(tmp_path / "run")["kpe"].to_numpy(), want.kpe.numpy())
    torch.testing.assert_close(torch.from_numpy(read_samples(tmp_path / "run")), want.x, rtol=0, atol=0)
    assert not torch.equal(kfm.sample(raw, seeds=range(4), shape=(2,), steps=5).x, want.x)


def test_an_lr_times_weight_decay_of_one_or_more_warns_once_in_the_flags_words(tmp_path, capsys):
    # helper-256: AdamW's decay flips the weights' sign at each step where --lr × --weight-decay > 1; the run
    # goes on, as it did, with one warning that names both flags
    args = ["train", "--data", "gmm", "--n", "64", "--no-progress", "--steps", "1", "--batch-size", "8",
            "--checkpoints", "none", "--lr", "0.5", "--weight-decay", "4", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == ["kfm train: warning: --lr = 0.5 and --weight-decay = 4.0 multiply to 2 >= 1: AdamW's decoupled "
                      "weight decay multiplies the weights by 1 - 2 = -1 at each step at this lr, which zeroes them "
                      "or flips their sign; training goes on, but weight decay is meant to shrink them a little "
                      "(a product well below 1)"]


def test_warnings_of_the_training_itself_name_the_flags(tmp_path, capsys, monkeypatch):
    # helper-259: only the warnings of TrainConfig's build were in the flags' words; one that train() gives
    # while it trains (here a stand-in at the start of its work, naming settings as the library calls them)
    # read "grad_clip" and "steps=2", which no kfm train user typed
    import warnings

    training = sys.modules["kinetic_fm.models.train"]   # the package's name "train" is the function
    work = training._train

    def warning_train(model, data, config, *rest, **kwargs):
        warnings.warn(f"grad_clip = {config.grad_clip} clipped every one of steps={config.steps}; the learning "
                      "rate (lr) may be too large", UserWarning)
        return work(model, data, config, *rest, **kwargs)

    monkeypatch.setattr(training, "_train", warning_train)
    args = ["train", "--data", "gmm", "--n", "64", "--no-progress", "--steps", "2", "--batch-size", "8",
            "--checkpoints", "none", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == ["kfm train: warning: --grad-clip = 1.0 clipped every one of --steps 2; the learning rate (--lr) "
                      "may be too large"]


@pytest.mark.parametrize("content, said", [
    (b'{"model": {"name": "bert-base"}, "train": {"lr": 0.001}}', "config.json that is not a training run's "
     "(another program's, or damaged beyond recognition); {how}move it away, or choose another folder"),
    (b"\xff\xfe", "config.json that is not a training run's (another program's, or damaged beyond recognition)"),
    (b"", "config.json that is not a training run's (another program's, or damaged beyond recognition)"),
    (b'{"model": {"kind": "mlp"}, "train": {}}', "training run's config.json that lacks 'data_shape'; was it edited? "
     "With no resume.pt beside it"),
])
def test_kfm_train_names_a_config_json_in_out_by_the_folder_given(tmp_path, capsys, content, said):
    # "--out d1/config.json: the training run's config.json lacks 'data_shape' ... remove it" for each: the file's path
    # after the flag as if it were its value, another program's file called the training run's (helper-282)
    (tmp_path / "config.json").write_bytes(content)
    for resume, how in (([], "training would write its own over it: "),
                        (["--resume"], "--resume continues training runs only: ")):
        assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path), *resume]) == 2
        err = capsys.readouterr().err
        assert f"kfm train: error: --out {tmp_path} holds a " + said.format(how=how) in err, err
        assert "remove it" not in err
    assert (tmp_path / "config.json").read_bytes() == content


def test_a_kfm_sample_run_folder_is_refused_as_out_before_the_data_loads(tmp_path, capsys, monkeypatch):
    # kfm train wrote its config.json, checkpoints and resume.pt into a kfm sample run folder (beside
    # its manifest.json and shards), with --resume or without, after loading the data
    import kinetic_fm.data as data

    run = tmp_path / "sampled"
    assert main(["sample", "--field", "gaussian", "--dim", "2", "--n", "4", "--steps", "2", "--no-progress",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    def unread(*args, **kwargs):
        raise AssertionError("the data loaded before --out was checked")

    monkeypatch.setattr(data, "load_dataset", unread)
    for resume in ([], ["--resume"]):
        assert main(["train", *COMMON, "--steps", "2", "--out", str(run), *resume]) == 2
        err = capsys.readouterr().err
        assert f"--out {run} holds a kfm sample run (manifest.json), not a training run; choose another folder" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_kfm_train_resumes_a_run_whose_config_json_is_damaged_by_the_record_in_resume_pt(tmp_path, monkeypatch, capsys):
    # a damaged config.json read as no record: the data spec a run recorded relatively (before specs
    # were made absolute) was then compared absolute, and the resume refused as other --data (helper-269)
    import numpy as np
    from PIL import Image

    from kinetic_fm.data import registry

    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    flags = ["--data", "folder:images", "--batch-size", "4", "--width", "8", "--model", "mlp", "--save-every", "2",
             "--checkpoints", "none", "--no-progress", "--out", "run"]
    with monkeypatch.context() as older:  # the kfm train of before: the spec recorded as given
        older.setattr(registry, "absolute_spec", lambda spec: spec)
        assert main(["train", *flags, "--steps", "2"]) == 0
    written = (tmp_path / "run" / "config.json").read_text()
    assert '"data": "folder:images"' in written
    (tmp_path / "run" / "config.json").write_text(written[:50])
    assert main(["train", *flags, "--steps", "4", "--resume"]) == 0
    assert "resuming from step 2 of 4" in capsys.readouterr().out
    assert '"data": "folder:images"' in (tmp_path / "run" / "config.json").read_text()


@pytest.mark.parametrize("resume, said", [
    ([], "before any step was trained: rerun the same command"),
    (["--resume"], "before this run trained a step; the folder is left as it was: rerun the same command"),
])
def test_ctrl_c_while_the_data_loads_says_nothing_was_trained(tmp_path, capsys, monkeypatch, resume, said):
    # it said "the steps up to the last resume state ... are kept" before any step or state existed (helper-273)
    import kinetic_fm.data as data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load_dataset", interrupted)
    assert main(["train", *COMMON, "--steps", "8", "--out", str(tmp_path / "run"), *resume]) == 130
    assert capsys.readouterr().err == f"kfm train: interrupted: while preparing the run, {said}\n"
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("cut", [False, True])
def test_ctrl_c_while_the_final_weights_are_written_says_whether_they_were(tmp_path, capsys, monkeypatch, cut):
    # one Ctrl-C there is held until final.safetensors is whole; a second one cuts the write: either way the
    # message said "step 8 of 8 was finished ... rerun with --resume to continue", not whether the run has its end
    trainer = sys.modules["kinetic_fm.models.train"]  # the package's name `train` is the function

    real_save = trainer.save_model

    def interrupted_save(model, path, **kwargs):
        if path.name == "final.safetensors":
            for _ in range(1 + cut):
                os.kill(os.getpid(), signal.SIGINT)
        real_save(model, path, **kwargs)

    flags = ["train", *COMMON, "--steps", "8", "--out", str(tmp_path / "run")]
    with monkeypatch.context() as patched:
        patched.setattr(trainer, "save_model", interrupted_save)
        assert main(flags) == 130
    final = tmp_path / "run" / "final.safetensors"
    said = ("all 8 steps were trained and step 8's resume state saved, but the final weights were not written; "
            "rerun the same command with --resume to write them" if cut else
            f"all 8 steps were trained and the final weights written ({final}): the run is complete")
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"kfm train: interrupted: {said}"
    assert final.is_file() != cut
    if cut:
        assert main([*flags, "--resume"]) == 0
    assert isinstance(load_model(final), torch.nn.Module)


def test_ctrl_c_while_the_resume_loads_names_the_step_kept(tmp_path, capsys, monkeypatch):
    # it said "the steps up to the last resume state (saved every --save-every steps) are kept": no step
    trainer = sys.modules["kinetic_fm.models.train"]  # the package's name `train` is the function

    flags = ["train", *COMMON, "--steps", "20", "--out", str(tmp_path / "run"), "--resume"]
    assert main(["train", *COMMON, "--steps", "8", "--out", str(tmp_path / "run")]) == 0
    real_load = trainer.load_resume_state

    def interrupted_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_load(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(trainer, "load_resume_state", interrupted_load)
        assert main(flags) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "kfm train: interrupted: step 8 of 20 was finished and its resume state saved, no step is lost; "
        "rerun the same command with --resume to continue")
    assert main(flags) == 0 and "resuming from step 8 of 20" in capsys.readouterr().out


def test_kfm_train_without_class_cond_records_no_label_dropout_and_resumes_a_folder_that_did(
        tmp_path, capsys, record_label_dropout):
    # config.json said label_dropout 0.1 for a run without labels; folders written so must still resume
    import json

    assert main(["train", *COMMON, "--steps", "12", "--out", str(tmp_path / "full")]) == 0
    assert json.loads((tmp_path / "full" / "config.json").read_text())["train"]["label_dropout"] == 0.0
    assert main(["train", *COMMON, "--steps", "8", "--out", str(tmp_path / "old")]) == 0
    record_label_dropout(tmp_path / "old", 0.1)  # as the previous version wrote it
    capsys.readouterr()
    assert main(["train", *COMMON, "--steps", "12", "--out", str(tmp_path / "old"), "--resume"]) == 0
    assert "resuming from step 8 of 12" in capsys.readouterr().out
    assert _same_weights(tmp_path / "full" / "final.safetensors", tmp_path / "old" / "final.safetensors")


def test_a_folder_of_the_users_files_is_refused_as_out_before_the_data_loads(tmp_path, capsys, monkeypatch):
    # kfm train wrote config.json, checkpoints/, resume.pt and final.safetensors among a user's images, and
    # kfm memorization --train <folder> then read the folder as the training run (kfm sample refused the same)
    import kinetic_fm.data as data

    folder = tmp_path / "png dir"
    folder.mkdir()
    for i in range(5):
        (folder / f"img{i}.png").write_bytes(b"not ours")
    before = {p: p.read_bytes() for p in folder.rglob("*")}

    def unread(*args, **kwargs):
        raise AssertionError("the data loaded before --out was checked")

    with monkeypatch.context() as patched:
        patched.setattr(data, "load_dataset", unread)
        for resume in ([], ["--resume"]):
            assert main(["train", *COMMON, "--steps", "2", "--out", str(folder), *resume]) == 2
            assert capsys.readouterr().err.strip().splitlines()[-1] == (
                f"kfm train: error: --out {folder} is not empty and holds no training run (it holds img0.png, "
                "img1.png, img2.png and 2 more): training would write its files among them; choose a new or empty "
                "folder")
    assert {p: p.read_bytes() for p in folder.rglob("*")} == before
    # a user's file named like a temporary ("a.tmp-1.png"; ours are hidden, ".<name>.tmp-...") is a user's file
    named = tmp_path / "named"
    named.mkdir()
    (named / "a.tmp-1.png").write_bytes(b"not ours")
    assert main(["train", *COMMON, "--steps", "2", "--out", str(named)]) == 2
    assert "(it holds a.tmp-1.png): training would write its files among them" in capsys.readouterr().err
    assert [p.name for p in named.iterdir()] == ["a.tmp-1.png"]
    # our own leftovers alone (a lock file, a killed writer's temporary) are no one else's: a run starts there
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / ".lock").write_text("host 1 2026-01-01")
    (ours / ".config.json.tmp-4242-89abcdef").write_text("half")
    assert main(["train", *COMMON, "--steps", "2", "--out", str(ours)]) == 0
    assert (ours / "final.safetensors").is_file() and not (ours / ".config.json.tmp-4242-89abcdef").exists()


def test_trains_own_refusal_of_a_folder_of_others_files_keeps_their_names(tmp_path, capsys, monkeypatch):
    # files named like a run's records read "(it holds data, --data/--n, --model/--width/--class-cond)": the
    # refusal train() raises under its lock (a folder filled after the command's own check) went through the
    # rewording of a resume refusal's list of settings
    import importlib

    library = importlib.import_module("kinetic_fm.models.train")   # kinetic_fm.models.train is the function
    for name in ("data", "info", "model"):
        (tmp_path / name).write_text("not ours")
    monkeypatch.setattr(library, "check_train_dir", lambda out, resume: None)   # the command's check, before
    assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"kfm train: error: {tmp_path} is not empty and holds no training run (it holds data, info, model): "
        "training would write its files among them; choose a new or empty folder")


@pytest.mark.parametrize("old, new, named", [("500", "400", "--n (the run's 500, now 400)"),
                                             ("gmm", "moons", "--data (the run's gmm, now moons)")])
def test_a_changed_data_setting_is_named_once_by_its_flag_with_one_way_on(tmp_path, capsys, old, new, named):
    # --n: "(--data/--n): --data/--n: saved [500, 2], now [400, 2]; --data/--n: saved {"data": "gmm", "n": 500},
    # now {...}", one flag three times; --data: named, then the data's digest said again with another way on
    assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["train", *[(new if f == old else f) for f in COMMON], "--steps", "4", "--out", str(tmp_path),
                 "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kfm train: error: cannot resume {tmp_path / 'resume.pt'}: settings differ from the saved run: {named}; "
        "resume with the run's settings (--steps, --save-every and --checkpoints may change), or train a new run "
        "in another --out")


def test_a_resume_says_once_that_it_resumed(tmp_path, capsys):
    # "resuming from step 2 of 4 (<out>/resume.pt)" and, after the last step, "resumed from step 2 of 4"
    assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["train", *COMMON, "--steps", "4", "--out", str(tmp_path), "--resume"]) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("resum")]
    assert said == [f"resuming from step 2 of 4 ({tmp_path / 'resume.pt'})"]


def test_a_batch_larger_than_the_data_is_said_to_draw_with_replacement(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "with replacement" in " ".join(capsys.readouterr().out.split())
    flags = [f for f in COMMON if f not in ("--n", "500")]
    assert main(["train", *flags, "--n", "10", "--steps", "2", "--out", str(tmp_path / "small")]) == 0
    assert ("--batch-size 16 is larger than the 10 items: each batch draws them with replacement, so items repeat "
            "within a batch\n") in capsys.readouterr().out
    assert main(["train", *flags, "--n", "16", "--steps", "2", "--out", str(tmp_path / "even")]) == 0
    assert "with replacement" not in capsys.readouterr().out


@pytest.mark.parametrize("first, then, was, now", [([], ["--class-cond"], "off", "on"),
                                                   (["--class-cond"], [], "on", "off")])
def test_turning_class_cond_on_or_off_in_a_resume_is_named_once_with_the_runs_settings_advice(
        tmp_path, capsys, first, then, was, now):
    # it named the change twice, the second time as other data ("and the labels (no labels saved, sha256 …
    # now) differ from those the run trained on ... resume with the data it trained on"), though the data
    # were the same, and that dropped the advice to resume with the run's settings
    assert main(["train", *COMMON, "--steps", "2", *first, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["train", *COMMON, "--steps", "4", *then, "--out", str(tmp_path), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kfm train: error: cannot resume {tmp_path / 'resume.pt'}: settings differ from the saved run: --class-cond "
        f"(the run's {was}, now {now}); resume with the run's settings (--steps, --save-every and --checkpoints may "
        "change), or train a new run in another --out")


def test_a_changed_model_kind_is_named_as_model_alone(tmp_path, capsys):
    # the net's kind changes its width's meaning too (hidden, base_channels): --model names the change
    flags = ["--data", "digits", "--n", "16", "--batch-size", "4", "--width", "8", "--checkpoints", "none",
             "--no-progress", "--out", str(tmp_path)]
    assert main(["train", *flags, "--steps", "2", "--model", "mlp"]) == 0
    capsys.readouterr()
    assert main(["train", *flags, "--steps", "4", "--model", "unet", "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kfm train: error: cannot resume {tmp_path / 'resume.pt'}: settings differ from the saved run: --model "
        "(the run's mlp, now unet); resume with the run's settings (--steps, --save-every and --checkpoints may "
        "change), or train a new run in another --out")


def test_a_folder_changed_since_the_run_is_named_by_the_datas_shape(tmp_path, capsys):
    # the same --data and --n (all) over a folder that lost an image since: only the data's shape says so
    images = _grey_pngs(tmp_path / "images", 5)
    flags = ["train", "--data", f"folder:{images}", "--batch-size", "2", "--width", "8", "--model", "mlp",
             "--checkpoints", "none", "--no-progress", "--out", str(tmp_path / "run")]
    assert main([*flags, "--steps", "2"]) == 0
    (images / "4.png").unlink()
    capsys.readouterr()
    assert main([*flags, "--steps", "4", "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kfm train: error: cannot resume {tmp_path / 'run' / 'resume.pt'}: settings differ from the saved run: "
        "--data/--n (the run's data of shape [5, 1, 8, 8], now [4, 1, 8, 8]); resume with the run's settings "
        "(--steps, --save-every and --checkpoints may change), or train a new run in another --out")


def test_a_nets_other_settings_are_named_by_the_nets_flags_with_both_records():
    # no flag sets them (the data decide them): named where nothing else names the change
    from kinetic_fm.commands.train import _changed_flags

    was, now = ({"kind": "mlp", "config": {"dim": dim, "hidden": 16}} for dim in (2, 3))
    assert _changed_flags({"model": (was, now)}) == [
        ("--model/--width/--class-cond", '{"kind": "mlp", "config": {"dim": 2, "hidden": 16}}',
         '{"kind": "mlp", "config": {"dim": 3, "hidden": 16}}')]


def test_a_resume_reads_config_json_once_before_the_lock_and_once_under_it(tmp_path, capsys, monkeypatch):
    # a folder with config.json alone (a run stopped before its first save): the command's early check, its
    # record of the run (_saved_config) and train()'s check under the lock each read it (helper-315)
    from pathlib import Path

    assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path)]) == 0
    (tmp_path / "resume.pt").unlink()
    reads, read_bytes = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or read_bytes(self))
    assert main(["train", *COMMON, "--steps", "2", "--out", str(tmp_path), "--resume"]) == 0
    assert reads.count("config.json") == 2


def test_train_keeps_its_order_hidden_records_out_of_setting_flags_derived():
    # SettingFlags.derived means "named only when no direct setting differs" (its named(), kfm sample's rule);
    # train hides a derived record by its own flags and earlier derived records' alone: a table of its own, and
    # each change is named as before (another setting beside a changed shape or net: both named)
    from kinetic_fm.commands import train

    assert train.SETTINGS.derived == {}
    was, now = ({"kind": "mlp", "config": {"dim": dim, "hidden": 16}} for dim in (2, 3))
    assert [c[0] for c in train._changed_flags({"model": (was, now), "data_shape": ([5, 2], [5, 3])})] == ["--data/--n"]
    assert [c[0] for c in train._changed_flags({"train.lr": (1e-3, 2e-3), "model": (was, now)})] == [
        "--lr", "--model/--width/--class-cond"]
    assert [c[0] for c in train._changed_flags({"info": ({"data": "a"}, {"data": "b"}),
                                                "data_shape": ([5, 2], [5, 3])})] == ["--data"]
