import math

import pytest
import torch

from kinetic_fm import time_grid
from kinetic_fm.sampling.grids import as_typed


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


def test_steps_is_checked_with_a_user_grid_too_as_kfm_sample_checks_it():
    # time_grid(tensor, steps=-5) returned the grid while kfm.sample(steps=0, grid=tensor) refused
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    for steps in (0, -5, 2.5):
        with pytest.raises(ValueError, match="steps must be"):
            time_grid(grid, steps=steps)
    assert torch.equal(time_grid(grid, steps=1), grid)           # and ignored once it is valid


def test_a_user_grid_takes_the_requested_dtype_and_a_named_grid_must_survive_rounding_to_it():
    g = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    as32 = time_grid(g, dtype=torch.float32)
    assert as32.dtype == torch.float32 and as32.tolist() == [0.0, 0.25, 1.0]
    # 1/5000 steps round to repeated float16 values near 1 (spacing 2⁻¹¹ there)
    assert time_grid("uniform", 1000, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match=r"grid of 5000 steps is not strictly increasing in torch.float16"):
        time_grid("uniform", 5000, dtype=torch.float16)


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
        (torch.tensor([0.0, float("nan"), 1.0]), "must be finite"),
        (torch.tensor([-0.25, 0.5, 1.0]), "start at 0"),               # before 0, not only after it
        (torch.tensor([0.0, 0.5, 1.25]), "end at 1"),                  # past 1, not only short of it
        (torch.tensor([0.0, 0.5, 1 - 1e-12], dtype=torch.float64), "end at 1"),  # 1 only in float32
        # the message names the first pair that does not increase, by index and value
        (torch.tensor([0.0, 0.5, 0.5, 1.0]), r"grid\[2\] = 0.5 <= grid\[1\] = 0.5$"),
        (torch.tensor([0.0, 0.75, 0.5, 0.25, 1.0]), r"grid\[2\] = 0.5 <= grid\[1\] = 0.75$"),
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_grid_error_quotes_the_times_as_typed_not_widened_to_float64(dtype):
    # a float32 0.7 read back through float64 printed "grid[1] = 0.699999988079071"
    with pytest.raises(ValueError, match=r"^grid must be strictly increasing, but grid\[2\] = 0\.5 <= "
                                         r"grid\[1\] = 0\.7$"):
        time_grid(torch.tensor([0.0, 0.7, 0.5, 1.0], dtype=dtype))
    with pytest.raises(ValueError, match=r"got grid\[0\] = 0\.1$"):
        time_grid(torch.tensor([0.1, 0.7, 1.0], dtype=dtype))
    with pytest.raises(ValueError, match=r"got grid\[-1\] = 0\.9$"):
        time_grid(torch.tensor([0.0, 0.7, 0.9], dtype=dtype))


def test_a_grid_error_gives_enough_digits_to_tell_two_close_times_apart():
    # the shortest decimal that reads back as the same float32: 0.70000005 is not 0.7
    above = torch.nextafter(torch.tensor(0.7), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"grid\[2\] = 0\.7 <= grid\[1\] = 0\.70000005$"):
        time_grid(torch.stack([torch.tensor(0.0), above, torch.tensor(0.7), torch.tensor(1.0)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_grid_error_quotes_whole_and_tiny_times_as_python_prints_them(dtype):
    # the shortest digits read through "%g" printed 100.0 as "1e+02" and 5.0 as "5"
    with pytest.raises(ValueError, match=r"got grid\[-1\] = 100\.0$"):
        time_grid(torch.tensor([0.0, 0.5, 100.0], dtype=dtype))
    with pytest.raises(ValueError, match=r"got grid\[-1\] = 5\.0$"):
        time_grid(torch.tensor([0.0, 0.5, 5.0], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("value", [0.7, 0.70000005, 1e-07, 100.0, 5.0, 10.0, 1.0 / 3.0])
def test_as_typed_is_the_repr_of_the_shortest_float_the_dtype_reads_back(dtype, value):
    typed = torch.tensor(value, dtype=dtype).item()
    shown = as_typed(typed, dtype)
    assert torch.tensor(float(shown), dtype=dtype).item() == typed  # reads back as the same typed float
    assert shown == repr(float(shown))  # written as Python writes a float: 100.0, not 1e+02
    if dtype == torch.float64:
        assert shown == repr(typed)
    # no shorter decimal reads back as the same typed float
    digits = len(shown.split("e")[0].replace("-", "").replace(".", "").strip("0"))
    if digits > 1:
        shorter = f"{typed:.{digits - 1}g}"
        assert torch.tensor(float(shorter), dtype=dtype).item() != typed
