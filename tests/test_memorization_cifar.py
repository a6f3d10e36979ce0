"""EFM and the memorization audit at the scale issue 3 names: the whole CIFAR-10 training set
(N = 50,000, D = 3,072), on real images (slow; needs ../shared/data)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.cli import main
from kinetic_fm.data.cifar10 import load_cifar10

pytestmark = pytest.mark.slow

COPIES, FRESH = 300, 300


@pytest.fixture(scope="module")
def archive(shared_data):
    path = shared_data / "cifar10" / "cifar10_jpeg_q75.zip"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def train(archive):
    return load_cifar10(archive, "train").images                     # (50000, 3, 32, 32) in [-1, 1]


def test_efm_sampling_on_all_50000_cifar10_images_lands_on_training_images(train):
    """Exact EFM over the whole training set: every sample ends on one training image (to float32
    resolution), the posterior has committed to it, and its energy is at least the straight line's."""
    n = 16
    field = kfm.EmpiricalFlow(train)
    recorder = kfm.PosteriorRecorder(field)
    res = kfm.sample(recorder, seeds=range(n), shape=(3, 32, 32), steps=100, solver="euler")
    report = kfm.memorization(res.x, train, bootstrap=0)
    assert report.fraction == 1.0
    atoms = train.reshape(train.shape[0], -1)[report.nearest].double()
    landed = res.x.reshape(n, -1).double()
    assert (landed - atoms).abs().max() < 1e-6                       # measured 6e-8
    trace = recorder.trace()
    assert bool(trace.exact[-10:].all()) and float(trace.max_weight[-1].min()) > 0.999
    posterior = field.posterior(res.x, torch.full((n,), 0.999), k=1)
    assert torch.equal(posterior.indices[:, 0], report.nearest)
    # Euler's path is piecewise linear, and its KPE (solver quadrature) is that path's exact energy,
    # never below the straight line ½‖x1 − x0‖² (measured 1.02–1.03x)
    x0 = kfm.noise(range(n), (3, 32, 32)).reshape(n, -1).double()
    straight = 0.5 * (landed - x0).pow(2).sum(dim=1)
    assert bool((res.kpe >= straight * (1 - 1e-9)).all()) and bool((res.kpe < 1.2 * straight).all())


def test_cli_audit_against_all_50000_cifar10_training_images(archive, train, tmp_path, capsys):
    fresh = load_cifar10(archive, "test", n=FRESH, seed=1).images
    g = torch.Generator().manual_seed(0)
    picks = torch.randperm(train.shape[0], generator=g)[:COPIES]
    copies = train[picks] + 0.02 * torch.randn(COPIES, 3, 32, 32, generator=g)   # ≈ 2.5/255 noise
    samples = torch.cat([copies, fresh])
    np.savez(tmp_path / "samples.npz", samples=samples.numpy())
    torch.save(train, tmp_path / "train.pt")
    out = tmp_path / "table.parquet"

    assert main(["memorization", "--samples", str(tmp_path / "samples.npz"), "--train",
                 str(tmp_path / "train.pt"), "--bootstrap", "200", "--out", str(out)]) == 0
    assert "F_mem" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert len(table) == COPIES + FRESH

    # every noisy copy is found and flagged; held-out test images mostly are not (CIFAR-10's
    # test set has a few percent of near-duplicates of training images, so not none)
    np.testing.assert_array_equal(table["nearest"].to_numpy()[:COPIES], picks.numpy())
    assert table["memorized"].to_numpy()[:COPIES].all()
    assert table["memorized"].to_numpy()[COPIES:].mean() < 0.1

    # d1, d2 against a float64 brute force on a few samples, copies and fresh alike
    flat = train.reshape(train.shape[0], -1).double()
    for i in (0, 1, COPIES, COPIES + 1):
        d = torch.linalg.vector_norm(flat - samples[i].reshape(-1).double(), dim=1)
        d1, d2 = torch.topk(d, 2, largest=False).values.tolist()
        np.testing.assert_allclose(table.loc[i, ["d1", "d2"]].to_numpy(float), [d1, d2], rtol=1e-10)
