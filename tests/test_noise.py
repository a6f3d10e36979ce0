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


@pytest.mark.parametrize("seeds, shape, message", [([], (2,), "at least one"), ([1], (0,), "positive"), ([-1], (2,), "seeds")])
def test_bad_noise_requests(seeds, shape, message):
    with pytest.raises(ValueError, match=message):
        kfm.noise(seeds, shape)
