"""Fréchet distance against closed forms; precision/recall on constructed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from kinetic_fm.metrics.fidelity import (
    FrechetReference,
    Protocol,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    inception_feature_space,
    precision_recall,
)


def _random_spd(rng, dim, cond=50.0):
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * np.geomspace(1.0, cond, dim)) @ q.T


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance_from_stats([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, rel=1e-12)
    # commuting (diagonal) covariances: sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.1, 5, 20), rng.uniform(0.1, 5, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # general SPD pair: tr sqrt(S1 S2) by scipy's sqrtm of the non-symmetric product
    s1, s2 = _random_spd(rng, 30), _random_spd(rng, 30, cond=1e3)
    mu1, mu2 = rng.normal(size=30), rng.normal(size=30)
    tr = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    # same Gaussian: 0
    assert frechet_distance_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9 * np.trace(s1))
    # W2 between Gaussians is symmetric
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance_from_stats(mu2, s2, mu1, s1), rel=1e-9)
    # a prepared reference serves many distances with the same value (against scipy's sqrtm)
    reference = FrechetReference.from_stats(mu2, s2)
    assert reference.distance(mu1, s1) == pytest.approx(expected, rel=1e-6)
    assert reference.distance(mu2, s2) == pytest.approx(0.0, abs=1e-9 * np.trace(s2))
    with pytest.raises(ValueError, match="do not match the reference"):
        reference.distance(mu1[:3], s1[:3, :3])


def test_statistics_as_tensors_of_any_dtype_and_non_finite_ones_are_named():
    # bfloat16 or grad-tracking tensors (torchmetrics keeps its means as tensors) failed with
    # torch's own errors; a prepared reference took NaN or inf statistics and returned nan or inf
    mu1, s1 = np.array([1.0, 0.0, 2.0]), np.diag([1.0, 4.0, 9.0])
    mu2, s2 = np.zeros(3), np.eye(3)
    expected = 5.0 + (0 + 1 + 4)                                    # ‖Δμ‖² + Σ(√a − √b)²
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    as_tensors = [torch.tensor(mu1, dtype=torch.bfloat16), torch.tensor(s1, dtype=torch.bfloat16),
                  torch.tensor(mu2, requires_grad=True), torch.tensor(s2, dtype=torch.float16)]
    assert frechet_distance_from_stats(*as_tensors) == pytest.approx(expected, rel=1e-12)  # exact in bf16
    assert FrechetReference.from_stats(*as_tensors[2:]).distance(*as_tensors[:2]) == pytest.approx(expected, rel=1e-12)
    bad = np.diag([1.0, np.nan, 1.0])
    for call, name in ((lambda: FrechetReference.from_stats(mu2, bad), "cov"),
                       (lambda: FrechetReference.from_stats([np.inf, 0, 0], s2), "mean"),
                       (lambda: FrechetReference.from_stats(mu2, s2).distance(mu1, bad), "sigma"),
                       (lambda: FrechetReference.from_stats(mu2, s2).distance([0, np.inf, 0], s1), "mu"),
                       (lambda: frechet_distance_from_stats(mu1, s1, torch.tensor([0.0, math.nan, 0.0]), s2), "mu2")):
        with pytest.raises(ValueError, match=f"^{name} has non-finite entries"):
            call()
    with pytest.raises(ValueError, match="cov is not symmetric"):          # it was averaged silently
        FrechetReference.from_stats(mu2, [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_feature_statistics_float64_with_large_offset():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 5)) * [1, 2, 3, 4, 5] + 1e4
    mu, cov = feature_statistics(torch.from_numpy(x.astype(np.float32)), chunk=512)
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, x32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x32, rowvar=False), rtol=1e-9, atol=1e-9)


def test_frechet_of_samples():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(2000, 8)))
    fd_self = frechet_distance(x, x)
    assert fd_self.value == pytest.approx(0.0, abs=1e-9)
    assert fd_self.name == "FD-pixels" and fd_self.n_a == 2000 and fd_self.dim == 8
    shifted = frechet_distance(x, x + 1.0, network="lenet", split="mnist/test", preprocessing="[0,1]")
    assert shifted.value == pytest.approx(8.0, rel=1e-9)  # ‖Δμ‖² = 8, same covariance
    assert shifted.name == "FD-lenet" and shifted.protocol.split == "mnist/test"
    assert "FD-lenet = 8" in str(shifted)
    assert Protocol(network="inception-v3-compat").fd_name == "FID"
    # a feature network: FD in its space equals FD of the mapped features
    net = torch.nn.Linear(8, 4).double()
    fd_net = frechet_distance(x, x * 2, space=net)
    with torch.no_grad():
        direct = frechet_distance(net(x), net(x * 2))
    assert fd_net.value == pytest.approx(direct.value, rel=1e-10) and fd_net.name == "FD-Linear"


def test_sets_with_no_more_samples_than_features_warn_of_the_bias():
    import warnings

    from kinetic_fm.metrics.fidelity import FrechetBiasWarning

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64))  # one distribution: the true FD is 0
    with pytest.warns(FrechetBiasWarning, match="20 and 20 samples of 64 features"):
        small = frechet_distance(a, b)
    assert small.value > 50                                       # the bias the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        large = frechet_distance(rng.normal(size=(5000, 64)), rng.normal(size=(5000, 64)))
    assert large.value < 1


@pytest.mark.filterwarnings("ignore::kinetic_fm.checks.ValueRangeWarning")  # deliberately far-apart sets
def test_precision_recall_constructed_cases():
    rng = np.random.default_rng(3)
    real = torch.from_numpy(rng.normal(size=(300, 4)))
    same = precision_recall(real, real.clone(), k=3)
    assert same.precision == 1.0 and same.recall == 1.0
    far = precision_recall(real, real + 100.0, k=3)
    assert far.precision == 0.0 and far.recall == 0.0
    # fakes cover only half the real modes: precision high, recall about half
    fake = torch.from_numpy(rng.normal(size=(300, 4)))
    fake[:, 0] = fake[:, 0].abs()
    half = precision_recall(real, fake, k=3)
    assert half.precision > 0.9 and 0.4 < half.recall < 0.85
    assert half.fake_in_real.shape == (300,) and half.fake_in_real.dtype == torch.bool
    assert half.precision == pytest.approx(half.fake_in_real.double().mean().item())


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(120, 3)), rng.normal(size=(90, 3)) * 1.3 + 0.4
    res = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=4, chunk=17, batch_chunk=11)

    def radii(a):
        d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
        return np.sort(d, 1)[:, 4]  # column 0 is the point itself

    d_fr = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))
    fake_in_real = (d_fr <= radii(real)[None]).any(1)
    real_in_fake = (d_fr.T <= radii(fake)[None]).any(1)
    np.testing.assert_array_equal(res.fake_in_real.numpy(), fake_in_real)
    np.testing.assert_array_equal(res.real_in_fake.numpy(), real_in_fake)



@pytest.mark.parametrize("rows_per_block", [1, 7, 1000])
def test_kth_radii_are_the_same_in_any_blocks(monkeypatch, rows_per_block):
    """The squared radii are written block by block into one (N,) float64 tensor (a list of
    blocks kept glibc's heap from shrinking): the same values as one block, the exact distances."""
    from kinetic_fm.metrics import fidelity

    rows = torch.from_numpy(np.random.default_rng(7).normal(size=(53, 6))).to(torch.float32)
    whole = fidelity._kth_neighbour_sq_radius(rows, 3, 17, 11, "real")
    monkeypatch.setattr(fidelity, "block_size", lambda device, item_bytes, items: min(rows_per_block, items))
    blocked = fidelity._kth_neighbour_sq_radius(rows, 3, 17, 11, "real")
    assert blocked.dtype == torch.float64 and blocked.shape == (53,)
    assert torch.equal(blocked, whole)
    d2 = ((rows.double()[:, None] - rows.double()[None]) ** 2).sum(-1)
    assert torch.equal(blocked, d2.sort(dim=1).values[:, 3])  # column 0 is the row itself

def _integer_brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ball membership from exact int64 squared distances (no rounding anywhere)."""
    real, fake = real.astype(np.int64), fake.astype(np.int64)

    def sq(a, b):
        return ((a[:, None] - b[None]) ** 2).sum(-1)

    def sq_radii(a):
        return np.sort(sq(a, a), 1)[:, k]  # column 0 is the point itself

    d_fr = sq(fake, real)
    return (d_fr <= sq_radii(real)[None]).any(1), (d_fr.T <= sq_radii(fake)[None]).any(1)


def test_precision_recall_decides_ties_on_quantised_data_exactly():
    # binary pixels: many fakes lie exactly on a ball's edge (d = r counts as inside), where
    # the GEMM expansion's rounding alone would decide
    rng = np.random.default_rng(8)
    real = (rng.random((160, 100)) < 0.1).astype(np.uint8)
    fake = (rng.random((140, 100)) < 0.1).astype(np.uint8)
    fake_in_real, real_in_fake = _integer_brute_force(real, fake, k=3)
    assert 0.2 < fake_in_real.mean() < 1.0                        # a case with both outcomes
    for as_tensor in (torch.from_numpy, lambda a: torch.from_numpy(a.astype(np.float64))):
        res = precision_recall(as_tensor(real), as_tensor(fake), k=3, chunk=37, batch_chunk=29)
        np.testing.assert_array_equal(res.fake_in_real.numpy(), fake_in_real)
        np.testing.assert_array_equal(res.real_in_fake.numpy(), real_in_fake)


def _float64_brute_force(real: np.ndarray, fake: np.ndarray, k: int, *, edge_inside: bool = True
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Ball membership from the full float64 matrices of squared distances; d = r counts as
    inside unless ``edge_inside`` is False."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    within = np.less_equal if edge_inside else np.less

    def sq(a, b):
        return ((a[:, None] - b[None]) ** 2).sum(-1)

    r2_real, r2_fake = (np.sort(sq(a, a), 1)[:, k] for a in (real, fake))  # column 0: the point itself
    d2 = sq(fake, real)
    return within(d2, r2_real[None]).any(1), within(d2.T, r2_fake[None]).any(1)


def _tied_sets(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer (180, 6) real and (150, 6) fake rows with exact ties at ball edges and
    duplicate rows: k + 1 copies of some reals (balls of radius 0), fakes that copy a real or sit
    on a real's k-th neighbour (d = r exactly), and repeated fakes."""
    real = rng.integers(0, 4, (180, 6))
    fake = rng.integers(0, 4, (150, 6)) + rng.integers(0, 2, (150, 6))
    real[:(k + 1) * 10] = np.repeat(real[:10], k + 1, axis=0)
    fake[:20] = real[rng.integers(0, 180, 20)]
    sq_real = ((real[:, None] - real[None]) ** 2).sum(-1)
    centres = rng.integers(0, 180, 20)
    fake[20:40] = real[np.argsort(sq_real[centres], 1, kind="stable")[:, k]]
    fake[40:60] = fake[60:80]
    return real, fake


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_precision_recall_equals_the_float64_brute_force_with_ties_and_duplicates(dtype):
    rng = np.random.default_rng(21)
    for k in (1, 3):
        real, fake = _tied_sets(rng, k)
        if dtype != np.uint8:  # quarters: every difference, square and sum stays exact
            real, fake = real / 4.0 - 0.3125, fake / 4.0 - 0.3125
        real, fake = real.astype(dtype), fake.astype(dtype)
        want_p, want_r = _float64_brute_force(real, fake, k)
        # the case has rows inside only through d = r, in both directions
        strict_p, strict_r = _float64_brute_force(real, fake, k, edge_inside=False)
        assert (want_p & ~strict_p).any() and (want_r & ~strict_r).any() and not want_p.all()
        for blocks in ({}, {"chunk": 17, "batch_chunk": 11}, {"chunk": 64, "batch_chunk": 7}):
            got = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, **blocks)
            np.testing.assert_array_equal(got.fake_in_real.numpy(), want_p)
            np.testing.assert_array_equal(got.real_in_fake.numpy(), want_r)


def test_precision_recall_counts_copies_inside_tiny_balls_in_float32():
    # near-duplicate reals give tiny balls; fakes that copy a real point are inside them
    # (distance 0), although float32 GEMM distances at this offset are off by far more
    rng = np.random.default_rng(9)
    base = rng.normal(size=(150, 64)) * 3.0 + 10.0
    real = np.concatenate([base, base + 1e-3 * rng.normal(size=base.shape)]).astype(np.float32)
    fake = real[:150].copy()
    res = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=1)
    assert res.precision == 1.0 and res.recall == 1.0


def test_errors():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="feature sizes"):
        frechet_distance(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance_from_stats(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="sigma2 is not a covariance"):
        frechet_distance_from_stats([0.0], [[1.0]], [0.0], [[-1.0]])
    with pytest.raises(ValueError, match="sigma1 is not a covariance"):
        frechet_distance_from_stats(np.zeros(2), [[1.0, 2.0], [2.0, 1.0]], np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 9\], got 10"):
        precision_recall(x, x, k=10)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\], got 5"):   # the smaller set decides
        precision_recall(x, x[:4], k=5)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x, x, k=True)
    assert precision_recall(x, x, k=np.int64(3)).k == 3
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        inception_feature_space("/nonexistent/inception.pth")
    # the protocol's names reach reports; a number there was taken without a word
    with pytest.raises(TypeError, match="network must be a string or None, got int"):
        frechet_distance(x, x, network=5)
    with pytest.raises(TypeError, match="split must be a string or None, got float"):
        precision_recall(x, x, k=2, split=0.5)


def test_inception_without_backends_says_what_to_install(tmp_path, monkeypatch):
    import sys

    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    for name in ("torch_fidelity", "torchvision"):   # absent, also where installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install torch-fidelity\).*\(pip install torchvision\)"):
        inception_feature_space(weights)


# --- the Inception backends' wiring, on stand-in modules (neither backend installs here) -----------

def _fake_module(monkeypatch, name: str, **attrs):
    import sys
    import types

    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_torch_fidelity_backend_gets_the_weights_and_uint8_images(tmp_path, monkeypatch):
    seen = {}

    class StandInExtractor(torch.nn.Module):  # torch-fidelity's (name, features_list, weights) API
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            seen.update(name=name, features=features_list, path=feature_extractor_weights_path)

        def forward(self, x):
            seen["dtype"] = x.dtype
            return (x.double().mean(dim=(2, 3)),)

    _fake_module(monkeypatch, "torch_fidelity")
    _fake_module(monkeypatch, "torch_fidelity.feature_extractor_inceptionv3",
                 FeatureExtractorInceptionV3=StandInExtractor)
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    space = inception_feature_space(weights, batch_size=3)
    assert space.name == "inception-v3-compat" and Protocol(network=space.name).fd_name == "FID"
    assert seen == {"name": "inception-v3-compat", "features": ["2048"], "path": str(weights)}

    images = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    images[0, 0, 0, 0] = 1.7  # out of range: clamped to 255
    feats = space(images)
    assert seen["dtype"] == torch.uint8
    as_uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    torch.testing.assert_close(feats, as_uint8.double().mean(dim=(2, 3)), rtol=0, atol=0)
    torch.testing.assert_close(space(as_uint8), feats, rtol=0, atol=0)


def test_torchvision_backend_resizes_normalises_and_drops_the_classifier(tmp_path, monkeypatch):
    seen = {}

    class StandInInception(torch.nn.Module):  # pools per channel, then a 3 -> 4 classifier
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x):
            seen["input"] = x.clone()
            return self.fc(x.mean(dim=(2, 3)))

    def inception_v3(weights=None, aux_logits=True, init_weights=False):
        assert weights is None  # never a download
        return StandInInception()

    _fake_module(monkeypatch, "torch_fidelity")  # present but without the extractor: fall back
    vision = _fake_module(monkeypatch, "torchvision")
    vision.models = _fake_module(monkeypatch, "torchvision.models", inception_v3=inception_v3)
    state = StandInInception().state_dict()
    weights = tmp_path / "inception_v3.pth"
    torch.save(state, weights)

    space = inception_feature_space(weights)
    assert space.name == "inception-v3-torchvision"
    assert Protocol(network=space.name).fd_name != "FID"
    mean = torch.tensor([0.485, 0.456, 0.406])
    images = (mean.view(1, 3, 1, 1) * 255).round().to(torch.uint8).expand(2, 3, 32, 32)
    feats = space(images)
    normalised = seen["input"]
    assert normalised.shape == (2, 3, 299, 299)
    # uint8 -> [0, 1] -> ImageNet normalisation: the per-channel mean image becomes ~0
    assert normalised.abs().max() < 0.5 / 255 / 0.224
    # the classifier is dropped: features are the pooled (normalised) channels, not fc's 4 logits
    torch.testing.assert_close(feats, normalised.mean(dim=(2, 3)), rtol=0, atol=1e-6)


# --- input validation (audit D1, D11, D13, C14) ----------------------------------------------

@pytest.mark.filterwarnings("ignore::kinetic_fm.checks.ValueRangeWarning")  # deliberately far-apart sets
def test_precision_recall_of_rows_whose_squares_overflow_float32_is_their_scaled_copys():
    # at scale 1e20 the float32 squared distances overflowed and (1.0, 1.0) came back silently;
    # then they were refused; a copy scaled by a power of two has the same balls (FD and KDE
    # measured such rows already)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 2, generator=g), torch.randn(20, 2, generator=g)
    for r, f in ((real * 1e20, fake * 1e20), (real, fake * 1e20)):
        got, want = precision_recall(r, f), precision_recall(r.double(), f.double())
        assert torch.equal(got.fake_in_real, want.fake_in_real) and torch.equal(got.real_in_fake, want.real_in_fake)
    big = precision_recall(real.double() * 1e20, fake.double() * 1e20)
    small = precision_recall(real.double(), fake.double())
    assert (big.precision, big.recall) == (small.precision, small.recall)


def test_precision_recall_needs_two_rows_per_set_and_real_numbers():
    with pytest.raises(ValueError, match="fake must hold at least 2 samples"):
        precision_recall(torch.randn(10, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="real must hold real numbers"):
        precision_recall(torch.randn(10, 2, dtype=torch.complex64), torch.randn(5, 2))
    with pytest.raises(ValueError, match="feats_a must hold at least one sample"):
        frechet_distance(torch.randn(0, 2), torch.randn(5, 2))


@pytest.mark.parametrize("kwargs", [{"k": True}, {"chunk": True}, {"batch_chunk": True}, {"chunk": 0}])
def test_precision_recall_bools_are_not_counts(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"^{name} must"):
        precision_recall(torch.randn(10, 2), torch.randn(8, 2), **kwargs)


def test_precision_recall_shows_progress_and_gives_the_same_answer(capsys):
    g = torch.Generator().manual_seed(5)
    real, fake = torch.randn(300, 6, generator=g), torch.randn(200, 6, generator=g) + 0.5
    quiet = precision_recall(real, fake, k=3, chunk=64, batch_chunk=50)
    capsys.readouterr()
    shown = precision_recall(real, fake, k=3, chunk=64, batch_chunk=50, progress=True)
    err = capsys.readouterr().err
    # the two k-NN searches, then one sweep that tests both directions
    assert "0/300" in err and "0/200" in err and "nearest neighbours" in err
    assert "precision and recall: fake in real balls, real in fake balls" in err
    assert (shown.precision, shown.recall) == (quiet.precision, quiet.recall)
    assert torch.equal(shown.fake_in_real, quiet.fake_in_real) and torch.equal(shown.real_in_fake, quiet.real_in_fake)
    with pytest.raises(ValueError, match="progress must be True or False"):
        precision_recall(real, fake, progress="yes")


def test_features_that_require_grad_are_measured_as_their_values():
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(60, 4, generator=g), torch.randn(50, 4, generator=g) + 0.5
    made = torch.nn.Linear(4, 4)  # features straight out of a net, outside torch.no_grad
    real_f, fake_f = made(real), made(fake)
    assert real_f.requires_grad
    assert frechet_distance(real_f, fake_f).value == frechet_distance(real_f.detach(), fake_f.detach()).value
    got, want = precision_recall(real_f, fake_f, k=3), precision_recall(real_f.detach(), fake_f.detach(), k=3)
    assert (got.precision, got.recall) == (want.precision, want.recall)


# --- gaps found by the mutation audit (briefs18 G) --------------------------------------------

def test_a_set_against_itself_is_zero_never_negative():
    # the trace terms cancel to round-off, which left about a third of these seeds at -1.7e-13
    # before the clip at 0: a distance is never negative
    for seed in range(20):
        x = np.random.default_rng(seed).normal(size=(200, 16)) * 3.0 + 5.0
        value = frechet_distance(x, x).value
        assert 0.0 <= value < 1e-9, (seed, value)
    # and through the few-rows route (n ≤ D, its own clip): 11 of these 40 seeds read down to -4.5e-13 without it
    import warnings

    from kinetic_fm.metrics.fidelity import FrechetBiasWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrechetBiasWarning)
        for seed in range(40):
            x = np.random.default_rng(seed).normal(size=(20, 64)) * 3.0 + 5.0
            value = frechet_distance(x, x).value
            assert 0.0 <= value < 1e-9, (seed, value)


def test_clearly_negative_eigenvalues_are_refused_and_round_off_is_not():
    # "a clearly negative one is a wrong input": 1e-4 of the largest is clearly negative,
    # 1e-12 is round-off
    mu = np.zeros(2)
    with pytest.raises(ValueError, match="sigma2 is not a covariance"):
        frechet_distance_from_stats(mu, np.eye(2), mu, np.diag([1.0, -1e-4]))
    with pytest.raises(ValueError, match="sigma1 is not a covariance"):
        frechet_distance_from_stats(mu, np.diag([1.0, -1e-4]), mu, np.eye(2))
    # diag(1, 0) against I: d² = tr + tr − 2 tr (diag(1, 0))^{1/2} = 2 + 1 − 2 = 1
    assert frechet_distance_from_stats(mu, np.diag([1.0, -1e-12]), mu, np.eye(2)) == pytest.approx(1.0)
    # the limits themselves, just either side of 1e-6 of the largest eigenvalue (entry, for the
    # asymmetry): a 10× looser eigenvalue floor or Cholesky shift, or a 1e-3 symmetry tolerance,
    # accepted all of the refused ones and no test noticed. Accepted: diag(1, 0) against I is 1
    # less the tiny negative trace (−5e-7) the clip at 0 does not remove from tr σ
    for where in ("sigma1", "sigma2"):
        pair = lambda s: (mu, s, mu, np.eye(2)) if where == "sigma1" else (mu, np.eye(2), mu, s)  # noqa: E731
        with pytest.raises(ValueError, match=f"{where} is not a covariance: eigenvalue -2e-06"):
            frechet_distance_from_stats(*pair(np.diag([1.0, -2e-6])))
        assert frechet_distance_from_stats(*pair(np.diag([1.0, -5e-7]))) == pytest.approx(1.0 - 5e-7, abs=1e-12)
        with pytest.raises(ValueError, match=f"{where} is not symmetric"):
            frechet_distance_from_stats(*pair(np.array([[1.0, 2e-6], [0.0, 1.0]])))
        # symmetric to 5e-7: averaged to off-diagonals c = 2.5e-7, d² = 4 − 2(√(1 + c) + √(1 − c)) ≈ c²/2
        assert frechet_distance_from_stats(*pair(np.array([[1.0, 5e-7], [0.0, 1.0]]))) == pytest.approx(0.0, abs=1e-12)


def test_the_bias_warning_starts_at_as_many_samples_as_features():
    import warnings

    from kinetic_fm.metrics.fidelity import FrechetBiasWarning

    rng = np.random.default_rng(0)
    with pytest.warns(FrechetBiasWarning, match="8 and 30 samples of 8 features"):
        frechet_distance(rng.normal(size=(8, 8)), rng.normal(size=(30, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frechet_distance(rng.normal(size=(9, 8)), rng.normal(size=(30, 8)))


def test_feature_statistics_needs_two_rows():
    with pytest.raises(ValueError, match="feats needs at least 2 rows for a covariance, got 1"):
        feature_statistics(np.ones((1, 3)))
    mean, cov = feature_statistics(np.array([[0.0, 1.0], [2.0, 5.0]]))
    np.testing.assert_array_equal(mean, [1.0, 3.0])
    np.testing.assert_array_equal(cov, np.cov(np.array([[0.0, 1.0], [2.0, 5.0]]).T))


@pytest.mark.parametrize("power", [-76, -83])
def test_precision_recall_of_tiny_float32_features_is_their_unit_scale_copys(power):
    # 2**power scales every float32 entry exactly and changes no ball membership; at 1e-23 the
    # GEMM's products underflowed, and P/R read 0.160/0.090 for 0.830/0.895 (helper-97)
    rng = np.random.default_rng(0)
    real = torch.tensor(rng.standard_normal((200, 8)), dtype=torch.float32)
    fake = torch.tensor(rng.standard_normal((200, 8)), dtype=torch.float32)
    unit = precision_recall(real, fake, k=3)
    s = 2.0 ** power
    tiny = precision_recall(real * s, fake * s, k=3)
    assert torch.equal(tiny.fake_in_real, unit.fake_in_real) and torch.equal(tiny.real_in_fake, unit.real_in_fake)
    assert (tiny.precision, tiny.recall) == (unit.precision, unit.recall)


def test_frechet_distance_of_subnormal_or_huge_features_is_the_representable_value():
    # 2.0**1050 overflowed a Python float (OverflowError) for features below 2**-1022
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 20, (200, 3)).astype(float), rng.integers(0, 20, (150, 3)).astype(float) + 1
    unit = frechet_distance(a, b).value
    assert frechet_distance(a * 2.0 ** -1040, b * 2.0 ** -1040).value == 0.0          # 2**-2080: below float64
    assert frechet_distance(a * 2.0 ** -520, b * 2.0 ** -520).value == pytest.approx(unit * 2.0 ** -1040, rel=1e-9)
    assert frechet_distance(a * 2.0 ** 600, b * 2.0 ** 600).value == math.inf         # beyond float64


@pytest.mark.parametrize("power", [260, -330])
def test_frechet_distance_scales_as_the_square_of_the_features_at_any_magnitude(power):
    # FD(s·a, s·b) = s²·FD(a, b); with s = 2**power every entry scales exactly. cov^½ Σ cov^½
    # grows as s⁴: NaN from 1e77 on, and 5.1e-200 for 1.09e-200 at 1e-100 (helper-97)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 5)), rng.normal(size=(150, 5)) * 1.3 + 0.2
    s = 2.0 ** power
    unit = frechet_distance(a, b).value
    assert frechet_distance(a * s, b * s).value == pytest.approx(unit * s * s, rel=1e-10, abs=0)
    mu_a, cov_a = feature_statistics(a)
    mu_b, cov_b = feature_statistics(b)
    assert frechet_distance_from_stats(mu_a * s, cov_a * s * s, mu_b * s, cov_b * s * s) == \
        pytest.approx(unit * s * s, rel=1e-10, abs=0)


@pytest.mark.parametrize("dtype,power", [(torch.float32, -140), (torch.float64, -1040)])
def test_precision_recall_of_subnormal_features_is_exact(dtype, power):
    # 2**149 is inf in float32 ("real contains NaN or inf" for finite input); 2.0**1050 overflowed
    rng = np.random.default_rng(4)
    real, fake = rng.integers(0, 20, (60, 3)), rng.integers(0, 20, (50, 3))
    want_p, want_r = _integer_brute_force(real, fake, 3)
    scaled = [torch.tensor(a * 2.0 ** power, dtype=dtype) for a in (real, fake)]
    got = precision_recall(*scaled, k=3)
    np.testing.assert_array_equal(got.fake_in_real.numpy(), want_p)
    np.testing.assert_array_equal(got.real_in_fake.numpy(), want_r)


def test_frechet_inputs_are_checked_naming_the_argument():
    x = np.random.default_rng(2).normal(size=(10, 3))
    with pytest.raises(ValueError, match=r"feats_a and feats_b have different feature sizes: 3 vs 4"):
        frechet_distance(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match=r"feats_b needs at least 2 rows for a covariance, got 1"):
        frechet_distance(x, x[:1])
    for chunk in (0, -1, 2.5):      # -1 gave the mean of all rows but the last and a zero covariance
        with pytest.raises(ValueError, match=rf"chunk must be a positive integer, got {chunk}"):
            feature_statistics(x, chunk=chunk)
    with pytest.raises(ValueError, match=r"mu1 must be a \(D,\) vector, got shape \(2, 2\)"):
        frechet_distance_from_stats(np.zeros((2, 2)), np.eye(4), np.zeros(4), np.eye(4))
    row = frechet_distance_from_stats(np.ones((1, 4)), np.eye(4), np.zeros((4, 1)), np.eye(4))   # torchmetrics' (1, D)
    assert row == pytest.approx(4.0, rel=1e-12)
    with pytest.raises(ValueError, match="sigma2 is not symmetric"):
        frechet_distance_from_stats(np.zeros(2), np.eye(2), np.zeros(2), [[1.0, 0.5], [0.0, 1.0]])


def test_the_studies_fd_to_reference_takes_one_feature():
    from kinetic_fm.studies.output import fd_to_reference, feature_reference

    rng = np.random.default_rng(3)
    ref, x = rng.normal(size=(300, 1)), rng.normal(size=(200, 1)) * 2 + 1
    assert fd_to_reference(x, feature_reference(ref)) == pytest.approx(frechet_distance(ref, x).value, rel=1e-12)


def _nuclear_norm_fd(a: np.ndarray, b: np.ndarray) -> float:
    """FD from rows by the nuclear-norm identity, straight from its definition in float64:
    tr (Σ_a^½ Σ_b Σ_a^½)^½ = ‖B Aᵀ‖_* / √((n_a − 1)(n_b − 1)) with A, B the centred rows."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a), len(b)
    trace_sqrt = np.linalg.svd(cb @ ca.T, compute_uv=False).sum() / math.sqrt((na - 1) * (nb - 1))
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca ** 2).sum() / (na - 1) + (cb ** 2).sum() / (nb - 1)
                 - 2 * trace_sqrt)


@pytest.mark.filterwarnings("ignore::kinetic_fm.metrics.fidelity.FrechetBiasWarning")
@pytest.mark.parametrize("sizes", [(30, 40), (40, 30), (30, 700), (300, 700), (700, 300)])
def test_few_samples_in_many_features_measure_no_round_off_null_eigenvalues(sizes):
    # rows in an 8-dimensional subspace of 300 features: FD is rotation invariant, so it equals
    # the FD of the 8 coordinates (n > 8, well posed). Through 300 × 300 eigenproblems the
    # ~290 null eigenvalues' round-off entered as √(ε λ_max) each: 1e-6 relative low. n = D = 300
    # is the route's boundary: a set with as many rows as features has a singular covariance too
    # (a route test `n < D` survived, taking such sets through the D × D eigenproblems)
    rng = np.random.default_rng(5)
    a = rng.normal(size=(sizes[0], 8)) * np.geomspace(1, 30, 8) + 4.0
    b = rng.normal(size=(sizes[1], 8)) * 1.2 + 4.3
    q, _ = np.linalg.qr(rng.normal(size=(300, 8)))
    want = frechet_distance(a, b).value
    assert want == pytest.approx(_nuclear_norm_fd(a, b), rel=1e-12)
    assert frechet_distance(a @ q.T, b @ q.T).value == pytest.approx(want, rel=1e-11)
    assert frechet_distance(b @ q.T, a @ q.T).value == pytest.approx(want, rel=1e-11)


@pytest.mark.filterwarnings("ignore::kinetic_fm.metrics.fidelity.FrechetBiasWarning")
def test_few_samples_fd_equals_the_nuclear_norm_form_in_float32_and_with_an_offset(monkeypatch):
    rng = np.random.default_rng(6)
    a = rng.normal(size=(50, 120)) * np.geomspace(0.1, 3, 120) + 1e3
    b = rng.normal(size=(2000, 120)) + 1e3 + 0.05
    want = _nuclear_norm_fd(a, b)
    assert frechet_distance(a, b).value == pytest.approx(want, rel=1e-10)
    a32, b32 = (torch.tensor(x, dtype=torch.float32) for x in (a, b))
    assert frechet_distance(a32, b32).value == pytest.approx(
        _nuclear_norm_fd(a32.double().numpy(), b32.double().numpy()), rel=1e-10)
    # the larger set over several row blocks (300 rows of 120 float64 here, 7 blocks, the last
    # partial; 1,747 rows at D = 300 by default): each block's B Aᵀ is stacked under the running
    # triangle and each block's scatter is added. Keeping only the last block's triangle read
    # 735.9 for 580.2 (30 vs 4,000 rows, D = 300), keeping only its scatter 136.7
    import kinetic_fm.blocks
    monkeypatch.setattr(kinetic_fm.blocks, "CPU_BLOCK_BYTES", 300 * 8 * 120)
    assert frechet_distance(a, b).value == pytest.approx(want, rel=1e-10)


def test_a_reference_refuses_a_sigma_that_is_not_a_covariance():
    # it returned 0 for diag(1, -1) against I, and clipped to 0 where the reference is singular
    for cov, sigma in ((np.eye(2), np.diag([1.0, -1.0])), (np.diag([1.0, 0.0]), np.diag([1.0, -1.0])),
                       (np.eye(2), [[1.0, 2.0], [2.0, 1.0]])):
        with pytest.raises(ValueError, match="sigma is not a covariance"):
            FrechetReference.from_stats(np.zeros(2), cov).distance(np.zeros(2), sigma)
    with pytest.raises(ValueError, match="sigma is not symmetric"):
        FrechetReference.from_stats(np.zeros(2), np.eye(2)).distance(np.zeros(2), [[1.0, 0.5], [0.0, 1.0]])
    # a float32 covariance of correlated features: its round-off eigenvalue (-3.6e-6) is below
    # -1e-6 × its largest diagonal entry but within -1e-6 × its largest eigenvalue, the rule the
    # reference's covariance has; it was refused in the sigma2 place only (helper-135)
    torch.manual_seed(0)
    f = torch.randn(200, 1) + 0.1 * torch.randn(200, 512) + 5
    g = torch.randn(200, 1) + 0.1 * torch.randn(200, 512) + 5.01
    sf, sg = torch.cov(f.T), torch.cov(g.double().T)
    assert frechet_distance_from_stats(g.mean(0), sg, f.mean(0), sf) == pytest.approx(
        frechet_distance_from_stats(f.mean(0), sf, g.mean(0), sg), rel=1e-3)   # round-off in either place
    # round-off below 1e-6 of the largest entry is a covariance: diag(1, 0) against I is 1
    assert FrechetReference.from_stats(np.zeros(2), np.eye(2)).distance(
        np.zeros(2), np.diag([1.0, -1e-12])) == pytest.approx(1.0)


def test_feature_statistics_leave_float64_features_as_they_were():
    # each chunk is centred in place on its own float64 copy; for float64 features .to(float64)
    # alone would be a view, and the caller's features would come back shifted
    feats = torch.randn(300, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 5.0
    kept = feats.clone()
    mean, cov = feature_statistics(feats, chunk=64)
    assert torch.equal(feats, kept)
    np.testing.assert_allclose(mean, kept.numpy().mean(0), rtol=1e-14)
    np.testing.assert_allclose(cov, np.cov(kept.numpy(), rowvar=False), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scale", [1e-170, 1e-100, 1e-12, 1.0, 1e100, 1e200])
def test_a_prepared_reference_measures_statistics_of_any_magnitude(scale):
    # commuting covariances, so d² = ‖Δμ‖² + Σ(√a − √b)². cov^½ Σ cov^½ grows as the scale
    # squared: it underflowed at 1e-170 (the trace term read 0, d² 1.2e-199 for 2.7e-201) and
    # overflowed from 1e160 (LinAlgError), where frechet_distance_from_stats scales first.
    # The reference is frechet_distance_from_stats with (mean, cov) in the first place, so the
    # two agree exactly at every magnitude
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0])
    mu1, mu2 = np.array([0.5, 0.0, -1.0]), np.array([0.0, 0.25, -1.0])
    s1, s2 = np.diag(a) * scale, np.diag(b) * scale
    m1, m2 = mu1 * math.sqrt(scale), mu2 * math.sqrt(scale)
    expected = scale * (((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = FrechetReference.from_stats(m1, s1).distance(m2, s2)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == frechet_distance_from_stats(m1, s1, m2, s2)


def test_rank_deficient_covariances_against_the_closed_form_and_scipys_sqrtm():
    # covariances sharing eigenvectors Q but of ranks 7 and 4 of 12 (their null spaces overlap in
    # part): d² = ‖Δμ‖² + Σ(√a − √b)² exactly; scipy's float64 sqrtm of the singular product
    # Σ₁Σ₂ is good to about √ε too
    rng = np.random.default_rng(13)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    a = np.r_[rng.uniform(0.5, 4.0, 7), np.zeros(5)]
    b = np.r_[np.zeros(3), rng.uniform(0.5, 4.0, 4), np.zeros(5)]
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    via_sqrtm = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    for got in (frechet_distance_from_stats(mu1, s1, mu2, s2), frechet_distance_from_stats(mu2, s2, mu1, s1),
                FrechetReference.from_stats(mu1, s1).distance(mu2, s2)):
        assert got == pytest.approx(expected, rel=2e-8)      # √(ε λ) of 5 null eigenvalues: 3e-9 here
        assert got == pytest.approx(via_sqrtm, rel=1e-7)
    assert frechet_distance_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-7 * a.sum())


@pytest.mark.parametrize("n_real, n_fake", [(9, 25), (25, 9)])
def test_precision_recall_at_the_largest_k_is_the_float64_brute_force(n_real, n_fake):
    # k = min(N_r, N_f) − 1, the largest the smaller set allows: its balls reach its farthest
    # other point, the larger set's stop short of theirs; one past it is refused naming the range
    rng = np.random.default_rng(17)
    real = rng.normal(size=(n_real, 3))
    fake = rng.normal(size=(n_fake, 3)) * 2.0 + 1.0
    k = min(n_real, n_fake) - 1
    want_p, want_r = _float64_brute_force(real, fake, k)
    got = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, chunk=4, batch_chunk=3)
    np.testing.assert_array_equal(got.fake_in_real.numpy(), want_p)
    np.testing.assert_array_equal(got.real_in_fake.numpy(), want_r)
    assert got.precision == want_p.mean() and got.recall == want_r.mean()
    assert 0.0 < got.precision < 1.0                                    # not a trivial case
    with pytest.raises(ValueError, match=rf"k must be an integer in \[1, {k}\]"):
        precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k + 1)


@pytest.mark.parametrize("n", [500, 3000])
def test_sets_in_a_low_dimensional_subspace_against_their_own_coordinates(n):
    # more rows than features, all in an 8-dimensional subspace of 300 features: the 292 zero
    # eigenvalues of cov^½ Σ cov^½ came out as round-off of about ε·λ_max, whose square roots
    # summed read d² 1.0e-5 relative low; the distance is that of the 8 coordinates (an orthonormal
    # basis Q keeps means, traces and the trace term), measured in float64 in 8 dimensions
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((300, 8)))
    za = rng.standard_normal((n, 8)) * np.linspace(1.0, 3.0, 8)
    zb = rng.standard_normal((n, 8)) * np.linspace(1.2, 2.5, 8) + 0.1
    m1, m2, s1, s2 = za.mean(0), zb.mean(0), np.cov(za, rowvar=False), np.cov(zb, rowvar=False)
    root = scipy.linalg.sqrtm(s1).real
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(root @ s2 @ root)).sum()
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    a, b = za @ q.T, zb @ q.T
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)).value == pytest.approx(expected, rel=1e-11)
    lifted = (m1 @ q.T, q @ s1 @ q.T, m2 @ q.T, q @ s2 @ q.T)
    assert frechet_distance_from_stats(*lifted) == pytest.approx(expected, rel=1e-11)
    assert FrechetReference.from_stats(*lifted[:2]).rank == 8


@pytest.mark.parametrize("n", [500, 3000])
def test_a_rank_deficient_second_set_against_its_own_coordinates(n):
    # a set in 8 dimensions of 300 against itself plus noise of sd 1e-3 in all 300: only the
    # reference's (the first set's) rank was used, so with the deficient set second the 292
    # round-off eigenvalues of cov^½ Σ cov^½ read d² (2.9e-4) low by 1.2e-5 (4 %). The
    # trace term's non-zero eigenvalues are those of S^½ (Qᵀ Σ_b Q) S^½ in the 8 coordinates
    # (Σ_a = Q S Qᵀ), measured there in float64
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((300, 8)))
    za = rng.standard_normal((n, 8)) * np.linspace(1.0, 3.0, 8)
    a = za @ q.T
    b = a + 1e-3 * rng.standard_normal((n, 300))
    m_a, s_a, m_b, s_b = za.mean(0) @ q.T, np.cov(za, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a).real
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(root @ (q.T @ s_b @ q) @ root)).sum()
    expected = ((m_a - m_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt
    assert 2e-4 < expected < 4e-4
    lifted = (m_a, q @ s_a @ q.T, m_b, s_b)
    for got in (frechet_distance(torch.from_numpy(a), torch.from_numpy(b)).value,
                frechet_distance(torch.from_numpy(b), torch.from_numpy(a)).value,
                frechet_distance_from_stats(*lifted), frechet_distance_from_stats(*lifted[2:], *lifted[:2]),
                FrechetReference.from_stats(*lifted[2:]).distance(*lifted[:2])):
        assert got == pytest.approx(expected, rel=1e-9)                  # 1.5e-10 here; 4 % low before


def test_ball_tests_keep_each_buffer_within_the_budget_and_decide_as_the_float64_brute_force(monkeypatch):
    # the ball tests' buffers were chunk × D (the centred reference chunk), batch_chunk × D × 8
    # (the queries' float64 scratch) and batch_chunk × chunk × 8 (the distance block): about 245 MiB
    # at D = 3,072 with the default blocks, whatever the budget. Here a 64 KiB budget at D = 40
    # (float32: 409 reference rows at most, 204 query rows, and blocks of 64 KiB)
    from kinetic_fm.metrics import fidelity

    budget, dim = 64 << 10, 40
    monkeypatch.setattr(fidelity, "BALL_TEST_BYTES", budget, raising=False)
    seen, blocks = [], fidelity.sq_distance_blocks

    def spied(x, y, *, chunk, batch_chunk):
        seen.append((chunk, batch_chunk))
        for q0, c0, d2 in blocks(x, y, chunk=chunk, batch_chunk=batch_chunk):
            seen.append(d2.shape)
            yield q0, c0, d2

    monkeypatch.setattr(fidelity, "sq_distance_blocks", spied)
    rng = np.random.default_rng(21)
    real = rng.integers(0, 3, (900, dim)).astype(np.float32)      # ties at the balls' edges
    fake = rng.integers(0, 3, (700, dim)).astype(np.float32) + (rng.random((700, dim)) < 0.05)
    want_p, want_r = _float64_brute_force(real, fake, 3)
    got = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3)
    (chunk, batch_chunk), shapes = seen[0], seen[1:]
    assert chunk * dim * 4 <= budget and batch_chunk * dim * 8 <= budget and chunk * batch_chunk * 8 <= budget
    assert len(shapes) > 1 and max(rows * cols for rows, cols in shapes) * 8 <= budget
    np.testing.assert_array_equal(got.fake_in_real.numpy(), want_p)
    np.testing.assert_array_equal(got.real_in_fake.numpy(), want_r)
    assert 0.0 < got.precision < 1.0 and 0.0 < got.recall < 1.0


def _rows_cases(dim: int):
    """(label, (n, dim) rows) for the rows route: random, bootstrap-like resamples (rows repeated)
    and rows in a 5-dimensional subspace, at n from 3 to 2 D."""
    rng = np.random.default_rng(11)
    basis = rng.standard_normal((5, dim))
    for n in (3, dim // 2, dim - 1, dim, dim + 1, 2 * dim):
        rows = rng.standard_normal((n, dim)) * np.linspace(0.5, 2.0, dim) + 0.3
        yield f"random n={n}", rows
        yield f"resampled n={n}", rows[rng.integers(0, n, n)]
        yield f"subspace n={n}", rng.standard_normal((n, 5)) @ basis + 0.1


@pytest.mark.parametrize("deficient_reference", [False, True])
def test_distance_of_rows_is_the_distance_of_their_statistics(deficient_reference):
    # the studies' bootstrap FDs took np.cov of each resample and the D × D route with its checks;
    # the rows route reads Σ's rank and the trace term from k × k Gram matrices of the k ≤ D distinct
    # rows (the same non-zero eigenvalues), and must give the statistics' distance
    dim = 32
    rng = np.random.default_rng(12)
    ref_rows = rng.standard_normal((4 * dim, dim))
    if deficient_reference:
        ref_rows = ref_rows[:, :12] @ rng.standard_normal((12, dim))
    reference = FrechetReference.from_stats(ref_rows.mean(0), np.cov(ref_rows, rowvar=False))
    for label, rows in _rows_cases(dim):
        expected = reference.distance(rows.mean(0), np.cov(rows, rowvar=False))
        assert reference.distance_of_rows(rows) == pytest.approx(expected, rel=1e-10), label
        # far from unit scale both sides are scaled by the same power of two (exact)
        tiny = FrechetReference.from_stats(reference.mean * 2.0 ** -300, reference.cov * 2.0 ** -600)
        assert tiny.distance_of_rows(rows * 2.0 ** -300) == pytest.approx(expected * 2.0 ** -600, rel=1e-10), label


def test_the_rank_of_rows_from_their_gram_matrix_is_that_of_their_covariance():
    from kinetic_fm.metrics.fidelity import _covariance_factor, _factor_rank, _numerical_rank

    dim = 32
    for label, rows in _rows_cases(dim):
        sigma = np.cov(rows, rowvar=False)
        y = _covariance_factor(rows, rows.mean(0))
        distinct = np.unique(rows, axis=0).shape[0]
        if distinct > dim:
            assert y is None, label
            continue
        assert y.shape == (distinct, dim), label
        np.testing.assert_allclose(y.T @ y, sigma, rtol=0, atol=1e-13 * np.abs(sigma).max(), err_msg=label)
        assert _factor_rank(y, dim) == _numerical_rank(sigma), label


def test_distance_of_rows_names_its_rows_when_they_do_not_fit():
    reference = FrechetReference.from_stats(np.zeros(3), np.eye(3))
    for rows in (np.ones((1, 3)), np.ones((4, 2)), np.ones(3), [[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]]):
        with pytest.raises(ValueError, match="rows"):
            reference.distance_of_rows(rows)
