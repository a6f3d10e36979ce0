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


@pytest.mark.parametrize("command", ["memorization", "sample", "train", "reproduce"])
def test_unknown_device_is_a_clear_error(tmp_path, capsys, command):
    assert main(_commands(tmp_path, "gpu")[command]) == 2
    assert "--device must be cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    assert not any(tmp_path.glob("rep*")) and not any(tmp_path.glob("train*"))   # nothing started


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["memorization", "sample", "train", "reproduce"])
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys, command):
    assert main(_commands(tmp_path, "cuda")[command]) == 2
    assert "--device cuda was requested but torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("flag, spec, message", [
    ("--classifier", "resnet57:/w.th", "--classifier must be 'resnet20:PATH' or 'resnet56:PATH', got 'resnet57:/w.th'"),
    ("--classifier", "resnet56:/no/such/w.th", "--classifier: no such file: /no/such/w.th"),
    ("--data", "nope", "unknown data spec 'nope'"),
    ("--data", "mnist", "data spec 'mnist' needs a path"),
    ("--data", "digits:/x", "data spec 'digits:/x': digits takes no path"),
    ("--data", "moons", "kfm reproduce needs an image data set"),
])
def test_reproduce_checks_its_specs_first(tmp_path, capsys, flag, spec, message):
    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "rep"), flag, spec]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
