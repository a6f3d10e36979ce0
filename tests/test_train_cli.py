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
    assert "resumed from step 12 of 20" in capsys.readouterr().out
    assert _same_weights(tmp_path / "full" / "final.safetensors", tmp_path / "cut" / "final.safetensors")


def test_kfm_train_images_and_class_conditioning(tmp_path):
    args = ["train", "--data", "digits", "--n", "16", "--steps", "2", "--batch-size", "4", "--width", "8",
            "--checkpoints", "none", "--class-cond", "--no-progress", "--model", "unet", "--out", str(tmp_path)]
    assert main(args) == 0
    model = load_model(tmp_path)
    assert model.kind == "unet" and model.null_class == 10


def test_kfm_train_user_errors_exit_2(tmp_path, capsys):
    assert main(["train", "--data", "nope", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "unknown data spec" in capsys.readouterr().err
    assert main(["train", "--data", "mnist:" + str(tmp_path / "missing"), "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["train", "--data", "gmm", "--checkpoints", "1,x", "--out", str(tmp_path)]) == 2
    assert "--checkpoints must be log2, none or comma-separated steps" in capsys.readouterr().err
    assert main(["train", "--data", "gmm", "--width", "0", "--out", str(tmp_path)]) == 2
    assert "--width must be >= 1" in capsys.readouterr().err
    assert main(["train", "--data", "gmm", "--grad-clip=-1", "--out", str(tmp_path)]) == 2
    assert "grad_clip must be None or a finite number > 0, got -1" in capsys.readouterr().err


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


def test_kfm_train_no_progress_hides_the_decoding_bar_too(tmp_path, capfd):
    """--no-progress promises no bar; an image folder's decoding bar went to stderr anyway."""
    import numpy as np
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(images / f"{i}.png")
    args = ["train", "--data", f"folder:{images}", "--steps", "1", "--batch-size", "2", "--width", "8",
            "--model", "mlp", "--checkpoints", "none", "--out", str(tmp_path / "run")]
    assert main([*args, "--no-progress"]) == 0
    assert "decode" not in capfd.readouterr().err
    assert main([*args[:-1], str(tmp_path / "shown")]) == 0      # without it, the bar is there
    assert "decode" in capfd.readouterr().err
