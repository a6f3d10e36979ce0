"""Classifier-free guidance: per-sample KPE of the guided motion, against a hand-written loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.fields.adapters import ModelXT, ReversedTime
from kinetic_fm.fields.guidance import ClassifierFreeGuidance

DIM, CLASSES = 4, 3
NULL = CLASSES  # DiT/SiT-style: the extra embedding row is "no class"


class ClassNet(torch.nn.Module):
    """A small class-conditional velocity net ``model(x, t, y)`` that counts the rows it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed = torch.nn.Embedding(CLASSES + 1, 8).double()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(DIM + 1 + 8, 32), torch.nn.SiLU(), torch.nn.Linear(32, DIM)
        ).double()
        self.rows_seen: list[int] = []

    def forward(self, x, t, y):
        self.rows_seen.append(x.shape[0])
        return self.mlp(torch.cat([x, t[:, None], self.embed(y)], dim=1))


def _hand_guided_euler(net, x0, y, scale, grid):
    """Separate conditional/unconditional calls, no batch doubling: x, KPE and the two part energies."""
    x = x0.clone()
    kpe = torch.zeros(x0.shape[0], dtype=torch.float64)
    part_c, part_u = torch.zeros_like(kpe), torch.zeros_like(kpe)
    null = torch.full_like(y, NULL)
    with torch.no_grad():
        for i in range(grid.numel() - 1):
            t = torch.full((x.shape[0],), float(grid[i]), dtype=x.dtype)
            dt = float(grid[i + 1] - grid[i])
            v_c, v_u = net(x, t, y), net(x, t, null)
            v = v_u + scale * (v_c - v_u)
            kpe += 0.5 * v.pow(2).sum(1) * dt
            part_c += 0.5 * v_c.pow(2).sum(1) * dt
            part_u += 0.5 * v_u.pow(2).sum(1) * dt
            x = x + dt * v
    return x, kpe, part_c, part_u


def test_dopri5_gives_each_sample_its_own_label():
    # dopri5 evaluates only the samples still in flight; each must keep its own label, so a
    # batch run equals every sample run alone
    net = ClassNet()
    x0 = kfm.noise(range(6), (DIM,), dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3, 2.0, 5.0, 1.0])[:, None]
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    tol = dict(rtol=1e-9, atol=1e-9)
    batch = kfm.sample(ClassifierFreeGuidance(net, labels, 2.0, NULL), x0, solver="dopri5", **tol)
    assert len(set(batch.steps.tolist())) > 1                   # some calls saw a subset
    assert min(net.rows_seen) < 2 * 6
    for i in range(6):
        alone = kfm.sample(ClassifierFreeGuidance(net, labels[i:i + 1], 2.0, NULL), x0[i:i + 1],
                           solver="dopri5", **tol)
        torch.testing.assert_close(batch.x[i:i + 1], alone.x, rtol=0, atol=1e-12)
        torch.testing.assert_close(batch.kpe[i:i + 1], alone.kpe, rtol=1e-12, atol=0)
    tracked = ClassifierFreeGuidance(net, labels, 2.0, NULL, track_parts=True)
    with pytest.raises(ValueError, match="track_parts is not supported with adaptive solvers"):
        kfm.sample(tracked, x0, solver="dopri5", **tol)
    # one sample (or samples all finishing together) never selects a subset, where the refusal
    # was: each rejected try restarted the parts (36 % low), without a word (helper-102)
    with pytest.raises(ValueError, match="track_parts is not supported with adaptive solvers"):
        kfm.sample(ClassifierFreeGuidance(net, labels[:1], 2.0, NULL, track_parts=True), x0[:1],
                   solver="dopri5", **tol)


def test_dopri5_slices_an_inner_models_extras_over_the_doubled_batch():
    # the model is called on [x; x]; its per-row extras have 2B rows and follow that batch
    batch = 5
    weight = torch.linspace(0.5, 2.0, 2 * batch, dtype=torch.float64)[:, None]  # one per doubled row

    def net(x, t, y, w):
        assert w.shape[0] == x.shape[0]
        return w * torch.tanh(y - x) * (1 + t[:, None]) + torch.sin(3 * x)

    field = ClassifierFreeGuidance(ModelXT(net, w=weight), torch.randn(batch, DIM, dtype=torch.float64), 1.5,
                                   torch.zeros(DIM, dtype=torch.float64))
    spread = torch.linspace(0.2, 4.0, batch, dtype=torch.float64)[:, None]
    x0 = kfm.noise(range(batch), (DIM,), dtype=torch.float64) * spread
    adaptive = kfm.sample(field, x0, solver="dopri5", rtol=1e-10, atol=1e-10)
    assert len(set(adaptive.steps.tolist())) > 1                 # some calls saw a subset
    fine = kfm.sample(field, x0, steps=400, solver="rk4")
    torch.testing.assert_close(adaptive.x, fine.x, rtol=0, atol=1e-8)


@pytest.mark.parametrize("scale", [0.0, 1.0, 4.0])
def test_guided_kpe_matches_hand_loop(scale):
    net = ClassNet()
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    grid = kfm.time_grid("cosine", 25)
    cfg = ClassifierFreeGuidance(net, y, scale, NULL, track_parts=True)
    res = kfm.sample(cfg, x0, grid=grid, solver="euler", quadrature="left")
    x, kpe, part_c, part_u = _hand_guided_euler(net, x0, y, scale, grid)
    assert res.x.shape == x0.shape and res.kpe.shape == (6,)
    assert set(net.rows_seen) == {12, 6}  # the wrapper doubles: 12; the hand loop: 6
    torch.testing.assert_close(res.x, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.kpe, kpe, rtol=1e-12, atol=0)
    parts = cfg.part_energies()
    torch.testing.assert_close(parts.conditional, part_c, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts.unconditional, part_u, rtol=1e-12, atol=0)
    assert cfg.last_conditional.shape == cfg.last_unconditional.shape == x0.shape


def test_guided_kpe_is_per_sample_not_per_half_batch():
    net = ClassNet()
    x0 = kfm.noise(list(range(8)), (DIM,), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    full = kfm.sample(ClassifierFreeGuidance(net, y, 3.0, NULL), x0, steps=10, solver="heun")
    rows = torch.tensor([5, 2, 7])
    part = kfm.sample(ClassifierFreeGuidance(net, y[rows], 3.0, NULL), x0[rows], steps=10, solver="heun")
    torch.testing.assert_close(part.kpe, full.kpe[rows], rtol=1e-12, atol=0)
    torch.testing.assert_close(part.x, full.x[rows], rtol=1e-12, atol=1e-12)


def test_reset_restarts_the_part_energies():
    net = ClassNet()
    x0 = kfm.noise([0, 1], (DIM,), dtype=torch.float64)
    cfg = ClassifierFreeGuidance(net, torch.tensor([0, 1]), 2.0, NULL, track_parts=True)
    kfm.sample(cfg, x0, steps=5)
    first = cfg.part_energies()
    cfg.reset()
    kfm.sample(cfg, x0, steps=5)
    torch.testing.assert_close(cfg.part_energies().conditional, first.conditional)


def test_embedding_conditions_with_a_tensor_null_and_adapters_inside():
    # a σ-time text-conditioned net: condition (B, L, E), null condition (1, L, E) broadcast
    def net(x, timestep, cond):
        return -(cond.mean(dim=(1, 2))[:, None] - x) * (timestep[:, None] / 1000.0)

    cond = torch.randn(3, 2, 5, dtype=torch.float64)
    null = torch.zeros(1, 2, 5, dtype=torch.float64)
    cfg = ClassifierFreeGuidance(ReversedTime(ModelXT(net)), cond, 5.0, null)
    x = torch.randn(3, DIM, dtype=torch.float64)
    t = torch.full((3,), 0.25, dtype=torch.float64)
    v_c = (cond.mean(dim=(1, 2))[:, None] - x) * 0.75
    v_u = (0.0 - x) * 0.75
    torch.testing.assert_close(cfg(x, t), v_u + 5.0 * (v_c - v_u))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, "3", None, True])
def test_scale_must_be_finite(bad):
    with pytest.raises(ValueError, match="scale must be a finite number"):
        ClassifierFreeGuidance(ClassNet(), torch.tensor([0]), bad, NULL)


def test_argument_checks():
    net = ClassNet()
    with pytest.raises(ValueError, match="labels must be a tensor"):
        ClassifierFreeGuidance(net, torch.tensor(1), 1.0, NULL)
    with pytest.raises(ValueError, match="labels must be a tensor"):
        ClassifierFreeGuidance(net, "0, 1", 1.0, NULL)
    for given in ([0, 1], np.array([0, 1]), np.array([0, 1], dtype=np.uint8)):  # class indices: int64
        assert torch.equal(ClassifierFreeGuidance(net, given, 1.0, NULL).labels, torch.tensor([0, 1]))
    rows = [torch.zeros(3), torch.ones(3)]                               # one embedding per sample
    assert torch.equal(ClassifierFreeGuidance(net, rows, 1.0, 0.0).labels, torch.stack(rows))
    small = [torch.tensor(0, dtype=torch.uint8), torch.tensor(1, dtype=torch.uint8)]
    assert ClassifierFreeGuidance(net, small, 1.0, NULL).labels.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_embeddings_follow_the_samples_dtype(dtype):
    """NumPy's float64 embeddings failed in a float32 net; cast once at construction to float32,
    they failed in a float64 net. They follow x's dtype at each call."""
    torch.manual_seed(0)
    net = torch.nn.Linear(DIM + 1 + 3, DIM).to(dtype)
    model = lambda x, t, y: net(torch.cat([x, t[:, None], y], 1))  # noqa: E731
    embeddings = np.random.default_rng(0).random((4, 3))
    guided = ClassifierFreeGuidance(model, embeddings, 2.0, 0.0)
    res = kfm.sample(guided, seeds=range(4), shape=(DIM,), steps=3, dtype=dtype)
    same = ClassifierFreeGuidance(model, torch.as_tensor(embeddings, dtype=dtype), 2.0, 0.0)
    assert torch.equal(res.kpe, kfm.sample(same, seeds=range(4), shape=(DIM,), steps=3, dtype=dtype).kpe)
    with pytest.raises(ValueError, match="does not broadcast"):
        ClassifierFreeGuidance(net, torch.zeros(2, 3), 1.0, torch.zeros(4))
    cfg = ClassifierFreeGuidance(net, torch.tensor([0, 1]), 1.0, NULL)
    with pytest.raises(ValueError, match="x has 3 rows but labels has 2"):
        cfg(torch.zeros(3, DIM, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    # a model that answers only the first half of the doubled batch [x; x] (per-row reduction bug)
    halves = ClassifierFreeGuidance(lambda x, t, y: x[: x.shape[0] // 2], torch.tensor([0, 1]), 1.0, NULL)
    with pytest.raises(ValueError, match="model returned 2 rows for a doubled batch of 4"):
        halves(torch.zeros(2, DIM, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="track_parts=True"):
        cfg.part_energies()


def test_reuse_without_reset_starts_a_new_run():
    # the second run's energies were continued from the first and went negative (-0.041 for 0.215)
    net = ClassNet()
    x0 = kfm.noise([0, 1], (DIM,), dtype=torch.float64)
    cfg = ClassifierFreeGuidance(net, torch.tensor([0, 1]), 2.0, NULL, track_parts=True)
    kfm.sample(cfg, x0, steps=5, solver="heun")
    first = cfg.part_energies()
    kfm.sample(cfg, x0, steps=5, solver="heun")
    torch.testing.assert_close(cfg.part_energies().conditional, first.conditional, rtol=1e-12, atol=0)
    torch.testing.assert_close(cfg.part_energies().unconditional, first.unconditional, rtol=1e-12, atol=0)


@pytest.mark.parametrize("null,message", [
    (2.7, r"null_label must be representable in the labels' dtype torch.int64, got 2.7"),  # became class 2
    (torch.tensor([2.5, 3.0]), "null_label changes value in the labels' dtype torch.int64"),
    (1e30, "null_label must be representable"),
    (math.nan, "null_label must be representable"),
])
def test_a_null_label_that_does_not_fit_the_labels_is_refused(null, message):
    with pytest.raises(ValueError, match=message):
        ClassifierFreeGuidance(ClassNet(), torch.tensor([0, 1]), 2.0, null)


def test_flags_numbers_and_the_closing_time_are_checked():
    import numpy as np

    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="track_parts must be True or False, got 'no'"):  # was read as True
        ClassifierFreeGuidance(ClassNet(), labels, 2.0, NULL, track_parts="no")
    cfg = ClassifierFreeGuidance(ClassNet(), labels, np.float32(2.0), np.int64(NULL), track_parts=True)
    assert cfg.scale == 2.0 and cfg.null_labels.tolist() == [NULL, NULL]
    kfm.sample(cfg, kfm.noise([0, 1], (DIM,), dtype=torch.float64), steps=4)
    for bad in (2.0, -1.0, math.nan, 0.5):                       # extrapolated to negative or NaN energies
        with pytest.raises(ValueError, match=r"t_end must be a number in \[0.75, 1\]"):
            cfg.part_energies(t_end=bad)
    assert (cfg.part_energies(t_end=torch.tensor(1.0)).conditional > 0).all()


@pytest.mark.parametrize("solver", ["heun", "rk4"])
def test_part_energies_are_the_left_sum_over_every_call_of_a_multi_stage_run(solver):
    # heun and rk4 call the field twice at some times (a stage end and the next start): a repeated
    # time is not a new run (a mutant that restarted on t <= t_prev kept only the last stretch)
    net = ClassNet()
    calls = []

    def recorded(x, t, y):
        out = net(x, t, y)
        calls.append((t[: x.shape[0] // 2].clone(), out[: x.shape[0] // 2].clone(), out[x.shape[0] // 2:].clone()))
        return out

    x0 = kfm.noise([0, 1, 2], (DIM,), dtype=torch.float64)
    cfg = ClassifierFreeGuidance(recorded, torch.tensor([0, 1, 2]), 2.0, NULL, track_parts=True)
    kfm.sample(cfg, x0, steps=6, solver=solver)
    times = [c[0] for c in calls] + [torch.ones(3, dtype=torch.float64)]
    want_c = sum(0.5 * (times[i + 1] - times[i]) * calls[i][1].pow(2).sum(1) for i in range(len(calls)))
    want_u = sum(0.5 * (times[i + 1] - times[i]) * calls[i][2].pow(2).sum(1) for i in range(len(calls)))
    assert any(bool((times[i + 1] == times[i]).all()) for i in range(len(calls) - 1))   # repeats happen
    parts = cfg.part_energies()
    torch.testing.assert_close(parts.conditional, want_c, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts.unconditional, want_u, rtol=1e-12, atol=0)


def test_last_velocities_are_the_conditional_and_unconditional_halves():
    # only their shapes were checked: a swap of the two attributes passed (mutation audit)
    net = ClassNet()
    x = kfm.noise(range(3), (DIM,), dtype=torch.float64)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    cfg = ClassifierFreeGuidance(net, y, 3.0, NULL)
    cfg(x, t)
    with torch.no_grad():
        torch.testing.assert_close(cfg.last_conditional, net(x, t, y), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cfg.last_unconditional, net(x, t, torch.full_like(y, NULL)), rtol=1e-12, atol=1e-12)


def test_last_velocities_after_dopri5_are_each_samples_last_evaluation():
    # dopri5 calls select() copies for the samples in flight, and their last_conditional was set on
    # the copy: the guidance handed to kfm.sample kept the velocities of the last call on the whole
    # batch, stale for every sample that went on. Row i is now sample i's last evaluation, as in a
    # fixed-step run (where every call evaluates every row): the same as a run of sample i alone.
    net = ClassNet()
    x0 = kfm.noise(range(6), (DIM,), dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3, 2.0, 5.0, 1.0])[:, None]
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    cfg = ClassifierFreeGuidance(net, labels, 2.5, NULL)
    tol = dict(rtol=1e-9, atol=1e-9)
    res = kfm.sample(cfg, x0, solver="dopri5", **tol)
    assert len(set(res.steps.tolist())) > 1       # samples finish at different steps: views at the end
    assert cfg.last_conditional.shape == cfg.last_unconditional.shape == x0.shape
    for i in range(6):
        alone = ClassifierFreeGuidance(net, labels[i:i + 1], 2.5, NULL)
        kfm.sample(alone, x0[i:i + 1], solver="dopri5", **tol)
        torch.testing.assert_close(cfg.last_conditional[i:i + 1], alone.last_conditional, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cfg.last_unconditional[i:i + 1], alone.last_unconditional, rtol=1e-12, atol=1e-12)
    # dopri5's last stage of a sample is at its end point, t = 1
    ones = torch.ones(6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(cfg.last_conditional, net(res.x, ones, labels), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cfg.last_unconditional, net(res.x, ones, torch.full_like(labels, NULL)),
                                   rtol=1e-12, atol=1e-12)


def test_a_view_of_a_view_writes_its_rows_into_the_guidance_it_came_from():
    net = ClassNet()
    x = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    cfg = ClassifierFreeGuidance(net, y, 2.0, NULL)
    cfg(x, t)
    earlier = cfg.last_conditional.clone()
    view = cfg.select(torch.tensor([False, True, True, True])).select(torch.tensor([True, False, True]))
    view(x[[1, 3]] + 1, t[[1, 3]])                 # rows 1 and 3 of the whole batch
    assert view.last_conditional.shape == (2, DIM)  # the view's own call, as before
    with torch.no_grad():
        want = net(x + 1, t, y)
    assert torch.equal(cfg.last_conditional[[0, 2]], earlier[[0, 2]])
    torch.testing.assert_close(cfg.last_conditional[[1, 3]], want[[1, 3]], rtol=1e-12, atol=1e-12)


def test_per_sample_null_labels_follow_dopri5s_selection():
    # a null condition per sample (a negative prompt each): dopri5's select must keep each
    # sample's own null row, not the first rows of the batch (mutation audit)
    net = ClassNet()
    x0 = kfm.noise(range(4), (DIM,), dtype=torch.float64) * torch.tensor([0.1, 1.0, 4.0, 0.5])[:, None]
    labels, nulls = torch.tensor([0, 1, 2, 0]), torch.tensor([3, 2, 1, 3])
    # 1e-10: at 1e-9 all four take 6 steps since steps land on the split (5 or 6 before), and no call saw a subset
    tol = dict(rtol=1e-10, atol=1e-10)
    batch = kfm.sample(ClassifierFreeGuidance(net, labels, 2.0, nulls), x0, solver="dopri5", **tol)
    assert len(set(batch.steps.tolist())) > 1                   # some calls saw a subset
    for i in range(4):
        alone = kfm.sample(ClassifierFreeGuidance(net, labels[i:i + 1], 2.0, nulls[i:i + 1]), x0[i:i + 1],
                           solver="dopri5", **tol)
        torch.testing.assert_close(batch.x[i:i + 1], alone.x, rtol=0, atol=1e-12)
        torch.testing.assert_close(batch.kpe[i:i + 1], alone.kpe, rtol=1e-12, atol=0)


def test_a_guidance_views_select_refuses_a_mask_of_another_length():
    # a view's mask is over its own rows: a whole-batch mask met torch's IndexError on the labels
    # ("The shape of the mask [5] at index 0 does not match ..."), which named no argument
    guided = ClassifierFreeGuidance(ClassNet(), torch.tensor([0, 1, 2, 0, 1]), 2.0, 3)
    view = guided.select(torch.tensor([True, False, True, True, False]))
    with pytest.raises(ValueError, match=r"active must be a \(3,\) bool mask.*torch.bool tensor of shape \(5,"):
        view.select(torch.tensor([False, False, True, True, True]))
    assert view.select(torch.tensor([False, True, True])).labels.tolist() == [2, 0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_scale_one_is_the_conditional_velocity_and_zero_the_unconditional_bit_for_bit(dtype):
    # v_u + 1·(v_c − v_u) rounds: in bfloat16 it was 0.125 off v_c and a run's x 0.03 off a plain
    # conditional run (the CLI skips guidance at 1, so the two disagreed)
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(3, DIM, generator=gen, dtype=torch.float64) * 40
    model = lambda x, t, y: means.to(x.dtype)[y] - x * t[:, None]  # noqa: E731
    labels = torch.tensor([0, 1, 0, 1])
    x = (torch.randn(4, DIM, generator=gen, dtype=torch.float64) * 30).to(dtype)
    t = torch.full((4,), 0.3, dtype=dtype)
    for scale, y in ((1.0, labels), (0.0, torch.full_like(labels, 2))):
        guided = ClassifierFreeGuidance(model, labels, scale=scale, null_label=2)(x, t)
        assert torch.equal(guided, model(x, t, y)), (dtype, scale)
    cond = kfm.sample(lambda x_, t_: model(x_, t_, labels), seeds=range(4), shape=(DIM,), steps=8, dtype=dtype)
    guided = kfm.sample(ClassifierFreeGuidance(model, labels, scale=1.0, null_label=2), seeds=range(4),
                        shape=(DIM,), steps=8, dtype=dtype)
    assert torch.equal(guided.x, cond.x) and torch.equal(guided.kpe, cond.kpe)


def test_list_labels_follow_the_samples_to_their_device():
    # labels=[0, 1, ...] became a CPU tensor that was handed to a CUDA net as it was
    from fake_cuda import fake_cuda

    with fake_cuda() as fc:
        table = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 0.0]], device="cuda")
        model = lambda x, t, y: table.index_select(0, y) - x  # noqa: E731
        for labels in ([0, 1, 0, 1], np.array([0, 1, 0, 1])):
            res = kfm.sample(ClassifierFreeGuidance(model, labels, scale=2.0, null_label=2), seeds=range(4),
                             shape=(2,), steps=4, device="cuda")
            assert res.x.device.type == "cuda"
            on_cpu = kfm.sample(ClassifierFreeGuidance(lambda x, t, y: table.cpu()[y] - x, torch.tensor(labels),
                                                       scale=2.0, null_label=2), seeds=range(4), shape=(2,), steps=4)
            torch.testing.assert_close(res.x.cpu(), on_cpu.x)
        # moved once, not copied to the device at every call (a host synchronisation per step),
        # and dopri5's selection of the samples in flight indexes them on the device too
        x0 = kfm.noise(range(4), (2,), device="cuda")
        syncs = []
        for steps in (8, 16):
            guided = ClassifierFreeGuidance(model, [0, 1, 0, 1], scale=2.0, null_label=2)
            fc.reset()
            kfm.sample(guided, x0, steps=steps)
            syncs.append(fc.count())
        assert syncs[0] == syncs[1], fc.summary()
        res = kfm.sample(ClassifierFreeGuidance(model, [0, 1, 0, 1], scale=2.0, null_label=2), x0, solver="dopri5")
        assert res.x.device.type == "cuda"


def test_an_empty_label_list_is_refused_when_the_guidance_is_built():
    # labels=[] was taken, and every call then failed on "x has B rows but labels has 0"
    with pytest.raises(ValueError, match=r"labels must be a tensor with a non-empty batch dimension .* got \(0,\)"):
        ClassifierFreeGuidance(lambda x, t, y: x, [], scale=2.0, null_label=0)


@pytest.mark.parametrize("adapter", [kfm.NoisePrediction, kfm.DataPrediction])
def test_part_energies_are_refused_with_the_guidance_inside_a_prediction_adapter(adapter):
    # inside, the guidance combines ε̂ or x̂1, so its part energies were the predictions' (up to 92 %
    # off the velocities'); outside, it guides the same field and tracks the velocities
    net, y = ClassNet(), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=rf"{adapter.__name__} around ClassifierFreeGuidance\(track_parts=True\)"):
        adapter(ClassifierFreeGuidance(ModelXT(net), y, 2.0, NULL, track_parts=True))
    adapter(ClassifierFreeGuidance(net, y, 2.0, NULL))                     # no part energies: fine
    x0 = kfm.noise([0, 1, 2], (DIM,), dtype=torch.float64)
    inside = kfm.sample(adapter(ClassifierFreeGuidance(net, y, 2.0, NULL)), x0, steps=8)
    outside_cfg = ClassifierFreeGuidance(adapter(net), y, 2.0, NULL, track_parts=True)
    outside = kfm.sample(outside_cfg, x0, steps=8)
    torch.testing.assert_close(outside.x, inside.x, rtol=1e-12, atol=1e-12)   # guidance is affine
    torch.testing.assert_close(outside.kpe, inside.kpe, rtol=1e-12, atol=0)


@pytest.mark.parametrize("clock", [lambda f: kfm.ReversedTime(f, timestep_scale=1), lambda f: kfm.DiscreteTime(f, 1000)])
def test_part_energies_are_refused_with_the_guidance_inside_a_clock_adapter(clock):
    # inside ReversedTime the guidance saw σ falling and restarted its sums at every call (a third
    # of the energy, silently); inside DiscreteTime it summed over integer steps (helper-131)
    net, y = ClassNet(), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"(ReversedTime|DiscreteTime) around ClassifierFreeGuidance\(track_parts=True\) "
                                         r"would sum its part energies over the net's"):
        clock(ClassifierFreeGuidance(net, y, 2.0, NULL, track_parts=True))
    clock(ClassifierFreeGuidance(net, y, 2.0, NULL))                       # no part energies: fine


def test_dopri5_refuses_tracked_parts_behind_an_adapter_up_front():
    # the up-front check read only the outermost object: ModelXT(guidance) got through, and with one
    # sample its rejected tries restarted the part energies without a word (helper-131)
    guided = ClassifierFreeGuidance(lambda x, t, y: -x, torch.tensor([0]), 2.0, NULL, track_parts=True)
    with pytest.raises(ValueError, match="track_parts is not supported with adaptive solvers"):
        kfm.sample(ModelXT(guided, time="batch"), kfm.noise([0], (DIM,)), solver="dopri5")


class RecordedClassNet:
    """A class-conditional model of the user's that keeps per-run state (a PosteriorRecorder of the
    doubled batch, the label ignored) and says so with its own ``start_run``."""

    def __init__(self, recorder):
        self.recorder = recorder

    def __call__(self, x, t, y):
        return self.recorder(x, t)

    def start_run(self):
        self.recorder.start_run()


@pytest.mark.parametrize("outside", [lambda cfg: cfg, lambda cfg: ModelXT(cfg)], ids=["guidance", "ModelXT-of-it"])
def test_the_run_start_reaches_the_guided_model(outside, second_run_refused):
    # the guidance did not pass the run's start on: a recorder in its model took the second run's
    # records after the first's, and its trace() returned both runs as one
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x0 = kfm.noise([0, 1], (DIM,), dtype=torch.float64)
    labels = torch.tensor([0, 1])
    single = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    kfm.sample(outside(ClassifierFreeGuidance(RecordedClassNet(single), labels, 2.0, NULL)), x0, steps=4)
    expected = single.trace()

    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
    guided = outside(ClassifierFreeGuidance(RecordedClassNet(recorder), labels, 2.0, NULL))
    kfm.sample(guided, x0, steps=4)
    second_run_refused(lambda: kfm.sample(guided, x0, steps=4), recorder, expected)


def test_a_run_after_one_whose_last_call_was_at_t_zero_starts_its_part_energies_afresh():
    # a one-step Euler run calls the field at t = 0 only, so the next run's first call is no earlier
    # and was not read as a new run: that call added ½·0·‖v_prev‖², NaN where v_prev was not finite,
    # and a row flagged in the first run had NaN part energies in the next
    net = ClassNet()
    poisoned = [True]

    def model(x, t, y):
        out = net(x, t, y)
        return torch.where(torch.tensor(poisoned[0]) & (torch.arange(x.shape[0]) == 0)[:, None], math.nan, out)

    x0 = kfm.noise([0, 1], (DIM,), dtype=torch.float64)
    cfg = ClassifierFreeGuidance(model, torch.tensor([0, 1]), 2.0, NULL, track_parts=True)
    kfm.sample(cfg, x0, steps=1, on_nonfinite="flag")
    assert cfg.part_energies().conditional.isnan().tolist() == [True, False]
    poisoned[0] = False
    kfm.sample(cfg, x0, steps=3)
    fresh = ClassifierFreeGuidance(model, torch.tensor([0, 1]), 2.0, NULL, track_parts=True)
    kfm.sample(fresh, x0, steps=3)
    assert torch.equal(cfg.part_energies().conditional, fresh.part_energies().conditional)
    assert torch.equal(cfg.part_energies().unconditional, fresh.part_energies().unconditional)


class SelectableRecordedClassNet(RecordedClassNet):
    """:class:`RecordedClassNet` for dopri5 and ``time="scalar"`` too: its recorder follows the rows
    the guidance selects, and the calls of one evaluation make one record."""

    def select(self, active):
        return SelectableRecordedClassNet(self.recorder.select(active))

    def one_evaluation(self):
        return self.recorder.one_evaluation()


def test_a_scalar_time_adapter_makes_one_record_of_a_guided_evaluation():
    # the guidance did not pass one_evaluation() on: under dopri5 a time="scalar" adapter's per-time
    # calls (KineticODESolver's default) each made a record, 1,527 rows for 290 evaluations
    atoms = torch.randn(30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = kfm.noise(list(range(6)), (DIM,), dtype=torch.float64)
    x0 = x0 * torch.linspace(0.5, 3.0, 6, dtype=torch.float64)[:, None]
    labels = torch.arange(6) % 2
    runs = {}
    for time in ("batch", "scalar"):
        recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(atoms))
        guided = ClassifierFreeGuidance(SelectableRecordedClassNet(recorder), labels, 2.0, NULL)
        res = kfm.sample(ModelXT(guided, time=time), x0, solver="dopri5")
        runs[time] = res, recorder.trace()
    (res, expected), (res_scalar, trace) = runs["batch"], runs["scalar"]
    assert torch.equal(res_scalar.x, res.x) and torch.equal(res_scalar.nfe, res.nfe)
    assert trace.t.shape == expected.t.shape == (int(res.nfe.max()), 12)
    for name, value in vars(expected).items():
        assert torch.equal(getattr(trace, name).nan_to_num(-1.0), value.nan_to_num(-1.0)), name


def test_a_guidance_pickled_before_select_views_wrote_back_still_runs_and_selects():
    # a ClassifierFreeGuidance pickled by a release without the views' write-back has no _origin or
    # _rows in its state; unpickled, its call and select() met AttributeError
    net = ClassNet()
    x = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    state = dict(ClassifierFreeGuidance(net, y, 2.0, NULL).__dict__)
    state.pop("_origin", None), state.pop("_rows", None)
    old = ClassifierFreeGuidance.__new__(ClassifierFreeGuidance)
    old.__dict__.update(state)  # what unpickling does for a class without __setstate__
    fresh = ClassifierFreeGuidance(net, y, 2.0, NULL)
    assert torch.equal(old(x, t), fresh(x, t))
    active = torch.tensor([True, False, True, True])
    old.select(active)(x[active] + 1, t[active])
    fresh.select(active)(x[active] + 1, t[active])
    assert torch.equal(old.last_conditional, fresh.last_conditional)  # rows 0, 2, 3 written back


@pytest.mark.parametrize("restart", ["start_run", "reset"])
def test_a_new_run_does_not_show_the_last_runs_velocities(restart):
    # reset()/start_run() left last_conditional/last_unconditional as the first run left them: a
    # second run's view writing rows 1 and 3 kept rows 0 and 2 of the first run, which read as
    # evaluated in this one (rows never evaluated read NaN, as documented)
    net = ClassNet()
    x = kfm.noise(range(4), (DIM,), dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    cfg = ClassifierFreeGuidance(net, y, 2.0, NULL)
    cfg(x, t)
    getattr(cfg, restart)()
    assert cfg.last_conditional is None and cfg.last_unconditional is None
    cfg.select(torch.tensor([False, True, False, True]))(x[[1, 3]], t[[1, 3]])
    assert cfg.last_conditional[[0, 2]].isnan().all() and cfg.last_unconditional[[0, 2]].isnan().all()
    with torch.no_grad():
        want = net(x, t, y)
    torch.testing.assert_close(cfg.last_conditional[[1, 3]], want[[1, 3]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
@pytest.mark.parametrize("per_sample", [None, ["cond"]], ids=["guessed", "declared"])
def test_a_per_sample_extra_inside_guidance_is_named_with_the_doubled_batch(solver, per_sample):
    # the guidance calls its model on 2B rows (conditional, then null): an extra of B rows held by the
    # adapter inside failed with torch's "size of tensor a (3) must match ... (6)" or "has 3 rows for a
    # batch of 6", without a word of the doubling or of the remedy
    def net(x, t, y, cond):
        return cond * (1 + t.reshape(-1, 1)) - x + y.to(x.dtype)[:, None]   # t (B,) or 0-dim

    cond, labels = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 1])
    x0 = torch.randn(3, 2, dtype=torch.float64)
    time, steps = ("scalar", {}) if solver == "dopri5" else ("batch", {"steps": 4})
    guided = kfm.ClassifierFreeGuidance(kfm.ModelXT(net, time=time, per_sample=per_sample, cond=cond), labels, 2.0, 5)
    with pytest.raises((RuntimeError, ValueError)) as caught:
        kfm.sample(guided, x0, solver=solver, **steps)
    said = " ".join([str(caught.value), *getattr(caught.value, "__notes__", [])])
    assert "doubled batch" in said and "['cond']" in said and "torch.cat([cond, cond])" in said
    # and only that: kfm.sample's general advice on call conventions (forward(t, x)) does not apply
    assert "forward(t, x)" not in said and "kfm.ModelTX" not in said, said
    # the remedy it names: each sample as it runs alone with its own condition
    doubled = kfm.ModelXT(net, time=time, per_sample=per_sample, cond=torch.cat([cond, cond]))
    res = kfm.sample(kfm.ClassifierFreeGuidance(doubled, labels, 2.0, 5), x0, solver=solver, **steps)
    for i in range(3):
        alone = kfm.ClassifierFreeGuidance(kfm.ModelXT(net, time=time, cond=cond[i:i + 1].repeat(2, 1)),
                                           labels[i:i + 1], 2.0, 5)
        torch.testing.assert_close(res.x[i:i + 1], kfm.sample(alone, x0[i:i + 1], solver=solver, **steps).x,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
def test_labels_and_an_extra_for_one_parameter_are_refused_without_the_doubled_batch_note(solver):
    # the guidance's labels fill y by position; an extra y= on the adapter too is the user's clash, whose
    # remedy is to drop the extra: the guidance's note "repeat them for both halves, y=torch.cat([y, y])"
    # (and, under dopri5 or time='scalar', the adapter's note on cut extras) sent the user the wrong way
    def net(x, t, y):
        return -x * (1 + t.reshape(-1, 1)) + y.to(x.dtype)[:, None]

    labels, x0 = torch.tensor([0, 1, 1]), torch.randn(3, 2, dtype=torch.float64)
    time, steps = ("scalar", {}) if solver == "dopri5" else ("batch", {"steps": 4})
    guided = kfm.ClassifierFreeGuidance(kfm.ModelXT(net, time=time, y=labels), labels, 2.0, 5)
    with pytest.raises(ValueError, match=r"the positional extra 1 fills the model's parameter 'y', which the extra "
                                         r"y= the field was built with also gives") as caught:
        kfm.sample(guided, x0, solver=solver, **steps)
    assert getattr(caught.value, "__notes__", []) == []
    # the remedy it names: y once, in the labels
    kfm.sample(kfm.ClassifierFreeGuidance(kfm.ModelXT(net, time=time), labels, 2.0, 5), x0, solver=solver, **steps)
