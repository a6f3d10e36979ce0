"""Closed-form EFM velocity (kinetic_fm.fields.empirical) against a float64 brute force."""
import contextlib
import decimal
import gzip
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.fields.adapters import ModelTX, ModelXT, ReversedTime
from kinetic_fm.fields.empirical import PosteriorRecorder


def brute(atoms, x, t, eps=1e-6):
    """Materialise x − t·y in float64 and take the softmax: the definition, nothing clever."""
    y, x = atoms.double().flatten(1), x.double().flatten(1)
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).clamp_max(1 - eps)   # v(x, min(t, 1 − eps))
    one_minus = 1 - t
    dist2 = (x[:, None, :] - t[:, None, None] * y[None]).pow(2).sum(dim=2)
    w = torch.softmax(-dist2 / (2 * one_minus[:, None] ** 2), dim=1)
    return (w @ y - x) / one_minus[:, None], w


def exact_neglected(atoms, x, t, kept):
    """The posterior mass 1 − Σ_kept w_j at (x, t) in exact arithmetic on the float inputs, rounded
    once to float64: the logits as fractions, their exponentials to 60 digits (no float64 anywhere)."""
    t = Fraction(float(t))
    xs = [Fraction(v) for v in x.double().tolist()]
    sq = [sum((xi - t * Fraction(yi)) ** 2 for xi, yi in zip(xs, y)) for y in atoms.double().flatten(1).tolist()]
    low = min(sq)
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        w = [(Decimal(r.numerator) / Decimal(r.denominator)).exp()
             for r in ((low - s) / (2 * (1 - t) ** 2) for s in sq)]
        kept = set(kept)
        return float(sum(v for j, v in enumerate(w) if j not in kept) / sum(w))


def neglect_against_exact(field, x, t):
    """Each row's ``neglected_bound`` and the exact mass its kept atoms leave out, (B,) float64."""
    bound = field.evaluate(x, t).diagnostics.neglected_bound
    kept = field.posterior(x, t, k=field.truncate).indices
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).clamp_max(1 - field.eps)
    truth = [exact_neglected(field.atoms, x[i], t[i], kept[i].tolist()) for i in range(x.shape[0])]
    return bound, torch.tensor(truth, dtype=torch.float64)


def path_states(atoms, t, seed):
    """Points on the conditional paths x_t = (1 − t)·noise + t·y_j: where a sampler goes."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(t),) + atoms.shape[1:], generator=g, dtype=atoms.dtype)
    j = torch.randint(0, atoms.shape[0], (len(t),), generator=g)
    tt = t.to(atoms.dtype).view(-1, *[1] * (atoms.dim() - 1))
    return (1 - tt) * noise + tt * atoms[j]


def rel_err(v, ref):
    v, ref = v.double().flatten(1), ref.double().flatten(1)
    return ((v - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)).max().item()


@pytest.fixture(scope="module")
def atoms():
    g = torch.Generator().manual_seed(0)
    return torch.rand(400, 3, 4, 4, generator=g) * 2 - 1


TIMES = [0.0, 0.03, 0.15, 0.4, 0.7, 0.9, 0.99, 0.999, 1 - 1e-5]


@pytest.mark.parametrize("chunk,batch_chunk", [(33, 7), (400, 64), (100_000, None)])
@pytest.mark.parametrize("dtype,blas", [(torch.float32, "torch"), (torch.float32, "numpy"),
                                        (torch.float64, "torch")])
def test_chunked_equals_dense_brute_force(atoms, chunk, batch_chunk, dtype, blas, fixed_blas):
    used = fixed_blas(blas)                     # float32 products on CPU through either BLAS
    atoms = atoms.to(dtype)
    field = kfm.EmpiricalFlow(atoms, chunk=chunk, batch_chunk=batch_chunk)
    t = torch.tensor(TIMES).repeat_interleave(6).to(dtype)          # mixed per-sample times
    x = path_states(atoms, t, seed=1)
    v = field(x, t)
    assert v.shape == x.shape and v.dtype == dtype
    ref, _ = brute(atoms, x, t)
    # float32: output round-off, plus the screened logits' error in the dense (small t) regime
    assert rel_err(v, ref) < (1e-5 if dtype == torch.float32 else 1e-10)
    assert set(used) == {blas}                  # every product took that path


def test_logit_passes_in_small_column_blocks_match_brute_force(atoms, monkeypatch):
    # the passes after the GEMM (candidate count, exponentials, entropy) walk the (b, N) logits in
    # column blocks of a byte budget; 7 float32 columns of 12 rows each here, so edges fall everywhere
    from kinetic_fm import blocks

    monkeypatch.setattr(blocks, "CPU_BLOCK_BYTES", 7 * 12 * 4)
    field = kfm.EmpiricalFlow(atoms, batch_chunk=12)
    t = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.3, 0.8]).repeat_interleave(4)
    x = path_states(atoms, t, seed=9)
    v, d = field(x, t), field.diagnostics(x, t)
    ref, w = brute(atoms, x, t)
    assert rel_err(v, ref) < 1e-5
    torch.testing.assert_close(d.entropy, -torch.special.xlogy(w, w).sum(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.max_weight, w.max(dim=1).values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("floor,blocks_per_pass", [(1024, 4), (20_000, 2), (None, 1)])
def test_logit_passes_go_in_equal_parts_on_an_accelerator_beyond_the_floor(atoms, monkeypatch, floor, blocks_per_pass):
    # an accelerator's budget (256 MiB) held whole logit matrices, whose passes' temporaries (a mask,
    # the int64/float64 copies of a wider sum) took the N = 50,000 peak past 1.3 x (train + output);
    # beyond _SPLIT_FLOOR_BYTES (lowered here: 20 moving rows of 400 float32 logits, 32,000 bytes)
    # they go in two to four equal parts (16 MiB blocks left a 1-column tail at N = 16,385)
    from kinetic_fm import blocks
    from kinetic_fm.fields import empirical

    monkeypatch.setattr(blocks, "CPU_BLOCK_BYTES", blocks.DEVICE_BLOCK_BYTES)     # the device's budget
    if floor is not None:
        monkeypatch.setattr(empirical, "_SPLIT_FLOOR_BYTES", floor)
    widths, split = [], empirical._column_blocks
    monkeypatch.setattr(empirical, "_column_blocks",
                        lambda m: widths.append((m.shape[0], [b.shape[1] for b in split(m)])) or split(m))
    field = kfm.EmpiricalFlow(atoms, batch_chunk=24)
    t = torch.tensor([0.0, 0.02, 0.05, 0.3, 0.8, 0.99]).repeat_interleave(4)       # dense and sparse rows
    x = path_states(atoms, t, seed=11)
    v, d = field(x, t), field.diagnostics(x, t)
    ref, w = brute(atoms, x, t)
    assert widths and all(sum(ws) == atoms.shape[0] and max(ws) - min(ws) <= 1 for _, ws in widths)
    widest = max(rows for rows, _ in widths)                    # the 20 rows with t > 0: 32,000 bytes
    assert {len(ws) for rows, ws in widths if rows == widest} == {blocks_per_pass}
    assert rel_err(v, ref) < 1e-5
    torch.testing.assert_close(d.entropy, -torch.special.xlogy(w, w).sum(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("truncate", [None, 12])
def test_exact_rescoring_in_small_blocks_matches_brute_force(atoms, monkeypatch, truncate):
    # the float64 re-scoring of candidate atoms walks the rows in blocks of a byte budget; one
    # row of 2 candidates is 2 * 48 * 8 = 768 bytes, so 1,000 bytes leaves one row a block
    from kinetic_fm.fields import empirical

    monkeypatch.setattr(empirical, "_EXACT_BLOCK_BYTES", 1_000)
    field = kfm.EmpiricalFlow(atoms.double(), truncate=truncate)
    t = torch.tensor([0.3, 0.6, 0.9, 0.99], dtype=torch.float64).repeat(5)
    x = path_states(atoms.double(), t, seed=10)
    ref, w = brute(atoms, x, t)
    d = field.diagnostics(x, t)
    if truncate is None:
        assert d.exact[t >= 0.9].all()                         # late rows went through re-scoring
        assert rel_err(field(x, t), ref) < 1e-10
    else:
        bound = d.neglected_bound[:, None] * 2 * atoms.flatten(1).norm(dim=1).max() / (1 - t)[:, None]
        assert ((field(x, t).flatten(1) - ref).norm(dim=1, keepdim=True) <= bound + 1e-12).all()
    true_max = w.max(dim=1).values
    if truncate is None:
        torch.testing.assert_close(d.max_weight, true_max, rtol=1e-9, atol=1e-12)
    else:                                      # renormalised over the kept atoms: w / (1 − dropped)
        assert (true_max <= d.max_weight + 1e-12).all()
        assert (true_max >= d.max_weight * (1 - d.neglected_bound) - 1e-12).all()


def test_weights_sum_to_one_and_match_brute_force(atoms):
    field = kfm.EmpiricalFlow(atoms.double())
    t = torch.tensor([0.05, 0.2, 0.5, 0.95], dtype=torch.float64)
    x = path_states(atoms.double(), t, seed=2)
    post = field.posterior(x, t, k=atoms.shape[0])
    torch.testing.assert_close(post.weights.sum(dim=1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    _, w = brute(atoms, x, t)
    top = w.topk(5, dim=1)
    torch.testing.assert_close(post.weights[:, :5], top.values, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w.gather(1, post.indices), post.weights, rtol=1e-9, atol=1e-12)
    assert torch.equal(post.indices[:, 0], top.indices[:, 0])


def test_t_zero_gives_mean_minus_x(atoms):
    x = torch.randn(8, 3, 4, 4)
    v = kfm.EmpiricalFlow(atoms)(x, torch.zeros(8))
    torch.testing.assert_close(v, atoms.mean(dim=0) - x, rtol=1e-6, atol=1e-6)
    # float64 atoms: the exact mean, also for t = 0 rows sharing a batch with moving rows
    y = atoms.double()
    field = kfm.EmpiricalFlow(y)
    t = torch.tensor([0.0, 0.5, 0.0, 0.02], dtype=torch.float64)
    x = path_states(y, t, seed=3)
    out = field.evaluate(x, t)
    ref, w = brute(y, x, t)
    torch.testing.assert_close(out.velocity.flatten(1), ref, rtol=1e-12, atol=1e-12)
    start = t == 0
    assert (out.diagnostics.max_weight[start] == 1 / 400).all()
    assert (out.diagnostics.neglected_bound[start] == 0).all()
    post = field.posterior(x, t, k=3)
    torch.testing.assert_close(post.weights[start], w[start][:, :3], rtol=1e-12, atol=0)
    torch.testing.assert_close(post.weights[~start], w[~start].topk(3, dim=1).values, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.9, 0.999999])
def test_single_atom_gives_straight_line_velocity(t):
    y = torch.randn(1, 5, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    v = kfm.EmpiricalFlow(y)(x, t)
    assert torch.equal(v, (y - x) / (1 - t))               # exactly, as the acceptance asks: ȳ = y in float64
    times = torch.tensor([t, 0.0, 0.5, 1 - 1e-6], dtype=torch.float64)             # one time per row
    assert torch.equal(kfm.EmpiricalFlow(y)(x, times), (y - x) / (1 - times[:, None]))


@pytest.mark.parametrize("t", [0.999, 1 - 1e-7, 1.0])
def test_on_an_atom_near_t_one_the_velocity_is_finite_and_zero(atoms, t):
    x = atoms[:10].clone()
    v = kfm.EmpiricalFlow(atoms)(x, torch.full((10,), t, dtype=torch.float64))
    assert torch.isfinite(v).all()
    assert v.abs().max() == 0


def test_t_one_is_clamped_at_one_minus_eps(atoms):
    field = kfm.EmpiricalFlow(atoms, eps=1e-4)
    x = atoms[:5] + 0.01 * torch.randn(5, 3, 4, 4)
    v1 = field(x, torch.ones(5, dtype=torch.float64))
    v_eps = field(x, torch.full((5,), 1 - 1e-4, dtype=torch.float64))
    torch.testing.assert_close(v1, v_eps, rtol=0, atol=0)
    # the clamped step of length eps lands on the nearest atom
    torch.testing.assert_close(x + 1e-4 * v1, atoms[:5], rtol=0, atol=1e-5)


@pytest.mark.parametrize("t", [0.01, 0.5, 0.99])
def test_far_from_data_neither_underflows_nor_overflows(atoms, t):
    x = 1e4 * torch.randn(6, 3, 4, 4, dtype=torch.float64)
    v = kfm.EmpiricalFlow(atoms)(x, t)
    ref, _ = brute(atoms, x, t)
    assert torch.isfinite(v).all()
    assert rel_err(v, ref) < 1e-6


@pytest.mark.parametrize("dtype,offset,t", [(torch.float32, 100.0, 0.1), (torch.float64, 1e4, 0.01),
                                            (torch.float64, -1e4, 0.1)])
def test_a_batch_far_from_a_tight_cluster_neither_underflows_nor_overflows_on_the_dense_path(dtype, offset, t):
    # the test above goes the exact route (one candidate); here many atoms matter, so the screened
    # logits are exponentiated, and they sit near −‖t·y‖²/(2(1 − t)²) ≈ −2e5: without subtracting
    # each row's best logit every weight underflowed to 0 and the velocity read NaN
    g = torch.Generator().manual_seed(6)
    atoms = (offset + 0.01 * torch.rand(400, 48, generator=g, dtype=torch.float64)).to(dtype)
    x = torch.randn(6, 48, generator=g, dtype=torch.float64).to(dtype)
    out = kfm.EmpiricalFlow(atoms).evaluate(x, t)
    assert not out.diagnostics.exact.any()                                   # the dense path
    ref, _ = brute(atoms, x, t)
    assert torch.isfinite(out.velocity).all()
    assert rel_err(out.velocity, ref) < (1e-6 if dtype == torch.float32 else 1e-12)


def test_near_duplicates_close_to_t_one_are_exact():
    # pairs of atoms 1e-3 apart; the GEMM expansion alone would be off by far more than 1e-6
    g = torch.Generator().manual_seed(3)
    base = torch.rand(50, 64, generator=g) * 2 - 1
    atoms = torch.cat([base, base + 1e-3 * torch.randn(50, 64, generator=g)])
    x = base[:10] + 2e-4 * torch.randn(10, 64, generator=g)
    field = kfm.EmpiricalFlow(atoms)
    for t in (0.99, 0.999):
        t = torch.full((10,), t)
        out = field.evaluate(x, t)
        ref, w = brute(atoms, x, t)
        assert out.diagnostics.exact.all()
        assert rel_err(out.velocity, ref) < 1e-6
        torch.testing.assert_close(out.diagnostics.max_weight, w.max(dim=1).values, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dim", [2, 784])
@pytest.mark.parametrize("truncate", [None, 1])
def test_a_tie_between_two_atoms_late_in_a_run_weighs_them_equally(dim, truncate):
    # y2 is y1 reversed and x = t·(y1 + y2)/2 is a palindrome, so ‖x − t·y1‖ = ‖x − t·y2‖ exactly
    # and w = (1/2, 1/2). Near t = 1 the logits' expanded form 2d·(x − t·y_b) − t‖d‖² cancelled,
    # its rounding magnified by t/(2(1−t)²): weights (1, 8e-6), a velocity 1e5× too large, and a
    # truncated bound of 8e-6 for a dropped mass of 1/2.
    g = torch.Generator().manual_seed(5)
    y1 = (torch.rand(dim, generator=g, dtype=torch.float64) * 2 - 1) * 1000 + 1500
    atoms = torch.stack([y1, y1.flip(0)])
    t = torch.tensor([1 - 3e-6], dtype=torch.float64)
    x = (t * (atoms[0] + atoms[1]) / 2)[None]
    assert torch.equal(x, x.flip(1))
    out = kfm.EmpiricalFlow(atoms, truncate=truncate).evaluate(x, t)
    if truncate is None:
        w = kfm.EmpiricalFlow(atoms).posterior(x, t, k=2).weights
        torch.testing.assert_close(w, torch.full((1, 2), 0.5, dtype=torch.float64), rtol=0, atol=1e-9)
        expected = ((atoms[0] + atoms[1]) / 2 - x) / (1 - t)
        assert rel_err(out.velocity, expected) < 1e-6
    else:
        assert out.diagnostics.neglected_bound.item() >= 0.5 - 1e-9


@pytest.fixture(scope="module")
def cluster():
    """200 spread atoms plus 100 jittered copies (spread 1e-4) of one centre: more near-duplicates
    than ``exact_max`` (64), the set-up of a duplication study."""
    g = torch.Generator().manual_seed(11)
    centre = torch.rand(1, 48, generator=g) * 2 - 1
    atoms = torch.cat([torch.rand(200, 48, generator=g) * 2 - 1, centre + 1e-4 * torch.randn(100, 48, generator=g)])
    return atoms, centre


@pytest.mark.parametrize("t", [0.999, 0.9999, 1 - 1e-6])
def test_more_near_duplicates_than_exact_max_late_in_a_run_are_exact(cluster, t):
    # the screened float32 logits' error grows like 1/(1 − t)²: such rows must be re-scored exactly
    # whatever their number of candidates, or the velocity is off by more than 100 %
    atoms, centre = cluster
    g = torch.Generator().manual_seed(12)
    x = (1 - t) * torch.randn(8, 48, generator=g) + t * centre
    out = kfm.EmpiricalFlow(atoms).evaluate(x, t)
    ref, w = brute(atoms, x, t)
    assert (out.diagnostics.candidates > 64).all() and out.diagnostics.exact.all()
    assert rel_err(out.velocity, ref) < 1e-6
    torch.testing.assert_close(out.diagnostics.max_weight, w.max(dim=1).values, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.diagnostics.entropy, -torch.special.xlogy(w, w).sum(dim=1), rtol=1e-6, atol=1e-9)


def test_a_row_with_exactly_exact_max_candidates_is_rescored_exactly():
    # "at most exact_max candidates" includes exact_max itself: 4 atoms near x, 40 far beyond the
    # cutoff. With exact_max = 4 the row is re-scored in float64 (velocity to float64 round-off);
    # with exact_max = 3 it takes the screened float32 path (its error is ~1e-7, reported as e).
    g = torch.Generator().manual_seed(21)
    centre = torch.rand(1, 8, generator=g)
    atoms = torch.cat([centre + 0.05 * torch.randn(4, 8, generator=g), centre + 5 + torch.rand(40, 8, generator=g)])
    t = 0.8
    x = (t * centre + (1 - t) * 0.1 * torch.randn(3, 8, generator=g)).double()
    ref, _ = brute(atoms, x, t)
    at_limit = kfm.EmpiricalFlow(atoms, exact_max=4).evaluate(x, t)
    assert (at_limit.diagnostics.candidates == 4).all() and at_limit.diagnostics.exact.all()
    assert rel_err(at_limit.velocity, ref) < 1e-13
    above = kfm.EmpiricalFlow(atoms, exact_max=3).evaluate(x, t).diagnostics
    assert not above.exact.any() and (above.logit_error_bound > 0).all()


def test_many_candidates_are_rescored_in_slices(cluster, monkeypatch):
    # a row whose candidates do not fit one float64 block is done in slices, in two passes
    from kinetic_fm.fields import empirical

    atoms, centre = cluster
    monkeypatch.setattr(empirical, "_EXACT_BLOCK_BYTES", 7 * 48 * 8)      # 7 atoms a slice
    x = 1e-3 * torch.randn(5, 48, generator=torch.Generator().manual_seed(13)) + 0.999 * centre
    post = kfm.EmpiricalFlow(atoms).posterior(x, 0.999, k=3)
    v = kfm.EmpiricalFlow(atoms)(x, 0.999)
    ref, w = brute(atoms, x, 0.999)
    assert rel_err(v, ref) < 1e-6
    torch.testing.assert_close(post.weights, w.topk(3, dim=1).values, rtol=1e-6, atol=1e-9)


def test_on_an_atom_with_many_exact_copies_the_velocity_is_zero():
    g = torch.Generator().manual_seed(14)
    atoms = torch.cat([torch.rand(50, 16, generator=g), torch.rand(1, 16, generator=g).expand(101, 16)])
    for t in (1 - 1e-7, 1.0):
        assert kfm.EmpiricalFlow(atoms)(atoms[-1:], t).abs().max() == 0
        # the 101 equal atoms split the posterior evenly (the docs' 1/m and log m), in either mode
        for field in (kfm.EmpiricalFlow(atoms), kfm.EmpiricalFlow(atoms, truncate=101)):
            d = field.diagnostics(atoms[-1:], t)
            assert d.max_weight.item() == pytest.approx(1 / 101, rel=1e-12)
            assert d.entropy.item() == pytest.approx(math.log(101), rel=1e-12)


def test_t_past_one_minus_eps_is_clamped_in_the_posterior_too():
    # x halfway between atoms 0 and 2: at t = 1 − eps atom 2 is nearer to x/t, so the clamped field
    # must carry x there in the remaining eps (v = 1/eps), not stop between the two (v = 0)
    field = kfm.EmpiricalFlow(torch.tensor([[0.0], [2.0]], dtype=torch.float64), eps=1e-3)
    x = torch.ones(1, 1, dtype=torch.float64)
    v_eps, v_one = field(x, 1 - 1e-3), field(x, 1.0)
    torch.testing.assert_close(v_eps, torch.full((1, 1), 1e3, dtype=torch.float64))
    assert torch.equal(v_one, v_eps)


@pytest.mark.parametrize("x,got", [(np.zeros((3, 4)), r"a NumPy array of shape \(3, 4\) \(torch.from_numpy"),
                                   (torch.tensor(1.0), "a 0-d tensor"), ([[0.0] * 4], "list")])
def test_x_that_is_no_batch_tensor_is_named_with_what_came(x, got):
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(B, \.\.\.\), got " + got):
        kfm.EmpiricalFlow(torch.randn(5, 4))(x, 0.5)


def test_inputs_that_require_grad_integer_inputs_and_empty_batches():
    g = torch.Generator().manual_seed(15)
    train = torch.randn(30, 4, generator=g)
    made = torch.nn.Linear(4, 4)(torch.randn(6, 4, generator=g))       # a generator's output, with grad
    plain = made.detach()
    field = kfm.EmpiricalFlow(train)
    assert torch.equal(field(made, 0.5), field(plain, 0.5))
    assert torch.equal(kfm.EmpiricalFlow(train.requires_grad_())(plain, 0.5), field(plain, 0.5))
    ints = torch.randint(-2, 3, (5, 4), generator=g)
    v = field(ints, 0.7)
    assert v.dtype == torch.float32 and torch.equal(v, field(ints.float(), 0.7))
    assert field(torch.zeros(0, 4), 0.5).shape == (0, 4)
    assert field.posterior(torch.zeros(0, 4), 0.5, k=2).indices.shape == (0, 2)
    times = torch.sigmoid(torch.zeros(6, requires_grad=True))            # a learnt schedule's times
    assert torch.equal(field(plain, times), field(plain, times.detach()))
    assert torch.equal(field.posterior(plain, times, k=2).weights, field.posterior(plain, times.detach(), k=2).weights)


def _tight_cluster(spread, dtype):
    """The audit's case: 100 atoms within ``spread`` of one point, queries near the first three."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal(8)
    atoms = torch.tensor(base + spread * rng.standard_normal((100, 8)), dtype=dtype)
    x = (atoms[:3].double() + spread * torch.tensor(rng.standard_normal((3, 8)))).to(dtype)
    return atoms, x


@pytest.mark.parametrize("spread", [1e-2, 1e-4, 1e-6])
def test_the_dense_route_reports_a_true_bound_on_its_mean_error(spread):
    # ȳ's float32 GEMM errs by ~u·‖y‖ whatever the spread, while v = (ȳ − x)/(1 − t) shrinks with
    # it: at spread 1e-6 v was off by 14 % with only logit_error_bound (2e-6) reported
    atoms, x = _tight_cluster(spread, torch.float32)
    t = torch.full((3,), 0.3)
    got = kfm.EmpiricalFlow(atoms).evaluate(x, t)
    d = got.diagnostics
    assert not d.exact.any()                                   # the dense route: 100 candidates > exact_max
    want, _ = brute(atoms, x, t)                               # float64 over the same rounded atoms
    error = (got.velocity.double() - want).norm(dim=1)
    assert (error <= d.mean_error_bound / (1 - 0.3)).all(), (error, d.mean_error_bound)
    assert (d.mean_error_bound < 1e-3).all() and (d.logit_error_bound < 1e-5).all()
    if spread == 1e-6:   # the case the bound exists for: relative error far above the logit bound
        assert (error / want.norm(dim=1) > 1e-2).any()
    # float64 atoms: the same route, exact to a few 1e-10 (brute's own rounding, at spread 1e-6)
    atoms, x = _tight_cluster(spread, torch.float64)
    got = kfm.EmpiricalFlow(atoms).evaluate(x, t.double())
    want, _ = brute(atoms, x, t)
    error = (got.velocity - want).norm(dim=1)
    assert (error <= got.diagnostics.mean_error_bound / (1 - 0.3)).all()
    assert (error <= 1e-9 * want.norm(dim=1)).all() and (got.diagnostics.mean_error_bound < 1e-12).all()


def test_mean_error_bound_is_zero_where_the_mean_is_formed_in_float64(atoms):
    field = kfm.EmpiricalFlow(atoms.float())
    t = torch.tensor([0.0, 0.05, 0.2, 0.6, 0.97])
    d = field.diagnostics(path_states(atoms.float(), t, seed=4), t)
    assert (d.mean_error_bound[d.exact] == 0).all() and (d.mean_error_bound[~d.exact] > 0).all()
    assert (~d.exact).any() and d.exact.any()


@pytest.mark.parametrize("dtype,bytes_per_logit", [(torch.float32, 4), (torch.float64, 8)])
def test_memory_budget_counts_the_logits_bytes(dtype, bytes_per_logit):
    field = kfm.EmpiricalFlow(torch.zeros(1000, 3, dtype=dtype), memory_budget=1 << 20)
    assert field.batch_chunk * 1000 * bytes_per_logit <= 1 << 20 < (field.batch_chunk + 1) * 1000 * bytes_per_logit


def test_diagnostics_match_brute_force(atoms):
    field = kfm.EmpiricalFlow(atoms.double())
    t = torch.tensor([0.0, 0.05, 0.2, 0.6, 0.97], dtype=torch.float64)
    x = path_states(atoms.double(), t, seed=4)
    d = field.diagnostics(x, t)
    _, w = brute(atoms, x, t)
    torch.testing.assert_close(d.max_weight, w.max(dim=1).values, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(d.entropy, -torch.special.xlogy(w, w).sum(dim=1), rtol=1e-9, atol=1e-10)
    assert d.entropy[0] == pytest.approx(math.log(400))
    assert (d.logit_error_bound[d.exact] == 0).all()
    # atoms screened out lie at least `cutoff` below the best logit: N·e^(−cutoff) bounds their mass;
    # at t = 0 every atom counts (the plain mean), so nothing is left out
    assert d.neglected_bound[0] == 0.0
    assert (d.neglected_bound[1:] == min(1.0, 400 * math.exp(-field.cutoff))).all() and (d.neglected_bound < 1e-15).all()


@pytest.mark.parametrize("truncate", [None, 8])
def test_batch_composition_does_not_change_a_sample(atoms, truncate):
    field = kfm.EmpiricalFlow(atoms, batch_chunk=5, truncate=truncate)
    t = torch.tensor(TIMES)
    x = path_states(atoms, t, seed=5)
    whole = field(x, t)
    alone = torch.cat([field(x[i:i + 1], t[i:i + 1]) for i in range(len(t))])
    torch.testing.assert_close(whole, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_truncated_mode_reports_a_valid_neglected_mass_bound(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(6)
    atoms = torch.rand(600, 32, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0.0, 0.05, 0.2, 0.5, 0.9], dtype=torch.float64).repeat(4)
    x = path_states(atoms, t, seed=7)
    _, w = brute(atoms, x, t)
    out = kfm.EmpiricalFlow(atoms, truncate=25, backend=backend).evaluate(x, t)
    true_mass_left = (1 - w.topk(25, dim=1).values.sum(dim=1)).clamp_min(0)
    moving = t > 0
    assert (out.diagnostics.neglected_bound[moving] >= true_mass_left[moving] - 1e-12).all()
    # the bound is R/(1 + R) with R = (N − k)·w_(k), w_(k) the smallest kept weight renormalised
    kept = w.topk(25, dim=1).values
    ratio = (600 - 25) * kept[:, -1] / kept.sum(dim=1)
    torch.testing.assert_close(out.diagnostics.neglected_bound[moving], (ratio / (1 + ratio))[moving], rtol=1e-9, atol=1e-15)
    # late in the path the top atoms carry everything and the bound says so
    late = t >= 0.9
    assert (out.diagnostics.neglected_bound[late] < 1e-12).all()
    ref, _ = brute(atoms, x, t)
    assert rel_err(out.velocity[late], ref[late]) < 1e-12
    # with k = N truncation is exact everywhere
    full = kfm.EmpiricalFlow(atoms, truncate=600, backend=backend)(x, t)
    assert rel_err(full, ref) < 1e-10


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_truncated_mode_at_t_0_weighs_every_atom_so_its_zero_bound_is_true(backend):
    # At t = 0 the posterior is uniform (1/N each). Were k atoms kept there, the k/N they hold would
    # leave 1 − k/N out and a bound of 0 would be false; but the field answers t = 0 with the
    # mean of all N (the exact ȳ, no truncation), so the mass left out of the ȳ it returns is 0,
    # brute force says so, and 0 is the true (and tight) bound. From t > 0 on it keeps k atoms,
    # and the bound covers the 1 − k/N they then leave out (t = 1e-12: the posterior still ~uniform).
    if backend == "faiss":
        pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(11)
    atoms = torch.rand(60, 5, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    field = kfm.EmpiricalFlow(atoms, truncate=7, backend=backend)
    start = field.evaluate(x, torch.zeros(4, dtype=torch.float64))
    velocity, w = brute(atoms, x, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(w, torch.full_like(w, 1 / 60))                  # uniform: no atom is preferred
    assert rel_err(start.velocity, velocity) < 1e-14                  # ȳ is the mean of all 60 ...
    kept_mean = atoms[field.posterior(x, torch.zeros(4, dtype=torch.float64), k=7).indices].mean(dim=1)
    assert ((kept_mean - x) - start.velocity).norm(dim=1).min() > 0.1  # ... not of 7 of them
    assert (start.diagnostics.neglected_bound == 0).all()
    assert torch.equal(start.diagnostics.max_weight, w.max(dim=1).values)   # its posterior: all 60 atoms
    # just after t = 0 the k kept atoms hold about 7/60, and the bound is above the exact rest
    bound, truth = neglect_against_exact(field, x, torch.full((4,), 1e-12, dtype=torch.float64))
    assert ((truth - (1 - 7 / 60)).abs() < 1e-9).all() and (bound >= truth).all()
    later = field.evaluate(x, torch.full((4,), 1e-12, dtype=torch.float64))
    assert (later.velocity - start.velocity).norm(dim=1).min() > 0.1      # the jump to the truncated field


def test_the_faiss_backend_takes_the_logits_route_where_x_over_t_is_past_float32(monkeypatch):
    # its atoms come from a search of x/t in float32: at t = 1e-20 that raised "queries holds values
    # up to 3e+20", naming an argument the caller never passed (22nd session's list); such a call
    # now picks its atoms from the screening GEMM, as backend="torch" does, and gets the same answer
    pytest.importorskip("faiss")
    from kinetic_fm.fields import empirical

    searched = []
    search = empirical.nearest_neighbors
    monkeypatch.setattr(empirical, "nearest_neighbors", lambda *a, **kw: searched.append(1) or search(*a, **kw))
    g = torch.Generator().manual_seed(3)
    atoms, x = torch.randn(100, 8, generator=g), torch.randn(4, 8, generator=g)
    by_faiss = kfm.EmpiricalFlow(atoms, truncate=5, backend="faiss")
    by_torch = kfm.EmpiricalFlow(atoms, truncate=5)
    for t in (1e-20, 1e-30, 1e-300):
        out, ref = by_faiss.evaluate(x, t), by_torch.evaluate(x, t)
        assert torch.equal(out.velocity, ref.velocity) and torch.isfinite(out.velocity).all()
        assert torch.equal(out.diagnostics.neglected_bound, ref.diagnostics.neglected_bound)
    assert not searched
    by_faiss.evaluate(x, 1e-10)    # still within float32's reach: searched
    assert searched


def test_the_faiss_backend_without_truncate_is_warned_of_as_ignored():
    # it picks truncated mode's atoms; without truncate the field weighs all N, and the setting
    # went without a word (helper-132)
    atoms = torch.rand(50, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.warns(UserWarning, match="backend='faiss' is ignored without truncate"):
        field = kfm.EmpiricalFlow(atoms, backend="faiss")
    x, t = torch.zeros(3, 4, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    assert torch.equal(field(x, t), kfm.EmpiricalFlow(atoms)(x, t))


@pytest.mark.parametrize("spacing,truncate", [(1e-5, 12), (1e-4, 4), (1e-3, 4)])
def test_truncated_mode_picks_atoms_by_screened_logits_and_bounds_the_rest(spacing, truncate):
    # float32 atoms in clusters of near-duplicates: the screened logits cannot order a cluster,
    # so the kept set may differ from the exact top k; the bound must still cover what is dropped,
    # also late, where a cluster larger than k sits beyond the screening's precision (those rows
    # take the certified search) and kept weights underflow (the bound is taken in log space)
    g = torch.Generator().manual_seed(11)
    centres = torch.rand(30, 48, generator=g) * 2 - 1
    atoms = (centres.repeat_interleave(8, dim=0) + spacing * torch.randn(240, 48, generator=g)).float()
    t = torch.tensor([0.03, 0.15, 0.4, 0.7, 0.9, 0.99, 0.999, 0.9999, 1 - 1e-6]).repeat(5)
    x = path_states(atoms, t, seed=12)
    field = kfm.EmpiricalFlow(atoms, truncate=truncate)
    out = field.evaluate(x, t)
    top = field.posterior(x, t, k=truncate)
    ref, w = brute(atoms, x, t)
    dropped = 1 - w.gather(1, top.indices).sum(dim=1)          # true mass outside the kept set
    assert (out.diagnostics.neglected_bound >= dropped - 1e-6).all()
    assert (top.weights[:, :-1] >= top.weights[:, 1:]).all()   # descending, as documented
    torch.testing.assert_close(top.weights.sum(dim=1), torch.ones(len(t), dtype=torch.float64))
    # |v − v*| ≤ bound · 2 max ‖y‖ / (1 − t), plus float32 output round-off
    slack = out.diagnostics.neglected_bound[:, None] * 2 * atoms.norm(dim=1).max() / (1 - t.double()[:, None])
    assert ((out.velocity.double() - ref).norm(dim=1, keepdim=True) <= slack + 1e-4 * ref.norm(dim=1, keepdim=True)).all()
    # where the posterior sits on one cluster of 8 (late), keeping 12 atoms loses nothing
    late = t >= 0.9
    assert truncate < 8 or (out.diagnostics.neglected_bound[late] < 1e-6).all()


@pytest.mark.parametrize("far", [335.3817, 321.123457, 333.2718])
def test_truncated_bound_covers_an_atom_the_float32_screening_ranks_below_the_kept_one(far):
    # One feature, two float32 atoms (far, far/3), t = 0.75, truncate=1, and x/t swept across
    # their midpoint within ±2 float32 ulps of x: where the truth favours one atom by less than
    # the float32 screening's error, the screening keeps the other. The dropped atom then weighs
    # up to ~0.516 of the two, more than the ~0.5 its neighbour's exact logit alone would give
    # (R = (N − k)·exp(ℓ_(k) − ℓ_(k)) = 1); the 2e in the bound is what covers it
    atoms = torch.tensor([[far], [far / 3]], dtype=torch.float32)
    t = 0.75
    midpoint = t * atoms.double().sum() / 2
    ulp = 2.0 ** (math.floor(math.log2(midpoint)) - 23)
    x = (midpoint + torch.linspace(-2, 2, 4001, dtype=torch.float64) * ulp)[:, None]
    field = kfm.EmpiricalFlow(atoms, truncate=1)
    out = field.evaluate(x, t)
    kept = field.posterior(x, t, k=1).indices[:, 0]
    _, w = brute(atoms, x, t)
    dropped = 1 - w.gather(1, kept[:, None])[:, 0]
    # the regime of the bound: both atoms are candidates and the screening error bound
    # e = (D + 4)·u·(a‖x‖·max‖y‖ + c·max‖y‖²) (module docs) is within max_logit_error = 0.5
    a, c, y_max = t / (1 - t) ** 2, t ** 2 / (2 * (1 - t) ** 2), far * (1 + 1e-3)
    e = 5 * 2.0 ** -24 * (a * x.abs().max() * y_max + c * y_max ** 2)
    assert (out.diagnostics.candidates == 2).all() and e < 0.5
    assert (dropped > 0.505).any()                          # the screening did drop the heavier atom
    assert (out.diagnostics.neglected_bound >= dropped - 1e-12).all()


def test_truncated_mode_keeps_the_exact_top_k_of_a_cluster_it_cannot_screen():
    # late in a run, with a cluster of near-duplicates larger than k, the screened logits cannot
    # order the cluster: its candidates are re-scored exactly and the exact top k kept, so the
    # bound reports what is really left out (k = 1 used to report (N − 1)/N there)
    g = torch.Generator().manual_seed(21)
    centres = torch.rand(12, 64, generator=g) * 2 - 1
    atoms = (centres.repeat_interleave(10, dim=0) + 1e-3 * torch.randn(120, 64, generator=g)).float()
    t = torch.tensor([0.99, 0.995, 0.999]).repeat(4)
    x = path_states(atoms, t, seed=22)
    field = kfm.EmpiricalFlow(atoms, truncate=1)
    out = field.evaluate(x, t)
    ref, w = brute(atoms, x, t)
    top = field.posterior(x, t, k=1)
    assert torch.equal(top.indices[:, 0], w.argmax(dim=1))                    # the exact top atom
    dropped = 1 - w.gather(1, top.indices).sum(dim=1)
    assert (out.diagnostics.neglected_bound >= dropped - 1e-9).all()
    assert (out.diagnostics.neglected_bound <= dropped + 1e-6).all()          # and not much more


def test_truncated_bound_covers_the_float64_rounding_of_the_exact_logits_far_from_the_origin():
    # float64 atoms near (1000, 1000, 1000, 1000), t = 1 − 1e-6, x near the bisector of two of
    # them: the screened logits are off by far more than max_logit_error, so every candidate is
    # re-scored in float64 and the exact top 1 kept. Those float64 logits are ill-conditioned
    # there (|ℓ| ~ 1e11 for a difference ~ 1, terms t·(y_j + y_b) ~ 2000 cancelling against 2x):
    # the bound fell short in 20 of these 40 rows, by up to 0.023 (0.4977 where 0.5207 was left
    # out); it now adds their rounding bound (module docs), at most 1.9× the truth here
    g = torch.Generator().manual_seed(3)
    atoms = 1000.0 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    t = torch.full((40,), 1 - 1e-6, dtype=torch.float64)
    spread = torch.linspace(0, 2e-12, 40, dtype=torch.float64)[:, None]   # up to ~20 ulps of x
    x = t[0] * (atoms[0] + atoms[1]) / 2 + spread * torch.randn(40, 4, generator=g, dtype=torch.float64)
    field = kfm.EmpiricalFlow(atoms, truncate=1)
    bound, truth = neglect_against_exact(field, x, t)
    assert (truth > 0.4).any()                                   # near-ties were met
    assert (bound >= truth).all()
    assert (bound <= torch.maximum(2 * truth, truth + 0.2)).all()    # looser where unsure, not useless


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_truncated_bound_by_search_covers_near_ties_and_duplicates(backend, monkeypatch):
    # rows taking the k-nearest-neighbour search of x/t (every row with faiss; with torch those
    # with more than _RESCORE_ALL_MAX candidates, made 1 here so that two atoms do): the search
    # ranks by float64 distances to fl(x/t), so at a near-tie late in a run it may keep the
    # lighter atom (x within 2⁻⁵¹ of the bisector, t = 1 − 3e-6: up to 1.5e-7 was missed), and
    # with exact duplicates the bound equals the truth but for its float64 rounding (10 copies,
    # k = 1: 0.8999999999999999 was reported for 0.9)
    if backend == "faiss":
        pytest.importorskip("faiss")
    from kinetic_fm.fields import empirical

    monkeypatch.setattr(empirical, "_RESCORE_ALL_MAX", 1)
    g = torch.Generator().manual_seed(18)
    atoms = torch.rand(2, 1, generator=g, dtype=torch.float64)
    t = torch.full((64,), 1 - 3e-6, dtype=torch.float64)
    x = t[0] * (atoms[0] + atoms[1]) / 2 + (torch.rand(64, 1, generator=g, dtype=torch.float64) - 0.5) * 2.0 ** -50
    field = kfm.EmpiricalFlow(atoms, truncate=1, backend=backend, max_logit_error=1e-9)
    bound, truth = neglect_against_exact(field, x, t)
    assert (bound >= truth).all()
    assert (bound <= truth + 1e-4).all()
    same = torch.full((10, 3), 0.25, dtype=torch.float64)
    field = kfm.EmpiricalFlow(same, truncate=1, backend=backend, max_logit_error=1e-9)
    t = torch.tensor([0.3, 0.9, 1 - 1e-6], dtype=torch.float64)
    bound, truth = neglect_against_exact(field, torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64).repeat(3, 1), t)
    assert (truth == 0.9).all() and (bound >= 0.9).all() and (bound < 0.9001).all()


def test_truncated_bound_reaches_the_subnormals():
    # a dropped mass below float64's smallest normal number (2.2e-308) was reported as 0: float64's
    # sigmoid 1/(1 + e^−z) flushes to 0 once e^−z overflows (z < −709). x = 0, t = 0.9, so
    # ℓ_0 − ℓ_j = 40.5·y_j²: 730 for the second kept atom, 735 for the dropped one (a cutoff of
    # 1000 keeps all three candidates)
    atoms = torch.tensor([[0.0], [4.2456], [-4.26006]], dtype=torch.float64)
    x, t = torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0.9], dtype=torch.float64)
    bound, truth = neglect_against_exact(kfm.EmpiricalFlow(atoms, truncate=2, cutoff=1000.0), x, t)
    assert 0 < truth[0] < 1e-310 and bound[0] >= truth[0] and bound[0] < 1e-300


def test_truncated_bound_is_a_number_where_its_rounding_bound_overflows():
    # x ~1e150 (within float64's magnitude limit) at t = 1 − 1e-6, the best atom at the origin: the
    # logit rounding bound's λ_b² overflows to inf and μ = 0, and 5·μ·(λ_j + λ_b) = 0·inf made the
    # neglected bound NaN (it was 2.3e-16 before the rounding bound; 1 is true, if loose)
    atoms = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.4, 1e150]], dtype=torch.float64)
    bound = kfm.EmpiricalFlow(atoms, truncate=1).evaluate(x, 1 - 1e-6).diagnostics.neglected_bound
    assert 0 <= bound[0] <= 1


def test_recorder_traces_dominance_along_a_run(atoms):
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    res = kfm.sample(recorder, seeds=range(6), shape=(3, 4, 4), steps=20)
    trace = recorder.trace()
    assert trace.max_weight.shape == (res.nfe, 6)
    torch.testing.assert_close(trace.t[:, 0], res.times[:-1].double())
    # the posterior concentrates: dominance ends at 1, entropy at 0
    assert (trace.max_weight[-1] > 0.999).all() and (trace.entropy[-1] < 1e-2).all()
    assert (trace.max_weight[0] < 0.05).all()
    # every diagnostic is traced: at t = 0 all N atoms are candidates, weights exact (the mean);
    # screened rows carry their logit error bound, exact rows none
    assert (trace.candidates[0] == 400).all() and trace.exact[0].all()
    assert (trace.logit_error_bound[trace.exact] == 0).all()
    assert (trace.logit_error_bound[~trace.exact] > 0).all() and (~trace.exact).any()
    assert (trace.candidates[-1] <= 64).all() and (trace.neglected_bound < 1e-8).all()


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dopri5"])
def test_a_recorder_passed_to_a_second_run_is_refused_and_its_first_trace_kept(atoms, solver, second_run_refused):
    # a second kfm.sample of the same batch size appended its records to the first run's, and
    # trace() returned the two runs stacked as one, without a word
    settings = dict(solver=solver, rtol=1e-3, atol=1e-3) if solver == "dopri5" else dict(solver=solver, steps=4)
    field = kfm.EmpiricalFlow(atoms)
    single = PosteriorRecorder(field)
    kfm.sample(single, seeds=range(4), shape=(3, 4, 4), **settings)
    expected = single.trace()

    recorder = PosteriorRecorder(field)
    kfm.sample(recorder, seeds=range(4), shape=(3, 4, 4), **settings)
    with pytest.raises(ValueError, match=r"a run starts on a PosteriorRecorder .*clear\(\) it.*new "
                                         r"PosteriorRecorder per run"):
        kfm.sample(recorder, seeds=range(4, 8), shape=(3, 4, 4), **settings)   # the remedy named
    recorder.clear()
    kfm.sample(recorder, seeds=range(4), shape=(3, 4, 4), **settings)
    # cleared, the recorder took that run alone: its trace is the single run's, kept through a refusal
    second_run_refused(lambda: kfm.sample(recorder, seeds=range(4, 8), shape=(3, 4, 4), **settings), recorder,
                       expected)


@pytest.mark.parametrize("wrap, settings", [
    (lambda r: ModelXT(r), dict(solver="heun", steps=4)),
    (lambda r: ModelXT(ModelXT(r)), dict(solver="dopri5", rtol=1e-3, atol=1e-3)),
    # σ = 1 − (1 − t) and two sign flips: the same field through both clock adapters
    (lambda r: ReversedTime(ReversedTime(r, timestep_scale=1), timestep_scale=1), dict(solver="euler", steps=4)),
], ids=["ModelXT", "ModelXT-in-ModelXT-dopri5", "ReversedTime-twice"])
def test_a_recorder_inside_an_adapter_is_refused_for_a_second_run(atoms, wrap, settings, second_run_refused):
    # the run's start reached only the object given to kfm.sample: a recorder inside an adapter took
    # a second run's records after the first's, and trace() returned the two runs as one
    field = kfm.EmpiricalFlow(atoms)
    single = PosteriorRecorder(field)
    kfm.sample(wrap(single), seeds=range(4), shape=(3, 4, 4), **settings)
    expected = single.trace()

    recorder = PosteriorRecorder(field)
    wrapped = wrap(recorder)
    kfm.sample(wrapped, seeds=range(4), shape=(3, 4, 4), **settings)
    second_run_refused(lambda: kfm.sample(wrapped, seeds=range(4, 8), shape=(3, 4, 4), **settings), recorder, expected)
    # a new wrapper, the same recorder
    second_run_refused(lambda: kfm.sample(wrap(recorder), seeds=range(4, 8), shape=(3, 4, 4), **settings),
                       recorder, expected)


def test_a_recorder_used_for_two_runs_of_other_sizes_says_so_and_clear_empties_it(atoms):
    # trace() of a recorder reused for a run of another batch size failed in torch.stack
    # ("stack expects each tensor to be equal size"); clear() starts it afresh. kfm.sample now
    # refuses the second run; calls made directly still meet trace()'s check
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    kfm.sample(recorder, seeds=range(4), shape=(3, 4, 4), steps=3)
    recorder(kfm.noise(range(6), (3, 4, 4)), 0.5)
    with pytest.raises(ValueError, match=r"batches of 4 and 6 rows.*own recorder, or clear\(\) it between runs"):
        recorder.trace()
    recorder.clear()
    assert len(recorder) == 0
    res = kfm.sample(recorder, seeds=range(6), shape=(3, 4, 4), steps=3)
    assert recorder.trace().max_weight.shape == (res.nfe, 6)


def test_an_open_evaluation_counts_as_a_record_and_cannot_be_cleared_or_start_a_run(atoms):
    # inside one_evaluation(): clear() forgot the closed records but not the open one's parts, which
    # then made a record of a cleared recorder; len() did not count it; and kfm.sample accepted the
    # recorder (its start_run() saw no records) and merged the whole run into that one record
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    x = kfm.noise(range(4), (3, 4, 4))
    with recorder.one_evaluation():   # a fresh recorder: the run was accepted as one record
        with pytest.raises(ValueError, match=r"^start_run\(\) inside an open one_evaluation\(\)"):
            kfm.sample(recorder, seeds=range(4), shape=(3, 4, 4), steps=2)
    assert len(recorder) == 0
    recorder(x, 0.1)
    view = recorder.select(torch.tensor([True, True, False, False]))
    with recorder.one_evaluation():
        assert len(recorder) == 1            # nothing recorded in it yet
        with pytest.raises(ValueError, match=r"^start_run\(\) inside an open one_evaluation\(\)"):
            recorder.start_run()
        view(x[:2], 0.3)
        assert len(recorder) == len(view) == 2
        for who in (recorder, view):
            with pytest.raises(ValueError, match=r"^clear\(\) inside an open one_evaluation\(\)"):
                who.clear()
            with pytest.raises(ValueError, match=r"^trace\(\) inside an open one_evaluation\(\)"):
                who.trace()
        recorder.select(torch.tensor([False, False, True, True]))(x[2:], 0.3)
        with pytest.raises(ValueError, match=r"start_run\(\) inside an open one_evaluation\(\)"):
            kfm.sample(recorder, seeds=range(4), shape=(3, 4, 4), steps=2)
    assert len(recorder) == 2
    trace = recorder.trace()
    assert trace.t.tolist() == [[0.1] * 4, [0.3] * 4]   # the open evaluation's rows, in one record
    recorder.clear()
    assert len(recorder) == 0


@pytest.mark.parametrize("solver", ["heun", "rk4", "rk4_38"])
def test_solvers_with_an_end_stage_land_on_atoms(solver):
    # their stage at t = 1 would multiply the predictor's small miss by 1/eps; the field is
    # singular there, so the last step has no end stage and every sample lands on its atom
    atoms = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    field = kfm.EmpiricalFlow(atoms)
    x0 = kfm.noise(range(6), (2,), dtype=torch.float64)
    fine = kfm.sample(field, x0, steps=400, solver="midpoint")
    res = kfm.sample(PosteriorRecorder(field), x0, steps=20, solver=solver)
    to_atom = torch.cdist(res.x, atoms).min(dim=1)
    assert to_atom.values.max() < 1e-2
    assert torch.equal(to_atom.indices, torch.cdist(fine.x, atoms).argmin(dim=1))
    torch.testing.assert_close(res.kpe, fine.kpe, rtol=0.05, atol=0)


def test_recorder_under_dopri5_records_the_samples_in_flight(atoms):
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    x0 = kfm.noise(range(5), (3, 4, 4), dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0],
                                                                            dtype=torch.float64)[:, None, None, None]
    res = kfm.sample(recorder, x0, solver="dopri5", rtol=1e-4, atol=1e-4)
    trace = recorder.trace()
    assert trace.max_weight.shape == (len(recorder), 5)
    evaluated = ~torch.isnan(trace.t)
    torch.testing.assert_close(evaluated.sum(0), res.nfe)        # one record per evaluation of a sample
    assert (~evaluated).any()                                    # finished samples were not evaluated
    assert torch.equal(evaluated, ~torch.isnan(trace.max_weight))
    assert not trace.exact[~evaluated].any()
    assert (trace.candidates[~evaluated] == -1).all() and (trace.candidates[evaluated] >= 1).all()
    assert torch.equal(evaluated, ~torch.isnan(trace.logit_error_bound))
    # the first call is at t = 0 for every sample: dopri5 moves the time buffer it passed forward
    # in place, and a float64 run's record of it read t = 1 (helper-106)
    assert (trace.t[0] == 0).all() and (trace.max_weight[0] == trace.max_weight[0].min()).all()


_SCALAR_WRAPS = [
    lambda r, time: ModelXT(r, time=time),
    lambda r, time: ModelTX(_Swapped(r), time=time),
    lambda r, time: ModelXT(ModelXT(r), time=time),
]


@pytest.mark.parametrize("wrap", _SCALAR_WRAPS, ids=["ModelXT", "ModelTX", "ModelXT-in-ModelXT"])
def test_a_recorder_in_a_scalar_time_adapter_records_dopri5_as_under_batch_time(atoms, wrap):
    # time="scalar" calls the recorder once per distinct time on that time's rows, and dopri5's
    # samples sit at several: the recorder got calls of 1 to 5 rows it could not place, and trace()
    # read them as several runs ("calls on batches of 1, 2 and 5 rows"). Each time's rows now reach it
    # through select(), and one evaluation's calls are one record, as under time="batch". Float64:
    # the field's screening GEMM on a time's rows can round otherwise than on all of them only in
    # its last bits (float32 rounds visibly, and dopri5's step control then takes other steps)
    scale = torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0], dtype=torch.float64)[:, None, None, None]
    x0 = kfm.noise(range(5), (3, 4, 4), dtype=torch.float64) * scale
    field = kfm.EmpiricalFlow(atoms.double())
    runs = {}
    for time in ("batch", "scalar"):
        recorder = PosteriorRecorder(field)
        res = kfm.sample(wrap(recorder, time), x0, solver="dopri5", rtol=1e-4, atol=1e-4)
        runs[time] = res, recorder.trace(), len(recorder)
    (res, expected, calls), (res_scalar, trace, calls_scalar) = runs["batch"], runs["scalar"]
    assert calls_scalar == calls == int(res.nfe.max())       # one record per evaluation
    assert torch.equal(res_scalar.nfe, res.nfe)
    # a last-bit difference carried through dopri5's steps at rtol 1e-4: 1.2e-12 on one value with
    # torch 2.13.0+cpu's build (its float64 sqrt is not always correctly rounded), below 1e-12 before
    torch.testing.assert_close(res_scalar.x, res.x, rtol=1e-9, atol=1e-11)
    evaluated = ~torch.isnan(trace.t)
    assert torch.equal(evaluated.sum(0), res.nfe)            # each sample's evaluations, in its column
    several = (trace.t.nan_to_num(-1.0)[:, :, None] != trace.t.nan_to_num(-1.0)[:, None, :]) & \
        (evaluated[:, :, None] & evaluated[:, None, :])
    assert several.any(dim=(1, 2)).sum() > calls // 2       # most records hold rows at several times
    for name, value in vars(expected).items():
        if value.is_floating_point():
            # an entropy near 0 (a collapsed posterior, −Σ w log w with w ≈ 1) is rounding: 1e-16 read
            # 2e-9 apart relatively once steps landed on the split; an absolute floor far below any real one
            atol = 1e-15 if name == "entropy" else 0.0
            torch.testing.assert_close(getattr(trace, name), value, rtol=1e-9, atol=atol, equal_nan=True, msg=name)
        else:
            assert torch.equal(getattr(trace, name), value), name


@pytest.mark.parametrize("wrap", _SCALAR_WRAPS, ids=["ModelXT", "ModelTX", "ModelXT-in-ModelXT"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_scalar_time_call_is_one_record_of_each_times_rows(atoms, wrap, dtype):
    # one call at three distinct times: one record, each row holding what the field gives for that
    # time's rows (bit for bit: the same rows, the same arithmetic); against the field on the whole
    # batch, float32 differs in its last bits (the screening GEMM rounds by the number of rows)
    field = kfm.EmpiricalFlow(atoms.to(dtype))
    x = kfm.noise(range(5), (3, 4, 4), dtype=dtype)
    t = torch.tensor([0.2, 0.5, 0.2, 0.7, 0.5], dtype=dtype)
    recorder = PosteriorRecorder(field)
    v = wrap(recorder, "scalar")(x, t)
    assert len(recorder) == 1
    trace = recorder.trace()
    groups = [[0, 2], [1, 4], [3]]
    parts = [field.evaluate(x[rows], t[rows[0]]) for rows in groups]
    for rows, part in zip(groups, parts):
        assert torch.equal(v[rows], part.velocity)
        assert torch.equal(trace.t[0, rows], t[rows].double())
        for name in ("max_weight", "entropy", "neglected_bound", "exact", "candidates", "logit_error_bound"):
            assert torch.equal(getattr(trace, name)[0, rows], getattr(part.diagnostics, name)), name
    whole = field.evaluate(x, t).diagnostics
    torch.testing.assert_close(trace.max_weight[0], whole.max_weight, rtol=1e-5, atol=0)
    torch.testing.assert_close(trace.entropy[0], whole.entropy, rtol=1e-4, atol=1e-6)
    assert torch.equal(trace.candidates[0], whole.candidates)


class _Swapped:
    """A recorder called as model(t, x), keeping its select() (a lambda would hide it)."""

    def __init__(self, recorder):
        self.recorder = recorder

    def __call__(self, t, x):
        return self.recorder(x, t)

    def select(self, active):
        return _Swapped(self.recorder.select(active))

    def one_evaluation(self):
        return self.recorder.one_evaluation()


def test_a_recorder_merges_the_calls_of_one_evaluation_and_places_each_views_rows(atoms):
    # views of views record rows of the whole batch; calls inside one_evaluation() are one record,
    # and a nested one_evaluation() adds none of its own
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    x = kfm.noise(range(4), (3, 4, 4))
    t = torch.tensor([0.2, 0.5, 0.2, 0.7])
    field = kfm.EmpiricalFlow(atoms)
    alone, pair = field.evaluate(x[2:3], t[2:3]).diagnostics, field.evaluate(x[[1, 3]], t[[1, 3]]).diagnostics
    view = recorder.select(torch.tensor([False, True, True, True]))            # rows 1, 2, 3
    with view.one_evaluation():
        with recorder.one_evaluation():
            view.select(torch.tensor([False, True, False]))(x[2:3], t[2:3])      # row 2
        view.select(torch.tensor([True, False, True]))(x[[1, 3]], t[[1, 3]])    # rows 1, 3
    recorder.select(torch.tensor([True, False, False, False]))(x[:1], t[:1])   # a call of its own
    assert len(recorder) == 2
    trace = recorder.trace()
    assert torch.isnan(trace.t[0, 0]) and torch.equal(trace.t[0, 1:], t[1:].double())
    for name in ("max_weight", "candidates", "exact"):
        assert torch.equal(getattr(trace, name)[0, [1, 3]], getattr(pair, name)), name
        assert torch.equal(getattr(trace, name)[0, 2:3], getattr(alone, name)), name
    assert trace.candidates[0, 0] == -1 and torch.isnan(trace.max_weight[0, 0])
    assert torch.isnan(trace.t[1, 1:]).all() and trace.t[1, 0] == t[0].double()


class _FailsAtCall:
    """A recorder whose ``fail``-th call raises ``error`` (the field fails, a Ctrl-C) before it records."""

    def __init__(self, recorder, fail, error, calls=None):
        self.recorder, self.fail, self.error, self.calls = recorder, fail, error, calls or [0]

    def __call__(self, x, t):
        self.calls[0] += 1
        if self.calls[0] == self.fail:
            raise self.error
        return self.recorder(x, t)

    def select(self, active):
        return _FailsAtCall(self.recorder.select(active), self.fail, self.error, self.calls)

    def one_evaluation(self):
        return self.recorder.one_evaluation()


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_an_evaluation_that_raises_leaves_no_record_of_its_first_times(atoms, error):
    # time="scalar" calls the field once per distinct time: a later time's call that raised left a
    # record of the earlier times' rows (NaN elsewhere, as for rows dopri5 had finished), a row that
    # an evaluation failing as one call under time="batch" never leaves; the next call's record was fine
    x = kfm.noise(range(4), (3, 4, 4), dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.2, 0.7], dtype=torch.float64)
    field = kfm.EmpiricalFlow(atoms.double())
    for time, fail in (("batch", 1), ("scalar", 2)):
        recorder = PosteriorRecorder(field)
        with pytest.raises(type(error)):
            ModelXT(_FailsAtCall(recorder, fail, error), time=time)(x, t)
        assert len(recorder) == 0, time
        ModelXT(recorder, time=time)(x, t)
        assert len(recorder) == 1 and not torch.isnan(recorder.trace().t).any(), time


@pytest.mark.parametrize("active", [torch.tensor([1, 0, 1]), torch.tensor([[True, False, True]]), [True, False, True]])
def test_recorder_select_takes_a_one_dimensional_bool_mask(atoms, active):
    # an integer 0/1 mask was kept and read as indices when the trace was stacked: a shape
    # error from torch at trace(), or, where as many rows were evaluated as the mask is long,
    # one sample's records written over another's
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    with pytest.raises(ValueError, match=r"active must be a \(B,\) bool mask"):
        recorder.select(active)


def test_a_recorder_view_called_on_other_rows_than_its_mask_names_the_call(atoms):
    # a view for 2 of 3 samples called on all 3 was recorded, and trace() then failed in torch
    # ("shape mismatch: value tensor of shape [3] cannot be broadcast to indexing result of shape [2]")
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    x = torch.randn(3, 3, 4, 4, dtype=atoms.dtype)
    recorder(x, 0.5)
    recorder.select(torch.tensor([True, False, True]))(x, 0.5)
    with pytest.raises(ValueError, match=r"call 1 .* 3 rows .* mask selects 2"):
        recorder.trace()


def test_a_recorder_views_select_refuses_a_mask_over_the_whole_batch(atoms):
    # masked_scatter read the first 3 entries of a 5-row mask and dropped the rest: the view
    # recorded sample 3 for a call on 3 rows, and only trace() said so, calls later
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    view = recorder.select(torch.tensor([True, False, True, True, False]))
    with pytest.raises(ValueError, match=r"mask over this select\(\) view's 3 rows, got one of 5"):
        view.select(torch.tensor([False, False, True, True, True]))
    # a mask over the view's rows picks its samples 2 and 3 of the whole batch
    x = torch.randn(2, 3, 4, 4, dtype=atoms.dtype)
    view.select(torch.tensor([False, True, True]))(x, 0.5)
    trace = recorder.trace()
    assert torch.isnan(trace.t[0, [0, 1, 4]]).all() and (trace.t[0, [2, 3]] == 0.5).all()


@pytest.mark.parametrize("atoms_dtype, x_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float16),
                                                  (torch.float64, torch.float32), (torch.float64, torch.bfloat16)])
def test_an_infinite_x_is_refused_whatever_its_dtype(atoms_dtype, x_dtype):
    # the magnitude limit compared in x's dtype rounded to inf where x cannot hold it, and
    # inf <= inf passed: a NaN velocity row instead of the refusal (helper-152)
    field = kfm.EmpiricalFlow(torch.linspace(-1, 1, 15).reshape(5, 3).to(atoms_dtype))
    x = torch.tensor([[0.1, 0.2, 0.3], [0.0, -math.inf, 0.0]], dtype=x_dtype)
    with pytest.raises(ValueError, match=r"x has NaN or inf in rows \[1\]"):
        field.evaluate(x, torch.full((2,), 0.5, dtype=torch.float64))


def test_training_atoms_that_hold_no_numbers_are_named():
    """A data set object passed for its images (EmpiricalFlow(load_mnist(...)) rather than its
    .images), strings, a ragged list or complex atoms: torch's own errors ("Could not infer dtype
    of ImageDataset", "max_all not implemented for 'ComplexFloat'") named no argument."""
    from kinetic_fm.data import load_digits

    with pytest.raises(ValueError, match=r"^train must be an \(n, \.\.\.\) array of numbers; got ImageDataset"):
        kfm.EmpiricalFlow(load_digits())
    for bad in (np.array([["a", "b"]]), [[1.0, 2.0], [3.0]], None):
        with pytest.raises(ValueError, match=r"^train must be an \(n, \.\.\.\) array of numbers"):
            kfm.EmpiricalFlow(bad)
    with pytest.raises(ValueError, match=r"^train must hold real numbers, got dtype torch.complex64$"):
        kfm.EmpiricalFlow(torch.zeros(3, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"^train must hold real numbers, got dtype torch.complex128$"):
        kfm.EmpiricalFlow(np.zeros((3, 2), dtype=np.complex128))
    array = np.arange(6.0).reshape(3, 2)
    field = kfm.EmpiricalFlow(array)           # an array is still copied: later edits leave the field as built
    array[0] = 100.0
    assert field.atoms[0].tolist() == [0.0, 1.0]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="train contains NaN"):
        kfm.EmpiricalFlow(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="train must have shape"):
        kfm.EmpiricalFlow(torch.zeros(0, 3))
    field = kfm.EmpiricalFlow(torch.randn(10, 3))
    with pytest.raises(ValueError, match="trailing shape"):
        field(torch.randn(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got 1.5 at row 1"):
        field(torch.randn(2, 3), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got nan at row 0"):
        field(torch.randn(2, 3), float("nan"))
    with pytest.raises(ValueError, match="t must be a scalar"):
        field(torch.randn(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"train must hold at least one value per item, got shape \(10, 0\)"):
        kfm.EmpiricalFlow(torch.zeros(10, 0))      # it built, then failed its first call in vector_norm
    for t in (None, "0.5", object()):        # a bare TypeError from torch.as_tensor before
        with pytest.raises(ValueError, match=r"^t must be a number in \[0, 1\] or a \(2,\) tensor of times, got "):
            field(torch.randn(2, 3), t)
    with pytest.raises(ValueError, match=r"^truncate must be None or an integer in \[1, 10\] \(the training items\), got 11$"):
        kfm.EmpiricalFlow(torch.randn(10, 3), truncate=11)
    for name in ("truncate", "chunk", "exact_max", "batch_chunk"):
        with pytest.raises(ValueError, match=name):
            kfm.EmpiricalFlow(torch.randn(10, 3), **{name: True})
    with pytest.raises(ValueError, match="max_logit_error"):
        kfm.EmpiricalFlow(torch.randn(10, 3), max_logit_error=0.0)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, \d+\] \(the training items\), got 11"):
        field.posterior(torch.randn(2, 3), 0.5, k=11)
    with pytest.raises(ValueError, match=r"^k must be an integer in \[1, 4\] \(the field's truncate\), got 5$"):
        kfm.EmpiricalFlow(torch.randn(10, 3), truncate=4).posterior(torch.randn(2, 3), 0.5, k=5)


@pytest.mark.parametrize("call,message", [
    # a channels-last batch against (N, C, H, W) atoms was compared in the scrambled layout
    (lambda f: f(torch.randn(2, 4, 4, 3), 0.5), r"trailing shape \(3, 4, 4\) \(48 features\), got \(4, 4, 3\)"),
    (lambda f: f(torch.randn(2, 48), 0.5), r"trailing shape \(3, 4, 4\)"),
    (lambda f: f(torch.full((2, 3, 4, 4), float("nan")), 0.5), r"x has NaN or inf in rows \[0, 1\]"),
    (lambda f: f(torch.randn(2, 3, 4, 4), True), "t must hold real times"),
    (lambda f: f.posterior(torch.randn(2, 3, 4, 4), 0.5, k=True), r"k must be an integer in \[1, 20\]"),
])
def test_structured_atoms_take_their_own_layout_and_finite_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call(kfm.EmpiricalFlow(torch.randn(20, 3, 4, 4)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(cutoff=True), "cutoff must be None or a positive finite number"),
    (dict(cutoff=math.inf), "cutoff must be None or a positive finite number"),        # switched off the bound
    (dict(max_logit_error=math.inf), "max_logit_error must be a positive finite number"),  # and re-scoring
    (dict(eps="1e-6"), r"eps must be a number in \(0, 1\)"),
])
def test_safeguards_cannot_be_switched_off_by_accident(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kfm.EmpiricalFlow(torch.randn(10, 3), **kwargs)


def test_numpy_and_zero_dimensional_settings_work():
    atoms, x = torch.randn(30, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    plain = kfm.EmpiricalFlow(atoms, chunk=7, truncate=12, max_logit_error=0.5)
    given = kfm.EmpiricalFlow(atoms, chunk=np.int64(7), truncate=torch.tensor(12), max_logit_error=np.float32(0.5))
    assert torch.equal(plain(x, 0.7), given(x, 0.7))
    assert torch.equal(plain.posterior(x, 0.7, k=3).indices, given.posterior(x, 0.7, k=np.int64(3)).indices)
    flat = kfm.EmpiricalFlow(atoms.reshape(30, 3))                       # flat atoms take any layout
    assert flat(x.reshape(4, 3, 1), 0.5).shape == (4, 3, 1)


def _mnist_digits(folder, n):
    with gzip.open(folder / "mnist" / "train-images-idx3-ubyte.gz", "rb") as fh:
        header = np.frombuffer(fh.read(16), dtype=">u4")
        assert header[0] == 2051
        pixels = np.frombuffer(fh.read(n * 784), dtype=np.uint8)
    return torch.from_numpy(pixels.reshape(n, 1, 28, 28).astype(np.float32)) / 127.5 - 1


def test_efm_sampling_on_mnist_lands_on_atoms(shared_data):
    atoms = _mnist_digits(shared_data, 256)
    x0 = kfm.noise(range(32), (1, 28, 28))
    res = kfm.sample(kfm.EmpiricalFlow(atoms), x0, steps=100, profile=True)
    report = kfm.memorization(res.x, atoms)
    assert report.fraction >= 0.99
    assert report.d1.max() < 1e-3                                     # on an atom, not merely near
    # Exact EFM commits to one atom early (t ≈ 0.3 here) and then moves in a straight line at
    # constant speed, so its energy is close to, and never below, the straight-line minimum
    # ½‖x1 − x0‖²; the 1/(1 − t) blow-up only hits points that are NOT heading to an atom
    # (next test). Measured: kpe / straight-line = 1.01 to 1.04, last 10% of time ≈ 10% of energy.
    straight = 0.5 * (res.x - x0).flatten(1).pow(2).sum(dim=1).double()
    assert (res.kpe >= straight * (1 - 1e-4)).all()
    assert (res.kpe <= 1.1 * straight).all()
    late = res.profile[:, res.times[:-1] >= 0.9].sum(dim=1) / res.profile.sum(dim=1)
    assert ((late > 0.08) & (late < 0.12)).all(), late
    # Why no late spike is possible: v*(x, t) = E[y − x0 | x_t = x] and the sampler's x_t has the
    # interpolation's marginal, so by Jensen the batch mean of ‖v*‖² at any t is at most
    # E‖y − x0‖² = E‖y‖² + D, while each path's ∫‖v‖² is at least ‖x1 − x0‖² (Cauchy–Schwarz).
    # Hence energy share after t = 0.9 ≤ 0.1·(E‖y‖² + D) / mean‖x1 − x0‖² (≈ 0.105 here).
    def mean_sq(z):
        return z.flatten(1).pow(2).sum(dim=1).mean()

    bound = 0.1 * (mean_sq(atoms) + 784) / mean_sq(res.x - x0)
    share = res.profile[:, res.times[:-1] >= 0.9].sum() / res.profile.sum()
    assert share <= 1.02 * bound < 0.5                 # 2 %: Euler's and a 32-sample batch's slack


def test_off_atom_velocity_blows_up_like_one_over_one_minus_t(atoms):
    # a point that stays off the atoms: (1 − t)·v → y* − x, so ∫‖v‖² dt diverges as t → 1
    x = atoms[:4].double() + 0.05 * torch.randn(4, 3, 4, 4, dtype=torch.float64)
    field = kfm.EmpiricalFlow(atoms.double())
    for t in (0.99, 0.9999, 1 - 1e-6):
        v = field(x, t)
        torch.testing.assert_close((1 - t) * v, atoms[:4].double() - x, rtol=1e-9, atol=1e-12)


def test_values_whose_squared_distances_overflow_are_refused():
    # float32 logits of 1e20-sized rows overflowed: the velocity was 276 % off, silently
    with pytest.raises(ValueError, match=r"train holds values up to .*e\+20 .* overflow .* pass every input as float64"):
        kfm.EmpiricalFlow(torch.randn(5, 2) * 1e20)
    field = kfm.EmpiricalFlow(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"x holds values up to .*e\+20"):
        field(torch.randn(3, 2) * 1e20, 0.5)
    atoms = torch.randn(5, 2, dtype=torch.float64) * 1e20                # float64 has the room
    x = torch.randn(3, 2, dtype=torch.float64) * 1e20
    logits = -((x[:, None, :] - 0.5 * atoms[None]) ** 2).sum(-1) / (2 * 0.5**2)   # brute force
    expected = (torch.softmax(logits, 1) @ atoms - x) / 0.5
    torch.testing.assert_close(kfm.EmpiricalFlow(atoms)(x, 0.5), expected, rtol=1e-12, atol=0)


def test_the_velocity_is_the_same_inside_autocast():
    """Users wrap whole sampling scripts in torch.autocast; the dense-row product of the exact
    velocity ran in bfloat16 there (1.9e-3 relative off at t = 0.4, bound unchanged)."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(400, 48, generator=g)
    field = kfm.EmpiricalFlow(atoms)
    x, t = torch.randn(16, 48, generator=g), torch.full((16,), 0.4)
    plain = field(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = field(x, t)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_integer_atoms_and_states_beyond_float32s_integers_stay_exact():
    # 2**24 + 1 and + 3 were stored as float32 (16777216, 16777220): at t = 0.99, v = 300 for 200
    atoms = torch.tensor([[2 ** 24 + 1], [2 ** 24 + 3]], dtype=torch.int64)
    x = torch.tensor([[2 ** 24 + 1]], dtype=torch.int64)
    t = torch.tensor([0.99], dtype=torch.float64)
    want = kfm.EmpiricalFlow(atoms.double())(x.double(), t)
    for train in (atoms, atoms.double()):
        got = kfm.EmpiricalFlow(train)(x, t)
        torch.testing.assert_close(got.double(), want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"train holds integers beyond 2\*\*53"):
        kfm.EmpiricalFlow(torch.tensor([[2 ** 60], [0]]))


def test_a_training_tensor_changed_in_place_after_building_is_refused(atoms):
    # float32 atoms are kept as a view, their norms and mean cached: after train.mul_(2).sub_(1)
    # the field mixed new atoms with the old cache (0.5–0.9 off either set's velocity)
    train = atoms.clone()
    field = kfm.EmpiricalFlow(train)
    x = path_states(atoms, torch.full((6,), 0.6), seed=1)
    field(x, 0.6)
    train.mul_(2).sub_(1)
    for call in (lambda: field(x, 0.6), lambda: field(x, 0.0), lambda: field.posterior(x, 0.6, 2)):
        with pytest.raises(RuntimeError, match=r"train was changed in place after this EmpiricalFlow was built"):
            call()
    # a write to another view of the same storage moves the same version counter, but leaves these
    # atoms and their cache as they were: the field goes on, exactly as one built afresh
    data = torch.cat([atoms.clone(), atoms.clone()])
    field = kfm.EmpiricalFlow(data[:len(atoms)])
    data[len(atoms):].mul_(2)
    fresh = kfm.EmpiricalFlow(atoms.clone())
    assert torch.equal(field(x, 0.6), fresh(x, 0.6)) and torch.equal(field(x, 0.0), fresh(x, 0.0))
    data[:1].mul_(2)
    with pytest.raises(RuntimeError, match=r"train was changed in place after this EmpiricalFlow was built"):
        field(x, 0.6)
    # tensors made under inference mode keep no version counter: built and called as ever
    with torch.inference_mode():
        frozen = atoms.clone()
        for given in (frozen, frozen.double(), (frozen * 100).to(torch.uint8)):
            assert kfm.EmpiricalFlow(given)(x.to(given.dtype) if given.is_floating_point() else x, 0.6).shape == x.shape
    # a copy made while building (uint8 atoms → float32) is the field's own: later edits do not matter
    pixels = (atoms.flatten(1)[:50] * 100 + 100).to(torch.uint8)
    field = kfm.EmpiricalFlow(pixels)
    pixels.zero_()
    v, _ = brute((atoms.flatten(1)[:50] * 100 + 100).to(torch.uint8).float(), x.flatten(1) * 100, 0.6)
    assert rel_err(field(x.flatten(1) * 100, 0.6), v) < 1e-5


def test_numpy_atoms_are_copied_and_any_strides_or_byte_order_read(atoms):
    # a NumPy array shared its memory (edits after building went unseen, as above); a flipped view
    # (negative strides) failed with torch's own error, a big-endian one with its byte-order error
    images = atoms.numpy()[:60]
    x = path_states(atoms[:60], torch.full((5,), 0.7), seed=2)
    flipped = np.flip(images, axis=3)
    expected, _ = brute(torch.from_numpy(flipped.copy()), x, 0.7)
    for given in (flipped, flipped.astype(">f4")):
        assert rel_err(kfm.EmpiricalFlow(given)(x, 0.7), expected) < 1e-5
    mine = images.copy()
    field = kfm.EmpiricalFlow(mine)
    mine *= 3
    assert rel_err(field(x, 0.7), brute(torch.from_numpy(images), x, 0.7)[0]) < 1e-5
    # the metrics read a flipped set as its copy
    a = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    rep = kfm.memorization(a[::-1], a[::2][::-1], bootstrap=0)
    ref = kfm.memorization(a[::-1].copy(), a[::2][::-1].copy(), bootstrap=0)
    assert np.array_equal(rep.ratio, ref.ratio) and np.array_equal(rep.nearest, ref.nearest)


def test_posterior_ranks_runners_up_by_logit_where_their_weights_underflow():
    # late in a run the 2nd and 3rd weights are 0.0 even in float64; ranked by weight they tied and
    # came back in no order ([0, 74, 86] where the logits give [0, 7, 74]) (helper-136)
    g = torch.Generator().manual_seed(0)
    atoms = torch.rand(256, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    x = atoms[:4] + 0.3 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = 0.9
    post = kfm.EmpiricalFlow(atoms).posterior(x, torch.full((4,), t, dtype=torch.float64), k=3)
    y = atoms.flatten(1)
    logit = -((x.flatten(1)[:, None] - t * y[None]) ** 2).sum(-1) / (2 * (1 - t) ** 2)  # the definition
    want = logit.topk(3, dim=1).indices
    assert (post.weights[:, 1:] == 0).all()                     # the case: runners-up underflow
    assert torch.equal(post.indices, want)


def test_a_call_whose_rows_have_one_candidate_each_dispatches_few_operators():
    # late in a run every posterior is a point mass: its atom is the answer, with no re-scoring
    # pass (gathers, log-softmax, einsum). On a GPU each operator is a launch the host pays ~10 µs
    # for; 8eaafc0 dispatched 144 here. Counted, not timed.
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(8)
    atoms = torch.rand(300, 256, generator=g) * 2 - 1
    field = kfm.EmpiricalFlow(atoms)
    x = 0.1 * torch.randn(16, 256, generator=g) + 0.9 * atoms[:16]
    t = torch.full((16,), 0.9)
    field(x, t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        v = field(x, t)
    assert (field.last_diagnostics.candidates == 1).all()
    assert torch.equal(v, ((atoms[:16].double() - x.double()) / (1 - t.double()[:, None])).float())   # ȳ: the atom
    assert sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")) <= 90


@pytest.mark.parametrize("device", ["cpu", "fake_cuda"])
def test_screened_logits_that_overflow_are_refused_not_read_as_an_arbitrary_atom(device):
    # values within the magnitude checks, but t/(1 − t)² = 1e12 times x·y leaves float32: inf − inf
    # read NaN, no candidate, and an arbitrary atom reported as exact (helper-163)
    from fake_cuda import fake_cuda

    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(20, 4, generator=g) * 1e14
    x = atoms[:3] * 0.999 + torch.randn(3, 4, generator=g) * 1e12
    with fake_cuda() if device == "fake_cuda" else contextlib.nullcontext():
        on = "cuda" if device == "fake_cuda" else "cpu"
        field = kfm.EmpiricalFlow(atoms.to(on))
        with pytest.raises(ValueError, match=r"screened logits overflow torch.float32 at t = 0.999999: "
                                             r".*or pass the atoms as float64"):
            field(x.to(on), 0.999999)
        assert (field.diagnostics(x.to(on), 0.5).candidates == 1).all()       # earlier, they do not
        v = kfm.EmpiricalFlow(atoms.double().to(on))(x.double().to(on), 0.999999)   # float64: in range
        torch.testing.assert_close(v.cpu(), (atoms[:3].double() - x.double()) / 1e-6, rtol=1e-6, atol=0)


def test_a_bad_input_on_the_cpu_is_refused_before_the_blas_is_chosen(monkeypatch):
    # choosing may time both BLAS libraries (~0.7 s) for a large product: not for a call refused anyway
    from kinetic_fm import gemm

    def choose(*args, **kwargs):
        raise AssertionError("gemm.choose ran before the input was checked")

    monkeypatch.setattr(gemm, "choose", choose)
    field = kfm.EmpiricalFlow(torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got 1.5 at row 1"):
        field(torch.randn(2, 3), torch.tensor([0.5, 1.5]))


def _small_atoms() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 4, generator=g, dtype=torch.float64)


def test_dopri5_on_efm_lands_as_rk4_does():
    # rk4 ends EFM with a step without a stage at t = 1; dopri5 read the clamped field at t = 1 on
    # its last step, which left x 1.1e-6 from rk4's and the KPE 1.6e-6 off at rtol = 1e-8 (and
    # took 45-61 steps); its end step has no stage at t = 1 either: 5e-15 and 4e-8
    field = kfm.EmpiricalFlow(_small_atoms())
    x0 = kfm.noise(range(8), (4,), dtype=torch.float64)
    ref = kfm.sample(field, x0, solver="rk4", steps=400)
    # the reference is converged: rk4's error falls 16-fold per halved step, so 400 steps are
    # (K₂₀₀ − K₄₀₀)/15 from the limit (the bound 800 steps gave, K₄₀₀ − K₈₀₀ ≈ 15/16 of it, at half the cost)
    coarser = kfm.sample(field, x0, solver="rk4", steps=200)
    assert ((coarser.kpe - ref.kpe) / ref.kpe).abs().max() / 15 < 1e-8
    res = kfm.sample(field, x0, solver="dopri5", rtol=1e-8, atol=1e-8)
    assert ((res.kpe - ref.kpe) / ref.kpe).abs().max() < 2e-7
    assert ((res.kpe_raw - ref.kpe_raw) / ref.kpe_raw).abs().max() < 2e-7
    torch.testing.assert_close(res.x, ref.x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shaping", [None, kfm.KTS(alpha0=0.3, beta0=0.02, tau_split=0.6)])
def test_dopri5_on_efm_is_batch_invariant_when_samples_end_at_different_tries(shaping):
    # the rows whose try ends the run skip the stages at t = 1 while the others take them: a
    # sample's run alone must match its run in the batch bit for bit
    field = kfm.EmpiricalFlow(_small_atoms())
    x0 = kfm.noise(range(6), (4,), dtype=torch.float64)
    batch = kfm.sample(field, x0, solver="dopri5", rtol=1e-6, atol=1e-6, shaping=shaping, profile=True)
    assert len(set(batch.steps.tolist())) > 1                               # they end at different tries
    for i in range(6):
        one = kfm.sample(field, x0[i:i + 1], solver="dopri5", rtol=1e-6, atol=1e-6, shaping=shaping, profile=True)
        n = int(one.steps[0])
        assert int(batch.steps[i]) == n and int(batch.nfe[i]) == int(one.nfe[0])
        for name in ("x", "kpe", "kpe_raw", "early", "peak"):
            assert torch.equal(getattr(batch, name)[i], getattr(one, name)[0]), name
        assert torch.equal(batch.times[i, :n + 1], one.times[0, :n + 1])
        assert torch.equal(batch.profile[i, :n], one.profile[0, :n])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("truncate", [None, 5])
@pytest.mark.parametrize("t", [0.3, 0.7, 0.95])
def test_posterior_ties_come_lowest_index_first(dtype, truncate, t):
    # an item held 3 times (rows 0, 10, 11) has 3 equal weights; topk gave them as [10, 11, 0] or
    # [0, 11, 10] by route, where nearest_neighbors puts the lower index first on ties
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(12, 5, generator=g, dtype=torch.float64)
    atoms[10] = atoms[11] = atoms[0]
    x = t * atoms[0] + (1 - t) * 0.1 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    post = kfm.EmpiricalFlow(atoms.to(dtype), truncate=truncate).posterior(x.to(dtype), t, k=4)
    assert (post.indices[:, :3] == torch.tensor([0, 10, 11])).all()
    # a tie cut by k keeps the lowest indices where the weights are exact (here all: N is small)
    assert (kfm.EmpiricalFlow(atoms.to(dtype), truncate=truncate).posterior(x.to(dtype), t, k=2).indices
            == torch.tensor([0, 10])).all()
    w, i = post.weights, post.indices
    assert (w[:, :-1] >= w[:, 1:]).all()                                   # still descending
    assert not ((w[:, :-1] == w[:, 1:]) & (i[:, :-1] > i[:, 1:])).any()    # ties by index
    if truncate is None:   # (truncated weights are normalised over the kept atoms)
        _, brute_w = brute(atoms, x, t)                                      # float64 brute force
        torch.testing.assert_close(w, brute_w.gather(1, i), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_screened_posterior_ties_come_lowest_index_first(dtype):
    # screened (not re-scored) rows took their top k by topk of the screened weights: [10, 0, 11]
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(3000, 5, generator=g, dtype=torch.float64)
    atoms[10] = atoms[11] = atoms[0]
    t = 0.2
    x = t * atoms[0] + (1 - t) * 0.1 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    post = kfm.EmpiricalFlow(atoms.to(dtype)).posterior(x.to(dtype), t, k=40)
    assert not post.exact.any()                                             # the case: screened
    w, i = post.weights, post.indices
    assert not ((w[:, :-1] == w[:, 1:]) & (i[:, :-1] > i[:, 1:])).any()
    for row in i.tolist():
        at = row.index(0)
        assert row[at:at + 3] == [0, 10, 11]


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_a_second_run_through_a_function_around_the_recorder_is_named_by_its_trace(atoms, solver):
    # helper-226: kfm.sample tells a recorder of a run's start only where it can see it; behind a function
    # of the user's a second run of the same batch size appended its records, and trace() returned the
    # two runs stacked as one (twice the calls, t running 0 → 1 twice), without a word
    settings = dict(solver=solver, steps=4)
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    kfm.sample(lambda x, t: recorder(x, t), seeds=range(4), shape=(3, 4, 4), **settings)
    one_run = recorder.trace()
    assert (one_run.t[0] == 0).all() and (one_run.t[1:].nan_to_num(1.0) > 0).all()   # t = 0 once, first
    kfm.sample(lambda x, t: recorder(x, t), seeds=range(4, 8), shape=(3, 4, 4), **settings)
    assert len(recorder) == 2 * len(one_run.t)
    with pytest.raises(ValueError, match=rf"more than one run: its record {len(one_run.t)} is at t = 0 again.*"
                                         r"clear\(\) it between runs.*start_run\(\) that calls the recorder's"):
        recorder.trace()
    # the remedy: a function that passes the run's start on is refused by kfm.sample, as the recorder is
    recorder.clear()
    def velocity(x, t):
        return recorder(x, t)
    velocity.start_run = recorder.start_run
    kfm.sample(velocity, seeds=range(4), shape=(3, 4, 4), **settings)
    with pytest.raises(ValueError, match="already holds"):
        kfm.sample(velocity, seeds=range(4), shape=(3, 4, 4), **settings)


def test_a_run_start_refused_by_a_recorder_inside_a_wrapper_does_not_say_it_was_passed_to_kfm_sample(atoms):
    # the refusal said "the PosteriorRecorder passed to kfm.sample" also where kfm.sample was given an
    # adapter around it (or a KineticODESolver, or the user called start_run)
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    recorder(kfm.noise(range(2), (3, 4, 4)), 0.0)
    with pytest.raises(ValueError) as caught:
        kfm.sample(ModelXT(recorder), seeds=range(2), shape=(3, 4, 4), steps=2)
    message = str(caught.value)
    assert "passed to kfm.sample" not in message and "a run starts on a PosteriorRecorder" in message
    assert "already holds 1 records of an earlier run" in message


def test_one_dopri5_run_through_a_function_around_the_recorder_is_not_called_two_runs(atoms):
    # a function hides the recorder's select(), so dopri5 called it on the samples in flight and trace()
    # read the calls' row counts as runs ("so more than one run") with no word of the one cause
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    kfm.sample(lambda x, t: recorder(x, t), seeds=range(4), shape=(3, 4, 4), solver="dopri5", rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match=r"or one dopri5 run through a function around the recorder, which hides "
                                         r"its select\(\).*pass the recorder itself"):
        recorder.trace()


def test_one_run_backwards_in_time_that_ends_on_t_0_is_traced_as_one_run(atoms):
    # helper-227: a run from data to noise (flow_matching's ODESolver with time_grid [0.95, 0], rk4: its
    # last stage is at t = 0) was refused as "more than one run" by the check for a second start, which
    # reads a return to t = 0 as one; it traced before that check came. Reverse rk4 by hand, 3 steps.
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    x = atoms[:3] + 0.01
    grid = torch.linspace(0.9, 0.0, 4, dtype=torch.float64)
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist()):
        h = t1 - t0                                            # negative
        k1 = recorder(x, t0)
        k2 = recorder(x + h / 2 * k1, t0 + h / 2)
        k3 = recorder(x + h / 2 * k2, t0 + h / 2)
        k4 = recorder(x + h * k3, t1)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    trace = recorder.trace()
    assert len(trace.t) == 12 and (trace.t[-1] == 0).all() and (trace.t[:-1] > 0).all()
    # a second forward run after a first one is still named, and a forward run after the backward one
    recorder.clear()
    for _ in range(2):
        for t in (0.0, 0.5):
            recorder(x, t)
    with pytest.raises(ValueError, match=r"more than one run: its record 2 is at t = 0 again"):
        recorder.trace()
    recorder.clear()
    for t in (0.9, 0.45, 0.0, 0.0, 0.5):
        recorder(x, t)
    with pytest.raises(ValueError, match=r"more than one run: its record 2 is at t = 0 again"):
        recorder.trace()


def test_two_forward_runs_that_start_past_t_0_are_named_by_the_trace(atoms):
    # helper-239: the check for a second start looked for a return to t = 0 only; two runs from t0 = 0.2 (an
    # ODESolver time_grid from 0.2 to 1, the recorder behind a function) were traced as one, t running
    # 0.2 -> 1 twice. Within one forward run no row is evaluated at or before its first time again.
    recorder = PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    x = atoms[:3] + 0.01
    for _ in range(2):
        for t in (0.2, 0.6, 1.0):
            recorder(x, t)
    with pytest.raises(ValueError, match=r"more than one run: its record 3 is back at t = 0.2 \(sample 0\), at or "
                                         r"before where that sample's records began \(t = 0.2\), after later "
                                         r"times, a run it was not told of.*clear\(\) it between runs"):
        recorder.trace()
    recorder.clear()                                         # a second run that starts earlier still
    for t in (0.3, 0.7, 0.1, 0.5):
        recorder(x, t)
    with pytest.raises(ValueError, match=r"its record 2 is back at t = 0.1 \(sample 0\), .*began \(t = 0.3\)"):
        recorder.trace()
    # one run whose times go back down but stay past the start (dopri5's rejected tries, its first-step
    # probe) is one run; so is a backward one, and per row: a row first evaluated later starts there
    recorder.clear()
    for t in (0.2, 0.25, 0.3, 0.22, 0.26, 0.5):
        recorder(x, t)
    assert len(recorder.trace().t) == 6
    recorder.clear()
    for t in (0.9, 0.6, 0.7, 0.3):
        recorder(x, t)
    assert len(recorder.trace().t) == 4
    recorder.clear()
    late = torch.tensor([False, True, True])
    recorder.select(~late)(x[:1], 0.2)
    recorder.select(late)(x[1:], 0.5)
    recorder(x, 0.6)
    assert len(recorder.trace().t) == 3


def test_training_atoms_given_as_python_floats_are_kept_in_float64():
    # nested lists of Python floats were read as torch's default float32: atoms 1 and 1 + 1e-12 were one
    # atom's two copies, and the field screened in float32. As NumPy reads them (np.array(train)), they are
    # float64 atoms, the same field as the array's, bit for bit
    train = [[0.0, 1.0], [1.0 + 1e-12, 1.0], [1.0, 1.0]]
    field = kfm.EmpiricalFlow(train)
    assert field.atoms.dtype == torch.float64 and field.atoms[0, 0].item() == 0.0
    assert field.atoms[1, 0].item() == 1.0 + 1e-12
    same = kfm.EmpiricalFlow(np.array(train))
    x = torch.tensor([[0.3, -0.2], [1.5, 0.5]], dtype=torch.float64)
    t = torch.tensor([0.5, 0.9], dtype=torch.float64)
    assert torch.equal(field(x, t), same(x, t))


@pytest.mark.parametrize("kwargs", [{}, {"truncate": 2}, {"truncate": 2, "backend": "faiss"}])
def test_one_dominant_atom_has_entropy_plus_zero_on_every_route(kwargs):
    """−Σ w log w of w = (1, 0, ...) is −0.0 when negated: faiss-picked truncation printed "-0" in
    kfm sample's summary of 50,000 CIFAR-10 atoms. Every route now gives +0 there."""
    if kwargs.get("backend") == "faiss":
        pytest.importorskip("faiss")
    atoms = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]], dtype=torch.float64)
    field = kfm.EmpiricalFlow(atoms, **kwargs)
    for t in (0.9, 0.99):
        entropy = field.diagnostics(atoms[:2] * t, torch.full((2,), t, dtype=torch.float64)).entropy
        assert torch.equal(entropy, torch.zeros(2, dtype=torch.float64))
        assert not torch.signbit(entropy).any()
