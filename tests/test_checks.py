"""The shared argument predicates: what counts as a number, a scalar and a flag."""
import numpy as np
import pytest
import torch

from kinetic_fm.checks import as_scalar, check_flag, is_integer, is_real, positive_integer


@pytest.mark.parametrize("value,integer,real", [
    (3, True, True), (np.int64(3), True, True), (2.0, False, True), (np.float32(0.5), False, True),
    (True, False, False), (np.True_, False, False), ("3", False, False), (None, False, False),
])
def test_numbers_count_and_bools_do_not(value, integer, real):
    assert is_integer(value) is integer and is_real(value) is real


def test_zero_dimensional_tensors_and_arrays_unwrap_to_their_number():
    assert as_scalar(torch.tensor(0.25)) == 0.25 and is_real(as_scalar(torch.tensor(0.25)))
    assert as_scalar(np.array(7)) == 7 and is_integer(as_scalar(np.array(7)))
    assert not is_real(as_scalar(torch.tensor(True)))                  # a bool tensor stays a bool
    vector = torch.tensor([1.0])
    assert as_scalar(vector) is vector                                  # only 0-d values unwrap


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_flags_accept_python_and_numpy_bools(value):
    assert check_flag("profile", value) is bool(value)


@pytest.mark.parametrize("value", ["no", 1, 0, None, torch.tensor(True)])
def test_anything_else_is_not_a_flag(value):
    with pytest.raises(ValueError, match=r"profile must be True or False, got "):
        check_flag("profile", value)


def test_positive_integers_come_back_as_ints_and_the_rest_is_named():
    assert positive_integer("chunk", np.int64(7)) == 7 and type(positive_integer("chunk", np.int64(7))) is int
    for bad in (0, -3, 2.5, True, "4", None):
        with pytest.raises(ValueError, match=r"chunk must be a positive integer, got "):
            positive_integer("chunk", bad)
