"""kNN and KDE local support against float64 brute force and a known Gaussian-mixture density."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import stats as sps
from scipy.special import gammaln, logsumexp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kinetic_fm.metrics.density import (
    kde_log_density,
    knn_log_density,
    local_support,
    median_bandwidth,
    scott_bandwidth,
    sq_distance_blocks,
)


def _brute_sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _torch_root(d2: np.ndarray) -> np.ndarray:
    """The square root torch takes of exact squared distances: not always the correctly rounded one
    (torch 2.13.0+cpu gives sqrt(2) one ulp below NumPy's and math's, in about 0.7 % of float64
    values), so a brute force that checks radii bit for bit takes the library's root of its squares."""
    return torch.from_numpy(np.ascontiguousarray(d2)).sqrt().numpy()


def _brute_kde(x, y, h, exclude_self=False):
    d2 = _brute_sq_dist(x, y)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    n = y.shape[0] - (1 if exclude_self else 0)
    dim = x.shape[1]
    return logsumexp(-d2 / (2 * h * h), axis=1) - math.log(n) - 0.5 * dim * math.log(2 * math.pi * h * h)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 6, generator=g, dtype=torch.float64) * 2 + 5.0
    y = torch.randn(211, 6, generator=g, dtype=torch.float64) * 2 + 5.0
    return x, y


def test_knn_radii_match_brute_force(data):
    x, y = data
    sup = local_support(x, y, k=5, ks=(1, 10), chunk=50, batch_chunk=8)
    d = np.sqrt(np.sort(_brute_sq_dist(x.numpy(), y.numpy()), axis=1))
    assert sup.ks == (1, 5, 10)
    for k in (1, 5, 10):
        np.testing.assert_allclose(sup.radius_at(k).numpy(), d[:, k - 1], rtol=1e-12)
    assert sup.radius.dtype == torch.float64
    assert torch.equal(sup.radius, sup.radius_at(5))
    # the log form of p = k / (N V_D r^D)
    dim, n = 6, 211
    log_vd = dim / 2 * math.log(math.pi) - gammaln(dim / 2 + 1)
    expected = math.log(5) - math.log(n) - log_vd - dim * np.log(d[:, 4])
    np.testing.assert_allclose(sup.log_density.numpy(), expected, rtol=1e-12)
    frame = sup.to_frame()
    assert list(frame.columns) == ["knn_radius_k1", "knn_radius_k5", "knn_radius_k10",
                                   "knn_log_density_k1", "knn_log_density_k5", "knn_log_density_k10"]
    with pytest.raises(ValueError, match="not computed"):
        sup.radius_at(3)


def test_knn_leave_one_out_and_feature_space(data):
    _, y = data
    sup = local_support(y, y, k=3, ks=(), exclude_self=True)
    d2 = _brute_sq_dist(y.numpy(), y.numpy())
    np.fill_diagonal(d2, np.inf)
    np.testing.assert_allclose(sup.radius.numpy(), np.sqrt(np.sort(d2, 1)[:, 2]), rtol=1e-12)
    assert sup.n_reference == 210

    net = torch.nn.Linear(6, 3).double()
    sup_net = local_support(y[:20], y, k=2, ks=(), space=net)
    with torch.no_grad():
        fx, fy = net(y[:20]), net(y)
    np.testing.assert_allclose(sup_net.radius.numpy(),
                               np.sqrt(np.sort(_brute_sq_dist(fx.numpy(), fy.numpy()), 1)[:, 1]),
                               rtol=1e-10)
    assert sup_net.space == "Linear" and sup_net.dim == 3


@pytest.mark.parametrize("bandwidth", ["scott", "median", 0.7])
def test_kde_matches_brute_force_float64(data, bandwidth):
    x, y = data
    kde = kde_log_density(x, y, bandwidth, chunk=40, batch_chunk=7)
    h = kde.bandwidth
    if bandwidth == "scott":
        sigma = np.sqrt(y.numpy().var(axis=0, ddof=1).mean())
        assert h == pytest.approx(sigma * 211 ** (-1 / 10), rel=1e-12)
    elif bandwidth == "median":
        ref = np.sqrt(_brute_sq_dist(y.numpy(), y.numpy()))[np.triu_indices(211, 1)]
        assert h == pytest.approx(np.median(ref), rel=1e-12)
    else:
        assert h == 0.7 and kde.rule == "given"
    np.testing.assert_allclose(kde.log_density.numpy(), _brute_kde(x.numpy(), y.numpy(), h),
                               rtol=1e-10, atol=1e-10)
    assert kde.log_density.dtype == torch.float64


def test_kde_chunking_invariance_and_leave_one_out(data):
    _, y = data
    dense = kde_log_density(y, y, 0.9, exclude_self=True, chunk=10_000, batch_chunk=10_000)
    chunked = kde_log_density(y, y, 0.9, exclude_self=True, chunk=13, batch_chunk=16)
    torch.testing.assert_close(dense.log_density, chunked.log_density, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dense.log_density.numpy(),
                               _brute_kde(y.numpy(), y.numpy(), 0.9, exclude_self=True), rtol=1e-10)
    # batch invariance: a sample's value does not depend on who else is in the batch
    single = kde_log_density(y[5:6], y, 0.9)
    full = kde_log_density(y, y, 0.9)
    assert single.log_density[0].item() == pytest.approx(full.log_density[5].item(), rel=1e-12)


@pytest.mark.parametrize("blas", ["torch", "numpy"])
def test_kde_float32_inputs_far_from_origin(blas, fixed_blas):
    # float32 GEMM on a large offset: centring keeps the error small, through either CPU BLAS
    used = fixed_blas(blas)
    g = torch.Generator().manual_seed(1)
    y = torch.randn(500, 16, generator=g) + 1000.0
    x = torch.randn(50, 16, generator=g) + 1000.0
    kde = kde_log_density(x, y, 0.5, chunk=64, batch_chunk=16)       # partial last blocks both ways
    ref = _brute_kde(x.double().numpy(), y.double().numpy(), 0.5)
    np.testing.assert_allclose(kde.log_density.numpy(), ref, rtol=0, atol=1e-4)
    own = kde_log_density(y, y, 0.5, exclude_self=True, chunk=64, batch_chunk=48)
    ref = _brute_kde(y.double().numpy(), y.double().numpy(), 0.5, exclude_self=True)
    np.testing.assert_allclose(own.log_density.numpy(), ref, rtol=0, atol=1e-4)
    d2 = torch.zeros(50, 500, dtype=torch.float64)
    for q0, c0, block in sq_distance_blocks(x, y, chunk=64, batch_chunk=16):
        d2[q0:q0 + block.shape[0], c0:c0 + block.shape[1]] = block
    np.testing.assert_allclose(d2.numpy(), _brute_sq_dist(x.double().numpy(), y.double().numpy()),
                               rtol=0, atol=2e-3)                    # ‖x − y‖² ≈ 32 here
    assert set(used) == {blas}


def test_sq_distance_blocks_in_small_cache_blocks_match_brute_force(monkeypatch):
    # cache blocks of 3 rows: the centring and the float64 pass run in many partial row blocks
    from kinetic_fm import blocks

    monkeypatch.setattr(blocks, "CPU_BLOCK_BYTES", 3 * 8 * 64)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(203, 64, generator=g, dtype=torch.float64) + 5.0
    x = torch.randn(37, 64, generator=g, dtype=torch.float64) + 5.0
    y_before = y.clone()
    d2 = torch.zeros(37, 203, dtype=torch.float64)
    seen = []
    for q0, c0, block in sq_distance_blocks(x, y, chunk=64, batch_chunk=16):
        d2[q0:q0 + block.shape[0], c0:c0 + block.shape[1]] = block
        seen.append((q0, c0))
    assert len(seen) == 3 * 4
    np.testing.assert_allclose(d2.numpy(), _brute_sq_dist(x.numpy(), y.numpy()), rtol=1e-12, atol=1e-10)
    assert torch.equal(y, y_before)  # float64 inputs are centred into a copy, never in place


class _LargestTemporary(TorchDispatchMode):
    """Records the largest storage (bytes) that an op makes while active, the inputs' own excepted."""

    def __init__(self, *inputs: torch.Tensor):
        super().__init__()
        self.inputs = {t.untyped_storage().data_ptr() for t in inputs}
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_reference_is_centred_a_chunk_at_a_time_not_copied_whole(monkeypatch, fixed_blas, dtype):
    # a centred copy of the whole reference was as large as the reference again (586 MiB for
    # CIFAR-10's training images); now one chunk is: no temporary reaches half the reference
    # (precision_recall's ball tests are a sweep of these blocks)
    from kinetic_fm import blocks

    fixed_blas("torch")
    monkeypatch.setattr(blocks, "CPU_BLOCK_BYTES", 50 * 8 * 128)     # cache blocks of 50 rows
    g = torch.Generator().manual_seed(3)
    # 1M values: the set metrics' range check copies 100,000 of each set (0.8 MB in float64)
    y = (torch.randn(8000, 128, generator=g, dtype=torch.float64) + 100.0).to(dtype)
    x = (torch.randn(70, 128, generator=g, dtype=torch.float64) + 100.0).to(dtype)
    half = y.numel() * y.element_size() // 2
    kw = {"chunk": 512, "batch_chunk": 32}
    with _LargestTemporary(x, y) as seen:
        order = [(q0, c0) for q0, c0, _ in sq_distance_blocks(x, y, **kw)]
    assert 0 < seen.largest < half, (seen.largest, half)
    # reference chunks outside, query blocks inside: each chunk is centred once
    assert order == [(q0, c0) for c0 in range(0, 8000, 512) for q0 in (0, 32, 64)]
    for queries in (x, y[:600]):   # fewer rows than a chunk (kept centred), more (centred per chunk)
        with _LargestTemporary(x, y) as seen:
            kde_log_density(queries, y, 3.0, **kw)
        assert 0 < seen.largest < half, (seen.largest, half)


@pytest.mark.parametrize("budget_rows", [1, 3, 7, 64, 10_000])
@pytest.mark.parametrize("e", [0, -40])
def test_centred_chunks_equal_a_whole_centred_copy_bit_for_bit(monkeypatch, budget_rows, e):
    # the chunks, and the norms summed in the cache blocks that straddle them, are those of the
    # whole centred copy the code made before (summed by cache block from row 0)
    from kinetic_fm import blocks
    from kinetic_fm.exact_scaling import times_power_of_two
    from kinetic_fm.knn import column_mean
    from kinetic_fm.metrics.density import _CentredReference

    dim = 5
    monkeypatch.setattr(blocks, "CPU_BLOCK_BYTES", budget_rows * 8 * dim)
    g = torch.Generator().manual_seed(4)
    y = torch.randn(203, dim, generator=g, dtype=torch.float64) * 1e-3 + 7.0
    for dtype in (torch.float32, torch.float64):
        rows = blocks.block_size(y.device, 8 * dim, y.shape[0])
        centre = column_mean(y, rows)
        whole = times_power_of_two(y - centre, e).to(dtype)
        norms = torch.cat([whole[r:r + rows].double().pow(2).sum(dim=1) for r in range(0, 203, rows)])
        for chunk in (1, 4, 7, 50, 203, 500):
            reference = _CentredReference(y, dtype, centre, e)
            for c0 in range(0, 203, chunk):
                part = reference.chunk(c0, min(c0 + chunk, 203))
                assert torch.equal(part, whole[c0:c0 + chunk]), (chunk, c0)
                assert torch.equal(reference.sq_norms[c0:c0 + chunk], norms[c0:c0 + chunk]), (chunk, c0)
            assert torch.equal(_CentredReference(y, dtype, centre, e).all_sq_norms(), norms)


def test_kde_tiny_bandwidth_is_finite_and_nearest_dominated(data):
    x, y = data
    kde = kde_log_density(x, y, 1e-3)
    assert torch.isfinite(kde.log_density).all()
    d1 = np.sqrt(np.sort(_brute_sq_dist(x.numpy(), y.numpy()), 1)[:, 0])
    # far from every reference: log p ≈ -d1²/(2h²) + const, exactly the brute-force value
    np.testing.assert_allclose(kde.log_density.numpy(), _brute_kde(x.numpy(), y.numpy(), 1e-3),
                               rtol=1e-9)
    assert np.argmax(kde.log_density.numpy()) == np.argmin(d1)


def _mixture():
    means = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    scales = np.array([0.7, 1.2, 0.5])
    weights = np.array([0.5, 0.3, 0.2])
    return means, scales, weights


def _mixture_sample(rng, n):
    means, scales, weights = _mixture()
    comp = rng.choice(3, size=n, p=weights)
    return means[comp] + scales[comp, None] * rng.normal(size=(n, 2))


def _mixture_log_density(x):
    means, scales, weights = _mixture()
    comps = [np.log(w) + sps.multivariate_normal(m, s * s * np.eye(2)).logpdf(x)
             for m, s, w in zip(means, scales, weights)]
    return logsumexp(np.stack(comps), axis=0)


def test_kde_and_knn_rank_a_gaussian_mixture_like_its_true_density():
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(_mixture_sample(rng, 5000))
    x = _mixture_sample(rng, 1000)
    truth = _mixture_log_density(x)
    kde = kde_log_density(torch.from_numpy(x), ref, "scott")
    rho_kde = sps.spearmanr(kde.log_density.numpy(), truth).statistic
    assert rho_kde >= 0.95
    sup = local_support(torch.from_numpy(x), ref, k=10, ks=())
    rho_knn = sps.spearmanr(sup.log_density.numpy(), truth).statistic
    assert rho_knn >= 0.9
    # the KDE is a density: on average it is close to the truth (same units)
    assert abs(float(kde.log_density.mean()) - truth.mean()) < 0.2


def test_bandwidth_rules_and_errors(data):
    x, y = data
    assert scott_bandwidth(y) > 0 and median_bandwidth(y) > 0
    sub = median_bandwidth(y, max_points=50, seed=3)
    assert sub == pytest.approx(median_bandwidth(y), rel=0.3)
    four = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    pairs = sorted(torch.pdist(four).tolist())                   # 6 pairs: the middle two averaged
    assert median_bandwidth(four) == pytest.approx((pairs[2] + pairs[3]) / 2, rel=1e-15)
    assert median_bandwidth(four + 1e7) == pytest.approx(median_bandwidth(four), rel=1e-9)
    # most pairs duplicates (6 of 10 at distance 0), the references not all one: the median rule's
    # 0 was refused asking "are all references identical?"
    mostly = torch.tensor([[0.0, 0.0]] * 4 + [[1.0, 2.0]], dtype=torch.float64)
    assert median_bandwidth(mostly) == 0.0 and scott_bandwidth(mostly) > 0
    with pytest.raises(ValueError, match=r"more than half of the pairs of references .* are identical, so the "
                                         r"median distance is 0; use bandwidth='scott' or a number$"):
        kde_log_density(mostly[:2], mostly, "median")
    with pytest.raises(ValueError, match=r"are all references identical\?$"):
        kde_log_density(mostly[:2], mostly[:4], "scott")
    with pytest.raises(ValueError, match="bandwidth"):
        kde_log_density(x, y, "silverman")
    with pytest.raises(ValueError, match="bandwidth"):
        kde_log_density(x, y, -1.0)
    with pytest.raises(ValueError, match="feature sizes"):
        kde_log_density(x[:, :3], y)
    with pytest.raises(ValueError, match="non-finite"):
        local_support(torch.full((2, 6), math.nan, dtype=torch.float64), y)
    with pytest.raises(ValueError, match="exceeds"):
        local_support(x, y[:4], k=5, ks=())
    with pytest.raises(ValueError, match=r"largest k \(10, of k=3 and ks=\(1, 5, 10\)\) exceeds the 8"):
        local_support(x, y[:8], k=3, ks=(1, 5, 10))   # explicit ks are not clipped (the default ks are)
    assert local_support(x, y[:8], k=3, ks=()).ks == (3,)


def test_wide_integer_inputs_are_measured_exactly():
    # float32 holds integers exactly only up to 2^24: int64 points near 2^25 that are 1 apart
    # read as 0 apart there (radius 0, log-density +inf; property audit F1)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 12, size=(40, 3)) + 2**25
    x = rng.integers(0, 12, size=(9, 3)) + 2**25
    d = np.sqrt(np.sort(_brute_sq_dist((x - 2**25).astype(float), (y - 2**25).astype(float)), 1))
    support = local_support(torch.from_numpy(x), torch.from_numpy(y), k=3, ks=())
    assert np.allclose(support.radius.numpy(), d[:, 2], rtol=1e-12, atol=0)
    kde = kde_log_density(torch.from_numpy(x), torch.from_numpy(y), bandwidth=1.5)
    expected = _brute_kde((x - 2**25).astype(float), (y - 2**25).astype(float), 1.5)
    assert np.allclose(kde.log_density.numpy(), expected, rtol=1e-12, atol=1e-12)


# --- input validation (audit D1, D4, D12, D13, D16, C12, C13) --------------------------------

@pytest.mark.parametrize("kwargs,name", [
    ({"k": 2.7}, "k"), ({"k": "3"}, "k"), ({"k": True}, "k"), ({"k": None}, "k"),
    ({"ks": "15"}, "ks"), ({"ks": (2.7,)}, "ks"), ({"ks": 5}, "ks"), ({"ks": (True,)}, "ks"),
    ({"exclude_self": "no"}, "exclude_self"), ({"chunk": True}, "chunk"), ({"batch_chunk": True}, "batch_chunk"),
])
def test_local_support_refuses_non_integer_counts_and_non_bool_flags(data, kwargs, name):
    x, y = data
    with pytest.raises(ValueError, match=rf"^{name} must"):
        local_support(x, y, **kwargs)


def test_local_support_accepts_numpy_and_0d_tensor_counts(data):
    x, y = data
    got = local_support(x, y, k=np.int64(3), ks=(torch.tensor(2), np.int32(4)))
    assert got.ks == (2, 3, 4) and got.k == 3
    torch.testing.assert_close(got.radius, local_support(x, y, k=3, ks=()).radius, rtol=0, atol=0)


def test_local_support_refuses_rows_that_overflow_float32(data):
    x, y = data
    with pytest.raises(ValueError, match="samples holds values up to .*float64"):
        local_support(x.float() * 1e20, y.float() * 1e20)


def test_local_support_refuses_complex_and_empty_samples(data):
    x, y = data
    with pytest.raises(ValueError, match="samples must hold real numbers"):
        local_support(x.to(torch.complex128), y)
    with pytest.raises(ValueError, match="samples must hold at least one sample"):
        local_support(x[:0], y)


@pytest.mark.parametrize("bandwidth", [True, None, [0.5], float("nan"), float("inf"), 0.0, -1.0, "silverman"])
def test_kde_bandwidth_must_be_a_rule_or_positive_finite_number(data, bandwidth):
    x, y = data
    with pytest.raises(ValueError, match="^bandwidth must be"):
        kde_log_density(x, y, bandwidth)


def test_an_unknown_bandwidth_rule_gets_the_same_words_as_a_bad_number(data):
    # the unknown rule's own branch said "a positive float", the first check "a positive finite number"
    x, y = data
    with pytest.raises(ValueError, match=r"^bandwidth must be 'scott', 'median' or a positive finite number, "
                                         r"got 'silverman'$"):
        kde_log_density(x, y, "silverman")


@pytest.mark.parametrize("h", [1e-150, 1e-300])
def test_kde_bandwidth_too_small_for_the_data_is_refused_not_nan(data, h):
    x, y = data
    with pytest.raises(ValueError, match="bandwidth .* too small .* use a bandwidth >="):
        kde_log_density(x.float(), y.float(), h)


def test_kde_huge_bandwidth_is_finite_and_matches_the_flat_kernel_limit(data):
    # h² overflowed (h = 1e300), giving -inf; the kernel is flat there: log p = -D log(sqrt(2π) h)
    x, y = data
    got = kde_log_density(x, y, 1e300).log_density
    want = -x.shape[1] * (0.5 * math.log(2 * math.pi) + math.log(1e300))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_kde_bandwidth_as_numpy_scalar_or_0d_tensor(data):
    x, y = data
    want = _brute_kde(x.numpy(), y.numpy(), 0.5)
    for h in (np.float32(0.5), torch.tensor(0.5), 1):
        h_val = float(h)
        np.testing.assert_allclose(kde_log_density(x, y, h).log_density.numpy(),
                                   _brute_kde(x.numpy(), y.numpy(), h_val), rtol=1e-9)
    assert want.shape == (x.shape[0],)


@pytest.mark.parametrize("kwargs,name", [
    ({"seed": -1}, "seed"), ({"seed": 2.7}, "seed"), ({"seed": "a"}, "seed"), ({"seed": True}, "seed"),
    ({"chunk": True}, "chunk"), ({"chunk": 2.5}, "chunk"), ({"batch_chunk": None}, "batch_chunk"),
    ({"exclude_self": "no"}, "exclude_self"),
])
def test_kde_refuses_bad_counts_seeds_and_flags(data, kwargs, name):
    x, y = data
    with pytest.raises(ValueError, match=rf"^{name} must"):
        kde_log_density(x, y, **kwargs)


def test_kde_reference_features_checked_against_reference_and_numpy_accepted(data):
    x, y = data
    with pytest.raises(ValueError, match="reference_features has 7 rows but reference has 211"):
        kde_log_density(x, y, 0.5, reference_features=y[:7])
    with pytest.raises(ValueError, match=r"reference_features must have shape \(N, D\)"):
        kde_log_density(x, y, 0.5, reference_features=y[:, :, None])
    bad = y.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="reference_features has non-finite"):
        kde_log_density(x, y, 0.5, reference_features=bad)
    got = kde_log_density(x, y, 0.5, reference_features=y.numpy()).log_density
    np.testing.assert_allclose(got.numpy(), _brute_kde(x.numpy(), y.numpy(), 0.5), rtol=1e-9)
    as_list = kde_log_density(x, y, 0.5, reference_features=y.tolist()).log_density  # rows as a list
    np.testing.assert_allclose(as_list.numpy(), got.numpy(), rtol=1e-12)


def test_non_finite_rows_are_named_and_large_finite_rows_pass():
    """as_features screens with row sums: NaN, ±inf and inf − inf rows are found exactly; a finite
    float32 row whose sum overflows is a suspect, tested element-wise, and accepted."""
    from kinetic_fm.metrics.features import as_features

    x = torch.zeros(6, 4)
    x[1, 2], x[3] = float("nan"), torch.tensor([float("inf"), -float("inf"), 0.0, 0.0])
    with pytest.raises(ValueError, match=r"samples has non-finite features in rows \[1, 3\]$"):
        as_features(x, None, argument="samples")
    big = torch.full((2, 4), 3e38)  # finite entries, overflowing row sum
    assert torch.equal(as_features(big, None, argument="samples"), big)


def test_scotts_rule_by_column_blocks_equals_the_whole_set_formula():
    from kinetic_fm.metrics.density import scott_bandwidth

    g = torch.Generator().manual_seed(0)
    for n, dim in ((300, 7), (5000, 1000)):  # one block, and several (4M values per block)
        y = torch.randn(n, dim, generator=g) * torch.linspace(0.1, 3, dim)
        whole = y.double().var(dim=0).mean().sqrt().item() * n ** (-1.0 / (dim + 4))
        assert scott_bandwidth(y) == pytest.approx(whole, rel=1e-14)


def test_inputs_that_require_grad_are_measured_as_their_values(data):
    x, y = data
    want_kde = kde_log_density(x, y, "scott").log_density
    want_knn = local_support(x, y, k=3).radius
    for xs, ys in ((x.clone().requires_grad_(), y), (x, y.clone().requires_grad_())):
        assert torch.equal(kde_log_density(xs, ys, "scott").log_density, want_kde)
        assert torch.equal(local_support(xs, ys, k=3).radius, want_knn)


# --- gaps found by the mutation audit (briefs18 G) --------------------------------------------

def test_local_support_nearest_is_the_brute_force_nearest_reference(data):
    x, y = data
    support = local_support(x, y, k=5, ks=(1, 10))
    d2 = _brute_sq_dist(x.numpy(), y.numpy())
    assert support.nearest.tolist() == d2.argmin(axis=1).tolist()
    np.testing.assert_allclose(support.radius_at(1).numpy(), np.sqrt(d2.min(axis=1)), rtol=1e-12)


def test_median_heuristic_subsamples_only_above_max_points(data):
    # 211 references: a 50-row subset depends on the seed, all 211 do not
    _, y = data
    assert median_bandwidth(y, max_points=50, seed=3) != median_bandwidth(y, max_points=50, seed=4)
    assert median_bandwidth(y, max_points=211, seed=3) == median_bandwidth(y, max_points=211, seed=4)
    assert median_bandwidth(y, max_points=211) == pytest.approx(float(np.median(torch.pdist(y).numpy())), rel=1e-12)


def test_a_zero_bandwidth_is_refused_as_a_given_value(data):
    # not with the hint meant for a rule's bandwidth of 0 ("are all references identical?")
    x, y = data
    message = r"^bandwidth must be 'scott', 'median' or a positive finite number, got 0\.0$"
    with pytest.raises(ValueError, match=message):
        kde_log_density(x, y, 0.0)


@pytest.mark.parametrize("dtype,power", [(torch.float32, -140), (torch.float64, -1040)])
def test_kde_of_subnormal_data_is_its_unit_copys_shifted(dtype, power):
    # a bandwidth below 2**-1022 asked for 2.0**1050 (OverflowError); integer coordinates times
    # 2**power are exact subnormals, and h = 2**power·h_unit keeps the exponents unchanged
    g = torch.Generator().manual_seed(5)
    y_units = torch.randint(0, 20, (60, 2), generator=g).double()
    x_units = torch.randint(0, 20, (4, 2), generator=g).double()
    unit = kde_log_density(x_units, y_units, bandwidth=3.0).log_density
    scaled = kde_log_density((x_units * 2.0 ** power).to(dtype), (y_units * 2.0 ** power).to(dtype),
                             bandwidth=math.ldexp(3.0, power))
    torch.testing.assert_close(scaled.log_density, unit - 2 * power * math.log(2.0), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("dtype,power", [(torch.float32, -66), (torch.float32, 60), (torch.float64, -520)])
def test_kde_is_scale_equivariant_at_any_scale_the_dtype_holds(dtype, power):
    # log p(s·x; s·Y, s·h) = log p(x; Y, h) − D log s. With s = 2**power every input scales
    # exactly; float32 data at 1e-20 gave NaN (1/h² ≈ 4e40 overflowed float32), without a word
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 4, generator=g, dtype=dtype), torch.randn(200, 4, generator=g, dtype=dtype)
    unit = kde_log_density(x, y, bandwidth=0.8)
    s = 2.0 ** power
    scaled = kde_log_density(x * s, y * s, bandwidth=0.8 * s)
    assert scaled.bandwidth == 0.8 * s
    torch.testing.assert_close(scaled.log_density, unit.log_density - 4 * math.log(s), rtol=1e-12, atol=1e-9)
    scott = kde_log_density(x * s, y * s)                            # its own rule, scaled too
    assert scott.bandwidth == pytest.approx(kde_log_density(x, y).bandwidth * s, rel=1e-12)
    assert torch.isfinite(scott.log_density).all()


def test_kde_decides_its_scale_from_the_norms_and_passes_over_the_data_only_when_it_must(monkeypatch):
    # two extra float64 passes (the largest entry about the centre) ran on every call; the norms
    # the KDE computes anyway bound that entry, so unit-scale data skip them, tiny data do not
    from kinetic_fm.metrics import density

    calls = []
    real = density._centred_abs_max
    monkeypatch.setattr(density, "_centred_abs_max", lambda rows, centre: calls.append(1) or real(rows, centre))
    g = torch.Generator().manual_seed(0)
    y, x = torch.randn(50, 8, generator=g), torch.randn(9, 8, generator=g)
    ordinary = kde_log_density(x, y, bandwidth=0.5).log_density
    assert calls == []
    tiny = kde_log_density(x * 2.0**-40, y * 2.0**-40, bandwidth=0.5 * 2.0**-40).log_density
    assert len(calls) == 2
    # exact scaling: the same numbers, shifted by D·40·log 2 (the density's units)
    torch.testing.assert_close(tiny, ordinary + 8 * 40 * math.log(2.0), rtol=1e-12, atol=1e-9)


def test_the_bandwidth_rules_take_arrays_and_name_bad_references():
    # public helpers: a NumPy array failed with "no attribute 'to'", NaN gave a nan bandwidth
    four = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    pairs = np.sort(np.sqrt(_brute_sq_dist(four, four))[np.triu_indices(4, 1)])
    assert median_bandwidth(four) == pytest.approx((pairs[2] + pairs[3]) / 2, rel=1e-15)
    sigma = math.sqrt(four.var(axis=0, ddof=1).mean())                # Scott: σ̄ · N^(−1/(D+4))
    assert scott_bandwidth(four) == pytest.approx(sigma * 4 ** (-1 / 6), rel=1e-14)
    assert scott_bandwidth(four.tolist()) == scott_bandwidth(torch.from_numpy(four))
    bad = four.copy()
    bad[2, 1] = np.nan
    for rule in (scott_bandwidth, median_bandwidth):
        with pytest.raises(ValueError, match="reference has non-finite"):
            rule(bad)
    with pytest.raises(ValueError, match="max_points must be"):
        median_bandwidth(four, max_points=1)


def test_argument_slips_are_named_by_the_callers_names():
    y = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="exclude_self needs samples and reference of equal length"):
        local_support(y[:5], y, exclude_self=True)                    # it said "queries"
    with pytest.raises(ValueError, match="chunk must be a positive integer, got 2.5"):
        next(sq_distance_blocks(y, y, chunk=2.5))                     # it failed inside torch.empty


@pytest.mark.parametrize("spread", [1e-3, 1e-9, 0.0])
def test_the_median_heuristic_is_exact_among_near_duplicates(spread):
    # torch.cdist's GEMM expansion cancels between near-duplicates: 80 rows within 1e-9 of one
    # point and 20 far ones gave a median 3.2× SciPy's (helper-143); exact duplicates give 0 pairs
    from scipy.spatial.distance import pdist

    g = torch.Generator().manual_seed(16)
    far = 3 * torch.randn(20, 4, generator=g, dtype=torch.float64)
    tight = 2.0 + spread * torch.randn(80, 4, generator=g, dtype=torch.float64)
    for rows in (torch.cat([tight, far]), torch.cat([tight, far[:-1]])):  # an even and an odd pair count
        assert median_bandwidth(rows) == pytest.approx(float(np.median(pdist(rows.numpy()))), rel=1e-12, abs=0)


def test_the_median_heuristic_is_exact_among_near_duplicates_in_many_dimensions():
    # the GEMM route's error bound grows with D (4·(D + 3)·2⁻⁵³·(‖a‖ + ‖b‖)²): without its (D + 3)
    # factor pairs within 1e-7 in D = 2048 were ranked as sure from their cancelled GEMM values and
    # the median came out 2.9e-4 off SciPy's (helper-147; the test above has D = 4)
    from scipy.spatial.distance import pdist

    g = torch.Generator().manual_seed(1)
    rows = torch.cat([2.0 + 1e-7 * torch.randn(80, 2048, generator=g, dtype=torch.float64),
                      3 * torch.randn(20, 2048, generator=g, dtype=torch.float64)])
    assert median_bandwidth(rows) == pytest.approx(float(np.median(pdist(rows.numpy()))), rel=1e-12, abs=0)


def test_scotts_rule_centres_the_data_before_scaling_it_by_a_power_of_two():
    # columns at 1e-150 with a spread of 1e-164: scaled by 2^e before the column mean was taken off,
    # the variance cancelled and Scott's rule came out 1.9e-4 off (helper-147); the reference
    # centres first and then divides by the spread, NumPy float64
    y = 1e-150 + 1e-164 * torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = y.numpy()
    unit = (a - a.mean(axis=0)) / 1e-164
    expected = 1e-164 * math.sqrt(float(unit.var(axis=0, ddof=1).mean())) * 50 ** (-1 / 7)  # D = 3: N^(−1/7)
    # abs=0: approx's default abs=1e-12 would pass any value this small
    assert scott_bandwidth(y) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("scale", [1e-160, 1e-200, 1e160])
def test_the_bandwidth_rules_scale_with_data_beyond_float64s_squares(scale):
    # both rules square the data: beyond ~1e±154 Scott's rule gave 0 or inf, the median 0 or NaN,
    # and kde_log_density refused "are all references identical?" (helper-143). Each is
    # homogeneous of degree 1 in the data; the KDE shifts by −D·log(scale)
    g = torch.Generator().manual_seed(15)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    assert scott_bandwidth(y * scale) / scale == pytest.approx(scott_bandwidth(y), rel=1e-12)
    assert median_bandwidth(y * scale) / scale == pytest.approx(median_bandwidth(y), rel=1e-12)
    for rule in ("scott", "median"):
        got = kde_log_density(x * scale, y * scale, bandwidth=rule).log_density
        expected = kde_log_density(x, y, bandwidth=rule).log_density - 3 * math.log(scale)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


def test_the_median_heuristic_of_many_tied_pairs_is_exact():
    # one-hot rows: every pair at √2, so every pair is unsure and is measured directly at once
    # (pair by pair it took 270× the GEMM route); plus a few distinct rows to move the middle
    from scipy.spatial.distance import pdist

    rows = torch.cat([torch.eye(60, dtype=torch.float64), 3.0 * torch.eye(60, dtype=torch.float64)[:7]])
    # within an ulp of the root, not equal to math's: torch's sqrt may round the other way (torch 2.13.0's
    # vectorised root gives 1.414213562373095 for √2, and one ulp off in ~0.7 % of values)
    assert abs(median_bandwidth(torch.eye(60)) - math.sqrt(2)) <= math.ulp(math.sqrt(2))
    assert median_bandwidth(rows) == pytest.approx(float(np.median(pdist(rows.numpy()))), rel=1e-15, abs=0)


# --- review (helper-187): ties, duplicates, k at its limits, one query row, narrow dtypes -------

def _tied_sets():
    """Integer points on a small grid: many exact ties among the distances, and the first four
    reference rows repeated at the end (duplicates at other indices)."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (12, 3), generator=g).to(torch.float64)
    return torch.randint(0, 3, (7, 3), generator=g).to(torch.float64), torch.cat([y, y[:4]])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("chunk, batch_chunk", [(8192, 1024), (1, 1), (5, 3)])
def test_knn_radii_with_ties_and_duplicate_references_equal_the_sorted_brute_force(chunk, batch_chunk, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    x, y = _tied_sets()
    d = _torch_root(np.sort(_brute_sq_dist(x.numpy(), y.numpy()), axis=1))   # every reference row counts
    sup = local_support(x, y, k=16, ks=(1, 2, 3), chunk=chunk, batch_chunk=batch_chunk, backend=backend)   # k = N
    assert sup.ks == (1, 2, 3, 16)
    np.testing.assert_array_equal(sup.radii.numpy(), d[:, [0, 1, 2, 15]])
    # one query row alone is measured as it is among the others
    for i in range(len(x)):
        alone = local_support(x[i:i + 1], y, k=16, ks=(1, 2, 3), chunk=chunk, batch_chunk=batch_chunk,
                              backend=backend)
        assert torch.equal(alone.radii[0], sup.radii[i]) and alone.nearest[0] == sup.nearest[i]


def test_knn_leave_one_out_up_to_k_n_minus_1_keeps_duplicates_at_other_rows():
    _, y = _tied_sets()
    d2 = _brute_sq_dist(y.numpy(), y.numpy())
    np.fill_diagonal(d2, np.inf)   # by index: a duplicate at another row is at distance 0
    sup = local_support(y, y, k=15, ks=(1,), exclude_self=True)
    np.testing.assert_array_equal(sup.radii.numpy(), _torch_root(np.sort(d2, axis=1))[:, [0, 14]])
    assert (sup.radius_at(1)[:4] == 0).all() and (sup.radius_at(1)[-4:] == 0).all()
    assert torch.isinf(sup.log_density_at(1)[:4]).all() and (sup.log_density_at(1)[:4] > 0).all()
    assert sup.n_reference == 15


@pytest.mark.parametrize("exclude_self, usable", [(False, 16), (True, 15)])
def test_a_k_past_the_usable_references_is_refused_naming_k_and_its_range(exclude_self, usable):
    _, y = _tied_sets()
    with pytest.raises(ValueError, match=rf"k={usable + 1} .*must lie in \[1, {usable}\]"):
        local_support(y, y, k=usable + 1, ks=(), exclude_self=exclude_self)
    with pytest.raises(ValueError, match=rf"ks=\(1, {usable + 1}\).* must lie in \[1, {usable}\]"):
        local_support(y, y, k=1, ks=(1, usable + 1), exclude_self=exclude_self)


def test_leave_one_out_of_a_single_row_names_exclude_self():
    # it read "exceeds the 0 usable references; pass smaller k/ks", and no k can pass
    one = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"exclude_self needs at least 2 reference rows, got 1"):
        local_support(one, one, k=1, ks=(), exclude_self=True)
    with pytest.raises(ValueError, match=r"exclude_self needs at least 2 reference rows, got 1"):
        kde_log_density(one, one, bandwidth=1.0, exclude_self=True)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.float16, torch.bfloat16, torch.float32])
def test_knn_and_kde_of_narrow_dtypes_match_a_float64_brute_force_of_their_values(dtype):
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(9, 4, generator=g) * 10).to(dtype), (torch.rand(30, 4, generator=g) * 10).to(dtype)
    xd, yd = x.double().numpy(), y.double().numpy()
    sup = local_support(x, y, k=3, ks=(1,))
    np.testing.assert_allclose(sup.radii.numpy(), np.sqrt(np.sort(_brute_sq_dist(xd, yd), axis=1))[:, [0, 2]],
                               rtol=1e-15, atol=0)   # exact re-ranking in float64: a summation order apart
    for bandwidth in ("scott", 1.5):
        kde = kde_log_density(x, y, bandwidth)
        # float32 GEMM unless both are float64: u·(‖x‖² + ‖y‖²)/(2h²) ~ 6e-8 · 600 / 3
        np.testing.assert_allclose(kde.log_density.numpy(), _brute_kde(xd, yd, kde.bandwidth), rtol=0, atol=2e-5)


@pytest.mark.parametrize("chunk, batch_chunk", [(8192, 1024), (1, 1), (5, 3), (3, 5)])
@pytest.mark.parametrize("bandwidth", ["scott", "median", 0.35])
def test_kde_leave_one_out_with_duplicate_references_equals_a_float64_logsumexp(chunk, batch_chunk, bandwidth):
    _, y = _tied_sets()   # rows 0-3 repeated at 12-15: leave-one-out drops row i only, not its copy
    kde = kde_log_density(y, y, bandwidth, exclude_self=True, chunk=chunk, batch_chunk=batch_chunk)
    want = _brute_kde(y.numpy(), y.numpy(), kde.bandwidth, exclude_self=True)
    np.testing.assert_allclose(kde.log_density.numpy(), want, rtol=1e-13, atol=1e-13)
    assert kde.n_reference == 15 and kde.dim == 3
    # a query alone (without leave-one-out) is measured as among the others
    full = kde_log_density(y[:5], y, kde.bandwidth, chunk=chunk, batch_chunk=batch_chunk).log_density
    for i in range(5):
        alone = kde_log_density(y[i:i + 1], y, kde.bandwidth, chunk=chunk, batch_chunk=batch_chunk).log_density
        assert alone.item() == pytest.approx(full[i].item(), rel=1e-14, abs=1e-14)


@pytest.mark.parametrize("measure", [local_support, kde_log_density])
def test_precomputed_reference_features_that_do_not_fit_the_samples_are_named(measure):
    # the errors named "reference", which was fine: it was reference_features that did not fit
    from fake_cuda import fake_cuda

    y, x = torch.randn(20, 4), torch.randn(3, 4)
    kwargs = {"k": 2, "ks": ()} if measure is local_support else {"bandwidth": 1.0}
    with pytest.raises(ValueError, match=r"^samples and reference_features have different feature sizes: 4 vs 3$"):
        measure(x, y, reference_features=y[:, :3], **kwargs)
    with fake_cuda():
        with pytest.raises(ValueError, match=r"^samples and reference_features must be on one device, got cuda:0 "
                                             r"and cpu$"):
            measure(x.to("cuda"), y.to("cuda"), reference_features=y.numpy(), **kwargs)
        with pytest.raises(ValueError, match=r"^samples and reference must be on one device, got cuda:0 and cpu$"):
            measure(x.to("cuda"), y, **kwargs)


@pytest.mark.parametrize("k, n, dim, name", [(0, 5, 2, "k"), (3, 0, 2, "n_reference"), (3, 5, 0, "dim"),
                                             (3, 5, 2.5, "dim"), (6, 5, 2, "k")])
def test_knn_log_density_refuses_counts_outside_their_ranges_by_name(k, n, dim, name):
    # k = 0 or N = 0 met "math domain error"; k > N, D = 0 and D = 2.5 gave a number
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        knn_log_density(torch.tensor([1.0]), k, n, dim)


def test_knn_log_density_is_the_natural_log_of_k_over_n_v_d_r_to_the_d():
    r = torch.tensor([0.5, 1.0, 2.0, 0.0])
    v_3 = 4 / 3 * math.pi   # the unit 3-ball
    want = [math.log(4 / (10 * v_3 * x ** 3)) for x in (0.5, 1.0, 2.0)] + [math.inf]
    got = knn_log_density(r, 4, 10, 3)
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("radius, found", [(torch.tensor([1.0, -0.5]), r"negative"), (torch.tensor([math.nan, 1.0]),
                                           r"NaN"), (torch.ones(3, 2), r"shape \(3, 2\)")])
def test_knn_log_density_refuses_radii_that_are_no_distances_by_name(radius, found):
    # a negative or NaN radius gave a NaN log-density and a (B, 2) one a (B, 2) table, without a word
    with pytest.raises(ValueError, match=rf"^radius must be .*{found}"):
        knn_log_density(radius, 1, 5, 2)


@pytest.mark.parametrize("row_shape", [(4,), (3, 2, 2)])
@pytest.mark.parametrize("measure", [local_support, kde_log_density])
def test_one_sample_without_its_batch_axis_is_refused_with_the_shape_it_needs(measure, row_shape):
    # y[5] for y[5:6] read as 4 samples of 1 feature: "different feature sizes: 1 vs 4"
    y = torch.randn(20, *row_shape)
    kwargs = {"k": 2, "ks": ()} if measure is local_support else {"bandwidth": 1.0}
    shape = ", ".join(map(str, row_shape)) + ("," if len(row_shape) == 1 else "")
    with pytest.raises(ValueError, match=rf"samples has shape \({shape}\), the shape of one reference row: one sample "
                                         rf"needs its batch axis, shape \(1, {', '.join(map(str, row_shape))}\)"):
        measure(y[5], y, **kwargs)
    one = measure(y[5:6], y, **kwargs)   # as asked
    assert (one.radius if measure is local_support else one.log_density).shape == (1,)


def test_default_ks_are_clipped_to_the_usable_references(data):
    # the default ks (1, 5, 10) keep those that fit the usable references, so k=1 against 3 training
    # images is measured (it was refused for k=10 of the default ks, which nobody asked for)
    x, y = data
    d = np.sqrt(np.sort(_brute_sq_dist(x.numpy(), y.numpy()), axis=1))
    few = local_support(x, y[:3], k=1)
    assert few.ks == (1,)
    np.testing.assert_allclose(few.radius.numpy(), np.sqrt(np.sort(_brute_sq_dist(x.numpy(), y[:3].numpy()), 1)[:, 0]),
                               rtol=1e-12)
    assert local_support(x, y[:8], k=3).ks == (1, 3, 5)
    assert local_support(y[:6], y[:6], k=2, exclude_self=True).ks == (1, 2, 5)    # N − 1 = 5 usable
    assert local_support(y[:5], y[:5], k=2, exclude_self=True).ks == (1, 2)       # N − 1 = 4 usable
    # where the defaults fit, they are (1, 5, 10) as before, bit for bit those asked for explicitly
    full = local_support(x, y, k=5)
    assert full.ks == (1, 5, 10)
    assert torch.equal(full.radii, local_support(x, y, k=5, ks=(1, 5, 10)).radii)
    np.testing.assert_allclose(full.radius_at(10).numpy(), d[:, 9], rtol=1e-12)
    # a k that does not fit is still refused, and so are ks given explicitly
    with pytest.raises(ValueError, match=r"largest k \(4, of k=4 and ks=\(1,\)\) exceeds the 3"):
        local_support(x, y[:3], k=4)
    with pytest.raises(ValueError, match=r"largest k \(10, of k=1 and ks=\(1, 5, 10\)\) exceeds the 3"):
        local_support(x, y[:3], k=1, ks=(1, 5, 10))


def test_local_support_at_a_k_that_is_no_integer_is_refused_by_both_methods():
    # radius_at(True) gave the k = 1 radii and radius_at(5.0) the k = 5 ones, where log_density_at refused
    # both; radius_at("5") said "k=5 was not computed" beside ks that hold 5
    g = torch.Generator().manual_seed(0)
    sup = local_support(torch.randn(4, 3, generator=g, dtype=torch.float64),
                        torch.randn(20, 3, generator=g, dtype=torch.float64))
    assert sup.ks == (1, 5, 10)
    for k in (True, 5.0, "5", None):
        for method in (sup.radius_at, sup.log_density_at):
            with pytest.raises(ValueError, match=r"k must be an integer, one of the computed ks \(1, 5, 10\), got "
                                                 + re.escape(repr(k))):
                method(k)
    for method in (sup.radius_at, sup.log_density_at):
        with pytest.raises(ValueError, match=r"k=7 was not computed; available ks = \(1, 5, 10\)"):
            method(7)
    for k in (np.int64(5), torch.tensor(5)):   # integers of NumPy and torch, as everywhere
        assert torch.equal(sup.radius_at(k), sup.radii[:, 1])
        log_ball = 1.5 * math.log(math.pi) - gammaln(2.5)   # the unit 3-ball's volume, 4π/3
        want = math.log(5) - math.log(20) - log_ball - 3 * np.log(sup.radii[:, 1].numpy())
        np.testing.assert_allclose(sup.log_density_at(k).numpy(), want, rtol=1e-13)


def test_refusals_naming_rows_list_the_first_ten_alike():
    # "first ten, ' ...' if more" was formatted in three places (density, features, semantics); one wording
    from kinetic_fm.metrics.density import knn_log_density
    from kinetic_fm.metrics.features import as_features
    from kinetic_fm.metrics.semantics import margin_from_scores

    listed = re.escape(f"{list(range(2, 12))} ...")
    radius = torch.ones(14)
    radius[2:13] = float("nan")
    with pytest.raises(ValueError, match=rf"got NaN at positions {listed}$"):
        knn_log_density(radius, 1, 20, 2)
    x = torch.zeros(14, 2)
    x[2:13, 0] = float("inf")
    with pytest.raises(ValueError, match=rf"rows {listed}$"):
        as_features(x, None, argument="samples")
    with pytest.raises(ValueError, match=rf"rows {listed}$"):
        margin_from_scores(x)
    with pytest.raises(ValueError, match=r"rows \[2, 12\]$"):                   # ten or fewer: no " ..."
        margin_from_scores(x[[0, 2, 12]].index_select(0, torch.tensor([0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2])))
