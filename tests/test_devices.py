"""The exact kernels on every device present, against float64 brute forces computed on the CPU.

Each test runs on the CPU, on CUDA where a GPU is present (the cuda cases skip otherwise), and on
``fake_cuda`` (tests/fake_cuda.py): the same "cuda" code paths computed on the CPU, with CUDA's
device rules enforced (a CPU tensor mixed into a cuda op, ``.numpy()`` of a cuda tensor, a
generator on the wrong device all raise as they would on a GPU). CI has no GPU, so the fake cases
are what keeps the device paths honest there; a lent GPU machine runs the real ones
(``benchmarks/device_checks.sh``). The brute forces never touch the device under test.
"""
import math
import sys

import pytest
import torch

import kinetic_fm as kfm
from fake_cuda import fake_cuda
from kinetic_fm.fields.empirical import PosteriorRecorder

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device")),
           "fake_cuda"]
ON_DEVICE = DEVICES[1:]  # the tests that compare a device run with the CPU's


@pytest.fixture
def device(request):
    """The device name a test passes to the library: "cpu", "cuda", or "cuda" under fake_cuda."""
    if request.param != "fake_cuda":
        yield request.param
        return
    with fake_cuda():
        yield "cuda"


def brute_efm(atoms, x, t):
    """(B, D) velocity and (B, N) weights by the definition, in float64 on the CPU."""
    y, x = atoms.double().cpu().flatten(1), x.double().cpu().flatten(1)
    t = t.double().cpu()
    dist2 = (x[:, None, :] - t[:, None, None] * y[None]).pow(2).sum(dim=2)
    w = torch.softmax(-dist2 / (2 * (1 - t)[:, None] ** 2), dim=1)
    return (w @ y - x) / (1 - t)[:, None], w


def brute_knn(x, y, k):
    """The k smallest exact distances (differences, not the GEMM expansion) and their indices."""
    x, y = x.double().cpu().flatten(1), y.double().cpu().flatten(1)
    d = (x[:, None, :] - y[None]).pow(2).sum(dim=2).sqrt()
    return d.topk(k, dim=1, largest=False)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    atoms = torch.rand(300, 3, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([0.0, 0.02, 0.1, 0.3, 0.6, 0.9, 0.99, 0.999]).repeat(4)
    j = torch.randint(0, 300, (len(t),), generator=g)
    noise = torch.randn(len(t), 3, 4, 4, generator=g)
    x = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * atoms[j]   # on the paths
    return atoms, x, t


def rel_err(v, ref):
    v, ref = v.double().cpu().flatten(1), ref.double().flatten(1)
    return ((v - ref).norm(dim=1) / ref.norm(dim=1)).max().item()


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_efm_velocity_posterior_and_diagnostics(device, dtype, data):
    atoms, x, t = data
    field = kfm.EmpiricalFlow(atoms.to(device, dtype), chunk=70, batch_chunk=9)   # partial chunks
    xd, td = x.to(device, dtype), t.to(device, dtype)
    ref, w = brute_efm(atoms, x, t)
    v = field(xd, td)
    assert v.device.type == device and v.dtype == dtype
    assert rel_err(v, ref) < (1e-5 if dtype == torch.float32 else 1e-10)
    post = field.posterior(xd, td, k=3)
    top = w.topk(3, dim=1)
    torch.testing.assert_close(post.weights.cpu(), top.values, rtol=1e-5, atol=1e-7)
    diag = field.diagnostics(xd, td)
    torch.testing.assert_close(diag.max_weight.cpu(), top.values[:, 0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(diag.entropy.cpu(), -torch.special.xlogy(w, w).sum(dim=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_efm_near_t_one_on_an_atom_is_finite_and_zero(device, data):
    atoms, _, _ = data
    field = kfm.EmpiricalFlow(atoms.to(device))
    v = field(atoms[:5].to(device), torch.full((5,), 1 - 1e-7, device=device))
    assert torch.isfinite(v).all() and v.abs().max().item() < 1e-3


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_truncated_efm_bounds_the_mass_it_drops(device, data):
    atoms, x, t = data
    keep = t >= 0.3                                      # where a few atoms carry the posterior
    field = kfm.EmpiricalFlow(atoms.to(device, torch.float64), truncate=20)
    ref, w = brute_efm(atoms, x[keep], t[keep])
    diag = field.diagnostics(x[keep].to(device, torch.float64), t[keep].to(device, torch.float64))
    dropped = 1 - w.topk(20, dim=1).values.sum(dim=1)
    assert (dropped <= diag.neglected_bound.cpu() * (1 + 1e-9) + 1e-15).all()
    v = field(x[keep].to(device, torch.float64), t[keep].to(device, torch.float64))
    one_minus = (1 - t[keep].double())[:, None]
    # |v − v*| ≤ bound · (max ‖y_j‖ + ‖ȳ*‖) / (1 − t), per row
    slack = diag.neglected_bound.cpu()[:, None] * 2 * atoms.flatten(1).norm(dim=1).max() / one_minus
    assert ((v.cpu().flatten(1) - ref).norm(dim=1, keepdim=True) <= slack + 1e-9).all()


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_neighbors_are_exact(device, dtype):
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(700, 40, generator=g).to(dtype)
    queries = torch.cat([ref[:30] + 1e-3 * torch.randn(30, 40, generator=g).to(dtype),
                         torch.randn(50, 40, generator=g).to(dtype)])
    got = kfm.nearest_neighbors(queries.to(device), ref.to(device), 3, chunk=128, batch_chunk=33)
    want = brute_knn(queries, ref, 3)
    assert got.distances.device.type == device
    torch.testing.assert_close(got.distances.cpu(), want.values, rtol=0, atol=1e-10)
    assert torch.equal(got.indices.cpu(), want.indices)
    self_search = kfm.nearest_neighbors(ref[:200].to(device), ref[:200].to(device), 2, exclude_self=True)
    assert not (self_search.indices.cpu() == torch.arange(200)[:, None]).any()


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_memorization_ratios_match_brute_force(device):
    g = torch.Generator().manual_seed(2)
    train = torch.randn(400, 3, 8, 8, generator=g, dtype=torch.float64)
    samples = torch.cat([train[:10], train[10:20] + 0.01 * torch.randn(10, 3, 8, 8, generator=g, dtype=torch.float64),
                         torch.randn(20, 3, 8, 8, generator=g, dtype=torch.float64)])
    report = kfm.memorization(samples.to(device), train.to(device), bootstrap=100)
    two = brute_knn(samples, train, 2)
    assert report.ratio.device.type == device
    torch.testing.assert_close(report.ratio.cpu(), two.values[:, 0] / two.values[:, 1], rtol=0, atol=1e-10)
    assert torch.equal(report.nearest.cpu(), two.indices[:, 0])
    assert report.fraction == pytest.approx(20 / 40)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_local_support_and_kde_match_brute_force(device):
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(500, 16, generator=g, dtype=torch.float64)
    samples = torch.randn(60, 16, generator=g, dtype=torch.float64)
    sup = kfm.local_support(samples.to(device), ref.to(device), k=5, ks=(1, 5))
    want = brute_knn(samples, ref, 5).values
    torch.testing.assert_close(sup.radii.cpu(), want[:, [0, 4]], rtol=0, atol=1e-10)
    kde = kfm.kde_log_density(samples.to(device), ref.to(device), bandwidth=0.7)
    d2 = (samples[:, None, :] - ref[None]).pow(2).sum(dim=2)
    log_p = (torch.logsumexp(-d2 / (2 * 0.7 ** 2), dim=1) - math.log(500)
             - 16 / 2 * math.log(2 * math.pi * 0.7 ** 2))
    torch.testing.assert_close(kde.log_density.cpu(), log_p, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_efm_sampling_lands_on_atoms_with_the_recorder(device, data):
    atoms, _, _ = data
    field = kfm.EmpiricalFlow(atoms[:40].to(device, torch.float64))
    recorder = PosteriorRecorder(field)
    res = kfm.sample(recorder, seeds=range(12), shape=(3, 4, 4), steps=60, dtype=torch.float64,
                     device=device)
    assert res.x.device.type == device
    report = kfm.memorization(res.x, atoms[:40].to(device, torch.float64), bootstrap=0)
    assert report.fraction == 1.0 and report.d1.max().item() < 1e-6
    trace = recorder.trace()
    assert trace.max_weight.shape == (60, 12) and (trace.max_weight[-1] > 0.999).all()


BAD_VALUES = [   # (row, x's value there or None, t there, message): the CPU's messages on every device
    (1, None, 1.5, r"t must lie in \[0, 1\], got 1.5 at row 1"),
    (5, None, math.nan, r"t must lie in \[0, 1\], got nan at row 5"),
    (6, None, -0.25, r"t must lie in \[0, 1\], got -0.25 at row 6"),
    (5, math.nan, 0.5, r"x has NaN or inf in rows \[5\]"),
    (6, -math.inf, 0.0, r"x has NaN or inf in rows \[6\]"),    # at t = 0, where no GEMM is needed
    (4, 1e30, 0.9, r"x holds values up to 1e\+30"),
]


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("row,value,time,message", BAD_VALUES)
@pytest.mark.parametrize("batch_chunk", [None, 3])     # 3: the bad row in a later block than the first
def test_efm_refuses_bad_values_with_the_cpus_message(device, row, value, time, message, batch_chunk):
    # on an accelerator the checks are settled by the first block's synchronisation, after its
    # GEMM; a bad row in a later block is found by that block's
    g = torch.Generator().manual_seed(3)
    atoms = torch.rand(30, 6, generator=g)
    x, t = torch.rand(8, 6, generator=g), torch.full((8,), 0.95)
    t[row] = time
    if value is not None:
        x[row, 2] = value
    field = kfm.EmpiricalFlow(atoms.to(device), batch_chunk=batch_chunk)
    for call in (field, field.evaluate, lambda x, t: field.posterior(x, t, k=2)):
        with pytest.raises(ValueError, match=message):
            call(x.to(device), t.to(device))


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("times", ["late", "early", "some at zero", "all at zero", "mixed"])
def test_efm_device_routes_agree_with_the_brute_force(device, times, data):
    # late: one candidate a row (each posterior a point mass); early: none re-scored; the rest mixed
    atoms, x, t = data
    t = {"late": torch.full_like(t, 0.97), "early": torch.full_like(t, 0.02), "some at zero": t,
         "all at zero": torch.zeros_like(t), "mixed": t.clamp_min(0.01)}[times].double()
    field = kfm.EmpiricalFlow(atoms.to(device, torch.float64), batch_chunk=10)
    ref, w = brute_efm(atoms, x, t)
    out = field.evaluate(x.to(device, torch.float64), t.to(device))
    assert rel_err(out.velocity, ref) < 1e-10
    torch.testing.assert_close(out.diagnostics.max_weight.cpu(), w.max(dim=1).values, rtol=1e-9, atol=1e-12)
    post = field.posterior(x.to(device, torch.float64), t.to(device), k=1)
    assert torch.equal(post.indices.cpu()[:, 0], w.argmax(dim=1))
    torch.testing.assert_close(post.weights.cpu()[:, 0], w.max(dim=1).values, rtol=1e-9, atol=1e-12)
    start = t == 0        # the cached mean, nothing neglected (not the screened softmax's answer)
    assert (out.diagnostics.neglected_bound.cpu()[start] == 0).all()
    if times == "late":   # the point masses: their atom exactly, weight 1
        assert (out.diagnostics.candidates == 1).all() and (post.weights == 1).all()
        flat = x.flatten(1).double()
        expected = (atoms.flatten(1).double()[w.argmax(dim=1)] - flat) / (1 - t[:, None])
        assert torch.equal(out.velocity.cpu().flatten(1), expected)


def _efm_call_syncs(times: float, **field_options) -> tuple[int, str]:
    """Host synchronisations of one EmpiricalFlow call on "cuda" (fake_cuda) at 32 rows at ``times``
    on the conditional paths of 200 atoms, and fake_cuda's summary of them."""
    g = torch.Generator().manual_seed(4)
    atoms = torch.rand(200, 16, generator=g)
    j = torch.randint(0, 200, (32,), generator=g)
    x = (1 - times) * torch.randn(32, 16, generator=g) + times * atoms[j]
    with fake_cuda() as fc:
        field = kfm.EmpiricalFlow(atoms.to("cuda"), **field_options)
        x, t = x.to("cuda"), torch.full((32,), times, device="cuda")
        fc.reset()
        field(x, t)
        return fc.count(), fc.summary()


@pytest.mark.parametrize("times,syncs", [(0.97, 1), (0.02, 1), (0.0, 4)])
def test_an_efm_call_on_a_device_synchronises_once(times, syncs):
    # one synchronisation settles the value checks and routes the rows, after the GEMM is launched
    # (a call at t = 0.5 made seven: the checks, the rows at t = 0, and the row lists); at t = 0
    # (a run's first call) the call starts again with its checks settled: three more
    count, summary = _efm_call_syncs(times)
    assert count == syncs, summary


@pytest.mark.parametrize("times,max_logit_error", [(0.97, 0.5), (0.02, 0.5), (0.02, 1e-9)])
def test_a_truncated_efm_call_on_a_device_synchronises_once(times, max_logit_error):
    # one route a block (late: one candidate each; early: the screened top k, or with a tiny
    # max_logit_error every candidate re-scored): its one read; the truncated rows the screening
    # cannot rank used to be split with boolean masks and bucketed a width at a time (5 to 8)
    count, summary = _efm_call_syncs(times, truncate=4, max_logit_error=max_logit_error)
    assert count == (2 if max_logit_error < 1e-3 else 1), summary   # + its buckets' bounds


@pytest.mark.parametrize("truncate", [None, 4])
def test_an_efm_call_with_a_row_at_zero_in_a_later_block_keeps_the_earlier_blocks(truncate):
    # the row at t = 0 is found out by the last of four blocks: the call goes on from that block,
    # its checks settled (2 reads), its rows at t > 0 found (1) and done again (1); it used to redo
    # every block. The answer is the CPU's, bit for bit (fake_cuda: the same kernels)
    g = torch.Generator().manual_seed(5)
    atoms = torch.rand(200, 16, generator=g)
    x, t = torch.randn(32, 16, generator=g), torch.full((32,), 0.5)
    t[29] = 0.0
    cpu = kfm.EmpiricalFlow(atoms, batch_chunk=8, truncate=truncate).evaluate(x, t)
    with fake_cuda() as fc:
        field = kfm.EmpiricalFlow(atoms.to("cuda"), batch_chunk=8, truncate=truncate)
        x, t = x.to("cuda"), t.to("cuda")
        fc.reset()
        out = field.evaluate(x, t)
        assert fc.count() == 4 + 4, fc.summary()
        assert torch.equal(out.velocity.cpu(), cpu.velocity)
        for name in ("max_weight", "entropy", "candidates", "exact", "logit_error_bound", "neglected_bound"):
            assert torch.equal(getattr(out.diagnostics, name).cpu(), getattr(cpu.diagnostics, name)), name


@pytest.mark.parametrize("device", ON_DEVICE, indirect=True)
@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", "dopri5"])
def test_sampling_with_shaping_agrees_with_the_cpu(device, solver):
    """A Gaussian target's exact field: the device run equals the CPU run (float64; GPU only)."""
    field = kfm.GaussianTarget(mean=0.5, std=0.7)
    runs = [kfm.sample(field, seeds=range(6), shape=(5,), steps=20, solver=solver, dtype=torch.float64,
                       device=where, shaping=kfm.KTS(alpha0=0.02, beta0=0.01), profile=solver != "dopri5")
            for where in ("cpu", device)]
    torch.testing.assert_close(runs[1].x.cpu(), runs[0].x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(runs[1].kpe.cpu(), runs[0].kpe, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(runs[1].kpe_raw.cpu(), runs[0].kpe_raw, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", ON_DEVICE, indirect=True)
@pytest.mark.parametrize("api", ["fp32_precision", "allow_tf32"])  # new API first: after a legacy
# set left on (True), reading allow_tf32 stops raising, and the bug would hide
def test_nearest_neighbors_stay_exact_with_tf32_products(device, api):
    """TF32 float32 products (10-bit mantissa) widen the screening bound; re-ranking keeps the
    answer exact (GPU only: the CPU has no TF32). torch ≥ 2.9's fp32_precision API made reading
    the legacy flag raise, which broke every float32 search on CUDA."""
    from kinetic_fm.knn import unit_roundoff

    g = torch.Generator().manual_seed(4)
    ref = torch.randn(2000, 64, generator=g)
    queries = torch.cat([ref[:40] + 1e-3 * torch.randn(40, 64, generator=g), torch.randn(60, 64, generator=g)])
    matmul = torch.backends.cuda.matmul
    if api == "fp32_precision" and not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision API")
    new_api = hasattr(matmul, "fp32_precision")
    previous = matmul.fp32_precision if new_api else matmul.allow_tf32
    setattr(matmul, api, "tf32" if api == "fp32_precision" else True)
    try:
        assert unit_roundoff(torch.float32, torch.device(device)) == 2.0 ** -11
        got = kfm.nearest_neighbors(queries.to(device), ref.to(device), 2)
    finally:
        # a clean state for the tests that follow: a legacy flag left on keeps torch's "mix of the
        # legacy and new APIs" state, where reading allow_tf32 (and cuBLAS set-up) raises
        matmul.allow_tf32 = False
        if new_api:
            matmul.fp32_precision = previous
        else:
            matmul.allow_tf32 = previous
    if new_api:
        assert matmul.fp32_precision == previous and matmul.allow_tf32 == (previous == "tf32")
    want = brute_knn(queries, ref, 2)
    torch.testing.assert_close(got.distances.cpu(), want.values, rtol=0, atol=1e-10)
    assert torch.equal(got.indices.cpu(), want.indices)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_kfm_sample_runs_a_trained_net_on_the_device(device, tmp_path):
    """`kfm sample --model ... --device D` moves the net there; the table equals the library's
    CPU run of the same net."""
    import copy

    from kinetic_fm.cli import main
    from kinetic_fm.models import VelocityMLP, load_model, save_model
    from kinetic_fm.runs import read_run

    torch.manual_seed(0)
    net = VelocityMLP((2,), hidden=16, depth=1)
    save_model(net, tmp_path / "net.safetensors", ema=copy.deepcopy(net))
    assert main(["sample", "--model", str(tmp_path / "net.safetensors"), "--n", "6", "--steps", "8",
                 "--dtype", "float64", "--device", device, "--no-progress", "--out", str(tmp_path / "run")]) == 0
    want = kfm.sample(load_model(tmp_path / "net.safetensors").double(), seeds=range(6), shape=(2,), steps=8,
                      dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(read_run(tmp_path / "run")["kpe"].to_numpy()), want.kpe,
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("solver", ["heun", "dopri5"])
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_kfm_sample_profile_comes_back_from_the_device(device, solver, tmp_path):
    """`kfm sample --profile --device D`: the stored profile (and dopri5's per-sample times) equal
    the library's run on the same device (its agreement with the CPU is
    test_sampling_with_shaping_agrees_with_the_cpu's)."""
    from kinetic_fm.cli import main
    from kinetic_fm.runs import read_profile

    assert main(["sample", "--field", "mixture", "--n", "5", "--steps", "6", "--solver", solver, "--dtype", "float64",
                 "--batch-size", "2", "--device", device, "--profile", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    means = torch.zeros(8, 2, dtype=torch.float64)
    angle = torch.arange(8, dtype=torch.float64) * (2 * torch.pi / 8)
    means[:, 0], means[:, 1] = 4.0 * angle.cos(), 4.0 * angle.sin()
    # on the device: dopri5's controller turns a GPU's last-bit differences in the mixture's
    # softmax into 1.4e-7 relative in a few steps' energies (an H200 against the CPU), which is
    # the device's arithmetic, not the CLI's round trip that this test is about
    want = kfm.sample(kfm.GaussianMixtureTarget(means.to(device), std=0.3), seeds=range(5), shape=(2,), steps=6,
                      solver=solver, dtype=torch.float64, profile=True, device=device)
    want_profile, want_times = want.profile.cpu(), want.times.cpu()
    times, increments = read_profile(tmp_path / "run")
    # dopri5's step control pads its exp/pow on the CPU only (adaptive.lane_safe), so under
    # fake_cuda a few controller values take the CPU's scalar loop and may differ in the last bit
    # (2.4e-10 relative in one step on one machine's SIMD); the stored values are still compared
    rtol = 1e-10 if solver == "heun" else 1e-8
    torch.testing.assert_close(torch.from_numpy(increments), want_profile, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(times), want_times, rtol=rtol / 100, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", ON_DEVICE, indirect=True)
def test_classifier_margin_runs_the_net_where_it_lives(device):
    # device=None follows the net; a net elsewhere than device= is a clear error (it used to fail
    # inside the net with a device mismatch; moving it would change the caller's module)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).double()
    x = torch.randn(40, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    want = kfm.classifier_margin(net, x, batch_size=16)
    on_device = net.to(device)
    for where in (None, device):
        got = kfm.classifier_margin(on_device, x, batch_size=16, device=where)
        assert got.margin.device.type == "cpu"                  # back on the inputs' device
        torch.testing.assert_close(got.margin, want.margin, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"is on cuda:0 but device='cpu': move the network there first"):
        kfm.classifier_margin(on_device, x, device="cpu")
    with pytest.raises(ValueError, match=r"is on cpu but device='cuda': move the network there first"):
        kfm.classifier_margin(on_device.cpu(), x, device="cuda")


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("field", ["gaussian", "point", "mixture"])
def test_fixed_step_sampling_makes_no_host_sync_per_step(field, solver):
    # the README's promise, counted by fake_cuda: a 16-step run makes exactly as many host
    # synchronisations as an 8-step one (those before and after the loop). The built-in fields
    # used to copy their parameters to the device on every call: 1-2 syncs per stage.
    means = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    velocity = {"gaussian": kfm.GaussianTarget(means[0], 0.5), "point": kfm.PointTarget(means[0]),
                "mixture": kfm.GaussianMixtureTarget(means, 0.3)}[field]
    kts = kfm.KTS(alpha0=0.02, beta0=0.01)
    with fake_cuda() as fc:
        x0 = kfm.noise(range(8), (4,), device="cuda")
        kfm.sample(velocity, x0, steps=2, solver=solver)  # the parameters' one copy to the device
        syncs = []
        for steps in (8, 16):
            fc.reset()
            kfm.sample(velocity, x0, steps=steps, solver=solver, shaping=kts, profile=True)
            syncs.append(fc.count())
    assert syncs[0] == syncs[1], fc.summary()


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_a_fixed_step_run_synchronises_three_times(solver):
    # x0's finite check, one copy of the accounting's coefficients and times to the device, and the
    # non-finite check after the loop (8eaafc0 copied four host arrays one by one: six)
    velocity = lambda x, t: -x * t[:, None]  # noqa: E731
    with fake_cuda() as fc:
        x0 = kfm.noise(range(8), (4,), device="cuda")
        fc.reset()
        kfm.sample(velocity, x0, steps=8, solver=solver, shaping=kfm.KTS(), profile=True)
        assert fc.count() == 3, fc.summary()


@pytest.mark.parametrize("shaping", [None, kfm.KTS(alpha0=0.05, beta0=0.02)])
def test_dopri5_synchronises_three_times_per_iteration(shaping):
    # choosing the rows in flight, the finite check, the accepted rows: one sync each (a boolean
    # mask per accepted array made it nine or ten). A KTS gain adds none: its range check on a
    # tensor of times, one sync per call, is left out for dopri5's own times (seven per iteration)
    velocity = kfm.GaussianMixtureTarget(torch.randn(5, 4, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(7)), 0.3)
    with fake_cuda() as fc:
        x0 = kfm.noise(range(16), (4,), device="cuda", dtype=torch.float64)
        kfm.sample(velocity, x0, steps=2)                       # the parameters' one copy
        fc.reset()
        res = kfm.sample(velocity, x0, solver="dopri5", profile=True, shaping=shaping)
        syncs = fc.count()
    iterations = int((res.nfe.max() - 2) // 6)                 # 6 new stages per attempt, 2 to start
    assert iterations > 5 and syncs <= 3 * iterations + 8, fc.summary()


def test_the_kts_range_check_on_a_device_tensor_is_one_sync():
    kts = kfm.KTS(alpha0=0.05, beta0=0.02)
    with fake_cuda() as fc:
        times = torch.linspace(0, 1, 9, device="cuda")
        fc.reset()
        eta = kts(times)
        assert fc.count() == 1, fc.summary()
        fc.reset()
        unchecked = kts.unchecked(times)
        assert fc.count() == 0, fc.summary()
        assert torch.equal(unchecked, eta)
        with pytest.raises(ValueError, match=r"t must hold times in \[0, 1\]"):
            kts(times + 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (fake_cuda runs the CPU's kernels)")
@pytest.mark.parametrize("solver", ["heun", "dopri5"])
def test_built_in_fields_are_bitwise_batch_invariant_on_cuda(solver):
    """The README's promise for `--batch-size` with the built-in fields, on the GPU's kernels:
    CUDA picks a row reduction's launch layout from the sizes, which could move ‖v‖²'s last bit
    with the batch. Unverified until a GPU runs it."""
    means = torch.randn(8, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    field = kfm.GaussianMixtureTarget(means, 0.3)
    whole = kfm.sample(field, seeds=range(64), shape=(128,), solver=solver, steps=20, device="cuda")
    parts = [kfm.sample(field, seeds=range(i, min(i + 7, 64)), shape=(128,), solver=solver, steps=20,
                        device="cuda") for i in range(0, 64, 7)]
    assert torch.equal(whole.kpe, torch.cat([p.kpe for p in parts]))
    assert torch.equal(whole.x, torch.cat([p.x for p in parts]))


@pytest.mark.parametrize("device", ON_DEVICE, indirect=True)
def test_kfm_train_and_memorization_on_the_device_match_the_cpu(device, tmp_path, capsys):
    """`kfm train` and `kfm memorization` with --device: the device run's weights and table equal
    the CPU run's (under fake_cuda bit for bit: the same kernels; on a GPU to round-off)."""
    import numpy as np
    import pandas as pd

    from kinetic_fm.cli import main
    from kinetic_fm.models.checkpoint import load_weights

    from fake_cuda import active

    exact = active() is not None                                   # fake_cuda: the CPU's kernels
    for where in ("cpu", device):
        assert main(["train", "--data", "moons", "--n", "200", "--steps", "4", "--batch-size", "16",
                     "--device", where, "--out", str(tmp_path / f"net_{where}"), "--no-progress"]) == 0
    w_cpu, w_dev = (load_weights(tmp_path / f"net_{w}" / "final.safetensors") for w in ("cpu", device))
    assert w_cpu.keys() == w_dev.keys()
    if exact:
        for k in w_cpu:
            torch.testing.assert_close(w_dev[k], w_cpu[k], rtol=0, atol=0)
    else:
        # on a GPU, round-off as AdamW amplifies it: a weight whose gradient is near 0 moves by
        # lr·m/(√v + ε), ε = 1e-8, which a last-bit change in g can move by up to 2·lr a step (on
        # an H200, 3 values of one 256 × 256 matrix were 2.8e-6 off in one run, 1 was 1.1e-5 off in
        # another); a wrong seed, data order or initialisation moves nearly all of them by ~lr
        off = torch.cat([(w_dev[k] - w_cpu[k]).abs().flatten() for k in w_cpu])
        scale = torch.cat([w_cpu[k].abs().flatten() for k in w_cpu])
        assert (off > 1e-6 + 1e-5 * scale).float().mean() <= 1e-3
        assert off.max() <= 2 * 4 * 1e-3                              # 4 steps at --lr 1e-3

    g = torch.Generator().manual_seed(9)
    train = torch.randn(300, 24, generator=g)
    samples = torch.cat([train[:20] + 1e-3 * torch.randn(20, 24, generator=g), torch.randn(30, 24, generator=g)])
    np.save(tmp_path / "s.npy", samples.numpy())
    np.save(tmp_path / "t.npy", train.numpy())
    for where in ("cpu", device):
        assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                     "--device", where, "--out", str(tmp_path / f"mem_{where}.parquet"), "--no-progress"]) == 0
    capsys.readouterr()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"mem_{device}.parquet"),
                                  pd.read_parquet(tmp_path / "mem_cpu.parquet"), check_exact=exact, rtol=1e-12)


def test_a_scalar_time_net_costs_two_syncs_whatever_the_number_of_times():
    # time="scalar" groups rows by distinct t; the groups used to be found one nonzero per time
    seen = []
    net = lambda x, t: (seen.append(t.dim()), x * t)[1]  # noqa: E731
    adapter = kfm.ModelXT(net, time="scalar")
    x = torch.arange(12.0).reshape(6, 2)
    t = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.1, 0.7])
    with fake_cuda() as fc:
        xd, td = x.to("cuda"), t.to("cuda")
        fc.reset()
        v = adapter(xd, td)
        assert fc.count() <= 2, fc.summary()                    # unique, then the group sizes
        torch.testing.assert_close(v.cpu(), x * t[:, None], rtol=0, atol=0)
    assert seen == [0, 0, 0, 0]                                 # four times, four 0-dim calls


def test_a_feature_space_sends_inputs_to_its_nets_own_gpu():
    # device="cuda" and a net on cuda:1: the inputs go to cuda:1, not to the current device
    from kinetic_fm.metrics.features import FeatureSpace

    class OnSecondGpu(torch.nn.Module):
        def parameters(self, recurse=True):
            yield type("Held", (), {"device": torch.device("cuda", 1)})()

    net = OnSecondGpu()
    assert FeatureSpace(net, device="cuda")._run_device() == torch.device("cuda", 1)
    assert FeatureSpace(net)._run_device() == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"is on cuda:1 but device='cuda:0'"):
        FeatureSpace(net, device="cuda:0")._run_device()
    with pytest.raises(ValueError, match=r"is on cuda:1 but device='cpu'"):
        FeatureSpace(net, device="cpu")._run_device()


class _DefaultCuda(torch.overrides.TorchFunctionMode):
    """``torch.set_default_device("cuda")``'s rule (torch.utils._device.DeviceContext) over
    fake_cuda: a factory call that names no device makes a cuda tensor. torch keeps its own
    DeviceContext at the bottom of the mode stack, under fake_cuda, so it cannot be used here."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.utils._device import _device_constructors

        kwargs = dict(kwargs or {})
        if func in _device_constructors() and kwargs.get("device") is None:
            kwargs["device"] = "cuda"
        return func(*args, **kwargs)


def test_seeded_draws_and_cpu_rows_work_under_a_default_cuda_device():
    # a notebook's torch.set_default_device("cuda") made every draw from a seeded CPU generator
    # fail ("Expected a 'cuda' device type for generator but found 'cpu'"), kfm.noise(device="cpu")
    # included, and moved precision_recall's CPU rows to the device while its indices stayed behind
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 3, generator=g), torch.randn(40, 3, generator=g)
    refs = torch.randn(3000, 3, generator=g)
    expected = (kfm.noise([0, 1], (3,)),
                kfm.sample(kfm.GaussianTarget(0.0, 1.0), seeds=[0, 1], shape=(3,), steps=4).kpe,
                kfm.precision_recall(real, fake),
                kfm.kde_log_density(real[:2], refs, bandwidth="median").bandwidth)
    with fake_cuda(), _DefaultCuda():
        assert torch.zeros(1).device.type == "cuda"  # the mode is on
        assert torch.equal(kfm.noise([0, 1], (3,), device="cpu"), expected[0])
        kpe = kfm.sample(kfm.GaussianTarget(0.0, 1.0), seeds=[0, 1], shape=(3,), steps=4, device="cuda").kpe
        pr = kfm.precision_recall(real, fake)
        bandwidth = kfm.kde_log_density(real[:2], refs, bandwidth="median").bandwidth
    assert torch.equal(kpe.cpu(), expected[1])
    assert (pr.precision, pr.recall) == (expected[2].precision, expected[2].recall)
    assert bandwidth == expected[3]


def test_the_seeded_data_sets_draw_the_same_points_under_a_default_cuda_device():
    # two_moons and checkerboard mixed their CPU draws with constants made on the default device,
    # and the mixtures' weights went there too, so multinomial met a CPU generator (reviewer)
    from kinetic_fm.data import GaussianMixture, checkerboard, two_moons

    makers = {"moons": lambda: two_moons(10).points, "board": lambda: checkerboard(10).points,
              "ring": lambda: GaussianMixture.ring(8).sample(10).points,
              "target": lambda: kfm.GaussianMixtureTarget(torch.zeros(2, 3)).sample_target(
                  5, torch.Generator().manual_seed(0))[0]}
    expected = {name: make() for name, make in makers.items()}
    with fake_cuda(), _DefaultCuda():
        got = {name: make() for name, make in makers.items()}
    for name in makers:
        assert got[name].device.type == "cpu" and torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("where", ["train", "test", "images"])
def test_the_judge_trains_where_its_images_are(where):
    # the net stayed on the CPU while the images, its noise and the test pair were on the device:
    # "Expected all tensors to be on the same device"; "images": images on the device, labels on
    # the CPU (the labels follow the images once, before the loop; a mutant dropping that survived)
    from kinetic_fm.models.classifier import train_classifier

    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.arange(40) % 2
    cpu = train_classifier(images, labels, steps=3, batch_size=8, test=(images, labels))
    conv = torch.backends.cudnn
    with fake_cuda(), torch.backends.cudnn.flags(enabled=conv.enabled, benchmark=conv.benchmark,
                                                 deterministic=conv.deterministic, allow_tf32=False):
        moved = {"train": (images.cuda(), labels.cuda()),
                 "images": (images.cuda(), labels)}.get(where, (images, labels))
        test = (images.cuda(), labels.cuda()) if where == "test" else (images, labels)
        fit = train_classifier(*moved, steps=3, batch_size=8, test=test)
        assert next(fit.model.parameters()).device.type == moved[0].device.type
        weights = [p.detach().cpu() for p in fit.model.parameters()]
    for a, b in zip(weights, cpu.model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    assert fit.test_accuracy == cpu.test_accuracy


def _syncs_of(call, *tensors):
    """Host synchronisations of ``call(*tensors on "cuda")``, after the copies to the device."""
    with fake_cuda(record_stacks=False) as fc:
        on_device = [t.to("cuda") for t in tensors]
        fc.reset()
        call(*on_device)
        return fc.count(), fc.summary()


@pytest.mark.parametrize("exclude_self", [False, True])
def test_a_nearest_neighbour_search_synchronises_as_often_in_any_blocks(exclude_self):
    # the certificates are read back once per call, and the own column of exclude_self is found
    # on the host (a nonzero per query block and reference chunk made 2 syncs per block, and
    # reading each query block's certificates 1 to 3); quantised rows leave queries to re-search
    g = torch.Generator().manual_seed(8)
    reference = torch.randint(0, 3, (120, 4), generator=g).float()
    queries = reference if exclude_self else torch.randint(0, 3, (90, 4), generator=g).float()
    counts = {}
    for chunk, batch_chunk in ((200, 200), (50, 40), (13, 7)):
        def search(q, r):
            found = kfm.nearest_neighbors(q, r, 3, chunk=chunk, batch_chunk=batch_chunk, margin=0,
                                          exclude_self=exclude_self)
            assert found.rechecked > 0
        counts[chunk], summary = _syncs_of(search, queries, reference)
    assert len(set(counts.values())) == 1, (counts, summary)


def test_precision_recall_synchronises_at_most_once_per_ball_test_block(monkeypatch):
    # the sweep of ball tests reads back only the pairs near a ball's edge (one nonzero per
    # block); the rounding bound stayed a float (one more sync per block) and the exact checks
    # wrote through boolean masks (two more per batch of pairs)
    from kinetic_fm.metrics import fidelity

    g = torch.Generator().manual_seed(9)
    real = torch.randint(0, 3, (150, 5), generator=g).float()   # ties at the balls' edges
    fake = torch.randint(0, 3, (130, 5), generator=g).float()
    exact, exact_sq_distances = [], fidelity._exact_sq_distances

    def counted(a, b):
        if sys._getframe(1).f_code.co_name == "_ball_memberships":
            exact.append(a.shape[0])
        return exact_sq_distances(a, b)

    monkeypatch.setattr(fidelity, "_exact_sq_distances", counted)
    counts, results = {}, []
    for chunk, batch_chunk in ((200, 200), (40, 30), (9, 11)):
        blocks = -(-130 // batch_chunk) * -(-150 // chunk)
        with fake_cuda(record_stacks=False) as fc:
            r, f = real.to("cuda"), fake.to("cuda")
            fc.reset()
            res = fidelity.precision_recall(r, f, k=3, chunk=chunk, batch_chunk=batch_chunk)
            counts[blocks] = fc.count()
            results.append((res.precision, res.recall, res.fake_in_real.cpu(), res.real_in_fake.cpu()))
    assert exact, "no pair was near a ball's edge: the exact checks went untested"
    (few, *_), (many, *_) = sorted(counts), sorted(counts, reverse=True)
    assert counts[many] - counts[few] <= many - few, counts
    for other in results[1:]:
        assert other[:2] == results[0][:2]
        assert torch.equal(other[2], results[0][2]) and torch.equal(other[3], results[0][3])


def test_a_leave_one_out_kde_synchronises_as_often_in_any_blocks():
    # the own term of each query is a diagonal of the block, found on the host (a nonzero and a
    # boolean mask per query block and reference chunk made 1,347 syncs at the smallest blocks)
    reference = torch.randn(200, 6, generator=torch.Generator().manual_seed(10))
    counts = [_syncs_of(lambda r: kfm.kde_log_density(r, r, exclude_self=True, chunk=chunk, batch_chunk=batch_chunk),
                        reference)[0]
              for chunk, batch_chunk in ((300, 300), (40, 30), (9, 7))]
    assert len(set(counts)) == 1, counts


def test_screening_finite_rows_and_matching_a_set_with_itself_read_back_little():
    # finite rows: the nonzero of suspect rows says so (an empty boolean mask made a second sync);
    # exclude_self with one tensor as both sets compares nothing (torch.equal read the whole set)
    from kinetic_fm.knn import check_finite

    rows = torch.randn(64, 5, generator=torch.Generator().manual_seed(11))
    assert _syncs_of(lambda r: check_finite("rows", r), rows)[0] == 1
    with fake_cuda(record_stacks=False) as fc:
        r = rows.to("cuda")
        fc.reset()
        kfm.nearest_neighbors(r, r, 2, exclude_self=True)
        assert fc.count("compare") == 0, fc.summary()


def test_dopri5s_bar_adds_no_synchronisation(monkeypatch):
    # the bar's least t is queued before the loop's nonzero and read after it, through a non-blocking
    # copy into pinned memory: fake_cuda counts as many syncs with the bar as without. Pinned memory
    # and events need a real GPU, so the test gives the bar a plain buffer and a no-op event
    import kinetic_fm.sampling.adaptive as adaptive

    class Event:
        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

    monkeypatch.setattr(adaptive, "_pinned_scalar", lambda: torch.empty(1, dtype=torch.float64))
    velocity = kfm.GaussianMixtureTarget(torch.randn(5, 4, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(7)), 0.3)
    syncs, results = {}, {}
    with fake_cuda() as fc:
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
        x0 = kfm.noise(range(16), (4,), device="cuda", dtype=torch.float64)
        kfm.sample(velocity, x0, steps=2)                       # the parameters' one copy
        for progress in (False, True):
            fc.reset()
            results[progress] = kfm.sample(velocity, x0, solver="dopri5", profile=True, progress=progress)
            syncs[progress] = fc.count()
    assert syncs[True] == syncs[False] and syncs[False] > 10, fc.summary()
    assert torch.equal(results[True].x.cpu(), results[False].x.cpu())
    assert torch.equal(results[True].nfe.cpu(), results[False].nfe.cpu())
