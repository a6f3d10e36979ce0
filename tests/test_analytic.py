"""The analytic fields' parameters as documented (mutation audit of fields/analytic.py)."""
from __future__ import annotations

import torch

import kinetic_fm as kfm


def test_mixture_weights_are_normalised_and_keep_their_ratios():
    # the velocity (softmax) and sample_target (multinomial) both normalise again, so only the
    # documented attribute could tell an unnormalised copy
    means = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    field = kfm.GaussianMixtureTarget(means, std=0.3, weights=torch.tensor([1.0, 3.0, 4.0]))
    torch.testing.assert_close(field.weights, torch.tensor([0.125, 0.375, 0.5], dtype=torch.float64),
                               rtol=0, atol=1e-15)
