import numpy as np
import pytest
import torch

import kinetic_fm as kfm


def test_row_depends_on_its_seed_only():
    a = kfm.noise([3, 7, 11], (2, 4))
    b = kfm.noise([11, 3], (2, 4))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])


def test_noise_matches_a_generator_per_seed_and_is_standard_normal():
    g = torch.Generator().manual_seed(5)
    expected = torch.randn((3,), generator=g, dtype=torch.float64)
    assert torch.equal(kfm.noise([5], (3,), dtype=torch.float64)[0], expected)
    z = kfm.noise(range(2000), (8,), dtype=torch.float64)
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03


def test_every_dtype_is_the_float64_draw_rounded():
    # the docstring's promise: one float64 stream per seed, cast. From 16 values on, torch's CPU
    # randn draws a float32 tensor by another path than the float64 one cast (below 16 they agree)
    exact = kfm.noise([4, 9], (4, 8), dtype=torch.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert torch.equal(kfm.noise([4, 9], (4, 8), dtype=dtype), exact.to(dtype))
    assert kfm.noise([2**32 - 1], (2,)).shape == (1, 2)                # the largest seed is allowed


@pytest.mark.parametrize("seeds, shape, message", [
    ([], (2,), "at least one"), ([1], (0,), "positive"), ([-1], (2,), "seeds"),
    ([1.7], (2,), r"seeds must be integers in \[0, 2\*\*32\) \(torch's generator keeps 32 bits"), ([True], (2,), "got True"),
    ([2**32 - 1, 2**32], (2,), r"got 4294967296$"),                   # the bound is open
    ([2**63 - 1], (2,), r"s and s \+ 2\*\*32 would draw the same numbers\), got 9223372036854775807$"),
])
def test_bad_noise_requests(seeds, shape, message):
    with pytest.raises(ValueError, match=message):
        kfm.noise(seeds, shape)


def test_seeds_and_shape_must_be_sequences():
    with pytest.raises(TypeError, match="seeds must be a sequence of integers"):
        kfm.noise("12", (2,))
    with pytest.raises(TypeError, match="shape must be a sequence of integers"):
        kfm.noise([1], 5)
    assert torch.equal(kfm.noise(np.arange(3), (2,)), kfm.noise([0, 1, 2], (2,)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(dtype=torch.int64), "dtype must be a floating torch dtype"),          # drew integer noise
    (dict(dtype="float32"), "dtype must be a floating torch dtype"),            # torch's to() message
    (dict(device="foo"), "device must be a torch device such as 'cpu'"),
])
def test_dtype_and_device_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kfm.noise([0], (2,), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_noise_without_a_gpu_is_named():
    # torch's AssertionError "Torch not compiled with CUDA enabled" before
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        kfm.noise([0], (2,), device="cuda")
