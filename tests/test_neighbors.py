"""Exact k-NN (kinetic_fm.knn, re-exported by kinetic_fm.metrics.neighbors) against a float64 brute force."""
import numpy as np
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm import nearest_neighbors


def squared_distances(queries, reference):
    """(B, N) float64 squared distances by direct differences (torch.cdist switches to the
    cancelling GEMM expansion)."""
    q, r = queries.double().flatten(1), reference.double().flatten(1)
    return (q[:, None, :] - r[None, :, :]).pow(2).sum(dim=2)


def brute(queries, reference, k, exclude_self=False):
    """The k nearest by exact squared distance, and their roots. Ranked before the root: a
    faithful (not correctly rounded) square root, as torch's is on some builds, may put the roots
    of two squares a few ulps apart in the other order, which the search, ranking squares, never does."""
    d2 = squared_distances(queries, reference)
    if exclude_self:
        d2.fill_diagonal_(float("inf"))
    nearest = d2.topk(k, dim=1, largest=False)
    return torch.return_types.topk((nearest.values.sqrt(), nearest.indices))


def brute_in_blocks(queries, reference, k, exclude_self=False, rows=16):
    """``brute`` over ``rows`` queries at a time (its (B, N, D) block would not fit); ties in
    index order, as the search promises."""
    values, indices = [], []
    for q0 in range(0, queries.shape[0], rows):
        d2 = squared_distances(queries[q0:q0 + rows], reference)
        if exclude_self:
            d2[torch.arange(d2.shape[0]), torch.arange(q0, q0 + d2.shape[0])] = float("inf")
        d2, order = torch.sort(d2, dim=1, stable=True)
        values.append(d2[:, :k].sqrt())
        indices.append(order[:, :k])
    return torch.cat(values), torch.cat(indices)


@pytest.fixture
def routes(monkeypatch):
    """The re-search's routes taken during a test, counted: "float64 re-screen" (the reference
    centred on its mean) and "direct differences" (``knn._brute_force``)."""
    from kinetic_fm import knn

    taken = {"float64 re-screen": 0, "direct differences": 0}
    centred, direct = knn._Centred.of.__func__, knn._brute_force

    def centre(cls, y):
        taken["float64 re-screen"] += 1
        return centred(cls, y)

    def brute_force(*args, **kwargs):
        taken["direct differences"] += 1
        return direct(*args, **kwargs)

    monkeypatch.setattr(knn._Centred, "of", classmethod(centre))
    monkeypatch.setattr(knn, "_brute_force", brute_force)
    return taken


@pytest.fixture
def always_rescreen(monkeypatch, routes):
    """Queries left uncertified go through the float64 re-screen however few they are (fewer than
    ``knn._BRUTE_FORCE_BREAK_EVEN`` go straight to direct differences otherwise) and without the
    wider screening first (which settles a cluster smaller than its candidates); returns
    :func:`routes`' counts, so a test can check it took that path."""
    from kinetic_fm import knn

    monkeypatch.setattr(knn, "_BRUTE_FORCE_BREAK_EVEN", 0)
    monkeypatch.setattr(knn, "_WIDER_CANDIDATES", 1)
    return routes


@pytest.mark.parametrize("chunk,batch_chunk", [(37, 23), (64, 1000), (10_000, 13)])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_matches_brute_force_for_any_chunking(chunk, batch_chunk, k):
    g = torch.Generator().manual_seed(1)
    reference, queries = torch.randn(300, 3, 4, 4, generator=g), torch.randn(77, 3, 4, 4, generator=g)
    got = nearest_neighbors(queries, reference, k, chunk=chunk, batch_chunk=batch_chunk)
    want = brute(queries, reference, k)
    assert got.distances.dtype == torch.float64 and got.indices.dtype == torch.int64
    assert got.distances.shape == (77, k)
    torch.testing.assert_close(got.distances, want.values, rtol=0, atol=1e-12)
    assert torch.equal(got.indices, want.indices)


def test_reranking_in_small_blocks_matches_brute_force(monkeypatch):
    # the exact float64 re-ranking walks the queries in blocks of a byte budget; 1,000 bytes
    # here means 2 to 3 queries per block, so block edges fall everywhere
    from kinetic_fm import blocks

    monkeypatch.setattr(blocks, "CPU_BLOCK_BYTES", 1_000)
    g = torch.Generator().manual_seed(5)
    reference, queries = torch.randn(200, 8, generator=g), torch.randn(41, 8, generator=g)
    got = nearest_neighbors(queries, reference, 2, margin=3)
    want = brute(queries, reference, 2)
    torch.testing.assert_close(got.distances, want.values, rtol=0, atol=1e-12)
    assert torch.equal(got.indices, want.indices)


@pytest.mark.parametrize("blas", ["torch", "numpy"])
def test_either_cpu_blas_gives_the_exact_answer(fixed_blas, blas):
    used = fixed_blas(blas)
    g = torch.Generator().manual_seed(6)
    reference, queries = torch.randn(500, 24, generator=g), torch.randn(90, 24, generator=g)
    got = nearest_neighbors(queries, reference, 3, chunk=128, batch_chunk=40)   # partial last chunk
    want = brute(queries, reference, 3)
    torch.testing.assert_close(got.distances, want.values, rtol=0, atol=1e-12)
    assert torch.equal(got.indices, want.indices)
    own = nearest_neighbors(reference, reference, 1, chunk=128, exclude_self=True)
    assert torch.equal(own.indices, brute(reference, reference, 1, exclude_self=True).indices)
    assert set(used) == {blas}


def test_faiss_backend_gives_identical_results():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(2)
    reference, queries = torch.randn(500, 40, generator=g), torch.randn(60, 40, generator=g)
    ours = nearest_neighbors(queries, reference, 3)
    theirs = nearest_neighbors(queries, reference, 3, backend="faiss")
    assert torch.equal(ours.indices, theirs.indices)
    assert torch.equal(ours.distances, theirs.distances)
    own = nearest_neighbors(reference, reference, 2, exclude_self=True, backend="faiss")
    want = brute(reference, reference, 2, exclude_self=True)
    assert torch.equal(own.indices, want.indices)
    # more exact duplicates than faiss returns candidates: a row's own index may be missing from
    # them, and the search must then drop another copy instead
    copies = torch.cat([torch.zeros(10, 4), torch.randn(2, 4, generator=g)])
    for k in (1, 2):
        ours = nearest_neighbors(copies, copies, k, exclude_self=True)
        theirs = nearest_neighbors(copies, copies, k, exclude_self=True, backend="faiss")
        assert torch.equal(ours.distances, theirs.distances)
        assert not (theirs.indices == torch.arange(12)[:, None]).any()
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 11\] \(reference size − 1\)"):
        nearest_neighbors(copies, copies, 12, exclude_self=True)


def test_exclude_self_skips_the_query_index_only():
    g = torch.Generator().manual_seed(3)
    points = torch.randn(120, 10, generator=g)
    points[7] = points[3]                                  # a duplicate elsewhere still counts
    got = nearest_neighbors(points, points, 2, exclude_self=True, chunk=50, batch_chunk=40)
    want = brute(points, points, 2, exclude_self=True)
    torch.testing.assert_close(got.distances, want.values, rtol=0, atol=1e-12)
    assert got.indices[3, 0] == 7 and got.indices[7, 0] == 3 and got.distances[3, 0] == 0
    assert not (got.indices == torch.arange(120)[:, None]).any()


@pytest.mark.parametrize("k", [3, 5])
def test_with_exclude_self_every_other_row_a_candidate_needs_no_certificate(k):
    # N − 1 candidates are every row but the query's own: the answer is exact by construction and
    # none is re-searched. Counting the excluded row as missing made the certificate decide; at
    # k = N − 1 the worst candidate is the k-th neighbour itself, so it never cleared the rounding
    # margin and every query went through the float64 re-screening.
    g = torch.Generator().manual_seed(31)
    reference = torch.randn(6, 5, generator=g)
    got = nearest_neighbors(reference, reference, k, exclude_self=True, margin=4)
    want = brute(reference, reference, k, exclude_self=True)
    assert torch.equal(got.indices, want.indices) and torch.allclose(got.distances, want.values)
    assert got.rechecked == 0


def test_uncertifiable_screening_is_rechecked_in_float64(always_rescreen):
    # tiny differences on a huge common offset: float32 screening cannot rank them
    g = torch.Generator().manual_seed(4)
    offset = torch.full((64,), 100.0)
    reference = (offset + 1e-3 * torch.randn(50, 64, generator=g, dtype=torch.float64)).float()
    queries = (offset + 1e-3 * torch.randn(20, 64, generator=g, dtype=torch.float64)).float()
    got = nearest_neighbors(queries, reference, 3, margin=0, chunk=16)
    want = brute(queries, reference, 3)
    assert got.rechecked > 0 and always_rescreen["float64 re-screen"] == 1
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.distances, want.values, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_large_common_offset_is_searched_exactly(dtype, always_rescreen):
    # spread 1e-3 around 1e5: even float64 expansion cannot rank these (offset²·D·2⁻⁵³ > the gaps);
    # the re-search centres both sets on the reference mean
    g = torch.Generator().manual_seed(6)
    base = 1e5 + torch.zeros(16, dtype=torch.float64)
    reference = (base + 1e-3 * torch.randn(200, 16, generator=g, dtype=torch.float64)).to(dtype)
    queries = (base + 1e-3 * torch.randn(20, 16, generator=g, dtype=torch.float64)).to(dtype)
    got = nearest_neighbors(queries, reference, 2)
    want = brute(queries, reference, 2)
    assert got.rechecked == 20 and always_rescreen["float64 re-screen"] == 1
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.distances, want.values, rtol=1e-9, atol=0)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_gaps_below_float64_resolution_of_the_spread_fall_back_to_direct_differences(exclude_self, always_rescreen):
    # points 1e6 apart, three of them within 4e-6: no centring certifies those gaps, direct differences do
    g = torch.Generator().manual_seed(7)
    reference = 1e6 * torch.randn(60, 8, generator=g, dtype=torch.float64)
    reference[1] = reference[0] + 1e-6
    reference[2] = reference[0] - 3e-6
    queries = reference if exclude_self else reference[:3] + 2e-7
    got = nearest_neighbors(queries, reference, 1, exclude_self=exclude_self, margin=0, chunk=16)
    want = brute(queries, reference, 1, exclude_self=exclude_self)
    assert got.rechecked > 0
    assert always_rescreen["float64 re-screen"] == 1 and always_rescreen["direct differences"] > 0
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.distances, want.values, rtol=1e-9, atol=0)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_crowded_distances_are_settled_by_a_wider_screening_alone(backend, routes):
    # uniform [0, 1] rows in 512 dimensions: distances crowd within a few percent of each other,
    # so for some queries every one of the k + 1 candidates lies within the float32 rounding
    # bound of the k-th. More candidates from the same screening certify them (measured: 2 of 100
    # queries, 9 of 300 rows searched against themselves), without the float64 re-screen
    # (centring the whole reference) or direct differences against every row.
    if backend == "faiss":
        pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    reference, queries = torch.rand(1000, 512, generator=g), torch.rand(100, 512, generator=g)
    got = nearest_neighbors(queries, reference, 2, margin=0, batch_chunk=64, backend=backend)
    rows = reference[:300]
    own = nearest_neighbors(rows, rows, 2, margin=0, batch_chunk=100, exclude_self=True, backend=backend)
    assert got.rechecked > 0 and own.rechecked > 0
    assert routes == {"float64 re-screen": 0, "direct differences": 0}
    for found, want in ((got, brute_in_blocks(queries, reference, 2)),
                        (own, brute_in_blocks(rows, rows, 2, exclude_self=True))):
        assert torch.equal(found.distances, want[0]) and torch.equal(found.indices, want[1])


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("above,route", [(1, "direct differences"), (0, "float64 re-screen")])
def test_fewer_queries_left_uncertified_than_the_break_even_go_straight_to_direct_differences(
        exclude_self, above, route, routes, monkeypatch):
    # gaps of 1e-3 on a common offset of 100 in float32: the rounding bound exceeds the distances
    # themselves, so no screening about the origin certifies the queries in that cluster while
    # the cluster holds more rows than the candidates, 24 in the wider screening (the other rows,
    # 100 apart, are certified at once). Fewer than the break-even are searched by direct
    # differences; as many, by the float64 re-screen about the reference mean (which certifies
    # these), once for all the query blocks
    from kinetic_fm import knn

    g = torch.Generator().manual_seed(4)

    def cluster(n):
        return (100.0 + 1e-3 * torch.randn(n, 64, generator=g, dtype=torch.float64)).float()

    spread = 100.0 * torch.randn(48, 64, generator=g)
    reference = torch.cat([cluster(30 if exclude_self else 60), spread])
    reference = reference[torch.randperm(reference.shape[0], generator=g)]
    queries = torch.cat([cluster(12), spread[:12] + 0.1])[torch.randperm(24, generator=g)]
    if exclude_self:
        queries = reference
    uncertified = 30 if exclude_self else 12
    monkeypatch.setattr(knn, "_BRUTE_FORCE_BREAK_EVEN", uncertified + above)
    got = nearest_neighbors(queries, reference, 2, exclude_self=exclude_self, batch_chunk=5)
    want = brute_in_blocks(queries, reference, 2, exclude_self=exclude_self)
    assert got.rechecked == uncertified
    assert {taken for taken, calls in routes.items() if calls} == {route}
    assert route == "direct differences" or routes["float64 re-screen"] == 1
    assert torch.equal(got.distances, want[0]) and torch.equal(got.indices, want[1])


def _cap_about_a_far_point(seed, dim=8, width=1 / 16, n=64):
    """n float64 rows on the unit sphere within ~``width`` of a random unit vector c0."""
    g = torch.Generator().manual_seed(seed)
    c0 = torch.randn(dim, generator=g, dtype=torch.float64)
    rows = c0 / c0.norm() + width * torch.randn(n, dim, generator=g, dtype=torch.float64) / dim ** 0.5
    return rows / rows.norm(dim=1, keepdim=True), g


def found_squares(queries, reference, found):
    """(B, k) exact squared distances to the rows ``found`` names, checked to be those whose
    roots it reports (near-equal rows may come in either order; each index is at its distance)."""
    at = (queries[:, None, :].double() - reference[found.indices].double()).pow(2).sum(dim=2)
    assert torch.equal(at.sqrt(), found.distances)
    return at


@pytest.mark.parametrize("k,margin", [(1, 0), (2, 1)])
def test_the_float64_rescreen_certificate_is_taken_about_the_reference_mean(k, margin, always_rescreen):
    # Queries within 1e-15 of the origin, reference on the unit sphere about it in a cap 1/16
    # wide: every distance is 1 to a few float64 ulps, so the first screening certifies nothing
    # and the float64 re-screen about the reference mean c decides. There ‖x‖ ≈ 0 but
    # ‖x − c‖ ≈ 1: a certificate bound taken on the uncentred query, (D + 3)·u·(‖x‖ + R)² with
    # R ≈ 1/16 about c, is ~250x too small and certified, on ~3% of these queries, neighbours a
    # few ulps farther (in float64) than the direct differences' k-th
    for seed in range(4):
        reference, g = _cap_about_a_far_point(seed)
        queries = 1e-15 * torch.randn(256, 8, generator=g, dtype=torch.float64)
        got = nearest_neighbors(queries, reference, k, margin=margin)
        want_squares = squared_distances(queries, reference).topk(k, dim=1, largest=False).values
        assert got.rechecked == 256 and always_rescreen["float64 re-screen"] == seed + 1
        # squares compared, not their roots, which may tie (or, rounded faithfully, swap) rows a few ulps apart
        assert torch.equal(found_squares(queries, reference, got), want_squares)


def test_the_float64_rescreen_is_exact_for_a_set_searched_against_itself(monkeypatch, always_rescreen):
    # exclude_self on the cap plus one row at the origin, whose neighbours are all ~1 away, all
    # re-screened about the mean. (A query that is a reference row has ‖x − c‖ ≤ R, so the
    # uncentred bound (D + 3)·u·(‖x‖ + R)² is at least a quarter of the centred one: no such
    # mutant was seen to fail here; this pins the exclude_self path of the re-screen.) The first
    # screening certifies nothing here, so that every query is re-screened.
    from kinetic_fm import knn

    real = knn._rerank_and_certify

    def first_screening_uncertified(*args, centre=None):
        d2, idx, ok = real(*args, centre=centre)
        return d2, idx, ok if centre is not None else torch.zeros_like(ok)

    monkeypatch.setattr(knn, "_rerank_and_certify", first_screening_uncertified)
    for seed in range(4):
        cap, g = _cap_about_a_far_point(seed)
        rows = torch.cat([cap, 1e-15 * torch.randn(1, 8, generator=g, dtype=torch.float64)])
        got = nearest_neighbors(rows, rows, 2, exclude_self=True, margin=0)
        want_squares = squared_distances(rows, rows).fill_diagonal_(float("inf")).topk(2, largest=False).values
        assert got.rechecked == 65 and always_rescreen["float64 re-screen"] == seed + 1
        assert torch.equal(found_squares(rows, rows, got), want_squares)
        assert (got.indices != torch.arange(65)[:, None]).all()


@pytest.mark.parametrize("chunk", [7, 50, 8192])
def test_equal_distances_come_in_index_order_whatever_the_chunking(chunk):
    g = torch.Generator().manual_seed(8)
    reference = torch.randn(320, 6, generator=g)
    reference[300:310] = reference[:10]
    reference[310:320] = reference[:10]
    got = nearest_neighbors(reference[:10], reference, 3, chunk=chunk)
    assert (got.distances == 0).all()
    assert got.indices.tolist() == [[i, 300 + i, 310 + i] for i in range(10)]


def test_inputs_that_require_grad_and_non_finite_inputs():
    g = torch.Generator().manual_seed(9)
    reference = torch.randn(40, 5, generator=g)
    made = torch.nn.Linear(5, 5)(torch.randn(6, 5, generator=g))
    got = nearest_neighbors(made, reference, 2)
    assert torch.equal(got.indices, nearest_neighbors(made.detach(), reference, 2).indices)
    reference[17, 2] = float("nan")
    with pytest.raises(ValueError, match="reference contains NaN or inf in 1 row.*row 17"):
        nearest_neighbors(made, reference, 2)
    with pytest.raises(ValueError, match="queries contains NaN"):
        nearest_neighbors(torch.full((2, 5), float("inf")), torch.randn(4, 5), 1)


def test_pandas_tables_are_searched_as_their_rows():
    pd = pytest.importorskip("pandas")
    g = torch.Generator().manual_seed(4)
    queries, reference = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(30, 5, generator=g, dtype=torch.float64)
    want = nearest_neighbors(queries, reference, 2)
    got = nearest_neighbors(pd.DataFrame(queries.numpy()), pd.DataFrame(reference.numpy()), 2)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.distances, want.distances)
    got = nearest_neighbors(pd.Series(queries[:, 0].numpy()), reference[:, :1], 1)
    assert torch.equal(got.indices, nearest_neighbors(queries[:, :1], reference[:, :1], 1).indices)
    report = kfm.memorization(pd.DataFrame(queries.numpy()), pd.DataFrame(reference.numpy()), bootstrap=0)
    assert torch.equal(report.nearest, want.indices[:, 0])


def test_float64_and_integer_inputs():
    g = torch.Generator().manual_seed(5)
    reference = torch.randint(0, 256, (200, 30), generator=g, dtype=torch.uint8)
    queries = torch.randint(0, 256, (15, 30), generator=g, dtype=torch.uint8)
    got = nearest_neighbors(queries, reference, 2)
    torch.testing.assert_close(got.distances, brute(queries, reference, 2).values, rtol=0, atol=1e-9)
    got64 = nearest_neighbors(queries.double(), reference.double(), 2)
    torch.testing.assert_close(got64.distances, got.distances, rtol=0, atol=1e-9)
    wide = nearest_neighbors(queries.to(torch.uint32), reference.to(torch.uint16), 2)
    assert torch.equal(wide.distances, got64.distances) and torch.equal(wide.indices, got64.indices)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=11), "k must be"),
    (dict(k=0), "k must be"),
    (dict(k=10, exclude_self=True), "k must be|exclude_self"),
    (dict(k=1, backend="annoy"), "backend"),
    (dict(k=1, chunk=0), "chunk"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nearest_neighbors(torch.randn(4, 3), torch.randn(10, 3), **kwargs)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="same number of features"):
        nearest_neighbors(torch.randn(4, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="queries is empty"):
        nearest_neighbors(torch.randn(0, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="reference is empty"):
        nearest_neighbors(torch.randn(2, 3), torch.randn(0, 3))


def test_check_finite_finds_every_bad_row_and_spares_overflowing_sums():
    from kinetic_fm.metrics.neighbors import check_finite

    x = torch.ones(10, 6)
    x[2] = 3e38                      # finite, but the row sum overflows to inf
    x[3, :2] = torch.tensor([3e38, -3e38])
    check_finite("x", x)
    x[5, 4] = float("-inf")
    x[7, 0], x[7, 1] = float("inf"), float("-inf")   # sums to NaN
    x[9, 5] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or inf in 3 row\(s\), first at row 5"):
        check_finite("x", x, rows=2)
    check_finite("empty", torch.empty(0, 4))


def test_progress_bar_counts_every_query_and_changes_nothing(capsys, monkeypatch):
    import tqdm.auto

    closed = []

    class Recording(tqdm.auto.tqdm):
        def close(self):
            if not self.disable:                                  # a closed bar disables itself
                closed.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    g = torch.Generator().manual_seed(8)
    reference, queries = torch.randn(120, 6, generator=g), torch.randn(50, 6, generator=g)
    quiet = nearest_neighbors(queries, reference, 2, batch_chunk=16)
    assert capsys.readouterr().err == ""
    shown = nearest_neighbors(queries, reference, 2, batch_chunk=16, progress=True)
    assert "nearest neighbours" in capsys.readouterr().err
    assert closed == [(50, 50)]                                   # four blocks of ≤ 16 add up to 50
    assert torch.equal(shown.distances, quiet.distances) and torch.equal(shown.indices, quiet.indices)



def test_progress_bar_is_not_full_before_the_uncertified_queries_are_searched_again(capsys, monkeypatch):
    # the bar reached 100 % when the last block was screened, before the re-search (often the
    # longest part on quantised data) had started
    import tqdm.auto

    import kinetic_fm.knn as knn

    events = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            out = super().update(n)
            events.append(("bar", self.n, self.total, self.desc))
            return out

    search_again = knn._search_again

    def recorded(*args, **kwargs):
        events.append(("re-search", len(args[1])))
        found = search_again(*args, **kwargs)
        events.append(("re-search done",))
        return found

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    monkeypatch.setattr(knn, "_search_again", recorded)
    g = torch.Generator().manual_seed(8)
    reference = torch.randint(0, 3, (120, 4), generator=g).float()        # ties: uncertified queries
    queries = torch.randint(0, 3, (50, 4), generator=g).float()
    found = nearest_neighbors(queries, reference, 3, batch_chunk=16, margin=0, progress=True)
    assert found.rechecked > 0 and "nearest neighbours" in capsys.readouterr().err
    kinds = [e[0] for e in events]
    start, done = kinds.index("re-search"), kinds.index("re-search done")
    bars = [e for e in events[:done] if e[0] == "bar"]
    assert bars and all(n < total for _, n, total, _ in bars), bars     # never full before the work is
    assert f"re-checking {found.rechecked}" in bars[-1][3] and events[start][1] == found.rechecked
    _, n, total, _ = events[-1]
    assert events[-1][0] == "bar" and n == total == 50 + found.rechecked

# --- input validation (audit D1, D12, D13) ---------------------------------------------------

@pytest.mark.parametrize("which", ["queries", "reference"])
def test_rows_whose_squared_norms_overflow_float32_are_refused(which):
    # |x| ~ 1e20: ‖x‖² overflows float32, and the screening used to rank by inf/NaN silently
    g = torch.Generator().manual_seed(3)
    queries, reference = torch.randn(20, 2, generator=g), torch.randn(40, 2, generator=g)
    if which == "queries":
        queries = queries * 1e20
    else:
        reference = reference * 1e20
    with pytest.raises(ValueError, match=rf"{which} holds values up to .*float32.*float64"):
        nearest_neighbors(queries, reference, 2)


def test_large_rows_in_float64_match_brute_force():
    # the remedy the error names: the same data in float64 is searched exactly
    g = torch.Generator().manual_seed(3)
    queries, reference = torch.randn(20, 2, generator=g) * 1e20, torch.randn(40, 2, generator=g) * 1e20
    got = nearest_neighbors(queries.double(), reference.double(), 2)
    want = brute(queries, reference, 2)
    torch.testing.assert_close(got.distances, want.values, rtol=1e-12, atol=0)
    assert torch.equal(got.indices, want.indices)


@pytest.mark.parametrize("which", ["queries", "reference"])
def test_float64_rows_too_large_for_faiss_are_told_to_use_the_torch_backend(which):
    # faiss screens in float32 whatever the inputs: the refusal told float64 inputs "pass every
    # input as float64"
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(3)
    sets = {"queries": torch.randn(20, 2, generator=g).double(), "reference": torch.randn(40, 2, generator=g).double()}
    sets[which] = sets[which] * 1e20
    with pytest.raises(ValueError, match=rf"^{which} holds values up to .*float32.*or use backend='torch', which"):
        nearest_neighbors(sets["queries"], sets["reference"], 2, backend="faiss")
    with pytest.raises(ValueError, match=rf"^{which} .*or use backend='torch' and pass every input as float64$"):
        nearest_neighbors(sets["queries"].float(), sets["reference"].float(), 2, backend="faiss")
    got = nearest_neighbors(sets["queries"], sets["reference"], 2)        # the remedy: exact
    want = brute(sets["queries"], sets["reference"], 2)   # (far queries see near-ties: distances only)
    torch.testing.assert_close(got.distances, want.values, rtol=1e-12, atol=0)


def test_float64_rows_beyond_the_float64_limit_are_refused_with_rescale_hint():
    g = torch.Generator().manual_seed(3)
    queries, reference = torch.randn(5, 2, generator=g).double(), torch.randn(8, 2, generator=g).double()
    with pytest.raises(ValueError, match="reference holds values up to .*float64.*rescale"):
        nearest_neighbors(queries, reference * 1e160, 1)


@pytest.mark.parametrize("kwargs", [{"k": True}, {"chunk": True}, {"batch_chunk": True}, {"margin": True}])
def test_bools_are_not_counts(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        nearest_neighbors(torch.randn(4, 2), torch.randn(6, 2), **kwargs)


def test_numpy_integer_counts_work():
    import numpy as np

    q, r = torch.randn(4, 2), torch.randn(6, 2)
    got = nearest_neighbors(q, r, np.int64(2), chunk=np.int64(3), margin=np.int32(1))
    assert torch.equal(got.indices, brute(q, r, 2).indices)


@pytest.mark.parametrize("flag", ["no", 1, None])
def test_exclude_self_must_be_a_bool(flag):
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="exclude_self must be True or False"):
        nearest_neighbors(x, x, 1, exclude_self=flag)


def test_column_mean_is_the_float64_mean_in_any_block_size():
    from kinetic_fm.metrics.neighbors import column_mean

    rows = torch.randn(1000, 7, generator=torch.Generator().manual_seed(9)) + 1e4
    for block in (1, 333, 1024):
        torch.testing.assert_close(column_mean(rows, block=block), rows.double().mean(0), rtol=1e-12, atol=0)


def test_exclude_self_needs_the_queries_to_be_the_reference():
    import kinetic_fm as kfm

    g = torch.Generator().manual_seed(4)
    points, other = torch.randn(30, 5, generator=g), torch.randn(30, 5, generator=g)
    calls = [lambda a, b: nearest_neighbors(a, b, 2, exclude_self=True),
             lambda a, b: kfm.local_support(a, b, k=2, ks=(), exclude_self=True),
             lambda a, b: kfm.kde_log_density(a, b, exclude_self=True)]
    for call in calls:
        with pytest.raises(ValueError, match="exclude_self=True drops reference row i .* two different sets"):
            call(other, points)                       # same length, another set: row i is not i's own
        call(points, points.clone())                   # equal rows (a copy, or features of them) pass


def test_faiss_never_searches_an_index_of_other_data():
    """The index is cached for repeated searches of one reference set. Keyed on the tensor's
    address and version only, it served a stale index when another set landed at a freed set's
    address, or when the data changed through a NumPy view (no version bump): wrong neighbours,
    certified, without a word."""
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    queries, reference = torch.randn(50, 16, generator=g), torch.randn(2000, 16, generator=g) + 50.0
    nearest_neighbors(queries, reference, 2, backend="faiss")
    reference.numpy()[:] = torch.randn(2000, 16, generator=g).numpy()   # same storage, same version
    for edit in range(2):
        theirs = nearest_neighbors(queries, reference, 2, backend="faiss")
        ours = nearest_neighbors(queries, reference, 2, backend="torch")
        assert torch.equal(theirs.indices, ours.indices)
        torch.testing.assert_close(theirs.distances, ours.distances, rtol=1e-12, atol=0)
        reference.numpy()[1] = queries[0].numpy()    # one row, then the first query's nearest


def test_faiss_searches_float32_rows_in_place_without_an_index_copy(monkeypatch):
    """``faiss.IndexFlatL2`` holds its own copy of the reference: on a CIFAR-10-sized float32 set
    (614 MB) ``kfm memorization --backend faiss`` held it twice. faiss's brute-force search reads the
    caller's rows where they lie, with the same results as the index's search."""
    faiss = pytest.importorskip("faiss")
    import kinetic_fm.knn as knn

    seen = []

    class NoIndex:
        def IndexFlatL2(self, dim):
            raise AssertionError("an index copies the reference")

        def knn(self, xq, xb, k):
            seen.append(xb)
            return faiss.knn(xq, xb, k)

    monkeypatch.setattr(knn, "faiss_module", lambda *args: NoIndex())
    rng = np.random.default_rng(3)
    train = rng.normal(size=(700, 48)).astype(np.float32)
    queries = np.concatenate([train[:30] + 1e-3, rng.normal(size=(30, 48)).astype(np.float32)])
    for exclude_self, rows in ((False, queries), (True, train)):
        theirs = nearest_neighbors(rows, train, 3, backend="faiss", batch_chunk=25, exclude_self=exclude_self)
        ours = nearest_neighbors(rows, train, 3, backend="torch", exclude_self=exclude_self)
        assert torch.equal(theirs.indices, ours.indices) and torch.equal(theirs.distances, ours.distances)
    assert seen and all(np.shares_memory(xb, train) for xb in seen)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_faiss_sees_rows_swapped_in_place(dtype):
    """A row permutation in place (a shuffle through a NumPy array) keeps the address, the version
    and the column sums: the stale index answered query 0 with row 65 at distance 628.8, where row
    499 lies at 8.4, certified (helper-98)."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(500, 64)).astype(dtype)
    queries = train[:20].astype(np.float32) + rng.normal(size=(20, 64)).astype(np.float32)
    nearest_neighbors(queries, train, 1, backend="faiss")
    train[[0, 499]] = train[[499, 0]]
    theirs = nearest_neighbors(queries, train, 1, backend="faiss")
    assert theirs.indices[0, 0] == 499
    assert torch.equal(theirs.indices, nearest_neighbors(queries, train, 1, backend="torch").indices)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint64])
def test_integers_float64_cannot_hold_are_refused_by_name(dtype):
    # nanosecond times near 1.7e18 rounded to float64 (spacing 256) before subtracting: nearest
    # [1, 0] at distances [0, 256] where |Δ| = [150, 160]; within 2**53 integers stay exact
    t0 = 1_700_000_000_000_000_000
    reference, queries = torch.tensor([[t0], [t0 + 310]], dtype=dtype), torch.tensor([[t0 + 150]], dtype=dtype)
    with pytest.raises(ValueError, match=r"^queries holds integers beyond 2\*\*53 in magnitude"):
        nearest_neighbors(queries, reference, 2)
    with pytest.raises(ValueError, match=r"^train holds integers beyond 2\*\*53 in magnitude"):
        kfm.memorization(torch.tensor([[150], [3]], dtype=dtype), reference, bootstrap=0)
    with pytest.raises(ValueError, match=r"^reference holds integers beyond 2\*\*53 in magnitude"):
        kfm.kde_log_density(torch.tensor([[150.0]]), reference, bandwidth=1.0)
    t0 = 2 ** 53 - 400                                   # the largest integers float64 holds exactly
    small = nearest_neighbors(torch.tensor([[t0 + 150]], dtype=dtype), torch.tensor([[t0], [t0 + 310]], dtype=dtype), 2)
    assert small.indices.tolist() == [[0, 1]] and small.distances.tolist() == [[150.0, 160.0]]


@pytest.mark.parametrize("dtype,power", [(torch.float32, -73), (torch.float64, -530)])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_tiny_data_gets_the_neighbours_of_its_unit_scale_copy(dtype, power, backend):
    # scaled by s = 2**power every entry is exact, so the answer is the unit data's, distances
    # times s. Its screening products fell below the dtype's normal range, where the certificate's
    # relative rounding bound does not hold: float32 at 1e-22 certified wrong neighbours for 10 of
    # 50 queries (helper-98)
    if backend == "faiss":
        pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    reference, queries = torch.randn(200, 2, generator=g, dtype=dtype), torch.randn(50, 2, generator=g, dtype=dtype)
    unit = nearest_neighbors(queries, reference, 3, backend=backend)
    s = 2.0 ** power
    tiny = nearest_neighbors(queries * s, reference * s, 3, backend=backend)
    assert torch.equal(tiny.indices, unit.indices)
    assert torch.equal(tiny.indices, brute(queries, reference, 3)[1])
    torch.testing.assert_close(tiny.distances, unit.distances * s, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype,power", [(torch.float32, -140), (torch.float64, -1040)])
def test_subnormal_data_gets_finite_exact_neighbours(dtype, power):
    # below 2**-128 the scale 2**149 is inf in float32 (NaN distances); below 2**-1022 a Python
    # 2.0**1050 overflowed (OverflowError): integer coordinates times 2**power are exact subnormals
    g = torch.Generator().manual_seed(3)
    reference_units = torch.randint(0, 100, (80, 2), generator=g).double()
    query_units = torch.randint(0, 100, (20, 2), generator=g).double()
    reference, queries = (reference_units * 2.0 ** power).to(dtype), (query_units * 2.0 ** power).to(dtype)
    found = nearest_neighbors(queries, reference, 2)
    assert torch.isfinite(found.distances).all()
    want = brute(query_units, reference_units, 2).values               # exact in units of 2**power
    torch.testing.assert_close(found.distances / 2.0 ** power, want, rtol=1e-9, atol=0)
    at = (query_units[:, None, :] - reference_units[found.indices]).pow(2).sum(2).sqrt()
    assert torch.equal(at, want)                                       # ties may pick either row


def test_margin_zero_still_certifies_by_screening():
    # with only k candidates the certificate compared the k-th one's screened distance with its own
    # exact one, which its rounding bound always straddles: every query went to the brute-force
    # re-search (200x slower, helper-98). One candidate beyond the k-th is kept in any case.
    g = torch.Generator().manual_seed(0)
    queries, reference = torch.randn(60, 8, generator=g), torch.randn(3000, 8, generator=g)
    found = nearest_neighbors(queries, reference, 1, margin=0)
    assert found.rechecked < 6
    assert torch.equal(found.indices, brute(queries, reference, 1)[1])


@pytest.mark.parametrize("n", [50, 20000])
def test_all_equal_rows_come_in_index_order(n):
    # all-zero rows: the rounding bound is 0, so topk's arbitrary pick among the ties passed the
    # certificate ([31, 32] at N = 50, [16384, 16385] at N = 20000, helper-98); lower index first
    zeros = torch.zeros(n, 4)
    assert nearest_neighbors(zeros[:1], zeros, 2).indices.tolist() == [[0, 1]]


def test_no_features_and_no_other_row_are_refused_by_name():
    with pytest.raises(ValueError, match=r"queries and reference have no features"):
        nearest_neighbors(torch.zeros(3, 0), torch.zeros(5, 0), 2)           # every distance read 0
    with pytest.raises(ValueError, match=r"samples and reference have no features"):
        kfm.kde_log_density(torch.zeros(3, 0), torch.zeros(5, 0), bandwidth=1.0)   # log p read 0
    with pytest.raises(ValueError, match=r"exclude_self needs a reference of at least 2 rows, got 1"):
        nearest_neighbors(torch.zeros(1, 2), torch.zeros(1, 2), 1, exclude_self=True)   # "k in [1, 0]"


def test_metrics_neighbors_re_exports_every_public_name_of_the_search():
    """The search lives in kinetic_fm.knn (below the layers: the EFM field uses it too);
    kinetic_fm.metrics.neighbors, where it was, still offers every public name, the same objects."""
    import kinetic_fm as kfm
    from kinetic_fm import knn
    from kinetic_fm.metrics import neighbors

    own = {name for name, value in vars(knn).items()
           if not name.startswith("_") and getattr(value, "__module__", None) == knn.__name__}
    assert set(neighbors.__all__) == own | {"BACKENDS"}
    for name in neighbors.__all__:
        assert getattr(neighbors, name) is getattr(knn, name), name
    assert kfm.nearest_neighbors is knn.nearest_neighbors


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_the_float64_screening_stays_within_its_error_bound_in_exact_arithmetic(dim):
    # queries ~1 from a tight cluster far from the origin: the centring, the score's add and
    # ‖x‖² round at the bound's own scale here. Measured against exact rational arithmetic, the
    # screened squared distance of each query's best row must lie within _screening_error (the
    # earlier (D + 3)·u with a squared vector_norm for ‖x‖² was exceeded 1.1× at D = 2).
    from fractions import Fraction

    from kinetic_fm.knn import _Centred, _screen_gemm, _screening_error

    def exact_d2(a, b):
        return sum((Fraction(p) - Fraction(q)) ** 2 for p, q in zip(a.tolist(), b.tolist()))

    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        c0 = torch.randn(dim, generator=g, dtype=torch.float64)
        y = c0 / c0.norm() + torch.randn(8, dim, generator=g, dtype=torch.float64) / 256 / dim ** 0.5
        x = torch.randn(300, dim, generator=g, dtype=torch.float64) * 0.3
        centred = _Centred.of(y)
        cand, worst, u = _screen_gemm(x, y, torch.float64, centred.sq_norms, 1, 8, False, 0, "torch",
                                      centre=centred.centre)
        bound = _screening_error(torch.linalg.vector_norm(x - centred.centre, dim=1), centred.norm_max, dim, u)
        for i in range(x.shape[0]):
            error = abs(Fraction(float(worst[i])) - exact_d2(x[i], y[int(cand[i, 0])]))
            assert error <= Fraction(float(bound[i])), (seed, i, float(error) / float(bound[i]))
