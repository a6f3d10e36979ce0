import math

import pytest
import torch

from kinetic_fm import time_grid


def test_uniform_and_cosine_grids_follow_their_formulas():
    n = 10
    u = time_grid("uniform", n)
    assert torch.equal(u, torch.arange(n + 1, dtype=torch.float64) / n)
    c = time_grid("cosine", n)
    i = torch.arange(n + 1, dtype=torch.float64)
    assert torch.allclose(c, 0.5 * (1 - torch.cos(math.pi * i / n)), atol=1e-15)
    assert c[0] == 0.0 and c[-1] == 1.0
    assert (c[1:] > c[:-1]).all()


def test_user_grid_is_returned_unchanged():
    g = torch.tensor([0.0, 0.1, 0.5, 1.0])
    assert torch.equal(time_grid(g).float(), g)


def test_numpy_grids_read_alike_when_read_only_or_big_endian():
    import warnings

    import numpy as np

    native = np.array([0.0, 0.1, 0.5, 1.0])
    read_only = native.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of a non-writable array
        for g in (read_only, native.astype(">f8")):
            assert torch.equal(time_grid(g), torch.from_numpy(native))


@pytest.mark.parametrize(
    "grid, message",
    [
        (torch.zeros(2, 2), "1-D"),
        (torch.tensor([0.1, 0.5, 1.0]), "start at 0"),
        (torch.tensor([0.0, 0.5, 0.9]), "end at 1"),
        (torch.tensor([0.0, 0.5, 0.5, 1.0]), "strictly increasing"),
        (torch.tensor([0.0, 0.7, 0.5, 1.0]), "strictly increasing"),
        (torch.tensor([0.0]), "at least 2"),
        (torch.tensor([0, 1]), "floating-point"),
    ],
)
def test_bad_user_grids_name_the_broken_rule(grid, message):
    with pytest.raises(ValueError, match=message):
        time_grid(grid)


@pytest.mark.parametrize("bad", ["linear", 3])
def test_unknown_grid_name_is_rejected(bad):
    with pytest.raises(ValueError, match="grid must be one of"):
        time_grid(bad, 10)


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps"):
        time_grid("uniform", 0)
