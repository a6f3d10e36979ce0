"""The README's Python examples run as printed (a user copies them first).

Blocks that read the user's own files (data folders, trained runs) are run too: they must get as
far as opening the first such file and fail there with FileNotFoundError, nothing earlier.
"""
import ast
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_USER_FILES = ("load_mnist(", "load_model(")


def _blocks() -> dict[str, str]:
    """Python blocks by "<section heading> #<n>" (n counts the blocks within the section)."""
    blocks, heading, count = {}, "top", 0
    for part in re.split(r"(^## [^\n]*$|```python\n.*?```)", README.read_text(), flags=re.S | re.M):
        if part.startswith("## "):
            heading, count = part[3:].strip(), 0
        elif part.startswith("```python"):
            count += 1
            blocks[f"{heading} #{count}"] = part[len("```python\n"):-3]
    return blocks


BLOCKS = _blocks()


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("name", list(BLOCKS))
def test_readme_example_runs(name, tmp_path, monkeypatch, capsys):
    block = BLOCKS[name]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    if any(marker in block for marker in NEEDS_USER_FILES):
        with pytest.raises(FileNotFoundError):
            exec(compile(block, str(README), "exec"), namespace)
    else:
        exec(compile(block, str(README), "exec"), namespace)


def _block_with(marker: str) -> str:
    (block,) = [block for block in BLOCKS.values() if marker in block]
    return block


def _run(block: str) -> dict:
    namespace = {"__name__": "__readme__"}
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_the_adapters_example_prints_half_the_noises_squared_norm(tmp_path, monkeypatch):
    # the block's own comment: "here ½‖x0‖² (straight lines to 0)"
    import kinetic_fm as kfm

    block = _block_with("kfm.DataPrediction(kfm.DiscreteTime(")
    assert "½‖x0‖²" in block
    monkeypatch.chdir(tmp_path)
    res = _run(block)["res"]
    x0 = kfm.noise(range(4), (2,)).double()
    # float32 state; the data-prediction clamp gap_min stops it 1e-3 short of t = 1 on its last step
    assert torch.allclose(res.kpe, 0.5 * x0.pow(2).sum(1), rtol=1e-5)


@pytest.mark.parametrize("marker", ["kfm.KineticODESolver(Net(None))", "kfm.local_support(res.x, train"])
def test_the_examples_that_draw_their_own_data_print_the_same_numbers_every_run(marker, tmp_path, monkeypatch,
                                                                                capsys):
    # a reader compares their output with a neighbour's or a rerun's: the blocks' own randn must be seeded
    if "KineticODESolver" in marker:
        pytest.importorskip("flow_matching")
    block = _block_with(marker)
    monkeypatch.chdir(tmp_path)
    printed = []
    for global_seed in (1, 2):  # what ran before the block left the global generator anywhere
        torch.manual_seed(global_seed)
        _run(block)
        printed.append(capsys.readouterr().out)
    assert printed[0] and printed[0] == printed[1]


def test_the_efm_example_prints_what_its_comments_say(tmp_path, monkeypatch, capsys):
    block = _block_with("kfm.EmpiricalFlow(train)")
    stated = re.search(r"print\(rep\)\s+# (.*?) \.\.\.", block).group(1)
    low = re.search(r"print\(exact\.ci\)\s+# \((\d\.\d+)\.\.\., 1\.0\)", block).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = _run(block)
    assert stated in capsys.readouterr().out
    assert namespace["rep"].ci == (1.0, 1.0)              # "rep.ci keeps the bootstrap's (1.0, 1.0)"
    assert str(namespace["exact"].ci[0]).startswith(low) and namespace["exact"].ci[1] == 1.0


def test_the_load_model_example_samples_a_kfm_train_run(tmp_path, monkeypatch):
    # the generic run above only checks that it reaches the missing folder
    from kinetic_fm.cli import main

    block = _block_with("load_model(")
    folder = re.search(r'load_model\("([^"]+)"\)', block).group(1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "moons", "--steps", "2", "--width", "16", "--out", folder, "--no-progress"]) == 0
    res = _run(block)["res"]
    assert res.x.shape == (1000, 2) and torch.isfinite(res.kpe).all()


# the README's loader example names files as a user has them; where they lie in shared/data
_LOADER_FILES = {"data/mnist": "mnist", "cifar10_jpeg_q75.zip": "cifar10/cifar10_jpeg_q75.zip",
                 "cifar10_batch_0.png": "cifar10/convnetjs_lossless/cifar10_batch_0.png",
                 "cifar10_labels_51000.txt": "cifar10/convnetjs_lossless/cifar10_labels_51000.txt",
                 "celeba.zip": "celeba/celeba_align_subset6000.zip"}


def test_the_loader_example_loads_the_real_files(tmp_path, monkeypatch, shared_data):
    # every loader's call as printed, not only the first (the generic run stops at load_mnist)
    block = _block_with("load_cifar10_sprite(")
    for name, source in _LOADER_FILES.items():
        assert f'"{name}"' in block, f"the README's loader example no longer reads {name}: update this test"
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(shared_data / source)
    monkeypatch.chdir(tmp_path)
    namespace = _run(block)
    stated = re.search(r"load_digits\(\)\s+# (\([\d, ]+\))", block).group(1)
    assert tuple(namespace["digits"].images.shape) == ast.literal_eval(stated)
    assert tuple(namespace["mnist"].images.shape) == (60_000, 1, 28, 28)
    assert tuple(namespace["cifar"].images.shape) == (5000, 3, 32, 32)
    assert tuple(namespace["sprite"].images.shape) == (1000, 3, 32, 32)     # "1,000 lossless images"
    assert tuple(namespace["faces"].images.shape) == (1024, 1, 32, 32)      # "resize 32, grayscale"
    assert tuple(namespace["pts"].shape) == (10_000, 2)
