import math
import re

import pytest
import torch

from kinetic_fm.data import GaussianMixture, checkerboard, gaussian_mixture, subset, two_moons


def test_mixture_sampling_matches_weights_means_and_stds():
    gmm = GaussianMixture(torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]), torch.tensor([0.5, 0.3, 0.2]), 0.5)
    ds = gmm.sample(40_000, seed=1)
    assert ds.points.shape == (40_000, 2) and ds.points.dtype == torch.float32
    freq = torch.bincount(ds.labels, minlength=3).double() / 40_000
    assert torch.allclose(freq, gmm.weights, atol=0.01)
    for k in range(3):
        pts = ds.points[ds.labels == k].double()
        assert torch.allclose(pts.mean(0), gmm.means[k], atol=0.03)
        assert abs(pts.std(0).mean().item() - 0.5) < 0.02
    # well-separated modes: the most probable component is the true one
    assert (gmm.assign(ds.points) == ds.labels).double().mean() > 0.999


def test_mixture_log_prob_matches_single_gaussian_formula():
    gmm = GaussianMixture(torch.tensor([[1.0, -2.0]]), torch.tensor([1.0]), 0.7)
    x = torch.randn(5, 2, dtype=torch.float64)
    ref = -((x - gmm.means[0]) ** 2).sum(1) / (2 * 0.49) - 2 * math.log(0.7) - math.log(2 * math.pi)
    assert torch.allclose(gmm.log_prob(x), ref, atol=1e-12)


def test_ring_keeps_its_std_in_float64():
    # torch.tensor(0.4) went through float32: σ = 0.40000000596 and log p off by 3e-6
    gmm = GaussianMixture.ring(k=3, std=0.4)
    assert gmm.stds.tolist() == [0.4, 0.4, 0.4]
    x = torch.tensor([[4.0, 0.3]], dtype=torch.float64)
    d2 = ((x - gmm.means) ** 2).sum(1)
    ref = torch.logsumexp(-0.5 * d2 / 0.16 - 2 * math.log(0.4) - math.log(2 * math.pi) - math.log(3), 0)
    assert gmm.log_prob(x).item() == pytest.approx(ref.item(), abs=1e-13)


def test_samplers_are_deterministic_by_seed():
    for fn in (gaussian_mixture, two_moons, checkerboard):
        a, b, c = fn(100, seed=3), fn(100, seed=3), fn(100, seed=4)
        assert torch.equal(a.points, b.points)
        assert not torch.equal(a.points, c.points)


def test_two_moons_lie_on_unit_half_circles():
    ds = two_moons(2000, seed=0, noise=0.0)
    x = ds.points.double()
    centre = torch.where(ds.labels[:, None] == 1, torch.tensor([1.0, 0.5], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose((x - centre).norm(dim=1), torch.ones(2000, dtype=torch.float64), atol=1e-6)
    assert (x[ds.labels == 0, 1] >= -1e-6).all() and (x[ds.labels == 1, 1] <= 0.5 + 1e-6).all()


def test_checkerboard_only_dark_cells_and_uniform():
    ds = checkerboard(20_000, seed=0, squares=4, side=4.0)
    col = torch.floor((ds.points[:, 0] + 4) / 2).long()
    row = torch.floor((ds.points[:, 1] + 4) / 2).long()
    assert ((row + col) % 2 == 0).all()
    dark = torch.tensor([0, 2, 5, 7, 8, 10, 13, 15])              # row-major dark cells: labels 0..7
    assert torch.equal(dark[ds.labels], row * 4 + col)
    assert ds.classes[3] == "cell (1, 3)" and len(ds.classes) == 8
    freq = torch.bincount(ds.labels, minlength=8).double() / 20_000
    assert torch.allclose(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.015)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, -1.0]), 1.0)
    with pytest.raises(ValueError, match="noise"):
        two_moons(10, noise=-1)
    with pytest.raises(ValueError, match="noise must be a finite number"):
        two_moons(10, noise=float("nan"))
    with pytest.raises(ValueError, match="side must be a finite number > 0"):
        checkerboard(10, side=-1.0)


def test_subset_of_points_keeps_labels_aligned():
    ds = gaussian_mixture(50, seed=0)
    sub = subset(ds, n=10, seed=2)
    assert torch.equal(sub.points, ds.points[sub.indices])
    assert torch.equal(sub.labels, ds.labels[sub.indices])


def test_ring_means_are_evenly_spaced_on_the_circle():
    gmm = GaussianMixture.ring(k=4, radius=2.0)
    expected = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    assert torch.allclose(gmm.means, expected, atol=1e-12)


def test_assign_is_the_argmax_of_weighted_component_densities():
    gmm = GaussianMixture(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]), torch.tensor([0.7, 0.1, 0.2]),
                          torch.tensor([0.3, 1.5, 0.8]))
    x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    # float64 brute force: log w_k + log N(x; mu_k, s_k² I) in 2-D
    d2 = ((x[:, None, :] - gmm.means[None]) ** 2).sum(-1)
    log_density = gmm.weights.log() - d2 / (2 * gmm.stds ** 2) - 2 * gmm.stds.log() - math.log(2 * math.pi)
    assert torch.equal(gmm.assign(x), log_density.argmax(1))
    assert torch.allclose(gmm.log_prob(x), torch.logsumexp(log_density, 1), atol=1e-12)


def test_two_moons_noise_is_gaussian_with_the_given_std():
    # with noise 10 the moons (variance < 1) barely matter: the per-coordinate std is ≈ 10 and
    # the mean ≈ the moons' centre (0.5, 0.25); uniform noise would give std 2.9 and mean + 5
    x = two_moons(20_000, seed=0, noise=10.0).points.double()
    assert torch.allclose(x.std(0), torch.full((2,), 10.0, dtype=torch.float64), atol=0.3)
    assert torch.allclose(x.mean(0), torch.tensor([0.5, 0.25], dtype=torch.float64), atol=0.3)


def test_a_subset_keeps_the_distributions_classes():
    # kfm train --class-cond --data gmm --n 6 --seed 1 holds labels {0, 1, 4} of 8 components: the
    # net got 5 classes (the subset's largest label + 1), and --label 5..7 were refused
    from kinetic_fm.data.registry import load_dataset

    for spec, count in (("gmm", 8), ("moons", 2), ("checkerboard", 8)):
        full = load_dataset(spec)
        part = load_dataset(spec, n=6, seed=1)
        assert len(full.classes) == len(part.classes) == count
        assert int(full.labels.max()) < count


@pytest.mark.parametrize("make, match", [
    (lambda: gaussian_mixture(10, std=math.nan), "^std must be one or 8 finite numbers > 0"),
    (lambda: gaussian_mixture(10, std=math.inf), "^std must be one or 8 finite numbers > 0"),
    (lambda: gaussian_mixture(10, k=3, std=[0.1, 0.2]), r"^std must be one or 3 .* got \[0.1, 0.2\]"),
    (lambda: GaussianMixture.ring(std=0), r"^std must be one or 8 finite numbers > 0, got \[0.0\]$"),
    (lambda: GaussianMixture([[0.0, 0.0]], [1.0], -1.0), r"^stds must be one or 1 finite numbers > 0, got \[-1.0\]$"),
    (lambda: gaussian_mixture(10, radius=math.nan), "radius must be a finite number"),
    (lambda: gaussian_mixture(10, k=2, weights=[math.nan, 1.0]), "weights must be 2 finite positive numbers"),
    (lambda: GaussianMixture([[math.nan, 0.0]], [1.0], 1.0), "means must be finite"),
    (lambda: gaussian_mixture(1e4), "n must be a positive integer, got 10000.0"),
    (lambda: two_moons(1e4), "n must be a positive integer"),
    (lambda: checkerboard(10.0), "n must be a positive integer"),
    (lambda: two_moons(10, seed=1.5), "seed must be an integer"),
])
def test_mixture_settings_and_counts_are_checked_by_name(make, match):
    # NaN or inf settings drew NaN points silently; mismatched stds, NaN weights and float counts
    # failed in torch's words; seed 1.5 was seed 1
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("std", [1e-3, 1e-6])
def test_mixture_log_prob_near_its_means_does_not_depend_on_the_batch(std):
    # torch.cdist's expansion (used above 25 rows) cancelled within σ of a mean: 2e-3 off at
    # σ = 1e-6 for a 40-row call, exact in 8-row calls (helper-143)
    gmm = GaussianMixture.ring(8, 4.0, std)
    g = torch.Generator().manual_seed(0)
    x = gmm.means[torch.arange(40) % 8] + std * torch.randn(40, 2, generator=g, dtype=torch.float64)
    d2 = ((x[:, None, :] - gmm.means[None]) ** 2).sum(-1)  # float64 brute force from differences
    ref = torch.logsumexp(gmm.weights.log() - d2 / (2 * std ** 2) - 2 * math.log(std) - math.log(2 * math.pi), 1)
    torch.testing.assert_close(gmm.log_prob(x), ref, rtol=1e-14, atol=1e-12)
    assert torch.equal(gmm.log_prob(x), torch.cat([gmm.log_prob(x[i:i + 8]) for i in range(0, 40, 8)]))
    assert torch.equal(gmm.assign(x), torch.arange(40) % 8)


def test_mixture_assign_tells_apart_means_closer_than_their_distance_from_the_origin_resolves():
    # assign, like log_prob, takes ‖x − μ‖² from differences: torch.cdist's expansion (above 25 rows)
    # cancels for means 1e-6 apart near 1000 and put 19 of these 40 points in the wrong component
    means = torch.tensor([[1000.0, 1000.0], [1000.0 + 1e-6, 1000.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = means[torch.arange(40) % 2] + 1e-7 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    nearest = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)  # float64 brute force, equal weights and σ
    assert torch.equal(GaussianMixture(means, torch.ones(2), 1e-7).assign(x), nearest)


@pytest.mark.parametrize("make, match", [
    (lambda: checkerboard(10, squares=4.5), r"^squares must be an integer >= 2, got 4.5$"),
    (lambda: checkerboard(10, squares=True), r"^squares must be an integer >= 2, got True$"),
    (lambda: checkerboard(10, side="4"), r"^side must be a finite number > 0, got '4'$"),
    (lambda: two_moons(10, noise="0.1"), r"^noise must be a finite number >= 0, got '0.1'$"),
    (lambda: two_moons(10, noise=None), r"^noise must be a finite number >= 0, got None$"),
    (lambda: gaussian_mixture(10, radius="4"), r"^radius must be a finite number, got '4'$"),
    (lambda: gaussian_mixture(10, std=None), r"^std must be one or 8 finite numbers > 0, got None$"),
])
def test_settings_of_the_wrong_type_are_named_not_a_type_error(make, match):
    # these failed in Python's or torch's words, naming no argument: "'float' object cannot be
    # interpreted as an integer", "'>' not supported between 'str' and 'int'", "must be real number"
    with pytest.raises(ValueError, match=match):
        make()


# --- GaussianMixture.log_prob / assign: points of the mixture's dimension, named when not ---------

@pytest.mark.parametrize("shape", [(3, 1), (3, 2, 2), (2,), (3, 3)])
def test_mixture_points_of_another_shape_are_refused_by_name(shape):
    # (N, 1) points were broadcast against the 2-D means and given numbers; (N, 2, 2) a (N, 2) result
    # on a ring of 2; others met torch's "size of tensor a must match" or "Dimension out of range"
    gm = GaussianMixture.ring(2)
    for method in (gm.log_prob, gm.assign):
        with pytest.raises(ValueError, match=rf"x must have shape \(N, 2\).*got {re.escape(str(shape))}"):
            method(torch.zeros(shape))


def test_mixture_points_that_are_no_real_numbers_are_refused_by_name():
    gm = GaussianMixture.ring(4)
    for x in ([[1 + 1j, 0.0]], torch.zeros(3, 2, dtype=torch.complex64)):   # the imaginary part was dropped
        with pytest.raises(ValueError, match="x must hold real numbers"):
            gm.log_prob(x)
    with pytest.raises(ValueError, match=r"x must be \(N, 2\) real numbers, got a str"):
        gm.assign("points")


def test_mixture_points_on_another_device_are_refused_naming_x_and_both_devices():
    # torch said "Tensor on device cpu is not on the expected device meta!", naming neither x nor the mixture
    gm = GaussianMixture.ring(3)
    for method in (gm.log_prob, gm.assign):
        with pytest.raises(ValueError, match=r"^x is on meta, the mixture on cpu: pass x\.cpu\(\)"):
            method(torch.zeros(4, 2, device="meta"))


def test_mixture_log_prob_of_python_floats_is_read_in_float64():
    # the check must not read a list through float32: 0.1 stays float64's 0.1
    gm = GaussianMixture(torch.tensor([[0.1, -0.3]], dtype=torch.float64), [1.0], 0.05)
    x = [[0.1, -0.3], [0.2, 0.7]]
    d2 = torch.tensor([0.0, 0.1 ** 2 + 1.0 ** 2], dtype=torch.float64)
    want = -0.5 * d2 / 0.05 ** 2 - 2 * math.log(0.05) - math.log(2 * math.pi)
    torch.testing.assert_close(gm.log_prob(x), want, rtol=1e-15, atol=1e-12)
    assert gm.log_prob(torch.zeros(0, 2)).shape == (0,) and gm.assign(torch.zeros(0, 2)).shape == (0,)
