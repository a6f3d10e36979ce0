"""PrincipalSpace: the top principal directions of a reference set, against a float64 brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kinetic_fm.metrics.features import PrincipalSpace, feature_space
from kinetic_fm.metrics.fidelity import frechet_distance, precision_recall
from kinetic_fm.metrics.memorization import memorization


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, 6, 6) float32 with a spread of variances (distinct eigenvalues) and an offset."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(36, 36, generator=g, dtype=torch.float64)
    scales = torch.logspace(0.5, -1.3, 36, dtype=torch.float64)  # 3.2 down to 0.05
    z = torch.randn(n, 36, generator=g, dtype=torch.float64) * scales
    return (z @ torch.linalg.qr(mixing).Q.T + 0.7).float().reshape(n, 1, 6, 6)


def _brute_force(x: torch.Tensor, k: int):
    """Mean, top-k right singular vectors (D, k) and variances of the centred data, numpy float64."""
    flat = x.reshape(len(x), -1).double().numpy()
    mean = flat.mean(0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    return mean, vt[:k].T, s[:k] ** 2 / (len(flat) - 1)


@pytest.mark.parametrize("n", [200, 20])  # 20 < D = 36: fitted from the SVD of the rows, not the covariance
def test_projection_matches_a_float64_svd_up_to_sign(n):
    x, k = _images(n), 7
    space = PrincipalSpace.fit(x, k)
    mean, v, variance = _brute_force(x, k)
    assert space.name == "pixels-PCA7" and space.k == k and space.components.dtype == torch.float64
    np.testing.assert_allclose(space.mean.numpy(), mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(space.variance.numpy(), variance, rtol=1e-10)
    signs = np.sign((space.components.numpy() * v).sum(0))
    np.testing.assert_allclose(space.components.numpy(), v * signs, rtol=0, atol=1e-10)
    cov_values, cov_vectors = np.linalg.eigh(np.cov(x.reshape(n, -1).double().numpy(), rowvar=False))
    np.testing.assert_allclose(np.abs(space.components.numpy()), np.abs(cov_vectors[:, ::-1][:, :k]), atol=1e-9)
    np.testing.assert_allclose(space.variance.numpy(), cov_values[::-1][:k], rtol=1e-9)
    queries = _images(30, seed=1)
    expected = (queries.reshape(30, -1).double().numpy() - mean) @ (v * signs)
    np.testing.assert_allclose(space(queries).numpy(), expected, rtol=0, atol=1e-10)
    # the share of the variance kept, against the singular values
    flat = x.reshape(len(x), -1).double().numpy()
    total = ((flat - mean) ** 2).sum() / (len(flat) - 1)
    assert space.share == pytest.approx(variance.sum() / total, rel=1e-10)


@pytest.mark.parametrize("n", [120, 24])
def test_a_refit_gives_identical_features_and_each_direction_a_fixed_sign(n):
    x = _images(n)
    first, again = PrincipalSpace.fit(x, 5), PrincipalSpace.fit(x.clone(), 5)
    assert torch.equal(first.components, again.components) and torch.equal(first(x), again(x))
    c = first.components
    assert (c[c.abs().argmax(0), torch.arange(5)] > 0).all()
    # rows in another order: the same directions with the same signs, not a sign-flipped copy
    shuffled = PrincipalSpace.fit(x[torch.randperm(len(x))], 5)
    np.testing.assert_allclose(shuffled.components.numpy(), c.numpy(), rtol=0, atol=1e-10)


def test_frechet_distance_in_the_space():
    x, y = _images(300), _images(300, seed=2) * 1.3
    space = PrincipalSpace.fit(x, 10)
    assert frechet_distance(x, x, space=space).value == pytest.approx(0.0, abs=1e-9)
    fd = frechet_distance(x, y, space=space)
    assert fd.name == "FD-pixels-PCA10" and fd.dim == 10
    assert fd.value == pytest.approx(frechet_distance(space(x), space(y)).value, rel=1e-12)
    # all D directions: a rotation of the centred pixels, which leaves the distance as it was
    full = PrincipalSpace.fit(x, 36)
    assert frechet_distance(x, y, space=full).value == pytest.approx(frechet_distance(x, y).value, rel=1e-8)


def test_the_space_serves_precision_recall_and_memorization():
    x, y = _images(80), _images(60, seed=3)
    space = PrincipalSpace.fit(x, 4)
    assert feature_space(space).name == "pixels-PCA4"
    pr = precision_recall(x, y, space=space)
    brute = precision_recall(space(x), space(y))
    assert pr.protocol.network == "pixels-PCA4" and (pr.precision, pr.recall) == (brute.precision, brute.recall)
    audit = memorization(y, x, space=space, bootstrap=0)
    assert torch.equal(audit.nearest, memorization(space(y), space(x), bootstrap=0).nearest)


def test_refusals_name_the_limits():
    x = _images(10)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 9\]"):
        PrincipalSpace.fit(x, 10)
    with pytest.raises(ValueError, match="at least 2 samples"):
        PrincipalSpace.fit(x[:1], 1)
    with pytest.raises(ValueError, match="projects rows of 36 values, got 16"):
        PrincipalSpace.fit(x, 3)(torch.zeros(2, 16))


def test_the_residual_coordinate_is_the_length_of_what_the_directions_leave_out():
    x, k = _images(200), 6
    space = PrincipalSpace.fit(x, k, residual=True)
    assert space.name == "pixels-PCA6+residual" and (space.k, space.dim) == (6, 7)
    mean, v, _ = _brute_force(x, k)
    queries = _images(40, seed=4).reshape(40, -1).double().numpy() - mean
    feats = space(torch.from_numpy(queries + mean)).numpy()
    assert feats.shape == (40, 7)
    rest = queries - (queries @ v) @ v.T
    np.testing.assert_allclose(feats[:, 6], np.linalg.norm(rest, axis=1), rtol=1e-10)
    # Pythagoras: the k coordinates and the rest hold the whole centred row
    np.testing.assert_allclose((feats ** 2).sum(1), (queries ** 2).sum(1), rtol=1e-10)
    # a point on the mean has nothing left outside
    assert space(torch.from_numpy(mean[None])).numpy()[0, 6] < 1e-12
    assert torch.equal(space(x)[:, :6], PrincipalSpace.fit(x, k)(x))


def test_noise_outside_the_kept_directions_moves_the_distance_only_with_the_residual():
    # isotropic noise puts 30 of its 36 dimensions outside 6 kept directions: the projection
    # barely sees it, its lengthening of every row's rest is plain
    x, y = _images(800).split(400)                                  # two draws of one distribution
    noisy = y + 0.3 * torch.randn(y.shape, generator=torch.Generator().manual_seed(6))
    plain, with_rest = PrincipalSpace.fit(x, 6), PrincipalSpace.fit(x, 6, residual=True)
    floor = [frechet_distance(x, y, space=s).value for s in (plain, with_rest)]
    worse = [frechet_distance(x, noisy, space=s).value for s in (plain, with_rest)]
    assert 0 < worse[0] - floor[0] < 0.05 * floor[0]                   # lost in the sampling floor
    assert worse[1] - floor[1] > 10 * (worse[0] - floor[0])            # about 35 times as large


def test_errors_name_the_reference_and_an_empty_batch_maps_to_no_rows():
    # a NaN pixel in the reference was reported as "feats has non-finite features", the name of an
    # internal argument; an empty batch failed in reshape ("the unspecified dimension size -1")
    x = _images(20)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"reference has non-finite features in rows \[3\]"):
        PrincipalSpace.fit(bad, 4)
    space = PrincipalSpace.fit(x, 4, residual=True)
    assert space(x[:0]).shape == (0, 5) and space(x[:0]).dtype == torch.float64
    with pytest.raises(ValueError, match="projects rows of 36 values, got 35"):
        space(torch.zeros(0, 35))


# --- gaps found by the mutation audit (briefs18 G) --------------------------------------------

def test_directions_beyond_the_references_rank_have_variance_zero_not_round_off_below_it():
    # rows in a 2-D plane of R^6: the 3rd to 5th eigenvalues are round-off, most of them
    # negative (-1e-16); a variance is never negative
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(60, 2)) @ rng.normal(size=(2, 6)) + 3.0
        space = PrincipalSpace.fit(x, k=5)
        assert (space.variance >= 0).all() and float(space.variance[2:].max()) < 1e-12
        np.testing.assert_allclose(space.variance[:2].numpy(), np.linalg.eigvalsh(np.cov(x.T))[::-1][:2], rtol=1e-10)


@pytest.mark.parametrize("shape", [(10, 3), (3, 10)])
def test_a_reference_without_variance_keeps_all_of_it(shape):
    # share is kept / total; with a total of 0 nothing is lost: 1, on both fitting paths
    assert PrincipalSpace.fit(np.ones(shape), k=2).share == 1.0
